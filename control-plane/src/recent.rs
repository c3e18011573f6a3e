//! An endpoint's recent record from the delivery log: how many attempts in the last day (at
//! most the newest [`MAX_SAMPLE`]), what share was delivered, how long attempts took (p50,
//! p99), and when the last delivery succeeded. Computed when asked, from the log's
//! per-subscription index. (The stored health record notes a success only when it ends a run
//! of failures, so a healthy endpoint costs the store nothing; the log knows the newest one.)

use std::time::{Duration, SystemTime};

use herald_proto::convert::{duration, std_duration, timestamp};
use herald_proto::v1 as pb;

use crate::attempts::{AttemptLog, Filter, LogError};

/// The most attempts looked at.
pub const MAX_SAMPLE: usize = 10_000;
/// How far back attempts count.
pub const WINDOW: Duration = Duration::from_secs(24 * 60 * 60);

/// Fills the recent-attempt fields of `health` from `log`.
pub async fn fill(log: &AttemptLog, health: &mut pb::SubscriptionHealth) -> Result<(), LogError> {
    let since = SystemTime::now()
        .checked_sub(WINDOW)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let filter = Filter::new(pb::AttemptFilter {
        subscription_id: health.subscription_id.clone(),
        since: Some(timestamp(since)),
        ..Default::default()
    })?;
    let mut attempts = Vec::new();
    let mut token = String::new();
    loop {
        let page = log.list(filter.clone(), 1000, &token).await?;
        attempts.extend(page.attempts);
        if page.next_page_token.is_empty() || attempts.len() >= MAX_SAMPLE {
            break;
        }
        token = page.next_page_token;
    }
    attempts.truncate(MAX_SAMPLE);
    summarize(&attempts, health);
    Ok(())
}

/// The summary of `attempts` (any order), written into `health`.
fn summarize(attempts: &[pb::Attempt], health: &mut pb::SubscriptionHealth) {
    // Skipped deliveries were never sent: they say nothing about the endpoint; test-sends are
    // not deliveries.
    let sent: Vec<&pb::Attempt> = attempts
        .iter()
        .filter(|a| a.outcome() != pb::Outcome::Skipped && !a.test)
        .collect();
    health.recent_attempts = sent.len() as u32;
    health.recent_since = sent
        .iter()
        .filter_map(|a| a.started_at)
        .min_by_key(|t| (t.seconds, t.nanos));
    let newest_success = sent
        .iter()
        .filter(|a| a.outcome() == pb::Outcome::Delivered)
        .filter_map(|a| a.started_at)
        .chain(health.last_success_at)
        .max_by_key(|t| (t.seconds, t.nanos));
    health.last_success_at = newest_success;
    if sent.is_empty() {
        health.success_rate = 0.0;
        health.latency_p50 = None;
        health.latency_p99 = None;
        return;
    }
    let delivered = sent
        .iter()
        .filter(|a| a.outcome() == pb::Outcome::Delivered)
        .count();
    health.success_rate = delivered as f64 / sent.len() as f64;
    let mut durations: Vec<Duration> = sent
        .iter()
        .filter_map(|a| a.duration.as_ref().and_then(std_duration))
        .collect();
    durations.sort();
    let at = |p: f64| {
        let index = ((durations.len() as f64 - 1.0) * p).round() as usize;
        durations.get(index).copied().map(duration)
    };
    health.latency_p50 = at(0.50);
    health.latency_p99 = at(0.99);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(outcome: pb::Outcome, millis: u64) -> pb::Attempt {
        pb::Attempt {
            outcome: outcome as i32,
            duration: Some(duration(Duration::from_millis(millis))),
            started_at: Some(timestamp(SystemTime::now())),
            ..Default::default()
        }
    }

    #[test]
    fn rate_and_percentiles_count_sent_attempts_only() {
        let mut attempts: Vec<pb::Attempt> = (1..=100)
            .map(|ms| attempt(pb::Outcome::Delivered, ms))
            .collect();
        attempts.extend((0..100).map(|_| attempt(pb::Outcome::Failed, 1000)));
        attempts.push(attempt(pb::Outcome::Skipped, 0));
        let mut health = pb::SubscriptionHealth::default();
        summarize(&attempts, &mut health);
        assert_eq!(health.recent_attempts, 200);
        assert!((health.success_rate - 0.5).abs() < 1e-9);
        let ms = |d: Option<prost_types::Duration>| {
            d.and_then(|d| std_duration(&d)).map(|d| d.as_millis())
        };
        assert_eq!(ms(health.latency_p50), Some(1000));
        assert_eq!(ms(health.latency_p99), Some(1000));
        assert_eq!(ms(attempts_p50(&attempts[..100])), Some(51));
    }

    fn attempts_p50(attempts: &[pb::Attempt]) -> Option<prost_types::Duration> {
        let mut health = pb::SubscriptionHealth::default();
        summarize(attempts, &mut health);
        health.latency_p50
    }

    #[test]
    fn the_last_success_is_the_newest_known() {
        let mut health = pb::SubscriptionHealth::default();
        let old = timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000));
        health.last_success_at = Some(old);
        summarize(&[attempt(pb::Outcome::Failed, 5)], &mut health);
        assert_eq!(health.last_success_at, Some(old), "a failure is no success");
        let delivered = attempt(pb::Outcome::Delivered, 5);
        summarize(std::slice::from_ref(&delivered), &mut health);
        assert_eq!(health.last_success_at, delivered.started_at);
        summarize(&[], &mut health);
        assert_eq!(
            health.last_success_at, delivered.started_at,
            "kept when none are recent"
        );
    }

    #[test]
    fn no_attempts_means_no_rate() {
        let mut health = pb::SubscriptionHealth::default();
        summarize(&[], &mut health);
        assert_eq!((health.recent_attempts, health.success_rate), (0, 0.0));
        assert!(health.latency_p50.is_none());
    }
}
