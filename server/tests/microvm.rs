//! The microVM handler with real VMs: QEMU under TCG here (KVM where it really works),
//! the guest image `make test` builds (`scripts/build-guest.sh`), real CNI networking and
//! images from a real registry on loopback. At most two VMs run at once: one per test.

mod common;

use std::time::{Duration, Instant};

use common::clients::{Spdy, exec_url, exit_code_of, spdy_exec, ws_port_forward, ws_session};
use common::workload::{self, Setup};
use cri_proto::v1 as cri;
use cri_proto::v1::runtime_service_client::RuntimeServiceClient;
use server::streaming::spdy::{FLAG_FIN, Frame};
use tonic::transport::Channel;

const GUEST: &str = "/var/lib/crisp/guest";

/// The guest kernel's release, from the image's manifest.
fn guest_kernel_release() -> String {
    let manifest = std::fs::read_to_string(format!("{GUEST}/MANIFEST")).unwrap_or_else(|e| {
        panic!(
            "the guest image is missing ({e}): `make test` builds it with sh scripts/build-guest.sh"
        )
    });
    manifest
        .lines()
        .find_map(|l| l.strip_prefix("kernel-release "))
        .expect("kernel-release in the manifest")
        .to_owned()
}

fn host_kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .expect("osrelease")
        .trim()
        .to_owned()
}

/// Every QEMU, vsock backend and virtio-fs daemon whose command line names `dir`.
fn vm_processes(dir: &str) -> Vec<i32> {
    common::processes_naming(&[dir.as_bytes()])
}

async fn run_vm_pod(
    rt: &mut RuntimeServiceClient<Channel>,
    config: cri::PodSandboxConfig,
    handler: &str,
) -> Result<String, tonic::Status> {
    rt.run_pod_sandbox(cri::RunPodSandboxRequest {
        config: Some(config),
        runtime_handler: handler.to_owned(),
    })
    .await
    .map(|r| r.into_inner().pod_sandbox_id)
}

async fn pod_ip(rt: &mut RuntimeServiceClient<Channel>, pod: &str) -> String {
    rt.pod_sandbox_status(cri::PodSandboxStatusRequest {
        pod_sandbox_id: pod.to_owned(),
        verbose: false,
    })
    .await
    .expect("pod status")
    .into_inner()
    .status
    .and_then(|s| s.network)
    .map(|n| n.ip)
    .expect("pod ip")
}

