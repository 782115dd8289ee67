//! Process descriptors (pidfd): a handle on one process that a reused pid cannot fool,
//! and a wait for its exit that works for processes that are not our children.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// A pidfd for process `pid`, if it exists. Check afterwards that it is the process
/// meant (its start time, its namespace): from here on the descriptor pins it.
pub(crate) fn open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes no pointers.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = RawFd::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: a fresh descriptor we own.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether the process behind `pidfd` has exited.
pub(crate) fn exited(pidfd: &OwnedFd) -> bool {
    let mut p = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd, no wait.
    unsafe { libc::poll(&mut p, 1, 0) == 1 }
}

/// Waits until the process behind `pidfd` has exited (polling when the descriptor
/// cannot be watched).
pub(crate) async fn wait(pidfd: &OwnedFd) {
    let poll = async {
        while !exited(pidfd) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let Ok(dup) = pidfd.try_clone() else {
        return poll.await;
    };
    // SAFETY: the AsyncFd owns the duplicate, which stays open and unchanged until dropped.
    let watch = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(dup, tokio::io::Interest::READABLE)
    };
    match watch {
        Ok(watch) => {
            let _ = watch.readable().await;
        }
        Err(_) => poll.await,
    }
}
