#!/bin/sh
# Builds the fuzz targets in fuzz/ (cargo fuzz, nightly toolchain) and runs each for
# SECONDS (default 10): `make test` runs them briefly, an operator longer with
# `sh scripts/fuzz.sh 600`. A crash fails the script (after the other targets have run),
# leaving the input that caused it under fuzz/artifacts/<target>/; reproduce it with
# `cd fuzz && cargo +nightly fuzz run <target> <file>`.
# The corpus grows under fuzz/corpus/ (not in git); fuzz/seeds/ holds starting inputs.
set -eu
cd "$(dirname "$0")/.."
seconds="${1:-10}"
targets="${TARGETS:-layer_tar reference manifest config_toml spdy websocket agent_proto}"

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz: no nightly toolchain (cargo fuzz needs one): rustup toolchain install nightly" >&2
    exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: cargo-fuzz is missing: sh scripts/install-deps.sh installs it" >&2
    exit 1
fi

cd fuzz
cargo +nightly fuzz build
# The binaries run directly: `cargo fuzz run` would rebuild from a tree that may change.
bin="target/$(rustc +nightly -vV | sed -n 's/^host: //p')/release"
status=0
for target in $targets; do
    mkdir -p "corpus/$target"
    seeds=""
    [ -d "seeds/$target" ] && seeds="seeds/$target"
    # The configuration target starts from the shipped example.
    [ "$target" = config_toml ] && seeds="../conf"
    log="$(mktemp)"
    mkdir -p "artifacts/$target"
    if "$bin/$target" -artifact_prefix="artifacts/$target/" -max_total_time="$seconds" \
        -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 "corpus/$target" $seeds \
        >"$log" 2>&1; then
        runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
        echo "fuzz: $target: ${runs:-?} runs in ${seconds}s, no crash"
    else
        status=1
        echo "fuzz: $target FAILED:" >&2
        grep -v '^#[0-9]' "$log" | tail -n 40 >&2
    fi
    rm -f "$log"
done
# The layer target unpacks into a work directory of its own per process.
rm -rf "${TMPDIR:-/tmp}"/crisp-fuzz-layer-*
exit "$status"
