#!/bin/sh
# Installs, from Debian's archive, the host packages crisp and its tests use, where missing.
# Safe to run again: it installs nothing that is already there.
set -eu

# qemu-system-x86 (with qemu-system-common's virtiofsd), kmod (depmod) and cpio serve the
# microVM handler and its guest image.
packages="runc crun runsc containernetworking-plugins iproute2 iptables docker-registry busybox-static openssl procps util-linux qemu-system-x86 kmod cpio"

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

# The microVM handler's vsock backend (QEMU's vhost-user-vsock device needs one where the
# host has no /dev/vhost-vsock): from crates.io, pinned, into /usr/local/bin.
if ! command -v vhost-device-vsock >/dev/null 2>&1; then
    echo "installing: vhost-device-vsock 0.3.0 (cargo install)"
    cargo install --quiet --locked --root /usr/local vhost-device-vsock --version 0.3.0
fi

# The fuzz targets (scripts/fuzz.sh): cargo-fuzz from crates.io, pinned, and a nightly
# toolchain, which its sanitizer flags need.
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing: cargo-fuzz 0.13.2 (cargo install)"
    cargo install --quiet --locked --root /usr/local cargo-fuzz --version 0.13.2
fi
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "installing: the nightly Rust toolchain (rustup)"
    rustup toolchain install nightly --profile minimal
fi
