//! The queue's tables as one write transaction sees them. Every change goes through
//! [`Tables`], which also writes it down as a redo record: the body of the commit's
//! write-ahead log record ([`super::wal`]). Replaying a body ([`Tables::replay`]) on the state
//! the commit started from makes the same changes.
//!
//! A body is a sequence of changes, each a tag byte and its fields; numbers are u64 LE,
//! strings and byte strings a u32 LE length and the bytes:
//!
//! | tag | change | fields |
//! | ---: | --- | --- |
//! | 1 | put event | id, value |
//! | 2 | remove event | id |
//! | 3 | put accepted | accepted-at, id |
//! | 4 | remove accepted | accepted-at, id |
//! | 5 | put task | lane, due, seq, value |
//! | 6 | remove task | lane, due, seq |
//! | 7 | put ordered | subscription, ordering key, seq, value |
//! | 8 | remove ordered | subscription, ordering key, seq |
//! | 9 | put report | seq, value |
//! | 10 | remove reports | first seq, last seq |
//! | 11 | put meta | name, value |
//!
//! The log also starts each record with a mark of what was synced before it (tag 14, see
//! [`super::wal`]); it is read and removed there, and never reaches [`Tables::replay`].
//!
//! Every change sets a key (or a range) to a value or to nothing, whatever was there before.
//!
//! With a [`Memtable`], new tasks and reports are not written to the file's tables: they are
//! collected as [`Change`]s for the memtable, as are removals of the memtable's own, and reach
//! the file only at a checkpoint ([`Tables::write_through`]). Without one (recovery), every
//! change is made to the file.

use redb::{ReadableTable, Table, WriteTransaction};

use super::memtable::{Change, Memtable};
use super::view::{EventRecord, OrderedKey, TaskKey, View, Visit};
use super::{ACCEPTED, EVENTS, META, ORDERED, OUTBOX, QueueError, TASKS, storage};

/// The open tables of a write transaction, and the redo record of what was changed.
pub(super) struct Tables<'txn, 'm> {
    /// Events by id.
    events: Table<'txn, &'static str, &'static [u8]>,
    /// Events by acceptance time.
    accepted: Table<'txn, (u64, &'static str), ()>,
    /// Tasks by lane and due time (those not in the memtable).
    tasks: Table<'txn, (&'static str, u64, u64), &'static [u8]>,
    /// Deliveries with an ordering key, in order.
    ordered: Table<'txn, (&'static str, &'static str, u64), &'static [u8]>,
    /// Attempt reports not yet acknowledged (those not in the memtable).
    outbox: Table<'txn, u64, &'static [u8]>,
    /// Counters.
    meta: Table<'txn, &'static str, u64>,
    redo: Vec<u8>,
    /// The memtable as of the last commit, if the changes go to it.
    memtable: Option<&'m Memtable>,
    /// Changes for the memtable, in order.
    changes: Vec<Change>,
}

impl<'txn, 'm> Tables<'txn, 'm> {
    /// Opens every table in `txn`. New tasks and reports go to `memtable` when there is one.
    pub fn open(
        txn: &'txn WriteTransaction,
        memtable: Option<&'m Memtable>,
    ) -> Result<Self, QueueError> {
        Ok(Tables {
            events: txn.open_table(EVENTS).map_err(storage)?,
            accepted: txn.open_table(ACCEPTED).map_err(storage)?,
            tasks: txn.open_table(TASKS).map_err(storage)?,
            ordered: txn.open_table(ORDERED).map_err(storage)?,
            outbox: txn.open_table(OUTBOX).map_err(storage)?,
            meta: txn.open_table(META).map_err(storage)?,
            redo: Vec::new(),
            memtable,
            changes: Vec::new(),
        })
    }

