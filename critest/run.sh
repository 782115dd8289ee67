#!/bin/sh
# Runs the upstream CRI validation suite against crispd on this machine, offline.
# Expects `critest` (kubernetes-sigs/cri-tools) on PATH; crisp neither builds nor ships it.
# Usage (as root, from the repository):
#   critest/run.sh [--containerd] [--runtime-handler NAME] [critest flags...]
# With --containerd the same run goes against Debian's containerd (CRI plugin, configured
# by critest/containerd-critest.toml) instead, to tell crisp's failures from the machine's.
set -eu
cd "$(dirname "$0")/.."
command -v critest >/dev/null || { echo "critest is not on PATH" >&2; exit 1; }
runtime=crisp
if [ "${1:-}" = "--containerd" ]; then
    runtime=containerd
    shift
    command -v containerd >/dev/null || { echo "containerd is not installed" >&2; exit 1; }
fi
sh scripts/install-deps.sh
sh scripts/cgroup-hybrid.sh
sh scripts/build-release.sh crisp-fixture crisp-cleanup
# A pod network as `make start` installs it, unless the host already has one.
install -d /etc/cni/net.d
if [ -z "$(ls /etc/cni/net.d 2>/dev/null)" ]; then
    install -m 0644 conf/10-crisp-bridge.conflist /etc/cni/net.d/10-crisp-bridge.conflist
fi
work=$(mktemp -d /tmp/crisp-critest.XXXXXX)
if [ "$runtime" = containerd ]; then
    root=/var/lib/containerd-critest state=/run/containerd-critest
    socket=$state/containerd.sock
else
    root=/var/lib/crisp-critest state=/run/crisp-critest
    socket=$state/crisp.sock
fi
cleanup() {
    # Both keep pods across daemon restarts: remove what critest left before stopping.
    [ -n "${daemon:-}" ] && target/release/crisp-cleanup "$socket" || true
    [ -n "${daemon:-}" ] && kill "$daemon" 2>/dev/null || true
    [ -n "${fixture:-}" ] && kill "$fixture" 2>/dev/null || true
    wait 2>/dev/null || true
    if [ "$runtime" = containerd ]; then
        # Shims outlive containerd; its snapshots stay mounted.
        pkill -f "containerd-shim-runc-v2 .*-address $socket" 2>/dev/null || true
        awk -v s="$state" -v r="$root" 'index($2, s) == 1 || index($2, r) == 1 { print $2 }' \
            /proc/self/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
    fi
}
trap cleanup EXIT INT TERM
target/release/crisp-fixture "$work/registry" 127.0.0.1:5000 > "$work/fixture.log" 2>&1 &
fixture=$!
# A clean runtime each run: leftover tags change RepoTags and fail image specs.
rm -rf "$root" "$state"
if [ "$runtime" = containerd ]; then
    mkdir -p "$state"
    printf '#!/bin/sh\nexec runsc --network=host "$@"\n' > "$state/runsc-hostnet"
    chmod +x "$state/runsc-hostnet"
    containerd --config critest/containerd-critest.toml > "$work/daemon.log" 2>&1 &
else
    target/release/crispd --config critest/crisp-critest.toml > "$work/daemon.log" 2>&1 &
fi
daemon=$!
for _ in $(seq 1 100); do
    [ -S "$socket" ] && grep -q "serving on" "$work/fixture.log" && break
    sleep 0.1
done
status=0
critest --runtime-endpoint "unix://$socket" --image-endpoint "unix://$socket" \
        --ginkgo.no-color "$@" > "$work/critest.log" 2>&1 || status=$?
grep -E '^(Ran |SUCCESS|FAIL!)' "$work/critest.log" || true
grep -E '^\s*\[FAIL\]' "$work/critest.log" | sort -u || true
echo "full log: $work/critest.log; $runtime log: $work/daemon.log"
exit "$status"
