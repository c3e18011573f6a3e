//! Calls whose deadline passes are answered `DEADLINE_EXCEEDED`, as gRPC's status table says
//! (the deadline "expires before the server returns status"). tonic's server answers them
//! `CANCELLED` ("Timeout expired"), which a client takes for its own cancellation and which
//! no other gRPC server sends.
//!
//! tonic starts its own timer for a call's `grpc-timeout` outside every layer a server adds,
//! after the inner service has been called; this layer, the first a server adds, starts its
//! timer in that call, so it is never later than tonic's, and it looks at the clock each time
//! it is woken, so it answers first whenever both have run out.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

/// The `grpc-timeout` header of a call.
const GRPC_TIMEOUT: &str = "grpc-timeout";

/// Adds [`Deadline`] to a server: the first of its layers.
#[derive(Clone, Copy, Debug, Default)]
pub struct DeadlineLayer;

impl<S> tower::Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline { inner }
    }
}

/// Answers a call `DEADLINE_EXCEEDED` once its `grpc-timeout` has passed without an answer.
#[derive(Clone, Debug)]
pub struct Deadline<S> {
    inner: S,
}

impl<S, B, R> tower::Service<http::Request<B>> for Deadline<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<R>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // Taken here, before tonic's own timer starts (after this returns).
        let deadline = grpc_timeout(request.headers()).map(|timeout| Instant::now() + timeout);
        let call = self.inner.call(request);
        Box::pin(async move {
            let Some(deadline) = deadline else {
                return call.await;
            };
            let mut call = std::pin::pin!(call);
            let mut sleep = std::pin::pin!(tokio::time::sleep_until(deadline));
            std::future::poll_fn(|cx| {
                if let Poll::Ready(answer) = call.as_mut().poll(cx) {
                    return Poll::Ready(answer);
                }
                if sleep.as_mut().poll(cx).is_ready() || Instant::now() >= deadline {
                    return Poll::Ready(Ok(tonic::Status::deadline_exceeded(
                        "the call's deadline passed before it was answered",
                    )
                    .into_http()));
                }
                Poll::Pending
            })
            .await
        })
    }
}

/// A call's `grpc-timeout`, read as the gRPC over HTTP/2 spec writes it: at most 8 digits and
/// a unit (`H`, `M`, `S`, `m`, `u`, `n`); `None` when it has none or one that does not read.
fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let text = headers.get(GRPC_TIMEOUT)?.to_str().ok()?;
    if text.len() < 2 || text.len() > 9 {
        return None;
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(value * 60 * 60),
        "M" => Duration::from_secs(value * 60),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(timeout: &str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert(GRPC_TIMEOUT, timeout.parse().expect("a header value"));
        headers
    }

    #[test]
    fn timeouts_read_as_the_spec_writes_them() {
        assert_eq!(
            grpc_timeout(&headers("500m")),
            Some(Duration::from_millis(500))
        );
        assert_eq!(grpc_timeout(&headers("2S")), Some(Duration::from_secs(2)));
        assert_eq!(
            grpc_timeout(&headers("1H")),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(
            grpc_timeout(&headers("99999999n")),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in ["", "m", "123456789S", "-1S", "+1S", "1x", "1.5S"] {
            assert_eq!(grpc_timeout(&headers(bad)), None, "{bad:?}");
        }
        assert_eq!(grpc_timeout(&http::HeaderMap::new()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_past_its_deadline_is_deadline_exceeded() {
        use tower::{Layer as _, ServiceExt as _};
        let slow = tower::service_fn(|_: http::Request<()>| async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok::<_, std::convert::Infallible>(http::Response::new(tonic::body::Body::empty()))
        });
        let service = DeadlineLayer.layer(slow);
        let mut request = http::Request::new(());
        request
            .headers_mut()
            .insert(GRPC_TIMEOUT, "500m".parse().expect("a header value"));
        let answer = service.clone().oneshot(request).await.expect("answered");
        let status = tonic::Status::from_header_map(answer.headers()).expect("a status");
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        // A call without a deadline waits for its answer.
        let answer = service
            .oneshot(http::Request::new(()))
            .await
            .expect("answered");
        assert!(tonic::Status::from_header_map(answer.headers()).is_none());
    }
}
