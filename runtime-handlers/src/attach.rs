//! Attaching to a running container's stdio through its monitor's `attach` socket (see
//! the monitor's `attach` module for the frame format). Several attachers may be
//! connected at once; detaching never stops the container.

use std::os::fd::AsRawFd;
use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

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
    half: OwnedReadHalf,
}

/// Writes to the container's stdin and terminal.
#[derive(Debug)]
pub struct AttachWriter {
    half: OwnedWriteHalf,
}

/// Connects to the monitor of the container whose bundle is `bundle`. The socket is
/// reached through a descriptor of the bundle directory, so the path stays short.
pub async fn connect(bundle: &Path) -> std::io::Result<(AttachReader, AttachWriter)> {
    let dir = std::fs::File::open(bundle)?;
    let path = format!("/proc/self/fd/{}/attach", dir.as_raw_fd());
    let stream = tokio::net::UnixStream::connect(&path).await?;
    drop(dir);
    let (read, write) = stream.into_split();
    Ok((AttachReader { half: read }, AttachWriter { half: write }))
}

impl AttachReader {
    /// The next piece of output; `None` once the container's streams closed.
    pub async fn next(&mut self) -> Option<(AttachStream, Vec<u8>)> {
        loop {
            let mut head = [0u8; 5];
            self.half.read_exact(&mut head).await.ok()?;
            let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
            if len > 1 << 24 {
                return None;
            }
            let mut data = vec![0u8; len];
            self.half.read_exact(&mut data).await.ok()?;
            match head[0] {
                1 => return Some((AttachStream::Stdout, data)),
                2 => return Some((AttachStream::Stderr, data)),
                _ => continue,
            }
        }
    }
}

impl AttachWriter {
    async fn frame(&mut self, kind: u8, data: &[u8]) -> std::io::Result<()> {
        let mut frame = Vec::with_capacity(data.len() + 5);
        frame.push(kind);
        frame.extend_from_slice(&(data.len() as u32).to_be_bytes());
        frame.extend_from_slice(data);
        self.half.write_all(&frame).await
    }

    /// Sends input to the container's stdin.
    pub async fn stdin(&mut self, data: &[u8]) -> std::io::Result<()> {
        for chunk in data.chunks(64 * 1024) {
            self.frame(0, chunk).await?;
        }
        Ok(())
    }

    /// Closes the container's stdin.
    pub async fn close_stdin(&mut self) -> std::io::Result<()> {
        self.frame(3, &[]).await
    }

    /// Resizes the container's terminal.
    pub async fn resize(&mut self, width: u16, height: u16) -> std::io::Result<()> {
        let mut size = width.to_be_bytes().to_vec();
        size.extend_from_slice(&height.to_be_bytes());
        self.frame(4, &size).await
    }
}
