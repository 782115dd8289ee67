//! ExecSync: through `crisp-enter` (runc and crun containers) or the runtime's own `exec`,
//! with output capped, a deadline, and the process killed however the call ends.

use super::*;

impl OciRuntime {
    /// Runs `process` in the container and collects its output, killing it at `timeout`.
    /// Through `crisp-enter` when the handler allows it and the container's
    /// init `pid` is known, else (or when the monitor says the container needs the
    /// runtime) through the runtime's `exec`.
    pub(super) async fn exec_in(
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
    pub(super) async fn exec_once(
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
        // gVisor's `exec` process is a host process standing for one inside the sandbox:
        // that one is killed through the runtime, by its pid in the sandbox.
        let sandboxed = (native.is_none() && self.is_gvisor()).then(|| SandboxedProcess {
            runtime: self.command_line(),
            id: id.to_owned(),
            pid_path: spec_path.with_extension("ipid"),
        });
        let mut guard = ExecGuard {
            pid_path: pid_path.clone(),
            spec_path: spec_path.clone(),
            finished: false,
            helper: None,
            sandboxed,
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
                    .arg(&pid_path);
                if let Some(sandboxed) = &guard.sandboxed {
                    cmd.arg("--internal-pid-file").arg(&sandboxed.pid_path);
                }
                cmd.arg(id);
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
        if result.is_none()
            && let Some(killer) = guard.sandboxed.as_ref().and_then(SandboxedProcess::killer)
            && let Ok(mut killer) = Command::from(killer).spawn()
        {
            let _ = killer.wait().await;
        }
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
pub(super) struct ExecGuard {
    pid_path: PathBuf,
    spec_path: PathBuf,
    finished: bool,
    /// crisp-enter, for a native exec.
    helper: Option<u32>,
    /// The process inside a gVisor sandbox.
    sandboxed: Option<SandboxedProcess>,
}

/// An exec'd process inside a gVisor sandbox, killed with `runsc kill --pid`.
pub(super) struct SandboxedProcess {
    /// The runtime with its global arguments.
    runtime: std::process::Command,
    /// The container.
    id: String,
    /// Where the runtime wrote the process's pid in the sandbox.
    pid_path: PathBuf,
}

impl SandboxedProcess {
    /// The command killing the process, once its pid is known.
    fn killer(&self) -> Option<std::process::Command> {
        let pid = std::fs::read_to_string(&self.pid_path)
            .ok()?
            .trim()
            .parse::<i32>()
            .ok()
            .filter(|p| *p > 0)?;
        let mut cmd = std::process::Command::new(self.runtime.get_program());
        cmd.args(self.runtime.get_args())
            .args(["kill", "--pid", &pid.to_string(), &self.id, "KILL"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        Some(cmd)
    }
}

impl ExecGuard {
    /// Guards an exec whose runtime (or crisp-enter) process is `helper`.
    pub(super) fn new(pid_path: PathBuf, spec_path: PathBuf, helper: Option<u32>) -> Self {
        Self {
            pid_path,
            spec_path,
            finished: false,
            helper,
            sandboxed: None,
        }
    }

    /// The process and its files are someone else's now (a streaming session's).
    pub(super) fn hand_over(mut self) {
        self.finished = true;
        self.pid_path = PathBuf::new();
        self.spec_path = PathBuf::new();
    }

    /// Kills the process now; returns its pid. Before the process exists, kills the
    /// crisp-enter setting it up instead.
    pub(super) fn kill(&mut self) -> Option<i32> {
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
            // The caller gave up: the kill goes on without it (tokio reaps the child).
            if let Some(killer) = self.sandboxed.as_ref().and_then(SandboxedProcess::killer) {
                if tokio::runtime::Handle::try_current().is_ok() {
                    let _ = Command::from(killer).kill_on_drop(false).spawn();
                } else {
                    let _ = { killer }.status();
                }
            }
        }
        if let Some(sandboxed) = &self.sandboxed {
            let _ = std::fs::remove_file(&sandboxed.pid_path);
        }
        let _ = std::fs::remove_file(&self.pid_path);
        let _ = std::fs::remove_file(&self.spec_path);
    }
}
