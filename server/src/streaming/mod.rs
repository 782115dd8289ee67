//! The streaming server behind Exec, Attach and PortForward: the RPCs store the request
//! under a random single-use token and answer with a URL on this server; the client
//! (kubelet's proxy, crictl) then connects there and upgrades to SPDY/3.1 or WebSocket.
//!
//! An unknown, used or expired token is 404. A request is bound to its token alone; the
//! token is 32 random bytes, so URLs cannot be guessed.

pub mod channel;
mod portforward;
mod remotecommand;
mod session;
pub mod spdy;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use cri_proto::v1 as cri;
use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::errors::LifecycleError;
use crate::state::Daemon;

/// A request waiting for its client.
#[derive(Debug, Clone)]
pub enum Pending {
    /// Exec.
    Exec(cri::ExecRequest),
    /// Attach.
    Attach(cri::AttachRequest),
    /// PortForward.
    PortForward(cri::PortForwardRequest),
}

impl Pending {
    fn path(&self) -> &'static str {
        match self {
            Pending::Exec(_) => "exec",
            Pending::Attach(_) => "attach",
            Pending::PortForward(_) => "portforward",
        }
    }
}

/// The token store and the server's base URL.
pub struct Streaming {
    base: String,
    ttl: Duration,
    tokens: Mutex<HashMap<String, (Pending, Instant)>>,
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    // SAFETY: getrandom writes at most 32 bytes into `bytes`.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != 32 {
        // Never on a booted system; still unique, though guessable, so say so.
        tracing::warn!("getrandom failed; streaming token from time and pid");
        let seed = format!("{:?}{}", std::time::SystemTime::now(), std::process::id());
        return storage::Digest::of(seed.as_bytes()).hex().to_owned();
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl Streaming {
    /// A store for a server reachable at `base` (`http://127.0.0.1:PORT`).
    pub fn new(base: String, ttl: Duration) -> Self {
        Self {
            base,
            ttl,
            tokens: Mutex::new(HashMap::new()),
        }
    }

    fn tokens(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Pending, Instant)>> {
        match self.tokens.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Stores `pending` and returns the URL its client must use.
    pub fn url_for(&self, pending: Pending) -> String {
        let token = random_token();
        let url = format!("{}/{}/{token}", self.base, pending.path());
        let now = Instant::now();
        let mut tokens = self.tokens();
        tokens.retain(|_, (_, at)| now.duration_since(*at) < self.ttl);
        tokens.insert(token, (pending, now));
        url
    }

    /// Takes the request of a token, once.
    fn take(&self, kind: &str, token: &str) -> Option<Pending> {
        let (pending, at) = self.tokens().remove(token)?;
        (pending.path() == kind && at.elapsed() < self.ttl).then_some(pending)
    }
}

/// The TLS side of the server, from a PEM certificate chain and key.
pub fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, String> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| format!("streaming.tls_cert {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "streaming.tls_cert {}: no certificate in the file",
            cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("streaming.tls_key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("streaming TLS certificate and key: {e}"))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Serves the streaming endpoints on `listener` (over TLS with `tls`) until the daemon
/// ends.
pub async fn serve(
    daemon: Arc<Daemon>,
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let daemon = Arc::clone(&daemon);
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                Some(acceptor) => {
                    let accepted =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                            .await;
                    if let Ok(Ok(tls_stream)) = accepted {
                        serve_connection(daemon, tls_stream).await;
                    }
                }
                None => serve_connection(daemon, stream).await,
            }
        });
    }
}

async fn serve_connection<IO>(daemon: Arc<Daemon>, io: IO)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let daemon = Arc::clone(&daemon);
        async move { Ok::<_, std::convert::Infallible>(route(daemon, req)) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades()
        .await;
}

type Body = http_body_util::Full<bytes::Bytes>;

fn reply(status: StatusCode, text: &str) -> Response<Body> {
    let mut response = Response::new(Body::from(text.to_owned()));
    *response.status_mut() = status;
    response
}

/// Every value of a header that may be repeated or comma-separated.
fn header_values(req: &Request<Incoming>, name: &str) -> Vec<String> {
    req.headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect()
}

