//! SPDY/3.1 framing, as Kubernetes' streaming clients (client-go's SPDY executor, crictl,
//! kubectl through the API server) speak it after an HTTP `Upgrade: SPDY/3.1`.
//!
//! Frames: control frames (SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY,
//! HEADERS, WINDOW_UPDATE) and data frames. Header blocks are compressed with zlib, primed
//! with the dictionary from the SPDY/3 specification, one compression context per
//! direction for the whole connection, each block ending in a sync flush. Flow control
//! (WINDOW_UPDATE) is read and ignored, as the Kubernetes clients' implementation does.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The protocol version in every control frame.
pub const VERSION: u16 = 3;
/// FIN on a data frame or a SYN/HEADERS frame: the sender's half of the stream ends.
pub const FLAG_FIN: u8 = 0x01;
/// Largest frame payload accepted (the 24-bit length allows 16 MiB).
const MAX_PAYLOAD: usize = 1 << 24;
/// Largest uncompressed header block accepted.
const MAX_HEADER_BLOCK: usize = 256 * 1024;

/// Header names and values of a SYN_STREAM, SYN_REPLY or HEADERS frame.
pub type Headers = Vec<(String, String)>;

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Opens a stream.
    SynStream {
        /// The new stream's ID.
        stream_id: u32,
        /// The stream it belongs to (0 for none).
        associated_to: u32,
        /// Priority (0 highest, 7 lowest).
        priority: u8,
        /// FIN or UNIDIRECTIONAL (0x02).
        flags: u8,
        /// Its headers (`streamtype`, `port`, ...).
        headers: Headers,
    },
    /// Accepts a stream.
    SynReply {
        /// The stream.
        stream_id: u32,
        /// FIN.
        flags: u8,
        /// Headers.
        headers: Headers,
    },
    /// Aborts a stream.
    RstStream {
        /// The stream.
        stream_id: u32,
        /// Why (1 PROTOCOL_ERROR, 5 CANCEL, ...).
        status: u32,
    },
    /// Connection settings (ignored).
    Settings {
        /// (flags, id, value) entries.
        entries: Vec<(u8, u32, u32)>,
    },
    /// A liveness probe; answered with the same ID.
    Ping {
        /// Its ID.
        id: u32,
    },
    /// The sender is done with the connection.
    GoAway {
        /// The last stream it accepted.
        last_good_stream_id: u32,
        /// Why (0 OK).
        status: u32,
    },
    /// More headers for a stream.
    Headers {
        /// The stream.
        stream_id: u32,
        /// FIN.
        flags: u8,
        /// Headers.
        headers: Headers,
    },
    /// Flow control (ignored).
    WindowUpdate {
        /// The stream (0 for the connection).
        stream_id: u32,
        /// Bytes added to the window.
        delta: u32,
    },
    /// Stream data.
    Data {
        /// The stream.
        stream_id: u32,
        /// FIN.
        flags: u8,
        /// The bytes.
        data: Vec<u8>,
    },
}

/// A malformed frame or header block.
#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    /// The frame breaks the protocol.
    #[error("SPDY protocol error: {0}")]
    Protocol(String),
    /// The header block does not inflate.
    #[error("SPDY header block: {0}")]
    Compression(String),
}

/// The zlib dictionary of SPDY/3 (section 2.6.10.1): header names, each preceded by its
/// length as a 32-bit big-endian integer, then common values.
pub fn dictionary() -> Vec<u8> {
    const NAMES: &[&str] = &[
        "options",
        "head",
        "post",
        "put",
        "delete",
        "trace",
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "connection",
        "content-base",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-md5",
        "content-range",
        "content-type",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "retry-after",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "warning",
        "www-authenticate",
        "method",
        "get",
        "status",
        "200 OK",
        "version",
        "HTTP/1.1",
        "url",
        "public",
        "set-cookie",
        "keep-alive",
        "origin",
    ];
    const TAIL: &str = concat!(
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417",
        "502504505203 Non-Authoritative Information204 No Content301 Moved Permanently",
        "400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error",
        "501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct ",
        "Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,",
        "image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,",
        "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=",
        "iso-8859-1,utf-,*,enq=0."
    );
    let mut out = Vec::with_capacity(1424);
    for name in NAMES {
        out.extend_from_slice(&(name.len() as u32).to_be_bytes());
        out.extend_from_slice(name.as_bytes());
    }
    out.extend_from_slice(TAIL.as_bytes());
    out
}

