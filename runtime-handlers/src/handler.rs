//! The interface `server` drives every pod through, whatever runs it.
//!
//! A handler owns what is specific to how containers run: for the `oci` handler a pod is
//! host namespaces that `server` pins plus, when the pod shares a PID namespace, an init
//! process; each container is an OCI runtime container under its own monitor. A VM-per-pod
//! handler boots the VM in [`RuntimeHandler::start_sandbox`], creates containers through
//! its agent, and answers state, exec and stats from inside the guest.
//!
//! Handlers are sandbox-scoped: `start_sandbox` (before `server` makes the pod's
//! namespaces) and `finish_sandbox` (after, with CNI attached) return the handler's own
//! versioned [`SandboxState`], which `server` persists with the pod without reading it
//! and hands back to `stop_sandbox` and, after a crispd restart, to `recover_sandbox`; every
//! container call names its container and its sandbox ([`ContainerRef`]). `server` keeps
//! what every handler needs (the pod's network namespace and CNI, the rootfs, the pod's
//! files) and asks the handler for everything about processes: exits and OOM kills,
//! attach and port-forward streams, stats, host facts and checks.
//!
//! Contract shared by every handler (held by `tests/contract.rs`, which each handler
//! kind runs):
//! - a failed `create_container` leaves nothing at the runtime;
//! - when a container's init exits, [`RuntimeHandler::wait_container`] reports how, also
//!   when that happened while crispd was down (the `oci` handler's monitor records it in
//!   the bundle's `exit` file);
//! - [`RuntimeHandler::recover_container`] tells, after a restart, whether a container
//!   still runs, how it ended, or that its end is lost (a node reboot), leaving nothing;
//! - `kill_container` and `delete_container` of a container that is already gone succeed;
//! - `stop_sandbox` ends what `start_sandbox` made whatever state it is in, and may be
//!   called again.

use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_spec::runtime::{Process, Spec};

use crate::error::HandlerError;
use crate::exec::ExecSession;
use crate::oci::{ExecOutput, ExitStatus, ResourceUpdate, RuntimeState};
use crate::stats::ContainerStats;

/// A byte stream both ways: a port-forward connection (a TCP socket for a pod on the
/// host, a stream through its agent for a pod in a VM).
pub trait Duplex: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Duplex for T {}

/// What [`RuntimeHandler::port_forward`] connects.
pub type PortStream = Box<dyn Duplex>;

/// What a handler can do, reported in the CRI `Status` per handler.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Features {
    /// Mounts can be made recursively read-only.
    pub recursive_read_only_mounts: bool,
    /// Pods can run in user namespaces.
    pub user_namespaces: bool,
    /// A container's mounts are made when it starts, not when it is created (a gVisor
    /// subcontainer): the bind sources `server` prepares must last until then.
    pub mounts_at_start: bool,
}

/// A pod as a handler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxSpec {
    /// The sandbox ID.
    pub id: String,
    /// The pod's directory under the state dir.
    pub state_dir: PathBuf,
    /// The pod's containers share one PID namespace, which needs a living init.
    pub share_pid: bool,
    /// The pod shares the host's PID namespace (hostPID).
    pub host_pid: bool,
    /// The pod shares the host's IPC namespace (hostIPC).
    pub host_ipc: bool,
    /// Where `server` pins that PID namespace once the init is up; the handler checks a
    /// process against it before it kills what it believes is the init.
    pub pid_pin: PathBuf,
    /// The pod runs in its own user namespace with these ID maps. The handler then makes
    /// that namespace and the pod's network, IPC, UTS and PID namespaces inside it, all
    /// held by the init it returns, from which `server` pins them.
    pub userns: Option<UserNamespace>,
    /// The pod's network namespace, pinned by `server` (`None`: the host's network). Set
    /// up, with CNI attached, before [`RuntimeHandler::finish_sandbox`].
    pub netns: Option<PathBuf>,
    /// The pod's hostname.
    pub hostname: String,
    /// The cgroup for what the handler runs for the pod as a whole (a gVisor sandbox, a
    /// VMM): a cgroupfs path or a systemd `slice:prefix:name`, as containers' are given.
    pub cgroups_path: String,
    /// The pod's namespaced sysctls. `server` sets them in the namespaces it pins; a
    /// handler whose pod has namespaces of its own (a VM's guest) sets them there.
    pub sysctls: std::collections::BTreeMap<String, String>,
    /// What kubelet says the pod needs: its containers' limits summed, and its
    /// RuntimeClass's overhead. A VM-per-pod handler sizes the VM by the limits.
    pub resources: PodResources,
}

