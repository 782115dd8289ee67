//! `crisp-monitor`: the per-container monitor (the role conmon and containerd's shim play).
//!
//! crispd starts one per container. It detaches into its own session, makes itself the
//! child subreaper, runs `<runtime> create` with the container's stdout and stderr on
//! pipes it owns, reports `ok <pid>` (or `error <message>`) on its stdout, and then:
//! copies the container's output to the CRI log file in kubelet's format
//! (`<RFC3339Nano> <stream> <P|F> <text>`), reopens that file on SIGUSR1 (log rotation),
//! and when the container's init exits writes `<exit code>\n<finished ns>\n` to the exit
//! file (temp + rename). It does not depend on crispd: containers outlive the daemon.
//!
//! Small on purpose: std and libc only, one thread, no allocation in the steady state
//! beyond the line buffers.

mod attach;
mod gvisor;

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use crilog::{LogWriter, emit};

static REOPEN: AtomicBool = AtomicBool::new(false);

/// Where the report goes: the stdout crispd gave, moved off fd 1 (see [`take_report`]).
static REPORT: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_usr1(_: libc::c_int) {
    REOPEN.store(true, Ordering::SeqCst);
}

#[derive(Default)]
pub(crate) struct Args {
    runtime: PathBuf,
    root: PathBuf,
    id: String,
    bundle: PathBuf,
    log_path: PathBuf,
    exit_file: PathBuf,
    runtime_args: Vec<OsString>,
    tty: bool,
    stdin: bool,
    stdin_once: bool,
    /// Start the container when crispd asks on `start.sock`, giving the runtime's `start`
    /// the container's stdio, and learn its exit from the sandbox (see [`gvisor`]): a
    /// gVisor subcontainer has no host process, and takes its stdio from `start`.
    start_socket: bool,
    /// The gVisor sandbox a subcontainer runs in: its exit is asked of the sandbox's
    /// control socket.
    sandbox_id: String,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args::default();
    let mut it = std::env::args_os().skip(1);
    while let Some(flag) = it.next() {
        match flag.to_str() {
            Some("--tty") => args.tty = true,
            Some("--stdin") => args.stdin = true,
            Some("--stdin-once") => args.stdin_once = true,
            Some("--start-socket") => args.start_socket = true,
            _ => {}
        }
        if ["--tty", "--stdin", "--stdin-once", "--start-socket"]
            .iter()
            .any(|f| flag == *f)
        {
            continue;
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{} needs a value", flag.to_string_lossy()))?;
        match flag.to_str() {
            Some("--runtime") => args.runtime = value.into(),
            Some("--root") => args.root = value.into(),
            Some("--id") => args.id = value.to_string_lossy().into_owned(),
            Some("--bundle") => args.bundle = value.into(),
            Some("--log-path") => args.log_path = value.into(),
            Some("--exit-file") => args.exit_file = value.into(),
            Some("--runtime-arg") => args.runtime_args.push(value),
            Some("--sandbox-id") => args.sandbox_id = value.to_string_lossy().into_owned(),
            _ => return Err(format!("unknown flag {}", flag.to_string_lossy())),
        }
    }
    if args.id.is_empty()
        || args.bundle.as_os_str().is_empty()
        || args.runtime.as_os_str().is_empty()
    {
        return Err("--runtime, --id and --bundle are required".to_owned());
    }
    Ok(args)
}

/// Moves the report channel (the stdout crispd gave: a pipe or socket it reads to its
/// end) off fd 1, close-on-exec, and puts /dev/null on fd 1, so that nothing this process
/// starts holds it open. crispd passes it as stdout rather than on a descriptor of its
/// own choosing so that it can spawn this process without fork (posix_spawn): a fork of
/// a daemon of crispd's size costs it milliseconds of copy-on-write faults.
///
/// A crispd from before this change (still running while a new monitor is installed)
/// passes the channel on fd 3 instead, with /dev/null as stdout: then fd 3 is it.
fn take_report(legacy: bool) {
    // SAFETY: descriptor calls on this process's own descriptors; fcntl makes a new one.
    unsafe {
        if legacy {
            libc::fcntl(3, libc::F_SETFD, libc::FD_CLOEXEC);
            REPORT.store(3, Ordering::SeqCst);
            return;
        }
        let fd = libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3);
        REPORT.store(fd, Ordering::SeqCst);
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        if null >= 0 {
            libc::dup2(null, 1);
            libc::close(null);
        } else {
            // Nothing this process starts may hold the channel open.
            libc::close(1);
        }
    }
}

