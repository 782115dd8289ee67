#!/bin/sh
# Builds crisp, installs it with its default configuration, and starts it:
# under systemd when systemd runs this host, otherwise in the foreground.
set -eu
cd "$(dirname "$0")/.."

[ "$(id -u)" -eq 0 ] || { echo "start: run as root (crispd manages mounts, namespaces and cgroups)" >&2; exit 1; }
sh scripts/install-deps.sh
sh scripts/build-release.sh
# The microVM handler's guest kernel and initramfs (with crisp's agent).
sh scripts/build-guest.sh
install -m 0755 target/release/crispd /usr/local/bin/crispd
# The per-container monitor and the ExecSync helper live beside crispd.
install -m 0755 target/release/crisp-monitor /usr/local/bin/crisp-monitor
install -m 0755 target/release/crisp-enter /usr/local/bin/crisp-enter

# The shipped example is exactly the defaults; install it once, never over an edited file.
install -d /etc/crisp /etc/crisp/crisp.d
[ -e /etc/crisp/crisp.toml ] || install -m 0644 conf/crisp.toml /etc/crisp/crisp.toml

# A pod network, unless the host already has one (a cluster's CNI owns this directory).
install -d /etc/cni/net.d
if [ -z "$(ls /etc/cni/net.d 2>/dev/null)" ]; then
    install -m 0644 conf/10-crisp-bridge.conflist /etc/cni/net.d/10-crisp-bridge.conflist
fi

crispd check || { echo "start: host check failed (see above)" >&2; exit 1; }

if [ -d /run/systemd/system ]; then
    install -m 0644 conf/crisp.service /etc/systemd/system/crisp.service
    systemctl daemon-reload
    systemctl enable --now crisp
    systemctl restart crisp
    echo "crisp is running under systemd: systemctl status crisp"
else
    echo "no systemd here: running crispd in the foreground (Ctrl-C stops it)"
    exec /usr/local/bin/crispd --config /etc/crisp/crisp.toml
fi
