//! A handler that runs nothing: containers are entries in memory whose init "exits" when
//! a signal it does not ignore arrives. It lets `server` test its lifecycle rules
//! (ordering, rollback of a failed create, idempotence, restart recovery) without root,
//! runtimes or processes. Not for production: nothing is isolated because nothing runs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use oci_spec::runtime::Process;
use tokio::sync::watch;

use crate::HostFacts;
use crate::attach::{AttachReader, AttachWriter};
use crate::error::HandlerError;
use crate::exec::ExecSession;
use crate::handler::{
    ContainerRef, ContainerSpec, Features, Recovered, RuntimeHandler, SandboxSpec, SandboxState,
    StartedSandbox,
};
use crate::host_check::HostCheck;
use crate::oci::{ExecOutput, ExitStatus, ResourceUpdate, RuntimeState};
use crate::stats::ContainerStats;

/// How a fake container behaves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FakeBehaviour {
    /// Its init ignores SIGTERM (StopContainer must escalate to SIGKILL).
    pub ignores_sigterm: bool,
    /// After a restart, its end is unknown (`recover_container` says Lost).
    pub lost_on_recover: bool,
}

#[derive(Debug)]
struct FakeContainer {
    started: bool,
    exit: watch::Sender<Option<ExitStatus>>,
    behaviour: FakeBehaviour,
}

/// Calls the fake saw, in order, for tests to check.
pub type CallLog = Vec<String>;

/// The fake handler.
#[derive(Debug, Default)]
pub struct FakeHandler {
    name: String,
    containers: Mutex<HashMap<String, FakeContainer>>,
    sandboxes: Mutex<HashMap<String, bool>>,
    calls: Mutex<CallLog>,
    next: Mutex<FakeBehaviour>,
    fail_finish: Mutex<bool>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

impl FakeHandler {
    /// A fake named `name`.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            ..Self::default()
        }
    }

    /// The next created container behaves like this.
    pub fn next_behaves(&self, behaviour: FakeBehaviour) {
        *lock(&self.next) = behaviour;
    }

    /// The next `finish_sandbox` fails (a sandbox that cannot boot), for rollback tests.
    pub fn fail_next_finish(&self) {
        *lock(&self.fail_finish) = true;
    }

    /// The calls so far (`create <id>`, `kill <id> <signal>`, ...).
    pub fn calls(&self) -> CallLog {
        lock(&self.calls).clone()
    }

    /// Whether the fake still has the container (not deleted).
    pub fn has(&self, id: &str) -> bool {
        lock(&self.containers).contains_key(id)
    }

    /// Whether the sandbox was started and not stopped.
    pub fn sandbox_running(&self, id: &str) -> bool {
        lock(&self.sandboxes).get(id).copied().unwrap_or(false)
    }

    /// The container's init exits by itself with `code`.
    pub fn exit(&self, id: &str, code: i32) {
        if let Some(c) = lock(&self.containers).get(id) {
            c.exit.send_replace(Some(ExitStatus {
                code,
                finished_at: now_ns(),
                oom_killed: false,
            }));
        }
    }

    fn log(&self, call: String) {
        lock(&self.calls).push(call);
    }

    fn not_found(id: &str) -> HandlerError {
        HandlerError::NotFound { id: id.to_owned() }
    }

    fn unsupported(&self, what: &str) -> HandlerError {
        HandlerError::Unsupported {
            handler: self.name.clone(),
            what: what.to_owned(),
        }
    }
}