/// The report to crispd: one line (`userns`) or the last (`ok …` / `error …`), which
/// closes the channel.
fn say(line: &str) -> bool {
    let fd = REPORT.load(Ordering::SeqCst);
    // SAFETY: writes `line` to our own descriptor (or fails harmlessly on -1).
    let n = unsafe { libc::write(fd, line.as_ptr().cast(), line.len()) };
    usize::try_from(n).is_ok_and(|n| n == line.len())
}

fn is_open(fd: i32) -> bool {
    // SAFETY: fcntl on a descriptor number; an unused one just fails.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

fn is_socket(fd: i32) -> bool {
    // SAFETY: fstat writes into a zeroed stat buffer we own.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(fd, &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFSOCK
    }
}

/// Sends the final report and closes the channel.
fn report(line: &str) {
    say(line);
    let fd = REPORT.swap(-1, Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: closes our own descriptor once.
        unsafe { libc::close(fd) };
    }
}

/// The last error runc wrote to its JSON log.
pub(crate) fn runtime_error(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .rev()
        .find_map(|l| {
            let level_error =
                l.contains("\"level\":\"error\"") || l.contains("\"level\":\"fatal\"");
            if !level_error {
                return None;
            }
            let start = l.find("\"msg\":\"")? + 7;
            let rest = &l[start..];
            let end = rest.find("\",\"")?.min(rest.len());
            Some(rest[..end].replace("\\\"", "\"").replace("\\n", " "))
        })
        .unwrap_or_else(|| text.lines().last().unwrap_or("no error message").to_owned())
}

/// `crisp-monitor --pause`: the init of a pod's shared PID namespace. The helper
/// unshares the PID namespace, forks that init (pid 1 there: it only reaps orphans),
/// reports `ok <pid>` on its stdout and exits, leaving the init to its new parent.
/// With `--userns`, it first makes a user namespace and waits for its caller to write
/// the ID maps (see [`enter_new_userns`]), then makes the pod's network, IPC and UTS
/// namespaces inside it, and the init runs as the namespace's root.
///
/// A process cannot write its own ID maps beyond its own ID, and a multi-threaded one
/// (crispd) cannot unshare a user namespace: hence this helper.
fn enter_new_userns() -> Result<(), String> {
    // SAFETY: unshare takes no pointers; this process is single-threaded.
    if unsafe { libc::unshare(libc::CLONE_NEWUSER) } != 0 {
        return Err(format!(
            "unshare(CLONE_NEWUSER): {}",
            std::io::Error::last_os_error()
        ));
    }
    if !say("userns\n") {
        return Err(format!(
            "telling the caller: {}",
            std::io::Error::last_os_error()
        ));
    }
    let mut byte = 0u8;
    // SAFETY: reads at most one byte into `byte`.
    let n = unsafe { libc::read(0, (&mut byte as *mut u8).cast(), 1) };
    if n != 1 {
        return Err("the caller did not write the ID maps".to_owned());
    }
    Ok(())
}

