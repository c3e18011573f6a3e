//! What a commit of the delivery log derives from the attempts it stores, written in the same
//! transaction so that no crash can separate them from the attempts:
//!
//! - **health records**: each subscription's run of consecutive failed attempts
//!   (`herald.v1.SubscriptionHealth`). Counting only the attempts new to the log, in the commit
//!   that stores them, counts each attempt exactly once: a batch sent again after a lost ack (a
//!   replica killed between commit and ack) stores nothing and counts nothing twice.
//! - **follow-ups** ([`Followup`]): what the control plane still has to act on in the config
//!   store: a run of failures that grew (disable the subscription when it reached its limit), a
//!   run that ended with a delivery (tell operators), a receiver that answered 410 Gone. A
//!   follow-up stays in the log until a replica has acted on it, so a replica killed before it
//!   did leaves it for the next sweep ([`crate::health::Health::run`]).
//! - **operator events** the new attempts raise (`herald.delivery.exhausted`), into the outbox
//!   the agents drain ([`crate::operator_events`]).
//!
//! Reports arrive late and out of order (several agents, retries, outboxes), so the attempts of
//! a subscription are counted in start order: a failure older than the last success does not
//! count, and a success older than the run's last failure does not end it. A run that reached
//! its length within a batch is followed up even if a later attempt of the same batch ended it:
//! the outcome does not depend on how reports were batched.

use std::collections::BTreeMap;

use herald_core::error_kind::ErrorKind;
use herald_proto::convert::{system_time, timestamp};
use herald_proto::v1 as pb;

/// A run of at least this many failures ending in a delivery is reported as a recovery.
pub const RECOVERY_MIN_FAILURES: u32 = 3;

/// What stored attempts set off, as the control plane tells the log: the operator events they
/// raise (the control plane knows the system tenant and the events' shape) and when a run of
/// failures disables a subscription (it knows the subscriptions' policies).
pub trait Reactions: Send + Sync {
    /// The operator event a newly stored attempt raises, if any.
    fn raise(&self, attempt: &pb::Attempt) -> Option<pb::Event>;
    /// Whether a run of failures (the record at its longest) disables its subscription now;
    /// `None` when that is not known here: the run is then followed up, and the control plane
    /// decides when it acts on it. A run known not to disable needs no follow-up.
    fn disables(&self, run: &pb::SubscriptionHealth) -> Option<bool>;
}

/// Raises nothing and knows no policy (every run that grows is followed up).
pub struct NoReactions;

impl Reactions for NoReactions {
    fn raise(&self, _: &pb::Attempt) -> Option<pb::Event> {
        None
    }

    fn disables(&self, _: &pb::SubscriptionHealth) -> Option<bool> {
        None
    }
}

/// What a commit left for the control plane to act on about one subscription.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Followup {
    /// The subscription.
    #[prost(string, tag = "1")]
    pub subscription_id: String,
    /// The record at the moment its run of failures was longest, when the commit made the run
    /// longer (and it may disable the subscription): what the disable limit is checked against,
    /// even if a later attempt of the same batch ended the run.
    #[prost(message, optional, tag = "2")]
    pub longest_run: Option<pb::SubscriptionHealth>,
    /// A delivery ended a run of this many failures (0: none, or a run shorter than
    /// [`RECOVERY_MIN_FAILURES`]).
    #[prost(uint32, tag = "3")]
    pub ended_run: u32,
    /// When the delivery that ended the run started.
    #[prost(message, optional, tag = "4")]
    pub ended_at: Option<prost_types::Timestamp>,
    /// The receiver answered 410 Gone: the subscription is to be disabled.
    #[prost(bool, tag = "5")]
    pub gone: bool,
    /// When the commit wrote it.
    #[prost(message, optional, tag = "6")]
    pub recorded_at: Option<prost_types::Timestamp>,
}

/// A follow-up as kept by a store, with the id that settles it.
#[derive(Clone, Debug, PartialEq)]
pub struct PendingFollowup {
    /// Its key in the store.
    pub id: i64,
    /// What is to be done.
    pub followup: Followup,
}

/// A subscription's health record as a commit leaves it.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthRecord {
    /// The subscription.
    pub subscription_id: String,
    /// Its record.
    pub health: pb::SubscriptionHealth,
}

/// What one commit derives from the attempts new to the log.
#[derive(Debug, Default)]
pub struct Derived {
    /// Health records that changed (the others are left as they are).
    pub records: Vec<HealthRecord>,
    /// Follow-ups to keep until acted on.
    pub followups: Vec<Followup>,
    /// Operator events for the outbox.
    pub events: Vec<pb::Event>,
}

