//! The agent's durable queue: accepted events, their pending deliveries (with persistent retry
//! times), and the outbox of attempt reports not yet acknowledged by the control plane.
//!
//! # On disk
//! Two files in the agent's data directory: the write-ahead log `queue.wal` ([`wal`]) and the
//! redb file `queue.redb`:
//!
//! | table | key | value |
//! | --- | --- | --- |
//! | `events` | event key | accepted-at (u64 ms, LE) · matched count (u32, LE) · `herald.v1.Event` |
//! | `accepted_at` | (accepted-at ms, bucket number) | the keys of events one commit accepted then (up to 1,024), sorted, each followed by a NUL byte — the retention sweep's order |
//! | `lanes` | (subscription id, due ms, seq) | attempts made (u32, LE) · event key · (NUL · ordering key, when it has one) |
//! | `ordered` | (subscription id, ordering key, seq) | due ms (u64, LE) · event key |
//! | `outbox` | seq | `herald.v1.Attempt` |
//! | `meta` | name | u64: `seq` (last sequence number), `events` and `bytes` (what `events` holds), `wal_epoch` (the log's epoch, see [`wal`]), `event_keys` (1 once events are keyed by tenant), `evicted` (events removed to keep `max_retained_bytes`) |
//!
//! # Parts
//! The delivery state machine ([`machine`]) holds the rules — accept and dedup, the bounds,
//! ordering-key lines, retries, replays, report acks, the sweep — as functions of a [`view`]
//! of one transaction. The storage engine ([`writer`], [`wal`], [`tables`], [`memtable`])
//! groups commands into commits and makes their changes durable, and [`open`] makes a file
//! ready (recovery, one-time rewrites); the scheduler's index of lanes ([`lanes`]) and the
//! counts of waiting work ([`pending`]) are kept in memory beside it, and [`due`] reads what
//! is due. The records' byte layout is in [`records`], the errors in [`error`].
//!
//! Event ids are unique per tenant, so an event's key is its tenant and id ([`EventKey`],
//! `tenant/id`): the same id sent by two tenants is two events. An id is a duplicate within
//! the dedup window, and while its event still has deliveries to make. Queues written before events
//! were keyed so are rewritten once when they open ([`migrate_event_keys`]).
//!
//! A delivery is a task in its subscription's lane, keyed by the time it is due, so "what is
//! due now in this lane" is a range read and a retry is a move to a later key: retry timers
//! survive restarts, with their attempt counts. Lanes keep subscriptions apart: a lane at its
//! in-flight limit (a slow or dead endpoint) is passed over without reading its backlog, via
//! an in-memory index of each lane's earliest due task ([`lanes`], rebuilt at open).
//!
//! # Ordering keys
//! Deliveries of events with an ordering key go out one at a time per (subscription, key), in
//! the order the events were accepted. Every such delivery has an entry in `ordered`; only the
//! earliest of each (subscription, key) — the head — also has a task in `lanes`. The others
//! wait in `ordered`, out of the scheduler's way. When the head is finished (delivered, failed
//! for good, or skipped) its entry goes and the next one gets its task, in the same commit. A
//! head that is retried keeps its place, so later events of the key wait for it.
//!
//! # Writes and fsync
//! One writer thread owns every write. It takes all commands waiting in its channel (up to
//! [`MAX_GROUP`]), applies them in one write transaction and commits it once; concurrent
//! `Emit` calls therefore share commits (group commit): durability costs one fsync per group,
//! not per event. An event and all of its tasks are written in the same transaction; an
//! `EmitBatch` is all-or-nothing. A finished attempt's task update and its report are written
//! together too.
//!
//! Writes go in this order: the commit's changes are appended to the log, the log is synced
//! (`fdatasync`) when a caller waits on the group, the callers are answered, and the redb
//! commit is made without an fsync. Every [`CHECKPOINT_EVERY`] (and when a group is too
//! large for the log, the log is full, or the queue closes) the commit is instead a durable
//! redb commit — a checkpoint — which starts a new log epoch. With `durable` off the log is
//! written but never synced: a process crash loses nothing, a power loss what was not synced.
//!
//! New tasks and reports do not go into the file's tables in those commits: they wait in
//! the [`memtable`] (and in the log) until the next checkpoint writes the ones still pending.
//! Most are finished or acked before then and never touch the file.
//!
//! Events are written to the file as they are accepted, and each is also kept in memory
//! ([`recent`]) until its deliveries' first attempts have read it, so those attempts (nearly
//! all attempts) do not read the file.
//!
//! A group holding only attempt outcomes and report acks — work no caller waits on — is not
//! synced; the next sync makes it durable, and one comes within `durable_lag` (50 ms by
//! default; the writer forces it on a busy queue, a persist task on an idle one). A crash
//! before it loses only such outcomes: those attempts are made again, as if they had been in
//! flight. The reporter reads only durable reports ([`Queue::reports`]), so the control plane
//! never logs an attempt whose outcome a crash took back.
//!
//! # Recovery
//! redb commits are atomic: after a crash (even mid-commit, a torn write) the file opens at the
//! last checkpoint. Opening then replays the log records of the epoch that checkpoint names, in
//! order, up to the first torn or missing one ([`wal`]), and makes a checkpoint of the result.
//! Every acknowledged commit was synced in the log, so it is back. Attempts that were in
//! flight at the crash, or whose outcome was not yet durable, were never recorded as done, so
//! their tasks are due again and are retried with their attempt counts — the only way a
//! receiver can see an event twice (at-least-once delivery).
//!
//! # Limits
//! The queue refuses new events with [`QueueError::Full`] when `max_events` events (or
//! `max_bytes` of payload) still have deliveries to make, or when the tenant holds its share
//! of that ([`pending`]); delivered events kept for replay and dedup never cause a refusal,
//! and are bounded by `max_retained_bytes` (the oldest go first). It refuses with
//! [`QueueError::DiskFull`] or [`QueueError::Io`] when the disk refuses writes, and says so to
//! health checks ([`Queue::accepting`]) and the scheduler ([`Queue::writable`]). Below the
//! disk's margin only new deliveries (events, replays) are refused: outcomes, acks and the
//! sweep spend the margin, so deliveries already taken go on. After an I/O error the writer opens the files again
//! (redb refuses everything after one) and replays the log, so writes resume once the disk
//! allows, without a restart. An attempt whose outcome the disk refused stays out of
//! the scheduler's reach until a commit succeeds (at most one extra delivery, never a loop).
//! Nothing already accepted is lost.

