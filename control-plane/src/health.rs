//! Endpoint health and auto-disable: from the attempt reports, the run of consecutive failed
//! attempts of each subscription, kept in the config store so that every control-plane replica
//! counts into the same record (compare-and-swap writes; a lost race is retried on a fresh
//! read). When a run reaches the subscription's `disable_after` (default 10) — and has gone on
//! for `disable_min_failing`, when set — the subscription is disabled with reason
//! `auto: N consecutive failures`; the config stream tells every agent.
//!
//! Reports arrive late and out of order (several agents, retries, outboxes), so attempts are
//! ordered by their start time: a failure older than the last success does not count, and a
//! success older than the run's last failure does not end it. The attempts of one report batch
//! are counted one by one, so a run that reached the limit disables the subscription even if a
//! later attempt of the same batch ended it: the outcome does not depend on how reports were
//! batched. Only changes are written: a
//! failure, or the first success after failures (`last_success_at` is the success that ended the
//! last run), so a healthy endpoint costs the store nothing.

use std::collections::BTreeMap;

use futures_util::StreamExt as _;
use std::sync::Arc;

use herald_proto::convert::{disable_policy, system_time, timestamp};
use herald_proto::v1 as pb;
use prost::Message;

use crate::keys;
use crate::metrics::{DisableReason, Metrics};
use crate::operator_events::{OperatorEvents, RECOVERY_MIN_FAILURES};
use crate::store::{Compare, Op, Store, Txn, TxnOutcome};
use crate::subscriptions::{SubscriptionError, Subscriptions};

/// Compare-and-swap rounds before giving up on one record.
const MAX_CAS_ATTEMPTS: usize = 16;
/// Subscriptions of one report batch whose records are updated at once.
const CONCURRENT_UPDATES: usize = 32;

/// Keeps subscriptions' health records and disables failing ones.
#[derive(Clone)]
pub struct Health {
    store: Store,
    registry: Subscriptions,
    metrics: Metrics,
    events: OperatorEvents,
}

impl Health {
    /// Health over `store`, disabling through `registry` (counted in `metrics`, told as
    /// operator `events`).
    pub fn new(
        store: Store,
        registry: Subscriptions,
        metrics: Metrics,
        events: OperatorEvents,
    ) -> Self {
        Health {
            store,
            registry,
            metrics,
            events,
        }
    }

    /// Where operator events are raised.
    pub fn events(&self) -> &OperatorEvents {
        &self.events
    }

    /// Counts newly stored attempts into their subscriptions' records, and disables those whose
    /// failures reached their limit.
    pub async fn record(&self, attempts: &[Arc<pb::Attempt>]) {
        let mut by_subscription: BTreeMap<&str, Vec<&pb::Attempt>> = BTreeMap::new();
        for attempt in attempts {
            by_subscription
                .entry(attempt.subscription_id.as_str())
                .or_default()
                .push(attempt);
        }
        // Every record the batch touches, read in one round trip; most batches change none
        // (healthy endpoints stay healthy), so that is all they cost.
        let keys: Vec<String> = by_subscription.keys().map(|id| keys::health(id)).collect();
        let current = match self.store.get_many(&keys).await {
            Ok(found) => found.into_iter().map(Some).collect(),
            Err(err) => {
                tracing::warn!(error = %err, "cannot read health records at once; one by one");
                vec![None; keys.len()]
            }
        };
        // Records of different subscriptions are independent: update them side by side (the
        // store batches concurrent requests; etcd's raft log does too).
        futures_util::stream::iter(by_subscription.into_iter().zip(current))
            .for_each_concurrent(CONCURRENT_UPDATES, |((id, mut attempts), read)| async move {
                attempts.sort_by_key(|a| a.started_at.as_ref().map(system_time));
                let first = match read.map(|kv| self.decode(id, kv)) {
                    Some(Ok(record)) => Some(record),
                    Some(Err(err)) => {
                        tracing::error!(subscription = %id, error = %err, "cannot read endpoint health");
                        return;
                    }
                    None => None,
                };
                match self.update(id, &attempts, first).await {
                    Ok(change) => {
                        // The longest run counts even when a later attempt of the same batch
                        // ended it: a limit reached is reached, however reports were batched.
                        let disabled = match &change.longest_run {
                            Some(peak) => self.disable_if_due(id, peak).await,
                            None => false,
                        };
                        if let Some(failures) = change.ended_run.filter(|_| !disabled)
                            && let Ok(sub) = self.registry.get(id).await
                        {
                            let how = format!("delivered after {failures} failures");
                            self.events.subscription_recovered(&sub, &how, failures).await;
                        }
                    }
                    Err(err) => {
                        tracing::error!(subscription = %id, error = %err, "cannot update endpoint health");
                    }
                }
            })
            .await;
    }

