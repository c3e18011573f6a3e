//! Retry schedules: how long to wait before each new attempt at a delivery.
//!
//! A schedule lists the delays after the first attempt, so `delays.len() + 1` attempts are made
//! in all. A valid schedule has at most [`MAX_DELAYS`] delays, each between [`MIN_DELAY`] and
//! [`MAX_DELAY`]; an empty schedule means a single attempt. Schedules are written as
//! comma-separated durations, such as `5s,5m,30m`.
//!
//! A schedule can also be described as exponential backoff ([`Exponential`]: a base delay
//! multiplied by a factor after each attempt, capped), which expands to the same list of delays.
//!
//! Jitter is a separate, pure step ([`jittered`]) so callers pick the randomness and tests stay
//! deterministic.

use std::fmt;
use std::time::Duration;

use crate::validate::{ValidationError, quoted};

/// Most delays a schedule may hold.
pub const MAX_DELAYS: usize = 50;
/// Shortest allowed delay.
pub const MIN_DELAY: Duration = Duration::from_millis(1);
/// Longest allowed delay.
pub const MAX_DELAY: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// The default delays: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h — eight attempts over about
/// 27.6 hours, so a receiver can be down for a day without losing events.
pub const DEFAULT_DELAYS: [Duration; 7] = [
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 60 * 60),
    Duration::from_secs(5 * 60 * 60),
    Duration::from_secs(10 * 60 * 60),
    Duration::from_secs(10 * 60 * 60),
];

/// The jitter fraction Herald applies to every delay: ±20 %, so that receivers recovering from
/// an outage are not hit by every retry at the same instant.
pub const JITTER: f64 = 0.2;

const FIELD: &str = "retry";

/// A validated list of delays between delivery attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule {
    /// `delays[i]` is the wait between attempt `i + 1` and attempt `i + 2`.
    delays: Vec<Duration>,
}

impl Default for RetrySchedule {
    fn default() -> Self {
        Self {
            delays: DEFAULT_DELAYS.to_vec(),
        }
    }
}

impl RetrySchedule {
    /// A schedule of these delays, if there are at most [`MAX_DELAYS`] and each is between
    /// [`MIN_DELAY`] and [`MAX_DELAY`].
    pub fn new(delays: Vec<Duration>) -> Result<Self, ValidationError> {
        if delays.len() > MAX_DELAYS {
            return Err(ValidationError::new(
                FIELD,
                format!(
                    "{} delays, more than the limit of {MAX_DELAYS}",
                    delays.len()
                ),
            ));
        }
        if let Some(bad) = delays
            .iter()
            .find(|d| !(MIN_DELAY..=MAX_DELAY).contains(*d))
        {
            return Err(ValidationError::new(
                FIELD,
                format!(
                    "delay {} is outside {} to {}",
                    humantime::format_duration(*bad),
                    humantime::format_duration(MIN_DELAY),
                    humantime::format_duration(MAX_DELAY)
                ),
            ));
        }
        Ok(Self { delays })
    }

    /// Parses comma-separated durations such as `5s,5m,30m` (spaces around commas allowed);
    /// empty text is the single-attempt schedule.
    pub fn parse(text: &str) -> Result<Self, ValidationError> {
        if text.trim().is_empty() {
            return Self::new(Vec::new());
        }
        let parts: Vec<&str> = text.split(',').collect();
        if parts.len() > MAX_DELAYS {
            return Err(ValidationError::new(
                FIELD,
                format!(
                    "{} delays, more than the limit of {MAX_DELAYS}",
                    parts.len()
                ),
            ));
        }
        let delays = parts
            .into_iter()
            .map(|part| {
                let part = part.trim();
                humantime::parse_duration(part).map_err(|e| {
                    ValidationError::new(FIELD, format!("{} is not a duration: {e}", quoted(part)))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(delays)
    }

    /// The delays after the first attempt.
    pub fn delays(&self) -> &[Duration] {
        &self.delays
    }

    /// How many attempts the schedule allows in all, the first included.
    pub fn max_attempts(&self) -> u32 {
        u32::try_from(self.delays.len()).map_or(u32::MAX, |n| n.saturating_add(1))
    }

    /// The wait after attempt number `attempt` (1-based) before the next one; `None` when
    /// `attempt` was the last (or is 0).
    pub fn delay_after(&self, attempt: u32) -> Option<Duration> {
        let index = usize::try_from(attempt.checked_sub(1)?).ok()?;
        self.delays.get(index).copied()
    }
}

/// Writes the schedule as [`RetrySchedule::parse`] reads it, such as `5s,5m,30m`.
impl fmt::Display for RetrySchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, delay) in self.delays.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}", humantime::format_duration(*delay))?;
        }
        Ok(())
    }
}

