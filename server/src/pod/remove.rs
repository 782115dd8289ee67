//! RemovePodSandbox: stop if needed, then forget the sandbox and delete its files.
//! Idempotent: an unknown ID succeeds.

use crate::errors::LifecycleError;
use crate::state::Daemon;

/// Removes the sandbox `id`.
pub async fn remove(daemon: &Daemon, id: &str) -> Result<(), LifecycleError> {
    let Some(pod) = daemon.pods.get(id) else {
        return Ok(());
    };
    super::stop(daemon, id).await?;
    let pod_id = pod.record.lock().await.id.clone();
    crate::container::remove_all_in_pod(daemon, &pod_id).await?;
    let record = pod.record.lock().await;
    let state_dir = record.state_dir.clone();
    let removed = tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&state_dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    })
    .await
    .map_err(std::io::Error::other)
    .and_then(|r| r);
    if let Err(e) = removed {
        return Err(LifecycleError::internal(format!(
            "cannot remove {} of sandbox {}: {e}",
            record.state_dir.display(),
            record.id
        )));
    }
    daemon.pods.discard(&record.id).await.map_err(|e| {
        LifecycleError::internal(format!(
            "cannot delete the record of sandbox {}: {e}",
            record.id
        ))
    })?;
    tracing::info!(id = %record.id, "sandbox removed");
    crate::nri::pod_removed(daemon, &record).await;
    Ok(())
}
