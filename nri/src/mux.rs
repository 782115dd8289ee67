//! NRI's multiplexer: one connection between the runtime and a plugin carries two byte
//! streams, each cut into frames of `[connection id: u32 BE][length: u32 BE][payload]`.
//! Connection 1 carries the plugin's service (the runtime calls it), connection 2 the
//! runtime's (the plugin calls it). There is no handshake and no frame that opens or
//! closes a stream; frames of a stream nobody reads are dropped.

use crate::Error;

/// The stream on which the runtime is the ttRPC client of the plugin's service.
pub const PLUGIN_SERVICE: u32 = 1;
/// The stream on which the runtime serves its own service to the plugin.
pub const RUNTIME_SERVICE: u32 = 2;

/// A frame's header: connection id and payload length.
pub const HEADER: usize = 8;
/// The largest payload a frame carries: one whole ttRPC message.
pub const MAX_PAYLOAD: usize = crate::ttrpc::HEADER + crate::ttrpc::MAX_MESSAGE;
/// What a Go peer reads at once (its ttRPC reader's buffer). A longer frame is taken only
/// as the rest of a message whose beginning came in a frame of exactly this size, so a
/// message is sent as Go sends it: whole if it fits, else this much and then the rest.
const GO_READ_BUFFER: usize = 4096;

/// Appends the frames of `message` (one ttRPC message, header included) on stream `conn`
/// to `out`, cut as a Go peer can read them.
pub fn frame(conn: u32, message: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
    if message.len() > MAX_PAYLOAD {
        return Err(Error::TooLarge {
            size: message.len(),
            limit: MAX_PAYLOAD,
        });
    }
    let (first, rest) = message.split_at(message.len().min(GO_READ_BUFFER));
    for part in [first, rest] {
        if part.is_empty() {
            continue;
        }
        out.extend_from_slice(&conn.to_be_bytes());
        // At most MAX_PAYLOAD (checked above), which fits in a u32.
        out.extend_from_slice(&(part.len() as u32).to_be_bytes());
        out.extend_from_slice(part);
    }
    Ok(())
}

/// Splits the bytes read from a connection into frames.
#[derive(Debug, Default)]
pub struct Demux {
    buf: Vec<u8>,
}

impl Demux {
    /// Bytes as read from the connection.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame: its stream and payload. A frame longer than any message is
    /// refused before it is buffered (a peer announcing gigabytes gets no memory for it).
    pub fn next_frame(&mut self) -> Result<Option<(u32, Vec<u8>)>, Error> {
        if self.buf.len() < HEADER {
            return Ok(None);
        }
        let (conn, len) = (
            crate::be_u32(&self.buf, 0),
            crate::be_u32(&self.buf, 4) as usize,
        );
        if len > MAX_PAYLOAD {
            return Err(Error::TooLarge {
                size: len,
                limit: MAX_PAYLOAD,
            });
        }
        if self.buf.len() < HEADER + len {
            return Ok(None);
        }
        let payload = self.buf[HEADER..HEADER + len].to_vec();
        self.buf.drain(..HEADER + len);
        Ok(Some((conn, payload)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_message_is_one_frame_and_a_large_one_two() {
        let mut out = Vec::new();
        frame(RUNTIME_SERVICE, b"hello", &mut out).expect("frame");
        assert_eq!(out, b"\0\0\0\x02\0\0\0\x05hello");

        let big = vec![7u8; 10_000];
        let mut out = Vec::new();
        frame(PLUGIN_SERVICE, &big, &mut out).expect("frame");
        let mut demux = Demux::default();
        demux.push(&out);
        let (c1, p1) = demux.next_frame().expect("ok").expect("first");
        let (c2, p2) = demux.next_frame().expect("ok").expect("second");
        assert_eq!((c1, p1.len(), c2, p2.len()), (1, 4096, 1, 10_000 - 4096));
        assert!(demux.next_frame().expect("ok").is_none());
    }

    #[test]
    fn frames_come_out_whole_whatever_the_reads() {
        let mut out = Vec::new();
        frame(1, b"one", &mut out).expect("frame");
        frame(2, b"two!", &mut out).expect("frame");
        let mut demux = Demux::default();
        let mut got = Vec::new();
        for byte in &out {
            demux.push(std::slice::from_ref(byte));
            while let Some(f) = demux.next_frame().expect("ok") {
                got.push(f);
            }
        }
        assert_eq!(got, vec![(1, b"one".to_vec()), (2, b"two!".to_vec())]);
    }

    #[test]
    fn an_oversized_frame_is_refused_before_it_is_buffered() {
        let mut demux = Demux::default();
        demux.push(&[0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(demux.next_frame(), Err(Error::TooLarge { .. })));
        assert!(frame(1, &vec![0; MAX_PAYLOAD + 1], &mut Vec::new()).is_err());
    }
}
