//! Interface counters of pod network namespaces, as `/proc/net/dev` shows them from
//! inside each: one dedicated thread visits the namespaces in turn (never an async
//! thread, and no thread per pod), reading its own view through `/proc/thread-self`.

use std::os::fd::AsRawFd;
use std::path::PathBuf;

use crate::error::NetnsError;

/// One interface's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterfaceCounters {
    /// Its name in the namespace.
    pub name: String,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Packets dropped on receipt.
    pub rx_dropped: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Send errors.
    pub tx_errors: u64,
    /// Packets dropped on sending.
    pub tx_dropped: u64,
}

/// The counters of every interface but loopback in each namespace pinned at `pins`
/// (`None`: the host's), in the same order.
pub fn interface_counters(
    pins: Vec<Option<PathBuf>>,
) -> Vec<Result<Vec<InterfaceCounters>, NetnsError>> {
    let count = pins.len();
    let visit = std::thread::spawn(move || {
        let read = || -> std::io::Result<Vec<InterfaceCounters>> {
            Ok(parse_net_dev(&std::fs::read_to_string(
                "/proc/thread-self/net/dev",
            )?))
        };
        let fail = |path: PathBuf, source| NetnsError::Read { path, source };
        // The thread may have to come back to the host's namespace between pods.
        let host = std::fs::File::open("/proc/thread-self/ns/net");
        pins.into_iter()
            .map(|pin| {
                let (target, path) = match &pin {
                    Some(p) => (std::fs::File::open(p), p.clone()),
                    None => (
                        host.as_ref()
                            .map_err(|e| std::io::Error::new(e.kind(), e.to_string()))
                            .and_then(|h| h.try_clone()),
                        PathBuf::from("/proc/thread-self/ns/net"),
                    ),
                };
                let ns = target.map_err(|e| fail(path.clone(), e))?;
                // SAFETY: `ns` is an open network namespace file; setns changes only
                // this thread, which ends after the visits.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(fail(path, std::io::Error::last_os_error()));
                }
                read().map_err(|e| fail(path, e))
            })
            .collect::<Vec<_>>()
    });
    visit.join().unwrap_or_else(|_| {
        (0..count)
            .map(|_| {
                Err(NetnsError::Read {
                    path: PathBuf::from("/proc/thread-self/net/dev"),
                    source: std::io::Error::other("the counters thread panicked"),
                })
            })
            .collect()
    })
}

fn parse_net_dev(text: &str) -> Vec<InterfaceCounters> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, counters) = line.split_once(':')?;
            let name = name.trim();
            if name == "lo" {
                return None;
            }
            let v: Vec<u64> = counters
                .split_whitespace()
                .map(|n| n.parse().unwrap_or(0))
                .collect();
            // rx: bytes packets errs drop fifo frame compressed multicast; then tx.
            Some(InterfaceCounters {
                name: name.to_owned(),
                rx_bytes: *v.first()?,
                rx_packets: *v.get(1)?,
                rx_errors: *v.get(2)?,
                rx_dropped: *v.get(3)?,
                tx_bytes: *v.get(8)?,
                tx_packets: *v.get(9)?,
                tx_errors: *v.get(10)?,
                tx_dropped: *v.get(11)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_dev_skips_loopback_and_reads_both_directions() {
        let text = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0
  eth0:    5000      40    2    1    0     0          0         0     7000      50    3    4    0     0       0          0
";
        assert_eq!(
            parse_net_dev(text),
            [InterfaceCounters {
                name: "eth0".into(),
                rx_bytes: 5000,
                rx_packets: 40,
                rx_errors: 2,
                rx_dropped: 1,
                tx_bytes: 7000,
                tx_packets: 50,
                tx_errors: 3,
                tx_dropped: 4,
            }]
        );
    }

    #[test]
    fn a_fresh_namespace_has_no_counters_and_the_host_keeps_its_own() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pin = crate::pin_path(dir.path(), crate::NamespaceKind::Net);
        if crate::create_namespace(crate::NamespaceKind::Net, &pin, None).is_err() {
            return; // not root
        }
        let missing = dir.path().join("missing");
        let read = interface_counters(vec![Some(pin.clone()), None, Some(missing)]);
        assert_eq!(read.len(), 3);
        assert!(read[0].as_ref().is_ok_and(Vec::is_empty), "{:?}", read[0]);
        assert!(read[1].is_ok(), "{:?}", read[1]);
        assert!(read[2].is_err());
        crate::remove_namespace(&pin).expect("remove");
    }
}
