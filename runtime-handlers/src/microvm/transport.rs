//! How the host reaches a guest's agent: one interface, two ways. Hybrid vsock (the
//! backend's unix socket plus a `CONNECT <port>` line, answered `OK <port>` once the guest
//! accepts; what runs where there is no /dev/vhost-vsock) and native AF_VSOCK (the
//! kernel's vhost-vsock, addressed by the guest's CID).

use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tonic::transport::{Channel, Endpoint};

/// Where a guest's agent is reached.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Transport {
    /// A vhost-user-vsock backend's host socket.
    Hybrid {
        /// The backend's `uds-path`.
        path: PathBuf,
    },
    /// The kernel's vsock, to this guest CID.
    Native {
        /// The guest's context ID.
        cid: u32,
    },
}

/// A connection to the agent, whichever way it was made.
pub enum Stream {
    /// Through the hybrid backend.
    Unix(tokio::net::UnixStream),
    /// Through AF_VSOCK.
    Vsock(tokio_vsock::VsockStream),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Vsock(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Vsock(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::Vsock(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // Never half-close: vhost-device-vsock drops the whole connection on it.
        let _ = cx;
        let _ = self;
        Poll::Ready(Ok(()))
    }
}

/// How long one attempt to reach the guest may take. A connection request the vsock
/// backend forwards while the guest is still booting can be lost, and that attempt then
/// never gets an answer (measured here: 2 of 60 boots with five VMs starting at once
/// waited out the whole boot timeout); a fresh attempt gets through.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

impl Transport {
    /// One attempt to reach `port` in the guest.
    pub async fn connect_once(&self, port: u32) -> std::io::Result<Stream> {
        match self {
            Transport::Hybrid { path } => {
                let mut s = tokio::net::UnixStream::connect(path).await?;
                s.write_all(format!("CONNECT {port}\n").as_bytes()).await?;
                // Read the answer a byte at a time: what follows it is the agent's.
                let mut line = Vec::with_capacity(16);
                let mut reader = tokio::io::BufReader::with_capacity(1, &mut s);
                reader.read_until(b'\n', &mut line).await?;
                let answer = String::from_utf8_lossy(&line);
                if answer.len() > 2 && answer[..2].eq_ignore_ascii_case("OK") {
                    Ok(Stream::Unix(s))
                } else {
                    Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionRefused,
                        format!("the vsock backend answered {:?}", answer.trim()),
                    ))
                }
            }
            Transport::Native { cid } => {
                let addr = tokio_vsock::VsockAddr::new(*cid, port);
                Ok(Stream::Vsock(
                    tokio_vsock::VsockStream::connect(addr).await?,
                ))
            }
        }
    }

    /// Reaches `port`, retrying until `deadline` (a booting guest does not listen yet).
    /// Each attempt has [`ATTEMPT_TIMEOUT`]: one can go unanswered for good.
    pub async fn connect(&self, port: u32, deadline: Instant) -> std::io::Result<Stream> {
        let mut pause = Duration::from_millis(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let attempt = left.min(ATTEMPT_TIMEOUT);
            let error = match tokio::time::timeout(attempt, self.connect_once(port)).await {
                Ok(Ok(s)) => return Ok(s),
                Ok(Err(e)) => e,
                Err(_) => std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"),
            };
            if Instant::now() + pause >= deadline {
                return Err(error);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    /// A gRPC channel to the agent; each (re)connection retries until `patience` has
    /// passed since it began.
    pub async fn channel(&self, port: u32, patience: Duration) -> std::io::Result<Channel> {
        let transport = self.clone();
        // The URI is required by tonic but unused: the connector dials the guest. Every
        // call shares the connection: a stream whose reader stalls (an exec's stdin that
        // is not read) may hold only its own small window, never the whole connection's.
        Endpoint::from_static("http://agent.invalid")
            .initial_stream_window_size(Some(agent_proto::STREAM_WINDOW))
            .initial_connection_window_size(Some(agent_proto::CONNECTION_WINDOW))
            .connect_with_connector(tower::service_fn(move |_| {
                let transport = transport.clone();
                async move {
                    let stream = transport.connect(port, Instant::now() + patience).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            }))
            .await
            .map_err(|e| {
                use std::error::Error;
                let mut message = e.to_string();
                let mut source = e.source();
                while let Some(s) = source {
                    message = format!("{message}: {s}");
                    source = s.source();
                }
                std::io::Error::other(message)
            })
    }
}
