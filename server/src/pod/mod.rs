//! Pod sandboxes: their records, the registry of live ones, and persistence.
//!
//! A sandbox is pinned namespaces and files, not a process: the network, IPC and UTS
//! namespaces are bind-mounted under `<state>/pods/<id>/ns/` (see `network::netns`), so
//! RunPodSandbox forks no infra process and starts nothing under a runtime. Containers
//! join the pinned namespaces by path. (A PID namespace shared by the pod needs a living
//! init; that arrives with the containers work, where the first such pod gets one.)
//!
//! Records are JSON files under `<root>/pods/` written atomically; they hold the CNI
//! result, which doubles as the teardown journal: a pod's network is released (CNI DEL
//! with the cached result) before its record forgets it, on stop, remove, or at startup.

mod list;
mod remove;
mod run;
mod stop;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::errors::LifecycleError;
use serde::{Deserialize, Serialize};

pub use list::{list, status};
pub use remove::remove;
pub use run::run;
pub use stop::stop;

/// The on-disk format of sandbox records.
const RECORD_VERSION: u32 = 1;

/// How a pod uses a namespace (the CRI's NamespaceMode, in our own words).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NsMode {
    /// Shared by the pod's containers.
    Pod,
    /// Each container has its own.
    Container,
    /// The host's.
    Node,
    /// Another container's (PID only).
    Target,
}

/// One range of IDs in a pod's user namespace: `size` IDs from `container` are the host's
/// IDs from `host`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdRange {
    /// First ID inside the pod.
    pub container: u32,
    /// First host ID.
    pub host: u32,
    /// How many.
    pub size: u32,
}

/// A pod's own user namespace (mode POD), pinned at `<state_dir>/ns/user`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsernsRecord {
    /// The user ID range (it maps the pod's root).
    pub uid: IdRange,
    /// The group ID range.
    pub gid: IdRange,
}

impl UsernsRecord {
    fn handler_ranges(r: IdRange) -> Vec<runtime_handlers::IdRange> {
        vec![runtime_handlers::IdRange {
            container: r.container,
            host: r.host,
            size: r.size,
        }]
    }
}

/// The network the pod got from CNI, kept until it is released.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkJournal {
    /// The conflist ADD ran with.
    pub network: serde_json::Value,
    /// The chain's final result (DEL's prevResult).
    pub result: serde_json::Value,
    /// Pod IPs, primary first.
    pub ips: Vec<String>,
    /// The CNI_ARGS ADD ran with.
    pub args: Vec<(String, String)>,
    /// The published ports (DEL needs them to remove their rules).
    #[serde(default)]
    pub ports: Vec<network::PortMapping>,
    /// The shaping ADD was given (DEL gets the same runtime config).
    #[serde(default)]
    pub bandwidth: Option<network::Bandwidth>,
    /// The pod CIDRs ADD was given (host-local needs them again on DEL).
    #[serde(default)]
    pub ip_ranges: Vec<String>,
}

/// Everything crisp keeps about one sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxRecord {
    /// Format version.
    pub v: u32,
    /// 64 hex characters.
    pub id: String,
    /// Pod name.
    pub name: String,
    /// Pod UID.
    pub uid: String,
    /// Pod namespace.
    pub namespace: String,
    /// Attempt number.
    pub attempt: u32,
    /// Ready until stopped.
    pub ready: bool,
    /// Creation time, ns since the epoch.
    pub created_at: i64,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
    /// The handler name as requested (empty for the default).
    pub runtime_handler: String,
    /// The handler that runs the pod's containers.
    pub handler: String,
    /// Hostname inside the pod.
    pub hostname: String,
    /// kubelet's log directory for the pod.
    pub log_directory: String,
    /// The cgroup parent kubelet asked for.
    pub cgroup_parent: String,
    /// Network namespace mode.
    pub network_mode: NsMode,
    /// PID namespace mode.
    pub pid_mode: NsMode,
    /// IPC namespace mode.
    pub ipc_mode: NsMode,
    /// The directory of pins and files under the state dir.
    pub state_dir: PathBuf,
    /// The CNI attachment, while the pod has one.
    pub network: Option<NetworkJournal>,
    /// IPs reported after the network is released (kept for status, as containerd does).
    pub ips: Vec<String>,
    /// The host process the handler gave as the holder of the pod's namespaces (the init
    /// of its shared PID namespace or of its user namespace), 0 if none.
    #[serde(default)]
    pub pause_pid: u32,
    /// The handler's own state of the sandbox, until the handler has stopped it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler_state: Option<runtime_handlers::SandboxState>,
    /// The pod's user namespace; `None` runs it in the host's.
    #[serde(default)]
    pub userns: Option<UsernsRecord>,
    /// The cgroup the handler runs the pod's own processes in (a gVisor sandbox, a VMM).
    #[serde(default)]
    pub cgroups_path: String,
    /// The pod's namespaced sysctls (a VM-per-pod handler sets them in the guest).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sysctls: BTreeMap<String, String>,
    /// The pod's resources and overhead as kubelet sent them.
    #[serde(default, skip_serializing_if = "is_default")]
    pub resources: runtime_handlers::PodResources,
    /// NRI plugins were told the pod stopped (once, whether the pod was stopped or
    /// ended by itself first).
    #[serde(default, skip_serializing_if = "is_default")]
    pub nri_stopped: bool,
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

