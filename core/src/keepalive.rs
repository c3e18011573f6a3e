//! HTTP/2 keepalive on the daemons' gRPC servers: each connection is pinged every interval,
//! and one whose peer does not answer within the same time is closed. A peer whose host
//! vanished (a power cut, a partition, a pod whose network namespace is gone) sends no FIN and
//! no RST; without pings its connection, and what it holds, would stay open for good.

use std::ops::RangeInclusive;
use std::time::Duration;

/// How often connections are pinged by default.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(20);

/// The range `--keepalive-interval` takes: pings more often than every second would be noise,
/// and a dead peer should not hold its connection for more than twice the longest.
pub const RANGE: RangeInclusive<Duration> = Duration::from_secs(1)..=Duration::from_secs(600);

/// Parses `--keepalive-interval` (`20s`, `2m`), within [`RANGE`].
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let interval = crate::duration::parse(text)?;
    if !RANGE.contains(&interval) {
        return Err(format!("{text:?} is not between 1s and 10m"));
    }
    Ok(interval)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_are_bounded() {
        assert_eq!(parse_interval("20s"), Ok(DEFAULT_INTERVAL));
        assert_eq!(parse_interval("10m"), Ok(Duration::from_secs(600)));
        assert!(parse_interval("500ms").is_err());
        assert!(parse_interval("11m").is_err());
        assert!(parse_interval("soon").is_err());
    }
}
