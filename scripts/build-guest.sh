#!/bin/sh
# Assembles the microVM guest: Debian's cloud kernel and an initramfs holding crisp-agent
# (built static, it is the guest's PID 1), busybox and the kernel modules the guest needs
# (virtio PCI and MMIO, vsock, virtio-fs, virtio-net, overlay), loaded by the agent in
# dependency order. Output: vmlinuz, initrd.img and MANIFEST in the directory given
# (default /var/lib/crisp/guest, where the default configuration points). Rebuilding from
# the same kernel package and sources gives the same bytes.
#
#   sh scripts/build-guest.sh [OUT_DIR]
set -eu
cd "$(dirname "$0")/.."
out="${1:-${CRISP_GUEST_DIR:-/var/lib/crisp/guest}}"
cache="${CRISP_GUEST_CACHE:-/var/cache/crisp/guest}"
epoch="${SOURCE_DATE_EPOCH:-1700000000}"
modules="virtio_pci virtio_mmio vmw_vsock_virtio_transport virtiofs virtio_net overlay"
# Modules the kernel asks for only when a container needs one (`brctl addbr`, `ip link
# add type bridge`): loaded then by the agent, which is the guest's /sbin/modprobe, so
# that boots do not pay for them (bridge at boot cost ~50 ms of the guest's bring-up).
on_demand="bridge"

need() { command -v "$1" >/dev/null 2>&1 || { echo "build-guest: $1 is missing (sh scripts/install-deps.sh installs it)" >&2; exit 1; }; }
need cpio
need depmod
need apt-get
[ -x /bin/busybox ] || { echo "build-guest: /bin/busybox is missing (package busybox-static)" >&2; exit 1; }

# The kernel: the package Debian's cloud metapackage depends on, downloaded once.
kernel_package() {
    apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}'
}
kpkg=$(kernel_package)
[ -n "$kpkg" ] || { apt-get update >/dev/null 2>&1 || true; kpkg=$(kernel_package); }
[ -n "$kpkg" ] || { echo "build-guest: apt knows no linux-image-cloud-amd64 (run apt-get update)" >&2; exit 1; }
kver=${kpkg#linux-image-}
mkdir -p "$cache"
if [ ! -d "$cache/$kver" ]; then
    rm -rf "$cache/dl" && mkdir -p "$cache/dl"
    (cd "$cache/dl" && apt-get download "$kpkg" >/dev/null 2>&1) \
        || { apt-get update >/dev/null && (cd "$cache/dl" && apt-get download "$kpkg"); }
    dpkg -x "$cache"/dl/*.deb "$cache/$kver.tmp"
    depmod -b "$cache/$kver.tmp" "$kver"
    mv "$cache/$kver.tmp" "$cache/$kver"
    rm -rf "$cache/dl"
fi
kroot="$cache/$kver"
mdir="$kroot/lib/modules/$kver"

# The agent: a static executable.
RUSTFLAGS="-C target-feature=+crt-static --remap-path-prefix=$(pwd)=crisp" \
    CARGO_TARGET_DIR=target/guest \
    cargo build --quiet --release --locked -p crisp-agent --target x86_64-unknown-linux-gnu
agent=target/guest/x86_64-unknown-linux-gnu/release/crisp-agent

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" "$stage/dev" "$stage/proc" "$stage/sys" "$stage/run" "$stage/tmp" \
    "$stage/lib/modules" "$stage/etc"
install -m 0755 "$agent" "$stage/init"
mkdir -p "$stage/sbin"
ln -s ../init "$stage/sbin/modprobe"
install -m 0755 /bin/busybox "$stage/bin/busybox"
ln -s busybox "$stage/bin/sh"
mknod -m 0600 "$stage/dev/console" c 5 1
mknod -m 0666 "$stage/dev/null" c 1 3

# Each wanted module after the modules it needs (modules.dep lists them deepest last).
: > "$stage/lib/modules/load"
add_module() {
    line=$(grep -E "/$1\.ko(\.[a-z]+)?:" "$mdir/modules.dep" || true)
    [ -n "$line" ] || { echo "build-guest: module $1 is not in $kpkg" >&2; exit 1; }
    deps=$(echo "${line#*:}" | tr ' ' '\n' | grep . | tac || true)
    for dep in $deps; do add_file "$dep"; done
    add_file "${line%%:*}"
}
add_file() {
    name=$(basename "$1")
    name=${name%%.ko*}.ko
    grep -qx "/lib/modules/$name" "$stage/lib/modules/load" && return 0
    [ -e "$stage/lib/modules/$name" ] || case "$1" in
        *.ko) cp "$mdir/$1" "$stage/lib/modules/$name" ;;
        *.ko.xz) xz -dc "$mdir/$1" > "$stage/lib/modules/$name" ;;
        *.ko.zst) zstd -qdc "$mdir/$1" > "$stage/lib/modules/$name" ;;
    esac
    [ -n "${collect:-}" ] && { files="$files /lib/modules/$name"; return 0; }
    echo "/lib/modules/$name" >> "$stage/lib/modules/load"
}
for m in $modules; do add_module "$m"; done
# One line per on-demand module: its name and aliases, a tab, then the files to load in
# order (aliases may hold colons).
: > "$stage/lib/modules/on-demand"
for m in $on_demand; do
    collect=1 files=""
    add_module "$m"
    aliases=$(awk -v m="$m" '$1 == "alias" && $3 == m { printf " %s", $2 }' "$mdir/modules.alias")
    printf '%s%s\t%s\n' "$m" "$aliases" "$files" >> "$stage/lib/modules/on-demand"
done
collect=

mkdir -p "$out"
find "$stage" -exec touch -h -d "@$epoch" {} +
(cd "$stage" && find . | LC_ALL=C sort | cpio --quiet -o -H newc --reproducible -R 0:0) > "$out/initrd.img.tmp"
mv "$out/initrd.img.tmp" "$out/initrd.img"
cp "$kroot/boot/vmlinuz-$kver" "$out/vmlinuz.tmp" && mv "$out/vmlinuz.tmp" "$out/vmlinuz"
{
    echo "kernel $kpkg"
    echo "kernel-release $kver"
    echo "agent-sha256 $(sha256sum "$agent" | cut -d' ' -f1)"
    echo "initrd-sha256 $(sha256sum "$out/initrd.img" | cut -d' ' -f1)"
} > "$out/MANIFEST"
echo "guest image: $out (kernel $kver, initrd $(du -k "$out/initrd.img" | cut -f1) KiB)"
