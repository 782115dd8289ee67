//! `crisp-cleanup SOCKET`: stops and removes every pod sandbox (and so every container)
//! a CRI runtime has. The critest runner calls it before it stops crispd, since crisp
//! keeps pods running across daemon restarts by design.

use std::path::PathBuf;

use clap::Parser;
use cri_proto::v1 as cri;

/// Stops and removes every pod sandbox (and so every container) of a CRI runtime.
#[derive(Debug, Parser)]
#[command(name = "crisp-cleanup", version)]
struct Cli {
    /// The runtime's CRI socket (a path, or unix:///path).
    socket: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    let socket = PathBuf::from(cli.socket.strip_prefix("unix://").unwrap_or(&cli.socket));
    let mut clients = critest::Clients::connect(&socket).await?;
    let pods = clients
        .runtime
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await?
        .into_inner()
        .items;
    let mut failed = 0;
    for pod in pods {
        let id = pod.id;
        let stop = clients
            .runtime
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await;
        let remove = clients
            .runtime
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await;
        if let Err(e) = stop.and(remove) {
            eprintln!("crisp-cleanup: pod {id}: {e}");
            failed += 1;
        }
    }
    if failed > 0 {
        return Err(format!("{failed} pod(s) could not be removed").into());
    }
    Ok(())
}