impl SandboxRecord {
    /// The key kubelet's retries share: name, namespace, UID and attempt.
    pub fn name_key(&self) -> String {
        name_key(&self.name, &self.namespace, &self.uid, self.attempt)
    }

    /// The pod as its runtime handler sees it.
    pub fn sandbox_spec(&self) -> runtime_handlers::SandboxSpec {
        runtime_handlers::SandboxSpec {
            id: self.id.clone(),
            state_dir: self.state_dir.clone(),
            share_pid: self.pid_mode == NsMode::Pod,
            host_pid: self.pid_mode == NsMode::Node,
            host_ipc: self.ipc_mode == NsMode::Node,
            pid_pin: network::pin_path(&self.state_dir, network::NamespaceKind::Pid),
            userns: self.userns.map(|u| runtime_handlers::UserNamespace {
                uids: UsernsRecord::handler_ranges(u.uid),
                gids: UsernsRecord::handler_ranges(u.gid),
            }),
            netns: self.netns(),
            hostname: self.hostname.clone(),
            cgroups_path: self.cgroups_path.clone(),
            sysctls: self.sysctls.clone(),
            resources: self.resources,
        }
    }

    /// The handler's state of the sandbox while it has one (a record written before
    /// handlers kept state names only its init's pid).
    pub fn handler_state(&self) -> Option<runtime_handlers::SandboxState> {
        self.handler_state.clone().or_else(|| {
            (self.pause_pid > 0).then(|| runtime_handlers::SandboxState {
                version: 0,
                data: self.pause_pid.into(),
            })
        })
    }

    /// Ends the handler's part of the pod (its PID-namespace init, a VM), whatever it
    /// is. A handler that is no longer configured cannot be asked; that is reported and
    /// the state kept for the next try.
    pub async fn stop_handler_sandbox(
        &mut self,
        handlers: &crate::handlers::Handlers,
    ) -> Result<(), String> {
        let Some(state) = self.handler_state() else {
            return Ok(());
        };
        let runtime = handlers.get(&self.handler).map_err(|e| e.to_string())?;
        runtime
            .stop_sandbox(&self.sandbox_spec(), &state)
            .await
            .map_err(|e| e.to_string())?;
        self.handler_state = None;
        self.pause_pid = 0;
        Ok(())
    }

    /// The pinned network namespace, if the pod has its own.
    pub fn netns(&self) -> Option<PathBuf> {
        (self.network_mode != NsMode::Node)
            .then(|| network::pin_path(&self.state_dir, network::NamespaceKind::Net))
    }
}

/// `name_namespace_uid_attempt`, as containerd and CRI-O reserve names.
pub fn name_key(name: &str, namespace: &str, uid: &str, attempt: u32) -> String {
    format!("{name}_{namespace}_{uid}_{attempt}")
}

impl crate::records::Record for SandboxRecord {
    fn id(&self) -> &str {
        &self.id
    }
    fn version(&self) -> u32 {
        self.v
    }
    const VERSION: u32 = RECORD_VERSION;
}

/// One live sandbox; operations on it take its lock.
pub type Pod = crate::records::Entry<SandboxRecord>;

/// The sandboxes this daemon knows.
pub struct Pods {
    /// The records, with per-name locks: a RunPodSandbox retried while the first is still
    /// running waits for it and returns its sandbox instead of failing.
    records: crate::records::Records<SandboxRecord>,
}

