//! The tasks behind the server's streaming answers (an agent's config stream, its report
//! acks, a log tail). Each one ends when its client goes away or the replica shuts down, and
//! belongs to the replica's task tracker, which drains it with the calls at shutdown, within
//! the grace period: no stream's work is cut off half-way or left running unowned.

use std::future::Future;
use std::pin::Pin;

use futures_util::Stream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Where a service's streams run, and what ends them.
#[derive(Clone)]
pub struct Streams {
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Streams {
    /// Streams that end on `shutdown`, their tasks owned by `tasks`.
    pub fn new(shutdown: CancellationToken, tasks: &TaskTracker) -> Self {
        Streams {
            shutdown,
            tasks: tasks.clone(),
        }
    }

    /// Cancelled when the replica shuts down: every stream's task watches it.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// A stream fed by `produce`, run as a task of the tracker through a small channel; the
    /// task ends when the client goes away (the channel closes) or at shutdown.
    pub fn stream<T, F, Fut>(&self, produce: F) -> Pin<Box<dyn Stream<Item = T> + Send>>
    where
        T: Send + 'static,
        F: FnOnce(tokio::sync::mpsc::Sender<T>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        self.tasks.spawn(produce(tx));
        Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
    }

    /// Runs `task`, work a stream hands off to go on beside it, owned by the same tracker.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task);
    }
}
