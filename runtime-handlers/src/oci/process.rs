//! The host processes the handler keeps: each container's monitor and its exit record,
//! a pod's PID-namespace init, and finding, waiting for and ending them.

use super::*;

/// The monitor of container `id`, found as the parent of its init `pid` (the monitor is
/// the subreaper that adopted it) and checked by its command line.
pub(super) fn monitor_of(pid: u32, id: &str) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name: state, then ppid.
    let ppid: i32 = stat
        .rsplit(')')
        .next()
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())?;
    (ppid > 1 && is_monitor_of(ppid, id)).then_some(ppid)
}

/// Whether process `pid` is the monitor of container `id`, by its command line.
pub(super) fn is_monitor_of(pid: i32, id: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
        let wanted = format!("\0--id\0{id}\0");
        cmdline
            .windows(wanted.len())
            .any(|w| w == wanted.as_bytes())
            && String::from_utf8_lossy(&cmdline).contains("crisp-monitor")
    })
}

/// How long a container may have neither a monitor nor an exit record before its end is
/// taken as lost.
pub(super) const MONITOR_GRACE: Duration = Duration::from_secs(2);

/// The monitor of container `id`: through its init while that lives, else the process
/// whose command line is `crisp-monitor ... --id <id>` (a monitor outlives its init while
/// it drains the container's output; a record written before pids were kept has pid 0).
pub(super) fn find_monitor(pid: u32, id: &str) -> Option<i32> {
    if pid > 0
        && let Some(monitor) = monitor_of(pid, id)
    {
        return Some(monitor);
    }
    // A gVisor subcontainer has no host process: its monitor reported its own pid.
    if pid > 1 && is_monitor_of(pid as i32, id) {
        return Some(pid as i32);
    }
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .find(|p| is_monitor_of(*p, id))
}

/// Runs `cmd` with a socket for its stdout and returns what it reports there (to the
/// end: the last line is `ok …` or `error …`). The process may keep running (a monitor
/// does); it is reaped in the background.
///
/// Nothing runs between fork and exec here, so the spawn is a `posix_spawn` (a vfork):
/// a fork would copy crispd's page tables and cost it a copy-on-write fault on every
/// page it writes next, milliseconds for each container created.
pub(super) async fn spawn_reporting(cmd: Command, binary: &Path) -> Result<String, HandlerError> {
    spawn_reporting_after(cmd, binary, None::<fn(u32) -> std::io::Result<()>>).await
}

/// As [`spawn_reporting`], with a handshake first: the process reports `userns` once it
/// has made a user namespace, `handshake` runs with its pid (and writes the namespace's
/// ID maps), and a byte on its stdin lets it go on.
pub(super) async fn spawn_reporting_after<F>(
    mut cmd: Command,
    binary: &Path,
    handshake: Option<F>,
) -> Result<String, HandlerError>
where
    F: FnOnce(u32) -> std::io::Result<()>,
{
    let io = |source: std::io::Error| HandlerError::Io {
        path: binary.to_owned(),
        source,
    };
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(io)?;
    ours.set_nonblocking(true).map_err(io)?;
    let ours = tokio::net::UnixStream::from_std(ours).map_err(io)?;
    cmd.stdin(if handshake.is_some() {
        std::process::Stdio::piped()
    } else {
        std::process::Stdio::null()
    })
    .stdout(std::process::Stdio::from(std::os::fd::OwnedFd::from(
        theirs,
    )))
    .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().map_err(|source| HandlerError::Spawn {
        binary: binary.to_owned(),
        source,
    })?;
    // The command holds the child's end until it is dropped.
    drop(cmd);
    let mut lines = tokio::io::BufReader::new(ours);
    if let Some(handshake) = handshake {
        let (Some(mut stdin), Some(pid)) = (child.stdin.take(), child.id()) else {
            let _ = child.kill().await;
            return Err(io(std::io::Error::other("the helper has no stdin")));
        };
        let mut said = String::new();
        let read = tokio::io::AsyncBufReadExt::read_line(&mut lines, &mut said).await;
        // Without the go-ahead the helper reports an error and exits.
        if read.is_ok() && said.trim() == "userns" {
            match handshake(pid) {
                Ok(()) => stdin.write_all(b"\n").await.map_err(io)?,
                Err(e) => {
                    let _ = child.kill().await;
                    return Err(io(e));
                }
            }
        } else {
            tokio::spawn(async move {
                let _ = child.wait().await;
            });
            return Ok(said.trim().to_owned());
        }
    }
    let mut line = String::new();
    lines.read_to_string(&mut line).await.map_err(io)?;
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    Ok(line.trim().to_owned())
}