async fn wait_for_log(path: &std::path::Path, needle: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{} never held {needle:?}: {text:?}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The pod's containers run on the guest's kernel, log, exec, serve TCP on the pod IP,
/// survive a kill -9 of crispd, and leave nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_microvm_pod_runs_its_containers_on_the_guest_kernel() {
    let guest_release = guest_kernel_release();
    // Where the host runs the very kernel the guest does, the release cannot tell them
    // apart; the guest's command line (below) still does.
    let distinct_kernels = guest_release != host_kernel_release();
    // QEMU and virtiofsd, and the vsock backend where there is no kernel vhost-vsock.
    let helpers = if std::path::Path::new("/dev/vhost-vsock").exists() {
        2
    } else {
        3
    };
    let s: Setup = workload::setup();
    let daemon = s.net.sandbox.start();
    let mut rt = workload::pulled(&s, &daemon).await;
    let pod = run_vm_pod(&mut rt, workload::pod_config(&s), "microvm")
        .await
        .expect("a microvm pod runs");
    let vm_dir = s
        .net
        .sandbox
        .path("state/runtimes/microvm")
        .display()
        .to_string();
    assert_eq!(
        vm_processes(&vm_dir).len(),
        helpers,
        "QEMU, virtiofsd (and the vsock backend) run for the pod"
    );

    // A TCP server and a ticking logger, each printing the kernel it runs on.
    let server = workload::create(
        &mut rt,
        &s,
        &pod,
        workload::container(
            &s,
            "server",
            "echo kernel $(uname -r); printf '#!/bin/sh\\necho pong\\n' > /pong; chmod +x /pong; \
             while true; do echo tick; sleep 0.2; done & exec nc -ll -p 8080 -e /pong",
        ),
    )
    .await;
    workload::start(&mut rt, &server).await;
    let log = s.net.sandbox.path("logs/server.log");
    let text = wait_for_log(&log, "kernel ", Duration::from_secs(20)).await;
    assert!(
        text.contains(&format!("stdout F kernel {guest_release}")),
        "the container runs on the guest kernel: {text}"
    );
    if distinct_kernels {
        assert!(!text.contains(&format!("kernel {}", host_kernel_release())));
    }
    let (code, cmdline) = workload::exec_out(&mut rt, &server, &["cat", "/proc/cmdline"]).await;
    assert_eq!(code, 0);
    assert!(
        cmdline.contains("rdinit=/init"),
        "the kernel is the guest's, booted by crisp: {cmdline}"
    );

    // ExecSync: exit codes, separate streams, timeouts.
    let out = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: server.clone(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "echo out; echo err >&2; exit 3".into(),
            ],
            timeout: 10,
        })
        .await
        .expect("exec")
        .into_inner();
    assert_eq!(out.exit_code, 3);
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    let began = Instant::now();
    let timed_out = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: server.clone(),
            cmd: vec!["sleep".into(), "30".into()],
            timeout: 1,
        })
        .await
        .expect_err("the exec outlives its timeout");
    assert_eq!(
        timed_out.code(),
        tonic::Code::DeadlineExceeded,
        "{timed_out:?}"
    );
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "the timeout was honoured"
    );

    // Streaming exec through the agent, over both transports. SPDY, pipes: stdin in,
    // stdout and stderr apart, the exit code in the v4 status.
    let url = exec_url(
        &mut rt,
        &server,
        &["sh", "-c", "read x; echo got-$x; echo oops >&2; exit 3"],
        false,
        true,
    )
    .await;
    let got = spdy_exec(&url, b"hello\n").await;
    assert_eq!(got.get(&5).map(Vec::as_slice), Some(&b"got-hello\n"[..]));
    assert_eq!(got.get(&7).map(Vec::as_slice), Some(&b"oops\n"[..]));
    assert_eq!(exit_code_of(got.get(&1).expect("status")), 3);
    // A command the image lacks: the agent's refusal reaches the client's error stream.
    let url = exec_url(&mut rt, &server, &["no-such-command"], false, true).await;
    let got = spdy_exec(&url, b"").await;
    let status =
        String::from_utf8_lossy(got.get(&1).map(Vec::as_slice).unwrap_or_default()).into_owned();
    assert!(status.contains("executable file not found"), "{status}");

    // WebSocket v5, a terminal of the size sent, and a process that exits while its
    // output is still on its way: all of it arrives before the exit code.
    let url = exec_url(
        &mut rt,
        &server,
        &[
            "sh",
            "-c",
            "stty size; i=0; while [ $i -lt 2000 ]; do echo line-$i; i=$((i+1)); done; exit 4",
        ],
        true,
        false,
    )
    .await;
    let mut resize = vec![4u8];
    resize.extend_from_slice(br#"{"Width":90,"Height":30}"#);
    let (stdout, status) = ws_session(&url, "v5.channel.k8s.io", vec![resize], None).await;
    let out = String::from_utf8_lossy(&stdout).into_owned();
    assert!(out.contains("line-1999"), "all the output: {}", out.len());
    assert_eq!(out.matches("line-").count(), 2000, "every line once");
    assert_eq!(exit_code_of(&status), 4);

    // A client that hangs up mid-exec takes its process in the guest with it.
    let running = |rt: &mut RuntimeServiceClient<Channel>| {
        let mut rt = rt.clone();
        let server = server.clone();
        async move {
            let (_, out) = workload::exec_out(
                &mut rt,
                &server,
                &["sh", "-c", "ps -o args | grep -c '^slee[p] 4242'"],
            )
            .await;
            out.trim().parse::<u32>().unwrap_or(u32::MAX)
        }
    };
    let url = exec_url(&mut rt, &server, &["sleep", "4242"], false, false).await;
    let client = tokio::task::spawn_blocking(move || {
        let mut c = Spdy::open(&url, "v4.channel.k8s.io");
        c.syn(1, &[("streamtype", "error")]);
        c.syn(3, &[("streamtype", "stdout")]);
        c.syn(5, &[("streamtype", "stderr")]);
        c
    })
    .await
    .expect("client");
    let deadline = Instant::now() + Duration::from_secs(20);
    while running(&mut rt).await != 1 {
        assert!(Instant::now() < deadline, "the exec never ran");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(client);
    let deadline = Instant::now() + Duration::from_secs(20);
    while running(&mut rt).await != 0 {
        assert!(
            Instant::now() < deadline,
            "the process of a client that hung up is still in the guest"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Port-forward into the guest's loopback, over SPDY and WebSocket.
    let forward_url = |rt: &mut RuntimeServiceClient<Channel>| {
        let mut rt = rt.clone();
        let pod = pod.clone();
        async move {
            rt.port_forward(cri::PortForwardRequest {
                pod_sandbox_id: pod,
                port: vec![8080, 9],
            })
            .await
            .expect("port forward")
            .into_inner()
            .url
        }
    };
    let url = forward_url(&mut rt).await;
    let (answer, refused) = tokio::task::spawn_blocking(move || {
        let mut c = Spdy::open(&url, "portforward.k8s.io");
        for (request, error, data, port) in [("1", 1, 3, "8080"), ("2", 5, 7, "9")] {
            c.syn(
                error,
                &[
                    ("streamtype", "error"),
                    ("port", port),
                    ("requestid", request),
                ],
            );
            c.syn(
                data,
                &[
                    ("streamtype", "data"),
                    ("port", port),
                    ("requestid", request),
                ],
            );
        }
        c.data(3, b"ping\n", false);
        let mut got: std::collections::HashMap<u32, Vec<u8>> = Default::default();
        let mut finished = std::collections::HashSet::new();
        while finished.len() < 4 {
            match c.next() {
                Some(Frame::Data {
                    stream_id,
                    flags,
                    data,
                }) => {
                    got.entry(stream_id).or_default().extend_from_slice(&data);
                    if flags & FLAG_FIN != 0 {
                        finished.insert(stream_id);
                    }
                }
                Some(_) => {}
                None => break,
            }
        }
        let text = |id| {
            String::from_utf8_lossy(got.get(&id).map(Vec::as_slice).unwrap_or_default())
                .into_owned()
        };
        (text(3), text(5))
    })
    .await
    .expect("client");
    assert_eq!(answer, "pong\n");
    assert!(refused.to_lowercase().contains("refused"), "{refused}");
    let answer = ws_port_forward(&forward_url(&mut rt).await).await;
    assert!(answer.contains("pong"), "{answer}");

    // Attach through the agent: a container reading stdin over SPDY (output on both
    // streams; detaching leaves it running), and one with a terminal over WebSocket.
    let attach_url = |rt: &mut RuntimeServiceClient<Channel>, id: &str, tty: bool| {
        let mut rt = rt.clone();
        let id = id.to_owned();
        async move {
            rt.attach(cri::AttachRequest {
                container_id: id,
                stdin: true,
                tty,
                stdout: true,
                stderr: !tty,
            })
            .await
            .expect("attach")
            .into_inner()
            .url
        }
    };
    let mut config = workload::container(
        &s,
        "echo",
        "while read line; do echo echo-$line; echo err-$line >&2; done",
    );
    config.stdin = true;
    let echo = workload::create(&mut rt, &s, &pod, config).await;
    workload::start(&mut rt, &echo).await;
    // PID mode POD (kubelet's shareProcessNamespace): the containers share one PID
    // namespace in the guest, whose PID 1 is the pod's pause process.
    let (_, init) = workload::exec_out(&mut rt, &server, &["cat", "/proc/1/cmdline"]).await;
    assert!(init.starts_with("/pause"), "PID 1 of the pod: {init:?}");
    let (_, ps) = workload::exec_out(&mut rt, &server, &["ps", "-o", "args"]).await;
    assert!(
        ps.contains("while read line"),
        "another container's process is visible: {ps}"
    );
    let url = attach_url(&mut rt, &echo, false).await;
    let (out, err) = tokio::task::spawn_blocking(move || {
        let mut c = Spdy::open(&url, "v4.channel.k8s.io");
        c.syn(1, &[("streamtype", "error")]);
        c.syn(3, &[("streamtype", "stdin")]);
        c.syn(5, &[("streamtype", "stdout")]);
        c.syn(7, &[("streamtype", "stderr")]);
        std::thread::sleep(Duration::from_millis(500));
        c.data(3, b"one\n", false);
        let (mut out, mut err) = (Vec::new(), Vec::new());
        while !(out.ends_with(b"echo-one\n") && err.ends_with(b"err-one\n")) {
            match c.next() {
                Some(Frame::Data {
                    stream_id, data, ..
                }) => match stream_id {
                    5 => out.extend_from_slice(&data),
                    7 => err.extend_from_slice(&data),
                    _ => {}
                },
                Some(_) => {}
                None => break,
            }
        }
        (out, err)
    })
    .await
    .expect("attach client");
    assert_eq!(
        (out.as_slice(), err.as_slice()),
        (&b"echo-one\n"[..], &b"err-one\n"[..])
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        workload::status(&mut rt, &echo).await.state,
        i32::from(cri::ContainerState::ContainerRunning),
        "detaching leaves the container running"
    );
    // stdin_once, as critest's attach spec does it: the attacher's stdin closing ends
    // the shell, and the container's end ends the attach session.
    let mut config = workload::container(&s, "once", "");
    config.command = vec!["/bin/sh".into()];
    config.args = Vec::new();
    config.stdin = true;
    config.stdin_once = true;
    let once = workload::create(&mut rt, &s, &pod, config).await;
    workload::start(&mut rt, &once).await;
    let url = attach_url(&mut rt, &once, false).await;
    let began = Instant::now();
    let got = spdy_exec(&url, b"echo hello\n").await;
    let took = began.elapsed();
    let out = got.get(&5).cloned().unwrap_or_default();
    assert_eq!(out, b"hello\n");
    assert!(
        took < Duration::from_secs(10),
        "the session ends with the container, not at the client's read timeout: {took:?}"
    );
    let mut config = workload::container(
        &s,
        "tty",
        "while read line; do echo tty-$line; stty size; done",
    );
    config.stdin = true;
    config.tty = true;
    let tty = workload::create(&mut rt, &s, &pod, config).await;
    workload::start(&mut rt, &tty).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let url = attach_url(&mut rt, &tty, true).await;
    let mut resize = vec![4u8];
    resize.extend_from_slice(br#"{"Width":70,"Height":20}"#);
    let (stdout, _) = ws_session(
        &url,
        "v5.channel.k8s.io",
        vec![resize, b"\x00two\n".to_vec()],
        Some(b"20 70"),
    )
    .await;
    let out = String::from_utf8_lossy(&stdout).into_owned();
    assert!(out.contains("tty-two") && out.contains("20 70"), "{out:?}");

    // The security context applies inside the guest as under runc: capabilities, no new
    // privileges, the runtime's default seccomp profile, masked and read-only paths; execs
    // get the same.
    let mut config = workload::container(
        &s,
        "confined",
        "cat /proc/self/status > /tmp/s; mv /tmp/s /tmp/status; exec sleep 1000",
    );
    config.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            capabilities: Some(cri::Capability {
                drop_capabilities: vec!["ALL".into()],
                add_capabilities: vec!["NET_BIND_SERVICE".into()],
                ..Default::default()
            }),
            no_new_privs: true,
            seccomp: Some(cri::SecurityProfile {
                profile_type: i32::from(cri::security_profile::ProfileType::RuntimeDefault),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let confined = workload::create(&mut rt, &s, &pod, config).await;
    workload::start(&mut rt, &confined).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let (code, status) = workload::exec_out(
            &mut rt,
            &confined,
            &["cat", "/tmp/status", "/proc/self/status"],
        )
        .await;
        if code == 0 {
            break status;
        }
        assert!(Instant::now() < deadline, "the init never wrote its status");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let field = |name: &str| -> Vec<String> {
        status
            .lines()
            .filter_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect()
    };
    for (name, want) in [
        ("CapEff:", "0000000000000400"),
        ("CapBnd:", "0000000000000400"),
        ("NoNewPrivs:", "1"),
        ("Seccomp:", "2"),
        ("CapPrm:", "0000000000000400"),
    ] {
        let got = field(name);
        assert!(
            got.len() == 2 && got.iter().all(|g| g == want),
            "{name} of the container's init and of an exec: {got:?}, want {want}"
        );
    }
    let (_, kcore) = workload::exec_out(
        &mut rt,
        &confined,
        &["sh", "-c", "head -c 16 /proc/kcore | wc -c"],
    )
    .await;
    assert_eq!(kcore.trim(), "0", "/proc/kcore is masked");
    let (_, mounts) = workload::exec_out(&mut rt, &confined, &["cat", "/proc/mounts"]).await;
    assert!(
        mounts
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some("/proc/sys") && l.contains(" ro,")),
        "/proc/sys is read-only: {mounts}"
    );

    // Resources: each container has a cgroup of its own in the guest, with the limits
    // asked for, seen as its cgroup namespace's root; UpdateContainerResources changes
    // them live; its stats are its own, the pod's are what the VM costs the host.
    let mut config = workload::container(&s, "limited", "exec sleep 1000");
    config.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            ..Default::default()
        }),
        ..Default::default()
    });
    let limited = workload::create(&mut rt, &s, &pod, config).await;
    workload::start(&mut rt, &limited).await;
    let (code, out) = workload::exec_out(
        &mut rt,
        &limited,
        &[
            "cat",
            "/proc/self/cgroup",
            "/sys/fs/cgroup/memory.max",
            "/sys/fs/cgroup/cpu.max",
        ],
    )
    .await;
    assert_eq!(
        (code, out.as_str()),
        (0, "0::/\n67108864\n50000 100000\n"),
        "the container's own cgroup with its limits"
    );
    rt.update_container_resources(cri::UpdateContainerResourcesRequest {
        container_id: limited.clone(),
        linux: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 96 << 20,
            cpu_quota: 20_000,
            cpu_period: 100_000,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .expect("update the container's resources");
    let (_, out) = workload::exec_out(
        &mut rt,
        &limited,
        &["cat", "/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/cpu.max"],
    )
    .await;
    assert_eq!(
        out, "100663296\n20000 100000\n",
        "the limits after the update"
    );
    // An update that cannot be (memory plus swap below memory) is refused and changes
    // nothing.
    let refused = rt
        .update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: limited.clone(),
            linux: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: 128 << 20,
                memory_swap_limit_in_bytes: 64 << 20,
                cpu_quota: 30_000,
                cpu_period: 100_000,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect_err("swap below memory");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    let (_, after) = workload::exec_out(
        &mut rt,
        &limited,
        &["cat", "/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/cpu.max"],
    )
    .await;
    assert_eq!(after, out, "a refused update changes nothing");
    let stats = rt
        .container_stats(cri::ContainerStatsRequest {
            container_id: limited.clone(),
        })
        .await
        .expect("container stats")
        .into_inner()
        .stats
        .unwrap_or_default();
    let container_memory = stats
        .memory
        .and_then(|m| m.working_set_bytes)
        .map_or(0, |v| v.value);
    let pod_stats = rt
        .pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .expect("pod stats")
        .into_inner()
        .stats
        .and_then(|s| s.linux)
        .unwrap_or_default();
    let pod_memory = pod_stats
        .memory
        .and_then(|m| m.working_set_bytes)
        .map_or(0, |v| v.value);
    assert!(
        container_memory > 0 && container_memory < 16 << 20,
        "a sleeping container's own working set: {container_memory}"
    );
    assert!(
        pod_memory > 64 << 20,
        "the pod's working set is the VM's on the host (guest RAM touched, QEMU): {pod_memory}"
    );
    // The detailed metrics come from the guest's cgroup too.
    let metrics = rt
        .list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {})
        .await
        .expect("pod metrics")
        .into_inner();
    let limit = metrics
        .pod_metrics
        .iter()
        .flat_map(|p| &p.container_metrics)
        .filter(|c| c.container_id == limited)
        .flat_map(|c| &c.metrics)
        .find(|m| m.name == "container_spec_memory_limit_bytes")
        .and_then(|m| m.value.as_ref())
        .map(|v| v.value);
    assert_eq!(
        limit,
        Some(96 << 20),
        "the container's limit in its metrics"
    );
    // A container that outgrows its memory limit: the guest's OOM killer ends it, and
    // its status says so.
    let mut config = workload::container(
        &s,
        "hog",
        "exec dd if=/dev/zero of=/dev/null bs=64M count=1",
    );
    config.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 32 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    let hog = workload::create(&mut rt, &s, &pod, config).await;
    workload::start(&mut rt, &hog).await;
    let ended = workload::wait_exited(&mut rt, &hog).await;
    assert_eq!(ended.reason, "OOMKilled", "{ended:?}");

    // The server answers on the pod IP, from the host.
    let ip = pod_ip(&mut rt, &pod).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let answer = loop {
        let got = tokio::time::timeout(Duration::from_secs(3), async {
            let mut conn = tokio::net::TcpStream::connect((ip.as_str(), 8080)).await?;
            let mut buf = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut conn, &mut buf).await?;
            Ok::<_, std::io::Error>(buf)
        })
        .await;
        match got {
            Ok(Ok(buf)) if !buf.is_empty() => break buf,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(200)).await,
            other => panic!("no answer from {ip}:8080: {other:?}"),
        }
    };
    assert_eq!(answer, b"pong\n");

    // kill -9 of crispd: the VM runs on, the log keeps growing, and a new crispd
    // re-attaches.
    daemon.kill();
    let ticks = |t: &str| t.matches("stdout F tick").count();
    let before = ticks(&std::fs::read_to_string(&log).unwrap_or_default());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = ticks(&std::fs::read_to_string(&log).unwrap_or_default());
    assert!(
        during > before,
        "the log grows while crispd is down ({before} -> {during})"
    );
    assert_eq!(
        vm_processes(&vm_dir).len(),
        helpers,
        "the VM outlives crispd"
    );
    let daemon = s.net.sandbox.start();
    let (mut rt, _) = daemon.clients().await;
    let status = workload::status(&mut rt, &server).await;
    assert_eq!(
        status.state,
        i32::from(cri::ContainerState::ContainerRunning)
    );
    let (code, out) = workload::exec_out(&mut rt, &server, &["uname", "-r"]).await;
    assert_eq!((code, out.trim()), (0, guest_release.as_str()));

    // A command the image lacks: StartContainer fails with the agent's words, the pod
    // runs on, and removing the container releases its share (checked at the end).
    let missing = workload::create(
        &mut rt,
        &s,
        &pod,
        cri::ContainerConfig {
            command: vec!["no-such-command".into()],
            ..workload::container(&s, "missing", "")
        },
    )
    .await;
    let refused = rt
        .start_container(cri::StartContainerRequest {
            container_id: missing.clone(),
        })
        .await
        .expect_err("a command the image lacks cannot start");
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert!(
        refused.message().contains("executable file not found"),
        "{refused:?}"
    );
    rt.remove_container(cri::RemoveContainerRequest {
        container_id: missing.clone(),
    })
    .await
    .expect("remove the container that did not start");
    let shares = s
        .net
        .sandbox
        .path("state/runtimes/microvm")
        .read_dir()
        .expect("VM dir")
        .flatten()
        .any(|vm| vm.path().join("shared").join(&missing).exists());
    assert!(!shares, "the removed container's share is gone");

    // kubelet's log rotation: the log is renamed, ReopenContainerLog makes a new one, and
    // the agent writes there.
    let rotated = s.net.sandbox.path("logs/server.log.1");
    std::fs::rename(&log, &rotated).expect("rotate");
    rt.reopen_container_log(cri::ReopenContainerLogRequest {
        container_id: server.clone(),
    })
    .await
    .expect("reopen the log");
    wait_for_log(&log, "stdout F tick", Duration::from_secs(10)).await;

    // A container that exits: its code, after its output.
    let short = workload::create(
        &mut rt,
        &s,
        &pod,
        workload::container(&s, "short", "echo last words; exit 7"),
    )
    .await;
    workload::start(&mut rt, &short).await;
    let ended = workload::wait_exited(&mut rt, &short).await;
    assert_eq!(ended.exit_code, 7);
    let short_log =
        std::fs::read_to_string(s.net.sandbox.path("logs/short.log")).unwrap_or_default();
    assert!(short_log.contains("stdout F last words"), "{short_log}");

    // Stop and remove: nothing of the VM is left.
    workload::stop_and_remove_pod(&mut rt, &pod).await;
    assert_nothing_left(&s, &vm_dir, &pod);

    // A VM that dies by itself: the pod turns NotReady, its container exited, the
    // helpers that served the guest end at once, and stop and remove leave nothing.
    // A pod whose limits could not fit in this host's memory is refused before any VM
    // starts.
    let mut huge = workload::named_pod(&s, "huge");
    huge.linux = Some(cri::LinuxPodSandboxConfig {
        resources: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 1 << 50,
            ..Default::default()
        }),
        ..Default::default()
    });
    let refused = run_vm_pod(&mut rt, huge, "microvm")
        .await
        .expect_err("a pod that cannot fit");
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(refused.message().contains("MiB"), "{refused:?}");
    assert!(vm_processes(&vm_dir).is_empty(), "no VM for a refused pod");

    // PID mode CONTAINER (kubelet's default): each container is PID 1 of a namespace of
    // its own, and one in mode TARGET joins another's. The VM is sized by the pod's
    // limits: the configured 256 MiB and 1 vCPU, plus 128 MiB and 1 CPU.
    let mut config = workload::with_namespaces(
        workload::named_pod(&s, "doomed"),
        cri::NamespaceOption {
            pid: i32::from(cri::NamespaceMode::Container),
            ..Default::default()
        },
    );
    if let Some(linux) = config.linux.as_mut() {
        linux.resources = Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 128 << 20,
            cpu_quota: 100_000,
            cpu_period: 100_000,
            ..Default::default()
        });
    }
    let doomed = run_vm_pod(&mut rt, config, "microvm")
        .await
        .expect("a second microvm pod runs");
    let sleeper = workload::create(
        &mut rt,
        &s,
        &doomed,
        workload::container(&s, "sleeper", "exec sleep 1000"),
    )
    .await;
    workload::start(&mut rt, &sleeper).await;
    let (_, size) = workload::exec_out(
        &mut rt,
        &sleeper,
        &["sh", "-c", "nproc; grep MemTotal /proc/meminfo"],
    )
    .await;
    let mut lines = size.lines();
    // The configured vCPU plus the pod's one, capped at the host's.
    let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let vcpus = 2.min(host_cpus).to_string();
    assert_eq!(lines.next(), Some(vcpus.as_str()), "vCPUs: {size}");
    let total_kib: u64 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    assert!(
        total_kib > 300 << 10 && total_kib <= 384 << 10,
        "the guest's memory, 384 MiB less the kernel's: {size}"
    );
    let (_, init) = workload::exec_out(&mut rt, &sleeper, &["cat", "/proc/1/cmdline"]).await;
    assert_eq!(
        init, "sleep\u{0}1000\u{0}",
        "the container's init is its PID 1"
    );
    let (_, ps) = workload::exec_out(&mut rt, &sleeper, &["ps", "-o", "pid,args"]).await;
    assert!(
        !ps.contains("pause") && ps.lines().count() == 3,
        "only the container's own processes (and ps): {ps}"
    );
    let mut config = workload::container(&s, "debug", "exec sleep 1001");
    config.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                pid: i32::from(cri::NamespaceMode::Target),
                target_id: sleeper.clone(),
                ..Default::default()
            }),
            capabilities: Some(cri::Capability {
                add_capabilities: vec!["NET_ADMIN".into()],
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let debug = workload::create(&mut rt, &s, &doomed, config).await;
    workload::start(&mut rt, &debug).await;
    let (_, init) = workload::exec_out(&mut rt, &debug, &["cat", "/proc/1/cmdline"]).await;
    assert_eq!(
        init, "sleep\u{0}1000\u{0}",
        "TARGET joins the target's namespace"
    );
    // A module the guest loads only when asked: the kernel runs the agent as modprobe.
    let (code, out) = workload::exec_out(
        &mut rt,
        &debug,
        &["sh", "-c", "brctl addbr br0 && ip -o link show br0"],
    )
    .await;
    assert_eq!(code, 0, "a bridge in the guest: {out}");
    assert!(out.contains("br0"), "{out}");
    let qemu: Vec<i32> = vm_processes(&vm_dir)
        .into_iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.starts_with("qemu"))
        })
        .collect();
    assert_eq!(qemu.len(), 1, "one QEMU runs the pod");
    // SAFETY: a plain kill of a process this test's crispd started.
    unsafe { libc::kill(qemu[0], libc::SIGKILL) };
    workload::wait_not_ready(&mut rt, &doomed, Duration::from_secs(20)).await;
    let gone = workload::wait_exited(&mut rt, &sleeper).await;
    assert_ne!(
        gone.exit_code, 0,
        "the container of a dead VM did not succeed"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !vm_processes(&vm_dir).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the helpers of a dead VM end: {:?}",
            vm_processes(&vm_dir)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    workload::stop_and_remove_pod(&mut rt, &doomed).await;
    assert_nothing_left(&s, &vm_dir, &doomed);
    let (status, _) = daemon.stop();
    assert!(status.success());
}

