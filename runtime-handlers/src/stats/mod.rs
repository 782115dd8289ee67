//! Resource usage of host processes' cgroups, for cgroup v1, v2 and the hybrid layout.
//!
//! The cgroup is found from `/proc/<pid>/cgroup` of a process in it, so the cgroup driver
//! (cgroupfs or systemd) and the path the runtime chose do not matter. Memory working set
//! is usage minus inactive file pages, as kubelet and cAdvisor compute it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

mod detail;

pub use detail::{BlockDevice, HugePages, Limits, Pressure, StatsDetail, device_name, read_sent};

/// A cgroup's usage at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerStats {
    /// When it was read, ns since the epoch.
    pub timestamp: i64,
    /// Cumulative CPU time, ns.
    pub cpu_usage_ns: u64,
    /// Memory usage (including page cache), bytes.
    pub memory_usage: u64,
    /// Working set: usage minus inactive file pages, bytes.
    pub working_set: u64,
    /// Anonymous and swap-cache memory, bytes.
    pub rss: u64,
    /// Page faults.
    pub page_faults: u64,
    /// Major page faults.
    pub major_page_faults: u64,
    /// Swap in use, bytes.
    pub swap: u64,
    /// Tasks (threads) in the cgroup.
    pub pids: u64,
    /// The full figures, when they were asked for.
    pub detail: Option<std::sync::Arc<StatsDetail>>,
    /// Memory and task figures are the whole sandbox's, the same for each of its
    /// containers (a gVisor sandbox): a pod's are not their sum.
    pub sandbox_wide: bool,
}

/// Where each hierarchy is mounted: v1 controllers by name, and the v2 mount.
#[derive(Debug, Default)]
struct Mounts {
    v1: HashMap<String, PathBuf>,
    v2: Option<PathBuf>,
}

fn mounts() -> &'static Mounts {
    static MOUNTS: OnceLock<Mounts> = OnceLock::new();
    MOUNTS.get_or_init(|| {
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        parse_mounts(&text)
    })
}

fn parse_mounts(mountinfo: &str) -> Mounts {
    let mut mounts = Mounts::default();
    for line in mountinfo.lines() {
        // id parent maj:min root mountpoint options [optional...] - fstype source super
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mountpoint = left.split(' ').nth(4).unwrap_or_default();
        let mut right = right.split(' ');
        let fstype = right.next().unwrap_or_default();
        let super_options = right.nth(1).unwrap_or_default();
        match fstype {
            "cgroup2" => {
                mounts.v2.get_or_insert_with(|| PathBuf::from(mountpoint));
            }
            "cgroup" => {
                for option in super_options.split(',') {
                    let name = option.strip_prefix("name=").unwrap_or(option);
                    let flag = matches!(
                        name,
                        "rw" | "ro" | "xattr" | "noprefix" | "clone_children" | "cpuset_v2_mode"
                    );
                    if !flag && !name.contains('=') {
                        mounts
                            .v1
                            .entry(name.to_owned())
                            .or_insert_with(|| PathBuf::from(mountpoint));
                    }
                }
            }
            _ => {}
        }
    }
    mounts
}

/// The cgroup directories of `pid`: v1 controller name → directory, and the v2 directory.
fn cgroup_dirs(pid: u32) -> std::io::Result<(HashMap<String, PathBuf>, Option<PathBuf>)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    let mounts = mounts();
    let mut v1 = HashMap::new();
    let mut v2 = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let relative = path.trim_start_matches('/');
        if controllers.is_empty() {
            v2 = mounts.v2.as_ref().map(|m| m.join(relative));
            continue;
        }
        for controller in controllers.split(',') {
            let controller = controller.strip_prefix("name=").unwrap_or(controller);
            if let Some(mount) = mounts.v1.get(controller) {
                v1.insert(controller.to_owned(), mount.join(relative));
            }
        }
    }
    Ok((v1, v2))
}

