//! What the agent counts for Prometheus (`--metrics-listen`): events accepted, attempts by
//! outcome and their duration, and — read at each scrape — the queue's depth and age and the
//! config revision applied. Labels are bounded (the outcome only; never URLs or tenants).

use std::sync::Arc;
use std::time::Duration;

use herald_proto::metric_labels::{OutcomeLabel, OutcomeValue};
use herald_proto::request_budget::RequestBudget;
use herald_proto::v1 as pb;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use crate::queue::{Queue, now_ms};
use crate::routes::Routes;

/// Upper bounds (seconds) of the attempt-duration buckets: from a fast local receiver to the
/// longest per-attempt timeout.
const DURATION_BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0,
];

/// The agent's metrics; cloning shares them.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    emitted: Counter,
    duplicates: Counter,
    attempts: Family<OutcomeLabel, Counter>,
    duration: Histogram,
    queue_events: Gauge,
    waiting_events: Gauge,
    waiting_bytes: Gauge,
    evicted: Gauge,
    parked_dropped: Gauge,
    parked: Gauge,
    queue_bytes: Gauge,
    pending_deliveries: Gauge,
    pending_reports: Gauge,
    pending_report_bytes: Gauge,
    requests_dropped: Gauge,
    oldest_age: Gauge<f64, AtomicU64>,
    queue_readable: Gauge,
    config_revision: Gauge,
    emit_bytes: Gauge,
    emit_waiting: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let emitted = Counter::default();
        registry.register(
            "herald_events_emitted",
            "Events accepted by Emit and EmitBatch (duplicates not counted)",
            emitted.clone(),
        );
        let duplicates = Counter::default();
        registry.register(
            "herald_events_duplicate",
            "Events refused as duplicates of an id seen within the dedup window",
            duplicates.clone(),
        );
        let attempts = Family::<OutcomeLabel, Counter>::default();
        OutcomeLabel::start_each(&attempts);
        registry.register(
            "herald_delivery_attempts",
            "Delivery attempts by outcome",
            attempts.clone(),
        );
        let duration = Histogram::new(DURATION_BUCKETS);
        registry.register(
            "herald_delivery_duration_seconds",
            "Time from sending a webhook to its answer (or failure)",
            duration.clone(),
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let gauge = Gauge::default();
            registry.register(name, help, gauge.clone());
            gauge
        };
        let queue_events = gauge(
            &mut registry,
            "herald_queue_events",
            "Events in the queue: pending, and delivered ones kept for replay",
        );
        let queue_bytes = gauge(
            &mut registry,
            "herald_queue_payload_bytes",
            "Payload bytes of the events in the queue",
        );
        let waiting_events = gauge(
            &mut registry,
            "herald_queue_events_waiting",
            "Events with deliveries still to make (parked ones included): what --max-queue-events bounds",
        );
        let waiting_bytes = gauge(
            &mut registry,
            "herald_queue_waiting_payload_bytes",
            "Payload bytes of the events with deliveries still to make: what --max-queue-bytes bounds",
        );
        let evicted = gauge(
            &mut registry,
            "herald_queue_events_evicted",
            "Delivered events removed before their retention to keep --max-retained-bytes (since the queue was made)",
        );
        let parked = gauge(
            &mut registry,
            "herald_queue_deliveries_parked",
            "Deliveries to disabled subscriptions kept until they are enabled (at most --max-parked-deliveries each)",
        );
        let parked_dropped = gauge(
            &mut registry,
            "herald_queue_parked_deliveries_dropped",
            "Deliveries to disabled subscriptions not kept because they held --max-parked-deliveries parked ones (since the agent started)",
        );
        let pending_deliveries = gauge(
            &mut registry,
            "herald_queue_deliveries_pending",
            "Deliveries not finished: in flight, due, or waiting for a retry",
        );
        let pending_reports = gauge(
            &mut registry,
            "herald_reports_pending",
            "Attempt reports not yet acknowledged by the control plane",
        );
        let pending_report_bytes = gauge(
            &mut registry,
            "herald_reports_pending_bytes",
            "Bytes of the attempt reports not yet acknowledged: what --max-pending-report-bytes bounds",
        );
        let requests_dropped = gauge(
            &mut registry,
            "herald_reports_requests_dropped",
            "Attempt reports that left out the request they sent because the outbox held half of --max-pending-report-bytes (since the agent started)",
        );
        let oldest_age = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "herald_queue_oldest_age_seconds",
            "Age of the oldest event among each enabled subscription's next delivery (0 when idle; deliveries parked for a disabled subscription are in herald_queue_deliveries_parked)",
            oldest_age.clone(),
        );
        let queue_readable = gauge(
            &mut registry,
            "herald_queue_readable",
            "1 when this scrape read the queue's gauges; 0 while the queue cannot be read (not \
             open yet, or a disk fault), when the other herald_queue_ gauges keep their last \
             values (0 before the first read)",
        );
        let config_revision = gauge(
            &mut registry,
            "herald_config_revision",
            "The config revision this agent has applied",
        );
        let emit_bytes = gauge(
            &mut registry,
            "herald_emit_bytes_in_flight",
            "Bytes of Emit and EmitBatch requests being read or handled (at most \
             --max-emit-bytes-in-flight)",
        );
        let emit_waiting = gauge(
            &mut registry,
            "herald_emit_requests_waiting",
            "Emit and EmitBatch requests waiting for room in --max-emit-bytes-in-flight",
        );
        Metrics {
            inner: Arc::new(Inner {
                registry,
                emitted,
                duplicates,
                attempts,
                duration,
                queue_events,
                queue_bytes,
                waiting_events,
                waiting_bytes,
                evicted,
                parked_dropped,
                parked,
                pending_deliveries,
                pending_reports,
                pending_report_bytes,
                requests_dropped,
                oldest_age,
                queue_readable,
                config_revision,
                emit_bytes,
                emit_waiting,
            }),
        }
    }
}

