//! The streaming calls: an exec whose stdio the host drives, and a port-forward
//! connection. Each lives exactly as long as its call: when the host ends or drops it,
//! the exec's process group is killed and the connection closed.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use agent_proto::{
    AttachInput, ExecInput, ExecOutput, ExitInfo, PortData, attach_input, exec_input, exec_output,
};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use crate::container::Started;
use crate::reaper::{Reaper, Status as ExitCode};

/// How long an exec's output may still drain after its process has exited, before the
/// exit is reported anyway (a child it left may hold the output open).
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(1);

/// Output messages in flight to the host per call; a slow reader slows the process.
const OUTPUT_QUEUE: usize = 16;

/// Bytes read from a process or a connection per message.
const CHUNK: usize = 32 * 1024;

/// What a streaming call answers with.
pub type Outbound<T> = ReceiverStream<Result<T, Status>>;

/// A terminal's master side, non-blocking.
pub struct Terminal {
    fd: AsyncFd<OwnedFd>,
}

impl Terminal {
    /// Takes the master of a terminal (already non-blocking).
    pub fn new(master: OwnedFd) -> std::io::Result<Self> {
        // SAFETY: the master is a valid descriptor this struct owns and never replaces or
        // closes while registered.
        let fd = unsafe { AsyncFd::register(master) }.map_err(std::io::Error::from)?;
        Ok(Self { fd })
    }

