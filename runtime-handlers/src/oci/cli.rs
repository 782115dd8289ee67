//! The runtime's command line: each subcommand the handler uses, its failures classified
//! through the quirks table.

use super::*;

impl OciRuntime {
    /// gVisor's runsc, which runs its own kernel.
    pub(super) fn is_gvisor(&self) -> bool {
        self.binary.file_name().is_some_and(|n| n == "runsc")
    }

    /// runc and crun, whose container processes are host processes in host namespaces:
    /// the only runtimes crisp-enter may enter containers of. Any other runtime (a
    /// sandbox or VM runtime, a renamed or wrapped binary) gets ExecSync through itself.
    pub(super) fn runs_on_host_kernel(&self) -> bool {
        self.binary
            .file_name()
            .is_some_and(|n| n == "runc" || n == "crun")
    }

    /// The runtime with its global arguments, as a plain command line.
    pub(super) fn command_line(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.binary);
        cmd.args(&self.runtime_args).arg("--root").arg(&self.root);
        cmd
    }

    pub(super) fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.args(&self.runtime_args).arg("--root").arg(&self.root);
        cmd.kill_on_drop(true);
        cmd
    }

    pub(super) async fn run(
        &self,
        what: &str,
        id: &str,
        args: &[&str],
    ) -> Result<Vec<u8>, HandlerError> {
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
    /// With `start_socket` the monitor also starts the container when asked on the
    /// bundle's `start.sock` and reports its own pid (a gVisor subcontainer).
    pub(super) async fn create(
        &self,
        c: &ContainerSpec<'_>,
        start_socket: bool,
    ) -> Result<u32, HandlerError> {
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
        let json = serde_json::to_vec(spec).map_err(|e| io(std::io::Error::other(e)))?;
        // One trip to a blocking thread for the three.
        let (dirs, config) = (
            [bundle.to_owned(), self.root.clone()],
            bundle.join("config.json"),
        );
        tokio::task::spawn_blocking(move || {
            for dir in &dirs {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(config, json)
        })
        .await
        .map_err(|e| io(std::io::Error::other(e)))?
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
        if start_socket {
            cmd.arg("--start-socket")
                .arg("--sandbox-id")
                .arg(c.sandbox_id);
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
    pub(super) async fn start(&self, id: &str) -> Result<(), HandlerError> {
        self.run("start", id, &["start", id]).await.map(|_| ())
    }

    /// Sends `signal` to the init (or to every process with `all`).
    pub(super) async fn kill(&self, id: &str, signal: i32, all: bool) -> Result<(), HandlerError> {
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
    pub(super) async fn delete(&self, id: &str, force: bool) -> Result<(), HandlerError> {
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
    pub(super) async fn state(&self, id: &str) -> Result<Option<RuntimeState>, HandlerError> {
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
    pub(super) async fn update(
        &self,
        id: &str,
        update: &ResourceUpdate,
    ) -> Result<(), HandlerError> {
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
    /// adopted it), or for a gVisor subcontainer the pid it reported; it is checked to be
    /// this container's monitor before it is signalled.
    pub(super) async fn reopen_monitor_log(
        &self,
        c: &ContainerRef<'_>,
    ) -> Result<(), HandlerError> {
        let id = c.id;
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
        let Some(ppid) = monitor_of(state.pid, id).or_else(|| find_monitor(c.pid, id)) else {
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
}
