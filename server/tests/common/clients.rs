//! Streaming clients for the tests: SPDY/3.1 (with crisp's own frame codec, as client-go
//! speaks it) and WebSocket, for exec and port-forward through crispd's streaming server.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use cri_proto::v1 as cri;
use server::streaming::spdy::{Decoder, Encoder, FLAG_FIN, Frame};

/// `http://host:port/path` → (`host:port`, `/path`).
pub fn split_url(url: &str) -> (String, String) {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .expect("http(s) URL");
    let (addr, path) = rest.split_once('/').expect("path");
    (addr.to_owned(), format!("/{path}"))
}

/// A connection the clients below speak over: TCP, or TLS over TCP.
pub trait Conn: Read + Write + Send {}
impl<T: Read + Write + Send> Conn for T {}

/// Sends an HTTP upgrade request and returns the connection after the response head,
/// with the status code and the head.
pub fn upgrade(url: &str, headers: &[(&str, &str)]) -> (Box<dyn Conn>, u16, String) {
    let (addr, _) = split_url(url);
    let tcp = TcpStream::connect(&addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    upgrade_on(Box::new(tcp), url, headers)
}

pub fn upgrade_on(
    mut tcp: Box<dyn Conn>,
    url: &str,
    headers: &[(&str, &str)],
) -> (Box<dyn Conn>, u16, String) {
    let (addr, path) = split_url(url);
    let mut head = format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    tcp.write_all(head.as_bytes()).expect("request");
    let mut response = Vec::new();
    let mut byte = [0u8; 1];
    while !response.ends_with(b"\r\n\r\n") {
        match tcp.read(&mut byte) {
            Ok(1) => response.push(byte[0]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&response).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (tcp, code, text)
}

/// A SPDY client connection.
pub struct Spdy {
    tcp: Box<dyn Conn>,
    enc: Encoder,
    dec: Decoder,
    buf: Vec<u8>,
}

impl Spdy {
    pub fn open(url: &str, protocol: &str) -> Self {
        let tcp = TcpStream::connect(split_url(url).0).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        Self::open_on(Box::new(tcp), url, protocol)
    }

    pub fn open_on(conn: Box<dyn Conn>, url: &str, protocol: &str) -> Self {
        let (tcp, code, head) = upgrade_on(
            conn,
            url,
            &[
                ("Connection", "Upgrade"),
                ("Upgrade", "SPDY/3.1"),
                ("X-Stream-Protocol-Version", protocol),
            ],
        );
        assert_eq!(code, 101, "{head}");
        assert!(head.contains(protocol), "{head}");
        Self {
            tcp,
            enc: Encoder::new(),
            dec: Decoder::new(),
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, frame: Frame) {
        let mut out = Vec::new();
        self.enc.encode(&frame, &mut out).expect("encode");
        self.tcp.write_all(&out).expect("send");
    }

    pub fn syn(&mut self, id: u32, headers: &[(&str, &str)]) {
        self.send(Frame::SynStream {
            stream_id: id,
            associated_to: 0,
            priority: 0,
            flags: 0,
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        });
    }

    pub fn data(&mut self, id: u32, data: &[u8], fin: bool) {
        self.send(Frame::Data {
            stream_id: id,
            flags: if fin { FLAG_FIN } else { 0 },
            data: data.to_vec(),
        });
    }

    /// The next frame; `None` once the server closed the connection.
    pub fn next(&mut self) -> Option<Frame> {
        loop {
            if let Some((frame, used)) = self.dec.decode(&self.buf).expect("decode") {
                self.buf.drain(..used);
                return Some(frame);
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.tcp.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// What arrives on `stream` until it contains `want` (or the connection closes).
    pub fn collect_until(&mut self, stream: u32, want: &[u8]) -> Vec<u8> {
        let mut got = Vec::new();
        while !got.windows(want.len()).any(|w| w == want) {
            match self.next() {
                Some(Frame::Data {
                    stream_id, data, ..
                }) if stream_id == stream => got.extend_from_slice(&data),
                Some(_) => {}
                None => break,
            }
        }
        got
    }

    /// Everything received per stream until the connection closes.
    pub fn collect(&mut self) -> std::collections::HashMap<u32, Vec<u8>> {
        let mut got: std::collections::HashMap<u32, Vec<u8>> = Default::default();
        while let Some(frame) = self.next() {
            if let Frame::Data {
                stream_id, data, ..
            } = frame
            {
                got.entry(stream_id).or_default().extend_from_slice(&data);
            }
        }
        got
    }
}

/// Runs an exec (or an attach) over SPDY (v4) with every stream: sends `stdin` and
/// closes it, and returns what arrived per stream (1 error, 5 stdout, 7 stderr) once the
/// server closes.
pub async fn spdy_exec(url: &str, stdin: &[u8]) -> std::collections::HashMap<u32, Vec<u8>> {
    let (url, stdin) = (url.to_owned(), stdin.to_vec());
    tokio::task::spawn_blocking(move || {
        let mut c = Spdy::open(&url, "v4.channel.k8s.io");
        c.syn(1, &[("streamtype", "error")]);
        c.syn(3, &[("streamtype", "stdin")]);
        c.syn(5, &[("streamtype", "stdout")]);
        c.syn(7, &[("streamtype", "stderr")]);
        c.data(3, &stdin, true);
        c.collect()
    })
    .await
    .expect("client")
}

pub async fn exec_url(
    rt: &mut cri::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>,
    id: &str,
    cmd: &[&str],
    tty: bool,
    stdin: bool,
) -> String {
    rt.exec(cri::ExecRequest {
        container_id: id.to_owned(),
        cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
        tty,
        stdin,
        stdout: true,
        stderr: !tty,
    })
    .await
    .expect("exec")
    .into_inner()
    .url
}

pub fn exit_code_of(status: &[u8]) -> i64 {
    let v: serde_json::Value = serde_json::from_slice(status).expect("status JSON");
    if v["status"] == "Success" {
        return 0;
    }
    v["details"]["causes"][0]["message"]
        .as_str()
        .and_then(|m| m.parse().ok())
        .expect("exit code cause")
}

/// Runs an exec over WebSocket: sends `stdin` on channel 0, closes it (v5 signal), and
/// returns stdout and the status.
pub async fn ws_exec(url: &str, protocol: &str, stdin: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut first = vec![0u8];
    first.extend_from_slice(stdin);
    ws_session(url, protocol, vec![first, vec![255u8, 0]], None).await
}

/// Opens a WebSocket stream session, sends `messages` (each a channel byte and data), and
/// returns stdout and the status once the server closes, or once stdout holds `until`
/// (then the client hangs up).
pub async fn ws_session(
    url: &str,
    protocol: &str,
    messages: Vec<Vec<u8>>,
    until: Option<&[u8]>,
) -> (Vec<u8>, Vec<u8>) {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};
    let mut request = url
        .replace("http://", "ws://")
        .into_client_request()
        .expect("request");
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", protocol.parse().expect("header"));
    let (addr, _) = split_url(url);
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut ws, response) = tokio_tungstenite::client_async(request, tcp)
        .await
        .expect("handshake");
    assert_eq!(
        response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok()),
        Some(protocol)
    );
    for message in messages {
        ws.send(Message::binary(message)).await.expect("send");
    }
    let (mut stdout, mut status) = (Vec::new(), Vec::new());
    while let Some(Ok(message)) = tokio::time::timeout(Duration::from_secs(20), ws.next())
        .await
        .expect("in time")
    {
        if let Message::Binary(b) = message
            && let Some((&ch, data)) = b.split_first()
        {
            match ch {
                1 => stdout.extend_from_slice(data),
                3 => status.extend_from_slice(data),
                _ => {}
            }
        }
        if until.is_some_and(|u| stdout.windows(u.len()).any(|w| w == u)) {
            break;
        }
    }
    (stdout, status)
}

pub async fn ws_port_forward(url: &str) -> String {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};
    let mut request = url
        .replace("http://", "ws://")
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "SPDY/3.1+portforward.k8s.io".parse().expect("header"),
    );
    let (addr, _) = split_url(url);
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut ws, _) = tokio_tungstenite::client_async(request, tcp)
        .await
        .expect("handshake");
    let mut enc = Encoder::new();
    let mut out = Vec::new();
    for frame in [
        Frame::SynStream {
            stream_id: 1,
            associated_to: 0,
            priority: 0,
            flags: 0,
            headers: vec![
                ("streamtype".into(), "error".into()),
                ("port".into(), "8080".into()),
                ("requestid".into(), "0".into()),
            ],
        },
        Frame::SynStream {
            stream_id: 3,
            associated_to: 0,
            priority: 0,
            flags: 0,
            headers: vec![
                ("streamtype".into(), "data".into()),
                ("port".into(), "8080".into()),
                ("requestid".into(), "0".into()),
            ],
        },
        Frame::Data {
            stream_id: 3,
            flags: 0,
            data: b"GET /index.html HTTP/1.0\r\n\r\n".to_vec(),
        },
    ] {
        enc.encode(&frame, &mut out).expect("encode");
    }
    ws.send(Message::binary(out)).await.expect("send");
    let mut dec = Decoder::new();
    let mut buf = Vec::new();
    let mut answer = Vec::new();
    while let Some(Ok(message)) = tokio::time::timeout(Duration::from_secs(20), ws.next())
        .await
        .expect("in time")
    {
        if let Message::Binary(b) = message {
            buf.extend_from_slice(&b);
        }
        let mut done = false;
        while let Some((frame, used)) = dec.decode(&buf).expect("decode") {
            buf.drain(..used);
            if let Frame::Data {
                stream_id: 3,
                flags,
                data,
            } = frame
            {
                answer.extend_from_slice(&data);
                done |= flags & FLAG_FIN != 0;
            }
        }
        if done {
            break;
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}
