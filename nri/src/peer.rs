//! One end of an NRI connection: the multiplexed trunk, a ttRPC client on one stream and
//! a ttRPC server on the other. The runtime is the client on stream 1 and serves on
//! stream 2; a plugin the other way round, so both ends are this type.
//!
//! Calls are answered as they come (the server runs each request in its own task), and
//! answers are matched to calls by stream id. When the connection ends, every call
//! waiting on it fails with [`CallError::Closed`] and [`Peer::closed`] returns.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{oneshot, watch};

use crate::ttrpc::{self, Decoder, Message, Request, Response, Status, StreamIds};

/// What a served method answers: the encoded reply, or a status.
pub type Reply = Result<Vec<u8>, Status>;

/// Serves one call: the method's name and its encoded request.
pub type Handler =
    Arc<dyn Fn(String, Vec<u8>) -> Pin<Box<dyn Future<Output = Reply> + Send>> + Send + Sync>;

/// How a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The connection ended before the answer came.
    #[error("the connection is closed")]
    Closed,
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The peer answered with an error.
    #[error("{message}")]
    Status {
        /// Its gRPC code.
        code: i32,
        /// Its message.
        message: String,
    },
    /// The request could not be sent or the answer not read.
    #[error("{0}")]
    Protocol(String),
}

impl CallError {
    /// The peer does not have the method.
    pub fn is_unimplemented(&self) -> bool {
        matches!(self, Self::Status { code, .. } if *code == ttrpc::code::UNIMPLEMENTED)
    }
}

struct Writer {
    half: OwnedWriteHalf,
    ids: StreamIds,
}

type Pending = Arc<Mutex<HashMap<u32, oneshot::Sender<Response>>>>;

fn pending_map(
    pending: &Pending,
) -> std::sync::MutexGuard<'_, HashMap<u32, oneshot::Sender<Response>>> {
    match pending.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// One end of a connection.
pub struct Peer {
    writer: Arc<tokio::sync::Mutex<Writer>>,
    pending: Pending,
    client_conn: u32,
    closed: watch::Receiver<bool>,
    closed_tx: Arc<watch::Sender<bool>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// What the reading task needs.
struct Reading {
    client_conn: u32,
    server_conn: u32,
    service: &'static str,
    handler: Handler,
    writer: Arc<tokio::sync::Mutex<Writer>>,
    pending: Pending,
}

impl Peer {
    /// Runs the protocol on `stream`: calls go out on `client_conn`, and `handler` serves
    /// `service` on `server_conn`. Bytes that come before anyone calls are kept.
    pub fn start(
        stream: UnixStream,
        client_conn: u32,
        server_conn: u32,
        service: &'static str,
        handler: Handler,
    ) -> Self {
        let (read, write) = stream.into_split();
        let writer = Arc::new(tokio::sync::Mutex::new(Writer {
            half: write,
            ids: StreamIds::default(),
        }));
        let pending: Pending = Arc::default();
        let (closed_tx, closed) = watch::channel(false);
        let closed_tx = Arc::new(closed_tx);
        let closing = Arc::clone(&closed_tx);
        let reading = Reading {
            client_conn,
            server_conn,
            service,
            handler,
            writer: Arc::clone(&writer),
            pending: Arc::clone(&pending),
        };
        let reader = tokio::spawn(async move {
            let pending = Arc::clone(&reading.pending);
            if let Err(e) = read_loop(read, reading).await {
                tracing::debug!(error = %e, "NRI connection ended");
            }
            // Dropping the senders fails every call still waiting.
            pending_map(&pending).clear();
            let _ = closing.send(true);
        });
        Self {
            writer,
            pending,
            client_conn,
            closed,
            closed_tx,
            reader,
        }
    }

