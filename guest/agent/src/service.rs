//! The `crisp.agent.v1.Agent` service: the pod's containers, as the host asks.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_proto::agent_server::Agent;
use agent_proto::{
    AttachInput, ContainerId, ContainerStatsRequest, ContainerStatsResponse,
    ContainerStatusResponse, CreateContainerRequest, Empty, ExecInput, ExecOutput, ExecSyncRequest,
    ExecSyncResponse, ExitInfo, HelloRequest, HelloResponse, KillRequest, PidMode, PortData,
    ReopenLogRequest, SetupSandboxRequest, StartContainerResponse, UpdateContainerRequest,
    attach_input, container_status_response::State, exec_input,
};
use crilog::LogWriter;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::{broadcast, watch};
use tonic::{Request, Response, Status, Streaming};

use crate::cgroup::Cgroups;
use crate::container::{self, Filter, PidNs, Root, Stdio};
use crate::mounts;
use crate::reaper::Reaper;
use crate::stream;

/// How long output may still drain after a container's process has exited, before the
/// exit is reported anyway (a child it left may hold its stdout open).
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(1);

/// Most output ExecSync keeps of each stream.
const EXEC_OUTPUT_CAP: usize = 16 << 20;

struct Container {
    request: CreateContainerRequest,
    pid: Option<i32>,
    exit: watch::Receiver<Option<ExitInfo>>,
    exit_tx: Option<watch::Sender<Option<ExitInfo>>>,
    log: Arc<Mutex<LogWriter>>,
    /// Its output as it is logged, for attachers: (is stderr, bytes).
    output: broadcast::Sender<(bool, Vec<u8>)>,
    /// The writer of its stdin for attachers, once started with one.
    stdin: Option<tokio::sync::mpsc::Sender<stream::StdinOp>>,
    /// Its terminal, if it has one.
    terminal: Option<Arc<stream::Terminal>>,
    /// The seccomp filter of its processes.
    filter: Option<Filter>,
}

/// Output chunks kept for attachers that fall behind; a slower one skips ahead.
const ATTACH_BACKLOG: usize = 256;

/// The agent's state.
pub struct AgentService {
    shared: PathBuf,
    reaper: Reaper,
    containers: Arc<Mutex<HashMap<String, Container>>>,
    /// The PID 1 of the pod's shared PID namespace, once a container asked for it: its
    /// pid and its namespace's inode.
    pause: Mutex<Option<(i32, u64)>>,
    cgroups: Arc<Cgroups>,
}

/// The status of a call naming a container this VM does not have.
fn not_here(id: &str) -> Status {
    Status::not_found(format!("container {id} is not in this VM"))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

pub(crate) fn now_nanos() -> i64 {
    let (s, n) = crilog::now();
    s * 1_000_000_000 + i64::from(n)
}

/// Reads `source` to its end into the log as `stream`, and to the attachers.
async fn pump(
    mut source: stream::Source,
    stream: &'static str,
    log: Arc<Mutex<LogWriter>>,
    attachers: broadcast::Sender<(bool, Vec<u8>)>,
) {
    let mut partial = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match source.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                crilog::emit(&mut lock(&log), stream, &mut partial, &buf[..n]);
                if attachers.receiver_count() > 0 {
                    let _ = attachers.send((stream == "stderr", buf[..n].to_vec()));
                }
            }
        }
    }
    crilog::flush(&mut lock(&log), stream, &mut partial);
}