/// Writes frames: owns the sending direction's compression context.
pub struct Encoder {
    deflate: Compress,
}

impl Default for Encoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Encoder {
    /// A fresh context.
    pub fn new() -> Self {
        let mut deflate = Compress::new(Compression::default(), true);
        // Setting a dictionary on a fresh stream cannot fail.
        let _ = deflate.set_dictionary(&dictionary());
        Self { deflate }
    }

    fn header_block(&mut self, headers: &Headers) -> Result<Vec<u8>, SpdyError> {
        let mut raw = Vec::new();
        raw.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        for (name, value) in headers {
            raw.extend_from_slice(&(name.len() as u32).to_be_bytes());
            raw.extend_from_slice(name.to_ascii_lowercase().as_bytes());
            raw.extend_from_slice(&(value.len() as u32).to_be_bytes());
            raw.extend_from_slice(value.as_bytes());
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut input = &raw[..];
        loop {
            out.reserve(256);
            let before_in = self.deflate.total_in();
            self.deflate
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .map_err(|e| SpdyError::Compression(e.to_string()))?;
            let used = (self.deflate.total_in() - before_in) as usize;
            input = &input[used..];
            // A sync flush is complete once all input is taken and room was left over.
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }

    /// Appends the wire form of `frame` to `out`.
    pub fn encode(&mut self, frame: &Frame, out: &mut Vec<u8>) -> Result<(), SpdyError> {
        let control = |out: &mut Vec<u8>, kind: u16, flags: u8, payload: &[u8]| {
            out.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
            out.extend_from_slice(&kind.to_be_bytes());
            let len = payload.len() as u32;
            out.push(flags);
            out.extend_from_slice(&len.to_be_bytes()[1..]);
            out.extend_from_slice(payload);
        };
        match frame {
            Frame::SynStream {
                stream_id,
                associated_to,
                priority,
                flags,
                headers,
            } => {
                let mut p = Vec::new();
                p.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
                p.extend_from_slice(&(associated_to & 0x7fff_ffff).to_be_bytes());
                p.push((priority & 0x7) << 5);
                p.push(0);
                p.extend_from_slice(&self.header_block(headers)?);
                control(out, 1, *flags, &p);
            }
            Frame::SynReply {
                stream_id,
                flags,
                headers,
            } => {
                let mut p = (stream_id & 0x7fff_ffff).to_be_bytes().to_vec();
                p.extend_from_slice(&self.header_block(headers)?);
                control(out, 2, *flags, &p);
            }
            Frame::RstStream { stream_id, status } => {
                let mut p = (stream_id & 0x7fff_ffff).to_be_bytes().to_vec();
                p.extend_from_slice(&status.to_be_bytes());
                control(out, 3, 0, &p);
            }
            Frame::Settings { entries } => {
                let mut p = (entries.len() as u32).to_be_bytes().to_vec();
                for (flags, id, value) in entries {
                    p.push(*flags);
                    p.extend_from_slice(&id.to_be_bytes()[1..]);
                    p.extend_from_slice(&value.to_be_bytes());
                }
                control(out, 4, 0, &p);
            }
            Frame::Ping { id } => control(out, 6, 0, &id.to_be_bytes()),
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                let mut p = (last_good_stream_id & 0x7fff_ffff).to_be_bytes().to_vec();
                p.extend_from_slice(&status.to_be_bytes());
                control(out, 7, 0, &p);
            }
            Frame::Headers {
                stream_id,
                flags,
                headers,
            } => {
                let mut p = (stream_id & 0x7fff_ffff).to_be_bytes().to_vec();
                p.extend_from_slice(&self.header_block(headers)?);
                control(out, 8, *flags, &p);
            }
            Frame::WindowUpdate { stream_id, delta } => {
                let mut p = (stream_id & 0x7fff_ffff).to_be_bytes().to_vec();
                p.extend_from_slice(&(delta & 0x7fff_ffff).to_be_bytes());
                control(out, 9, 0, &p);
            }
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                if data.len() >= MAX_PAYLOAD {
                    return Err(SpdyError::Protocol("data frame too large".to_owned()));
                }
                out.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
                out.push(*flags);
                out.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
                out.extend_from_slice(data);
            }
        }
        Ok(())
    }
}