/// `crisp-monitor --exec RUNTIME ARG...`: the parent of a terminal exec. The runtime can
/// hand a pty master to a console socket only when it detaches, so the exec'd process
/// would lose its parent; this process becomes the subreaper that adopts it, and exits
/// with its exit code (128 + signal for a signal death; 255 if the runtime failed, with
/// the runtime's message on stderr).
fn exec_main() -> ExitCode {
    let mut args = std::env::args_os().skip(2);
    let Some(runtime) = args.next() else {
        eprintln!("crisp-monitor --exec: no runtime given");
        return ExitCode::from(255);
    };
    let rest: Vec<OsString> = args.collect();
    let pid_file = rest
        .windows(2)
        .find(|w| w[0] == "--pid-file")
        .map(|w| PathBuf::from(&w[1]));
    // SAFETY: prctl takes no pointers.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let status = match Command::new(&runtime).args(&rest).status() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot run {}: {e}", Path::new(&runtime).display());
            return ExitCode::from(255);
        }
    };
    if !status.success() {
        return ExitCode::from(255);
    }
    let Some(pid) = pid_file
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|p| p.trim().parse::<i32>().ok())
    else {
        eprintln!("the runtime wrote no pid file");
        return ExitCode::from(255);
    };
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes the status into `status`.
        let r = unsafe { libc::waitpid(-1, &mut status, 0) };
        if r == pid {
            return ExitCode::from(u8::try_from(decode(status)).unwrap_or(255));
        }
        if r < 0 {
            return ExitCode::from(255);
        }
    }
}

extern "C" fn exit_now(_: libc::c_int) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(0) };
}

/// `crisp-monitor --sandbox-init`: PID 1 of a pod's gVisor sandbox (the sandbox
/// container's only process). It reaps the orphans of the pod's shared PID namespace and
/// exits on SIGTERM or SIGINT, which ends the sandbox.
fn sandbox_init_main() -> ExitCode {
    // SAFETY: installs a handler that only calls _exit.
    unsafe {
        libc::signal(libc::SIGTERM, exit_now as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, exit_now as *const () as libc::sighandler_t);
    }
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes the status into `status`; pause takes nothing.
        unsafe {
            if libc::waitpid(-1, &mut status, 0) < 0 {
                libc::pause();
            }
        }
    }
}

