//! Delivery: takes due tasks from the durable queue, makes one attempt each, and records the
//! outcome (done, or the next due time) together with the attempt's report.
//!
//! - [`classify`] decides what an attempt's result means (pure).
//! - [`attempt`] sends one signed request.
//! - [`transport`] is the HTTP transport all attempts share: one pooled client per route
//!   (direct, or through an egress proxy).
//! - [`breaker`] narrows a failing endpoint's lane to one probe at a time.
//! - [`rate`] keeps an endpoint's requests within its rate limit.
//! - [`Dispatcher`] is the scheduler: it hands due tasks to attempts, at most `max_in_flight`
//!   at once, and re-reads the subscription before every attempt so a deleted or disabled one
//!   stops at once. A disabled subscription's lane is closed: its deliveries are parked in the
//!   queue, not attempted and not dropped, until it is enabled again. A retry is a task moved to a later due time in the queue, so it survives
//!   restarts; nothing waits in memory.

pub mod attempt;
pub mod breaker;
pub mod classify;
pub mod oauth2;
pub mod rate;
pub mod transport;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::FutureExt as _;
use herald_core::limits::bound_attempt_text;
use herald_core::retry::{JITTER, jittered};
use herald_core::subscription::{DEFAULT_MAX_IN_FLIGHT, Subscription};
use herald_core::target::TargetPolicy;
use herald_proto::convert::{duration, std_duration, system_time, timestamp};
use herald_proto::v1 as pb;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::attempt::EventRef;
use self::breaker::Breakers;
use self::classify::{AttemptResult, ErrorKind, Outcome, classify};
use self::oauth2::Tokens;
use self::rate::RateLimits;
use self::transport::Transport;
use crate::backoff::unit_random;
use crate::metrics::Metrics;
use crate::queue::{Lease, Queue, Task, now_ms, to_ms};

/// How soon a delivery is tried again after its event could not be read from the queue.
const STORAGE_RETRY: Duration = Duration::from_secs(5);
/// The soonest a delivery is tried again after its attempt failed inside the agent.
const INTERNAL_RETRY: Duration = Duration::from_secs(60);
use crate::routes::Routes;

/// The most tasks taken from the queue in one read.
const MAX_TAKE: usize = 512;
/// Fewer free permits than this and the scheduler yields once before reading the queue.
const MIN_TAKE: usize = 16;
/// The longest the scheduler sleeps without looking at the queue.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// Runs deliveries from the queue.
#[derive(Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
}

struct Inner {
    transport: Transport,
    /// OAuth2 tokens of subscriptions that use them.
    tokens: Tokens,
    routes: watch::Receiver<Arc<Routes>>,
    queue: Queue,
    agent_id: String,
    /// Which targets may be delivered to (URLs are checked here; the transport's
    /// resolver checks the rest).
    policy: TargetPolicy,
    /// Attempts in flight at once, across all subscriptions; 0 pauses delivery.
    max_in_flight: usize,
    permits: Arc<Semaphore>,
    /// Consecutive failures per endpoint, narrowing failing lanes.
    breakers: Breakers,
    /// Token buckets of rate-limited endpoints.
    rates: RateLimits,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    metrics: Metrics,
}

/// What a dispatcher needs.
pub struct DispatcherParts {
    /// The HTTP transport.
    pub transport: Transport,
    /// The routing table.
    pub routes: watch::Receiver<Arc<Routes>>,
    /// The durable queue.
    pub queue: Queue,
    /// This agent's id, in reports.
    pub agent_id: String,
    /// Which targets may be delivered to.
    pub policy: TargetPolicy,
    /// Attempts in flight at most (0 pauses delivery; events are still accepted).
    pub max_in_flight: usize,
    /// Where attempts are counted.
    pub metrics: Metrics,
}

