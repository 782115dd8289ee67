//! Pod namespaces pinned by bind mounts under crisp's own state directory (not
//! /run/netns, which other software may bind-mount over), so they live without any
//! process in them.
//!
//! Each namespace is made on a short-lived dedicated thread: `unshare` affects only the
//! calling thread, which then bind-mounts `/proc/thread-self/ns/<kind>` onto the pin
//! file and exits. No other thread of crispd ever changes namespace.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::NetnsError;

/// The namespaces a pod can have pinned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamespaceKind {
    /// Network: interfaces, addresses, routes, ports.
    Net,
    /// System V IPC and POSIX message queues.
    Ipc,
    /// Hostname and domain name.
    Uts,
    /// Process IDs (pinned from a living init: see [`pin_process_namespace`]).
    Pid,
    /// User and group IDs (made by a helper process, since a multi-threaded process
    /// cannot unshare one: see [`adopt_namespace`]).
    User,
}

impl NamespaceKind {
    fn flag(self) -> libc::c_int {
        match self {
            Self::Net => libc::CLONE_NEWNET,
            Self::Ipc => libc::CLONE_NEWIPC,
            Self::Uts => libc::CLONE_NEWUTS,
            Self::Pid => libc::CLONE_NEWPID,
            Self::User => libc::CLONE_NEWUSER,
        }
    }

    /// The name under `/proc/<pid>/ns`.
    pub fn proc_name(self) -> &'static str {
        match self {
            Self::Net => "net",
            Self::Ipc => "ipc",
            Self::Uts => "uts",
            Self::Pid => "pid",
            Self::User => "user",
        }
    }
}

fn c_path(path: &Path) -> Result<CString, NetnsError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| NetnsError::Create {
        path: path.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "path holds a NUL byte"),
    })
}

/// Creates a new namespace of `kind` pinned at `path`. For UTS, `hostname` is set in it;
/// for the network, the loopback interface is brought up. On failure nothing is left.
pub fn create_namespace(
    kind: NamespaceKind,
    path: &Path,
    hostname: Option<&str>,
) -> Result<(), NetnsError> {
    let fail = |source: std::io::Error| NetnsError::Create {
        path: path.to_owned(),
        source,
    };
    pin_file(path).map_err(fail)?;
    let target = c_path(path)?;
    let hostname = hostname.map(str::to_owned);
    let result = std::thread::spawn(move || -> std::io::Result<()> {
        unshare(kind.flag())?;
        configure_current(kind, hostname.as_deref())?;
        let source = CString::new(format!("/proc/thread-self/ns/{}", kind.proc_name()))
            .map_err(|_| std::io::Error::other("ns path"))?;
        bind_mount(&source, &target)
    })
    .join()
    .map_err(|_| fail(std::io::Error::other("namespace thread panicked")))?;
    if let Err(e) = result {
        let _ = std::fs::remove_file(path);
        return Err(fail(e));
    }
    Ok(())
}

/// What a new namespace gets before a pod uses it: its hostname (UTS), its loopback
/// interface up (network). Acts on the calling thread's namespaces.
fn configure_current(kind: NamespaceKind, hostname: Option<&str>) -> std::io::Result<()> {
    if let Some(name) = hostname {
        set_hostname(name)?;
    }
    if kind == NamespaceKind::Net {
        loopback_up()?;
    }
    Ok(())
}

/// Pins the namespace of `kind` that process `pid` made for a pod (the helper that made
/// a pod's user namespace made its other namespaces inside it) at `path`, and configures
/// it as [`create_namespace`] would. On failure nothing is left.
pub fn adopt_namespace(
    kind: NamespaceKind,
    pid: u32,
    path: &Path,
    hostname: Option<&str>,
) -> Result<(), NetnsError> {
    pin_process_namespace(kind, pid, path)?;
    if hostname.is_none() && kind != NamespaceKind::Net {
        return Ok(());
    }
    let fail = |source: std::io::Error| NetnsError::Create {
        path: path.to_owned(),
        source,
    };
    let configured = std::fs::File::open(path).and_then(|ns| {
        let hostname = hostname.map(str::to_owned);
        std::thread::spawn(move || -> std::io::Result<()> {
            use std::os::fd::AsRawFd;
            // SAFETY: `ns` is an open namespace file; setns changes only this thread,
            // which ends right after.
            if unsafe { libc::setns(ns.as_raw_fd(), kind.flag()) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            configure_current(kind, hostname.as_deref())
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("namespace thread panicked")))
    });
    if let Err(e) = configured {
        let _ = remove_namespace(path);
        return Err(fail(e));
    }
    Ok(())
}

/// Pins the namespace of `kind` that process `pid` is in at `path` (a PID namespace
/// needs a living init, so it is pinned from one rather than created here).
pub fn pin_process_namespace(kind: NamespaceKind, pid: u32, path: &Path) -> Result<(), NetnsError> {
    let fail = |source: std::io::Error| NetnsError::Create {
        path: path.to_owned(),
        source,
    };
    pin_file(path).map_err(fail)?;
    let source = CString::new(format!("/proc/{pid}/ns/{}", kind.proc_name()))
        .map_err(|_| fail(std::io::Error::other("ns path")))?;
    let target = c_path(path)?;
    if let Err(e) = bind_mount(&source, &target) {
        let _ = std::fs::remove_file(path);
        return Err(fail(e));
    }
    Ok(())
}

/// Creates the empty file a namespace is bind-mounted onto; an existing one is an
/// error, so two pods never share a pin by accident.
fn pin_file(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map(drop)
}

/// Unpins and deletes the namespace at `path`. A missing pin is not an error.
pub fn remove_namespace(path: &Path) -> Result<(), NetnsError> {
    let fail = |source: std::io::Error| NetnsError::Remove {
        path: path.to_owned(),
        source,
    };
    if !path.exists() {
        return Ok(());
    }
    let target = c_path(path)?;
    // SAFETY: `target` is a valid NUL-terminated path for the duration of the call.
    let rc = unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        // EINVAL: not a mount point (a pin whose creation failed half-way).
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(fail(e));
        }
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(fail(e)),
    }
}

