//! An endpoint's health over time, drawn on the server as SVG (no script): the success rate
//! and the median latency of its attempts per hour over the last day, from its newest
//! attempts in the delivery log.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use herald_proto::convert::{std_duration, system_time};
use herald_proto::v1 as pb;

/// The newest attempts an endpoint's page reads: for the chart, and the first of them for its
/// list of recent attempts.
pub const CHART_ATTEMPTS: u32 = 1000;
/// Recent attempts an endpoint's page lists.
pub const RECENT_ROWS: usize = 20;
/// Hours the chart covers.
pub const HOURS: usize = 24;
/// The drawing's size, in SVG units.
const WIDTH: f64 = 480.0;
const HEIGHT: f64 = 140.0;

/// One hour of attempts.
pub struct Hour {
    /// `HH:00`, UTC.
    pub label: String,
    /// Attempts that started in the hour.
    pub attempts: usize,
    /// Delivered among them, as `97.5%` (`—` without attempts).
    pub success: String,
    /// Their median duration, as `12 ms` (`—` without attempts).
    pub median: String,
}

/// The chart: the lines to draw and the same numbers as a table.
pub struct Chart {
    /// `x,y` points of the success-rate line (0–100 %, top is 100 %).
    pub rate_points: String,
    /// `x,y` points of the latency line (0 to `max_latency`).
    pub latency_points: String,
    /// The latency at the top of the drawing, for its label.
    pub max_latency: String,
    /// The hours, oldest first.
    pub hours: Vec<Hour>,
    /// Whether any hour had attempts.
    pub any: bool,
}

/// The chart of `attempts` (any order) for the day before `now`.
pub fn chart(attempts: &[pb::Attempt], now: SystemTime) -> Chart {
    let hour = Duration::from_secs(3600);
    let start = now - hour * HOURS as u32;
    let mut buckets: Vec<(usize, usize, Vec<Duration>)> = vec![(0, 0, Vec::new()); HOURS];
    // Test-sends count toward no health, so not toward its chart either.
    for attempt in attempts.iter().filter(|a| !a.test) {
        let Some(at) = attempt.started_at.as_ref().map(system_time) else {
            continue;
        };
        let Ok(offset) = at.duration_since(start) else {
            continue;
        };
        let index = (offset.as_secs() / 3600) as usize;
        let Some(bucket) = buckets.get_mut(index) else {
            continue;
        };
        bucket.0 += 1;
        if attempt.outcome() == pb::Outcome::Delivered {
            bucket.1 += 1;
        }
        if let Some(d) = attempt.duration.as_ref().and_then(std_duration) {
            bucket.2.push(d);
        }
    }
    let medians: Vec<Option<Duration>> = buckets
        .iter_mut()
        .map(|(_, _, durations)| {
            durations.sort();
            durations.get(durations.len() / 2).copied()
        })
        .collect();
    let max = medians
        .iter()
        .flatten()
        .max()
        .copied()
        .unwrap_or(Duration::from_millis(1))
        .max(Duration::from_millis(1));
    let x = |i: usize| i as f64 * WIDTH / (HOURS - 1) as f64;
    let mut rate_points = String::new();
    let mut latency_points = String::new();
    let mut hours = Vec::with_capacity(HOURS);
    for (i, ((attempts, delivered, _), median)) in buckets.iter().zip(&medians).enumerate() {
        let label = humantime::format_rfc3339_seconds(start + hour * (i as u32 + 1))
            .to_string()
            .get(11..13)
            .map_or_else(String::new, |h| format!("{h}:00"));
        if *attempts > 0 {
            let rate = *delivered as f64 / *attempts as f64;
            let _ = write!(rate_points, "{:.1},{:.1} ", x(i), HEIGHT * (1.0 - rate));
        }
        if let Some(median) = median {
            let y = HEIGHT * (1.0 - median.as_secs_f64() / max.as_secs_f64());
            let _ = write!(latency_points, "{:.1},{:.1} ", x(i), y);
        }
        hours.push(Hour {
            label,
            attempts: *attempts,
            success: if *attempts == 0 {
                "—".into()
            } else {
                format!("{:.1}%", *delivered as f64 * 100.0 / *attempts as f64)
            },
            median: median.map_or_else(
                || "—".into(),
                |m| format!("{:.0} ms", m.as_secs_f64() * 1000.0),
            ),
        });
    }
    Chart {
        any: hours.iter().any(|h| h.attempts > 0),
        rate_points: rate_points.trim_end().to_owned(),
        latency_points: latency_points.trim_end().to_owned(),
        max_latency: format!("{:.0} ms", max.as_secs_f64() * 1000.0),
        hours,
    }
}

#[cfg(test)]
mod tests {
    use herald_proto::convert::{duration, timestamp};

    use super::*;

    fn attempt(ago_minutes: u64, outcome: pb::Outcome, ms: u64, now: SystemTime) -> pb::Attempt {
        pb::Attempt {
            started_at: Some(timestamp(now - Duration::from_secs(ago_minutes * 60))),
            outcome: outcome as i32,
            duration: Some(duration(Duration::from_millis(ms))),
            ..Default::default()
        }
    }

    #[test]
    fn hours_hold_their_attempts_rate_and_median() {
        let now = SystemTime::now();
        let attempts = [
            attempt(10, pb::Outcome::Delivered, 10, now),
            attempt(20, pb::Outcome::Retrying, 30, now),
            attempt(30, pb::Outcome::Delivered, 20, now),
            attempt(5 * 60 + 5, pb::Outcome::Failed, 100, now),
            attempt(25 * 60, pb::Outcome::Delivered, 5, now),
        ];
        let chart = chart(&attempts, now);
        let last = &chart.hours[HOURS - 1];
        assert_eq!(last.attempts, 3);
        assert_eq!(last.success, "66.7%");
        assert_eq!(last.median, "20 ms");
        let earlier = &chart.hours[HOURS - 6];
        assert_eq!((earlier.attempts, earlier.success.as_str()), (1, "0.0%"));
        assert_eq!(
            chart.hours.iter().map(|h| h.attempts).sum::<usize>(),
            4,
            "older left out"
        );
        assert_eq!(chart.max_latency, "100 ms");
        assert_eq!(chart.rate_points.split(' ').count(), 2);
        assert!(chart.any);
        assert!(!super::chart(&[], now).any);
    }
}
