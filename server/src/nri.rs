//! The seam between the lifecycle and NRI plugins (the `nri` crate): pods and containers
//! as NRI describes them, the events the lifecycle sends, and what plugins may ask of
//! crisp (a snapshot of everything, resource updates, evictions).
//!
//! Every function here does nothing when NRI is off or no plugin is subscribed to the
//! event. Events that report what already happened (Post*, Stop*, Remove*) log a
//! plugin's error; events that precede a change (RunPodSandbox, CreateContainer,
//! StartContainer, UpdateContainer) fail the CRI call with it.

use std::sync::{Arc, Weak};

use nri::api::{self, Event};
use serde_json::Value;

use crate::container::{ContainerRecord, State, json_strings as strings};
use crate::errors::LifecycleError;
use crate::pod::SandboxRecord;
use crate::state::Daemon;

/// Starts NRI as configured: pre-installed plugins, then the socket. A socket that
/// cannot be served is logged; crispd serves CRI without it.
pub async fn start(daemon: &Arc<Daemon>) {
    let config = daemon.config();
    let settings = &config.nri;
    if !settings.enable {
        tracing::info!("NRI is off ([nri] enable = false)");
        return;
    }
    let nri = nri::Nri::new(
        nri::Config {
            socket_path: (!settings.disable_connections).then(|| settings.socket_path.clone()),
            plugin_path: settings.plugin_path.clone(),
            plugin_config_path: settings.plugin_config_path.clone(),
            registration_timeout: settings.registration_timeout,
            request_timeout: settings.request_timeout,
            runtime_name: "crisp".to_owned(),
            runtime_version: env!("CARGO_PKG_VERSION").to_owned(),
        },
        Arc::new(Host {
            daemon: Arc::downgrade(daemon),
        }),
    );
    if daemon.nri.set(Arc::clone(&nri)).is_err() {
        return;
    }
    if let Err(e) = nri.start().await {
        tracing::error!(error = %e, "NRI: external plugins cannot connect");
    }
}

/// Ends the plugins' connections and removes the socket crispd bound (crispd is
/// stopping).
pub async fn stop(daemon: &Daemon) {
    if let Some(nri) = daemon.nri.get() {
        nri.shutdown().await;
    }
}

/// Held across a call that adds a pod or a container: see [`nri::Nri::block_sync`].
pub async fn block_sync(daemon: &Daemon) -> Option<tokio::sync::OwnedRwLockReadGuard<()>> {
    match daemon.nri.get() {
        Some(nri) => Some(nri.block_sync().await),
        None => None,
    }
}

/// The plugins subscribed to `event`, if any.
async fn wanted(daemon: &Daemon, event: Event) -> Option<&Arc<nri::Nri>> {
    let nri = daemon.nri.get()?;
    nri.wants(event).await.then_some(nri)
}

impl From<nri::EventError> for LifecycleError {
    fn from(e: nri::EventError) -> Self {
        LifecycleError::Nri(e)
    }
}

fn logged(result: Result<(), nri::EventError>, what: &str, id: &str) {
    if let Err(e) = result {
        tracing::warn!(id, error = %e, "NRI {what}");
    }
}

/// The pod as NRI describes it.
pub fn pod(record: &SandboxRecord) -> api::PodSandbox {
    let map = |m: &std::collections::BTreeMap<String, String>| {
        m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    };
    let own = |mode: crate::pod::NsMode| mode != crate::pod::NsMode::Node;
    let namespaces = [
        (
            "network",
            network::NamespaceKind::Net,
            own(record.network_mode),
        ),
        ("ipc", network::NamespaceKind::Ipc, own(record.ipc_mode)),
        ("uts", network::NamespaceKind::Uts, own(record.network_mode)),
    ]
    .into_iter()
    .filter(|(_, _, own)| *own)
    .map(|(kind, ns, _)| api::LinuxNamespace {
        r#type: kind.to_owned(),
        path: network::pin_path(&record.state_dir, ns)
            .display()
            .to_string(),
    })
    .collect();
    api::PodSandbox {
        id: record.id.clone(),
        name: record.name.clone(),
        uid: record.uid.clone(),
        namespace: record.namespace.clone(),
        labels: map(&record.labels),
        annotations: map(&record.annotations),
        runtime_handler: record.runtime_handler.clone(),
        linux: Some(api::LinuxPodSandbox {
            cgroup_parent: record.cgroup_parent.clone(),
            cgroups_path: record.cgroups_path.clone(),
            namespaces,
            ..Default::default()
        }),
        pid: record.pause_pid,
        ips: record.ips.clone(),
    }
}