mod due;
mod error;
mod in_place;
mod lanes;
mod lease;
mod machine;
mod memtable;
mod open;
mod pending;
mod recent;
mod records;
mod space;
mod tables;
mod view;
mod wal;
mod writer;

pub use error::QueueError;
pub use lease::Lease;
pub use pending::Tally;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald_proto::v1 as pb;
use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTableMetadata, TableDefinition};
use tokio::sync::{Notify, mpsc, oneshot};

use self::due::{DueRead, LaneDue, lane_tasks, lanes_of};
use self::error::storage;
use self::memtable::{Memtable, Overlay};
use self::open::{index_lanes, prepare};
use self::records::{
    decode_bucket, decode_event, decode_task, decode_waiting, encode_bucket, encode_event,
    encode_task, encode_waiting,
};
use self::writer::Command;

const EVENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("events");
/// The retention order: per time, the events accepted then, in buckets of up to 1,024 keys
/// per commit ([`tables`]).
const ACCEPTED: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("accepted_at");
/// The retention order as it was kept before (one entry per event), rewritten into
/// [`ACCEPTED`] when a queue opens ([`open::migrate_accepted`]).
const ACCEPTED_BY_EVENT: TableDefinition<(u64, &str), ()> = TableDefinition::new("accepted");
const TASKS: TableDefinition<(&str, u64, u64), &[u8]> = TableDefinition::new("lanes");
const ORDERED: TableDefinition<(&str, &str, u64), &[u8]> = TableDefinition::new("ordered");
const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const META_SEQ: &str = "seq";
const META_EVENTS: &str = "events";
const META_BYTES: &str = "bytes";
/// The write-ahead log's epoch named by the last checkpoint (see [`wal`]).
const META_EPOCH: &str = "wal_epoch";
/// 1 once the file's events are keyed by tenant and id ([`EventKey`]).
const META_EVENT_KEYS: &str = "event_keys";
/// Delivered events removed before their retention to keep `max_retained_bytes`.
const META_EVICTED: &str = "evicted";
/// The bytes of the reports in the outbox ([`QueueConfig::max_pending_report_bytes`]).
const META_OUTBOX_BYTES: &str = "outbox_bytes";

/// A hash map for the queue's in-memory indexes, which the writer updates for every event:
/// foldhash is several times faster than the default SipHash on short keys, and seeded per
/// map.
type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
/// A hash set, as [`FastMap`].
type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// The queue file's page cache by default (`--queue-cache-bytes`). redb's default (1 GiB)
/// would let a backlog grow the agent's memory far past its budget; the hot pages (the lanes'
/// heads, recent events, the outbox) fit in far less, and the OS's page cache holds the rest
/// of the file.
pub const DEFAULT_CACHE_BYTES: usize = 8 * 1024 * 1024;
/// The most commands applied in one commit.
pub const MAX_GROUP: usize = 4096;
/// Commands waiting for the writer before callers wait for room.
const WRITER_CHANNEL: usize = 16 * 1024;

/// Queue settings.
#[derive(Clone, Debug)]
pub struct QueueConfig {
    /// At most this many events with deliveries to make (parked ones included); past it new
    /// events are refused ([`pending`]).
    pub max_events: u64,
    /// At most this many payload bytes of such events.
    pub max_bytes: u64,
    /// The share (0 to 1) of either bound one tenant may hold.
    pub max_share: f64,
    /// At most this many attempt reports waiting for the control plane's acknowledgement;
    /// past it new events with deliveries are refused ([`QueueError::Full`]).
    pub max_pending_reports: u64,
    /// At most this many bytes of attempt reports waiting for the acknowledgement; past it new
    /// events with deliveries are refused. Past half of it, reports join the outbox without
    /// the copy of the request they sent (the attempt itself is always reported).
    pub max_pending_report_bytes: u64,
    /// At most this many deliveries kept for one parked (disabled) subscription; past it an
    /// event's delivery to it is not kept, and a skipped attempt is reported instead.
    pub max_parked_deliveries: u64,
    /// The queue file's page cache, in bytes ([`DEFAULT_CACHE_BYTES`]).
    pub cache_bytes: usize,
    /// Open even when the write-ahead log holds a damaged record that was synced: keep what
    /// precedes it and drop the records after it ([`QueueError::DamagedLog`] otherwise).
    pub recover_truncate: bool,
    /// The free bytes the queue keeps on its disk: below them commits are refused as by a
    /// full disk (before a write could fail half-way), and resume by themselves once space is
    /// back ([`DEFAULT_MIN_FREE_BYTES`] unless a test needs another).
    pub min_free_bytes: u64,
    /// At most this many payload bytes of delivered events kept for replay and duplicate
    /// detection; past it the oldest go before their retention (never a refusal).
    pub max_retained_bytes: u64,
    /// How long events are kept after acceptance (for replay and duplicate detection).
    pub retention: Duration,
    /// An event id seen within this window is a duplicate.
    pub dedup_window: Duration,
    /// Fsync every commit (turning it off risks losing acknowledged events on power loss).
    pub durable: bool,
    /// The longest an attempt's outcome may stay committed without an fsync (see "Writes and
    /// fsync" above); [`DURABLE_LAG`] unless a test needs another.
    pub durable_lag: Duration,
    /// The longest time between checkpoints ([`CHECKPOINT_EVERY`] unless a test needs
    /// another): it bounds the log a restart replays, and the memtable.
    pub checkpoint_every: Duration,
}

/// The default [`QueueConfig::min_free_bytes`]: room for the largest checkpoint a busy queue
/// makes, and the file's growth.
pub const DEFAULT_MIN_FREE_BYTES: u64 = 16 * 1024 * 1024;

