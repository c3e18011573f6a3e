//! Calls that run to their end once started, whoever stops waiting for them.
//!
//! A server drops a call's handler when its caller goes away: a gRPC deadline that expires, a
//! cancelled call, a closed browser tab. A handler dropped between its two writes (the change
//! in the config store, then its audit entry in the log) leaves a change made without its
//! entry. Under [`RunToEndLayer`] each call's handler is a task of its own, owned by the
//! replica's task tracker (drained within the grace period at shutdown): the caller may stop
//! waiting, the handler does not stop working. Streams are unaffected: a handler returns their
//! response at once, and the stream's body ends when its caller goes.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio_util::task::TaskTracker;

/// Runs each call of the services it wraps as a task of `tasks`.
#[derive(Clone)]
pub struct RunToEndLayer {
    tasks: TaskTracker,
}

impl RunToEndLayer {
    /// Calls become tasks of `tasks`.
    pub fn new(tasks: &TaskTracker) -> Self {
        RunToEndLayer {
            tasks: tasks.clone(),
        }
    }
}

impl<S> tower::Layer<S> for RunToEndLayer {
    type Service = RunToEnd<S>;

    fn layer(&self, inner: S) -> RunToEnd<S> {
        RunToEnd {
            inner,
            tasks: self.tasks.clone(),
        }
    }
}

/// A service whose calls run to their end; see [`RunToEndLayer`].
#[derive(Clone)]
pub struct RunToEnd<S> {
    inner: S,
    tasks: TaskTracker,
}

impl<S, R> tower::Service<R> for RunToEnd<S>
where
    S: tower::Service<R, Error = Infallible>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let call = self.tasks.spawn(self.inner.call(request));
        Box::pin(async move {
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
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tower::{Layer as _, Service as _, ServiceExt as _};

    #[tokio::test]
    async fn a_call_whose_caller_stops_waiting_still_ends() {
        let tasks = TaskTracker::new();
        let finished = Arc::new(AtomicBool::new(false));
        let release = Arc::new(tokio::sync::Notify::new());
        let handler = {
            let (finished, release) = (finished.clone(), release.clone());
            tower::service_fn(move |()| {
                let (finished, release) = (finished.clone(), release.clone());
                async move {
                    release.notified().await;
                    finished.store(true, Ordering::SeqCst);
                    Ok::<_, Infallible>("done")
                }
            })
        };
        let mut service = RunToEndLayer::new(&tasks).layer(handler);
        let call = service.ready().await.expect("ready").call(());
        // The caller goes away before the handler is done.
        drop(call);
        release.notify_one();
        tasks.close();
        tasks.wait().await;
        assert!(
            finished.load(Ordering::SeqCst),
            "the handler ran to its end"
        );
    }

    #[tokio::test]
    async fn a_call_answers_as_its_handler_does() {
        let tasks = TaskTracker::new();
        let mut service =
            RunToEndLayer::new(&tasks).layer(tower::service_fn(|n: u32| async move {
                Ok::<_, Infallible>(n + 1)
            }));
        let answer = service.ready().await.expect("ready").call(41).await;
        assert_eq!(answer, Ok(42));
    }
}