fn pause_main(userns: bool) -> ExitCode {
    // SAFETY: setsid takes no pointers. This process is single-threaded here.
    unsafe { libc::setsid() };
    let mut flags = libc::CLONE_NEWPID;
    if userns {
        if let Err(e) = enter_new_userns() {
            report(&format!("error {e}\n"));
            return ExitCode::FAILURE;
        }
        // The pod's other namespaces belong to its user namespace: made from inside it.
        flags |= libc::CLONE_NEWNET | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
    }
    // SAFETY: unshare takes no pointers.
    if unsafe { libc::unshare(flags) } != 0 {
        report(&format!(
            "error unshare: {}\n",
            std::io::Error::last_os_error()
        ));
        return ExitCode::FAILURE;
    }
    if userns {
        // Become the namespace's root (host IDs as mapped), as a pod's processes are.
        // SAFETY: plain credential calls on this single-threaded process.
        let rc = unsafe {
            libc::setgroups(0, std::ptr::null())
                | libc::setresgid(0, 0, 0)
                | libc::setresuid(0, 0, 0)
        };
        if rc != 0 {
            report(&format!(
                "error becoming root in the user namespace: {}\n",
                std::io::Error::last_os_error()
            ));
            return ExitCode::FAILURE;
        }
    }
    // SAFETY: single-threaded, so fork is safe; the child only calls async-signal-safe
    // functions (dup2, open, waitpid, pause).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        report(&format!(
            "error fork: {}\n",
            std::io::Error::last_os_error()
        ));
        return ExitCode::FAILURE;
    }
    if pid == 0 {
        // SAFETY: plain descriptor and wait calls on our own process.
        unsafe {
            libc::close(REPORT.load(Ordering::SeqCst));
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
            if null >= 0 {
                libc::dup2(null, 0);
                libc::dup2(null, 1);
                libc::dup2(null, 2);
            }
            loop {
                let mut status = 0;
                if libc::waitpid(-1, &mut status, 0) < 0 {
                    libc::pause();
                }
            }
        }
    }
    report(&format!("ok {pid}\n"));
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    // An older crispd's report pipe: fd 3, with no socket on stdout (see [`take_report`]).
    let legacy = is_open(3) && !is_socket(1);
    // Only stdio (and that pipe) are ours: whatever else the caller's process left open
    // (crispd may have inherited descriptors) must not live on with us.
    let first = if legacy { 4u32 } else { 3u32 };
    // SAFETY: close_range takes no pointers; nothing above stdio is in use yet.
    unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0u32) };
    if std::env::args_os().nth(1).is_some_and(|a| a == "--pause") {
        take_report(legacy);
        return pause_main(std::env::args_os().nth(2).is_some_and(|a| a == "--userns"));
    }
    if std::env::args_os().nth(1).is_some_and(|a| a == "--exec") {
        return exec_main();
    }
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == "--sandbox-init")
    {
        return sandbox_init_main();
    }
    // The report channel is for this process only: a runtime that keeps inherited
    // descriptors in the container (crun does) would hold it open, and crispd, which reads
    // the report to its end, would wait for the container to exit.
    take_report(legacy);
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            report(&format!("error bad arguments: {e}\n"));
            eprintln!("crisp-monitor: {e}");
            return ExitCode::FAILURE;
        }
    };
    // SAFETY: setsid and prctl take no pointers; the handler only stores an atomic.
    unsafe {
        libc::setsid();
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        libc::signal(libc::SIGUSR1, on_usr1 as *const () as libc::sighandler_t);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report(&format!("error {e}\n"));
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    // Sockets are bound by names relative to the bundle: unix socket paths are limited to
    // 108 bytes, and a bundle path with a 64-character ID in it may be longer.
    std::env::set_current_dir(&args.bundle)
        .map_err(|e| format!("entering {}: {e}", args.bundle.display()))?;
    let (out_r, out_w) = runtime_handlers::cloexec_pipe().map_err(|e| format!("pipe: {e}"))?;
    let (err_r, err_w) = runtime_handlers::cloexec_pipe().map_err(|e| format!("pipe: {e}"))?;
    let stdin_pipe = if args.stdin && !args.tty {
        Some(runtime_handlers::cloexec_pipe().map_err(|e| format!("pipe: {e}"))?)
    } else {
        None
    };
    let runtime_log = args.bundle.join("runtime.log");
    let pid_file = args.bundle.join("container.pid");
    // With a TTY the runtime hands us the pty master over this socket instead of using
    // our pipes; the master carries the container's (merged) output.
    let console_path = PathBuf::from("console.sock");
    let console = if args.tty {
        let _ = std::fs::remove_file(&console_path);
        Some(
            std::os::unix::net::UnixListener::bind(&console_path)
                .map_err(|e| format!("console socket: {e}"))?,
        )
    } else {
        None
    };
    let mut command = Command::new(&args.runtime);
    command.args(&args.runtime_args);
    let status = command
        .arg("--root")
        .arg(&args.root)
        .arg("--log")
        .arg(&runtime_log)
        .arg("--log-format")
        .arg("json")
        .arg("create")
        .arg("--bundle")
        .arg(&args.bundle)
        .arg("--pid-file")
        .arg(&pid_file)
        .args(
            console
                .as_ref()
                .map(|_| ["--console-socket".as_ref(), console_path.as_os_str()])
                .into_iter()
                .flatten(),
        )
        .arg(&args.id)
        .stdin(if args.start_socket {
            Stdio::null()
        } else {
            container_stdin(&stdin_pipe)
        })
        .stdout(stdio_or_null(!args.start_socket, &out_w))
        .stderr(stdio_or_null(!args.start_socket, &err_w))
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", args.runtime.display()))
        .and_then(|mut child| {
            // runc connects and sends the master before `create` returns.
            let master = console
                .as_ref()
                .map(runtime_handlers::receive_console)
                .transpose();
            let status = child
                .wait()
                .map_err(|e| format!("waiting for the runtime: {e}"))?;
            Ok((status, master))
        })?;
    // The command holds the pipes' write ends: close them, or the container's exit would
    // never show as end-of-file on its streams.
    drop(command);
    let (status, master) = status;
    let _ = std::fs::remove_file(&console_path);
    let master = master?;
    if !status.success() {
        return Err(format!(
            "{} create failed: {}",
            args.runtime.display(),
            runtime_error(&runtime_log)
        ));
    }
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .map_err(|e| format!("reading {}: {e}", pid_file.display()))?
        .trim()
        .parse()
        .map_err(|e| format!("bad pid file: {e}"))?;
    let mut started_subcontainer = false;
    if args.start_socket {
        // Bound before the report: crispd may ask to start as soon as create returns.
        let listener =
            std::os::unix::net::UnixListener::bind(runtime_handlers::start_socket::SOCKET)
                .map_err(|e| format!("start socket: {e}"))?;
        report(&format!("ok {}\n", std::process::id()));
        match gvisor::await_start(args, &listener, &runtime_log, &stdin_pipe, out_w, err_w) {
            Some(()) => started_subcontainer = true,
            None => {
                let _ = std::fs::remove_file(runtime_handlers::start_socket::SOCKET);
                write_exit(&args.exit_file, 128 + libc::SIGKILL);
                return Ok(());
            }
        }
        let _ = std::fs::remove_file(runtime_handlers::start_socket::SOCKET);
    } else {
        drop((out_w, err_w));
        report(&format!("ok {pid}\n"));
    }
    // Nothing of crispd's stays open here.
    if let Ok(null) = File::open("/dev/null") {
        // SAFETY: dup2 onto the standard descriptors of this process.
        unsafe {
            libc::dup2(null.as_raw_fd(), 0);
            libc::dup2(null.as_raw_fd(), 1);
            libc::dup2(null.as_raw_fd(), 2);
        }
    }
    let mut log = LogWriter::open(&args.log_path);
    // Input for attachers: the stdin pipe, or with a TTY the pty master (when the
    // container asked for stdin).
    let stdin = match (&stdin_pipe, &master) {
        (Some((_, w)), _) => w.try_clone().ok().map(File::from),
        (None, Some(m)) if args.stdin => m.try_clone().ok().map(File::from),
        _ => None,
    };
    let terminal = master.as_ref().map(AsRawFd::as_raw_fd);
    let mut attach = attach::Attach::bind("attach", stdin, args.stdin_once, terminal).ok();
    drop(stdin_pipe);
    // A TTY container writes everything to the pty; its output is logged as stdout.
    let (out_r, err_r) = match master {
        Some(master) => {
            drop(out_r);
            (master, err_r)
        }
        None => (out_r, err_r),
    };
    let code = if started_subcontainer {
        // No host process to wait for: the sandbox tells the exit, else (no control
        // socket) the runtime's `wait` once the streams end.
        let mut waiter = gvisor::Waiter::connect(&args.sandbox_id, &args.id);
        let mut code = pump(
            -1,
            out_r,
            err_r,
            &mut log,
            &args.log_path,
            &mut attach,
            &mut waiter,
        );
        if code < 0
            && let Some(w) = waiter
        {
            code = w.finish();
        }
        if code < 0 {
            code = gvisor::runtime_wait(args);
        }
        code
    } else {
        pump(
            pid,
            out_r,
            err_r,
            &mut log,
            &args.log_path,
            &mut attach,
            &mut None,
        )
    };
    write_exit(&args.exit_file, code);
    Ok(())
}

