//! Containers through the real crispd: runc, crisp-monitor, CNI, and a busybox image
//! pulled from the local registry fixture.

mod common;

use std::time::{Duration, Instant};

use common::workload::*;
use cri_proto::v1 as cri;
use cri_proto::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

/// The container's state as ListContainers has it (its entries are cached between
/// changes, so each change must show).
async fn listed_state(rt: &mut RuntimeServiceClient<Channel>, id: &str) -> Option<i32> {
    common::list_containers(rt)
        .await
        .into_iter()
        .find(|c| c.id == id)
        .map(|c| c.state)
}

fn monitors_of(id: &str) -> usize {
    common::processes_naming(&[id.as_bytes()]).len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_runs_logs_execs_stops_and_is_removed_without_a_trace() {
    let s = setup();
    let daemon = s.net.sandbox.start();
    let (mut rt, pod) = ready(&s, &daemon).await;
    let script = "echo hello $GREETING; hostname; trap 'echo bye; exit 0' TERM; echo trapped; while true; do sleep 0.1; done";
    let id = create(&mut rt, &s, &pod, container(&s, "web", script)).await;
    assert_eq!(
        status(&mut rt, &id).await.state,
        i32::from(cri::ContainerState::ContainerCreated)
    );
    assert_eq!(
        listed_state(&mut rt, &id).await,
        Some(i32::from(cri::ContainerState::ContainerCreated))
    );
    start(&mut rt, &id).await;
    assert_eq!(
        listed_state(&mut rt, &id).await,
        Some(i32::from(cri::ContainerState::ContainerRunning))
    );
    let err = rt
        .start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .expect_err("start twice");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);

    let st = status(&mut rt, &id).await;
    assert_eq!(st.state, i32::from(cri::ContainerState::ContainerRunning));
    assert!(st.started_at >= st.created_at);
    assert!(st.image_id.starts_with("sha256:"), "{}", st.image_id);
    assert!(st.image_ref.contains("@sha256:"), "{}", st.image_ref);

    let exec = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "echo out $GREETING; echo err >&2; exit 4".into(),
            ],
            timeout: 10,
        })
        .await
        .expect("exec")
        .into_inner();
    assert_eq!(
        (
            exec.exit_code,
            exec.stdout.as_slice(),
            exec.stderr.as_slice()
        ),
        (4, &b"out hi\n"[..], &b"err\n"[..])
    );

    // The SIGTERM trap is in place before the stop (a loaded machine may not have run
    // that far yet).
    let log_file = s.net.sandbox.path("logs/web.log");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&log_file)
        .unwrap_or_default()
        .contains(" stdout F trapped\n")
    {
        assert!(Instant::now() < deadline, "the script never set its trap");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rt.stop_container(cri::StopContainerRequest {
        container_id: id.clone(),
        timeout: 10,
    })
    .await
    .expect("stop");
    let st = status(&mut rt, &id).await;
    assert_eq!(st.state, i32::from(cri::ContainerState::ContainerExited));
    assert_eq!(
        listed_state(&mut rt, &id).await,
        Some(i32::from(cri::ContainerState::ContainerExited))
    );
    assert_eq!(
        (st.exit_code, st.reason.as_str()),
        (0, "Completed"),
        "SIGTERM trap ran"
    );
    let log = std::fs::read_to_string(s.net.sandbox.path("logs/web.log")).expect("log file");
    assert!(log.contains(" stdout F hello hi\n"), "{log}");
    assert!(log.contains(" stdout F app-host\n"), "{log}");
    assert!(log.contains(" stdout F bye\n"), "{log}");

    let err = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["true".into()],
            timeout: 5,
        })
        .await
        .expect_err("exec in a stopped container");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);

    rt.remove_container(cri::RemoveContainerRequest {
        container_id: id.clone(),
    })
    .await
    .expect("remove");
    rt.remove_container(cri::RemoveContainerRequest {
        container_id: id.clone(),
    })
    .await
    .expect("remove twice");
    rt.stop_container(cri::StopContainerRequest {
        container_id: id.clone(),
        timeout: 1,
    })
    .await
    .expect("stop unknown");
    let err = rt
        .container_status(cri::ContainerStatusRequest {
            container_id: id.clone(),
            verbose: false,
        })
        .await
        .expect_err("gone");
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert_eq!(monitors_of(&id), 0, "monitor left running");
    assert_eq!(cgroups_of(&id), Vec::<String>::new(), "cgroups left");
    assert!(
        !s.net
            .sandbox
            .path(&format!("state/containers/{id}"))
            .exists(),
        "bundle left"
    );
    assert!(
        !s.net
            .sandbox
            .path(&format!("root/containers/{id}"))
            .exists(),
        "writable layer left"
    );

    stop_and_remove_pod(&mut rt, &pod).await;
    assert_eq!(s.net.mounts(), 0, "mounts left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_survive_a_daemon_that_was_down_when_the_container_exited() {
    let s = setup();
    let (id, pod) = {
        let daemon = s.net.sandbox.start();
        let (mut rt, pod) = ready(&s, &daemon).await;
        let id = create(&mut rt, &s, &pod, container(&s, "job", "sleep 1; exit 5")).await;
        start(&mut rt, &id).await;
        daemon.kill();
        (id, pod)
    };
    // The container finishes while crispd is down; its monitor records the exit.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let daemon = s.net.sandbox.start();
    let (mut rt, _) = daemon.clients().await;
    let st = wait_exited(&mut rt, &id).await;
    assert_eq!((st.exit_code, st.reason.as_str()), (5, "Error"));
    assert!(st.finished_at > st.started_at);
    let listed = rt
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                state: Some(cri::ContainerStateValue {
                    state: cri::ContainerState::ContainerExited.into(),
                }),
                ..Default::default()
            }),
        })
        .await
        .expect("list")
        .into_inner()
        .containers;
    assert_eq!(listed.len(), 1);
    // Removing the pod removes its containers.
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .expect("remove pod");
    let left = common::list_containers(&mut rt).await;
    assert!(left.is_empty());
    assert_eq!(s.net.mounts(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_pod_kills_its_containers_and_bad_requests_are_refused() {
    let s = setup();
    let daemon = s.net.sandbox.start();
    let (mut rt, pod) = ready(&s, &daemon).await;

    let mut missing_image = container(&s, "x", "true");
    missing_image.image = Some(cri::ImageSpec {
        image: "never/pulled:1".into(),
        ..Default::default()
    });
    let err = create_refused(&mut rt, &pod, missing_image).await;
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    let err = create_refused(&mut rt, &"f".repeat(64), container(&s, "x", "true")).await;
    assert_eq!(err.code(), tonic::Code::NotFound);

    // Input that would escape or overflow: InvalidArgument naming the field, nothing made.
    let escape = s.net.sandbox.path("escaped.log");
    let climbing = format!("../{}", "../".repeat(20)) + escape.to_str().expect("utf-8 path");
    let mut cases = Vec::new();
    for log_path in [escape.display().to_string(), climbing] {
        let mut c = container(&s, "log", "true");
        c.log_path = log_path;
        cases.push((c, "config.log_path"));
    }
    for target in ["/", "/proc", "/sys"] {
        let mut c = container(&s, "mnt", "true");
        c.mounts = vec![cri::Mount {
            container_path: target.into(),
            host_path: s.net.sandbox.path("logs").display().to_string(),
            ..Default::default()
        }];
        cases.push((c, "config.mounts[0].container_path"));
    }
    let mut huge = container(&s, "argv", "true");
    huge.args = vec!["x".repeat(200 * 1024)];
    cases.push((huge, "config.args[0]"));
    for (bad, field) in cases {
        let err = create_refused(&mut rt, &pod, bad).await;
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(field), "{}", err.message());
    }
    assert!(!escape.exists(), "no log written outside the log directory");

    let id = create(&mut rt, &s, &pod, container(&s, "long", "sleep 1000")).await;
    let err = create_refused(&mut rt, &pod, container(&s, "long", "true")).await;
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
    start(&mut rt, &id).await;
    let err = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["echo".into(), "x".repeat(200 * 1024)],
            timeout: 5,
        })
        .await
        .expect_err("an argument the kernel would refuse");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("cmd[1]"), "{}", err.message());
    let (_, mut images) = daemon.clients().await;
    let err = images
        .remove_image(cri::RemoveImageRequest {
            image: Some(cri::ImageSpec {
                image: s.image.clone(),
                ..Default::default()
            }),
        })
        .await
        .expect_err("image in use");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .expect("stop pod");
    let st = status(&mut rt, &id).await;
    assert_eq!(st.state, i32::from(cri::ContainerState::ContainerExited));
    assert_eq!(st.exit_code, 137);
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .expect("remove pod");
    assert_eq!(monitors_of(&id), 0);
    assert_eq!(s.net.mounts(), 0);
}

