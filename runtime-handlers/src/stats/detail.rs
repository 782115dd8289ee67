//! The full set of a container's cgroup and process figures behind kubelet's
//! cAdvisor-named metrics: CPU split and throttling, memory breakdown and limits, block
//! I/O per device, huge pages, pressure, and its processes' threads, descriptors and
//! sockets. Read less often than the basic sample (it walks `/proc` for every process
//! of the container).
//!
//! Where a figure does not exist on a layout (pressure without cgroup v2, a v1 swap
//! limit without `memsw`), it is left out, as cAdvisor leaves it out there.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{parse_stat, read_u64, stat_file};

/// Limits a cgroup is configured with, as cAdvisor reports its `container_spec_*`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// CFS period, µs.
    pub cpu_period: u64,
    /// CFS quota, µs; 0 when unlimited.
    pub cpu_quota: u64,
    /// CPU shares (cgroup v2 weights converted back to shares).
    pub cpu_shares: u64,
    /// Memory limit, bytes; 0 when unlimited.
    pub memory_limit: u64,
    /// Memory reservation (v1 soft limit, v2 `memory.low`), bytes; 0 when none.
    pub memory_reservation: u64,
    /// Memory plus swap limit, bytes; 0 when unlimited or unknown.
    pub swap_limit: u64,
}

/// Block I/O of one device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockDevice {
    /// Major number.
    pub major: u32,
    /// Minor number.
    pub minor: u32,
    /// Its `/dev` name when the kernel knows one, else `major:minor`.
    pub name: String,
    /// Bytes read.
    pub read_bytes: u64,
    /// Bytes written.
    pub write_bytes: u64,
    /// Reads completed.
    pub reads: u64,
    /// Writes completed.
    pub writes: u64,
}

/// Huge page use of one page size.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HugePages {
    /// The size as the cgroup files name it (`2MB`, `1GB`).
    pub page_size: String,
    /// Bytes in use.
    pub usage: u64,
    /// Most bytes ever in use (v1 only; v2 reports the current use).
    pub max_usage: u64,
}

/// Cumulative pressure stall times (PSI), µs: `some` is waiting, `full` is stalled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pressure {
    /// CPU: some tasks waiting.
    pub cpu_some: u64,
    /// CPU: all tasks stalled.
    pub cpu_full: u64,
    /// Memory: some tasks waiting.
    pub memory_some: u64,
    /// Memory: all tasks stalled.
    pub memory_full: u64,
    /// I/O: some tasks waiting.
    pub io_some: u64,
    /// I/O: all tasks stalled.
    pub io_full: u64,
}

/// Everything beyond the basic sample.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsDetail {
    /// CPU time in user mode, ns.
    pub cpu_user_ns: u64,
    /// CPU time in kernel mode, ns.
    pub cpu_system_ns: u64,
    /// CFS enforcement periods elapsed.
    pub cfs_periods: u64,
    /// Periods in which the cgroup was throttled.
    pub cfs_throttled_periods: u64,
    /// Time throttled, ns.
    pub cfs_throttled_ns: u64,
    /// Page cache, bytes.
    pub memory_cache: u64,
    /// Memory-mapped files, bytes.
    pub memory_mapped_file: u64,
    /// Kernel memory, bytes.
    pub memory_kernel: u64,
    /// Highest usage seen, bytes (0 where the kernel does not keep it).
    pub memory_max_usage: u64,
    /// Times usage hit the limit.
    pub memory_failcnt: u64,
    /// Page faults of the cgroup itself, without its children (v1); v2 has no split.
    pub own_page_faults: u64,
    /// Major page faults of the cgroup itself.
    pub own_major_page_faults: u64,
    /// OOM kills in the cgroup.
    pub oom_events: u64,
    /// Processes (thread group leaders) in the cgroup.
    pub processes: u64,
    /// The `pids` limit; 0 when unlimited.
    pub threads_max: u64,
    /// Open file descriptors of all its processes.
    pub file_descriptors: u64,
    /// Of those, sockets.
    pub sockets: u64,
    /// The soft `RLIMIT_NOFILE` of its first process; `None` if unreadable.
    pub max_open_files: Option<u64>,
    /// Configured limits.
    pub limits: Limits,
    /// Block I/O per device.
    pub block_devices: Vec<BlockDevice>,
    /// Huge pages per size.
    pub huge_pages: Vec<HugePages>,
    /// Pressure stall information, where the kernel keeps it for this cgroup (v2).
    pub pressure: Option<Pressure>,
}