/// Reads `fd` to its end into `out`, keeping at most [`EXEC_OUTPUT_CAP`] bytes (what was
/// read stays in `out` if the reading is given up).
async fn collect_into(fd: std::os::fd::OwnedFd, out: Arc<Mutex<Vec<u8>>>) {
    let Ok(mut rx) = pipe::Receiver::from_owned_fd(fd) else {
        return;
    };
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match rx.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let mut out = lock(&out);
                let room = EXEC_OUTPUT_CAP.saturating_sub(out.len());
                out.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

/// Reads `fd` to its end.
async fn collect(fd: std::os::fd::OwnedFd) -> Vec<u8> {
    let out = Arc::new(Mutex::new(Vec::new()));
    collect_into(fd, Arc::clone(&out)).await;
    std::mem::take(&mut *lock(&out))
}

/// Runs a guest tool (busybox) to its end; its error output on failure.
async fn run_tool(reaper: &Reaper, args: &[&str]) -> Result<(), String> {
    let mut cmd = std::process::Command::new("/bin/busybox");
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("busybox: {e}"))?;
    let status = reaper.watch(child.id() as i32);
    let err = match child.stderr.take() {
        Some(e) => collect(e.into()).await,
        None => Vec::new(),
    };
    match Reaper::wait(status).await {
        0 => Ok(()),
        code => Err(format!(
            "{} exited {code}: {}",
            args.join(" "),
            String::from_utf8_lossy(&err).trim()
        )),
    }
}

impl AgentService {
    /// A service whose containers' files are under `shared`.
    pub fn new(shared: PathBuf, reaper: Reaper, cgroups: Cgroups) -> Self {
        Self {
            cgroups: Arc::new(cgroups),
            shared,
            reaper,
            containers: Arc::new(Mutex::new(HashMap::new())),
            pause: Mutex::new(None),
        }
    }

    /// The PID namespace a new container of `request` starts in.
    fn pid_namespace(&self, request: &CreateContainerRequest) -> Result<PidNs, Status> {
        match PidMode::try_from(request.pid_mode) {
            Ok(PidMode::Container) => Ok(PidNs::New),
            Ok(PidMode::Pod) => {
                let mut pause = lock(&self.pause);
                // Still the pause process: PID 1 of the namespace it made, not another
                // process that took its pid after it died.
                if let Some((pid, ns)) = *pause
                    && container::is_init_of(pid, ns)
                {
                    return PidNs::of(pid).map_err(Status::internal);
                }
                let pid = container::spawn_pause().map_err(Status::internal)?;
                let ns = container::pid_namespace_inode(pid).map_err(|e| {
                    // A pause nobody can name must not live on beside the next one.
                    // SAFETY: kill takes no pointers; the pid is the child just started.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    Status::internal(e)
                })?;
                *pause = Some((pid, ns));
                PidNs::of(pid).map_err(Status::internal)
            }
            Ok(PidMode::Target) => {
                let pid = self.running_pid(&request.pid_target).map_err(|e| {
                    Status::failed_precondition(format!(
                        "the target of the PID namespace: {}",
                        e.message()
                    ))
                })?;
                PidNs::of(pid).map_err(Status::failed_precondition)
            }
            Err(_) => Err(Status::invalid_argument(format!(
                "PID mode {} is not one this agent knows",
                request.pid_mode
            ))),
        }
    }

    fn log_file(&self, relative: &str) -> Result<PathBuf, Status> {
        if relative.is_empty() {
            return Ok(PathBuf::new());
        }
        mounts::under(&self.shared, relative).map_err(Status::invalid_argument)
    }

    /// The seccomp filter of container `id`'s processes.
    fn filter_of(&self, id: &str) -> Option<Filter> {
        lock(&self.containers)
            .get(id)
            .and_then(|c| c.filter.clone())
    }

    fn running_pid(&self, id: &str) -> Result<i32, Status> {
        let containers = lock(&self.containers);
        let c = containers.get(id).ok_or_else(|| not_here(id))?;
        match (c.pid, c.exit.borrow().is_some()) {
            (Some(pid), false) => Ok(pid),
            (None, _) => Err(Status::failed_precondition(format!(
                "container {id} has not started"
            ))),
            (Some(_), true) => Err(Status::failed_precondition(format!(
                "container {id} is not running"
            ))),
        }
    }
}

