//! SPDY/3.1 framing as a streaming client sends it: decoding a byte stream never panics
//! and takes whole frames only, and every frame decoded encodes to bytes that decode to
//! the same frame (through a second connection's contexts, in the same order).
//!
//! The input is either raw bytes (the first byte even) or frames (odd) encoded with
//! crisp's encoder, so compressed header blocks are valid from the start and mutations
//! reach the decoder's inflate paths.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use server::streaming::spdy::{Decoder, Encoder, Frame};

#[derive(Arbitrary, Debug)]
enum Spec {
    SynStream(u32, u32, u8, u8, Vec<(String, String)>),
    SynReply(u32, u8, Vec<(String, String)>),
    RstStream(u32, u32),
    Settings(Vec<(u8, u32, u32)>),
    Ping(u32),
    GoAway(u32, u32),
    Headers(u32, u8, Vec<(String, String)>),
    WindowUpdate(u32, u32),
    Data(u32, u8, Vec<u8>),
}

fn frame(spec: Spec) -> Frame {
    match spec {
        Spec::SynStream(stream_id, associated_to, priority, flags, headers) => Frame::SynStream {
            stream_id,
            associated_to,
            priority,
            flags,
            headers,
        },
        Spec::SynReply(stream_id, flags, headers) => Frame::SynReply {
            stream_id,
            flags,
            headers,
        },
        Spec::RstStream(stream_id, status) => Frame::RstStream { stream_id, status },
        Spec::Settings(entries) => Frame::Settings { entries },
        Spec::Ping(id) => Frame::Ping { id },
        Spec::GoAway(last_good_stream_id, status) => Frame::GoAway {
            last_good_stream_id,
            status,
        },
        Spec::Headers(stream_id, flags, headers) => Frame::Headers {
            stream_id,
            flags,
            headers,
        },
        Spec::WindowUpdate(stream_id, delta) => Frame::WindowUpdate { stream_id, delta },
        Spec::Data(stream_id, flags, data) => Frame::Data {
            stream_id,
            flags,
            data,
        },
    }
}

fn stream_of(rest: &[u8]) -> Option<Vec<u8>> {
    let specs = Vec::<Spec>::arbitrary_take_rest(Unstructured::new(rest)).ok()?;
    let mut encoder = Encoder::new();
    let mut out = Vec::new();
    for spec in specs.into_iter().take(16) {
        let mut bytes = Vec::new();
        if encoder.encode(&frame(spec), &mut bytes).is_ok() {
            out.extend_from_slice(&bytes);
        }
    }
    Some(out)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let data = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        let Some(stream) = stream_of(rest) else {
            return;
        };
        stream
    };
    let mut decoder = Decoder::new();
    let mut encoder = Encoder::new();
    let mut echo = Decoder::new();
    let mut at = 0;
    while at < data.len() {
        let (frame, used) = match decoder.decode(&data[at..]) {
            Ok(Some(next)) => next,
            Ok(None) | Err(_) => break,
        };
        assert!(used >= 8 && used <= data.len() - at, "took {used} bytes");
        at += used;
        let mut bytes = Vec::new();
        encoder
            .encode(&frame, &mut bytes)
            .expect("a decoded frame encodes");
        match echo.decode(&bytes) {
            Ok(Some((again, n))) => {
                assert_eq!(n, bytes.len());
                assert_eq!(again, frame);
            }
            other => panic!("{frame:?} encoded as {bytes:?} decodes as {other:?}"),
        }
    }
});
