//! The `oci` handler: an OCI runtime (runc, crun, runsc) driven through its command line,
//! one `crisp-monitor` per container owning the container's stdio and exit status.
//!
//! Bundle layout (one directory per container, chosen by the caller): `config.json`,
//! `runtime.log` (the runtime's JSON log), `container.pid`, `exit` (written by the
//! monitor when the container's init exits: code, then finish time in ns).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_spec::runtime::Process;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use crate::error::HandlerError;
use crate::exec::ExecSession;
use crate::handler::{
    ContainerRef, ContainerSpec, Features, Recovered, RuntimeHandler, SandboxSpec, SandboxState,
    StartedSandbox, UserNamespace,
};
use crate::stats::{ContainerStats, cgroup_stats};

/// One configured OCI runtime.
#[derive(Debug, Clone)]
pub struct OciRuntime {
    /// The handler's name (for messages).
    pub name: String,
    /// The runtime binary.
    pub binary: PathBuf,
    /// Its state directory (`--root`).
    pub root: PathBuf,
    /// Global arguments put before every subcommand.
    pub runtime_args: Vec<String>,
    /// The monitor binary.
    pub monitor: PathBuf,
    /// The helper that runs ExecSync processes without the runtime (`crisp-enter`).
    pub enter: PathBuf,
    /// ExecSync through the runtime's `exec` rather than `crisp-enter`.
    pub runtime_exec: bool,
}

/// What the runtime reports of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeState {
    /// `created`, `running`, `stopped`, `paused`.
    pub status: String,
    /// The init process, 0 once stopped.
    pub pid: u32,
}

/// How a container's init ended, as its monitor recorded it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExitStatus {
    /// Exit code (128 + signal for a signal death).
    pub code: i32,
    /// When, in ns since the epoch.
    pub finished_at: i64,
    /// The kernel's OOM killer struck in the container.
    pub oom_killed: bool,
}

/// ExecSync's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// Exit code of the command.
    pub exit_code: i32,
    /// Its stdout (capped).
    pub stdout: Vec<u8>,
    /// Its stderr (capped).
    pub stderr: Vec<u8>,
}

/// Resource limits changed on a running container (`runc update`); `None` leaves one as
/// it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceUpdate {
    /// CPU shares (relative weight).
    pub cpu_shares: Option<u64>,
    /// CFS quota in microseconds per period.
    pub cpu_quota: Option<i64>,
    /// CFS period in microseconds.
    pub cpu_period: Option<u64>,
    /// CPUs allowed (`0-1`).
    pub cpuset_cpus: Option<String>,
    /// Memory nodes allowed.
    pub cpuset_mems: Option<String>,
    /// Memory limit in bytes.
    pub memory: Option<i64>,
    /// Memory plus swap limit in bytes.
    pub memory_swap: Option<i64>,
}

/// Cap on ExecSync output per stream (kubelet's is 16 MiB).
pub const MAX_EXEC_OUTPUT: usize = 16 * 1024 * 1024;

impl OciRuntime {
    /// gVisor's runsc, which runs its own kernel.
    fn is_gvisor(&self) -> bool {
        self.binary.file_name().is_some_and(|n| n == "runsc")
    }

    /// runc and crun, whose container processes are host processes in host namespaces:
    /// the only runtimes crisp-enter may enter containers of. Any other runtime (a
    /// sandbox or VM runtime, a renamed or wrapped binary) gets ExecSync through itself.
    fn runs_on_host_kernel(&self) -> bool {
        self.binary
            .file_name()
            .is_some_and(|n| n == "runc" || n == "crun")
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.args(&self.runtime_args).arg("--root").arg(&self.root);
        cmd.kill_on_drop(true);
        cmd
    }

