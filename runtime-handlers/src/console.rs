//! The console socket protocol of OCI runtimes: `--console-socket` names a unix socket on
//! which the runtime connects and passes the pty master of a terminal container or exec
//! (SCM_RIGHTS).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Accepts the runtime's connection on the console socket and takes the pty master it
/// passes with SCM_RIGHTS.
pub fn receive_console(listener: &std::os::unix::net::UnixListener) -> Result<OwnedFd, String> {
    let (conn, _) = listener
        .accept()
        .map_err(|e| format!("console socket accept: {e}"))?;
    receive_fd(&conn)
}

/// Takes the descriptor the runtime passes on an accepted console-socket connection.
pub fn receive_fd(conn: &std::os::unix::net::UnixStream) -> Result<OwnedFd, String> {
    let mut data = [0u8; 256];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // Room for one descriptor's control message.
    let mut control = [0u8; 64];
    // SAFETY: msghdr is plain data; zeroed is valid, and every pointer set below refers
    // to a live local buffer of the stated length.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len() as _;
    // SAFETY: `msg` describes valid buffers; recvmsg fills them.
    let n = unsafe { libc::recvmsg(conn.as_raw_fd(), &mut msg, 0) };
    if n < 0 {
        return Err(format!(
            "console socket recvmsg: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: CMSG_FIRSTHDR reads the header we passed; the kernel filled the buffer.
    let cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    // SAFETY: `cmsg` is checked non-null and points into `control`.
    if cmsg.is_null() || unsafe { (*cmsg).cmsg_type } != libc::SCM_RIGHTS {
        return Err("the runtime sent no console descriptor".to_owned());
    }
    // SAFETY: an SCM_RIGHTS message carries at least one int descriptor after its header.
    let fd = unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>()) };
    // SAFETY: the kernel installed `fd` in this process for us; we own it now.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
