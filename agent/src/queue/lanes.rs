//! The in-memory index over the queue's lanes (one lane per subscription), so the scheduler
//! finds work without scanning backlogs it cannot take from.
//!
//! Invariant: every lane holding a task that is not taken has a hint at or before the due time
//! of its earliest such task. Hints may be early (the task was taken or finished since); a
//! visit corrects them. They are lowered only after the commit that added a task, and a
//! reader opens its snapshot while holding the index's lock, so it never sees a hint (or a
//! finished task) that is newer than its snapshot.

use std::collections::{BTreeSet, HashMap, HashSet};

/// Lane hints, taken tasks and per-lane counts.
#[derive(Debug, Default)]
pub(super) struct Lanes {
    /// (due, subscription) for each lane that may have an untaken task.
    hints: BTreeSet<(u64, String)>,
    /// The hint of each lane in `hints`.
    hint_of: HashMap<String, u64>,
    /// Sequence numbers of tasks handed out and not yet completed: never handed out twice.
    taken: HashSet<u64>,
    /// Taken tasks per lane, for the per-subscription in-flight limit.
    in_flight: HashMap<String, usize>,
}

impl Lanes {
    /// A task due at `due` was committed to `lane`.
    pub(super) fn added(&mut self, lane: &str, due: u64) {
        match self.hint_of.get(lane) {
            Some(&hint) if hint <= due => {}
            _ => self.set_hint(lane, Some(due)),
        }
    }

    /// Sets (or, with `None`, clears) a lane's hint.
    pub(super) fn set_hint(&mut self, lane: &str, due: Option<u64>) {
        if let Some(old) = self.hint_of.remove(lane) {
            self.hints.remove(&(old, lane.to_owned()));
        }
        if let Some(due) = due {
            self.hint_of.insert(lane.to_owned(), due);
            self.hints.insert((due, lane.to_owned()));
        }
    }

    /// Lanes with a hint due at `now` or earlier, earliest first.
    pub(super) fn due_lanes(&self, now: u64) -> Vec<String> {
        self.hints
            .iter()
            .take_while(|(due, _)| *due <= now)
            .map(|(_, lane)| lane.clone())
            .collect()
    }

    /// The earliest hint of a lane with room, given its tasks in flight.
    pub(super) fn next_due(&self, room: impl Fn(&str, usize) -> usize) -> Option<u64> {
        self.hints
            .iter()
            .find(|(_, lane)| room(lane, self.in_flight(lane)) > 0)
            .map(|(due, _)| *due)
    }

    /// Whether the task `seq` is taken.
    pub(super) fn is_taken(&self, seq: u64) -> bool {
        self.taken.contains(&seq)
    }

    /// Tasks of `lane` taken now.
    pub(super) fn in_flight(&self, lane: &str) -> usize {
        self.in_flight.get(lane).copied().unwrap_or(0)
    }

    /// Marks a task taken.
    pub(super) fn take(&mut self, lane: &str, seq: u64) {
        if self.taken.insert(seq) {
            *self.in_flight.entry(lane.to_owned()).or_default() += 1;
        }
    }

    /// Marks a taken task finished (its outcome committed, or the commit failed).
    pub(super) fn finish(&mut self, lane: &str, seq: u64) {
        if self.taken.remove(&seq)
            && let Some(count) = self.in_flight.get_mut(lane)
        {
            *count -= 1;
            if *count == 0 {
                self.in_flight.remove(lane);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_order_lanes_and_respect_limits() {
        let mut lanes = Lanes::default();
        lanes.added("b", 20);
        lanes.added("a", 10);
        lanes.added("a", 30);
        assert_eq!(lanes.due_lanes(25), ["a", "b"]);
        assert_eq!(lanes.due_lanes(15), ["a"]);
        lanes.take("a", 1);
        assert_eq!(
            lanes.next_due(|_, n| 1_usize.saturating_sub(n)),
            Some(20),
            "a is at its limit"
        );
        assert_eq!(lanes.next_due(|_, n| 2_usize.saturating_sub(n)), Some(10));
        lanes.finish("a", 1);
        lanes.finish("a", 1);
        assert_eq!(lanes.in_flight("a"), 0, "finishing twice counts once");
        lanes.set_hint("a", None);
        assert_eq!(lanes.due_lanes(100), ["b"]);
    }
}