    /// The redo record of the changes made so far (and a fresh one begins).
    pub fn take_redo(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.redo)
    }

    /// The task and report changes made so far, in order (and a fresh list begins).
    pub fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes)
    }

    /// Writes into the file's tables the memtable's tasks and reports, then `changes` (this
    /// commit's, taken from [`Tables::take_changes`]): the commit, a checkpoint, then holds
    /// every task and report.
    pub fn write_through(&mut self, changes: &[Change]) -> Result<(), QueueError> {
        if let Some(memtable) = self.memtable {
            for (lane, (due, seq), value) in memtable.task_entries() {
                self.tasks
                    .insert((lane, due, seq), value)
                    .map_err(storage)?;
            }
            for (seq, value) in memtable.report_entries() {
                self.outbox.insert(seq, value).map_err(storage)?;
            }
        }
        for change in changes {
            match change {
                Change::PutTask { lane, slot, value } => self
                    .tasks
                    .insert((lane.as_str(), slot.0, slot.1), value.as_slice())
                    .map(|_| ()),
                Change::RemoveTask { lane, slot } => self
                    .tasks
                    .remove((lane.as_str(), slot.0, slot.1))
                    .map(|_| ()),
                Change::PutReport { seq, value } => {
                    self.outbox.insert(*seq, value.as_slice()).map(|_| ())
                }
                Change::RemoveReports { first, last } => {
                    self.outbox.retain_in(*first..=*last, |_, _| false)
                }
            }
            .map_err(storage)?;
        }
        Ok(())
    }

    /// Makes again the changes a redo record holds.
    pub fn replay(&mut self, body: &[u8]) -> Result<(), QueueError> {
        let mut r = Reader(body);
        while let Some(tag) = r.tag() {
            match tag {
                1 => self.put_event(r.text()?, r.bytes()?)?,
                2 => self.remove_event(r.text()?)?,
                3 => self.put_accepted(r.number()?, r.text()?)?,
                4 => self.remove_accepted(r.number()?, r.text()?)?,
                5 => self.put_task((r.text()?, r.number()?, r.number()?), r.bytes()?)?,
                6 => self.remove_task((r.text()?, r.number()?, r.number()?))?,
                7 => self.put_ordered((r.text()?, r.text()?, r.number()?), r.bytes()?)?,
                8 => self.remove_ordered((r.text()?, r.text()?, r.number()?))?,
                9 => self.put_report(r.number()?, r.bytes()?)?,
                10 => {
                    self.remove_reports(r.number()?, r.number()?)?;
                }
                11 => self.put_meta(r.text()?, r.number()?)?,
                other => return Err(storage(format!("unknown change {other} in the log"))),
            }
        }
        Ok(())
    }

    fn tag(&mut self, tag: u8) -> &mut Self {
        self.redo.push(tag);
        self
    }

    fn number(&mut self, n: u64) -> &mut Self {
        self.redo.extend_from_slice(&n.to_le_bytes());
        self
    }

    fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        let len = u32::try_from(bytes.len()).expect("values are far below 4 GiB");
        self.redo.extend_from_slice(&len.to_le_bytes());
        self.redo.extend_from_slice(bytes);
        self
    }

    fn text(&mut self, text: &str) -> &mut Self {
        self.bytes(text.as_bytes())
    }
}

impl View for Tables<'_, '_> {
    fn event(&self, id: &str) -> Result<Option<EventRecord>, QueueError> {
        match self.events.get(id).map_err(storage)? {
            Some(value) => EventRecord::decode(value.value()).map(Some),
            None => Ok(None),
        }
    }

    fn each_accepted(
        &self,
        before: u64,
        visit: &mut dyn FnMut(u64, &str) -> Result<bool, QueueError>,
    ) -> Result<(), QueueError> {
        for entry in self.accepted.range(..(before, "")).map_err(storage)? {
            let (key, _) = entry.map_err(storage)?;
            let (at, id) = key.value();
            if !visit(at, id)? {
                break;
            }
        }
        Ok(())
    }

    fn each_ordered(
        &self,
        subscription: &str,
        ordering_key: &str,
        visit: Visit<'_, u64>,
    ) -> Result<(), QueueError> {
        let line = (subscription, ordering_key, 0)..=(subscription, ordering_key, u64::MAX);
        for entry in self.ordered.range(line).map_err(storage)? {
            let (key, value) = entry.map_err(storage)?;
            if !visit(key.value().2, value.value())? {
                break;
            }
        }
        Ok(())
    }

