//! Starting crisp's container-entering helper from a file nobody can change.
//!
//! A helper that enters a container (crisp-enter) must not run from a file a container
//! process could modify through `/proc/<pid>/exe` (runc's CVE-2019-5736: a container
//! program naming `/proc/self/exe` as its interpreter runs the helper's image as a
//! container process, which another container process can then open). crispd opens the
//! helper once inside a detached, read-only copy of its directory's mount: every write,
//! chmod or chown through that path fails with EROFS, and no copy is made per exec. The
//! helper checks that it runs from a read-only mount and otherwise re-executes itself
//! from a sealed memfd copy of its own (see [`sealed_copy`]), private to that process.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The name a memfd copy shows as (`/proc/<pid>/exe` reads `/memfd:<NAME> (deleted)`).
pub const SEALED_NAME: &str = "crisp-enter";

/// Copies the file at `source` into a new memfd and seals it against writes.
pub fn sealed_copy(source: &Path) -> std::io::Result<OwnedFd> {
    let name = std::ffi::CString::new(SEALED_NAME).map_err(std::io::Error::other)?;
    // SAFETY: memfd_create reads the NUL-terminated name; it returns a new descriptor.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: memfd_create succeeded: `fd` is a fresh descriptor that we own.
    let mut copy = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let mut file = std::fs::File::open(source)?;
    std::io::copy(&mut file, &mut copy)?;
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: fcntl on our own descriptor.
    if unsafe { libc::fcntl(copy.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(OwnedFd::from(copy))
}

/// Whether the file at `path` lies on a read-only mount (so it cannot be written,
/// chmodded or chowned through any path that resolves to it).
pub fn on_read_only_mount(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statvfs is plain data; zeroed is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid path and `st` a valid buffer.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_flag & libc::ST_RDONLY != 0
}

/// Opens `helper` inside a detached, read-only copy of its directory's mount; the
/// returned O_PATH descriptor keeps that mount alive.
fn read_only_view(helper: &Path) -> std::io::Result<OwnedFd> {
    let (Some(dir), Some(name)) = (helper.parent(), helper.file_name()) else {
        return Err(std::io::Error::other("helper path has no directory"));
    };
    let dir_c =
        std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let name_c = std::ffi::CString::new(name.as_bytes()).map_err(std::io::Error::other)?;
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    // SAFETY: open_tree reads the NUL-terminated path; it returns a new descriptor.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            dir_c.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    let tree = i32::try_from(tree).unwrap_or(-1);
    if tree < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: open_tree succeeded: `tree` is a fresh descriptor that we own.
    let tree = unsafe { OwnedFd::from_raw_fd(tree) };
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let attr = MountAttr {
        attr_set: 0x1, // MOUNT_ATTR_RDONLY
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: `attr` is a valid mount_attr of the size given; the empty path acts on
    // `tree` itself.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: openat reads the NUL-terminated name relative to `tree`.
    let fd = unsafe {
        libc::openat(
            tree.as_raw_fd(),
            name_c.as_ptr(),
            libc::O_PATH | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: openat succeeded: `fd` is a fresh descriptor that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A path that executes `helper` from its read-only view, made on first use and kept for
/// the life of the process (a helper replaced on disk is picked up at the next start).
/// `None` if no view can be made; the helper then protects itself with a memfd copy.
/// The path names this process's descriptor, which a child started with it still has
/// when the kernel resolves the path.
pub fn read_only_path(helper: &Path) -> Option<PathBuf> {
    static VIEW: OnceLock<Option<(PathBuf, OwnedFd)>> = OnceLock::new();
    let (source, fd) = VIEW
        .get_or_init(|| {
            read_only_view(helper)
                .ok()
                .map(|fd| (helper.to_path_buf(), fd))
        })
        .as_ref()?;
    (source == helper).then(|| PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())))
}
