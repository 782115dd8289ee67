//! Pod sandboxes through the real crispd with Debian's CNI plugins (bridge, host-local,
//! portmap, loopback) on a bridge and subnet of each test's own.

mod common;

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use common::Net;
use cri_proto::v1 as cri;

fn pod_config(name: &str) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.to_owned(),
            uid: format!("uid-{name}"),
            namespace: "default".to_owned(),
            attempt: 0,
        }),
        hostname: name.to_owned(),
        log_directory: "/tmp".to_owned(),
        labels: [("app".to_owned(), name.to_owned())].into(),
        ..Default::default()
    }
}

fn run_request(config: cri::PodSandboxConfig) -> cri::RunPodSandboxRequest {
    cri::RunPodSandboxRequest {
        config: Some(config),
        runtime_handler: String::new(),
    }
}

fn netns_of(state: &Path, id: &str) -> PathBuf {
    state.join("pods").join(id).join("ns/net")
}

/// Runs `f` on a thread that has joined the network namespace at `netns`.
fn in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let file = std::fs::File::open(netns).expect("open netns");
    std::thread::spawn(move || {
        // SAFETY: `file` is an open namespace file; setns changes only this thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
}

async fn status(
    client: &mut cri::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>,
    id: &str,
) -> cri::PodSandboxStatus {
    client
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.to_owned(),
            verbose: false,
        })
        .await
        .expect("status")
        .into_inner()
        .status
        .expect("status body")
}

