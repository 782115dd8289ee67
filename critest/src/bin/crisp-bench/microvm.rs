//! `crisp-bench microvm`: VM pods under crisp's microVM handler beside runc pods, in one
//! run: crisp's own runc handler and containerd's CRI plugin (runc). For each kind, N
//! sequential pods of one busybox container: RunPodSandbox, CreateContainer+
//! StartContainer, the time until the container's first output is in its log, ExecSync,
//! and stop+remove as kubelet deletes a pod (StopContainer, RemoveContainer,
//! StopPodSandbox, RemovePodSandbox); the host memory of each pod's processes (PSS, so
//! shared pages count once). Then five pods of each kind started at once, and a series
//! of consecutive VM boots, none of which may hang. Kata is not packaged here, so runc
//! pods are the baseline: the ratios say what a VM costs over a plain container pod.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cri_proto::v1 as cri;
use critest::fixture::Registry;
use tonic::transport::Channel;

use crate::{Daemon, Error, median, start_containerd_with, tempdir, unmount_under};

type Runtime = cri::runtime_service_client::RuntimeServiceClient<Channel>;

/// What runs a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// crisp's microvm handler.
    Vm,
    /// crisp's default handler (runc).
    Runc,
    /// containerd's CRI plugin (runc).
    Containerd,
}

impl Kind {
    fn handler(self) -> &'static str {
        match self {
            Kind::Vm => "microvm",
            Kind::Runc | Kind::Containerd => "",
        }
    }
}

/// One run's figures: times in ms, memory in KiB.
#[derive(Debug, Default, Clone)]
struct Run {
    run_pod: f64,
    create_start: f64,
    to_output: f64,
    /// ExecSync `true`, median of 10.
    exec: f64,
    /// StopContainer, RemoveContainer, StopPodSandbox, RemovePodSandbox.
    stop_remove: f64,
    /// The pod's host processes, summed.
    rss: u64,
    pss: u64,
}

/// RSS and PSS of one process, KiB.
fn rss_pss(pid: i32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("Rss:"), field("Pss:"))
}

/// The processes whose command line names one of `markers`, and all their descendants.
fn process_trees(markers: &[&str]) -> Vec<i32> {
    let mut parent = HashMap::new();
    let mut roots = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if markers
            .iter()
            .any(|m| String::from_utf8_lossy(&cmdline).contains(m))
        {
            roots.push(pid);
        }
        // The parent is the fourth field, after the command in parentheses.
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        if let Some(ppid) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<i32>().ok())
        {
            parent.insert(pid, ppid);
        }
    }
    let mut found: HashSet<i32> = roots.into_iter().collect();
    loop {
        let more: Vec<i32> = parent
            .iter()
            .filter(|(pid, ppid)| found.contains(ppid) && !found.contains(pid))
            .map(|(pid, _)| *pid)
            .collect();
        if more.is_empty() {
            break;
        }
        found.extend(more);
    }
    found.into_iter().collect()
}

/// RSS of process `pid` in mappings of the guest's RAM (QEMU's `memory-backend-memfd`,
/// which vhost-user backends map too), KiB: pages the process touched that are the
/// guest's memory, already counted in QEMU's RSS.
fn guest_ram_rss(pid: i32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut in_guest_ram = false;
    let mut total = 0;
    for line in text.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            in_guest_ram = line.contains("/memfd:memory-backend-memfd");
        } else if in_guest_ram && let Some(v) = line.strip_prefix("Rss:") {
            total += v
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    total
}

