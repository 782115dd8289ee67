//! ListMetricDescriptors and ListPodSandboxMetrics: the cAdvisor-named metrics kubelet
//! asks for when it takes pod and container metrics from the runtime
//! (`PodAndContainerStatsFromCRI`), from the same cache as the stats.
//!
//! Names, help, types and extra labels follow cAdvisor's Prometheus collector, so a
//! dashboard built on `/metrics/cadvisor` reads the same series. Every metric carries the
//! container's `id`, `name` and `image` first (as CRI-O labels them), then its own labels.
//! A figure this host cannot measure (pressure without cgroup v2 PSI, huge pages of a
//! size the kernel lacks) is left out, as cAdvisor leaves it out; its descriptor stays.

use cri_proto::v1 as cri;
use runtime_handlers::StatsDetail;

use super::{Interface, detailed_sample_of, pod_network, u64_value};
use crate::state::Daemon;

use cri::MetricType::{Counter, Gauge};

/// One metric: name, help, type, and the labels after `id`, `name`, `image`.
struct Def(
    &'static str,
    &'static str,
    cri::MetricType,
    &'static [&'static str],
);

const NONE: &[&str] = &[];
const DEVICE: &[&str] = &["device"];
const INTERFACE: &[&str] = &["interface"];

#[rustfmt::skip]
const METRICS: &[Def] = &[
    Def("container_blkio_device_usage_total", "Blkio Device bytes usage", Counter, &["device", "major", "minor", "operation"]),
    Def("container_cpu_cfs_periods_total", "Number of elapsed enforcement period intervals.", Counter, NONE),
    Def("container_cpu_cfs_throttled_periods_total", "Number of throttled period intervals.", Counter, NONE),
    Def("container_cpu_cfs_throttled_seconds_total", "Total time duration the container has been throttled.", Counter, NONE),
    Def("container_cpu_system_seconds_total", "Cumulative system cpu time consumed in seconds.", Counter, NONE),
    Def("container_cpu_usage_seconds_total", "Cumulative cpu time consumed in seconds.", Counter, &["cpu"]),
    Def("container_cpu_user_seconds_total", "Cumulative user cpu time consumed in seconds.", Counter, NONE),
    Def("container_file_descriptors", "Number of open file descriptors for the container.", Gauge, NONE),
    Def("container_fs_inodes_free", "Number of available Inodes", Gauge, DEVICE),
    Def("container_fs_inodes_total", "Number of Inodes", Gauge, DEVICE),
    Def("container_fs_limit_bytes", "Number of bytes that can be consumed by the container on this filesystem.", Gauge, DEVICE),
    Def("container_fs_reads_bytes_total", "Cumulative count of bytes read", Counter, DEVICE),
    Def("container_fs_reads_total", "Cumulative count of reads completed", Counter, DEVICE),
    Def("container_fs_usage_bytes", "Number of bytes that are consumed by the container on this filesystem.", Gauge, DEVICE),
    Def("container_fs_writes_bytes_total", "Cumulative count of bytes written", Counter, DEVICE),
    Def("container_fs_writes_total", "Cumulative count of writes completed", Counter, DEVICE),
    Def("container_hugetlb_max_usage_bytes", "Maximum hugepage usages recorded in bytes", Gauge, &["pagesize"]),
    Def("container_hugetlb_usage_bytes", "Current hugepage usage in bytes", Gauge, &["pagesize"]),
    Def("container_last_seen", "Last time a container was seen by the exporter", Gauge, NONE),
    Def("container_memory_cache", "Number of bytes of page cache memory.", Gauge, NONE),
    Def("container_memory_failcnt", "Number of memory usage hits limits", Counter, NONE),
    Def("container_memory_failures_total", "Cumulative count of memory allocation failures.", Counter, &["failure_type", "scope"]),
    Def("container_memory_kernel_usage", "Size of kernel memory allocated in bytes.", Gauge, NONE),
    Def("container_memory_mapped_file", "Size of memory mapped files in bytes.", Gauge, NONE),
    Def("container_memory_max_usage_bytes", "Maximum memory usage recorded in bytes", Gauge, NONE),
    Def("container_memory_rss", "Size of RSS in bytes.", Gauge, NONE),
    Def("container_memory_swap", "Container swap usage in bytes.", Gauge, NONE),
    Def("container_memory_usage_bytes", "Current memory usage in bytes, including all memory regardless of when it was accessed", Gauge, NONE),
    Def("container_memory_working_set_bytes", "Current working set in bytes.", Gauge, NONE),
    Def("container_network_receive_bytes_total", "Cumulative count of bytes received", Counter, INTERFACE),
    Def("container_network_receive_errors_total", "Cumulative count of errors encountered while receiving", Counter, INTERFACE),
    Def("container_network_receive_packets_dropped_total", "Cumulative count of packets dropped while receiving", Counter, INTERFACE),
    Def("container_network_receive_packets_total", "Cumulative count of packets received", Counter, INTERFACE),
    Def("container_network_transmit_bytes_total", "Cumulative count of bytes transmitted", Counter, INTERFACE),
    Def("container_network_transmit_errors_total", "Cumulative count of errors encountered while transmitting", Counter, INTERFACE),
    Def("container_network_transmit_packets_dropped_total", "Cumulative count of packets dropped while transmitting", Counter, INTERFACE),
    Def("container_network_transmit_packets_total", "Cumulative count of packets transmitted", Counter, INTERFACE),
    Def("container_oom_events_total", "Count of out of memory events observed for the container", Counter, NONE),
    Def("container_pressure_cpu_stalled_seconds_total", "Total time duration no tasks in the container could make progress due to CPU congestion.", Counter, NONE),
    Def("container_pressure_cpu_waiting_seconds_total", "Total time duration tasks in the container have waited due to CPU congestion.", Counter, NONE),
    Def("container_pressure_io_stalled_seconds_total", "Total time duration no tasks in the container could make progress due to IO congestion.", Counter, NONE),
    Def("container_pressure_io_waiting_seconds_total", "Total time duration tasks in the container have waited due to IO congestion.", Counter, NONE),
    Def("container_pressure_memory_stalled_seconds_total", "Total time duration no tasks in the container could make progress due to memory congestion.", Counter, NONE),
    Def("container_pressure_memory_waiting_seconds_total", "Total time duration tasks in the container have waited due to memory congestion.", Counter, NONE),
    Def("container_processes", "Number of processes running inside the container.", Gauge, NONE),
    Def("container_sockets", "Number of open sockets for the container.", Gauge, NONE),
    Def("container_spec_cpu_period", "CPU period of the container.", Gauge, NONE),
    Def("container_spec_cpu_quota", "CPU quota of the container.", Gauge, NONE),
    Def("container_spec_cpu_shares", "CPU share of the container.", Gauge, NONE),
    Def("container_spec_memory_limit_bytes", "Memory limit for the container.", Gauge, NONE),
    Def("container_spec_memory_reservation_limit_bytes", "Memory reservation limit for the container.", Gauge, NONE),
    Def("container_spec_memory_swap_limit_bytes", "Memory swap limit for the container.", Gauge, NONE),
    Def("container_start_time_seconds", "Start time of the container since unix epoch in seconds.", Gauge, NONE),
    Def("container_threads", "Number of threads running inside the container", Gauge, NONE),
    Def("container_threads_max", "Maximum number of threads allowed inside the container, infinity if value is zero", Gauge, NONE),
    Def("container_ulimits_soft", "Soft ulimit values for the container root process. Unlimited if -1, except priority and nice", Gauge, &["ulimit"]),
];

