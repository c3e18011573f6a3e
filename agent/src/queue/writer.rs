//! The queue's single writer: drains every waiting command, applies them in one write
//! transaction, commits once (group commit), then answers. A storage failure aborts the whole
//! group and every caller in it gets the error; nothing of the group is written.
//!
//! A commit is made durable in one of two ways:
//! - **Logged** (most commits): the changes go to the write-ahead log ([`super::wal`]) and the
//!   redb commit is made without an fsync. A group with a caller waiting on it (an `Emit`, a
//!   replay, a sweep, a flush) syncs the log before it answers: one short sequential write and
//!   one `fdatasync`. A group of attempt outcomes and report acks only — work nobody waits on,
//!   and that a crash may undo safely (the attempt is made again, the report sent again) — is
//!   not synced; the next sync, at most `durable_lag` later, makes it durable with everything
//!   before it.
//! - **Checkpoint**: a durable redb commit, which also starts a new log epoch. Made at least
//!   every [`super::CHECKPOINT_EVERY`], when a group's changes are too large for the log
//!   ([`MAX_LOGGED`]) or do not fit in the room left, and when the queue closes.
//!
//! A small group of outcomes and acks only waits up to [`LINGER`] for more before it is
//! applied, so that one commit carries many (most of a commit's cost is the same for one
//! change as for fifty). Those attempts have ended already and their lanes' room is free
//! again, so the wait holds back no delivery; a command with a caller waiting on it cuts the
//! wait short.
//!
//! Reports become readable by the reporter only once durable, so the control plane never logs
//! an attempt that a crash could take back.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use prost::Message;
use redb::{Database, Durability, ReadableTable, Table};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::pending::{Pending, Tally};
use super::tables::Tables;
use super::wal::Wal;
use super::{
    Accepted, EventKey, MAX_GROUP, META, META_BYTES, META_EPOCH, META_EVENTS, META_EVICTED,
    META_SEQ, NewEvent, Next, QueueConfig, QueueError, Replay, Shared, StoredEvent, Task,
    decode_event, decode_waiting, encode_event, encode_task, encode_waiting, now_ms, storage,
};
use herald_proto::v1 as pb;

/// Events removed by one sweep at most, so a sweep never makes one huge commit.
const SWEEP_BATCH: usize = 10_000;

/// What the writer is asked to do.
pub(super) enum Command {
    /// Store events and their tasks.
    Accept {
        events: Vec<NewEvent>,
        reply: oneshot::Sender<Result<Vec<Accepted>, QueueError>>,
    },
    /// Finish or reschedule a task and add its report to the outbox.
    Complete {
        task: Task,
        next: Next,
        report: Box<pb::Attempt>,
    },
    /// Queue deliveries of stored events again.
    Replay {
        items: Vec<Replay>,
        reply: oneshot::Sender<Result<Vec<Result<(), String>>, QueueError>>,
    },
    /// Drop acknowledged reports.
    AckReports { first: u64, last: u64 },
    /// Drop events past retention.
    Sweep {
        reply: oneshot::Sender<Result<u64, QueueError>>,
    },
    /// Answer once everything before it is committed durably.
    Flush { reply: oneshot::Sender<()> },
    /// Commit what came before, answer, and stop the writer (closing its use of the file).
    Close { reply: oneshot::Sender<()> },
}

/// Where a command's answer goes, split from its work so that every caller is answered,
/// whatever happens to the group.
enum Slot {
    None,
    Accept(oneshot::Sender<Result<Vec<Accepted>, QueueError>>),
    Replay(oneshot::Sender<Result<Vec<Result<(), String>>, QueueError>>),
    Sweep(oneshot::Sender<Result<u64, QueueError>>),
    Flush(oneshot::Sender<()>),
}

/// A command's work, without its answer channel.
enum Work {
    Accept(Vec<NewEvent>),
    Complete {
        task: Task,
        next: Next,
        report: Box<pb::Attempt>,
    },
    AckReports {
        first: u64,
        last: u64,
    },
    Replay(Vec<Replay>),
    Sweep,
    Nothing,
}

/// What a command's work produced, answered once the commit succeeded.
enum Done {
    Accepted(Result<Vec<Accepted>, QueueError>),
    Replayed(Vec<Result<(), String>>),
    Swept(u64),
    Nothing,
}

fn split(command: Command) -> (Work, Slot) {
    match command {
        Command::Accept { events, reply } => (Work::Accept(events), Slot::Accept(reply)),
        Command::Complete { task, next, report } => {
            (Work::Complete { task, next, report }, Slot::None)
        }
        Command::AckReports { first, last } => (Work::AckReports { first, last }, Slot::None),
        Command::Replay { items, reply } => (Work::Replay(items), Slot::Replay(reply)),
        Command::Sweep { reply } => (Work::Sweep, Slot::Sweep(reply)),
        Command::Flush { reply } | Command::Close { reply } => (Work::Nothing, Slot::Flush(reply)),
    }
}

