//! crisp's own Prometheus metrics: per-RPC latency histograms and error counts (a tower
//! layer around the gRPC services), image pull counts, bytes and durations, pods and
//! containers by state, and monitor processes; kept in a `prometheus-client` registry and
//! served as OpenMetrics text on `GET /metrics` at `[metrics] address`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::state::Daemon;

/// Histogram bucket bounds, seconds.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0, 300.0,
];

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    method: String,
    code: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    operation: &'static str,
    step: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

/// The registry and the handles crisp updates.
pub struct Metrics {
    registry: Registry,
    rpc_latency: Family<MethodLabels, Histogram, fn() -> Histogram>,
    rpc_codes: Family<CallLabels, Counter>,
    pulls: Family<OutcomeLabels, Counter>,
    pull_bytes: Counter,
    pull_latency: Histogram,
    containers: Family<StateLabels, Gauge>,
    pods: Family<StateLabels, Gauge>,
    monitors: Gauge,
    steps: Family<StepLabels, Histogram, fn() -> Histogram>,
    calls: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let rpc_latency: Family<MethodLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(histogram);
        registry.register(
            "crisp_grpc_request_duration_seconds",
            "CRI call latency",
            rpc_latency.clone(),
        );
        let rpc_codes = Family::<CallLabels, Counter>::default();
        registry.register(
            "crisp_grpc_requests",
            "CRI calls by method and status code",
            rpc_codes.clone(),
        );
        let pulls = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "crisp_image_pulls",
            "PullImage calls by outcome",
            pulls.clone(),
        );
        for outcome in ["success", "failure"] {
            drop(pulls.get_or_create(&OutcomeLabels { outcome }));
        }
        let pull_bytes = Counter::default();
        registry.register(
            "crisp_image_pull_bytes",
            "Size of the images pulled",
            pull_bytes.clone(),
        );
        let pull_latency = histogram();
        registry.register(
            "crisp_image_pull_duration_seconds",
            "Successful pull time",
            pull_latency.clone(),
        );
        let containers = Family::<StateLabels, Gauge>::default();
        registry.register(
            "crisp_containers",
            "Containers by state",
            containers.clone(),
        );
        let pods = Family::<StateLabels, Gauge>::default();
        registry.register("crisp_pods", "Pod sandboxes by state", pods.clone());
        let monitors = Gauge::default();
        registry.register(
            "crisp_monitor_processes",
            "Helper processes (monitors, PID-namespace inits) the runtime handlers keep on this host",
            monitors.clone(),
        );
        let steps: Family<StepLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(histogram);
        registry.register(
            "crisp_operation_step_duration_seconds",
            "Time spent in each step of CreateContainer and StartContainer; a call that fails records the steps it finished",
            steps.clone(),
        );
        Self {
            registry,
            rpc_latency,
            rpc_codes,
            pulls,
            pull_bytes,
            pull_latency,
            containers,
            pods,
            monitors,
            steps,
            calls: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// How many RPCs have finished since start.
    pub fn calls(&self) -> u64 {
        self.calls.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Records one finished RPC.
    pub fn rpc(&self, method: &str, code: &str, took: Duration) {
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.rpc_latency
            .get_or_create(&MethodLabels {
                method: method.to_owned(),
            })
            .observe(took.as_secs_f64());
        self.rpc_codes
            .get_or_create(&CallLabels {
                method: method.to_owned(),
                code: code.to_owned(),
            })
            .inc();
    }

    /// Records one PullImage: whether it succeeded, the image's size, how long it took.
    pub fn pull(&self, ok: bool, bytes: u64, took: Duration) {
        let outcome = if ok { "success" } else { "failure" };
        self.pulls.get_or_create(&OutcomeLabels { outcome }).inc();
        if ok {
            self.pull_bytes.inc_by(bytes);
            self.pull_latency.observe(took.as_secs_f64());
        }
    }

    /// A timer for the steps of `operation`, started now.
    pub fn steps(&self, operation: &'static str) -> Steps {
        Steps {
            family: self.steps.clone(),
            operation,
            last: Instant::now(),
        }
    }

    /// The metrics in OpenMetrics text format, gauges read now.
    pub fn render(&self, daemon: &Daemon) -> String {
        let (mut created, mut running, mut exited) = (0, 0, 0);
        for c in daemon.containers.all() {
            match c.snapshot().state() {
                crate::container::State::Created => created += 1,
                crate::container::State::Running => running += 1,
                crate::container::State::Exited { .. } => exited += 1,
            }
        }
        for (state, n) in [
            ("created", created),
            ("running", running),
            ("exited", exited),
        ] {
            self.containers.get_or_create(&StateLabels { state }).set(n);
        }
        let (mut ready, mut not_ready) = (0, 0);
        for p in daemon.pods.all() {
            if p.snapshot().ready {
                ready += 1;
            } else {
                not_ready += 1;
            }
        }
        for (state, n) in [("ready", ready), ("notready", not_ready)] {
            self.pods.get_or_create(&StateLabels { state }).set(n);
        }
        self.monitors
            .set(i64::try_from(daemon.handlers.helper_processes()).unwrap_or(i64::MAX));
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        out
    }
}

/// Times the steps of one operation: each [`Steps::mark`] records the time since the
/// previous mark (or the start) under `crisp_operation_step_duration_seconds`, so an
/// operator can see where a slow CreateContainer spends its time. It may move to a
/// blocking thread and back with the work it times.
pub struct Steps {
    family: Family<StepLabels, Histogram, fn() -> Histogram>,
    operation: &'static str,
    last: Instant,
}

impl Steps {
    /// Records the step that ends now.
    pub fn mark(&mut self, step: &'static str) {
        let now = Instant::now();
        self.family
            .get_or_create(&StepLabels {
                operation: self.operation,
                step,
            })
            .observe(now.duration_since(self.last).as_secs_f64());
        self.last = now;
    }
}

/// Serves `GET /metrics` on `address` until the daemon ends.
pub async fn serve(daemon: Arc<Daemon>, listener: tokio::net::TcpListener) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let daemon = Arc::clone(&daemon);
        tokio::spawn(async move {
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                true
            })
            .await;
            if !matches!(read, Ok(true)) {
                return;
            }
            let line = String::from_utf8_lossy(&request);
            let target = line.split_whitespace().nth(1).unwrap_or_default();
            let response = if line.starts_with("GET ")
                && (target == "/metrics" || target.starts_with("/metrics?"))
            {
                let body = daemon.metrics.render(&daemon);
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_owned()
            };
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// Wraps the gRPC services, recording each call's method, status code and latency.
#[derive(Clone)]
pub struct RpcMetrics<S> {
    inner: S,
    daemon: Arc<Daemon>,
}

/// The layer that builds [`RpcMetrics`].
#[derive(Clone)]
pub struct RpcMetricsLayer {
    /// Where the counts go.
    pub daemon: Arc<Daemon>,
}

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics {
            inner,
            daemon: Arc::clone(&self.daemon),
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The CRI method of a gRPC path (`/runtime.v1.RuntimeService/Version` → `Version`).
fn method_of(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The gRPC status name of a code number.
fn code_name(code: &str) -> &'static str {
    match code.parse::<i32>().map(tonic::Code::from) {
        Ok(tonic::Code::Ok) => "OK",
        Ok(tonic::Code::Cancelled) => "Canceled",
        Ok(tonic::Code::InvalidArgument) => "InvalidArgument",
        Ok(tonic::Code::DeadlineExceeded) => "DeadlineExceeded",
        Ok(tonic::Code::NotFound) => "NotFound",
        Ok(tonic::Code::AlreadyExists) => "AlreadyExists",
        Ok(tonic::Code::PermissionDenied) => "PermissionDenied",
        Ok(tonic::Code::ResourceExhausted) => "ResourceExhausted",
        Ok(tonic::Code::FailedPrecondition) => "FailedPrecondition",
        Ok(tonic::Code::Aborted) => "Aborted",
        Ok(tonic::Code::OutOfRange) => "OutOfRange",
        Ok(tonic::Code::Unimplemented) => "Unimplemented",
        Ok(tonic::Code::Internal) => "Internal",
        Ok(tonic::Code::Unavailable) => "Unavailable",
        Ok(tonic::Code::DataLoss) => "DataLoss",
        Ok(tonic::Code::Unauthenticated) => "Unauthenticated",
        _ => "Unknown",
    }
}

impl<S, B, RB> tower::Service<http::Request<B>> for RpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = method_of(request.uri().path()).to_owned();
        let daemon = Arc::clone(&self.daemon);
        let started = Instant::now();
        let call = self.inner.call(request);
        Box::pin(async move {
            let result = call.await;
            // Errors are trailers-only responses: the status is in the headers. A call
            // whose status comes in trailers (a stream, or a success) counts as OK here.
            let code = match &result {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .map_or("OK", code_name),
                Err(_) => "Unknown",
            };
            daemon.metrics.rpc(&method, code, started.elapsed());
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_and_pulls_are_encoded_as_openmetrics() {
        let m = Metrics::default();
        m.rpc("Version", "OK", Duration::from_millis(3));
        m.rpc("Version", "NotFound", Duration::from_millis(200));
        m.pull(true, 1000, Duration::from_secs(2));
        let mut steps = m.steps("create_container");
        steps.mark("image");
        steps.mark("image");
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &m.registry).expect("encode");
        for line in [
            "crisp_grpc_request_duration_seconds_bucket{le=\"0.001\",method=\"Version\"} 0\n",
            "crisp_grpc_request_duration_seconds_bucket{le=\"0.005\",method=\"Version\"} 1\n",
            "crisp_grpc_request_duration_seconds_bucket{le=\"+Inf\",method=\"Version\"} 2\n",
            "crisp_grpc_requests_total{method=\"Version\",code=\"NotFound\"} 1\n",
            "crisp_image_pulls_total{outcome=\"failure\"} 0\n",
            "crisp_image_pull_bytes_total 1000\n",
            "crisp_operation_step_duration_seconds_count{operation=\"create_container\",step=\"image\"} 2\n",
            "# EOF\n",
        ] {
            assert!(out.contains(line), "{line} in {out}");
        }
    }

    #[test]
    fn methods_and_codes_are_named() {
        assert_eq!(method_of("/runtime.v1.RuntimeService/Version"), "Version");
        assert_eq!(code_name("5"), "NotFound");
        assert_eq!(code_name("0"), "OK");
        assert_eq!(code_name("x"), "Unknown");
    }
}