/// The default [`QueueConfig::checkpoint_every`].
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// The default [`QueueConfig::durable_lag`]: a crash repeats at most this much of the attempts
/// made just before it.
pub const DURABLE_LAG: Duration = Duration::from_millis(50);

/// Which event a record is about. Ids are unique per tenant (two shops may both send
/// `order-42`), so an event is known by its tenant and id, kept as `tenant/id`: neither
/// tenants nor event ids may contain `/`. A key written before events were keyed by tenant
/// holds the id alone (its tenant is then empty).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventKey(Arc<str>);

impl EventKey {
    /// The key of `tenant`'s event `id`.
    pub fn new(tenant: &str, id: &str) -> Self {
        EventKey([tenant, "/", id].concat().into())
    }

    /// The key of `event`.
    pub fn of(event: &pb::Event) -> Self {
        Self::new(&event.tenant, &event.id)
    }

    /// A key as stored.
    fn stored(text: String) -> Self {
        EventKey(text.into())
    }

    /// The event's tenant.
    pub fn tenant(&self) -> &str {
        self.0.split_once('/').map_or("", |(tenant, _)| tenant)
    }

    /// The event's id.
    pub fn id(&self) -> &str {
        self.0.split_once('/').map_or(&self.0, |(_, id)| id)
    }

    /// The key as stored.
    fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for EventKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// An event to store with the subscriptions it goes to.
#[derive(Clone, Debug, Default)]
pub struct NewEvent {
    /// The event, its id already assigned.
    pub event: pb::Event,
    /// Subscription ids to deliver it to.
    pub subscriptions: Vec<String>,
    /// Those of them that are disabled: their deliveries are parked until they are enabled,
    /// at most `max_parked_deliveries` each.
    pub parked: Vec<String>,
}

/// What happened to an accepted event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// Subscriptions it goes to (for a duplicate: as counted the first time).
    pub matched: u32,
    /// The id was accepted before, within the dedup window; nothing was stored.
    pub duplicate: bool,
}

/// A pending delivery.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Task {
    /// The subscription (the task's lane).
    pub subscription_id: String,
    /// When it is due (ms since the epoch).
    pub due: u64,
    /// Its unique sequence number.
    pub seq: u64,
    /// The event.
    pub event: EventKey,
    /// Attempts already made.
    pub attempts: u32,
    /// The event's ordering key; empty when it has none.
    pub ordering_key: String,
}

impl Task {
    fn key(&self) -> (&str, u64, u64) {
        (&self.subscription_id, self.due, self.seq)
    }
}

/// What comes after an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// No more attempts (delivered, failed for good, or skipped).
    Done,
    /// Try again at this time (ms since the epoch).
    RetryAt(u64),
}

/// A delivery to make again.
#[derive(Clone, Debug)]
pub struct Replay {
    /// The stored event.
    pub event: EventKey,
    /// Where to.
    pub subscription_id: String,
    /// Attempts already made (logged); the next attempt takes the number after it.
    pub attempts_made: u32,
}

/// How full the queue is (see [`Queue::stats`]).
#[derive(Clone, Debug)]
pub struct QueueStats {
    /// Events held: pending, and delivered ones kept for the retention period.
    pub events: u64,
    /// Their payload bytes.
    pub bytes: u64,
    /// Events with deliveries to make (what the bounds count), and their payload bytes.
    pub waiting: pending::Tally,
    /// Delivered events removed before their retention to keep the kept ones under
    /// `max_retained_bytes`, since the queue was made.
    pub evicted: u64,
    /// Deliveries to parked subscriptions not kept (past `max_parked_deliveries`) since the
    /// queue opened.
    pub parked_dropped: u64,
    /// Deliveries not finished yet (in flight, due, or waiting for a retry).
    pub pending_deliveries: u64,
    /// Attempt reports not yet acknowledged by the control plane.
    pub pending_reports: u64,
    /// Their bytes.
    pub pending_report_bytes: u64,
    /// Reports that joined the outbox without their request since the queue opened (it was
    /// past half of `max_pending_report_bytes`).
    pub requests_dropped: u64,
    /// When the oldest event among the lanes' next deliveries was accepted (ms since the
    /// epoch); `None` when nothing is pending.
    pub oldest_pending_accepted_ms: Option<u64>,
}

/// A stored event and when it was accepted.
#[derive(Clone, Debug)]
pub struct StoredEvent {
    /// The event.
    pub event: pb::Event,
    /// When it was accepted (ms since the epoch).
    pub accepted_ms: u64,
}

/// The queue; cloning shares it.
#[derive(Clone)]
pub struct Queue {
    writer: mpsc::Sender<Command>,
    shared: Arc<Shared>,
}

/// Opens the queue's two files, the redb file and the write-ahead log: at start, and again
/// after a disk fault (redb refuses every read and write after an I/O error until the file
/// is opened anew).
type OpenFiles =
    Box<dyn Fn() -> Result<(Database, Box<dyn redb::StorageBackend>), QueueError> + Send>;

/// Where the queue file is.
enum File {
    /// Open: each read or write transaction holds it for its duration.
    Open(Arc<Database>),
    /// Being opened again by the writer after a disk fault.
    Reopening,
    /// The queue was closed.
    Closed,
}

