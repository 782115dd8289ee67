//! Container and pod stats for ContainerStats, PodSandboxStats, their List and Stream
//! forms, and the pod metrics.
//!
//! Sampling follows demand: a stats call first brings the cache up to date, sampling
//! every running container through its handler (cgroup CPU, memory, swap, processes) and
//! each pod's network inside its pinned netns, and each writable layer's disk use at
//! most every 10 s. A refresh less than a second old is reused (kubelet asks for
//! container and pod stats together), and concurrent calls share one refresh. A node
//! nobody asks costs nothing; kubelet's period (10 s) costs one sweep per period. CPU
//! rate (`usage_nano_cores`) comes from the last two samples, at least a second apart,
//! so it covers the time since the previous call, as cAdvisor's does. The detailed
//! figures only the pod metrics carry are read when those are asked for.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use cri_proto::v1 as cri;
use runtime_handlers::ContainerStats;

use crate::container::{ContainerRecord, State};
use crate::errors::LifecycleError;
use crate::records::to_hash_map;
use crate::state::Daemon;

mod cadvisor;

pub use cadvisor::{metric_descriptors, pod_metrics};

/// A refresh this recent serves a stats call as it is.
const FRESH: Duration = Duration::from_secs(1);
/// How long one container's sample may take in a sweep before it is skipped.
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(2);
/// Writable layers are walked again once their figures are this old.
const FS_MAX_AGE: Duration = Duration::from_secs(10);

/// A pod interface's counters, read inside the pod's network namespace.
pub use network::InterfaceCounters as Interface;

#[derive(Debug, Clone, Default)]
struct Writable {
    at: i64,
    bytes: u64,
    inodes: u64,
}

#[derive(Debug, Clone, Default)]
struct Sample {
    latest: ContainerStats,
    previous: Option<ContainerStats>,
    writable: Option<Writable>,
    /// When `latest.detail` was read (ns); 0 if never.
    detail_at: i64,
}

#[derive(Debug, Clone, Default)]
struct PodNetwork {
    at: i64,
    interfaces: Vec<Interface>,
}

/// When the cache was last refreshed, and its writable-layer figures.
#[derive(Default)]
struct Refreshed {
    at: Option<std::time::Instant>,
    fs_at: Option<std::time::Instant>,
}

/// The cache.
#[derive(Default)]
pub struct StatsCache {
    containers: Mutex<HashMap<String, Sample>>,
    /// Whole-sandbox samples of the pods whose handler has them (a VM's host cost).
    sandboxes: Mutex<HashMap<String, Sample>>,
    pods: Mutex<HashMap<String, PodNetwork>>,
    /// Held while a refresh runs, so concurrent calls wait for it instead of repeating it.
    refreshed: tokio::sync::Mutex<Refreshed>,
}

fn guard<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl StatsCache {
    /// Stores a new sample; a sample without detail keeps the detail of the last one
    /// that had it.
    fn record(&self, id: &str, stats: ContainerStats) {
        Self::record_in(&self.containers, id, stats);
    }

    fn record_in(map: &Mutex<HashMap<String, Sample>>, id: &str, mut stats: ContainerStats) {
        let mut map = guard(map);
        let entry = map.entry(id.to_owned()).or_default();
        let mut previous = std::mem::take(&mut entry.latest);
        if stats.detail.is_none() {
            stats.detail = previous.detail.take();
        } else {
            entry.detail_at = stats.timestamp;
        }
        previous.detail = None;
        // An on-demand sample right after another (pod metrics asking for fresh detail)
        // must not shrink the window the CPU rate is computed over to milliseconds.
        let apart = stats.timestamp.saturating_sub(previous.timestamp);
        if previous.timestamp > 0 && (apart >= 1_000_000_000 || entry.previous.is_none()) {
            entry.previous = Some(previous);
        }
        entry.latest = stats;
    }

    fn sample(&self, id: &str) -> Option<Sample> {
        guard(&self.containers).get(id).cloned()
    }
}

