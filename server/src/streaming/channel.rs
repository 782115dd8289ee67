//! The pure codecs of the streaming channels, apart from their transports so they can be
//! tested and fuzzed alone: a WebSocket message of the remote-command protocol as a
//! (channel, bytes) pair, terminal sizes out of a resize stream, and the bounds every
//! WebSocket connection gets.

use base64::Engine;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Largest WebSocket message (and frame) accepted from a client. client-go writes stdin
/// and the port-forward tunnel's SPDY frames in pieces of 32 KiB; tungstenite's own
/// default (64 MiB) would let one client hold that much of crispd's memory.
pub const MAX_WS_MESSAGE: usize = 4 << 20;

/// Most bytes of an unfinished terminal size kept while waiting for its end. A size is
/// about 30 bytes of JSON; anything longer is garbage and is dropped.
pub const MAX_RESIZE_PENDING: usize = 4096;

/// The configuration of every WebSocket crispd serves.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_WS_MESSAGE))
        .max_frame_size(Some(MAX_WS_MESSAGE))
}

/// What one client message of the remote-command protocol over WebSocket carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsInput {
    /// Bytes for a channel (0 stdin, 4 resize, 255 close a channel in v5).
    Data {
        /// The channel number.
        channel: u8,
        /// Its bytes, the channel byte removed.
        data: Vec<u8>,
    },
    /// The client closed the connection.
    Close,
}

/// Decodes a client message: binary messages carry the channel in their first byte; with
/// a base64 protocol, text messages carry it as an ASCII digit before base64 data. Other
/// messages (pings, empty or malformed ones) carry nothing: `None`.
pub fn ws_input(message: Message, base64: bool) -> Option<WsInput> {
    let (channel, data) = match message {
        Message::Binary(b) => {
            let (&channel, data) = b.split_first()?;
            (channel, data.to_vec())
        }
        Message::Text(t) if base64 => {
            let (&digit, encoded) = t.as_bytes().split_first()?;
            if !digit.is_ascii_digit() {
                return None;
            }
            let data = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .ok()?;
            (digit - b'0', data)
        }
        Message::Close(_) => return Some(WsInput::Close),
        _ => return None,
    };
    Some(WsInput::Data { channel, data })
}

/// Terminal sizes out of a resize stream: JSON objects `{"Width":w,"Height":h}`, possibly
/// split across messages. What does not parse is dropped, and at most
/// [`MAX_RESIZE_PENDING`] bytes wait for the rest of an object.
#[derive(Debug, Default)]
pub struct Resizes {
    pending: Vec<u8>,
}

impl Resizes {
    /// Adds `data` and returns the (width, height) of every size it completes; a value
    /// missing or out of range reads as 0.
    pub fn push(&mut self, data: &[u8]) -> Vec<(u16, u16)> {
        self.pending.extend_from_slice(data);
        let mut out = Vec::new();
        let mut stream =
            serde_json::Deserializer::from_slice(&self.pending).into_iter::<serde_json::Value>();
        let mut used = 0;
        let mut garbage = false;
        loop {
            match stream.next() {
                Some(Ok(size)) => {
                    used = stream.byte_offset();
                    let dim = |k: &str| {
                        size[k]
                            .as_u64()
                            .and_then(|v| u16::try_from(v).ok())
                            .unwrap_or(0)
                    };
                    out.push((dim("Width"), dim("Height")));
                }
                Some(Err(e)) if !e.is_eof() => {
                    garbage = true;
                    break;
                }
                _ => break,
            }
        }
        if garbage || self.pending.len() - used > MAX_RESIZE_PENDING {
            self.pending.clear();
        } else {
            self.pending.drain(..used);
        }
        out
    }

    /// Bytes waiting for the rest of a size.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_split_across_messages() {
        let mut r = Resizes::default();
        assert!(r.push(br#"{"Width":80,"#).is_empty());
        assert_eq!(r.push(br#""Height":24}{"Width":1"#), vec![(80, 24)]);
        assert_eq!(r.push(b"00,\"Height\":70000}"), vec![(100, 0)]);
        assert_eq!(r.pending(), 0);
    }

    #[test]
    fn garbage_is_dropped_and_later_sizes_still_parse() {
        let mut r = Resizes::default();
        assert!(r.push(b"}}not json").is_empty());
        assert_eq!(r.pending(), 0);
        assert_eq!(r.push(br#"{"Width":3,"Height":4}"#), vec![(3, 4)]);
    }

    #[test]
    fn an_endless_object_is_bounded() {
        let mut r = Resizes::default();
        for _ in 0..1000 {
            r.push(b"[[[[[[[[[[");
            assert!(r.pending() <= MAX_RESIZE_PENDING);
        }
    }

    #[test]
    fn ws_messages() {
        assert_eq!(
            ws_input(Message::binary(vec![0, b'h', b'i']), false),
            Some(WsInput::Data {
                channel: 0,
                data: b"hi".to_vec()
            })
        );
        assert_eq!(ws_input(Message::binary(Vec::new()), false), None);
        assert_eq!(ws_input(Message::text("0aGk="), false), None);
        assert_eq!(
            ws_input(Message::text("4aGk="), true),
            Some(WsInput::Data {
                channel: 4,
                data: b"hi".to_vec()
            })
        );
        assert_eq!(ws_input(Message::text("x"), true), None);
        assert_eq!(ws_input(Message::text("0!!"), true), None);
        assert_eq!(ws_input(Message::Close(None), false), Some(WsInput::Close));
    }
}
