//! The in-memory index over the queue's lanes (one lane per subscription), so the scheduler
//! finds work without scanning backlogs it cannot take from.
//!
//! Invariant: every lane holding a task that is not taken has a hint at or before the due time
//! of its earliest such task. Hints may be early (the task was taken or finished since); a
//! visit corrects them. They are lowered only after the commit that added a task, and a
//! reader opens its snapshot while holding the index's lock, so it never sees a hint (or a
//! finished task) that is newer than its snapshot.

use std::collections::{BTreeSet, HashMap};

/// Lane hints, taken tasks and per-lane counts.
#[derive(Debug, Default)]
pub(super) struct Lanes {
    /// (due, subscription) for each lane that may have an untaken task.
    hints: BTreeSet<(u64, String)>,
    /// The hint of each lane in `hints`.
    hint_of: HashMap<String, u64>,
    /// Sequence numbers of tasks handed out and not yet finished (never handed out twice),
    /// each with whether its attempt is still under way.
    taken: HashMap<u64, bool>,
    /// Taken tasks per lane.
    taken_in: HashMap<String, usize>,
    /// Attempts under way per lane, for the per-subscription in-flight limit: a task whose
    /// attempt has ended stays taken until its outcome is committed, but no longer counts.
    in_flight: HashMap<String, usize>,
    /// For lanes with tasks taken: the key (due, seq) a visit starts from, every task of the
    /// lane before it being taken. A wide lane's visit then skips its tasks in flight without
    /// reading them.
    scan_from: HashMap<String, (u64, u64)>,
}

impl Lanes {
    /// A task with key (`due`, `seq`) was committed to `lane`, or handed back to it.
    pub(super) fn added(&mut self, lane: &str, due: u64, seq: u64) {
        if self
            .scan_from
            .get(lane)
            .is_some_and(|&from| (due, seq) < from)
        {
            self.scan_from.remove(lane);
        }
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

    /// Up to `max` lanes with a hint due at `now` or earlier, earliest first, starting after
    /// the hint `after` (a visit's cursor: a scheduler wanting a few tasks reads a few lanes,
    /// not every due lane of a wide fan-out).
    pub(super) fn due_lanes(
        &self,
        now: u64,
        after: Option<&(u64, String)>,
        max: usize,
    ) -> Vec<(u64, String)> {
        use std::ops::Bound;
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.hints
            .range((from, Bound::Unbounded))
            .take_while(|(due, _)| *due <= now)
            .take(max)
            .cloned()
            .collect()
    }

    /// Whether the task `seq` is taken.
    pub(super) fn is_taken(&self, seq: u64) -> bool {
        self.taken.contains_key(&seq)
    }

    /// Attempts of `lane` under way now.
    pub(super) fn in_flight(&self, lane: &str) -> usize {
        self.in_flight.get(lane).copied().unwrap_or(0)
    }

    /// Where a visit of `lane` starts (see `scan_from`).
    pub(super) fn scan_from(&self, lane: &str) -> (u64, u64) {
        self.scan_from.get(lane).copied().unwrap_or((0, 0))
    }

    /// A visit of `lane` found every task before `key` taken.
    pub(super) fn set_scan_from(&mut self, lane: &str, key: (u64, u64)) {
        if self.taken_in.contains_key(lane) {
            self.scan_from.insert(lane.to_owned(), key);
        }
    }

    /// Marks a task taken, its attempt under way.
    pub(super) fn take(&mut self, lane: &str, seq: u64) {
        if self.taken.insert(seq, true).is_none() {
            *self.taken_in.entry(lane.to_owned()).or_default() += 1;
            *self.in_flight.entry(lane.to_owned()).or_default() += 1;
        }
    }

    /// The attempt of a taken task has ended: it leaves the lane's attempts in flight, and
    /// stays taken until [`Lanes::finish`].
    pub(super) fn attempted(&mut self, lane: &str, seq: u64) {
        if let Some(under_way) = self.taken.get_mut(&seq)
            && *under_way
        {
            *under_way = false;
            decrement(&mut self.in_flight, lane);
        }
    }

    /// Marks a taken task finished (its outcome committed, or the commit failed).
    pub(super) fn finish(&mut self, lane: &str, seq: u64) {
        let Some(under_way) = self.taken.remove(&seq) else {
            return;
        };
        if under_way {
            decrement(&mut self.in_flight, lane);
        }
        if decrement(&mut self.taken_in, lane) {
            self.scan_from.remove(lane);
        }
    }
}

/// Counts one less for `lane`, forgetting it at zero; whether it reached zero.
fn decrement(counts: &mut HashMap<String, usize>, lane: &str) -> bool {
    let Some(count) = counts.get_mut(lane) else {
        return false;
    };
    *count -= 1;
    if *count == 0 {
        counts.remove(lane);
        return true;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_order_lanes_and_respect_limits() {
        let mut lanes = Lanes::default();
        lanes.added("b", 20, 1);
        lanes.added("a", 10, 2);
        lanes.added("a", 30, 3);
        let names = |due: Vec<(u64, String)>| due.into_iter().map(|(_, l)| l).collect::<Vec<_>>();
        assert_eq!(names(lanes.due_lanes(25, None, 10)), ["a", "b"]);
        assert_eq!(names(lanes.due_lanes(15, None, 10)), ["a"]);
        assert_eq!(names(lanes.due_lanes(25, None, 1)), ["a"]);
        assert_eq!(
            names(lanes.due_lanes(25, Some(&(10, "a".into())), 10)),
            ["b"],
            "after a cursor"
        );
        lanes.take("a", 2);
        assert_eq!(lanes.in_flight("a"), 1);
        lanes.attempted("a", 2);
        assert_eq!(lanes.in_flight("a"), 0, "the attempt has ended");
        assert!(lanes.is_taken(2), "taken until its outcome is committed");
        lanes.attempted("a", 2);
        lanes.finish("a", 2);
        lanes.finish("a", 2);
        assert_eq!(
            lanes.in_flight("a"),
            0,
            "ending and finishing twice count once"
        );
        assert!(!lanes.is_taken(2));
        lanes.take("a", 2);
        lanes.finish("a", 2);
        assert_eq!(
            lanes.in_flight("a"),
            0,
            "finishing an attempt under way ends it"
        );
        lanes.set_hint("a", None);
        assert_eq!(names(lanes.due_lanes(100, None, 10)), ["b"]);
    }

    #[test]
    fn a_visit_skips_taken_tasks_until_an_earlier_one_comes_back() {
        let mut lanes = Lanes::default();
        lanes.set_scan_from("a", (10, 5));
        assert_eq!(
            lanes.scan_from("a"),
            (0, 0),
            "nothing taken: nothing to skip"
        );
        lanes.take("a", 4);
        lanes.set_scan_from("a", (10, 5));
        lanes.added("a", 10, 7);
        assert_eq!(
            lanes.scan_from("a"),
            (10, 5),
            "a later task keeps the start"
        );
        lanes.added("a", 10, 3);
        assert_eq!(
            lanes.scan_from("a"),
            (0, 0),
            "an earlier task is seen again"
        );
        lanes.set_scan_from("a", (10, 5));
        lanes.finish("a", 4);
        assert_eq!(lanes.scan_from("a"), (0, 0), "no task taken: forgotten");
    }
}
