//! A delivery handed out to be attempted. [`Queue::due`] hands out [`Lease`]s; a task stays
//! taken (never handed out twice) while its lease lives. The holder makes the attempt and
//! [`Lease::finish`]es it with the outcome; a lease dropped unfinished — the subscription
//! was disabled meanwhile (the delivery is parked), or the attempt was cancelled — hands the
//! task back to its lane as it was: nothing on disk changes and it is due again. So no path,
//! not even a cancelled future, can leave a task taken for good.

use herald_proto::v1 as pb;

use super::{Next, Queue, QueueError, Task};

/// A task handed out by [`Queue::due`]; it reads as the [`Task`] it holds.
pub struct Lease {
    /// `None` once finished.
    task: Option<Task>,
    queue: Queue,
}

impl Lease {
    pub(super) fn new(task: Task, queue: Queue) -> Self {
        Lease {
            task: Some(task),
            queue,
        }
    }

    /// The attempt has ended with `next` (done, or a retry time) and `report`: its lane has
    /// room for another attempt at once, and the outcome and report are committed together.
    /// The task stays taken until that commit is made (or, if the disk refuses it, until a
    /// later commit succeeds: then it is due again, as it was).
    pub async fn finish(mut self, next: Next, report: pb::Attempt) -> Result<(), QueueError> {
        let Some(task) = self.task.take() else {
            return Ok(());
        };
        self.queue.attempted(&task);
        self.queue.complete(task, next, report).await
    }
}

impl std::ops::Deref for Lease {
    type Target = Task;

    fn deref(&self) -> &Task {
        // Only `finish` empties it, and it consumes the lease.
        self.task
            .as_ref()
            .unwrap_or_else(|| unreachable!("a lease is read before it is finished"))
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            self.queue.release(&task);
        }
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Lease").field(&self.task).finish()
    }
}
