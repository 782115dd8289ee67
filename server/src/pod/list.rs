//! PodSandboxStatus and ListPodSandbox.

use std::collections::HashMap;

use cri_proto::v1 as cri;

use super::{NsMode, SandboxRecord};
use crate::errors::LifecycleError;
use crate::records::to_hash_map;
use crate::state::Daemon;

fn cri_mode(mode: NsMode) -> i32 {
    match mode {
        NsMode::Pod => cri::NamespaceMode::Pod,
        NsMode::Container => cri::NamespaceMode::Container,
        NsMode::Node => cri::NamespaceMode::Node,
        NsMode::Target => cri::NamespaceMode::Target,
    }
    .into()
}

fn state(record: &SandboxRecord) -> i32 {
    if record.ready {
        cri::PodSandboxState::SandboxReady.into()
    } else {
        cri::PodSandboxState::SandboxNotready.into()
    }
}

fn metadata(record: &SandboxRecord) -> cri::PodSandboxMetadata {
    cri::PodSandboxMetadata {
        name: record.name.clone(),
        uid: record.uid.clone(),
        namespace: record.namespace.clone(),
        attempt: record.attempt,
    }
}

/// PodSandboxStatus of `id`; NotFound for an unknown sandbox.
pub async fn status(
    daemon: &Daemon,
    id: &str,
    verbose: bool,
) -> Result<cri::PodSandboxStatusResponse, LifecycleError> {
    let pod = daemon
        .pods
        .get(id)
        .ok_or_else(|| LifecycleError::not_found(format!("pod sandbox {id} not found")))?;
    let record = pod.snapshot();
    let network = (record.network_mode != NsMode::Node).then(|| cri::PodSandboxNetworkStatus {
        ip: record.ips.first().cloned().unwrap_or_default(),
        additional_ips: record
            .ips
            .iter()
            .skip(1)
            .map(|ip| cri::PodIp { ip: ip.clone() })
            .collect(),
    });
    let mut info = HashMap::new();
    if verbose {
        let json = serde_json::json!({
            "pid": record.pause_pid,
            "runtimeHandler": record.handler,
            "stateDir": record.state_dir,
            "netns": record.netns(),
            "cgroupParent": record.cgroup_parent,
            "cniResult": record.network.as_ref().map(|n| &n.result),
            "hostname": record.hostname,
        });
        info.insert("info".to_owned(), json.to_string());
    }
    Ok(cri::PodSandboxStatusResponse {
        status: Some(cri::PodSandboxStatus {
            id: record.id.clone(),
            metadata: Some(metadata(&record)),
            state: state(&record),
            created_at: record.created_at,
            network,
            linux: Some(cri::LinuxPodSandboxStatus {
                namespaces: Some(cri::Namespace {
                    options: Some(cri::NamespaceOption {
                        network: cri_mode(record.network_mode),
                        pid: cri_mode(record.pid_mode),
                        ipc: cri_mode(record.ipc_mode),
                        userns_options: Some(userns_options(record.userns)),
                        ..Default::default()
                    }),
                }),
            }),
            labels: to_hash_map(&record.labels),
            annotations: to_hash_map(&record.annotations),
            runtime_handler: record.runtime_handler.clone(),
        }),
        info,
        containers_statuses: Vec::new(),
        timestamp: super::now_ns(),
    })
}

/// ListPodSandbox with the CRI filter (ID prefix, state, labels).
pub async fn list(daemon: &Daemon, filter: Option<cri::PodSandboxFilter>) -> Vec<cri::PodSandbox> {
    let filter = filter.unwrap_or_default();
    let mut out = Vec::new();
    for pod in daemon.pods.all() {
        let record = pod.snapshot();
        if !filter.id.is_empty() && !record.id.starts_with(&filter.id) {
            continue;
        }
        if let Some(wanted) = &filter.state
            && wanted.state != state(&record)
        {
            continue;
        }
        if !filter
            .label_selector
            .iter()
            .all(|(k, v)| record.labels.get(k) == Some(v))
        {
            continue;
        }
        out.push(cri::PodSandbox {
            id: record.id.clone(),
            metadata: Some(metadata(&record)),
            state: state(&record),
            created_at: record.created_at,
            labels: to_hash_map(&record.labels),
            annotations: to_hash_map(&record.annotations),
            runtime_handler: record.runtime_handler.clone(),
        });
    }
    out.sort_by_key(|p| std::cmp::Reverse(p.created_at));
    out
}

/// The pod's user namespace as the CRI spells it.
fn userns_options(userns: Option<super::UsernsRecord>) -> cri::UserNamespace {
    let map = |r: super::IdRange| cri::IdMapping {
        container_id: r.container,
        host_id: r.host,
        length: r.size,
    };
    match userns {
        Some(u) => cri::UserNamespace {
            mode: cri::NamespaceMode::Pod.into(),
            uids: vec![map(u.uid)],
            gids: vec![map(u.gid)],
        },
        None => cri::UserNamespace {
            mode: cri::NamespaceMode::Node.into(),
            ..Default::default()
        },
    }
}