/// Reads frames: owns the receiving direction's decompression context.
pub struct Decoder {
    inflate: Decompress,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, SpdyError> {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_be_bytes)
        .ok_or_else(|| SpdyError::Protocol("frame too short".to_owned()))
}

impl Decoder {
    /// A fresh context.
    pub fn new() -> Self {
        Self {
            inflate: Decompress::new(true),
        }
    }

    fn inflate_block(&mut self, block: &[u8]) -> Result<Vec<u8>, SpdyError> {
        let mut out = Vec::with_capacity(block.len() * 4 + 64);
        let mut input = block;
        loop {
            if out.len() == out.capacity() {
                out.reserve(out.capacity().max(256));
            }
            let before_in = self.inflate.total_in();
            let before_out = out.len();
            match self
                .inflate
                .decompress_vec(input, &mut out, FlushDecompress::Sync)
            {
                Ok(Status::Ok | Status::BufError | Status::StreamEnd) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(&dictionary())
                        .map_err(|e| SpdyError::Compression(e.to_string()))?;
                }
                Err(e) => return Err(SpdyError::Compression(e.to_string())),
            }
            let used = (self.inflate.total_in() - before_in) as usize;
            input = &input[used..];
            if out.len() > MAX_HEADER_BLOCK {
                return Err(SpdyError::Compression("header block too large".to_owned()));
            }
            let progressed = used > 0 || out.len() > before_out;
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(out);
            }
            if !progressed && out.len() < out.capacity() {
                return Err(SpdyError::Compression("truncated header block".to_owned()));
            }
        }
    }

    fn headers(&mut self, block: &[u8]) -> Result<Headers, SpdyError> {
        let raw = self.inflate_block(block)?;
        let count = u32_at(&raw, 0)? as usize;
        let mut at = 4;
        let mut headers = Vec::with_capacity(count.min(64));
        let take = |at: &mut usize| -> Result<String, SpdyError> {
            let len = u32_at(&raw, *at)? as usize;
            let bytes = raw
                .get(*at + 4..*at + 4 + len)
                .ok_or_else(|| SpdyError::Protocol("header block truncated".to_owned()))?;
            *at += 4 + len;
            Ok(String::from_utf8_lossy(bytes).into_owned())
        };
        for _ in 0..count {
            let name = take(&mut at)?;
            let value = take(&mut at)?;
            headers.push((name.to_ascii_lowercase(), value));
        }
        Ok(headers)
    }

    /// Decodes one frame from the front of `buf`: `None` until a whole frame is there,
    /// else the frame and how many bytes it took.
    pub fn decode(&mut self, buf: &[u8]) -> Result<Option<(Frame, usize)>, SpdyError> {
        if buf.len() < 8 {
            return Ok(None);
        }
        let flags = buf[4];
        let len = (u32_at(buf, 4)? & 0x00ff_ffff) as usize;
        if len >= MAX_PAYLOAD {
            return Err(SpdyError::Protocol("frame too large".to_owned()));
        }
        if buf.len() < 8 + len {
            return Ok(None);
        }
        let p = &buf[8..8 + len];
        let head = u32_at(buf, 0)?;
        if head & 0x8000_0000 == 0 {
            return Ok(Some((
                Frame::Data {
                    stream_id: head & 0x7fff_ffff,
                    flags,
                    data: p.to_vec(),
                },
                8 + len,
            )));
        }
        let version = ((head >> 16) & 0x7fff) as u16;
        if version != VERSION {
            return Err(SpdyError::Protocol(format!(
                "unsupported version {version}"
            )));
        }
        let id = |at| u32_at(p, at).map(|v| v & 0x7fff_ffff);
        let frame = match head & 0xffff {
            1 => {
                if p.len() < 10 {
                    return Err(SpdyError::Protocol("SYN_STREAM too short".to_owned()));
                }
                Frame::SynStream {
                    stream_id: id(0)?,
                    associated_to: id(4)?,
                    priority: p[8] >> 5,
                    flags,
                    headers: self.headers(&p[10..])?,
                }
            }
            2 => Frame::SynReply {
                stream_id: id(0)?,
                flags,
                headers: self.headers(p.get(4..).unwrap_or_default())?,
            },
            3 => Frame::RstStream {
                stream_id: id(0)?,
                status: u32_at(p, 4)?,
            },
            4 => {
                let count = u32_at(p, 0)? as usize;
                let mut entries = Vec::new();
                for i in 0..count.min(p.len() / 8) {
                    let at = 4 + i * 8;
                    let word = u32_at(p, at)?;
                    entries.push(((word >> 24) as u8, word & 0x00ff_ffff, u32_at(p, at + 4)?));
                }
                Frame::Settings { entries }
            }
            6 => Frame::Ping { id: u32_at(p, 0)? },
            7 => Frame::GoAway {
                last_good_stream_id: id(0)?,
                status: u32_at(p, 4).unwrap_or(0),
            },
            8 => Frame::Headers {
                stream_id: id(0)?,
                flags,
                headers: self.headers(p.get(4..).unwrap_or_default())?,
            },
            9 => Frame::WindowUpdate {
                stream_id: id(0)?,
                delta: id(4)?,
            },
            other => {
                return Err(SpdyError::Protocol(format!(
                    "unknown control frame {other}"
                )));
            }
        };
        Ok(Some((frame, 8 + len)))
    }
}