/// How long a small group of work nobody waits on waits for more before it is committed.
/// The attempts it holds have ended already; their lane's room is free (see `Lanes`).
const LINGER: Duration = Duration::from_micros(500);
/// Groups of this many commands or more are committed without waiting.
const LINGER_BELOW: usize = 64;
/// The largest group changes written to the log; a larger group makes a checkpoint instead
/// (its own fsync is then shared by many events, and the log stays small).
pub(super) const MAX_LOGGED: usize = 64 * 1024;

/// Replays the log's records of the epoch the queue file names, if any, then makes a
/// checkpoint that starts a new epoch (so nothing left in the log from before can ever be
/// read as part of it). Returns the new epoch and how many records were replayed.
pub(super) fn recover(
    db: &Database,
    wal: &mut Wal,
    truncate: bool,
) -> Result<(u64, usize), QueueError> {
    let txn = db.begin_write().map_err(storage)?;
    let epoch = {
        let meta = txn.open_table(META).map_err(storage)?;
        meta.get(META_EPOCH)
            .map_err(storage)?
            .map_or(0, |v| v.value())
    };
    let read = wal.read_epoch(epoch).map_err(storage)?;
    if let Some(damage) = read.damaged {
        if !truncate {
            return Err(QueueError::DamagedLog {
                offset: damage.offset,
                following: damage.following,
            });
        }
        tracing::error!(
            offset = damage.offset,
            dropped = damage.following,
            "the queue's write-ahead log has a damaged record: as --recover-truncate asks, what \
             precedes it is kept and the records after it are dropped"
        );
    }
    let bodies = read.bodies;
    {
        // Every change goes into the file directly: this commit is a checkpoint.
        let mut tables = Tables::open(&txn, None)?;
        for body in &bodies {
            tables.replay(body)?;
        }
        tables.meta.insert(META_EPOCH, epoch + 1).map_err(storage)?;
    }
    txn.commit().map_err(storage)?;
    wal.start_epoch(epoch + 1);
    Ok((epoch + 1, bodies.len()))
}

/// Starts the writer thread. `wal` is the log positioned at the start of `epoch`.
pub(super) fn spawn(
    db: Arc<Database>,
    config: QueueConfig,
    (wal, epoch): (Wal, u64),
    (space, pending): (Option<SpaceGuard>, Pending),
    mut rx: mpsc::Receiver<Command>,
    shared: Arc<Shared>,
) {
    let woken = shared.clone();
    let run = move || {
        let mut writer = Writer {
            db,
            config,
            shared,
            wal,
            epoch,
            first_io_failure: None,
            stranded: Vec::new(),
            space,
            pending,
            last_durable: Instant::now(),
            last_checkpoint: Instant::now(),
            unpersisted: false,
        };
        while let Some(first) = rx.blocking_recv() {
            // Everything waiting joins this group, up to a Close (handled after it).
            let mut group = Vec::new();
            let mut close = None;
            let mut next = Some(first);
            let mut lingered = false;
            loop {
                while let Some(command) = next.take() {
                    match command {
                        Command::Close { reply } => close = Some(reply),
                        command => {
                            group.push(command);
                            if group.len() < MAX_GROUP {
                                next = rx.try_recv().ok();
                            }
                        }
                    }
                }
                // A small group nobody waits on (attempt outcomes, report acks) waits a
                // moment for more, so one commit carries many. A command with a caller
                // waiting on it wakes the writer at once (`Shared::wake_writer`).
                if lingered
                    || close.is_some()
                    || group.len() >= LINGER_BELOW
                    || group.iter().any(|c| {
                        !matches!(c, Command::Complete { .. } | Command::AckReports { .. })
                    })
                {
                    break;
                }
                lingered = true;
                std::thread::park_timeout(LINGER);
                next = rx.try_recv().ok();
            }
            if let Some(reply) = close {
                // The last commit is a checkpoint: the next open has no log to replay.
                let (flushed, _) = oneshot::channel();
                group.push(Command::Flush { reply: flushed });
                writer.apply_group(group, true);
                writer.shared.unpersisted.notify_one();
                drop(writer);
                let _ = reply.send(());
                return;
            }
            writer.apply_group(group, false);
        }
        // Every queue handle is gone: the persist task learns it at its next wake-up.
        writer.shared.unpersisted.notify_one();
    };
    let thread = std::thread::Builder::new()
        .name("herald-queue-writer".into())
        .spawn(run)
        .expect("the OS can start a thread");
    let _ = woken.writer_thread.set(thread.thread().clone());
}