impl Dispatcher {
    /// Starts the scheduler; it stops taking tasks when `shutdown` fires.
    pub fn start(parts: DispatcherParts, shutdown: CancellationToken) -> Self {
        let dispatcher = Dispatcher {
            inner: Arc::new(Inner {
                permits: Arc::new(Semaphore::new(parts.max_in_flight)),
                breakers: Breakers::default(),
                rates: RateLimits::default(),
                transport: parts.transport,
                tokens: Tokens::default(),
                routes: parts.routes,
                queue: parts.queue,
                agent_id: parts.agent_id,
                policy: parts.policy,
                max_in_flight: parts.max_in_flight,
                tasks: TaskTracker::new(),
                shutdown,
                metrics: parts.metrics,
            }),
        };
        let scheduler = dispatcher.inner.clone();
        dispatcher
            .inner
            .tasks
            .spawn(async move { scheduler.schedule().await });
        dispatcher
    }

    /// Makes one test attempt of `event` to subscription `subscription_id` now, outside the
    /// queue: the same target policy, signing and client as a delivery, no retry, disabled
    /// subscriptions too. The attempt is marked `test`; an error says why none was made.
    pub async fn test(
        &self,
        subscription_id: &str,
        event: &pb::Event,
    ) -> Result<pb::Attempt, String> {
        self.inner.test(subscription_id, event).await
    }

    /// Waits for the scheduler to stop and attempts in flight to finish and be recorded.
    pub async fn drain(&self) {
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }
}

/// How long the scheduler waits after the queue could not be read before reading again.
const READ_RETRY: Duration = Duration::from_millis(500);

impl Inner {
    async fn schedule(self: Arc<Self>) {
        if self.max_in_flight == 0 {
            tracing::warn!("max-in-flight is 0: delivery is paused; events are queued");
            return;
        }
        // Until a config is loaded (from the disk cache or the control plane), a subscription
        // missing from the table means "not known yet", not "removed": wait, never skip.
        let mut routes = self.routes.clone();
        tokio::select! {
            () = self.shutdown.cancelled() => return,
            loaded = routes.wait_for(|r| r.loaded) => if loaded.is_err() { return },
        }
        let mut writable = self.queue.writable();
        loop {
            // While the queue cannot write (a full or failing disk), no attempt starts: its
            // outcome could not be recorded, and it would be made again once the disk allows.
            if !*writable.borrow_and_update() {
                tracing::warn!("the queue cannot write: deliveries wait until it can");
                tokio::select! {
                    () = self.shutdown.cancelled() => return,
                    able = writable.wait_for(|able| *able) => if able.is_err() { return },
                }
                tracing::info!("the queue writes again: deliveries resume");
                continue;
            }
            let permit = tokio::select! {
                () = self.shutdown.cancelled() => return,
                permit = self.permits.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
            };
            if !*writable.borrow() {
                // The queue stopped writing while the permit was awaited.
                drop(permit);
                continue;
            }
            if self.permits.available_permits() < MIN_TAKE {
                // Busy: let the attempts ending now return their permits first, so that one
                // read of the queue starts several attempts rather than one per ended attempt.
                tokio::task::yield_now().await;
            }
            let limit = (1 + self.permits.available_permits()).min(MAX_TAKE);
            let due = match self.queue.due(now_ms(), limit, |lane, in_flight| {
                self.lane_room(lane, in_flight)
            }) {
                Ok(due) => due,
                Err(err) => {
                    tracing::error!(error = %err, "cannot read the queue");
                    // Not again at once: a queue being opened again after a disk fault
                    // answers the same until it is.
                    drop(permit);
                    tokio::select! {
                        () = self.shutdown.cancelled() => return,
                        () = tokio::time::sleep(READ_RETRY) => {}
                    }
                    continue;
                }
            };
            if due.is_empty() {
                drop(permit);
                let due_in = self
                    .queue
                    .next_due(|lane, in_flight| self.lane_room(lane, in_flight))
                    .map(|at| Duration::from_millis(at.saturating_sub(now_ms())));
                let wait = [due_in, self.rates.refill_wait()]
                    .into_iter()
                    .flatten()
                    .fold(IDLE_CHECK, Duration::min);
                tokio::select! {
                    () = self.shutdown.cancelled() => return,
                    () = self.queue.tasks_changed() => {}
                    // A subscription enabled again opens its lane.
                    changed = routes.changed() => if changed.is_err() { return },
                    () = tokio::time::sleep(wait) => {}
                }
                continue;
            }
            let mut permit = Some(permit);
            for lease in due {
                // Only this loop takes permits, so the ones counted above are still free. (A
                // lease left over is dropped: its task is handed back, due again.)
                let Some(permit) = permit
                    .take()
                    .or_else(|| self.permits.clone().try_acquire_owned().ok())
                else {
                    break;
                };
                self.rates.consume(&lease.subscription_id);
                let inner = self.clone();
                self.tasks
                    .spawn(async move { inner.deliver(lease, permit).await });
            }
        }
    }