/// The value of header `name` in `headers`.
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dictionary_is_the_specifications() {
        use sha2::Digest;
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        assert_eq!(
            format!("{:x}", sha2::Sha256::digest(&d)),
            "51d27341373f923f3cd88e1eb7162aeaa3723d7585ff2399201dc06498407f02"
        );
    }

    #[test]
    fn frames_round_trip_through_shared_compression_contexts() {
        let frames = vec![
            Frame::SynStream {
                stream_id: 1,
                associated_to: 0,
                priority: 0,
                flags: 0,
                headers: vec![("streamtype".into(), "error".into())],
            },
            Frame::SynStream {
                stream_id: 3,
                associated_to: 0,
                priority: 0,
                flags: 0,
                headers: vec![
                    ("streamtype".into(), "data".into()),
                    ("port".into(), "8080".into()),
                ],
            },
            Frame::SynReply {
                stream_id: 3,
                flags: 0,
                headers: Vec::new(),
            },
            Frame::Data {
                stream_id: 3,
                flags: FLAG_FIN,
                data: b"hello".to_vec(),
            },
            Frame::Ping { id: 7 },
            Frame::WindowUpdate {
                stream_id: 3,
                delta: 65536,
            },
            Frame::Settings {
                entries: vec![(0, 7, 65536)],
            },
            Frame::RstStream {
                stream_id: 3,
                status: 5,
            },
            Frame::GoAway {
                last_good_stream_id: 3,
                status: 0,
            },
        ];
        let mut enc = Encoder::new();
        let mut wire = Vec::new();
        for f in &frames {
            enc.encode(f, &mut wire).expect("encode");
        }
        let mut dec = Decoder::new();
        let mut decoded = Vec::new();
        let mut at = 0;
        // Fed a byte at a time first: partial frames wait for more.
        assert_eq!(dec.decode(&wire[..5]).expect("partial"), None);
        while at < wire.len() {
            let (frame, used) = dec.decode(&wire[at..]).expect("decode").expect("whole");
            decoded.push(frame);
            at += used;
        }
        assert_eq!(decoded, frames);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut dec = Decoder::new();
        let bad_version = [0x80, 0x02, 0x00, 0x01, 0, 0, 0, 0];
        assert!(dec.decode(&bad_version).is_err());
        let bad_block = [0x80, 0x03, 0x00, 0x02, 0, 0, 0, 8, 0, 0, 0, 1, 1, 2, 3, 4];
        assert!(Decoder::new().decode(&bad_block).is_err());
        let short_syn = [0x80, 0x03, 0x00, 0x01, 0, 0, 0, 2, 0, 0];
        assert!(Decoder::new().decode(&short_syn).is_err());
    }
}