impl Pods {
    /// Loads the records under `<root>/pods` (not yet live: see [`restore`]).
    pub fn load(root: &Path) -> std::io::Result<(Self, Vec<SandboxRecord>)> {
        let (records, found) = crate::records::Records::open(&root.join("pods"))?;
        let pods = Self { records };
        Ok((pods, found))
    }

    /// Adds a record to the live set (startup and RunPodSandbox).
    pub fn insert(&self, record: SandboxRecord) -> Arc<Pod> {
        self.records.insert(record)
    }

    /// The sandbox with this ID, or the only one whose ID starts with it.
    pub fn get(&self, id: &str) -> Option<Arc<Pod>> {
        self.records.get(id)
    }

    /// Every live sandbox.
    pub fn all(&self) -> Vec<Arc<Pod>> {
        self.records.all()
    }

    /// Forgets a sandbox and deletes its record file (off the async threads).
    pub async fn discard(&self, id: &str) -> std::io::Result<()> {
        self.records.discard(id).await
    }

    /// Writes a record durably (sync contexts: startup).
    pub fn save(&self, record: &SandboxRecord) -> std::io::Result<()> {
        self.records.save(record)
    }

    /// Writes a record durably, off the async threads.
    pub async fn persist(&self, record: &SandboxRecord) -> std::io::Result<()> {
        self.records.persist(record).await
    }

    /// The lock for one pod name.
    pub fn name_lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.records.name_lock(key)
    }

    /// Saved copies of the sandboxes `keep` accepts, taking no lock.
    pub fn snapshots_where(
        &self,
        keep: impl Fn(&SandboxRecord) -> bool,
    ) -> Vec<(Arc<Pod>, Arc<SandboxRecord>)> {
        self.records.snapshots_where(keep)
    }
}

/// A new random sandbox or container ID: 64 hex characters.
pub fn new_id() -> String {
    let mut bytes = [0u8; 32];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the buffer.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        // getrandom cannot fail for 32 bytes once the pool is initialised; fall back to
        // time and pid, still unique per daemon.
        let seed = format!("{:?}{}", std::time::SystemTime::now(), std::process::id());
        return storage::Digest::of(seed.as_bytes()).hex().to_owned();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Now, in ns since the epoch.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Runs sync pod work (namespaces, CNI, files) off the async threads.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, LifecycleError> + Send + 'static,
) -> Result<T, LifecycleError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| LifecycleError::internal(format!("pod task failed: {e}")))?
}

/// Where UpdateRuntimeConfig's pod CIDR is kept, so it outlives a restart.
fn pod_cidr_path(config: &conf::Config) -> PathBuf {
    config.root.join("pod-cidr")
}

/// The pod CIDRs kubelet gave (UpdateRuntimeConfig), for CNI's `ipRanges`.
pub fn pod_cidrs(config: &conf::Config) -> Vec<String> {
    std::fs::read_to_string(pod_cidr_path(config))
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
        .collect()
}

/// UpdateRuntimeConfig: records the node's pod CIDR(s), comma-separated as kubelet sends
/// them, after checking each is `address/prefix`. Pods created from now on get addresses
/// from it where the network's plugins take the `ipRanges` capability.
pub fn set_pod_cidr(config: &conf::Config, cidrs: &str) -> Result<(), LifecycleError> {
    for cidr in cidrs.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        let valid = cidr.split_once('/').is_some_and(|(ip, prefix)| {
            match (ip.parse::<std::net::IpAddr>(), prefix.parse::<u8>()) {
                (Ok(std::net::IpAddr::V4(_)), Ok(p)) => p <= 32,
                (Ok(std::net::IpAddr::V6(_)), Ok(p)) => p <= 128,
                _ => false,
            }
        });
        if !valid {
            return Err(LifecycleError::invalid(format!(
                "pod CIDR `{cidr}` is not address/prefix"
            )));
        }
    }
    let path = pod_cidr_path(config);
    let tmp = path.with_extension("tmp");
    std::fs::create_dir_all(&config.root)
        .and_then(|()| std::fs::write(&tmp, cidrs.trim()))
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| LifecycleError::internal(format!("saving the pod CIDR: {e}")))?;
    tracing::info!(pod_cidr = %cidrs, "pod CIDR updated");
    Ok(())
}