/// The container as NRI describes it, from its record.
pub fn container(record: &ContainerRecord) -> api::Container {
    let map = |m: &std::collections::BTreeMap<String, String>| {
        m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    };
    let (state, finished_at, exit_code, reason, message) = match (record.state(), &record.exit) {
        (State::Exited { .. }, Some(exit)) => {
            let (reason, message) = exit.reason();
            (
                api::ContainerState::ContainerStopped,
                exit.finished_at,
                exit.code,
                reason.to_owned(),
                message,
            )
        }
        (State::Running, _) => (
            api::ContainerState::ContainerRunning,
            0,
            0,
            String::new(),
            String::new(),
        ),
        _ => (
            api::ContainerState::ContainerCreated,
            0,
            0,
            String::new(),
            String::new(),
        ),
    };
    api::Container {
        id: record.id.clone(),
        pod_sandbox_id: record.pod_id.clone(),
        name: record.name.clone(),
        state: state as i32,
        labels: map(&record.labels),
        annotations: map(&record.annotations),
        args: strings(&record.process["args"]),
        env: strings(&record.process["env"]),
        mounts: record
            .mounts
            .iter()
            .map(|m| api::Mount {
                destination: m.container_path.clone(),
                r#type: "bind".into(),
                source: m.host_path.clone(),
                options: vec!["rbind".into(), if m.readonly { "ro" } else { "rw" }.into()],
            })
            .collect(),
        linux: Some(api::LinuxContainer {
            cgroups_path: record.cgroup_path.clone(),
            ..Default::default()
        }),
        pid: record.pid,
        created_at: record.created_at,
        started_at: record.started_at,
        finished_at,
        exit_code,
        status_reason: reason,
        status_message: message,
        user: Some(api::User {
            uid: record.uid,
            gid: record.gid,
            additional_gids: record.groups.clone(),
        }),
        image: Some(api::Image {
            name: record.image.clone(),
            digest: record.image_ref.clone(),
            config_digest: record.image_id.clone(),
        }),
        ..Default::default()
    }
}

