//! What the control plane counts for Prometheus (`--metrics-listen`): attempt reports stored by
//! outcome, subscriptions disabled by the control plane, how long agents take to apply a
//! config change, whether the delivery log's store answers, open delivery-log tails, and —
//! read at each scrape — open agent streams, the config revision and the stored
//! subscriptions that do not open.
//! Labels are bounded (outcome, reason); never subscription ids, tenants or URLs.

use std::sync::Arc;
use std::time::Duration;

use herald_proto::metric_labels::OutcomeLabel;
use herald_proto::request_budget::RequestBudget;

use crate::agent_trust::Refusal;
use crate::hub::Unreadable;
use herald_proto::v1 as pb;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Upper bounds (seconds) of the convergence buckets: a change reaches a healthy fleet in
/// milliseconds; the long tail is agents reconnecting.
const CONVERGENCE_BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Why the control plane disabled a subscription.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum DisableReason {
    /// N consecutive failures.
    failures,
    /// The receiver answered 410 Gone.
    gone,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: DisableReason,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabel {
    reason: Refusal,
}

/// Something counted as open in a gauge (a delivery-log tail, a report stream) until dropped.
pub struct Open(Gauge);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The control plane's metrics; cloning shares them.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    attempts: Family<OutcomeLabel, Counter>,
    disabled: Family<ReasonLabel, Counter>,
    refused: Family<RefusalLabel, Counter>,
    audit_failures: Counter,
    convergence: Histogram,
    streams: Gauge,
    revision: Gauge,
    unopened: Family<UnopenedLabel, Gauge>,
    tails: Gauge,
    log_up: Gauge,
    config_store_up: Gauge,
    report_streams: Gauge,
    report_bytes: Gauge,
    reports_waiting: Gauge,
}

/// Why stored subscriptions do not open on this replica.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
enum UnopenedReason {
    /// The record does not decode.
    damaged,
    /// Sealed with a key this replica's keyring lacks.
    sealed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UnopenedLabel {
    reason: UnopenedReason,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let attempts = Family::<OutcomeLabel, Counter>::default();
        OutcomeLabel::start_each(&attempts);
        registry.register(
            "herald_attempts_stored",
            "Attempt reports stored in the delivery log, by outcome (each attempt once)",
            attempts.clone(),
        );
        let disabled = Family::<ReasonLabel, Counter>::default();
        // Every reason's series from the start, so an alert on one has something to watch.
        for reason in [DisableReason::failures, DisableReason::gone] {
            let _ = disabled.get_or_create(&ReasonLabel { reason });
        }
        registry.register(
            "herald_subscriptions_disabled",
            "Subscriptions this replica disabled, by reason",
            disabled.clone(),
        );
        let refused = Family::<RefusalLabel, Counter>::default();
        for reason in Refusal::ALL {
            let _ = refused.get_or_create(&RefusalLabel { reason });
        }
        registry.register(
            "herald_reports_refused",
            "Attempt reports refused: unknown subscription, one outside the agent token's \
             scope, or another tenant than the subscription's",
            refused.clone(),
        );
        let audit_failures = Counter::default();
        registry.register(
            "herald_audit_failures",
            "Changes made through the operator API whose audit entry could not be written",
            audit_failures.clone(),
        );
        let convergence = Histogram::new(CONVERGENCE_BUCKETS);
        registry.register(
            "herald_config_convergence_seconds",
            "Time from a config change reaching this replica to an agent acknowledging it",
            convergence.clone(),
        );
        let streams = Gauge::default();
        registry.register(
            "herald_agent_streams",
            "Config streams open to agents on this replica",
            streams.clone(),
        );
        let revision = Gauge::default();
        registry.register(
            "herald_config_revision",
            "The config store revision this replica has caught up to",
            revision.clone(),
        );
        let unopened = Family::<UnopenedLabel, Gauge>::default();
        registry.register(
            "herald_config_unopened_subscriptions",
            "Stored subscriptions this replica cannot open, by reason (damaged, sealed); while \
             any is, agents' config streams are refused",
            unopened.clone(),
        );
        let tails = Gauge::default();
        registry.register(
            "herald_log_tails",
            "Delivery-log tails open on this replica (TailAttempts, /api/v1/attempts/live, the \
             console's live log)",
            tails.clone(),
        );
        let log_up = Gauge::default();
        registry.register(
            "herald_delivery_log_up",
            "1 while the delivery log's store answers this replica, 0 while it does not",
            log_up.clone(),
        );
        let config_store_up = Gauge::default();
        registry.register(
            "herald_config_store_up",
            "1 while the config store (etcd, or the embedded store) answers this replica, 0 \
             while it does not",
            config_store_up.clone(),
        );
        let report_streams = Gauge::default();
        registry.register(
            "herald_report_streams",
            "Agents' attempt-report streams open on this replica (agents close theirs when idle)",
            report_streams.clone(),
        );
        let report_bytes = Gauge::default();
        registry.register(
            "herald_report_bytes_in_flight",
            "Bytes of agents' attempt reports being read or stored (at most \
             --max-report-bytes-in-flight)",
            report_bytes.clone(),
        );
        let reports_waiting = Gauge::default();
        registry.register(
            "herald_report_streams_waiting",
            "Report streams whose next batch waits for room in --max-report-bytes-in-flight",
            reports_waiting.clone(),
        );
        Metrics {
            inner: Arc::new(Inner {
                registry,
                attempts,
                disabled,
                refused,
                audit_failures,
                convergence,
                streams,
                revision,
                unopened,
                tails,
                log_up,
                config_store_up,
                report_streams,
                report_bytes,
                reports_waiting,
            }),
        }
    }
}

