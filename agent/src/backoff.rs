//! Exponential backoff with full jitter, for reconnecting to the control plane: a fleet that
//! lost its control plane at once does not come back at once.

use std::time::Duration;

/// A backoff sequence: each failure doubles the ceiling, up to `max`; the wait is random below it.
#[derive(Clone, Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    ceiling: Duration,
    /// Failures since the last success, so callers can log the first loudly and the rest less.
    failures: u32,
}

impl Backoff {
    /// A sequence from `min` to `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            ceiling: min,
            failures: 0,
        }
    }

    /// The next wait (between `min` and the current ceiling), and double the ceiling.
    pub fn next_delay(&mut self) -> Duration {
        let span = self.ceiling.saturating_sub(self.min);
        let delay = self.min + span.mul_f64(unit_random());
        self.ceiling = (self.ceiling * 2).min(self.max);
        self.failures = self.failures.saturating_add(1);
        delay
    }

    /// Back to the shortest wait, after a success.
    pub fn reset(&mut self) {
        self.ceiling = self.min;
        self.failures = 0;
    }

    /// Whether a failure now deserves a warning: the first of an outage and every tenth after
    /// (the rest are logged at debug level, so a long outage does not flood the log).
    pub fn should_warn(&self) -> bool {
        self.failures.is_multiple_of(10)
    }
}

/// A random number in [0, 1).
pub fn unit_random() -> f64 {
    let mut bytes = [0u8; 8];
    // Without OS randomness, no jitter: still correct, only less spread.
    if getrandom::fill(&mut bytes).is_err() {
        return 0.0;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        for _ in 0..20 {
            let d = b.next_delay();
            assert!(
                d >= Duration::from_millis(100) && d <= Duration::from_secs(1),
                "{d:?}"
            );
        }
        assert_eq!(b.ceiling, Duration::from_secs(1));
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }
}