/// The writer thread's state.
struct Writer {
    db: Arc<Database>,
    config: QueueConfig,
    shared: Arc<Shared>,
    /// The write-ahead log (with fsync off, written but not synced).
    wal: Wal,
    /// The log's current epoch (named by the last checkpoint).
    epoch: u64,
    /// After a disk fault redb refuses every later write ("previous I/O error"); the first
    /// fault is kept so callers keep hearing why (a full disk, say).
    first_io_failure: Option<QueueError>,
    /// Tasks whose attempt's outcome could not be committed: they stay taken (not attempted
    /// again) until a commit succeeds, then are due again: at most one extra delivery each,
    /// never a loop of them while the disk refuses writes. (lane, seq, due)
    stranded: Vec<(String, u64, u64)>,
    /// The free space kept on the queue's disk (none for a queue on a test backend).
    space: Option<SpaceGuard>,
    /// The events with deliveries to make ([`super::pending`]).
    pending: Pending,
    /// When everything committed was last made durable.
    last_durable: Instant,
    /// When the last checkpoint was made.
    last_checkpoint: Instant,
    /// Whether a commit since then was made without being durable.
    unpersisted: bool,
}

impl Writer {
    /// Whether `works` must be durable when its commit returns: a caller waits on it, or the
    /// commits not yet durable are getting old.
    fn durable(&self, works: &[Work]) -> bool {
        self.config.durable
            && (self.last_durable.elapsed() >= self.config.durable_lag
                || works
                    .iter()
                    .any(|w| !matches!(w, Work::Complete { .. } | Work::AckReports { .. })))
    }

    /// Applies, commits and answers one group; `closing` makes its commit a checkpoint.
    fn apply_group(&mut self, group: Vec<Command>, closing: bool) {
        let (works, slots): (Vec<Work>, Vec<Slot>) = group.into_iter().map(split).unzip();
        if let Err(low) = self.space_left() {
            // Nothing is written: the group is refused whole, as by a full disk, before a write
            // could fail half-way and leave the file unusable. The next group tries again.
            self.refused(&completing_of(&works));
            tracing::warn!(error = %low, "queue commit refused");
            answer(slots, Vec::new(), Some(&low));
            return;
        }
        let durable = self.durable(&works);
        let wake;
        let (outcomes, failure) = match self.apply(works, durable, closing) {
            Ok(applied) => {
                if applied.durable || !self.config.durable {
                    // Everything committed so far is on disk (or as durable as it gets).
                    self.shared.reportable.store(applied.seq, Ordering::Release);
                    if self.unpersisted || applied.reports_added {
                        self.shared.reports_added.notify_one();
                    }
                    self.last_durable = Instant::now();
                    self.unpersisted = false;
                } else {
                    if !self.unpersisted {
                        // The persist task makes it durable if no other commit does first.
                        self.shared.unpersisted.notify_one();
                    }
                    self.unpersisted = true;
                }
                wake = !applied.completing.is_empty()
                    || !applied.added.is_empty()
                    || !self.stranded.is_empty();
                self.release(&applied.completing, &applied.added, false);
                self.shared
                    .writable
                    .send_if_modified(|writable| !std::mem::replace(writable, true));
                (applied.outcomes, None)
            }
            Err((err, completing)) => {
                let failure = match &self.first_io_failure {
                    // What callers hear is the first fault (the disk is full), not redb's
                    // "previous I/O error" that follows it.
                    Some(first) if err.is_disk_fault() => first.clone(),
                    None if err.is_disk_fault() => {
                        self.first_io_failure = Some(err.clone());
                        err
                    }
                    _ => err,
                };
                tracing::error!(error = %failure, "queue commit failed");
                wake = false;
                self.refused(&completing);
                (Vec::new(), Some(failure))
            }
        };
        answer(slots, outcomes, failure.as_ref());
        if wake {
            self.shared.tasks_changed.notify_one();
        }
    }

    /// After a group was not committed: its tasks stay taken until a commit succeeds, and
    /// health checks hear that the queue cannot write.
    fn refused(&mut self, completing: &[(String, u64, u64)]) {
        self.release(completing, &[], true);
        self.shared
            .writable
            .send_if_modified(|writable| std::mem::replace(writable, false));
    }

    /// Whether the queue's disk has the free space it keeps; checked at most every
    /// [`SPACE_CHECK_EVERY`] while it has.
    fn space_left(&mut self) -> Result<(), QueueError> {
        let Some(guard) = &mut self.space else {
            return Ok(());
        };
        if guard.ok && guard.checked_at.elapsed() < SPACE_CHECK_EVERY {
            return Ok(());
        }
        guard.checked_at = Instant::now();
        let free = match rustix::fs::statvfs(&guard.dir) {
            Ok(stat) => stat.f_bavail.saturating_mul(stat.f_frsize),
            // Not knowable here: the writes themselves will tell.
            Err(_) => u64::MAX,
        };
        guard.ok = free >= guard.min_free;
        if guard.ok {
            Ok(())
        } else {
            Err(QueueError::DiskFull(format!(
                "{free} bytes free on {}, below the {} the queue keeps free",
                guard.dir.display(),
                guard.min_free
            )))
        }
    }