    /// How many more attempts to `subscription` may start, with `in_flight` under way: its
    /// lane's width (one while its breaker is tripped; the default for a subscription the
    /// control plane's table no longer holds, whose tasks are only skipped, but none while the
    /// table is only the disk cache's, which may be older than those tasks) less those in
    /// flight, and no more than its rate limit allows now.
    fn lane_room(&self, subscription: &str, in_flight: usize) -> usize {
        let (width, rate) = {
            let routes = self.routes.borrow();
            match routes.get(subscription) {
                // Disabled: parked.
                Some(s) if !s.enabled => (0, None),
                Some(s) => (s.max_in_flight as usize, s.rate_limit),
                None if routes.confirmed => (DEFAULT_MAX_IN_FLIGHT, None),
                None => (0, None),
            }
        };
        let width = if self.breakers.is_tripped(subscription) {
            width.min(1)
        } else {
            width
        };
        let room = width.saturating_sub(in_flight);
        match rate {
            Some(rate) if room > 0 => room.min(self.rates.available(subscription, rate)),
            _ => room,
        }
    }

    /// One attempt of the leased task, recorded in the queue with its report.
    async fn deliver(&self, lease: Lease, permit: OwnedSemaphorePermit) {
        let disabled = self
            .routes
            .borrow()
            .get(&lease.subscription_id)
            .is_some_and(|s| !s.enabled);
        if disabled {
            // Disabled since the task was taken: the dropped lease parks it.
            return;
        }
        let number = lease.attempts + 1;
        // A fault in the attempt must not hand the task straight back (due at once, to fail
        // the same way in a loop): it is an attempt that failed, retried on its schedule.
        let attempted = AssertUnwindSafe(self.attempt(&lease, number))
            .catch_unwind()
            .await;
        let (outcome, report) = match attempted {
            Ok(attempted) => attempted,
            Err(panic) => self.attempt_failed_internally(&lease, number, &*panic),
        };
        let took = report
            .duration
            .as_ref()
            .and_then(std_duration)
            .unwrap_or_default();
        self.metrics.attempt(report.outcome(), took);
        if let Err(err) = lease.finish(outcome.next(), report).await {
            tracing::error!(error = %err, "cannot record an attempt");
        }
        drop(permit);
    }

    /// The outcome of an attempt that panicked: logged at ERROR, reported with error kind
    /// `internal`, and retried on the subscription's schedule (exhausted at its end).
    fn attempt_failed_internally(
        &self,
        task: &Task,
        number: u32,
        panic: &(dyn std::any::Any + Send),
    ) -> (Outcome, pb::Attempt) {
        let message = panic_message(panic);
        tracing::error!(event = %task.event.id(), subscription = %task.subscription_id, attempt = number, panic = %message, "the agent failed during an attempt");
        let sub = self.routes.borrow().get(&task.subscription_id).cloned();
        let sub = sub.as_deref();
        let outcome = internal_failure_outcome(sub, number, SystemTime::now());
        let report = Report {
            error_kind: Some(ErrorKind::Internal),
            outcome,
            ..skipped(&format!("the agent failed during the attempt: {message}"))
        };
        (outcome, self.report(task, None, sub, number, report))
    }

