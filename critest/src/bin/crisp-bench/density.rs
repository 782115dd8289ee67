//! `crisp-bench density`: a node's worth of kubelet-style pods (PID mode CONTAINER, one
//! busybox `sleep` each) on crisp and on containerd, one after the other, with kubelet's
//! call pattern: what starting them all takes, what the relist calls cost with them all
//! running, and what the daemons cost in memory and CPU, idle and under the relist.

use std::time::{Duration, Instant};

use cri_proto::v1 as cri;
use cri_proto::v1::runtime_service_client::RuntimeServiceClient;
use prost::Message as _;
use tonic::transport::Channel;

use crate::{
    Daemon, Error, helper_rss, median, rss_kib, start_containerd_with, tempdir, unmount_under,
};

#[derive(Debug)]
struct Figures {
    start_all: f64,
    daemon_rss: u64,
    helpers_rss: u64,
    list_containers: f64,
    list_none: f64,
    list_bytes: usize,
    list_decode: f64,
    list_pods: f64,
    stats_sweep: f64,
    list_stats: f64,
    pod_stats: f64,
    idle_cpu: f64,
    idle_helpers_cpu: f64,
    relist_cpu: f64,
    stop_pod: f64,
}

/// CPU time (user + system) of process `pid` so far, seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which may hold spaces: utime and stime are the
    // 14th and 15th fields, the 12th and 13th after ") ".
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum())
        .unwrap_or(0);
    // SAFETY: sysconf takes no pointers.
    let hz = unsafe { libc_sysconf(SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / hz
}

const SC_CLK_TCK: i32 = 2;

unsafe extern "C" {
    #[link_name = "sysconf"]
    fn libc_sysconf(name: i32) -> i64;
}

/// Pids of the processes whose command line names one of `markers`.
fn pids_naming(markers: &[&str]) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let text = String::from_utf8_lossy(&cmdline);
            markers.iter().any(|m| text.contains(m)).then_some(pid)
        })
        .collect()
}

/// Calls whose median a latency row reports (sub-millisecond figures are noisy here).
const CALLS: usize = 100;

/// Median latency of `CALLS` calls of `call`, ms, less `overhead`.
async fn timed<F, Fut>(overhead: f64, mut call: F) -> Result<f64, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), tonic::Status>>,
{
    let mut times = Vec::new();
    for _ in 0..CALLS {
        let t = Instant::now();
        call().await?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok((median(&mut times) - overhead).max(0.0))
}

/// kubelet's relist for `duration`: pods and containers every second, stats every 10 s.
async fn relist(rt: &RuntimeServiceClient<Channel>, duration: Duration) -> Result<(), Error> {
    let began = Instant::now();
    let mut tick = 0u64;
    while began.elapsed() < duration {
        let mut rt = rt.clone();
        rt.list_pod_sandbox(cri::ListPodSandboxRequest::default())
            .await?;
        rt.list_containers(cri::ListContainersRequest::default())
            .await?;
        if tick.is_multiple_of(10) {
            rt.list_container_stats(cri::ListContainerStatsRequest::default())
                .await?;
            rt.list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest::default())
                .await?;
        }
        tick += 1;
        let next = Duration::from_secs(tick);
        if let Some(wait) = next.checked_sub(began.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
    Ok(())
}

/// The cgroup the pods' cgroups go under (kubelet's `/kubepods/...` here), removed after.
const CGROUP_PARENT: &str = "crisp-bench-density";

/// Removes the pods' parent cgroups in every hierarchy, deepest first (kubelet's job on a
/// node).
fn remove_parent_cgroups() {
    for root in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .map(std::path::PathBuf::from)
        .chain(
            std::fs::read_dir("/sys/fs/cgroup")
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path()),
        )
    {
        let parent = root.join(CGROUP_PARENT);
        let Ok(pods) = std::fs::read_dir(&parent) else {
            continue;
        };
        for pod in pods.flatten().filter(|e| e.path().is_dir()) {
            let _ = std::fs::remove_dir(pod.path());
        }
        let _ = std::fs::remove_dir(&parent);
    }
}

/// Stops and removes every pod `daemon` still has (after a measurement that failed
/// midway), so no shim, container or network outlives the run.
pub(crate) async fn remove_all_pods(daemon: &Daemon) {
    let Ok(mut clients) = crate::serving(daemon).await else {
        return;
    };
    let rt = &mut clients.runtime;
    let Ok(pods) = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
    else {
        return;
    };
    for pod in pods.into_inner().items {
        let _ = rt
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: pod.id.clone(),
            })
            .await;
        let _ = rt
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: pod.id,
            })
            .await;
    }
}