    /// The health record of `id` (an empty one for a subscription that never failed).
    pub async fn get(&self, id: &str) -> Result<pb::SubscriptionHealth, SubscriptionError> {
        self.registry.get(id).await?;
        Ok(self.read(id).await?.0)
    }

    /// Forgets a subscription's failures (it was re-enabled: it gets a fresh run).
    pub async fn reset(&self, id: &str) -> Result<(), SubscriptionError> {
        let txn = Txn::default().then(Op::Delete(keys::health(id)));
        self.store.txn(txn).await?;
        Ok(())
    }

    async fn read(&self, id: &str) -> Result<(pb::SubscriptionHealth, i64), SubscriptionError> {
        let kv = self.store.get(&keys::health(id)).await?;
        self.decode(id, kv)
    }

    /// A record as read from the store (an empty one when there is none), with its revision
    /// (0 when absent).
    fn decode(
        &self,
        id: &str,
        kv: Option<crate::store::KeyValue>,
    ) -> Result<(pb::SubscriptionHealth, i64), SubscriptionError> {
        let key = keys::health(id);
        match kv {
            None => Ok((
                pb::SubscriptionHealth {
                    subscription_id: id.to_owned(),
                    ..Default::default()
                },
                0,
            )),
            Some(kv) => {
                let health = pb::SubscriptionHealth::decode(kv.value.as_slice()).map_err(|e| {
                    SubscriptionError::Corrupt {
                        key: key.clone(),
                        reason: e.to_string(),
                    }
                })?;
                Ok((health, kv.mod_revision))
            }
        }
    }

    /// Applies `attempts` (in start order) to the record (`first`: as already read, if it
    /// was); what changed that matters.
    async fn update(
        &self,
        id: &str,
        attempts: &[&pb::Attempt],
        mut first: Option<(pb::SubscriptionHealth, i64)>,
    ) -> Result<Change, SubscriptionError> {
        let key = keys::health(id);
        for _ in 0..MAX_CAS_ATTEMPTS {
            let (mut health, revision) = match first.take() {
                Some(record) => record,
                None => self.read(id).await?,
            };
            let before = health.clone();
            let change = count(&mut health, attempts);
            if health == before {
                return Ok(Change::default());
            }
            let compare = if revision == 0 {
                Compare::Absent(key.clone())
            } else {
                Compare::ModRevision(key.clone(), revision)
            };
            let txn = Txn::default()
                .when(compare)
                .then(Op::Put(key.clone(), health.encode_to_vec()));
            if let TxnOutcome::Committed { .. } = self.store.txn(txn).await? {
                return Ok(change);
            }
        }
        Err(SubscriptionError::Contended(id.to_owned()))
    }

