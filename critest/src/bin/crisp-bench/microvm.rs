//! `crisp-bench microvm`: VM pods under crisp's microVM handler. Each run: RunPodSandbox,
//! CreateContainer+StartContainer, the time until the container's first output is in its
//! log (the process runs), and the host memory of the pod's QEMU and of each helper (RSS
//! and PSS); then a series of consecutive boots, none of which may hang. containerd has
//! no VM runtime here (Kata is not packaged), so its runc pods are the baseline the
//! ratios are against: what a VM costs over a plain container pod.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cri_proto::v1 as cri;
use critest::fixture::Registry;

use crate::{Daemon, Error, median, start_containerd_with, tempdir, unmount_under};

/// One run's figures, ms.
#[derive(Debug, Default, Clone)]
struct Run {
    run_pod: f64,
    create_start: f64,
    to_output: f64,
    /// ExecSync `true`, median of 10.
    exec: f64,
    /// The guest agent's RSS (PID 1 of the guest), KiB; 0 for a non-VM pod.
    agent_rss: u64,
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

async fn wait_log(path: &Path, needle: &str, within: Duration) -> Result<(), Error> {
    let deadline = Instant::now() + within;
    loop {
        if std::fs::read_to_string(path).is_ok_and(|t| t.contains(needle)) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("{} never showed {needle:?}", path.display()).into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn pod_config(i: usize, logs: &Path) -> cri::PodSandboxConfig {
    let mut pod = crate::pods::pod(i);
    pod.log_directory = logs.join(format!("pod-{i}")).display().to_string();
    pod
}

fn container(image: &str) -> cri::ContainerConfig {
    cri::ContainerConfig {
        log_path: "c.log".into(),
        ..crate::container_config("c", image, &["sh", "-c", "echo up; sleep 1000"])
    }
}

/// Memory of a VM pod's host processes: (name, RSS KiB, PSS KiB).
type Memory = Vec<(String, u64, u64, u64)>;

async fn one_run(
    daemon: &Daemon,
    handler: &str,
    image: &str,
    i: usize,
    logs: &Path,
    state: Option<&Path>,
) -> Result<(Run, Memory, serde_json::Value), Error> {
    let mut clients = crate::serving(daemon).await?;
    let rt = &mut clients.runtime;
    let config = pod_config(i, logs);
    let t = Instant::now();
    let pod = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.to_owned(),
        })
        .await?
        .into_inner()
        .pod_sandbox_id;
    let run_pod = t.elapsed().as_secs_f64() * 1000.0;
    let t = Instant::now();
    let id = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container(image)),
            sandbox_config: Some(config.clone()),
        })
        .await?
        .into_inner()
        .container_id;
    rt.start_container(cri::StartContainerRequest {
        container_id: id.clone(),
    })
    .await?;
    let create_start = t.elapsed().as_secs_f64() * 1000.0;
    wait_log(
        &PathBuf::from(&config.log_directory).join("c.log"),
        "up",
        Duration::from_secs(30),
    )
    .await?;
    let to_output = t.elapsed().as_secs_f64() * 1000.0;
    let mut execs = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        rt.exec_sync(cri::ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["true".into()],
            timeout: 10,
        })
        .await?;
        execs.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let exec = median(&mut execs);
    let mut agent_rss = 0;
    if state.is_some() {
        // No PID namespace per container in the guest yet: /proc/1 is the agent.
        let out = rt
            .exec_sync(cri::ExecSyncRequest {
                container_id: id.clone(),
                cmd: vec!["grep".into(), "VmRSS".into(), "/proc/1/status".into()],
                timeout: 10,
            })
            .await?
            .into_inner();
        agent_rss = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
    }
    let mut memory = Vec::new();
    let mut rec = serde_json::Value::Null;
    if let Some(state) = state {
        rec = record(state, &pod);
        // Let the guest settle (the container's first page-ins) before reading memory.
        tokio::time::sleep(Duration::from_millis(500)).await;
        for h in rec["helpers"].as_array().into_iter().flatten() {
            let pid = h["pid"].as_i64().unwrap_or(0) as i32;
            let (rss, pss) = rss_pss(pid);
            memory.push((
                h["name"].as_str().unwrap_or("?").to_owned(),
                rss,
                pss,
                guest_ram_rss(pid),
            ));
        }
    }
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await?;
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await?;
    Ok((
        Run {
            run_pod,
            create_start,
            to_output,
            exec,
            agent_rss,
        },
        memory,
        rec,
    ))
}

fn stats(values: &[f64]) -> (f64, f64, f64) {
    let mut v = values.to_vec();
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(0.0, f64::max);
    (median(&mut v), min, max)
}

