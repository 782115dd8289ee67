//! The mount syscalls the snapshotter needs, each wrapped in one small function.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn c_path(path: &Path) -> std::io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path holds a NUL byte"))
}

/// Mounts an overlay filesystem with the given option string at `target`.
pub fn mount_overlay(target: &Path, options: &str) -> std::io::Result<()> {
    let target = c_path(target)?;
    let options = CString::new(options).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "options hold a NUL byte")
    })?;
    let source = c"overlay";
    // SAFETY: every pointer is a valid NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            source.as_ptr(),
            0,
            options.as_ptr().cast(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The kernel refuses mount options longer than a page.
const PAGE: usize = 4096;

/// How many lower layers overlayfs stacks (`OVL_MAX_STACK`).
pub const OVERLAY_MAX_LAYERS: usize = 500;

/// Mounts an overlay of `lowers` (top first) under `upper`, with `work`, at `target`.
/// Options that fit in a page take one mount(2); longer ones (hundreds of layers) are
/// given to the kernel one layer at a time through fsconfig(2)'s `lowerdir+` (Linux 6.8
/// and later), so their length does not matter.
pub fn mount_overlay_layers(
    target: &Path,
    lowers: &[String],
    upper: &Path,
    work: &Path,
) -> std::io::Result<()> {
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowers.join(":"),
        upper.display(),
        work.display()
    );
    if options.len() < PAGE {
        return mount_overlay(target, &options);
    }
    let cstr = |s: &str| {
        CString::new(s).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "a path holds a NUL byte")
        })
    };
    const FSOPEN_CLOEXEC: libc::c_uint = 1;
    const FSCONFIG_SET_STRING: libc::c_uint = 1;
    const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
    const FSMOUNT_CLOEXEC: libc::c_uint = 1;
    // SAFETY: the name is a NUL-terminated string; the result is a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_fsopen, c"overlay".as_ptr(), FSOPEN_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fsopen returned a new descriptor that nothing else owns.
    let fs = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let set = |key: &std::ffi::CStr, value: &CString| {
        // SAFETY: `fs` is an fs context; key and value are NUL-terminated strings.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                FSCONFIG_SET_STRING,
                key.as_ptr(),
                value.as_ptr(),
                0,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    for lower in lowers {
        set(c"lowerdir+", &cstr(lower)?).map_err(|e| {
            if e.raw_os_error() == Some(libc::EINVAL) {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "{} layers make overlay mount options longer than a page, and this kernel cannot take them one by one (lowerdir+ needs Linux 6.8)",
                        lowers.len()
                    ),
                )
            } else {
                e
            }
        })?;
    }
    set(c"upperdir", &cstr(&upper.display().to_string())?)?;
    set(c"workdir", &cstr(&work.display().to_string())?)?;
    // SAFETY: as above; the command takes no key or value.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_char>(),
            0,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fs` is a created fs context; the result is a new mount fd or -1.
    let mfd = unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, 0) };
    if mfd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fsmount returned a new descriptor that nothing else owns.
    let mnt = unsafe { OwnedFd::from_raw_fd(mfd as i32) };
    attach(&mnt, target)
}

/// Detaches the mount at `target`.
pub fn unmount(target: &Path) -> std::io::Result<()> {
    let target = c_path(target)?;
    // SAFETY: `target` is a valid NUL-terminated string that outlives the call.
    let rc = unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// How [`clone_tree`] changes the copy it makes.
#[derive(Debug, Clone, Copy, Default)]
pub struct CloneOptions<'a> {
    /// Copy the mounts below `source` too (a recursive bind).
    pub recursive: bool,
    /// Make the copy read-only: every mount in it, when `recursive`.
    pub read_only: bool,
    /// Show the copy's files through the ID mapping of this user namespace (a
    /// `/proc/<pid>/ns/user` or a pinned copy of one): a file owned by 0 on disk is seen
    /// as owned by the host ID that the namespace maps 0 to.
    pub idmap: Option<&'a Path>,
}

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_IDMAP: u64 = 0x10_0000;

/// Mounts a copy of the mount tree at `source` on `target` (created as an empty
/// directory, or an empty file when `source` is not a directory), changed as `options`
/// says and private (mount events do not propagate into or out of it). The copy is
/// changed before it is attached, so nothing can see it half-made. [`unmount_all_in`]
/// detaches such copies.
pub fn clone_tree(source: &Path, target: &Path, options: &CloneOptions<'_>) -> std::io::Result<()> {
    let c_source = c_path(source)?;
    let recursive = if options.recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: open_tree reads the NUL-terminated path; it returns a new descriptor.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c_source.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | recursive,
        )
    };
    let fd = i32::try_from(fd).unwrap_or(-1);
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: open_tree succeeded: `fd` is a fresh descriptor that we now own.
    let tree = unsafe { OwnedFd::from_raw_fd(fd) };
    let userns = match options.idmap {
        Some(path) => Some(std::fs::File::open(path)?),
        None => None,
    };
    let mut attr = MountAttr {
        attr_set: 0,
        attr_clr: 0,
        propagation: libc::MS_PRIVATE,
        userns_fd: 0,
    };
    if options.read_only {
        attr.attr_set |= MOUNT_ATTR_RDONLY;
    }
    if let Some(ns) = &userns {
        attr.attr_set |= MOUNT_ATTR_IDMAP;
        attr.userns_fd = u64::try_from(ns.as_raw_fd()).unwrap_or(0);
    }
    // SAFETY: `attr` is a valid mount_attr of the size given; the path is an empty C
    // string, so the call acts on `tree` itself.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint | recursive,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if source.is_dir() {
        std::fs::create_dir_all(target)?;
    } else {
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(target)?;
    }
    attach(&tree, target)
}

/// Attaches the detached mount `mount` (from open_tree or fsmount) at `target`.
fn attach(mount: &OwnedFd, target: &Path) -> std::io::Result<()> {
    let c_target = c_path(target)?;
    // SAFETY: the paths are NUL-terminated strings; the source is `mount` itself.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mount.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            c_target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Unmounts every mount point directly in `dir` (made by [`clone_tree`]) and removes the
/// directory. Stops at the first mount that cannot be unmounted, leaving `dir` in place:
/// deleting it then would delete through that mount into what it shows.
pub fn unmount_all_in(dir: &Path) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        match unmount(&path) {
            Ok(()) => {}
            // EINVAL: not a mount point (a copy whose attaching failed).
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => return Err(e),
        }
        if path.is_dir() {
            std::fs::remove_dir(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    std::fs::remove_dir(dir)
}