    async fn run(&self, what: &str, id: &str, args: &[&str]) -> Result<Vec<u8>, HandlerError> {
        let output = self
            .command()
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|source| HandlerError::Spawn {
                binary: self.binary.clone(),
                source,
            })?;
        if output.status.success() {
            return Ok(output.stdout);
        }
        let message = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        // A create that fails never means "no such container" (its rootfs may be the
        // missing file); every other command on a gone container does.
        if what != "create"
            && crate::quirks::classify(&message) == crate::quirks::Failure::NoSuchContainer
        {
            return Err(HandlerError::NotFound { id: id.to_owned() });
        }
        Err(HandlerError::Runtime {
            handler: self.name.clone(),
            operation: what.to_owned(),
            id: id.to_owned(),
            message,
        })
    }

    /// Writes the bundle's config.json and creates the container under a new monitor.
    /// Returns the init's pid. On failure the runtime holds no container of this ID.
    async fn create(&self, c: &ContainerSpec<'_>) -> Result<u32, HandlerError> {
        let (id, bundle, spec, log_path) = (c.id, c.bundle, c.spec, c.log_path);
        let tty = spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false);
        let io = |source: std::io::Error| HandlerError::Io {
            path: bundle.to_owned(),
            source,
        };
        tokio::fs::create_dir_all(bundle).await.map_err(io)?;
        tokio::fs::create_dir_all(&self.root).await.map_err(io)?;
        let json = serde_json::to_vec(spec).map_err(|e| io(std::io::Error::other(e)))?;
        tokio::fs::write(bundle.join("config.json"), json)
            .await
            .map_err(io)?;

        let mut cmd = Command::new(&self.monitor);
        cmd.arg("--runtime")
            .arg(&self.binary)
            .arg("--root")
            .arg(&self.root)
            .arg("--id")
            .arg(id)
            .arg("--bundle")
            .arg(bundle)
            .arg("--log-path")
            .arg(log_path)
            .arg("--exit-file")
            .arg(bundle.join("exit"));
        for arg in &self.runtime_args {
            cmd.arg("--runtime-arg").arg(arg);
        }
        if tty {
            cmd.arg("--tty");
        }
        if c.stdin {
            cmd.arg("--stdin");
        }
        if c.stdin_once {
            cmd.arg("--stdin-once");
        }
        let line = spawn_reporting(cmd, &self.monitor).await?;
        let line = line.trim();
        if let Some(pid) = line.strip_prefix("ok ") {
            return pid.parse().map_err(|_| HandlerError::Monitor {
                id: id.to_owned(),
                message: format!("bad report `{line}`"),
            });
        }
        // Make sure nothing is left at the runtime.
        let _ = self.run("delete", id, &["delete", "--force", id]).await;
        let message = line.strip_prefix("error ").unwrap_or(line).to_owned();
        Err(HandlerError::Runtime {
            handler: self.name.clone(),
            operation: "create".to_owned(),
            id: id.to_owned(),
            message: if message.is_empty() {
                "the monitor exited without reporting".to_owned()
            } else {
                message
            },
        })
    }

    /// Starts a created container.
    async fn start(&self, id: &str) -> Result<(), HandlerError> {
        self.run("start", id, &["start", id]).await.map(|_| ())
    }

    /// Sends `signal` to the init (or to every process with `all`).
    async fn kill(&self, id: &str, signal: i32, all: bool) -> Result<(), HandlerError> {
        let signal = signal.to_string();
        let mut args = vec!["kill"];
        if all {
            args.push("--all");
        }
        args.extend([id, signal.as_str()]);
        match self.run("kill", id, &args).await {
            // Nothing left to kill.
            Err(HandlerError::NotFound { .. }) => Ok(()),
            // Already gone is what a kill wants.
            Err(HandlerError::Runtime { message, .. })
                if crate::quirks::classify(&message) == crate::quirks::Failure::AlreadyExited =>
            {
                Ok(())
            }
            other => other.map(|_| ()),
        }
    }

    /// Deletes the container at the runtime; an unknown container is not an error.
    async fn delete(&self, id: &str, force: bool) -> Result<(), HandlerError> {
        let args: &[&str] = if force {
            &["delete", "--force", id]
        } else {
            &["delete", id]
        };
        match self.run("delete", id, args).await {
            Ok(_) | Err(HandlerError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The runtime's view of a container, `None` if it has none.
    async fn state(&self, id: &str) -> Result<Option<RuntimeState>, HandlerError> {
        match self.run("state", id, &["state", id]).await {
            Ok(out) => {
                let v: serde_json::Value =
                    serde_json::from_slice(&out).map_err(|e| HandlerError::Runtime {
                        handler: self.name.clone(),
                        operation: "state".to_owned(),
                        id: id.to_owned(),
                        message: format!("unreadable state: {e}"),
                    })?;
                Ok(Some(RuntimeState {
                    status: v["status"].as_str().unwrap_or_default().to_owned(),
                    pid: v["pid"]
                        .as_u64()
                        .and_then(|p| u32::try_from(p).ok())
                        .unwrap_or(0),
                }))
            }
            Err(HandlerError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Applies new resource limits to a running container.
    async fn update(&self, id: &str, update: &ResourceUpdate) -> Result<(), HandlerError> {
        let mut args: Vec<String> = vec!["update".into()];
        let mut flag = |name: &str, value: Option<String>| {
            if let Some(v) = value {
                args.push(format!("--{name}={v}"));
            }
        };
        flag("cpu-share", update.cpu_shares.map(|v| v.to_string()));
        flag("cpu-quota", update.cpu_quota.map(|v| v.to_string()));
        flag("cpu-period", update.cpu_period.map(|v| v.to_string()));
        flag("cpuset-cpus", update.cpuset_cpus.clone());
        flag("cpuset-mems", update.cpuset_mems.clone());
        flag("memory", update.memory.map(|v| v.to_string()));
        flag("memory-swap", update.memory_swap.map(|v| v.to_string()));
        args.push(id.to_owned());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.run("update", id, &refs).await.map(|_| ())
    }

    /// Asks the container's monitor to reopen the log file (after kubelet rotated it).
    /// The monitor is the parent of the container's init (it is the subreaper that
    /// adopted it); it is checked to be this container's monitor before it is signalled.
    async fn reopen_monitor_log(&self, id: &str) -> Result<(), HandlerError> {
        let state = self
            .state(id)
            .await?
            .ok_or_else(|| HandlerError::NotFound { id: id.to_owned() })?;
        if state.pid == 0 {
            return Err(HandlerError::Monitor {
                id: id.to_owned(),
                message: "the container is not running".to_owned(),
            });
        }
        let Some(ppid) = monitor_of(state.pid, id) else {
            return Err(HandlerError::Monitor {
                id: id.to_owned(),
                message: "cannot find the container's monitor".to_owned(),
            });
        };
        // SAFETY: kill takes no pointers; the pid was checked to be this container's monitor.
        if unsafe { libc::kill(ppid, libc::SIGUSR1) } != 0 {
            return Err(HandlerError::Monitor {
                id: id.to_owned(),
                message: format!(
                    "signalling the monitor: {}",
                    std::io::Error::last_os_error()
                ),
            });
        }
        Ok(())
    }

    /// Runs `process` in the container and collects its output, killing it at `timeout`.
    /// Through `crisp-enter` when the handler allows it and the container's
    /// init `pid` is known, else (or when the monitor says the container needs the
    /// runtime) through the runtime's `exec`.
    async fn exec_in(
        &self,
        id: &str,
        bundle: &Path,
        pid: u32,
        process: &Process,
        timeout: Option<Duration>,
    ) -> Result<ExecOutput, HandlerError> {
        if !self.runtime_exec && self.runs_on_host_kernel() && pid > 0 {
            match self
                .exec_once(id, bundle, Some(pid), process, timeout)
                .await
            {
                Err(HandlerError::Unsupported { what, .. }) => {
                    tracing::debug!(id, why = %what, "exec through the runtime");
                }
                done => return done,
            }
        }
        self.exec_once(id, bundle, None, process, timeout).await
    }

    /// One ExecSync attempt: natively into init `native` if given, else with the runtime.
    async fn exec_once(
        &self,
        id: &str,
        bundle: &Path,
        native: Option<u32>,
        process: &Process,
        timeout: Option<Duration>,
    ) -> Result<ExecOutput, HandlerError> {
        let io = |source: std::io::Error| HandlerError::Io {
            path: bundle.to_owned(),
            source,
        };
        let spec_path = bundle.join(format!(
            "exec-{}.json",
            std::process::id() as u64 * 1_000_000 + u64::from(rand_u32())
        ));
        let json = serde_json::to_vec(process).map_err(|e| io(std::io::Error::other(e)))?;
        tokio::fs::write(&spec_path, json).await.map_err(io)?;
        let pid_path = spec_path.with_extension("pid");
        // Whether the call times out here or the caller gives up (a gRPC deadline drops
        // this future), the process started must not outlive the call.
        let mut guard = ExecGuard {
            pid_path: pid_path.clone(),
            spec_path: spec_path.clone(),
            finished: false,
            helper: None,
        };
        // runc exec (or the monitor) stays the process's parent: it reaps the process
        // once the guard kills it. Killing the parent instead would orphan the process.
        let (mut cmd, binary) = match native {
            Some(init) => {
                // From a read-only view of the helper (see `sealed`).
                let program = crate::sealed::read_only_path(&self.enter)
                    .unwrap_or_else(|| self.enter.clone());
                let mut cmd = Command::new(program);
                cmd.arg0(&self.enter)
                    .arg("--id")
                    .arg(id)
                    .arg("--pid")
                    .arg(init.to_string())
                    .arg("--bundle")
                    .arg(bundle)
                    .arg("--process")
                    .arg(&spec_path)
                    .arg("--pid-file")
                    .arg(&pid_path);
                (cmd, &self.enter)
            }
            None => {
                let mut cmd = self.command();
                cmd.arg("exec")
                    .arg("--process")
                    .arg(&spec_path)
                    .arg("--pid-file")
                    .arg(&pid_path)
                    .arg(id);
                (cmd, &self.binary)
            }
        };
        // crisp-enter reports on its stdin (a pipe here) whether it got the process
        // running; the runtime gets no stdin.
        let (report_r, report_w) = crate::cloexec_pipe().map_err(io)?;
        let stdin = if native.is_some() {
            std::process::Stdio::from(report_w)
        } else {
            drop(report_w);
            std::process::Stdio::null()
        };
        let spawned = cmd
            .kill_on_drop(false)
            .stdin(stdin)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            // No crisp-enter (an install that copied only crispd): the runtime can do it.
            Err(e) if native.is_some() => {
                return Err(HandlerError::Unsupported {
                    handler: self.name.clone(),
                    what: format!("entering containers natively ({}: {e})", binary.display()),
                });
            }
            Err(source) => {
                return Err(HandlerError::Spawn {
                    binary: binary.clone(),
                    source,
                });
            }
        };
        // A crisp-enter still setting up when the call ends (no process pid yet) is
        // killed by the guard; its process dies with it.
        guard.helper = native.and(child.id());
        // The command holds the report pipe's write end until dropped.
        drop(cmd);
        let mut report = String::new();
        let mut report_reader = tokio::fs::File::from_std(std::fs::File::from(report_r));
        let mut stdout = child.stdout.take();
        let mut stderr = child.stderr.take();
        let collect = async {
            let (mut out, mut err) = (Vec::new(), Vec::new());
            let read_out = async {
                if let Some(s) = stdout.as_mut() {
                    let _ = s.take(MAX_EXEC_OUTPUT as u64).read_to_end(&mut out).await;
                }
            };
            let read_err = async {
                if let Some(s) = stderr.as_mut() {
                    let _ = s.take(MAX_EXEC_OUTPUT as u64).read_to_end(&mut err).await;
                }
            };
            let read_report = async {
                let _ = report_reader.read_to_string(&mut report).await;
            };
            tokio::join!(read_out, read_err, read_report);
            let status = child.wait().await;
            (status, out, err)
        };
        let result = match timeout {
            Some(t) if !t.is_zero() => tokio::time::timeout(t, collect).await.ok(),
            _ => Some(collect.await),
        };
        // Dropping `collect` killed runc exec, but the process it started lives on in the
        // container until the guard kills it.
        guard.finished = result.is_some();
        let killed = if result.is_none() { guard.kill() } else { None };
        drop(guard);
        let Some((status, stdout, stderr)) = result else {
            // Answer once it is gone (reaped by the container's init), as kubelet and
            // critest look for it right after.
            if let Some(pid) = killed {
                let deadline = std::time::Instant::now() + Duration::from_secs(2);
                while Path::new(&format!("/proc/{pid}")).exists()
                    && std::time::Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            return Err(HandlerError::Timeout {
                id: id.to_owned(),
                after: timeout.unwrap_or_default(),
            });
        };
        let status = status.map_err(io)?;
        if native.is_some() {
            let report = report.trim();
            if let Some(why) = report.strip_prefix("unsupported ") {
                return Err(HandlerError::Unsupported {
                    handler: self.name.clone(),
                    what: format!("entering this container natively ({why})"),
                });
            }
            if !report.starts_with("ok ") {
                return Err(HandlerError::Runtime {
                    handler: self.name.clone(),
                    operation: "exec".to_owned(),
                    id: id.to_owned(),
                    message: report.strip_prefix("error ").unwrap_or(report).to_owned(),
                });
            }
        }
        use std::os::unix::process::ExitStatusExt;
        let exit_code = status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
        Ok(ExecOutput {
            exit_code,
            stdout,
            stderr,
        })
    }
}

/// Kills an ExecSync's process (by the pid runc wrote) unless it finished, and removes
/// the exec's files.
struct ExecGuard {
    pid_path: PathBuf,
    spec_path: PathBuf,
    finished: bool,
    /// crisp-enter, for a native exec.
    helper: Option<u32>,
}

impl ExecGuard {
    /// Kills the process now; returns its pid. Before the process exists, kills the
    /// crisp-enter setting it up instead.
    fn kill(&mut self) -> Option<i32> {
        let Some(pid) = crate::exec::kill_from_pid_file(&self.pid_path) else {
            if let Some(helper) = self.helper.take() {
                // SAFETY: kill takes no pointers; `helper` is a child not yet reaped.
                unsafe { libc::kill(helper as i32, libc::SIGKILL) };
            }
            return None;
        };
        self.finished = true;
        Some(pid)
    }
}

impl Drop for ExecGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.kill();
        }
        let _ = std::fs::remove_file(&self.pid_path);
        let _ = std::fs::remove_file(&self.spec_path);
    }
}

/// The monitor of container `id`, found as the parent of its init `pid` (the monitor is
/// the subreaper that adopted it) and checked by its command line.
fn monitor_of(pid: u32, id: &str) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name: state, then ppid.
    let ppid: i32 = stat
        .rsplit(')')
        .next()
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())?;
    let cmdline = std::fs::read(format!("/proc/{ppid}/cmdline")).ok()?;
    let ours = cmdline.windows(id.len()).any(|w| w == id.as_bytes())
        && String::from_utf8_lossy(&cmdline).contains("crisp-monitor");
    (ppid > 1 && ours).then_some(ppid)
}

