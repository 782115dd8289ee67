//! ExecSync: a command in a running container, with the container's own env, user and
//! working directory, its output collected up to a cap, killed at the timeout.

use std::time::Duration;

use cri_proto::v1 as cri;

use super::State;
use crate::errors::LifecycleError;
use crate::state::Daemon;

/// Runs the request's command and returns its output and exit code.
pub async fn exec_sync(
    daemon: &Daemon,
    request: cri::ExecSyncRequest,
) -> Result<cri::ExecSyncResponse, LifecycleError> {
    if request.cmd.is_empty() {
        return Err(LifecycleError::invalid("ExecSync needs a command"));
    }
    crate::limits::argv("cmd", &request.cmd)?;
    let container = daemon
        .containers
        .get(&request.container_id)
        .ok_or_else(|| {
            LifecycleError::not_found(format!("container {} not found", request.container_id))
        })?;
    let record = container.record.lock().await.clone();
    if record.state() != State::Running {
        return Err(LifecycleError::precondition(format!(
            "container {} is not running",
            record.id
        )));
    }
    let mut process = record.process.clone();
    process["args"] = serde_json::json!(request.cmd);
    process["terminal"] = false.into();
    let process: oci_spec::runtime::Process = serde_json::from_value(process)
        .map_err(|e| LifecycleError::internal(format!("exec process: {e}")))?;
    let timeout = u64::try_from(request.timeout)
        .ok()
        .filter(|t| *t > 0)
        .map(Duration::from_secs);
    let runtime = daemon.handlers.get(&record.handler)?;
    let out = runtime
        .exec_sync(&record.handle(), &process, timeout)
        .await
        .map_err(LifecycleError::from)?;
    Ok(cri::ExecSyncResponse {
        stdout: out.stdout,
        stderr: out.stderr,
        exit_code: out.exit_code,
    })
}