/// The pid of the pod's PID-namespace init, from verbose PodSandboxStatus.
async fn pid_namespace_init(
    client: &mut cri::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>,
    id: &str,
) -> u64 {
    let info = client
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.to_owned(),
            verbose: true,
        })
        .await
        .expect("status")
        .into_inner()
        .info;
    let info: serde_json::Value =
        serde_json::from_str(info.get("info").expect("verbose info")).expect("json");
    info["pid"].as_u64().expect("pid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_get_addresses_reach_each_other_and_publish_ports() {
    let net = Net::new("");
    let daemon = net.sandbox.start();
    let (mut runtime, _) = daemon.clients().await;
    let veths_before = net.veths();

    let mut web = pod_config("web");
    web.port_mappings = vec![cri::PortMapping {
        protocol: cri::Protocol::Tcp.into(),
        container_port: 8080,
        host_port: 28080 + (std::process::id() % 1000) as i32,
        host_ip: String::new(),
    }];
    let host_port = web.port_mappings[0].host_port;
    let a = runtime
        .run_pod_sandbox(run_request(web))
        .await
        .expect("run web")
        .into_inner()
        .pod_sandbox_id;
    let b = runtime
        .run_pod_sandbox(run_request(pod_config("client")))
        .await
        .expect("run client")
        .into_inner()
        .pod_sandbox_id;

    let (sa, sb) = (
        status(&mut runtime, &a).await,
        status(&mut runtime, &b).await,
    );
    // The default PID mode (POD) gives each pod an init for its PID namespace.
    let mut pauses = Vec::new();
    for id in [&a, &b] {
        let pid = pid_namespace_init(&mut runtime, id).await;
        assert!(
            pid > 0 && Path::new(&format!("/proc/{pid}")).exists(),
            "pause {pid} runs"
        );
        pauses.push(pid);
    }
    assert_eq!(sa.state, i32::from(cri::PodSandboxState::SandboxReady));
    let ip_a = sa.network.expect("network").ip;
    let ip_b = sb.network.expect("network").ip;
    assert!(ip_a.starts_with(&net.subnet_prefix), "{ip_a}");
    assert_ne!(ip_a, ip_b);

    // The reported address is the one on eth0 in the pod's namespace.
    let state = net.sandbox.path("state");
    let addrs = in_netns(&netns_of(&state, &a), || {
        let out = std::process::Command::new("ip")
            .args(["-o", "addr", "show", "eth0"])
            .output()
            .expect("ip");
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
    .join()
    .expect("thread");
    assert!(addrs.contains(&format!("{ip_a}/24")), "{addrs}");

    // A server in pod A, reached from pod B directly and from the host by the port.
    let server = in_netns(&netns_of(&state, &a), || {
        let listener = std::net::TcpListener::bind("0.0.0.0:8080").expect("bind in pod");
        for _ in 0..2 {
            let (mut conn, _) = listener.accept().expect("accept");
            conn.write_all(b"hello from pod A\n").expect("write");
        }
    });
    std::thread::sleep(std::time::Duration::from_millis(100));
    let target = format!("{ip_a}:8080");
    let from_b = in_netns(&netns_of(&state, &b), move || {
        let mut s = std::net::TcpStream::connect(&target).expect("pod B reaches pod A");
        let mut text = String::new();
        s.read_to_string(&mut text).expect("read");
        text
    })
    .join()
    .expect("thread");
    assert_eq!(from_b, "hello from pod A\n");

    // The bridge's gateway address is one of the host's own: portmap's DNAT applies.
    let host_ip = format!("{}1", net.subnet_prefix);
    let mut s = std::net::TcpStream::connect((host_ip.as_str(), host_port as u16))
        .expect("host port reaches the pod");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    assert_eq!(text, "hello from pod A\n");
    server.join().expect("server");

    // Stop and remove leave nothing: no veth, IP, mount, pin, iptables rule or files.
    for id in [&a, &b] {
        runtime
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await
            .expect("stop");
        runtime
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await
            .expect("stop twice");
        runtime
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await
            .expect("remove");
        runtime
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await
            .expect("remove twice");
    }
    assert_eq!(net.veths(), veths_before, "veths left");
    for pid in pauses {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            stat.is_empty() || stat.contains(") Z"),
            "pause {pid} left running: {stat}"
        );
    }
    assert_eq!(net.allocations(), 0, "IPs left");
    assert_eq!(net.mounts(), 0, "mounts left");
    assert!(
        std::fs::read_dir(state.join("pods"))
            .expect("pods dir")
            .next()
            .is_none(),
        "pod dirs left"
    );
    let rules = std::process::Command::new("iptables")
        .args(["-t", "nat", "-S"])
        .output()
        .expect("iptables");
    let rules = String::from_utf8_lossy(&rules.stdout);
    assert!(!rules.contains(&a), "portmap rules left: {rules}");
    let listed = common::list_pods(&mut runtime).await;
    assert!(listed.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_cni_plugin_leaves_nothing_behind() {
    let net = Net::new(r#",{"type":"tuning","sysctl":{"net.ipv4.conf.eth0.no_such_knob":"1"}}"#);
    let daemon = net.sandbox.start();
    let (mut runtime, _) = daemon.clients().await;
    let err = runtime
        .run_pod_sandbox(run_request(pod_config("doomed")))
        .await
        .expect_err("tuning fails");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(err.message().contains("tuning"), "{}", err.message());
    assert_eq!(net.allocations(), 0);
    assert_eq!(net.veths(), 0);
    assert_eq!(net.mounts(), 0);
    let pods = net.sandbox.path("state/pods");
    assert!(
        std::fs::read_dir(&pods)
            .map(|mut d| d.next().is_none())
            .unwrap_or(true)
    );
    let listed = common::list_pods(&mut runtime).await;
    assert!(listed.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_and_unknown_ids_are_fine_to_stop() {
    let net = Net::new("");
    let daemon = net.sandbox.start();
    let (mut runtime, _) = daemon.clients().await;
    let err = runtime
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_config("x")),
            runtime_handler: "kata".to_owned(),
        })
        .await
        .expect_err("unknown handler");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message()
            .contains("configured handlers: crun, microvm, runc, runsc"),
        "{}",
        err.message()
    );

    let mut nameless = pod_config("x");
    nameless.metadata.as_mut().expect("metadata").name.clear();
    let err = runtime
        .run_pod_sandbox(run_request(nameless))
        .await
        .expect_err("no name");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    let mut host_sysctl = pod_config("x");
    host_sysctl.linux = Some(cri::LinuxPodSandboxConfig {
        sysctls: [("kernel.panic".to_owned(), "1".to_owned())].into(),
        ..Default::default()
    });
    let err = runtime
        .run_pod_sandbox(run_request(host_sysctl))
        .await
        .expect_err("host sysctl");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");

    // Beyond Kubernetes' limits: refused before CNI sees them, naming the field.
    let mut long_name = pod_config("x");
    long_name.metadata.as_mut().expect("metadata").name = "p".repeat(1 << 20);
    let mut many_ports = pod_config("x");
    many_ports.port_mappings = (1..=2000)
        .map(|p| cri::PortMapping {
            container_port: p,
            host_port: 20000 + p,
            ..Default::default()
        })
        .collect();
    for (bad, field) in [
        (long_name, "config.metadata.name"),
        (many_ports, "config.port_mappings"),
    ] {
        let err = runtime
            .run_pod_sandbox(run_request(bad))
            .await
            .expect_err("over the limit");
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(field), "{}", err.message());
    }
    assert_eq!(net.mounts(), 0, "refused pods leave no pins");
    let listed = common::list_pods(&mut runtime).await;
    assert!(listed.is_empty(), "{listed:?}");

    let unknown = "0".repeat(64);
    runtime
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: unknown.clone(),
        })
        .await
        .expect("stop unknown");
    runtime
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: unknown.clone(),
        })
        .await
        .expect("remove unknown");
    let err = runtime
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: unknown,
            verbose: false,
        })
        .await
        .expect_err("status of unknown");
    assert_eq!(err.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_filters_sysctls_and_host_network() {
    let net = Net::new("");
    let daemon = net.sandbox.start();
    let (mut runtime, _) = daemon.clients().await;

    let mut tuned = pod_config("tuned");
    tuned.linux = Some(cri::LinuxPodSandboxConfig {
        sysctls: [(
            "net.ipv4.ip_unprivileged_port_start".to_owned(),
            "0".to_owned(),
        )]
        .into(),
        ..Default::default()
    });
    let first = runtime
        .run_pod_sandbox(run_request(tuned.clone()))
        .await
        .expect("run")
        .into_inner()
        .pod_sandbox_id;
    // kubelet's retry of the same pod gets the same sandbox.
    let again = runtime
        .run_pod_sandbox(run_request(tuned))
        .await
        .expect("retry")
        .into_inner()
        .pod_sandbox_id;
    assert_eq!(first, again);
    let value = in_netns(&netns_of(&net.sandbox.path("state"), &first), || {
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start").expect("sysctl")
    })
    .join()
    .expect("thread");
    assert_eq!(value.trim(), "0");

    let mut host = pod_config("hostnet");
    host.linux = Some(cri::LinuxPodSandboxConfig {
        security_context: Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                network: cri::NamespaceMode::Node.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let host_id = runtime
        .run_pod_sandbox(run_request(host))
        .await
        .expect("host network")
        .into_inner()
        .pod_sandbox_id;
    assert!(
        status(&mut runtime, &host_id).await.network.is_none(),
        "host-network pods skip CNI"
    );
    assert_eq!(net.allocations(), 1);

    let only_tuned = runtime
        .list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(cri::PodSandboxFilter {
                label_selector: [("app".to_owned(), "tuned".to_owned())].into(),
                ..Default::default()
            }),
        })
        .await
        .expect("list")
        .into_inner()
        .items;
    assert_eq!(only_tuned.len(), 1);
    assert_eq!(only_tuned[0].id, first);
    runtime
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: first.clone(),
        })
        .await
        .expect("stop");
    let ready = runtime
        .list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(cri::PodSandboxFilter {
                state: Some(cri::PodSandboxStateValue {
                    state: cri::PodSandboxState::SandboxReady.into(),
                }),
                ..Default::default()
            }),
        })
        .await
        .expect("list")
        .into_inner()
        .items;
    assert_eq!(
        ready.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
        [host_id.as_str()]
    );
    let by_prefix = runtime
        .list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(cri::PodSandboxFilter {
                id: first[..12].to_owned(),
                ..Default::default()
            }),
        })
        .await
        .expect("list")
        .into_inner()
        .items;
    assert_eq!(by_prefix.len(), 1);
    for id in [first, host_id] {
        runtime
            .remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
            .await
            .expect("remove");
    }
    assert_eq!(net.mounts(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_outlives_a_killed_daemon_and_can_be_torn_down_after() {
    let net = Net::new("");
    let id = {
        let daemon = net.sandbox.start();
        let (mut runtime, _) = daemon.clients().await;
        let id = runtime
            .run_pod_sandbox(run_request(pod_config("survivor")))
            .await
            .expect("run")
            .into_inner()
            .pod_sandbox_id;
        daemon.kill();
        id
    };
    let daemon = net.sandbox.start();
    let (mut runtime, _) = daemon.clients().await;
    let s = status(&mut runtime, &id).await;
    assert_eq!(s.state, i32::from(cri::PodSandboxState::SandboxReady));
    assert!(
        s.network
            .expect("network")
            .ip
            .starts_with(&net.subnet_prefix)
    );
    runtime
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .expect("stop");
    runtime
        .remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
        .await
        .expect("remove");
    assert_eq!(net.allocations(), 0);
    assert_eq!(net.veths(), 0);
    assert_eq!(net.mounts(), 0);
}

fn iptables_mentions(id: &str) -> bool {
    let out = std::process::Command::new("iptables-save")
        .args(["-t", "nat"])
        .output()
        .expect("iptables-save");
    String::from_utf8_lossy(&out.stdout).contains(id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_crisp_lost_track_of_is_released_at_startup() {
    let net = Net::new("");
    let mut config = pod_config("forgotten");
    config.port_mappings = vec![cri::PortMapping {
        protocol: cri::Protocol::Tcp.into(),
        container_port: 80,
        host_port: 29080 + (std::process::id() % 1000) as i32,
        host_ip: String::new(),
    }];
    let id = {
        let daemon = net.sandbox.start();
        let (mut runtime, _) = daemon.clients().await;
        let id = runtime
            .run_pod_sandbox(run_request(config))
            .await
            .expect("run")
            .into_inner()
            .pod_sandbox_id;
        let pause = pid_namespace_init(&mut runtime, &id).await;
        daemon.kill();
        (id, pause)
    };
    let (id, pause) = id;
    assert_eq!(net.allocations(), 1);
    assert!(iptables_mentions(&id), "portmap rules carry the sandbox ID");
    // What a crash between CNI ADD and saving the record leaves: an attachment, pins and
    // a pod directory, but no record.
    std::fs::remove_file(net.sandbox.path(&format!("root/pods/{id}.json"))).expect("drop record");

    let daemon = net.sandbox.start();
    let (mut runtime, _) = daemon.clients().await;
    let pods = common::list_pods(&mut runtime).await;
    assert!(pods.is_empty(), "{pods:?}");
    assert_eq!(net.allocations(), 0, "the IP is released");
    assert_eq!(net.veths(), 0, "the veth is gone");
    assert_eq!(net.mounts(), 0, "the pins are unmounted");
    assert!(!iptables_mentions(&id), "the port mapping is gone");
    assert!(!net.sandbox.path(&format!("state/pods/{id}")).exists());
    let alive =
        std::fs::read_to_string(format!("/proc/{pause}/stat")).is_ok_and(|s| !s.contains(") Z "));
    assert!(!alive, "the PID namespace's init {pause} was ended");
    assert!(
        std::fs::read_dir(net.sandbox.path("root/cni-journal"))
            .map(|d| d.count() == 0)
            .unwrap_or(true),
        "the journal is empty"
    );
}

/// Host-side qdiscs of every link, as `tc` prints them.
fn qdiscs() -> String {
    let out = std::process::Command::new("tc")
        .args(["qdisc", "show"])
        .output()
        .expect("tc");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_annotations_shape_the_pod_and_bad_ones_are_refused() {
    let net = Net::new(r#",{"type":"bandwidth","capabilities":{"bandwidth":true}}"#);
    let daemon = net.sandbox.start();
    let (mut runtime, _) = daemon.clients().await;

    let mut bad = pod_config("too-fast");
    bad.annotations = [(
        "kubernetes.io/ingress-bandwidth".to_owned(),
        "lots".to_owned(),
    )]
    .into();
    let err = runtime
        .run_pod_sandbox(run_request(bad))
        .await
        .expect_err("bad rate");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("ingress-bandwidth"), "{err:?}");
    assert_eq!(net.allocations(), 0);

    let mut shaped = pod_config("shaped");
    shaped.annotations = [
        (
            "kubernetes.io/ingress-bandwidth".to_owned(),
            "3M".to_owned(),
        ),
        ("kubernetes.io/egress-bandwidth".to_owned(), "5M".to_owned()),
    ]
    .into();
    let id = runtime
        .run_pod_sandbox(run_request(shaped))
        .await
        .expect("run")
        .into_inner()
        .pod_sandbox_id;
    let shaping = qdiscs();
    assert!(shaping.contains("rate 3Mbit"), "ingress: {shaping}");
    assert!(shaping.contains("rate 5Mbit"), "egress (ifb): {shaping}");
    runtime
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .expect("stop");
    runtime
        .remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
        .await
        .expect("remove");
    let after = qdiscs();
    assert!(
        !after.contains("rate 3Mbit") && !after.contains("rate 5Mbit"),
        "{after}"
    );
    assert_eq!(net.allocations(), 0);
    assert_eq!(net.veths(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pod_cidr_from_update_runtime_config_reaches_cni() {
    let net = Net::new("");
    // No static range: addresses come only from the pod CIDR (host-local appends runtime
    // ranges to configured ones, as a conflist written for kubelet's CIDR expects).
    let conflist = format!(
        r#"{{"cniVersion":"1.0.0","name":"test","plugins":[
            {{"type":"bridge","bridge":"{bridge}","isGateway":true,"capabilities":{{"ipRanges":true}},
              "ipam":{{"type":"host-local","dataDir":"{ipam}","routes":[{{"dst":"0.0.0.0/0"}}]}}}},
            {{"type":"loopback"}}]}}"#,
        bridge = net.bridge,
        ipam = net.sandbox.path("ipam").display(),
    );
    std::fs::write(net.sandbox.path("cni/10-test.conflist"), conflist).expect("conflist");
    let daemon = net.sandbox.start();
    let (mut runtime, _) = daemon.clients().await;
    let update = |cidr: &str| cri::UpdateRuntimeConfigRequest {
        runtime_config: Some(cri::RuntimeConfig {
            network_config: Some(cri::NetworkConfig {
                pod_cidr: cidr.to_owned(),
            }),
        }),
    };
    let err = runtime
        .update_runtime_config(update("10.0.0.0/99"))
        .await
        .expect_err("bad prefix");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    // A /28 out of the conflist's own range: pods now get addresses from it.
    let third = net
        .subnet_prefix
        .split('.')
        .nth(1)
        .expect("second octet")
        .to_owned();
    let cidr = format!("10.{third}.250.16/28");
    runtime
        .update_runtime_config(update(&cidr))
        .await
        .expect("update");
    let id = runtime
        .run_pod_sandbox(run_request(pod_config("ranged")))
        .await
        .expect("run")
        .into_inner()
        .pod_sandbox_id;
    let ip = status(&mut runtime, &id).await.network.expect("network").ip;
    let last: u8 = ip
        .rsplit('.')
        .next()
        .and_then(|o| o.parse().ok())
        .expect("ipv4");
    assert!(
        ip.starts_with(&format!("10.{third}.250.")) && (16..32).contains(&last),
        "{ip} is in {cidr}"
    );
    runtime
        .remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
        .await
        .expect("remove");
    assert_eq!(net.veths(), 0);
}

/// A pod whose PID-namespace init dies turns NotReady while crispd runs (kubelet then
/// stops it and makes a new one), and stopping and removing it leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_whose_init_dies_turns_not_ready() {
    let net = Net::new("");
    let daemon = net.sandbox.start();
    let (mut runtime, _) = daemon.clients().await;
    let id = runtime
        .run_pod_sandbox(run_request(pod_config("orphaned")))
        .await
        .expect("run")
        .into_inner()
        .pod_sandbox_id;
    let pause = pid_namespace_init(&mut runtime, &id).await;
    assert!(pause > 1, "the pod has an init: {pause}");
    // SAFETY: a plain kill of the pod init this test's crispd started.
    unsafe { libc::kill(pause as i32, libc::SIGKILL) };
    common::workload::wait_not_ready(&mut runtime, &id, std::time::Duration::from_secs(10)).await;
    common::workload::stop_and_remove_pod(&mut runtime, &id).await;
    assert_eq!(net.allocations(), 0);
    assert_eq!(net.veths(), 0);
    assert_eq!(net.mounts(), 0);
}