/// The VM record of pod `id` under crispd's state `dir`.
fn record(state: &Path, id: &str) -> serde_json::Value {
    let short: String = id.chars().take(16).collect();
    let path = state
        .join("runtimes/microvm")
        .join(short)
        .join("state.json");
    std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Memory of a VM pod's host processes: (name, RSS, PSS, guest RAM in the RSS), KiB.
type Memory = Vec<(String, u64, u64, u64)>;

/// The host processes of pod `pod` (container `container`) of `kind`: for a VM pod, the
/// helpers its record names (QEMU, vhost-user-vsock, virtiofsd); for a runc pod, the
/// processes naming the pod or container (crisp's monitors and pod init, containerd's
/// shim) and their descendants (pause, the container).
fn pod_memory(kind: Kind, state: Option<&Path>, pod: &str, container: &str) -> Memory {
    match (kind, state) {
        (Kind::Vm, Some(state)) => record(state, pod)["helpers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|h| {
                let pid = h["pid"].as_i64().unwrap_or(0) as i32;
                let (rss, pss) = rss_pss(pid);
                let name = h["name"].as_str().unwrap_or("?").to_owned();
                (name, rss, pss, guest_ram_rss(pid))
            })
            .collect(),
        _ => process_trees(&[pod, container])
            .into_iter()
            .map(|pid| {
                let (rss, pss) = rss_pss(pid);
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .unwrap_or_default()
                    .trim()
                    .to_owned();
                (comm, rss, pss, 0)
            })
            .collect(),
    }
}

fn totals(memory: &Memory) -> (u64, u64) {
    memory
        .iter()
        .fold((0, 0), |(r, p), (_, rss, pss, _)| (r + rss, p + pss))
}

async fn wait_log(path: &Path, needle: &str, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    loop {
        if std::fs::read_to_string(path).is_ok_and(|t| t.contains(needle)) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("{} never showed {needle:?}", path.display()));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn pod_config(i: usize, logs: &Path) -> cri::PodSandboxConfig {
    let mut pod = crate::pods::pod(i);
    pod.log_directory = logs.join(format!("pod-{i}")).display().to_string();
    pod
}

/// A container that says it is up, then waits, and exits at once on SIGTERM (as PID 1
/// of its namespace it would otherwise ignore it and sit out the grace period).
fn container(image: &str) -> cri::ContainerConfig {
    cri::ContainerConfig {
        log_path: "c.log".into(),
        ..crate::container_config(
            "c",
            image,
            &["sh", "-c", "trap 'exit 0' TERM; echo up; sleep 1000 & wait"],
        )
    }
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// A pod and its container, started, until the container's first output is in its log.
/// Returns the pod, the container and the times to RunPodSandbox, to create+start and
/// to the output.
async fn start_pod(
    mut rt: Runtime,
    kind: Kind,
    image: String,
    i: usize,
    logs: PathBuf,
) -> Result<(String, String, [f64; 3]), String> {
    let config = pod_config(i, &logs);
    let err = |e: tonic::Status| format!("pod {i}: {}: {}", e.code(), e.message());
    let t = Instant::now();
    let pod = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: kind.handler().to_owned(),
        })
        .await
        .map_err(err)?
        .into_inner()
        .pod_sandbox_id;
    let run_pod = ms(t);
    let t1 = Instant::now();
    let id = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container(&image)),
            sandbox_config: Some(config.clone()),
        })
        .await
        .map_err(err)?
        .into_inner()
        .container_id;
    rt.start_container(cri::StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .map_err(err)?;
    let create_start = ms(t1);
    wait_log(
        &PathBuf::from(&config.log_directory).join("c.log"),
        "up",
        Duration::from_secs(60),
    )
    .await?;
    Ok((pod, id, [run_pod, create_start, ms(t1)]))
}

/// Deletes a pod as kubelet does: its container stopped (10 s grace) and removed, then
/// the pod stopped and removed.
async fn delete_pod(mut rt: Runtime, pod: String, container: String) -> Result<(), String> {
    let err = |e: tonic::Status| format!("deleting {pod}: {}: {}", e.code(), e.message());
    rt.stop_container(cri::StopContainerRequest {
        container_id: container.clone(),
        timeout: 10,
    })
    .await
    .map_err(err)?;
    rt.remove_container(cri::RemoveContainerRequest {
        container_id: container,
    })
    .await
    .map_err(err)?;
    remove_pod(&mut rt, &pod).await.map_err(err)
}

