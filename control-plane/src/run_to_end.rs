//! Calls that change something run to their end once started, whoever stops waiting.
//!
//! A server drops a call's handler when its caller goes away: a gRPC deadline that expires, a
//! cancelled call, a closed browser tab. A handler dropped between its two writes (the change
//! in the config store, then its audit entry in the log) leaves a change made without its
//! entry. Under [`RunToEndLayer`] each such call's handler is a task of its own, owned by the
//! replica's task tracker (drained within the grace period at shutdown): the caller may stop
//! waiting, the handler does not stop working.
//!
//! Only what can change something is run so: the operator API's gRPC services that write
//! (each wrapped on its own; the agents' streams are not), and HTTP requests other than `GET`,
//! `HEAD` and `OPTIONS` (reads, pages and event streams are dropped with their caller as
//! before). At most [`MAX_DETACHED`] run at once on a replica: a caller that opens and
//! abandons calls in a loop waits for room like any other, and a call abandoned while it
//! waits never starts.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

/// Calls that run to their end at once on a replica; more wait for room.
pub const MAX_DETACHED: usize = 256;

/// Runs each call that changes something as a task of `tasks`.
#[derive(Clone)]
pub struct RunToEndLayer {
    tasks: TaskTracker,
    room: Arc<Semaphore>,
}

impl RunToEndLayer {
    /// Calls become tasks of `tasks`, at most [`MAX_DETACHED`] at once (shared by every
    /// service this layer wraps).
    pub fn new(tasks: &TaskTracker) -> Self {
        Self::with_room(tasks, MAX_DETACHED)
    }

    /// `service`, its calls that change something run to their end.
    pub fn wrap<S>(&self, service: S) -> RunToEnd<S> {
        tower::Layer::layer(self, service)
    }

    /// [`RunToEndLayer::new`] with room for `room` calls at once.
    fn with_room(tasks: &TaskTracker, room: usize) -> Self {
        RunToEndLayer {
            tasks: tasks.clone(),
            room: Arc::new(Semaphore::new(room)),
        }
    }
}

impl<S> tower::Layer<S> for RunToEndLayer {
    type Service = RunToEnd<S>;

    fn layer(&self, inner: S) -> RunToEnd<S> {
        RunToEnd {
            inner,
            tasks: self.tasks.clone(),
            room: self.room.clone(),
        }
    }
}

/// A service whose calls that change something run to their end; see [`RunToEndLayer`].
#[derive(Clone)]
pub struct RunToEnd<S> {
    inner: S,
    tasks: TaskTracker,
    room: Arc<Semaphore>,
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for RunToEnd<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tower::Service<http::Request<B>> for RunToEnd<S>
where
    S: tower::Service<http::Request<B>, Error = Infallible>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let reads = matches!(
            *request.method(),
            http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
        );
        // Not started until polled: a call dropped before then does nothing.
        let call = self.inner.call(request);
        if reads {
            return Box::pin(call);
        }
        let (tasks, room) = (self.tasks.clone(), self.room.clone());
        Box::pin(async move {
            let Ok(permit) = room.acquire_owned().await else {
                // The semaphore is never closed.
                return std::future::pending().await;
            };
            let call = tasks.spawn(async move {
                let _permit = permit;
                call.await
            });
            match call.await {
                Ok(response) => response,
                // The handler's panic goes on where it would have without this layer.
                Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
                // Never aborted: only a runtime shutting down cancels it, and then nobody is
                // left to answer.
                Err(_) => std::future::pending().await,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower::{Service as _, ServiceExt as _};

    /// A service under the layer whose handler ends each call once `release` lets it, and
    /// counts the calls that ended.
    struct Held {
        tasks: TaskTracker,
        finished: Arc<AtomicUsize>,
        release: Arc<tokio::sync::Notify>,
        service:
            RunToEnd<tower::util::BoxCloneSyncService<http::Request<()>, &'static str, Infallible>>,
    }

    impl Held {
        fn new(room: usize) -> Self {
            let tasks = TaskTracker::new();
            let finished = Arc::new(AtomicUsize::new(0));
            let release = Arc::new(tokio::sync::Notify::new());
            let handler = {
                let (finished, release) = (finished.clone(), release.clone());
                tower::service_fn(move |_: http::Request<()>| {
                    let (finished, release) = (finished.clone(), release.clone());
                    async move {
                        release.notified().await;
                        finished.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, Infallible>("done")
                    }
                })
            };
            let service = RunToEndLayer::with_room(&tasks, room)
                .wrap(tower::util::BoxCloneSyncService::new(handler));
            Held {
                tasks,
                finished,
                release,
                service,
            }
        }

        /// Calls with `method`, polls the call once (as a server does before its caller can
        /// go away), then drops it.
        async fn abandon(&mut self, method: http::Method) {
            let request = http::Request::builder()
                .method(method)
                .uri("/")
                .body(())
                .expect("a request");
            let mut call = self.service.ready().await.expect("ready").call(request);
            assert!(futures_util::poll!(&mut call).is_pending(), "not done yet");
        }

        /// Lets a handler end, waits for every task, and counts the calls that ended.
        async fn ended(self) -> usize {
            self.release.notify_one();
            self.tasks.close();
            self.tasks.wait().await;
            tokio::task::yield_now().await;
            self.finished.load(Ordering::SeqCst)
        }
    }

    #[tokio::test]
    async fn a_call_that_changes_something_runs_to_its_end_when_its_caller_goes() {
        let mut held = Held::new(MAX_DETACHED);
        held.abandon(http::Method::POST).await;
        assert_eq!(held.ended().await, 1, "the handler ran to its end");
    }

    #[tokio::test]
    async fn a_read_goes_with_its_caller() {
        let mut held = Held::new(MAX_DETACHED);
        held.abandon(http::Method::GET).await;
        assert_eq!(held.ended().await, 0, "dropped, as without the layer");
    }

    #[tokio::test]
    async fn a_call_abandoned_while_it_waits_for_room_never_starts() {
        let mut held = Held::new(1);
        held.abandon(http::Method::POST).await;
        // No room: it waits, and is abandoned while waiting.
        held.abandon(http::Method::DELETE).await;
        assert_eq!(held.ended().await, 1, "only the first ran");
    }

    #[tokio::test]
    async fn a_call_answers_as_its_handler_does() {
        let tasks = TaskTracker::new();
        let mut service = RunToEndLayer::new(&tasks).wrap(tower::service_fn(
            |request: http::Request<u32>| async move { Ok::<_, Infallible>(request.body() + 1) },
        ));
        let post = http::Request::post("/").body(41).expect("a request");
        let answer = service.ready().await.expect("ready").call(post).await;
        assert_eq!(answer, Ok(42));
    }
}