/// Label keys every metric starts with.
const BASE_LABELS: [&str; 3] = ["id", "name", "image"];

/// ListMetricDescriptors.
pub fn metric_descriptors() -> Vec<cri::MetricDescriptor> {
    METRICS
        .iter()
        .map(|Def(name, help, _, extra)| cri::MetricDescriptor {
            name: (*name).to_owned(),
            help: (*help).to_owned(),
            label_keys: BASE_LABELS
                .iter()
                .chain(extra.iter())
                .map(|k| (*k).to_owned())
                .collect(),
        })
        .collect()
}

/// Builds the metrics of one container (or of the pod, for its network).
struct Emitter<'a> {
    at: i64,
    base: [&'a str; 3],
    out: Vec<cri::Metric>,
}

impl Emitter<'_> {
    /// One sample of `name` with its own label values (in its descriptor's order).
    fn put(&mut self, name: &str, extra: &[&str], value: u64) {
        let Some(Def(_, _, kind, keys)) = METRICS.iter().find(|d| d.0 == name) else {
            return;
        };
        debug_assert_eq!(keys.len(), extra.len(), "{name}");
        self.out.push(cri::Metric {
            name: name.to_owned(),
            timestamp: self.at,
            metric_type: (*kind).into(),
            label_values: self
                .base
                .iter()
                .chain(extra.iter())
                .map(|v| (*v).to_owned())
                .collect(),
            value: u64_value(value),
        });
    }

    fn network(&mut self, i: &Interface) {
        let n = [i.name.as_str()];
        self.put("container_network_receive_bytes_total", &n, i.rx_bytes);
        self.put("container_network_receive_errors_total", &n, i.rx_errors);
        self.put(
            "container_network_receive_packets_dropped_total",
            &n,
            i.rx_dropped,
        );
        self.put("container_network_receive_packets_total", &n, i.rx_packets);
        self.put("container_network_transmit_bytes_total", &n, i.tx_bytes);
        self.put("container_network_transmit_errors_total", &n, i.tx_errors);
        self.put(
            "container_network_transmit_packets_dropped_total",
            &n,
            i.tx_dropped,
        );
        self.put("container_network_transmit_packets_total", &n, i.tx_packets);
    }

    fn detail(&mut self, d: &StatsDetail) {
        const NS: u64 = 1_000_000_000;
        self.put("container_cpu_user_seconds_total", &[], d.cpu_user_ns / NS);
        self.put(
            "container_cpu_system_seconds_total",
            &[],
            d.cpu_system_ns / NS,
        );
        self.put("container_cpu_cfs_periods_total", &[], d.cfs_periods);
        self.put(
            "container_cpu_cfs_throttled_periods_total",
            &[],
            d.cfs_throttled_periods,
        );
        self.put(
            "container_cpu_cfs_throttled_seconds_total",
            &[],
            d.cfs_throttled_ns / NS,
        );
        self.put("container_memory_cache", &[], d.memory_cache);
        self.put("container_memory_failcnt", &[], d.memory_failcnt);
        self.put("container_memory_kernel_usage", &[], d.memory_kernel);
        self.put("container_memory_mapped_file", &[], d.memory_mapped_file);
        self.put("container_memory_max_usage_bytes", &[], d.memory_max_usage);
        self.put("container_oom_events_total", &[], d.oom_events);
        self.put("container_processes", &[], d.processes);
        self.put("container_file_descriptors", &[], d.file_descriptors);
        self.put("container_sockets", &[], d.sockets);
        self.put("container_threads_max", &[], d.threads_max);
        if let Some(limit) = d.max_open_files.filter(|l| *l != u64::MAX) {
            self.put("container_ulimits_soft", &["max_open_files"], limit);
        }
        let l = &d.limits;
        self.put("container_spec_cpu_period", &[], l.cpu_period);
        if l.cpu_quota > 0 {
            self.put("container_spec_cpu_quota", &[], l.cpu_quota);
        }
        self.put("container_spec_cpu_shares", &[], l.cpu_shares);
        self.put("container_spec_memory_limit_bytes", &[], l.memory_limit);
        self.put(
            "container_spec_memory_reservation_limit_bytes",
            &[],
            l.memory_reservation,
        );
        self.put("container_spec_memory_swap_limit_bytes", &[], l.swap_limit);
        for b in &d.block_devices {
            let (major, minor) = (b.major.to_string(), b.minor.to_string());
            let dev = b.name.as_str();
            self.put(
                "container_blkio_device_usage_total",
                &[dev, &major, &minor, "Read"],
                b.read_bytes,
            );
            self.put(
                "container_blkio_device_usage_total",
                &[dev, &major, &minor, "Write"],
                b.write_bytes,
            );
            self.put("container_fs_reads_bytes_total", &[dev], b.read_bytes);
            self.put("container_fs_reads_total", &[dev], b.reads);
            self.put("container_fs_writes_bytes_total", &[dev], b.write_bytes);
            self.put("container_fs_writes_total", &[dev], b.writes);
        }
        for h in &d.huge_pages {
            self.put("container_hugetlb_usage_bytes", &[&h.page_size], h.usage);
            self.put(
                "container_hugetlb_max_usage_bytes",
                &[&h.page_size],
                h.max_usage,
            );
        }
        if let Some(p) = &d.pressure {
            const US: u64 = 1_000_000;
            self.put(
                "container_pressure_cpu_waiting_seconds_total",
                &[],
                p.cpu_some / US,
            );
            self.put(
                "container_pressure_cpu_stalled_seconds_total",
                &[],
                p.cpu_full / US,
            );
            self.put(
                "container_pressure_memory_waiting_seconds_total",
                &[],
                p.memory_some / US,
            );
            self.put(
                "container_pressure_memory_stalled_seconds_total",
                &[],
                p.memory_full / US,
            );
            self.put(
                "container_pressure_io_waiting_seconds_total",
                &[],
                p.io_some / US,
            );
            self.put(
                "container_pressure_io_stalled_seconds_total",
                &[],
                p.io_full / US,
            );
        }
    }
}

