//! A VM pod's network, the Kata way: CNI fills the pod's network namespace as for any
//! pod; here a tap joins it, with an ingress qdisc on the CNI veth and on the tap and a
//! `u32 match all` filter with a mirred egress redirect each way, so every frame crosses
//! between the two. QEMU gets the tap's descriptor; the guest's NIC takes the veth's MAC
//! and the pod's addresses and routes. All of it over netlink, inside the namespace.

use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkLayerType, LinkMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteProtocol};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

/// The tap's name inside the pod's namespace.
pub const TAP: &str = "crisptap0";

/// What the guest needs to take the pod's place on the network.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PodNic {
    /// The CNI veth's index and name in the namespace.
    pub veth_index: u32,
    /// Its name.
    pub veth: String,
    /// Its MAC (`aa:bb:...`), which the guest's NIC takes.
    pub mac: String,
    /// Its MTU.
    pub mtu: u32,
    /// The pod's addresses, CIDR form.
    pub addresses: Vec<String>,
    /// Routes other than the addresses' own: (destination CIDR or empty for default,
    /// gateway or empty).
    pub routes: Vec<(String, String)>,
}

/// Runs `work` with a netlink handle inside the namespace pinned at `netns`, on a thread
/// of its own (the namespace is a property of the thread that opens the socket).
fn in_netns<T, F, Fut>(netns: &Path, work: F) -> Result<T, String>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let ns = std::fs::File::open(netns)
        .map_err(|e| format!("the pod's network namespace {}: {e}", netns.display()))?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                // SAFETY: setns takes an open namespace descriptor; this thread is ours
                // and ends with the work.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(format!(
                        "enter the pod's network namespace: {}",
                        std::io::Error::last_os_error()
                    ));
                }
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                rt.block_on(async move {
                    let (conn, handle, _) =
                        rtnetlink::new_connection().map_err(|e| format!("netlink: {e}"))?;
                    tokio::spawn(conn);
                    work(handle).await
                })
            })
            .join()
            .unwrap_or_else(|_| Err("the netlink thread panicked".to_owned()))
    })
}