/// Runs `pods` pods of one `sleep` container each, measures, then removes them all.
async fn measure(
    daemon: &Daemon,
    image: &str,
    pods: usize,
    helpers: &[&str],
    pause: Option<&str>,
    seconds: u64,
) -> Result<Figures, Error> {
    let mut clients = crate::serving(daemon).await?;
    let images: Vec<&str> = std::iter::once(image).chain(pause).collect();
    crate::containers::pull_all(&mut clients, &images).await?;
    let mut rt = clients.runtime.clone();
    let began = Instant::now();
    let mut ids = Vec::new();
    for i in 0..pods {
        // As kubelet sends it: the pod's cgroup under a parent of its own.
        let mut config = crate::pods::pod(i);
        if let Some(linux) = config.linux.as_mut() {
            linux.cgroup_parent = format!("/{CGROUP_PARENT}/pod{i}");
        }
        let pod = rt
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            })
            .await?
            .into_inner()
            .pod_sandbox_id;
        let id = rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(cri::ContainerConfig {
                    linux: Some(cri::LinuxContainerConfig {
                        security_context: Some(cri::LinuxContainerSecurityContext {
                            namespace_options: config
                                .linux
                                .as_ref()
                                .and_then(|l| l.security_context.as_ref())
                                .and_then(|s| s.namespace_options.clone()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..crate::container_config("sleep", image, &["sleep", "100000"])
                }),
                sandbox_config: Some(config),
            })
            .await?
            .into_inner()
            .container_id;
        rt.start_container(cri::StartContainerRequest { container_id: id })
            .await?;
        ids.push(pod);
    }
    let start_all = began.elapsed().as_secs_f64();
    // Let the last starts settle (containerd samples stats in the background).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let daemon_pid = daemon.child.id();
    let daemon_rss = rss_kib(daemon_pid);
    let helpers_rss = helper_rss(helpers);

    let overhead = {
        let mut times = Vec::new();
        for _ in 0..CALLS {
            let t = Instant::now();
            rt.version(cri::VersionRequest::default()).await?;
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        median(&mut times)
    };
    let lister = rt.clone();
    let list_containers = timed(overhead, || {
        let mut rt = lister.clone();
        async move {
            rt.list_containers(cri::ListContainersRequest::default())
                .await
                .map(|_| ())
        }
    })
    .await?;
    // What the client alone spends decoding that answer: part of every figure above,
    // and the same work whichever daemon answered.
    let answer = lister
        .clone()
        .list_containers(cri::ListContainersRequest::default())
        .await?
        .into_inner()
        .encode_to_vec();
    let list_bytes = answer.len();
    let mut decodes = Vec::new();
    for _ in 0..CALLS {
        let t = Instant::now();
        let decoded = cri::ListContainersResponse::decode(answer.as_slice())?;
        decodes.push(t.elapsed().as_secs_f64() * 1000.0);
        std::hint::black_box(decoded);
    }
    let list_decode = median(&mut decodes);
    // The same walk with a filter no container matches: what the server's own walk
    // costs, without building, sending and decoding the answer.
    let list_none = timed(overhead, || {
        let mut rt = lister.clone();
        async move {
            rt.list_containers(cri::ListContainersRequest {
                filter: Some(cri::ContainerFilter {
                    label_selector: [("no-such-label".to_owned(), "x".to_owned())].into(),
                    ..Default::default()
                }),
            })
            .await
            .map(|_| ())
        }
    })
    .await?;
    let list_pods = timed(overhead, || {
        let mut rt = lister.clone();
        async move {
            rt.list_pod_sandbox(cri::ListPodSandboxRequest::default())
                .await
                .map(|_| ())
        }
    })
    .await?;
    let list_stats = timed(overhead, || {
        let mut rt = lister.clone();
        async move {
            rt.list_container_stats(cri::ListContainerStatsRequest::default())
                .await
                .map(|_| ())
        }
    })
    .await?;
    let pod_stats = timed(overhead, || {
        let mut rt = lister.clone();
        async move {
            rt.list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest::default())
                .await
                .map(|_| ())
        }
    })
    .await?;

    // ListContainerStats a kubelet period apart (more than a second): each call sweeps
    // every container (crisp reuses a sweep under a second old).
    let mut sweeps = Vec::new();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let t = Instant::now();
        rt.list_container_stats(cri::ListContainerStatsRequest::default())
            .await?;
        sweeps.push(t.elapsed().as_secs_f64() * 1000.0 - overhead);
    }
    let stats_sweep = median(&mut sweeps).max(0.0);

    // A quiet stretch: no calls at all.
    let helper_pids = pids_naming(helpers);
    let helpers_cpu = || helper_pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>();
    let (d0, h0) = (cpu_seconds(daemon_pid), helpers_cpu());
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let idle_cpu = (cpu_seconds(daemon_pid) - d0) / seconds as f64 * 100.0;
    let idle_helpers_cpu = (helpers_cpu() - h0) / seconds as f64 * 100.0;
    // kubelet's relist for as long.
    let d0 = cpu_seconds(daemon_pid);
    relist(&rt, Duration::from_secs(seconds)).await?;
    let relist_cpu = (cpu_seconds(daemon_pid) - d0) / seconds as f64 * 100.0;

    let mut stops = Vec::new();
    for pod in ids {
        let t = Instant::now();
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await?;
        stops.push(t.elapsed().as_secs_f64() * 1000.0);
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await?;
    }
    Ok(Figures {
        start_all,
        daemon_rss,
        helpers_rss,
        list_containers,
        list_none,
        list_bytes,
        list_decode,
        list_pods,
        stats_sweep,
        list_stats,
        pod_stats,
        idle_cpu,
        idle_helpers_cpu,
        relist_cpu,
        stop_pod: median(&mut stops),
    })
}

