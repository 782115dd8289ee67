//! Containers: records, the registry of known ones, and their state as the runtime and
//! monitor report it.
//!
//! A container's bundle (config.json, the monitor's exit file) lives in
//! `<state>/containers/<id>/`, its rootfs is mounted at `<bundle>/rootfs`, its writable
//! layer is kept by the snapshotter under the storage root, and its record is a JSON
//! file under `<root>/containers/` written atomically.

mod binds;
mod capabilities;
mod create;
mod exec;
mod lifecycle;
mod list;
mod orphans;
mod seccomp;
pub(crate) mod spec;
mod user;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use create::create;
pub use exec::exec_sync;
pub(crate) use lifecycle::resource_update;
pub use lifecycle::{
    apply_update, remove, remove_all_in_pod, reopen_log, start, stop, stop_all_in_pod,
    update_resources,
};
pub use list::{ListCache, list, list_encoded, status};
pub use orphans::release_unknown;
pub(crate) use spec::json_strings;

const RECORD_VERSION: u32 = 1;

/// A bind mount as requested, kept for ContainerStatus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MountRecord {
    /// Path in the container.
    pub container_path: String,
    /// Path on the host.
    pub host_path: String,
    /// Read-only.
    pub readonly: bool,
    /// CRI propagation value.
    pub propagation: i32,
    /// An image volume: the image as the request named it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// An image volume: the ID of the image mounted (ContainerStatus reports it as the
    /// mount's `image.image_ref`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_ref: Option<String>,
}

/// Everything crisp keeps about one container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// Format version.
    pub v: u32,
    /// 64 hex characters.
    pub id: String,
    /// The sandbox it belongs to.
    pub pod_id: String,
    /// Container name within the pod.
    pub name: String,
    /// Attempt number.
    pub attempt: u32,
    /// The image as requested.
    pub image: String,
    /// The image ID (config digest).
    pub image_id: String,
    /// The image reference ContainerStatus reports (repo digest when known).
    pub image_ref: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
    /// Creation time (ns).
    pub created_at: i64,
    /// Start time (ns), 0 until started.
    pub started_at: i64,
    /// The kubelet log file (absolute), empty if none.
    pub log_path: String,
    /// The handler running it.
    pub handler: String,
    /// The bundle directory.
    pub bundle: PathBuf,
    /// Mounts, for status.
    pub mounts: Vec<MountRecord>,
    /// The signal StopContainer sends first.
    pub stop_signal: i32,
    /// The process template ExecSync starts from (env, user, cwd), as OCI JSON.
    pub process: serde_json::Value,
    /// The image's layer chain (for the rootfs).
    pub chain_ids: Vec<String>,
    /// Uid the process runs as.
    pub uid: u32,
    /// Gid the process runs as.
    pub gid: u32,
    /// Supplemental groups.
    pub groups: Vec<u32>,
    /// The cgroup path given to the runtime (`linux.cgroupsPath`).
    #[serde(default)]
    pub cgroup_path: String,
    /// The init's pid as the handler reported it at create (0 in older records).
    #[serde(default)]
    pub pid: u32,
    /// The container's stdin closes when the first attacher's stdin does.
    #[serde(default)]
    pub stdin_once: bool,
    /// How many image volumes are mounted for it (`<bundle>/volumes/<n>`).
    #[serde(default)]
    pub image_volumes: usize,
    /// How its init ended, once the handler reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<ExitRecord>,
}

/// How a container's init ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// Exit code (128 + signal for a signal death; 255 when lost).
    pub code: i32,
    /// When, ns since the epoch (when crisp found it lost, if lost).
    pub finished_at: i64,
    /// The kernel's OOM killer struck in the container.
    #[serde(default)]
    pub oom_killed: bool,
    /// Set when nobody could tell how it ended (a node restart): why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost: Option<String>,
}

impl ExitRecord {
    /// The exit a handler reported.
    pub fn from_handler(exit: runtime_handlers::ExitStatus) -> Self {
        Self {
            code: exit.code,
            finished_at: exit.finished_at,
            oom_killed: exit.oom_killed,
            lost: None,
        }
    }

    /// What a handler's recovery tells: how it ended, or `None` while it still runs.
    pub fn from_recovered(recovered: runtime_handlers::Recovered) -> Option<Self> {
        match recovered {
            runtime_handlers::Recovered::Running => None,
            runtime_handlers::Recovered::Exited(exit) => Some(Self::from_handler(exit)),
            runtime_handlers::Recovered::Lost { message } => Some(Self::lost(message)),
        }
    }

    /// An end nobody recorded, as containerd reports it (code 255, reason Unknown).
    pub fn lost(message: String) -> Self {
        Self {
            code: 255,
            finished_at: crate::pod::now_ns(),
            oom_killed: false,
            lost: Some(message),
        }
    }

