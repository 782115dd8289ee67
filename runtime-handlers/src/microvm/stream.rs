//! The host's ends of the agent's streaming calls: an exec's stdio and a port-forward
//! connection, each turned into the plain byte streams `server` drives. A call lives as
//! long as what was made of it; dropping that ends the call, and the agent then kills the
//! exec's processes or closes the connection.

use std::sync::{Arc, Mutex};

use agent_proto::{
    AttachInput, ExecInput, ExecOutput, PortData, TerminalSize, attach_input, exec_input,
    exec_output,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::{mpsc, oneshot};
use tonic::Streaming;

use crate::attach::{AttachReader, AttachStream, AttachWriter, RemoteInput};
use crate::error::HandlerError;
use crate::exec::{ExecSession, Terminal};
use crate::handler::PortStream;

/// Messages to the agent in flight per call.
pub(super) const INPUT_QUEUE: usize = 16;

/// Bytes buffered between the call and `server` per stream.
const BUFFER: usize = 256 * 1024;

/// Bytes per message to the agent (host to guest is the slow direction over vsock).
const CHUNK: usize = 32 * 1024;

/// The sender of a call's input, shared by whatever feeds it; taking it out ends the input
/// stream, which tells the agent the host is done.
type Input<T> = Arc<Mutex<Option<mpsc::Sender<T>>>>;

fn sender<T>(input: &Input<T>) -> Option<mpsc::Sender<T>> {
    match input.lock() {
        Ok(g) => g.clone(),
        Err(p) => p.into_inner().clone(),
    }
}

fn close<T>(input: &Input<T>) {
    match input.lock() {
        Ok(mut g) => *g = None,
        Err(p) => *p.into_inner() = None,
    }
}

/// The input side of a call: a receiver for tonic, the shared sender for us.
pub(super) fn input<T: Send + 'static>(
    first: T,
) -> (Input<T>, impl futures::Stream<Item = T> + Send + 'static) {
    let (tx, rx) = mpsc::channel(INPUT_QUEUE);
    // The queue is empty: the first message always fits.
    let _ = tx.try_send(first);
    (
        Arc::new(Mutex::new(Some(tx))),
        tokio_stream::wrappers::ReceiverStream::new(rx),
    )
}

/// An exec session over an `Exec` call whose first message (the start) has been sent.
/// `failed` builds the error for a call that breaks before the exit code.
pub(super) fn exec_session(
    mut outbound: Streaming<ExecOutput>,
    input: Input<ExecInput>,
    tty: bool,
    stdin: bool,
    failed: impl Fn(String) -> HandlerError + Send + 'static,
) -> ExecSession {
    let mut tasks = Vec::new();
    let mut stdin_writer = None;
    if stdin {
        let (ours, mut theirs) = tokio::io::duplex(BUFFER);
        stdin_writer = Some(Box::new(ours) as Box<dyn tokio::io::AsyncWrite + Send + Unpin>);
        let input = Arc::clone(&input);
        tasks.push(tokio::spawn(async move {
            let mut buf = vec![0u8; CHUNK];
            loop {
                let message = match theirs.read(&mut buf).await {
                    Ok(0) | Err(_) => exec_input::Input::CloseStdin(true),
                    Ok(n) => exec_input::Input::Stdin(buf[..n].to_vec()),
                };
                let last = matches!(message, exec_input::Input::CloseStdin(_));
                let Some(tx) = sender(&input) else { return };
                let message = ExecInput {
                    input: Some(message),
                };
                if tx.send(message).await.is_err() || last {
                    return;
                }
            }
        }));
    }
    let (stdout_ours, mut stdout_theirs) = tokio::io::duplex(BUFFER);
    let (stderr_ours, mut stderr_theirs): (Option<DuplexStream>, Option<DuplexStream>) = if tty {
        (None, None)
    } else {
        let (a, b) = tokio::io::duplex(BUFFER);
        (Some(a), Some(b))
    };
    let (exit_tx, exit_rx) = oneshot::channel();
    tasks.push(tokio::spawn(async move {
        let exit = loop {
            let output = match outbound.message().await {
                Ok(Some(ExecOutput { output: Some(o) })) => o,
                Ok(Some(_)) => continue,
                Ok(None) => break Err(failed("the exec ended without an exit code".to_owned())),
                Err(status) => break Err(failed(status.message().to_owned())),
            };
            match output {
                // A reader that went away wants no more; the process still runs.
                exec_output::Output::Stdout(data) => {
                    let _ = stdout_theirs.write_all(&data).await;
                }
                exec_output::Output::Stderr(data) => {
                    if let Some(w) = &mut stderr_theirs {
                        let _ = w.write_all(&data).await;
                    }
                }
                exec_output::Output::ExitCode(code) => break Ok(code),
                exec_output::Output::StartedPid(_) => {}
            }
        };
        // The output before the exit is in the buffers; the readers see their end.
        drop(stdout_theirs);
        drop(stderr_theirs);
        let _ = exit_tx.send(exit);
        // The call stays open until the session goes: ending it early would read as a
        // hang-up to the agent.
        std::future::pending::<()>().await;
    }));
    let terminal = tty.then(|| {
        let input = Arc::clone(&input);
        Terminal::remote(move |width, height| {
            if let Some(tx) = sender(&input) {
                let _ = tx.try_send(ExecInput {
                    input: Some(exec_input::Input::Resize(TerminalSize {
                        width: u32::from(width),
                        height: u32::from(height),
                    })),
                });
            }
        })
    });
    let stdout = Box::new(stdout_ours) as Box<dyn tokio::io::AsyncRead + Send + Unpin>;
    let stderr = stderr_ours.map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>);
    ExecSession::remote(
        stdin_writer,
        Some(stdout),
        stderr,
        terminal,
        exit_rx,
        move || {
            close(&input);
            for task in tasks {
                task.abort();
            }
        },
    )
}