    async fn attempt(&self, task: &Task, number: u32) -> (Outcome, pb::Attempt) {
        let stored = match self.queue.event(&task.event) {
            Ok(Some(stored)) => stored,
            Ok(None) => {
                let report = skipped("the event is past retention");
                return (
                    report.outcome,
                    self.report(task, None, None, number, report),
                );
            }
            Err(err) => {
                // Try again shortly: the queue's file is having trouble.
                tracing::error!(error = %err, "cannot read a queued event");
                let report = Report {
                    error_kind: Some(ErrorKind::Storage),
                    outcome: Outcome::RetryAt(SystemTime::now() + STORAGE_RETRY),
                    ..skipped(&err.to_string())
                };
                return (
                    report.outcome,
                    self.report(task, None, None, number, report),
                );
            }
        };
        let event = &stored.event;
        let sub = self.routes.borrow().get(&task.subscription_id).cloned();
        let Some(sub) = sub else {
            let report = skipped("subscription removed");
            return (
                report.outcome,
                self.report(task, Some(event), None, number, report),
            );
        };
        if event.tenant != sub.tenant {
            // Never send one tenant's event with another's URL and secret.
            let report = refused("the event's tenant is not the subscription's");
            return (
                report.outcome,
                self.report(task, Some(event), Some(&sub), number, report),
            );
        }
        if !sub.enabled {
            // Disabled while this attempt was starting: try again once it is enabled.
            let report = Report {
                outcome: Outcome::Parked(UNIX_EPOCH + Duration::from_millis(task.due)),
                ..skipped("subscription disabled; the delivery is parked")
            };
            return (
                report.outcome,
                self.report(task, Some(event), Some(&sub), number, report),
            );
        }
        // Waiting since before the enable: parked. A replay queued after it is sent.
        if sub
            .skip_parked_before
            .is_some_and(|before| stored.accepted_ms < to_ms(before) && task.due < to_ms(before))
        {
            let report = skipped(
                "parked while the subscription was disabled; it was enabled without replaying",
            );
            return (
                report.outcome,
                self.report(task, Some(event), Some(&sub), number, report),
            );
        }
        if let Err(refusal) = self.policy.check_url(&sub.url) {
            tracing::warn!(subscription = %sub.id, reason = %refusal, "delivery refused by the target policy");
            let report = refused(&refusal.to_string());
            return (
                report.outcome,
                self.report(task, Some(event), Some(&sub), number, report),
            );
        }
        let event_ref = EventRef {
            id: &event.id,
            event_type: &event.r#type,
            occurred_at: event.occurred_at.as_ref().map_or(
                UNIX_EPOCH + Duration::from_millis(stored.accepted_ms),
                system_time,
            ),
            payload: &event.payload,
            traceparent: &event.traceparent,
        };
        let sent = self.send(&sub, event_ref).await;
        let scheduled = sub
            .retry
            .delay_after(number)
            .map(|scheduled| jittered(scheduled, JITTER, unit_random()));
        let outcome = classify(&sent.result, SystemTime::now(), scheduled);
        if let Some(success) = outcome.counts_for_breaker() {
            self.breakers.record(&sub.id, success);
        }
        let mut report = Report::from_attempt(sent, outcome);
        match outcome {
            Outcome::Gone => report.error = "receiver answered 410 Gone".into(),
            Outcome::Refused => {
                tracing::warn!(subscription = %sub.id, reason = %report.error, "delivery refused by the target policy");
            }
            _ => {}
        }
        if outcome == Outcome::Delivered {
            tracing::debug!(event = %event.id, subscription = %sub.id, attempt = number, "delivered");
        } else {
            // The receiver's status says why when it answered; the error when it did not.
            let status = (report.status_code != 0).then_some(report.status_code);
            tracing::info!(event = %event.id, subscription = %sub.id, attempt = number, outcome = %outcome, status, error = %report.error, "attempt failed");
        }
        (
            outcome,
            self.report(task, Some(event), Some(&sub), number, report),
        )
    }