/// A pod's resources as kubelet sends them with RunPodSandbox.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PodResources {
    /// The containers' memory limits summed as kubelet sums them (those that are set),
    /// bytes; 0 for none.
    #[serde(default)]
    pub memory_limit: u64,
    /// The containers' CPU limits summed likewise, thousandths of a CPU; 0 for none.
    #[serde(default)]
    pub cpu_millis: u64,
    /// The RuntimeClass's overhead: memory (bytes) and CPU (thousandths).
    #[serde(default)]
    pub overhead_memory: u64,
    #[serde(default)]
    pub overhead_cpu_millis: u64,
}

/// One contiguous range of IDs: `size` IDs from `container` in the pod are the host's
/// IDs from `host`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    /// First ID inside the namespace.
    pub container: u32,
    /// First host ID it maps to.
    pub host: u32,
    /// How many IDs.
    pub size: u32,
}

/// A pod's user namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserNamespace {
    /// User ID ranges.
    pub uids: Vec<IdRange>,
    /// Group ID ranges.
    pub gids: Vec<IdRange>,
}

impl UserNamespace {
    /// The text of a `/proc/<pid>/uid_map` or `gid_map` file for `ranges`.
    pub fn map_text(ranges: &[IdRange]) -> String {
        ranges
            .iter()
            .map(|r| format!("{} {} {}\n", r.container, r.host, r.size))
            .collect()
    }
}

/// What a handler keeps of a started sandbox: its own versioned format, opaque to
/// `server`, which persists it with the pod's record and hands it back for every later
/// call on the sandbox, also after a crispd restart.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SandboxState {
    /// The handler's format version (0: a record from before handlers kept state, whose
    /// `data` is the pid of the pod's init, or 0).
    pub version: u32,
    /// The handler's data.
    pub data: serde_json::Value,
}

/// A sandbox the handler brought up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartedSandbox {
    /// What the handler needs to find and end it later.
    pub state: SandboxState,
    /// A host process whose namespaces `server` pins as the pod's (the init of a shared
    /// PID namespace or of a user namespace); 0 when `server` makes them itself.
    pub namespace_holder: u32,
}

/// A container a handler is asked to create.
#[derive(Debug, Clone, Copy)]
pub struct ContainerSpec<'a> {
    /// The container ID.
    pub id: &'a str,
    /// Its pod.
    pub sandbox_id: &'a str,
    /// The bundle directory (config.json, the exit file).
    pub bundle: &'a Path,
    /// The OCI runtime spec.
    pub spec: &'a Spec,
    /// The kubelet log file; empty for none.
    pub log_path: &'a Path,
    /// The container keeps a stdin open for attachers.
    pub stdin: bool,
    /// Its stdin closes when the first attacher detaches.
    pub stdin_once: bool,
}

/// A created container, as later calls name it.
#[derive(Debug, Clone, Copy)]
pub struct ContainerRef<'a> {
    /// The container ID.
    pub id: &'a str,
    /// Its pod.
    pub sandbox_id: &'a str,
    /// Its bundle directory.
    pub bundle: &'a Path,
    /// The init's pid as the handler reported it at create (0 if unknown).
    pub pid: u32,
    /// The cgroup path given in its spec (empty if the runtime chose).
    pub cgroup_path: &'a str,
}