    /// ContainerStatus's reason and message.
    pub fn reason(&self) -> (&'static str, String) {
        match (&self.lost, self.code, self.oom_killed) {
            (Some(message), _, _) => ("Unknown", message.clone()),
            (None, 0, _) => ("Completed", String::new()),
            (None, _, true) => ("OOMKilled", String::new()),
            (None, _, false) => ("Error", String::new()),
        }
    }
}

impl ContainerRecord {
    /// The snapshot ID and mount point of image volume `n`.
    pub fn image_volume(&self, n: usize) -> (String, PathBuf) {
        image_volume_of(&self.id, &self.bundle, n)
    }

    /// Detaches the container's prepared bind mounts, image volumes and rootfs, discards
    /// its writable layers and deletes its bundle. Keeps going past a failure and reports
    /// every one; the bundle is deleted only once nothing is mounted under it.
    pub fn release_filesystems(&self, snapshots: &storage::Snapshotter) -> Result<(), String> {
        release_container_filesystems(&self.id, &self.bundle, self.image_volumes, snapshots)
    }
}

/// [`ContainerRecord::release_filesystems`] for container `id`, given its bundle and how
/// many image volumes it mounts (also for a container that has no record).
pub(crate) fn release_container_filesystems(
    id: &str,
    bundle: &Path,
    image_volumes: usize,
    snapshots: &storage::Snapshotter,
) -> Result<(), String> {
    let mut failures = Vec::new();
    if let Err(e) = binds::release(bundle) {
        failures.push(format!("prepared bind mounts: {e}"));
    }
    for n in 0..image_volumes {
        let (volume, target) = image_volume_of(id, bundle, n);
        if let Err(e) = snapshots.release_rootfs(&volume, &target, true) {
            failures.push(format!("image volume {n}: {e}"));
        }
    }
    if let Err(e) = snapshots.release_rootfs(id, &bundle.join("rootfs"), true) {
        failures.push(format!("rootfs: {e}"));
    }
    if failures.is_empty() {
        match std::fs::remove_dir_all(bundle) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                failures.push(format!("removing {}: {e}", bundle.display()));
            }
            _ => {}
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "releasing the filesystems of {id}: {}",
            failures.join("; ")
        ))
    }
}

/// The snapshot ID and mount point of image volume `n` of container `id`.
fn image_volume_of(id: &str, bundle: &Path, n: usize) -> (String, PathBuf) {
    (
        format!("{id}-vol{n}"),
        bundle.join("volumes").join(n.to_string()),
    )
}

impl ContainerRecord {
    /// Where the rootfs is mounted.
    pub fn rootfs(&self) -> PathBuf {
        self.bundle.join("rootfs")
    }

    /// How handler calls name this container.
    pub fn handle(&self) -> runtime_handlers::ContainerRef<'_> {
        runtime_handlers::ContainerRef {
            id: &self.id,
            sandbox_id: &self.pod_id,
            bundle: &self.bundle,
            pid: self.pid,
            cgroup_path: &self.cgroup_path,
        }
    }
}

/// The lifecycle state, as the record holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Created, not started.
    Created,
    /// Its init runs.
    Running,
    /// Its init exited.
    Exited {
        /// Exit code.
        code: i32,
        /// When (ns).
        finished_at: i64,
    },
}

impl ContainerRecord {
    /// The state: exited once the handler reported the exit; else started or not.
    pub fn state(&self) -> State {
        match &self.exit {
            Some(exit) => State::Exited {
                code: exit.code,
                finished_at: exit.finished_at,
            },
            None if self.started_at > 0 => State::Running,
            None => State::Created,
        }
    }

    /// Records how the container ended (first report wins), saves the record, and
    /// records its STOPPED event. Call with the record's lock held.
    pub async fn set_exit(&mut self, daemon: &crate::state::Daemon, exit: ExitRecord) {
        if self.exit.is_some() {
            return;
        }
        self.exit = Some(exit);
        if let Err(e) = daemon.containers.persist(self).await {
            tracing::error!(id = %self.id, error = %e, "cannot persist the container's exit");
        }
        daemon.events.record(
            cri_proto::v1::ContainerEventType::ContainerStoppedEvent,
            &self.id,
            &self.pod_id,
        );
        crate::nri::container_done(daemon, nri::api::Event::StopContainer, self).await;
    }
}

impl crate::records::Record for ContainerRecord {
    fn id(&self) -> &str {
        &self.id
    }
    fn version(&self) -> u32 {
        self.v
    }
    const VERSION: u32 = RECORD_VERSION;
}

/// One known container; operations take its lock.
pub type Container = crate::records::Entry<ContainerRecord>;

/// The containers this daemon knows.
pub type Containers = crate::records::Records<ContainerRecord>;