/// StopPodSandbox, then RemovePodSandbox.
async fn remove_pod(rt: &mut Runtime, pod: &str) -> Result<(), tonic::Status> {
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.to_owned(),
    })
    .await?;
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod.to_owned(),
    })
    .await?;
    Ok(())
}

async fn one_run(
    daemon: &Daemon,
    kind: Kind,
    image: &str,
    i: usize,
    logs: &Path,
    state: Option<&Path>,
) -> Result<(Run, Memory, serde_json::Value), Error> {
    let clients = crate::serving(daemon).await?;
    let mut rt = clients.runtime;
    let (pod, id, [run_pod, create_start, to_output]) =
        start_pod(rt.clone(), kind, image.to_owned(), i, logs.to_owned()).await?;
    let mut execs = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        rt.exec_sync(cri::ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["true".into()],
            timeout: 10,
        })
        .await?;
        execs.push(ms(t));
    }
    let exec = median(&mut execs);
    // Let the pod settle (the container's first page-ins) before reading memory.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let memory = pod_memory(kind, state, &pod, &id);
    let (rss, pss) = totals(&memory);
    let rec = state.map(|s| record(s, &pod)).unwrap_or_default();
    let t = Instant::now();
    delete_pod(rt, pod, id).await?;
    let stop_remove = ms(t);
    Ok((
        Run {
            run_pod,
            create_start,
            to_output,
            exec,
            stop_remove,
            rss,
            pss,
        },
        memory,
        rec,
    ))
}

/// `n` pods of `kind` started at once.
#[derive(Debug, Default, Clone)]
struct Burst {
    /// From the first RunPodSandbox until every container's output is in its log, ms.
    ready: f64,
    /// Each pod's time from RunPodSandbox to its container's output, ms.
    per_pod: Vec<f64>,
    /// The pods' host processes together, KiB.
    rss: u64,
    pss: u64,
    /// Deleting all of them at once, ms.
    delete: f64,
}

async fn at_once(
    daemon: &Daemon,
    kind: Kind,
    image: &str,
    n: usize,
    first: usize,
    logs: &Path,
    state: Option<&Path>,
) -> Result<Burst, Error> {
    let rt = crate::serving(daemon).await?.runtime;
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in first..first + n {
        let (rt, image, logs) = (rt.clone(), image.to_owned(), logs.to_owned());
        set.spawn(async move {
            let t = Instant::now();
            let started = start_pod(rt, kind, image, i, logs).await;
            started.map(|(pod, id, _)| (pod, id, ms(t)))
        });
    }
    let mut pods = Vec::new();
    let mut per_pod = Vec::new();
    let mut failed = None;
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(Ok((pod, id, took))) => {
                pods.push((pod, id));
                per_pod.push(took);
            }
            Ok(Err(e)) => failed = Some(e),
            Err(e) => failed = Some(e.to_string()),
        }
    }
    let ready = ms(t);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (mut rss, mut pss) = (0, 0);
    for (pod, id) in &pods {
        let (r, p) = totals(&pod_memory(kind, state, pod, id));
        rss += r;
        pss += p;
    }
    let t = Instant::now();
    let mut deletes = tokio::task::JoinSet::new();
    for (pod, id) in pods {
        deletes.spawn(delete_pod(rt.clone(), pod, id));
    }
    while let Some(joined) = deletes.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failed = Some(e),
            Err(e) => failed = Some(e.to_string()),
        }
    }
    let delete = ms(t);
    if let Some(e) = failed {
        return Err(format!("{n} {kind:?} pods at once: {e}").into());
    }
    Ok(Burst {
        ready,
        per_pod,
        rss,
        pss,
        delete,
    })
}

fn stats(values: &[f64]) -> (f64, f64, f64) {
    let mut v = values.to_vec();
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(0.0, f64::max);
    (median(&mut v), min, max)
}

