//! Times as people and scripts write them: RFC 3339 (`2026-01-02T15:04:05Z`, or with an offset
//! such as `+01:00`; without either, UTC), between 1970 and 9999, the times every store and the
//! API's timestamps hold. The CLI, the HTTP API and the console read them alike.

use std::time::SystemTime;

/// Why a time's text was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TimeTextError {
    /// Not RFC 3339.
    #[error("is not an RFC 3339 time (2026-01-02T15:04:05Z, or +01:00 for an offset)")]
    Unreadable,
    /// Written right, but before 1970 or past 9999.
    #[error("lies outside 1970-01-01 to 9999-12-31, the times Herald keeps")]
    OutOfRange,
}

/// The time `text` names.
pub fn parse(text: &str) -> Result<SystemTime, TimeTextError> {
    use time::format_description::well_known::Rfc3339;
    let read = |text: &str| time::OffsetDateTime::parse(text, &Rfc3339).ok();
    // Without an offset, UTC; a space may stand for the `T`.
    // A `+` in a URL's query reads as a space: `…T23:00:00 01:00` is `…T23:00:00+01:00`.
    let text = match text.rsplit_once(' ') {
        Some((time, offset))
            if time.len() >= 19
                && offset.len() == 5
                && offset.as_bytes()[2] == b':'
                && offset.bytes().filter(u8::is_ascii_digit).count() == 4 =>
        {
            format!("{time}+{offset}")
        }
        _ => text.to_owned(),
    };
    let text = match text.split_at_checked(10) {
        Some((date, rest)) if rest.starts_with(' ') => format!("{date}T{}", &rest[1..]),
        _ => text.to_owned(),
    };
    let time: SystemTime = read(&text)
        .or_else(|| read(&format!("{text}Z")))
        .ok_or(TimeTextError::Unreadable)?
        .into();
    // 9999-12-31T23:59:59.999999999Z, the last instant RFC 3339's four-digit years reach.
    let last = SystemTime::UNIX_EPOCH + std::time::Duration::new(253_402_300_799, 999_999_999);
    if time < SystemTime::UNIX_EPOCH || time > last {
        return Err(TimeTextError::OutOfRange);
    }
    Ok(time)
}

/// A duration (`1h`: that long before `now`, at the earliest 1970) or a time as [`parse`]
/// reads it: how the CLI's and the console's `since` and `until` are written.
pub fn ago_or_time(text: &str, now: SystemTime) -> Result<SystemTime, TimeTextError> {
    match humantime::parse_duration(text) {
        Ok(ago) => Ok(now
            .checked_sub(ago)
            .map_or(SystemTime::UNIX_EPOCH, |t| t.max(SystemTime::UNIX_EPOCH))),
        Err(_) => parse(text),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn times_read_with_z_an_offset_or_neither_within_1970_to_9999() {
        let at = |secs: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        for (text, expected) in [
            ("2026-12-07T23:00:00Z", at(1_796_684_400)),
            ("2026-12-07T23:00:00+01:00", at(1_796_680_800)),
            ("2026-12-07T23:00:00-00:30", at(1_796_686_200)),
            ("2026-12-07T23:00:00", at(1_796_684_400)),
            ("2026-12-07 23:00:00", at(1_796_684_400)),
            ("2026-12-07 23:00:00+01:00", at(1_796_680_800)),
            ("2026-12-07T23:00:00 01:00", at(1_796_680_800)),
            ("2026-12-07 23:00:00 01:00", at(1_796_680_800)),
            (
                "2026-12-07T23:00:00.250Z",
                at(1_796_684_400) + Duration::from_millis(250),
            ),
            ("1970-01-01T00:00:00Z", at(0)),
            ("1970-01-01T01:00:00+01:00", at(0)),
        ] {
            assert_eq!(parse(text), Ok(expected), "{text}");
        }
        for out in [
            "0001-01-01T00:00:00Z",
            "1969-12-31T23:59:59Z",
            "1970-01-01T00:59:59+01:00",
        ] {
            assert_eq!(parse(out), Err(TimeTextError::OutOfRange), "{out}");
        }
        let now = at(1_796_684_400);
        assert_eq!(ago_or_time("1h", now), Ok(at(1_796_680_800)));
        assert_eq!(ago_or_time("100years", now), Ok(at(0)));
        assert_eq!(ago_or_time("1970-01-01T00:00:00Z", now), Ok(at(0)));
        for bad in [
            "yesterday",
            "2026-13-01T00:00:00Z",
            "",
            "2026-12-07T23:00:00+1",
        ] {
            assert_eq!(parse(bad), Err(TimeTextError::Unreadable), "{bad}");
        }
    }
}