/// Where a cgroup v2 directory's files come from: the host's file system, or a guest's
/// cgroup whose files its agent sent over (by name).
#[derive(Clone, Copy)]
enum V2Files<'a> {
    Dir(&'a Path),
    Sent(&'a HashMap<String, String>),
}

impl V2Files<'_> {
    fn text(&self, name: &str) -> Option<String> {
        match self {
            V2Files::Dir(dir) => std::fs::read_to_string(dir.join(name)).ok(),
            V2Files::Sent(files) => files.get(name).cloned(),
        }
    }

    fn u64(&self, name: &str) -> Option<u64> {
        self.text(name)?.trim().parse().ok()
    }

    fn stat(&self, name: &str) -> HashMap<String, u64> {
        parse_stat(&self.text(name).unwrap_or_default())
    }

    /// A limit file: a number, or `max` / `-1` for none (0).
    fn limit(&self, name: &str) -> Option<u64> {
        parse_limit(&self.text(name)?)
    }
}

/// Reads the detail of the cgroup whose v1 controller directories are `v1` and whose v2
/// directory is `v2`. v1 wins where both have a controller, as in [`super::cgroup_stats`].
pub(super) fn read(v1: &HashMap<String, PathBuf>, v2: Option<&Path>) -> StatsDetail {
    let mut d = StatsDetail::default();
    let files = v2.map(V2Files::Dir);
    cpu(&mut d, v1, files);
    memory(&mut d, v1, files);
    let procs_dir = v1.get("pids").map(PathBuf::as_path).or(v2);
    if let Some(dir) = v1.get("pids") {
        d.threads_max = read_limit(&dir.join("pids.max")).unwrap_or(0);
    } else if let Some(files) = files {
        d.threads_max = files.limit("pids.max").unwrap_or(0);
    }
    if let Some(dir) = v1.get("blkio") {
        d.block_devices = blkio_v1(dir);
    } else if let Some(files) = files {
        d.block_devices = io_v2(&files.text("io.stat").unwrap_or_default());
    }
    if let Some(dir) = v1.get("hugetlb") {
        d.huge_pages = hugetlb(dir, "usage_in_bytes", Some("max_usage_in_bytes"));
    } else if let Some(dir) = v2 {
        d.huge_pages = hugetlb(dir, "current", None);
    }
    if let Some(files) = files {
        d.pressure = pressure(files);
    }
    if let Some(dir) = procs_dir.or_else(|| v1.values().next().map(PathBuf::as_path)) {
        processes(&mut d, dir);
    }
    d
}

/// The detail of a cgroup v2 directory elsewhere (a guest's), from the contents of its
/// files by name (the microVM agent sends cpu.stat, cpu.max, cpu.weight, memory.stat,
/// memory.peak, memory.events, memory.max, memory.low, memory.swap.max, io.stat, pids.max,
/// cgroup.procs and the pressure files). Its processes are counted, not visited: their
/// descriptors are not this host's to read.
pub fn read_sent(files: &HashMap<String, String>) -> StatsDetail {
    let mut d = StatsDetail::default();
    let sent = V2Files::Sent(files);
    let none = HashMap::new();
    cpu(&mut d, &none, Some(sent));
    memory(&mut d, &none, Some(sent));
    d.threads_max = sent.limit("pids.max").unwrap_or(0);
    d.block_devices = io_v2(&sent.text("io.stat").unwrap_or_default());
    d.pressure = pressure(sent);
    d.processes = sent
        .text("cgroup.procs")
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count() as u64;
    d
}

