//! A circuit breaker per endpoint: after [`TRIP_AFTER`] consecutive failed attempts to a
//! subscription, its lane narrows to one attempt at a time (a probe) instead of the whole
//! backlog hammering a receiver that is down; the first success opens it to full width again.
//! Held in memory: after a restart an endpoint gets a fresh chance.

use std::collections::HashMap;
use std::sync::Mutex;

/// Consecutive failures that trip the breaker.
pub const TRIP_AFTER: u32 = 5;

/// Consecutive failures per subscription.
#[derive(Debug, Default)]
pub struct Breakers {
    failures: Mutex<HashMap<String, u32>>,
}

impl Breakers {
    /// Records an attempt's result for `subscription`.
    pub fn record(&self, subscription: &str, delivered: bool) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if delivered {
            failures.remove(subscription);
        } else {
            *failures.entry(subscription.to_owned()).or_default() += 1;
        }
    }

    /// Whether `subscription` gets one attempt at a time.
    pub fn is_tripped(&self, subscription: &str) -> bool {
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures.get(subscription).is_some_and(|n| *n >= TRIP_AFTER)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trips_after_consecutive_failures_and_resets_on_success() {
        let breakers = Breakers::default();
        for _ in 0..TRIP_AFTER - 1 {
            breakers.record("a", false);
        }
        assert!(!breakers.is_tripped("a"));
        breakers.record("a", false);
        assert!(breakers.is_tripped("a"));
        assert!(!breakers.is_tripped("b"), "per subscription");
        breakers.record("a", true);
        assert!(!breakers.is_tripped("a"));
    }
}