    /// Sends one attempt of `event` to `sub` through the route its egress picks, keeping as
    /// much of the request as the delivery log does.
    async fn send(&self, sub: &Subscription, event: EventRef<'_>) -> attempt::Sent {
        let body_limit = self.routes.borrow().log_body_limit();
        match self
            .transport
            .client(&sub.egress, sub.client_identity.as_ref())
        {
            Ok(client) => attempt::send(&client, &self.tokens, sub, event, body_limit).await,
            // A client certificate the control plane accepted but this agent cannot use.
            Err(err) => attempt::Sent::not_made(ErrorKind::Tls, err.to_string()),
        }
    }

    async fn test(&self, subscription_id: &str, event: &pb::Event) -> Result<pb::Attempt, String> {
        let sub = self
            .routes
            .borrow()
            .get(subscription_id)
            .cloned()
            .ok_or_else(|| format!("this agent does not deliver subscription {subscription_id}"))?;
        if event.tenant != sub.tenant {
            return Err("the event's tenant is not the subscription's".into());
        }
        let report = match self.policy.check_url(&sub.url) {
            Err(refusal) => refused(&refusal.to_string()),
            Ok(()) => {
                let event_ref = EventRef {
                    id: &event.id,
                    event_type: &event.r#type,
                    occurred_at: event
                        .occurred_at
                        .as_ref()
                        .map_or_else(SystemTime::now, system_time),
                    payload: &event.payload,
                    traceparent: &event.traceparent,
                };
                let sent = self.send(&sub, event_ref).await;
                // No retry: a test is one attempt.
                let outcome = classify(&sent.result, SystemTime::now(), None);
                Report::from_attempt(sent, outcome)
            }
        };
        let mut attempt = self.record(
            AttemptOf {
                event_id: &event.id,
                subscription_id,
                tenant: &event.tenant,
                event_type: &event.r#type,
                url: sub.url.as_str(),
            },
            1,
            report,
        );
        attempt.test = true;
        Ok(attempt)
    }

    fn report(
        &self,
        task: &Task,
        event: Option<&pb::Event>,
        sub: Option<&Subscription>,
        number: u32,
        report: Report,
    ) -> pb::Attempt {
        self.record(
            AttemptOf {
                event_id: task.event.id(),
                subscription_id: &task.subscription_id,
                tenant: event.map_or_else(|| task.event.tenant(), |e| e.tenant.as_str()),
                event_type: event.map_or("", |e| e.r#type.as_str()),
                url: sub.map_or("", |s| s.url.as_str()),
            },
            number,
            report,
        )
    }

    /// The log record of attempt `number` of `of`.
    fn record(&self, of: AttemptOf<'_>, number: u32, mut report: Report) -> pb::Attempt {
        // Bounded here, so that a report batch's size is bounded too.
        bound_attempt_text(&mut report.error);
        bound_attempt_text(&mut report.excerpt);
        pb::Attempt {
            event_id: of.event_id.to_owned(),
            subscription_id: of.subscription_id.to_owned(),
            tenant: of.tenant.to_owned(),
            event_type: of.event_type.to_owned(),
            attempt: number,
            agent_id: self.agent_id.clone(),
            started_at: Some(timestamp(report.started_at)),
            duration: Some(duration(report.duration)),
            status_code: report.status_code,
            error_kind: report
                .error_kind
                .map(|kind| kind.as_str().to_owned())
                .unwrap_or_default(),
            error: report.error,
            outcome: report.outcome.reported() as i32,
            next_attempt_at: report.outcome.next_attempt_at().map(timestamp),
            response_excerpt: report.excerpt,
            url: of.url.to_owned(),
            test: false,
            request: report.request.map(|request| pb::SentRequest {
                attempt: number,
                ..request
            }),
        }
    }
}

/// Whose attempt a log record is.
struct AttemptOf<'a> {
    event_id: &'a str,
    subscription_id: &'a str,
    tenant: &'a str,
    event_type: &'a str,
    url: &'a str,
}