    /// Updates the lane index after a commit: tasks whose outcome was written are no longer
    /// taken, and lanes learn of the tasks added. After a failed commit the tasks whose outcome
    /// was lost stay taken ([`Writer::stranded`]); the next commit that succeeds hands them
    /// back, due again.
    fn release(
        &mut self,
        completing: &[(String, u64, u64)],
        added: &[(String, u64, u64)],
        failed: bool,
    ) {
        if failed {
            self.stranded.extend(completing.iter().cloned());
            return;
        }
        let stranded = std::mem::take(&mut self.stranded);
        let mut lanes = self.shared.lanes.lock().unwrap_or_else(|e| e.into_inner());
        for (lane, seq, _) in completing {
            lanes.finish(lane, *seq);
        }
        for (lane, seq, due) in &stranded {
            // Not recorded: the task is still there, due again (the attempt is made again).
            lanes.finish(lane, *seq);
            lanes.added(lane, *due, *seq);
        }
        for (lane, due, seq) in added {
            lanes.added(lane, *due, *seq);
        }
    }

    /// Applies a group's work in one write transaction and commits it, durable when `durable`
    /// (a synced log record or a checkpoint). On failure nothing is written; the error comes
    /// with the tasks whose outcome was lost, so they can be handed out again.
    #[allow(clippy::type_complexity)]
    fn apply(
        &mut self,
        works: Vec<Work>,
        durable: bool,
        closing: bool,
    ) -> Result<Applied, (QueueError, Vec<(String, u64, u64)>)> {
        let completing = completing_of(&works);
        let mut outcomes: Vec<Done> = Vec::with_capacity(works.len());
        let mut added: Vec<(String, u64, u64)> = Vec::new();
        // Each finished attempt adds its report.
        let reports_added = works.iter().any(|w| matches!(w, Work::Complete { .. }));
        let mut recent = RecentChanges::default();
        let result = (|| -> Result<(u64, bool), QueueError> {
            if let Some(first) = &self.first_io_failure {
                // The files' state is unknown after a disk fault: no log record may follow.
                return Err(first.clone());
            }
            let mut txn = self.db.begin_write().map_err(storage)?;
            let wal = &mut self.wal;
            let (seq, redo, changes, checkpoint) = {
                // Read-locked while the group is applied: only this thread changes it.
                let memtable = self.shared.read_memtable();
                let mut tables = Tables::open(&txn, Some(&memtable))?;
                let seq = apply_works(
                    &mut tables,
                    &self.config,
                    works,
                    &mut outcomes,
                    &mut added,
                    &mut recent,
                    &mut self.pending,
                )?;
                let redo = tables.take_redo();
                let changes = tables.take_changes();
                let checkpoint = closing
                    || self.last_checkpoint.elapsed() >= self.config.checkpoint_every
                    || redo.len() > MAX_LOGGED
                    || !wal.has_room(redo.len());
                if checkpoint {
                    // Everything the memtable holds goes into the file with this commit.
                    tables.write_through(&changes)?;
                }
                (seq, redo, changes, checkpoint)
            };
            if checkpoint {
                txn.open_table(META)
                    .map_err(storage)?
                    .insert(META_EPOCH, self.epoch + 1)
                    .map_err(storage)?;
                txn.commit().map_err(storage)?;
                std::mem::take(&mut recent).apply(&self.shared);
                self.epoch += 1;
                wal.start_epoch(self.epoch);
                self.last_checkpoint = Instant::now();
                // Only now: until this commit, readers find these in the memtable.
                self.shared.write_memtable().clear();
                return Ok((seq, true));
            }
            // The log record first: a crash after it replays the commit; before it, the group
            // was never answered.
            wal.append(&redo)?;
            if durable {
                wal.sync()?;
            }
            txn.set_durability(Durability::None).map_err(storage)?;
            txn.commit().map_err(storage)?;
            // Before the tasks become visible, so that their first attempts find the events.
            std::mem::take(&mut recent).apply(&self.shared);
            // Readers see the tasks and reports of this commit from now on.
            let mut memtable = self.shared.write_memtable();
            for change in changes {
                memtable.apply(change);
            }
            Ok((seq, durable))
        })();
        // The counts of waiting work follow the commit: kept when it is done, put back when not.
        match &result {
            Ok(_) => self.pending.commit(),
            Err(_) => self.pending.rollback(),
        }
        let total = self.pending.total();
        self.shared
            .waiting_events
            .store(total.events, Ordering::Relaxed);
        self.shared
            .waiting_bytes
            .store(total.bytes, Ordering::Relaxed);
        match result {
            Ok((seq, durable)) => Ok(Applied {
                outcomes,
                completing,
                added,
                reports_added,
                seq,
                durable,
            }),
            Err(err) => Err((err, completing)),
        }
    }
}

/// The tasks whose attempt's outcome `works` record: (lane, seq, due).
fn completing_of(works: &[Work]) -> Vec<(String, u64, u64)> {
    works
        .iter()
        .filter_map(|w| match w {
            Work::Complete { task, .. } => Some((task.subscription_id.clone(), task.seq, task.due)),
            _ => None,
        })
        .collect()
}

