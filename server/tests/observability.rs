//! Container events, stats and metrics through the real crispd, runc and a busybox image.

mod common;

use std::time::Duration;

use common::workload::*;
use cri_proto::v1 as cri;
use tokio_stream::StreamExt;

type EventStream = tonic::Streaming<cri::ContainerEventResponse>;

/// The next event, or a failure after 20 s.
async fn next_event(events: &mut EventStream) -> cri::ContainerEventResponse {
    tokio::time::timeout(Duration::from_secs(20), events.next())
        .await
        .expect("an event within 20s")
        .expect("the stream goes on")
        .expect("an event, not an error")
}

async fn metric_descriptors(
    rt: &mut cri::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>,
) -> Vec<cri::MetricDescriptor> {
    rt.list_metric_descriptors(cri::ListMetricDescriptorsRequest {})
        .await
        .expect("descriptors")
        .into_inner()
        .descriptors
}

fn kind(e: &cri::ContainerEventResponse) -> cri::ContainerEventType {
    cri::ContainerEventType::try_from(e.container_event_type).expect("known type")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_follow_each_lifecycle_in_order_exactly_once() {
    use cri::ContainerEventType::*;
    let s = setup();
    let daemon = s.net.sandbox.start();
    let (mut rt, pod) = ready(&s, &daemon).await;
    let mut events = rt
        .get_container_events(cri::GetEventsRequest {})
        .await
        .expect("subscribe")
        .into_inner();
    // A second subscriber sees the same events.
    let mut other = rt
        .get_container_events(cri::GetEventsRequest {})
        .await
        .expect("subscribe")
        .into_inner();

    // One that exits on its own with code 3.
    let quick = create(
        &mut rt,
        &s,
        &pod,
        container(&s, "quick", "sleep 0.3; exit 3"),
    )
    .await;
    start(&mut rt, &quick).await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let e = next_event(&mut events).await;
        assert_eq!(e.container_id, quick);
        seen.push(kind(&e));
        if kind(&e) == ContainerStoppedEvent {
            let own = e
                .containers_statuses
                .iter()
                .find(|c| c.id == quick)
                .expect("the event carries the container's status");
            assert_eq!(own.exit_code, 3);
            assert_eq!(own.state, i32::from(cri::ContainerState::ContainerExited));
            let pod_status = e.pod_sandbox_status.as_ref().expect("pod status");
            assert_eq!(pod_status.id, pod);
        }
        assert!(e.created_at > 0);
    }
    assert_eq!(
        seen,
        [
            ContainerCreatedEvent,
            ContainerStartedEvent,
            ContainerStoppedEvent
        ]
    );
    // ListContainers agrees with the event as soon as it is out.
    let exited = rt
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
    assert_eq!(
        exited.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        [quick.as_str()]
    );

    // One stopped by StopContainer, then both removed.
    let long = create(&mut rt, &s, &pod, container(&s, "long", "sleep 300")).await;
    start(&mut rt, &long).await;
    rt.stop_container(cri::StopContainerRequest {
        container_id: long.clone(),
        timeout: 1,
    })
    .await
    .expect("stop");
    for id in [&quick, &long] {
        rt.remove_container(cri::RemoveContainerRequest {
            container_id: id.clone(),
        })
        .await
        .expect("remove");
    }
    let mut rest = Vec::new();
    for _ in 0..5 {
        let e = next_event(&mut events).await;
        rest.push((e.container_id.clone(), kind(&e)));
    }
    assert_eq!(
        rest,
        [
            (long.clone(), ContainerCreatedEvent),
            (long.clone(), ContainerStartedEvent),
            (long.clone(), ContainerStoppedEvent),
            (quick.clone(), ContainerDeletedEvent),
            (long.clone(), ContainerDeletedEvent),
        ]
    );
    // Nothing more: no second STOPPED for either.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), events.next())
            .await
            .is_err(),
        "no further events"
    );
    let mut all = Vec::new();
    for _ in 0..8 {
        all.push(kind(&next_event(&mut other).await));
    }
    assert_eq!(all.len(), 8);
    teardown(&mut rt).await;
}

async fn stats_of(
    rt: &mut cri::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>,
    id: &str,
) -> cri::ContainerStats {
    rt.container_stats(cri::ContainerStatsRequest {
        container_id: id.to_owned(),
    })
    .await
    .expect("stats")
    .into_inner()
    .stats
    .expect("stats body")
}

fn cpu_ns(s: &cri::ContainerStats) -> u64 {
    s.cpu
        .as_ref()
        .and_then(|c| c.usage_core_nano_seconds.as_ref())
        .map_or(0, |v| v.value)
}