/// Nanoseconds per USER_HZ tick (cpuacct.stat counts ticks; Linux fixes USER_HZ at 100).
const NS_PER_TICK: u64 = 10_000_000;

fn cpu(d: &mut StatsDetail, v1: &HashMap<String, PathBuf>, v2: Option<V2Files<'_>>) {
    if let Some(dir) = v1.get("cpuacct") {
        let stat = stat_file(&dir.join("cpuacct.stat"));
        d.cpu_user_ns = stat.get("user").copied().unwrap_or(0) * NS_PER_TICK;
        d.cpu_system_ns = stat.get("system").copied().unwrap_or(0) * NS_PER_TICK;
    }
    if let Some(dir) = v1.get("cpu") {
        let stat = stat_file(&dir.join("cpu.stat"));
        d.cfs_periods = stat.get("nr_periods").copied().unwrap_or(0);
        d.cfs_throttled_periods = stat.get("nr_throttled").copied().unwrap_or(0);
        d.cfs_throttled_ns = stat.get("throttled_time").copied().unwrap_or(0);
        d.limits.cpu_period = read_u64(&dir.join("cpu.cfs_period_us")).unwrap_or(0);
        d.limits.cpu_quota = read_limit(&dir.join("cpu.cfs_quota_us")).unwrap_or(0);
        d.limits.cpu_shares = read_u64(&dir.join("cpu.shares")).unwrap_or(0);
    } else if let Some(files) = v2 {
        let stat = files.stat("cpu.stat");
        let get = |k: &str| stat.get(k).copied().unwrap_or(0);
        if !v1.contains_key("cpuacct") {
            d.cpu_user_ns = get("user_usec") * 1000;
            d.cpu_system_ns = get("system_usec") * 1000;
        }
        d.cfs_periods = get("nr_periods");
        d.cfs_throttled_periods = get("nr_throttled");
        d.cfs_throttled_ns = get("throttled_usec") * 1000;
        let max = files.text("cpu.max").unwrap_or_default();
        let mut parts = max.split_whitespace();
        d.limits.cpu_quota = parts.next().and_then(|q| q.parse().ok()).unwrap_or(0);
        d.limits.cpu_period = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        d.limits.cpu_shares = files.u64("cpu.weight").map_or(0, weight_to_shares);
    }
}

/// cgroup v2 `cpu.weight` (1..10000) back to v1 shares (2..262144), the inverse of the
/// conversion runc and the kernel documentation use.
fn weight_to_shares(weight: u64) -> u64 {
    if weight == 0 {
        return 0;
    }
    2 + (weight.saturating_sub(1) * 262_142) / 9999
}

