//! `crisp-enter --id ID --pid PID --bundle DIR --process FILE --pid-file FILE`: runs an
//! ExecSync process in a running container without the OCI runtime, as runc's
//! `exec` would set it up: the container's cgroups and namespaces (joined in one setns(2)
//! through a pidfd), then in a child (the PID namespace applies to children) its working
//! directory, rlimits, groups, IDs, capabilities, no_new_privs and the container's seccomp
//! filter, and execve.
//!
//! Reports on its stdin, which is a pipe's write end here (so the caller can start it
//! without running code between fork and exec, which is faster for a large caller):
//! `ok <pid>` once the process runs (its host pid, also written to the
//! pid file), `unsupported <why>` when the container needs what only the runtime can do
//! (the caller then uses the runtime), or `error <why>`. Exits with the process's exit
//! code (128 + signal when killed).
//!
//! The process is not dumpable until it execs, so nothing in the container can open this
//! binary or its memory through /proc while it is in there.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use oci_spec::runtime::{Capability, Process, Spec};

struct Args {
    id: String,
    pid: u32,
    bundle: PathBuf,
    process: PathBuf,
    pid_file: PathBuf,
}

fn parse() -> Result<Args, String> {
    let mut it = std::env::args_os().skip(1);
    let (mut id, mut pid, mut bundle, mut process, mut pid_file) = (None, None, None, None, None);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag:?} needs a value"))?;
        match flag.to_str() {
            Some("--id") => id = value.into_string().ok(),
            Some("--pid") => pid = value.to_str().and_then(|v| v.parse().ok()),
            Some("--bundle") => bundle = Some(PathBuf::from(value)),
            Some("--process") => process = Some(PathBuf::from(value)),
            Some("--pid-file") => pid_file = Some(PathBuf::from(value)),
            _ => return Err(format!("unknown flag {flag:?}")),
        }
    }
    Ok(Args {
        id: id.ok_or("--id is missing")?,
        pid: pid.ok_or("--pid is missing")?,
        bundle: bundle.ok_or("--bundle is missing")?,
        process: process.ok_or("--process is missing")?,
        pid_file: pid_file.ok_or("--pid-file is missing")?,
    })
}

fn report(line: &str) {
    // SAFETY: fd 0 is the caller's report pipe; a failed write is harmless.
    unsafe { libc::write(0, line.as_ptr().cast(), line.len()) };
}

/// What stops the native path before anything was touched.
enum Refusal {
    Unsupported(String),
    Error(String),
}

/// Re-executes this program from a sealed, anonymous copy of itself unless it already
/// runs from one, or from a read-only mount (crispd starts it from one). Inside the container, `/proc/self/exe` of
/// this process (or of a container program that names it as its interpreter) must never
/// lead back to the host's binary, which a container process could otherwise open and
/// overwrite (the runc CVE-2019-5736 attack). The copy cannot be written: its seals
/// forbid it.
fn run_from_sealed_copy() -> Result<(), String> {
    let exe = std::fs::read_link("/proc/self/exe").map_err(|e| format!("/proc/self/exe: {e}"))?;
    let sealed = format!("/memfd:{}", runtime_handlers::sealed::SEALED_NAME);
    if exe.as_os_str().as_bytes().starts_with(sealed.as_bytes())
        || runtime_handlers::sealed::on_read_only_mount(Path::new("/proc/self/exe"))
    {
        return Ok(());
    }
    let copy = runtime_handlers::sealed::sealed_copy(Path::new("/proc/self/exe"))
        .map_err(|e| format!("copying the helper: {e}"))?;
    let args: Vec<CString> = std::env::args_os()
        .filter_map(|a| CString::new(a.as_bytes()).ok())
        .collect();
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let vars: Vec<CString> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv).ok()
        })
        .collect();
    let mut envp: Vec<*const libc::c_char> = vars.iter().map(|v| v.as_ptr()).collect();
    envp.push(std::ptr::null());
    // SAFETY: argv and envp are NULL-terminated arrays of live C strings.
    unsafe { libc::fexecve(copy.as_raw_fd(), argv.as_ptr(), envp.as_ptr()) };
    Err(format!("fexecve: {}", std::io::Error::last_os_error()))
}

