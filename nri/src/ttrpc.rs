//! ttRPC, containerd's lightweight RPC, as NRI uses it: unary calls only. Each message is
//! a 10-byte header `[length: u32 BE][stream id: u32 BE][type: u8][flags: u8]` and a
//! protobuf payload, a [`Request`] from the client or a [`Response`] from the server.
//! Clients number their calls 1, 3, 5, ... and a Go server refuses one that does not
//! increase, so requests go out in the order their ids were given.

use crate::Error;

/// A message's header.
pub const HEADER: usize = 10;
/// The largest payload a message may carry.
pub const MAX_MESSAGE: usize = 4 << 20;

/// A request: opens a call.
pub const TYPE_REQUEST: u8 = 1;
/// A response: ends a call.
pub const TYPE_RESPONSE: u8 = 2;

/// gRPC's codes, which ttRPC statuses use.
pub mod code {
    /// Success.
    pub const OK: i32 = 0;
    /// A failure the handler did not classify (a plain error from a Go plugin).
    pub const UNKNOWN: i32 = 2;
    /// A request that cannot be right.
    pub const INVALID_ARGUMENT: i32 = 3;
    /// The call ran out of time.
    pub const DEADLINE_EXCEEDED: i32 = 4;
    /// A message over the size limit.
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    /// A service or method the server does not have.
    pub const UNIMPLEMENTED: i32 = 12;
    /// The server failed.
    pub const INTERNAL: i32 = 13;
}

/// `ttrpc.Request`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Request {
    /// The service's full name (`nri.pkg.api.v1alpha1.Plugin`).
    #[prost(string, tag = "1")]
    pub service: String,
    /// The method's name (`Configure`).
    #[prost(string, tag = "2")]
    pub method: String,
    /// The method's request message.
    #[prost(bytes = "vec", tag = "3")]
    pub payload: Vec<u8>,
    /// The caller's deadline from now, ns; 0 for none.
    #[prost(int64, tag = "4")]
    pub timeout_nano: i64,
    /// Key-value metadata.
    #[prost(message, repeated, tag = "5")]
    pub metadata: Vec<KeyValue>,
}

/// `ttrpc.KeyValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyValue {
    /// The key.
    #[prost(string, tag = "1")]
    pub key: String,
    /// The value.
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `ttrpc.Response`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Response {
    /// Absent on success.
    #[prost(message, optional, tag = "1")]
    pub status: Option<Status>,
    /// The method's response message.
    #[prost(bytes = "vec", tag = "2")]
    pub payload: Vec<u8>,
}

/// `google.rpc.Status` (its `details` are not read).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Status {
    /// A gRPC code ([`code`]).
    #[prost(int32, tag = "1")]
    pub code: i32,
    /// What went wrong, for a person.
    #[prost(string, tag = "2")]
    pub message: String,
}

/// One message: its call's stream id, type, flags and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The call it belongs to.
    pub stream_id: u32,
    /// [`TYPE_REQUEST`] or [`TYPE_RESPONSE`] (NRI uses no other).
    pub kind: u8,
    /// 0 for unary calls.
    pub flags: u8,
    /// The encoded [`Request`] or [`Response`].
    pub payload: Vec<u8>,
}

impl Message {
    /// The message as it goes on its stream: header, then payload.
    pub fn encode(&self) -> Result<Vec<u8>, Error> {
        if self.payload.len() > MAX_MESSAGE {
            return Err(Error::TooLarge {
                size: self.payload.len(),
                limit: MAX_MESSAGE,
            });
        }
        let mut out = Vec::with_capacity(HEADER + self.payload.len());
        // At most MAX_MESSAGE (checked above), which fits in a u32.
        out.extend_from_slice(&(self.payload.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.stream_id.to_be_bytes());
        out.push(self.kind);
        out.push(self.flags);
        out.extend_from_slice(&self.payload);
        Ok(out)
    }
}

/// Splits one stream's bytes into messages.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    /// Bytes of the stream, as they came.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole message. One announcing more than [`MAX_MESSAGE`] is refused
    /// before it is buffered.
    pub fn next_message(&mut self) -> Result<Option<Message>, Error> {
        if self.buf.len() < HEADER {
            return Ok(None);
        }
        let (len, stream_id) = (
            crate::be_u32(&self.buf, 0) as usize,
            crate::be_u32(&self.buf, 4),
        );
        if len > MAX_MESSAGE {
            return Err(Error::TooLarge {
                size: len,
                limit: MAX_MESSAGE,
            });
        }
        if self.buf.len() < HEADER + len {
            return Ok(None);
        }
        let message = Message {
            stream_id,
            kind: self.buf[8],
            flags: self.buf[9],
            payload: self.buf[HEADER..HEADER + len].to_vec(),
        };
        self.buf.drain(..HEADER + len);
        Ok(Some(message))
    }
}

