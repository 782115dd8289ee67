//! `portforward.k8s.io`: each forwarded connection is a pair of streams the client opens,
//! an error stream and a data stream, sharing `port` and `requestid` headers. crisp
//! connects to `localhost:<port>` inside the pod's network namespace and copies bytes both
//! ways; a refused or failed connection is reported on the error stream. Over WebSocket,
//! client-go tunnels the same SPDY connection through binary messages
//! (`SPDY/3.1+portforward.k8s.io`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use cri_proto::v1 as cri;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::session::{self, Incoming};
use super::spdy::header;
use crate::state::Daemon;

/// The protocol name.
pub const PROTOCOL: &str = "portforward.k8s.io";

/// Where a pod's forwarded connections go: its handler reaches the port.
#[derive(Clone)]
struct Target {
    handler: std::sync::Arc<dyn runtime_handlers::RuntimeHandler>,
    sandbox: runtime_handlers::SandboxSpec,
    netns: Option<PathBuf>,
}

/// One forwarded connection, once both of its streams are open.
async fn forward(
    sender: session::Sender,
    target: Target,
    port: u16,
    error: Incoming,
    mut data: Incoming,
) {
    let pod = target.sandbox.id.clone();
    let connected = target
        .handler
        .port_forward(&target.sandbox, target.netns.as_deref(), port)
        .await;
    let stream = match connected {
        Ok(stream) => stream,
        Err(e) => {
            let message = format!(
                "an error occurred forwarding {port} -> {port}: connecting to localhost:{port} in pod {pod}: {e}"
            );
            sender.data(error.id, message.as_bytes());
            sender.fin(error.id);
            sender.fin(data.id);
            return;
        }
    };
    let (mut from_pod, mut to_pod) = tokio::io::split(stream);
    let data_id = data.id;
    let upstream = tokio::spawn(async move {
        while let Some(bytes) = data.data.recv().await {
            if to_pod.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = to_pod.shutdown().await;
    });
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match from_pod.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => sender.data(data_id, &buf[..n]),
        }
    }
    sender.fin(data_id);
    sender.fin(error.id);
    let _ = upstream.await;
}

/// Serves port forwarding for `request` over a SPDY connection.
pub async fn serve_spdy<IO>(daemon: &Daemon, request: cri::PortForwardRequest, io: IO)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let mut session = session::start(io);
    let Some(pod) = daemon.pods.get(&request.pod_sandbox_id) else {
        session.sender.close();
        return;
    };
    // A host-network pod's ports are the host's.
    let record = pod.snapshot();
    let netns = record.netns();
    if netns.as_ref().is_some_and(|n| !Path::new(n).exists()) {
        tracing::debug!(pod = %request.pod_sandbox_id, "port-forward to a pod whose network namespace is gone");
        session.sender.close();
        return;
    }
    let Ok(handler) = daemon.handlers.get(&record.handler) else {
        session.sender.close();
        return;
    };
    let target = Target {
        handler,
        sandbox: record.sandbox_spec(),
        netns,
    };
    // Streams wait here for their partner: (requestid) -> error or data stream.
    let mut pending: HashMap<String, (Option<Incoming>, Option<Incoming>)> = HashMap::new();
    let mut forwards = Vec::new();
    while let Some(stream) = session.incoming.recv().await {
        let kind = header(&stream.headers, "streamtype")
            .unwrap_or_default()
            .to_owned();
        let port = header(&stream.headers, "port").and_then(|p| p.parse::<u16>().ok());
        let id = header(&stream.headers, "requestid")
            .unwrap_or_default()
            .to_owned();
        let Some(port) = port.filter(|p| *p > 0) else {
            session.sender.reset(stream.id);
            continue;
        };
        if !request.port.is_empty() && !request.port.contains(&i32::from(port)) {
            // Only the ports the PortForward call named are reachable through this URL.
            session.sender.reset(stream.id);
            continue;
        }
        let entry = pending.entry(id.clone()).or_default();
        match kind.as_str() {
            "error" => entry.0 = Some(stream),
            "data" => entry.1 = Some(stream),
            _ => {
                session.sender.reset(stream.id);
                continue;
            }
        }
        if entry.0.is_some()
            && entry.1.is_some()
            && let Some((Some(error), Some(data))) = pending.remove(&id)
        {
            forwards.push(tokio::spawn(forward(
                session.sender.clone(),
                target.clone(),
                port,
                error,
                data,
            )));
        }
    }
    // The client is gone: so are the connections it forwarded.
    for f in forwards {
        f.abort();
    }
    session.sender.close();
}
