//! CreateContainer: rootfs, identity, OCI spec, and the container created under its
//! monitor; everything undone on failure.

use std::sync::Arc;

use cri_proto::v1 as cri;

use super::spec::{self, ImageDefaults, SpecInput};
use super::{ContainerRecord, MountRecord, RECORD_VERSION, State, binds, user};
use crate::errors::LifecycleError;
use crate::pod::{blocking, new_id, now_ns};
use crate::state::Daemon;

/// Creates a container in a pod and returns its ID.
pub async fn create(
    daemon: &Arc<Daemon>,
    request: cri::CreateContainerRequest,
) -> Result<String, LifecycleError> {
    let mut steps = daemon.metrics.steps("create_container");
    let config = daemon.config();
    let container = request
        .config
        .ok_or_else(|| LifecycleError::invalid("CreateContainer needs a config"))?;
    let meta = container
        .metadata
        .clone()
        .filter(|m| !m.name.is_empty())
        .ok_or_else(|| LifecycleError::invalid("config.metadata.name must not be empty"))?;
    crate::limits::length("config.metadata.name", &meta.name, crate::limits::MAX_NAME)?;
    crate::limits::argv("config.command", &container.command)?;
    crate::limits::argv("config.args", &container.args)?;
    for (n, m) in container.mounts.iter().enumerate() {
        crate::limits::mount_target(
            &format!("config.mounts[{n}].container_path"),
            &m.container_path,
        )?;
    }
    let pod = daemon.pods.get(&request.pod_sandbox_id).ok_or_else(|| {
        LifecycleError::not_found(format!("pod sandbox {} not found", request.pod_sandbox_id))
    })?;
    let pod = pod.record.lock().await.clone();
    if !pod.ready {
        return Err(LifecycleError::precondition(format!(
            "pod sandbox {} is not ready",
            pod.id
        )));
    }
    // One creation per name at a time; the check reads saved copies, so a slow stop of
    // another container never holds it up.
    let name_lock = daemon
        .containers
        .name_lock(&format!("{}/{}/{}", pod.id, meta.name, meta.attempt));
    let _named = name_lock.lock().await;
    if let Some((_, r)) = daemon
        .containers
        .snapshots_where(|r| r.pod_id == pod.id && r.name == meta.name && r.attempt == meta.attempt)
        .into_iter()
        .next()
    {
        return Err(LifecycleError::exists(format!(
            "container name {} (attempt {}) is already used by {} in pod {}",
            meta.name, meta.attempt, r.id, pod.id
        )));
    }
    if let Some(security) = container
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        && security.run_as_group.is_some()
        && security.run_as_user.is_none()
        && security.run_as_username.is_empty()
    {
        return Err(LifecycleError::invalid(
            "run_as_group needs run_as_user or run_as_username: a group alone does not say who runs",
        ));
    }
    steps.mark("validate");
    let image_name = container
        .image
        .as_ref()
        .map(|i| i.image.clone())
        .filter(|i| !i.is_empty())
        .ok_or_else(|| LifecycleError::invalid("config.image.image must name an image"))?;
    let image = daemon
        .images
        .find(&image_name)
        .await
        .map_err(LifecycleError::from)?
        .ok_or_else(|| {
            LifecycleError::not_found(format!("image {image_name} is not present; pull it first"))
        })?;
    let image_config = daemon
        .images
        .config(&image)
        .await
        .map_err(LifecycleError::from)?;
    let defaults = ImageDefaults::from_config(&image_config);
    let runtime = daemon.handlers.get(&pod.handler)?;
    steps.mark("image");

    let id = new_id();
    let bundle = config.state.join("containers").join(&id);
    let log_path = if pod.log_directory.is_empty() || container.log_path.is_empty() {
        String::new()
    } else {
        crate::limits::log_file(&pod.log_directory, &container.log_path)?
            .display()
            .to_string()
    };
    let mut record = ContainerRecord {
        v: RECORD_VERSION,
        id: id.clone(),
        pod_id: pod.id.clone(),
        name: meta.name.clone(),
        attempt: meta.attempt,
        image: image_name.clone(),
        image_id: image.id.clone(),
        image_ref: image
            .names
            .iter()
            .find(|n| n.contains('@'))
            .cloned()
            .unwrap_or_else(|| image.id.clone()),
        labels: container.labels.clone().into_iter().collect(),
        annotations: container.annotations.clone().into_iter().collect(),
        created_at: now_ns(),
        started_at: 0,
        log_path: log_path.clone(),
        handler: pod.handler.clone(),
        bundle: bundle.clone(),
        mounts: container
            .mounts
            .iter()
            .map(|m| MountRecord {
                container_path: m.container_path.clone(),
                host_path: m.host_path.clone(),
                readonly: m.readonly,
                propagation: m.propagation,
                image: None,
                image_ref: None,
            })
            .collect(),
        stop_signal: stop_signal(&container, &defaults),
        process: serde_json::Value::Null,
        chain_ids: image.chain_ids.clone(),
        uid: 0,
        gid: 0,
        groups: Vec::new(),
        cgroup_path: String::new(),
        pid: 0,
        stdin_once: container.stdin && container.stdin_once,
        image_volumes: 0,
        exit: None,
    };
    // Image volumes: each image must be present (kubelet pulls them first).
    let mut volume_chains = Vec::new();
    for m in &container.mounts {
        let Some(spec) = m.image.as_ref().filter(|i| !i.image.is_empty()) else {
            continue;
        };
        if !m.readonly {
            // Image volumes are read-only by definition (KEP-4639); a writable one is a
            // request error, not something to quietly make read-only.
            return Err(LifecycleError::invalid(format!(
                "the image volume at {} ({}) must be read-only: set readonly: true",
                m.container_path, spec.image
            )));
        }
        let volume = daemon
            .images
            .find(&spec.image)
            .await
            .map_err(LifecycleError::from)?
            .ok_or_else(|| {
                LifecycleError::not_found(format!(
                    "image {} of the volume at {} is not present; pull it first",
                    spec.image, m.container_path
                ))
            })?;
        if let Some(mount) = record
            .mounts
            .iter_mut()
            .find(|r| r.container_path == m.container_path)
        {
            mount.image = Some(spec.image.clone());
            mount.image_ref = Some(volume.id.clone());
        }
        volume_chains.push(volume.chain_ids.clone());
    }
    record.image_volumes = volume_chains.len();

    // PID namespace mode TARGET joins another running container's PID namespace.
    let namespaces = container
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or_default();
    let target_pid_ns = if namespaces.pid == i32::from(cri::NamespaceMode::Target) {
        let target = daemon
            .containers
            .get(&namespaces.target_id)
            .ok_or_else(|| {
                LifecycleError::not_found(format!(
                    "target container {} of the PID namespace not found",
                    namespaces.target_id
                ))
            })?;
        let target = target.snapshot();
        let path = (target.state() == State::Running)
            .then(|| runtime.pid_namespace(&target.handle()))
            .flatten();
        if path.is_none() {
            return Err(LifecycleError::precondition(format!(
                "target container {} is not running",
                target.id
            )));
        }
        path
    } else {
        None
    };
    steps.mark("record");

    // Unmounts and removals: off the async threads.
    let cleanup = |daemon: &Daemon, record: &ContainerRecord| {
        let store = daemon.images.store();
        let record = record.clone();
        blocking(move || {
            if let Err(e) = record.release_filesystems(&store.snapshots) {
                tracing::error!(id = %record.id, error = %e, "cleaning up a failed CreateContainer");
            }
            Ok(())
        })
    };
    // Rootfs, identity and spec are filesystem work: off the async threads.
    let files = Files {
        record: record.clone(),
        pod: pod.clone(),
        container: container.clone(),
        defaults,
        volume_chains,
        target_pid_ns,
        driver: config.cgroup_driver,
        host: runtime.host_facts(),
        store: daemon.images.store(),
    };
    let (mut steps, prepared) = blocking(move || {
        let mut steps = steps;
        let prepared = files.prepare(&mut steps);
        Ok((steps, prepared))
    })
    .await?;
    let (mut spec_json, mut oci, identity) = match prepared {
        Ok(prepared) => prepared,
        Err(e) => {
            cleanup(daemon, &record).await?;
            return Err(e);
        }
    };

    // NRI plugins adjust the spec before the runtime sees it; the container is listed
    // only once they are done, and a plugin that joins meanwhile synchronizes after it.
    let _sync = crate::nri::block_sync(daemon).await;
    let min_oom = runtime.host_facts().min_oom_score_adj;
    match crate::nri::create_container(daemon, &pod, &record, &mut spec_json, min_oom).await {
        Ok(false) => {}
        Ok(true) => match serde_json::from_value::<oci_spec::runtime::Spec>(spec_json.clone()) {
            Ok(adjusted) => oci = adjusted,
            Err(e) => {
                crate::nri::container_undone(daemon, &pod, &record).await;
                cleanup(daemon, &record).await?;
                return Err(LifecycleError::invalid(format!(
                    "NRI plugins adjusted the container into an invalid OCI spec: {e}"
                )));
            }
        },
        Err(e) => {
            // Plugins before the one that refused may have made room for it.
            tracing::warn!(id = %id, error = %e, "an NRI plugin refused the container");
            crate::nri::container_undone(daemon, &pod, &record).await;
            cleanup(daemon, &record).await?;
            return Err(e);
        }
    }
    steps.mark("nri");
    record.process = spec_json["process"].clone();
    record.cgroup_path = spec_json["linux"]["cgroupsPath"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    record.uid = identity.uid;
    record.gid = identity.gid;
    record.groups = identity.groups.clone();

    let created = runtime
        .create_container(&runtime_handlers::ContainerSpec {
            sandbox_id: &pod.id,
            id: &id,
            bundle: &bundle,
            spec: &oci,
            log_path: std::path::Path::new(&log_path),
            stdin: container.stdin,
            stdin_once: container.stdin_once,
        })
        .await;
    steps.mark("runtime");
    match created {
        Ok(pid) => record.pid = pid,
        Err(e) => {
            crate::nri::container_undone(daemon, &pod, &record).await;
            cleanup(daemon, &record).await?;
            return Err(LifecycleError::from(e));
        }
    }
    // The container's mount namespace has its own copies of the prepared binds now
    // (unless the handler mounts at start, which releases them). The host's copies would
    // keep the sources' submounts busy (a volume's owner could not remove a directory a
    // submount sits on), so they go.
    if !runtime.features().mounts_at_start {
        binds::release_off_thread(&bundle).await;
    }
    steps.mark("release_binds");
    if let Err(e) = daemon.containers.persist(&record).await {
        let _ = runtime.delete_container(&record.handle(), true).await;
        crate::nri::container_undone(daemon, &pod, &record).await;
        cleanup(daemon, &record).await?;
        return Err(LifecycleError::internal(format!(
            "cannot persist container {id}: {e}"
        )));
    }
    steps.mark("persist");
    tracing::info!(id = %id, pod = %pod.id, name = %meta.name, image = %image_name, "container created");
    let pod_id = record.pod_id.clone();
    let entry = daemon.containers.insert(record);
    daemon
        .events
        .record(cri::ContainerEventType::ContainerCreatedEvent, &id, &pod_id);
    super::watch(runtime, entry, Arc::clone(daemon));
    if let Some(c) = daemon.containers.get(&id) {
        crate::nri::container_done(daemon, nri::api::Event::PostCreateContainer, &c.snapshot())
            .await;
    }
    steps.mark("publish");
    Ok(id)
}

/// What CreateContainer's filesystem work needs, moved to a blocking thread.
struct Files {
    record: ContainerRecord,
    pod: crate::pod::SandboxRecord,
    container: cri::ContainerConfig,
    defaults: ImageDefaults,
    volume_chains: Vec<Vec<String>>,
    target_pid_ns: Option<std::path::PathBuf>,
    driver: conf::CgroupDriver,
    host: runtime_handlers::HostFacts,
    store: Arc<storage::Store>,
}

impl Files {
    /// The intent record, the rootfs and image volumes mounted, the process's identity
    /// resolved in the rootfs, the OCI spec built and the binds staged: the spec (as
    /// JSON and typed) and the identity. The caller releases what a failure leaves.
    fn prepare(
        &self,
        steps: &mut crate::metrics::Steps,
    ) -> Result<(serde_json::Value, oci_spec::runtime::Spec, user::Identity), LifecycleError> {
        let (record, pod, container, defaults) =
            (&self.record, &self.pod, &self.container, &self.defaults);
        // The intent goes first: a crash from here on leaves a bundle that the next
        // start ends and removes (container/orphans.rs).
        super::orphans::write_intent(record).map_err(|e| {
            LifecycleError::internal(format!(
                "recording the create of {} in {}: {e}",
                record.id,
                record.bundle.display()
            ))
        })?;
        steps.mark("intent");
        let rootfs = record.rootfs();
        let userns = network::pin_path(&pod.state_dir, network::NamespaceKind::User);
        let idmap = pod.userns.as_ref().map(|u| storage::IdMapping {
            userns: &userns,
            root_uid: u.uid.host,
            root_gid: u.gid.host,
        });
        let snapshots = &self.store.snapshots;
        snapshots
            .mount_rootfs(&record.id, &record.chain_ids, &rootfs, idmap.as_ref())
            .map_err(|e| rootfs_error("preparing the rootfs", e))?;
        let mut volumes = Vec::new();
        for (n, chain) in self.volume_chains.iter().enumerate() {
            let (id, target) = record.image_volume(n);
            snapshots
                .mount_rootfs(&id, chain, &target, idmap.as_ref())
                .map_err(|e| rootfs_error("mounting an image volume", e))?;
            volumes.push(target);
        }
        steps.mark("rootfs");
        let security = container
            .linux
            .as_ref()
            .and_then(|l| l.security_context.clone())
            .unwrap_or_default();
        let identity = user::resolve(
            &rootfs,
            &defaults.user,
            security.run_as_user.as_ref().map(|u| u.value),
            &security.run_as_username,
            security.run_as_group.as_ref().map(|g| g.value),
            &security.supplemental_groups,
            security.supplemental_groups_policy == i32::from(cri::SupplementalGroupsPolicy::Strict),
        )?;
        steps.mark("identity");
        let args = spec::process_args(container, defaults)?;
        let hostname = if pod.hostname.is_empty() {
            pod.name.clone()
        } else {
            pod.hostname.clone()
        };
        let env = spec::process_env(container, defaults, &hostname);
        let cwd = [
            container.working_dir.as_str(),
            defaults.working_dir.as_str(),
        ]
        .into_iter()
        .find(|d| !d.is_empty())
        .unwrap_or("/")
        .to_owned();
        let input = SpecInput {
            id: &record.id,
            pod,
            rootfs: &rootfs,
            identity: &identity,
            args,
            env,
            cwd,
            cgroup_driver: self.driver,
            target_pid_ns: self.target_pid_ns.clone(),
            image_volumes: volumes,
            bundle: &record.bundle,
            host: self.host,
        };
        let (spec, oci) = spec::build(container, &input)?;
        steps.mark("spec");
        let pinned = pod.userns.as_ref().map(|u| (userns.as_path(), u));
        binds::stage(&record.bundle, &container.mounts, pinned)?;
        steps.mark("binds");
        Ok((spec, oci, identity))
    }
}

/// A rootfs that cannot be stacked (more layers than overlayfs takes) is the image's
/// problem (FailedPrecondition, naming the limit); anything else is ours.
fn rootfs_error(what: &str, e: storage::SnapshotError) -> LifecycleError {
    match &e {
        storage::SnapshotError::Mount { source, .. }
            if source.kind() == std::io::ErrorKind::InvalidInput =>
        {
            LifecycleError::precondition(format!("{what}: {e}"))
        }
        _ => LifecycleError::internal(format!("{what}: {e}")),
    }
}

/// The signal StopContainer sends first: the request's, the image's, else SIGTERM.
fn stop_signal(container: &cri::ContainerConfig, image: &ImageDefaults) -> i32 {
    let requested = cri::Signal::try_from(container.stop_signal)
        .ok()
        .filter(|s| *s != cri::Signal::RuntimeDefault)
        .map(|s| s.as_str_name().to_owned());
    let name = requested.unwrap_or_else(|| image.stop_signal.clone());
    signal_number(&name).unwrap_or(libc::SIGTERM)
}

fn signal_number(name: &str) -> Option<i32> {
    if let Ok(n) = name.parse() {
        return Some(n);
    }
    let name = name.trim_start_matches("SIG");
    Some(match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "TERM" => libc::SIGTERM,
        "STOP" => libc::SIGSTOP,
        "WINCH" => libc::SIGWINCH,
        _ => return None,
    })
}
