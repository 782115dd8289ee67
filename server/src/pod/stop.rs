//! StopPodSandbox: release the network (journaled) and the pins. Idempotent: an unknown
//! ID or an already stopped pod succeeds.

use super::{blocking, release};
use crate::errors::LifecycleError;
use crate::state::Daemon;

/// Stops the sandbox `id`.
pub async fn stop(daemon: &Daemon, id: &str) -> Result<(), LifecycleError> {
    let Some(pod) = daemon.pods.get(id) else {
        return Ok(());
    };
    let pod_id = pod.record.lock().await.id.clone();
    crate::container::stop_all_in_pod(daemon, &pod_id).await?;
    // Its containers are stopped, its network not yet released; the pod stays listed
    // while plugins hear of it (once: a stopped pod is not ready).
    let snapshot = pod.snapshot();
    if snapshot.ready {
        crate::nri::pod_stopped(daemon, &snapshot).await;
    }
    let mut record = pod.record.lock().await;
    let config = daemon.config();
    let mut before = record.clone();
    let handler_failure = before.stop_handler_sandbox(&daemon.handlers).await.err();
    let (mut after, mut failures) = blocking(move || Ok(release(&config, before))).await?;
    failures.extend(handler_failure);
    after.ready = false;
    daemon.pods.persist(&after).await.map_err(|e| {
        LifecycleError::internal(format!("cannot persist sandbox {}: {e}", after.id))
    })?;
    *record = after;
    if failures.is_empty() {
        tracing::info!(id = %record.id, "sandbox stopped");
        Ok(())
    } else {
        // The journal keeps what is left; the next stop, remove or restart retries it.
        Err(LifecycleError::retry(format!(
            "sandbox {} stopped, but releasing it failed (will be retried): {}",
            record.id,
            failures.join("; ")
        )))
    }
}
