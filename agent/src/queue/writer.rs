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
//!   ([`MAX_LOGGED`]) or do not fit in the room left, when the queue closes, and for every
//!   commit while the log was removed and cannot be made again ([`super::in_place`]).
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

use redb::Durability;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::in_place::{self, Found, Placement};
use super::machine::{self, Done, Effects, Placed, Work};
use super::pending::Pending;
use super::space::{SPACE_CHECK_EVERY, SpaceGuard};
use super::tables::Tables;
use super::wal::Wal;
use super::{
    Accepted, File, MAX_GROUP, META, META_EPOCH, NewEvent, Next, OpenFiles, QueueConfig,
    QueueError, Replay, Shared, Task, index_lanes, now_ms, prepare, storage,
};
use herald_proto::v1 as pb;

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
    Flush {
        reply: oneshot::Sender<Result<(), QueueError>>,
    },
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
    Flush(oneshot::Sender<Result<(), QueueError>>),
    Close(oneshot::Sender<()>),
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
        Command::Flush { reply } => (Work::Nothing, Slot::Flush(reply)),
        Command::Close { reply } => (Work::Nothing, Slot::Close(reply)),
    }
}

/// How long opening the files again after a disk fault waits for readers to let go of them.
const REOPEN_WAIT: Duration = Duration::from_secs(1);
/// How long a small group of work nobody waits on waits for more before it is committed.
/// The attempts it holds have ended already; their lane's room is free (see `Lanes`).
const LINGER: Duration = Duration::from_micros(500);
/// Groups of this many commands or more are committed without waiting.
const LINGER_BELOW: usize = 64;
/// The largest group changes written to the log; a larger group makes a checkpoint instead
/// (its own fsync is then shared by many events, and the log stays small).
pub(super) const MAX_LOGGED: usize = 64 * 1024;

/// Starts the writer thread. `wal` is the log positioned at the start of `epoch`.
pub(super) fn spawn(
    files: OpenFiles,
    config: QueueConfig,
    (wal, epoch): (Wal, u64),
    (space, placement, pending): (Option<SpaceGuard>, Option<Arc<Placement>>, Pending),
    mut rx: mpsc::Receiver<Command>,
    shared: Arc<Shared>,
) {
    let woken = shared.clone();
    let run = move || {
        let mut writer = Writer {
            files,
            config,
            shared,
            wal,
            epoch,
            first_io_failure: None,
            stranded: Vec::new(),
            space,
            placement,
            displaced: None,
            log_gone: false,
            files_checked_at: Instant::now(),
            pending,
            last_durable: Instant::now(),
            last_checkpoint: Instant::now(),
            unpersisted: false,
            reopen: ReopenPause::default(),
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
                // The file is closed once the last reader lets go of it.
                writer.shared.take_db(File::Closed);
                drop(writer);
                let _ = reply.send(());
                return;
            }
            writer.apply_group(group, false);
        }
        // Every queue handle is gone: the persist task learns it at its next wake-up.
        writer.shared.unpersisted.notify_one();
        writer.shared.take_db(File::Closed);
    };
    let thread = std::thread::Builder::new()
        .name("herald-queue-writer".into())
        .spawn(run)
        .expect("the OS can start a thread");
    let _ = woken.writer_thread.set(thread.thread().clone());
}

/// The writer thread's state.
struct Writer {
    /// Opens the queue's files again after a disk fault.
    files: OpenFiles,
    config: QueueConfig,
    shared: Arc<Shared>,
    /// The write-ahead log (with fsync off, written but not synced).
    wal: Wal,
    /// The log's current epoch (named by the last checkpoint).
    epoch: u64,
    /// After a disk fault redb refuses every later read and write ("previous I/O error")
    /// until the file is opened again ([`Writer::reopen`]); the first fault is kept so
    /// callers keep hearing why (a full disk, say).
    first_io_failure: Option<QueueError>,
    /// Tasks whose attempt's outcome could not be committed: they stay taken (not attempted
    /// again) until a commit succeeds, then are due again: at most one extra delivery each,
    /// never a loop of them while the disk refuses writes.
    stranded: Vec<Placed>,
    /// The free space kept on the queue's disk (none for a queue on a test backend).
    space: Option<SpaceGuard>,
    /// The files' names, looked at with the free space (none for a queue on a test backend).
    placement: Option<Arc<Placement>>,
    /// Why new events are refused while a queue file is removed or replaced.
    displaced: Option<QueueError>,
    /// The log's name is gone and the log could not be made again: every commit is a
    /// checkpoint until it is, so that what is committed is in the queue file.
    log_gone: bool,
    /// When the files' names were last looked at.
    files_checked_at: Instant,
    /// The events with deliveries to make ([`super::pending`]).
    pending: Pending,
    /// When everything committed was last made durable.
    last_durable: Instant,
    /// When the last checkpoint was made.
    last_checkpoint: Instant,
    /// Whether a commit since then was made without being durable.
    unpersisted: bool,
    /// When to try opening the files again after a disk fault.
    reopen: ReopenPause,
}