/// Largest growth factor an exponential schedule may use.
pub const MAX_FACTOR: f64 = 10.0;

/// Exponential backoff: delays `base`, `base·factor`, `base·factor²`, … each at most `cap`, for
/// `max_attempts` attempts in all. Written `base=5s,factor=2,cap=1h,attempts=10`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Exponential {
    /// The delay after the first attempt.
    pub base: Duration,
    /// How much each delay grows over the previous one: 1.0 to [`MAX_FACTOR`].
    pub factor: f64,
    /// The longest delay.
    pub cap: Duration,
    /// Attempts in all, the first included: 1 to `MAX_DELAYS + 1`.
    pub max_attempts: u32,
}

impl Exponential {
    /// The schedule these parameters describe, if they are within bounds: `factor` 1.0 to
    /// [`MAX_FACTOR`], `base` and `cap` within [`MIN_DELAY`]..=[`MAX_DELAY`] with
    /// `base <= cap`, and 1 to `MAX_DELAYS + 1` attempts.
    pub fn schedule(&self) -> Result<RetrySchedule, ValidationError> {
        let invalid = |reason: String| Err(ValidationError::new(FIELD, reason));
        if !(1.0..=MAX_FACTOR).contains(&self.factor) {
            return invalid(format!(
                "factor {} is outside 1 to {MAX_FACTOR}",
                self.factor
            ));
        }
        for (name, delay) in [("base", self.base), ("cap", self.cap)] {
            if !(MIN_DELAY..=MAX_DELAY).contains(&delay) {
                return invalid(format!(
                    "{name} {} is outside {} to {}",
                    humantime::format_duration(delay),
                    humantime::format_duration(MIN_DELAY),
                    humantime::format_duration(MAX_DELAY)
                ));
            }
        }
        if self.base > self.cap {
            return invalid("base is longer than cap".to_owned());
        }
        let delays = usize::try_from(self.max_attempts.saturating_sub(1)).unwrap_or(usize::MAX);
        if self.max_attempts == 0 || delays > MAX_DELAYS {
            return invalid(format!(
                "attempts {} is outside 1 to {}",
                self.max_attempts,
                MAX_DELAYS + 1
            ));
        }
        let mut next = self.base.as_secs_f64();
        let cap = self.cap.as_secs_f64();
        let delays = (0..delays)
            .map(|_| {
                let delay = Duration::from_secs_f64(next.min(cap));
                next = (next * self.factor).min(cap);
                delay
            })
            .collect();
        RetrySchedule::new(delays)
    }

    /// Parses `base=5s,factor=2,cap=1h,attempts=10` (every key required, any order) and checks
    /// the result as [`Exponential::schedule`] does.
    pub fn parse(text: &str) -> Result<Self, ValidationError> {
        let (mut base, mut factor, mut cap, mut attempts) = (None, None, None, None);
        for part in text.split(',') {
            let (key, value) = part.trim().split_once('=').ok_or_else(|| {
                ValidationError::new(FIELD, format!("{} is not KEY=VALUE", quoted(part)))
            })?;
            let value = value.trim();
            let duration = || {
                humantime::parse_duration(value).map_err(|e| {
                    ValidationError::new(
                        FIELD,
                        format!("{key}: {} is not a duration: {e}", quoted(value)),
                    )
                })
            };
            match key.trim() {
                "base" => base = Some(duration()?),
                "cap" => cap = Some(duration()?),
                "factor" => {
                    factor = Some(value.parse::<f64>().map_err(|_| {
                        ValidationError::new(
                            FIELD,
                            format!("factor: {} is not a number", quoted(value)),
                        )
                    })?);
                }
                "attempts" => {
                    attempts = Some(value.parse::<u32>().map_err(|_| {
                        ValidationError::new(
                            FIELD,
                            format!("attempts: {} is not a count", quoted(value)),
                        )
                    })?);
                }
                other => {
                    return Err(ValidationError::new(
                        FIELD,
                        format!(
                            "unknown key {}: expected base, factor, cap, attempts",
                            quoted(other)
                        ),
                    ));
                }
            }
        }
        let missing =
            |key: &str| ValidationError::new(FIELD, format!("exponential backoff needs {key}=…"));
        let exponential = Exponential {
            base: base.ok_or_else(|| missing("base"))?,
            factor: factor.ok_or_else(|| missing("factor"))?,
            cap: cap.ok_or_else(|| missing("cap"))?,
            max_attempts: attempts.ok_or_else(|| missing("attempts"))?,
        };
        exponential.schedule()?;
        Ok(exponential)
    }
}

