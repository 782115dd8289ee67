//! A gVisor subcontainer's monitor (`--start-socket`): runsc starts no host process for
//! a container joining a sandbox and takes its stdio from `runsc start`, so the monitor
//! runs `start` itself when crispd asks on the bundle's start socket
//! ([`runtime_handlers::start_socket`]), and then asks the sandbox for the exit.
//!
//! runsc's control server speaks urpc (one JSON call, one JSON result, on the abstract
//! unix socket `runsc-sandbox.<sandbox id>` that `runsc create` bound in this network
//! namespace); `containerManager.Wait` answers when the container's init has exited, with
//! its wait status. This is what `runsc wait` does, without a Go process per container;
//! `runsc wait` itself is the fallback once the container's streams end.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};

use runtime_handlers::start_socket::{MAX_LINE, Reply, Request};

use super::{Args, container_stdin, runtime_error, stdio_or_null};

/// Most a result may be: `{"success":true,"err":"...","result":N}`.
const MAX_RESULT: usize = 64 * 1024;

/// A `containerManager.Wait` call in flight.
pub struct Waiter {
    socket: UnixStream,
    reply: Vec<u8>,
}

/// Connects to the abstract unix socket `name` (without the leading NUL). Go programs
/// of runsc's age bind abstract names with a trailing NUL counted in the address (it
/// shows as `@name@` in /proc/net/unix); newer ones without: both are tried.
fn connect_abstract(name: &str) -> std::io::Result<UnixStream> {
    connect_abstract_len(name, true).or_else(|_| connect_abstract_len(name, false))
}

fn connect_abstract_len(name: &str, trailing_nul: bool) -> std::io::Result<UnixStream> {
    // SAFETY: plain socket call.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor we own.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_un is plain data; zeroed is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = name.as_bytes();
    if bytes.len() + 2 > addr.sun_path.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "socket name too long",
        ));
    }
    for (slot, b) in addr.sun_path[1..].iter_mut().zip(bytes) {
        *slot = *b as libc::c_char;
    }
    let len =
        std::mem::size_of::<libc::sa_family_t>() + 1 + bytes.len() + usize::from(trailing_nul);
    // SAFETY: `addr` is a valid sockaddr_un of at least `len` bytes.
    let rc = unsafe {
        libc::connect(
            owned.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(UnixStream::from(owned))
}

impl Waiter {
    /// Asks sandbox `sandbox_id` to wait for container `id`; `None` if it cannot be
    /// asked (no sandbox id given, or no control socket).
    pub fn connect(sandbox_id: &str, id: &str) -> Option<Self> {
        if sandbox_id.is_empty() {
            return None;
        }
        let mut socket = connect_abstract(&format!("runsc-sandbox.{sandbox_id}")).ok()?;
        let call = format!(
            "{{\"method\":\"containerManager.Wait\",\"arg\":{}}}",
            json_string(id)
        );
        socket.write_all(call.as_bytes()).ok()?;
        Some(Self {
            socket,
            reply: Vec::new(),
        })
    }

    /// The socket to poll for the reply.
    pub fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    /// Reads what arrived; the exit code once the reply is complete (or the sandbox
    /// went away: 137, everything in it was killed), -1 for a complete reply that says
    /// no code (the caller asks the runtime instead).
    pub fn read(&mut self) -> Option<i32> {
        let mut buf = [0u8; 4096];
        match self.socket.read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => None,
            Ok(0) | Err(_) => Some(exit_code(&self.reply).unwrap_or(128 + libc::SIGKILL)),
            Ok(n) => {
                self.reply.extend_from_slice(&buf[..n]);
                if self.reply.len() > MAX_RESULT {
                    return Some(128 + libc::SIGKILL);
                }
                exit_code(&self.reply)
            }
        }
    }

    /// Blocks until the reply is complete.
    pub fn finish(mut self) -> i32 {
        loop {
            if let Some(code) = self.read() {
                return code;
            }
        }
    }
}

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The exit code in a complete urpc result for `containerManager.Wait`: the wait status
/// decoded as the kernel encodes it (128 + signal for a signal death); a failed call
/// means the container cannot be waited for any more (137); a complete reply without a
/// status is -1. `None` while incomplete (a reply is one JSON object, which Go encodes
/// with no space between a key and its value).
fn exit_code(reply: &[u8]) -> Option<i32> {
    let text = String::from_utf8_lossy(reply);
    let text = text.trim();
    if !text.ends_with('}') {
        return None;
    }
    if text.contains("\"success\":false") {
        return Some(128 + libc::SIGKILL);
    }
    let status = text
        .split("\"result\":")
        .nth(1)
        .map(|rest| {
            rest.trim_start()
                .chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .and_then(|digits| digits.parse::<i32>().ok());
    let Some(status) = status else {
        return Some(-1);
    };
    Some(if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        255
    })
}

/// The container's exit code from the runtime's `wait` (its status and what it printed):
/// `{"id":..,"exitStatus":N}`. A `wait` that failed means the sandbox is gone, which
/// killed everything in it.
fn waited_exit(status: i32, report: &str) -> i32 {
    let code = report.split("\"exitStatus\":").nth(1).and_then(|rest| {
        let digits: String = rest
            .trim_start()
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '-')
            .collect();
        digits.parse::<i32>().ok()
    });
    match code {
        Some(code) if status == 0 => code,
        _ => 128 + libc::SIGKILL,
    }
}