/// State the writer and the readers share.
struct Shared {
    /// The queue file.
    db: RwLock<File>,
    /// Which lanes have work, and which tasks are handed out.
    lanes: Mutex<lanes::Lanes>,
    /// Woken when tasks were added or finished (the scheduler's cue).
    tasks_changed: Notify,
    /// Woken when reports in the outbox became durable (readable by the reporter).
    reports_added: Notify,
    /// Reports up to this sequence number are durable: the reporter may send them.
    reportable: AtomicU64,
    /// Woken when a commit was made without an fsync (the persist task's cue).
    unpersisted: Notify,
    /// Attempts ended and not yet noted in `lanes` (see [`Queue::attempted`]).
    attempts_ended: Mutex<Vec<(String, u64)>>,
    /// The writer's thread, woken out of its linger by commands a caller waits on.
    writer_thread: std::sync::OnceLock<std::thread::Thread>,
    /// Tasks and reports added since the last checkpoint ([`memtable`]). Readers take it
    /// before they open a snapshot of the file.
    memtable: RwLock<Memtable>,
    /// Events accepted moments ago, for their first attempts ([`recent`]).
    recent: Mutex<recent::RecentEvents>,
    /// Whether the last commit succeeded: false once the disk refused one (full or failing).
    /// Attempts start only while it is true.
    writable: tokio::sync::watch::Sender<bool>,
    /// Whether new events are taken: while the queue writes and its disk is above the margin.
    accepting: tokio::sync::watch::Sender<bool>,
    /// The events with deliveries to make, and their payload bytes, as of the last commit
    /// ([`pending`]; the writer keeps the counts).
    waiting_events: AtomicU64,
    waiting_bytes: AtomicU64,
    /// Deliveries to make per subscription as of the last commit (the writer keeps them):
    /// what [`Queue::deliveries_to`] reads.
    subscription_deliveries: Mutex<FastMap<String, u64>>,
    /// Deliveries to parked subscriptions not kept since the queue opened.
    parked_dropped: AtomicU64,
    /// See [`QueueStats::requests_dropped`].
    requests_dropped: AtomicU64,
}

impl Shared {
    /// The queue file, for one read or one write transaction.
    fn db(&self) -> Result<Arc<Database>, QueueError> {
        match &*self.db.read().unwrap_or_else(|e| e.into_inner()) {
            File::Open(db) => Ok(db.clone()),
            File::Reopening => Err(QueueError::Io(
                "the queue file is being opened again after a disk fault".into(),
            )),
            File::Closed => Err(QueueError::Closed),
        }
    }

    /// Takes the queue file out of readers' reach, leaving `instead`.
    fn take_db(&self, instead: File) -> Option<Arc<Database>> {
        let mut slot = self.db.write().unwrap_or_else(|e| e.into_inner());
        match std::mem::replace(&mut *slot, instead) {
            File::Open(db) => Some(db),
            File::Reopening | File::Closed => None,
        }
    }