/// Brings the cache up to date for a stats call (see the module's notes).
pub(crate) async fn fresh(daemon: &Daemon) {
    let mut last = daemon.stats.refreshed.lock().await;
    if last.at.is_some_and(|t| t.elapsed() < FRESH) {
        return;
    }
    let with_fs = last.fs_at.is_none_or(|t| t.elapsed() >= FS_MAX_AGE);
    refresh(daemon, with_fs).await;
    let now = std::time::Instant::now();
    last.at = Some(now);
    if with_fs {
        last.fs_at = Some(now);
    }
}

async fn refresh(daemon: &Daemon, with_fs: bool) {
    let mut running = Vec::new();
    for c in daemon.containers.all() {
        let record = c.snapshot();
        if record.state() == State::Running {
            running.push(record);
        }
    }
    let mut measured_pods = std::collections::HashSet::new();
    for record in &running {
        let Ok(runtime) = daemon.handlers.get(&record.handler) else {
            continue;
        };
        // The detailed figures only ListPodSandboxMetrics needs are read when it asks.
        // One stuck handler (a wedged sandbox) must not hold every stats call up.
        if let Ok(Ok(stats)) = tokio::time::timeout(
            SAMPLE_TIMEOUT,
            runtime.container_stats(&record.handle(), false),
        )
        .await
        {
            daemon.stats.record(&record.id, stats);
            measured_pods.insert(record.pod_id.clone());
        }
    }
    let measured_records = daemon
        .pods
        .snapshots_where(|p| measured_pods.contains(&p.id));
    // The whole-sandbox figures of pods whose handler has them. A pod that stays keeps
    // its last samples through one that timed out (its CPU rate needs the previous one).
    for (_, pod) in &measured_records {
        let Ok(runtime) = daemon.handlers.get(&pod.handler) else {
            continue;
        };
        if let Ok(Some(stats)) =
            tokio::time::timeout(SAMPLE_TIMEOUT, runtime.sandbox_stats(&pod.id)).await
        {
            StatsCache::record_in(&daemon.stats.sandboxes, &pod.id, stats);
        }
    }
    let running_pods: std::collections::HashSet<&str> =
        running.iter().map(|r| r.pod_id.as_str()).collect();
    guard(&daemon.stats.sandboxes).retain(|id, _| running_pods.contains(id.as_str()));
    let store = daemon.images.store();
    let ids: Vec<String> = running.iter().map(|r| r.id.clone()).collect();
    // The network of every pod with a running container, from its pinned namespace.
    let pods: Vec<(String, Option<std::path::PathBuf>)> = measured_records
        .into_iter()
        .filter(|(_, p)| p.ready)
        .map(|(_, p)| (p.id.clone(), p.netns()))
        .collect();
    let measured = tokio::task::spawn_blocking(move || {
        let writable: Vec<(String, Writable)> = if with_fs {
            ids.iter()
                .map(|id| {
                    let (bytes, inodes, _) = store.snapshots.writable_usage(id);
                    let at = crate::pod::now_ns();
                    (id.clone(), Writable { at, bytes, inodes })
                })
                .collect()
        } else {
            Vec::new()
        };
        let (ids, pins): (Vec<String>, Vec<_>) = pods.into_iter().unzip();
        let at = crate::pod::now_ns();
        let networks: Vec<(String, PodNetwork)> = ids
            .into_iter()
            .zip(network::interface_counters(pins))
            .filter_map(|(pod, counters)| {
                let interfaces = counters.ok()?;
                Some((pod, PodNetwork { at, interfaces }))
            })
            .collect();
        (writable, networks)
    })
    .await;
    let Ok((writable, networks)) = measured else {
        return;
    };
    let live: std::collections::HashSet<&str> = running.iter().map(|r| r.id.as_str()).collect();
    {
        let mut map = guard(&daemon.stats.containers);
        map.retain(|id, _| live.contains(id.as_str()));
        for (id, w) in writable {
            if let Some(entry) = map.get_mut(&id) {
                entry.writable = Some(w);
            }
        }
    }
    let mut pods = guard(&daemon.stats.pods);
    pods.clear();
    pods.extend(networks);
}