/// Hands out a client's stream ids: 1, 3, 5, ...
#[derive(Debug)]
pub struct StreamIds {
    next: u32,
}

impl Default for StreamIds {
    fn default() -> Self {
        Self { next: 1 }
    }
}

impl StreamIds {
    /// The next id; `None` from the last odd id below `u32::MAX - 1` on (the connection
    /// must then end).
    pub fn next_id(&mut self) -> Option<u32> {
        let id = self.next;
        self.next = self.next.checked_add(2)?;
        Some(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    /// The bytes of a plugin named "test", index "00", registering (worked out from the
    /// protocol's definition: see docs/nri-protocol.md, 2.5).
    #[test]
    fn a_registration_encodes_as_the_go_client_sends_it() {
        let register = [
            0x0a, 0x04, b't', b'e', b's', b't', 0x12, 0x02, b'0', b'0', 0x1a, 0x07, b'v', b'0',
            b'.', b'1', b'2', b'.', b'1',
        ];
        let request = Request {
            service: "nri.pkg.api.v1alpha1.Runtime".into(),
            method: "RegisterPlugin".into(),
            payload: register.to_vec(),
            timeout_nano: 5_000_000_000,
            metadata: Vec::new(),
        };
        let message = Message {
            stream_id: 1,
            kind: TYPE_REQUEST,
            flags: 0,
            payload: request.encode_to_vec(),
        };
        let bytes = message.encode().expect("encode");
        assert_eq!(&bytes[..10], &[0, 0, 0, 0x49, 0, 0, 0, 1, 1, 0]);
        assert_eq!(
            &bytes[bytes.len() - 6..],
            &[0x20, 0x80, 0xe4, 0x97, 0xd0, 0x12]
        );

        let mut decoder = Decoder::default();
        decoder.push(&bytes[..7]);
        assert!(decoder.next_message().expect("ok").is_none());
        decoder.push(&bytes[7..]);
        let back = decoder.next_message().expect("ok").expect("whole");
        assert_eq!(back, message);
        assert_eq!(Request::decode(back.payload.as_slice()).ok(), Some(request));
    }

    #[test]
    fn an_error_response_carries_its_status_and_success_none() {
        let failed = Response {
            status: Some(Status {
                code: code::UNKNOWN,
                message: "boom".into(),
            }),
            payload: Vec::new(),
        };
        assert_eq!(
            failed.encode_to_vec(),
            [0x0a, 0x08, 0x08, 0x02, 0x12, 0x04, b'b', b'o', b'o', b'm']
        );
        let ok = Response::default();
        assert!(ok.encode_to_vec().is_empty());
    }

    #[test]
    fn client_ids_are_odd_and_increase() {
        let mut ids = StreamIds::default();
        assert_eq!(
            (ids.next_id(), ids.next_id(), ids.next_id()),
            (Some(1), Some(3), Some(5))
        );
        let mut last = StreamIds { next: u32::MAX };
        assert_eq!(last.next_id(), None);
    }

    #[test]
    fn an_oversized_message_is_refused() {
        let mut decoder = Decoder::default();
        decoder.push(&[0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 1, 1, 0]);
        assert!(matches!(
            decoder.next_message(),
            Err(Error::TooLarge { .. })
        ));
    }
}
