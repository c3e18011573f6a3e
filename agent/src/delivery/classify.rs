//! Turns the result of one HTTP attempt into what happens next. Pure: no I/O and no clock, so
//! every rule is unit-tested directly.
//!
//! - 2xx: delivered.
//! - 410 Gone: the receiver asks to stop; the delivery fails for good.
//! - 429 and 503 with `Retry-After` (seconds or an HTTP date): retry no sooner than asked,
//!   within [`MAX_RETRY_AFTER`].
//! - Any other status and any network error: retry on the subscription's schedule.
//! - 3xx: a failure (redirects are not followed), retried like the rest.
//! - A target the policy refuses (the SSRF guard): failed for good, not retried.
//! - When the schedule has no attempts left: failed.

use std::time::{Duration, SystemTime};

/// The longest `Retry-After` honoured; longer requests are capped to this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60 * 60);

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
    /// No usable response: the kind of error (`timeout`, `connect`, `tls`, `dns`, …).
    Error {
        /// The kind, for logs and the central log.
        kind: &'static str,
    },
}

/// What to do after an attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Done: the receiver accepted it.
    Delivered,
    /// Try again after at least this long (`None`: use the schedule's next delay).
    Retry(Option<Duration>),
    /// The endpoint is gone (410); stop.
    Gone,
    /// The target address is not allowed; stop.
    Refused,
}

/// Classifies an attempt's result. `now` is used to read `Retry-After` HTTP dates.
pub fn classify(result: &AttemptResult, now: SystemTime) -> Verdict {
    match result {
        AttemptResult::Status { code, .. } if (200..300).contains(code) => Verdict::Delivered,
        AttemptResult::Status { code: 410, .. } => Verdict::Gone,
        AttemptResult::Error {
            kind: super::attempt::POLICY,
        } => Verdict::Refused,
        AttemptResult::Status {
            code: 429 | 503,
            retry_after: Some(value),
        } => Verdict::Retry(retry_after(value, now)),
        AttemptResult::Status { .. } | AttemptResult::Error { .. } => Verdict::Retry(None),
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

    #[test]
    fn statuses_and_errors() {
        let now = SystemTime::now();
        assert_eq!(classify(&status(200), now), Verdict::Delivered);
        assert_eq!(classify(&status(204), now), Verdict::Delivered);
        assert_eq!(classify(&status(410), now), Verdict::Gone);
        for code in [301, 302, 400, 404, 408, 429, 500, 502, 503] {
            assert_eq!(classify(&status(code), now), Verdict::Retry(None), "{code}");
        }
        let err = AttemptResult::Error { kind: "timeout" };
        assert_eq!(classify(&err, now), Verdict::Retry(None));
        let refused = AttemptResult::Error { kind: "policy" };
        assert_eq!(classify(&refused, now), Verdict::Refused);
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = humantime::parse_rfc3339("1994-11-06T08:49:00Z").expect("time");
        let with = |code, value: &str| AttemptResult::Status {
            code,
            retry_after: Some(value.to_owned()),
        };
        assert_eq!(
            classify(&with(429, "7"), now),
            Verdict::Retry(Some(Duration::from_secs(7)))
        );
        assert_eq!(
            classify(&with(503, "Sun, 06 Nov 1994 08:49:37 GMT"), now),
            Verdict::Retry(Some(Duration::from_secs(37)))
        );
        assert_eq!(
            classify(&with(429, "999999"), now),
            Verdict::Retry(Some(MAX_RETRY_AFTER))
        );
        assert_eq!(classify(&with(429, "soon"), now), Verdict::Retry(None));
        // A 500's Retry-After is not honoured.
        assert_eq!(classify(&with(500, "7"), now), Verdict::Retry(None));
    }
}