/// How often the free space is looked at while there is enough.
const SPACE_CHECK_EVERY: Duration = Duration::from_millis(100);

/// The free space the queue keeps on its disk.
pub(super) struct SpaceGuard {
    /// A directory on that disk.
    pub dir: std::path::PathBuf,
    /// Below this many free bytes, commits are refused.
    pub min_free: u64,
    checked_at: Instant,
    ok: bool,
}

impl SpaceGuard {
    /// Keeps `min_free` bytes free on the disk of `dir`.
    pub fn new(dir: std::path::PathBuf, min_free: u64) -> Self {
        SpaceGuard {
            dir,
            min_free,
            checked_at: Instant::now(),
            ok: false,
        }
    }
}

/// Every caller hears back: the failure, or what its work produced.
fn answer(slots: Vec<Slot>, outcomes: Vec<Done>, failure: Option<&QueueError>) {
    let mut outcomes = outcomes.into_iter();
    for slot in slots {
        let done = outcomes.next();
        let failed = || failure.cloned().unwrap_or(QueueError::Closed);
        match (slot, done) {
            (Slot::Accept(tx), Some(Done::Accepted(result))) if failure.is_none() => {
                let _ = tx.send(result);
            }
            (Slot::Accept(tx), _) => {
                let _ = tx.send(Err(failed()));
            }
            (Slot::Replay(tx), Some(Done::Replayed(results))) if failure.is_none() => {
                let _ = tx.send(Ok(results));
            }
            (Slot::Replay(tx), _) => {
                let _ = tx.send(Err(failed()));
            }
            (Slot::Sweep(tx), Some(Done::Swept(removed))) if failure.is_none() => {
                let _ = tx.send(Ok(removed));
            }
            (Slot::Sweep(tx), _) => {
                let _ = tx.send(Err(failed()));
            }
            (Slot::Flush(tx), _) => {
                let _ = tx.send(());
            }
            (Slot::None, _) => {}
        }
    }
}

/// Counters kept in `meta`, and the waiting work this group changes.
struct Counters<'p> {
    seq: u64,
    /// Events stored, delivered or not, and their payload bytes.
    events: u64,
    bytes: u64,
    /// Delivered events removed before their retention, to bound what is kept.
    evicted: u64,
    /// The events with deliveries to make ([`super::pending`]).
    pending: &'p mut Pending,
}

/// What a committed group did.
struct Applied {
    /// One per work item, in order.
    outcomes: Vec<Done>,
    /// Tasks whose attempt's outcome was written: (lane, seq, due).
    completing: Vec<(String, u64, u64)>,
    /// Tasks added: (lane, due, seq).
    added: Vec<(String, u64, u64)>,
    /// Whether reports were added to the outbox.
    reports_added: bool,
    /// The last sequence number used.
    seq: u64,
    /// Whether the commit is durable (a synced log record or a checkpoint).
    durable: bool,
}

/// What a commit changes in the recently accepted events ([`super::recent`]), applied once it
/// is done.
#[derive(Default)]
struct RecentChanges {
    /// Events stored, with how many deliveries each has.
    accepted: Vec<(Arc<StoredEvent>, u32)>,
    /// Events removed.
    removed: Vec<EventKey>,
}

impl RecentChanges {
    fn apply(self, shared: &Shared) {
        let mut recent = shared.recent();
        recent.age(Instant::now());
        for id in &self.removed {
            recent.remove(id);
        }
        for (event, reads) in self.accepted {
            recent.insert(event, reads);
        }
    }
}

