//! The Kubernetes remote-command protocol (exec) over SPDY and WebSocket.
//!
//! Streams: error (the outcome), stdin, stdout, stderr, resize (terminal size as JSON
//! `{"Width":w,"Height":h}` objects). Over SPDY each is a stream the client opens, named
//! by its `streamtype` header; over WebSocket each is a channel, the first byte of every
//! message (0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize; v5 adds 255 to close a
//! channel; the base64 variants send text with the channel as a digit). Protocol v4 and
//! later report the outcome as a JSON Status carrying the exit code; older ones send an
//! error message, or nothing on success.

use std::time::Duration;

use base64::Engine;
use cri_proto::v1 as cri;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

use super::spdy::header;
use super::{channel, session};
use crate::container::State;
use crate::state::Daemon;

/// Exec protocols over SPDY, most preferred first.
pub const SPDY_PROTOCOLS: &[&str] = &[
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];

/// Exec protocols over WebSocket, most preferred first.
pub const WS_PROTOCOLS: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "base64.channel.k8s.io",
    "channel.k8s.io",
];

/// Where output goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Channel {
    Stdout = 1,
    Stderr = 2,
    Error = 3,
}

/// The transport's writing side.
enum Output {
    Spdy {
        sender: session::Sender,
        stdout: Option<u32>,
        stderr: Option<u32>,
        error: u32,
        others: Vec<u32>,
    },
    Ws {
        tx: mpsc::UnboundedSender<Message>,
        base64: bool,
    },
}

impl Output {
    fn send(&self, channel: Channel, data: &[u8]) {
        match self {
            Output::Spdy {
                sender,
                stdout,
                stderr,
                error,
                ..
            } => {
                let id = match channel {
                    Channel::Stdout => *stdout,
                    Channel::Stderr => *stderr,
                    Channel::Error => Some(*error),
                };
                if let Some(id) = id {
                    sender.data(id, data);
                }
            }
            Output::Ws { tx, base64 } => {
                for chunk in data.chunks(32 * 1024) {
                    let message = if *base64 {
                        let mut text = String::from(char::from(b'0' + channel as u8));
                        text.push_str(&base64::engine::general_purpose::STANDARD.encode(chunk));
                        Message::text(text)
                    } else {
                        let mut bytes = Vec::with_capacity(chunk.len() + 1);
                        bytes.push(channel as u8);
                        bytes.extend_from_slice(chunk);
                        Message::binary(bytes)
                    };
                    let _ = tx.send(message);
                }
            }
        }
    }

    fn finish(&self) {
        match self {
            Output::Spdy {
                sender,
                stdout,
                stderr,
                error,
                others,
            } => {
                for id in stdout
                    .iter()
                    .chain(stderr.iter())
                    .chain(std::iter::once(error))
                    .chain(others.iter())
                {
                    sender.fin(*id);
                }
                sender.close();
            }
            Output::Ws { tx, .. } => {
                let _ = tx.send(Message::Close(Some(normal_close())));
            }
        }
    }
}

/// A normal closure: clients read it as the end of every channel.
fn normal_close() -> tokio_tungstenite::tungstenite::protocol::CloseFrame {
    tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
        reason: "".into(),
    }
}

/// What the client sends.
struct Input {
    stdin: Option<mpsc::UnboundedReceiver<Vec<u8>>>,
    resize: Option<mpsc::UnboundedReceiver<Vec<u8>>>,
    closed: watch::Receiver<bool>,
}

/// What the connection is for.
pub enum Target {
    /// A new process in the container.
    Exec(cri::ExecRequest),
    /// The container's own stdio.
    Attach(cri::AttachRequest),
}

impl Target {
    /// (tty, stdin, stdout, stderr) as requested.
    fn streams(&self) -> (bool, bool, bool, bool) {
        match self {
            Target::Exec(r) => (r.tty, r.stdin, r.stdout, r.stderr),
            Target::Attach(r) => (r.tty, r.stdin, r.stdout, r.stderr),
        }
    }
}