/// What a handler finds of a container at startup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovered {
    /// It runs (or waits to start) as before.
    Running,
    /// It exited while crispd was away.
    Exited(ExitStatus),
    /// Nothing tells how it ended (the node restarted, its monitor was killed); the
    /// handler made sure nothing of it still runs.
    Lost {
        /// Why, for the container's status message.
        message: String,
    },
}

/// The calls `server` makes on a pod's runtime handler.
#[async_trait::async_trait]
pub trait RuntimeHandler: Send + Sync + std::fmt::Debug {
    /// The handler's configured name.
    fn name(&self) -> &str;

    /// The kind of handler (`oci`, `microvm`): handlers of one kind share their helpers.
    fn kind(&self) -> &'static str;

    /// What it supports.
    fn features(&self) -> Features;

    /// The limits of where its containers run, which requests are clipped to.
    fn host_facts(&self) -> crate::HostFacts;

    /// What it needs of this host, checked now (`crispd check`).
    fn host_checks(&self) -> Vec<crate::HostCheck>;

    /// Helper processes it keeps on this host (monitors, VMMs), for crisp's metrics.
    fn helper_processes(&self) -> usize;

    /// Brings up the handler's part of a pod (an init for a shared PID namespace, a VM).
    async fn start_sandbox(&self, sandbox: &SandboxSpec) -> Result<StartedSandbox, HandlerError>;

    /// Called once `server` has made the pod's namespaces, files and network (the
    /// namespaces pinned, CNI attached): brings up what runs in them (a gVisor sandbox, a
    /// VM) and returns the state to persist. If it fails, `server` calls `stop_sandbox`
    /// with the state `start_sandbox` returned, which must end whatever this made.
    async fn finish_sandbox(
        &self,
        _sandbox: &SandboxSpec,
        state: &SandboxState,
    ) -> Result<SandboxState, HandlerError> {
        Ok(state.clone())
    }

    /// Ends what `start_sandbox` brought up, whatever state it is in. Idempotent: `server`
    /// calls it for every sandbox it stops, and again after a restart.
    async fn stop_sandbox(
        &self,
        sandbox: &SandboxSpec,
        state: &SandboxState,
    ) -> Result<(), HandlerError>;

    /// After a crispd restart: re-attaches to a sandbox `server` still has as ready, and
    /// says whether it is whole (false: its init or VM is gone, so the pod cannot run
    /// containers any more).
    async fn recover_sandbox(
        &self,
        sandbox: &SandboxSpec,
        state: &SandboxState,
    ) -> Result<bool, HandlerError>;

    /// Resolves when the handler's part of a ready sandbox ends by itself (its VM
    /// stopped), with why, after ending what served it; `None` at once from a handler
    /// whose sandboxes have nothing that can end alone. `server` then marks the pod
    /// NotReady, so kubelet stops it and makes a new one.
    async fn wait_sandbox(&self, _sandbox: &SandboxSpec, _state: &SandboxState) -> Option<String> {
        None
    }