/// Applies a group's work to `tables`, pushing one outcome per work item, and returns the last
/// sequence number used.
fn apply_works(
    tables: &mut Tables<'_, '_>,
    config: &QueueConfig,
    works: Vec<Work>,
    outcomes: &mut Vec<Done>,
    added: &mut Vec<(String, u64, u64)>,
    recent: &mut RecentChanges,
    pending: &mut Pending,
) -> Result<u64, QueueError> {
    let read = |meta: &Table<&str, u64>, name| -> Result<u64, QueueError> {
        Ok(meta.get(name).map_err(storage)?.map_or(0, |v| v.value()))
    };
    let mut counters = Counters {
        seq: read(&tables.meta, META_SEQ)?,
        events: read(&tables.meta, META_EVENTS)?,
        bytes: read(&tables.meta, META_BYTES)?,
        evicted: read(&tables.meta, META_EVICTED)?,
        pending,
    };
    let evicted_before = counters.evicted;
    let now = now_ms();
    for work in works {
        match work {
            Work::Accept(new) => {
                let result = accept(tables, &mut counters, config, now, new, added, recent)?;
                outcomes.push(Done::Accepted(result));
            }
            Work::Complete { task, next, report } => {
                tables.remove_task(task.key())?;
                match next {
                    Next::RetryAt(due) => {
                        counters.seq += 1;
                        let value = encode_task(task.attempts + 1, &task.event, &task.ordering_key);
                        let key = (task.subscription_id.as_str(), due, counters.seq);
                        tables.put_task(key, &value)?;
                        added.push((task.subscription_id.clone(), due, counters.seq));
                    }
                    Next::Done if !task.ordering_key.is_empty() => {
                        counters.pending.finish_delivery(&task.event);
                        if let Some((due, seq)) = next_in_order(tables, &task)? {
                            added.push((task.subscription_id.clone(), due, seq));
                        }
                    }
                    Next::Done => counters.pending.finish_delivery(&task.event),
                }
                counters.seq += 1;
                tables.put_report(counters.seq, &report.encode_to_vec())?;
                outcomes.push(Done::Nothing);
            }
            Work::Replay(items) => {
                let mut results = Vec::with_capacity(items.len());
                for item in items {
                    let payload_bytes =
                        match tables.events.get(item.event.as_str()).map_err(storage)? {
                            Some(value) => decode_event(value.value())?.2.payload.len() as u64,
                            None => {
                                results
                                    .push(Err("the event is past retention on this agent".into()));
                                continue;
                            }
                        };
                    counters
                        .pending
                        .add_deliveries(&item.event, 1, payload_bytes);
                    // Outside any ordering line: a replay is sent on its own.
                    counters.seq += 1;
                    let value = encode_task(item.attempts_made, &item.event, "");
                    let key = (item.subscription_id.as_str(), now, counters.seq);
                    tables.put_task(key, &value)?;
                    added.push((item.subscription_id.clone(), now, counters.seq));
                    results.push(Ok(()));
                }
                outcomes.push(Done::Replayed(results));
            }
            Work::AckReports { first, last } => {
                tables.remove_reports(first, last)?;
                outcomes.push(Done::Nothing);
            }
            Work::Sweep => {
                let removed = sweep(tables, &mut counters, config, now, recent)?;
                outcomes.push(Done::Swept(removed));
            }
            Work::Nothing => outcomes.push(Done::Nothing),
        }
    }
    tables.put_meta(META_SEQ, counters.seq)?;
    tables.put_meta(META_EVENTS, counters.events)?;
    tables.put_meta(META_BYTES, counters.bytes)?;
    if counters.evicted != evicted_before {
        tables.put_meta(META_EVICTED, counters.evicted)?;
    }
    Ok(counters.seq)
}

/// Adds a first-attempt delivery of `event` to `subscription`, due at `due`. With an
/// ordering key it joins the key's line in `ordered`, and gets a task in `lanes` only at its
/// head. Returns whether it got a task now.
fn add_delivery(
    tables: &mut Tables<'_, '_>,
    subscription: &str,
    due: u64,
    seq: u64,
    event: &EventKey,
    ordering_key: &str,
) -> Result<bool, QueueError> {
    if !ordering_key.is_empty() {
        let waiting = tables
            .ordered
            .range((subscription, ordering_key, 0)..=(subscription, ordering_key, u64::MAX))
            .map_err(storage)?
            .next()
            .is_some();
        tables.put_ordered(
            (subscription, ordering_key, seq),
            &encode_waiting(due, event),
        )?;
        if waiting {
            return Ok(false);
        }
    }
    tables.put_task(
        (subscription, due, seq),
        &encode_task(0, event, ordering_key),
    )?;
    Ok(true)
}

/// `task`, the head of its ordering key's line, is finished: it leaves the line, and the next
/// delivery in it (if any) gets its task. Returns that task's key (due, seq).
fn next_in_order(
    tables: &mut Tables<'_, '_>,
    task: &Task,
) -> Result<Option<(u64, u64)>, QueueError> {
    let (sub, key) = (task.subscription_id.as_str(), task.ordering_key.as_str());
    let mut line = Vec::new();
    for entry in tables
        .ordered
        .range((sub, key, 0)..=(sub, key, u64::MAX))
        .map_err(storage)?
    {
        let (entry_key, value) = entry.map_err(storage)?;
        let (_, _, seq) = entry_key.value();
        line.push((seq, decode_waiting(value.value())?));
        // The head and the one after it are all this needs (the head is normally first).
        if line.len() >= 2 && line.iter().any(|(_, (_, event))| *event == task.event) {
            break;
        }
    }
    let Some(at) = line.iter().position(|(_, (_, event))| *event == task.event) else {
        // Not in the line (written before ordering keys were kept): nothing waits on it.
        return Ok(None);
    };
    let (head_seq, _) = line.remove(at);
    tables.remove_ordered((sub, key, head_seq))?;
    let Some((seq, (due, event))) = line.into_iter().next() else {
        return Ok(None);
    };
    tables.put_task((sub, due, seq), &encode_task(0, &event, key))?;
    Ok(Some((due, seq)))
}