/// A pod's network counters: from the cache while under `FRESH` old, else read now.
async fn pod_network(daemon: &Daemon, pod_id: &str) -> Option<PodNetwork> {
    if let Some(net) = guard(&daemon.stats.pods).get(pod_id).cloned()
        && crate::pod::now_ns().saturating_sub(net.at) < FRESH.as_nanos() as i64
    {
        return Some(net);
    }
    let pod = daemon.pods.get(pod_id)?.snapshot();
    if !pod.ready {
        return None;
    }
    let pin = pod.netns();
    let interfaces = tokio::task::spawn_blocking(move || network::interface_counters(vec![pin]))
        .await
        .ok()?
        .pop()?
        .ok()?;
    let net = PodNetwork {
        interfaces,
        at: crate::pod::now_ns(),
    };
    guard(&daemon.stats.pods).insert(pod_id.to_owned(), net.clone());
    Some(net)
}

fn u64_value(value: u64) -> Option<cri::UInt64Value> {
    Some(cri::UInt64Value { value })
}

/// CPU cores used between the last two samples, in nanocores.
fn nano_cores(sample: &Sample) -> u64 {
    let Some(prev) = &sample.previous else {
        return 0;
    };
    let dt = sample.latest.timestamp.saturating_sub(prev.timestamp);
    if dt <= 0 {
        return 0;
    }
    let used = sample.latest.cpu_usage_ns.saturating_sub(prev.cpu_usage_ns);
    u64::try_from(u128::from(used) * 1_000_000_000 / dt.unsigned_abs() as u128).unwrap_or(0)
}

/// The CPU figures of a sample: cumulative time and the rate since the previous one.
fn cpu_usage(sample: &Sample) -> cri::CpuUsage {
    let s = &sample.latest;
    cri::CpuUsage {
        timestamp: s.timestamp,
        usage_core_nano_seconds: u64_value(s.cpu_usage_ns),
        usage_nano_cores: u64_value(nano_cores(sample)),
        psi: None,
    }
}

/// The memory figures of a sample.
fn memory_usage(s: &ContainerStats) -> cri::MemoryUsage {
    cri::MemoryUsage {
        timestamp: s.timestamp,
        working_set_bytes: u64_value(s.working_set),
        available_bytes: None,
        usage_bytes: u64_value(s.memory_usage),
        rss_bytes: u64_value(s.rss),
        page_faults: u64_value(s.page_faults),
        major_page_faults: u64_value(s.major_page_faults),
        psi: None,
    }
}

fn container_stats(
    daemon: &Daemon,
    record: &ContainerRecord,
    sample: Option<&Sample>,
) -> cri::ContainerStats {
    let attributes = Some(cri::ContainerAttributes {
        id: record.id.clone(),
        metadata: Some(cri::ContainerMetadata {
            name: record.name.clone(),
            attempt: record.attempt,
        }),
        labels: to_hash_map(&record.labels),
        annotations: to_hash_map(&record.annotations),
    });
    let Some(sample) = sample else {
        return cri::ContainerStats {
            attributes,
            ..Default::default()
        };
    };
    let s = &sample.latest;
    let writable = sample.writable.clone().unwrap_or(Writable {
        at: s.timestamp,
        ..Writable::default()
    });
    cri::ContainerStats {
        attributes,
        cpu: Some(cpu_usage(sample)),
        memory: Some(memory_usage(s)),
        writable_layer: Some(cri::FilesystemUsage {
            timestamp: writable.at,
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: daemon.images.root().display().to_string(),
            }),
            used_bytes: u64_value(writable.bytes),
            inodes_used: u64_value(writable.inodes),
        }),
        swap: Some(cri::SwapUsage {
            timestamp: s.timestamp,
            swap_available_bytes: None,
            swap_usage_bytes: u64_value(s.swap),
        }),
        io: None,
    }
}

