//! Streaming exec (CRI `Exec`): a process started in a running container whose stdio the
//! caller drives, with or without a terminal. The OCI handler runs `<runtime> exec` in the
//! foreground: without a terminal the process gets the pipes directly; with one, the
//! runtime passes the pty master over a console socket. The process's host pid (from
//! `--pid-file`) is killed when the session is dropped before it ended, so a client that
//! goes away leaves nothing running. A remote session (the microVM handler's, through its
//! agent) has streams and a cancel instead: dropping it ends the call, and the far side
//! kills the process.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::error::HandlerError;

/// How a terminal is resized.
#[derive(Clone)]
enum Resizer {
    /// A pty master here, shared with the reader and the writer.
    Pty(Arc<OwnedFd>),
    /// A terminal elsewhere, told its size through this.
    Remote(Arc<dyn Fn(u16, u16) + Send + Sync>),
}

/// The exec's terminal, for resizes.
#[derive(Clone)]
pub struct Terminal {
    resizer: Resizer,
}

impl std::fmt::Debug for Terminal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.resizer {
            Resizer::Pty(_) => "pty",
            Resizer::Remote(_) => "remote",
        };
        f.debug_struct("Terminal").field("kind", &kind).finish()
    }
}

impl Terminal {
    /// A terminal elsewhere (in a VM), resized by calling `resize(width, height)`.
    pub fn remote(resize: impl Fn(u16, u16) + Send + Sync + 'static) -> Self {
        Self {
            resizer: Resizer::Remote(Arc::new(resize)),
        }
    }

    /// Sets the terminal's size (columns, rows).
    pub fn resize(&self, width: u16, height: u16) {
        match &self.resizer {
            Resizer::Pty(master) => {
                let size = libc::winsize {
                    ws_row: height,
                    ws_col: width,
                    ws_xpixel: 0,
                    ws_ypixel: 0,
                };
                // SAFETY: TIOCSWINSZ reads a winsize from the pointer, which is valid for
                // the call.
                unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
            }
            Resizer::Remote(resize) => resize(width, height),
        }
    }
}

/// Where the exec's process is.
enum Proc {
    /// A child of ours (the runtime's `exec`), its pid in `pid_file` once it runs.
    Host {
        child: Box<tokio::process::Child>,
        pid_file: PathBuf,
        spec_file: PathBuf,
    },
    /// Elsewhere: its exit arrives on `exit`; `cancel` ends it.
    Remote {
        exit: Option<tokio::sync::oneshot::Receiver<Result<i32, HandlerError>>>,
        cancel: Option<Box<dyn FnOnce() + Send>>,
    },
}

type Writer = Option<Box<dyn AsyncWrite + Send + Unpin>>;
type Reader = Option<Box<dyn AsyncRead + Send + Unpin>>;

/// A running exec: its stdio (as requested) and how to wait for it.
pub struct ExecSession {
    /// Its stdin, if requested.
    pub stdin: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    /// Its stdout (with a terminal: the terminal's output).
    pub stdout: Option<Box<dyn AsyncRead + Send + Unpin>>,
    /// Its stderr (never with a terminal).
    pub stderr: Option<Box<dyn AsyncRead + Send + Unpin>>,
    /// The terminal, if there is one.
    pub terminal: Option<Terminal>,
    process: Proc,
    finished: bool,
}

impl std::fmt::Debug for ExecSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("ExecSession");
        if let Proc::Host { pid_file, .. } = &self.process {
            d.field("pid_file", pid_file);
        }
        d.field("terminal", &self.terminal.is_some())
            .finish_non_exhaustive()
    }
}

impl ExecSession {
    pub(crate) fn new(
        child: tokio::process::Child,
        pid_file: PathBuf,
        spec_file: PathBuf,
        terminal: Option<OwnedFd>,
    ) -> Result<Self, HandlerError> {
        let mut child = child;
        let (stdin, stdout, stderr, terminal): (Writer, Reader, Reader, Option<Terminal>) =
            match terminal {
                Some(master) => {
                    let io = |source: std::io::Error| HandlerError::Io {
                        path: PathBuf::from("/dev/ptmx"),
                        source,
                    };
                    let reader = master.try_clone().map_err(io)?;
                    let writer = master.try_clone().map_err(io)?;
                    (
                        Some(Box::new(tokio::fs::File::from_std(std::fs::File::from(
                            writer,
                        )))),
                        Some(Box::new(tokio::fs::File::from_std(std::fs::File::from(
                            reader,
                        )))),
                        None,
                        Some(Terminal {
                            resizer: Resizer::Pty(Arc::new(master)),
                        }),
                    )
                }
                None => (
                    child
                        .stdin
                        .take()
                        .map(|s| Box::new(s) as Box<dyn AsyncWrite + Send + Unpin>),
                    child
                        .stdout
                        .take()
                        .map(|s| Box::new(s) as Box<dyn AsyncRead + Send + Unpin>),
                    child
                        .stderr
                        .take()
                        .map(|s| Box::new(s) as Box<dyn AsyncRead + Send + Unpin>),
                    None,
                ),
            };
        Ok(Self {
            stdin,
            stdout,
            stderr,
            terminal,
            process: Proc::Host {
                child: Box::new(child),
                pid_file,
                spec_file,
            },
            finished: false,
        })
    }

