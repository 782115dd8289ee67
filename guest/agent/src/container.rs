//! Starting processes in containers: a container's init in new mount and UTS namespaces
//! rooted at its rootfs (the guest's IPC namespace is the pod's) and in the PID
//! namespace its PID mode asks for; an exec joining a running container's namespaces.
//! Everything the child needs is prepared before `fork`; the child only makes system
//! calls.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio as Std};

use agent_proto::Process;

use crate::mounts::{self, Step};

/// Where the child's root comes from.
pub enum Root {
    /// A new container: its rootfs (as the agent sees it), the steps that mount its
    /// mounts, its hostname, and whether the rootfs is read-only.
    New {
        rootfs: PathBuf,
        steps: Vec<Step>,
        hostname: String,
        readonly: bool,
        /// Paths to mask and to make read-only, inside the container.
        masked: Vec<String>,
        readonly_paths: Vec<String>,
        /// Namespaced sysctls (key with dots, value).
        sysctls: Vec<(String, String)>,
        /// Its PID namespace.
        pid_ns: PidNs,
    },
    /// A running container whose init has this pid: the child joins its namespaces.
    Join { pid: u32 },
}

/// The PID namespace a process starts in.
pub enum PidNs {
    /// A new one, whose PID 1 the process is: the others in it die with it.
    New,
    /// An existing one, named by a descriptor of its `/proc/<pid>/ns/pid`.
    Join(OwnedFd),
}

impl PidNs {
    fn try_clone(&self) -> Result<Self, String> {
        match self {
            PidNs::New => Ok(PidNs::New),
            PidNs::Join(fd) => fd
                .try_clone()
                .map(PidNs::Join)
                .map_err(|e| format!("PID namespace: {e}")),
        }
    }

    /// The PID namespace of process `pid`.
    pub fn of(pid: i32) -> Result<Self, String> {
        std::fs::File::open(format!("/proc/{pid}/ns/pid"))
            .map(|f| PidNs::Join(f.into()))
            .map_err(|e| format!("the PID namespace of process {pid}: {e}"))
    }
}

/// Makes the process `cmd` spawns start in PID namespace `ns`. A process cannot move
/// itself into a PID namespace, only its children: the child `cmd` forks enters (or
/// creates) the namespace, forks the real process and exits at once, so the process is
/// the agent's (PID 1's) to reap, as every orphan is. Its pid, as the agent sees it, comes
/// back through the pipe whose read end this returns; read it with [`read_pid`] once
/// `spawn` has returned. Register this closure before any other `pre_exec`: the rest
/// runs in the real process.
fn into_pid_namespace(cmd: &mut Command, ns: PidNs) -> Result<OwnedFd, String> {
    use std::os::fd::FromRawFd;
    let mut fds = [-1; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: pipe2 succeeded: both are fresh descriptors owned here.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: the closure runs in the child between fork and exec and only makes system
    // calls on descriptors it owns. fork there is safe because the agent is
    // single-threaded (a current-thread runtime, no blocking pool): no lock glibc's fork
    // takes can be held by another thread.
    unsafe {
        cmd.pre_exec(move || {
            let entered = match &ns {
                PidNs::New => libc::unshare(libc::CLONE_NEWPID),
                PidNs::Join(fd) => libc::setns(fd.as_raw_fd(), libc::CLONE_NEWPID),
            };
            if entered != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let child = libc::fork();
            if child < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if child > 0 {
                let bytes = child.to_ne_bytes();
                libc::write(write.as_raw_fd(), bytes.as_ptr().cast(), bytes.len());
                libc::_exit(0);
            }
            Ok(())
        });
    }
    Ok(read)
}

/// The pid [`into_pid_namespace`]'s intermediate child sent through `read`.
fn read_pid(read: OwnedFd) -> Result<i32, String> {
    let mut bytes = [0u8; 4];
    let mut file = std::fs::File::from(read);
    std::io::Read::read_exact(&mut file, &mut bytes)
        .map_err(|e| format!("the process's pid never came: {e}"))?;
    Ok(i32::from_ne_bytes(bytes))
}

/// Starts the PID 1 of a pod's shared PID namespace (mode POD): the agent's own binary
/// with `--pause`, which reaps the orphans of the pod's containers. Returns its pid.
pub fn spawn_pause() -> Result<i32, String> {
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg0("/pause")
        .arg("--pause")
        .env_clear()
        .stdin(Std::null())
        .stdout(Std::null())
        .stderr(Std::null());
    let pid = into_pid_namespace(&mut cmd, PidNs::New)?;
    // SAFETY: setsid takes no arguments; the child only makes this system call.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    cmd.spawn()
        .map_err(|e| format!("start the pod's PID namespace: {e}"))?;
    drop(cmd);
    read_pid(pid)
}

/// The inode of process `pid`'s PID namespace.
pub fn pid_namespace_inode(pid: i32) -> Result<u64, String> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/ns/pid"))
        .map(|m| m.ino())
        .map_err(|e| format!("the PID namespace of process {pid}: {e}"))
}