/// Every cgroup directory process `pid` is in (one per v1 hierarchy, and the v2 one),
/// each once.
pub fn cgroup_directories(pid: u32) -> std::io::Result<Vec<PathBuf>> {
    let (v1, v2) = cgroup_dirs(pid)?;
    let mut dirs: Vec<PathBuf> = v1.into_values().chain(v2).collect();
    dirs.sort();
    dirs.dedup();
    Ok(dirs)
}

/// The hierarchies a handler places its own host processes in (a VM's QEMU and
/// helpers): the v1 ones of the memory, cpu, cpuacct and pids controllers, and the v2
/// one, each once.
pub fn cgroup_hierarchies() -> Vec<PathBuf> {
    let mounts = mounts();
    let mut roots: Vec<PathBuf> = ["memory", "cpu", "cpuacct", "pids"]
        .iter()
        .filter_map(|c| mounts.v1.get(*c).cloned())
        .chain(mounts.v2.clone())
        .collect();
    roots.sort();
    roots.dedup();
    roots
}

/// SIGKILLs every process in the cgroup at `relative` (a cgroupfs path), in every
/// hierarchy: what a runtime interrupted half-way left there (an init that never got its
/// start) must go before the directory can.
pub fn kill_cgroup(relative: &str) {
    let relative = relative.trim_start_matches('/');
    if relative.is_empty() || relative.split('/').any(|p| p == "..") {
        return;
    }
    for root in all_hierarchies() {
        let Ok(procs) = std::fs::read_to_string(root.join(relative).join("cgroup.procs")) else {
            continue;
        };
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            // SAFETY: kill takes no pointers; the pid was listed in the container's own
            // cgroup, which holds nothing else.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Removes the cgroup at `relative` (a cgroupfs path such as `/crisp/crisp-<id>`) from
/// every hierarchy where it is left empty: a runtime that fails half-way (or gVisor's)
/// may leave it behind. Busy or absent directories are left alone.
pub fn remove_empty_cgroup(relative: &str) {
    let relative = relative.trim_start_matches('/');
    if relative.is_empty() || relative.split('/').any(|p| p == "..") {
        return;
    }
    for root in all_hierarchies() {
        let _ = std::fs::remove_dir(root.join(relative));
    }
}

/// Whether the cgroup at `relative` is still present in any hierarchy.
pub fn cgroup_exists(relative: &str) -> bool {
    let relative = relative.trim_start_matches('/');
    !relative.is_empty()
        && all_hierarchies()
            .iter()
            .any(|root| root.join(relative).is_dir())
}

/// Every mounted hierarchy, v1 and v2, each once.
fn all_hierarchies() -> Vec<&'static PathBuf> {
    let mounts = mounts();
    let mut roots: Vec<&PathBuf> = mounts.v1.values().chain(mounts.v2.iter()).collect();
    roots.sort();
    roots.dedup();
    roots
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn stat_file(path: &Path) -> HashMap<String, u64> {
    parse_stat(&std::fs::read_to_string(path).unwrap_or_default())
}

/// A flat-keyed cgroup file's text (`key value` per line).
fn parse_stat(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_owned(), v.trim().parse().ok()?))
        })
        .collect()
}