fn main() -> ExitCode {
    // Only stdio is ours: whatever else the caller left open must not reach the container.
    // SAFETY: close_range takes no pointers; no descriptor above 2 is in use yet.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if let Err(e) = run_from_sealed_copy() {
        report(&format!("error {e}\n"));
        return ExitCode::from(255);
    }
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            report(&format!("error bad arguments: {e}\n"));
            return ExitCode::from(255);
        }
    };
    match enter(&args) {
        Ok(code) => ExitCode::from(code),
        Err(Refusal::Unsupported(why)) => {
            report(&format!("unsupported {why}\n"));
            ExitCode::from(255)
        }
        Err(Refusal::Error(why)) => {
            report(&format!("error {why}\n"));
            ExitCode::from(255)
        }
    }
}

/// Everything the child needs, prepared before entering (no allocation decisions later).
struct Prepared {
    argv: Vec<CString>,
    envp: Vec<CString>,
    /// A path, or `PATH\0name` for a PATH lookup.
    program: Vec<u8>,
    cwd: CString,
    uid: u32,
    gid: u32,
    groups: Vec<libc::gid_t>,
    umask: Option<u32>,
    rlimits: Vec<(u32, u64, u64)>,
    no_new_privs: bool,
    bounding: u64,
    effective: u64,
    permitted: u64,
    inheritable: u64,
    ambient: Vec<u32>,
    seccomp: Option<(Vec<runtime_handlers::seccomp::Instruction>, u32)>,
    oom_score_adj: Option<i32>,
}

fn cstring(s: &str) -> Result<CString, Refusal> {
    CString::new(s).map_err(|_| Refusal::Error(format!("`{s}` holds a NUL byte")))
}

fn cap_mask(caps: Option<&std::collections::HashSet<Capability>>) -> u64 {
    caps.into_iter()
        .flatten()
        .filter_map(|c| runtime_handlers::capability_number(&c.to_string()))
        .fold(0, |m, n| m | (1u64 << n))
}

fn prepare(args: &Args) -> Result<Prepared, Refusal> {
    let text = std::fs::read(&args.process)
        .map_err(|e| Refusal::Error(format!("reading {}: {e}", args.process.display())))?;
    let process: Process =
        serde_json::from_slice(&text).map_err(|e| Refusal::Error(format!("process spec: {e}")))?;
    let spec = Spec::load(args.bundle.join("config.json"))
        .map_err(|e| Refusal::Error(format!("container spec: {e}")))?;
    if process.terminal().unwrap_or(false) {
        return Err(Refusal::Unsupported("a terminal".into()));
    }
    // crun's handlers (krun: a microVM) run the container somewhere else than the
    // namespaces this process would join.
    if spec
        .annotations()
        .as_ref()
        .is_some_and(|a| a.contains_key("run.oci.handler"))
    {
        return Err(Refusal::Unsupported("a crun handler annotation".into()));
    }
    if process
        .apparmor_profile()
        .as_deref()
        .is_some_and(|p| !p.is_empty())
    {
        return Err(Refusal::Unsupported("an AppArmor profile".into()));
    }
    if process
        .selinux_label()
        .as_deref()
        .is_some_and(|l| !l.is_empty())
    {
        return Err(Refusal::Unsupported("an SELinux label".into()));
    }
    let seccomp = match spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
        Some(profile) => Some((
            runtime_handlers::seccomp::compile(profile)
                .map_err(|e| Refusal::Unsupported(e.to_string()))?,
            runtime_handlers::seccomp::flags(profile),
        )),
        None => None,
    };
    let argv = process
        .args()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|a| cstring(a))
        .collect::<Result<Vec<_>, _>>()?;
    let Some(first) = process.args().as_ref().and_then(|a| a.first()) else {
        return Err(Refusal::Error("no command".into()));
    };
    let env: Vec<String> = process.env().clone().unwrap_or_default();
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .to_owned();
    // Resolved in the container's mount namespace, just before execve.
    let program = if first.contains('/') {
        first.clone()
    } else {
        format!("{path}\0{first}")
    };
    let envp = env
        .iter()
        .map(|e| cstring(e))
        .collect::<Result<Vec<_>, _>>()?;
    let caps = process.capabilities().as_ref();
    let user = process.user();
    let rlimits = process
        .rlimits()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|r| (r.typ() as u32, r.soft(), r.hard()))
        .collect();
    Ok(Prepared {
        argv,
        envp,
        program: program.into_bytes(),
        cwd: cstring(process.cwd().to_str().unwrap_or("/"))?,
        uid: user.uid(),
        gid: user.gid(),
        groups: user.additional_gids().clone().unwrap_or_default(),
        umask: user.umask(),
        rlimits,
        no_new_privs: process.no_new_privileges().unwrap_or(false),
        bounding: cap_mask(caps.and_then(|c| c.bounding().as_ref())),
        effective: cap_mask(caps.and_then(|c| c.effective().as_ref())),
        permitted: cap_mask(caps.and_then(|c| c.permitted().as_ref())),
        inheritable: cap_mask(caps.and_then(|c| c.inheritable().as_ref())),
        ambient: caps
            .and_then(|c| c.ambient().as_ref())
            .into_iter()
            .flatten()
            .filter_map(|c| runtime_handlers::capability_number(&c.to_string()))
            .collect(),
        seccomp,
        oom_score_adj: process.oom_score_adj(),
    })
}