fn memory(d: &mut StatsDetail, v1: &HashMap<String, PathBuf>, v2: Option<V2Files<'_>>) {
    if let Some(dir) = v1.get("memory") {
        let stat = stat_file(&dir.join("memory.stat"));
        let get = |k: &str| stat.get(k).copied().unwrap_or(0);
        d.memory_cache = get("total_cache");
        d.memory_mapped_file = get("total_mapped_file");
        d.own_page_faults = get("pgfault");
        d.own_major_page_faults = get("pgmajfault");
        d.memory_kernel = read_u64(&dir.join("memory.kmem.usage_in_bytes")).unwrap_or(0);
        d.memory_max_usage = read_u64(&dir.join("memory.max_usage_in_bytes")).unwrap_or(0);
        d.memory_failcnt = read_u64(&dir.join("memory.failcnt")).unwrap_or(0);
        d.oom_events = stat_file(&dir.join("memory.oom_control"))
            .get("oom_kill")
            .copied()
            .unwrap_or(0);
        d.limits.memory_limit = unlimited_as_zero(read_u64(&dir.join("memory.limit_in_bytes")));
        d.limits.memory_reservation =
            unlimited_as_zero(read_u64(&dir.join("memory.soft_limit_in_bytes")));
        d.limits.swap_limit = unlimited_as_zero(read_u64(&dir.join("memory.memsw.limit_in_bytes")));
    } else if let Some(files) = v2 {
        let stat = files.stat("memory.stat");
        let get = |k: &str| stat.get(k).copied().unwrap_or(0);
        d.memory_cache = get("file");
        d.memory_mapped_file = get("file_mapped");
        d.own_page_faults = get("pgfault");
        d.own_major_page_faults = get("pgmajfault");
        // `kernel` exists from Linux 5.18; before, its parts.
        d.memory_kernel = stat.get("kernel").copied().unwrap_or_else(|| {
            get("kernel_stack") + get("pagetables") + get("slab") + get("sock") + get("percpu")
        });
        d.memory_max_usage = files.u64("memory.peak").unwrap_or(0);
        let events = files.stat("memory.events");
        d.memory_failcnt = events.get("max").copied().unwrap_or(0);
        d.oom_events = events.get("oom_kill").copied().unwrap_or(0);
        d.limits.memory_limit = files.limit("memory.max").unwrap_or(0);
        d.limits.memory_reservation = files.limit("memory.low").unwrap_or(0);
        let swap = files.limit("memory.swap.max").unwrap_or(0);
        d.limits.swap_limit = if swap == 0 || d.limits.memory_limit == 0 {
            0
        } else {
            d.limits.memory_limit.saturating_add(swap)
        };
    }
}

/// cAdvisor reports v1's "no limit" (a page-rounded i64::MAX) as 0.
fn unlimited_as_zero(value: Option<u64>) -> u64 {
    match value {
        Some(v) if v < 1 << 62 => v,
        _ => 0,
    }
}

/// A limit file: a number, or `max` / `-1` for none (0).
fn read_limit(path: &Path) -> Option<u64> {
    parse_limit(&std::fs::read_to_string(path).ok()?)
}

/// A limit file's text: a number, or `max` / `-1` for none (0).
fn parse_limit(text: &str) -> Option<u64> {
    let text = text.trim();
    if text == "max" || text == "-1" {
        return Some(0);
    }
    text.parse().ok()
}

fn blkio_v1(dir: &Path) -> Vec<BlockDevice> {
    // The recursive files count what the cgroup's children did too; the throttle files
    // count every I/O whatever the scheduler (CFQ's files are gone with blk-mq).
    let bytes = std::fs::read_to_string(dir.join("blkio.throttle.io_service_bytes_recursive"))
        .or_else(|_| std::fs::read_to_string(dir.join("blkio.throttle.io_service_bytes")))
        .unwrap_or_default();
    let ops = std::fs::read_to_string(dir.join("blkio.throttle.io_serviced_recursive"))
        .or_else(|_| std::fs::read_to_string(dir.join("blkio.throttle.io_serviced")))
        .unwrap_or_default();
    let mut devices: Vec<BlockDevice> = Vec::new();
    for (text, is_bytes) in [(bytes, true), (ops, false)] {
        for line in text.lines() {
            let mut parts = line.split_whitespace();
            let (Some(dev), Some(op), Some(value)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let Some((major, minor)) = parse_dev(dev) else {
                continue;
            };
            let Ok(value) = value.parse::<u64>() else {
                continue;
            };
            let device = device_entry(&mut devices, major, minor);
            match (op, is_bytes) {
                ("Read", true) => device.read_bytes = value,
                ("Write", true) => device.write_bytes = value,
                ("Read", false) => device.reads = value,
                ("Write", false) => device.writes = value,
                _ => {}
            }
        }
    }
    devices
}

fn io_v2(text: &str) -> Vec<BlockDevice> {
    let mut devices: Vec<BlockDevice> = Vec::new();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let Some((major, minor)) = parts.next().and_then(parse_dev) else {
            continue;
        };
        let device = device_entry(&mut devices, major, minor);
        for field in parts {
            let Some((key, value)) = field.split_once('=') else {
                continue;
            };
            let value = value.parse().unwrap_or(0);
            match key {
                "rbytes" => device.read_bytes = value,
                "wbytes" => device.write_bytes = value,
                "rios" => device.reads = value,
                "wios" => device.writes = value,
                _ => {}
            }
        }
    }
    devices
}

