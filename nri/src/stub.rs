//! The plugin's side of a connection, enough for tests to be an NRI plugin: connect,
//! register, subscribe, and answer the runtime's calls with a handler of their own.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use tokio::net::UnixStream;

use crate::adaptation::{PLUGIN_SERVICE, RUNTIME_SERVICE};
use crate::api;
use crate::peer::{CallError, Handler, Peer};

/// A connected, registered plugin.
pub struct Stub {
    peer: Peer,
}

impl Stub {
    /// Connects to the runtime at `socket` as plugin `idx`-`name`, subscribed to
    /// `events` (a mask, bit e-1 for event e). `handler` answers every call, Synchronize
    /// included, but Configure: it sees Configure (and its configuration), and this
    /// answers it with `events`.
    pub async fn connect(
        socket: &Path,
        name: &str,
        idx: &str,
        events: i32,
        handler: Handler,
    ) -> Result<Self, String> {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|e| format!("connecting to {}: {e}", socket.display()))?;
        Self::on(stream, name, idx, events, handler).await
    }

    /// As [`Stub::connect`], on a connection already made (a plugin the runtime started).
    pub async fn on(
        stream: UnixStream,
        name: &str,
        idx: &str,
        events: i32,
        handler: Handler,
    ) -> Result<Self, String> {
        let serve: Handler = Arc::new(move |method: String, payload: Vec<u8>| {
            let handler = Arc::clone(&handler);
            Box::pin(async move {
                if method == "Configure" {
                    let _ = handler(method, payload).await;
                    return Ok(api::ConfigureResponse { events }.encode_to_vec());
                }
                handler(method, payload).await
            })
        });
        let peer = Peer::start(
            stream,
            crate::mux::RUNTIME_SERVICE,
            crate::mux::PLUGIN_SERVICE,
            PLUGIN_SERVICE,
            serve,
        );
        let register = api::RegisterPluginRequest {
            plugin_name: name.to_owned(),
            plugin_idx: idx.to_owned(),
            nri_version: crate::adaptation::NRI_VERSION.to_owned(),
        };
        peer.call(
            RUNTIME_SERVICE,
            "RegisterPlugin",
            register.encode_to_vec(),
            Duration::from_secs(5),
        )
        .await
        .map_err(|e| format!("RegisterPlugin: {e}"))?;
        Ok(Self { peer })
    }

    /// Asks the runtime to update containers; those that failed.
    pub async fn update_containers(
        &self,
        update: Vec<api::ContainerUpdate>,
    ) -> Result<Vec<api::ContainerUpdate>, CallError> {
        let request = api::UpdateContainersRequest {
            update,
            evict: Vec::new(),
        };
        let reply = self
            .peer
            .call(
                RUNTIME_SERVICE,
                "UpdateContainers",
                request.encode_to_vec(),
                Duration::from_secs(10),
            )
            .await?;
        api::UpdateContainersResponse::decode(reply.as_slice())
            .map(|r| r.failed)
            .map_err(|e| CallError::Protocol(e.to_string()))
    }

    /// Whether the runtime has closed the connection.
    pub fn is_closed(&self) -> bool {
        self.peer.is_closed()
    }

    /// Returns once the runtime has closed the connection.
    pub async fn closed(&self) {
        self.peer.closed().await;
    }

    /// Ends the connection, as a plugin that dies does.
    pub async fn close(&self) {
        self.peer.close().await;
    }
}