/// Serves an exec or attach over an upgraded SPDY connection.
pub async fn serve_spdy<IO>(daemon: &Daemon, target: Target, protocol: &str, io: IO)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let mut session = session::start(io);
    let version = protocol_version(protocol);
    let (tty, want_stdin, want_stdout, want_stderr) = target.streams();
    let want_stderr = want_stderr && !tty;
    let want_resize = tty && version >= 3;
    let expected = 1 + [want_stdin, want_stdout, want_stderr, want_resize]
        .iter()
        .filter(|w| **w)
        .count();
    let (mut stdin, mut resize) = (None, None);
    let (mut stdout, mut stderr, mut error, mut others) = (None, None, None, Vec::new());
    let mut seen = 0;
    let deadline = tokio::time::sleep(Duration::from_secs(30));
    tokio::pin!(deadline);
    while seen < expected {
        let stream = tokio::select! {
            s = session.incoming.recv() => s,
            () = &mut deadline => None,
        };
        let Some(stream) = stream else {
            tracing::debug!("exec client did not open its streams");
            session.sender.close();
            return;
        };
        seen += 1;
        match header(&stream.headers, "streamtype").unwrap_or_default() {
            "error" => error = Some(stream.id),
            "stdin" => stdin = Some(stream.data),
            "stdout" => stdout = Some(stream.id),
            "stderr" => stderr = Some(stream.id),
            "resize" => resize = Some(stream.data),
            other => {
                tracing::debug!(streamtype = other, "unexpected exec stream");
                others.push(stream.id);
                seen -= 1;
            }
        }
    }
    let Some(error) = error else {
        session.sender.close();
        return;
    };
    let output = Output::Spdy {
        sender: session.sender.clone(),
        stdout,
        stderr,
        error,
        others,
    };
    let input = Input {
        stdin,
        resize,
        closed: session.closed.clone(),
    };
    match target {
        Target::Exec(request) => run(daemon, &request, version, input, output).await,
        Target::Attach(request) => attach(daemon, &request, version, input, output).await,
    }
}

/// Serves an exec or attach over an upgraded WebSocket connection.
pub async fn serve_ws<IO>(daemon: &Daemon, target: Target, protocol: &str, io: IO)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        io,
        tokio_tungstenite::tungstenite::protocol::Role::Server,
        Some(channel::ws_config()),
    )
    .await;
    let (mut sink, mut stream) = ws.split();
    let base64 = protocol.contains("base64");
    let v5 = protocol.starts_with("v5.");
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Message>();
    let (closed_tx, closed_rx) = watch::channel(false);
    let closed_tx = std::sync::Arc::new(closed_tx);
    let done = std::sync::Arc::clone(&closed_tx);
    tokio::spawn(async move {
        while let Some(message) = out_rx.recv().await {
            let last = matches!(message, Message::Close(_));
            if sink.send(message).await.is_err() || last {
                break;
            }
        }
        let _ = sink.close().await;
        let _ = done.send(true);
    });
    let (stdin_tx, stdin_rx) = mpsc::unbounded_channel();
    let (resize_tx, resize_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stdin_tx = Some(stdin_tx);
        while let Some(Ok(message)) = stream.next().await {
            let (number, data) = match channel::ws_input(message, base64) {
                Some(channel::WsInput::Data { channel, data }) => (channel, data),
                Some(channel::WsInput::Close) => break,
                None => continue,
            };
            match number {
                0 => {
                    if let Some(tx) = &stdin_tx
                        && !data.is_empty()
                    {
                        let _ = tx.send(data);
                    }
                }
                4 => {
                    let _ = resize_tx.send(data);
                }
                255 if v5 && data.first() == Some(&0) => stdin_tx = None,
                _ => {}
            }
        }
        let _ = closed_tx.send(true);
    });
    let output = Output::Ws { tx: out_tx, base64 };
    let (tty, want_stdin, _, _) = target.streams();
    let input = Input {
        stdin: want_stdin.then_some(stdin_rx),
        resize: tty.then_some(resize_rx),
        closed: closed_rx,
    };
    match target {
        Target::Exec(request) => run(daemon, &request, 5, input, output).await,
        Target::Attach(request) => attach(daemon, &request, 5, input, output).await,
    }
}