/// The pause between tries to open the queue's files again after a disk fault: doubling
/// from [`REOPEN_FIRST_PAUSE`] to [`REOPEN_MOST_PAUSE`] while they fail.
struct ReopenPause {
    next_try: Instant,
    pause: Duration,
}

/// The first pause after a failed try to open the files again.
const REOPEN_FIRST_PAUSE: Duration = Duration::from_secs(1);
/// The longest.
const REOPEN_MOST_PAUSE: Duration = Duration::from_secs(30);

impl Default for ReopenPause {
    fn default() -> Self {
        ReopenPause {
            next_try: Instant::now(),
            pause: REOPEN_FIRST_PAUSE,
        }
    }
}

impl ReopenPause {
    /// After a failed try: the next after the pause, which doubles.
    fn failed(&mut self) {
        self.next_try = Instant::now() + self.pause;
        self.pause = (self.pause * 2).min(REOPEN_MOST_PAUSE);
    }
}

impl Writer {
    /// Whether `works` must be durable when its commit returns: a caller waits on it, or the
    /// commits not yet durable are getting old.
    fn durable(&self, works: &[Work]) -> bool {
        self.config.durable
            && (self.last_durable.elapsed() >= self.config.durable_lag
                || works.iter().any(|w| !w.may_be_undone()))
    }

