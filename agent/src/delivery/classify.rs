//! Turns the result of one HTTP attempt into its [`Outcome`]: the one value that says what
//! an attempt came to, from here into the queue's next step and the attempt's report. Pure:
//! no I/O and no clock, so every rule is unit-tested directly.
//!
//! - 2xx: delivered.
//! - 410 Gone: the receiver asks to stop; the delivery fails for good.
//! - 429 and 503 with `Retry-After` (seconds or an HTTP date): retry no sooner than asked,
//!   within [`MAX_RETRY_AFTER`].
//! - Any other status and any network error: retry on the subscription's schedule.
//! - 3xx: a failure (redirects are not followed), retried like the rest.
//! - A target the policy refuses (the SSRF guard): failed for good, not retried.
//! - When the schedule has no attempts left: exhausted.

use std::time::{Duration, SystemTime};

use herald_proto::v1 as pb;

use crate::queue::{Next, to_ms};

/// The longest `Retry-After` honoured; longer requests are capped to this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60 * 60);

pub use herald_core::error_kind::ErrorKind;

/// What one attempt produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttemptResult {
    /// The receiver answered with this status.
    Status {
        /// The HTTP status code.
        code: u16,
        /// The `Retry-After` header, when present.
        retry_after: Option<String>,
    },
    /// No usable response.
    Error {
        /// Why.
        kind: ErrorKind,
    },
}

impl AttemptResult {
    /// The error kind the log shows for this result, if any.
    pub fn error_kind(&self) -> Option<ErrorKind> {
        match self {
            AttemptResult::Status { code, .. } if (200..300).contains(code) => None,
            AttemptResult::Status { .. } => Some(ErrorKind::HttpStatus),
            AttemptResult::Error { kind } => Some(*kind),
        }
    }
}

/// What an attempt came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The receiver accepted it: done.
    Delivered,
    /// It failed and is tried again at this time (a parked delivery waits the same way).
    RetryAt(SystemTime),
    /// The receiver answered 410 Gone: failed for good.
    Gone,
    /// The delivery is not allowed (target policy, tenant check): failed for good.
    Refused,
    /// It failed and the schedule has no attempts left: failed for good.
    Exhausted,
    /// No attempt was made and none will be (the subscription is gone, say).
    Skipped,
    /// Not attempted: the subscription is disabled. The delivery waits, due again at this
    /// time, until it is enabled.
    Parked(SystemTime),
}

/// As logs say it: `retry at 2026-12-07T05:01:02.345Z`, `gone`, …
impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Delivered => f.write_str("delivered"),
            Outcome::RetryAt(at) => {
                write!(f, "retry at {}", humantime::format_rfc3339_millis(*at))
            }
            Outcome::Gone => f.write_str("gone"),
            Outcome::Refused => f.write_str("refused"),
            Outcome::Exhausted => f.write_str("exhausted"),
            Outcome::Skipped => f.write_str("skipped"),
            Outcome::Parked(at) => {
                write!(f, "parked until {}", humantime::format_rfc3339_millis(*at))
            }
        }
    }
}

impl Outcome {
    /// The queue's next step for the delivery.
    pub fn next(self) -> Next {
        match self {
            Outcome::RetryAt(at) | Outcome::Parked(at) => Next::RetryAt(to_ms(at)),
            Outcome::Delivered
            | Outcome::Gone
            | Outcome::Refused
            | Outcome::Exhausted
            | Outcome::Skipped => Next::Done,
        }
    }

    /// The outcome the attempt's report carries.
    pub fn reported(self) -> pb::Outcome {
        match self {
            Outcome::Delivered => pb::Outcome::Delivered,
            Outcome::RetryAt(_) => pb::Outcome::Retrying,
            Outcome::Gone | Outcome::Refused | Outcome::Exhausted => pb::Outcome::Failed,
            Outcome::Skipped | Outcome::Parked(_) => pb::Outcome::Skipped,
        }
    }

    /// When the next attempt is due, if there is one.
    pub fn next_attempt_at(self) -> Option<SystemTime> {
        match self {
            Outcome::RetryAt(at) => Some(at),
            _ => None,
        }
    }

    /// Whether the endpoint answered in a way its circuit breaker counts: a success, or a
    /// failure that may be retried (a 410 or a refused target says nothing of its health).
    pub fn counts_for_breaker(self) -> Option<bool> {
        match self {
            Outcome::Delivered => Some(true),
            Outcome::RetryAt(_) | Outcome::Exhausted => Some(false),
            Outcome::Gone | Outcome::Refused | Outcome::Skipped | Outcome::Parked(_) => None,
        }
    }
}

/// Classifies an attempt's result at `now`. `scheduled` is the subscription's next retry
/// delay, `None` when its schedule has no attempts left; a `Retry-After` can only lengthen it.
pub fn classify(result: &AttemptResult, now: SystemTime, scheduled: Option<Duration>) -> Outcome {
    let retry = |asked: Option<Duration>| match scheduled {
        Some(delay) => Outcome::RetryAt(now + asked.map_or(delay, |asked| delay.max(asked))),
        None => Outcome::Exhausted,
    };
    match result {
        AttemptResult::Status { code, .. } if (200..300).contains(code) => Outcome::Delivered,
        AttemptResult::Status { code: 410, .. } => Outcome::Gone,
        AttemptResult::Error {
            kind: ErrorKind::Policy,
        } => Outcome::Refused,
        AttemptResult::Status {
            code: 429 | 503,
            retry_after: Some(value),
        } => retry(retry_after(value, now)),
        AttemptResult::Status { .. } | AttemptResult::Error { .. } => retry(None),
    }
}

