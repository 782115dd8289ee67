//! StartContainer, StopContainer, RemoveContainer, and the pod-wide stop and remove.

use std::time::{Duration, Instant};

use super::{ContainerRecord, State};
use crate::errors::LifecycleError;
use crate::pod::now_ns;
use crate::state::Daemon;

/// Starts a created container.
pub async fn start(daemon: &Daemon, id: &str) -> Result<(), LifecycleError> {
    let mut steps = daemon.metrics.steps("start_container");
    let container = daemon
        .containers
        .get(id)
        .ok_or_else(|| LifecycleError::not_found(format!("container {id} not found")))?;
    let mut record = container.record.lock().await;
    if record.state() != State::Created {
        return Err(LifecycleError::precondition(format!(
            "container {} is not in the created state",
            record.id
        )));
    }
    let runtime = daemon.handlers.get(&record.handler)?;
    steps.mark("validate");
    crate::nri::start_container(daemon, &record).await?;
    steps.mark("nri");
    runtime
        .start_container(&record.handle())
        .await
        .map_err(LifecycleError::from)?;
    steps.mark("runtime");
    if runtime.features().mounts_at_start {
        super::binds::release_off_thread(&record.bundle).await;
        steps.mark("release_binds");
    }
    record.started_at = now_ns();
    // A reboot ends every container, started or not: the start need not be on disk for
    // good before the answer (a power loss may bring back the created record, and
    // recovery settles it like every container the reboot ended; a crash of crispd
    // loses nothing).
    daemon
        .containers
        .persist_until_reboot(&record)
        .await
        .map_err(|e| {
            LifecycleError::internal(format!("cannot persist container {}: {e}", record.id))
        })?;
    steps.mark("persist");
    daemon.events.record(
        cri_proto::v1::ContainerEventType::ContainerStartedEvent,
        &record.id,
        &record.pod_id,
    );
    tracing::info!(id = %record.id, "container started");
    crate::nri::container_done(daemon, nri::api::Event::PostStartContainer, &record).await;
    steps.mark("publish");
    Ok(())
}

/// Waits up to `within` for the container's exit and records it; whether it exited.
async fn wait_exit(
    daemon: &Daemon,
    runtime: &dyn runtime_handlers::RuntimeHandler,
    record: &mut ContainerRecord,
    within: Duration,
) -> bool {
    if record.exit.is_some() {
        return true;
    }
    let exit = match tokio::time::timeout(within, runtime.wait_container(&record.handle())).await {
        Ok(Ok(exit)) => super::ExitRecord::from_handler(exit),
        Ok(Err(e)) => {
            tracing::warn!(id = %record.id, error = %e, "waiting for the container's exit");
            match runtime
                .recover_container(&record.handle())
                .await
                .map(super::ExitRecord::from_recovered)
            {
                Ok(Some(exit)) => exit,
                Ok(None) | Err(_) => return false,
            }
        }
        Err(_) => return false,
    };
    record.set_exit(daemon, exit).await;
    true
}

/// Sends the stop signal, waits up to `timeout`, then kills every process. Once the
/// container has exited, its exit and STOPPED event are recorded (if its watcher has not
/// yet).
async fn stop_record(
    daemon: &Daemon,
    record: &mut ContainerRecord,
    timeout: Duration,
) -> Result<(), LifecycleError> {
    if record.exit.is_some() {
        return Ok(());
    }
    let runtime = daemon.handlers.get(&record.handler)?;
    if record.state() == State::Created {
        // Never started: its init waits in the runtime; killing it ends the container.
        runtime
            .kill_container(&record.handle(), libc::SIGKILL, false)
            .await
            .map_err(LifecycleError::from)?;
    } else if !timeout.is_zero() {
        runtime
            .kill_container(&record.handle(), record.stop_signal, false)
            .await
            .map_err(LifecycleError::from)?;
        if wait_exit(daemon, runtime.as_ref(), record, timeout).await {
            return Ok(());
        }
    }
    runtime
        .kill_container(&record.handle(), libc::SIGKILL, true)
        .await
        .map_err(LifecycleError::from)?;
    if !wait_exit(daemon, runtime.as_ref(), record, Duration::from_secs(10)).await {
        return Err(LifecycleError::timeout(format!(
            "container {} did not exit 10s after SIGKILL",
            record.id
        )));
    }
    tracing::info!(id = %record.id, "container stopped");
    Ok(())
}

/// StopContainer: an unknown ID succeeds, as the CRI requires.
pub async fn stop(daemon: &Daemon, id: &str, timeout_secs: i64) -> Result<(), LifecycleError> {
    let Some(container) = daemon.containers.get(id) else {
        return Ok(());
    };
    let mut record = container.record.lock().await;
    let timeout = Duration::from_secs(u64::try_from(timeout_secs).unwrap_or(0));
    stop_record(daemon, &mut record, timeout).await
}

