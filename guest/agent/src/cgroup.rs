//! Containers' cgroups in the guest (cgroup v2): a directory per container under the
//! guest's root cgroup, with its limits, its usage and its OOM kills. Outside a VM (the
//! agent on a unix socket) there are none: the host's cgroups are not the agent's.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use agent_proto::{ContainerStatsResponse, Resources};

/// The files behind the host's detailed metrics (its `stats::read_sent` reads them).
const DETAIL_FILES: &[&str] = &[
    "cpu.stat",
    "cpu.max",
    "cpu.weight",
    "cpu.pressure",
    "memory.stat",
    "memory.peak",
    "memory.events",
    "memory.max",
    "memory.low",
    "memory.swap.max",
    "memory.pressure",
    "io.stat",
    "io.pressure",
    "pids.max",
    "cgroup.procs",
];

/// The guest's cgroups, or none.
pub struct Cgroups {
    root: Option<PathBuf>,
}

/// `value` written to `file`, with the file named in the error.
fn write(file: &Path, value: &str) -> Result<(), String> {
    std::fs::write(file, value).map_err(|e| format!("{value:?} to {}: {e}", file.display()))
}

/// The fields of a flat-keyed cgroup file (`key value` per line).
fn keyed(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok()).flatten()
        })
        .unwrap_or(0)
}

fn read_u64(file: &Path) -> u64 {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

/// `memory.swap.max` for an OCI memory-plus-swap limit `swap` beside memory limit
/// `memory` (-1 for none), by runc's rules.
fn swap_max(memory: i64, swap: i64) -> Result<String, String> {
    if swap < 0 {
        return Ok("max".to_owned());
    }
    if memory < 0 {
        return Err("a swap limit needs a memory limit".to_owned());
    }
    if swap < memory {
        return Err(format!(
            "the memory+swap limit ({swap}) is below the memory limit ({memory})"
        ));
    }
    Ok((swap - memory).to_string())
}

/// CPU shares (cgroup v1 units) as a cgroup v2 weight, by runc's formula.
fn weight_of(shares: u64) -> u64 {
    if shares == 0 {
        return 100;
    }
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

impl Cgroups {
    /// Cgroups under `root` (the guest's cgroup2 mount), with the controllers containers
    /// need enabled for its children; `None` for none.
    pub fn new(root: Option<PathBuf>) -> Self {
        if let Some(root) = &root {
            // One at a time: a controller the kernel lacks must not keep the others off.
            for controller in ["+cpu", "+memory", "+pids", "+cpuset", "+io"] {
                let _ = std::fs::write(root.join("cgroup.subtree_control"), controller);
            }
        }
        Self { root }
    }

    /// The directory of container `id`'s cgroup, if the guest has cgroups.
    fn dir(&self, id: &str) -> Result<Option<PathBuf>, String> {
        let Some(root) = &self.root else {
            return Ok(None);
        };
        if id.is_empty()
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!("{id:?} is not a container ID"));
        }
        Ok(Some(root.join(id)))
    }

    /// Creates container `id`'s cgroup with limits `resources`.
    pub fn create(&self, id: &str, resources: Option<&Resources>) -> Result<(), String> {
        let Some(dir) = self.dir(id)? else {
            return Ok(());
        };
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("cgroup {}: {e}", dir.display())),
        }
        match resources {
            Some(r) => self.apply(id, r).inspect_err(|_| {
                let _ = std::fs::remove_dir(&dir);
            }),
            None => Ok(()),
        }
    }

    /// Applies the limits `r` sets to container `id`'s cgroup, leaving the others.
    pub fn apply(&self, id: &str, r: &Resources) -> Result<(), String> {
        let Some(dir) = self.dir(id)? else {
            return Ok(());
        };
        let limit = |v: i64| {
            if v < 0 {
                "max".to_owned()
            } else {
                v.to_string()
            }
        };
        // A swap limit that cannot be is refused before anything is written, so a bad
        // update changes nothing. The OCI figure is memory plus swap; cgroup v2 limits
        // the swap alone. The memory limit is this request's, or the one in force.
        let swap = match r.memory_swap.filter(|s| *s != 0) {
            Some(swap) => {
                let memory = r.memory_limit.filter(|m| *m != 0).unwrap_or_else(|| {
                    std::fs::read_to_string(dir.join("memory.max"))
                        .ok()
                        .and_then(|t| t.trim().parse().ok())
                        .unwrap_or(-1)
                });
                Some(swap_max(memory, swap)?)
            }
            None => None,
        };
        if let Some(cpus) = r.cpuset_cpus.as_deref().filter(|c| !c.is_empty()) {
            write(&dir.join("cpuset.cpus"), cpus)?;
        }
        if let Some(mems) = r.cpuset_mems.as_deref().filter(|m| !m.is_empty()) {
            write(&dir.join("cpuset.mems"), mems)?;
        }
        if let Some(shares) = r.cpu_shares.filter(|s| *s > 0) {
            write(&dir.join("cpu.weight"), &weight_of(shares).to_string())?;
        }
        if r.cpu_quota.is_some() || r.cpu_period.is_some_and(|p| p > 0) {
            // Either half may come alone: the other stays as it is.
            let current = std::fs::read_to_string(dir.join("cpu.max")).unwrap_or_default();
            let mut fields = current.split_whitespace();
            let (quota, period) = (fields.next().unwrap_or("max"), fields.next());
            let quota = match r.cpu_quota {
                Some(q) if q > 0 => q.to_string(),
                Some(_) => "max".to_owned(),
                None => quota.to_owned(),
            };
            let period = match r.cpu_period.filter(|p| *p > 0) {
                Some(p) => p.to_string(),
                None => period.unwrap_or("100000").to_owned(),
            };
            write(&dir.join("cpu.max"), &format!("{quota} {period}"))?;
        }
        if let Some(memory) = r.memory_limit.filter(|m| *m != 0) {
            write(&dir.join("memory.max"), &limit(memory))?;
        }
        if let Some(value) = swap {
            // A guest kernel without swap accounting has no such file.
            let file = dir.join("memory.swap.max");
            if file.exists() {
                write(&file, &value)?;
            }
        }
        if let Some(pids) = r.pids_limit {
            write(
                &dir.join("pids.max"),
                &if pids <= 0 {
                    "max".to_owned()
                } else {
                    pids.to_string()
                },
            )?;
        }
        Ok(())
    }

    /// `cgroup.procs` of container `id`, open for writing: a process writing "0" to it
    /// moves into the cgroup.
    pub fn procs(&self, id: &str) -> Result<Option<OwnedFd>, String> {
        let Some(dir) = self.dir(id)? else {
            return Ok(None);
        };
        let file = dir.join("cgroup.procs");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .map(|f| Some(f.into()))
            .map_err(|e| format!("{}: {e}", file.display()))
    }

    /// Processes of container `id` the OOM killer killed so far.
    pub fn oom_kills(&self, id: &str) -> u64 {
        match self.dir(id) {
            Ok(Some(dir)) => keyed(
                &std::fs::read_to_string(dir.join("memory.events")).unwrap_or_default(),
                "oom_kill",
            ),
            _ => 0,
        }
    }

    /// Container `id`'s usage now; with `detail`, the files behind the detailed metrics.
    pub fn stats(&self, id: &str, detail: bool) -> Result<ContainerStatsResponse, String> {
        let Some(dir) = self.dir(id)? else {
            return Err("the agent has no cgroups outside a VM".to_owned());
        };
        let cpu = std::fs::read_to_string(dir.join("cpu.stat"))
            .map_err(|e| format!("container {id}'s cgroup: {e}"))?;
        let memory = std::fs::read_to_string(dir.join("memory.stat")).unwrap_or_default();
        Ok(ContainerStatsResponse {
            timestamp_unix_nanos: crate::service::now_nanos(),
            cpu_usage_usec: keyed(&cpu, "usage_usec"),
            memory_current: read_u64(&dir.join("memory.current")),
            inactive_file: keyed(&memory, "inactive_file"),
            anon: keyed(&memory, "anon"),
            page_faults: keyed(&memory, "pgfault"),
            major_page_faults: keyed(&memory, "pgmajfault"),
            swap: read_u64(&dir.join("memory.swap.current")),
            pids: read_u64(&dir.join("pids.current")),
            cgroup_files: if detail {
                DETAIL_FILES
                    .iter()
                    .filter_map(|name| {
                        let text = std::fs::read_to_string(dir.join(name)).ok()?;
                        Some(((*name).to_owned(), text))
                    })
                    .collect()
            } else {
                Default::default()
            },
        })
    }

    /// Kills every process in container `id`'s cgroup (`cgroup.kill`, Linux 5.14).
    pub fn kill_all(&self, id: &str) {
        if let Ok(Some(dir)) = self.dir(id) {
            let _ = std::fs::write(dir.join("cgroup.kill"), "1");
        }
    }

    /// Removes container `id`'s cgroup once its processes are gone (killed first).
    pub async fn remove(&self, id: &str) {
        let Ok(Some(dir)) = self.dir(id) else {
            return;
        };
        self.kill_all(id);
        // The killed take a moment to leave; the directories go once they have, the
        // deepest first (a container allowed to write its cgroup may have made some).
        for _ in 0..100 {
            match remove_tree(&dir) {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                _ => return,
            }
        }
    }
}

