//! Per-subscription rate limits: a token bucket per endpoint that sets a requests-per-second
//! limit, so a receiver that asked for at most N requests a second never gets more from this
//! agent, however large the backlog.
//!
//! A bucket holds at most a tenth of a second's worth of tokens (at least one), so any one-second
//! window carries at most `1.1 × rate` requests (plus one), and refills continuously. Held in
//! memory: after a restart an endpoint starts with a full bucket.
//!
//! Written here rather than taken from a crate: the buckets must follow tokio's clock (paused in
//! tests) and carry a different rate per key, changing when the subscription does.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

/// The shortest wait [`RateLimits::refill_wait`] suggests, so high rates do not spin the
/// scheduler.
const MIN_WAIT: Duration = Duration::from_millis(1);

/// Token buckets by subscription id.
#[derive(Debug, Default)]
pub struct RateLimits {
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug)]
struct Bucket {
    /// Requests per second.
    rate: u32,
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    fn new(rate: u32, now: Instant) -> Self {
        Bucket {
            rate,
            tokens: capacity(rate),
            updated: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * f64::from(self.rate)).min(capacity(self.rate));
        self.updated = now;
    }
}

/// The most tokens a bucket holds: a tenth of a second's worth, at least one.
fn capacity(rate: u32) -> f64 {
    (f64::from(rate) / 10.0).ceil().max(1.0)
}

impl RateLimits {
    /// How many requests to `subscription`, limited to `rate` per second, may start now.
    pub fn available(&self, subscription: &str, rate: u32) -> usize {
        let now = Instant::now();
        let mut buckets = self.lock();
        let bucket = buckets
            .entry(subscription.to_owned())
            .or_insert_with(|| Bucket::new(rate, now));
        if bucket.rate != rate {
            *bucket = Bucket::new(rate, now);
        }
        bucket.refill(now);
        // Truncation is the point: whole tokens only.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let whole = bucket.tokens.floor() as usize;
        whole
    }

    /// Spends one token of `subscription` (a request is starting); unlimited ones have no bucket.
    pub fn consume(&self, subscription: &str) {
        if let Some(bucket) = self.lock().get_mut(subscription) {
            bucket.tokens = (bucket.tokens - 1.0).max(0.0);
        }
    }

    /// How long until every bucket now short of a whole token has one again, at most; `None`
    /// when none is short. Full buckets are forgotten (a new one would be the same).
    pub fn refill_wait(&self) -> Option<Duration> {
        let now = Instant::now();
        let mut buckets = self.lock();
        let mut wait: Option<Duration> = None;
        buckets.retain(|_, bucket| {
            bucket.refill(now);
            if bucket.tokens >= capacity(bucket.rate) {
                return false;
            }
            if bucket.tokens < 1.0 {
                let needed = (1.0 - bucket.tokens) / f64::from(bucket.rate);
                let until = Duration::from_secs_f64(needed).max(MIN_WAIT);
                wait = Some(wait.map_or(until, |w| w.min(until)));
            }
            true
        });
        wait
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Bucket>> {
        // A panic elsewhere cannot leave a bucket half-updated, so poisoning is ignored.
        self.buckets.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes every token available at each 10 ms step for `steps` steps; returns the total.
    async fn drain(limits: &RateLimits, rate: u32, steps: u32) -> usize {
        let mut sent = 0;
        for _ in 0..steps {
            let n = limits.available("a", rate);
            for _ in 0..n {
                limits.consume("a");
            }
            sent += n;
            tokio::time::advance(Duration::from_millis(10)).await;
        }
        sent
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_carries_about_the_rate() {
        let limits = RateLimits::default();
        // 100 steps of 10 ms: one second, plus the initial burst of 5.
        let sent = drain(&limits, 50, 100).await;
        assert!((50..=56).contains(&sent), "{sent}");
        let sent = drain(&limits, 50, 100).await;
        assert!((49..=51).contains(&sent), "steady state: {sent}");
    }

    #[tokio::test(start_paused = true)]
    async fn low_rates_wait_for_whole_tokens() {
        let limits = RateLimits::default();
        assert_eq!(limits.available("a", 2), 1);
        limits.consume("a");
        assert_eq!(limits.available("a", 2), 0);
        assert_eq!(limits.refill_wait(), Some(Duration::from_millis(500)));
        tokio::time::advance(Duration::from_millis(499)).await;
        assert_eq!(limits.available("a", 2), 0);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(limits.available("a", 2), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_rate_starts_a_new_bucket_and_full_buckets_are_forgotten() {
        let limits = RateLimits::default();
        assert_eq!(limits.available("a", 1), 1);
        limits.consume("a");
        assert_eq!(limits.available("a", 100), 10);
        assert_eq!(limits.refill_wait(), None, "a full bucket needs no wake-up");
        assert!(limits.lock().is_empty());
        limits.consume("b");
        assert_eq!(
            limits.refill_wait(),
            None,
            "unlimited subscriptions have no bucket"
        );
    }
}
