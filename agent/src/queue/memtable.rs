//! Tasks and reports added since the last checkpoint, held in memory instead of in the
//! queue file.
//!
//! Most tasks live for milliseconds (accepted, attempted once, delivered) and most reports
//! until the control plane's next ack. Writing each of them into the file's B-trees and
//! taking it out again moments later was most of the writer's work. So a commit that is not
//! a checkpoint writes new tasks and reports to the write-ahead log only (as it does every
//! change) and adds them here; the next checkpoint writes the ones still here into the file,
//! in its durable commit, and empties this table. A task added and finished between two
//! checkpoints never touches the file. Removing a task or report the file holds (one that
//! was pending at a checkpoint) is a change to the file, as any other.
//!
//! Readers see the file's entries and this table's together. A reader takes this table's
//! lock before it opens its snapshot of the file, and the writer empties the table only after
//! the checkpoint's commit, so a reader never misses an entry: at worst it finds one both here
//! and in the file, with the same value, and takes it once.
//!
//! Nothing here needs saving at a crash: the log holds every change since the checkpoint, and
//! recovery replays it into the file.

use std::collections::{BTreeMap, HashMap};
use std::iter::Peekable;

/// A task's place in its lane: (due ms, seq).
pub(super) type Slot = (u64, u64);

/// A change to this table made by a commit, applied once the commit is done (or written to
/// the file, when the commit is a checkpoint).
#[derive(Debug)]
pub(super) enum Change {
    /// A task added.
    PutTask {
        lane: String,
        slot: Slot,
        value: Vec<u8>,
    },
    /// A task of this table finished or moved.
    RemoveTask { lane: String, slot: Slot },
    /// A report added.
    PutReport { seq: u64, value: Vec<u8> },
    /// Reports `first..=last` acknowledged.
    RemoveReports { first: u64, last: u64 },
}

/// The tasks and reports added since the last checkpoint and not yet removed.
#[derive(Debug, Default)]
pub(super) struct Memtable {
    /// Tasks by lane, in lane order.
    tasks: HashMap<String, BTreeMap<Slot, Vec<u8>>>,
    /// How many tasks `tasks` holds.
    task_count: u64,
    /// Reports by sequence number.
    reports: BTreeMap<u64, Vec<u8>>,
}

impl Memtable {
    /// Applies a committed change.
    pub(super) fn apply(&mut self, change: Change) {
        match change {
            Change::PutTask { lane, slot, value } => {
                if self
                    .tasks
                    .entry(lane)
                    .or_default()
                    .insert(slot, value)
                    .is_none()
                {
                    self.task_count += 1;
                }
            }
            Change::RemoveTask { lane, slot } => {
                if let Some(entries) = self.tasks.get_mut(&lane) {
                    if entries.remove(&slot).is_some() {
                        self.task_count -= 1;
                    }
                    if entries.is_empty() {
                        self.tasks.remove(&lane);
                    }
                }
            }
            Change::PutReport { seq, value } => {
                self.reports.insert(seq, value);
            }
            Change::RemoveReports { first, last } if first <= last => {
                let acked: Vec<u64> = self.reports.range(first..=last).map(|(s, _)| *s).collect();
                for seq in acked {
                    self.reports.remove(&seq);
                }
            }
            Change::RemoveReports { .. } => {}
        }
    }

    /// Whether this table holds the task.
    pub(super) fn has_task(&self, lane: &str, slot: Slot) -> bool {
        self.tasks
            .get(lane)
            .is_some_and(|entries| entries.contains_key(&slot))
    }

    /// Empties the table (its content is in the file now).
    pub(super) fn clear(&mut self) {
        *self = Memtable::default();
    }

    /// Every task, for writing into the file.
    pub(super) fn task_entries(&self) -> impl Iterator<Item = (&str, Slot, &[u8])> {
        self.tasks.iter().flat_map(|(lane, entries)| {
            entries
                .iter()
                .map(move |(slot, value)| (lane.as_str(), *slot, value.as_slice()))
        })
    }

