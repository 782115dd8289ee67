//! Reaching into a pod's network namespace from the host, for the `oci` handler's
//! port-forward: the socket is made on a dedicated thread that joined the namespace
//! briefly, never across an `.await`, and the thread ends after the connect.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::Duration;

/// Connects to `localhost:port` (IPv4, else IPv6) from inside the network namespace
/// pinned at `netns`, or the host's when `None`.
pub async fn connect_loopback(
    netns: Option<PathBuf>,
    port: u16,
) -> std::io::Result<tokio::net::TcpStream> {
    let stream = tokio::task::spawn_blocking(move || -> std::io::Result<std::net::TcpStream> {
        let ns = netns.map(std::fs::File::open).transpose()?;
        let handle = std::thread::spawn(move || -> std::io::Result<std::net::TcpStream> {
            // SAFETY: `ns` is an open namespace file; setns changes only this thread, which
            // ends after the connect.
            if let Some(ns) = ns
                && unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            let timeout = Duration::from_secs(10);
            let v4 = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            let v6 = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
            std::net::TcpStream::connect_timeout(&v4, timeout).or_else(|first| {
                std::net::TcpStream::connect_timeout(&v6, timeout).map_err(|_| first)
            })
        });
        handle
            .join()
            .map_err(|_| std::io::Error::other("the namespace thread panicked"))?
    })
    .await
    .map_err(std::io::Error::other)??;
    stream.set_nonblocking(true)?;
    tokio::net::TcpStream::from_std(stream)
}