    /// Reads output; 0 once the process side is closed (the kernel answers EIO).
    pub async fn read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let mut ready = self.fd.readable().await?;
            let done = ready.try_io(|fd| {
                // SAFETY: read writes at most buf.len() bytes into buf.
                let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match done {
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes input.
    pub async fn write_all(&self, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            let mut ready = self.fd.writable().await?;
            let done = ready.try_io(|fd| {
                // SAFETY: write reads at most data.len() bytes from data.
                let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
                if n < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            if let Ok(r) = done {
                data = &data[r?..];
            }
        }
        Ok(())
    }

    /// Sets its size.
    pub fn resize(&self, width: u16, height: u16) {
        let size = libc::winsize {
            ws_row: height,
            ws_col: width,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize from the pointer, valid for the call.
        unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::TIOCSWINSZ, &size) };
    }
}

/// Where a container's output is read from.
pub enum Source {
    /// A pipe.
    Pipe(Option<pipe::Receiver>),
    /// Its terminal.
    Terminal(Arc<Terminal>),
}

impl Source {
    /// The read end of a pipe.
    pub fn pipe(fd: OwnedFd) -> Self {
        Self::Pipe(pipe::Receiver::from_owned_fd(fd).ok())
    }

    /// Reads output; 0 at its end.
    pub async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Self::Pipe(Some(rx)) => rx.read(buf).await,
            Self::Pipe(None) => Ok(0),
            Self::Terminal(t) => t.read(buf).await,
        }
    }
}

/// Where a container's input goes.
pub enum Sink {
    /// Its stdin pipe.
    Pipe(pipe::Sender),
    /// Its terminal.
    Terminal(Arc<Terminal>),
}

/// Input for a container's stdin.
#[derive(Debug)]
pub enum StdinOp {
    /// Bytes to write.
    Data(Vec<u8>),
    /// Close it.
    Close,
}

/// Input queued per container before attachers wait for the container to read.
const STDIN_QUEUE: usize = 64;

/// The writer of a container's stdin: one task owns `sink` and writes what attachers
/// send, so no attacher holds anything while the container is slow to read.
pub fn stdin_writer(mut sink: Sink) -> mpsc::Sender<StdinOp> {
    let (tx, mut rx) = mpsc::channel(STDIN_QUEUE);
    tokio::spawn(async move {
        while let Some(op) = rx.recv().await {
            let data = match op {
                StdinOp::Data(data) => data,
                StdinOp::Close => return,
            };
            let written = match &mut sink {
                Sink::Pipe(p) => p.write_all(&data).await,
                Sink::Terminal(t) => t.write_all(&data).await,
            };
            if written.is_err() {
                return;
            }
        }
    });
    tx
}

/// What an attacher is connected to.
pub struct Attached {
    /// The container's output from now on.
    pub output: broadcast::Receiver<(bool, Vec<u8>)>,
    /// Its exit, once it has one (its output is then all sent).
    pub exit: watch::Receiver<Option<ExitInfo>>,
    /// Its stdin's writer, if it has one.
    pub stdin: Option<mpsc::Sender<StdinOp>>,
    /// Its terminal, if it has one.
    pub terminal: Option<Arc<Terminal>>,
}

/// Drives an attach: the container's output out until its end, the attacher's input in.
/// Leaving (ending or dropping the call) never touches the container.
pub fn attach(attached: Attached, mut inbound: Streaming<AttachInput>) -> Outbound<ExecOutput> {
    let (tx, rx) = mpsc::channel(OUTPUT_QUEUE);
    let Attached {
        mut output,
        mut exit,
        stdin,
        terminal,
    } = attached;
    // The attacher's input, until its call ends (noticed also while the container is
    // slow to take its stdin). The output task's end (the container's, or the host
    // dropping the call) ends it: it holds no sender of the output, which would keep the
    // call open after the container has exited.
    let (done_tx, mut done) = watch::channel(());
    tokio::spawn(async move {
        loop {
            let message = tokio::select! {
                m = inbound.message() => m,
                _ = done.changed() => return,
            };
            let Ok(Some(message)) = message else { return };
            let op = match message.input {
                Some(attach_input::Input::Stdin(data)) => StdinOp::Data(data),
                Some(attach_input::Input::CloseStdin(_)) => StdinOp::Close,
                Some(attach_input::Input::Resize(size)) => {
                    if let Some(t) = &terminal {
                        let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
                        t.resize(clamp(size.width), clamp(size.height));
                    }
                    continue;
                }
                Some(attach_input::Input::Id(_)) | None => continue,
            };
            if let Some(stdin) = &stdin {
                tokio::select! {
                    _ = stdin.send(op) => {}
                    _ = done.changed() => return,
                }
            }
        }
    });
    tokio::spawn(async move {
        // Dropped when this task ends, which ends the input task.
        let _done = done_tx;
        let wrap = |(is_stderr, data): (bool, Vec<u8>)| {
            output_of(if is_stderr {
                exec_output::Output::Stderr(data)
            } else {
                exec_output::Output::Stdout(data)
            })
        };
        loop {
            tokio::select! {
                chunk = output.recv() => match chunk {
                    Ok(chunk) => {
                        if tx.send(wrap(chunk)).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = async { exit.wait_for(Option::is_some).await.is_ok() } => {
                    // The exit is reported after the output is drained: send what is left.
                    while let Ok(chunk) = output.try_recv() {
                        if tx.send(wrap(chunk)).await.is_err() {
                            return;
                        }
                    }
                    return;
                }
                () = tx.closed() => return,
            }
        }
    });
    ReceiverStream::new(rx)
}

fn output_of(o: exec_output::Output) -> Result<ExecOutput, Status> {
    Ok(ExecOutput { output: Some(o) })
}

/// Sends what `fd` (a pipe) yields as `wrap` messages until its end.
async fn pump_pipe(
    fd: OwnedFd,
    wrap: fn(Vec<u8>) -> exec_output::Output,
    tx: mpsc::Sender<Result<ExecOutput, Status>>,
) {
    let Ok(mut rx) = pipe::Receiver::from_owned_fd(fd) else {
        return;
    };
    let mut buf = vec![0u8; CHUNK];
    loop {
        match rx.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.send(output_of(wrap(buf[..n].to_vec()))).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// SIGKILLs the process group `pgid` unless its leader has already been reaped (its
/// number could then be another's).
fn kill_group(pgid: i32, status: &watch::Receiver<Option<ExitCode>>) {
    if status.borrow().is_none() {
        // SAFETY: kill takes no pointers.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
    }
}

/// Drives a started exec: its output and exit to the host, the host's input to it. The
/// first message out is its pid, the last its exit code once its output is drained.
pub fn exec(
    started: Started,
    status: watch::Receiver<Option<ExitCode>>,
    mut inbound: Streaming<ExecInput>,
) -> Outbound<ExecOutput> {
    let (tx, rx) = mpsc::channel(OUTPUT_QUEUE);
    let pid = started.pid;
    let Started {
        stdin,
        stdout,
        stderr,
        ..
    } = started;
    let (terminal, pipes) = match stderr {
        None => (Terminal::new(stdout).ok().map(std::sync::Arc::new), None),
        Some(stderr) => (None, Some((stdout, stderr))),
    };
    let mut pumps = Vec::new();
    match (&terminal, pipes) {
        (Some(t), _) => {
            let (t, tx) = (std::sync::Arc::clone(t), tx.clone());
            pumps.push(tokio::spawn(async move {
                let mut buf = vec![0u8; CHUNK];
                loop {
                    match t.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            let message = output_of(exec_output::Output::Stdout(buf[..n].to_vec()));
                            if tx.send(message).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }));
        }
        (None, Some((stdout, stderr))) => {
            pumps.push(tokio::spawn(pump_pipe(
                stdout,
                exec_output::Output::Stdout,
                tx.clone(),
            )));
            pumps.push(tokio::spawn(pump_pipe(
                stderr,
                exec_output::Output::Stderr,
                tx.clone(),
            )));
        }
        (None, None) => {}
    }
    // The host's input: stdin, its end, terminal sizes. The call's end is a hang-up.
    let input_status = status.clone();
    let input_terminal = terminal.clone();
    tokio::spawn(async move {
        let mut stdin = stdin.and_then(|fd| pipe::Sender::from_owned_fd(fd).ok());
        loop {
            let message = match inbound.message().await {
                Ok(Some(m)) => m,
                Ok(None) | Err(_) => break,
            };
            match message.input {
                Some(exec_input::Input::Stdin(data)) => {
                    if let Some(t) = &input_terminal {
                        let _ = t.write_all(&data).await;
                    } else if let Some(w) = &mut stdin
                        && w.write_all(&data).await.is_err()
                    {
                        stdin = None;
                    }
                }
                Some(exec_input::Input::CloseStdin(_)) => stdin = None,
                Some(exec_input::Input::Resize(size)) => {
                    if let Some(t) = &input_terminal {
                        let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
                        t.resize(clamp(size.width), clamp(size.height));
                    }
                }
                Some(exec_input::Input::Start(_)) | None => {}
            }
        }
        kill_group(pid, &input_status);
    });
    // The exit, after the output; or the host hanging up first.
    tokio::spawn(async move {
        let started = output_of(exec_output::Output::StartedPid(pid as u32));
        if tx.send(started).await.is_err() {
            kill_group(pid, &status);
            return;
        }
        let code = tokio::select! {
            code = Reaper::wait(status.clone()) => code,
            () = tx.closed() => {
                kill_group(pid, &status);
                return;
            }
        };
        // A child the process left may hold its output open: drain a little, then stop
        // reading (the descriptors close with the tasks).
        let aborts: Vec<_> = pumps.iter().map(|p| p.abort_handle()).collect();
        let _ = tokio::time::timeout(DRAIN_AFTER_EXIT, async {
            for pump in pumps {
                let _ = pump.await;
            }
        })
        .await;
        for abort in aborts {
            abort.abort();
        }
        drop(terminal);
        let _ = tx
            .send(output_of(exec_output::Output::ExitCode(code)))
            .await;
    });
    ReceiverStream::new(rx)
}

/// Connects to `port` on the guest's loopback and streams the connection both ways.
pub async fn port_forward(mut inbound: Streaming<PortData>) -> Result<Outbound<PortData>, Status> {
    let first = inbound
        .message()
        .await?
        .ok_or_else(|| Status::invalid_argument("the port-forward call named no port"))?;
    let port = u16::try_from(first.port)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| Status::invalid_argument(format!("{} is not a TCP port", first.port)))?;
    let tcp = match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
        Ok(tcp) => tcp,
        Err(v4) => tokio::net::TcpStream::connect(("::1", port))
            .await
            .map_err(|_| {
                Status::failed_precondition(format!("connect to localhost:{port}: {v4}"))
            })?,
    };
    let (mut from_port, mut to_port) = tcp.into_split();
    let (tx, rx) = mpsc::channel(OUTPUT_QUEUE);
    let reader = tokio::spawn(async move {
        let mut message = first;
        loop {
            if !message.data.is_empty() && to_port.write_all(&message.data).await.is_err() {
                return;
            }
            if message.eof {
                let _ = to_port.shutdown().await;
                return;
            }
            message = match inbound.message().await {
                Ok(Some(m)) => m,
                // The host ended or dropped the call: no more data either way.
                Ok(None) | Err(_) => return,
            };
        }
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = tokio::select! {
                n = from_port.read(&mut buf) => n,
                () = tx.closed() => break,
            };
            let message = match n {
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
            if tx.send(Ok(message)).await.is_err() || last {
                break;
            }
        }
        // The port closed its side: the host's side may still send until it ends its
        // call. The host gone (the call dropped): the reader goes too, even if it is stuck
        // writing to a port that does not read, and the connection closes with it.
        let abort = reader.abort_handle();
        tokio::select! {
            _ = reader => {}
            () = tx.closed() => abort.abort(),
        }
    });
    Ok(ReceiverStream::new(rx))
}