/// The namespaces of `pid` that differ from ours, as CLONE_NEW* flags.
fn namespaces_to_join(pid: u32) -> i32 {
    let kinds = [
        ("user", libc::CLONE_NEWUSER),
        ("mnt", libc::CLONE_NEWNS),
        ("pid", libc::CLONE_NEWPID),
        ("net", libc::CLONE_NEWNET),
        ("ipc", libc::CLONE_NEWIPC),
        ("uts", libc::CLONE_NEWUTS),
        ("cgroup", libc::CLONE_NEWCGROUP),
    ];
    let ino = |p: String| std::fs::metadata(p).map(|m| m.ino()).ok();
    kinds
        .iter()
        .filter(|(name, _)| {
            ino(format!("/proc/{pid}/ns/{name}")) != ino(format!("/proc/self/ns/{name}"))
        })
        .fold(0, |flags, (_, f)| flags | f)
}

fn enter(args: &Args) -> Result<u8, Refusal> {
    let prepared = prepare(args)?;
    let err = |what: &str| Refusal::Error(format!("{what}: {}", std::io::Error::last_os_error()));
    // SAFETY: pidfd_open takes no pointers.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, args.pid, 0) };
    let fd = i32::try_from(fd).unwrap_or(-1);
    if fd < 0 {
        return Err(err("the container's process is gone"));
    }
    // SAFETY: pidfd_open returned a fresh descriptor that we own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd) };
    // The pid is the container's init (its cgroup names the container), not a process
    // that reused the number: checked after the pidfd pins the process.
    let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", args.pid)).unwrap_or_default();
    if !cgroup.contains(&args.id) {
        return Err(Refusal::Error(format!(
            "process {} is not container {}'s",
            args.pid, args.id
        )));
    }
    let dirs = runtime_handlers::cgroup_directories(args.pid)
        .map_err(|e| Refusal::Error(format!("the container's cgroups: {e}")))?;
    let me = std::process::id().to_string();
    for dir in &dirs {
        std::fs::write(dir.join("cgroup.procs"), &me)
            .map_err(|e| Refusal::Error(format!("joining {}: {e}", dir.display())))?;
    }
    // Files of the host, opened before this process is in the container's mount
    // namespace, where their paths mean something else.
    let mut pid_file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&args.pid_file)
        .map_err(|e| Refusal::Error(format!("{}: {e}", args.pid_file.display())))?;
    let null =
        std::fs::File::open("/dev/null").map_err(|e| Refusal::Error(format!("/dev/null: {e}")))?;
    // Process attributes that need privileges of the host (lowering the OOM score or
    // raising a hard rlimit is refused to a process inside a user namespace): set here,
    // before entering, and inherited by the child.
    if let Some(adj) = prepared.oom_score_adj {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string())
            .map_err(|e| Refusal::Error(format!("oom_score_adj: {e}")))?;
    }
    for &(resource, soft, hard) in &prepared.rlimits {
        let limit = libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard,
        };
        // SAFETY: setrlimit reads `limit`.
        if unsafe { libc::setrlimit(resource, &limit) } != 0 {
            return Err(err("setting an rlimit"));
        }
    }
    let flags = namespaces_to_join(args.pid);
    // SAFETY: prctl and setns take no pointers; this process is single-threaded.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        if libc::setns(pidfd.as_raw_fd(), flags) != 0 {
            return Err(err("entering the container's namespaces"));
        }
    }
    drop(pidfd);
    let (err_r, err_w) =
        runtime_handlers::cloexec_pipe().map_err(|e| Refusal::Error(format!("pipe: {e}")))?;
    // The child's way to learn that this process died before it set PDEATHSIG: the write
    // end closes with this process (getppid cannot tell across a PID namespace).
    let (life_r, life_w) =
        runtime_handlers::cloexec_pipe().map_err(|e| Refusal::Error(format!("pipe: {e}")))?;
    // SAFETY: single-threaded: the child may run any code until it execs.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(err("fork"));
    }
    if child == 0 {
        drop(err_r);
        drop(life_w);
        // SAFETY: dup2 of a descriptor we hold onto this process's stdin: the process
        // reads nothing, and does not hold the report pipe open.
        unsafe { libc::dup2(null.as_raw_fd(), 0) };
        let why = become_process(&prepared, &life_r);
        let msg = why.to_string();
        // SAFETY: writes the message to the CLOEXEC pipe, then leaves without unwinding.
        unsafe {
            libc::write(err_w.as_raw_fd(), msg.as_ptr().cast(), msg.len());
            libc::_exit(127);
        }
    }
    drop(err_w);
    drop(life_r);
    // Held until this process ends.
    let _lifeline = life_w;
    // End of file without a word: the child has exec'd.
    let mut failure = String::new();
    let _ = std::io::Read::read_to_string(&mut std::fs::File::from(err_r), &mut failure);
    if !failure.is_empty() {
        wait_child(child);
        return Err(Refusal::Error(failure));
    }
    let _ = std::io::Write::write_all(&mut pid_file, child.to_string().as_bytes());
    drop(pid_file);
    report(&format!("ok {child}\n"));
    // Only the process holds the caller's pipes now: their end is its end.
    // SAFETY: dup2 onto this process's own standard descriptors.
    unsafe {
        libc::dup2(null.as_raw_fd(), 0);
        libc::dup2(null.as_raw_fd(), 1);
        libc::dup2(null.as_raw_fd(), 2);
    }
    Ok(wait_child(child))
}