/// Whether `path` is a pinned namespace (a bind mount of an nsfs inode).
pub fn is_pinned(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into `buf`, which is large enough, and reads `c`.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut buf) };
    const NSFS_MAGIC: libc::c_long = 0x6e73_6673;
    rc == 0 && buf.f_type as libc::c_long == NSFS_MAGIC
}

fn unshare(flags: libc::c_int) -> std::io::Result<()> {
    // SAFETY: unshare takes flags only; it changes this thread's namespaces.
    if unsafe { libc::unshare(flags) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn set_hostname(name: &str) -> std::io::Result<()> {
    // SAFETY: the pointer and length describe `name`'s bytes.
    if unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn bind_mount(source: &CString, target: &CString) -> std::io::Result<()> {
    // SAFETY: both are valid NUL-terminated paths; no data argument.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Sets IFF_UP on `lo` in the calling thread's network namespace.
fn loopback_up() -> std::io::Result<()> {
    // SAFETY: creating a socket has no memory preconditions.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `req` is a valid ifreq naming "lo"; SIOCGIFFLAGS fills its flags.
    let mut rc = unsafe { libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) };
    if rc == 0 {
        // SAFETY: reading and writing the flags member of the union we just filled.
        unsafe { req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
        // SAFETY: as above, SIOCSIFFLAGS reads the request.
        rc = unsafe { libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) };
    }
    let err = std::io::Error::last_os_error();
    // SAFETY: fd is ours and open.
    unsafe { libc::close(fd) };
    if rc == 0 { Ok(()) } else { Err(err) }
}

/// Where a pod's pins live: `<state>/pods/<id>/ns/<kind>`.
pub fn pin_path(pod_dir: &Path, kind: NamespaceKind) -> PathBuf {
    pod_dir.join("ns").join(kind.proc_name())
}

/// Which pinned namespace a namespaced sysctl belongs to, if it is one a pod may set.
pub fn sysctl_namespace(key: &str) -> Option<NamespaceKind> {
    let ipc = key.starts_with("kernel.shm")
        || key.starts_with("kernel.msg")
        || key == "kernel.sem"
        || key.starts_with("fs.mqueue.");
    if key.starts_with("net.") {
        Some(NamespaceKind::Net)
    } else if ipc {
        Some(NamespaceKind::Ipc)
    } else if key == "kernel.hostname" || key == "kernel.domainname" {
        Some(NamespaceKind::Uts)
    } else {
        None
    }
}

/// Writes `value` to the sysctl `key` inside the namespace pinned at `pin`.
pub fn set_sysctl(pin: &Path, key: &str, value: &str) -> Result<(), NetnsError> {
    let fail = |source: std::io::Error| NetnsError::Create {
        path: pin.to_owned(),
        source,
    };
    let valid = !key.is_empty()
        && key.split(['.', '/']).all(|p| !p.is_empty() && p != "..")
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'));
    let kind = sysctl_namespace(key).filter(|_| valid).ok_or_else(|| {
        fail(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("sysctl {key} is not a namespaced sysctl a pod may set"),
        ))
    })?;
    let ns = std::fs::File::open(pin).map_err(fail)?;
    let proc_path = format!("/proc/sys/{}", key.replace('.', "/"));
    let value = value.to_owned();
    std::thread::spawn(move || -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: `ns` is an open namespace file; setns changes only this thread.
        if unsafe { libc::setns(ns.as_raw_fd(), kind.flag()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        std::fs::write(&proc_path, value.as_bytes())
    })
    .join()
    .map_err(|_| fail(std::io::Error::other("sysctl thread panicked")))?
    .map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_pinned_and_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let net = pin_path(dir.path(), NamespaceKind::Net);
        create_namespace(NamespaceKind::Net, &net, None).expect("net");
        assert!(is_pinned(&net));
        let uts = pin_path(dir.path(), NamespaceKind::Uts);
        create_namespace(NamespaceKind::Uts, &uts, Some("pod-host")).expect("uts");
        assert!(is_pinned(&uts));
        // The host's own namespaces were not touched by the helper threads.
        let mut buf = [0u8; 256];
        // SAFETY: gethostname writes at most buf.len() bytes.
        unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
        assert!(!String::from_utf8_lossy(&buf).starts_with("pod-host"));
        // Creating over an existing pin is refused, not silently shared.
        assert!(create_namespace(NamespaceKind::Net, &net, None).is_err());
        remove_namespace(&net).expect("remove");
        remove_namespace(&net).expect("remove again");
        remove_namespace(&uts).expect("remove");
        assert!(!net.exists() && !uts.exists());
    }
}