    /// Disables `id` when its run of failures (the record as it was at the run's longest)
    /// reached the subscription's limit; whether it did.
    async fn disable_if_due(&self, id: &str, health: &pb::SubscriptionHealth) -> bool {
        let sub = match self.registry.get(id).await {
            Ok(sub) => sub,
            Err(err) => {
                tracing::debug!(subscription = %id, error = %err, "health of an unknown subscription");
                return false;
            }
        };
        let Ok((after, min_failing)) = disable_policy(&sub) else {
            return false;
        };
        if !sub.enabled || health.consecutive_failures < after {
            return false;
        }
        if let Some(min) = min_failing {
            let span = match (&health.failing_since, &health.last_failure_at) {
                (Some(since), Some(last)) => system_time(last)
                    .duration_since(system_time(since))
                    .unwrap_or_default(),
                _ => return false,
            };
            if span < min {
                return false;
            }
        }
        let reason = format!("auto: {} consecutive failures", health.consecutive_failures);
        match self.registry.disable_if_enabled(id, &reason).await {
            Ok(Some(disabled)) => {
                self.metrics.disabled(DisableReason::failures);
                self.events.subscription_disabled(&disabled).await;
                tracing::warn!(subscription = %id, failures = health.consecutive_failures, last_error = %health.last_error, "endpoint keeps failing; subscription disabled");
                true
            }
            Ok(None) => false,
            Err(err) => {
                tracing::error!(subscription = %id, error = %err, "cannot disable a failing subscription");
                false
            }
        }
    }
}

/// What a batch of attempts did to a health record that matters.
#[derive(Debug, Default, PartialEq)]
struct Change {
    /// The record at the moment its run of failures was longest, when the batch made the run
    /// longer than it was: what the disable limit is checked against, even if a later attempt
    /// of the batch ended the run.
    longest_run: Option<Box<pb::SubscriptionHealth>>,
    /// A delivery ended a run of this many failures (at least [`RECOVERY_MIN_FAILURES`]).
    ended_run: Option<u32>,
}

/// Counts `attempts` (in start order) into a record, one by one.
fn count(health: &mut pb::SubscriptionHealth, attempts: &[&pb::Attempt]) -> Change {
    let mut change = Change::default();
    let mut longest = health.consecutive_failures;
    for attempt in attempts {
        let run = health.consecutive_failures;
        apply(health, attempt);
        if health.consecutive_failures > longest {
            longest = health.consecutive_failures;
            change.longest_run = Some(Box::new(health.clone()));
        }
        if run >= RECOVERY_MIN_FAILURES && health.consecutive_failures == 0 {
            change.ended_run = Some(run);
        }
    }
    change
}

/// Counts one attempt into a record.
fn apply(health: &mut pb::SubscriptionHealth, attempt: &pb::Attempt) {
    let Some(at) = attempt.started_at.as_ref().map(system_time) else {
        return;
    };
    let after = |t: Option<&prost_types::Timestamp>| t.is_none_or(|t| at > system_time(t));
    match pb::Outcome::try_from(attempt.outcome) {
        Ok(pb::Outcome::Retrying | pb::Outcome::Failed) => {
            if !after(health.last_success_at.as_ref()) {
                return;
            }
            health.consecutive_failures = health.consecutive_failures.saturating_add(1);
            if health.failing_since.is_none() {
                health.failing_since = Some(timestamp(at));
            }
            if after(health.last_failure_at.as_ref()) {
                health.last_failure_at = Some(timestamp(at));
                health.last_error = describe(attempt);
            }
        }
        Ok(pb::Outcome::Delivered)
            if health.consecutive_failures > 0 && after(health.last_failure_at.as_ref()) =>
        {
            health.consecutive_failures = 0;
            health.failing_since = None;
            health.last_success_at = Some(timestamp(at));
        }
        _ => {}
    }
}

