#!/bin/sh
# On a hybrid cgroup host (cgroup v1 hierarchies under /sys/fs/cgroup, cgroup2 at
# /sys/fs/cgroup/unified), a controller that no v1 hierarchy has stays with cgroup2.
# Debian's crun 1.8 refuses to run on such a host ("cgroups in hybrid mode not supported,
# drop all controllers from cgroupv2"); runc does not mind. This mounts a v1 hierarchy for
# each such controller, which moves it off cgroup2. It does nothing on a pure cgroup v1 or
# v2 host, and leaves cgroup2 alone if any of its controllers is in use. Run as root.
# It never fails: a host it cannot change keeps working for runc.
set -eu
unified=/sys/fs/cgroup/unified
[ -f "$unified/cgroup.controllers" ] || exit 0
controllers=$(cat "$unified/cgroup.controllers")
[ -n "$controllers" ] || exit 0
if [ -n "$(cat "$unified/cgroup.subtree_control")" ]; then
    echo "cgroup-hybrid: cgroup2 controllers are in use; leaving them there" >&2
    exit 0
fi
for c in $controllers; do
    dir=/sys/fs/cgroup/$c
    if ! mkdir -p "$dir" 2>/dev/null; then
        echo "cgroup-hybrid: cannot create $dir; crun will refuse this host" >&2
        continue
    fi
    if ! mountpoint -q "$dir"; then
        if mount -t cgroup -o "$c" cgroup "$dir"; then
            echo "cgroup-hybrid: controller $c moved from cgroup2 to a v1 hierarchy at $dir"
        else
            echo "cgroup-hybrid: could not move $c to v1; crun will refuse this host" >&2
        fi
    fi
done
