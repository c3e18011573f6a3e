//! Starting on a disk without room. Opening the queue writes (recovery replays the log into
//! the queue file, and a file left by `kill -9` is repaired), and a first start writes the
//! agent's new id, so an agent started while its disk is full or failing cannot do either.
//! Instead of exiting into a supervisor's restart loop, the agent serves meanwhile: health
//! `NOT_SERVING`, and every `herald.v1.Events` call refused as a full disk refuses it later
//! (`RESOURCE_EXHAUSTED` with reason `DISK_FULL`, or `UNAVAILABLE` for an I/O error); it tries
//! again by itself and starts once the disk lets it.

use std::convert::Infallible;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::{Either, Ready, ready};
use tower::ServiceExt;
use tower::util::Oneshot;

use herald_core::disk_fault::DiskFault;

use crate::backoff::Backoff;
use crate::queue::{Queue, QueueConfig, QueueError};
use crate::{Error, agent_id, disk_may_recover};

/// The first wait before opening the queue again, doubling up to [`MOST_WAIT`].
const FIRST_WAIT: Duration = Duration::from_secs(1);
/// The longest wait between tries.
const MOST_WAIT: Duration = Duration::from_secs(30);

/// `herald.v1.Events` as served from the start: the real service once the queue is open
/// ([`EventsOnceOpen::open`]), and until then a refusal that says why the queue is not.
pub struct EventsOnceOpen<S> {
    shared: Arc<Slot<S>>,
}

struct Slot<S> {
    service: OnceLock<S>,
    /// Why the queue is not open yet.
    closed_by: Mutex<QueueError>,
}

impl<S> Clone for EventsOnceOpen<S> {
    fn clone(&self) -> Self {
        EventsOnceOpen {
            shared: self.shared.clone(),
        }
    }
}

impl<S> Default for EventsOnceOpen<S> {
    fn default() -> Self {
        EventsOnceOpen {
            shared: Arc::new(Slot {
                service: OnceLock::new(),
                closed_by: Mutex::new(QueueError::Opening),
            }),
        }
    }
}

impl<S> EventsOnceOpen<S> {
    /// Serves `service` from now on.
    pub fn open(&self, service: S) {
        let _ = self.shared.service.set(service);
    }

    /// Says `why` to callers until the service is open.
    fn refuse_for(&self, why: QueueError) {
        *self
            .shared
            .closed_by
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = why;
    }

    fn refusal(&self) -> tonic::Status {
        let why = self
            .shared
            .closed_by
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        why.into()
    }
}

impl<S> tonic::server::NamedService for EventsOnceOpen<S> {
    const NAME: &'static str = herald_proto::v1::events_server::SERVICE_NAME;
}

impl<S, B> tower_service::Service<http::Request<B>> for EventsOnceOpen<S>
where
    S: tower_service::Service<
            http::Request<B>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + Clone,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Either<Oneshot<S, http::Request<B>>, Ready<Result<Self::Response, Infallible>>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        match self.shared.service.get() {
            Some(service) => Either::Left(service.clone().oneshot(request)),
            None => Either::Right(ready(Ok(self.refusal().into_http()))),
        }
    }
}

/// Makes the agent's id and keeps it in `dir` ([`agent_id::make`]) on its first start. While
/// the disk refuses (full, or failing) the refusal is logged and told to `events`' callers, and
/// the id is made again after a wait, as [`open_queue`] does; a directory that refuses it for
/// good (not writable, on a read-only file system) is returned.
pub async fn make_agent_id<S>(dir: &Path, events: &EventsOnceOpen<S>) -> Result<String, Error> {
    let mut waits = Backoff::new(FIRST_WAIT, MOST_WAIT);
    let fail = |source| Error::DataDir {
        path: dir.display().to_string(),
        source,
    };
    loop {
        let at = dir.to_owned();
        // A thread that failed is not the disk's doing: not waited out.
        let made = tokio::task::spawn_blocking(move || agent_id::make(&at))
            .await
            .map_err(|err| fail(std::io::Error::other(err)))?;
        match made {
            Ok(id) => {
                tracing::info!(agent = %id, "agent id made");
                return Ok(id);
            }
            Err(err) if disk_may_recover(&err) => {
                let wait = waits.next_delay();
                tracing::error!(
                    error = %err,
                    retry_in = ?wait,
                    "cannot keep the agent's new id: its disk refuses to write; serving \
                     NOT_SERVING and refusing events until it can"
                );
                events.refuse_for(DiskFault::of_io(&err).into());
                tokio::time::sleep(wait).await;
            }
            Err(source) => return Err(fail(source)),
        }
    }
}

/// Opens the queue in `dir`. While its disk refuses (full, or an I/O error) the refusal is
/// logged and told to `events`' callers, and the queue is opened again after a wait (1 s,
/// doubling to 30 s); any other failure (a damaged file, one open elsewhere) is returned.
pub async fn open_queue<S>(
    dir: &Path,
    config: QueueConfig,
    events: &EventsOnceOpen<S>,
) -> Result<Queue, QueueError> {
    let mut waits = Backoff::new(FIRST_WAIT, MOST_WAIT);
    let mut refused = false;
    loop {
        // Off the runtime's threads: a long log to replay must not hold up the server, which
        // answers callers and health checks meanwhile.
        let (at, with) = (dir.to_owned(), config.clone());
        let opened = tokio::task::spawn_blocking(move || Queue::open(&at, with))
            .await
            .unwrap_or_else(|err| Err(QueueError::Storage(format!("opening the queue: {err}"))));
        match opened {
            Ok(queue) => {
                if refused {
                    tracing::warn!("the queue's disk lets it write again: the agent starts");
                }
                return Ok(queue);
            }
            Err(err) if err.is_disk_fault() => {
                let wait = waits.next_delay();
                tracing::error!(
                    error = %err,
                    retry_in = ?wait,
                    "cannot open the queue: its disk refuses to write; serving NOT_SERVING \
                     and refusing events until it can"
                );
                events.refuse_for(err);
                refused = true;
                tokio::time::sleep(wait).await;
            }
            Err(err) => return Err(err),
        }
    }
}