/// runsc and crun are in the default configuration: the tests use them as configured
/// there, with `extra` top-level keys.
fn with_handlers(s: &Setup, extra: &str) {
    let text = std::fs::read_to_string(s.net.sandbox.config_path()).expect("config");
    std::fs::write(s.net.sandbox.config_path(), format!("{extra}{text}")).expect("config");
}

async fn pod_with(
    rt: &mut RuntimeServiceClient<Channel>,
    s: &Setup,
    config: cri::PodSandboxConfig,
    handler: &str,
) -> String {
    let _ = s;
    rt.run_pod_sandbox(cri::RunPodSandboxRequest {
        config: Some(config),
        runtime_handler: handler.into(),
    })
    .await
    .expect("run pod")
    .into_inner()
    .pod_sandbox_id
}

fn second_pod(s: &Setup) -> cri::PodSandboxConfig {
    named_pod(s, "second")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runsc_runs_containers_in_the_pods_network() {
    let s = setup();
    with_handlers(&s, "");
    let daemon = s.net.sandbox.start();
    let (mut rt, _) = ready(&s, &daemon).await;
    let pod = pod_with(&mut rt, &s, second_pod(&s), "runsc").await;
    let ip = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: false,
        })
        .await
        .expect("status")
        .into_inner()
        .status
        .and_then(|st| st.network)
        .map(|n| n.ip)
        .expect("pod ip");
    let id = create(
        &mut rt,
        &s,
        &pod,
        container(&s, "gvisor", "echo in gvisor; sleep 1000"),
    )
    .await;
    start(&mut rt, &id).await;
    let out = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "ip -o -4 addr show eth0; dmesg | head -1".into(),
            ],
            timeout: 20,
        })
        .await
        .expect("exec")
        .into_inner();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&ip),
        "the pod's address inside gVisor: {text}"
    );
    assert!(text.contains("gVisor"), "the kernel is gVisor's: {text}");
    stop_and_remove_pod(&mut rt, &pod).await;
    assert_eq!(monitors_of(&id), 0);
    teardown(&mut rt).await;
}