/// A port-forward connection as `server` sees it: the bytes, and the call's tasks, which
/// end with it.
struct PortConnection {
    stream: DuplexStream,
    tasks: Vec<tokio::task::AbortHandle>,
}

impl Drop for PortConnection {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl tokio::io::AsyncRead for PortConnection {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for PortConnection {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// A byte stream over a `PortForward` call whose first message (the port) has been sent.
/// Dropping the stream ends the call (the agent then closes the connection), whatever the
/// guest's side is doing.
pub(super) fn port_stream(mut outbound: Streaming<PortData>, input: Input<PortData>) -> PortStream {
    let (ours, theirs) = tokio::io::duplex(BUFFER);
    let (mut from_server, mut to_server) = tokio::io::split(theirs);
    let to_guest = tokio::spawn(async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let message = match from_server.read(&mut buf).await {
                Ok(0) | Err(_) => PortData {
                    eof: true,
                    ..PortData::default()
                },
                Ok(n) => PortData {
                    data: buf[..n].to_vec(),
                    ..PortData::default()
                },
            };
            let last = message.eof;
            let Some(tx) = sender(&input) else { return };
            if tx.send(message).await.is_err() || last {
                // The input stays open until the guest's side has ended too (below).
                return;
            }
        }
    });
    let to_guest_abort = to_guest.abort_handle();
    let from_guest = tokio::spawn(async move {
        while let Ok(Some(m)) = outbound.message().await {
            if !m.data.is_empty() && to_server.write_all(&m.data).await.is_err() {
                break;
            }
            if m.eof {
                let _ = to_server.shutdown().await;
                // Both ways may end in either order: wait for ours.
                let _ = to_guest.await;
                return;
            }
        }
        to_guest.abort();
    });
    Box::new(PortConnection {
        stream: ours,
        tasks: vec![to_guest_abort, from_guest.abort_handle()],
    })
}

/// An attachment over an `Attach` call whose first message (the container) has been sent.
/// It ends when the container's output does, or when both halves are dropped.
pub(super) fn attachment(
    mut outbound: Streaming<ExecOutput>,
    input: Input<AttachInput>,
) -> (AttachReader, AttachWriter) {
    let (out_tx, out_rx) = mpsc::channel(INPUT_QUEUE);
    let (in_tx, mut in_rx) = mpsc::channel(INPUT_QUEUE);
    tokio::spawn(async move {
        loop {
            // A reader that went away ends the call, even with no output coming.
            let message = tokio::select! {
                m = outbound.message() => m,
                () = out_tx.closed() => return,
            };
            let Ok(Some(message)) = message else { return };
            let chunk = match message.output {
                Some(exec_output::Output::Stdout(data)) => (AttachStream::Stdout, data),
                Some(exec_output::Output::Stderr(data)) => (AttachStream::Stderr, data),
                _ => continue,
            };
            if out_tx.send(chunk).await.is_err() {
                return;
            }
        }
    });
    tokio::spawn(async move {
        while let Some(message) = in_rx.recv().await {
            let message = match message {
                RemoteInput::Stdin(data) => attach_input::Input::Stdin(data),
                RemoteInput::CloseStdin => attach_input::Input::CloseStdin(true),
                RemoteInput::Resize(width, height) => attach_input::Input::Resize(TerminalSize {
                    width: u32::from(width),
                    height: u32::from(height),
                }),
            };
            let Some(tx) = sender(&input) else { return };
            let message = AttachInput {
                input: Some(message),
            };
            if tx.send(message).await.is_err() {
                return;
            }
        }
    });
    crate::attach::remote(out_rx, in_tx)
}