fn working_set(s: &cri::ContainerStats) -> u64 {
    s.memory
        .as_ref()
        .and_then(|m| m.working_set_bytes.as_ref())
        .map_or(0, |v| v.value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_rise_with_cpu_and_memory_use_and_metrics_parse() {
    let s = setup();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    s.net
        .sandbox
        .write_config(&format!("[metrics]\naddress = \"127.0.0.1:{port}\"\n"));
    let daemon = s.net.sandbox.start();
    let (mut rt, pod) = ready(&s, &daemon).await;
    let mut ids = Vec::new();
    for (name, script) in [
        ("busy", "while :; do :; done"),
        (
            "hog",
            "dd if=/dev/zero of=/dev/shm/blob bs=1M count=64 2>/dev/null; sleep 300",
        ),
        ("idle", "sleep 300"),
    ] {
        let id = create(&mut rt, &s, &pod, container(&s, name, script)).await;
        start(&mut rt, &id).await;
        ids.push(id);
    }
    let (busy, hog, idle) = (ids[0].clone(), ids[1].clone(), ids[2].clone());

    // CPU: the busy loop's cumulative time rises and its rate nears a core; the idle
    // container's stays near zero.
    let first = stats_of(&mut rt, &busy).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let later = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = stats_of(&mut rt, &busy).await;
        let rate = now
            .cpu
            .as_ref()
            .and_then(|c| c.usage_nano_cores.as_ref())
            .map_or(0, |v| v.value);
        if rate > 200_000_000 {
            break now;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "busy loop rate {rate}"
        );
    };
    assert!(cpu_ns(&later) > cpu_ns(&first), "{first:?} then {later:?}");
    let quiet = stats_of(&mut rt, &idle).await;
    let idle_rate = quiet
        .cpu
        .as_ref()
        .and_then(|c| c.usage_nano_cores.as_ref())
        .map_or(0, |v| v.value);
    assert!(idle_rate < 50_000_000, "idle uses {idle_rate} nanocores");

    // Memory: 64 MiB in shm is in the hog's working set, not in the idle one's.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let ws = working_set(&stats_of(&mut rt, &hog).await);
        if ws >= 64 << 20 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "hog working set {ws}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(working_set(&stats_of(&mut rt, &idle).await) < 16 << 20);

    // Lists and pods.
    let listed = rt
        .list_container_stats(cri::ListContainerStatsRequest {
            filter: Some(cri::ContainerStatsFilter {
                pod_sandbox_id: pod.clone(),
                ..Default::default()
            }),
        })
        .await
        .expect("list")
        .into_inner()
        .stats;
    assert_eq!(listed.len(), 3);
    let pod_stats = rt
        .pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .expect("pod stats")
        .into_inner()
        .stats
        .expect("body")
        .linux
        .expect("linux");
    assert_eq!(pod_stats.containers.len(), 3);
    let processes = pod_stats
        .process
        .and_then(|p| p.process_count)
        .map_or(0, |v| v.value);
    assert!(processes >= 3, "{processes} processes");
    let pod_ws = pod_stats
        .memory
        .and_then(|m| m.working_set_bytes)
        .map_or(0, |v| v.value);
    assert!(pod_ws >= 64 << 20, "pod working set {pod_ws}");
    let pods = rt
        .list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest { filter: None })
        .await
        .expect("list pods")
        .into_inner()
        .stats;
    assert_eq!(pods.len(), 1);
    let err = rt
        .container_stats(cri::ContainerStatsRequest {
            container_id: "nope".into(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), tonic::Code::NotFound);

    // The cAdvisor-named pod metrics: every metric's labels match its descriptor.
    let descriptors = metric_descriptors(&mut rt).await;
    let keys: std::collections::HashMap<String, usize> = descriptors
        .iter()
        .map(|d| (d.name.clone(), d.label_keys.len()))
        .collect();
    assert!(keys.contains_key("container_memory_working_set_bytes"));
    let pod_metrics = rt
        .list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {})
        .await
        .expect("pod metrics")
        .into_inner()
        .pod_metrics;
    assert_eq!(pod_metrics.len(), 1);
    assert_eq!(pod_metrics[0].container_metrics.len(), 3);
    for m in pod_metrics[0].metrics.iter().chain(
        pod_metrics[0]
            .container_metrics
            .iter()
            .flat_map(|c| &c.metrics),
    ) {
        assert_eq!(Some(&m.label_values.len()), keys.get(&m.name), "{m:?}");
    }
    let hog_ws = pod_metrics[0]
        .container_metrics
        .iter()
        .find(|c| c.container_id == hog)
        .and_then(|c| {
            c.metrics
                .iter()
                .find(|m| m.name == "container_memory_working_set_bytes")
        })
        .and_then(|m| m.value)
        .map_or(0, |v| v.value);
    assert!(hog_ws >= 64 << 20, "{hog_ws}");

    // crisp's own Prometheus endpoint parses and counts what happened.
    let text = scrape(port, "/metrics");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    let lines = body.lines().map(|l| Ok(l.to_owned()));
    let parsed = prometheus_parse::Scrape::parse(lines).expect("Prometheus text format");
    let value = |name: &str, label: (&str, &str)| -> f64 {
        parsed
            .samples
            .iter()
            .find(|s| s.metric == name && s.labels.get(label.0) == Some(label.1))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
            .unwrap_or(f64::NAN)
    };
    assert_eq!(value("crisp_containers", ("state", "running")), 3.0);
    assert_eq!(value("crisp_pods", ("state", "ready")), 1.0);
    assert_eq!(
        value("crisp_image_pulls_total", ("outcome", "success")),
        1.0
    );
    assert_eq!(
        value("crisp_grpc_requests_total", ("method", "PullImage")),
        1.0
    );
    let not_found = parsed.samples.iter().any(|s| {
        s.metric == "crisp_grpc_requests_total"
            && s.labels.get("method") == Some("ContainerStats")
            && s.labels.get("code") == Some("NotFound")
    });
    assert!(not_found, "the failed call is counted by its code");
    let pull_latency = parsed.samples.iter().find_map(|s| match &s.value {
        prometheus_parse::Value::Histogram(buckets)
            if s.metric == "crisp_grpc_request_duration_seconds"
                && s.labels.get("method") == Some("PullImage") =>
        {
            buckets.last().map(|b| b.count)
        }
        _ => None,
    });
    assert_eq!(pull_latency, Some(1.0), "a latency histogram per method");
    let monitors = parsed
        .samples
        .iter()
        .find(|s| s.metric == "crisp_monitor_processes")
        .map(|s| match s.value {
            prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .unwrap_or(0.0);
    assert!(monitors >= 3.0, "{monitors} monitors");
    assert!(scrape(port, "/other").starts_with("HTTP/1.1 404"));
    teardown(&mut rt).await;
}

fn scrape(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").expect("request");
    let mut out = String::new();
    stream.read_to_string(&mut out).expect("response");
    out
}

/// What cri-tools main (`pkg/validate/pod.go`) expects ListPodSandboxMetrics to carry
/// for a running container, less the figures this kind of host cannot give: pressure
/// (cgroup v2 PSI; checked separately where the kernel has it for the container),
/// huge pages (only where the kernel has huge page sizes) and block I/O (only devices the
/// container touched).
const EXPECTED: &[&str] = &[
    "container_cpu_cfs_periods_total",
    "container_cpu_cfs_throttled_periods_total",
    "container_cpu_cfs_throttled_seconds_total",
    "container_cpu_system_seconds_total",
    "container_cpu_usage_seconds_total",
    "container_cpu_user_seconds_total",
    "container_file_descriptors",
    "container_fs_inodes_free",
    "container_fs_inodes_total",
    "container_fs_limit_bytes",
    "container_fs_usage_bytes",
    "container_last_seen",
    "container_memory_cache",
    "container_memory_failcnt",
    "container_memory_failures_total",
    "container_memory_kernel_usage",
    "container_memory_mapped_file",
    "container_memory_max_usage_bytes",
    "container_memory_rss",
    "container_memory_swap",
    "container_memory_usage_bytes",
    "container_memory_working_set_bytes",
    "container_network_receive_bytes_total",
    "container_network_receive_errors_total",
    "container_network_receive_packets_dropped_total",
    "container_network_receive_packets_total",
    "container_network_transmit_bytes_total",
    "container_network_transmit_errors_total",
    "container_network_transmit_packets_dropped_total",
    "container_network_transmit_packets_total",
    "container_oom_events_total",
    "container_processes",
    "container_sockets",
    "container_spec_cpu_period",
    "container_spec_cpu_quota",
    "container_spec_cpu_shares",
    "container_spec_memory_limit_bytes",
    "container_spec_memory_reservation_limit_bytes",
    "container_spec_memory_swap_limit_bytes",
    "container_start_time_seconds",
    "container_threads",
    "container_threads_max",
    "container_ulimits_soft",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_metrics_carry_the_cadvisor_set_with_real_values() {
    let s = setup();
    let daemon = s.net.sandbox.start();
    let (mut rt, pod) = ready(&s, &daemon).await;
    // Limits as critest sets them, a listening socket, a second process, and some I/O.
    let mut config = container(
        &s,
        "measured",
        "nc -l -p 8080 & dd if=/dev/zero of=/data bs=64k count=16 2>/dev/null; exec sleep 300",
    );
    config.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 20_000,
            cpu_shares: 512,
            memory_limit_in_bytes: 256 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = create(&mut rt, &s, &pod, config).await;
    start(&mut rt, &id).await;
    // Both processes are up once the exec'd sleep and nc are there.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while exec_out(
        &mut rt,
        &id,
        &[
            "sh",
            "-c",
            "ps -o comm | grep -qx nc && ps -o comm | grep -qx sleep",
        ],
    )
    .await
    .0 != 0
    {
        assert!(std::time::Instant::now() < deadline, "nc and sleep running");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());

    let descriptors = metric_descriptors(&mut rt).await;
    let keys: std::collections::HashMap<&str, &[String]> = descriptors
        .iter()
        .map(|d| (d.name.as_str(), d.label_keys.as_slice()))
        .collect();
    let listed = rt
        .list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {})
        .await
        .expect("pod metrics")
        .into_inner()
        .pod_metrics;
    let mine = listed
        .iter()
        .find(|p| p.pod_sandbox_id == pod)
        .expect("the pod's metrics");
    let samples: Vec<&cri::Metric> = mine
        .metrics
        .iter()
        .chain(mine.container_metrics.iter().flat_map(|c| &c.metrics))
        .collect();
    for m in &samples {
        let want = keys.get(m.name.as_str()).map_or(0, |k| k.len());
        assert_eq!(m.label_values.len(), want, "labels of {m:?}");
    }
    // One value of a metric, by one of its own label values (or the first).
    let value = |name: &str, label: Option<&str>| -> u64 {
        samples
            .iter()
            .find(|m| m.name == name && label.is_none_or(|l| m.label_values.iter().any(|v| v == l)))
            .and_then(|m| m.value.as_ref())
            .map(|v| v.value)
            .unwrap_or_else(|| panic!("no {name} ({label:?}) in {samples:#?}"))
    };
    let missing: Vec<&str> = EXPECTED
        .iter()
        .copied()
        .filter(|name| !samples.iter().any(|m| m.name == *name))
        .collect();
    assert!(missing.is_empty(), "missing: {missing:?}");
    assert!(EXPECTED.iter().all(|n| keys.contains_key(n)));

    // The values are this container's.
    assert_eq!(value("container_spec_cpu_period", None), 100_000);
    assert_eq!(value("container_spec_cpu_quota", None), 20_000);
    // Exact on cgroup v1; v2 keeps a weight, which converts back to about the shares.
    let shares = value("container_spec_cpu_shares", None);
    assert!((490..=530).contains(&shares), "{shares}");
    assert_eq!(value("container_spec_memory_limit_bytes", None), 256 << 20);
    assert!(value("container_processes", None) >= 2);
    assert!(value("container_threads", None) >= 2);
    assert!(value("container_sockets", None) >= 1, "nc listens");
    assert!(value("container_file_descriptors", None) >= 4);
    assert!(value("container_ulimits_soft", Some("max_open_files")) >= 64);
    let start_time = value("container_start_time_seconds", None);
    assert!(
        start_time <= started && started - start_time < 60,
        "{start_time}"
    );
    assert!(value("container_last_seen", None) >= started);
    assert!(value("container_memory_usage_bytes", None) > 0);
    assert!(value("container_memory_max_usage_bytes", None) >= value("container_memory_rss", None));
    assert!(
        value("container_memory_failures_total", Some("hierarchy")) > 0,
        "page faults"
    );
    assert!(value("container_fs_limit_bytes", None) > 0);
    assert!(value("container_fs_inodes_total", None) >= value("container_fs_inodes_free", None));
    // Traffic out of the pod shows on its eth0 (a connection attempt to the gateway).
    let gateway = format!("{}1", s.net.subnet_prefix);
    exec_out(
        &mut rt,
        &id,
        &["sh", "-c", &format!("nc -w 1 {gateway} 9 </dev/null; true")],
    )
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let sent = rt
            .list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {})
            .await
            .expect("pod metrics")
            .into_inner()
            .pod_metrics
            .into_iter()
            .filter(|p| p.pod_sandbox_id == pod)
            .flat_map(|p| p.metrics)
            .find(|m| {
                m.name == "container_network_transmit_packets_total"
                    && m.label_values.iter().any(|v| v == "eth0")
            })
            .and_then(|m| m.value)
            .map_or(0, |v| v.value);
        if sent > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no packets counted on eth0"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let pressure = samples
        .iter()
        .any(|m| m.name.starts_with("container_pressure_"));
    let has_psi = std::fs::read_to_string("/proc/pressure/cpu").is_ok();
    assert!(
        !pressure || has_psi,
        "pressure reported without PSI on this kernel"
    );
    teardown(&mut rt).await;
}
