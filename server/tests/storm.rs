//! kill -9 of crispd at random moments while clients create, start, stop and remove pods
//! and containers: afterwards the lists show exactly what runs, and removing what they
//! show leaves nothing on the host. Alone in its test binary: it counts the host's pod
//! init processes before and after.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::workload::*;
use cri_proto::v1 as cri;
use cri_proto::v1::runtime_service_client::RuntimeServiceClient;

const KILLS: usize = 12;
const WORKERS: usize = 4;

/// `crisp-monitor --pause` processes on this host (pod PID-namespace inits).
fn pod_inits() -> usize {
    common::processes_naming(&[b"crisp-monitor\0--pause"]).len()
}

/// The container IDs of the monitors whose bundle lies under `state`.
fn monitored_ids(state: &Path) -> BTreeSet<String> {
    let state = state.display().to_string();
    common::processes_naming(&[b"crisp-monitor", b"\0--id\0", state.as_bytes()])
        .into_iter()
        .filter_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let at = args.iter().position(|a| a == "--id")?;
            args.get(at + 1).cloned()
        })
        .collect()
}

/// The containers runc has under its root for this daemon.
fn runc_ids(root: &Path) -> BTreeSet<String> {
    let out = std::process::Command::new("runc")
        .arg("--root")
        .arg(root)
        .args(["list", "-q"])
        .output()
        .expect("runc list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .collect()
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// The directory of cgroup `parent` (a cgroupfs path) in every mounted hierarchy.
fn cgroup_dirs(parent: &str) -> Vec<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("mounts");
    mounts
        .lines()
        .map(|line| line.split(' ').collect::<Vec<_>>())
        .filter(|f| f.len() > 2 && (f[2] == "cgroup" || f[2] == "cgroup2"))
        .map(|f| Path::new(f[1]).join(parent.trim_start_matches('/')))
        .collect()
}

/// Every cgroup directory left under `parent`, in every hierarchy.
fn cgroups_under(parent: &str) -> Vec<PathBuf> {
    let mut left: Vec<PathBuf> = cgroup_dirs(parent)
        .iter()
        .flat_map(|dir| entries(dir))
        .filter(|p| p.is_dir())
        .collect();
    left.sort();
    left.dedup();
    left
}

fn deadline<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(Duration::from_secs(15));
    request
}

/// One kubelet-like cycle; every third pod is left running, so the end has live pods to
/// account for. Errors (crispd died under the call) end the cycle: whatever it made is
/// for the final cleanup to find through the lists.
async fn cycle(
    rt: &mut RuntimeServiceClient<tonic::transport::Channel>,
    s: &Setup,
    cgroup_parent: &str,
    name: &str,
    keep: bool,
) -> Result<(), tonic::Status> {
    let mut config = named_pod(s, name);
    config.linux = Some(cri::LinuxPodSandboxConfig {
        cgroup_parent: cgroup_parent.to_owned(),
        ..Default::default()
    });
    let pod = rt
        .run_pod_sandbox(deadline(cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        }))
        .await?
        .into_inner()
        .pod_sandbox_id;
    let id = rt
        .create_container(deadline(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container(s, "c", "sleep 1000")),
            sandbox_config: Some(config),
        }))
        .await?
        .into_inner()
        .container_id;
    rt.start_container(deadline(cri::StartContainerRequest {
        container_id: id.clone(),
    }))
    .await?;
    if keep {
        return Ok(());
    }
    rt.stop_container(deadline(cri::StopContainerRequest {
        container_id: id.clone(),
        timeout: 0,
    }))
    .await?;
    rt.remove_container(deadline(cri::RemoveContainerRequest { container_id: id }))
        .await?;
    rt.stop_pod_sandbox(deadline(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    }))
    .await?;
    rt.remove_pod_sandbox(deadline(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    }))
    .await?;
    Ok(())
}