/// The benchmark.
pub(crate) async fn run(runs: usize, boots: usize) -> Result<(), Error> {
    let work = tempdir()?;
    let registry = Registry::start(&work.join("registry"), None)?;
    let (image, pause_ref) = crate::containers::push_busybox_and_pause(&registry)?;
    let logs = work.join("logs");

    // crisp, microVM pods.
    let crisp_dir = work.join("crisp");
    let crisp = crate::pods::start_crispd_on_bridge(&crisp_dir, "crbench4")?;
    let mut clients = crate::serving(&crisp).await?;
    crate::containers::pull_all(&mut clients, &[&image]).await?;
    let state = crisp_dir.join("state");
    let mut vm_runs = Vec::new();
    let mut memory: Vec<Memory> = Vec::new();
    let mut splits = Vec::new();
    for i in 0..runs {
        let (r, m, rec) = one_run(&crisp, "microvm", &image, i, &logs, Some(&state)).await?;
        eprintln!("microvm run {i}: {r:?} {m:?}");
        vm_runs.push(r);
        memory.push(m);
        splits.push((
            rec["boot_ms"].as_f64().unwrap_or(0.0),
            rec["guest_uptime_ms"].as_f64().unwrap_or(0.0),
            rec["guest_init_ms"].as_f64().unwrap_or(0.0),
        ));
    }
    let mut boot_times = Vec::new();
    let mut failures = Vec::new();
    for b in 0..boots {
        let t = Instant::now();
        let result = tokio::time::timeout(Duration::from_secs(60), async {
            let mut clients = crate::serving(&crisp).await?;
            let pod = clients
                .runtime
                .run_pod_sandbox(cri::RunPodSandboxRequest {
                    config: Some(pod_config(1000 + b, &logs)),
                    runtime_handler: "microvm".into(),
                })
                .await?
                .into_inner()
                .pod_sandbox_id;
            let took = t.elapsed();
            clients
                .runtime
                .stop_pod_sandbox(cri::StopPodSandboxRequest {
                    pod_sandbox_id: pod.clone(),
                })
                .await?;
            clients
                .runtime
                .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                    pod_sandbox_id: pod,
                })
                .await?;
            Ok::<_, Error>(took)
        })
        .await;
        match result {
            Ok(Ok(took)) => boot_times.push(took.as_secs_f64() * 1000.0),
            Ok(Err(e)) => failures.push(format!("boot {b}: {e}")),
            Err(_) => failures.push(format!("boot {b}: hung (no answer in 60 s)")),
        }
    }
    drop(crisp);
    unmount_under(&crisp_dir);
    let _ = std::process::Command::new("ip")
        .args(["link", "del", "crbench4"])
        .status();

    // containerd, runc pods: the baseline.
    let ctd_dir = work.join("containerd");
    let conf = crate::pods::conflist(&ctd_dir, "crbench5")?;
    let extra = crate::containerd_cri_config(&pause_ref, &conf);
    let ctd = start_containerd_with(&ctd_dir, &registry.addr, &extra)?;
    let mut clients = crate::serving(&ctd).await?;
    crate::containers::pull_all(&mut clients, &[&image, &pause_ref]).await?;
    let mut ctd_runs = Vec::new();
    for i in 0..runs {
        let (r, _, _) = one_run(&ctd, "", &image, 100 + i, &logs, None).await?;
        ctd_runs.push(r);
    }
    drop(ctd);
    unmount_under(&ctd_dir);
    let _ = std::process::Command::new("ip")
        .args(["link", "del", "crbench5"])
        .status();
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
    crate::print_table(
        "microvm",
        &format!(
            "{runs} runs: a VM pod ({accel}, 1 vCPU, 256 MiB, machine microvm) with one busybox container, crisp's microvm handler vs containerd's runc pods; median (min-max)"
        ),
    );
    let pick = |runs: &[Run], f: fn(&Run) -> f64| runs.iter().map(f).collect::<Vec<_>>();
    for (name, f) in [
        ("RunPodSandbox", (|r: &Run| r.run_pod) as fn(&Run) -> f64),
        ("CreateContainer+StartContainer", |r: &Run| r.create_start),
        ("create to first output in the log", |r: &Run| r.to_output),
        ("ExecSync `true`, median of 10", |r: &Run| r.exec),
    ] {
        let (vm, lo, hi) = stats(&pick(&vm_runs, f));
        let (base, _, _) = stats(&pick(&ctd_runs, f));
        println!(
            "| {name} (ms) | {vm:.0} ({lo:.0}-{hi:.0}) | {base:.0} | {:.2} |",
            vm / base.max(f64::MIN_POSITIVE)
        );
    }
    println!();
    println!("microVM boot, split (median of {runs}, ms):");
    println!(
        "| QEMU start to agent answering (host) | guest kernel start to agent answering | of which PID 1 bring-up (mounts, 11 modules, share) |"
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
    println!("host memory per VM pod (median of {runs}, MiB):");
    println!("| process | RSS | PSS | of the RSS, the guest's RAM (shared with QEMU) |");
    println!("|---|---|---|---|");
    let mib = |k: &u64| *k as f64 / 1024.0;
    for name in ["qemu", "vsock", "virtiofsd"] {
        let (mut rss, mut pss, mut ram) = (Vec::new(), Vec::new(), Vec::new());
        for m in &memory {
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
    for m in &memory {
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
    let mut agent: Vec<f64> = vm_runs
        .iter()
        .map(|r| r.agent_rss as f64 / 1024.0)
        .collect();
    println!(
        "| (inside the guest) crisp-agent, PID 1 | {:.1} | | |",
        median(&mut agent)
    );
    println!();
    let (med, lo, hi) = stats(&boot_times);
    println!(
        "{boots} consecutive boots (RunPodSandbox, then stop and remove): {} ok, {} failed or hung; RunPodSandbox median {med:.0} ms (min {lo:.0}, max {hi:.0})",
        boot_times.len(),
        failures.len()
    );
    for f in &failures {
        println!("- {f}");
    }
    Ok(())
}