    /// Calls `service`/`method` with `request` (encoded), telling the peer it has
    /// `timeout`, and waits for the encoded answer.
    pub async fn call(
        &self,
        service: &str,
        method: &str,
        request: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, CallError> {
        if self.is_closed() {
            return Err(CallError::Closed);
        }
        let body = Request {
            service: service.to_owned(),
            method: method.to_owned(),
            payload: request,
            timeout_nano: i64::try_from(timeout.as_nanos()).unwrap_or(i64::MAX),
            metadata: Vec::new(),
        }
        .encode_to_vec();
        let (tx, rx) = oneshot::channel();
        let id = {
            // The id is taken and the request written under one lock: a Go server refuses
            // ids that do not increase.
            let mut writer = self.writer.lock().await;
            let id = writer
                .ids
                .next_id()
                .ok_or_else(|| CallError::Protocol("stream ids are used up".into()))?;
            pending_map(&self.pending).insert(id, tx);
            // The reader may have ended (and failed every waiting call) just before.
            if self.is_closed() {
                pending_map(&self.pending).remove(&id);
                return Err(CallError::Closed);
            }
            let message = Message {
                stream_id: id,
                kind: ttrpc::TYPE_REQUEST,
                flags: 0,
                payload: body,
            };
            if let Err(e) =
                write_message(&mut writer.half, self.client_conn, &message, timeout).await
            {
                pending_map(&self.pending).remove(&id);
                return Err(e);
            }
            id
        };
        // The peer is told `timeout`; a peer that answers right at that deadline (a Go
        // plugin whose hook gives up when its context ends) is on time, so its answer
        // gets a little longer to travel.
        let grace = (timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
        let response = match tokio::time::timeout(timeout + grace, rx).await {
            Ok(Ok(response)) => response,
            Ok(Err(_)) => return Err(CallError::Closed),
            Err(_) => {
                pending_map(&self.pending).remove(&id);
                return Err(CallError::Timeout(timeout));
            }
        };
        match response.status {
            Some(status) if status.code != ttrpc::code::OK => Err(CallError::Status {
                code: status.code,
                message: status.message,
            }),
            _ => Ok(response.payload),
        }
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Returns once the connection has ended.
    pub async fn closed(&self) {
        let mut closed = self.closed.clone();
        let _ = closed.wait_for(|c| *c).await;
    }

    /// Ends the connection: the peer reads its end.
    pub async fn close(&self) {
        let mut writer = self.writer.lock().await;
        let _ = writer.half.shutdown().await;
        self.reader.abort();
        pending_map(&self.pending).clear();
        let _ = self.closed_tx.send(true);
    }
}

/// How long an answer to the peer's call may take to be written: a peer that stops
/// reading must not hold the connection's writer for ever.
const ANSWER_WRITE: Duration = Duration::from_secs(10);

/// Writes `message` on stream `conn`, giving up after `within` (the peer stopped
/// reading).
async fn write_message(
    half: &mut OwnedWriteHalf,
    conn: u32,
    message: &Message,
    within: Duration,
) -> Result<(), CallError> {
    let bytes = message
        .encode()
        .map_err(|e| CallError::Protocol(e.to_string()))?;
    let mut framed = Vec::with_capacity(bytes.len() + 2 * crate::mux::HEADER);
    crate::mux::frame(conn, &bytes, &mut framed).map_err(|e| CallError::Protocol(e.to_string()))?;
    match tokio::time::timeout(within, half.write_all(&framed)).await {
        Ok(written) => {
            written.map_err(|e| CallError::Protocol(format!("writing to the connection: {e}")))
        }
        Err(_) => Err(CallError::Timeout(within)),
    }
}

async fn read_loop(mut read: OwnedReadHalf, reading: Reading) -> Result<(), crate::Error> {
    let mut demux = crate::mux::Demux::default();
    let (mut answers, mut requests) = (Decoder::default(), Decoder::default());
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match read.read(&mut buf).await {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) => return Err(crate::Error::Io(e)),
        };
        demux.push(&buf[..n]);
        while let Some((conn, payload)) = demux.next_frame()? {
            if conn == reading.client_conn {
                answers.push(&payload);
                while let Some(message) = answers.next_message()? {
                    if message.kind != ttrpc::TYPE_RESPONSE {
                        continue;
                    }
                    let waiting = pending_map(&reading.pending).remove(&message.stream_id);
                    if let Some(waiting) = waiting {
                        let response = Response::decode(message.payload.as_slice())
                            .map_err(|e| crate::Error::Decode(e.to_string()))?;
                        let _ = waiting.send(response);
                    }
                }
            } else if conn == reading.server_conn {
                requests.push(&payload);
                while let Some(message) = requests.next_message()? {
                    if message.kind == ttrpc::TYPE_REQUEST {
                        serve(&reading, message);
                    }
                }
            }
            // Frames of any other stream are dropped, as NRI's multiplexer drops them.
        }
    }
}

/// Answers one request in its own task.
fn serve(reading: &Reading, message: Message) {
    let handler = Arc::clone(&reading.handler);
    let writer = Arc::clone(&reading.writer);
    let (service, conn) = (reading.service, reading.server_conn);
    tokio::spawn(async move {
        let reply = match Request::decode(message.payload.as_slice()) {
            Err(e) => Err(Status {
                code: ttrpc::code::INTERNAL,
                message: format!("ttrpc: error unmarshalling the request: {e}"),
            }),
            Ok(request) if request.service != service => Err(Status {
                code: ttrpc::code::UNIMPLEMENTED,
                message: format!("service {}", request.service),
            }),
            Ok(request) => handler(request.method, request.payload).await,
        };
        let response = match reply {
            Ok(payload) => Response {
                status: None,
                payload,
            },
            Err(status) => Response {
                status: Some(status),
                payload: Vec::new(),
            },
        };
        let answer = Message {
            stream_id: message.stream_id,
            kind: ttrpc::TYPE_RESPONSE,
            flags: 0,
            payload: response.encode_to_vec(),
        };
        let mut writer = writer.lock().await;
        if let Err(e) = write_message(&mut writer.half, conn, &answer, ANSWER_WRITE).await {
            tracing::debug!(error = %e, "answering an NRI call");
        }
    });
}