/// Attaches to the container's stdio through its monitor until the container's output
/// ends or the client leaves; the container keeps running either way.
async fn attach(
    daemon: &Daemon,
    request: &cri::AttachRequest,
    version: u32,
    input: Input,
    output: Output,
) {
    let Input {
        stdin,
        resize,
        mut closed,
    } = input;
    let record = daemon
        .containers
        .get(&request.container_id)
        .map(|c| c.snapshot())
        .filter(|r| r.state() == State::Running);
    let Some(record) = record else {
        report(
            &output,
            version,
            None,
            &format!("container {} is not running", request.container_id),
        );
        output.finish();
        return;
    };
    let stdin_once = record.stdin_once;
    let connected = match daemon.handlers.get(&record.handler) {
        Ok(handler) => handler
            .attach(&record.handle())
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let (mut reader, writer) = match connected {
        Ok(pair) => pair,
        Err(e) => {
            report(
                &output,
                version,
                None,
                &format!("attaching to {}: {e}", request.container_id),
            );
            output.finish();
            return;
        }
    };
    let writer = std::sync::Arc::new(tokio::sync::Mutex::new(writer));
    let mut tasks = Vec::new();
    if let Some(mut rx) = stdin {
        let writer = std::sync::Arc::clone(&writer);
        tasks.push(tokio::spawn(async move {
            while let Some(data) = rx.recv().await {
                if writer.lock().await.stdin(&data).await.is_err() {
                    return;
                }
            }
            // The client closed its stdin: a stdin_once container's input ends with it.
            if stdin_once {
                let _ = writer.lock().await.close_stdin().await;
            }
        }));
    }
    if let Some(mut rx) = resize {
        let writer = std::sync::Arc::clone(&writer);
        tasks.push(tokio::spawn(async move {
            let mut sizes = channel::Resizes::default();
            while let Some(data) = rx.recv().await {
                for (w, h) in sizes.push(&data) {
                    let _ = writer.lock().await.resize(w, h).await;
                }
            }
        }));
    }
    let (want_stdout, want_stderr) = (request.stdout, request.stderr);
    loop {
        let next = tokio::select! {
            next = reader.next() => next,
            _ = closed.wait_for(|c| *c) => None,
        };
        let Some((stream, data)) = next else { break };
        match stream {
            runtime_handlers::attach::AttachStream::Stdout if want_stdout => {
                output.send(Channel::Stdout, &data);
            }
            runtime_handlers::attach::AttachStream::Stderr if want_stderr => {
                output.send(Channel::Stderr, &data);
            }
            _ => {}
        }
    }
    for t in tasks {
        t.abort();
    }
    if !*closed.borrow() {
        report(&output, version, Some(0), "");
        output.finish();
    }
}

/// 1 for `channel.k8s.io`, else the `vN.` prefix.
fn protocol_version(protocol: &str) -> u32 {
    protocol
        .strip_prefix('v')
        .and_then(|p| p.split('.').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
}

/// The v4 outcome: success, or failure with the exit code as a cause.
fn status_json(exit_code: Option<i32>, message: &str) -> Vec<u8> {
    let status = match exit_code {
        Some(0) => serde_json::json!({"metadata": {}, "status": "Success"}),
        Some(code) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        None => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": "InternalError",
        }),
    };
    serde_json::to_vec(&status).unwrap_or_default()
}

fn report(output: &Output, version: u32, exit_code: Option<i32>, message: &str) {
    if version >= 4 {
        output.send(Channel::Error, &status_json(exit_code, message));
    } else if exit_code != Some(0) {
        let text = match exit_code {
            Some(code) => format!("command terminated with non-zero exit code: {code}"),
            None => message.to_owned(),
        };
        output.send(Channel::Error, text.as_bytes());
    }
}

