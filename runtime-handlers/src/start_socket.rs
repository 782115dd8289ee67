//! The start socket of a gVisor subcontainer's monitor (`start.sock` in the bundle), typed
//! once for both ends: crispd sends one request line, the monitor answers one reply line
//! and closes. Lines are capped at [`MAX_LINE`] bytes.

/// The socket's name, relative to the bundle.
pub const SOCKET: &str = "start.sock";

/// Longest line either end accepts.
pub const MAX_LINE: usize = 4096;

/// What crispd asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Start the container (`runsc start` with its stdio).
    Start,
    /// It is being removed unstarted: record its end and exit.
    Cancel,
}

impl Request {
    /// The request's line.
    pub fn encode(self) -> &'static [u8] {
        match self {
            Self::Start => b"start\n",
            Self::Cancel => b"cancel\n",
        }
    }

    /// A request from its line; `None` for anything else.
    pub fn decode(line: &[u8]) -> Option<Self> {
        match line.strip_suffix(b"\n").unwrap_or(line) {
            b"start" => Some(Self::Start),
            b"cancel" => Some(Self::Cancel),
            _ => None,
        }
    }

    /// Its name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Cancel => "cancel",
        }
    }
}

/// The monitor's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Done.
    Ok,
    /// Refused or failed, with the runtime's words.
    Error(String),
}

impl Reply {
    /// The reply's line (a message is cut to fit, on one line).
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Ok => b"ok\n".to_vec(),
            Self::Error(message) => {
                let mut line = b"error ".to_vec();
                let flat = message.replace('\n', " ");
                let mut cut = flat.len().min(MAX_LINE - line.len() - 1);
                while !flat.is_char_boundary(cut) {
                    cut -= 1;
                }
                line.extend_from_slice(&flat.as_bytes()[..cut]);
                line.push(b'\n');
                line
            }
        }
    }

    /// A reply from what the monitor sent; `None` when it sent nothing (it stopped
    /// listening) or something that is not a reply.
    pub fn decode(text: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(text.get(..text.len().min(MAX_LINE))?).ok()?;
        let line = text.trim_end_matches('\n');
        if line == "ok" {
            Some(Self::Ok)
        } else {
            line.strip_prefix("error ")
                .map(|m| Self::Error(m.to_owned()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_round_trip() {
        for r in [Request::Start, Request::Cancel] {
            assert_eq!(Request::decode(r.encode()), Some(r));
        }
        assert_eq!(Reply::decode(&Reply::Ok.encode()), Some(Reply::Ok));
        let e = Reply::Error("runsc says\nno".into());
        assert_eq!(
            Reply::decode(&e.encode()),
            Some(Reply::Error("runsc says no".into()))
        );
        let long = Reply::Error("é".repeat(MAX_LINE)).encode();
        assert!(long.len() <= MAX_LINE);
    }

    #[test]
    fn garbage_is_refused() {
        for junk in [
            &b""[..],
            b"\n",
            b"startx\n",
            b"\xff\xfe",
            b"ok then",
            b"error",
        ] {
            assert_eq!(Request::decode(junk), None, "{junk:?}");
            assert_eq!(Reply::decode(junk), None, "{junk:?}");
        }
    }
}