fn parse_dev(dev: &str) -> Option<(u32, u32)> {
    let (major, minor) = dev.split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

fn device_entry(devices: &mut Vec<BlockDevice>, major: u32, minor: u32) -> &mut BlockDevice {
    let at = match devices
        .iter()
        .position(|d| d.major == major && d.minor == minor)
    {
        Some(at) => at,
        None => {
            devices.push(BlockDevice {
                major,
                minor,
                name: device_name(major, minor),
                ..BlockDevice::default()
            });
            devices.len() - 1
        }
    };
    &mut devices[at]
}

/// `/dev/<name>` for a block device number, from sysfs; `major:minor` if unknown.
pub fn device_name(major: u32, minor: u32) -> String {
    let uevent = std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/uevent"))
        .unwrap_or_default();
    uevent
        .lines()
        .find_map(|l| l.strip_prefix("DEVNAME="))
        .map_or_else(|| format!("{major}:{minor}"), |n| format!("/dev/{n}"))
}

fn hugetlb(dir: &Path, usage: &str, max: Option<&str>) -> Vec<HugePages> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut sizes: Vec<String> = entries
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let rest = name.strip_prefix("hugetlb.")?;
            let (size, file) = rest.split_once('.')?;
            (file == usage).then(|| size.to_owned())
        })
        .collect();
    sizes.sort();
    sizes
        .into_iter()
        .map(|size| {
            let usage = read_u64(&dir.join(format!("hugetlb.{size}.{usage}"))).unwrap_or(0);
            let max_usage = max
                .and_then(|m| read_u64(&dir.join(format!("hugetlb.{size}.{m}"))))
                .unwrap_or(usage);
            HugePages {
                page_size: size,
                usage,
                max_usage,
            }
        })
        .collect()
}

fn pressure(files: V2Files<'_>) -> Option<Pressure> {
    // `some avg10=0.00 avg60=0.00 avg300=0.00 total=123` then the same for `full`.
    let read = |name: &str| -> Option<(u64, u64)> {
        let text = files.text(name)?;
        let total = |kind: &str| {
            text.lines()
                .find(|l| l.starts_with(kind))
                .and_then(|l| l.split_whitespace().find_map(|f| f.strip_prefix("total=")))
                .and_then(|t| t.parse().ok())
                .unwrap_or(0)
        };
        Some((total("some"), total("full")))
    };
    let (cpu_some, cpu_full) = read("cpu.pressure")?;
    let (memory_some, memory_full) = read("memory.pressure").unwrap_or_default();
    let (io_some, io_full) = read("io.pressure").unwrap_or_default();
    Some(Pressure {
        cpu_some,
        cpu_full,
        memory_some,
        memory_full,
        io_some,
        io_full,
    })
}

/// Processes, descriptors and sockets of the processes in the cgroup at `dir`, and the
/// open-files soft limit of the first of them.
fn processes(d: &mut StatsDetail, dir: &Path) {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    let pids: Vec<u32> = procs
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    d.processes = pids.len() as u64;
    for pid in &pids {
        let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for entry in entries.flatten() {
            d.file_descriptors += 1;
            if std::fs::read_link(entry.path()).is_ok_and(|target| {
                target
                    .as_os_str()
                    .as_encoded_bytes()
                    .starts_with(b"socket:")
            }) {
                d.sockets += 1;
            }
        }
    }
    d.max_open_files = pids.first().and_then(|pid| {
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
        open_files_soft_limit(&limits)
    });
}

