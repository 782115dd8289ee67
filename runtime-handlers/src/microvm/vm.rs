//! One pod's VM on the host: QEMU, its vhost-user-vsock backend and its virtio-fs
//! daemon, in the pod's cgroup, each tracked by pid and start time in a record on disk
//! (so a restarted crispd, or one that never saw the pod's record, finds and ends them),
//! and ended with pidfds, which cannot hit a reused pid.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::net::PodNic;
use super::transport::Transport;

/// A host process of the VM's.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Helper {
    /// `qemu`, `vsock` or `virtiofsd`.
    pub name: String,
    /// Its pid.
    pub pid: i32,
    /// Its start time (clock ticks after boot, /proc/<pid>/stat field 22): a pid with
    /// another start time is somebody else.
    pub start_time: u64,
}

/// What the handler keeps of a pod's VM, in `<dir>/state.json` and in the pod's record.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VmRecord {
    /// The sandbox ID.
    pub id: String,
    /// The VM's directory (sockets, console log, the shared directory).
    pub dir: PathBuf,
    /// The pod's directory under crisp's state: a VM whose pod directory is gone was
    /// left behind by a crash.
    pub pod_dir: PathBuf,
    /// The pod's network namespace.
    pub netns: Option<PathBuf>,
    /// The pod's NIC as the guest took it.
    pub nic: Option<PodNic>,
    /// QEMU and its helpers, as started.
    pub helpers: Vec<Helper>,
    /// How the agent is reached.
    pub transport: Option<Transport>,
    /// The cgroup directories made for the VM.
    pub cgroups: Vec<PathBuf>,
    /// The guest's kernel release, as its agent told.
    pub kernel_release: String,
    /// Boot figures, ms: QEMU started to the agent's first answer (host clock), the
    /// guest kernel's start to that answer (guest clock), and the part of it PID 1 spent
    /// bringing the guest up (mounts, modules).
    #[serde(default)]
    pub boot_ms: u64,
    /// See `boot_ms`.
    #[serde(default)]
    pub guest_uptime_ms: u64,
    /// See `boot_ms`.
    #[serde(default)]
    pub guest_init_ms: u64,
    /// The VM's size: memory, MiB, and vCPUs (the configured base plus the pod's limits).
    #[serde(default)]
    pub memory_mib: u32,
    #[serde(default)]
    pub vcpus: u32,
}

/// The record's file in a VM directory.
pub fn record_path(dir: &Path) -> PathBuf {
    dir.join("state.json")
}

