//! A server's budget of request bytes held at once. Without one, a burst of concurrent large
//! calls (say 300 `EmitBatch` calls of 3 MB each) is read and decoded all together, and the
//! process holds all of it: hundreds of megabytes, which the allocator keeps afterwards, for a
//! sidecar that is meant to run in a few dozen.
//!
//! With the budget, a request reads its first message's length prefix and takes that many
//! bytes of the budget (the whole budget at most) before any more of its body is read; it
//! gives them back when its response is ready, that is once the handler is done with the
//! message. A request that finds the budget spent waits, and HTTP/2 flow control holds its
//! bytes back on the caller's side meanwhile. Callers see a slower answer, never a refusal.
//! Waiting is first come, first served, so a large request is not starved by small ones.
//!
//! Waiting must not stall the requests being read: bytes of a waiting request that arrived
//! before it was stopped sit unread in the connection's HTTP/2 window, and if those filled the
//! window, nothing more could arrive on that connection for the others. A server using the
//! budget therefore sets the HTTP/2 limits below ([`MAX_STREAMS_PER_CONNECTION`],
//! [`STREAM_WINDOW`], [`CONNECTION_WINDOW`]): every waiting request together can hold at most
//! half the connection's window.
//!
//! Only the first message of a request is counted: meant for unary calls (the agent's `Emit`
//! and `EmitBatch`), where it is the whole request. A request never holds more than one share,
//! and waits holding none, so requests cannot block each other in a cycle. Streams of requests
//! count each message instead ([`crate::message_shares`]).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};

use crate::message_limit::{PREFIX_BYTES, declared_length};

pub use crate::MAX_STREAMS_PER_CONNECTION;
/// The HTTP/2 window of one request: what it may send ahead of being read (HTTP/2's default).
pub const STREAM_WINDOW: u32 = 64 * 1024;
/// The HTTP/2 window of one connection: room for every request's window twice over.
pub const CONNECTION_WINDOW: u32 = 2 * MAX_STREAMS_PER_CONNECTION * STREAM_WINDOW;

/// The bytes of requests a server holds at once, shared by every connection; cloning shares
/// it.
#[derive(Clone)]
pub struct RequestBudget {
    permits: Arc<Semaphore>,
    total: u32,
    waiting: Arc<AtomicUsize>,
}

impl RequestBudget {
    /// A budget of `bytes` (at least one byte, at most `u32::MAX`).
    pub fn new(bytes: usize) -> Self {
        let total = u32::try_from(bytes.max(1)).unwrap_or(u32::MAX);
        RequestBudget {
            permits: Arc::new(Semaphore::new(total as usize)),
            total,
            waiting: Arc::default(),
        }
    }

    /// The bytes held now by requests being read or handled.
    pub fn held_bytes(&self) -> u64 {
        u64::from(self.total) - self.permits.available_permits() as u64
    }

    /// The requests waiting now for their share.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// The tower layer a gRPC server puts in front of its services.
    pub fn layer(&self) -> RequestBudgetLayer {
        RequestBudgetLayer {
            budget: self.clone(),
        }
    }

    /// The share of the budget a first message of `length` bytes takes.
    pub(crate) fn share(&self, length: usize) -> u32 {
        u32::try_from(length).unwrap_or(u32::MAX).min(self.total)
    }

    /// Takes `share` bytes of the budget, waiting (counted in [`RequestBudget::waiting`]) while
    /// they are not free.
    pub(crate) async fn take(&self, share: u32) -> Result<OwnedSemaphorePermit, AcquireError> {
        if let Ok(permit) = self.permits.clone().try_acquire_many_owned(share) {
            return Ok(permit);
        }
        let _waiting = Waiting::count(&self.waiting);
        self.permits.clone().acquire_many_owned(share).await
    }
}

/// One request counted as waiting for as long as it lives, however its wait ends (its share
/// granted, or its caller gone).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn count(waiting: &'a AtomicUsize) -> Self {
        waiting.fetch_add(1, Ordering::Relaxed);
        Waiting(waiting)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The layer of [`RequestBudget::layer`].
#[derive(Clone)]
pub struct RequestBudgetLayer {
    budget: RequestBudget,
}

impl<S> tower::Layer<S> for RequestBudgetLayer {
    type Service = Budgeted<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Budgeted {
            inner,
            budget: self.budget.clone(),
        }
    }
}

