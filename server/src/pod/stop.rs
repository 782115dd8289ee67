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
    let mut record = pod.record.lock().await;
    // Its containers are stopped, its network not yet released: NRI plugins hear of it,
    // once (also for a pod that had ended by itself), while it stays listed. Status and
    // lists read saved copies, so they do not wait for the plugins.
    if !record.nri_stopped {
        crate::nri::pod_stopped(daemon, &record).await;
        record.nri_stopped = true;
    }
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