pub(crate) fn container_stdin(stdin_pipe: &Option<(OwnedFd, OwnedFd)>) -> Stdio {
    stdin_pipe
        .as_ref()
        .and_then(|(r, _)| r.try_clone().ok())
        .map_or_else(Stdio::null, Stdio::from)
}

pub(crate) fn stdio_or_null(wanted: bool, fd: &OwnedFd) -> Stdio {
    if wanted {
        fd.try_clone().map_or_else(|_| Stdio::null(), Stdio::from)
    } else {
        Stdio::null()
    }
}

/// Copies both streams to the log until they close and the container's init is gone;
/// returns its exit code (128 + signal for a signal death).
fn pump(
    pid: i32,
    out: OwnedFd,
    err: OwnedFd,
    log: &mut LogWriter,
    log_path: &Path,
    attach: &mut Option<attach::Attach>,
    waiter: &mut Option<gvisor::Waiter>,
) -> i32 {
    let mut streams = [
        Some((File::from(out), "stdout", Vec::new())),
        Some((File::from(err), "stderr", Vec::new())),
    ];
    let mut exit: Option<i32> = None;
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        if REOPEN.swap(false, Ordering::SeqCst) {
            *log = LogWriter::open(log_path);
        }
        reap(pid, &mut exit);
        let open: Vec<usize> = (0..2).filter(|i| streams[*i].is_some()).collect();
        if open.is_empty() {
            break;
        }
        let mut fds: Vec<libc::pollfd> = open
            .iter()
            .filter_map(|i| streams[*i].as_ref())
            .map(|(f, _, _)| libc::pollfd {
                fd: f.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let streams_polled = fds.len();
        if let Some(w) = waiter.as_ref() {
            fds.push(libc::pollfd {
                fd: w.fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let attach_from = fds.len();
        if let Some(a) = attach.as_ref() {
            fds.extend(a.pollfds());
        }
        // SAFETY: `fds` is a valid array of `fds.len()` pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 1000) };
        if n <= 0 {
            // Timeout or EINTR (SIGUSR1): loop to handle reopen and reaping. Pipes held
            // open by a container's own children must not keep us past its exit forever.
            if exit.is_some() && n == 0 {
                break;
            }
            continue;
        }
        if attach_from > streams_polled
            && fds[streams_polled].revents != 0
            && let Some(w) = waiter.as_mut()
            && let Some(code) = w.read()
        {
            exit = Some(code);
            *waiter = None;
        }
        if let Some(a) = attach.as_mut() {
            a.handle(&fds[attach_from..]);
        }
        for (slot, pfd) in open.iter().zip(&fds[..streams_polled]) {
            if pfd.revents == 0 {
                continue;
            }
            let Some((file, stream, partial)) = streams[*slot].as_mut() else {
                continue;
            };
            match file.read(&mut buf) {
                Ok(0) | Err(_) => {
                    crilog::flush(log, stream, partial);
                    streams[*slot] = None;
                }
                Ok(k) => {
                    emit(log, stream, partial, &buf[..k]);
                    if let Some(a) = attach.as_mut() {
                        let kind = if *slot == 0 {
                            attach::STDOUT
                        } else {
                            attach::STDERR
                        };
                        a.broadcast(kind, &buf[..k]);
                    }
                }
            }
        }
    }
    for (_, stream, partial) in streams.iter_mut().flatten() {
        crilog::flush(log, stream, partial);
    }
    // A subcontainer (pid -1) has no process of ours to wait for: -1 until its waiter
    // tells.
    if pid <= 0 {
        return exit.unwrap_or(-1);
    }
    while exit.is_none() {
        let mut status = 0;
        // SAFETY: waitpid writes the status into `status`.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            exit = Some(decode(status));
        } else if r < 0 {
            exit = Some(255);
        }
    }
    exit.unwrap_or(255)
}

/// Reaps every exited child (we are a subreaper); notes the container's own status.
fn reap(pid: i32, exit: &mut Option<i32>) {
    loop {
        let mut status = 0;
        // SAFETY: as above, non-blocking.
        let r = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if r <= 0 {
            return;
        }
        if r == pid {
            *exit = Some(decode(status));
        }
    }
}

fn decode(status: i32) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        255
    }
}

fn write_exit(path: &Path, code: i32) {
    if path.as_os_str().is_empty() {
        return;
    }
    let (secs, nanos) = crilog::now();
    let finished = secs * 1_000_000_000 + i64::from(nanos);
    let tmp = path.with_extension("tmp");
    if let Ok(mut f) = File::create(&tmp) {
        let _ = writeln!(f, "{code}\n{finished}");
        let _ = f.sync_all();
        let _ = std::fs::rename(&tmp, path);
    }
}