/// Starts the init of a pod's shared PID namespace (`crisp-monitor --pause`) and returns
/// its pid. It outlives crispd; kill it with SIGKILL when the pod stops. With `userns`,
/// the init also holds the pod's user namespace and the namespaces made inside it.
pub(super) async fn spawn_pause(
    monitor: &Path,
    sandbox_id: &str,
    userns: Option<&UserNamespace>,
) -> Result<u32, HandlerError> {
    let mut cmd = Command::new(monitor);
    cmd.arg("--pause");
    if userns.is_some() {
        cmd.arg("--userns");
    }
    // Named by its pod, so that a crash before its namespace is pinned still lets the
    // next start find it ([`kill_sandbox_inits`]).
    cmd.arg("--sandbox-id").arg(sandbox_id);
    let line = match userns {
        None => spawn_reporting(cmd, monitor).await?,
        Some(ns) => {
            let (uids, gids) = (
                UserNamespace::map_text(&ns.uids),
                UserNamespace::map_text(&ns.gids),
            );
            let write_maps = move |pid: u32| {
                std::fs::write(format!("/proc/{pid}/gid_map"), gids.as_bytes())?;
                std::fs::write(format!("/proc/{pid}/uid_map"), uids.as_bytes())
            };
            spawn_reporting_after(cmd, monitor, Some(write_maps)).await?
        }
    };
    match line.strip_prefix("ok ").and_then(|p| p.parse().ok()) {
        Some(pid) => Ok(pid),
        None => Err(HandlerError::Monitor {
            id: "pod namespaces".to_owned(),
            message: line.strip_prefix("error ").unwrap_or(&line).to_owned(),
        }),
    }
}

/// The exit the monitor recorded in `bundle`, if the container has exited.
pub fn exit_status(bundle: &Path) -> Option<ExitStatus> {
    let text = std::fs::read_to_string(bundle.join("exit")).ok()?;
    let mut lines = text.lines();
    let code = lines.next()?.trim().parse().ok()?;
    let finished_at = lines.next()?.trim().parse().ok()?;
    Some(ExitStatus {
        code,
        finished_at,
        oom_killed: false,
    })
}

/// Processes whose command is crisp-monitor on this host (container monitors and
/// PID-namespace inits, whichever OCI handler started them).
pub fn monitor_processes() -> usize {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return 0;
    };
    procs
        .flatten()
        .filter(|e| {
            e.file_name()
                .as_encoded_bytes()
                .iter()
                .all(u8::is_ascii_digit)
        })
        .filter(|e| {
            std::fs::read_to_string(e.path().join("comm"))
                .is_ok_and(|c| c.trim() == "crisp-monitor")
        })
        .count()
}

/// The exit of container `c` with whether the OOM killer struck in its memory cgroup
/// (cgroupfs paths; the cgroup lives until the container is deleted).
pub(super) fn exit_of(c: &ContainerRef<'_>) -> Option<ExitStatus> {
    let mut exit = exit_status(c.bundle)?;
    exit.oom_killed = exit.code != 0 && oom_killed(c.cgroup_path);
    Some(exit)
}

pub(super) fn oom_killed(cgroup_path: &str) -> bool {
    if cgroup_path.is_empty() || cgroup_path.contains(':') || cgroup_path.contains("..") {
        return false;
    }
    let count = |file: String| {
        std::fs::read_to_string(file).ok().and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("oom_kill "))
                .and_then(|n| n.trim().parse::<u64>().ok())
        })
    };
    let v1 = count(format!(
        "/sys/fs/cgroup/memory{cgroup_path}/memory.oom_control"
    ));
    let v2 = count(format!("/sys/fs/cgroup{cgroup_path}/memory.events"));
    v1.or(v2).is_some_and(|n| n > 0)
}

pub(super) fn rand_u32() -> u32 {
    let mut v = [0u8; 4];
    // SAFETY: getrandom writes at most 4 bytes into `v`.
    unsafe { libc::getrandom(v.as_mut_ptr().cast(), 4, 0) };
    u32::from_le_bytes(v) % 1_000_000
}

