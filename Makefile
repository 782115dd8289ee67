# crisp: the two commands a newcomer needs are `make start` and `make test` (as root).
CARGO ?= cargo

.PHONY: start test deps lint unit build

## Build crisp, install it with the default configuration, and start it.
start:
	sh scripts/start.sh

## Everything CI runs: host packages, formatting, lints, docs, unit and integration tests.
test: deps lint
	$(CARGO) test --workspace --all-targets -- --test-threads=4

deps:
	sh scripts/install-deps.sh
	sh scripts/cgroup-hybrid.sh
	sh scripts/build-guest.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS=-Dwarnings $(CARGO) doc --workspace --no-deps

build:
	$(CARGO) build --workspace --release
	sh scripts/build-release.sh