/// RemoveContainer: kills a running container first (as the CRI requires), deletes it
/// at the runtime, unmounts and discards its rootfs. An unknown ID succeeds.
pub async fn remove(daemon: &Daemon, id: &str) -> Result<(), LifecycleError> {
    let Some(container) = daemon.containers.get(id) else {
        return Ok(());
    };
    let mut record = container.record.lock().await;
    stop_record(daemon, &mut record, Duration::ZERO).await?;
    let runtime = daemon.handlers.get(&record.handler)?;
    runtime
        .delete_container(&record.handle(), true)
        .await
        .map_err(LifecycleError::from)?;
    let store = daemon.images.store();
    let filesystems = record.clone();
    crate::pod::blocking(move || {
        filesystems
            .release_filesystems(&store.snapshots)
            .map_err(LifecycleError::internal)
    })
    .await?;
    daemon.containers.discard(&record.id).await.map_err(|e| {
        LifecycleError::internal(format!("cannot delete the record of {}: {e}", record.id))
    })?;
    daemon.events.record(
        cri_proto::v1::ContainerEventType::ContainerDeletedEvent,
        &record.id,
        &record.pod_id,
    );
    tracing::info!(id = %record.id, "container removed");
    crate::nri::container_done(daemon, nri::api::Event::RemoveContainer, &record).await;
    Ok(())
}

/// Kills every container of a pod (StopPodSandbox).
pub async fn stop_all_in_pod(daemon: &Daemon, pod_id: &str) -> Result<(), LifecycleError> {
    for (c, _) in daemon.containers.snapshots_where(|r| r.pod_id == pod_id) {
        let mut record = c.record.lock().await;
        stop_record(daemon, &mut record, Duration::ZERO).await?;
    }
    Ok(())
}

/// Removes every container of a pod (RemovePodSandbox).
pub async fn remove_all_in_pod(daemon: &Daemon, pod_id: &str) -> Result<(), LifecycleError> {
    for (_, record) in daemon.containers.snapshots_where(|r| r.pod_id == pod_id) {
        remove(daemon, &record.id).await?;
    }
    Ok(())
}

/// ReopenContainerLog: the monitor reopens the log path (kubelet rotated the file).
pub async fn reopen_log(daemon: &Daemon, id: &str) -> Result<(), LifecycleError> {
    let container = daemon
        .containers
        .get(id)
        .ok_or_else(|| LifecycleError::not_found(format!("container {id} not found")))?;
    let record = container.record.lock().await;
    if record.state() != State::Running {
        return Err(LifecycleError::precondition(format!(
            "container {} is not running",
            record.id
        )));
    }
    let runtime = daemon.handlers.get(&record.handler)?;
    runtime
        .reopen_log(&record.handle())
        .await
        .map_err(LifecycleError::from)?;
    // The monitor reopens on its own time; kubelet (and critest) expect the new file to
    // exist when this call returns.
    if record.log_path.is_empty() {
        return Ok(());
    }
    let path = std::path::Path::new(&record.log_path);
    let deadline = Instant::now() + Duration::from_secs(2);
    while !path.exists() {
        if Instant::now() >= deadline {
            return Err(LifecycleError::timeout(format!(
                "the monitor of {} did not reopen {} within 2s",
                record.id, record.log_path
            )));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

/// UpdateContainerResources: new CPU and memory limits, applied live, as NRI plugins
/// leave them.
pub async fn update_resources(
    daemon: &Daemon,
    id: &str,
    resources: Option<cri_proto::v1::LinuxContainerResources>,
) -> Result<(), LifecycleError> {
    update(daemon, id, resources.as_ref().map(resource_update), true).await
}

/// An update an NRI plugin asked for: applied as it is, with no NRI events.
pub async fn apply_update(
    daemon: &Daemon,
    id: &str,
    update_to: runtime_handlers::ResourceUpdate,
) -> Result<(), LifecycleError> {
    update(daemon, id, Some(update_to), false).await
}

/// CRI resources as a handler's update takes them (0 is "unset").
pub(crate) fn resource_update(
    r: &cri_proto::v1::LinuxContainerResources,
) -> runtime_handlers::ResourceUpdate {
    let positive = |v: i64| (v > 0).then_some(v);
    runtime_handlers::ResourceUpdate {
        cpu_shares: positive(r.cpu_shares).and_then(|v| u64::try_from(v).ok()),
        cpu_quota: positive(r.cpu_quota),
        cpu_period: positive(r.cpu_period).and_then(|v| u64::try_from(v).ok()),
        cpuset_cpus: Some(r.cpuset_cpus.clone()).filter(|s| !s.is_empty()),
        cpuset_mems: Some(r.cpuset_mems.clone()).filter(|s| !s.is_empty()),
        memory: positive(r.memory_limit_in_bytes),
        memory_swap: positive(r.memory_swap_limit_in_bytes),
    }
}

/// Applies `update` (none: only checks the container) to a container that has not
/// exited; with `events`, NRI plugins see it first and may change it.
async fn update(
    daemon: &Daemon,
    id: &str,
    update: Option<runtime_handlers::ResourceUpdate>,
    events: bool,
) -> Result<(), LifecycleError> {
    let container = daemon
        .containers
        .get(id)
        .ok_or_else(|| LifecycleError::not_found(format!("container {id} not found")))?;
    let record = container.record.lock().await;
    if matches!(record.state(), State::Exited { .. }) {
        return Err(LifecycleError::precondition(format!(
            "container {} has exited",
            record.id
        )));
    }
    let Some(mut update) = update else {
        return Ok(());
    };
    if events {
        update = crate::nri::update_container(daemon, &record, update).await?;
    }
    let runtime = daemon.handlers.get(&record.handler)?;
    runtime
        .update_container(&record.handle(), &update)
        .await
        .map_err(LifecycleError::from)?;
    if events {
        crate::nri::container_done(daemon, nri::api::Event::PostUpdateContainer, &record).await;
    }
    Ok(())
}

#[cfg(test)]
#[path = "lifecycle_tests.rs"]
mod tests;