/// The sample of one running container, taken now unless the cache has one under
/// `FRESH` old (single-object calls sample only their object).
async fn current_sample_of(daemon: &Daemon, record: &ContainerRecord) -> Option<Sample> {
    if record.state() != State::Running {
        return None;
    }
    match daemon.stats.sample(&record.id) {
        Some(s)
            if crate::pod::now_ns().saturating_sub(s.latest.timestamp)
                < FRESH.as_nanos() as i64 =>
        {
            Some(s)
        }
        _ => sample_now(daemon, record).await,
    }
}

/// The sample of a running container, taken now if the cache has none yet.
async fn sample_of(daemon: &Daemon, record: &ContainerRecord) -> Option<Sample> {
    if record.state() != State::Running {
        return None;
    }
    if let Some(s) = daemon.stats.sample(&record.id) {
        return Some(s);
    }
    sample_now(daemon, record).await
}

/// The sample of a running container with its detailed figures at most `DETAIL_MAX_AGE`
/// old: they are read on demand (kubelet asks for pod metrics at its scrape interval, and
/// many nodes never), not by every refresh.
async fn detailed_sample_of(daemon: &Daemon, record: &ContainerRecord) -> Option<Sample> {
    if record.state() != State::Running {
        return None;
    }
    match daemon.stats.sample(&record.id) {
        Some(s)
            if s.latest.detail.is_some()
                && crate::pod::now_ns().saturating_sub(s.detail_at) < DETAIL_MAX_AGE_NS =>
        {
            Some(s)
        }
        _ => sample_now(daemon, record).await,
    }
}

/// How old the detailed figures may be when pod metrics are asked for.
const DETAIL_MAX_AGE_NS: i64 = 10_000_000_000;

/// Samples a running container now, with its detail and, if never measured, its
/// writable layer.
async fn sample_now(daemon: &Daemon, record: &ContainerRecord) -> Option<Sample> {
    let runtime = daemon.handlers.get(&record.handler).ok()?;
    let stats = runtime.container_stats(&record.handle(), true).await.ok()?;
    daemon.stats.record(&record.id, stats);
    if daemon
        .stats
        .sample(&record.id)
        .is_some_and(|s| s.writable.is_some())
    {
        return daemon.stats.sample(&record.id);
    }
    // The writable layer of a container this young is small: measure it now too.
    let store = daemon.images.store();
    let id = record.id.clone();
    if let Ok((bytes, inodes, _)) =
        tokio::task::spawn_blocking(move || store.snapshots.writable_usage(&id)).await
        && let Some(entry) = guard(&daemon.stats.containers).get_mut(&record.id)
    {
        entry.writable = Some(Writable {
            at: crate::pod::now_ns(),
            bytes,
            inodes,
        });
    }
    daemon.stats.sample(&record.id)
}

/// ContainerStats of one container; NotFound for an unknown ID.
pub async fn container(daemon: &Daemon, id: &str) -> Result<cri::ContainerStats, LifecycleError> {
    let entry = daemon
        .containers
        .get(id)
        .ok_or_else(|| LifecycleError::not_found(format!("container {id} not found")))?;
    let record = entry.snapshot();
    let sample = current_sample_of(daemon, &record).await;
    Ok(container_stats(daemon, &record, sample.as_ref()))
}