/// Stores one request's events (all or nothing). The outer error is a storage failure (aborts
/// the group); the inner one a refusal of this request only.
fn accept(
    tables: &mut Tables<'_, '_>,
    counters: &mut Counters<'_>,
    config: &QueueConfig,
    now: u64,
    new: Vec<NewEvent>,
    added: &mut Vec<(String, u64, u64)>,
    recent: &mut RecentChanges,
) -> Result<Result<Vec<Accepted>, QueueError>, QueueError> {
    let window = u64::try_from(config.dedup_window.as_millis()).unwrap_or(u64::MAX);
    // First pass, read-only: duplicates, and whether the rest fits.
    let mut answers = Vec::with_capacity(new.len());
    let mut replaced = Vec::new();
    let (mut add_events, mut add_bytes) = (0u64, 0u64);
    // Ids are unique per tenant: another tenant's event of the same id is another event.
    let keys: Vec<EventKey> = new.iter().map(|item| EventKey::of(&item.event)).collect();
    // The first answer for each event in this request; a repeat gets the same one.
    let mut first_answer: std::collections::HashMap<&EventKey, Option<Accepted>> =
        std::collections::HashMap::new();
    for (item, id) in new.iter().zip(&keys) {
        if let Some(first) = first_answer.get(id) {
            answers.push(*first);
            continue;
        }
        if let Some(old) = tables.events.get(id.as_str()).map_err(storage)? {
            let (accepted_ms, matched, old_event) = decode_event(old.value())?;
            if now.saturating_sub(accepted_ms) < window {
                let duplicate = Some(Accepted {
                    matched,
                    duplicate: true,
                });
                first_answer.insert(id, duplicate);
                answers.push(duplicate);
                continue;
            }
            // Seen long ago: replaced by this one.
            replaced.push((accepted_ms, id.clone(), old_event.payload.len() as u64));
        }
        first_answer.insert(id, None);
        answers.push(None);
        add_events += 1;
        add_bytes += item.event.payload.len() as u64;
    }
    let freed_events = replaced.len() as u64;
    let freed_bytes: u64 = replaced.iter().map(|(_, _, b)| b).sum();
    let events_after = counters.events + add_events - freed_events;
    let bytes_after = counters.bytes + add_bytes - freed_bytes;
    // The bounds count work waiting: the new events that have deliveries to make.
    let mut waiting = Tally::default();
    let mut by_tenant: std::collections::BTreeMap<&str, Tally> = Default::default();
    let mut counted = std::collections::HashSet::new();
    for ((item, answer), key) in new.iter().zip(&answers).zip(&keys) {
        if answer.is_some() || item.subscriptions.is_empty() || !counted.insert(key) {
            continue;
        }
        let bytes = item.event.payload.len() as u64;
        waiting.events += 1;
        waiting.bytes += bytes;
        let tally = by_tenant.entry(item.event.tenant.as_str()).or_default();
        tally.events += 1;
        tally.bytes += bytes;
    }
    if let Some(refusal) = over_bounds(counters.pending, config, waiting, &by_tenant) {
        return Ok(Err(refusal));
    }
    if waiting.events > 0 {
        // Each delivery adds a report; while the control plane acknowledges none (it is
        // unreachable), the outbox is bounded by refusing new work.
        let reports = tables.pending_reports()?;
        if reports >= config.max_pending_reports {
            return Ok(Err(QueueError::Full(format!(
                "{reports} attempt reports wait for the control plane to acknowledge them, limit {}",
                config.max_pending_reports
            ))));
        }
    }
    // Second pass: write.
    for (accepted_ms, id, _) in &replaced {
        tables.remove_accepted(*accepted_ms, id.as_str())?;
    }
    let mut written = std::collections::HashMap::new();
    let mut out = Vec::with_capacity(new.len());
    for ((item, answer), id) in new.into_iter().zip(answers).zip(keys.iter()) {
        if let Some(answer) = answer {
            out.push(answer);
            continue;
        }
        if let Some(&matched) = written.get(id) {
            // The same id twice in one request: the second is a duplicate of the first.
            out.push(Accepted {
                matched,
                duplicate: true,
            });
            continue;
        }
        let matched = u32::try_from(item.subscriptions.len()).unwrap_or(u32::MAX);
        tables.put_event(id.as_str(), &encode_event(now, matched, &item.event))?;
        counters
            .pending
            .add_deliveries(id, matched, item.event.payload.len() as u64);
        tables.put_accepted(now, id.as_str())?;
        for subscription in &item.subscriptions {
            counters.seq += 1;
            let key = item.event.ordering_key.as_str();
            if add_delivery(tables, subscription, now, counters.seq, id, key)? {
                added.push((subscription.clone(), now, counters.seq));
            }
        }
        written.insert(id, matched);
        let stored = StoredEvent {
            event: item.event,
            accepted_ms: now,
        };
        recent.accepted.push((Arc::new(stored), matched));
        out.push(Accepted {
            matched,
            duplicate: false,
        });
    }
    counters.events = events_after;
    counters.bytes = bytes_after;
    Ok(Ok(out))
}

