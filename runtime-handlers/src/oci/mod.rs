//! The `oci` handler: an OCI runtime (runc, crun, runsc) driven through its command line,
//! one `crisp-monitor` per container owning the container's stdio and exit status.
//!
//! Bundle layout (one directory per container, chosen by the caller): `config.json`,
//! `runtime.log` (the runtime's JSON log), `container.pid`, `exit` (written by the
//! monitor when the container's init exits: code, then finish time in ns).

use std::os::fd::AsRawFd;
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

mod cli;
mod exec;
mod gvisor;
mod process;

use gvisor::GVISOR_CAPABILITIES;
use process::*;

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
        let mut facts = *FACTS.get_or_init(crate::HostFacts::of_this_process);
        if self.is_gvisor() {
            // gVisor's kernel grants capabilities up to CAP_AUDIT_READ (37); runsc
            // refuses a container naming a later one (CAP_PERFMON, CAP_BPF, ...).
            facts.bounding_set &= GVISOR_CAPABILITIES;
        }
        facts
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
            mounts_at_start: self.is_gvisor(),
        }
    }

    async fn start_sandbox(&self, sandbox: &SandboxSpec) -> Result<StartedSandbox, HandlerError> {
        if sandbox.userns.is_some() && !self.features().user_namespaces {
            return Err(HandlerError::Unsupported {
                handler: self.name.clone(),
                what: "user namespaces".to_owned(),
            });
        }
        // gVisor keeps the pod's PID namespace inside its sandbox.
        let init = if !self.is_gvisor() && (sandbox.share_pid || sandbox.userns.is_some()) {
            spawn_pause(&self.monitor, &sandbox.id, sandbox.userns.as_ref()).await?
        } else {
            0
        };
        let pid_ns = (init > 0).then(|| pid_namespace_of(init)).flatten();
        Ok(StartedSandbox {
            state: SandboxState {
                version: SANDBOX_STATE_VERSION,
                data: serde_json::json!({ "init_pid": init, "pid_ns": pid_ns }),
            },
            namespace_holder: init,
        })
    }

    async fn finish_sandbox(
        &self,
        sandbox: &SandboxSpec,
        state: &SandboxState,
    ) -> Result<SandboxState, HandlerError> {
        if !self.is_gvisor() {
            return Ok(state.clone());
        }
        let pid = self.finish_gvisor_sandbox(sandbox).await?;
        let mut state = state.clone();
        state.data["gvisor_pid"] = pid.into();
        Ok(state)
    }

    async fn stop_sandbox(
        &self,
        sandbox: &SandboxSpec,
        state: &SandboxState,
    ) -> Result<(), HandlerError> {
        // Whether or not the state got as far as naming it: the sandbox container has
        // the pod's ID. A failure there still lets the init below go.
        let gvisor = if self.is_gvisor() {
            self.stop_gvisor_sandbox(sandbox).await
        } else {
            Ok(())
        };
        let pid = sandbox_init(state);
        if pid > 0 && is_sandbox_init(pid, state, &sandbox.pid_pin) {
            // SAFETY: kill takes no pointers; the pid was checked to be the pod's init.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        gvisor
    }

    async fn recover_sandbox(
        &self,
        sandbox: &SandboxSpec,
        state: &SandboxState,
    ) -> Result<bool, HandlerError> {
        if gvisor_sandbox(state) {
            return self.gvisor_sandbox_runs(&sandbox.id).await;
        }
        // A pod without an init has nothing of the handler's to lose; one with an init
        // needs it alive in the pinned PID namespace.
        let pid = sandbox_init(state);
        Ok(pid == 0 || is_sandbox_init(pid, state, &sandbox.pid_pin))
    }

    async fn wait_sandbox(&self, sandbox: &SandboxSpec, state: &SandboxState) -> Option<String> {
        // Not watched: a gVisor sandbox (its containers' exits are seen; the sandbox's own
        // end is noticed at the next restart) and a pod without an init (nothing of the
        // handler's can end).
        let pid = sandbox_init(state);
        if gvisor_sandbox(state) || pid == 0 {
            return None;
        }
        // The pidfd first, then the check: a pid reused once the init died is never
        // waited on. (An exited init may linger as a zombie that still names its
        // namespace: the pidfd then answers at once.)
        let pidfd = crate::pidfd::open(pid as i32);
        if is_sandbox_init(pid, state, &sandbox.pid_pin) {
            crate::pidfd::wait(&pidfd?).await; // no pidfd for a live init: not watched
        }
        Some(format!(
            "the pod's init (pid {pid}), which holds its PID namespace, exited"
        ))
    }

    async fn create_container(&self, c: &ContainerSpec<'_>) -> Result<u32, HandlerError> {
        if !self.is_gvisor() {
            return self.create(c, false).await;
        }
        let spec = Self::subcontainer_spec(c.spec, c.sandbox_id, c.id);
        match self
            .create(&ContainerSpec { spec: &spec, ..*c }, true)
            .await
        {
            // A pod started before crisp ran one gVisor sandbox per pod has no sandbox
            // container to join: its containers still get a sandbox each.
            Err(e) if matches!(self.state(c.sandbox_id).await, Ok(None)) => {
                tracing::debug!(id = c.id, error = %e, "no pod sandbox to join; a sandbox of its own");
                self.create(c, false).await
            }
            other => other,
        }
    }

    async fn start_container(&self, c: &ContainerRef<'_>) -> Result<(), HandlerError> {
        if self.is_gvisor() {
            if let Some(started) = self
                .ask_monitor(c.id, c.bundle, crate::start_socket::Request::Start)
                .await
            {
                return started;
            }
            // `runsc start` of a container joining a sandbox would hand it our own stdio
            // (and wait for its end): only its monitor may start it.
            if gvisor::joins_sandbox(c.bundle) {
                return Err(HandlerError::Monitor {
                    id: c.id.to_owned(),
                    message: "its monitor is gone or no longer waits to start it".to_owned(),
                });
            }
        }
        self.start(c.id).await
    }

    async fn kill_container(
        &self,
        c: &ContainerRef<'_>,
        signal: i32,
        all: bool,
    ) -> Result<(), HandlerError> {
        // A gVisor subcontainer that never started: its monitor, still waiting to start
        // it, records the kill as its exit; then the runtime forgets it.
        if signal == libc::SIGKILL
            && self.is_gvisor()
            && let Some(cancelled) = self
                .ask_monitor(c.id, c.bundle, crate::start_socket::Request::Cancel)
                .await
        {
            cancelled?;
            return self.delete(c.id, true).await;
        }
        match self.kill(c.id, signal, all).await {
            // runsc refuses to signal a container that was created but never started; a
            // SIGKILL for one ends it by deleting it (its monitor then records the exit).
            Err(HandlerError::Runtime { .. })
                if signal == libc::SIGKILL
                    && self
                        .state(c.id)
                        .await
                        .ok()
                        .flatten()
                        .is_some_and(|s| s.status == "created") =>
            {
                self.delete(c.id, true).await
            }
            other => other,
        }
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

    async fn container_state(
        &self,
        c: &ContainerRef<'_>,
    ) -> Result<Option<RuntimeState>, HandlerError> {
        self.state(c.id).await
    }

    fn release_unknown_sandbox(&self, id: &str, pid_pin: &Path) {
        kill_sandbox_inits(id, pid_pin);
        if self.is_gvisor() {
            // At startup, before crispd serves: a plain blocking call.
            let _ = self
                .command_line()
                .args(["delete", "--force", id])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }

    async fn release_unknown_container(&self, c: &ContainerRef<'_>) {
        // The monitor first, with its whole process group: a crash during create may have
        // left it running `<runtime> create`, which would otherwise finish after the
        // delete below and leave a container behind.
        if let Some(monitor) = find_monitor(0, c.id) {
            // SAFETY: kill takes no pointers; the monitor leads its own session (and
            // process group), which holds only what it started for this container.
            unsafe {
                libc::kill(-monitor, libc::SIGKILL);
                libc::kill(monitor, libc::SIGKILL);
            }
            let _ = tokio::time::timeout(MONITOR_GRACE, wait_process(monitor)).await;
        }
        let _ = self.kill(c.id, libc::SIGKILL, true).await;
        let _ = self.delete(c.id, true).await;
        // The cgroup the spec named: an init the runtime never recorded may still be in it.
        let cgroup = if c.cgroup_path.is_empty() {
            std::fs::read(c.bundle.join("config.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|spec| spec["linux"]["cgroupsPath"].as_str().map(str::to_owned))
                .unwrap_or_default()
        } else {
            c.cgroup_path.to_owned()
        };
        if !cgroup.is_empty() && !cgroup.contains(':') {
            crate::stats::kill_cgroup(&cgroup);
            // A killed process leaves its cgroup once it is reaped.
            for _ in 0..50 {
                crate::stats::remove_empty_cgroup(&cgroup);
                if !crate::stats::cgroup_exists(&cgroup) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
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
    ) -> Result<crate::PortStream, HandlerError> {
        let path = netns.map(Path::to_path_buf);
        let tcp = crate::netns::connect_loopback(path.clone(), port)
            .await
            .map_err(|source| HandlerError::Io {
                path: path.unwrap_or_else(|| PathBuf::from("/proc/self/ns/net")),
                source,
            })?;
        Ok(Box::new(tcp))
    }

    fn pid_namespace(&self, c: &ContainerRef<'_>) -> Option<PathBuf> {
        if self.is_gvisor() {
            return Some(gvisor::pid_label(c.id));
        }
        (c.pid > 0).then(|| PathBuf::from(format!("/proc/{}/ns/pid", c.pid)))
    }

    async fn recover_container(&self, c: &ContainerRef<'_>) -> Result<Recovered, HandlerError> {
        // A monitor that has reaped the init may still be draining output before it
        // writes the exit file: give it the grace `wait_container` gives it.
        let deadline = std::time::Instant::now() + MONITOR_GRACE;
        loop {
            if let Some(exit) = exit_of(c) {
                return Ok(Recovered::Exited(exit));
            }
            if find_monitor(c.pid, c.id).is_some() {
                return Ok(Recovered::Running);
            }
            if std::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
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
        // The monitor is found through the init while it lives, else by its command line
        // (it outlives the init while it drains output). A container with neither a
        // monitor nor an exit file for MONITOR_GRACE has lost its monitor (killed, or the
        // node restarted).
        let mut pause = Duration::from_millis(1);
        let mut missing_since: Option<std::time::Instant> = None;
        loop {
            if let Some(exit) = exit_of(c) {
                return Ok(exit);
            }
            let monitor = find_monitor(c.pid, c.id);
            if monitor.is_some() {
                missing_since = None;
            } else {
                let since = *missing_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() > MONITOR_GRACE {
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
                if find_monitor(c.pid, c.id).is_none() {
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
        c: &ContainerRef<'_>,
        update: &ResourceUpdate,
    ) -> Result<(), HandlerError> {
        self.update(c.id, update).await
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
        // Until the session owns them, a failure (or a caller that gives up) kills the
        // process and removes its files.
        let guard = exec::ExecGuard::new(pid_path.clone(), spec_path.clone(), child.id());
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
        guard.hand_over();
        ExecSession::new(child, pid_path, spec_path, master)
    }

    async fn reopen_log(&self, c: &ContainerRef<'_>) -> Result<(), HandlerError> {
        self.reopen_monitor_log(c).await
    }

    async fn container_stats(
        &self,
        c: &ContainerRef<'_>,
        detail: bool,
    ) -> Result<ContainerStats, HandlerError> {
        if self.is_gvisor() {
            return self.gvisor_stats(c, detail).await;
        }
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
