//! A SPDY connection, server side: the client opens streams, crisp accepts each at once
//! (SYN_REPLY), hands it over with its headers and a channel of its data, and writes data
//! and FINs back. PINGs are answered. When the client goes away every stream's data
//! channel closes, and `closed` fires, so the work behind the streams can stop.

use std::collections::HashMap;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use super::spdy::{Decoder, Encoder, FLAG_FIN, Frame, Headers};

/// A stream the client opened.
#[derive(Debug)]
pub struct Incoming {
    /// Its ID.
    pub id: u32,
    /// Its headers (`streamtype`, `port`, `requestid`).
    pub headers: Headers,
    /// Its data; closed on the client's FIN or RST_STREAM, or when the connection ends.
    pub data: mpsc::UnboundedReceiver<Vec<u8>>,
}

enum Out {
    Frame(Frame),
    Close,
}

/// Writes to the connection; cheap to clone.
#[derive(Clone)]
pub struct Sender {
    tx: mpsc::UnboundedSender<Out>,
}

impl Sender {
    /// Sends data on a stream (in frames of at most 32 KiB).
    pub fn data(&self, stream_id: u32, data: &[u8]) {
        for chunk in data.chunks(32 * 1024) {
            let _ = self.tx.send(Out::Frame(Frame::Data {
                stream_id,
                flags: 0,
                data: chunk.to_vec(),
            }));
        }
    }

    /// Ends crisp's half of a stream.
    pub fn fin(&self, stream_id: u32) {
        let _ = self.tx.send(Out::Frame(Frame::Data {
            stream_id,
            flags: FLAG_FIN,
            data: Vec::new(),
        }));
    }

    /// Aborts a stream.
    pub fn reset(&self, stream_id: u32) {
        let _ = self.tx.send(Out::Frame(Frame::RstStream {
            stream_id,
            status: 5,
        }));
    }

    /// Flushes what was sent and closes the connection.
    pub fn close(&self) {
        let _ = self.tx.send(Out::Close);
    }
}

/// The connection's handles: writing, streams as they open, and whether the client left.
pub struct Session {
    /// Writes.
    pub sender: Sender,
    /// Streams, in the order the client opened them.
    pub incoming: mpsc::UnboundedReceiver<Incoming>,
    /// Becomes `true` when the connection is gone (client hung up, or closed by us).
    pub closed: watch::Receiver<bool>,
}

/// Starts serving SPDY on `io` (after the HTTP upgrade).
pub fn start<IO>(io: IO) -> Session
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(io);
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Out>();
    let (in_tx, in_rx) = mpsc::unbounded_channel();
    let (closed_tx, closed_rx) = watch::channel(false);
    let closed_tx = std::sync::Arc::new(closed_tx);
    let sender = Sender { tx: out_tx };

    let done = std::sync::Arc::clone(&closed_tx);
    tokio::spawn(async move {
        let mut encoder = Encoder::new();
        let mut buf = Vec::new();
        while let Some(out) = out_rx.recv().await {
            match out {
                Out::Frame(frame) => {
                    buf.clear();
                    if let Err(e) = encoder.encode(&frame, &mut buf) {
                        tracing::debug!(error = %e, "SPDY encode");
                        break;
                    }
                    if writer.write_all(&buf).await.is_err() {
                        break;
                    }
                }
                Out::Close => break,
            }
        }
        let _ = writer.flush().await;
        let _ = writer.shutdown().await;
        let _ = done.send(true);
    });

    let replies = sender.clone();
    let mut closed_by_us = closed_rx.clone();
    tokio::spawn(async move {
        let mut decoder = Decoder::new();
        let mut streams: HashMap<u32, mpsc::UnboundedSender<Vec<u8>>> = HashMap::new();
        let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
        let mut chunk = vec![0u8; 64 * 1024];
        'read: loop {
            let n = tokio::select! {
                n = reader.read(&mut chunk) => n,
                _ = closed_by_us.changed() => break 'read,
            };
            match n {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            loop {
                let (frame, used) = match decoder.decode(&buf) {
                    Ok(Some(decoded)) => decoded,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "SPDY decode; closing the connection");
                        break 'read;
                    }
                };
                buf.drain(..used);
                match frame {
                    Frame::SynStream {
                        stream_id,
                        flags,
                        headers,
                        ..
                    } => {
                        let _ = replies.tx.send(Out::Frame(Frame::SynReply {
                            stream_id,
                            flags: 0,
                            headers: Vec::new(),
                        }));
                        let (tx, rx) = mpsc::unbounded_channel();
                        if flags & FLAG_FIN == 0 {
                            streams.insert(stream_id, tx);
                        }
                        let _ = in_tx.send(Incoming {
                            id: stream_id,
                            headers,
                            data: rx,
                        });
                    }
                    Frame::Data {
                        stream_id,
                        flags,
                        data,
                    } => {
                        if let Some(tx) = streams.get(&stream_id)
                            && !data.is_empty()
                        {
                            let _ = tx.send(data);
                        }
                        if flags & FLAG_FIN != 0 {
                            streams.remove(&stream_id);
                        }
                    }
                    Frame::Headers {
                        stream_id, flags, ..
                    } if flags & FLAG_FIN != 0 => {
                        streams.remove(&stream_id);
                    }
                    Frame::RstStream { stream_id, .. } => {
                        streams.remove(&stream_id);
                    }
                    Frame::Ping { id } => {
                        let _ = replies.tx.send(Out::Frame(Frame::Ping { id }));
                    }
                    Frame::GoAway { .. } => break 'read,
                    _ => {}
                }
            }
        }
        drop(streams);
        let _ = closed_tx.send(true);
    });

    Session {
        sender,
        incoming: in_rx,
        closed: closed_rx,
    }
}