impl Metrics {
    /// Counts events accepted by one Emit call: `new` stored, `duplicates` refused.
    pub fn emitted(&self, new: u64, duplicates: u64) {
        self.inner.emitted.inc_by(new);
        self.inner.duplicates.inc_by(duplicates);
    }

    /// Counts one finished attempt.
    pub fn attempt(&self, outcome: pb::Outcome, took: Duration) {
        let label = OutcomeLabel::from(outcome);
        self.inner.attempts.get_or_create(&label).inc();
        if label.outcome != OutcomeValue::skipped {
            self.inner.duration.observe(took.as_secs_f64());
        }
    }

    /// The metrics in the OpenMetrics text format, with the gauges read now from `queue` (left
    /// as they are while it is not open yet), the applied `routes` (their revision, and which
    /// subscriptions are disabled) and the budget of `Emit` `requests`.
    pub fn render(
        &self,
        queue: Option<&Queue>,
        routes: &Routes,
        requests: &RequestBudget,
    ) -> String {
        let inner = &self.inner;
        inner
            .emit_bytes
            .set(i64::try_from(requests.held_bytes()).unwrap_or(i64::MAX));
        inner
            .emit_waiting
            .set(i64::try_from(requests.waiting()).unwrap_or(i64::MAX));
        let read = queue.is_some_and(|queue| Self::render_queue(inner, queue, routes));
        inner.queue_readable.set(i64::from(read));
        inner.config_revision.set(routes.revision);
        let mut text = String::new();
        if let Err(err) = prometheus_client::encoding::text::encode(&mut text, &inner.registry) {
            tracing::warn!(error = %err, "cannot encode metrics");
        }
        text
    }

    /// Sets the queue's gauges; whether they could be read.
    fn render_queue(inner: &Inner, queue: &Queue, routes: &Routes) -> bool {
        let disabled: std::collections::HashSet<&str> = routes.disabled().collect();
        match queue.stats_beside_parked(|subscription| disabled.contains(subscription)) {
            Ok(stats) => {
                let int = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
                inner.queue_events.set(int(stats.events));
                inner.queue_bytes.set(int(stats.bytes));
                inner.waiting_events.set(int(stats.waiting.events));
                inner.waiting_bytes.set(int(stats.waiting.bytes));
                inner.evicted.set(int(stats.evicted));
                inner.parked_dropped.set(int(stats.parked_dropped));
                inner.pending_deliveries.set(int(stats.pending_deliveries));
                inner.pending_reports.set(int(stats.pending_reports));
                inner
                    .pending_report_bytes
                    .set(int(stats.pending_report_bytes));
                inner.requests_dropped.set(int(stats.requests_dropped));
                let age_ms = stats
                    .oldest_pending_accepted_ms
                    .map_or(0, |accepted| now_ms().saturating_sub(accepted));
                inner.oldest_age.set(age_ms as f64 / 1000.0);
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot read queue stats for metrics");
                return false;
            }
        }
        let parked = queue.deliveries_to(routes.disabled());
        inner.parked.set(i64::try_from(parked).unwrap_or(i64::MAX));
        true
    }
}