/// Reads a `Retry-After` value: delay-seconds or an HTTP date, capped at [`MAX_RETRY_AFTER`].
pub fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let delay = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_rfc3339_weak(value)
            .ok()
            .or_else(|| httpdate(value))?
            .duration_since(now)
            .unwrap_or_default(),
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

/// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the form HTTP dates take.
fn httpdate(value: &str) -> Option<SystemTime> {
    let rest = value.split_once(", ")?.1;
    let parts: Vec<&str> = rest.split(' ').collect();
    let [day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| m == month)?
        + 1;
    let text = format!("{year}-{month:02}-{day:0>2}T{time}Z");
    humantime::parse_rfc3339(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> AttemptResult {
        AttemptResult::Status {
            code,
            retry_after: None,
        }
    }

    const SCHEDULED: Duration = Duration::from_secs(30);

    #[test]
    fn outcomes_read_plainly_in_logs() {
        let at = std::time::UNIX_EPOCH + Duration::from_millis(1_796_000_000_123);
        assert_eq!(
            Outcome::RetryAt(at).to_string(),
            "retry at 2026-11-30T00:53:20.123Z"
        );
        assert_eq!(
            Outcome::Parked(at).to_string(),
            "parked until 2026-11-30T00:53:20.123Z"
        );
        assert_eq!(Outcome::Gone.to_string(), "gone");
    }

    #[test]
    fn statuses_and_errors() {
        let now = SystemTime::now();
        let later = Outcome::RetryAt(now + SCHEDULED);
        let classify = |result: &AttemptResult| classify(result, now, Some(SCHEDULED));
        assert_eq!(classify(&status(200)), Outcome::Delivered);
        assert_eq!(classify(&status(204)), Outcome::Delivered);
        assert_eq!(classify(&status(410)), Outcome::Gone);
        for code in [301, 302, 400, 404, 408, 429, 500, 502, 503] {
            assert_eq!(classify(&status(code)), later, "{code}");
        }
        let timeout = AttemptResult::Error {
            kind: ErrorKind::Timeout,
        };
        assert_eq!(classify(&timeout), later);
        let refused = AttemptResult::Error {
            kind: ErrorKind::Policy,
        };
        assert_eq!(classify(&refused), Outcome::Refused);
    }

    #[test]
    fn a_failure_with_no_attempts_left_is_exhausted_and_a_success_is_not() {
        let now = SystemTime::now();
        assert_eq!(classify(&status(500), now, None), Outcome::Exhausted);
        assert_eq!(classify(&status(200), now, None), Outcome::Delivered);
        assert_eq!(classify(&status(410), now, None), Outcome::Gone);
    }

    #[test]
    fn each_outcome_has_one_next_step_and_one_reported_outcome() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(5);
        let cases = [
            (Outcome::Delivered, Next::Done, pb::Outcome::Delivered),
            (
                Outcome::RetryAt(at),
                Next::RetryAt(5_000),
                pb::Outcome::Retrying,
            ),
            (Outcome::Gone, Next::Done, pb::Outcome::Failed),
            (Outcome::Refused, Next::Done, pb::Outcome::Failed),
            (Outcome::Exhausted, Next::Done, pb::Outcome::Failed),
            (Outcome::Skipped, Next::Done, pb::Outcome::Skipped),
            (
                Outcome::Parked(at),
                Next::RetryAt(5_000),
                pb::Outcome::Skipped,
            ),
        ];
        for (outcome, next, reported) in cases {
            assert_eq!(outcome.next(), next, "{outcome:?}");
            assert_eq!(outcome.reported(), reported, "{outcome:?}");
        }
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = humantime::parse_rfc3339("1994-11-06T08:49:00Z").expect("time");
        let with = |code, value: &str| AttemptResult::Status {
            code,
            retry_after: Some(value.to_owned()),
        };
        let short = Some(Duration::from_secs(1));
        let at = |secs| Outcome::RetryAt(now + Duration::from_secs(secs));
        assert_eq!(classify(&with(429, "7"), now, short), at(7));
        assert_eq!(
            classify(&with(503, "Sun, 06 Nov 1994 08:49:37 GMT"), now, short),
            at(37)
        );
        assert_eq!(
            classify(&with(429, "999999"), now, short),
            Outcome::RetryAt(now + MAX_RETRY_AFTER)
        );
        assert_eq!(classify(&with(429, "soon"), now, short), at(1));
        // A 500's Retry-After is not honoured; a schedule's longer delay wins.
        assert_eq!(classify(&with(500, "7"), now, short), at(1));
        assert_eq!(classify(&with(429, "7"), now, Some(SCHEDULED)), at(30));
    }
}