    /// A session whose process runs elsewhere: its streams, its terminal, where its exit
    /// code comes, and what ends it (called when the session is killed or dropped).
    pub fn remote(
        stdin: Option<Box<dyn AsyncWrite + Send + Unpin>>,
        stdout: Option<Box<dyn AsyncRead + Send + Unpin>>,
        stderr: Option<Box<dyn AsyncRead + Send + Unpin>>,
        terminal: Option<Terminal>,
        exit: tokio::sync::oneshot::Receiver<Result<i32, HandlerError>>,
        cancel: impl FnOnce() + Send + 'static,
    ) -> Self {
        Self {
            stdin,
            stdout,
            stderr,
            terminal,
            process: Proc::Remote {
                exit: Some(exit),
                cancel: Some(Box::new(cancel)),
            },
            finished: false,
        }
    }

    /// Waits for the process and returns its exit code (128 + signal for a signal death).
    pub async fn wait(&mut self) -> Result<i32, HandlerError> {
        use std::os::unix::process::ExitStatusExt;
        let code = match &mut self.process {
            Proc::Host {
                child, pid_file, ..
            } => {
                let status = child.wait().await.map_err(|source| HandlerError::Io {
                    path: pid_file.clone(),
                    source,
                })?;
                status
                    .code()
                    .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
            }
            Proc::Remote { exit, .. } => {
                let lost = || HandlerError::Monitor {
                    id: "exec".to_owned(),
                    message: "the remote exec ended without an exit code".to_owned(),
                };
                exit.take().ok_or_else(lost)?.await.map_err(|_| lost())??
            }
        };
        self.finished = true;
        self.cleanup();
        Ok(code)
    }

    /// Kills the process now (the client went away). Its parent (the runtime, or the
    /// monitor for a terminal) reaps it and exits; until the process has started, the
    /// parent itself is killed. A remote process is killed by ending its call.
    pub fn kill(&mut self) {
        match &mut self.process {
            Proc::Host {
                child, pid_file, ..
            } => {
                if kill_from_pid_file(pid_file).is_none() {
                    let _ = child.start_kill();
                }
            }
            Proc::Remote { cancel, .. } => {
                if let Some(cancel) = cancel.take() {
                    cancel();
                }
            }
        }
    }

    /// Kills the process, waiting (up to 2 s) for the runtime to report its pid if it has
    /// not yet: a process that just started must not survive its client.
    pub async fn terminate(&mut self) {
        if let Proc::Host {
            child, pid_file, ..
        } = &mut self.process
        {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
            while !pid_file.exists() && std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
        self.kill();
    }

    fn cleanup(&self) {
        if let Proc::Host {
            pid_file,
            spec_file,
            ..
        } = &self.process
        {
            let _ = std::fs::remove_file(pid_file);
            let _ = std::fs::remove_file(spec_file);
        }
    }
}

/// SIGKILLs the process whose pid the runtime wrote to `pid_file` (its `--pid-file`);
/// returns the pid, or `None` if none was written yet. The caller knows the process has
/// not been reaped: its parent still waits on it.
/// A pipe whose two ends are closed on exec.
pub fn cloexec_pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded: both are fresh descriptors we own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

pub(crate) fn kill_from_pid_file(pid_file: &std::path::Path) -> Option<i32> {
    let pid = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
        .filter(|p| *p > 0)?;
    // SAFETY: kill takes no pointers; the pid is an exec'd process its runtime reported.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    Some(pid)
}

impl Drop for ExecSession {
    fn drop(&mut self) {
        // A remote call is ended even after the exit: it holds a stream open until then.
        if !self.finished || matches!(self.process, Proc::Remote { .. }) {
            self.kill();
            self.cleanup();
        }
    }
}
