//! crisp's own Prometheus metrics: per-RPC latency histograms and error counts (a tower
//! layer around the gRPC services), image pull counts, bytes and durations, pods and
//! containers by state, and monitor processes; served as Prometheus text (format 0.0.4) on
//! `GET /metrics` at `[metrics] address`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::state::Daemon;

/// Histogram bucket bounds, seconds.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0, 300.0,
];

#[derive(Debug, Clone, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (i, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                self.counts[i] += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, bound) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {}",
                self.counts[i]
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

#[derive(Debug, Default)]
struct Inner {
    rpc_latency: BTreeMap<String, Histogram>,
    rpc_codes: BTreeMap<(String, String), u64>,
    pulls: BTreeMap<&'static str, u64>,
    pull_bytes: u64,
    pull_latency: Histogram,
}

/// The counters.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        match self.inner.lock() {
            Ok(mut g) => f(&mut g),
            Err(p) => f(&mut p.into_inner()),
        }
    }

    /// Records one finished RPC.
    pub fn rpc(&self, method: &str, code: &str, took: Duration) {
        self.with(|m| {
            m.rpc_latency
                .entry(method.to_owned())
                .or_default()
                .observe(took.as_secs_f64());
            *m.rpc_codes
                .entry((method.to_owned(), code.to_owned()))
                .or_default() += 1;
        });
    }

    /// Records one PullImage: whether it succeeded, the image's size, how long it took.
    pub fn pull(&self, ok: bool, bytes: u64, took: Duration) {
        self.with(|m| {
            *m.pulls
                .entry(if ok { "success" } else { "failure" })
                .or_default() += 1;
            if ok {
                m.pull_bytes += bytes;
                m.pull_latency.observe(took.as_secs_f64());
            }
        });
    }

    /// The metrics in Prometheus text format.
    pub fn render(&self, daemon: &Daemon) -> String {
        let mut out = String::new();
        self.with(|m| {
            out.push_str("# HELP crisp_grpc_request_duration_seconds CRI call latency.\n");
            out.push_str("# TYPE crisp_grpc_request_duration_seconds histogram\n");
            for (method, h) in &m.rpc_latency {
                h.render(
                    &mut out,
                    "crisp_grpc_request_duration_seconds",
                    &format!("method=\"{}\"", escape(method)),
                );
            }
            out.push_str("# HELP crisp_grpc_requests_total CRI calls by method and status code.\n");
            out.push_str("# TYPE crisp_grpc_requests_total counter\n");
            for ((method, code), n) in &m.rpc_codes {
                let _ = writeln!(
                    out,
                    "crisp_grpc_requests_total{{method=\"{}\",code=\"{}\"}} {n}",
                    escape(method),
                    escape(code)
                );
            }
            out.push_str("# HELP crisp_image_pulls_total PullImage calls by outcome.\n");
            out.push_str("# TYPE crisp_image_pulls_total counter\n");
            for outcome in ["success", "failure"] {
                let n = m.pulls.get(outcome).copied().unwrap_or(0);
                let _ = writeln!(out, "crisp_image_pulls_total{{outcome=\"{outcome}\"}} {n}");
            }
            out.push_str("# HELP crisp_image_pull_bytes_total Size of the images pulled.\n");
            out.push_str("# TYPE crisp_image_pull_bytes_total counter\n");
            let _ = writeln!(out, "crisp_image_pull_bytes_total {}", m.pull_bytes);
            out.push_str("# HELP crisp_image_pull_duration_seconds Successful pull time.\n");
            out.push_str("# TYPE crisp_image_pull_duration_seconds histogram\n");
            m.pull_latency
                .render(&mut out, "crisp_image_pull_duration_seconds", "");
        });
        let mut containers: BTreeMap<&str, u64> = BTreeMap::new();
        for c in daemon.containers.all() {
            let state = match c.snapshot().state() {
                crate::container::State::Created => "created",
                crate::container::State::Running => "running",
                crate::container::State::Exited { .. } => "exited",
            };
            *containers.entry(state).or_default() += 1;
        }
        out.push_str("# HELP crisp_containers Containers by state.\n");
        out.push_str("# TYPE crisp_containers gauge\n");
        for state in ["created", "running", "exited"] {
            let n = containers.get(state).copied().unwrap_or(0);
            let _ = writeln!(out, "crisp_containers{{state=\"{state}\"}} {n}");
        }
        let (mut ready, mut not_ready) = (0, 0);
        for p in daemon.pods.all() {
            if p.snapshot().ready {
                ready += 1;
            } else {
                not_ready += 1;
            }
        }
        out.push_str("# HELP crisp_pods Pod sandboxes by state.\n");
        out.push_str("# TYPE crisp_pods gauge\n");
        let _ = writeln!(out, "crisp_pods{{state=\"ready\"}} {ready}");
        let _ = writeln!(out, "crisp_pods{{state=\"notready\"}} {not_ready}");
        out.push_str("# HELP crisp_monitor_processes crisp-monitor processes on this host.\n");
        out.push_str("# TYPE crisp_monitor_processes gauge\n");
        let _ = writeln!(out, "crisp_monitor_processes {}", monitor_processes());
        out
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Processes whose command is crisp-monitor (container monitors and PID-namespace inits).
fn monitor_processes() -> usize {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return 0;
    };
    procs
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter(|e| {
            std::fs::read_to_string(e.path().join("comm"))
                .is_ok_and(|c| c.trim() == "crisp-monitor")
        })
        .count()
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
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
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
    fn histograms_are_cumulative() {
        let mut h = Histogram::default();
        h.observe(0.003);
        h.observe(0.2);
        h.observe(1000.0);
        let mut out = String::new();
        h.render(&mut out, "x", "method=\"A\"");
        assert!(
            out.contains("x_bucket{method=\"A\",le=\"0.001\"} 0\n"),
            "{out}"
        );
        assert!(
            out.contains("x_bucket{method=\"A\",le=\"0.005\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("x_bucket{method=\"A\",le=\"0.25\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("x_bucket{method=\"A\",le=\"+Inf\"} 3\n"),
            "{out}"
        );
        assert!(out.contains("x_count{method=\"A\"} 3\n"), "{out}");
    }

    #[test]
    fn methods_and_codes_are_named() {
        assert_eq!(method_of("/runtime.v1.RuntimeService/Version"), "Version");
        assert_eq!(code_name("5"), "NotFound");
        assert_eq!(code_name("0"), "OK");
        assert_eq!(code_name("x"), "Unknown");
        assert_eq!(escape("a\"b"), "a\\\"b");
    }
}