/// Whether process `pid` is PID 1 of the PID namespace whose inode is `ns`.
pub fn is_init_of(pid: i32, ns: u64) -> bool {
    let first_in_its_namespace = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("NSpid:"))?.to_owned();
            Some(line.split_whitespace().last() == Some("1"))
        })
        .unwrap_or(false);
    first_in_its_namespace && pid_namespace_inode(pid).is_ok_and(|i| i == ns)
}

/// The pause process's life: reap, forever. As PID 1 of its namespace it ignores every
/// signal it has no handler for; it ends with the VM.
pub fn pause() -> ! {
    loop {
        let mut status = 0;
        // SAFETY: wait writes only the status integer.
        if unsafe { libc::wait(&mut status) } < 0 {
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }
}

/// How a process's stdio is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stdio {
    /// Pipes for stdout and stderr; stdin a pipe too if asked for, else /dev/null.
    Pipes { stdin: bool },
    /// A new terminal for all three, the process its session's controlling terminal.
    Terminal,
}

/// A started process: its pid and the agent's ends of its stdio.
pub struct Started {
    pub pid: i32,
    /// The write end of its stdin pipe (`Pipes { stdin: true }`).
    pub stdin: Option<OwnedFd>,
    /// The read end of its stdout; with a terminal, the terminal's master (read and
    /// write: the process's output and input, and its size).
    pub stdout: OwnedFd,
    /// The read end of its stderr (pipes only).
    pub stderr: Option<OwnedFd>,
}

/// A seccomp filter: a classic BPF program and seccomp(2) flags.
#[derive(Clone, Default)]
pub struct Filter {
    program: Vec<libc::sock_filter>,
    flags: u32,
}

impl Filter {
    /// The filter in `bytes` (8-byte `sock_filter` entries in host order); `None` when
    /// empty.
    pub fn parse(bytes: &[u8], flags: u32) -> Result<Option<Self>, String> {
        if bytes.is_empty() {
            return Ok(None);
        }
        if !bytes.len().is_multiple_of(8) || bytes.len() / 8 > usize::from(u16::MAX) {
            return Err(format!(
                "a seccomp filter of {} bytes is not a BPF program",
                bytes.len()
            ));
        }
        let program = bytes
            .chunks_exact(8)
            .map(|i| libc::sock_filter {
                code: u16::from_ne_bytes([i[0], i[1]]),
                jt: i[2],
                jf: i[3],
                k: u32::from_ne_bytes([i[4], i[5], i[6], i[7]]),
            })
            .collect();
        Ok(Some(Self { program, flags }))
    }
}

/// The security of a process, ready for the child: capability masks and no_new_privs.
#[derive(Clone, Copy)]
struct Caps {
    bounding: u64,
    effective: u64,
    permitted: u64,
    inheritable: u64,
    no_new_privs: bool,
}

/// The highest capability the kernel knows (read once).
fn last_capability() -> u32 {
    static LAST: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *LAST.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(40)
    })
}