/// Host processes whose command line names `id` and contains `what`.
fn processes_with(id: &str, what: &str) -> usize {
    common::processes_naming(&[id.as_bytes(), what.as_bytes()]).len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runsc_pod_is_one_gvisor_sandbox_its_containers_share() {
    let s = setup();
    with_handlers(&s, "");
    let daemon = s.net.sandbox.start();
    let (mut rt, _) = ready(&s, &daemon).await;
    let config = with_namespaces(
        second_pod(&s),
        cri::NamespaceOption {
            pid: cri::NamespaceMode::Pod.into(),
            ..Default::default()
        },
    );
    let pod = pod_with(&mut rt, &s, config, "runsc").await;
    let a = create(
        &mut rt,
        &s,
        &pod,
        container(&s, "a", "echo from-a; exec sleep 1001"),
    )
    .await;
    let b = create(&mut rt, &s, &pod, container(&s, "b", "exec sleep 1002")).await;
    assert_eq!(
        status(&mut rt, &a).await.state,
        i32::from(cri::ContainerState::ContainerCreated)
    );
    start(&mut rt, &a).await;
    start(&mut rt, &b).await;

    // One gVisor sandbox for the pod, none of the containers' own.
    assert_eq!(
        processes_with(&pod, "runsc-sandbox"),
        1,
        "the pod's sandbox"
    );
    for id in [&a, &b] {
        assert_eq!(processes_with(id, "runsc-sandbox"), 0, "a sandbox for {id}");
    }
    // PID mode POD: b sees a's process, and the sandbox's init is PID 1.
    let (code, ps) = exec_out(&mut rt, &b, &["ps", "-o", "pid,args"]).await;
    assert_eq!(code, 0, "{ps}");
    assert!(ps.contains("sleep 1001"), "a's process seen from b: {ps}");
    assert!(
        ps.lines()
            .any(|l| l.trim_start().starts_with("1 ") && l.contains("--sandbox-init")),
        "the sandbox init is PID 1: {ps}"
    );
    // Stats: the container's own CPU time, the sandbox's memory.
    let stats = rt
        .container_stats(cri::ContainerStatsRequest {
            container_id: b.clone(),
        })
        .await
        .expect("stats")
        .into_inner()
        .stats
        .expect("stats of b");
    let memory = stats
        .memory
        .and_then(|m| m.working_set_bytes)
        .map(|v| v.value);
    assert!(memory.is_some_and(|m| m > 0), "{memory:?}");
    assert!(stats.cpu.and_then(|c| c.usage_core_nano_seconds).is_some());

    // a's output reached its log.
    let deadline = Instant::now() + Duration::from_secs(10);
    let log = s.net.sandbox.path("logs/a.log");
    while !std::fs::read_to_string(&log).is_ok_and(|l| l.contains("from-a")) {
        assert!(Instant::now() < deadline, "no output in {}", log.display());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A container gVisor cannot run is refused, naming why; the sandbox stays.
    let mut shared = container(&s, "shared", "sleep 1");
    let source = s.net.sandbox.path("shared-mount");
    std::fs::create_dir_all(&source).expect("mount source");
    shared.mounts.push(cri::Mount {
        container_path: "/shared".into(),
        host_path: source.display().to_string(),
        propagation: cri::MountPropagation::PropagationBidirectional.into(),
        ..Default::default()
    });
    let refused = create_refused(&mut rt, &pod, shared).await;
    assert!(
        refused.message().contains("propagation"),
        "{}",
        refused.message()
    );
    let (code, out) = exec_out(&mut rt, &b, &["echo", "alive"]).await;
    assert_eq!((code, out.trim()), (0, "alive"));

    // An init that exits while its child keeps the output open has exited.
    let c = create(&mut rt, &s, &pod, container(&s, "c", "sleep 1003 & exit 3")).await;
    start(&mut rt, &c).await;
    let st = wait_exited(&mut rt, &c).await;
    assert_eq!(st.exit_code, 3);

    // One container stops and goes; the other and the sandbox stay.
    rt.stop_container(cri::StopContainerRequest {
        container_id: a.clone(),
        timeout: 1,
    })
    .await
    .expect("stop a");
    let st = wait_exited(&mut rt, &a).await;
    assert!([137, 143].contains(&st.exit_code), "{}", st.exit_code);
    rt.remove_container(cri::RemoveContainerRequest {
        container_id: a.clone(),
    })
    .await
    .expect("remove a");
    let (code, out) = exec_out(&mut rt, &b, &["sh", "-c", "echo still; ps -o args"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("still") && !out.contains("sleep 1001"),
        "{out}"
    );
    assert_eq!(
        status(&mut rt, &b).await.state,
        i32::from(cri::ContainerState::ContainerRunning)
    );

    let runtime_root = s.net.sandbox.path("state/runtimes/runsc");
    let at_runtime = |ids: &[&String]| -> Vec<String> {
        std::fs::read_dir(&runtime_root)
            .expect("runsc's state directory")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| ids.iter().any(|id| n.contains(id.as_str())))
            .collect()
    };
    assert!(
        !at_runtime(&[&pod]).is_empty(),
        "runsc knows the pod's sandbox"
    );
    stop_and_remove_pod(&mut rt, &pod).await;
    // Nothing of the pod is left: no sandbox, gofer or monitor, nothing at the runtime.
    for id in [&pod, &a, &b, &c] {
        assert_eq!(monitors_of(id), 0, "processes of {id}");
    }
    let left = at_runtime(&[&pod, &a, &b, &c]);
    assert!(left.is_empty(), "runsc state left: {left:?}");
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("mounts");
    let left: Vec<&str> = mounts.lines().filter(|l| l.contains(&pod)).collect();
    assert!(left.is_empty(), "mounts left: {left:?}");
    teardown(&mut rt).await;
}

/// Debian's crun 1.8 refuses a hybrid cgroup host whose cgroup2 still has controllers.
fn crun_refuses_this_host() -> bool {
    std::fs::read_to_string("/sys/fs/cgroup/unified/cgroup.controllers")
        .is_ok_and(|c| !c.trim().is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crun_runs_containers_and_leaves_nothing() {
    // Debian's crun 1.8 needs cgroup2 to have no controllers on a hybrid host: `make
    // test` runs scripts/cgroup-hybrid.sh first.
    let s = setup();
    with_handlers(&s, "");
    let daemon = s.net.sandbox.start();
    let (mut rt, _) = ready(&s, &daemon).await;
    let pod = pod_with(&mut rt, &s, second_pod(&s), "crun").await;
    let created = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container(&s, "c", "echo $GREETING; sleep 1000")),
            sandbox_config: None,
        })
        .await;
    if crun_refuses_this_host() {
        // The script could not prepare the host: the refusal must be clear and complete.
        let err = created.expect_err("crun refuses a hybrid host with cgroup2 controllers");
        assert_eq!(err.code(), tonic::Code::Unknown, "{err:?}");
        assert!(err.message().contains("crun create"), "{}", err.message());
        let bundles = std::fs::read_dir(s.net.sandbox.path("state/containers"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(bundles, 0, "bundle left behind");
        teardown(&mut rt).await;
        return;
    }
    let id = created.expect("crun create").into_inner().container_id;
    start(&mut rt, &id).await;
    let (code, out) = exec_out(
        &mut rt,
        &id,
        &["sh", "-c", "cat /proc/1/cmdline; echo; id -u"],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("0"), "{out}");
    rt.stop_container(cri::StopContainerRequest {
        container_id: id.clone(),
        timeout: 1,
    })
    .await
    .expect("stop");
    let st = wait_exited(&mut rt, &id).await;
    assert!([137, 143].contains(&st.exit_code), "{}", st.exit_code);
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .expect("remove pod");
    assert_eq!(monitors_of(&id), 0);
    let bundles = std::fs::read_dir(s.net.sandbox.path("state/containers"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(bundles, 0, "bundle left behind");
    teardown(&mut rt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_untrusted_workload_annotation_picks_the_untrusted_handler() {
    let s = setup();
    with_handlers(&s, "untrusted_workload_runtime = \"runsc\"\n");
    let daemon = s.net.sandbox.start();
    let (mut rt, _) = ready(&s, &daemon).await;
    let mut config = second_pod(&s);
    config
        .annotations
        .insert("io.kubernetes.cri.untrusted-workload".into(), "true".into());
    let pod = pod_with(&mut rt, &s, config, "").await;
    let info = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: true,
        })
        .await
        .expect("status")
        .into_inner()
        .info;
    let info: serde_json::Value =
        serde_json::from_str(info.get("info").expect("verbose")).expect("json");
    assert_eq!(info["runtimeHandler"], "runsc");
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .expect("remove");
    teardown(&mut rt).await;
}

/// Cgroup directories (v1 controllers or the unified tree) still named after `id`.
fn cgroups_of(id: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![std::path::PathBuf::from("/sys/fs/cgroup")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if path.to_string_lossy().contains(id) {
                found.push(path.display().to_string());
            } else if path.components().count() < 7 {
                stack.push(path);
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_is_reopened_after_rotation() {
    let s = setup();
    let daemon = s.net.sandbox.start();
    let (mut rt, pod) = ready(&s, &daemon).await;
    let id = create(
        &mut rt,
        &s,
        &pod,
        container(
            &s,
            "ticker",
            "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.05; done",
        ),
    )
    .await;
    start(&mut rt, &id).await;
    let log = s.net.sandbox.path("logs/ticker.log");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("tick 1\n")
    {
        assert!(Instant::now() < deadline, "no output");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // kubelet's rotation: rename, then ask the runtime to reopen.
    std::fs::rename(&log, log.with_extension("log.1")).expect("rotate");
    rt.reopen_container_log(cri::ReopenContainerLogRequest {
        container_id: id.clone(),
    })
    .await
    .expect("reopen");
    assert!(
        log.exists(),
        "the new log file exists when ReopenContainerLog returns"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let fresh = std::fs::read_to_string(&log).unwrap_or_default();
        if fresh.lines().count() >= 2 {
            assert!(
                fresh.lines().all(|l| l.contains(" stdout F tick ")),
                "{fresh}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "the new log file stayed empty");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rotated = std::fs::read_to_string(log.with_extension("log.1")).expect("rotated file");
    assert!(rotated.contains("tick 0\n"));
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .expect("remove pod");
    let err = rt
        .reopen_container_log(cri::ReopenContainerLogRequest { container_id: id })
        .await
        .expect_err("gone");
    assert_eq!(err.code(), tonic::Code::NotFound);
}

/// A cgroup file of the container, v1 controller or unified, if it has one.
fn cgroup_file(id: &str, v1: &str, v2: &str) -> Option<String> {
    cgroups_of(id).into_iter().find_map(|dir| {
        [format!("{dir}/{v1}"), format!("{dir}/{v2}")]
            .into_iter()
            .find_map(|f| std::fs::read_to_string(f).ok())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_are_applied_at_creation_and_updated_live() {
    let s = setup();
    let daemon = s.net.sandbox.start();
    let (mut rt, pod) = ready(&s, &daemon).await;
    let mut config = container(&s, "limited", "sleep 1000");
    config.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            cpu_shares: 512,
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = create(&mut rt, &s, &pod, config).await;
    start(&mut rt, &id).await;
    let limit = cgroup_file(&id, "memory.limit_in_bytes", "memory.max").expect("memory cgroup");
    assert_eq!(limit.trim(), (64u64 << 20).to_string());
    rt.update_container_resources(cri::UpdateContainerResourcesRequest {
        container_id: id.clone(),
        linux: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 96 << 20,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .expect("update");
    let limit = cgroup_file(&id, "memory.limit_in_bytes", "memory.max").expect("memory cgroup");
    assert_eq!(limit.trim(), (96u64 << 20).to_string());
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .expect("remove pod");
    assert!(cgroups_of(&id).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_past_its_memory_limit_is_oom_killed() {
    let s = setup();
    let daemon = s.net.sandbox.start();
    let (mut rt, pod) = ready(&s, &daemon).await;
    // tmpfs pages written by the container are charged to its memory cgroup.
    let mut config = container(&s, "hog", "exec head -c 48000000 /dev/zero > /dev/shm/fill");
    config.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 16 << 20,
            memory_swap_limit_in_bytes: 16 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = create(&mut rt, &s, &pod, config).await;
    start(&mut rt, &id).await;
    let st = wait_exited(&mut rt, &id).await;
    assert_eq!((st.exit_code, st.reason.as_str()), (137, "OOMKilled"));
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .expect("remove pod");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seccomp_runtime_default_localhost_and_unconfined() {
    let s = setup();
    let profile = s.net.sandbox.path("no-mkdir.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO"}]}"#,
    )
    .expect("profile");
    let daemon = s.net.sandbox.start();
    let (mut rt, pod) = ready(&s, &daemon).await;
    use cri::security_profile::ProfileType as P;
    let cases = [
        (
            "default",
            P::RuntimeDefault,
            String::new(),
            "Seccomp:\t2",
            true,
        ),
        (
            "unconfined",
            P::Unconfined,
            String::new(),
            "Seccomp:\t0",
            true,
        ),
        (
            "localhost",
            P::Localhost,
            profile.display().to_string(),
            "Seccomp:\t2",
            false,
        ),
    ];
    for (name, kind, localhost, expected, mkdir_works) in cases {
        let mut config = container(&s, name, "sleep 1000");
        config.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                seccomp: Some(cri::SecurityProfile {
                    profile_type: kind.into(),
                    localhost_ref: localhost,
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        let id = create(&mut rt, &s, &pod, config).await;
        start(&mut rt, &id).await;
        let out = rt
            .exec_sync(cri::ExecSyncRequest {
                container_id: id.clone(),
                cmd: vec![
                    "sh".into(),
                    "-c".into(),
                    "grep Seccomp: /proc/self/status; mkdir /tmp/made && echo made".into(),
                ],
                timeout: 10,
            })
            .await
            .expect("exec")
            .into_inner();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(expected), "{name}: {text}");
        assert_eq!(
            text.contains("made"),
            mkdir_works,
            "{name}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut bad = container(&s, "bad", "true");
    bad.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            seccomp: Some(cri::SecurityProfile {
                profile_type: P::Localhost.into(),
                localhost_ref: "/nonexistent.json".into(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let err = create_refused(&mut rt, &pod, bad).await;
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .expect("remove pod");
    assert_eq!(
        s.net.mounts(),
        0,
        "a refused create leaves no rootfs mounted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_and_all_capabilities_get_what_crispd_can_grant() {
    let s = setup();
    let daemon = s.net.sandbox.start();
    let (mut rt, pod) = ready(&s, &daemon).await;
    let own = std::fs::read_to_string("/proc/self/status")
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:").map(|v| v.trim().to_owned()))
        .expect("CapBnd");
    for (name, privileged, add_all) in [("privileged", true, false), ("all-caps", false, true)] {
        let mut config = container(&s, name, "sleep 1000");
        config.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                privileged,
                capabilities: add_all.then(|| cri::Capability {
                    add_capabilities: vec!["ALL".into()],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        let id = create(&mut rt, &s, &pod, config).await;
        start(&mut rt, &id).await;
        let out = rt
            .exec_sync(cri::ExecSyncRequest {
                container_id: id,
                cmd: vec!["grep".into(), "CapEff".into(), "/proc/self/status".into()],
                timeout: 10,
            })
            .await
            .expect("exec")
            .into_inner();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&own),
            "{name}: effective caps {text} should be crispd's bounding set {own}"
        );
    }
    let mut group_only = container(&s, "group-only", "true");
    group_only.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            run_as_group: Some(cri::Int64Value { value: 1002 }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let err = create_refused(&mut rt, &pod, group_only).await;
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .expect("remove pod");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_and_a_target_pid_namespace() {
    let s = setup();
    let daemon = s.net.sandbox.start();
    let (mut rt, shared) = ready(&s, &daemon).await;
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: shared,
    })
    .await
    .expect("remove");
    // A pod whose containers each get their own PID namespace.
    let config = with_namespaces(
        pod_config(&s),
        cri::NamespaceOption {
            pid: cri::NamespaceMode::Container.into(),
            ..Default::default()
        },
    );
    let pod = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await
        .expect("run pod")
        .into_inner()
        .pod_sandbox_id;

    // A host device, under another name, usable for what the permissions allow (the
    // kernel log: not among the devices runc always allows).
    let mut with_device = container(&s, "dev", "sleep 1000");
    with_device.devices = vec![cri::Device {
        container_path: "/dev/crisp-kmsg".into(),
        host_path: "/dev/kmsg".into(),
        permissions: "w".into(),
    }];
    let dev = create(&mut rt, &s, &pod, with_device).await;
    start(&mut rt, &dev).await;
    let (code, out) = exec_out(
        &mut rt,
        &dev,
        &[
            "sh",
            "-c",
            "echo crisp-device-test > /dev/crisp-kmsg && echo written",
        ],
    )
    .await;
    assert_eq!((code, out.trim()), (0, "written"), "{out}");
    let (code, out) = exec_out(&mut rt, &dev, &["sh", "-c", "head -c 1 /dev/crisp-kmsg"]).await;
    assert_ne!(
        code, 0,
        "write-only device permissions let a read through: {out}"
    );
    assert!(out.contains("not permitted"), "{out}");

    // Not a device: refused, nothing left behind.
    let mut bad = container(&s, "bad-dev", "true");
    bad.devices = vec![cri::Device {
        container_path: "/dev/x".into(),
        host_path: "/etc/hostname".into(),
        permissions: "rw".into(),
    }];
    let err = create_refused(&mut rt, &pod, bad).await;
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("/etc/hostname"), "{}", err.message());

    // A debug container in the PID namespace of `dev`: it sees dev's `sleep` as pid 1.
    let mut debug = container(&s, "debug", "sleep 1000");
    debug.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                pid: cri::NamespaceMode::Target.into(),
                target_id: dev.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let debug_id = create(&mut rt, &s, &pod, debug).await;
    start(&mut rt, &debug_id).await;
    let (code, out) = exec_out(&mut rt, &debug_id, &["sh", "-c", "ps -o pid,args"]).await;
    assert_eq!(code, 0, "{out}");
    let sleeps = out.lines().filter(|l| l.contains("sleep 1000")).count();
    assert_eq!(
        sleeps, 2,
        "both containers' processes in one namespace: {out}"
    );
    let (_, own) = exec_out(&mut rt, &dev, &["sh", "-c", "ps -o pid,args"]).await;
    assert_eq!(
        own.lines().filter(|l| l.contains("sleep 1000")).count(),
        2,
        "dev sees the debug container too: {own}"
    );
    let mut orphan = container(&s, "orphan", "true");
    orphan.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                pid: cri::NamespaceMode::Target.into(),
                target_id: "nope".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let err = create_refused(&mut rt, &pod, orphan).await;
    assert_eq!(err.code(), tonic::Code::NotFound);
    let listed = common::list_containers(&mut rt).await;
    assert_eq!(listed.len(), 2, "refused creates left nothing");
    teardown(&mut rt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_volumes_are_mounted_read_only_and_released() {
    let s = setup();
    let daemon = s.net.sandbox.start();
    let (mut rt, pod) = ready(&s, &daemon).await;
    let mounts_before = s.net.mounts();
    let volume = |sub: &str, image: &str| cri::Mount {
        container_path: "/vol".into(),
        image: Some(cri::ImageSpec {
            image: image.to_owned(),
            ..Default::default()
        }),
        readonly: true,
        image_sub_path: sub.into(),
        ..Default::default()
    };
    let mut config = container(
        &s,
        "vol",
        "test -x /vol/bin/busybox && ! touch /vol/new 2>/dev/null && echo ro-ok; sleep 1000",
    );
    config.mounts = vec![volume("", &s.image)];
    let id = create(&mut rt, &s, &pod, config).await;
    start(&mut rt, &id).await;
    let (code, out) = exec_out(
        &mut rt,
        &id,
        &[
            "sh",
            "-c",
            "test -x /vol/bin/busybox && ! touch /vol/new 2>/dev/null && echo ro-ok",
        ],
    )
    .await;
    assert_eq!((code, out.trim()), (0, "ro-ok"), "{out}");
    // ContainerStatus names the mounted image's ID (ImageSpec.image_ref, KEP-5365).
    let status = status(&mut rt, &id).await;
    let image_id = status.image_id.clone();
    assert!(image_id.starts_with("sha256:"), "{image_id}");
    let mounted = status
        .mounts
        .iter()
        .find(|m| m.container_path == "/vol")
        .and_then(|m| m.image.clone())
        .expect("image volume in status");
    assert_eq!(
        (mounted.image, mounted.image_ref),
        (s.image.clone(), image_id)
    );
    // A directory of the image.
    let mut sub = container(&s, "vol-sub", "sleep 1000");
    sub.mounts = vec![volume("etc", &s.image)];
    let sub_id = create(&mut rt, &s, &pod, sub).await;
    start(&mut rt, &sub_id).await;
    let (code, out) = exec_out(&mut rt, &sub_id, &["cat", "/vol/passwd"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("root:"), "{out}");

    for (bad, code) in [
        (volume("", "not-pulled:1"), tonic::Code::NotFound),
        (volume("../..", &s.image), tonic::Code::InvalidArgument),
        (
            volume("no-such-dir", &s.image),
            tonic::Code::InvalidArgument,
        ),
        (
            cri::Mount {
                readonly: false,
                ..volume("", &s.image)
            },
            tonic::Code::InvalidArgument,
        ),
    ] {
        let mut config = container(&s, "bad-vol", "true");
        config.mounts = vec![bad];
        let err = create_refused(&mut rt, &pod, config).await;
        assert_eq!(err.code(), code, "{}", err.message());
    }
    for cid in [id, sub_id] {
        rt.remove_container(cri::RemoveContainerRequest { container_id: cid })
            .await
            .expect("remove");
    }
    assert_eq!(s.net.mounts(), mounts_before, "image volumes unmounted");
    teardown(&mut rt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_of_500_layers_runs_and_one_of_501_is_refused_naming_the_limit() {
    use critest::fixture::{self, ImageBuilder, LayerBuilder};
    let s = setup();
    // busybox, then 499 layers of one file each: 500, as many as overlayfs stacks. Their
    // lowerdir option is far longer than a page.
    let mut tall = ImageBuilder::new()
        .layer(fixture::busybox_layer().expect("busybox-static"))
        .cmd(&["sh"]);
    for n in 1..500 {
        tall = tall.layer(
            LayerBuilder::new()
                .file(&format!("layers/{n}"), n.to_string().as_bytes(), 0o644)
                .finish(),
        );
    }
    let registry = &s._registry;
    fixture::push(registry, "tall", "v500", &tall.build()).expect("push");
    let taller = tall.layer(
        LayerBuilder::new()
            .file("layers/500", b"500", 0o644)
            .finish(),
    );
    fixture::push(registry, "tall", "v501", &taller.build()).expect("push");
    let daemon = s.net.sandbox.start();
    let (mut rt, pod) = ready(&s, &daemon).await;
    let (_, mut images) = daemon.clients().await;
    for tag in ["v500", "v501"] {
        images
            .pull_image(cri::PullImageRequest {
                image: Some(cri::ImageSpec {
                    image: format!("{}/tall:{tag}", registry.addr),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .expect("pull a tall image");
    }
    let mut config = container(&s, "tall", "sleep 1000");
    config.image = Some(cri::ImageSpec {
        image: format!("{}/tall:v500", registry.addr),
        ..Default::default()
    });
    let id = create(&mut rt, &s, &pod, config.clone()).await;
    start(&mut rt, &id).await;
    // The bottom layer and the top one are both seen.
    let (code, out) = exec_out(&mut rt, &id, &["cat", "/layers/1", "/layers/499"]).await;
    assert_eq!((code, out.as_str()), (0, "1499"));

    config.metadata = Some(cri::ContainerMetadata {
        name: "taller".into(),
        attempt: 0,
    });
    config.image = Some(cri::ImageSpec {
        image: format!("{}/tall:v501", registry.addr),
        ..Default::default()
    });
    let err = create_refused(&mut rt, &pod, config).await;
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("at most 500"), "{}", err.message());
    teardown(&mut rt).await;
    assert_eq!(s.net.mounts(), 0);
}