fn mac_text(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Opens a tap named [`TAP`] in the calling thread's namespace: it lives while the
/// descriptor does (QEMU's), so it goes with QEMU.
fn open_tap() -> Result<OwnedFd, String> {
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    // SAFETY: open takes a NUL-terminated path.
    let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(format!("/dev/net/tun: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // struct ifreq: the name (16 bytes), then the flags (a short) in the union.
    let mut ifreq = [0u8; 40];
    ifreq[..TAP.len()].copy_from_slice(TAP.as_bytes());
    let flags = (libc::IFF_TAP | libc::IFF_NO_PI) as u16;
    ifreq[16..18].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: TUNSETIFF reads and writes the 40-byte ifreq.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, ifreq.as_mut_ptr()) } != 0 {
        return Err(format!(
            "make tap {TAP}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(fd)
}

async fn links(handle: &Handle) -> Result<Vec<LinkMessage>, String> {
    handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| format!("list links: {e}"))
}

fn name_of(link: &LinkMessage) -> String {
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

/// Joins a new tap to the pod's veth in `netns`; returns what the guest needs and the
/// tap's descriptor for QEMU.
pub fn plumb(netns: &Path) -> Result<(PodNic, OwnedFd), String> {
    let tap = std::sync::Arc::new(std::sync::Mutex::new(None));
    let slot = std::sync::Arc::clone(&tap);
    let nic = in_netns(netns, move |handle| async move {
        let all = links(&handle).await?;
        let veth = all
            .iter()
            .find(|l| l.header.link_layer_type == LinkLayerType::Ether && name_of(l) != TAP)
            .ok_or("the pod's network namespace has no ethernet interface (did CNI run?)")?;
        let mut nic = PodNic {
            veth_index: veth.header.index,
            veth: name_of(veth),
            ..PodNic::default()
        };
        for a in &veth.attributes {
            match a {
                LinkAttribute::Address(mac) => nic.mac = mac_text(mac),
                LinkAttribute::Mtu(m) => nic.mtu = *m,
                _ => {}
            }
        }
        let addrs: Vec<_> = handle
            .address()
            .get()
            .set_link_index_filter(nic.veth_index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| format!("list addresses: {e}"))?;
        for a in addrs {
            let prefix = a.header.prefix_len;
            for attr in &a.attributes {
                if let AddressAttribute::Address(ip) = attr {
                    let link_local = match ip {
                        IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80,
                        IpAddr::V4(_) => false,
                    };
                    if !link_local {
                        nic.addresses.push(format!("{ip}/{prefix}"));
                    }
                }
            }
        }
        let routes: Vec<_> = handle
            .route()
            .get(RouteMessageBuilder::<std::net::Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(|e| format!("list routes: {e}"))?;
        for r in routes {
            if r.header.protocol == RouteProtocol::Kernel || r.header.table != 254 {
                continue;
            }
            let mut dest = String::new();
            let mut gateway = String::new();
            for attr in &r.attributes {
                match attr {
                    RouteAttribute::Destination(RouteAddress::Inet(ip)) => {
                        dest = format!("{ip}/{}", r.header.destination_prefix_length);
                    }
                    RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gateway = ip.to_string(),
                    _ => {}
                }
            }
            nic.routes.push((dest, gateway));
        }

        let fd = open_tap()?;
        let tap_index = links(&handle)
            .await?
            .iter()
            .find(|l| name_of(l) == TAP)
            .map(|l| l.header.index)
            .ok_or("the tap vanished")?;
        handle
            .link()
            .set(
                LinkUnspec::new_with_index(tap_index)
                    .mtu(nic.mtu)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(|e| format!("set {TAP} up: {e}"))?;
        for index in [nic.veth_index, tap_index] {
            handle
                .qdisc()
                .add(index as i32)
                .ingress()
                .execute()
                .await
                .map_err(|e| format!("ingress qdisc on link {index}: {e}"))?;
        }
        for (from, to) in [(nic.veth_index, tap_index), (tap_index, nic.veth_index)] {
            handle
                .traffic_filter(from as i32)
                .add()
                .parent(0xffff_0000)
                .protocol(0x0003u16.to_be())
                .redirect(to)
                .map_err(|e| format!("redirect filter: {e}"))?
                .execute()
                .await
                .map_err(|e| format!("redirect filter on link {from}: {e}"))?;
        }
        if let Ok(mut s) = slot.lock() {
            *s = Some(fd);
        }
        Ok(nic)
    });
    let fd = tap.lock().ok().and_then(|mut s| s.take());
    match (nic, fd) {
        (Ok(nic), Some(fd)) => Ok((nic, fd)),
        (Err(e), fd) => {
            drop(fd);
            // Whatever was added to the veth goes (the tap went with its descriptor).
            unplumb(netns, 0);
            Err(e)
        }
        (Ok(_), None) => Err("the tap was not kept".to_owned()),
    }
}

/// Removes the ingress qdisc (and so the filter) from the pod's veth; the tap goes with
/// QEMU. `veth_index` 0: the first ethernet interface. A namespace already gone is fine.
pub fn unplumb(netns: &Path, veth_index: u32) {
    if !netns.exists() {
        return;
    }
    let _ = in_netns(netns, move |handle| async move {
        let index = if veth_index > 0 {
            veth_index
        } else {
            links(&handle)
                .await?
                .iter()
                .find(|l| l.header.link_layer_type == LinkLayerType::Ether && name_of(l) != TAP)
                .map(|l| l.header.index)
                .unwrap_or(0)
        };
        if index == 0 {
            return Ok(());
        }
        let mut del = handle.qdisc().del(index as i32);
        del.message_mut().header.parent = rtnetlink::packet_route::tc::TcHandle::INGRESS;
        let _ = del.execute().await;
        // The tap itself, if QEMU's copy of it is somehow still open.
        if let Some(tap) = links(&handle).await?.iter().find(|l| name_of(l) == TAP) {
            let _ = handle.link().del(tap.header.index).execute().await;
        }
        Ok(())
    });
}