pub async fn run(pods: usize, seconds: u64) -> Result<(), Error> {
    let work = tempdir()?;
    let registry = critest::fixture::Registry::start(&work.join("registry"), None)?;
    let (image, pause_ref) = crate::containers::push_busybox_and_pause(&registry)?;

    let crisp_dir = work.join("crisp");
    let crisp = crate::pods::start_crispd_on_bridge(&crisp_dir, "crbench4")?;
    let c = measure(&crisp, &image, pods, &["crisp-monitor"], None, seconds).await;
    eprintln!("density, crisp: {c:?}");
    remove_all_pods(&crisp).await;
    drop(crisp);
    remove_parent_cgroups();
    unmount_under(&crisp_dir);
    let _ = std::process::Command::new("ip")
        .args(["link", "del", "crbench4"])
        .status();
    let c = c?;

    let ctd_dir = work.join("containerd");
    let conf = crate::pods::conflist(&ctd_dir, "crbench5")?;
    let extra = crate::containerd_cri_config(&pause_ref, &conf);
    let ctd = start_containerd_with(&ctd_dir, &registry.addr, &extra)?;
    let d = measure(
        &ctd,
        &image,
        pods,
        &["containerd-shim", "sleep\u{0}2147483647"],
        Some(&pause_ref),
        seconds,
    )
    .await;
    eprintln!("density, containerd: {d:?}");
    remove_all_pods(&ctd).await;
    drop(ctd);
    remove_parent_cgroups();
    unmount_under(&ctd_dir);
    let _ = std::process::Command::new("ip")
        .args(["link", "del", "crbench5"])
        .status();
    let _ = std::fs::remove_dir_all(&work);
    let d = d?;

    crate::print_table(
        "density",
        &format!(
            "{pods} pods of one busybox `sleep` (PID mode CONTAINER), runc; latencies are medians of {CALLS} calls less a Version call's; CPU over {seconds} s"
        ),
    );
    let row = crate::print_row;
    row(
        &format!("start all {pods} (RunPodSandbox+CreateContainer+StartContainer)"),
        c.start_all,
        d.start_all,
        "s",
    );
    row(
        "daemon RSS, loaded",
        c.daemon_rss as f64 / 1024.0,
        d.daemon_rss as f64 / 1024.0,
        "MiB",
    );
    row(
        "per-pod helpers, total RSS",
        c.helpers_rss as f64 / 1024.0,
        d.helpers_rss as f64 / 1024.0,
        "MiB",
    );
    row(
        "ListContainers",
        c.list_containers * 1000.0,
        d.list_containers * 1000.0,
        "µs",
    );
    row(
        "ListContainers, of which the client decoding the answer",
        c.list_decode * 1000.0,
        d.list_decode * 1000.0,
        "µs",
    );
    row(
        "ListContainers, the answer's size",
        c.list_bytes as f64 / 1024.0,
        d.list_bytes as f64 / 1024.0,
        "KiB",
    );
    row(
        "ListContainers, a label filter matching none",
        c.list_none * 1000.0,
        d.list_none * 1000.0,
        "µs",
    );
    row(
        "ListPodSandbox",
        c.list_pods * 1000.0,
        d.list_pods * 1000.0,
        "µs",
    );
    row(
        "ListContainerStats, calls 1.1 s apart (each one sweeps)",
        c.stats_sweep,
        d.stats_sweep,
        "ms",
    );
    row(
        "ListContainerStats, back to back",
        c.list_stats * 1000.0,
        d.list_stats * 1000.0,
        "µs",
    );
    row("ListPodSandboxStats", c.pod_stats, d.pod_stats, "ms");
    row(
        "daemon CPU, idle (no calls)",
        c.idle_cpu,
        d.idle_cpu,
        "% of a core",
    );
    row(
        "per-pod helpers CPU, idle",
        c.idle_helpers_cpu,
        d.idle_helpers_cpu,
        "% of a core",
    );
    row(
        "daemon CPU, kubelet's relist (1 s) and stats (10 s)",
        c.relist_cpu,
        d.relist_cpu,
        "% of a core",
    );
    row("StopPodSandbox", c.stop_pod, d.stop_pod, "ms");
    Ok(())
}