/// The first of `ours` the client offers, in our order of preference.
fn negotiate<'a>(offered: &[String], ours: &[&'a str]) -> Option<&'a str> {
    ours.iter()
        .copied()
        .find(|p| offered.iter().any(|o| o == p))
}

fn route(daemon: Arc<Daemon>, mut req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().trim_start_matches('/').to_owned();
    let Some((kind, token)) = path.split_once('/') else {
        return reply(StatusCode::NOT_FOUND, "not found");
    };
    let Some(streaming) = daemon.streaming.get() else {
        return reply(StatusCode::SERVICE_UNAVAILABLE, "streaming is not ready");
    };
    let Some(pending) = streaming.take(kind, token) else {
        return reply(StatusCode::NOT_FOUND, "unknown or expired streaming token");
    };
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    if upgrade == "websocket" {
        let offered = header_values(&req, "sec-websocket-protocol");
        let Some(key) = req
            .headers()
            .get("sec-websocket-key")
            .map(|k| k.as_bytes().to_vec())
        else {
            return reply(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
        };
        let tunnel = format!("SPDY/3.1+{}", portforward::PROTOCOL);
        let protocol = match &pending {
            Pending::PortForward(_) => negotiate(&offered, &[tunnel.as_str()]).map(str::to_owned),
            _ => negotiate(&offered, remotecommand::WS_PROTOCOLS).map(str::to_owned),
        };
        let Some(protocol) = protocol else {
            return reply(
                StatusCode::FORBIDDEN,
                &format!("no supported WebSocket subprotocol among {offered:?}"),
            );
        };
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
        let upgraded = hyper::upgrade::on(&mut req);
        let chosen = protocol.clone();
        tokio::spawn(async move {
            let Ok(upgraded) = upgraded.await else { return };
            let io = TokioIo::new(upgraded);
            match pending {
                Pending::Exec(request) => {
                    let target = remotecommand::Target::Exec(request);
                    remotecommand::serve_ws(&daemon, target, &chosen, io).await;
                }
                Pending::Attach(request) => {
                    let target = remotecommand::Target::Attach(request);
                    remotecommand::serve_ws(&daemon, target, &chosen, io).await;
                }
                Pending::PortForward(request) => {
                    let tunnel = ws_tunnel(io).await;
                    portforward::serve_spdy(&daemon, request, tunnel).await;
                }
            }
        });
        return Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "Upgrade")
            .header(header::UPGRADE, "websocket")
            .header("Sec-WebSocket-Accept", accept)
            .header("Sec-WebSocket-Protocol", protocol)
            .body(Body::default())
            .unwrap_or_else(|_| reply(StatusCode::INTERNAL_SERVER_ERROR, "response"));
    }
    if upgrade.starts_with("spdy/3.1") {
        let offered = header_values(&req, "x-stream-protocol-version");
        let protocol = match &pending {
            Pending::PortForward(_) => negotiate(&offered, &[portforward::PROTOCOL]),
            _ => negotiate(&offered, remotecommand::SPDY_PROTOCOLS),
        };
        let Some(protocol) = protocol else {
            return reply(
                StatusCode::FORBIDDEN,
                &format!("no supported stream protocol among {offered:?}"),
            );
        };
        let upgraded = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(upgraded) = upgraded.await else { return };
            let io = TokioIo::new(upgraded);
            match pending {
                Pending::Exec(request) => {
                    let target = remotecommand::Target::Exec(request);
                    remotecommand::serve_spdy(&daemon, target, protocol, io).await;
                }
                Pending::Attach(request) => {
                    let target = remotecommand::Target::Attach(request);
                    remotecommand::serve_spdy(&daemon, target, protocol, io).await;
                }
                Pending::PortForward(request) => {
                    portforward::serve_spdy(&daemon, request, io).await;
                }
            }
        });
        return Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "Upgrade")
            .header(header::UPGRADE, "SPDY/3.1")
            .header("X-Stream-Protocol-Version", protocol)
            .body(Body::default())
            .unwrap_or_else(|_| reply(StatusCode::INTERNAL_SERVER_ERROR, "response"));
    }
    reply(
        StatusCode::BAD_REQUEST,
        "this endpoint needs an Upgrade to SPDY/3.1 or websocket",
    )
}