/// The container about to be created, from its record and OCI spec: what plugins see
/// and adjust.
fn container_from_spec(record: &ContainerRecord, spec: &Value) -> api::Container {
    let mut c = container(record);
    c.args = strings(&spec["process"]["args"]);
    c.env = strings(&spec["process"]["env"]);
    c.mounts = spec["mounts"]
        .as_array()
        .map(|mounts| {
            mounts
                .iter()
                .map(|m| api::Mount {
                    destination: m["destination"].as_str().unwrap_or_default().to_owned(),
                    r#type: m["type"].as_str().unwrap_or_default().to_owned(),
                    source: m["source"].as_str().unwrap_or_default().to_owned(),
                    options: strings(&m["options"]),
                })
                .collect()
        })
        .unwrap_or_default();
    c.annotations = spec["annotations"]
        .as_object()
        .map(|a| {
            a.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .chain(record.annotations.clone())
                .collect()
        })
        .unwrap_or_else(|| c.annotations.clone());
    let linux = &spec["linux"];
    let resources = &linux["resources"];
    let opt_i64 = |v: &Value| v.as_i64().map(|value| api::OptionalInt64 { value });
    c.linux = Some(api::LinuxContainer {
        namespaces: linux["namespaces"]
            .as_array()
            .map(|n| {
                n.iter()
                    .map(|ns| api::LinuxNamespace {
                        r#type: ns["type"].as_str().unwrap_or_default().to_owned(),
                        path: ns["path"].as_str().unwrap_or_default().to_owned(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        resources: Some(api::LinuxResources {
            memory: Some(api::LinuxMemory {
                limit: opt_i64(&resources["memory"]["limit"]),
                swap: opt_i64(&resources["memory"]["swap"]),
                ..Default::default()
            }),
            cpu: Some(api::LinuxCpu {
                shares: resources["cpu"]["shares"]
                    .as_u64()
                    .map(|value| api::OptionalUInt64 { value }),
                quota: opt_i64(&resources["cpu"]["quota"]),
                period: resources["cpu"]["period"]
                    .as_u64()
                    .map(|value| api::OptionalUInt64 { value }),
                cpus: resources["cpu"]["cpus"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                mems: resources["cpu"]["mems"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        oom_score_adj: spec["process"]["oomScoreAdj"]
            .as_i64()
            .map(|value| api::OptionalInt { value }),
        cgroups_path: linux["cgroupsPath"].as_str().unwrap_or_default().to_owned(),
        ..Default::default()
    });
    c
}

/// RunPodSandbox's event; an error refuses the pod.
pub async fn run_pod(daemon: &Daemon, record: &SandboxRecord) -> Result<(), LifecycleError> {
    let Some(nri) = wanted(daemon, Event::RunPodSandbox).await else {
        return Ok(());
    };
    Ok(nri.run_pod_sandbox(&pod(record)).await?)
}

/// UpdatePodSandboxResources's events: UpdatePodSandbox (an error refuses the update),
/// then PostUpdatePodSandbox.
pub async fn update_pod(
    daemon: &Daemon,
    record: &SandboxRecord,
    overhead: Option<&cri_proto::v1::LinuxContainerResources>,
    resources: Option<&cri_proto::v1::LinuxContainerResources>,
) -> Result<(), LifecycleError> {
    let Some(nri) = daemon.nri.get() else {
        return Ok(());
    };
    let pod = pod(record);
    if nri.wants(Event::UpdatePodSandbox).await {
        nri.update_pod_sandbox(
            &pod,
            overhead.map(cri_resources),
            resources.map(cri_resources),
        )
        .await?;
    }
    if nri.wants(Event::PostUpdatePodSandbox).await {
        logged(
            nri.post_update_pod_sandbox(&pod).await,
            "PostUpdatePodSandbox",
            &record.id,
        );
    }
    Ok(())
}

/// CRI resources as NRI writes them.
fn cri_resources(r: &cri_proto::v1::LinuxContainerResources) -> api::LinuxResources {
    let mut resources = to_nri(&crate::container::resource_update(r));
    resources.hugepage_limits = r
        .hugepage_limits
        .iter()
        .map(|h| api::HugepageLimit {
            page_size: h.page_size.clone(),
            limit: h.limit,
        })
        .collect();
    resources.unified = r.unified.clone().into_iter().collect();
    resources
}

/// A pod that a plugin refused, or that is being stopped or removed: its events.
pub async fn pod_stopped(daemon: &Daemon, record: &SandboxRecord) {
    if let Some(nri) = wanted(daemon, Event::StopPodSandbox).await {
        logged(
            nri.stop_pod_sandbox(&pod(record)).await,
            "StopPodSandbox",
            &record.id,
        );
    }
}

/// RemovePodSandbox's event.
pub async fn pod_removed(daemon: &Daemon, record: &SandboxRecord) {
    if let Some(nri) = wanted(daemon, Event::RemovePodSandbox).await {
        logged(
            nri.remove_pod_sandbox(&pod(record)).await,
            "RemovePodSandbox",
            &record.id,
        );
    }
}

/// CreateContainer's event: plugins adjust `spec` (applied here); an error refuses the
/// container. `min_oom_score_adj` is the lowest OOM score crispd may give.
pub async fn create_container(
    daemon: &Daemon,
    pod_record: &SandboxRecord,
    record: &ContainerRecord,
    spec: &mut Value,
    min_oom_score_adj: i64,
) -> Result<bool, LifecycleError> {
    let Some(nri) = wanted(daemon, Event::CreateContainer).await else {
        return Ok(false);
    };
    let container = container_from_spec(record, spec);
    let Some(adjust) = nri.create_container(&pod(pod_record), &container).await? else {
        return Ok(false);
    };
    nri::oci::apply(spec, &adjust)?;
    // As for the request's own: lower than crispd's needs CAP_SYS_RESOURCE.
    if let Some(oom) = spec["process"]["oomScoreAdj"].as_i64()
        && oom < min_oom_score_adj
    {
        spec["process"]["oomScoreAdj"] = min_oom_score_adj.into();
    }
    Ok(true)
}

fn pod_of(daemon: &Daemon, pod_id: &str) -> Option<api::PodSandbox> {
    daemon.pods.get(pod_id).map(|p| pod(&p.snapshot()))
}

/// An event about a container that already happened (PostCreate, PostStart,
/// PostUpdate, Stop, Remove): a plugin's error is logged.
pub async fn container_done(daemon: &Daemon, event: Event, record: &ContainerRecord) {
    let Some(nri) = wanted(daemon, event).await else {
        return;
    };
    let Some(pod) = pod_of(daemon, &record.pod_id) else {
        return;
    };
    let c = container(record);
    let result = match event {
        Event::StopContainer => nri.stop_container(&pod, &c).await,
        _ => nri.container_notice(event, &pod, &c).await,
    };
    logged(result, event.as_str_name(), &record.id);
}

/// A container whose creation failed after plugins agreed to it: its Stop and Remove
/// events, so that plugins forget it.
pub async fn container_undone(
    daemon: &Daemon,
    pod_record: &SandboxRecord,
    record: &ContainerRecord,
) {
    let Some(nri) = daemon.nri.get() else { return };
    let (pod, c) = (pod(pod_record), container(record));
    if nri.wants(Event::StopContainer).await {
        logged(
            nri.stop_container(&pod, &c).await,
            "StopContainer",
            &record.id,
        );
    }
    if nri.wants(Event::RemoveContainer).await {
        logged(
            nri.container_notice(Event::RemoveContainer, &pod, &c).await,
            "RemoveContainer",
            &record.id,
        );
    }
}

/// StartContainer's event; an error keeps the container from starting.
pub async fn start_container(
    daemon: &Daemon,
    record: &ContainerRecord,
) -> Result<(), LifecycleError> {
    let Some(nri) = wanted(daemon, Event::StartContainer).await else {
        return Ok(());
    };
    let Some(pod) = pod_of(daemon, &record.pod_id) else {
        return Ok(());
    };
    Ok(nri
        .container_notice(Event::StartContainer, &pod, &container(record))
        .await?)
}

/// UpdateContainer's event: the update to apply (plugins may change it); an error
/// refuses the update.
pub async fn update_container(
    daemon: &Daemon,
    record: &ContainerRecord,
    update: runtime_handlers::ResourceUpdate,
) -> Result<runtime_handlers::ResourceUpdate, LifecycleError> {
    let Some(nri) = wanted(daemon, Event::UpdateContainer).await else {
        return Ok(update);
    };
    let Some(pod) = pod_of(daemon, &record.pod_id) else {
        return Ok(update);
    };
    let resources = to_nri(&update);
    Ok(
        match nri
            .update_container(&pod, &container(record), &resources)
            .await?
        {
            Some(changed) => from_nri(&changed),
            None => update,
        },
    )
}

/// A resource update as NRI writes it.
fn to_nri(u: &runtime_handlers::ResourceUpdate) -> api::LinuxResources {
    api::LinuxResources {
        memory: Some(api::LinuxMemory {
            limit: u.memory.map(|value| api::OptionalInt64 { value }),
            swap: u.memory_swap.map(|value| api::OptionalInt64 { value }),
            ..Default::default()
        }),
        cpu: Some(api::LinuxCpu {
            shares: u.cpu_shares.map(|value| api::OptionalUInt64 { value }),
            quota: u.cpu_quota.map(|value| api::OptionalInt64 { value }),
            period: u.cpu_period.map(|value| api::OptionalUInt64 { value }),
            cpus: u.cpuset_cpus.clone().unwrap_or_default(),
            mems: u.cpuset_mems.clone().unwrap_or_default(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// An NRI resource update as crisp's handlers take it (what they cannot change is left
/// out).
fn from_nri(r: &api::LinuxResources) -> runtime_handlers::ResourceUpdate {
    let memory = r.memory.unwrap_or_default();
    let cpu = r.cpu.clone().unwrap_or_default();
    runtime_handlers::ResourceUpdate {
        cpu_shares: cpu.shares.map(|v| v.value),
        cpu_quota: cpu.quota.map(|v| v.value),
        cpu_period: cpu.period.map(|v| v.value),
        cpuset_cpus: Some(cpu.cpus).filter(|s| !s.is_empty()),
        cpuset_mems: Some(cpu.mems).filter(|s| !s.is_empty()),
        memory: memory.limit.map(|v| v.value),
        memory_swap: memory.swap.map(|v| v.value),
    }
}

/// What plugins may ask of crisp.
struct Host {
    daemon: Weak<Daemon>,
}

impl nri::Host for Host {
    fn snapshot(
        &self,
    ) -> nri::adaptation::BoxFuture<'_, (Vec<api::PodSandbox>, Vec<api::Container>)> {
        Box::pin(async move {
            let Some(daemon) = self.daemon.upgrade() else {
                return (Vec::new(), Vec::new());
            };
            let pods = daemon
                .pods
                .all()
                .iter()
                .map(|p| pod(&p.snapshot()))
                .collect();
            let containers = daemon
                .containers
                .all()
                .iter()
                .map(|c| container(&c.snapshot()))
                .collect();
            (pods, containers)
        })
    }

    fn update(
        &self,
        updates: Vec<api::ContainerUpdate>,
    ) -> nri::adaptation::BoxFuture<'_, Vec<api::ContainerUpdate>> {
        Box::pin(async move {
            let Some(daemon) = self.daemon.upgrade() else {
                return updates;
            };
            let mut failed = Vec::new();
            for update in updates {
                let resources = update
                    .linux
                    .as_ref()
                    .and_then(|l| l.resources.as_ref())
                    .map(from_nri);
                let Some(resources) = resources else { continue };
                if let Err(e) =
                    crate::container::apply_update(&daemon, &update.container_id, resources).await
                {
                    tracing::warn!(id = %update.container_id, error = %e, "an update an NRI plugin asked for failed");
                    if !update.ignore_failure {
                        failed.push(update);
                    }
                }
            }
            failed
        })
    }

    fn evict(&self, evictions: Vec<api::ContainerEviction>) -> nri::adaptation::BoxFuture<'_, ()> {
        Box::pin(async move {
            let Some(daemon) = self.daemon.upgrade() else {
                return;
            };
            for e in evictions {
                tracing::warn!(id = %e.container_id, reason = %e.reason, "an NRI plugin evicts the container");
                if let Err(err) = crate::container::stop(&daemon, &e.container_id, 0).await {
                    tracing::error!(id = %e.container_id, error = %err, "evicting the container");
                }
            }
        })
    }
}
