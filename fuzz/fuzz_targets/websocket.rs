//! WebSocket as a streaming client speaks it: frames read with the limits crispd serves
//! with, then the remote-command channels (binary and base64) and the resize stream's
//! JSON. Nothing panics, and the resize buffer stays within its bound.
//!
//! The input is raw bytes (the first byte's bit 1 clear) or client messages (set) framed
//! and masked here, text ones optionally as a base64 channel, so the channel and resize
//! decoders see well-formed frames from the start.
#![no_main]

use std::io::{Cursor, Read, Write};

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use server::streaming::channel::{self, MAX_RESIZE_PENDING, Resizes, WsInput};
use tungstenite::protocol::{Role, WebSocket};

/// The client's bytes in, the server's replies dropped.
struct Wire<'a> {
    input: Cursor<&'a [u8]>,
}

impl Read for Wire<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.input.read(buf)? {
            0 => Err(std::io::ErrorKind::ConnectionReset.into()),
            n => Ok(n),
        }
    }
}

impl Write for Wire<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[derive(Arbitrary, Debug)]
struct Spec {
    /// 0 continuation, 1 text, 2 binary, 8 close, 9 ping, 10 pong; others are invalid.
    opcode: u8,
    fin: bool,
    mask: [u8; 4],
    /// For text: a channel digit and base64 of `payload` instead of the payload.
    as_base64_channel: Option<u8>,
    payload: Vec<u8>,
}

fn frames_of(rest: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine;
    let specs = Vec::<Spec>::arbitrary_take_rest(Unstructured::new(rest)).ok()?;
    let mut out = Vec::new();
    for spec in specs.into_iter().take(16) {
        let payload = match spec.as_base64_channel {
            Some(channel) if spec.opcode == 1 => {
                let mut text = vec![b'0' + channel % 10];
                text.extend(
                    base64::engine::general_purpose::STANDARD
                        .encode(&spec.payload)
                        .bytes(),
                );
                text
            }
            _ => spec.payload,
        };
        out.push(u8::from(spec.fin) << 7 | (spec.opcode & 0x0f));
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if let Ok(len) = u16::try_from(len) {
            out.push(0x80 | 126);
            out.extend_from_slice(&len.to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(&spec.mask);
        out.extend(
            payload
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ spec.mask[i % 4]),
        );
    }
    Some(out)
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let base64 = flags & 1 == 1;
    let framed;
    let bytes = if flags & 2 == 0 {
        rest
    } else {
        let Some(bytes) = frames_of(rest) else {
            return;
        };
        framed = bytes;
        framed.as_slice()
    };
    let wire = Wire {
        input: Cursor::new(bytes),
    };
    let mut ws = WebSocket::from_raw_socket(wire, Role::Server, Some(channel::ws_config()));
    let mut resizes = Resizes::default();
    while let Ok(message) = ws.read() {
        match channel::ws_input(message, base64) {
            Some(WsInput::Data { channel: 4, data }) => {
                for (w, h) in resizes.push(&data) {
                    let _ = (w, h);
                }
                assert!(resizes.pending() <= MAX_RESIZE_PENDING);
            }
            Some(WsInput::Data { data, .. }) => {
                assert!(data.len() < channel::MAX_WS_MESSAGE);
            }
            Some(WsInput::Close) | None => {}
        }
    }
});