fn labels_match(
    labels: &std::collections::BTreeMap<String, String>,
    selector: &HashMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// ListContainerStats: running containers matching the filter.
pub async fn list_containers(
    daemon: &Daemon,
    filter: Option<cri::ContainerStatsFilter>,
) -> Vec<cri::ContainerStats> {
    fresh(daemon).await;
    let filter = filter.unwrap_or_default();
    let mut out = Vec::new();
    for c in daemon.containers.all() {
        let record = c.snapshot();
        if (!filter.id.is_empty() && !record.id.starts_with(&filter.id))
            || (!filter.pod_sandbox_id.is_empty()
                && !record.pod_id.starts_with(&filter.pod_sandbox_id))
            || !labels_match(&record.labels, &filter.label_selector)
        {
            continue;
        }
        if let Some(sample) = sample_of(daemon, &record).await {
            out.push(container_stats(daemon, &record, Some(&sample)));
        }
    }
    out
}

fn pod_stats(
    pod: &crate::pod::SandboxRecord,
    network: Option<PodNetwork>,
    containers: Vec<cri::ContainerStats>,
    processes: u64,
    sandbox_wide: bool,
    sandbox: Option<&Sample>,
) -> cri::PodSandboxStats {
    let sum = |f: &dyn Fn(&cri::ContainerStats) -> Option<u64>| -> u64 {
        containers.iter().filter_map(f).sum()
    };
    // Figures each container reports for the whole sandbox count once.
    let most = |f: &dyn Fn(&cri::ContainerStats) -> Option<u64>| -> u64 {
        containers.iter().filter_map(f).max().unwrap_or(0)
    };
    let at = containers
        .iter()
        .filter_map(|c| c.cpu.as_ref().map(|u| u.timestamp))
        .max()
        .unwrap_or_else(crate::pod::now_ns);
    let cpu = cri::CpuUsage {
        timestamp: at,
        usage_core_nano_seconds: u64_value(sum(&|c| {
            c.cpu
                .as_ref()?
                .usage_core_nano_seconds
                .as_ref()
                .map(|v| v.value)
        })),
        usage_nano_cores: u64_value(sum(&|c| {
            c.cpu.as_ref()?.usage_nano_cores.as_ref().map(|v| v.value)
        })),
        psi: None,
    };
    let mem = |f: &dyn Fn(&cri::MemoryUsage) -> Option<u64>| {
        let of = |c: &cri::ContainerStats| c.memory.as_ref().and_then(f);
        u64_value(if sandbox_wide { most(&of) } else { sum(&of) })
    };
    let memory = cri::MemoryUsage {
        timestamp: at,
        working_set_bytes: mem(&|m| m.working_set_bytes.as_ref().map(|v| v.value)),
        available_bytes: None,
        usage_bytes: mem(&|m| m.usage_bytes.as_ref().map(|v| v.value)),
        rss_bytes: mem(&|m| m.rss_bytes.as_ref().map(|v| v.value)),
        page_faults: mem(&|m| m.page_faults.as_ref().map(|v| v.value)),
        major_page_faults: mem(&|m| m.major_page_faults.as_ref().map(|v| v.value)),
        psi: None,
    };
    // What the whole sandbox costs the host, where the handler knows it, is the pod's.
    let (cpu, memory) = match sandbox {
        Some(sample) => (cpu_usage(sample), memory_usage(&sample.latest)),
        None => (cpu, memory),
    };
    let network = network.map(|n| {
        let to_cri = |i: &Interface| cri::NetworkInterfaceUsage {
            name: i.name.clone(),
            rx_bytes: u64_value(i.rx_bytes),
            rx_errors: u64_value(i.rx_errors),
            tx_bytes: u64_value(i.tx_bytes),
            tx_errors: u64_value(i.tx_errors),
        };
        cri::NetworkUsage {
            timestamp: n.at,
            default_interface: n
                .interfaces
                .iter()
                .find(|i| i.name == "eth0")
                .or_else(|| n.interfaces.first())
                .map(to_cri),
            interfaces: n.interfaces.iter().map(to_cri).collect(),
        }
    });
    cri::PodSandboxStats {
        attributes: Some(cri::PodSandboxAttributes {
            id: pod.id.clone(),
            metadata: Some(cri::PodSandboxMetadata {
                name: pod.name.clone(),
                uid: pod.uid.clone(),
                namespace: pod.namespace.clone(),
                attempt: pod.attempt,
            }),
            labels: to_hash_map(&pod.labels),
            annotations: to_hash_map(&pod.annotations),
        }),
        linux: Some(cri::LinuxPodSandboxStats {
            cpu: Some(cpu),
            memory: Some(memory),
            network,
            process: Some(cri::ProcessUsage {
                timestamp: at,
                process_count: u64_value(processes),
            }),
            containers,
            io: None,
        }),
        windows: None,
    }
}

/// The pod's stats from its running containers' samples.
async fn pod(daemon: &Daemon, pod: &crate::pod::SandboxRecord) -> cri::PodSandboxStats {
    // After a sweep the cache's counters; for a single-pod call, read now if stale.
    let network = pod_network(daemon, &pod.id).await;
    let mut containers = Vec::new();
    let mut processes = 0;
    let mut sandbox_wide = false;
    for c in daemon.containers.all() {
        let record = c.snapshot();
        if record.pod_id != pod.id {
            continue;
        }
        if let Some(sample) = current_sample_of(daemon, &record).await {
            sandbox_wide |= sample.latest.sandbox_wide;
            processes = if sample.latest.sandbox_wide {
                processes.max(sample.latest.pids)
            } else {
                processes + sample.latest.pids
            };
            containers.push(container_stats(daemon, &record, Some(&sample)));
        }
    }
    let sandbox = sandbox_sample_of(daemon, pod, !containers.is_empty()).await;
    pod_stats(
        pod,
        network,
        containers,
        processes,
        sandbox_wide,
        sandbox.as_ref(),
    )
}

/// The whole-sandbox sample of a pod with running containers, taken now unless the
/// cache has one under `FRESH` old; `None` if its handler has none.
async fn sandbox_sample_of(
    daemon: &Daemon,
    pod: &crate::pod::SandboxRecord,
    running: bool,
) -> Option<Sample> {
    if !running {
        return None;
    }
    let cached = guard(&daemon.stats.sandboxes).get(&pod.id).cloned();
    if let Some(s) = cached
        && crate::pod::now_ns().saturating_sub(s.latest.timestamp) < FRESH.as_nanos() as i64
    {
        return Some(s);
    }
    let runtime = daemon.handlers.get(&pod.handler).ok()?;
    let stats = tokio::time::timeout(SAMPLE_TIMEOUT, runtime.sandbox_stats(&pod.id))
        .await
        .ok()??;
    StatsCache::record_in(&daemon.stats.sandboxes, &pod.id, stats);
    guard(&daemon.stats.sandboxes).get(&pod.id).cloned()
}

/// PodSandboxStats of one pod; NotFound for an unknown ID.
pub async fn pod_sandbox(
    daemon: &Daemon,
    id: &str,
) -> Result<cri::PodSandboxStats, LifecycleError> {
    let entry = daemon
        .pods
        .get(id)
        .ok_or_else(|| LifecycleError::not_found(format!("pod sandbox {id} not found")))?;
    let record = entry.snapshot();
    Ok(pod(daemon, &record).await)
}

/// ListPodSandboxStats: ready pods matching the filter.
pub async fn list_pod_sandboxes(
    daemon: &Daemon,
    filter: Option<cri::PodSandboxStatsFilter>,
) -> Vec<cri::PodSandboxStats> {
    fresh(daemon).await;
    let filter = filter.unwrap_or_default();
    let mut out = Vec::new();
    for p in daemon.pods.all() {
        let record = p.snapshot();
        if !record.ready
            || (!filter.id.is_empty() && !record.id.starts_with(&filter.id))
            || !labels_match(&record.labels, &filter.label_selector)
        {
            continue;
        }
        out.push(pod(daemon, &record).await);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_rate_comes_from_the_last_two_samples() {
        let at = |t: i64, cpu: u64| ContainerStats {
            timestamp: t,
            cpu_usage_ns: cpu,
            ..ContainerStats::default()
        };
        let sample = Sample {
            latest: at(3_000_000_000, 1_500_000_000),
            previous: Some(at(1_000_000_000, 500_000_000)),
            writable: None,
            detail_at: 0,
        };
        // 1 s of CPU over 2 s: half a core.
        assert_eq!(nano_cores(&sample), 500_000_000);
        let first = Sample {
            previous: None,
            ..sample
        };
        assert_eq!(nano_cores(&first), 0);
    }
}
