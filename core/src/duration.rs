//! Durations as people type them in flags and forms (`30s`, `10m`, `24h`, `7days`): one
//! parser, so every flag refuses a mistake with the same words and an example.

use std::time::Duration;

use crate::validate::quoted;

/// Parses a duration written with units (`1h 30m`, `90s`, `7days`); a refusal quotes the text
/// and gives examples.
pub fn parse(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| {
        format!(
            "{} is not a duration ({e}): write a number and a unit, such as 30s, 10m, 24h or 7days",
            quoted(text)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duration_has_a_unit_and_a_mistake_says_what_one_looks_like() {
        assert_eq!(parse("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("1h 30m"), Ok(Duration::from_secs(5400)));
        for bad in ["forever", "5x", "", "10"] {
            let err = parse(bad).unwrap_err();
            assert!(
                err.contains("is not a duration") && err.contains("such as 30s"),
                "{bad}: {err}"
            );
        }
    }
}