/// Why `waiting` more events (`by_tenant`) would not fit the bounds on work waiting, if they
/// would not: the queue's, or a tenant's share of it.
fn over_bounds(
    pending: &Pending,
    config: &QueueConfig,
    waiting: Tally,
    by_tenant: &std::collections::BTreeMap<&str, Tally>,
) -> Option<QueueError> {
    if waiting.events == 0 {
        return None;
    }
    let total = pending.total();
    if total.events + waiting.events > config.max_events {
        return Some(QueueError::Full(format!(
            "{} events are waiting for delivery, limit {}",
            total.events, config.max_events
        )));
    }
    if total.bytes + waiting.bytes > config.max_bytes {
        return Some(QueueError::Full(format!(
            "{} payload bytes are waiting for delivery, limit {}",
            total.bytes, config.max_bytes
        )));
    }
    let (share_events, share_bytes) = (
        share_of(config.max_events, config.max_share),
        share_of(config.max_bytes, config.max_share),
    );
    for (tenant, adds) in by_tenant {
        let held = pending.tenant(tenant);
        if held.events + adds.events > share_events {
            return Some(QueueError::Full(format!(
                "tenant {tenant} has {} events waiting for delivery, its share of the limit is {share_events}",
                held.events
            )));
        }
        if held.bytes + adds.bytes > share_bytes {
            return Some(QueueError::Full(format!(
                "tenant {tenant} has {} payload bytes waiting for delivery, its share of the limit is {share_bytes}",
                held.bytes
            )));
        }
    }
    None
}

/// `share` (0 to 1) of `limit`, at least 1.
fn share_of(limit: u64, share: f64) -> u64 {
    ((limit as f64 * share.clamp(0.0, 1.0)).floor() as u64).max(1)
}

/// Removes up to [`SWEEP_BATCH`] events accepted before the retention period.
fn sweep(
    tables: &mut Tables<'_, '_>,
    counters: &mut Counters<'_>,
    config: &QueueConfig,
    now: u64,
    recent: &mut RecentChanges,
) -> Result<u64, QueueError> {
    let keep = config
        .retention
        .max(config.dedup_window)
        .max(Duration::from_millis(1));
    let cutoff = now.saturating_sub(u64::try_from(keep.as_millis()).unwrap_or(u64::MAX));
    let mut old = Vec::new();
    for entry in tables
        .accepted
        .range(..(cutoff, ""))
        .map_err(storage)?
        .take(SWEEP_BATCH)
    {
        let (key, _) = entry.map_err(storage)?;
        let (at, id) = key.value();
        old.push((at, id.to_owned()));
    }
    for (at, id) in &old {
        tables.remove_accepted(*at, id)?;
        let stored = match tables.events.get(id.as_str()).map_err(storage)? {
            Some(value) => Some(decode_event(value.value())?.2.payload.len() as u64),
            None => None,
        };
        if let Some(payload_len) = stored {
            let key = EventKey::stored(id.clone());
            tables.remove_event(id)?;
            counters.pending.forget(&key);
            recent.removed.push(key);
            counters.events = counters.events.saturating_sub(1);
            counters.bytes = counters.bytes.saturating_sub(payload_len);
        }
    }
    Ok(old.len() as u64 + evict(tables, counters, config, recent)?)
}

/// Removes the oldest delivered events while those kept (for replay and duplicate detection)
/// hold more than `max_retained_bytes`, at most [`SWEEP_BATCH`]; events with deliveries to
/// make stay. Returns how many went.
fn evict(
    tables: &mut Tables<'_, '_>,
    counters: &mut Counters<'_>,
    config: &QueueConfig,
    recent: &mut RecentChanges,
) -> Result<u64, QueueError> {
    let mut retained = counters
        .bytes
        .saturating_sub(counters.pending.total().bytes);
    if retained <= config.max_retained_bytes {
        return Ok(0);
    }
    let mut victims = Vec::new();
    for entry in tables.accepted.iter().map_err(storage)? {
        if retained <= config.max_retained_bytes || victims.len() >= SWEEP_BATCH {
            break;
        }
        let (key, _) = entry.map_err(storage)?;
        let (at, id) = key.value();
        let event = EventKey::stored(id.to_owned());
        if counters.pending.is_waiting(&event) {
            continue;
        }
        let bytes = match tables.events.get(id).map_err(storage)? {
            Some(value) => decode_event(value.value())?.2.payload.len() as u64,
            None => 0,
        };
        retained = retained.saturating_sub(bytes);
        victims.push((at, event, bytes));
    }
    for (at, event, bytes) in &victims {
        tables.remove_accepted(*at, event.as_str())?;
        tables.remove_event(event.as_str())?;
        recent.removed.push(event.clone());
        counters.events = counters.events.saturating_sub(1);
        counters.bytes = counters.bytes.saturating_sub(*bytes);
        counters.evicted += 1;
    }
    if !victims.is_empty() {
        tracing::info!(
            events = victims.len(),
            limit = config.max_retained_bytes,
            "delivered events removed before their retention: the kept ones reached --max-retained-bytes"
        );
    }
    Ok(victims.len() as u64)
}
