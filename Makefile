# crisp: the two commands a newcomer needs are `make start` and `make test` (as root).
CARGO ?= cargo

.PHONY: start test deps lint unit build fuzz

## Build crisp, install it with the default configuration, and start it.
start:
	sh scripts/start.sh

## Everything CI runs: host packages, formatting, lints, docs, unit and integration tests,
## and each fuzz target for a few seconds.
test: deps lint
	$(CARGO) test --workspace --all-targets -- --test-threads=4
	sh scripts/fuzz.sh 10

## The fuzz targets for longer: make fuzz FUZZ_SECONDS=600
FUZZ_SECONDS ?= 60
fuzz:
	sh scripts/fuzz.sh $(FUZZ_SECONDS)

deps:
	sh scripts/install-deps.sh
	sh scripts/cgroup-hybrid.sh
	sh scripts/build-guest.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) fmt --manifest-path fuzz/Cargo.toml -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS=-Dwarnings $(CARGO) doc --workspace --no-deps

build:
	$(CARGO) build --workspace --release
	sh scripts/build-release.sh