/// Nothing of pod `pod`'s VM is left on the host: no process, mount, directory, veth
/// or cgroup.
fn assert_nothing_left(s: &Setup, vm_dir: &str, pod: &str) {
    assert_eq!(
        vm_processes(vm_dir),
        Vec::<i32>::new(),
        "no QEMU or helper is left"
    );
    assert_eq!(s.net.mounts(), 0, "no mount is left");
    assert!(
        std::fs::read_dir(vm_dir).map(|d| d.count()).unwrap_or(0) == 0,
        "no VM directory is left"
    );
    assert_eq!(s.net.veths(), 0, "no veth is left");
    let cgroup = format!("crisp-{pod}");
    let leftover: Vec<_> = runtime_handlers::cgroup_hierarchies()
        .into_iter()
        .filter_map(|root| {
            std::fs::read_dir(root.join("crisp"))
                .ok()
                .map(|d| {
                    d.flatten()
                        .any(|e| e.file_name().to_string_lossy() == cgroup)
                })
                .filter(|found| *found)
                .map(|_| root)
        })
        .collect();
    assert!(
        leftover.is_empty(),
        "the pod's cgroup is gone: {leftover:?}"
    );
}

/// Pods a VM cannot serve fail with a precise status and leave nothing: a guest whose
/// agent never answers (its /init is busybox's init), a kernel that is not one, a
/// missing image, a host-network pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_that_cannot_boot_fails_in_time_and_leaves_nothing() {
    let _ = guest_kernel_release();
    let s: Setup = workload::setup();
    // An initramfs whose /init is busybox: it boots, but no agent ever listens.
    let silent = s.net.sandbox.path("silent");
    std::fs::create_dir_all(silent.join("dev")).expect("dir");
    std::fs::copy("/bin/busybox", silent.join("init")).expect("busybox");
    let cpio = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd {} && find . | cpio --quiet -o -H newc > ../silent.img",
            silent.display()
        ))
        .status()
        .expect("cpio");
    assert!(cpio.success());
    let not_a_kernel = s.net.sandbox.path("not-a-kernel");
    std::fs::write(&not_a_kernel, b"this is not a kernel").expect("write");
    let handler = |name: &str, kernel: &str, initrd: &str| {
        format!(
            "[runtimes.{name}]\ntype = \"microvm\"\npath = \"qemu-system-x86_64\"\nkernel = \"{kernel}\"\ninitrd = \"{initrd}\"\nboot_timeout = \"4s\"\n"
        )
    };
    let extra = [
        handler(
            "silent",
            &format!("{GUEST}/vmlinuz"),
            &s.net.sandbox.path("silent.img").display().to_string(),
        ),
        handler(
            "broken",
            &not_a_kernel.display().to_string(),
            &format!("{GUEST}/initrd.img"),
        ),
        handler(
            "imageless",
            "/nonexistent/vmlinuz",
            "/nonexistent/initrd.img",
        ),
    ]
    .join("\n");
    s.net.sandbox.write_config(&extra);
    let daemon = s.net.sandbox.start();
    let (mut rt, _) = daemon.clients().await;
    let vm_dir = s.net.sandbox.path("state/runtimes").display().to_string();

    let began = Instant::now();
    let silent = run_vm_pod(&mut rt, workload::named_pod(&s, "silent"), "silent")
        .await
        .expect_err("a guest without an agent cannot run a pod");
    let took = began.elapsed();
    assert_eq!(silent.code(), tonic::Code::DeadlineExceeded, "{silent:?}");
    assert!(
        silent.message().contains("boot timeout"),
        "{}",
        silent.message()
    );
    assert!(
        took < Duration::from_secs(12),
        "failed within the boot timeout: {took:?}"
    );

    let broken = run_vm_pod(&mut rt, workload::named_pod(&s, "broken"), "broken")
        .await
        .expect_err("a kernel that is not one cannot run a pod");
    assert_eq!(broken.code(), tonic::Code::Unavailable, "{broken:?}");
    assert!(broken.message().contains("QEMU"), "{}", broken.message());

    let imageless = run_vm_pod(&mut rt, workload::named_pod(&s, "imageless"), "imageless")
        .await
        .expect_err("no image, no pod");
    assert_eq!(
        imageless.code(),
        tonic::Code::FailedPrecondition,
        "{imageless:?}"
    );
    assert!(
        imageless.message().contains("scripts/build-guest.sh"),
        "{}",
        imageless.message()
    );

    let host = workload::with_namespaces(
        workload::named_pod(&s, "host"),
        cri::NamespaceOption {
            network: i32::from(cri::NamespaceMode::Node),
            ..Default::default()
        },
    );
    let host = run_vm_pod(&mut rt, host, "microvm")
        .await
        .expect_err("a host-network pod cannot be a VM");
    assert_eq!(host.code(), tonic::Code::InvalidArgument, "{host:?}");
    assert!(host.message().contains("hostNetwork"), "{}", host.message());
    for (ipc, pid) in [
        (cri::NamespaceMode::Node, cri::NamespaceMode::Pod),
        (cri::NamespaceMode::Pod, cri::NamespaceMode::Node),
    ] {
        let shared = workload::with_namespaces(
            workload::named_pod(&s, "host-ipc-or-pid"),
            cri::NamespaceOption {
                ipc: i32::from(ipc),
                pid: i32::from(pid),
                ..Default::default()
            },
        );
        let refused = run_vm_pod(&mut rt, shared, "microvm")
            .await
            .expect_err("a pod sharing the host's IPC or PID namespace cannot be a VM");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
        assert!(
            refused.message().contains("hostIPC, hostPID"),
            "{}",
            refused.message()
        );
    }

    assert!(
        common::list_pods(&mut rt).await.is_empty(),
        "no half-made pod is listed"
    );
    assert_eq!(
        vm_processes(&vm_dir),
        Vec::<i32>::new(),
        "no QEMU or helper is left"
    );
    assert_eq!(s.net.mounts(), 0, "no mount is left");
    assert_eq!(s.net.veths(), 0, "no veth is left");
    assert_eq!(s.net.allocations(), 0, "no IP is left allocated");
    let (status, _) = daemon.stop();
    assert!(status.success());
}