/// Consecutive boots (RunPodSandbox, then stop and remove): their RunPodSandbox times
/// and the failures or hangs.
async fn boots(daemon: &Daemon, n: usize, logs: &Path) -> (Vec<f64>, Vec<String>) {
    let mut times = Vec::new();
    let mut failures = Vec::new();
    for b in 0..n {
        let t = Instant::now();
        let result = tokio::time::timeout(Duration::from_secs(60), async {
            let mut rt = crate::serving(daemon).await?.runtime;
            let pod = rt
                .run_pod_sandbox(cri::RunPodSandboxRequest {
                    config: Some(pod_config(1000 + b, logs)),
                    runtime_handler: "microvm".into(),
                })
                .await?
                .into_inner()
                .pod_sandbox_id;
            let took = ms(t);
            remove_pod(&mut rt, &pod).await?;
            Ok::<_, Error>(took)
        })
        .await;
        match result {
            Ok(Ok(took)) => times.push(took),
            Ok(Err(e)) => failures.push(format!("boot {b}: {e}")),
            Err(_) => failures.push(format!("boot {b}: hung (no answer in 60 s)")),
        }
    }
    (times, failures)
}

/// The pods of one kind: sequential runs, and `AT_ONCE` at once.
struct Figures {
    runs: Vec<Run>,
    burst: Burst,
}

/// Pods started at once.
const AT_ONCE: usize = 5;

/// The benchmark.
pub(crate) async fn run(runs: usize, boot_count: usize) -> Result<(), Error> {
    let work = tempdir()?;
    let registry = Registry::start(&work.join("registry"), None)?;
    let (image, pause_ref) = crate::containers::push_busybox_and_pause(&registry)?;
    let logs = work.join("logs");

    // crisp: microVM pods and runc pods, alternating so that drift hits both alike.
    let crisp_dir = work.join("crisp");
    let crisp = crate::pods::start_crispd_on_bridge(&crisp_dir, "crbench4")?;
    let mut clients = crate::serving(&crisp).await?;
    crate::containers::pull_all(&mut clients, &[&image]).await?;
    let state = crisp_dir.join("state");
    let (mut vm_runs, mut runc_runs) = (Vec::new(), Vec::new());
    let mut memory: Vec<Memory> = Vec::new();
    let mut splits = Vec::new();
    let measured = async {
        for i in 0..runs {
            let (r, m, rec) = one_run(&crisp, Kind::Vm, &image, i, &logs, Some(&state)).await?;
            eprintln!("microvm run {i}: {r:?} {m:?}");
            vm_runs.push(r);
            memory.push(m);
            splits.push((
                rec["boot_ms"].as_f64().unwrap_or(0.0),
                rec["guest_uptime_ms"].as_f64().unwrap_or(0.0),
                rec["guest_init_ms"].as_f64().unwrap_or(0.0),
            ));
            let (r, m, _) = one_run(&crisp, Kind::Runc, &image, 100 + i, &logs, None).await?;
            eprintln!("crisp runc run {i}: {r:?} {m:?}");
            runc_runs.push(r);
        }
        let vm_burst = at_once(&crisp, Kind::Vm, &image, AT_ONCE, 200, &logs, Some(&state)).await?;
        eprintln!("microvm at once: {vm_burst:?}");
        let runc_burst = at_once(&crisp, Kind::Runc, &image, AT_ONCE, 300, &logs, None).await?;
        eprintln!("crisp runc at once: {runc_burst:?}");
        let (boot_times, failures) = boots(&crisp, boot_count, &logs).await;
        Ok::<_, Error>((vm_burst, runc_burst, boot_times, failures))
    }
    .await;
    // VMs outlive crispd: a run that failed midway must not leave its pods running.
    crate::density::remove_all_pods(&crisp).await;
    drop(crisp);
    unmount_under(&crisp_dir);
    let _ = std::process::Command::new("ip")
        .args(["link", "del", "crbench4"])
        .status();
    let (vm_burst, runc_burst, boot_times, failures) = measured?;

    // containerd, runc pods.
    let ctd_dir = work.join("containerd");
    let conf = crate::pods::conflist(&ctd_dir, "crbench5")?;
    let extra = crate::containerd_cri_config(&pause_ref, &conf);
    let ctd = start_containerd_with(&ctd_dir, &registry.addr, &extra)?;
    let mut clients = crate::serving(&ctd).await?;
    crate::containers::pull_all(&mut clients, &[&image, &pause_ref]).await?;
    let mut ctd_runs = Vec::new();
    let measured = async {
        for i in 0..runs {
            let (r, m, _) = one_run(&ctd, Kind::Containerd, &image, 400 + i, &logs, None).await?;
            eprintln!("containerd run {i}: {r:?} {m:?}");
            ctd_runs.push(r);
        }
        at_once(&ctd, Kind::Containerd, &image, AT_ONCE, 500, &logs, None).await
    }
    .await;
    crate::density::remove_all_pods(&ctd).await;
    drop(ctd);
    unmount_under(&ctd_dir);
    let _ = std::process::Command::new("ip")
        .args(["link", "del", "crbench5"])
        .status();
    let ctd_burst = measured?;
    eprintln!("containerd at once: {ctd_burst:?}");
    let _ = std::fs::remove_dir_all(&work);

    let accel = if std::path::Path::new("/sys/module/kvm_pvm").exists()
        || !std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .split_whitespace()
            .any(|f| f == "vmx" || f == "svm")
    {
        "TCG"
    } else {
        "KVM"
    };
    let vm = Figures {
        runs: vm_runs,
        burst: vm_burst,
    };
    let runc = Figures {
        runs: runc_runs,
        burst: runc_burst,
    };
    let ctd = Figures {
        runs: ctd_runs,
        burst: ctd_burst,
    };
    report(&vm, &runc, &ctd, runs, accel);
    report_vm(&memory, &splits, runs);
    let (med, lo, hi) = stats(&boot_times);
    println!(
        "{boot_count} consecutive VM boots (RunPodSandbox, then stop and remove): {} ok, {} failed or hung; RunPodSandbox median {med:.0} ms (min {lo:.0}, max {hi:.0})",
        boot_times.len(),
        failures.len()
    );
    for f in &failures {
        println!("- {f}");
    }
    Ok(())
}