/// Reads the usage of the cgroup `pid` is in, with [`StatsDetail`] when `detail` is set.
/// v1 controllers win where both are present (the hybrid layout puts controllers on v1
/// and leaves v2 empty).
pub fn cgroup_stats(pid: u32, detail: bool) -> std::io::Result<ContainerStats> {
    let (v1, v2) = cgroup_dirs(pid)?;
    let mut stats = ContainerStats {
        timestamp: now_ns(),
        ..ContainerStats::default()
    };
    if let Some(cpu) = v1.get("cpuacct") {
        stats.cpu_usage_ns = read_u64(&cpu.join("cpuacct.usage")).unwrap_or(0);
    } else if let Some(dir) = &v2 {
        let cpu = stat_file(&dir.join("cpu.stat"));
        stats.cpu_usage_ns = cpu.get("usage_usec").copied().unwrap_or(0) * 1000;
    }
    if let Some(memory) = v1.get("memory") {
        let stat = stat_file(&memory.join("memory.stat"));
        let get = |k: &str| stat.get(k).copied().unwrap_or(0);
        stats.memory_usage = read_u64(&memory.join("memory.usage_in_bytes")).unwrap_or(0);
        stats.working_set = stats
            .memory_usage
            .saturating_sub(get("total_inactive_file"));
        stats.rss = get("total_rss");
        stats.page_faults = get("total_pgfault");
        stats.major_page_faults = get("total_pgmajfault");
        stats.swap = get("total_swap");
    } else if let Some(dir) = &v2 {
        let stat = stat_file(&dir.join("memory.stat"));
        let get = |k: &str| stat.get(k).copied().unwrap_or(0);
        stats.memory_usage = read_u64(&dir.join("memory.current")).unwrap_or(0);
        stats.working_set = stats.memory_usage.saturating_sub(get("inactive_file"));
        stats.rss = get("anon");
        stats.page_faults = get("pgfault");
        stats.major_page_faults = get("pgmajfault");
        stats.swap = read_u64(&dir.join("memory.swap.current")).unwrap_or(0);
    }
    if let Some(pids) = v1.get("pids") {
        stats.pids = read_u64(&pids.join("pids.current")).unwrap_or(0);
    } else if let Some(dir) = &v2 {
        stats.pids = read_u64(&dir.join("pids.current")).unwrap_or(0);
    }
    if detail {
        stats.detail = Some(std::sync::Arc::new(detail::read(&v1, v2.as_deref())));
    }
    Ok(stats)
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftover_empty_cgroups_are_removed_busy_ones_kept() {
        let name = format!("crisp-test-leftover-{}", std::process::id());
        let roots: Vec<PathBuf> = mounts()
            .v1
            .values()
            .chain(mounts().v2.iter())
            .cloned()
            .collect();
        let made: Vec<PathBuf> = roots
            .iter()
            .map(|r| r.join(&name))
            .filter(|d| std::fs::create_dir(d).is_ok())
            .collect();
        if made.is_empty() {
            return; // not root, or no cgroup hierarchy mounted here
        }
        remove_empty_cgroup(&format!("/{name}"));
        assert!(made.iter().all(|d| !d.exists()), "{made:?}");
        // Nothing outside the hierarchies is touched.
        remove_empty_cgroup("/../etc");
        assert!(Path::new("/etc").exists());
    }

    #[test]
    fn hybrid_mountinfo_maps_controllers_and_the_unified_mount() {
        let text = "\
30 24 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
32 30 0:28 / /sys/fs/cgroup/systemd rw,nosuid shared:11 - cgroup cgroup rw,xattr,name=systemd
35 30 0:31 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:15 - cgroup cgroup rw,cpu,cpuacct
36 30 0:32 / /sys/fs/cgroup/memory rw,nosuid shared:16 - cgroup cgroup rw,memory
";
        let m = parse_mounts(text);
        assert_eq!(m.v2, Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(
            m.v1.get("cpuacct"),
            Some(&PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"))
        );
        assert_eq!(
            m.v1.get("memory"),
            Some(&PathBuf::from("/sys/fs/cgroup/memory"))
        );
        assert_eq!(
            m.v1.get("systemd"),
            Some(&PathBuf::from("/sys/fs/cgroup/systemd"))
        );
        assert!(!m.v1.contains_key("xattr"));
    }

    #[test]
    fn own_cgroup_reports_cpu_and_memory() {
        // This test process has used CPU and memory; whatever the layout, they show.
        let s = cgroup_stats(std::process::id(), true).expect("own cgroup");
        assert!(s.timestamp > 0);
        assert!(s.memory_usage > 0, "{s:?}");
        assert!(s.working_set <= s.memory_usage);
        assert!(s.detail.is_some_and(|d| d.processes >= 1));
    }
}
