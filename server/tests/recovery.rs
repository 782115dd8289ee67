//! What kubelet can do after crispd's node restarts, and that one slow operation never
//! holds up unrelated pods: the real crispd, runc, CNI plugins and a busybox image.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::workload::*;
use cri_proto::v1 as cri;

/// Every process whose command line names `needle`.
fn processes_naming(needle: &str) -> Vec<i32> {
    common::processes_naming(&[needle.as_bytes()])
}

fn sigkill(pid: i32) {
    // SAFETY: kill takes no pointers; the pids are this test's own containers' processes.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

/// What a reboot does to crisp's state directory (a tmpfs): every mount under it gone,
/// then its contents.
fn wipe_state(state: &Path) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("mounts");
    let prefix = state.display().to_string();
    let mut targets: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .filter(|t| t.starts_with(&prefix))
        .collect();
    targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
    for target in targets {
        let _ = std::process::Command::new("umount")
            .args(["-l", target])
            .status();
    }
    for entry in std::fs::read_dir(state).expect("state dir").flatten() {
        let path = entry.path();
        let _ = if path.is_dir() && !path.is_symlink() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
    }
}

/// What a reboot does to cgroupfs: the pod's cgroups (and its containers', under them)
/// are gone, in every hierarchy.
fn forget_cgroups(pod: &str) {
    fn walk(dir: &Path, depth: usize, pod: &str, found: &mut Vec<std::path::PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if !path.is_dir() || path.is_symlink() {
                continue;
            }
            if entry.file_name().to_string_lossy().contains(pod) {
                found.push(path);
            } else if depth > 0 {
                walk(&path, depth - 1, pod, found);
            }
        }
    }
    let mut found = Vec::new();
    walk(Path::new("/sys/fs/cgroup"), 3, pod, &mut found);
    for top in found {
        let mut dirs = vec![top.clone()];
        let mut i = 0;
        while i < dirs.len() {
            if let Ok(entries) = std::fs::read_dir(&dirs[i]) {
                dirs.extend(
                    entries
                        .flatten()
                        .map(|e| e.path())
                        .filter(|p| p.is_dir() && !p.is_symlink()),
                );
            }
            i += 1;
        }
        for dir in dirs.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

fn init_pid(status: &cri::ContainerStatusResponse) -> i32 {
    let info: serde_json::Value =
        serde_json::from_str(status.info.get("info").expect("verbose info")).expect("JSON");
    info["pid"]
        .as_i64()
        .and_then(|p| i32::try_from(p).ok())
        .expect("pid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_node_restart_everything_stops_removes_and_is_recreated() {
    node_restart("").await;
}

/// The same with a VM pod: QEMU and its helpers die with the node, and the VM's state
/// (under the state directory) is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_node_restart_a_vm_pod_stops_removes_and_is_recreated() {
    node_restart("microvm").await;
}

async fn node_restart(handler: &str) {
    let s = setup();
    let daemon = s.net.sandbox.start();
    let mut rt = pulled(&s, &daemon).await;
    let pod = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_config(&s)),
            runtime_handler: handler.to_owned(),
        })
        .await
        .expect("run pod")
        .into_inner()
        .pod_sandbox_id;
    let running = create(&mut rt, &s, &pod, container(&s, "running", "sleep 1000")).await;
    start(&mut rt, &running).await;
    let created = create(&mut rt, &s, &pod, container(&s, "created", "sleep 1000")).await;
    let mut inits = Vec::new();
    // A VM pod's processes are the guest's: its QEMU is found by the state directory.
    for id in [&running, &created]
        .into_iter()
        .filter(|_| handler.is_empty())
    {
        let status = rt
            .container_status(cri::ContainerStatusRequest {
                container_id: id.clone(),
                verbose: true,
            })
            .await
            .expect("status")
            .into_inner();
        inits.push(init_pid(&status));
    }

    // The node goes down: crispd, the monitors and the containers die, and the state
    // directory (tmpfs) comes back empty. The records under the root stay.
    daemon.kill();
    let state = s.net.sandbox.path("state");
    for pid in processes_naming(&state.display().to_string())
        .into_iter()
        .chain(inits)
    {
        sigkill(pid);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    wipe_state(&state);
    forget_cgroups(&pod);
    assert_eq!(s.net.mounts(), 0);

    let daemon = s.net.sandbox.start();
    let (mut rt, _) = daemon.clients().await;

    // Kubelet's view: every container exited (255, reason Unknown, saying why), the pod
    // NotReady.
    for id in [&running, &created] {
        let st = status(&mut rt, id).await;
        assert_eq!(
            st.state,
            i32::from(cri::ContainerState::ContainerExited),
            "{st:?}"
        );
        assert_eq!(
            (st.exit_code, st.reason.as_str()),
            (255, "Unknown"),
            "{st:?}"
        );
        assert!(st.message.contains("node restart"), "{}", st.message);
        assert!(st.finished_at > 0);
    }
    let pods = common::list_pods(&mut rt).await;
    assert_eq!(pods.len(), 1);
    assert_eq!(
        pods[0].state,
        i32::from(cri::PodSandboxState::SandboxNotready)
    );

    // Kubelet cleans up: each call succeeds (before, StopContainer ran into its 10 s
    // SIGKILL deadline and every later call failed).
    let began = Instant::now();
    for id in [&running, &created] {
        rt.stop_container(cri::StopContainerRequest {
            container_id: id.clone(),
            timeout: 30,
        })
        .await
        .expect("stop");
        rt.remove_container(cri::RemoveContainerRequest {
            container_id: id.clone(),
        })
        .await
        .expect("remove");
    }
    stop_and_remove_pod(&mut rt, &pod).await;
    eprintln!("cleanup after the restart took {:?}", began.elapsed());
    assert_eq!(s.net.allocations(), 0, "the lost pod's IP was released");

    // ... and starts the pod again, attempt 1.
    let mut config = pod_config(&s);
    if let Some(m) = config.metadata.as_mut() {
        m.attempt = 1;
    }
    let pod = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: handler.to_owned(),
        })
        .await
        .expect("run pod again")
        .into_inner()
        .pod_sandbox_id;
    let id = create(&mut rt, &s, &pod, container(&s, "running", "sleep 1000")).await;
    start(&mut rt, &id).await;
    let (code, out) = exec_out(&mut rt, &id, &["echo", "back"]).await;
    assert_eq!((code, out.trim()), (0, "back"));
    teardown(&mut rt).await;
    assert_eq!(s.net.mounts(), 0);
    assert!(processes_naming(&state.display().to_string()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_in_its_grace_period_holds_up_no_other_pod() {
    let s = setup();
    let daemon = s.net.sandbox.start();
    let (mut rt, pod) = ready(&s, &daemon).await;
    // A container that ignores SIGTERM: StopContainer waits out its whole grace period.
    let stubborn = create(
        &mut rt,
        &s,
        &pod,
        container(&s, "stubborn", "trap '' TERM; while :; do sleep 1; done"),
    )
    .await;
    start(&mut rt, &stubborn).await;
    // The trap is set once the shell runs its loop.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Usual latency of a new pod plus a container, with nothing else going on.
    let quiet = Instant::now();
    let other = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(named_pod(&s, "quiet")),
            runtime_handler: String::new(),
        })
        .await
        .expect("run pod")
        .into_inner()
        .pod_sandbox_id;
    create(&mut rt, &s, &other, container(&s, "c", "sleep 1000")).await;
    let quiet = quiet.elapsed();

    let mut stopper = rt.clone();
    let id = stubborn.clone();
    let stop = tokio::spawn(async move {
        let began = Instant::now();
        stopper
            .stop_container(cri::StopContainerRequest {
                container_id: id,
                timeout: 20,
            })
            .await
            .expect("stop");
        began.elapsed()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!stop.is_finished(), "the stop waits out its grace period");

    let busy = Instant::now();
    let third = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(named_pod(&s, "busy")),
            runtime_handler: String::new(),
        })
        .await
        .expect("run pod")
        .into_inner()
        .pod_sandbox_id;
    let c = create(&mut rt, &s, &third, container(&s, "c", "sleep 1000")).await;
    // And in the stopping container's own pod, another container.
    create(&mut rt, &s, &pod, container(&s, "neighbour", "sleep 1000")).await;
    let busy = busy.elapsed();
    // Lists answer too.
    rt.list_containers(cri::ListContainersRequest::default())
        .await
        .expect("list");
    assert!(
        !stop.is_finished(),
        "all of that happened during the grace period"
    );
    eprintln!(
        "RunPodSandbox+CreateContainer: {quiet:?} alone, {busy:?} (two creates) while another pod's container sat in a 20 s stop"
    );
    assert_eq!(
        status(&mut rt, &c).await.state,
        i32::from(cri::ContainerState::ContainerCreated)
    );
    let took = stop.await.expect("stop task");
    eprintln!("the stop took {took:?}");
    teardown(&mut rt).await;
}