/// The subscriptions whose health records a commit of `new` reads.
pub fn subscriptions(new: &[&pb::Attempt]) -> Vec<String> {
    let mut ids: Vec<String> = new.iter().map(|a| a.subscription_id.clone()).collect();
    ids.sort();
    ids.dedup();
    ids
}

/// The subscriptions that `new` may give a record they did not have (a failure starts one).
pub fn failing_subscriptions(new: &[&pb::Attempt]) -> Vec<String> {
    let mut ids: Vec<String> = new
        .iter()
        .filter(|a| is_failure(a))
        .map(|a| a.subscription_id.clone())
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// Derives what storing `new` means: `current` gives a subscription's record as stored (none
/// for a subscription that never failed), `reactions` what attempts and runs set off.
pub fn derive(
    new: &[&pb::Attempt],
    current: impl Fn(&str) -> Option<pb::SubscriptionHealth>,
    reactions: &dyn Reactions,
) -> Derived {
    let now = Some(timestamp(std::time::SystemTime::now()));
    let mut by_subscription: BTreeMap<&str, Vec<&pb::Attempt>> = BTreeMap::new();
    let mut derived = Derived::default();
    // Test-sends say nothing about how deliveries fare: they count toward no health.
    for attempt in new.iter().filter(|a| !a.test) {
        by_subscription
            .entry(attempt.subscription_id.as_str())
            .or_default()
            .push(attempt);
        derived.events.extend(reactions.raise(attempt));
    }
    for (id, mut attempts) in by_subscription {
        attempts.sort_by_key(|a| a.started_at.as_ref().map(system_time));
        let before = current(id).unwrap_or_else(|| pb::SubscriptionHealth {
            subscription_id: id.to_owned(),
            ..Default::default()
        });
        let mut health = before.clone();
        let mut followup = count(&mut health, &attempts);
        followup.gone = attempts.iter().any(|a| a.status_code == 410);
        if followup
            .longest_run
            .as_ref()
            .is_some_and(|run| reactions.disables(run) == Some(false))
        {
            followup.longest_run = None;
        }
        if health != before {
            derived.records.push(HealthRecord {
                subscription_id: id.to_owned(),
                health,
            });
        }
        if followup.longest_run.is_some() || followup.ended_run > 0 || followup.gone {
            followup.subscription_id = id.to_owned();
            followup.recorded_at = now;
            derived.followups.push(followup);
        }
    }
    derived
}

/// Whether an attempt counts as a failure of its endpoint: it failed, and not on the agent's
/// side (an agent whose disk fails must not disable a receiver that is fine).
fn is_failure(attempt: &pb::Attempt) -> bool {
    matches!(
        pb::Outcome::try_from(attempt.outcome),
        Ok(pb::Outcome::Retrying | pb::Outcome::Failed)
    ) && !ErrorKind::parse(&attempt.error_kind).is_ok_and(ErrorKind::is_agent_side)
}

/// Counts `attempts` (in start order) into a record, one by one.
fn count(health: &mut pb::SubscriptionHealth, attempts: &[&pb::Attempt]) -> Followup {
    let mut followup = Followup::default();
    let mut longest = health.consecutive_failures;
    for attempt in attempts {
        let run = health.consecutive_failures;
        apply(health, attempt);
        if health.consecutive_failures > longest {
            longest = health.consecutive_failures;
            followup.longest_run = Some(health.clone());
        }
        if run >= RECOVERY_MIN_FAILURES && health.consecutive_failures == 0 {
            followup.ended_run = run;
            followup.ended_at = health.last_success_at;
        }
    }
    followup
}

/// Counts one attempt into a record.
fn apply(health: &mut pb::SubscriptionHealth, attempt: &pb::Attempt) {
    let Some(at) = attempt.started_at.as_ref().map(system_time) else {
        return;
    };
    let after = |t: Option<&prost_types::Timestamp>| t.is_none_or(|t| at > system_time(t));
    if is_failure(attempt) {
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
    } else if attempt.outcome() == pb::Outcome::Delivered
        && health.consecutive_failures > 0
        && after(health.last_failure_at.as_ref())
    {
        health.consecutive_failures = 0;
        health.failing_since = None;
        health.last_success_at = Some(timestamp(at));
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
            subscription_id: "sub_1".into(),
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
        // Nor do failures on the agent's side: its queue could not be read, or it failed
        // while making the attempt.
        for (ms, kind) in [(70, "storage"), (80, "internal")] {
            let failed = pb::Attempt {
                error_kind: kind.into(),
                status_code: 0,
                ..attempt(ms, pb::Outcome::Retrying)
            };
            apply(&mut health, &failed);
            assert_eq!(health.consecutive_failures, 0, "{kind}");
        }
        // A failure of the endpoint's own still counts.
        let timed_out = pb::Attempt {
            error_kind: "timeout".into(),
            status_code: 0,
            ..attempt(90, pb::Outcome::Retrying)
        };
        apply(&mut health, &timed_out);
        assert_eq!(health.consecutive_failures, 1);
    }

    #[test]
    fn a_run_that_reached_its_length_is_followed_up_though_the_same_batch_ended_it() {
        let batch = [
            attempt(10, pb::Outcome::Retrying),
            attempt(20, pb::Outcome::Retrying),
            attempt(30, pb::Outcome::Retrying),
            attempt(40, pb::Outcome::Delivered),
        ];
        // Out of order on purpose: counted in start order.
        let new: Vec<&pb::Attempt> = batch.iter().rev().collect();
        let derived = derive(&new, |_| None, &NoReactions);
        let [followup] = derived.followups.as_slice() else {
            panic!("one follow-up: {:?}", derived.followups);
        };
        let longest = followup.longest_run.as_ref().expect("the run grew");
        assert_eq!(longest.consecutive_failures, 3);
        assert_eq!(longest.failing_since, Some(timestamp(at(10))));
        assert_eq!(longest.last_failure_at, Some(timestamp(at(30))));
        assert_eq!(followup.ended_run, 3);
        assert_eq!(followup.ended_at, Some(timestamp(at(40))));
        assert_eq!(followup.subscription_id, "sub_1");
        // The record as written: the run is over.
        let [record] = derived.records.as_slice() else {
            panic!("one record");
        };
        assert_eq!(record.health.consecutive_failures, 0);
        assert_eq!(record.health.last_success_at, Some(timestamp(at(40))));
    }

    #[test]
    fn a_batch_that_only_ends_a_run_reports_the_runs_length() {
        let mut health = pb::SubscriptionHealth::default();
        for ms in [10, 20, 30, 40] {
            apply(&mut health, &attempt(ms, pb::Outcome::Retrying));
        }
        let delivered = attempt(50, pb::Outcome::Delivered);
        let followup = count(&mut health, &[&delivered]);
        assert_eq!(followup.longest_run, None);
        assert_eq!(followup.ended_run, 4);
        // A short run ending is no news.
        let mut health = pb::SubscriptionHealth::default();
        let (failed, delivered) = (
            attempt(10, pb::Outcome::Retrying),
            attempt(20, pb::Outcome::Delivered),
        );
        let followup = count(&mut health, &[&failed, &delivered]);
        assert_eq!(followup.ended_run, 0);
        assert_eq!(
            followup.longest_run.map(|h| h.consecutive_failures),
            Some(1)
        );
    }

    #[test]
    fn a_healthy_endpoint_derives_nothing() {
        let delivered = attempt(10, pb::Outcome::Delivered);
        let derived = derive(&[&delivered], |_| None, &NoReactions);
        assert!(derived.records.is_empty() && derived.followups.is_empty());
        assert!(failing_subscriptions(&[&delivered]).is_empty());
        assert_eq!(subscriptions(&[&delivered]), ["sub_1"]);
    }

    /// Raises an event per failed delivery; runs of `limit` failures disable.
    struct Limit(u32);

    impl Reactions for Limit {
        fn raise(&self, a: &pb::Attempt) -> Option<pb::Event> {
            (a.outcome() == pb::Outcome::Failed).then(|| pb::Event {
                id: format!("exhausted:{}", a.subscription_id),
                ..Default::default()
            })
        }

        fn disables(&self, run: &pb::SubscriptionHealth) -> Option<bool> {
            Some(run.consecutive_failures >= self.0)
        }
    }

    #[test]
    fn gone_and_raised_events_are_derived() {
        let mut gone = attempt(10, pb::Outcome::Failed);
        gone.status_code = 410;
        let derived = derive(&[&gone], |_| None, &Limit(10));
        assert!(derived.followups[0].gone);
        assert_eq!(
            derived.followups[0].longest_run, None,
            "10 failures disable"
        );
        assert_eq!(derived.events.len(), 1);
        assert_eq!(derived.events[0].id, "exhausted:sub_1");
    }

    #[test]
    fn only_a_run_that_disables_is_followed_up_when_the_policy_is_known() {
        let failures: Vec<pb::Attempt> = (1..=3)
            .map(|ms| attempt(ms, pb::Outcome::Retrying))
            .collect();
        let new: Vec<&pb::Attempt> = failures.iter().collect();
        let derived = derive(&new, |_| None, &Limit(4));
        assert!(derived.followups.is_empty(), "3 of 4: nothing to do yet");
        assert_eq!(derived.records[0].health.consecutive_failures, 3);
        let derived = derive(&new, |_| None, &Limit(3));
        let run = derived.followups[0].longest_run.as_ref().expect("due");
        assert_eq!(run.consecutive_failures, 3);
    }
}