/// Writes the parameters as [`Exponential::parse`] reads them.
impl fmt::Display for Exponential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "base={},factor={},cap={},attempts={}",
            humantime::format_duration(self.base),
            self.factor,
            humantime::format_duration(self.cap),
            self.max_attempts
        )
    }
}

/// `delay` spread by ±`jitter_fraction`: `unit_random` in `[0, 1)` maps linearly onto
/// `delay · (1 − j)` to `delay · (1 + j)`.
///
/// Pure, so callers supply the randomness. Out-of-range inputs are clamped (`jitter_fraction` to
/// `[0, 1]`, `unit_random` to `[0, 1]`; NaN counts as 0), and a result too large for a
/// `Duration` saturates, so this never panics.
pub fn jittered(delay: Duration, jitter_fraction: f64, unit_random: f64) -> Duration {
    let clamp = |x: f64, max: f64| if x.is_nan() { 0.0 } else { x.clamp(0.0, max) };
    let j = clamp(jitter_fraction, 1.0);
    let r = clamp(unit_random, 1.0);
    let factor = 1.0 - j + 2.0 * j * r;
    Duration::try_from_secs_f64(delay.as_secs_f64() * factor).unwrap_or(Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: u64 = 60;
    const HOUR: u64 = 60 * MINUTE;

    #[test]
    fn default_schedule() {
        let schedule = RetrySchedule::default();
        assert_eq!(schedule.max_attempts(), 8);
        assert_eq!(schedule.delays(), &DEFAULT_DELAYS);
        assert_eq!(schedule.to_string(), "5s,5m,30m,2h,5h,10h,10h");
        let total: Duration = schedule.delays().iter().sum();
        assert_eq!(total, Duration::from_secs(5 + 35 * MINUTE + 27 * HOUR));
    }

    #[test]
    fn delay_after_is_one_based() {
        let schedule = RetrySchedule::parse("5s,5m,30m").unwrap();
        assert_eq!(schedule.max_attempts(), 4);
        assert_eq!(schedule.delay_after(0), None);
        assert_eq!(schedule.delay_after(1), Some(Duration::from_secs(5)));
        assert_eq!(
            schedule.delay_after(2),
            Some(Duration::from_secs(5 * MINUTE))
        );
        assert_eq!(
            schedule.delay_after(3),
            Some(Duration::from_secs(30 * MINUTE))
        );
        assert_eq!(schedule.delay_after(4), None);
        assert_eq!(schedule.delay_after(u32::MAX), None);
    }

    #[test]
    fn parse_and_display_round_trip() {
        for text in ["5s,5m,30m", "1ms", "1s 500ms,7days", ""] {
            let schedule = RetrySchedule::parse(text).unwrap();
            assert_eq!(RetrySchedule::parse(&schedule.to_string()), Ok(schedule));
        }
        assert_eq!(
            RetrySchedule::parse(" 5s , 1h ").unwrap().delays(),
            &[Duration::from_secs(5), Duration::from_secs(HOUR)]
        );
    }

    #[test]
    fn empty_schedule_is_a_single_attempt() {
        let schedule = RetrySchedule::parse("  ").unwrap();
        assert_eq!(schedule.max_attempts(), 1);
        assert_eq!(schedule.delay_after(1), None);
    }

    #[test]
    fn refusals() {
        let too_many = vec!["1s"; MAX_DELAYS + 1].join(",");
        let just_enough = vec!["1s"; MAX_DELAYS].join(",");
        assert!(RetrySchedule::parse(&just_enough).is_ok());
        for bad in [
            "5x",
            "5s,,5m",
            "5s,",
            "0s",
            "500us",
            "8days",
            "-5s",
            too_many.as_str(),
        ] {
            let err = RetrySchedule::parse(bad).unwrap_err();
            assert_eq!(err.field, "retry", "{bad}");
        }
        assert!(RetrySchedule::new(vec![Duration::ZERO]).is_err());
        assert!(RetrySchedule::new(vec![MAX_DELAY + Duration::from_nanos(1)]).is_err());
        assert!(RetrySchedule::new(vec![MIN_DELAY, MAX_DELAY]).is_ok());
    }

    #[test]
    fn jitter_maps_the_unit_interval_onto_the_band() {
        let delay = Duration::from_secs(100);
        assert_eq!(jittered(delay, JITTER, 0.0), Duration::from_secs(80));
        assert_eq!(jittered(delay, JITTER, 0.5), Duration::from_secs(100));
        assert_eq!(jittered(delay, JITTER, 0.75), Duration::from_secs(110));
        let near_top = jittered(delay, JITTER, 0.999_999);
        assert!(near_top < Duration::from_secs(120) && near_top > Duration::from_secs(119));
        assert_eq!(jittered(delay, 0.0, 0.9), delay);
    }

    #[test]
    fn jitter_never_panics_on_odd_inputs() {
        let delay = Duration::from_secs(10);
        assert_eq!(jittered(delay, -1.0, 0.5), delay);
        assert_eq!(jittered(delay, f64::NAN, 0.5), delay);
        assert_eq!(jittered(delay, 5.0, 0.0), Duration::ZERO);
        assert_eq!(jittered(delay, 0.5, f64::NAN), Duration::from_secs(5));
        assert_eq!(jittered(delay, 0.5, f64::INFINITY), Duration::from_secs(15));
        assert_eq!(jittered(Duration::MAX, 1.0, 1.0), Duration::MAX);
    }

    #[test]
    fn exponential_grows_by_the_factor_up_to_the_cap() {
        let backoff = Exponential::parse("base=1s, factor=3, cap=1m, attempts=6").unwrap();
        let schedule = backoff.schedule().unwrap();
        assert_eq!(schedule.max_attempts(), 6);
        assert_eq!(schedule.to_string(), "1s,3s,9s,27s,1m");
        assert_eq!(Exponential::parse(&backoff.to_string()), Ok(backoff));
        let once = Exponential::parse("attempts=1,cap=1s,factor=1,base=1s").unwrap();
        assert_eq!(once.schedule().unwrap().max_attempts(), 1);
        // The longest allowed schedule, with delays that would overflow without the cap.
        let long = Exponential::parse("base=1s,factor=10,cap=7days,attempts=51").unwrap();
        assert_eq!(long.schedule().unwrap().delays().last(), Some(&MAX_DELAY));
    }

    #[test]
    fn exponential_refusals() {
        for bad in [
            "",
            "base=1s,factor=2,cap=1h",
            "base=1s,factor=2,cap=1h,attempts=0",
            "base=1s,factor=2,cap=1h,attempts=52",
            "base=1s,factor=0.5,cap=1h,attempts=3",
            "base=1s,factor=11,cap=1h,attempts=3",
            "base=1s,factor=NaN,cap=1h,attempts=3",
            "base=1h,factor=2,cap=1s,attempts=3",
            "base=0s,factor=2,cap=1s,attempts=3",
            "base=1s,factor=2,cap=8days,attempts=3",
            "base=1s,factor=2,cap=1h,attempts=3,jitter=1",
            "base=soon,factor=2,cap=1h,attempts=3",
        ] {
            let err = Exponential::parse(bad).unwrap_err();
            assert_eq!(err.field, "retry", "{bad}");
        }
    }
}