/// Removes the cgroup directory `dir` and the cgroups under it, deepest first (a cgroup
/// directory holds only the kernel's files, which go with it).
fn remove_tree(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)?.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&entry.path())?;
        }
    }
    std::fs::remove_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_become_weights_as_runc_makes_them() {
        assert_eq!(weight_of(2), 1);
        assert_eq!(weight_of(1024), 39);
        assert_eq!(weight_of(262_144), 10_000);
        assert_eq!(weight_of(0), 100);
    }

    #[test]
    fn swap_limits_follow_runcs_rules() {
        assert_eq!(swap_max(100, -1), Ok("max".to_owned()));
        assert_eq!(swap_max(100, 150), Ok("50".to_owned()));
        assert_eq!(swap_max(100, 100), Ok("0".to_owned()));
        assert!(swap_max(-1, 150).is_err());
        assert!(swap_max(100, 50).is_err());
    }

    #[test]
    fn keyed_files_are_read_by_key() {
        let text = "usage_usec 1200\nuser_usec 800\nsystem_usec 400\n";
        assert_eq!(keyed(text, "usage_usec"), 1200);
        assert_eq!(keyed(text, "user_usec"), 800);
        assert_eq!(keyed(text, "nr_periods"), 0);
    }

    #[test]
    fn container_ids_cannot_leave_the_root() {
        let c = Cgroups {
            root: Some(PathBuf::from("/sys/fs/cgroup")),
        };
        assert!(c.dir("../x").is_err());
        assert!(c.dir("a/b").is_err());
        assert!(c.dir("").is_err());
        assert_eq!(
            c.dir("abc123").ok().flatten(),
            Some(PathBuf::from("/sys/fs/cgroup/abc123"))
        );
        let none = Cgroups { root: None };
        assert_eq!(none.dir("abc").ok().flatten(), None);
    }
}