impl Metrics {
    /// Counts attempts newly stored in the log.
    pub fn stored(&self, attempts: &[Arc<pb::Attempt>]) {
        for attempt in attempts {
            self.inner
                .attempts
                .get_or_create(&OutcomeLabel::from(attempt.outcome()))
                .inc();
        }
    }

    /// Counts a subscription this replica disabled.
    pub fn disabled(&self, reason: DisableReason) {
        self.inner
            .disabled
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Counts an attempt report refused.
    pub fn report_refused(&self, reason: Refusal) {
        self.inner
            .refused
            .get_or_create(&RefusalLabel { reason })
            .inc();
    }

    /// Counts a change whose audit entry could not be written.
    pub fn audit_failed(&self) {
        self.inner.audit_failures.inc();
    }

    /// Counts a delivery-log tail as open until the answer is dropped; `None` when `max` are
    /// open already.
    pub fn open_tail(&self, max: usize) -> Option<Open> {
        let before = self.inner.tails.inc();
        if before >= i64::try_from(max).unwrap_or(i64::MAX) {
            self.inner.tails.dec();
            return None;
        }
        Some(Open(self.inner.tails.clone()))
    }

    /// Counts an agent's report stream as open until the answer is dropped.
    pub fn report_stream(&self) -> Open {
        self.inner.report_streams.inc();
        Open(self.inner.report_streams.clone())
    }

    /// Whether the delivery log's store answers.
    pub fn log_up(&self, up: bool) {
        self.inner.log_up.set(i64::from(up));
    }

    /// Whether the config store answers.
    pub fn config_store_up(&self, up: bool) {
        self.inner.config_store_up.set(i64::from(up));
    }

    /// Records how long an agent took to apply a change.
    pub fn converged(&self, took: Duration) {
        self.inner.convergence.observe(took.as_secs_f64());
    }

    /// The metrics in the OpenMetrics text format, with the open `streams`, the `revision`,
    /// the stored subscriptions that do not open here and the budget of `reports` in flight
    /// read now.
    pub fn render(
        &self,
        streams: usize,
        revision: i64,
        unopened: Option<&Unreadable>,
        reports: &RequestBudget,
    ) -> String {
        self.inner
            .report_bytes
            .set(i64::try_from(reports.held_bytes()).unwrap_or(i64::MAX));
        self.inner
            .reports_waiting
            .set(i64::try_from(reports.waiting()).unwrap_or(i64::MAX));
        self.inner
            .streams
            .set(i64::try_from(streams).unwrap_or(i64::MAX));
        self.inner.revision.set(revision);
        for (reason, count) in [
            (UnopenedReason::damaged, unopened.map_or(0, |u| u.damaged)),
            (UnopenedReason::sealed, unopened.map_or(0, |u| u.sealed)),
        ] {
            self.inner
                .unopened
                .get_or_create(&UnopenedLabel { reason })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        let mut text = String::new();
        if let Err(err) = prometheus_client::encoding::text::encode(&mut text, &self.inner.registry)
        {
            tracing::warn!(error = %err, "cannot encode metrics");
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_are_counted_and_bounded() {
        let metrics = Metrics::default();
        let first = metrics.open_tail(2).expect("room");
        let second = metrics.open_tail(2).expect("room");
        assert!(metrics.open_tail(2).is_none(), "a third is past the bound");
        drop(first);
        let third = metrics.open_tail(2).expect("room again");
        drop((second, third));
        assert!(
            metrics
                .render(0, 0, None, &RequestBudget::new(1))
                .contains("herald_log_tails 0")
        );
    }
}