#[tonic::async_trait]
impl Agent for AgentService {
    async fn hello(&self, _: Request<HelloRequest>) -> Result<Response<HelloResponse>, Status> {
        let kernel_release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        Ok(Response::new(HelloResponse {
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            kernel_release,
            uptime_ms: crate::uptime_ms(),
            init_ms: crate::INIT_MS.get().copied().unwrap_or(0),
        }))
    }

    async fn setup_sandbox(
        &self,
        request: Request<SetupSandboxRequest>,
    ) -> Result<Response<Empty>, Status> {
        let r = request.into_inner();
        if r.time_unix_nanos > 0 {
            let ts = libc::timespec {
                tv_sec: r.time_unix_nanos / 1_000_000_000,
                tv_nsec: r.time_unix_nanos % 1_000_000_000,
            };
            // SAFETY: clock_settime reads the timespec, which lives across the call.
            unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) };
        }
        if !r.hostname.is_empty() {
            // SAFETY: the pointer and length describe the hostname's bytes.
            let rc = unsafe { libc::sethostname(r.hostname.as_ptr().cast(), r.hostname.len()) };
            if rc != 0 {
                return Err(Status::internal(format!(
                    "set hostname {:?}: {}",
                    r.hostname,
                    std::io::Error::last_os_error()
                )));
            }
        }
        // The guest's network and IPC namespaces are the pod's: its sysctls go there.
        for (key, value) in &r.sysctls {
            if key.contains('/') || key.split('.').any(|p| p.is_empty() || p == "..") {
                return Err(Status::invalid_argument(format!("{key:?} is not a sysctl")));
            }
            let path = format!("/proc/sys/{}", key.replace('.', "/"));
            std::fs::write(&path, value)
                .map_err(|e| Status::invalid_argument(format!("sysctl {key}={value:?}: {e}")))?;
        }
        let mut first_nic = None;
        for nic in &r.interfaces {
            let name = std::fs::read_dir("/sys/class/net")
                .map_err(|e| Status::internal(format!("/sys/class/net: {e}")))?
                .flatten()
                .find(|e| {
                    std::fs::read_to_string(e.path().join("address"))
                        .is_ok_and(|a| a.trim().eq_ignore_ascii_case(&nic.mac))
                })
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .ok_or_else(|| {
                    Status::failed_precondition(format!(
                        "the guest has no NIC with MAC {}",
                        nic.mac
                    ))
                })?;
            if nic.mtu > 0 {
                let mtu = nic.mtu.to_string();
                run_tool(
                    &self.reaper,
                    &["ip", "link", "set", "dev", &name, "mtu", &mtu],
                )
                .await
                .map_err(Status::internal)?;
            }
            for addr in &nic.addresses {
                run_tool(&self.reaper, &["ip", "addr", "add", addr, "dev", &name])
                    .await
                    .map_err(Status::internal)?;
            }
            run_tool(&self.reaper, &["ip", "link", "set", "dev", &name, "up"])
                .await
                .map_err(Status::internal)?;
            first_nic.get_or_insert(name);
        }
        // Routes without a gateway (on-link, such as the /32 gateway route of ptp or
        // Calico networks) first, on the pod's NIC; then those through a gateway.
        let nic = first_nic.unwrap_or_else(|| "eth0".to_owned());
        let mut routes: Vec<_> = r.routes.iter().collect();
        routes.sort_by_key(|route| !route.gateway.is_empty());
        for route in routes {
            let dest = if route.destination.is_empty() {
                "default"
            } else {
                route.destination.as_str()
            };
            let mut args = vec!["ip", "route", "add", dest];
            if route.gateway.is_empty() {
                args.extend(["dev", nic.as_str()]);
            } else {
                args.extend(["via", route.gateway.as_str()]);
            }
            run_tool(&self.reaper, &args)
                .await
                .map_err(Status::internal)?;
        }
        Ok(Response::new(Empty {}))
    }

    async fn create_container(
        &self,
        request: Request<CreateContainerRequest>,
    ) -> Result<Response<Empty>, Status> {
        let r = request.into_inner();
        let rootfs = mounts::under(&self.shared, &r.rootfs).map_err(Status::invalid_argument)?;
        if !rootfs.is_dir() {
            return Err(Status::failed_precondition(format!(
                "the container's root file system {} is not shared with the VM",
                r.rootfs
            )));
        }
        let filter =
            Filter::parse(&r.seccomp_filter, r.seccomp_flags).map_err(Status::invalid_argument)?;
        let log = LogWriter::open(&self.log_file(&r.log_path)?);
        let (tx, rx) = watch::channel(None);
        let mut containers = lock(&self.containers);
        if containers.contains_key(&r.id) {
            return Err(Status::already_exists(format!("container {} exists", r.id)));
        }
        self.cgroups
            .create(&r.id, r.resources.as_ref())
            .map_err(Status::failed_precondition)?;
        containers.insert(
            r.id.clone(),
            Container {
                request: r,
                pid: None,
                exit: rx,
                exit_tx: Some(tx),
                log: Arc::new(Mutex::new(log)),
                output: broadcast::channel(ATTACH_BACKLOG).0,
                stdin: None,
                terminal: None,
                filter,
            },
        );
        Ok(Response::new(Empty {}))
    }

    async fn start_container(
        &self,
        request: Request<ContainerId>,
    ) -> Result<Response<StartContainerResponse>, Status> {
        let id = request.into_inner().id;
        let (req, log, exit_tx, filter) = {
            let mut containers = lock(&self.containers);
            let c = containers.get_mut(&id).ok_or_else(|| not_here(&id))?;
            if c.pid.is_some() {
                return Err(Status::failed_precondition(format!(
                    "container {id} has already started"
                )));
            }
            let Some(tx) = c.exit_tx.take() else {
                return Err(Status::failed_precondition(format!(
                    "container {id} is starting"
                )));
            };
            (c.request.clone(), Arc::clone(&c.log), tx, c.filter.clone())
        };
        let stdio = if req.tty {
            Stdio::Terminal
        } else {
            Stdio::Pipes { stdin: req.stdin }
        };
        let rootfs = mounts::under(&self.shared, &req.rootfs).map_err(Status::invalid_argument)?;
        let process = req.process.clone().unwrap_or_default();
        let pid_ns = match self.pid_namespace(&req) {
            Ok(ns) => ns,
            Err(e) => {
                // Give the sender back so a later start may try again.
                if let Some(c) = lock(&self.containers).get_mut(&id) {
                    c.exit_tx = Some(exit_tx);
                }
                return Err(e);
            }
        };
        let cgroup = self.cgroups.procs(&id);
        let started = cgroup.and_then(|cgroup| {
            let steps = mounts::plan(&rootfs, &self.shared, &req.mounts)?;
            container::spawn(
                &process,
                Root::New {
                    rootfs,
                    steps,
                    hostname: req.hostname.clone(),
                    readonly: req.readonly_rootfs,
                    masked: req.masked_paths.clone(),
                    readonly_paths: req.readonly_paths.clone(),
                    sysctls: req
                        .sysctls
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    pid_ns,
                },
                stdio,
                filter.as_ref(),
                cgroup,
            )
        });
        let started = match started {
            Ok(s) => s,
            Err(message) => {
                // Give the sender back so a later start may try again.
                if let Some(c) = lock(&self.containers).get_mut(&id) {
                    c.exit_tx = Some(exit_tx);
                }
                return Err(Status::failed_precondition(message));
            }
        };
        let pid = started.pid;
        let status = self.reaper.watch(pid);
        let (out, err, sink, terminal) = match started.stderr {
            None => {
                let terminal = match stream::Terminal::new(started.stdout) {
                    Ok(t) => Arc::new(t),
                    Err(e) => {
                        // SAFETY: kill takes no pointers; the child is ours, not reaped.
                        unsafe { libc::kill(-pid, libc::SIGKILL) };
                        // Give the sender back so a later start may try again.
                        if let Some(c) = lock(&self.containers).get_mut(&id) {
                            c.exit_tx = Some(exit_tx);
                        }
                        return Err(Status::internal(format!("the container's terminal: {e}")));
                    }
                };
                let sink = req
                    .stdin
                    .then(|| stream::Sink::Terminal(Arc::clone(&terminal)));
                (
                    stream::Source::Terminal(Arc::clone(&terminal)),
                    None,
                    sink,
                    Some(terminal),
                )
            }
            Some(stderr) => (
                stream::Source::pipe(started.stdout),
                Some(stream::Source::pipe(stderr)),
                started
                    .stdin
                    .and_then(|fd| pipe::Sender::from_owned_fd(fd).ok())
                    .map(stream::Sink::Pipe),
                None,
            ),
        };
        let attachers = {
            let mut containers = lock(&self.containers);
            let Some(c) = containers.get_mut(&id) else {
                return Err(Status::not_found(format!("container {id} was deleted")));
            };
            c.pid = Some(pid);
            c.terminal = terminal;
            c.stdin = sink.map(stream::stdin_writer);
            c.output.clone()
        };
        let cgroups = Arc::clone(&self.cgroups);
        tokio::spawn(async move {
            let out = tokio::spawn(pump(out, "stdout", Arc::clone(&log), attachers.clone()));
            let err = err.map(|e| tokio::spawn(pump(e, "stderr", log, attachers)));
            let code = Reaper::wait(status).await;
            let finished = now_nanos();
            // What the init left in a shared PID namespace (POD, TARGET) lives on in its
            // cgroup: end it with the container, as containerd's shim does. (In a
            // namespace of its own it died with the init.)
            cgroups.kill_all(&id);
            // Report the exit once the output is in the log (or the drain gave up).
            let _ = tokio::time::timeout(DRAIN_AFTER_EXIT, async {
                let _ = out.await;
                if let Some(err) = err {
                    let _ = err.await;
                }
            })
            .await;
            let _ = exit_tx.send(Some(ExitInfo {
                exit_code: code,
                finished_at_unix_nanos: finished,
                oom_killed: cgroups.oom_kills(&id) > 0,
            }));
        });
        Ok(Response::new(StartContainerResponse { pid: pid as u32 }))
    }

    async fn wait_container(
        &self,
        request: Request<ContainerId>,
    ) -> Result<Response<ExitInfo>, Status> {
        let id = request.into_inner().id;
        let mut rx = lock(&self.containers)
            .get(&id)
            .map(|c| c.exit.clone())
            .ok_or_else(|| not_here(&id))?;
        loop {
            if let Some(exit) = *rx.borrow_and_update() {
                return Ok(Response::new(exit));
            }
            if rx.changed().await.is_err() {
                return Err(Status::aborted(format!(
                    "container {id} was deleted while waited for"
                )));
            }
        }
    }

    async fn container_status(
        &self,
        request: Request<ContainerId>,
    ) -> Result<Response<ContainerStatusResponse>, Status> {
        let id = request.into_inner().id;
        let containers = lock(&self.containers);
        let c = containers.get(&id).ok_or_else(|| not_here(&id))?;
        let exit = *c.exit.borrow();
        let state = match (c.pid, &exit) {
            (_, Some(_)) => State::Exited,
            (Some(_), None) => State::Running,
            (None, None) => State::Created,
        };
        Ok(Response::new(ContainerStatusResponse {
            state: state as i32,
            pid: c.pid.unwrap_or(0) as u32,
            exit,
        }))
    }

    async fn kill_container(
        &self,
        request: Request<KillRequest>,
    ) -> Result<Response<Empty>, Status> {
        let r = request.into_inner();
        let pid = {
            let mut containers = lock(&self.containers);
            let c = containers.get_mut(&r.id).ok_or_else(|| not_here(&r.id))?;
            if c.exit.borrow().is_some() {
                return Ok(Response::new(Empty {}));
            }
            if c.pid.is_none() && r.signal != 0 {
                // Created, never started (or its start failed): as with an OCI runtime,
                // a signal ends it, with the status a signalled process reports.
                if let Some(tx) = c.exit_tx.take() {
                    let _ = tx.send(Some(ExitInfo {
                        exit_code: 128 + r.signal,
                        finished_at_unix_nanos: now_nanos(),
                        oom_killed: false,
                    }));
                }
                return Ok(Response::new(Empty {}));
            }
            c.pid
        };
        if let Some(pid) = pid {
            // The init leads its own session and process group: `all` signals the group.
            let target = if r.all { -pid } else { pid };
            // SAFETY: kill takes no pointers.
            unsafe { libc::kill(target, r.signal) };
            if r.all && r.signal == libc::SIGKILL {
                // Processes that left the group (or, in the pod's PID namespace,
                // outlived their parent) are still in the cgroup.
                self.cgroups.kill_all(&r.id);
            }
        }
        Ok(Response::new(Empty {}))
    }

    async fn delete_container(
        &self,
        request: Request<ContainerId>,
    ) -> Result<Response<Empty>, Status> {
        let id = request.into_inner().id;
        let removed = lock(&self.containers).remove(&id);
        if let Some(c) = &removed
            && let Some(pid) = c.pid
            && c.exit.borrow().is_none()
        {
            // SAFETY: kill takes no pointers.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        if removed.is_some() {
            self.cgroups.remove(&id).await;
        }
        Ok(Response::new(Empty {}))
    }

    async fn exec_sync(
        &self,
        request: Request<ExecSyncRequest>,
    ) -> Result<Response<ExecSyncResponse>, Status> {
        let r = request.into_inner();
        let pid = self.running_pid(&r.id)?;
        let process = r.process.unwrap_or_default();
        let started = container::spawn(
            &process,
            Root::Join { pid: pid as u32 },
            Stdio::Pipes { stdin: false },
            self.filter_of(&r.id).as_ref(),
            self.cgroups
                .procs(&r.id)
                .map_err(Status::failed_precondition)?,
        )
        .map_err(Status::failed_precondition)?;
        let child = started.pid;
        let status = self.reaper.watch(child);
        let (out_buf, err_buf) = (
            Arc::new(Mutex::new(Vec::new())),
            Arc::new(Mutex::new(Vec::new())),
        );
        let out = tokio::spawn(collect_into(started.stdout, Arc::clone(&out_buf)));
        let err = started
            .stderr
            .map(|fd| tokio::spawn(collect_into(fd, Arc::clone(&err_buf))));
        let limit = if r.timeout_ms == 0 {
            Duration::MAX
        } else {
            Duration::from_millis(r.timeout_ms)
        };
        let (code, timed_out) =
            match tokio::time::timeout(limit, Reaper::wait(status.clone())).await {
                Ok(code) => (code, false),
                Err(_) => {
                    // SAFETY: kill takes no pointers.
                    unsafe { libc::kill(-child, libc::SIGKILL) };
                    (Reaper::wait(status).await, true)
                }
            };
        // A child the command left may hold a pipe open: keep what came, drain at most
        // a little longer.
        let _ = tokio::time::timeout(DRAIN_AFTER_EXIT, async {
            let _ = out.await;
            if let Some(err) = err {
                let _ = err.await;
            }
        })
        .await;
        let stdout = std::mem::take(&mut *lock(&out_buf));
        let stderr = std::mem::take(&mut *lock(&err_buf));
        Ok(Response::new(ExecSyncResponse {
            exit_code: code,
            stdout,
            stderr,
            timed_out,
        }))
    }

    type ExecStream = stream::Outbound<ExecOutput>;

    async fn exec(
        &self,
        request: Request<Streaming<ExecInput>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        let mut inbound = request.into_inner();
        let start = match inbound.message().await? {
            Some(ExecInput {
                input: Some(exec_input::Input::Start(start)),
            }) => start,
            _ => {
                return Err(Status::invalid_argument(
                    "an exec call must begin with the process to start",
                ));
            }
        };
        let pid = self.running_pid(&start.id)?;
        let process = start.process.unwrap_or_default();
        let stdio = if start.tty {
            Stdio::Terminal
        } else {
            Stdio::Pipes { stdin: start.stdin }
        };
        let filter = self.filter_of(&start.id);
        let started = container::spawn(
            &process,
            Root::Join { pid: pid as u32 },
            stdio,
            filter.as_ref(),
            self.cgroups
                .procs(&start.id)
                .map_err(Status::failed_precondition)?,
        )
        .map_err(Status::failed_precondition)?;
        let status = self.reaper.watch(started.pid);
        Ok(Response::new(stream::exec(started, status, inbound)))
    }

    type AttachStream = stream::Outbound<ExecOutput>;

    async fn attach(
        &self,
        request: Request<Streaming<AttachInput>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let mut inbound = request.into_inner();
        let id = match inbound.message().await? {
            Some(AttachInput {
                input: Some(attach_input::Input::Id(id)),
            }) => id,
            _ => {
                return Err(Status::invalid_argument(
                    "an attach call must begin with the container's id",
                ));
            }
        };
        self.running_pid(&id)?;
        let containers = lock(&self.containers);
        let c = containers.get(&id).ok_or_else(|| not_here(&id))?;
        let attached = stream::Attached {
            output: c.output.subscribe(),
            exit: c.exit.clone(),
            stdin: c.stdin.clone(),
            terminal: c.terminal.clone(),
        };
        Ok(Response::new(stream::attach(attached, inbound)))
    }

    type PortForwardStream = stream::Outbound<PortData>;

    async fn port_forward(
        &self,
        request: Request<Streaming<PortData>>,
    ) -> Result<Response<Self::PortForwardStream>, Status> {
        Ok(Response::new(
            stream::port_forward(request.into_inner()).await?,
        ))
    }

    async fn update_container(
        &self,
        request: Request<UpdateContainerRequest>,
    ) -> Result<Response<Empty>, Status> {
        let r = request.into_inner();
        // A created container may be updated too: its cgroup exists from its creation.
        {
            let containers = lock(&self.containers);
            let c = containers.get(&r.id).ok_or_else(|| not_here(&r.id))?;
            if c.exit.borrow().is_some() {
                return Err(Status::failed_precondition(format!(
                    "container {} has exited",
                    r.id
                )));
            }
        }
        let resources = r.resources.unwrap_or_default();
        self.cgroups
            .apply(&r.id, &resources)
            .map_err(Status::invalid_argument)?;
        Ok(Response::new(Empty {}))
    }

    async fn container_stats(
        &self,
        request: Request<ContainerStatsRequest>,
    ) -> Result<Response<ContainerStatsResponse>, Status> {
        let ContainerStatsRequest { id, detail } = request.into_inner();
        if !lock(&self.containers).contains_key(&id) {
            return Err(not_here(&id));
        }
        self.cgroups
            .stats(&id, detail)
            .map(Response::new)
            .map_err(Status::unavailable)
    }

    async fn reopen_log(
        &self,
        request: Request<ReopenLogRequest>,
    ) -> Result<Response<Empty>, Status> {
        let r = request.into_inner();
        let path = self.log_file(&r.log_path)?;
        let containers = lock(&self.containers);
        let c = containers.get(&r.id).ok_or_else(|| not_here(&r.id))?;
        *lock(&c.log) = LogWriter::open(&path);
        Ok(Response::new(Empty {}))
    }

    async fn shutdown(&self, _: Request<Empty>) -> Result<Response<Empty>, Status> {
        tokio::spawn(async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if std::process::id() == 1 {
                crate::init::power_off();
            }
            std::process::exit(0);
        });
        Ok(Response::new(Empty {}))
    }
}
