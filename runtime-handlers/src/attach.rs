//! Attaching to a running container's stdio through its monitor's `attach` socket (see
//! the monitor's `attach` module for the frame format), or, for a container in a VM,
//! through a call to its agent. Several attachers may be connected at once; detaching
//! never stops the container.

use std::os::fd::AsRawFd;
use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;

/// Output kinds a reader yields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachStream {
    /// The container's stdout (with a TTY: all of its output).
    Stdout,
    /// Its stderr.
    Stderr,
}

/// Reads the container's output.
#[derive(Debug)]
pub struct AttachReader {
    from: ReadFrom,
}

#[derive(Debug)]
enum ReadFrom {
    Monitor(OwnedReadHalf),
    Remote(mpsc::Receiver<(AttachStream, Vec<u8>)>),
}

/// Input for an attached container (what a remote writer passes on as it is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteInput {
    /// Bytes for its stdin.
    Stdin(Vec<u8>),
    /// Close its stdin.
    CloseStdin,
    /// Resize its terminal (width, height).
    Resize(u16, u16),
}

/// Writes to the container's stdin and terminal.
#[derive(Debug)]
pub struct AttachWriter {
    to: WriteTo,
}

#[derive(Debug)]
enum WriteTo {
    Monitor(OwnedWriteHalf),
    Remote(mpsc::Sender<RemoteInput>),
}

/// An attachment elsewhere (a VM's agent): output arrives on `output` until it closes;
/// input goes to `input`. Whoever feeds them ends the attachment when both are dropped.
pub fn remote(
    output: mpsc::Receiver<(AttachStream, Vec<u8>)>,
    input: mpsc::Sender<RemoteInput>,
) -> (AttachReader, AttachWriter) {
    (
        AttachReader {
            from: ReadFrom::Remote(output),
        },
        AttachWriter {
            to: WriteTo::Remote(input),
        },
    )
}

/// Connects to the monitor of the container whose bundle is `bundle`. The socket is
/// reached through a descriptor of the bundle directory, so the path stays short.
pub async fn connect(bundle: &Path) -> std::io::Result<(AttachReader, AttachWriter)> {
    let dir = std::fs::File::open(bundle)?;
    let path = format!("/proc/self/fd/{}/attach", dir.as_raw_fd());
    let stream = tokio::net::UnixStream::connect(&path).await?;
    drop(dir);
    let (read, write) = stream.into_split();
    Ok((
        AttachReader {
            from: ReadFrom::Monitor(read),
        },
        AttachWriter {
            to: WriteTo::Monitor(write),
        },
    ))
}

impl AttachReader {
    /// The next piece of output; `None` once the container's streams closed.
    pub async fn next(&mut self) -> Option<(AttachStream, Vec<u8>)> {
        let half = match &mut self.from {
            ReadFrom::Monitor(half) => half,
            ReadFrom::Remote(rx) => return rx.recv().await,
        };
        loop {
            let mut head = [0u8; 5];
            half.read_exact(&mut head).await.ok()?;
            let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
            if len > 1 << 24 {
                return None;
            }
            let mut data = vec![0u8; len];
            half.read_exact(&mut data).await.ok()?;
            match head[0] {
                1 => return Some((AttachStream::Stdout, data)),
                2 => return Some((AttachStream::Stderr, data)),
                _ => continue,
            }
        }
    }
}

impl AttachWriter {
    /// Sends `input`: a frame to the monitor, or a message to the remote container.
    async fn send(&mut self, input: RemoteInput) -> std::io::Result<()> {
        let half = match &mut self.to {
            WriteTo::Remote(tx) => {
                return tx
                    .send(input)
                    .await
                    .map_err(|_| std::io::ErrorKind::BrokenPipe.into());
            }
            WriteTo::Monitor(half) => half,
        };
        let (kind, data) = match input {
            RemoteInput::Stdin(data) => (0, data),
            RemoteInput::CloseStdin => (3, Vec::new()),
            RemoteInput::Resize(width, height) => {
                let mut size = width.to_be_bytes().to_vec();
                size.extend_from_slice(&height.to_be_bytes());
                (4, size)
            }
        };
        let mut frame = Vec::with_capacity(data.len() + 5);
        frame.push(kind);
        frame.extend_from_slice(&(data.len() as u32).to_be_bytes());
        frame.extend_from_slice(&data);
        half.write_all(&frame).await
    }

    /// Sends input to the container's stdin.
    pub async fn stdin(&mut self, data: &[u8]) -> std::io::Result<()> {
        for chunk in data.chunks(64 * 1024) {
            self.send(RemoteInput::Stdin(chunk.to_vec())).await?;
        }
        Ok(())
    }

    /// Closes the container's stdin.
    pub async fn close_stdin(&mut self) -> std::io::Result<()> {
        self.send(RemoteInput::CloseStdin).await
    }

    /// Resizes the container's terminal.
    pub async fn resize(&mut self, width: u16, height: u16) -> std::io::Result<()> {
        self.send(RemoteInput::Resize(width, height)).await
    }
}
