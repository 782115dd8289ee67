//! The attach socket (`attach` in the bundle): any number of clients connect, each gets
//! the container's output from then on, and may write to its stdin (when the container was
//! created with one) and resize its terminal. Frames both ways: a kind byte, a 32-bit
//! big-endian length, the payload. From the monitor: 1 stdout, 2 stderr. From a client:
//! 0 stdin data, 3 close stdin, 4 resize (width and height as 16-bit big-endian).
//!
//! Never blocks the container: sockets and the stdin pipe are non-blocking; a client that
//! cannot keep up is dropped, stdin a container does not read is dropped.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};

/// Output kinds.
pub const STDOUT: u8 = 1;
/// Output kinds.
pub const STDERR: u8 = 2;
const STDIN: u8 = 0;
const CLOSE_STDIN: u8 = 3;
const RESIZE: u8 = 4;

struct Client {
    stream: UnixStream,
    inbuf: Vec<u8>,
}

/// The socket, its clients and the container's input side.
pub struct Attach {
    listener: UnixListener,
    clients: Vec<Client>,
    stdin: Option<File>,
    stdin_once: bool,
    terminal: Option<RawFd>,
}

fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on a descriptor we own; no pointers.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
}

impl Attach {
    /// Listens on `name` (relative to the bundle, our working directory). `stdin` is the
    /// container's input (a pipe's write end, or the pty master); `terminal` the pty master
    /// to resize.
    pub fn bind(
        name: &str,
        stdin: Option<File>,
        stdin_once: bool,
        terminal: Option<RawFd>,
    ) -> std::io::Result<Self> {
        let _ = std::fs::remove_file(name);
        let listener = UnixListener::bind(name)?;
        listener.set_nonblocking(true)?;
        if let Some(s) = &stdin {
            set_nonblocking(s.as_raw_fd());
        }
        Ok(Self {
            listener,
            clients: Vec::new(),
            stdin,
            stdin_once,
            terminal,
        })
    }

    /// Descriptors to poll for input: the listener, then each client.
    pub fn pollfds(&self) -> Vec<libc::pollfd> {
        std::iter::once(self.listener.as_raw_fd())
            .chain(self.clients.iter().map(|c| c.stream.as_raw_fd()))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect()
    }

    /// Handles what `poll` reported for [`Attach::pollfds`].
    pub fn handle(&mut self, polled: &[libc::pollfd]) {
        let mut gone = Vec::new();
        for (i, pfd) in polled.iter().enumerate().skip(1) {
            if pfd.revents == 0 {
                continue;
            }
            if !self.read_client(i - 1) {
                gone.push(i - 1);
            }
        }
        for i in gone.into_iter().rev() {
            self.clients.remove(i);
            if self.stdin_once {
                // The first attacher leaving ends the container's input.
                self.stdin = None;
            }
        }
        if polled.first().is_some_and(|p| p.revents != 0) {
            while let Ok((stream, _)) = self.listener.accept() {
                let _ = stream.set_nonblocking(true);
                self.clients.push(Client {
                    stream,
                    inbuf: Vec::new(),
                });
            }
        }
    }

    /// Reads and applies a client's frames; `false` once it hung up.
    fn read_client(&mut self, i: usize) -> bool {
        let mut buf = [0u8; 32 * 1024];
        let Some(client) = self.clients.get_mut(i) else {
            return false;
        };
        match client.stream.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => client.inbuf.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
        let mut frames = Vec::new();
        while client.inbuf.len() >= 5 {
            let len = u32::from_be_bytes([
                client.inbuf[1],
                client.inbuf[2],
                client.inbuf[3],
                client.inbuf[4],
            ]) as usize;
            if len > 1 << 20 {
                return false;
            }
            if client.inbuf.len() < 5 + len {
                break;
            }
            let kind = client.inbuf[0];
            let payload = client.inbuf[5..5 + len].to_vec();
            client.inbuf.drain(..5 + len);
            frames.push((kind, payload));
        }
        for (kind, payload) in frames {
            match kind {
                STDIN => {
                    if let Some(stdin) = self.stdin.as_mut() {
                        // A container that does not read its input loses what does not fit.
                        let _ = stdin.write(&payload);
                    }
                }
                CLOSE_STDIN => self.stdin = None,
                RESIZE if payload.len() == 4 => {
                    if let Some(fd) = self.terminal {
                        let size = libc::winsize {
                            ws_col: u16::from_be_bytes([payload[0], payload[1]]),
                            ws_row: u16::from_be_bytes([payload[2], payload[3]]),
                            ws_xpixel: 0,
                            ws_ypixel: 0,
                        };
                        // SAFETY: TIOCSWINSZ reads a winsize from the pointer.
                        unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &size) };
                    }
                }
                _ => {}
            }
        }
        true
    }

    /// Sends output to every client; drops those whose socket is full.
    pub fn broadcast(&mut self, kind: u8, data: &[u8]) {
        if self.clients.is_empty() {
            return;
        }
        let mut frame = Vec::with_capacity(data.len() + 5);
        frame.push(kind);
        frame.extend_from_slice(&(data.len() as u32).to_be_bytes());
        frame.extend_from_slice(data);
        self.clients
            .retain_mut(|c| matches!(c.stream.write(&frame), Ok(n) if n == frame.len()));
    }
}