/// The reportable facts of one attempt.
struct Report {
    started_at: SystemTime,
    duration: Duration,
    status_code: u32,
    error_kind: Option<ErrorKind>,
    error: String,
    excerpt: String,
    outcome: Outcome,
    /// The request as sent, for the log.
    request: Option<pb::SentRequest>,
}

impl Report {
    fn from_attempt(sent: attempt::Sent, outcome: Outcome) -> Self {
        let status_code = match &sent.result {
            AttemptResult::Status { code, .. } => u32::from(*code),
            AttemptResult::Error { .. } => 0,
        };
        Report {
            started_at: sent.started_at,
            duration: sent.duration,
            status_code,
            error_kind: sent.result.error_kind(),
            error: sent.error,
            excerpt: sent.excerpt,
            outcome,
            request: sent.request,
        }
    }
}

/// A delivery not attempted, and not to be.
fn skipped(reason: &str) -> Report {
    Report {
        started_at: SystemTime::now(),
        duration: Duration::ZERO,
        status_code: 0,
        error_kind: Some(ErrorKind::Skipped),
        error: reason.into(),
        excerpt: String::new(),
        outcome: Outcome::Skipped,
        request: None,
    }
}

/// When a delivery whose attempt `number` failed inside the agent goes next: the
/// subscription's schedule, no sooner than [`INTERNAL_RETRY`] (exhausted at the schedule's
/// end); in [`INTERNAL_RETRY`] when the subscription is unknown (that attempt skips it).
fn internal_failure_outcome(sub: Option<&Subscription>, number: u32, now: SystemTime) -> Outcome {
    match sub.map(|sub| sub.retry.delay_after(number)) {
        Some(None) => Outcome::Exhausted,
        Some(Some(delay)) => Outcome::RetryAt(now + delay.max(INTERNAL_RETRY)),
        None => Outcome::RetryAt(now + INTERNAL_RETRY),
    }
}

/// The text of a panic's payload (a `&str` or `String` for `panic!` with a message).
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// A delivery refused for good without an attempt.
fn refused(reason: &str) -> Report {
    Report {
        error_kind: Some(ErrorKind::Policy),
        outcome: Outcome::Refused,
        ..skipped(reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::retry::DEFAULT_DELAYS;

    fn subscription() -> Subscription {
        herald_proto::convert::subscription(&attempt::tests::sample_subscription(), true)
            .expect("a subscription")
    }

    #[test]
    fn an_attempt_that_failed_inside_the_agent_waits_for_its_schedule() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let sub = subscription();
        // The first retry of the default schedule is 5 s: never sooner than a minute.
        assert_eq!(
            internal_failure_outcome(Some(&sub), 1, now),
            Outcome::RetryAt(now + INTERNAL_RETRY)
        );
        assert_eq!(
            internal_failure_outcome(Some(&sub), 2, now),
            Outcome::RetryAt(now + DEFAULT_DELAYS[1])
        );
        // At the schedule's end, exhausted: no loop, however often it fails.
        let last = u32::try_from(DEFAULT_DELAYS.len()).expect("small") + 1;
        assert_eq!(
            internal_failure_outcome(Some(&sub), last, now),
            Outcome::Exhausted
        );
        assert_eq!(
            internal_failure_outcome(None, 1, now),
            Outcome::RetryAt(now + INTERNAL_RETRY)
        );
    }

    #[tokio::test]
    async fn a_panicking_attempt_is_caught_with_its_message() {
        for attempt in [
            AssertUnwindSafe(async { panic!("boom") })
                .catch_unwind()
                .await,
            AssertUnwindSafe(async { panic!("{} {}", "formatted", 42) })
                .catch_unwind()
                .await,
        ] {
            let panic = attempt.expect_err("it panicked");
            let message = panic_message(&*panic);
            assert!(message == "boom" || message == "formatted 42", "{message}");
        }
        let panic = AssertUnwindSafe(async { std::panic::panic_any(7_u8) })
            .catch_unwind()
            .await
            .expect_err("it panicked");
        assert_eq!(panic_message(&*panic), "a panic without a message");
    }
}
