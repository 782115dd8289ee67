//! Streaming exec (CRI `Exec`): a process started in a running container whose stdio the
//! caller drives, with or without a terminal. The OCI handler runs `<runtime> exec` in the
//! foreground: without a terminal the process gets the pipes directly; with one, the
//! runtime passes the pty master over a console socket. The process's host pid (from
//! `--pid-file`) is killed when the session is dropped before it ended, so a client that
//! goes away leaves nothing running.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::error::HandlerError;

/// A pty master shared by the reader, the writer and resizes.
#[derive(Debug, Clone)]
pub struct Terminal {
    master: Arc<OwnedFd>,
}

impl Terminal {
    /// Sets the terminal's size (columns, rows).
    pub fn resize(&self, width: u16, height: u16) {
        let size = libc::winsize {
            ws_row: height,
            ws_col: width,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize from the pointer, which is valid for the call.
        unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
    }
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
    child: tokio::process::Child,
    pid_file: PathBuf,
    spec_file: PathBuf,
    finished: bool,
}

impl std::fmt::Debug for ExecSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecSession")
            .field("pid_file", &self.pid_file)
            .field("terminal", &self.terminal.is_some())
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
                            master: Arc::new(master),
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
            child,
            pid_file,
            spec_file,
            finished: false,
        })
    }

    /// Waits for the process and returns its exit code (128 + signal for a signal death).
    pub async fn wait(&mut self) -> Result<i32, HandlerError> {
        use std::os::unix::process::ExitStatusExt;
        let status = self.child.wait().await.map_err(|source| HandlerError::Io {
            path: self.pid_file.clone(),
            source,
        })?;
        self.finished = true;
        self.cleanup();
        Ok(status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
    }

    /// Kills the process now (the client went away). Its parent (the runtime, or the
    /// monitor for a terminal) reaps it and exits; until the process has started, the
    /// parent itself is killed.
    pub fn kill(&mut self) {
        if kill_from_pid_file(&self.pid_file).is_none() {
            let _ = self.child.start_kill();
        }
    }

    /// Kills the process, waiting (up to 2 s) for the runtime to report its pid if it has
    /// not yet: a process that just started must not survive its client.
    pub async fn terminate(&mut self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while !self.pid_file.exists() && std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        self.kill();
    }

    fn cleanup(&self) {
        let _ = std::fs::remove_file(&self.pid_file);
        let _ = std::fs::remove_file(&self.spec_file);
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
        if !self.finished {
            self.kill();
            self.cleanup();
        }
    }
}