/// The soft "Max open files" from `/proc/<pid>/limits` (`unlimited` reads as u64::MAX).
fn open_files_soft_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .next()?;
    if soft == "unlimited" {
        return Some(u64::MAX);
    }
    soft.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_stat_and_blkio_lines_parse_per_device() {
        let v2 =
            io_v2("8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n253:1 rbytes=1\n");
        assert_eq!(v2.len(), 2);
        assert_eq!((v2[0].major, v2[0].minor), (8, 0));
        assert_eq!(
            (
                v2[0].read_bytes,
                v2[0].write_bytes,
                v2[0].reads,
                v2[0].writes
            ),
            (4096, 8192, 1, 2)
        );
        assert_eq!(v2[1].read_bytes, 1);
    }

    #[test]
    fn a_guests_cgroup_files_give_its_detail() {
        let files: HashMap<String, String> = [
            (
                "cpu.stat",
                "usage_usec 900\nuser_usec 600\nsystem_usec 300\nnr_periods 7\nnr_throttled 2\nthrottled_usec 50\n",
            ),
            ("cpu.max", "20000 100000\n"),
            ("cpu.weight", "39\n"),
            ("memory.stat", "anon 4096\nfile 8192\nfile_mapped 1024\nkernel 2048\n"),
            ("memory.events", "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n"),
            ("memory.max", "100663296\n"),
            ("memory.swap.max", "max\n"),
            ("pids.max", "max\n"),
            ("cgroup.procs", "12\n40\n"),
            (
                "cpu.pressure",
                "some avg10=0.00 avg60=0.00 avg300=0.00 total=15\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=5\n",
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let d = read_sent(&files);
        assert_eq!((d.cpu_user_ns, d.cpu_system_ns), (600_000, 300_000));
        assert_eq!((d.cfs_periods, d.cfs_throttled_periods), (7, 2));
        assert_eq!(d.cfs_throttled_ns, 50_000);
        assert_eq!(
            (d.limits.cpu_quota, d.limits.cpu_period, d.limits.cpu_shares),
            (20_000, 100_000, 998)
        );
        assert_eq!(
            (d.memory_cache, d.memory_mapped_file, d.memory_kernel),
            (8192, 1024, 2048)
        );
        assert_eq!((d.memory_failcnt, d.oom_events), (3, 1));
        assert_eq!(
            (d.limits.memory_limit, d.limits.swap_limit),
            (100_663_296, 0)
        );
        assert_eq!((d.threads_max, d.processes), (0, 2));
        assert_eq!(d.pressure.map(|p| (p.cpu_some, p.cpu_full)), Some((15, 5)));
        // Nothing of the host is read for them: their descriptors are the guest's.
        assert_eq!(
            (d.file_descriptors, d.sockets, d.max_open_files),
            (0, 0, None)
        );
    }

    #[test]
    fn weights_convert_back_to_shares() {
        assert_eq!(weight_to_shares(1), 2);
        assert_eq!(weight_to_shares(10000), 262_144);
        // runc maps the default 1024 shares to weight 39; back it is close to 1024.
        let back = weight_to_shares(39);
        assert!((990..=1030).contains(&back), "{back}");
    }

    #[test]
    fn limits_read_max_as_unlimited() {
        assert_eq!(unlimited_as_zero(Some(9_223_372_036_854_771_712)), 0);
        assert_eq!(unlimited_as_zero(Some(1 << 20)), 1 << 20);
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 1048576              files\n";
        assert_eq!(open_files_soft_limit(limits), Some(1024));
    }

    #[test]
    fn own_cgroup_detail_counts_this_process() {
        let Ok((v1, v2)) = super::super::cgroup_dirs(std::process::id()) else {
            return;
        };
        let d = read(&v1, v2.as_deref());
        assert!(d.processes >= 1, "{d:?}");
        assert!(d.file_descriptors >= 3, "{d:?}");
        assert!(d.max_open_files.is_some(), "{d:?}");
    }
}
