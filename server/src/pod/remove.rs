//! RemovePodSandbox: stop if needed, then forget the sandbox and delete its files.
//! Idempotent: an unknown ID succeeds.

use tonic::Status;

use crate::state::Daemon;

/// Removes the sandbox `id`.
pub async fn remove(daemon: &Daemon, id: &str) -> Result<(), Status> {
    let Some(pod) = daemon.pods.get(id) else {
        return Ok(());
    };
    super::stop(daemon, id).await?;
    let pod_id = pod.record.lock().await.id.clone();
    crate::container::remove_all_in_pod(daemon, &pod_id).await?;
    let record = pod.record.lock().await;
    if let Err(e) = std::fs::remove_dir_all(&record.state_dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        return Err(Status::internal(format!(
            "cannot remove {} of sandbox {}: {e}",
            record.state_dir.display(),
            record.id
        )));
    }
    daemon.pods.forget(&record.id).map_err(|e| {
        Status::internal(format!(
            "cannot delete the record of sandbox {}: {e}",
            record.id
        ))
    })?;
    tracing::info!(id = %record.id, "sandbox removed");
    Ok(())
}