/// Loads the container records under `<root>/containers-meta`. The monitors kept the
/// containers going while crispd was away; their exit files tell what happened.
pub fn load(root: &Path) -> std::io::Result<Containers> {
    let (containers, found) = crate::records::Records::open(&root.join("containers-meta"))?;
    for record in found {
        containers.insert(record);
    }
    Ok(containers)
}

/// Waits, in the background, for the container's init to exit and records the exit
/// then (unless a Stop or Remove already did), under the container's lock so its STOPPED
/// event follows its STARTED. A wait that loses track asks the handler what became of it.
pub fn watch(
    runtime: std::sync::Arc<dyn runtime_handlers::RuntimeHandler>,
    container: std::sync::Arc<Container>,
    daemon: std::sync::Arc<crate::state::Daemon>,
) {
    let snapshot = container.snapshot();
    tokio::spawn(async move {
        // A wait that loses track while the container still runs waits again, backing
        // off: nothing else would ever record this container's exit.
        let mut pause = std::time::Duration::from_millis(100);
        let exit = loop {
            let lost_track = match runtime.wait_container(&snapshot.handle()).await {
                Ok(exit) => break ExitRecord::from_handler(exit),
                Err(e) => e,
            };
            // A Stop or Remove got there first (its bundle may be gone already): nothing
            // is left to learn, and nothing to end.
            match daemon.containers.get(&snapshot.id) {
                Some(c) if c.snapshot().exit.is_none() => {}
                _ => return,
            }
            match runtime
                .recover_container(&snapshot.handle())
                .await
                .map(ExitRecord::from_recovered)
            {
                Ok(Some(exit)) => break exit,
                Ok(None) => {
                    tracing::warn!(id = %snapshot.id, error = %lost_track, "lost track of the container's exit; waiting again");
                }
                Err(e) => {
                    tracing::warn!(id = %snapshot.id, error = %e, "cannot learn the container's state; asking again");
                }
            }
            if daemon.containers.get(&snapshot.id).is_none() {
                return; // removed meanwhile
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(std::time::Duration::from_secs(10));
        };
        let mut record = container.record.lock().await;
        if daemon.containers.get(&record.id).is_some() {
            record.set_exit(&daemon, exit).await;
        }
    });
}

/// At startup: asks each handler what became of the containers not known to have exited
/// (a node restart leaves them lost: exited with code 255), records that, and watches
/// those still running. Done before the socket answers, so kubelet never sees a stale
/// Running. The containers are asked all at once: after a node restart each one waits
/// out its handler's grace, which must not add up.
pub async fn recover(daemon: &std::sync::Arc<crate::state::Daemon>) {
    let mut asked = tokio::task::JoinSet::new();
    for container in daemon.containers.all() {
        asked.spawn(recover_one(std::sync::Arc::clone(daemon), container));
    }
    while asked.join_next().await.is_some() {}
}

async fn recover_one(
    daemon: std::sync::Arc<crate::state::Daemon>,
    container: std::sync::Arc<Container>,
) {
    let mut record = container.record.lock().await;
    if record.exit.is_some() {
        daemon.events.already_stopped(&record.id);
        return;
    }
    // A handler that cannot run here cannot be asked: the container may well still
    // run, so nothing is recorded; its calls fail saying why until the handler works.
    let runtime = match daemon.handlers.get(&record.handler) {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::warn!(id = %record.id, error = %e, "cannot recover the container: its handler cannot run");
            return;
        }
    };
    let exit = match runtime
        .recover_container(&record.handle())
        .await
        .map(ExitRecord::from_recovered)
    {
        Ok(Some(exit)) => exit,
        // Still running, or not known (which is not "lost"): watch it, which asks
        // again if it loses track.
        Ok(None) | Err(_) => {
            // A crash between the runtime's start and saving the record leaves a running
            // container recorded as created (StartContainer would then fail forever):
            // the runtime knows better.
            if record.started_at == 0
                && let Ok(Some(state)) = runtime.container_state(&record.handle()).await
                && matches!(state.status.as_str(), "running" | "paused")
            {
                tracing::warn!(id = %record.id, status = %state.status, "the container was started before crispd went away; recording the start");
                record.started_at = crate::pod::now_ns();
                if let Err(e) = daemon.containers.persist(&record).await {
                    tracing::error!(id = %record.id, error = %e, "cannot persist container record");
                }
            }
            drop(record);
            watch(runtime, container, daemon);
            return;
        }
    };
    if let Some(message) = &exit.lost {
        tracing::warn!(id = %record.id, %message, "container lost");
    }
    // It ended while crispd was away: that STOPPED belonged to the daemon that was
    // down, and is not sent again.
    daemon.events.already_stopped(&record.id);
    record.exit = Some(exit);
    if let Err(e) = daemon.containers.persist(&record).await {
        tracing::error!(id = %record.id, error = %e, "cannot persist container record");
    }
}
