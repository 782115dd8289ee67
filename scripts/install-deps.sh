#!/bin/sh
# Installs, from Debian's archive, the host packages crisp and its tests use, where missing.
# Safe to run again: it installs nothing that is already there.
set -eu

packages="runc crun runsc containernetworking-plugins iproute2 iptables docker-registry busybox-static openssl procps util-linux"

missing=""
for p in $packages; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done
if [ -n "$missing" ]; then
    echo "installing:$missing"
    if [ "$(id -u)" -ne 0 ]; then
        echo "install-deps: root is needed to install$missing" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends $missing >/dev/null 2>&1 || {
        apt-get update >/dev/null
        apt-get install -y --no-install-recommends $missing
    }
fi