/// Kills the init (`crisp-monitor --pause`) of sandbox `id`, which ends every process in
/// its PID namespace. It is found in one pass over this host's processes: by its command
/// line, which names the pod (what a crash before the namespace was pinned leaves), or
/// by the inode of the PID namespace pinned at `pin` (an init started before inits were
/// named).
pub(super) fn kill_sandbox_inits(id: &str, pin: &Path) {
    use std::os::unix::fs::MetadataExt;
    let pinned = std::fs::metadata(pin).ok();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    let wanted = format!("\0--sandbox-id\0{id}\0");
    for entry in procs.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if !String::from_utf8_lossy(&cmdline).contains("crisp-monitor\0--pause") {
            continue;
        }
        if cmdline
            .windows(wanted.len())
            .any(|w| w == wanted.as_bytes())
        {
            // SAFETY: kill takes no pointers; the process is this sandbox's own init.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        } else if let Some(pinned) = &pinned
            && std::fs::metadata(format!("/proc/{pid}/ns/pid"))
                .is_ok_and(|m| m.ino() == pinned.ino() && m.dev() == pinned.dev())
        {
            kill_pid_namespace_init(pid, pin);
        }
    }
}

/// The `oci` handler's sandbox state format.
pub(super) const SANDBOX_STATE_VERSION: u32 = 1;

/// The init pid a sandbox state names (version 0 is a bare pid).
pub(super) fn sandbox_init(state: &SandboxState) -> u32 {
    let pid = match state.version {
        0 => state.data.as_u64(),
        _ => state.data["init_pid"].as_u64(),
    };
    pid.and_then(|p| u32::try_from(p).ok()).unwrap_or(0)
}

/// Whether the state names a gVisor sandbox (started by `finish_sandbox`).
pub(super) fn gvisor_sandbox(state: &SandboxState) -> bool {
    state.version >= 1 && state.data["gvisor_pid"].as_u64().is_some()
}

/// The inode of the init's PID namespace, as the state recorded it at start (none in
/// states from before it was kept).
pub(super) fn sandbox_pid_namespace(state: &SandboxState) -> Option<u64> {
    state.data["pid_ns"].as_u64()
}

/// The inode of process `pid`'s PID namespace.
pub(super) fn pid_namespace_of(pid: u32) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/ns/pid"))
        .ok()
        .map(|m| m.ino())
}

/// Whether `pid` still is the sandbox's init: its PID namespace is the one recorded at
/// start when the state has it (so neither a reused pid nor another pod's init can pass,
/// pinned or not), else the pinned one.
pub(super) fn is_sandbox_init(pid: u32, state: &SandboxState, pin: &Path) -> bool {
    match sandbox_pid_namespace(state) {
        Some(ns) => pid_namespace_of(pid) == Some(ns),
        None => is_pid_namespace_init(pid, pin),
    }
}

/// Whether `pid` is the init of the PID namespace pinned at `pin` (or, before pinning,
/// still our monitor in pause mode): a pid reused after a reboot is not.
pub(super) fn is_pid_namespace_init(pid: u32, pin: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (
        std::fs::metadata(format!("/proc/{pid}/ns/pid")),
        std::fs::metadata(pin),
    ) {
        (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
        (Ok(_), Err(_)) => std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains("crisp-monitor\0--pause")),
        _ => false,
    }
}

/// Kills the pod's PID-namespace init, but only if `pid` still is that init (its PID
/// namespace is the pinned one): a pid reused after a reboot is left alone.
pub(super) fn kill_pid_namespace_init(pid: u32, pin: &Path) {
    if is_pid_namespace_init(pid, pin) {
        // SAFETY: kill takes no pointers; the pid was checked to be the pod's init.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
}

/// Whether the running kernel's version is at least `major.minor`.
pub(super) fn kernel_at_least(major: u32, minor: u32) -> bool {
    // The running kernel's version, read once: `features()` asks on every create and
    // start.
    static RELEASE: std::sync::OnceLock<(u32, u32)> = std::sync::OnceLock::new();
    *RELEASE.get_or_init(|| {
        // SAFETY: utsname is plain data; uname fills it.
        let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
        // SAFETY: `uts` is a valid utsname for uname to write.
        if unsafe { libc::uname(&mut uts) } != 0 {
            return (0, 0);
        }
        let release: String = uts
            .release
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8 as char)
            .collect();
        let mut parts = release
            .split(|c: char| !c.is_ascii_digit())
            .map(|p| p.parse::<u32>().unwrap_or(0));
        (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
    }) >= (major, minor)
}

/// Waits until process `pid` has exited, through a pidfd; `false` if there is none.
pub(super) async fn wait_process(pid: i32) -> bool {
    let Some(pidfd) = crate::pidfd::open(pid) else {
        return false;
    };
    crate::pidfd::wait(&pidfd).await;
    true
}