    /// Applies, commits and answers one group; `closing` makes its commit a checkpoint.
    fn apply_group(&mut self, group: Vec<Command>, closing: bool) {
        let (works, slots): (Vec<Work>, Vec<Slot>) = group.into_iter().map(split).unzip();
        if let Some(first) = &self.first_io_failure {
            // Opening the files again is tried by a flush (the queue's own retries, growing
            // from 1 s to 30 s, or a caller's), or once the last try's pause is over; other
            // work in between is refused at once rather than trying it on every commit.
            let asked = slots.iter().any(|s| matches!(s, Slot::Flush(_)));
            let failure = if !asked && Instant::now() < self.reopen.next_try {
                Some(first.clone())
            } else {
                match self.reopen() {
                    Ok(()) => {
                        self.reopen = ReopenPause::default();
                        None
                    }
                    Err(err) => {
                        tracing::warn!(
                            error = %err,
                            retry_in = ?self.reopen.pause,
                            "the queue's files cannot be opened again yet"
                        );
                        self.reopen.failed();
                        // Callers hear of the disk's fault, or of a file displaced meanwhile.
                        match err {
                            QueueError::Displaced(_) => Some(err),
                            err => Some(self.first_io_failure.clone().unwrap_or(err)),
                        }
                    }
                }
            };
            if let Some(failure) = failure {
                self.refused(&completing_of(&works));
                answer(slots, Vec::new(), Some(&failure));
                return;
            }
        }
        let low = self.space_left().err();
        // A flush looks at once (the queue's poll asks for one when it sees a file moved), and
        // so does new work to acknowledge: it is never written only into a log already removed.
        self.look_at_files(
            slots.iter().any(|s| matches!(s, Slot::Flush(_)))
                || works.iter().any(Work::adds_deliveries),
        );
        let (works, slots): (Vec<Work>, Vec<Slot>) = match self.displaced.clone().or(low) {
            None => (works, slots),
            Some(refusal) => {
                // Below the margin new deliveries (events, replays) are refused, before anything
                // is written; the rest (outcomes, report acks, the sweep) spends the margin
                // kept for it, so that the deliveries already taken go on and drain. A disk
                // that does fill up refuses those too, as a fault. The same while a queue file
                // is displaced: what is taken is delivered from the file still open.
                let (refused, kept): (Vec<_>, Vec<_>) = works
                    .into_iter()
                    .zip(slots)
                    .partition(|(work, _)| work.adds_deliveries());
                answer(
                    refused.into_iter().map(|(_, slot)| slot).collect(),
                    Vec::new(),
                    Some(&refusal),
                );
                kept.into_iter().unzip()
            }
        };
        if works.is_empty() {
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
                if applied.parked_dropped > 0 {
                    self.shared
                        .parked_dropped
                        .fetch_add(applied.parked_dropped, Ordering::Relaxed);
                    tracing::warn!(
                        deliveries = applied.parked_dropped,
                        limit = self.config.max_parked_deliveries,
                        "deliveries to disabled subscriptions not kept: they hold \
                         --max-parked-deliveries parked deliveries already"
                    );
                }
                if applied.requests_dropped > 0 {
                    let before = self
                        .shared
                        .requests_dropped
                        .fetch_add(applied.requests_dropped, Ordering::Relaxed);
                    if before == 0 {
                        tracing::warn!(
                            limit = self.config.max_pending_report_bytes,
                            "the report outbox is past half of --max-pending-report-bytes: \
                             reports go without the request they sent until the control \
                             plane acknowledges them (herald_reports_requests_dropped)"
                        );
                    }
                }
                self.able(true);
                (applied.outcomes, None)
            }
            Err((err, completing)) => {
                let failure = match &self.first_io_failure {
                    // What callers hear is the first fault (the disk is full), not redb's
                    // "previous I/O error" that follows it.
                    Some(first) if err.is_disk_fault() => first.clone(),
                    None if err.is_disk_fault() => {
                        if let (QueueError::DiskFull(_), Some(guard)) = (&err, &mut self.space) {
                            guard.filled_up();
                        }
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

    /// Opens the queue's files again after a disk fault, as at start: the log's records since
    /// the last checkpoint are replayed into the file (whatever of them the disk kept), the
    /// counts of waiting work are made again, and lanes get hints for the file's tasks. Tasks
    /// handed out stay taken. Readers meanwhile hear that the file is being opened.
    fn reopen(&mut self) -> Result<(), QueueError> {
        // Before the queue file is let go of: one removed lives on only through its handle.
        self.files_in_place()?;
        if let Some(old) = self.shared.take_db(File::Reopening) {
            // Readers hold the file for one read each; the file can only be opened again once
            // the last of them has let go of it.
            let deadline = Instant::now() + REOPEN_WAIT;
            while Arc::strong_count(&old) > 1 {
                if Instant::now() >= deadline {
                    *self.shared.db.write().unwrap_or_else(|e| e.into_inner()) = File::Open(old);
                    return Err(QueueError::Io(
                        "readers still hold the queue file; it is opened again later".into(),
                    ));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        // Neither file stays open while they cannot be opened again: a failing file system
        // (remounted read-only, say) can then be unmounted and repaired under a running agent.
        self.wal = Wal::detached();
        let (db, wal) = (self.files)()?;
        let (wal, epoch) = prepare(&db, wal, self.config.recover_truncate)?;
        self.pending = Pending::count(&db)?;
        *self
            .shared
            .subscription_deliveries
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = self.pending.subscriptions();
        index_lanes(
            &db,
            &mut self.shared.lanes.lock().unwrap_or_else(|e| e.into_inner()),
        )?;
        // Everything the memtable held is in the file now, from the log.
        self.shared.write_memtable().clear();
        *self.shared.db.write().unwrap_or_else(|e| e.into_inner()) = File::Open(Arc::new(db));
        self.wal = wal;
        self.epoch = epoch;
        self.last_checkpoint = Instant::now();
        self.publish_waiting();
        tracing::info!(
            fault = %self.first_io_failure.take().map(|e| e.to_string()).unwrap_or_default(),
            "the queue's files were opened again after a disk fault; writes resume"
        );
        Ok(())
    }

    /// Before the files are opened again by name after a disk fault: whether the names are
    /// the files the queue wrote. A queue file gone or replaced would be opened empty (or
    /// stale) and taken for the queue, and a log gone would be made anew, empty: the files
    /// stay closed and writes stopped until they are back. A log gone while still open is
    /// made again from it first.
    fn files_in_place(&mut self) -> Result<(), QueueError> {
        let Some(placement) = self.placement.clone() else {
            return Ok(());
        };
        match placement.look() {
            Found::InPlace => Ok(()),
            Found::LogGone if !self.wal.is_detached() => self.make_log_again(&placement),
            Found::LogGone => Err(QueueError::Displaced(format!(
                "{} was removed while the queue's files were closed after a disk fault: the \
                 records it held since the last checkpoint are gone; restart the agent with \
                 --recover-truncate to go on without them",
                placement.dir().join(in_place::LOG_FILE).display()
            ))),
            Found::Lost(why) => Err(QueueError::Displaced(why)),
        }
    }

    /// Makes the log again under its name, from the one still open, after it was removed
    /// ([`in_place::make_log_again`]).
    fn make_log_again(&mut self, placement: &Placement) -> Result<(), QueueError> {
        in_place::make_log_again(placement.dir(), &mut self.wal)?;
        placement.remember_log();
        tracing::warn!(
            dir = %placement.dir().display(),
            "queue.wal was removed while the agent runs: made again from the log still open; \
             nothing it held was lost"
        );
        Ok(())
    }

    /// Tells readers the counts of waiting work.
    fn publish_waiting(&self) {
        let total = self.pending.total();
        self.shared
            .waiting_events
            .store(total.events, Ordering::Relaxed);
        self.shared
            .waiting_bytes
            .store(total.bytes, Ordering::Relaxed);
    }

    /// After a group was not committed: its tasks stay taken until a commit succeeds, and
    /// health checks hear that the queue cannot write.
    fn refused(&mut self, completing: &[Placed]) {
        self.release(completing, &[], true);
        self.able(false);
    }

    /// Says whether the queue writes (for the scheduler) and whether it takes new events
    /// (for health checks and callers): only while it writes, the disk is above its margin
    /// and its files are in place.
    fn able(&self, writes: bool) {
        let room = self.space.as_ref().is_none_or(SpaceGuard::had_room) && self.displaced.is_none();
        self.shared
            .writable
            .send_if_modified(|writable| std::mem::replace(writable, writes) != writes);
        let takes = writes && room;
        self.shared
            .accepting
            .send_if_modified(|accepting| std::mem::replace(accepting, takes) != takes);
    }

    /// Whether the queue's disk has the free space it keeps ([`SpaceGuard::check`]); new
    /// events are refused while it has not.
    fn space_left(&mut self) -> Result<(), QueueError> {
        let Some(guard) = &mut self.space else {
            return Ok(());
        };
        let low = guard.check();
        if low.is_err() {
            self.shared
                .accepting
                .send_if_modified(|accepting| std::mem::replace(accepting, false));
        }
        low
    }

    /// Looks at the files' names, at most every [`SPACE_CHECK_EVERY`] unless `asked`
    /// ([`super::in_place`]): a log that is gone is made again from the one still open
    /// (nothing it held is lost); a queue file gone or replaced, or a log that cannot be made
    /// again, stops new events until it is back.
    fn look_at_files(&mut self, asked: bool) {
        let Some(placement) = self.placement.clone() else {
            return;
        };
        if !asked && self.files_checked_at.elapsed() < SPACE_CHECK_EVERY {
            return;
        }
        self.files_checked_at = Instant::now();
        let (displaced, log_gone) = match placement.look() {
            Found::InPlace => (None, false),
            Found::LogGone => match self.make_log_again(&placement) {
                Ok(()) => (None, false),
                Err(err) => (
                    Some(format!(
                        "{} was removed while the agent runs and cannot be made again yet \
                         ({err}): new events are refused and every commit goes into queue.redb \
                         until it is",
                        placement.dir().join(in_place::LOG_FILE).display()
                    )),
                    true,
                ),
            },
            Found::Lost(why) => (Some(why), false),
        };
        self.log_gone = log_gone;
        match (displaced, self.displaced.is_some()) {
            (None, true) => {
                self.displaced = None;
                tracing::warn!(
                    dir = %placement.dir().display(),
                    "the queue's files are in place again: new events are taken"
                );
            }
            (None, false) => {}
            (Some(why), was) => {
                if !was {
                    tracing::error!(error = %why, "a queue file was displaced");
                }
                self.displaced = Some(QueueError::Displaced(why));
            }
        }
        // Read first: the watch's lock is not held while `able` changes it.
        let writes = *self.shared.writable.borrow();
        self.able(writes);
    }

    /// Updates the lane index after a commit: tasks whose outcome was written are no longer
    /// taken, and lanes learn of the tasks added. After a failed commit the tasks whose outcome
    /// was lost stay taken ([`Writer::stranded`]); the next commit that succeeds hands them
    /// back, due again.
    fn release(&mut self, completing: &[Placed], added: &[Placed], failed: bool) {
        if failed {
            self.stranded.extend(completing.iter().cloned());
            return;
        }
        let stranded = std::mem::take(&mut self.stranded);
        let mut lanes = self.shared.lanes.lock().unwrap_or_else(|e| e.into_inner());
        for task in completing {
            lanes.finish(&task.lane, task.seq);
        }
        for task in &stranded {
            // Not recorded: the task is still there, due again (the attempt is made again).
            lanes.finish(&task.lane, task.seq);
            lanes.added(&task.lane, task.due, task.seq);
        }
        for task in added {
            lanes.added(&task.lane, task.due, task.seq);
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
    ) -> Result<Applied, (QueueError, Vec<Placed>)> {
        let completing = completing_of(&works);
        let mut effects = Effects::default();
        // Each finished attempt adds its report.
        let reports_added = works.iter().any(|w| matches!(w, Work::Complete { .. }));
        let result = (|| -> Result<(u64, bool), QueueError> {
            let db = self.shared.db()?;
            let mut txn = db.begin_write().map_err(storage)?;
            let wal = &mut self.wal;
            let (seq, redo, changes, checkpoint) = {
                // Read-locked while the group is applied: only this thread changes it.
                let memtable = self.shared.read_memtable();
                let mut tables = Tables::open(&txn, Some(&memtable))?;
                let seq = machine::apply(
                    &mut tables,
                    &self.config,
                    now_ms(),
                    works,
                    &mut self.pending,
                    &mut effects,
                )?;
                let redo = tables.finish()?;
                let changes = tables.take_changes();
                let checkpoint = closing
                    || self.log_gone
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
                remember(&mut effects, &self.shared);
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
            remember(&mut effects, &self.shared);
            // Readers see the tasks and reports of this commit from now on.
            let mut memtable = self.shared.write_memtable();
            for change in changes {
                memtable.apply(change);
            }
            Ok((seq, durable))
        })();
        // The counts of waiting work follow the commit: kept when it is done, put back when not.
        match &result {
            Ok(_) => self.pending.commit(
                &mut self
                    .shared
                    .subscription_deliveries
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()),
            ),
            Err(_) => self.pending.rollback(),
        }
        self.publish_waiting();
        match result {
            Ok((seq, durable)) => Ok(Applied {
                outcomes: effects.outcomes,
                completing,
                added: effects.added,
                parked_dropped: effects.parked_dropped,
                requests_dropped: effects.requests_dropped,
                reports_added,
                seq,
                durable,
            }),
            Err(err) => Err((err, completing)),
        }
    }
}

/// The tasks whose attempt's outcome `works` record.
fn completing_of(works: &[Work]) -> Vec<Placed> {
    works
        .iter()
        .filter_map(|w| match w {
            Work::Complete { task, .. } => Some(Placed::of(task)),
            _ => None,
        })
        .collect()
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
                let _ = tx.send(failure.map_or(Ok(()), |e| Err(e.clone())));
            }
            (Slot::Close(tx), _) => {
                let _ = tx.send(());
            }
            (Slot::None, _) => {}
        }
    }
}

/// What a committed group did.
struct Applied {
    /// One per work item, in order.
    outcomes: Vec<Done>,
    /// Tasks whose attempt's outcome was written.
    completing: Vec<Placed>,
    /// Tasks added.
    added: Vec<Placed>,
    /// Whether reports were added to the outbox.
    reports_added: bool,
    /// The last sequence number used.
    seq: u64,
    /// Whether the commit is durable (a synced log record or a checkpoint).
    durable: bool,
    /// Deliveries to parked subscriptions not kept (past `max_parked_deliveries`).
    parked_dropped: u64,
    /// Reports that joined the outbox without their request (past half of
    /// `max_pending_report_bytes`).
    requests_dropped: u64,
}

/// Brings the recently accepted events ([`super::recent`]) up to date with a commit's effects.
fn remember(effects: &mut Effects, shared: &Shared) {
    let mut recent = shared.recent();
    recent.age(Instant::now());
    for id in effects.removed.drain(..) {
        recent.remove(&id);
    }
    for (event, reads) in effects.accepted.drain(..) {
        recent.insert(event, reads);
    }
}