    /// Every report, for writing into the file.
    pub(super) fn report_entries(&self) -> impl Iterator<Item = (u64, &[u8])> {
        self.reports
            .iter()
            .map(|(seq, value)| (*seq, value.as_slice()))
    }

    /// A lane's tasks from `from` on, in order.
    pub(super) fn lane_from(&self, lane: &str, from: Slot) -> impl Iterator<Item = (Slot, &[u8])> {
        self.tasks
            .get(lane)
            .into_iter()
            .flat_map(move |entries| entries.range(from..))
            .map(|(slot, value)| (*slot, value.as_slice()))
    }

    /// Lanes holding tasks here.
    pub(super) fn lanes(&self) -> impl Iterator<Item = &str> {
        self.tasks.keys().map(String::as_str)
    }

    /// Reports with sequence numbers in `first..=last`, in order.
    pub(super) fn reports_in(&self, first: u64, last: u64) -> impl Iterator<Item = (u64, &[u8])> {
        self.reports
            .range(first..=last)
            .map(|(seq, value)| (*seq, value.as_slice()))
    }

    /// How many tasks this table holds.
    pub(super) fn task_count(&self) -> u64 {
        self.task_count
    }

    /// How many reports this table holds.
    pub(super) fn report_count(&self) -> u64 {
        self.reports.len() as u64
    }
}

/// A value read through the overlay: from the file, or from the memtable.
pub(super) enum Value<'m, F> {
    File(F),
    Memory(&'m [u8]),
}

impl<F: FileValue> Value<'_, F> {
    /// The stored bytes.
    pub(super) fn bytes(&self) -> &[u8] {
        match self {
            Value::File(guard) => guard.bytes(),
            Value::Memory(bytes) => bytes,
        }
    }
}

/// A value as the file hands it out.
pub(super) trait FileValue {
    fn bytes(&self) -> &[u8];
}

impl FileValue for redb::AccessGuard<'_, &'static [u8]> {
    fn bytes(&self) -> &[u8] {
        self.value()
    }
}