/// The CNI attachment journal under the storage root (it must survive a reboot, as the
/// IP allocations it guards do).
pub fn cni_journal(config: &conf::Config) -> network::Journal {
    network::Journal::new(config.root.join("cni-journal"))
}

/// Releases attachments and pod directories of sandboxes crisp has no record of (a crash
/// between CNI ADD and saving the record, or a record lost): CNI DEL from the journal,
/// then the pins, the shm mount and the directory.
fn release_unknown(
    config: &conf::Config,
    handlers: &crate::handlers::Handlers,
    known: &std::collections::HashSet<String>,
) {
    let journal = cni_journal(config);
    let search = network::PluginSearch {
        dirs: &config.cni.plugin_dirs,
    };
    for intent in journal.intents() {
        let id = intent.attachment.container_id.clone();
        if known.contains(&id) {
            continue;
        }
        match network::del(&intent.network, &search, &intent.attachment, None) {
            Ok(()) => {
                tracing::info!(id = %id, "released the network of an unknown sandbox");
                if let Err(e) = journal.end(&id) {
                    tracing::warn!(id = %id, error = %e, "forgetting a released CNI intent");
                }
            }
            Err(e) => {
                tracing::warn!(id = %id, error = %e, "releasing the network of an unknown sandbox failed; will retry")
            }
        }
    }
    let Ok(dirs) = std::fs::read_dir(config.state.join("pods")) else {
        return;
    };
    for dir in dirs.flatten() {
        let id = dir.file_name().to_string_lossy().into_owned();
        if known.contains(&id) {
            continue;
        }
        let state_dir = dir.path();
        let mut failures = Vec::new();
        handlers.release_unknown_sandbox(
            &id,
            &network::pin_path(&state_dir, network::NamespaceKind::Pid),
        );
        remove_pins(&state_dir, &mut failures);
        if failures.is_empty()
            && let Err(e) = std::fs::remove_dir_all(&state_dir)
        {
            failures.push(e.to_string());
        }
        if failures.is_empty() {
            tracing::info!(id = %id, "removed the directory of an unknown sandbox");
        } else {
            tracing::warn!(id = %id, failures = ?failures, "cleaning up an unknown sandbox");
        }
    }
}

/// CNI GC on the current network, naming the attachments crisp holds, for plugins (spec
/// 1.1 and later) that keep state crisp never journaled.
fn collect_garbage(config: &conf::Config, attached: &[(String, String)]) {
    let Ok(network) = crate::host::network_config(config) else {
        return;
    };
    let search = network::PluginSearch {
        dirs: &config.cni.plugin_dirs,
    };
    match network::gc(&network, &search, attached) {
        Ok(true) => {
            tracing::info!(network = %network.name, valid = attached.len(), "CNI garbage collected")
        }
        Ok(false) => {
            tracing::debug!(network = %network.name, version = %network.cni_version, "CNI spec before 1.1: no GC")
        }
        Err(e) => tracing::warn!(error = %e, "CNI GC failed"),
    }
}

/// Releases whatever a record still holds: the CNI attachment (journaled), the pins,
/// the shm mount and the pod directory. Keeps going past failures and reports them all.
/// Returns the record with what was released cleared.
pub fn release(config: &conf::Config, mut record: SandboxRecord) -> (SandboxRecord, Vec<String>) {
    let mut failures = Vec::new();
    if let Some(journal) = record.network.clone() {
        let netns = record.netns().unwrap_or_default();
        let attachment = network::Attachment {
            container_id: record.id.clone(),
            netns,
            ifname: "eth0".to_owned(),
            args: journal.args.clone(),
            port_mappings: journal.ports.clone(),
            bandwidth: journal.bandwidth,
            ip_ranges: journal.ip_ranges.clone(),
        };
        let search = network::PluginSearch {
            dirs: &config.cni.plugin_dirs,
        };
        match network::del(
            &journal.network,
            &search,
            &attachment,
            Some(&journal.result),
        ) {
            Ok(()) => {
                record.network = None;
                if let Err(e) = cni_journal(config).end(&record.id) {
                    failures.push(e.to_string());
                }
            }
            Err(e) => failures.push(e.to_string()),
        }
    }
    if record.network.is_none() {
        remove_pins(&record.state_dir, &mut failures);
    }
    (record, failures)
}