/// A service whose requests each take their share of the budget before they are read.
#[derive(Clone)]
pub struct Budgeted<S> {
    inner: S,
    budget: RequestBudget,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> tower::Service<http::Request<tonic::body::Body>> for Budgeted<S>
where
    S: tower::Service<http::Request<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send,
    S::Response: Send,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        // The clone that was made ready serves this call; the fresh one waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let budget = self.budget.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let (read, rest) = read_prefix(body).await;
            let share = read.length.map_or(0, |length| budget.share(length));
            // The semaphore is never closed, so a share is always granted in the end.
            let permit = match share {
                0 => None,
                share => budget.take(share).await.ok(),
            };
            let body = tonic::body::Body::new(Replayed {
                read: read.frames,
                rest,
            });
            let response = inner.call(http::Request::from_parts(parts, body)).await;
            drop(permit);
            response
        })
    }
}

/// What was read of a body to learn its first message's length.
struct Prefix {
    /// The frames read, to be handed on first, in order.
    frames: Vec<Result<Frame<Bytes>, tonic::Status>>,
    /// The first message's declared length: `None` when the body ended, failed or sent
    /// trailers before a whole prefix came.
    length: Option<usize>,
}

/// Reads `body` until its first message's length prefix is in (usually the first frame).
async fn read_prefix(mut body: tonic::body::Body) -> (Prefix, tonic::body::Body) {
    let mut frames = Vec::new();
    let mut prefix = [0u8; PREFIX_BYTES];
    let mut prefix_read = 0;
    loop {
        let next = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        let frame = match next {
            None => break,
            Some(frame) => frame,
        };
        let data = match &frame {
            Ok(frame) => frame.data_ref().cloned(),
            Err(_) => None,
        };
        let ended = data.is_none();
        frames.push(frame);
        if ended {
            break;
        }
        if let Some(data) = data {
            let taken = (PREFIX_BYTES - prefix_read).min(data.len());
            prefix[prefix_read..prefix_read + taken].copy_from_slice(&data[..taken]);
            prefix_read += taken;
            if prefix_read == PREFIX_BYTES {
                let read = Prefix {
                    frames,
                    length: Some(declared_length(prefix)),
                };
                return (read, body);
            }
        }
    }
    (
        Prefix {
            frames,
            length: None,
        },
        body,
    )
}

/// A body whose first frames were read already: those, then the rest.
struct Replayed {
    read: Vec<Result<Frame<Bytes>, tonic::Status>>,
    rest: tonic::body::Body,
}

impl Body for Replayed {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = self.get_mut();
        if !this.read.is_empty() {
            return Poll::Ready(Some(this.read.remove(0)));
        }
        Pin::new(&mut this.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.read.is_empty() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.rest.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::time::Duration;

    use tokio::sync::{mpsc, oneshot};
    use tower::{Layer as _, Service as _, ServiceExt as _};

    use super::*;

    /// A request body of these chunks, in order.
    struct Chunks(Vec<Bytes>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = tonic::Status;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
            let this = self.get_mut();
            match this.0.is_empty() {
                true => Poll::Ready(None),
                false => Poll::Ready(Some(Ok(Frame::data(this.0.remove(0))))),
            }
        }
    }

    /// A request carrying one gRPC message of `length` bytes, cut in chunks of `cut`.
    fn request(length: u32, cut: usize) -> http::Request<tonic::body::Body> {
        let mut bytes = vec![0];
        bytes.extend_from_slice(&length.to_be_bytes());
        bytes.resize(PREFIX_BYTES + length as usize, 7);
        let chunks = bytes.chunks(cut).map(Bytes::copy_from_slice).collect();
        http::Request::new(tonic::body::Body::new(Chunks(chunks)))
    }

    /// A request's body as the test server read it, and the way to make it answer.
    type ReadBody = (Vec<u8>, oneshot::Sender<()>);

    /// The service under test: the budget in front of a test server.
    type Server = Budgeted<
        tower::util::BoxCloneService<
            http::Request<tonic::body::Body>,
            http::Response<()>,
            Infallible,
        >,
    >;

