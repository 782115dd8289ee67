#!/bin/sh
# Runs the upstream CRI validation suite against crispd on this machine, offline.
# Expects `critest` (kubernetes-sigs/cri-tools) on PATH; crisp neither builds nor ships it.
# Usage (as root, from the repository): critest/run.sh [--runtime-handler NAME] [critest flags...]
set -eu
cd "$(dirname "$0")/.."
command -v critest >/dev/null || { echo "critest is not on PATH" >&2; exit 1; }
sh scripts/install-deps.sh
sh scripts/build-release.sh crisp-fixture crisp-cleanup
work=$(mktemp -d /tmp/crisp-critest.XXXXXX)
cleanup() {
    # crisp keeps pods across daemon restarts: remove what critest left before stopping.
    [ -n "${crispd:-}" ] && target/release/crisp-cleanup /run/crisp-critest/crisp.sock || true
    [ -n "${crispd:-}" ] && kill "$crispd" 2>/dev/null || true
    [ -n "${fixture:-}" ] && kill "$fixture" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM
target/release/crisp-fixture "$work/registry" 127.0.0.1:5000 > "$work/fixture.log" 2>&1 &
fixture=$!
# A clean runtime each run: leftover tags change RepoTags and fail image specs.
rm -rf /var/lib/crisp-critest /run/crisp-critest
target/release/crispd --config critest/crisp-critest.toml > "$work/crispd.log" 2>&1 &
crispd=$!
for _ in $(seq 1 100); do
    [ -S /run/crisp-critest/crisp.sock ] && grep -q "serving on" "$work/fixture.log" && break
    sleep 0.1
done
status=0
critest --runtime-endpoint unix:///run/crisp-critest/crisp.sock \
        --image-endpoint unix:///run/crisp-critest/crisp.sock \
        --ginkgo.no-color "$@" > "$work/critest.log" 2>&1 || status=$?
grep -E '^(Ran |SUCCESS|FAIL!)' "$work/critest.log" || true
grep -E '^\s*\[FAIL\]' "$work/critest.log" | sort -u || true
echo "full log: $work/critest.log; crispd log: $work/crispd.log"
exit "$status"