/// Unpins a pod's namespaces and unmounts its /dev/shm, adding failures to `failures`.
fn remove_pins(state_dir: &Path, failures: &mut Vec<String>) {
    for kind in [
        network::NamespaceKind::Net,
        network::NamespaceKind::Ipc,
        network::NamespaceKind::Uts,
        network::NamespaceKind::Pid,
        network::NamespaceKind::User,
    ] {
        if let Err(e) = network::remove_namespace(&network::pin_path(state_dir, kind)) {
            failures.push(e.to_string());
        }
    }
    let shm = state_dir.join("shm");
    if let Err(e) = run::unmount_shm(&shm) {
        failures.push(format!("unmounting {}: {e}", shm.display()));
    }
}

/// Watches a ready sandbox for the end of its handler's part (a VM that stopped by
/// itself): the pod is then NotReady, as containerd and CRI-O report a sandbox whose
/// task exited, so kubelet stops it and makes a new one. A stop that got there first
/// leaves nothing to do.
pub fn watch(daemon: Arc<crate::state::Daemon>, id: String) {
    tokio::spawn(async move {
        let Some(pod) = daemon.pods.get(&id) else {
            return;
        };
        let snapshot = pod.snapshot();
        if !snapshot.ready {
            return;
        }
        let (Some(state), Ok(handler)) = (
            snapshot.handler_state(),
            daemon.handlers.get(&snapshot.handler),
        ) else {
            return;
        };
        let Some(reason) = handler.wait_sandbox(&snapshot.sandbox_spec(), &state).await else {
            return;
        };
        let mut record = pod.record.lock().await;
        if !record.ready || daemon.pods.get(&id).is_none() {
            return;
        }
        tracing::warn!(id = %id, reason = %reason, "the sandbox ended by itself; it is NotReady");
        let mut after = record.clone();
        after.ready = false;
        if let Err(e) = daemon.pods.persist(&after).await {
            tracing::error!(id = %id, error = %e, "cannot persist sandbox record");
        }
        *record = after;
    });
}

/// Loads the sandbox records at startup. A pod whose namespaces are gone (the node
/// rebooted) is NotReady, and any network it still held is released now, so IPs do not
/// leak across reboots.
pub async fn restore(
    config: &conf::Config,
    handlers: &Arc<crate::handlers::Handlers>,
) -> Result<Pods, String> {
    let root = config.root.clone();
    let owned = config.clone();
    let all = Arc::clone(handlers);
    let (pods, records) = tokio::task::spawn_blocking(move || {
        let config = owned;
        let (pods, records) = Pods::load(&root).map_err(|e| format!("cannot load sandboxes: {e}"))?;
        let mut restored = Vec::new();
        for mut record in records {
            let pinned = record.netns().is_none_or(|ns| network::is_pinned(&ns));
            if record.ready && !pinned {
                tracing::warn!(id = %record.id, "sandbox lost its namespaces (reboot?); marking it NotReady");
                record.ready = false;
            }
            if !record.ready && record.network.is_some() {
                let (after, failures) = release(&config, record);
                record = after;
                if failures.is_empty() {
                    tracing::info!(id = %record.id, "released the network of a stopped sandbox");
                } else {
                    tracing::warn!(id = %record.id, failures = ?failures, "network release failed; will retry");
                }
            }
            if let Err(e) = pods.save(&record) {
                tracing::error!(id = %record.id, error = %e, "cannot persist sandbox record");
            }
            restored.push(record);
        }
        let known = restored.iter().map(|r| r.id.clone()).collect();
        release_unknown(&config, &all, &known);
        let attached: Vec<(String, String)> = restored
            .iter()
            .filter(|r| r.network.is_some())
            .map(|r| (r.id.clone(), "eth0".to_owned()))
            .collect();
        collect_garbage(&config, &attached);
        Ok::<_, String>((pods, restored))
    })
    .await
    .map_err(|e| format!("sandbox restore failed: {e}"))??;
    let count = records.len();
    for mut record in records {
        // A ready pod whose handler lost its part (the init of its PID namespace died
        // with crispd away) cannot run containers any more: NotReady, network released.
        if record.ready
            && let Some(state) = record.handler_state()
            && let Ok(handler) = handlers.get(&record.handler)
            && let Ok(false) = handler
                .recover_sandbox(&record.sandbox_spec(), &state)
                .await
        {
            tracing::warn!(id = %record.id, "the sandbox's handler lost its part of it; marking it NotReady");
            record.ready = false;
            let owned = config.clone();
            let (after, failures) = tokio::task::spawn_blocking(move || release(&owned, record))
                .await
                .map_err(|e| format!("sandbox restore failed: {e}"))?;
            record = after;
            if !failures.is_empty() {
                tracing::warn!(id = %record.id, failures = ?failures, "network release failed; will retry");
            }
        }
        if !record.ready && record.handler_state().is_some() {
            match record.stop_handler_sandbox(handlers).await {
                Ok(()) => {
                    if let Err(e) = pods.persist(&record).await {
                        tracing::error!(id = %record.id, error = %e, "cannot persist sandbox record");
                    }
                }
                Err(e) => {
                    tracing::warn!(id = %record.id, error = %e, "cannot end the sandbox's init")
                }
            }
        }
        pods.insert(record);
    }
    if count > 0 {
        tracing::info!(sandboxes = count, "sandboxes restored");
    }
    Ok(pods)
}

