//! Black-box CRI conformance tests for crisp, talking only the CRI over a unix socket,
//! and the configuration to run upstream `critest` against crispd (see README.md here).
//!
//! Owns: a client connection helper and (with the conformance issue) tests of the
//! behaviour critest checks, so CI guards it without critest installed.
//! Depends on `cri-proto` only: it never sees crisp's internals.

pub mod fixture;

use std::path::{Path, PathBuf};

use cri_proto::v1::image_service_client::ImageServiceClient;
use cri_proto::v1::runtime_service_client::RuntimeServiceClient;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

/// A gRPC channel to a CRI server on a unix socket.
pub async fn connect(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    let socket: PathBuf = socket.to_owned();
    // The URI is required by tonic but unused: the connector dials the socket.
    Endpoint::from_static("http://[::]:50051")
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
}

/// Both CRI clients on one channel.
pub struct Clients {
    /// RuntimeService.
    pub runtime: RuntimeServiceClient<Channel>,
    /// ImageService.
    pub image: ImageServiceClient<Channel>,
}

impl Clients {
    /// Connects to the CRI server at `socket`.
    pub async fn connect(socket: &Path) -> Result<Self, tonic::transport::Error> {
        let channel = connect(socket).await?;
        Ok(Self {
            runtime: RuntimeServiceClient::new(channel.clone()),
            image: ImageServiceClient::new(channel),
        })
    }
}