/// A byte stream carried in a WebSocket's binary messages (client-go's SPDY tunnel).
async fn ws_tunnel<IO>(io: IO) -> tokio::io::DuplexStream
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use futures::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::Message;
    let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        io,
        tokio_tungstenite::tungstenite::protocol::Role::Server,
        Some(channel::ws_config()),
    )
    .await;
    let (mut sink, mut stream) = ws.split();
    let (ours, theirs) = tokio::io::duplex(256 * 1024);
    let (mut from_spdy, mut to_spdy) = tokio::io::split(theirs);
    tokio::spawn(async move {
        while let Some(Ok(message)) = stream.next().await {
            let bytes = match message {
                Message::Binary(b) => b,
                Message::Close(_) => break,
                _ => continue,
            };
            if to_spdy.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = to_spdy.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from_spdy.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink.send(Message::binary(buf[..n].to_vec())).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = sink.close().await;
    });
    ours
}

/// Exec: validates the request and returns the URL for it.
pub fn exec_url(daemon: &Daemon, request: cri::ExecRequest) -> Result<String, LifecycleError> {
    if request.cmd.is_empty() {
        return Err(LifecycleError::invalid("Exec needs a command"));
    }
    crate::limits::argv("cmd", &request.cmd)?;
    if !(request.stdin || request.stdout || request.stderr) {
        return Err(LifecycleError::invalid(
            "Exec needs at least one of stdin, stdout and stderr",
        ));
    }
    if request.tty && request.stderr {
        return Err(LifecycleError::invalid(
            "with a TTY, stderr is merged into stdout: stderr must be false",
        ));
    }
    let container = daemon
        .containers
        .get(&request.container_id)
        .ok_or_else(|| {
            LifecycleError::not_found(format!("container {} not found", request.container_id))
        })?;
    let record = container.snapshot();
    if record.state() != crate::container::State::Running {
        return Err(LifecycleError::precondition(format!(
            "container {} is not running",
            record.id
        )));
    }
    let mut request = request;
    request.container_id = record.id.clone();
    streaming(daemon).map(|s| s.url_for(Pending::Exec(request)))
}

/// Attach: validates the request and returns the URL for it.
pub fn attach_url(daemon: &Daemon, request: cri::AttachRequest) -> Result<String, LifecycleError> {
    if !(request.stdin || request.stdout || request.stderr) {
        return Err(LifecycleError::invalid(
            "Attach needs at least one of stdin, stdout and stderr",
        ));
    }
    let container = daemon
        .containers
        .get(&request.container_id)
        .ok_or_else(|| {
            LifecycleError::not_found(format!("container {} not found", request.container_id))
        })?;
    let record = container.snapshot();
    if record.state() != crate::container::State::Running {
        return Err(LifecycleError::precondition(format!(
            "container {} is not running",
            record.id
        )));
    }
    let tty = record.process["terminal"].as_bool().unwrap_or(false);
    if request.tty != tty {
        return Err(LifecycleError::invalid(format!(
            "tty is {} but container {} was created with tty {tty}",
            request.tty, record.id
        )));
    }
    let mut request = request;
    request.container_id = record.id.clone();
    streaming(daemon).map(|s| s.url_for(Pending::Attach(request)))
}

/// PortForward: validates the request and returns the URL for it.
pub fn port_forward_url(
    daemon: &Daemon,
    request: cri::PortForwardRequest,
) -> Result<String, LifecycleError> {
    let pod = daemon.pods.get(&request.pod_sandbox_id).ok_or_else(|| {
        LifecycleError::not_found(format!("pod sandbox {} not found", request.pod_sandbox_id))
    })?;
    let record = pod.snapshot();
    if !record.ready {
        return Err(LifecycleError::precondition(format!(
            "pod sandbox {} is not ready",
            record.id
        )));
    }
    if let Some(bad) = request.port.iter().find(|p| !(1..=65535).contains(*p)) {
        return Err(LifecycleError::invalid(format!(
            "port {bad} is not between 1 and 65535"
        )));
    }
    let mut request = request;
    request.pod_sandbox_id = record.id.clone();
    streaming(daemon).map(|s| s.url_for(Pending::PortForward(request)))
}

fn streaming(daemon: &Daemon) -> Result<&Streaming, LifecycleError> {
    daemon
        .streaming
        .get()
        .ok_or_else(|| LifecycleError::retry("the streaming server is not running"))
}