    /// Creates a container (not started). Returns its init's pid.
    async fn create_container(&self, container: &ContainerSpec<'_>) -> Result<u32, HandlerError>;

    /// Starts a created container.
    async fn start_container(&self, container: &ContainerRef<'_>) -> Result<(), HandlerError>;

    /// Sends `signal` to the container's init, or to all its processes.
    async fn kill_container(
        &self,
        container: &ContainerRef<'_>,
        signal: i32,
        all: bool,
    ) -> Result<(), HandlerError>;

    /// Deletes the container at the runtime, with whatever the handler keeps for it on
    /// the host (the `oci` handler: the cgroup directories a runtime left empty).
    async fn delete_container(
        &self,
        container: &ContainerRef<'_>,
        force: bool,
    ) -> Result<(), HandlerError>;

    /// The runtime's view of a container, `None` if it has none.
    async fn container_state(
        &self,
        container: &ContainerRef<'_>,
    ) -> Result<Option<RuntimeState>, HandlerError>;

    /// Ends what this handler left of a sandbox `server` has no record of (a crash between
    /// starting it and saving its record), given its ID and where its PID namespace is
    /// pinned. Called at startup, before crispd serves.
    fn release_unknown_sandbox(&self, id: &str, pid_pin: &Path);

    /// Ends what this handler made of a container `server` has no complete record of (a
    /// crash between asking for the container and saving its record): whatever runs of
    /// it, the runtime's record and the cgroup. Called at startup, before crispd serves;
    /// `container.pid` is 0 and its `cgroup_path` may be empty. `server` removes the
    /// bundle and the rootfs afterwards. By default: a forced delete.
    async fn release_unknown_container(&self, container: &ContainerRef<'_>) {
        let _ = self.delete_container(container, true).await;
    }

    /// The path a new container joins to share this running container's PID namespace
    /// (mode TARGET), `None` if it has no process to name it by.
    fn pid_namespace(&self, container: &ContainerRef<'_>) -> Option<PathBuf>;

    /// At startup, or when a wait lost track: whether the container still runs, how it
    /// ended, or that nobody can tell any more (then nothing of it may be left running).
    async fn recover_container(
        &self,
        container: &ContainerRef<'_>,
    ) -> Result<Recovered, HandlerError>;

    /// Waits until the container's init has exited and returns how.
    async fn wait_container(
        &self,
        container: &ContainerRef<'_>,
    ) -> Result<ExitStatus, HandlerError>;

    /// Runs `process` in the container, collecting its output; killed at `timeout`.
    async fn exec_sync(
        &self,
        container: &ContainerRef<'_>,
        process: &Process,
        timeout: Option<Duration>,
    ) -> Result<ExecOutput, HandlerError>;

    /// Starts `process` in the container with its stdio for the caller to drive: with a
    /// terminal if `process.terminal` is set, else pipes (stdin only if `stdin`).
    async fn exec_streaming(
        &self,
        container: &ContainerRef<'_>,
        process: &Process,
        stdin: bool,
    ) -> Result<ExecSession, HandlerError>;

    /// Connects to a running container's stdio (several attachers may be connected).
    async fn attach(
        &self,
        container: &ContainerRef<'_>,
    ) -> Result<(crate::attach::AttachReader, crate::attach::AttachWriter), HandlerError>;

    /// A byte stream to `port` on the pod's loopback: inside the network namespace
    /// pinned at `netns` (the host's when `None`, a host-network pod), or the guest's.
    async fn port_forward(
        &self,
        sandbox: &SandboxSpec,
        netns: Option<&Path>,
        port: u16,
    ) -> Result<PortStream, HandlerError>;

    /// Applies new resource limits to a running container.
    async fn update_container(
        &self,
        container: &ContainerRef<'_>,
        update: &ResourceUpdate,
    ) -> Result<(), HandlerError>;

    /// Makes the container's log writer reopen its log file.
    async fn reopen_log(&self, container: &ContainerRef<'_>) -> Result<(), HandlerError>;

    /// Resource usage of a running container; with [`crate::StatsDetail`] when `detail`
    /// is set (dearer: it visits every process of the container).
    async fn container_stats(
        &self,
        container: &ContainerRef<'_>,
        detail: bool,
    ) -> Result<ContainerStats, HandlerError>;

    /// What sandbox `sandbox_id` costs the host as a whole, where that is more than its
    /// containers' usage (a VM: QEMU and its helpers, the guest's kernel and page cache);
    /// `None` where the pod's usage is its containers'. The pod's CPU and memory figures
    /// are then these, so kubelet's eviction sees what the node pays.
    async fn sandbox_stats(&self, _sandbox_id: &str) -> Option<ContainerStats> {
        None
    }
}
