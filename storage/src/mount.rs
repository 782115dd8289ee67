//! The mount syscalls the snapshotter needs, each wrapped in one small function.

use std::ffi::CString;
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