    /// Reports in the outbox as of the last commit (the file's and the memtable's).
    fn pending_reports(&self) -> Result<u64, QueueError> {
        use redb::ReadableTableMetadata as _;
        let in_file = self.outbox.len().map_err(storage)?;
        Ok(in_file + self.memtable.map_or(0, Memtable::report_count))
    }

    fn meta(&self, name: &str) -> Result<u64, QueueError> {
        Ok(self
            .meta
            .get(name)
            .map_err(storage)?
            .map_or(0, |v| v.value()))
    }

    /// Stores an event record.
    fn put_event(&mut self, id: &str, value: &[u8]) -> Result<(), QueueError> {
        self.events.insert(id, value).map_err(storage)?;
        self.tag(1).text(id).bytes(value);
        Ok(())
    }

    /// Removes an event record.
    fn remove_event(&mut self, id: &str) -> Result<(), QueueError> {
        self.events.remove(id).map_err(storage)?;
        self.tag(2).text(id);
        Ok(())
    }

    /// Indexes an event by its acceptance time.
    fn put_accepted(&mut self, at: u64, id: &str) -> Result<(), QueueError> {
        self.accepted.insert((at, id), ()).map_err(storage)?;
        self.tag(3).number(at).text(id);
        Ok(())
    }

    /// Removes an event from the acceptance-time index.
    fn remove_accepted(&mut self, at: u64, id: &str) -> Result<(), QueueError> {
        self.accepted.remove((at, id)).map_err(storage)?;
        self.tag(4).number(at).text(id);
        Ok(())
    }

    /// Stores a task.
    fn put_task(&mut self, key: TaskKey<'_>, value: &[u8]) -> Result<(), QueueError> {
        if self.memtable.is_some() {
            self.changes.push(Change::PutTask {
                lane: key.0.to_owned(),
                slot: (key.1, key.2),
                value: value.to_vec(),
            });
        } else {
            self.tasks.insert(key, value).map_err(storage)?;
        }
        self.tag(5)
            .text(key.0)
            .number(key.1)
            .number(key.2)
            .bytes(value);
        Ok(())
    }

    /// Removes a task.
    fn remove_task(&mut self, key: TaskKey<'_>) -> Result<(), QueueError> {
        // A task is removed in a later commit than the one that added it (it was handed out
        // in between), so it is in the memtable or in the file.
        if self
            .memtable
            .is_some_and(|memtable| memtable.has_task(key.0, (key.1, key.2)))
        {
            self.changes.push(Change::RemoveTask {
                lane: key.0.to_owned(),
                slot: (key.1, key.2),
            });
        } else {
            self.tasks.remove(key).map_err(storage)?;
        }
        self.tag(6).text(key.0).number(key.1).number(key.2);
        Ok(())
    }

    /// Stores an `ordered` entry.
    fn put_ordered(&mut self, key: OrderedKey<'_>, value: &[u8]) -> Result<(), QueueError> {
        self.ordered.insert(key, value).map_err(storage)?;
        self.tag(7)
            .text(key.0)
            .text(key.1)
            .number(key.2)
            .bytes(value);
        Ok(())
    }

    /// Removes an `ordered` entry.
    fn remove_ordered(&mut self, key: OrderedKey<'_>) -> Result<(), QueueError> {
        self.ordered.remove(key).map_err(storage)?;
        self.tag(8).text(key.0).text(key.1).number(key.2);
        Ok(())
    }

    /// Adds a report to the outbox.
    fn put_report(&mut self, seq: u64, value: &[u8]) -> Result<(), QueueError> {
        if self.memtable.is_some() {
            self.changes.push(Change::PutReport {
                seq,
                value: value.to_vec(),
            });
        } else {
            self.outbox.insert(seq, value).map_err(storage)?;
        }
        self.tag(9).number(seq).bytes(value);
        Ok(())
    }

