//! ListMetricDescriptors and ListPodSandboxMetrics: the cAdvisor-named metrics kubelet
//! asks for when it takes pod and container metrics from the runtime, from the same cache
//! as the stats.

use cri_proto::v1 as cri;

use super::{guard, sample_of, u64_value};
use crate::state::Daemon;

/// The cAdvisor-named metrics ListPodSandboxMetrics reports: name, help, type, and
/// whether it is per interface (pod level) rather than per container.
const METRICS: &[(&str, &str, cri::MetricType, bool)] = &[
    (
        "container_cpu_usage_seconds_total",
        "Cumulative cpu time consumed in seconds.",
        cri::MetricType::Counter,
        false,
    ),
    (
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed.",
        cri::MetricType::Gauge,
        false,
    ),
    (
        "container_memory_working_set_bytes",
        "Current working set in bytes.",
        cri::MetricType::Gauge,
        false,
    ),
    (
        "container_memory_rss",
        "Size of RSS in bytes.",
        cri::MetricType::Gauge,
        false,
    ),
    (
        "container_memory_swap",
        "Container swap usage in bytes.",
        cri::MetricType::Gauge,
        false,
    ),
    (
        "container_memory_failures_total",
        "Cumulative count of memory allocation failures (page faults).",
        cri::MetricType::Counter,
        false,
    ),
    (
        "container_processes",
        "Number of processes running inside the container.",
        cri::MetricType::Gauge,
        false,
    ),
    (
        "container_network_receive_bytes_total",
        "Cumulative count of bytes received.",
        cri::MetricType::Counter,
        true,
    ),
    (
        "container_network_receive_errors_total",
        "Cumulative count of errors encountered while receiving.",
        cri::MetricType::Counter,
        true,
    ),
    (
        "container_network_transmit_bytes_total",
        "Cumulative count of bytes transmitted.",
        cri::MetricType::Counter,
        true,
    ),
    (
        "container_network_transmit_errors_total",
        "Cumulative count of errors encountered while transmitting.",
        cri::MetricType::Counter,
        true,
    ),
];

/// Label keys of container metrics (as CRI-O names them); network ones add `interface`.
const LABEL_KEYS: [&str; 3] = ["id", "name", "image"];

/// ListMetricDescriptors.
pub fn metric_descriptors() -> Vec<cri::MetricDescriptor> {
    METRICS
        .iter()
        .map(|(name, help, _, per_interface)| cri::MetricDescriptor {
            name: (*name).to_owned(),
            help: (*help).to_owned(),
            label_keys: LABEL_KEYS
                .iter()
                .copied()
                .chain(per_interface.then_some("interface"))
                .map(str::to_owned)
                .collect(),
        })
        .collect()
}

fn metric(name: &str, at: i64, labels: &[String], value: u64) -> cri::Metric {
    let (_, _, kind, _) = METRICS
        .iter()
        .find(|(n, ..)| *n == name)
        .copied()
        .unwrap_or(("", "", cri::MetricType::Gauge, false));
    cri::Metric {
        name: name.to_owned(),
        timestamp: at,
        metric_type: kind.into(),
        label_values: labels.to_vec(),
        value: u64_value(value),
    }
}

/// ListPodSandboxMetrics: every ready pod, its network per interface and its running
/// containers' CPU, memory and processes, from the cache.
pub async fn pod_metrics(daemon: &Daemon) -> Vec<cri::PodSandboxMetrics> {
    let mut out = Vec::new();
    for p in daemon.pods.all() {
        let pod = p.snapshot();
        if !pod.ready {
            continue;
        }
        let mut metrics = Vec::new();
        if let Some(net) = guard(&daemon.stats.pods).get(&pod.id).cloned() {
            for i in &net.interfaces {
                let labels = [
                    pod.id.clone(),
                    pod.name.clone(),
                    String::new(),
                    i.name.clone(),
                ];
                metrics.push(metric(
                    "container_network_receive_bytes_total",
                    net.at,
                    &labels,
                    i.rx_bytes,
                ));
                metrics.push(metric(
                    "container_network_receive_errors_total",
                    net.at,
                    &labels,
                    i.rx_errors,
                ));
                metrics.push(metric(
                    "container_network_transmit_bytes_total",
                    net.at,
                    &labels,
                    i.tx_bytes,
                ));
                metrics.push(metric(
                    "container_network_transmit_errors_total",
                    net.at,
                    &labels,
                    i.tx_errors,
                ));
            }
        }
        let mut container_metrics = Vec::new();
        for c in daemon.containers.all() {
            let record = c.snapshot();
            if record.pod_id != pod.id {
                continue;
            }
            let Some(sample) = sample_of(daemon, &record).await else {
                continue;
            };
            let s = sample.latest;
            let labels = [record.id.clone(), record.name.clone(), record.image.clone()];
            let at = s.timestamp;
            container_metrics.push(cri::ContainerMetrics {
                container_id: record.id.clone(),
                metrics: vec![
                    metric(
                        "container_cpu_usage_seconds_total",
                        at,
                        &labels,
                        s.cpu_usage_ns / 1_000_000_000,
                    ),
                    metric("container_memory_usage_bytes", at, &labels, s.memory_usage),
                    metric(
                        "container_memory_working_set_bytes",
                        at,
                        &labels,
                        s.working_set,
                    ),
                    metric("container_memory_rss", at, &labels, s.rss),
                    metric("container_memory_swap", at, &labels, s.swap),
                    metric(
                        "container_memory_failures_total",
                        at,
                        &labels,
                        s.page_faults,
                    ),
                    metric("container_processes", at, &labels, s.pids),
                ],
            });
        }
        out.push(cri::PodSandboxMetrics {
            pod_sandbox_id: pod.id.clone(),
            metrics,
            container_metrics,
        });
    }
    out
}
