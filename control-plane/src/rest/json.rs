//! How the HTTP API writes and reads times and durations: RFC 3339 times, durations as
//! `15s` / `1h 30m` text, attempt timings as milliseconds; a value that does not read is
//! `INVALID_ARGUMENT` naming its field.

use std::time::Duration;

use herald_core::validate::quoted;
use herald_proto::convert::{duration, std_duration, system_time, timestamp};

use super::problem::ApiError;

/// RFC 3339 text of a wire timestamp.
pub fn time(ts: Option<&prost_types::Timestamp>) -> Option<String> {
    ts.map(|ts| humantime::format_rfc3339_millis(system_time(ts)).to_string())
}

/// The wire timestamp of RFC 3339 `text` given for `field` ([`herald_core::time_text`]: `Z`
/// or an offset, 1970 to 9999); an empty text (`?since=`, as forms and query builders send a
/// field left blank) is none.
pub fn parse_time(
    field: &str,
    text: Option<&str>,
) -> Result<Option<prost_types::Timestamp>, ApiError> {
    text.filter(|text| !text.is_empty())
        .map(|text| {
            herald_core::time_text::parse(text)
                .map(timestamp)
                .map_err(|err| ApiError::invalid_field(field, format!("{} {err}", quoted(text))))
        })
        .transpose()
}

/// `15s`-style text of a wire duration.
pub fn duration_text(d: Option<&prost_types::Duration>) -> Option<String> {
    d.and_then(std_duration)
        .map(|d| humantime::format_duration(d).to_string())
}

/// The duration `text` (`15s`, `1h 30m`) given for `field`.
pub fn parse_duration(field: &str, text: &str) -> Result<Duration, ApiError> {
    herald_core::duration::parse(text).map_err(|reason| ApiError::invalid_field(field, reason))
}

/// The wire form of an optional duration given for `field`; an empty text is none.
pub fn wire_duration(
    field: &str,
    text: Option<&str>,
) -> Result<Option<prost_types::Duration>, ApiError> {
    text.filter(|text| !text.is_empty())
        .map(|text| parse_duration(field, text).map(duration))
        .transpose()
}

/// Milliseconds of a wire duration (attempt timings), 0 when unset.
pub fn millis(d: Option<&prost_types::Duration>) -> f64 {
    d.and_then(std_duration)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_durations_read_back() {
        let at = parse_time("since", Some("2026-01-02T03:04:05.678Z"))
            .expect("reads")
            .expect("given");
        assert_eq!(time(Some(&at)).as_deref(), Some("2026-01-02T03:04:05.678Z"));
        let err = parse_time("since", Some("yesterday")).expect_err("no time");
        assert!(
            err.status.message().starts_with("since: "),
            "{}",
            err.status.message()
        );
        assert_eq!(err.problem().field.as_deref(), Some("since"));
        let err = parse_duration("retry.delays", "soon").expect_err("no duration");
        assert_eq!(err.problem().field.as_deref(), Some("retry.delays"));
        let d = wire_duration("timeout", Some("1m 30s")).expect("reads");
        assert_eq!(duration_text(d.as_ref()).as_deref(), Some("1m 30s"));
        assert_eq!(millis(d.as_ref()), 90_000.0);
        assert!(parse_duration("grace", "soon").is_err());
        // A field left blank is a field not given.
        assert_eq!(parse_time("since", Some("")).expect("blank"), None);
        assert_eq!(wire_duration("timeout", Some("")).expect("blank"), None);
    }
}