#[cfg(test)]
mod tests {
    use super::*;
    use runtime_handlers::fake::FakeHandler;
    use runtime_handlers::{RuntimeHandler, SandboxSpec};

    fn record(
        id: &str,
        state_dir: PathBuf,
        handler_state: runtime_handlers::SandboxState,
    ) -> SandboxRecord {
        SandboxRecord {
            v: RECORD_VERSION,
            id: id.to_owned(),
            name: id.to_owned(),
            uid: format!("uid-{id}"),
            namespace: "default".to_owned(),
            attempt: 0,
            ready: true,
            created_at: now_ns(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            runtime_handler: String::new(),
            handler: "fake".to_owned(),
            hostname: String::new(),
            log_directory: String::new(),
            cgroup_parent: String::new(),
            // Host network: no netns pin to lose, so only the handler can tell.
            network_mode: NsMode::Node,
            pid_mode: NsMode::Container,
            ipc_mode: NsMode::Node,
            state_dir,
            network: None,
            ips: Vec::new(),
            pause_pid: 0,
            handler_state: Some(handler_state),
            userns: None,
            cgroups_path: String::new(),
            sysctls: BTreeMap::new(),
            resources: Default::default(),
            nri_stopped: false,
        }
    }

    #[tokio::test]
    async fn restore_stops_a_sandbox_its_handler_lost_and_keeps_a_whole_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = conf::Config {
            root: dir.path().join("root"),
            state: dir.path().join("state"),
            ..conf::Config::default()
        };
        let fake = Arc::new(FakeHandler::new("fake"));
        let spec = |id: &str| SandboxSpec {
            id: id.to_owned(),
            state_dir: config.state.join("pods").join(id),
            share_pid: false,
            host_pid: false,
            host_ipc: false,
            pid_pin: config.state.join("pods").join(id).join("ns/pid"),
            userns: None,
            netns: None,
            hostname: String::new(),
            cgroups_path: String::new(),
            sysctls: Default::default(),
            resources: Default::default(),
        };
        // "whole" runs at the handler; "gone" lost its part while crispd was away.
        let whole = fake.start_sandbox(&spec("whole")).await.expect("start");
        let gone = fake.start_sandbox(&spec("gone")).await.expect("start");
        fake.stop_sandbox(&spec("gone"), &gone.state)
            .await
            .expect("stop");
        let (pods, _) = Pods::load(&config.root).expect("load");
        for (id, state) in [("whole", whole.state), ("gone", gone.state)] {
            pods.save(&record(id, spec(id).state_dir, state))
                .expect("save");
        }
        drop(pods);
        let handlers = Arc::new(crate::handlers::Handlers::from_handlers(vec![
            Arc::clone(&fake) as Arc<dyn RuntimeHandler>,
        ]));
        let pods = restore(&config, &handlers).await.expect("restore");
        let state = |id: &str| pods.get(id).expect("restored").snapshot();
        assert!(state("whole").ready);
        assert!(state("whole").handler_state.is_some());
        assert!(
            !state("gone").ready,
            "a sandbox its handler lost is NotReady"
        );
        assert!(state("gone").handler_state.is_none(), "and was stopped");
        let stops = fake
            .calls()
            .into_iter()
            .filter(|c| c == "stop_sandbox gone")
            .count();
        assert_eq!(stops, 2, "once before the restart, once by restore");
    }
}