#[async_trait::async_trait]
impl RuntimeHandler for FakeHandler {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "fake"
    }

    fn features(&self) -> Features {
        Features::default()
    }

    fn host_facts(&self) -> HostFacts {
        HostFacts {
            bounding_set: u64::MAX,
            min_oom_score_adj: -1000,
        }
    }

    fn host_checks(&self) -> Vec<HostCheck> {
        Vec::new()
    }

    fn helper_processes(&self) -> usize {
        0
    }

    async fn start_sandbox(&self, sandbox: &SandboxSpec) -> Result<StartedSandbox, HandlerError> {
        self.log(format!("start_sandbox {}", sandbox.id));
        lock(&self.sandboxes).insert(sandbox.id.clone(), true);
        Ok(StartedSandbox {
            state: SandboxState {
                version: 1,
                data: serde_json::json!({ "fake": sandbox.id }),
            },
            namespace_holder: 0,
        })
    }

    async fn finish_sandbox(
        &self,
        sandbox: &SandboxSpec,
        state: &SandboxState,
    ) -> Result<SandboxState, HandlerError> {
        self.log(format!("finish_sandbox {}", sandbox.id));
        if std::mem::take(&mut *lock(&self.fail_finish)) {
            return Err(HandlerError::Runtime {
                handler: self.name.clone(),
                operation: "finish_sandbox".to_owned(),
                id: sandbox.id.clone(),
                message: "the fake was told to fail".to_owned(),
            });
        }
        Ok(state.clone())
    }

    async fn stop_sandbox(
        &self,
        sandbox: &SandboxSpec,
        _state: &SandboxState,
    ) -> Result<(), HandlerError> {
        self.log(format!("stop_sandbox {}", sandbox.id));
        lock(&self.sandboxes).insert(sandbox.id.clone(), false);
        Ok(())
    }

    async fn recover_sandbox(
        &self,
        sandbox: &SandboxSpec,
        _state: &SandboxState,
    ) -> Result<bool, HandlerError> {
        Ok(self.sandbox_running(&sandbox.id))
    }

    async fn create_container(&self, c: &ContainerSpec<'_>) -> Result<u32, HandlerError> {
        self.log(format!("create {}", c.id));
        let behaviour = std::mem::take(&mut *lock(&self.next));
        let (exit, _) = watch::channel(None);
        lock(&self.containers).insert(
            c.id.to_owned(),
            FakeContainer {
                started: false,
                exit,
                behaviour,
            },
        );
        Ok(1)
    }

    async fn start_container(&self, c: &ContainerRef<'_>) -> Result<(), HandlerError> {
        let id = c.id;
        self.log(format!("start {id}"));
        match lock(&self.containers).get_mut(id) {
            Some(c) => {
                c.started = true;
                Ok(())
            }
            None => Err(Self::not_found(id)),
        }
    }

    async fn kill_container(
        &self,
        c: &ContainerRef<'_>,
        signal: i32,
        _all: bool,
    ) -> Result<(), HandlerError> {
        let id = c.id;
        self.log(format!("kill {id} {signal}"));
        let containers = lock(&self.containers);
        let Some(c) = containers.get(id) else {
            return Ok(());
        };
        if signal == libc::SIGTERM && c.behaviour.ignores_sigterm {
            return Ok(());
        }
        c.exit.send_if_modified(|exit| {
            if exit.is_some() {
                return false;
            }
            *exit = Some(ExitStatus {
                code: 128 + signal,
                finished_at: now_ns(),
                oom_killed: false,
            });
            true
        });
        Ok(())
    }

    async fn delete_container(
        &self,
        c: &ContainerRef<'_>,
        _force: bool,
    ) -> Result<(), HandlerError> {
        self.log(format!("delete {}", c.id));
        lock(&self.containers).remove(c.id);
        Ok(())
    }

    async fn container_state(
        &self,
        c: &ContainerRef<'_>,
    ) -> Result<Option<RuntimeState>, HandlerError> {
        Ok(lock(&self.containers).get(c.id).map(|c| RuntimeState {
            status: match (*c.exit.borrow(), c.started) {
                (Some(_), _) => "stopped",
                (None, true) => "running",
                (None, false) => "created",
            }
            .to_owned(),
            pid: 1,
        }))
    }

    fn release_unknown_sandbox(&self, _id: &str, _pid_pin: &Path) {}

    fn pid_namespace(&self, _c: &ContainerRef<'_>) -> Option<PathBuf> {
        None
    }

    async fn recover_container(&self, c: &ContainerRef<'_>) -> Result<Recovered, HandlerError> {
        let containers = lock(&self.containers);
        let Some(container) = containers.get(c.id) else {
            return Ok(Recovered::Lost {
                message: "the fake has no such container".to_owned(),
            });
        };
        if container.behaviour.lost_on_recover {
            return Ok(Recovered::Lost {
                message: "the fake lost it (node restart)".to_owned(),
            });
        }
        Ok(match *container.exit.borrow() {
            Some(exit) => Recovered::Exited(exit),
            None => Recovered::Running,
        })
    }

    async fn wait_container(&self, c: &ContainerRef<'_>) -> Result<ExitStatus, HandlerError> {
        let mut exit = lock(&self.containers)
            .get(c.id)
            .map(|c| c.exit.subscribe())
            .ok_or_else(|| Self::not_found(c.id))?;
        let ended = exit
            .wait_for(Option::is_some)
            .await
            .map_err(|_| Self::not_found(c.id))?;
        (*ended).ok_or_else(|| Self::not_found(c.id))
    }

    async fn exec_sync(
        &self,
        c: &ContainerRef<'_>,
        process: &Process,
        _timeout: Option<Duration>,
    ) -> Result<ExecOutput, HandlerError> {
        self.log(format!("exec {}", c.id));
        // Echoes its arguments, as `echo` would.
        let args = process.args().clone().unwrap_or_default();
        Ok(ExecOutput {
            exit_code: 0,
            stdout: format!("{}\n", args.join(" ")).into_bytes(),
            stderr: Vec::new(),
        })
    }

    async fn exec_streaming(
        &self,
        _c: &ContainerRef<'_>,
        _process: &Process,
        _stdin: bool,
    ) -> Result<ExecSession, HandlerError> {
        Err(self.unsupported("streaming exec"))
    }

    async fn attach(
        &self,
        _c: &ContainerRef<'_>,
    ) -> Result<(AttachReader, AttachWriter), HandlerError> {
        Err(self.unsupported("attach"))
    }

    async fn port_forward(
        &self,
        _sandbox: &SandboxSpec,
        _netns: Option<&Path>,
        _port: u16,
    ) -> Result<crate::PortStream, HandlerError> {
        Err(self.unsupported("port-forward"))
    }

    async fn update_container(
        &self,
        c: &ContainerRef<'_>,
        _update: &ResourceUpdate,
    ) -> Result<(), HandlerError> {
        self.log(format!("update {}", c.id));
        Ok(())
    }

    async fn reopen_log(&self, c: &ContainerRef<'_>) -> Result<(), HandlerError> {
        self.log(format!("reopen_log {}", c.id));
        Ok(())
    }

    async fn container_stats(
        &self,
        c: &ContainerRef<'_>,
        _detail: bool,
    ) -> Result<ContainerStats, HandlerError> {
        if !self.has(c.id) {
            return Err(Self::not_found(c.id));
        }
        Ok(ContainerStats {
            timestamp: now_ns(),
            ..ContainerStats::default()
        })
    }
}
