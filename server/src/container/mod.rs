//! Containers: records, the registry of known ones, and their state as the runtime and
//! monitor report it.
//!
//! A container's bundle (config.json, the monitor's exit file) lives in
//! `<state>/containers/<id>/`, its rootfs is mounted at `<bundle>/rootfs`, its writable
//! layer is kept by the snapshotter under the storage root, and its record is a JSON
//! file under `<root>/containers/` written atomically.

mod binds;
mod create;
mod exec;
mod lifecycle;
mod list;
mod seccomp;
mod spec;
mod user;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use create::create;
pub use exec::exec_sync;
pub use lifecycle::{
    remove, remove_all_in_pod, reopen_log, start, stop, stop_all_in_pod, update_resources,
};
pub use list::{list, status};

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
}

impl ContainerRecord {
    /// The snapshot ID and mount point of image volume `n`.
    pub fn image_volume(&self, n: usize) -> (String, PathBuf) {
        (
            format!("{}-vol{n}", self.id),
            self.bundle.join("volumes").join(n.to_string()),
        )
    }

    /// Detaches the container's prepared bind mounts, image volumes and rootfs, discards
    /// its writable layers and deletes its bundle. Keeps going past a failure and reports
    /// every one; the bundle is deleted only once nothing is mounted under it.
    pub fn release_filesystems(&self, snapshots: &storage::Snapshotter) -> Result<(), String> {
        let mut failures = Vec::new();
        if let Err(e) = binds::release(&self.bundle) {
            failures.push(format!("prepared bind mounts: {e}"));
        }
        for n in 0..self.image_volumes {
            let (id, target) = self.image_volume(n);
            if let Err(e) = snapshots.release_rootfs(&id, &target, true) {
                failures.push(format!("image volume {n}: {e}"));
            }
        }
        if let Err(e) = snapshots.release_rootfs(&self.id, &self.rootfs(), true) {
            failures.push(format!("rootfs: {e}"));
        }
        if failures.is_empty() {
            match std::fs::remove_dir_all(&self.bundle) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    failures.push(format!("removing {}: {e}", self.bundle.display()));
                }
                _ => {}
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "releasing the filesystems of {}: {}",
                self.id,
                failures.join("; ")
            ))
        }
    }
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
            bundle: &self.bundle,
            pid: self.pid,
        }
    }
}

/// The lifecycle state, derived from what the runtime and monitor left.
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
    /// The state now: the monitor's exit file wins; else started or not.
    pub fn state(&self) -> State {
        match runtime_handlers::exit_status(&self.bundle) {
            Some(exit) => State::Exited {
                code: exit.code,
                finished_at: exit.finished_at,
            },
            None if self.started_at > 0 => State::Running,
            None => State::Created,
        }
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

/// Waits, in the background, for the container's init to exit and records its STOPPED
/// event then (unless a Stop or Remove already did), under the container's lock so the
/// event follows its STARTED.
pub fn watch(
    runtime: Box<dyn runtime_handlers::RuntimeHandler>,
    container: std::sync::Arc<Container>,
    events: std::sync::Arc<crate::events::Events>,
) {
    let snapshot = container.snapshot();
    events.watching(&snapshot.id);
    tokio::spawn(async move {
        if let Err(e) = runtime.wait_container(&snapshot.handle()).await {
            tracing::warn!(id = %snapshot.id, error = %e, "lost track of the container's exit");
            events.unwatched(&snapshot.id);
            return;
        }
        let record = container.record.lock().await;
        if matches!(record.state(), State::Exited { .. }) {
            events.record(
                cri_proto::v1::ContainerEventType::ContainerStoppedEvent,
                &record.id,
                &record.pod_id,
            );
        }
    });
}

/// At startup: containers that exited while crispd was down are noted as stopped; the
/// others are watched.
pub fn watch_restored(daemon: &crate::state::Daemon) {
    let config = daemon.config();
    for container in daemon.containers.all() {
        let snapshot = container.snapshot();
        if matches!(snapshot.state(), State::Exited { .. }) {
            daemon.events.already_stopped(&snapshot.id);
            continue;
        }
        match runtime_for(&config, &snapshot.handler) {
            Ok(runtime) => watch(runtime, container, std::sync::Arc::clone(&daemon.events)),
            Err(e) => {
                tracing::warn!(id = %snapshot.id, error = %e.message(), "cannot watch the container")
            }
        }
    }
}

/// The runtime handler of that name, built from configuration.
pub fn runtime_for(
    config: &conf::Config,
    handler: &str,
) -> Result<Box<dyn runtime_handlers::RuntimeHandler>, tonic::Status> {
    let h = config.runtimes.get(handler).ok_or_else(|| {
        tonic::Status::failed_precondition(format!(
            "runtime handler `{handler}` is no longer configured"
        ))
    })?;
    if h.kind != conf::HandlerType::Oci {
        return Err(tonic::Status::unimplemented(format!(
            "runtime handler `{handler}` is of type microvm, which this crisp cannot run yet"
        )));
    }
    let binary =
        crate::host::runtime_binary(config, handler).map_err(tonic::Status::failed_precondition)?;
    Ok(Box::new(runtime_handlers::OciRuntime {
        name: handler.to_owned(),
        binary,
        root: config.runtime_root(handler),
        runtime_args: h.runtime_args.clone(),
        monitor: monitor_binary(),
        enter: helper_binary("crisp-enter"),
        runtime_exec: h.runtime_exec,
    }))
}

/// The monitor: beside crispd, else on PATH.
pub(crate) fn monitor_binary() -> PathBuf {
    helper_binary("crisp-monitor")
}

/// One of crisp's helper executables: beside crispd, else on PATH.
fn helper_binary(name: &str) -> PathBuf {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(name)))
        .filter(|p| p.is_file());
    beside
        .or_else(|| runtime_handlers::resolve_binary(Path::new(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}
