//! ContainerStatus and ListContainers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use prost::Message as _;

use cri_proto::v1 as cri;

use super::{ContainerRecord, State};
use crate::errors::LifecycleError;
use crate::records::to_hash_map;
use crate::state::Daemon;

fn cri_state(state: State) -> i32 {
    match state {
        State::Created => cri::ContainerState::ContainerCreated,
        State::Running => cri::ContainerState::ContainerRunning,
        State::Exited { .. } => cri::ContainerState::ContainerExited,
    }
    .into()
}

fn image_spec(record: &ContainerRecord) -> cri::ImageSpec {
    cri::ImageSpec {
        image: record.image.clone(),
        ..Default::default()
    }
}

/// ContainerStatus of `id`; NotFound for an unknown container.
pub async fn status(
    daemon: &Daemon,
    id: &str,
    verbose: bool,
) -> Result<cri::ContainerStatusResponse, LifecycleError> {
    let container = daemon
        .containers
        .get(id)
        .ok_or_else(|| LifecycleError::not_found(format!("container {id} not found")))?;
    let record = container.snapshot();
    let state = record.state();
    let (exit_code, finished_at, (reason, message)) = match &record.exit {
        Some(exit) => (exit.code, exit.finished_at, exit.reason()),
        None => (0, 0, ("", String::new())),
    };
    let mut info = HashMap::new();
    if verbose {
        let json = serde_json::json!({
            "sandboxID": record.pod_id,
            "pid": record.pid,
            "runtimeHandler": record.handler,
            "bundle": record.bundle,
            "rootfs": record.rootfs(),
            "process": record.process,
        });
        info.insert("info".to_owned(), json.to_string());
    }
    Ok(cri::ContainerStatusResponse {
        status: Some(cri::ContainerStatus {
            id: record.id.clone(),
            metadata: Some(cri::ContainerMetadata {
                name: record.name.clone(),
                attempt: record.attempt,
            }),
            state: cri_state(state),
            created_at: record.created_at,
            started_at: record.started_at,
            finished_at,
            exit_code,
            image: Some(image_spec(&record)),
            image_ref: record.image_ref.clone(),
            reason: reason.to_owned(),
            message,
            labels: to_hash_map(&record.labels),
            annotations: to_hash_map(&record.annotations),
            mounts: record
                .mounts
                .iter()
                .map(|m| cri::Mount {
                    container_path: m.container_path.clone(),
                    host_path: m.host_path.clone(),
                    readonly: m.readonly,
                    propagation: m.propagation,
                    image: m.image.as_ref().map(|image| cri::ImageSpec {
                        image: image.clone(),
                        image_ref: m.image_ref.clone().unwrap_or_default(),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            log_path: record.log_path.clone(),
            resources: None,
            image_id: record.image_id.clone(),
            user: Some(cri::ContainerUser {
                linux: Some(cri::LinuxContainerUser {
                    uid: i64::from(record.uid),
                    gid: i64::from(record.gid),
                    supplemental_groups: std::iter::once(record.gid)
                        .chain(record.groups.iter().copied())
                        .map(i64::from)
                        .collect(),
                }),
            }),
            stop_signal: 0,
        }),
        info,
    })
}

/// Whether `record` passes the CRI filter (ID prefix, pod, state, labels).
fn wanted(filter: &cri::ContainerFilter, record: &ContainerRecord) -> bool {
    (filter.id.is_empty() || record.id.starts_with(&filter.id))
        && (filter.pod_sandbox_id.is_empty() || record.pod_id.starts_with(&filter.pod_sandbox_id))
        && filter
            .state
            .as_ref()
            .is_none_or(|s| s.state == cri_state(record.state()))
        && filter
            .label_selector
            .iter()
            .all(|(k, v)| record.labels.get(k) == Some(v))
}

/// The containers `filter` picks, newest first.
fn picked(daemon: &Daemon, filter: Option<cri::ContainerFilter>) -> Vec<Arc<ContainerRecord>> {
    let filter = filter.unwrap_or_default();
    let mut out: Vec<Arc<ContainerRecord>> = daemon
        .containers
        .all()
        .iter()
        .map(|c| c.snapshot())
        .filter(|r| wanted(&filter, r))
        .collect();
    out.sort_by_key(|r| std::cmp::Reverse(r.created_at));
    out
}

/// A container as ListContainers describes it.
fn entry(record: &ContainerRecord) -> cri::Container {
    cri::Container {
        id: record.id.clone(),
        pod_sandbox_id: record.pod_id.clone(),
        metadata: Some(cri::ContainerMetadata {
            name: record.name.clone(),
            attempt: record.attempt,
        }),
        image: Some(image_spec(record)),
        image_ref: record.image_ref.clone(),
        state: cri_state(record.state()),
        created_at: record.created_at,
        labels: to_hash_map(&record.labels),
        annotations: to_hash_map(&record.annotations),
        image_id: record.image_id.clone(),
    }
}

/// ListContainers with the CRI filter (ID prefix, state, pod, labels).
pub async fn list(daemon: &Daemon, filter: Option<cri::ContainerFilter>) -> Vec<cri::Container> {
    picked(daemon, filter).iter().map(|r| entry(r)).collect()
}

/// Each container's ListContainers entry, encoded once per saved state of its record:
/// kubelet relists every second, and between two relists almost nothing changes.
#[derive(Default)]
pub struct ListCache {
    entries: Mutex<HashMap<String, (Arc<ContainerRecord>, Bytes)>>,
}

/// ListContainers as [`list`] answers it, with each entry encoded (from the cache
/// while its record is unchanged).
pub async fn list_encoded(daemon: &Daemon, filter: Option<cri::ContainerFilter>) -> Vec<Bytes> {
    let picked = picked(daemon, filter);
    let mut cache = match daemon.list_cache.entries.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    let out = picked
        .iter()
        .map(|record| match cache.get(&record.id) {
            // The same saved record: the same entry.
            Some((saved, encoded)) if Arc::ptr_eq(saved, record) => encoded.clone(),
            _ => {
                let encoded = Bytes::from(entry(record).encode_to_vec());
                cache.insert(record.id.clone(), (Arc::clone(record), encoded.clone()));
                encoded
            }
        })
        .collect();
    // Removed containers leave the cache once it holds more than there are.
    if cache.len() > daemon.containers.len() {
        cache.retain(|id, _| daemon.containers.get(id).is_some());
    }
    out
}