/// A small xorshift: the kill moments vary from run to run, and the seed is printed so
/// a failing run can be read against its log.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_churn_leaves_lists_true_and_nothing_behind() {
    let s = Arc::new(setup());
    let state = s.net.sandbox.path("state");
    let root = s.net.sandbox.path("root");
    let runc_root = state.join("runtimes").join("runc");
    let cgroup_parent = format!("/crisp-storm-{}", std::process::id());
    let inits_before = pod_inits();

    let mut daemon = Some(s.net.sandbox.start());
    pulled(&s, daemon.as_ref().expect("daemon")).await;

    let stop = Arc::new(AtomicBool::new(false));
    let cycles = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let (s, stop, cycles, failed) = (
            Arc::clone(&s),
            Arc::clone(&stop),
            Arc::clone(&cycles),
            Arc::clone(&failed),
        );
        let socket = s.net.sandbox.socket();
        let cgroup_parent = cgroup_parent.clone();
        workers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let Ok(channel) = critest::connect(&socket).await else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let mut rt = RuntimeServiceClient::new(channel);
                n += 1;
                let name = format!("storm-{w}-{n}");
                match cycle(&mut rt, &s, &cgroup_parent, &name, n % 3 == 0).await {
                    Ok(()) => cycles.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }

    let mut seed = u64::from(std::process::id()) << 20
        | u64::from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(1),
        )
        | 1;
    eprintln!("storm seed {seed}");
    let began = Instant::now();
    for _ in 0..KILLS {
        let pause = 100 + next(&mut seed) % 600;
        tokio::time::sleep(Duration::from_millis(pause)).await;
        if let Some(d) = daemon.take() {
            d.kill();
        }
        daemon = Some(tokio::task::block_in_place(|| s.net.sandbox.start()));
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        tokio::time::timeout(Duration::from_secs(60), worker)
            .await
            .expect("a worker stuck after the storm")
            .expect("worker");
    }
    eprintln!(
        "{KILLS} kills in {:?}: {} cycles completed, {} cut short",
        began.elapsed(),
        cycles.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    let daemon = daemon.expect("daemon");
    let (mut rt, _) = daemon.clients().await;

    // The lists against the host: every monitor and every runc container is a listed
    // container, every running listed container has its monitor, and every ready pod its
    // init.
    let containers = common::list_containers(&mut rt).await;
    let listed: BTreeSet<String> = containers.iter().map(|c| c.id.clone()).collect();
    let running: BTreeSet<String> = containers
        .iter()
        .filter(|c| c.state == i32::from(cri::ContainerState::ContainerRunning))
        .map(|c| c.id.clone())
        .collect();
    let monitored = monitored_ids(&state);
    let unlisted: Vec<&String> = monitored.difference(&listed).collect();
    assert!(
        unlisted.is_empty(),
        "monitors of unlisted containers: {unlisted:?}"
    );
    let at_runc = runc_ids(&runc_root);
    let unlisted: Vec<&String> = at_runc.difference(&listed).collect();
    assert!(
        unlisted.is_empty(),
        "runc containers not listed: {unlisted:?}"
    );
    let unmonitored: Vec<&String> = running.difference(&monitored).collect();
    assert!(
        unmonitored.is_empty(),
        "running but without a monitor: {unmonitored:?}"
    );
    let pods = common::list_pods(&mut rt).await;
    let ready = pods
        .iter()
        .filter(|p| p.state == i32::from(cri::PodSandboxState::SandboxReady))
        .count();
    let inits = pod_inits() - inits_before;
    if inits != ready {
        // Which pod each init belongs to, by the PID namespace it holds.
        use std::os::unix::fs::MetadataExt;
        let mut report = Vec::new();
        for pid in common::processes_naming(&[b"crisp-monitor\0--pause"]) {
            let ino = std::fs::metadata(format!("/proc/{pid}/ns/pid"))
                .map(|m| m.ino())
                .ok();
            let owner = entries(&state.join("pods"))
                .into_iter()
                .find(|dir| std::fs::metadata(dir.join("ns/pid")).map(|m| m.ino()).ok() == ino);
            let pod = owner.as_ref().and_then(|d| {
                let id = d.file_name()?.to_string_lossy().into_owned();
                pods.iter().find(|p| p.id == id).map(|p| (id, p.state))
            });
            report.push(format!("init {pid}: dir {owner:?} pod {pod:?}"));
        }
        panic!(
            "{inits} pod inits against {ready} ready pods:\n{}",
            report.join("\n")
        );
    }
    eprintln!(
        "after the storm: {} pods ({ready} ready), {} containers ({} running)",
        pods.len(),
        listed.len(),
        running.len()
    );

    // kubelet removes everything it sees.
    for pod in &pods {
        stop_and_remove_pod(&mut rt, &pod.id).await;
    }
    for c in &containers {
        rt.remove_container(cri::RemoveContainerRequest {
            container_id: c.id.clone(),
        })
        .await
        .expect("remove container");
    }
    assert!(common::list_pods(&mut rt).await.is_empty());

    // Nothing is left.
    assert!(monitored_ids(&state).is_empty(), "monitors left");
    assert_eq!(pod_inits(), inits_before, "pod inits left");
    assert!(runc_ids(&runc_root).is_empty(), "runc containers left");
    assert_eq!(s.net.mounts(), 0, "mounts left under the state dir");
    assert_eq!(
        entries(&state.join("containers")),
        Vec::<PathBuf>::new(),
        "bundles left"
    );
    assert_eq!(
        entries(&state.join("pods")),
        Vec::<PathBuf>::new(),
        "pod dirs left"
    );
    assert_eq!(
        entries(&root.join("containers")),
        Vec::<PathBuf>::new(),
        "writable layers left"
    );
    assert_eq!(
        entries(&root.join("containers-meta")),
        Vec::<PathBuf>::new(),
        "container records left"
    );
    assert_eq!(s.net.allocations(), 0, "IP allocations left");
    assert_eq!(s.net.veths(), 0, "veths left");
    let cgroups = cgroups_under(&cgroup_parent);
    for dir in cgroup_dirs(&cgroup_parent) {
        let _ = std::fs::remove_dir(dir);
    }
    assert!(cgroups.is_empty(), "cgroups left: {cgroups:?}");
}