/// Runs `cmd` with a pipe on its fd 3 and returns the one line it reports there. The
/// process may keep running (a monitor does); it is reaped in the background.
async fn spawn_reporting(cmd: Command, binary: &Path) -> Result<String, HandlerError> {
    spawn_reporting_after(cmd, binary, None::<fn(u32) -> std::io::Result<()>>).await
}

/// As [`spawn_reporting`], with a handshake first: the process says `userns` on its
/// stdout once it has made a user namespace, `handshake` runs with its pid (and writes
/// the namespace's ID maps), and a byte on its stdin lets it go on.
async fn spawn_reporting_after<F>(
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
    let (sync_r, sync_w) = crate::cloexec_pipe().map_err(io)?;
    let talk = if handshake.is_some() {
        std::process::Stdio::piped
    } else {
        std::process::Stdio::null
    };
    cmd.stdin(talk())
        .stdout(talk())
        .stderr(std::process::Stdio::null());
    let raw = sync_w.as_raw_fd();
    // SAFETY: between fork and exec only dup2 runs, which is async-signal-safe; it puts
    // the sync pipe on fd 3, where the child reports.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(raw, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| HandlerError::Spawn {
        binary: binary.to_owned(),
        source,
    })?;
    drop(sync_w);
    if let Some(handshake) = handshake {
        let (Some(mut stdin), Some(stdout), Some(pid)) =
            (child.stdin.take(), child.stdout.take(), child.id())
        else {
            let _ = child.kill().await;
            return Err(io(std::io::Error::other("the helper has no pipes")));
        };
        let mut said = String::new();
        let mut lines = tokio::io::BufReader::new(stdout);
        let read = tokio::io::AsyncBufReadExt::read_line(&mut lines, &mut said).await;
        // Without the go-ahead the helper reports an error on fd 3 and exits.
        if read.is_ok() && said.trim() == "userns" {
            match handshake(pid) {
                Ok(()) => stdin.write_all(b"\n").await.map_err(io)?,
                Err(e) => {
                    let _ = child.kill().await;
                    return Err(io(e));
                }
            }
        }
    }
    let mut line = String::new();
    let mut reader = tokio::fs::File::from_std(std::fs::File::from(sync_r));
    reader.read_to_string(&mut line).await.map_err(io)?;
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    Ok(line.trim().to_owned())
}