/// Runs the exec and pumps its stdio until it exits or the client leaves.
async fn run(
    daemon: &Daemon,
    request: &cri::ExecRequest,
    version: u32,
    input: Input,
    output: Output,
) {
    let Input {
        stdin,
        resize,
        mut closed,
    } = input;
    let prepared = prepare(daemon, request).await;
    let (runtime, record, process) = match prepared {
        Ok(p) => p,
        Err(message) => {
            report(&output, version, None, &message);
            output.finish();
            return;
        }
    };
    let mut session = match runtime
        .exec_streaming(&record.handle(), &process, request.stdin)
        .await
    {
        Ok(s) => s,
        Err(e) => {
            report(&output, version, None, &e.to_string());
            output.finish();
            return;
        }
    };
    let output = std::sync::Arc::new(output);
    if let (Some(mut rx), Some(mut writer)) = (stdin, session.stdin.take()) {
        tokio::spawn(async move {
            while let Some(data) = rx.recv().await {
                if writer.write_all(&data).await.is_err() {
                    break;
                }
                let _ = writer.flush().await;
            }
            let _ = writer.shutdown().await;
        });
    }
    if let (Some(mut rx), Some(terminal)) = (resize, session.terminal.clone()) {
        tokio::spawn(async move {
            let mut sizes = channel::Resizes::default();
            while let Some(data) = rx.recv().await {
                for (w, h) in sizes.push(&data) {
                    terminal.resize(w, h);
                }
            }
        });
    }
    let mut pumps = Vec::new();
    for (reader, channel) in [
        (session.stdout.take(), Channel::Stdout),
        (session.stderr.take(), Channel::Stderr),
    ] {
        let Some(mut reader) = reader else { continue };
        let output = std::sync::Arc::clone(&output);
        pumps.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match reader.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => output.send(channel, &buf[..n]),
                }
            }
        }));
    }
    let exit = tokio::select! {
        exit = session.wait() => exit,
        () = async { let _ = closed.wait_for(|c| *c).await; } => {
            tracing::debug!(container = %record.id, "exec client went away; killing the process");
            session.terminate().await;
            for pump in &pumps {
                pump.abort();
            }
            return;
        }
    };
    // Output written just before the exit is still in the pipes: drain it, but do not
    // wait forever for descendants that keep them open.
    for pump in pumps {
        let abort = pump.abort_handle();
        if tokio::time::timeout(Duration::from_secs(2), pump)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
    match exit {
        Ok(code) => report(&output, version, Some(code), ""),
        Err(e) => report(&output, version, None, &e.to_string()),
    }
    output.finish();
}

type Prepared = (
    std::sync::Arc<dyn runtime_handlers::RuntimeHandler>,
    std::sync::Arc<crate::container::ContainerRecord>,
    oci_spec::runtime::Process,
);

async fn prepare(daemon: &Daemon, request: &cri::ExecRequest) -> Result<Prepared, String> {
    let container = daemon
        .containers
        .get(&request.container_id)
        .ok_or_else(|| format!("container {} not found", request.container_id))?;
    let record = container.snapshot();
    if record.state() != State::Running {
        return Err(format!("container {} is not running", record.id));
    }
    let mut process = record.process.clone();
    process["args"] = serde_json::json!(request.cmd);
    process["terminal"] = request.tty.into();
    if request.tty {
        let env = process["env"].as_array().cloned().unwrap_or_default();
        if !env
            .iter()
            .any(|e| e.as_str().is_some_and(|s| s.starts_with("TERM=")))
        {
            let mut env = env;
            env.push("TERM=xterm".into());
            process["env"] = env.into();
        }
    }
    let process: oci_spec::runtime::Process =
        serde_json::from_value(process).map_err(|e| format!("exec process: {e}"))?;
    let runtime = daemon
        .handlers
        .get(&record.handler)
        .map_err(|e| e.to_string())?;
    Ok((runtime, record, process))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_statuses() {
        assert_eq!(protocol_version("v4.channel.k8s.io"), 4);
        assert_eq!(protocol_version("v5.channel.k8s.io"), 5);
        assert_eq!(protocol_version("channel.k8s.io"), 1);
        let failed: serde_json::Value =
            serde_json::from_slice(&status_json(Some(3), "")).expect("json");
        assert_eq!(failed["details"]["causes"][0]["message"], "3");
        assert_eq!(failed["reason"], "NonZeroExitCode");
        let ok: serde_json::Value =
            serde_json::from_slice(&status_json(Some(0), "")).expect("json");
        assert_eq!(ok["status"], "Success");
    }
}