/// The header of a table with a column per kind and the VM's ratios to both.
fn table_header() {
    println!(
        "| metric | crisp microvm | crisp runc | containerd runc | microvm / crisp runc | microvm / containerd |"
    );
    println!("|---|---|---|---|---|---|");
}

/// The comparison: one row per figure, a column per kind, the VM's ratios to both.
fn report(vm: &Figures, runc: &Figures, ctd: &Figures, runs: usize, accel: &str) {
    println!("# crisp-bench microvm");
    println!(
        "machine: {} cores; {runs} sequential pods of each kind, one busybox container each; a VM pod is {accel}, 1 vCPU, 256 MiB, machine microvm; runc pods use PID mode CONTAINER; median (min-max); host memory is the PSS of the pod's host processes",
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    table_header();
    let row = |name: &str, f: &dyn Fn(&Run) -> f64, precision: usize| {
        let col = |fig: &Figures| stats(&fig.runs.iter().map(f).collect::<Vec<_>>());
        let ((v, lo, hi), (r, rlo, rhi), (c, clo, chi)) = (col(vm), col(runc), col(ctd));
        let p = precision;
        println!(
            "| {name} | {v:.p$} ({lo:.p$}-{hi:.p$}) | {r:.p$} ({rlo:.p$}-{rhi:.p$}) | {c:.p$} ({clo:.p$}-{chi:.p$}) | {:.2} | {:.2} |",
            v / r.max(f64::MIN_POSITIVE),
            v / c.max(f64::MIN_POSITIVE)
        );
    };
    row("RunPodSandbox (ms)", &|r| r.run_pod, 0);
    row(
        "CreateContainer+StartContainer (ms)",
        &|r| r.create_start,
        0,
    );
    row(
        "create to first output in the log (ms)",
        &|r| r.to_output,
        0,
    );
    row("ExecSync `true`, median of 10 (ms)", &|r| r.exec, 1);
    row(
        "stop+remove: StopContainer, RemoveContainer, StopPodSandbox, RemovePodSandbox (ms)",
        &|r| r.stop_remove,
        0,
    );
    row(
        "host memory per pod, PSS (MiB)",
        &|r| r.pss as f64 / 1024.0,
        1,
    );
    row(
        "host memory per pod, RSS (MiB)",
        &|r| r.rss as f64 / 1024.0,
        1,
    );
    println!();
    println!(
        "{AT_ONCE} pods of each kind started at once (RunPodSandbox, CreateContainer, StartContainer each, all concurrently):"
    );
    table_header();
    let row = |name: &str, f: &dyn Fn(&Burst) -> f64, precision: usize| {
        let (v, r, c) = (f(&vm.burst), f(&runc.burst), f(&ctd.burst));
        let p = precision;
        println!(
            "| {name} | {v:.p$} | {r:.p$} | {c:.p$} | {:.2} | {:.2} |",
            v / r.max(f64::MIN_POSITIVE),
            v / c.max(f64::MIN_POSITIVE)
        );
    };
    row(
        "until every container's output is in its log (ms)",
        &|b| b.ready,
        0,
    );
    row(
        "one pod's RunPodSandbox to output, median (ms)",
        &|b| median(&mut b.per_pod.clone()),
        0,
    );
    row(
        "the five pods' host memory, PSS (MiB)",
        &|b| b.pss as f64 / 1024.0,
        1,
    );
    row(
        "the five pods' host memory, RSS (MiB)",
        &|b| b.rss as f64 / 1024.0,
        1,
    );
    row("deleting all five at once (ms)", &|b| b.delete, 0);
    println!();
}

/// The VM's own figures: the boot's split and where its host memory goes.
fn report_vm(memory: &[Memory], splits: &[(f64, f64, f64)], n: usize) {
    println!("microVM boot, split (median of {n}, ms):");
    println!(
        "| QEMU start to agent answering (host) | guest kernel start to agent answering | of which PID 1 bring-up (mounts, modules, share) |"
    );
    println!("|---|---|---|");
    let col = |k: fn(&(f64, f64, f64)) -> f64| {
        let mut v: Vec<f64> = splits.iter().map(k).collect();
        median(&mut v)
    };
    println!(
        "| {:.0} | {:.0} | {:.0} |",
        col(|s| s.0),
        col(|s| s.1),
        col(|s| s.2)
    );
    println!();
    println!("host memory per VM pod (median of {n}, MiB):");
    println!("| process | RSS | PSS | of the RSS, the guest's RAM (shared with QEMU) |");
    println!("|---|---|---|---|");
    let mib = |k: &u64| *k as f64 / 1024.0;
    for name in ["qemu", "vsock", "virtiofsd"] {
        let (mut rss, mut pss, mut ram) = (Vec::new(), Vec::new(), Vec::new());
        for m in memory {
            if let Some((_, r, p, g)) = m.iter().find(|(n, ..)| n == name) {
                rss.push(mib(r));
                pss.push(mib(p));
                ram.push(mib(g));
            }
        }
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} |",
            median(&mut rss),
            median(&mut pss),
            median(&mut ram)
        );
    }
    let (mut helpers_rss, mut helpers_pss, mut helpers_ram) = (Vec::new(), Vec::new(), Vec::new());
    for m in memory {
        let (r, p, g) = m
            .iter()
            .filter(|(n, ..)| n != "qemu")
            .fold((0, 0, 0), |(a, b, c), (_, r, p, g)| (a + r, b + p, c + g));
        helpers_rss.push(mib(&r));
        helpers_pss.push(mib(&p));
        helpers_ram.push(mib(&g));
    }
    println!(
        "| helpers other than QEMU, together | {:.1} | {:.1} | {:.1} |",
        median(&mut helpers_rss),
        median(&mut helpers_pss),
        median(&mut helpers_ram)
    );
    println!();
}
