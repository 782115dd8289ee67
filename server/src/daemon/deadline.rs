//! Client deadlines answered the way gRPC specifies: a call that outlives the client's
//! `grpc-timeout` ends with DEADLINE_EXCEEDED (tonic's own handling answers CANCELLED,
//! which kubelet and critest treat differently).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// Wraps a service, enforcing each request's `grpc-timeout`.
#[derive(Debug, Clone)]
pub struct Deadlines<S> {
    inner: S,
}

/// The layer that builds [`Deadlines`].
#[derive(Debug, Clone, Copy, Default)]
pub struct DeadlineLayer;

impl<S> tower::Layer<S> for DeadlineLayer {
    type Service = Deadlines<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Deadlines { inner }
    }
}

/// `grpc-timeout`: up to 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, RB> tower::Service<http::Request<B>> for Deadlines<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Send + 'static,
    S::Future: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // Taken off the request so that tonic's own handling does not race ours.
        let timeout = request
            .headers_mut()
            .remove("grpc-timeout")
            .and_then(|v| v.to_str().ok().and_then(parse_timeout));
        let call = self.inner.call(request);
        Box::pin(async move {
            match timeout {
                None => call.await,
                Some(after) => match tokio::time::timeout(after, call).await {
                    Ok(result) => result,
                    Err(_) => Ok(tonic::Status::deadline_exceeded(format!(
                        "the client's deadline of {after:?} passed before the call finished"
                    ))
                    .into_http()),
                },
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use tower::{Service, ServiceExt};

    use super::*;

    #[tokio::test]
    async fn a_passed_deadline_is_deadline_exceeded_and_the_header_is_consumed() {
        let slow = tower::service_fn(|req: http::Request<()>| async move {
            assert!(
                req.headers().get("grpc-timeout").is_none(),
                "header left for tonic"
            );
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
        });
        let mut service = tower::Layer::layer(&DeadlineLayer, slow);
        let request = http::Request::builder()
            .header("grpc-timeout", "50m")
            .body(())
            .expect("request");
        let started = std::time::Instant::now();
        let response = service
            .ready()
            .await
            .expect("ready")
            .call(request)
            .await
            .expect("response");
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(
            response.headers().get("grpc-status").map(|v| v.as_bytes()),
            Some(&b"4"[..])
        );
        let quick = tower::service_fn(|_: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
        });
        let mut service = tower::Layer::layer(&DeadlineLayer, quick);
        let request = http::Request::builder()
            .header("grpc-timeout", "5S")
            .body(())
            .expect("request");
        let response = service
            .ready()
            .await
            .expect("ready")
            .call(request)
            .await
            .expect("response");
        assert_eq!(response.body(), "ok");
    }

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_timeout("1m"), Some(Duration::from_millis(1)));
        assert_eq!(parse_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_timeout("3H"), Some(Duration::from_secs(10800)));
        assert_eq!(
            parse_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        assert_eq!(parse_timeout("123456789m"), None, "more than 8 digits");
        assert_eq!(parse_timeout("5x"), None);
        assert_eq!(parse_timeout("m"), None);
    }
}
