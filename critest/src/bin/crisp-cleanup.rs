//! `crisp-cleanup SOCKET`: stops and removes every pod sandbox (and so every container)
//! a CRI runtime has. The critest runner calls it before it stops crispd, since crisp
//! keeps pods running across daemon restarts by design.

use cri_proto::v1 as cri;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let socket = std::env::args()
        .nth(1)
        .ok_or("usage: crisp-cleanup SOCKET")?;
    let mut clients = critest::Clients::connect(std::path::Path::new(&socket)).await?;
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