    /// Removes reports `first..=last` from the outbox; returns the bytes they held.
    fn remove_reports(&mut self, first: u64, last: u64) -> Result<u64, QueueError> {
        if first > last {
            return Ok(0);
        }
        // Some may be in the file (pending at a checkpoint), the rest in the memtable, or
        // added by this commit.
        let mut removed = 0;
        self.outbox
            .retain_in(first..=last, |_, value| {
                removed += value.len() as u64;
                false
            })
            .map_err(storage)?;
        if let Some(memtable) = self.memtable {
            // The memtable is as of the last commit: a report an earlier ack of this commit
            // removed (the same batch acked twice) is not counted again.
            let acked_before: Vec<(u64, u64)> = self
                .changes
                .iter()
                .filter_map(|change| match change {
                    Change::RemoveReports { first, last } => Some((*first, *last)),
                    _ => None,
                })
                .collect();
            let still_here = |seq: &u64| {
                (first..=last).contains(seq)
                    && !acked_before.iter().any(|(a, b)| (*a..=*b).contains(seq))
            };
            removed += memtable
                .reports_in(first, last)
                .filter(|(seq, _)| still_here(seq))
                .map(|(_, value)| value.len() as u64)
                .sum::<u64>();
            removed += self
                .changes
                .iter()
                .map(|change| match change {
                    Change::PutReport { seq, value } if still_here(seq) => value.len() as u64,
                    _ => 0,
                })
                .sum::<u64>();
            self.changes.push(Change::RemoveReports { first, last });
        }
        self.tag(10).number(first).number(last);
        Ok(removed)
    }

    /// Sets a counter.
    fn put_meta(&mut self, name: &str, value: u64) -> Result<(), QueueError> {
        self.meta.insert(name, value).map_err(storage)?;
        self.tag(11).text(name).number(value);
        Ok(())
    }
}

/// Reads the fields of a redo record.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn tag(&mut self) -> Option<u8> {
        let (&tag, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(tag)
    }

    fn number(&mut self) -> Result<u64, QueueError> {
        let (n, rest) = self
            .0
            .split_first_chunk::<8>()
            .ok_or_else(|| storage("a log record ends early"))?;
        self.0 = rest;
        Ok(u64::from_le_bytes(*n))
    }

    fn bytes(&mut self) -> Result<&'a [u8], QueueError> {
        let (len, rest) = self
            .0
            .split_first_chunk::<4>()
            .ok_or_else(|| storage("a log record ends early"))?;
        let len = u32::from_le_bytes(*len) as usize;
        if rest.len() < len {
            return Err(storage("a log record ends early"));
        }
        let (bytes, rest) = rest.split_at(len);
        self.0 = rest;
        Ok(bytes)
    }

    fn text(&mut self) -> Result<&'a str, QueueError> {
        std::str::from_utf8(self.bytes()?)
            .map_err(|_| storage("a log record holds a non-UTF-8 key"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::view::View;

    #[test]
    fn removed_reports_are_counted_once_wherever_they_are() {
        let dir = tempfile::tempdir().expect("dir");
        let db = redb::Database::create(dir.path().join("queue.redb")).expect("db");
        let mut memtable = Memtable::default();
        for (seq, len) in [(1, 10), (2, 20), (3, 40)] {
            memtable.apply(Change::PutReport {
                seq,
                value: vec![0; len],
            });
        }
        let txn = db.begin_write().expect("write");
        let mut tables = Tables::open(&txn, Some(&memtable)).expect("tables");
        assert_eq!(tables.remove_reports(1, 2).expect("ack"), 30);
        // The same batch acked again in this commit (a reporter that reconnected).
        assert_eq!(tables.remove_reports(1, 2).expect("ack again"), 0);
        // One added by this commit, acked with one of the memtable's.
        tables.put_report(4, &[0; 5]).expect("report");
        assert_eq!(tables.remove_reports(3, 4).expect("ack"), 45);
        assert_eq!(tables.remove_reports(2, 4).expect("ack again"), 0);
        assert_eq!(tables.remove_reports(4, 3).expect("an empty range"), 0);
    }
}
