//! The CNI chain against Debian's real plugins (bridge, host-local, portmap, loopback) in
//! namespaces the test creates. Needs root and containernetworking-plugins.

use std::path::{Path, PathBuf};

use network::{
    Attachment, NamespaceKind, PluginSearch, create_namespace, pin_path, remove_namespace,
};

fn plugin_dirs() -> Vec<PathBuf> {
    vec![PathBuf::from("/usr/lib/cni"), PathBuf::from("/opt/cni/bin")]
}

/// A conflist on a bridge and IP range of the test's own, allocations kept in `data`.
fn conflist(dir: &Path, bridge: &str, subnet: &str, extra: &str) -> network::NetworkConfig {
    let data = dir.join("ipam");
    let text = format!(
        r#"{{"cniVersion":"1.0.0","name":"{bridge}","plugins":[
            {{"type":"bridge","bridge":"{bridge}","isGateway":true,"ipMasq":false,
              "ipam":{{"type":"host-local","dataDir":"{}","ranges":[[{{"subnet":"{subnet}"}}]]}}}},
            {{"type":"portmap","capabilities":{{"portMappings":true}}}}{extra}]}}"#,
        data.display()
    );
    let conf_dir = dir.join("net.d");
    std::fs::create_dir_all(&conf_dir).expect("conf dir");
    std::fs::write(conf_dir.join("10-test.conflist"), text).expect("conflist");
    let dirs = plugin_dirs();
    network::find_network_config(&conf_dir, &PluginSearch { dirs: &dirs }).expect("valid conflist")
}

fn attachment(id: &str, netns: &Path) -> Attachment {
    Attachment {
        container_id: id.to_owned(),
        netns: netns.to_owned(),
        ifname: "eth0".to_owned(),
        args: vec![
            ("K8S_POD_NAMESPACE".into(), "default".into()),
            ("K8S_POD_NAME".into(), id.into()),
        ],
        port_mappings: Vec::new(),
        bandwidth: None,
        ip_ranges: Vec::new(),
    }
}

fn host_links() -> String {
    String::from_utf8_lossy(
        &std::process::Command::new("ip")
            .args(["-o", "link"])
            .output()
            .expect("ip link")
            .stdout,
    )
    .into_owned()
}

fn allocations(dir: &Path, bridge: &str) -> usize {
    std::fs::read_dir(dir.join("ipam").join(bridge))
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .parse::<std::net::IpAddr>()
                        .is_ok()
                })
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn add_reports_the_address_and_del_releases_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bridge = format!("crt{}", std::process::id() % 100_000);
    let network = conflist(dir.path(), &bridge, "10.231.7.0/24", "");
    let netns = pin_path(&dir.path().join("pod"), NamespaceKind::Net);
    create_namespace(NamespaceKind::Net, &netns, None).expect("netns");
    let dirs = plugin_dirs();
    let search = PluginSearch { dirs: &dirs };
    let att = attachment("pod-a", &netns);

    let attached = network::add(&network, &search, &att).expect("ADD");
    assert_eq!(attached.ips.len(), 1);
    let ip = attached.ips[0].to_string();
    assert!(ip.starts_with("10.231.7."), "{ip}");
    // The address is really on eth0 inside the namespace.
    let inside = std::process::Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["ip", "-o", "addr", "show", "eth0"])
        .output()
        .expect("nsenter");
    assert!(String::from_utf8_lossy(&inside.stdout).contains(&ip));
    assert_eq!(allocations(dir.path(), &bridge), 1);

    network::del(&attached.network, &search, &att, Some(&attached.result)).expect("DEL");
    network::del(&attached.network, &search, &att, Some(&attached.result))
        .expect("DEL again is fine");
    assert_eq!(allocations(dir.path(), &bridge), 0, "IP released");
    remove_namespace(&netns).expect("remove netns");
    let _ = std::process::Command::new("ip")
        .args(["link", "del", &bridge])
        .status();
}

#[test]
fn a_failing_plugin_rolls_the_whole_chain_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bridge = format!("crf{}", std::process::id() % 100_000);
    // `tuning` with a sysctl that does not exist fails after bridge made the veth and
    // host-local handed out an address.
    let network = conflist(
        dir.path(),
        &bridge,
        "10.231.8.0/24",
        r#",{"type":"tuning","sysctl":{"net.ipv4.conf.eth0.no_such_knob":"1"}}"#,
    );
    let netns = pin_path(&dir.path().join("pod"), NamespaceKind::Net);
    create_namespace(NamespaceKind::Net, &netns, None).expect("netns");
    let dirs = plugin_dirs();
    let search = PluginSearch { dirs: &dirs };
    let before = host_links()
        .lines()
        .filter(|l| l.contains(&format!("master {bridge}")))
        .count();
    let err =
        network::add(&network, &search, &attachment("pod-f", &netns)).expect_err("tuning fails");
    assert!(err.to_string().contains("tuning"), "{err}");
    assert_eq!(
        allocations(dir.path(), &bridge),
        0,
        "IP released on rollback"
    );
    let after = host_links()
        .lines()
        .filter(|l| l.contains(&format!("master {bridge}")))
        .count();
    assert_eq!(before, after, "no veth left on the bridge");
    remove_namespace(&netns).expect("remove netns");
    let _ = std::process::Command::new("ip")
        .args(["link", "del", &bridge])
        .status();
}
