//! Sealed in-memory copies of crisp's own helper executables.
//!
//! A helper that enters a container (crisp-enter) must not run from the host's file: a
//! process in the container could reach that file through `/proc/<pid>/exe` and overwrite
//! it (runc's CVE-2019-5736). A copy in a memfd sealed against writes cannot be changed
//! by anyone. crispd makes the copy once and starts the helper from it; the helper makes
//! its own copy when started any other way.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The name the copy shows as (`/proc/<pid>/exe` reads `/memfd:<NAME> (deleted)`).
pub const SEALED_NAME: &str = "crisp-enter";

/// Copies the file at `source` into a new memfd and seals it against any change.
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

/// A path that executes this process's sealed copy of `helper`, made on first use and
/// kept for the life of the process (a helper replaced on disk is picked up at the next
/// start). `None` if no copy can be made; the helper then copies itself.
pub fn sealed_path(helper: &Path) -> Option<PathBuf> {
    static COPY: OnceLock<Option<(PathBuf, OwnedFd)>> = OnceLock::new();
    let (source, fd) = COPY
        .get_or_init(|| {
            sealed_copy(helper)
                .ok()
                .map(|fd| (helper.to_path_buf(), fd))
        })
        .as_ref()?;
    (source == helper).then(|| {
        PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            fd.as_raw_fd()
        ))
    })
}