    fn read_memtable(&self) -> RwLockReadGuard<'_, Memtable> {
        self.memtable.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_memtable(&self) -> RwLockWriteGuard<'_, Memtable> {
        self.memtable.write().unwrap_or_else(|e| e.into_inner())
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, recent::RecentEvents> {
        self.recent.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Cuts the writer's linger short: a command with a caller waiting on it was sent.
    fn wake_writer(&self) {
        if let Some(thread) = self.writer_thread.get() {
            thread.unpark();
        }
    }
}

/// Refuses a `queue.redb` that is there but empty while `queue.wal` holds a record: redb
/// would make it a new, empty queue, and the events it held would be gone without a word (a
/// file cut to nothing by a repair or a copy). An empty file beside an empty log is a first
/// start cut short; a missing one is the operator's doing, and said at start.
fn emptied(dir: &Path) -> Result<(), QueueError> {
    let queue = dir.join(in_place::QUEUE_FILE);
    if !std::fs::metadata(&queue).is_ok_and(|meta| meta.is_file() && meta.len() == 0) {
        return Ok(());
    }
    // The first record's header: zeros in a log never written.
    let mut head = [0u8; wal::HEADER];
    let log_written = std::fs::File::open(dir.join(in_place::LOG_FILE))
        .and_then(|mut log| std::io::Read::read_exact(&mut log, &mut head))
        .is_ok_and(|()| head != [0u8; wal::HEADER]);
    if log_written {
        return Err(QueueError::DamagedFile(format!(
            "{} is empty, though {} holds records written into it: restore it from a backup, \
             or move both files away to start with an empty queue",
            queue.display(),
            in_place::LOG_FILE
        )));
    }
    Ok(())
}

/// Refuses a queue file the agent could never use, whatever the disk does: one it may not open
/// for reading and writing, or one that is not a regular file. (A full or failing disk is a
/// fault the agent waits out; these are not.) Makes the file, empty, if there is none.
fn usable(path: &Path) -> Result<(), QueueError> {
    let unusable =
        |why: &dyn std::fmt::Display| QueueError::Unusable(format!("{}: {why}", path.display()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path);
    match file {
        Ok(file) => match file.metadata() {
            Ok(meta) if meta.is_file() => Ok(()),
            Ok(_) => Err(unusable(&"not a regular file")),
            Err(err) => Err(storage(err)),
        },
        Err(err)
            if matches!(
                err.kind(),
                std::io::ErrorKind::PermissionDenied
                    | std::io::ErrorKind::IsADirectory
                    | std::io::ErrorKind::NotADirectory
            ) =>
        {
            Err(unusable(&err))
        }
        Err(err) => Err(storage(err)),
    }
}

impl Queue {
    /// Opens (or creates) `dir/queue.redb` and `dir/queue.wal`, replays the log, and starts
    /// the writer.
    pub fn open(dir: &Path, mut config: QueueConfig) -> Result<Self, QueueError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            let at = dir.display();
            match storage(e) {
                QueueError::DiskFull(e) => QueueError::DiskFull(format!("{at}: {e}")),
                QueueError::Io(e) => QueueError::Io(format!("{at}: {e}")),
                other => other,
            }
        })?;
        emptied(dir)?;
        for name in [in_place::QUEUE_FILE, in_place::LOG_FILE] {
            usable(&dir.join(name))?;
        }
        if let Ok(stat) = rustix::fs::statvfs(dir) {
            let disk = stat.f_blocks.saturating_mul(stat.f_frsize);
            let bound = space::retained_bound(config.max_retained_bytes, disk);
            if bound < config.max_retained_bytes {
                tracing::info!(
                    max_retained_bytes = bound,
                    disk_bytes = disk,
                    "delivered events kept for replay and dedup are bounded by the disk's size \
                     (an eighth of it), below --max-retained-bytes"
                );
                config.max_retained_bytes = bound;
            }
        }
        let space = space::SpaceGuard::new(dir.to_owned(), config.min_free_bytes);
        let placement = Arc::new(in_place::Placement::new(dir.to_owned()));
        let dir = dir.to_owned();
        let cache_bytes = config.cache_bytes;
        let files: OpenFiles = Box::new(move || {
            let path = dir.join(in_place::QUEUE_FILE);
            let db = redb::Builder::new()
                .set_cache_size(cache_bytes)
                .create(&path)
                .map_err(|err| match err {
                    redb::DatabaseError::DatabaseAlreadyOpen => QueueError::Storage(format!(
                        "{} is open in another process: is another agent (or herald dev) \
                         running on this --data-dir?",
                        path.display()
                    )),
                    redb::DatabaseError::Storage(redb::StorageError::Io(err))
                        if err.kind() == std::io::ErrorKind::InvalidData =>
                    {
                        QueueError::DamagedFile(format!(
                            "{} is damaged or not one of Herald's files ({err})",
                            path.display()
                        ))
                    }
                    redb::DatabaseError::Storage(redb::StorageError::Corrupted(why)) => {
                        QueueError::DamagedFile(format!("{} is damaged ({why})", path.display()))
                    }
                    other => storage(other),
                })?;
            let wal = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(dir.join(in_place::LOG_FILE))
                .map_err(storage)?;
            // Both files' names on disk before the queue file names a log epoch: a log lost
            // with its directory entry would read as one cut short.
            if let Err(err) = std::fs::File::open(&dir).and_then(|d| d.sync_all()) {
                tracing::warn!(dir = %dir.display(), error = %err, "cannot sync the queue's directory");
            }
            let wal = redb::backends::FileBackend::new(wal).map_err(storage)?;
            Ok((db, Box::new(wal) as Box<dyn redb::StorageBackend>))
        });
        Self::start(files, config, Some(space), Some(placement))
    }

    /// Opens the queue's files with `files` and starts the queue on them; `space` and
    /// `placement` watch the disk and names of a queue on files (a test backend has neither).
    fn start(
        files: OpenFiles,
        config: QueueConfig,
        space: Option<space::SpaceGuard>,
        placement: Option<Arc<in_place::Placement>>,
    ) -> Result<Self, QueueError> {
        let (db, wal) = files()?;
        let (wal, epoch) = prepare(&db, wal, config.recover_truncate)?;
        if let Some(placement) = &placement {
            placement.remember();
        }
        let pending = pending::Pending::count(&db)?;
        let mut lanes = lanes::Lanes::default();
        index_lanes(&db, &mut lanes)?;
        // Everything in the file is durable.
        let seq = {
            let txn = db.begin_read().map_err(storage)?;
            let meta = txn.open_table(META).map_err(storage)?;
            meta.get(META_SEQ)
                .map_err(storage)?
                .map_or(0, |v| v.value())
        };
        // A disk already below the margin: no new events (and health says so) from the start,
        // not from the first refused one on; deliveries go on, spending the margin.
        let room_at_open = space.as_ref().is_none_or(space::SpaceGuard::has_room);
        if let (false, Some(space)) = (room_at_open, &space) {
            tracing::error!(
                dir = %space.dir.display(),
                min_free_bytes = space.min_free,
                "the queue's disk has less free space than the queue keeps: new events are \
                 refused until there is room"
            );
        }
        let shared = Arc::new(Shared {
            db: RwLock::new(File::Open(Arc::new(db))),
            lanes: Mutex::new(lanes),
            tasks_changed: Notify::new(),
            reports_added: Notify::new(),
            reportable: AtomicU64::new(seq),
            unpersisted: Notify::new(),
            attempts_ended: Mutex::new(Vec::new()),
            writer_thread: std::sync::OnceLock::new(),
            memtable: RwLock::new(Memtable::default()),
            recent: Mutex::new(recent::RecentEvents::default()),
            writable: tokio::sync::watch::Sender::new(true),
            accepting: tokio::sync::watch::Sender::new(room_at_open),
            waiting_events: AtomicU64::new(pending.total().events),
            waiting_bytes: AtomicU64::new(pending.total().bytes),
            subscription_deliveries: Mutex::new(pending.subscriptions()),
            parked_dropped: AtomicU64::new(0),
            requests_dropped: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel(WRITER_CHANNEL);
        let lag = config.durable_lag;
        let space_watched = space.as_ref().map(|g| (g.dir.clone(), g.min_free));
        writer::spawn(
            files,
            config,
            (wal, epoch),
            (space, placement.clone(), pending),
            rx,
            shared.clone(),
        );
        tokio::spawn(persist(tx.downgrade(), shared.clone(), lag));
        tokio::spawn(retry_writes(
            tx.downgrade(),
            shared.clone(),
            space_watched,
            placement,
        ));
        Ok(Queue { writer: tx, shared })
    }

    /// Stores events and their deliveries durably (all or nothing), then answers.
    pub async fn accept(&self, events: Vec<NewEvent>) -> Result<Vec<Accepted>, QueueError> {
        let (reply, answer) = oneshot::channel();
        self.writer
            .send(Command::Accept { events, reply })
            .await
            .map_err(|_| QueueError::Closed)?;
        self.shared.wake_writer();
        answer.await.map_err(|_| QueueError::Closed)?
    }

    /// Up to `limit` tasks due at `now_ms`, each taken while its [`Lease`] lives, never more
    /// from one subscription than `room(subscription, in_flight)` allows given the tasks of
    /// that lane already in flight.
    pub fn due(
        &self,
        now_ms: u64,
        limit: usize,
        room: impl Fn(&str, usize) -> usize,
    ) -> Result<Vec<Lease>, QueueError> {
        let mut out = Vec::new();
        // Lanes are read a batch at a time after a cursor, as the visits need them: a
        // scheduler wanting a few tasks reads a few lanes, not every due lane of a wide
        // fan-out. Each batch is weighed by `room` — the scheduler's admission policy (width,
        // breaker, rate limit) — with no lock of the queue held, then visited. A lane visited
        // may get a later hint that is still due and be met again further on; it is skipped
        // then, because its room was decided once for this call (a rate limit's tokens are only
        // spent once the tasks are handed out). The cursor only moves forward, so every call
        // ends. Between the weighing and the visit a lane's attempts in flight can only end,
        // so the room weighed is never too large.
        let mut cursor: Option<(u64, String)> = None;
        let mut visited = std::collections::HashSet::new();
        while out.len() < limit {
            let batch = self.lanes_due(now_ms, cursor.as_ref(), limit.clamp(8, 64));
            let Some(last) = batch.last() else {
                break;
            };
            cursor = Some((last.due, last.lane.clone()));
            let admitted: Vec<(String, usize)> = batch
                .into_iter()
                .filter(|due| visited.insert(due.lane.clone()))
                .map(|due| {
                    let room = room(&due.lane, due.in_flight);
                    (due.lane, room)
                })
                .filter(|(_, room)| *room > 0)
                .collect();
            if admitted.is_empty() {
                continue;
            }
            // The lock first, then the snapshot: the writer updates the index only after its
            // commit, so a snapshot taken under the lock is never older than the index. (The
            // other order could read a snapshot without a lane's new tasks, clear its hint and
            // strand them, or hand out again a task whose completion was just committed.)
            let mut lanes = self.lock_lanes();
            let memtable = self.shared.read_memtable();
            let txn = self.shared.db()?.begin_read().map_err(storage)?;
            let tasks = txn.open_table(TASKS).map_err(storage)?;
            let read = DueRead {
                tasks: &tasks,
                memtable: &memtable,
                now_ms,
                limit,
            };
            for (lane, room) in admitted {
                if out.len() >= limit {
                    break;
                }
                read.visit(&mut lanes, &lane, room, &mut out)?;
            }
        }
        Ok(out
            .into_iter()
            .map(|task| Lease::new(task, self.clone()))
            .collect())
    }

    /// Hands `task`, taken and not attempted, back to its lane as it was (its lease was
    /// dropped unfinished). Nothing on disk changes.
    fn release(&self, task: &Task) {
        let mut lanes = self.lock_lanes();
        lanes.finish(&task.subscription_id, task.seq);
        lanes.added(&task.subscription_id, task.due, task.seq);
    }

    /// The attempt of `task` (taken) has ended: its lane has room for another while its
    /// outcome is on its way to the writer. The task stays taken until that outcome commits,
    /// which also wakes the scheduler (one visit of the lanes then serves many such ends).
    fn attempted(&self, task: &Task) {
        // Noted aside and applied at the next use of the index, so that ending attempts never
        // wait for a visit of the lanes to let go of the index.
        self.shared
            .attempts_ended
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((task.subscription_id.clone(), task.seq));
    }

    /// When the earliest task of a lane with room (as in [`Queue::due`]) is due (ms), if any.
    pub fn next_due(&self, room: impl Fn(&str, usize) -> usize) -> Option<u64> {
        let mut cursor: Option<(u64, String)> = None;
        loop {
            let batch = self.lanes_due(u64::MAX, cursor.as_ref(), 64);
            let last = batch.last()?;
            cursor = Some((last.due, last.lane.clone()));
            if let Some(first) = batch.iter().find(|due| room(&due.lane, due.in_flight) > 0) {
                return Some(first.due);
            }
        }
    }

    /// Up to `max` lanes hinted at or before `now_ms`, after `cursor`, earliest first, with
    /// their attempts in flight: read under the index's lock, which is let go before the
    /// scheduler weighs them.
    fn lanes_due(&self, now_ms: u64, cursor: Option<&(u64, String)>, max: usize) -> Vec<LaneDue> {
        let lanes = self.lock_lanes();
        lanes
            .due_lanes(now_ms, cursor, max)
            .into_iter()
            .map(|(due, lane)| LaneDue {
                due,
                in_flight: lanes.in_flight(&lane),
                lane,
            })
            .collect()
    }

    /// Tasks in lanes: in flight, due, or scheduled for a retry. Deliveries waiting behind an
    /// earlier event of their ordering key are counted once their turn comes.
    pub fn pending_tasks(&self) -> Result<u64, QueueError> {
        let memtable = self.shared.read_memtable();
        let txn = self.shared.db()?.begin_read().map_err(storage)?;
        let in_file = txn
            .open_table(TASKS)
            .map_err(storage)?
            .len()
            .map_err(storage)?;
        Ok(in_file + memtable.task_count())
    }

    /// Queues deliveries of stored events again (a replay), due now; one result per item, in
    /// order: queued, or why not (the event is past retention).
    pub async fn replay(&self, items: Vec<Replay>) -> Result<Vec<Result<(), String>>, QueueError> {
        let (reply, answer) = oneshot::channel();
        self.writer
            .send(Command::Replay { items, reply })
            .await
            .map_err(|_| QueueError::Closed)?;
        self.shared.wake_writer();
        answer.await.map_err(|_| QueueError::Closed)?
    }

    /// Deliveries still to make to these subscriptions, as of the last commit: for the
    /// disabled ones, the deliveries parked until they are enabled.
    pub fn deliveries_to<'a>(&self, subscriptions: impl IntoIterator<Item = &'a str>) -> u64 {
        let counts = self
            .shared
            .subscription_deliveries
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        subscriptions
            .into_iter()
            .map(|id| counts.get(id).copied().unwrap_or(0))
            .sum()
    }

    /// How full the queue is, for monitoring.
    pub fn stats(&self) -> Result<QueueStats, QueueError> {
        self.stats_beside_parked(|_| false)
    }

    /// [`Queue::stats`], with the deliveries of the subscriptions `parked` names (disabled
    /// ones, whose deliveries wait on purpose) left out of the oldest delivery's age, so that
    /// an alert on it fires for deliveries falling behind, not for a subscription switched off.
    pub fn stats_beside_parked(
        &self,
        parked: impl Fn(&str) -> bool,
    ) -> Result<QueueStats, QueueError> {
        let memtable = self.shared.read_memtable();
        let txn = self.shared.db()?.begin_read().map_err(storage)?;
        let meta = txn.open_table(META).map_err(storage)?;
        let events = meta
            .get(META_EVENTS)
            .map_err(storage)?
            .map_or(0, |v| v.value());
        let bytes = meta
            .get(META_BYTES)
            .map_err(storage)?
            .map_or(0, |v| v.value());
        let waiting = pending::Tally {
            events: self.shared.waiting_events.load(Ordering::Relaxed),
            bytes: self.shared.waiting_bytes.load(Ordering::Relaxed),
        };
        let evicted = meta
            .get(META_EVICTED)
            .map_err(storage)?
            .map_or(0, |v| v.value());
        let pending_report_bytes = meta
            .get(META_OUTBOX_BYTES)
            .map_err(storage)?
            .map_or(0, |v| v.value());
        let tasks = txn.open_table(TASKS).map_err(storage)?;
        let pending = tasks.len().map_err(storage)? + memtable.task_count();
        let reports = txn
            .open_table(OUTBOX)
            .map_err(storage)?
            .len()
            .map_err(storage)?
            + memtable.report_count();
        // The oldest event among each lane's next delivery: one read per lane, not a scan of
        // the backlog (a lane's later tasks are usually younger than its head).
        let stored = txn.open_table(EVENTS).map_err(storage)?;
        let mut oldest_accepted_ms: Option<u64> = None;
        for lane in lanes_of(&tasks, &memtable)? {
            if parked(&lane) {
                continue;
            }
            let Some(entry) = lane_tasks(&tasks, &memtable, &lane, (0, 0))?.next() else {
                continue;
            };
            let (slot, value) = entry.map_err(storage)?;
            let task = decode_task((&lane, slot.0, slot.1), value.bytes())?;
            if let Some(event) = stored.get(task.event.as_str()).map_err(storage)? {
                let accepted = decode_event(event.value())?.accepted_ms;
                oldest_accepted_ms = Some(oldest_accepted_ms.map_or(accepted, |o| o.min(accepted)));
            }
        }
        Ok(QueueStats {
            events,
            bytes,
            waiting,
            evicted,
            parked_dropped: self.shared.parked_dropped.load(Ordering::Relaxed),
            pending_deliveries: pending,
            pending_reports: reports,
            pending_report_bytes,
            requests_dropped: self.shared.requests_dropped.load(Ordering::Relaxed),
            oldest_pending_accepted_ms: oldest_accepted_ms,
        })
    }

    /// A stored event, for an attempt: an event accepted moments ago comes from memory
    /// ([`recent`]), any other from the file.
    pub fn event(&self, key: &EventKey) -> Result<Option<Arc<StoredEvent>>, QueueError> {
        if let Some(event) = self.shared.recent().read(key) {
            return Ok(Some(event));
        }
        let txn = self.shared.db()?.begin_read().map_err(storage)?;
        let events = txn.open_table(EVENTS).map_err(storage)?;
        let Some(value) = events.get(key.as_str()).map_err(storage)? else {
            return Ok(None);
        };
        let stored = decode_event(value.value())?;
        Ok(Some(Arc::new(StoredEvent {
            event: stored.event,
            accepted_ms: stored.accepted_ms,
        })))
    }

    /// Records the outcome of an attempt of `task` and its report, in one commit. The task
    /// stays in flight (not handed out again) until that commit is done.
    async fn complete(
        &self,
        task: Task,
        next: Next,
        report: pb::Attempt,
    ) -> Result<(), QueueError> {
        self.writer
            .send(Command::Complete {
                task,
                next,
                report: Box::new(report),
            })
            .await
            .map_err(|_| QueueError::Closed)
    }

    /// Up to `limit` durable reports from the outbox with sequence numbers above `after`, in
    /// order. A report not yet durable is not handed out: a crash could still take back its
    /// attempt's outcome (and the attempt would be made again).
    pub fn reports(&self, after: u64, limit: usize) -> Result<Vec<(u64, pb::Attempt)>, QueueError> {
        // Read before the snapshot opens, so the snapshot holds every report up to it.
        let durable = self.shared.reportable.load(Ordering::Acquire);
        let memtable = self.shared.read_memtable();
        let txn = self.shared.db()?.begin_read().map_err(storage)?;
        let outbox = txn.open_table(OUTBOX).map_err(storage)?;
        let mut out = Vec::new();
        if durable <= after {
            return Ok(out);
        }
        let file = outbox
            .range(after + 1..=durable)
            .map_err(storage)?
            .map(|entry| entry.map(|(seq, value)| (seq.value(), value)));
        let memory = memtable.reports_in(after + 1, durable);
        for entry in Overlay::new(file, memory).take(limit) {
            let (seq, value) = entry.map_err(storage)?;
            let attempt = pb::Attempt::decode(value.bytes()).map_err(storage)?;
            out.push((seq, attempt));
        }
        Ok(out)
    }

    /// Reports in the outbox.
    pub fn pending_reports(&self) -> Result<u64, QueueError> {
        let memtable = self.shared.read_memtable();
        let txn = self.shared.db()?.begin_read().map_err(storage)?;
        let in_file = txn
            .open_table(OUTBOX)
            .map_err(storage)?
            .len()
            .map_err(storage)?;
        Ok(in_file + memtable.report_count())
    }

    /// Removes acknowledged reports `first..=last` from the outbox.
    pub async fn ack_reports(&self, first: u64, last: u64) -> Result<(), QueueError> {
        self.writer
            .send(Command::AckReports { first, last })
            .await
            .map_err(|_| QueueError::Closed)
    }

    /// Removes events older than the retention period, and kept events past their byte bound
    /// (run periodically): in commits of at most [`machine::SWEEP_BATCH`] events each, until
    /// none is left, so that the sweep keeps up with any steady rate. Returns how many went.
    pub async fn sweep(&self) -> Result<u64, QueueError> {
        let mut removed = 0;
        loop {
            let (reply, answer) = oneshot::channel();
            self.writer
                .send(Command::Sweep { reply })
                .await
                .map_err(|_| QueueError::Closed)?;
            self.shared.wake_writer();
            let batch = answer.await.map_err(|_| QueueError::Closed)??;
            removed += batch;
            if batch < machine::SWEEP_BATCH as u64 {
                return Ok(removed);
            }
        }
    }

    /// Whether the queue can write now: false from a disk fault (a full or failing disk) on,
    /// for the scheduler, which starts no attempt whose outcome could not be written; the
    /// receiver sees every change.
    pub fn writable(&self) -> tokio::sync::watch::Receiver<bool> {
        self.shared.writable.subscribe()
    }

    /// Whether the queue takes new events now: false while it cannot write and while its
    /// disk is below the margin it keeps (`--queue-min-free-bytes`), for health checks.
    pub fn accepting(&self) -> tokio::sync::watch::Receiver<bool> {
        self.shared.accepting.subscribe()
    }

    /// Waits until tasks were added or finished.
    pub async fn tasks_changed(&self) {
        self.shared.tasks_changed.notified().await;
    }

    /// Waits until reports became durable (see [`Queue::reports`]).
    pub async fn reports_added(&self) {
        self.shared.reports_added.notified().await;
    }

    /// Waits for every command sent so far to be committed durably; the error of the commit
    /// that failed, if it did (a disk fault).
    pub async fn flush(&self) -> Result<(), QueueError> {
        let (reply, answer) = oneshot::channel();
        self.writer
            .send(Command::Flush { reply })
            .await
            .map_err(|_| QueueError::Closed)?;
        self.shared.wake_writer();
        answer.await.map_err(|_| QueueError::Closed)?
    }

    /// Commits what was sent, stops the writer and closes the file (other clones of this
    /// queue then fail with [`QueueError::Closed`]).
    pub async fn close(self) {
        let (reply, answer) = oneshot::channel();
        if self.writer.send(Command::Close { reply }).await.is_ok() {
            self.shared.wake_writer();
            let _ = answer.await;
        }
    }

    /// Every pending task, in lane and due order (for tests: it reads the whole queue).
    #[cfg(test)]
    fn all_tasks(&self) -> Result<Vec<Task>, QueueError> {
        let memtable = self.shared.read_memtable();
        let txn = self.shared.db()?.begin_read().map_err(storage)?;
        let tasks = txn.open_table(TASKS).map_err(storage)?;
        let mut out = Vec::new();
        for lane in lanes_of(&tasks, &memtable)? {
            for entry in lane_tasks(&tasks, &memtable, &lane, (0, 0))? {
                let ((due, seq), value) = entry.map_err(storage)?;
                out.push(decode_task((&lane, due, seq), value.bytes())?);
            }
        }
        Ok(out)
    }

    /// The lane index, up to date with the attempts ended since its last use.
    fn lock_lanes(&self) -> std::sync::MutexGuard<'_, lanes::Lanes> {
        let mut lanes = self.shared.lanes.lock().unwrap_or_else(|e| e.into_inner());
        let ended = std::mem::take(
            &mut *self
                .shared
                .attempts_ended
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for (lane, seq) in ended {
            lanes.attempted(&lane, seq);
        }
        lanes
    }
}