/// The file's entries of a key range and the memtable's entries of the same range, merged
/// in key order; a key in both (between a checkpoint's commit and the emptying of the table)
/// is read once.
pub(super) struct Overlay<'m, K, F, E, FI, MI>
where
    FI: Iterator<Item = Result<(K, F), E>>,
    MI: Iterator<Item = (K, &'m [u8])>,
{
    file: Peekable<FI>,
    memory: Peekable<MI>,
}

impl<'m, K, F, E, FI, MI> Overlay<'m, K, F, E, FI, MI>
where
    K: Ord + Copy,
    FI: Iterator<Item = Result<(K, F), E>>,
    MI: Iterator<Item = (K, &'m [u8])>,
{
    /// Merges `file` and `memory`, both in key order over the same range.
    pub(super) fn new(file: FI, memory: MI) -> Self {
        Overlay {
            file: file.peekable(),
            memory: memory.peekable(),
        }
    }
}

impl<'m, K, F, E, FI, MI> Iterator for Overlay<'m, K, F, E, FI, MI>
where
    K: Ord + Copy,
    FI: Iterator<Item = Result<(K, F), E>>,
    MI: Iterator<Item = (K, &'m [u8])>,
{
    type Item = Result<(K, Value<'m, F>), E>;

    fn next(&mut self) -> Option<Self::Item> {
        let file_key = match self.file.peek() {
            Some(Ok((key, _))) => Some(*key),
            // A failed read is passed on as it is.
            Some(Err(_)) => return self.file.next().and_then(Result::err).map(Err),
            None => None,
        };
        let memory_key = self.memory.peek().map(|(key, _)| *key);
        match (file_key, memory_key) {
            (Some(f), Some(m)) if f < m => self.next_of_file(),
            (Some(_), None) => self.next_of_file(),
            (None, None) => None,
            (f, Some(m)) => {
                if f == Some(m) {
                    self.file.next();
                }
                let (key, bytes) = self.memory.next()?;
                Some(Ok((key, Value::Memory(bytes))))
            }
        }
    }
}

impl<'m, K, F, E, FI, MI> Overlay<'m, K, F, E, FI, MI>
where
    FI: Iterator<Item = Result<(K, F), E>>,
    MI: Iterator<Item = (K, &'m [u8])>,
{
    fn next_of_file(&mut self) -> Option<Result<(K, Value<'m, F>), E>> {
        Some(
            self.file
                .next()?
                .map(|(key, value)| (key, Value::File(value))),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(lane: &str, slot: Slot, value: &str) -> Change {
        Change::PutTask {
            lane: lane.into(),
            slot,
            value: value.as_bytes().to_vec(),
        }
    }

    fn merged(file: &[(Slot, &str)], memtable: &Memtable, lane: &str) -> Vec<(Slot, String)> {
        let file = file
            .iter()
            .map(|(slot, v)| Ok::<_, ()>((*slot, v.as_bytes().to_vec())));
        Overlay::new(file, memtable.lane_from(lane, (0, 0)))
            .map(|entry| {
                let (slot, value) = entry.expect("no error");
                let bytes = match value {
                    Value::File(v) => v,
                    Value::Memory(b) => b.to_vec(),
                };
                (slot, String::from_utf8(bytes).expect("utf-8"))
            })
            .collect()
    }

    #[test]
    fn a_task_added_and_removed_between_checkpoints_leaves_nothing() {
        let mut table = Memtable::default();
        table.apply(put("a", (5, 1), "one"));
        assert!(table.has_task("a", (5, 1)));
        assert_eq!(table.task_count(), 1);
        table.apply(Change::RemoveTask {
            lane: "a".into(),
            slot: (5, 1),
        });
        assert!(!table.has_task("a", (5, 1)));
        assert_eq!(table.task_count(), 0);
        assert_eq!(table.task_entries().count(), 0);
        assert_eq!(table.lanes().count(), 0);
    }

    #[test]
    fn a_lane_reads_the_file_and_the_table_in_order() {
        let mut table = Memtable::default();
        let file = [((1, 1), "f1"), ((3, 3), "f3")];
        table.apply(put("a", (2, 9), "m9"));
        table.apply(put("a", (4, 4), "m4"));
        // Another lane's tasks stay out of this one.
        table.apply(put("b", (0, 7), "b7"));
        assert_eq!(
            merged(&file, &table, "a"),
            vec![
                ((1, 1), "f1".to_owned()),
                ((2, 9), "m9".to_owned()),
                ((3, 3), "f3".to_owned()),
                ((4, 4), "m4".to_owned()),
            ]
        );
        assert_eq!(table.task_count(), 3);
    }

    #[test]
    fn a_task_both_in_the_file_and_here_is_read_once() {
        // Between a checkpoint's commit and the emptying of the table.
        let mut table = Memtable::default();
        table.apply(put("a", (1, 1), "same"));
        let file = [((1, 1), "same"), ((2, 2), "next")];
        assert_eq!(
            merged(&file, &table, "a"),
            vec![((1, 1), "same".to_owned()), ((2, 2), "next".to_owned())]
        );
    }

    #[test]
    fn acked_reports_leave_the_table() {
        let mut table = Memtable::default();
        for seq in [3, 4, 6, 9] {
            table.apply(Change::PutReport {
                seq,
                value: vec![seq as u8],
            });
        }
        table.apply(Change::RemoveReports { first: 1, last: 4 });
        let left: Vec<u64> = table.reports_in(0, u64::MAX).map(|(seq, _)| seq).collect();
        assert_eq!(left, vec![6, 9]);
        table.apply(Change::RemoveReports {
            first: 7,
            last: u64::MAX,
        });
        let left: Vec<u64> = table.reports_in(0, u64::MAX).map(|(seq, _)| seq).collect();
        assert_eq!(left, vec![6]);
        assert_eq!(table.report_count(), 1);
        table.clear();
        assert_eq!(table.report_count(), 0);
    }
}