/// Starts the init of a pod's shared PID namespace (`crisp-monitor --pause`) and returns
/// its pid. It outlives crispd; kill it with SIGKILL when the pod stops. With `userns`,
/// the init also holds the pod's user namespace and the namespaces made inside it.
async fn spawn_pause(monitor: &Path, userns: Option<&UserNamespace>) -> Result<u32, HandlerError> {
    let mut cmd = Command::new(monitor);
    cmd.arg("--pause");
    let line = match userns {
        None => spawn_reporting(cmd, monitor).await?,
        Some(ns) => {
            cmd.arg("--userns");
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
fn exit_of(c: &ContainerRef<'_>) -> Option<ExitStatus> {
    let mut exit = exit_status(c.bundle)?;
    exit.oom_killed = exit.code != 0 && oom_killed(c.cgroup_path);
    Some(exit)
}

fn oom_killed(cgroup_path: &str) -> bool {
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

fn rand_u32() -> u32 {
    let mut v = [0u8; 4];
    // SAFETY: getrandom writes at most 4 bytes into `v`.
    unsafe { libc::getrandom(v.as_mut_ptr().cast(), 4, 0) };
    u32::from_le_bytes(v) % 1_000_000
}

/// Kills the init (`crisp-monitor --pause`) of the PID namespace pinned at `pin`, found by
/// the namespace's inode among this host's processes; which ends every process in it.
fn kill_pinned_namespace_init(pin: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(pinned) = std::fs::metadata(pin) else {
        return;
    };
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in procs.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let same = std::fs::metadata(format!("/proc/{pid}/ns/pid"))
            .is_ok_and(|m| m.ino() == pinned.ino() && m.dev() == pinned.dev());
        let pause = std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains("crisp-monitor\0--pause"));
        if same && pause {
            kill_pid_namespace_init(pid, pin);
        }
    }
}

/// The `oci` handler's sandbox state format.
const SANDBOX_STATE_VERSION: u32 = 1;

/// The init pid a sandbox state names (version 0 is a bare pid).
fn sandbox_init(state: &SandboxState) -> u32 {
    let pid = match state.version {
        0 => state.data.as_u64(),
        _ => state.data["init_pid"].as_u64(),
    };
    pid.and_then(|p| u32::try_from(p).ok()).unwrap_or(0)
}

/// Whether `pid` is the init of the PID namespace pinned at `pin` (or, before pinning,
/// still our monitor in pause mode): a pid reused after a reboot is not.
fn is_pid_namespace_init(pid: u32, pin: &Path) -> bool {
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
fn kill_pid_namespace_init(pid: u32, pin: &Path) {
    if is_pid_namespace_init(pid, pin) {
        // SAFETY: kill takes no pointers; the pid was checked to be the pod's init.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
}

/// Whether the running kernel's version is at least `major.minor`.
fn kernel_at_least(major: u32, minor: u32) -> bool {
    // SAFETY: utsname is plain data; uname fills it.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `uts` is a valid utsname for uname to write.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return false;
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
    let (a, b) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (a, b) >= (major, minor)
}

/// Waits until process `pid` has exited, through a pidfd; `false` if it cannot be watched.
async fn wait_process(pid: i32) -> bool {
    // SAFETY: pidfd_open takes no pointers.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let Ok(fd) = i32::try_from(fd) else {
        return false;
    };
    if fd < 0 {
        return false;
    }
    // SAFETY: pidfd_open returned a fresh descriptor that we now own.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: the AsyncFd owns the OwnedFd, which stays open and unchanged until dropped.
    let watch = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE)
    };
    match watch {
        Ok(watch) => watch.readable().await.is_ok(),
        Err(_) => false,
    }
}

#[async_trait::async_trait]
impl RuntimeHandler for OciRuntime {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "oci"
    }

    fn host_checks(&self) -> Vec<crate::HostCheck> {
        crate::host_check::host_kernel_checks()
    }

    fn helper_processes(&self) -> usize {
        monitor_processes()
    }

    fn host_facts(&self) -> crate::HostFacts {
        static FACTS: std::sync::OnceLock<crate::HostFacts> = std::sync::OnceLock::new();
        *FACTS.get_or_init(crate::HostFacts::of_this_process)
    }

    fn features(&self) -> Features {
        Features {
            // `server` prepares recursively read-only copies with mount_setattr(2)
            // (kernel 5.12), so any OCI runtime can bind them.
            recursive_read_only_mounts: kernel_at_least(5, 12),
            // A pod's rootfs shows the image's layers through ID-mapped mounts, which
            // overlayfs accepts as layers from kernel 5.19. gVisor runs its own kernel
            // and does not take a pod's user namespace.
            user_namespaces: kernel_at_least(5, 19) && !self.is_gvisor(),
        }
    }

    async fn start_sandbox(&self, sandbox: &SandboxSpec) -> Result<StartedSandbox, HandlerError> {
        if sandbox.userns.is_some() && !self.features().user_namespaces {
            return Err(HandlerError::Unsupported {
                handler: self.name.clone(),
                what: "user namespaces".to_owned(),
            });
        }
        let init = if sandbox.share_pid || sandbox.userns.is_some() {
            spawn_pause(&self.monitor, sandbox.userns.as_ref()).await?
        } else {
            0
        };
        Ok(StartedSandbox {
            state: SandboxState {
                version: SANDBOX_STATE_VERSION,
                data: serde_json::json!({ "init_pid": init }),
            },
            namespace_holder: init,
        })
    }

    async fn stop_sandbox(
        &self,
        sandbox: &SandboxSpec,
        state: &SandboxState,
    ) -> Result<(), HandlerError> {
        let pid = sandbox_init(state);
        if pid > 0 {
            kill_pid_namespace_init(pid, &sandbox.pid_pin);
        }
        Ok(())
    }

    async fn recover_sandbox(
        &self,
        sandbox: &SandboxSpec,
        state: &SandboxState,
    ) -> Result<bool, HandlerError> {
        // A pod without an init has nothing of the handler's to lose; one with an init
        // needs it alive in the pinned PID namespace.
        let pid = sandbox_init(state);
        Ok(pid == 0 || is_pid_namespace_init(pid, &sandbox.pid_pin))
    }

    async fn create_container(&self, c: &ContainerSpec<'_>) -> Result<u32, HandlerError> {
        self.create(c).await
    }

    async fn start_container(&self, id: &str) -> Result<(), HandlerError> {
        self.start(id).await
    }

    async fn kill_container(&self, id: &str, signal: i32, all: bool) -> Result<(), HandlerError> {
        self.kill(id, signal, all).await
    }

    async fn delete_container(
        &self,
        c: &ContainerRef<'_>,
        force: bool,
    ) -> Result<(), HandlerError> {
        self.delete(c.id, force).await?;
        // runc removes its cgroups; runsc (and a runtime that failed half-way) may leave
        // them. cgroupfs paths only: a systemd driver's `slice:prefix:name` is systemd's.
        if !c.cgroup_path.is_empty() && !c.cgroup_path.contains(':') {
            crate::stats::remove_empty_cgroup(c.cgroup_path);
        }
        Ok(())
    }

    async fn container_state(&self, id: &str) -> Result<Option<RuntimeState>, HandlerError> {
        self.state(id).await
    }

    fn release_unknown_sandbox(&self, pid_pin: &Path) {
        kill_pinned_namespace_init(pid_pin);
    }

    async fn attach(
        &self,
        c: &ContainerRef<'_>,
    ) -> Result<(crate::attach::AttachReader, crate::attach::AttachWriter), HandlerError> {
        crate::attach::connect(c.bundle)
            .await
            .map_err(|source| HandlerError::Io {
                path: c.bundle.join("attach"),
                source,
            })
    }

    async fn port_forward(
        &self,
        _sandbox: &SandboxSpec,
        netns: Option<&Path>,
        port: u16,
    ) -> Result<tokio::net::TcpStream, HandlerError> {
        let path = netns.map(Path::to_path_buf);
        crate::netns::connect_loopback(path.clone(), port)
            .await
            .map_err(|source| HandlerError::Io {
                path: path.unwrap_or_else(|| PathBuf::from("/proc/self/ns/net")),
                source,
            })
    }

    fn pid_namespace(&self, c: &ContainerRef<'_>) -> Option<PathBuf> {
        (c.pid > 0).then(|| PathBuf::from(format!("/proc/{}/ns/pid", c.pid)))
    }

    async fn recover_container(&self, c: &ContainerRef<'_>) -> Result<Recovered, HandlerError> {
        if let Some(exit) = exit_of(c) {
            return Ok(Recovered::Exited(exit));
        }
        if monitor_of(c.pid, c.id).is_some() {
            return Ok(Recovered::Running);
        }
        // No monitor and no exit file: the node restarted (state is on tmpfs) or the
        // monitor was killed. Whatever the runtime still has of it goes; its exit is lost.
        let _ = self.kill(c.id, libc::SIGKILL, true).await;
        let _ = self.delete(c.id, true).await;
        Ok(Recovered::Lost {
            message: "crisp lost this container's state: its monitor and exit record are gone (node restart, or the monitor was killed)".to_owned(),
        })
    }

    async fn wait_container(&self, c: &ContainerRef<'_>) -> Result<ExitStatus, HandlerError> {
        // Between the init's death and the exit file there is a moment with no monitor to
        // find: look again soon, backing off to 100 ms. A container with neither a monitor
        // nor an exit file for 2 s has lost its monitor (killed, or the node restarted).
        let mut pause = Duration::from_millis(1);
        let mut missing_since: Option<std::time::Instant> = None;
        loop {
            if let Some(exit) = exit_of(c) {
                return Ok(exit);
            }
            let monitor = monitor_of(c.pid, c.id);
            if monitor.is_none() {
                let since = *missing_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() > Duration::from_secs(2) {
                    return Err(HandlerError::Monitor {
                        id: c.id.to_owned(),
                        message: "neither its monitor nor an exit record is left".to_owned(),
                    });
                }
            }
            if let Some(monitor) = monitor
                && wait_process(monitor).await
            {
                // The monitor writes the exit file before it exits.
                if let Some(exit) = exit_of(c) {
                    return Ok(exit);
                }
                if !Path::new(&format!("/proc/{}", c.pid)).exists() {
                    return Err(HandlerError::Monitor {
                        id: c.id.to_owned(),
                        message: "the monitor exited without recording the exit".to_owned(),
                    });
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    async fn exec_sync(
        &self,
        c: &ContainerRef<'_>,
        process: &Process,
        timeout: Option<Duration>,
    ) -> Result<ExecOutput, HandlerError> {
        self.exec_in(c.id, c.bundle, c.pid, process, timeout).await
    }

    async fn update_container(
        &self,
        id: &str,
        update: &ResourceUpdate,
    ) -> Result<(), HandlerError> {
        self.update(id, update).await
    }

    async fn exec_streaming(
        &self,
        c: &ContainerRef<'_>,
        process: &Process,
        stdin: bool,
    ) -> Result<ExecSession, HandlerError> {
        let io = |source: std::io::Error| HandlerError::Io {
            path: c.bundle.to_owned(),
            source,
        };
        let tty = process.terminal().unwrap_or(false);
        let tag = std::process::id() as u64 * 1_000_000 + u64::from(rand_u32());
        let spec_path = c.bundle.join(format!("exec-{tag}.json"));
        let pid_path = c.bundle.join(format!("exec-{tag}.pid"));
        // Unix socket paths are limited to 108 bytes: the runtime root is shorter than a
        // bundle path with a 64-character ID in it.
        tokio::fs::create_dir_all(&self.root).await.map_err(io)?;
        let socket_path = self.root.join(format!("x{tag}.sock"));
        let json = serde_json::to_vec(process).map_err(|e| io(std::io::Error::other(e)))?;
        tokio::fs::write(&spec_path, json).await.map_err(io)?;
        let mut cmd = if tty {
            // Detached (the runtime's condition for a console socket), under a monitor that
            // adopts the process and exits with its code.
            let mut cmd = Command::new(&self.monitor);
            cmd.arg("--exec")
                .arg(&self.binary)
                .args(&self.runtime_args)
                .arg("--root")
                .arg(&self.root)
                .arg("exec")
                .arg("--detach");
            cmd.kill_on_drop(false);
            cmd
        } else {
            let mut cmd = self.command();
            // As for ExecSync: runc reaps the process the session kills.
            cmd.kill_on_drop(false);
            cmd.arg("exec");
            cmd
        };
        cmd.arg("--process")
            .arg(&spec_path)
            .arg("--pid-file")
            .arg(&pid_path);
        let console = if tty {
            let _ = std::fs::remove_file(&socket_path);
            let listener = tokio::net::UnixListener::bind(&socket_path).map_err(io)?;
            cmd.arg("--console-socket").arg(&socket_path);
            cmd.stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped());
            Some(listener)
        } else {
            cmd.stdin(if stdin {
                std::process::Stdio::piped()
            } else {
                std::process::Stdio::null()
            })
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
            None
        };
        cmd.arg(c.id);
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(source) => {
                let _ = std::fs::remove_file(&spec_path);
                let _ = std::fs::remove_file(&socket_path);
                return Err(HandlerError::Spawn {
                    binary: self.binary.clone(),
                    source,
                });
            }
        };
        let master = match console {
            None => None,
            Some(listener) => {
                let accepted = tokio::select! {
                    accepted = listener.accept() => Some(accepted),
                    _ = child.wait() => None,
                };
                let _ = std::fs::remove_file(&socket_path);
                let conn = match accepted {
                    Some(Ok((conn, _))) => conn,
                    other => {
                        let mut message = String::new();
                        if let Some(mut err) = child.stderr.take() {
                            let _ = err.read_to_string(&mut message).await;
                        }
                        if let Some(Err(e)) = other {
                            message = e.to_string();
                        }
                        let _ = std::fs::remove_file(&spec_path);
                        return Err(HandlerError::Runtime {
                            handler: self.name.clone(),
                            operation: "exec".to_owned(),
                            id: c.id.to_owned(),
                            message: message.trim().to_owned(),
                        });
                    }
                };
                let conn = conn.into_std().map_err(io)?;
                conn.set_nonblocking(false).map_err(io)?;
                let fd = tokio::task::spawn_blocking(move || crate::console::receive_fd(&conn))
                    .await
                    .map_err(|e| io(std::io::Error::other(e)))?
                    .map_err(|m| io(std::io::Error::other(m)))?;
                Some(fd)
            }
        };
        ExecSession::new(child, pid_path, spec_path, master)
    }

    async fn reopen_log(&self, id: &str) -> Result<(), HandlerError> {
        self.reopen_monitor_log(id).await
    }

    async fn container_stats(
        &self,
        c: &ContainerRef<'_>,
        detail: bool,
    ) -> Result<ContainerStats, HandlerError> {
        let pid = c.pid;
        let bundle = c.bundle.to_owned();
        tokio::task::spawn_blocking(move || cgroup_stats(pid, detail))
            .await
            .map_err(|e| HandlerError::Io {
                path: bundle.clone(),
                source: std::io::Error::other(e),
            })?
            .map_err(|source| HandlerError::Io {
                path: PathBuf::from(format!("/proc/{pid}/cgroup")),
                source,
            })
    }
}