impl VmRecord {
    /// Writes the record (atomically).
    pub fn save(&self) -> std::io::Result<()> {
        let path = record_path(&self.dir);
        let tmp = path.with_extension("tmp");
        let text = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &path)
    }

    /// The record in `dir`, if any.
    pub fn load(dir: &Path) -> Option<Self> {
        let text = std::fs::read(record_path(dir)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// The helper called `name`.
    pub fn helper(&self, name: &str) -> Option<&Helper> {
        self.helpers.iter().find(|h| h.name == name)
    }
}

/// Process `pid`'s start time, if it runs (or is a zombie).
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name: state is field 3, start time field 22.
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// A pidfd for `helper`, if that very process still exists.
pub fn pidfd(helper: &Helper) -> Option<OwnedFd> {
    let fd = crate::pidfd::open(helper.pid)?;
    // Checked after opening: the pidfd now pins this pid to whoever had it.
    (start_time(helper.pid) == Some(helper.start_time)).then_some(fd)
}

/// Kills `helper` if it is still that process, and waits (a bounded time) for it to go.
pub async fn kill(helper: &Helper) {
    let Some(fd) = pidfd(helper) else {
        return;
    };
    // SAFETY: pidfd_send_signal takes the descriptor and no info.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    // A helper this crispd started is reaped by its reaper thread; one adopted by init
    // after a restart is init's to reap.
    let _ = tokio::time::timeout(Duration::from_secs(5), crate::pidfd::wait(&fd)).await;
}

/// Starts a helper: in a session of its own (crispd's signals are not its), in the
/// cgroup directories `cgroups`, its output to `<dir>/<name>.log`, with `keep` on fd 3.
pub fn spawn(
    name: &str,
    binary: &Path,
    args: &[String],
    dir: &Path,
    cgroups: &[PathBuf],
    keep: Option<&OwnedFd>,
) -> Result<Helper, String> {
    let log = std::fs::File::create(dir.join(format!("{name}.log")))
        .map_err(|e| format!("{name} log: {e}"))?;
    let log2 = log.try_clone().map_err(|e| format!("{name} log: {e}"))?;
    let procs: Vec<std::fs::File> = cgroups
        .iter()
        .filter_map(|d| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(d.join("cgroup.procs"))
                .ok()
        })
        .collect();
    let keep = keep.map(|k| k.as_raw_fd());
    let mut cmd = std::process::Command::new(binary);
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log2);
    // SAFETY: between fork and exec the child only makes system calls on descriptors it
    // inherited and a static buffer.
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            // Not crispd's OOM protection: a VM is the pod's, and goes before crispd.
            let adj = libc::open(
                c"/proc/self/oom_score_adj".as_ptr(),
                libc::O_WRONLY | libc::O_CLOEXEC,
            );
            if adj >= 0 {
                libc::write(adj, b"0".as_ptr().cast(), 1);
                libc::close(adj);
            }
            for f in &procs {
                libc::write(f.as_raw_fd(), b"0".as_ptr().cast(), 1);
            }
            if let Some(fd) = keep
                && libc::dup2(fd, 3) < 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("start {}: {e}", binary.display()))?;
    let pid = child.id() as i32;
    // Read before anything may reap it: an unreaped child's pid cannot be reused.
    let start_time = start_time(pid).unwrap_or(0);
    // Reap it whenever it ends while this crispd runs; it outlives crispd otherwise.
    std::thread::Builder::new()
        .name(format!("reap-{name}"))
        .spawn(move || {
            let mut child = child;
            let _ = child.wait();
        })
        .map_err(|e| format!("reaper for {name}: {e}"))?;
    Ok(Helper {
        name: name.to_owned(),
        pid,
        start_time,
    })
}

/// Waits until `path` exists (a helper's socket), or the helper has exited, or `deadline`.
pub async fn wait_for_socket(
    path: &Path,
    helper: &Helper,
    deadline: Instant,
) -> Result<(), String> {
    let fd = pidfd(helper);
    loop {
        if path.exists() {
            return Ok(());
        }
        if fd.as_ref().is_none_or(crate::pidfd::exited) {
            return Err(format!(
                "{} exited before making {}",
                helper.name,
                path.display()
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{} did not make {} in time",
                helper.name,
                path.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The last `lines` lines of a file, for an error message.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..].join(" | ")
}

/// Makes the VM's cgroup (`relative` under each hierarchy crisp places VMs in).
pub fn make_cgroups(relative: &str) -> Vec<PathBuf> {
    let relative = relative.trim_start_matches('/');
    if relative.is_empty() || relative.split('/').any(|p| p == "..") {
        return Vec::new();
    }
    crate::stats::cgroup_hierarchies()
        .into_iter()
        .map(|root| root.join(relative))
        .filter(|d| std::fs::create_dir_all(d).is_ok())
        .collect()
}

/// Unmounts everything mounted under `dir` (deepest first) and removes it.
pub fn remove_dir(dir: &Path) -> Result<(), String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = format!("{}/", dir.display());
    let mut points: Vec<String> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| p.replace("\\040", " "))
        .filter(|p| p.starts_with(&prefix))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        if let Ok(c) = std::ffi::CString::new(p.as_bytes()) {
            // SAFETY: a NUL-terminated path.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("{}: {e}", dir.display())),
    }
}

/// Whether KVM really works here: /dev/kvm opens, the CPU offers vmx or svm, and the
/// module is not the paravirtual PVM flavour (whose /dev/kvm crashes stock guests).
pub fn kvm_usable() -> bool {
    let opens = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let flags = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("flags"))
        .map(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
        .unwrap_or(false);
    opens && flags && !Path::new("/sys/module/kvm_pvm").exists()
}

/// The host's TSC frequency in kHz (for a TCG microvm guest's `tsc_early_khz`, without
/// which its calibration hangs in about half the boots).
pub fn tsc_khz() -> Option<u64> {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()?
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse::<f64>()
        .ok()
        .map(|mhz| (mhz * 1000.0) as u64)
}
