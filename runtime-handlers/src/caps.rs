//! Linux capabilities by name, in the kernel's bit order.

/// Docker's default capability set, which containerd and CRI-O also grant.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability name (without `CAP_`), indexed by bit number.
pub const CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// The highest capability the running kernel knows.
/// What a container on this handler can be given at most, as the place its processes run
/// (the host for OCI runtimes, a guest for a VM) says: `server` clips requests to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostFacts {
    /// The bounding set of whoever creates the containers: a capability outside it cannot
    /// be granted (runc fails with "unable to apply caps").
    pub bounding_set: u64,
    /// The lowest oom_score_adj a container may get (raising it needs no privilege;
    /// lowering it below the creator's needs CAP_SYS_RESOURCE).
    pub min_oom_score_adj: i64,
}

impl HostFacts {
    /// The facts of this process, which creates the OCI handlers' containers.
    pub fn of_this_process() -> Self {
        let bounding_set = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("CapBnd:"))
                    .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            })
            .unwrap_or(u64::MAX);
        let min_oom_score_adj = std::fs::read_to_string("/proc/self/oom_score_adj")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        Self {
            bounding_set,
            min_oom_score_adj,
        }
    }
}

/// The highest capability number the kernel knows.
pub fn last_capability() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// The bit number of `name` (`CAP_NET_RAW` or `NET_RAW`).
pub fn capability_number(name: &str) -> Option<u32> {
    let bare = name.strip_prefix("CAP_").unwrap_or(name);
    CAPABILITIES
        .iter()
        .position(|c| *c == bare)
        .and_then(|p| u32::try_from(p).ok())
}
