//! Delivery: for each (event, subscription) pair, attempts until the receiver accepts it, the
//! schedule runs out, or the subscription goes away; every attempt is reported.
//!
//! - [`classify`] decides what an attempt's result means (pure).
//! - [`attempt`] sends one signed request.
//! - [`client`] is the HTTPS client all attempts share.
//! - [`Dispatcher`] runs deliveries concurrently, bounded by a global limit, re-reading the
//!   subscription before every attempt so a deleted or disabled one stops at once.

pub mod attempt;
pub mod classify;
pub mod client;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use herald_core::retry::{JITTER, jittered};
use herald_core::subscription::Subscription;
use herald_proto::convert::{duration, timestamp};
use herald_proto::v1 as pb;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::attempt::EventRef;
use self::classify::{Verdict, classify};
use crate::backoff::unit_random;
use crate::reporter::Reporter;
use crate::routes::Routes;

/// An accepted event, shared by its deliveries.
#[derive(Debug)]
pub struct QueuedEvent {
    /// The event id (`webhook-id`).
    pub id: String,
    /// Tenant.
    pub tenant: String,
    /// Event type.
    pub event_type: String,
    /// The payload as emitted.
    pub payload: Vec<u8>,
}

/// Runs deliveries.
#[derive(Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
}

struct Inner {
    client: reqwest::Client,
    routes: watch::Receiver<Arc<Routes>>,
    reporter: Reporter,
    agent_id: String,
    allow_http: bool,
    /// Attempts in flight at once, across all subscriptions.
    in_flight: Semaphore,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl Dispatcher {
    /// A dispatcher sending through `client`.
    pub fn new(
        client: reqwest::Client,
        routes: watch::Receiver<Arc<Routes>>,
        reporter: Reporter,
        agent_id: String,
        allow_http: bool,
        max_in_flight: usize,
        shutdown: CancellationToken,
    ) -> Self {
        Dispatcher {
            inner: Arc::new(Inner {
                client,
                routes,
                reporter,
                agent_id,
                allow_http,
                in_flight: Semaphore::new(max_in_flight),
                tasks: TaskTracker::new(),
                shutdown,
            }),
        }
    }

    /// Starts delivering `event` to subscription `subscription_id`.
    pub fn dispatch(&self, event: Arc<QueuedEvent>, subscription_id: String) {
        let inner = self.inner.clone();
        self.inner
            .tasks
            .spawn(async move { inner.deliver(&event, &subscription_id).await });
    }

    /// Waits for attempts in flight to finish (deliveries waiting for a retry stop at once).
    pub async fn drain(&self) {
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }
}

impl Inner {
    async fn deliver(&self, event: &QueuedEvent, subscription_id: &str) {
        let mut number = 0u32;
        loop {
            if self.shutdown.is_cancelled() {
                return;
            }
            number += 1;
            let Ok(permit) = self.in_flight.acquire().await else {
                return;
            };
            let sub = self.routes.borrow().get(subscription_id).cloned();
            let Some(sub) = sub.filter(|s| s.enabled) else {
                let reason = "subscription removed or disabled";
                self.report(event, subscription_id, None, number, skipped(reason))
                    .await;
                return;
            };
            if sub.url.scheme() == "http" && !self.allow_http {
                let refusal = refused("http:// targets are not allowed (--allow-http)");
                self.report(event, subscription_id, Some(&sub), number, refusal)
                    .await;
                return;
            }
            let sent = attempt::send(
                &self.client,
                &sub,
                EventRef {
                    id: &event.id,
                    payload: &event.payload,
                },
            )
            .await;
            drop(permit);
            let verdict = classify(&sent.result, SystemTime::now());
            let next = match &verdict {
                Verdict::Delivered | Verdict::Gone => None,
                Verdict::Retry(after) => sub.retry.delay_after(number).map(|scheduled| {
                    let delay = jittered(scheduled, JITTER, unit_random());
                    after.map_or(delay, |after| delay.max(after))
                }),
            };
            let (outcome, next_at) = match (&verdict, next) {
                (Verdict::Delivered, _) => (pb::Outcome::Delivered, None),
                (_, Some(delay)) => (pb::Outcome::Retrying, Some(SystemTime::now() + delay)),
                (_, None) => (pb::Outcome::Failed, None),
            };
            let mut report = Report::from_attempt(&sent, outcome, next_at);
            if verdict == Verdict::Gone {
                report.error = "receiver answered 410 Gone".into();
            }
            match &verdict {
                Verdict::Delivered => {
                    tracing::debug!(event = %event.id, subscription = %sub.id, attempt = number, "delivered")
                }
                _ => {
                    tracing::info!(event = %event.id, subscription = %sub.id, attempt = number, outcome = ?outcome, error = %report.error, "attempt failed")
                }
            }
            self.report(event, subscription_id, Some(&sub), number, report)
                .await;
            let Some(delay) = next else { return };
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn report(
        &self,
        event: &QueuedEvent,
        subscription_id: &str,
        sub: Option<&Subscription>,
        number: u32,
        report: Report,
    ) {
        let attempt = pb::Attempt {
            event_id: event.id.clone(),
            subscription_id: subscription_id.to_owned(),
            tenant: event.tenant.clone(),
            event_type: event.event_type.clone(),
            attempt: number,
            agent_id: self.agent_id.clone(),
            started_at: Some(timestamp(report.started_at)),
            duration: Some(duration(report.duration)),
            status_code: report.status_code,
            error_kind: report.error_kind,
            error: report.error,
            outcome: report.outcome as i32,
            next_attempt_at: report.next_at.map(timestamp),
            response_excerpt: report.excerpt,
            url: sub.map(|s| s.url.to_string()).unwrap_or_default(),
        };
        self.reporter.report(attempt).await;
    }
}

/// The reportable facts of one attempt.
struct Report {
    started_at: SystemTime,
    duration: Duration,
    status_code: u32,
    error_kind: String,
    error: String,
    excerpt: String,
    outcome: pb::Outcome,
    next_at: Option<SystemTime>,
}

impl Report {
    fn from_attempt(
        sent: &attempt::Outcome,
        outcome: pb::Outcome,
        next_at: Option<SystemTime>,
    ) -> Self {
        let (status_code, error_kind) = match &sent.result {
            classify::AttemptResult::Status { code, .. } if (200..300).contains(code) => {
                (u32::from(*code), String::new())
            }
            classify::AttemptResult::Status { code, .. } => {
                (u32::from(*code), "http_status".to_owned())
            }
            classify::AttemptResult::Error { kind } => (0, (*kind).to_owned()),
        };
        Report {
            started_at: sent.started_at,
            duration: sent.duration,
            status_code,
            error_kind,
            error: sent.error.clone(),
            excerpt: sent.excerpt.clone(),
            outcome,
            next_at,
        }
    }
}

fn skipped(reason: &str) -> Report {
    Report {
        started_at: SystemTime::now(),
        duration: Duration::ZERO,
        status_code: 0,
        error_kind: "skipped".into(),
        error: reason.into(),
        excerpt: String::new(),
        outcome: pb::Outcome::Skipped,
        next_at: None,
    }
}

fn refused(reason: &str) -> Report {
    Report {
        error_kind: "policy".into(),
        outcome: pb::Outcome::Failed,
        ..skipped(reason)
    }
}