/// Waits on `listener` for crispd to say `start` (runs the runtime's `start` with the
/// container's stdio and answers `ok` or `error <message>`; returns once it started) or
/// `cancel` (returns `None`: the container is being removed unstarted). Gives up, with
/// `None`, when the bundle is removed.
pub fn await_start(
    args: &Args,
    listener: &std::os::unix::net::UnixListener,
    runtime_log: &Path,
    stdin_pipe: &Option<(OwnedFd, OwnedFd)>,
    out_w: OwnedFd,
    err_w: OwnedFd,
) -> Option<()> {
    use std::io::BufRead;
    loop {
        let mut pfd = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, 1000) };
        if n <= 0 {
            // A removed bundle (our working directory) has no links left.
            let gone = std::fs::metadata(".").map_or(true, |m| {
                use std::os::unix::fs::MetadataExt;
                m.nlink() == 0
            });
            if gone {
                return None;
            }
            continue;
        }
        let Ok((conn, _)) = listener.accept() else {
            continue;
        };
        // A caller that connects and says nothing must not hold the monitor up.
        let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(5)));
        let mut line = Vec::new();
        let mut reader = std::io::BufReader::new((&conn).take(MAX_LINE as u64));
        if reader.read_until(b'\n', &mut line).is_err() {
            continue;
        }
        let mut conn = &conn;
        match Request::decode(&line) {
            Some(Request::Cancel) => {
                let _ = conn.write_all(&Reply::Ok.encode());
                return None;
            }
            Some(Request::Start) => {}
            None => {
                let reply = Reply::Error("unknown request".to_owned());
                let _ = conn.write_all(&reply.encode());
                continue;
            }
        }
        let mut start = Command::new(&args.runtime);
        start
            .args(&args.runtime_args)
            .arg("--root")
            .arg(&args.root)
            .arg("--log")
            .arg(runtime_log)
            .arg("--log-format")
            .arg("json")
            .arg("start")
            .arg(&args.id);
        // With a TTY the container's stdio is the terminal made at create.
        if args.tty {
            start
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
        } else {
            start
                .stdin(container_stdin(stdin_pipe))
                .stdout(stdio_or_null(true, &out_w))
                .stderr(stdio_or_null(true, &err_w));
        }
        let started = start.status();
        drop(start);
        match started {
            Ok(status) if status.success() => {}
            Ok(_) => {
                let _ = conn.write_all(&Reply::Error(runtime_error(runtime_log)).encode());
                continue;
            }
            Err(e) => {
                let message = format!("cannot run {}: {e}", args.runtime.display());
                let _ = conn.write_all(&Reply::Error(message).encode());
                continue;
            }
        }
        // Our copies of the write ends go, so the streams end when the container's do.
        drop((out_w, err_w));
        let _ = conn.write_all(&Reply::Ok.encode());
        return Some(());
    }
}

/// The exit of a started subcontainer, once its streams have ended: the runtime's
/// `wait` (which returns at once for a container that has exited, and otherwise waits
/// for one whose processes closed their output but live on). A long-lived `wait` per
/// container would cost a Go process (~6 MiB) each.
pub fn runtime_wait(args: &Args) -> i32 {
    let waited = Command::new(&args.runtime)
        .args(&args.runtime_args)
        .arg("--root")
        .arg(&args.root)
        .arg("wait")
        .arg(&args.id)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    let (code, text) = match waited {
        Ok(out) => (
            i32::from(!out.status.success()),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ),
        Err(_) => (1, String::new()),
    };
    waited_exit(code, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_decode_like_wait_statuses() {
        assert_eq!(
            exit_code(b"{\"success\":true,\"err\":\"\",\"result\":0}"),
            Some(0)
        );
        assert_eq!(
            exit_code(b"{\"success\":true,\"err\":\"\",\"result\":768}"),
            Some(3)
        );
        assert_eq!(
            exit_code(b"{\"success\":true,\"err\":\"\",\"result\":9}"),
            Some(137)
        );
        assert_eq!(
            exit_code(b"{\"success\":false,\"err\":\"gone\",\"result\":null}"),
            Some(137)
        );
        assert_eq!(exit_code(b"{\"success\":true,\"err\":\"\",\"res"), None);
        assert_eq!(
            exit_code(b"{\"success\":true,\"err\":\"\",\"result\":null}"),
            Some(-1)
        );
        assert_eq!(exit_code(b"\xff{}"), Some(-1));
        assert_eq!(json_string("a\"b\\c"), "\"a\\\"b\\\\c\"");
    }
}
