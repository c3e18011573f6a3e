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
//! The retention order is kept in buckets: the events a commit accepted at one time share
//! `accepted_at` entries of up to 1,024 keys, not one entry each, so that a commit of many
//! events writes few entries (an entry per event was a tenth of the writer's work). Changes to it are collected and
//! written once, when the commit's changes are done ([`Tables::finish`]); the log still
//! records them one by one (tags 3 and 4).
//!
//! With a [`Memtable`], new tasks and reports are not written to the file's tables: they are
//! collected as [`Change`]s for the memtable, as are removals of the memtable's own, and reach
//! the file only at a checkpoint ([`Tables::write_through`]). Without one (recovery), every
//! change is made to the file.

use std::collections::{BTreeMap, BTreeSet};

use redb::{ReadableTable, Table, WriteTransaction};

use super::memtable::{Change, Memtable};
use super::view::{EventRecord, OrderedKey, TaskKey, View, Visit};
use super::{
    ACCEPTED, EVENTS, FastSet, META, ORDERED, OUTBOX, QueueError, TASKS, decode_bucket,
    encode_bucket, storage,
};

/// The open tables of a write transaction, and the redo record of what was changed.
pub(super) struct Tables<'txn, 'm> {
    /// Events by id.
    events: Table<'txn, &'static str, &'static [u8]>,
    /// Buckets of events by acceptance time.
    accepted: Table<'txn, (u64, u64), &'static [u8]>,
    /// Changes to the retention order not yet written into its buckets, by time.
    accepted_edits: BTreeMap<u64, AcceptedEdit>,
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
            accepted_edits: BTreeMap::new(),
            tasks: txn.open_table(TASKS).map_err(storage)?,
            ordered: txn.open_table(ORDERED).map_err(storage)?,
            outbox: txn.open_table(OUTBOX).map_err(storage)?,
            meta: txn.open_table(META).map_err(storage)?,
            redo: Vec::new(),
            memtable,
            changes: Vec::new(),
        })
    }

    /// Writes what is still collected (the retention order's buckets) and returns the redo
    /// record of the changes made so far (a fresh one begins). Called once the commit's
    /// changes are made, before it is committed.
    pub fn finish(&mut self) -> Result<Vec<u8>, QueueError> {
        for (at, edit) in std::mem::take(&mut self.accepted_edits) {
            self.write_bucket(at, edit)?;
        }
        Ok(std::mem::take(&mut self.redo))
    }

    /// Applies one time's changes to the buckets of that time: removed keys leave the buckets
    /// that hold them, added ones not in any yet make a new bucket.
    fn write_bucket(&mut self, at: u64, mut edit: AcceptedEdit) -> Result<(), QueueError> {
        let mut rewritten = Vec::new();
        for entry in self
            .accepted
            .range((at, 0)..=(at, u64::MAX))
            .map_err(storage)?
        {
            let (key, value) = entry.map_err(storage)?;
            let number = key.value().1;
            let keys = decode_bucket(value.value())?;
            for key in &keys {
                // Already there (a log record replayed twice): not added again.
                edit.added.remove(*key);
            }
            if keys.iter().any(|key| edit.removed.contains(*key)) {
                let kept: Vec<&str> = keys
                    .into_iter()
                    .filter(|key| !edit.removed.contains(*key))
                    .collect();
                rewritten.push((number, (!kept.is_empty()).then(|| encode_bucket(kept))));
            }
        }
        for (number, value) in rewritten {
            match value {
                Some(value) => self.accepted.insert((at, number), value.as_slice()),
                None => self.accepted.remove((at, number)),
            }
            .map_err(storage)?;
        }
        let added: Vec<&str> = edit.added.iter().map(String::as_str).collect();
        put_buckets(&mut self.accepted, at, &added)
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
        // The file's buckets, time by time, with this commit's changes not yet written.
        let mut file = self.accepted.range(..(before, 0)).map_err(storage)?;
        let mut next_in_file = file.next().transpose().map_err(storage)?;
        let mut edits = self.accepted_edits.range(..before).peekable();
        loop {
            let in_file = next_in_file.as_ref().map(|(key, _)| key.value().0);
            let edited = edits.peek().map(|(at, _)| **at);
            let at = match (in_file, edited) {
                (None, None) => return Ok(()),
                (Some(at), None) | (None, Some(at)) => at,
                (Some(f), Some(e)) => f.min(e),
            };
            let mut keys: Vec<String> = Vec::new();
            while let Some((key, value)) = next_in_file.take() {
                if key.value().0 != at {
                    next_in_file = Some((key, value));
                    break;
                }
                keys.extend(decode_bucket(value.value())?.into_iter().map(str::to_owned));
                next_in_file = file.next().transpose().map_err(storage)?;
            }
            if edited == Some(at)
                && let Some((_, edit)) = edits.next()
            {
                keys.retain(|key| !edit.removed.contains(key));
                keys.extend(edit.added.iter().cloned());
            }
            keys.sort_unstable();
            keys.dedup();
            for key in &keys {
                if !visit(at, key)? {
                    return Ok(());
                }
            }
        }
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
        let edit = self.accepted_edits.entry(at).or_default();
        edit.removed.remove(id);
        edit.added.insert(id.to_owned());
        self.tag(3).number(at).text(id);
        Ok(())
    }

    /// Removes an event from the acceptance-time index.
    fn remove_accepted(&mut self, at: u64, id: &str) -> Result<(), QueueError> {
        let edit = self.accepted_edits.entry(at).or_default();
        edit.added.remove(id);
        edit.removed.insert(id.to_owned());
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

/// The most event keys one bucket holds: removing one key rewrites its bucket, so buckets
/// stay small enough for that to be cheap (a commit of more events at one time gets more).
const MAX_BUCKET_KEYS: usize = 1024;

/// Adds `keys` (in order) to the retention order at time `at`, in new buckets after those the
/// time has.
pub(super) fn put_buckets(
    table: &mut Table<'_, (u64, u64), &'static [u8]>,
    at: u64,
    keys: &[&str],
) -> Result<(), QueueError> {
    if keys.is_empty() {
        return Ok(());
    }
    let next = match table
        .range((at, 0)..=(at, u64::MAX))
        .map_err(storage)?
        .next_back()
    {
        Some(last) => last.map_err(storage)?.0.value().1 + 1,
        None => 0,
    };
    for (number, chunk) in (next..).zip(keys.chunks(MAX_BUCKET_KEYS)) {
        let value = encode_bucket(chunk.iter().copied());
        table
            .insert((at, number), value.as_slice())
            .map_err(storage)?;
    }
    Ok(())
}

/// One time's changes to the retention order within a commit, written by [`Tables::finish`].
#[derive(Default)]
struct AcceptedEdit {
    /// Event keys added.
    added: BTreeSet<String>,
    /// Event keys removed from the file's buckets.
    removed: FastSet<String>,
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

    fn order(tables: &Tables<'_, '_>, before: u64) -> Vec<(u64, String)> {
        let mut seen = Vec::new();
        tables
            .each_accepted(before, &mut |at, id| {
                seen.push((at, id.to_owned()));
                Ok(true)
            })
            .expect("read");
        seen
    }

    fn entry(at: u64, id: &str) -> (u64, String) {
        (at, id.to_owned())
    }

    #[test]
    fn the_retention_order_reads_this_commits_changes_before_they_are_written() {
        let dir = tempfile::tempdir().expect("dir");
        let db = redb::Database::create(dir.path().join("queue.redb")).expect("db");
        let txn = db.begin_write().expect("write");
        let mut tables = Tables::open(&txn, None).expect("tables");
        for (at, id) in [(5, "c"), (5, "a"), (7, "b")] {
            tables.put_accepted(at, id).expect("put");
        }
        tables.finish().expect("finish");
        // A later commit (the same transaction will do): one removed, one added at a time
        // the file has, one at a new time, one added and removed again.
        tables.remove_accepted(5, "a").expect("remove");
        tables.put_accepted(5, "b").expect("put");
        tables.put_accepted(6, "d").expect("put");
        tables.put_accepted(9, "e").expect("put");
        tables.remove_accepted(9, "e").expect("remove");
        let expected = vec![entry(5, "b"), entry(5, "c"), entry(6, "d"), entry(7, "b")];
        assert_eq!(order(&tables, u64::MAX), expected);
        assert_eq!(order(&tables, 6), expected[..2]);
        tables.finish().expect("finish");
        assert_eq!(order(&tables, u64::MAX), expected, "the same once written");
        // A log record replayed on a file that has it already adds nothing twice.
        tables.put_accepted(5, "c").expect("put again");
        tables.finish().expect("finish");
        assert_eq!(order(&tables, u64::MAX), expected);
        // Emptied buckets go.
        for (at, id) in &expected {
            tables.remove_accepted(*at, id).expect("remove");
        }
        tables.finish().expect("finish");
        use redb::ReadableTableMetadata as _;
        assert_eq!(tables.accepted.len().expect("len"), 0);
    }

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