/// A failure in a few words: the status, or the error kind and message.
fn describe(attempt: &pb::Attempt) -> String {
    let mut text = if attempt.status_code != 0 {
        format!("HTTP {}", attempt.status_code)
    } else {
        attempt.error_kind.clone()
    };
    if !attempt.error.is_empty() {
        text.push_str(": ");
        text.extend(attempt.error.chars().take(200));
    }
    text
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;

    fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
    }

    fn attempt(ms: u64, outcome: pb::Outcome) -> pb::Attempt {
        pb::Attempt {
            started_at: Some(timestamp(at(ms))),
            outcome: outcome as i32,
            status_code: if outcome == pb::Outcome::Delivered {
                200
            } else {
                500
            },
            ..Default::default()
        }
    }

    #[test]
    fn failures_count_until_a_later_success() {
        let mut health = pb::SubscriptionHealth::default();
        for ms in [10, 20, 30] {
            apply(&mut health, &attempt(ms, pb::Outcome::Retrying));
        }
        apply(&mut health, &attempt(40, pb::Outcome::Failed));
        assert_eq!(health.consecutive_failures, 4);
        assert_eq!(health.failing_since, Some(timestamp(at(10))));
        assert_eq!(health.last_error, "HTTP 500");
        // A success that started before the last failure does not end the run.
        apply(&mut health, &attempt(35, pb::Outcome::Delivered));
        assert_eq!(health.consecutive_failures, 4);
        apply(&mut health, &attempt(50, pb::Outcome::Delivered));
        assert_eq!(health.consecutive_failures, 0);
        assert_eq!(health.failing_since, None);
        assert_eq!(health.last_success_at, Some(timestamp(at(50))));
        // A late report of a failure from before that success does not start a new run.
        apply(&mut health, &attempt(45, pb::Outcome::Retrying));
        assert_eq!(health.consecutive_failures, 0);
        // Skipped attempts say nothing about the endpoint.
        apply(&mut health, &attempt(60, pb::Outcome::Skipped));
        assert_eq!(health.consecutive_failures, 0);
    }

    #[test]
    fn a_run_that_reached_the_limit_counts_though_the_same_batch_ended_it() {
        let mut health = pb::SubscriptionHealth::default();
        let batch = [
            attempt(10, pb::Outcome::Retrying),
            attempt(20, pb::Outcome::Retrying),
            attempt(30, pb::Outcome::Retrying),
            attempt(40, pb::Outcome::Delivered),
        ];
        let change = count(&mut health, &batch.iter().collect::<Vec<_>>());
        let longest = change.longest_run.expect("the run grew");
        assert_eq!(longest.consecutive_failures, 3);
        assert_eq!(longest.failing_since, Some(timestamp(at(10))));
        assert_eq!(longest.last_failure_at, Some(timestamp(at(30))));
        assert_eq!(change.ended_run, Some(3));
        // The record as written: the run is over.
        assert_eq!(health.consecutive_failures, 0);
        assert_eq!(health.last_success_at, Some(timestamp(at(40))));
    }

    #[test]
    fn a_batch_that_only_ends_a_run_reports_the_runs_length() {
        let mut health = pb::SubscriptionHealth::default();
        for ms in [10, 20, 30, 40] {
            apply(&mut health, &attempt(ms, pb::Outcome::Retrying));
        }
        let delivered = attempt(50, pb::Outcome::Delivered);
        let change = count(&mut health, &[&delivered]);
        assert_eq!(
            change,
            Change {
                longest_run: None,
                ended_run: Some(4)
            }
        );
        // A short run ending is no news.
        let mut health = pb::SubscriptionHealth::default();
        let (failed, delivered) = (
            attempt(10, pb::Outcome::Retrying),
            attempt(20, pb::Outcome::Delivered),
        );
        let change = count(&mut health, &[&failed, &delivered]);
        assert_eq!(change.ended_run, None);
        assert_eq!(change.longest_run.map(|h| h.consecutive_failures), Some(1));
    }

    #[test]
    fn a_healthy_endpoint_changes_nothing() {
        let mut health = pb::SubscriptionHealth::default();
        apply(&mut health, &attempt(10, pb::Outcome::Delivered));
        assert_eq!(health, pb::SubscriptionHealth::default());
    }
}