/// Installs `filter` on the calling thread.
///
/// # Safety
/// Called in the child between fork and exec; makes one system call.
unsafe fn install(filter: &Filter) -> std::io::Result<()> {
    let prog = libc::sock_fprog {
        len: filter.program.len() as u16,
        filter: filter.program.as_ptr().cast_mut(),
    };
    // SAFETY: `prog` points at the program, which outlives the call; the kernel copies it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            filter.flags,
            &prog as *const libc::sock_fprog,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Mounts over `path` so that it cannot be read: an empty read-only tmpfs over a
/// directory, /dev/null over anything else. A path that does not exist is skipped, as
/// runc does.
///
/// # Safety
/// Called in the child between fork and exec, inside the container's root.
unsafe fn mask(
    path: &std::ffi::CStr,
    null: &std::ffi::CStr,
    tmpfs: &std::ffi::CStr,
) -> std::io::Result<()> {
    // SAFETY: stat writes into `st`; the paths are NUL-terminated.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::stat(path.as_ptr(), &mut st) } != 0 {
        return Ok(());
    }
    let rc = if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
        // SAFETY: as above.
        unsafe {
            libc::mount(
                tmpfs.as_ptr(),
                path.as_ptr(),
                tmpfs.as_ptr(),
                libc::MS_RDONLY,
                std::ptr::null(),
            )
        }
    } else {
        // SAFETY: as above.
        unsafe {
            libc::mount(
                null.as_ptr(),
                path.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            )
        }
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Makes `path` read-only (skipped if it does not exist).
///
/// # Safety
/// Called in the child between fork and exec, inside the container's root.
unsafe fn make_readonly(path: &std::ffi::CStr) -> std::io::Result<()> {
    // SAFETY: the path is NUL-terminated; the other pointers may be null.
    let bound = unsafe {
        libc::mount(
            path.as_ptr(),
            path.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        )
    };
    if bound != 0 {
        let e = std::io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENOENT) {
            Ok(())
        } else {
            Err(e)
        };
    }
    // SAFETY: as above.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            path.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_REC,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A new pseudo-terminal: (master, slave), the master close-on-exec and non-blocking.
fn open_terminal() -> Result<(OwnedFd, OwnedFd), String> {
    use std::os::fd::FromRawFd;
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two descriptors to the pointers, which are valid; the name
    // and attribute pointers may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(format!(
            "open a terminal: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: openpty succeeded: both are fresh descriptors owned here.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    // SAFETY: fcntl on a descriptor we own, with integer arguments.
    unsafe {
        libc::fcntl(master.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC);
        libc::fcntl(slave.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC);
        let flags = libc::fcntl(master.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(master.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
    Ok((master, slave))
}

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Finds `name` as the container would, looking at its root as the agent sees it.
fn resolve(root: &Path, name: &str, env: &[String], cwd: &str) -> Result<String, String> {
    if name.is_empty() {
        return Err("the process has no command".to_owned());
    }
    if name.contains('/') {
        return Ok(if name.starts_with('/') {
            name.to_owned()
        } else {
            format!("{}/{name}", cwd.trim_end_matches('/'))
        });
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    for dir in path.split(':').filter(|d| d.starts_with('/')) {
        let candidate = format!("{}/{name}", dir.trim_end_matches('/'));
        if let Ok(full) = mounts::under(root, &candidate)
            && std::fs::symlink_metadata(&full).is_ok()
        {
            return Ok(candidate);
        }
    }
    Err(format!(
        "exec: {name:?}: executable file not found in $PATH"
    ))
}

fn c(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{s:?} holds a NUL byte"))
}

/// Starts `process` under `root`, its stdio as `stdio` says, confined by its security and
/// by the container's seccomp `filter`, in the cgroup whose `cgroup.procs` is `cgroup`.
pub fn spawn(
    process: &Process,
    root: Root,
    stdio: Stdio,
    filter: Option<&Filter>,
    cgroup: Option<OwnedFd>,
) -> Result<Started, String> {
    let cwd = if process.cwd.is_empty() {
        "/".to_owned()
    } else {
        process.cwd.clone()
    };
    let name = process.args.first().cloned().unwrap_or_default();
    let (view, joined, pid_ns) = match &root {
        Root::New { rootfs, pid_ns, .. } => (rootfs.clone(), Vec::new(), pid_ns.try_clone()?),
        Root::Join { pid } => {
            let mut fds = Vec::new();
            // The mount namespace last: the others are named through /proc, which
            // entering it would hide.
            for ns in ["ipc", "uts", "cgroup", "mnt"] {
                let f = std::fs::File::open(format!("/proc/{pid}/ns/{ns}"))
                    .map_err(|e| format!("the container's process is gone ({ns}: {e})"))?;
                fds.push(OwnedFd::from(f));
            }
            let pid_ns = PidNs::of(*pid as i32)
                .map_err(|e| format!("the container's process is gone ({e})"))?;
            (PathBuf::from(format!("/proc/{pid}/root")), fds, pid_ns)
        }
    };
    let program = resolve(&view, &name, &process.env, &cwd)?;
    let cwd_c = c(&cwd)?;
    let groups: Vec<libc::gid_t> = process.additional_gids.clone();
    let (uid, gid) = (process.uid, process.gid);

    let in_cgroup = cgroup.is_some();
    let mut cmd = Command::new(&program);
    let pid_pipe = into_pid_namespace(&mut cmd, pid_ns)?;
    cmd.arg0(&name)
        .args(process.args.iter().skip(1))
        .env_clear()
        .envs(process.env.iter().filter_map(|e| e.split_once('=')));
    let master = match stdio {
        Stdio::Pipes { stdin } => {
            cmd.stdin(if stdin { Std::piped() } else { Std::null() })
                .stdout(Std::piped())
                .stderr(Std::piped());
            None
        }
        Stdio::Terminal => {
            let (master, slave) = open_terminal()?;
            let dup = |fd: &OwnedFd| fd.try_clone().map_err(|e| format!("terminal: {e}"));
            cmd.stdin(dup(&slave)?).stdout(dup(&slave)?).stderr(slave);
            Some(master)
        }
    };
    let terminal = master.is_some();

    let new = match root {
        Root::New {
            rootfs,
            steps,
            hostname,
            readonly,
            masked,
            readonly_paths,
            sysctls,
            pid_ns: _,
        } => {
            let sysctls = sysctls
                .iter()
                .map(|(k, v)| {
                    if k.contains('/') || k.split('.').any(|p| p.is_empty() || p == "..") {
                        return Err(format!("{k:?} is not a sysctl"));
                    }
                    Ok((c(&format!("/proc/sys/{}", k.replace('.', "/")))?, v.clone()))
                })
                .collect::<Result<Vec<_>, String>>()?;
            Some((
                c(&rootfs.to_string_lossy())?,
                steps,
                hostname.into_bytes(),
                readonly,
                masked.iter().map(|p| c(p)).collect::<Result<Vec<_>, _>>()?,
                readonly_paths
                    .iter()
                    .map(|p| c(p))
                    .collect::<Result<Vec<_>, _>>()?,
                sysctls,
            ))
        }
        Root::Join { .. } => None,
    };
    let caps = process.security.as_ref().map(|s| Caps {
        bounding: s.bounding,
        effective: s.effective,
        permitted: s.permitted,
        inheritable: s.inheritable,
        no_new_privs: s.no_new_privileges,
    });
    let ambient: Vec<u32> = process
        .security
        .as_ref()
        .map(|s| s.ambient.clone())
        .unwrap_or_default();
    let last_cap = last_capability();
    let filter = filter.cloned();
    let dot = c(".")?;
    let slash = c("/")?;
    let dev_null = c("/dev/null")?;
    let tmpfs = c("tmpfs")?;
    // SAFETY: the closure runs in the child between fork and exec and only makes system
    // calls on data prepared above, which it owns.
    unsafe {
        cmd.pre_exec(move || {
            let check = |r: libc::c_int| {
                if r != 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(())
                }
            };
            if let Some(procs) = &cgroup {
                // "0" moves the writer.
                if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            check(if libc::setsid() < 0 { -1 } else { 0 })?;
            if terminal {
                // Stdio is in place by now: the terminal on 0 becomes the session's.
                check(libc::ioctl(0, libc::TIOCSCTTY, 0))?;
            }
            for fd in &joined {
                check(libc::setns(fd.as_raw_fd(), 0))?;
            }
            if let Some((rootfs, steps, hostname, readonly, masked, readonly_paths, sysctls)) = &new
            {
                // The guest's IPC namespace is the pod's, shared by its containers. In
                // its cgroup by now, the process takes it as its cgroup namespace's root.
                let cgroupns = if in_cgroup { libc::CLONE_NEWCGROUP } else { 0 };
                check(libc::unshare(
                    libc::CLONE_NEWNS | libc::CLONE_NEWUTS | cgroupns,
                ))?;
                check(libc::mount(
                    std::ptr::null(),
                    slash.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ))?;
                check(libc::mount(
                    rootfs.as_ptr(),
                    rootfs.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                ))?;
                mounts::run(steps)?;
                if !hostname.is_empty() {
                    check(libc::sethostname(hostname.as_ptr().cast(), hostname.len()))?;
                }
                // Through the guest's /proc, from inside the new namespaces: namespaced
                // keys take the container's values.
                for (path, value) in sysctls {
                    let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let n = libc::write(fd, value.as_ptr().cast(), value.len());
                    let e = std::io::Error::last_os_error();
                    libc::close(fd);
                    if n < 0 {
                        return Err(e);
                    }
                }
                check(libc::chdir(rootfs.as_ptr()))?;
                check(libc::mount(
                    dot.as_ptr(),
                    slash.as_ptr(),
                    std::ptr::null(),
                    libc::MS_MOVE,
                    std::ptr::null(),
                ))?;
                check(libc::chroot(dot.as_ptr()))?;
                for path in readonly_paths {
                    make_readonly(path)?;
                }
                for path in masked {
                    mask(path, &dev_null, &tmpfs)?;
                }
                if *readonly {
                    check(libc::mount(
                        std::ptr::null(),
                        slash.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                        std::ptr::null(),
                    ))?;
                }
            }
            check(libc::chdir(cwd_c.as_ptr()))?;
            // runc's order: no_new_privs; without it the filter goes on while still
            // privileged; the bounding set; the IDs, keeping capabilities across them;
            // the capability sets; with no_new_privs the filter last.
            let nnp = caps.is_some_and(|c| c.no_new_privs);
            if nnp {
                check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
            }
            if !nnp && let Some(f) = &filter {
                install(f)?;
            }
            if let Some(caps) = caps {
                for cap in 0..=last_cap {
                    if caps.bounding & (1 << cap) == 0 {
                        check(libc::prctl(
                            libc::PR_CAPBSET_DROP,
                            cap as libc::c_ulong,
                            0,
                            0,
                            0,
                        ))?;
                    }
                }
                check(libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0))?;
            }
            check(libc::setgroups(groups.len(), groups.as_ptr()))?;
            check(libc::setresgid(gid, gid, gid))?;
            check(libc::setresuid(uid, uid, uid))?;
            if let Some(caps) = caps {
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
                    effective: word(caps.effective, i),
                    permitted: word(caps.permitted, i),
                    inheritable: word(caps.inheritable, i),
                });
                if libc::syscall(libc::SYS_capset, &header as *const Header, data.as_ptr()) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0);
                // Best effort, as runc: an ambient capability that is not also
                // inheritable is refused, and the process goes on without it.
                for &cap in &ambient {
                    libc::prctl(
                        libc::PR_CAP_AMBIENT,
                        libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                        cap as libc::c_ulong,
                        0,
                        0,
                    );
                }
            }
            if nnp && let Some(f) = &filter {
                install(f)?;
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| format!("start {program:?}: {e}"))?;
    // Our copies of the terminal's slave go with the command.
    drop(cmd);
    // The reaper collects the statuses of both the intermediate child and the process;
    // dropping a std Child does not wait.
    let pid = read_pid(pid_pipe)?;
    if let Some(master) = master {
        return Ok(Started {
            pid,
            stdin: None,
            stdout: master,
            stderr: None,
        });
    }
    let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) else {
        return Err("the process has no output pipes".to_owned());
    };
    Ok(Started {
        pid,
        stdin: child.stdin.take().map(OwnedFd::from),
        stdout: out.into(),
        stderr: Some(err.into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_found_in_the_containers_path() {
        let root = std::env::temp_dir().join(format!("agent-resolve-{}", std::process::id()));
        let _ = std::fs::create_dir_all(root.join("bin"));
        let _ = std::fs::write(root.join("bin/tool"), b"");
        let env = vec!["PATH=/usr/bin:/bin".to_owned()];
        assert_eq!(
            resolve(&root, "tool", &env, "/").as_deref(),
            Ok("/bin/tool")
        );
        assert!(resolve(&root, "missing", &env, "/").is_err());
        assert_eq!(
            resolve(&root, "./x", &env, "/work").as_deref(),
            Ok("/work/./x")
        );
        let _ = std::fs::remove_dir_all(&root);
    }
}