    /// A server that reports each request's body as it has read it whole, then answers when
    /// told to.
    fn server(budget: &RequestBudget) -> (Server, mpsc::UnboundedReceiver<ReadBody>) {
        let (read_tx, read_rx) = mpsc::unbounded_channel();
        let inner = tower::service_fn(move |request: http::Request<tonic::body::Body>| {
            let read_tx = read_tx.clone();
            async move {
                let mut body = request.into_body();
                let mut read = Vec::new();
                while let Some(frame) =
                    std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
                {
                    if let Some(data) = frame.expect("a data frame").data_ref() {
                        read.extend_from_slice(data);
                    }
                }
                let (answer, answered) = oneshot::channel();
                read_tx.send((read, answer)).expect("the test listens");
                let _ = answered.await;
                Ok::<_, Infallible>(http::Response::new(()))
            }
        });
        let inner = tower::util::BoxCloneService::new(inner);
        (budget.layer().layer(inner), read_rx)
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_is_not_read_until_the_one_before_it_has_answered_and_given_back_its_share() {
        let budget = RequestBudget::new(10);
        let (mut server, mut read) = server(&budget);
        let first = tokio::spawn(server.ready().await.expect("ready").call(request(8, 3)));
        let (body, answer_first) = read.recv().await.expect("the first is read");
        assert_eq!(body.len(), PREFIX_BYTES + 8, "read whole, as sent");
        assert_eq!(budget.held_bytes(), 8);

        let second = tokio::spawn(server.ready().await.expect("ready").call(request(8, 100)));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(read.try_recv().is_err(), "the second waits for room");
        assert_eq!(budget.waiting(), 1);

        answer_first.send(()).expect("answered");
        first.await.expect("the first ends").expect("an answer");
        let (_, answer_second) = read.recv().await.expect("then the second is read");
        assert_eq!(budget.waiting(), 0);
        assert_eq!(budget.held_bytes(), 8);
        answer_second.send(()).expect("answered");
        second.await.expect("the second ends").expect("an answer");
        assert_eq!(budget.held_bytes(), 0, "every share given back");
    }

    #[tokio::test(start_paused = true)]
    async fn small_requests_share_the_budget_and_one_larger_than_it_takes_it_all() {
        let budget = RequestBudget::new(10);
        let (mut server, mut read) = server(&budget);
        let a = tokio::spawn(server.ready().await.expect("ready").call(request(4, 2)));
        let b = tokio::spawn(server.ready().await.expect("ready").call(request(4, 1)));
        let (_, answer_a) = read.recv().await.expect("a is read");
        let (_, answer_b) = read.recv().await.expect("b is read beside it");
        assert_eq!(budget.held_bytes(), 8);

        let large = tokio::spawn(server.ready().await.expect("ready").call(request(50, 7)));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            read.try_recv().is_err(),
            "the large one waits for the whole budget"
        );
        answer_a.send(()).expect("answered");
        answer_b.send(()).expect("answered");
        let (body, answer_large) = read.recv().await.expect("then the large one is read");
        assert_eq!(body.len(), PREFIX_BYTES + 50);
        assert_eq!(budget.held_bytes(), 10, "all of it, and no more");
        answer_large.send(()).expect("answered");
        for call in [a, b, large] {
            call.await.expect("ends").expect("an answer");
        }
        assert_eq!(budget.held_bytes(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_that_leaves_while_waiting_takes_nothing_with_it() {
        let budget = RequestBudget::new(10);
        let (mut server, mut read) = server(&budget);
        let first = tokio::spawn(server.ready().await.expect("ready").call(request(10, 100)));
        let (_, answer_first) = read.recv().await.expect("the first is read");
        let gone = tokio::spawn(server.ready().await.expect("ready").call(request(5, 100)));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(budget.waiting(), 1);
        gone.abort();
        let _ = gone.await;
        assert_eq!(budget.waiting(), 0);
        answer_first.send(()).expect("answered");
        first.await.expect("ends").expect("an answer");
        assert_eq!(budget.held_bytes(), 0);
    }

    #[tokio::test]
    async fn a_body_without_a_whole_prefix_is_passed_on_as_it_is() {
        let budget = RequestBudget::new(10);
        let (mut server, mut read) = server(&budget);
        let short =
            http::Request::new(tonic::body::Body::new(Chunks(vec![Bytes::from_static(&[
                0, 0,
            ])])));
        let call = tokio::spawn(server.ready().await.expect("ready").call(short));
        let (body, answer) = read.recv().await.expect("read");
        assert_eq!(body, [0, 0]);
        assert_eq!(budget.held_bytes(), 0);
        answer.send(()).expect("answered");
        call.await.expect("ends").expect("an answer");
    }
}