/// Makes commits made without an fsync durable within `lag` when no other commit does: woken
/// by the writer after such a commit, it waits that long and asks for a flush. It ends when
/// the queue's writer is gone.
async fn persist(writer: mpsc::WeakSender<Command>, shared: Arc<Shared>, lag: Duration) {
    loop {
        shared.unpersisted.notified().await;
        tokio::time::sleep(lag).await;
        let Some(writer) = writer.upgrade() else {
            return;
        };
        let (reply, answer) = oneshot::channel();
        if writer.send(Command::Flush { reply }).await.is_err() {
            return;
        }
        shared.wake_writer();
        drop(writer);
        let _ = answer.await;
    }
}

/// The first wait before a queue that cannot write tries again.
const RETRY_WRITES_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between tries.
const RETRY_WRITES_MOST: Duration = Duration::from_secs(30);

/// How often a queue that writes looks at its disk's free space while nothing is written (a
/// commit looks each time): health checks hear of a disk filled by something else within it.
const SPACE_POLL: Duration = Duration::from_secs(1);

/// While the queue cannot write, tries a commit with growing pauses, so that it writes again
/// by itself (and says so to health checks) once space is back, even with no work coming in.
/// While it writes, looks at the free space of the disk (`space`: its directory and the
/// margin kept) and at its files' names (`placement`) every [`SPACE_POLL`], and has the
/// writer refuse once it is below the margin or a file is gone, even with nothing to write.
/// It ends when the queue's writer is gone.
async fn retry_writes(
    writer: mpsc::WeakSender<Command>,
    shared: Arc<Shared>,
    space: Option<(std::path::PathBuf, u64)>,
    placement: Option<Arc<in_place::Placement>>,
) {
    let mut writable = shared.writable.subscribe();
    let accepting = shared.accepting.subscribe();
    drop(shared);
    let flush = |writer: &mpsc::WeakSender<Command>| {
        let writer = writer.upgrade();
        async move {
            let Some(writer) = writer else {
                return false;
            };
            let (reply, answer) = oneshot::channel();
            if writer.send(Command::Flush { reply }).await.is_err() {
                return false;
            }
            drop(writer);
            let _ = answer.await;
            true
        }
    };
    loop {
        while *writable.borrow_and_update() {
            tokio::select! {
                changed = writable.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(SPACE_POLL) => {
                    let low = space.as_ref().is_some_and(|(dir, min_free)| {
                        !herald_core::disk_fault::has_room(dir, *min_free)
                    });
                    let moved = placement
                        .as_ref()
                        .is_some_and(|p| p.look() != in_place::Found::InPlace);
                    // Below the margin, a file removed, or back in order while events are
                    // still refused: a flush makes the writer look again and say so.
                    if (low || moved || !*accepting.borrow()) && !flush(&writer).await {
                        return;
                    }
                }
            }
        }
        let mut pause = RETRY_WRITES_FIRST;
        while !*writable.borrow() {
            tokio::time::sleep(pause).await;
            if !flush(&writer).await {
                return;
            }
            pause = (pause * 2).min(RETRY_WRITES_MOST);
        }
    }
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    to_ms(SystemTime::now())
}

/// A time as milliseconds since the epoch.
pub fn to_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests;