/// ListPodSandboxMetrics: every ready pod, its network per interface and its running
/// containers' figures, from the cache.
pub async fn pod_metrics(daemon: &Daemon) -> Vec<cri::PodSandboxMetrics> {
    super::fresh(daemon).await;
    let store = daemon.images.store();
    let filesystem = tokio::task::spawn_blocking(move || {
        let fs = store.filesystem().ok()?;
        let device = runtime_handlers::device_name(fs.major, fs.minor);
        Some((fs, device))
    })
    .await
    .ok()
    .flatten();
    let now_s = u64::try_from(crate::pod::now_ns() / 1_000_000_000).unwrap_or(0);
    let mut out = Vec::new();
    for p in daemon.pods.all() {
        let pod = p.snapshot();
        if !pod.ready {
            continue;
        }
        let mut pod_metrics = Emitter {
            at: 0,
            base: [&pod.id, &pod.name, ""],
            out: Vec::new(),
        };
        if let Some(net) = pod_network(daemon, &pod.id).await {
            pod_metrics.at = net.at;
            for i in &net.interfaces {
                pod_metrics.network(i);
            }
        }
        let mut container_metrics = Vec::new();
        for c in daemon.containers.all() {
            let record = c.snapshot();
            if record.pod_id != pod.id {
                continue;
            }
            let Some(sample) = detailed_sample_of(daemon, &record).await else {
                continue;
            };
            let s = &sample.latest;
            let mut m = Emitter {
                at: s.timestamp,
                base: [&record.id, &record.name, &record.image],
                out: Vec::new(),
            };
            m.put(
                "container_cpu_usage_seconds_total",
                &["total"],
                s.cpu_usage_ns / 1_000_000_000,
            );
            m.put("container_memory_usage_bytes", &[], s.memory_usage);
            m.put("container_memory_working_set_bytes", &[], s.working_set);
            m.put("container_memory_rss", &[], s.rss);
            m.put("container_memory_swap", &[], s.swap);
            m.put("container_threads", &[], s.pids);
            for (kind, own, all) in [
                (
                    "pgfault",
                    s.detail
                        .as_ref()
                        .map_or(s.page_faults, |d| d.own_page_faults),
                    s.page_faults,
                ),
                (
                    "pgmajfault",
                    s.detail
                        .as_ref()
                        .map_or(s.major_page_faults, |d| d.own_major_page_faults),
                    s.major_page_faults,
                ),
            ] {
                m.put("container_memory_failures_total", &[kind, "container"], own);
                m.put("container_memory_failures_total", &[kind, "hierarchy"], all);
            }
            m.put("container_last_seen", &[], now_s);
            let started = u64::try_from(record.started_at / 1_000_000_000).unwrap_or(0);
            m.put("container_start_time_seconds", &[], started);
            if let Some((fs, device)) = &filesystem {
                let dev = [device.as_str()];
                let used = sample.writable.as_ref().map_or(0, |w| w.bytes);
                m.put("container_fs_usage_bytes", &dev, used);
                m.put("container_fs_limit_bytes", &dev, fs.capacity);
                m.put("container_fs_inodes_total", &dev, fs.inodes_total);
                m.put("container_fs_inodes_free", &dev, fs.inodes_free);
            }
            if let Some(d) = &s.detail {
                m.detail(d);
            }
            container_metrics.push(cri::ContainerMetrics {
                container_id: record.id.clone(),
                metrics: m.out,
            });
        }
        out.push(cri::PodSandboxMetrics {
            pod_sandbox_id: pod.id.clone(),
            metrics: pod_metrics.out,
            container_metrics,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_are_unique_with_help_and_labels() {
        let descs = metric_descriptors();
        let mut names: Vec<&str> = descs.iter().map(|d| d.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), descs.len());
        assert!(
            descs
                .iter()
                .all(|d| !d.help.is_empty() && d.label_keys.len() >= 3)
        );
    }

    #[test]
    fn every_sample_has_its_descriptors_label_count() {
        let mut e = Emitter {
            at: 1,
            base: ["id", "name", "image"],
            out: Vec::new(),
        };
        e.detail(&StatsDetail {
            max_open_files: Some(1024),
            block_devices: vec![runtime_handlers::BlockDevice::default()],
            huge_pages: vec![runtime_handlers::HugePages::default()],
            pressure: Some(runtime_handlers::Pressure::default()),
            limits: runtime_handlers::Limits {
                cpu_quota: 1,
                ..Default::default()
            },
            ..StatsDetail::default()
        });
        e.network(&Interface::default());
        let descs = metric_descriptors();
        for m in &e.out {
            let d = descs.iter().find(|d| d.name == m.name).expect("described");
            assert_eq!(d.label_keys.len(), m.label_values.len(), "{}", m.name);
        }
    }
}