/// Waits for the child; its exit code, or 128 + the signal that killed it.
fn wait_child(child: i32) -> u8 {
    let mut status = 0;
    loop {
        // SAFETY: waitpid writes into `status`.
        let r = unsafe { libc::waitpid(child, &mut status, 0) };
        if r == child {
            break;
        }
        if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return 255;
        }
    }
    if libc::WIFEXITED(status) {
        u8::try_from(libc::WEXITSTATUS(status)).unwrap_or(255)
    } else {
        u8::try_from(128 + libc::WTERMSIG(status)).unwrap_or(255)
    }
}

/// In the child, inside the container: becomes the process and execs it. Returns only
/// on failure, with the reason.
fn become_process(p: &Prepared, lifeline: &OwnedFd) -> String {
    let fail = |what: &str| format!("{what}: {}", std::io::Error::last_os_error());
    // SAFETY: every call below takes plain values or pointers to live, NUL-terminated
    // strings and arrays owned by `p`; this process is single-threaded.
    unsafe {
        // Rust ignores SIGPIPE and exec keeps ignored signals: the process gets the
        // default dispositions and an empty signal mask, as under runc.
        for sig in 1..=libc::SIGRTMAX() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        if libc::chdir(p.cwd.as_ptr()) != 0 {
            return fail("changing to the working directory");
        }
        if p.no_new_privs && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return fail("no_new_privs");
        }
        if !p.no_new_privs
            && let Some((prog, flags)) = &p.seccomp
            && let Err(e) = runtime_handlers::seccomp::install(prog, *flags)
        {
            return format!("installing the seccomp filter: {e}");
        }
        for cap in 0..=runtime_handlers::last_capability() {
            if p.bounding & (1 << cap) == 0
                && libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) != 0
            {
                return fail("dropping a bounding capability");
            }
        }
        if libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0 {
            return fail("keeping capabilities");
        }
        if libc::setgroups(p.groups.len(), p.groups.as_ptr()) != 0 {
            return fail("setting groups");
        }
        if libc::setresgid(p.gid, p.gid, p.gid) != 0 {
            return fail("setting the group ID");
        }
        if libc::setresuid(p.uid, p.uid, p.uid) != 0 {
            return fail("setting the user ID");
        }
        #[repr(C)]
        struct Header {
            version: u32,
            pid: i32,
        }
        #[repr(C)]
        #[derive(Clone, Copy)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        let header = Header {
            version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
            pid: 0,
        };
        let word = |m: u64, i: u32| (m >> (32 * i)) as u32;
        let data = [0, 1].map(|i| Data {
            effective: word(p.effective, i),
            permitted: word(p.permitted, i),
            inheritable: word(p.inheritable, i),
        });
        if libc::syscall(libc::SYS_capset, &header as *const Header, data.as_ptr()) != 0 {
            return fail("setting capabilities");
        }
        libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0);
        // Best effort, as runc: the kernel refuses an ambient capability that is not
        // also inheritable, and runc goes on without it.
        for &cap in &p.ambient {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                cap as libc::c_ulong,
                0,
                0,
            );
        }
        if let Some(mask) = p.umask {
            libc::umask(mask as libc::mode_t);
        }
        // The caller kills this process's parent on a timeout during set-up: the
        // process goes too, even if the parent died before this line.
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
        let mut poll = libc::pollfd {
            fd: lifeline.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // A failed poll (a seccomp profile may refuse it) is no sign of death.
        if libc::poll(&mut poll, 1, 0) == 1 && poll.revents & libc::POLLHUP != 0 {
            libc::_exit(137);
        }
        if p.no_new_privs
            && let Some((prog, flags)) = &p.seccomp
            && let Err(e) = runtime_handlers::seccomp::install(prog, *flags)
        {
            return format!("installing the seccomp filter: {e}");
        }
        let mut argv: Vec<*const libc::c_char> = p.argv.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const libc::c_char> = p.envp.iter().map(|e| e.as_ptr()).collect();
        envp.push(std::ptr::null());
        exec(&p.program, &argv, &envp)
    }
}

/// execve of `program`: a path, or `PATH\0name` to look `name` up in PATH's directories.
fn exec(program: &[u8], argv: &[*const libc::c_char], envp: &[*const libc::c_char]) -> String {
    let bytes = program;
    let candidates: Vec<Vec<u8>> = match bytes.iter().position(|&b| b == 0) {
        None => vec![bytes.to_vec()],
        Some(_) => Vec::new(),
    };
    let candidates = if candidates.is_empty() {
        let text = String::from_utf8_lossy(bytes).into_owned();
        let (path, name) = text.split_once('\0').unwrap_or(("", &text));
        path.split(':')
            .filter(|d| !d.is_empty())
            .map(|d| Path::new(d).join(name).as_os_str().as_bytes().to_vec())
            .collect()
    } else {
        candidates
    };
    let shown = String::from_utf8_lossy(bytes);
    let mut last = format!(
        "executable file `{}` not found in $PATH",
        shown.rsplit('\0').next().unwrap_or_default()
    );
    for c in candidates {
        let Ok(path) = CString::new(c) else { continue };
        // SAFETY: argv and envp are NULL-terminated arrays of live C strings.
        unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ENOENT) {
            last = format!("exec {}: {e}", path.to_string_lossy());
        }
    }
    last
}
