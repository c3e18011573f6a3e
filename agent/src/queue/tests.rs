//! The queue against a tiny in-memory model, under random operations and restarts (clean, or
//! after a power loss); and recovery from a torn final write.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use herald_proto::v1 as pb;

use std::sync::{Arc, Mutex};

use super::*;

fn config() -> QueueConfig {
    QueueConfig {
        max_events: 40,
        max_bytes: 1 << 20,
        max_share: 1.0,
        max_retained_bytes: u64::MAX,
        min_free_bytes: 0,
        recover_truncate: false,
        max_pending_reports: u64::MAX,
        max_pending_report_bytes: u64::MAX,
        max_parked_deliveries: u64::MAX,
        cache_bytes: crate::queue::DEFAULT_CACHE_BYTES,
        retention: Duration::from_secs(3600),
        dedup_window: Duration::from_secs(3600),
        durable: true,
        durable_lag: Duration::from_secs(3600),
        checkpoint_every: CHECKPOINT_EVERY,
    }
}

fn event(id: &str, payload_len: usize) -> pb::Event {
    pb::Event {
        id: id.into(),
        tenant: "t".into(),
        r#type: "order.created".into(),
        payload: vec![b'1'; payload_len],
        ..Default::default()
    }
}

/// A small deterministic random source (xorshift), so a failing seed can be replayed.
pub(in crate::queue) struct Rng(pub(in crate::queue) u64);

impl Rng {
    pub(in crate::queue) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub(in crate::queue) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What the queue should hold.
#[derive(Default)]
struct Model {
    /// Event id → matched count.
    events: HashMap<String, u32>,
    /// (event, subscription) → attempts made, for pending tasks.
    tasks: BTreeMap<(String, String), u32>,
    /// Reports not yet acked.
    outbox: u64,
}

/// Every pending task in the queue as (event, subscription) → attempts, read without taking.
fn stored_tasks(queue: &Queue) -> BTreeMap<(String, String), u32> {
    queue
        .all_tasks()
        .expect("tasks")
        .into_iter()
        .map(|task| {
            (
                (task.event.id().to_owned(), task.subscription_id),
                task.attempts,
            )
        })
        .collect()
}

fn check(queue: &Queue, model: &Model) {
    assert_eq!(stored_tasks(queue), model.tasks, "pending tasks");
    assert_eq!(
        queue.pending_reports().expect("reports"),
        model.outbox,
        "outbox"
    );
    for (id, matched) in &model.events {
        assert!(
            queue
                .event(&EventKey::new("t", id))
                .expect("event")
                .is_some(),
            "event {id} kept"
        );
        let _ = matched;
    }
}

async fn run_seed(seed: u64, checkpoint_every: Duration) {
    let config = || QueueConfig {
        checkpoint_every,
        ..config()
    };
    let mut rng = Rng(seed | 1);
    let mut disk = PowerLossDisk::default();
    let mut queue = disk.start(config());
    let mut model = Model::default();
    for step in 0..300 {
        match rng.below(10) {
            // Emit a batch of 1-3 events with ids from a small pool (so duplicates happen).
            0..=3 => {
                let mut batch = Vec::new();
                for _ in 0..=rng.below(3) {
                    let id = format!("evt_{}", rng.below(60));
                    let subs = (0..rng.below(3)).map(|s| format!("sub_{s}")).collect();
                    batch.push(NewEvent {
                        event: event(&id, 10),
                        subscriptions: subs,
                        parked: Vec::new(),
                    });
                }
                // The bound counts events with deliveries to make: those with tasks left, and
                // the new ones that have subscriptions (an id's first item in the batch counts).
                let waiting: std::collections::HashSet<&String> =
                    model.tasks.keys().map(|(id, _)| id).collect();
                let mut firsts = std::collections::HashSet::new();
                let new_waiting = batch
                    .iter()
                    .filter(|e| !model.events.contains_key(&e.event.id))
                    .filter(|e| firsts.insert(e.event.id.clone()))
                    .filter(|e| !e.subscriptions.is_empty())
                    .count();
                let fits = waiting.len() + new_waiting <= config().max_events as usize;
                match queue.accept(batch.clone()).await {
                    Ok(answers) => {
                        assert!(
                            fits || new_waiting == 0,
                            "seed {seed} step {step}: accepted past the bound"
                        );
                        for (item, answer) in batch.iter().zip(answers) {
                            let id = &item.event.id;
                            match model.events.get(id) {
                                Some(&matched) => {
                                    assert!(
                                        answer.duplicate,
                                        "seed {seed} step {step}: {id} is a duplicate"
                                    );
                                    assert_eq!(answer.matched, matched);
                                }
                                None => {
                                    assert!(
                                        !answer.duplicate,
                                        "seed {seed} step {step}: {id} is new"
                                    );
                                    model.events.insert(id.clone(), answer.matched);
                                    for sub in &item.subscriptions {
                                        model.tasks.insert((id.clone(), sub.clone()), 0);
                                    }
                                }
                            }
                        }
                    }
                    Err(QueueError::Full(_)) => {
                        assert!(!fits, "seed {seed} step {step}: refused although it fits");
                    }
                    Err(err) => panic!("seed {seed} step {step}: {err}"),
                }
            }
            // Attempt some due tasks: done or retried later.
            4..=6 => {
                let due = queue
                    .due(u64::MAX - 1, rng.below(5) as usize + 1, |_, n| {
                        2_usize.saturating_sub(n)
                    })
                    .expect("due");
                for task in due {
                    let key = (task.event.id().to_owned(), task.subscription_id.clone());
                    assert_eq!(
                        model.tasks.get(&key),
                        Some(&task.attempts),
                        "seed {seed} step {step}"
                    );
                    let next = if rng.below(2) == 0 {
                        model.tasks.remove(&key);
                        Next::Done
                    } else {
                        model.tasks.insert(key, task.attempts + 1);
                        Next::RetryAt(now_ms() + rng.below(1000))
                    };
                    model.outbox += 1;
                    task.finish(next, pb::Attempt::default())
                        .await
                        .expect("complete");
                }
                queue.flush().await.expect("flush");
            }
            // The control plane acks the oldest reports.
            7 => {
                let reports = queue
                    .reports(0, rng.below(4) as usize + 1)
                    .expect("reports");
                if let (Some(first), Some(last)) = (reports.first(), reports.last()) {
                    queue.ack_reports(first.0, last.0).await.expect("ack");
                    queue.flush().await.expect("flush");
                    model.outbox -= reports.len() as u64;
                }
            }
            // Restart, after a clean close or a power loss (every step ends durable, so both
            // keep everything): nothing is in flight any more.
            _ => {
                if rng.below(2) == 0 {
                    queue.close().await;
                } else {
                    disk = disk.after_power_loss(&mut rng);
                }
                queue = disk.start(config());
            }
        }
        check(&queue, &model);
    }
    queue.close().await;
}

/// A lane room function: every lane `width` wide.
fn room(width: usize) -> impl Fn(&str, usize) -> usize {
    move |_, in_flight| width.saturating_sub(in_flight)
}

#[tokio::test]
async fn the_queue_matches_its_model_under_random_operations_and_restarts() {
    for seed in 1..=12u64 {
        // Checkpoints at every commit (the memtable stays empty), now and then (tasks and
        // reports cross checkpoints, in the memtable and in the file), and only at restarts.
        let checkpoint_every = match seed % 3 {
            0 => Duration::ZERO,
            1 => Duration::from_millis(2),
            _ => CHECKPOINT_EVERY * 3600,
        };
        run_seed(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15), checkpoint_every).await;
    }
}

#[tokio::test]
async fn retries_keep_their_due_time_and_attempt_count_across_restarts() {
    let dir = tempfile::tempdir().expect("dir");
    let queue = Queue::open(dir.path(), config()).expect("open");
    accept_one(&queue, event("evt_1", 5), &["sub_a"]).await;
    let task = queue
        .due(now_ms(), 10, room(16))
        .expect("due")
        .pop()
        .expect("one task");
    assert_eq!(task.attempts, 0);
    let later = now_ms() + 60_000;
    task.finish(Next::RetryAt(later), pb::Attempt::default())
        .await
        .expect("complete");
    queue.close().await;

    let queue = Queue::open(dir.path(), config()).expect("reopen");
    assert!(
        queue.due(now_ms(), 10, room(16)).expect("due").is_empty(),
        "not due yet"
    );
    assert_eq!(queue.next_due(room(16)), Some(later));
    let task = queue
        .due(later, 10, room(16))
        .expect("due")
        .pop()
        .expect("due then");
    assert_eq!((task.attempts, task.due), (1, later));
}

#[tokio::test]
async fn a_small_read_reaches_past_many_full_lanes_and_a_large_one_takes_every_lane() {
    let dir = tempfile::tempdir().expect("dir");
    let queue = Queue::open(dir.path(), config()).expect("open");
    // 30 lanes (several batches of lanes), two tasks each.
    let subs: Vec<String> = (0..30).map(|i| format!("sub_{i:02}")).collect();
    for id in ["evt_1", "evt_2"] {
        queue
            .accept(vec![NewEvent {
                event: event(id, 5),
                subscriptions: subs.clone(),
                parked: Vec::new(),
            }])
            .await
            .expect("accept");
    }
    // Every lane but the last is full: a read of one task still finds the last lane's.
    let last_only = |lane: &str, _: usize| usize::from(lane == "sub_29");
    let due = queue.due(now_ms(), 1, last_only).expect("due");
    assert_eq!(
        due.iter()
            .map(|t| t.subscription_id.as_str())
            .collect::<Vec<_>>(),
        ["sub_29"]
    );
    // A read with room for everything takes the rest, each task once.
    let due = queue.due(now_ms(), 1000, room(16)).expect("due");
    assert_eq!(due.len(), 59);
    let mut taken: Vec<(String, String)> = due
        .iter()
        .map(|t| (t.subscription_id.clone(), t.event.id().to_owned()))
        .collect();
    taken.sort();
    taken.dedup();
    assert_eq!(taken.len(), 59, "no task handed out twice");
    assert!(queue.due(now_ms(), 1000, room(16)).expect("due").is_empty());
}

#[tokio::test]
async fn a_lanes_room_is_decided_once_per_read() {
    // A rate limit's room does not shrink as tasks are taken (its tokens are spent once they
    // are handed out): one read must still take no more than it allowed, even though the
    // lane's next task, due at a later millisecond, sorts after the lane's first hint.
    let dir = tempfile::tempdir().expect("dir");
    let queue = Queue::open(dir.path(), config()).expect("open");
    for id in ["evt_1", "evt_2", "evt_3"] {
        accept_one(&queue, event(id, 5), &["sub_a"]).await;
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let one_token = |_: &str, _: usize| 1;
    let later = now_ms() + 1;
    assert_eq!(queue.due(later, 10, one_token).expect("due").len(), 1);
    assert_eq!(queue.due(later, 10, one_token).expect("due").len(), 1);
}

#[tokio::test]
async fn a_full_queue_refuses_new_events_and_keeps_the_old() {
    let dir = tempfile::tempdir().expect("dir");
    let queue = Queue::open(
        dir.path(),
        QueueConfig {
            max_events: 3,
            max_bytes: 100,
            ..config()
        },
    )
    .expect("open");
    let one = |id: &str, len| NewEvent {
        event: event(id, len),
        subscriptions: vec!["sub".into()],
        parked: Vec::new(),
    };
    queue
        .accept(vec![one("a", 10), one("b", 10)])
        .await
        .expect("fits");
    let err = queue
        .accept(vec![one("c", 10), one("d", 10)])
        .await
        .expect_err("4 > 3 events");
    assert!(matches!(err, QueueError::Full(_)), "{err}");
    assert_eq!(
        tonic::Status::from(err).code(),
        tonic::Code::ResourceExhausted
    );
    let err = queue
        .accept(vec![one("e", 90)])
        .await
        .expect_err("too many bytes");
    assert!(matches!(err, QueueError::Full(_)));
    // A duplicate of a stored event is still answered when full.
    let dup = queue.accept(vec![one("a", 10)]).await.expect("duplicate");
    assert!(dup[0].duplicate);
    queue
        .accept(vec![one("c", 10)])
        .await
        .expect("the third fits");
    for id in ["a", "b", "c"] {
        assert!(
            queue
                .event(&EventKey::new("t", id))
                .expect("read")
                .is_some(),
            "{id} kept"
        );
    }
    assert_eq!(queue.pending_tasks().expect("tasks"), 3);
}

/// A disk that loses power on demand, holding two files: the queue file and its log (see
/// [`PowerLossDisk::log`]). Bytes written to a file before its last `sync_data` survive; each
/// write after it survives whole, survives torn (a prefix of whole 512-byte sectors), or is
/// lost.
#[derive(Clone, Debug, Default)]
struct PowerLossDisk {
    state: Arc<Mutex<DiskState>>,
    /// Which file this handle reads and writes.
    file: usize,
}

#[derive(Debug, Default)]
struct DiskState {
    files: [FileState; 2],
    /// Writes allowed before the power goes (or `fault` strikes); `None`: no failure planned.
    writes_left: Option<usize>,
    /// What fails the writes once `writes_left` reaches 0.
    fault: Fault,
    /// Whether a torn write (`Fault::Torn`) was made.
    torn: bool,
    /// The disk is full: writes fail with ENOSPC.
    full: bool,
    /// Writes, length changes and syncs made or refused so far.
    ops: usize,
}

/// How a disk fails a write or a sync.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Fault {
    /// The power goes: nothing more is written.
    #[default]
    PowerLoss,
    /// ENOSPC.
    NoSpace,
    /// EIO.
    Eio,
    /// The first failing write writes part of its data, then EIO.
    Torn,
}

impl Fault {
    fn error(self) -> std::io::Error {
        match self {
            Fault::PowerLoss => std::io::Error::other("power lost"),
            Fault::NoSpace => std::io::Error::from_raw_os_error(28),
            Fault::Eio | Fault::Torn => std::io::Error::from_raw_os_error(5),
        }
    }
}

/// Lengthens `bytes` to `len` with zeros, a block at a time (a byte at a time is slow in an
/// unoptimised test build, and the write-ahead log is megabytes of zeros).
fn grow(bytes: &mut Vec<u8>, len: usize) {
    static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
    while bytes.len() < len {
        let n = (len - bytes.len()).min(ZEROS.len());
        bytes.extend_from_slice(&ZEROS[..n]);
    }
}

#[derive(Clone, Debug, Default)]
struct FileState {
    synced: Vec<u8>,
    current: Vec<u8>,
    unsynced: Vec<(u64, Vec<u8>)>,
    /// Whether the length changed since the last sync.
    resized: bool,
}

impl DiskState {
    fn check_power(&mut self) -> std::io::Result<()> {
        self.ops += 1;
        if self.full {
            return Err(std::io::Error::from_raw_os_error(28));
        }
        match &mut self.writes_left {
            Some(0) => Err(self.fault.error()),
            Some(n) => {
                *n -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }
}

impl PowerLossDisk {
    fn state(&self) -> std::sync::MutexGuard<'_, DiskState> {
        self.state.lock().expect("disk lock")
    }

    /// The same disk's second file, for the queue's log.
    fn log(&self) -> Box<dyn redb::StorageBackend> {
        Box::new(PowerLossDisk {
            state: self.state.clone(),
            file: 1,
        })
    }

    /// Plans a power loss after `writes` more writes or syncs, to either file.
    fn fail_after(&self, writes: usize) {
        self.state().writes_left = Some(writes);
    }

    /// The disk as found after the power came back.
    fn after_power_loss(&self, rng: &mut Rng) -> PowerLossDisk {
        let state = self.state();
        let files = state.files.clone().map(|file| {
            let mut image = file.synced.clone();
            for (offset, data) in &file.unsynced {
                let keep = match rng.below(3) {
                    0 => 0,
                    1 => data.len(),
                    _ => (rng.below(data.len() as u64 / 512 + 1) * 512) as usize,
                }
                .min(data.len());
                let start = *offset as usize;
                if image.len() < start + keep {
                    grow(&mut image, start + keep);
                }
                image[start..start + keep].copy_from_slice(&data[..keep]);
            }
            FileState {
                synced: image.clone(),
                current: image,
                unsynced: Vec::new(),
                resized: false,
            }
        });
        PowerLossDisk {
            state: Arc::new(Mutex::new(DiskState {
                files,
                ..DiskState::default()
            })),
            file: 0,
        }
    }

    /// Starts a queue on this disk.
    fn start(&self, config: QueueConfig) -> Queue {
        let disk = self.clone();
        let files: OpenFiles = Box::new(move || {
            let db = redb::Builder::new()
                .create_with_backend(disk.clone())
                .map_err(storage)?;
            Ok((db, disk.log()))
        });
        Queue::start(files, config, None, None).expect("start")
    }
}

impl redb::StorageBackend for PowerLossDisk {
    fn len(&self) -> std::io::Result<u64> {
        Ok(self.state().files[self.file].current.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        let state = self.state();
        let start = offset as usize;
        let bytes = state.files[self.file]
            .current
            .get(start..start + out.len())
            .ok_or_else(|| std::io::Error::other("read past the end"))?;
        out.copy_from_slice(bytes);
        Ok(())
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        let mut state = self.state();
        state.check_power()?;
        let file = &mut state.files[self.file];
        file.current.truncate(len as usize);
        grow(&mut file.current, len as usize);
        file.resized = true;
        Ok(())
    }

    fn sync_data(&self) -> std::io::Result<()> {
        let mut state = self.state();
        state.check_power()?;
        let file = &mut state.files[self.file];
        if file.resized {
            file.synced = file.current.clone();
            file.unsynced.clear();
            file.resized = false;
        } else {
            // The same bytes as `current`, without copying the whole file at every sync.
            for (offset, data) in file.unsynced.drain(..) {
                let start = offset as usize;
                file.synced[start..start + data.len()].copy_from_slice(&data);
            }
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let mut state = self.state();
        let result = state.check_power();
        let data = match &result {
            Ok(()) => data,
            // A torn write: part of it reaches the file.
            Err(_) if state.fault == Fault::Torn && !state.torn => {
                state.torn = true;
                &data[..data.len() / 2]
            }
            Err(_) => return result,
        };
        let file = &mut state.files[self.file];
        let start = offset as usize;
        if file.current.len() < start + data.len() {
            grow(&mut file.current, start + data.len());
            file.resized = true;
        }
        file.current[start..start + data.len()].copy_from_slice(data);
        file.unsynced.push((offset, data.to_vec()));
        result
    }
}

#[tokio::test]
async fn after_a_power_loss_mid_commit_every_acknowledged_event_is_there() {
    let mut rng = Rng(0xDEAD_BEEF);
    let mut disk = PowerLossDisk::default();
    let mut acknowledged: Vec<String> = Vec::new();
    let mut next_id = 0;
    for round in 0..40 {
        let unbounded = QueueConfig {
            max_events: u64::MAX,
            max_bytes: u64::MAX,
            ..config()
        };
        let queue = disk.start(unbounded);
        for id in &acknowledged {
            assert!(
                queue
                    .event(&EventKey::new("t", id))
                    .expect("read")
                    .is_some(),
                "round {round}: acknowledged {id} lost"
            );
        }
        // Every stored event has its task: an event and its tasks are one commit.
        let txn = queue.shared.db().expect("db").begin_read().expect("read");
        let events = txn.open_table(EVENTS).expect("events").len().expect("len");
        assert_eq!(
            queue.pending_tasks().expect("tasks"),
            events,
            "round {round}"
        );
        drop(txn);

        disk.fail_after(rng.below(60) as usize + 1);
        loop {
            next_id += 1;
            let id = format!("evt_{next_id}");
            let new = NewEvent {
                event: event(&id, 300),
                subscriptions: vec!["sub".into()],
                parked: Vec::new(),
            };
            match queue.accept(vec![new]).await {
                Ok(_) => acknowledged.push(id),
                Err(QueueError::Io(_)) => break,
                Err(err) => panic!("round {round}: only the power loss may fail a write: {err}"),
            }
        }
        drop(queue);
        disk = disk.after_power_loss(&mut rng);
    }
}

#[tokio::test]
async fn a_full_disk_answers_resource_exhausted_and_keeps_what_was_accepted() {
    let disk = PowerLossDisk::default();
    let queue = disk.start(config());
    let one = |id: &str| NewEvent {
        event: event(id, 10),
        subscriptions: vec!["sub".into()],
        parked: Vec::new(),
    };
    for i in 0..5 {
        queue
            .accept(vec![one(&format!("evt_{i}"))])
            .await
            .expect("accepted before the disk filled");
    }
    disk.state().full = true;
    for attempt in 0..2 {
        let err = queue
            .accept(vec![one("evt_late")])
            .await
            .expect_err("the disk is full");
        let status = tonic::Status::from(err);
        assert_eq!(
            status.code(),
            tonic::Code::ResourceExhausted,
            "call {attempt}: {status:?}"
        );
        assert!(
            status.message().contains("No space left"),
            "call {attempt}: {}",
            status.message()
        );
    }
    assert!(!*queue.writable().borrow(), "health checks hear of it");
    drop(queue);

    disk.state().full = false;
    let queue = disk.start(config());
    for i in 0..5 {
        assert!(
            queue
                .event(&EventKey::new("t", &format!("evt_{i}")))
                .expect("read")
                .is_some(),
            "evt_{i} kept"
        );
    }
    assert!(
        queue
            .event(&EventKey::new("t", "evt_late"))
            .expect("read")
            .is_none(),
        "the refused event was not half-written"
    );
    queue
        .accept(vec![one("evt_late")])
        .await
        .expect("space again: accepted");
}

#[tokio::test]
async fn an_outcome_the_full_disk_refuses_is_not_attempted_again_until_a_commit_succeeds() {
    let disk = PowerLossDisk::default();
    let queue = disk.start(config());
    accept_one(&queue, event("evt_1", 10), &["sub"]).await;
    let task = queue
        .due(u64::MAX - 1, 1, room(1))
        .expect("due")
        .pop()
        .expect("the delivery");
    // The attempt was made; its outcome meets a full disk.
    disk.state().full = true;
    task.finish(Next::RetryAt(now_ms()), pb::Attempt::default())
        .await
        .expect("sent to the writer");
    let refused = queue.flush().await.expect_err("the disk is full");
    assert!(matches!(refused, QueueError::DiskFull(_)), "{refused:?}");
    for poll in 0..20 {
        // Reads fail while the file is unusable, or find nothing due.
        if let Ok(due) = queue.due(u64::MAX - 1, 10, room(10)) {
            assert!(
                due.is_empty(),
                "poll {poll}: a delivery whose outcome was lost is not sent again meanwhile"
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!*queue.writable().borrow());
    // Space again: the same queue (no restart) makes the delivery once more, as it was.
    disk.state().full = false;
    queue.flush().await.expect("writes resume");
    let again = queue.due(u64::MAX - 1, 10, room(10)).expect("due");
    assert_eq!(again.len(), 1, "once more, not a loop");
    assert_eq!(
        (again[0].event.id(), again[0].attempts),
        ("evt_1", 0),
        "the lost outcome was never recorded"
    );
    assert!(*queue.writable().borrow());
}

#[tokio::test]
async fn deliveries_of_one_ordering_key_go_one_at_a_time_in_order() {
    let dir = tempfile::tempdir().expect("dir");
    let queue = Queue::open(dir.path(), config()).expect("open");
    let keyed = |id: &str, key: &str| {
        let mut event = event(id, 5);
        event.ordering_key = key.into();
        NewEvent {
            event,
            subscriptions: vec!["sub_a".into(), "sub_b".into()],
            parked: Vec::new(),
        }
    };
    queue
        .accept(vec![
            keyed("a1", "order-1"),
            keyed("a2", "order-1"),
            keyed("free", ""),
        ])
        .await
        .expect("accept");
    queue
        .accept(vec![keyed("a3", "order-1"), keyed("b1", "order-2")])
        .await
        .expect("accept");
    let ids = |tasks: &[Lease]| {
        let mut ids: Vec<String> = tasks
            .iter()
            .map(|t| format!("{}/{}", t.subscription_id, t.event.id()))
            .collect();
        ids.sort();
        ids
    };
    let mut due = queue.due(now_ms(), 100, room(16)).expect("due");
    // Per subscription: the head of each key, and the event without a key.
    assert_eq!(
        ids(&due),
        [
            "sub_a/a1",
            "sub_a/b1",
            "sub_a/free",
            "sub_b/a1",
            "sub_b/b1",
            "sub_b/free"
        ]
    );
    let mut head = |sub: &str| {
        let at = due
            .iter()
            .position(|t| t.subscription_id == sub && t.event.id() == "a1")
            .expect("head");
        due.swap_remove(at)
    };
    // A retried head keeps its place: nothing behind it is due.
    let later = now_ms() + 60_000;
    head("sub_a")
        .finish(Next::RetryAt(later), pb::Attempt::default())
        .await
        .expect("retry");
    // The other subscription's line moves on independently.
    head("sub_b")
        .finish(Next::Done, pb::Attempt::default())
        .await
        .expect("done");
    queue.flush().await.expect("flush");
    let later_due = queue.due(now_ms(), 100, room(16)).expect("due");
    assert_eq!(ids(&later_due), ["sub_b/a2"]);
    // The rest of the first read is still in flight here.
    drop(due);
    queue.close().await;

    // The lines survive a restart; finishing the retried head lets the next one go.
    let queue = Queue::open(dir.path(), config()).expect("reopen");
    let in_flight = queue.due(now_ms(), 100, room(16)).expect("due");
    assert_eq!(
        ids(&in_flight),
        [
            "sub_a/b1",
            "sub_a/free",
            "sub_b/a2",
            "sub_b/b1",
            "sub_b/free"
        ],
        "in flight at the restart, so due again; sub_a's line still waits for its head"
    );
    let retried = queue
        .due(later, 100, room(16))
        .expect("due")
        .pop()
        .expect("the head");
    assert_eq!((retried.event.id(), retried.attempts), ("a1", 1));
    retried
        .finish(Next::Done, pb::Attempt::default())
        .await
        .expect("done");
    queue.flush().await.expect("flush");
    let due = queue.due(later, 100, room(16)).expect("due");
    assert_eq!(ids(&due), ["sub_a/a2"]);
    assert_eq!(due[0].ordering_key, "order-1");
}

#[tokio::test]
async fn a_replay_queues_a_finished_delivery_again_with_its_attempt_count() {
    let dir = tempfile::tempdir().expect("dir");
    let queue = Queue::open(dir.path(), config()).expect("open");
    accept_one(&queue, event("evt_1", 5), &["sub_a"]).await;
    let task = queue
        .due(now_ms(), 10, room(16))
        .expect("due")
        .pop()
        .expect("one task");
    task.finish(Next::Done, pb::Attempt::default())
        .await
        .expect("complete");
    assert!(queue.due(now_ms(), 10, room(16)).expect("due").is_empty());

    let results = queue
        .replay(vec![
            Replay {
                event: EventKey::new("t", "evt_1"),
                subscription_id: "sub_a".into(),
                attempts_made: 8,
            },
            Replay {
                event: EventKey::new("t", "evt_gone"),
                subscription_id: "sub_a".into(),
                attempts_made: 1,
            },
        ])
        .await
        .expect("replay");
    assert_eq!(results[0], Ok(()));
    assert!(
        results[1]
            .as_ref()
            .is_err_and(|why| why.contains("retention"))
    );
    // Durable like any task: it survives a restart.
    queue.close().await;
    let queue = Queue::open(dir.path(), config()).expect("reopen");
    let task = queue
        .due(now_ms(), 10, room(16))
        .expect("due")
        .pop()
        .expect("the replayed delivery");
    assert_eq!(
        (
            task.event.id(),
            task.subscription_id.as_str(),
            task.attempts
        ),
        ("evt_1", "sub_a", 8)
    );
}

/// Stores `event` with a delivery to each of `subscriptions`.
async fn accept_one(queue: &Queue, event: pb::Event, subscriptions: &[&str]) {
    let subscriptions = subscriptions.iter().map(|s| (*s).to_owned()).collect();
    queue
        .accept(vec![NewEvent {
            event,
            subscriptions,
            parked: Vec::new(),
        }])
        .await
        .expect("accept");
}

/// Accepts one event for `sub`, takes its task and records a delivered attempt; returns once
/// that outcome is committed (durably or not).
async fn deliver_one(queue: &Queue, id: &str) {
    accept_one(queue, event(id, 10), &["sub"]).await;
    let task = queue
        .due(u64::MAX - 1, 1, room(1))
        .expect("due")
        .pop()
        .expect("a task");
    task.finish(Next::Done, pb::Attempt::default())
        .await
        .expect("complete");
    for _ in 0..500 {
        if stored_tasks(queue).is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the outcome was not committed");
}

#[tokio::test]
async fn an_outcome_is_reported_only_once_durable_and_a_power_loss_before_repeats_the_attempt() {
    let mut rng = Rng(7);
    let disk = PowerLossDisk::default();
    let queue = disk.start(config());
    deliver_one(&queue, "evt_1").await;
    assert!(
        queue.reports(0, 10).expect("reports").is_empty(),
        "a report whose outcome is not durable is not handed to the reporter"
    );
    assert_eq!(queue.pending_reports().expect("outbox"), 1);

    // The power goes before any fsync: the attempt is due again, with its count, unreported.
    let image = disk.after_power_loss(&mut rng);
    drop(queue);
    let queue = image.start(config());
    let expected: BTreeMap<_, _> = [(("evt_1".to_string(), "sub".to_string()), 0)].into();
    assert_eq!(stored_tasks(&queue), expected);
    assert_eq!(queue.pending_reports().expect("outbox"), 0);

    // A flush (as every acknowledged Emit's commit) makes the outcome durable and reportable.
    let task = queue.due(u64::MAX - 1, 1, room(1)).expect("due").pop();
    task.expect("task")
        .finish(Next::Done, pb::Attempt::default())
        .await
        .expect("complete");
    queue.flush().await.expect("flush");
    assert_eq!(queue.reports(0, 10).expect("reports").len(), 1);
    queue.close().await;
}

#[tokio::test]
async fn an_idle_queue_makes_outcomes_durable_within_the_lag() {
    let mut rng = Rng(11);
    let disk = PowerLossDisk::default();
    let lag = QueueConfig {
        durable_lag: Duration::from_millis(20),
        ..config()
    };
    let queue = disk.start(lag.clone());
    deliver_one(&queue, "evt_1").await;
    tokio::time::timeout(Duration::from_secs(10), async {
        while queue.reports(0, 10).expect("reports").is_empty() {
            queue.reports_added().await;
        }
    })
    .await
    .expect("the report becomes durable without another commit asking for it");

    let image = disk.after_power_loss(&mut rng);
    drop(queue);
    let queue = image.start(lag);
    assert!(stored_tasks(&queue).is_empty(), "the outcome survived");
    assert_eq!(queue.reports(0, 10).expect("reports").len(), 1);
    queue.close().await;
}

#[tokio::test]
async fn the_first_attempts_read_a_new_event_from_memory_as_the_file_holds_it() {
    let dir = tempfile::tempdir().expect("dir");
    let queue = Queue::open(dir.path(), config()).expect("open");
    let mut sent = event("evt_1", 5);
    sent.attributes.insert("region".into(), "eu".into());
    accept_one(&queue, sent.clone(), &["sub_a", "sub_b"]).await;
    let key = EventKey::new("t", "evt_1");
    let read = || queue.event(&key).expect("read").expect("stored");
    let (first, second) = (read(), read());
    assert!(
        Arc::ptr_eq(&first, &second),
        "both deliveries' first attempts share the copy in memory"
    );
    let from_file = read();
    assert!(
        !Arc::ptr_eq(&first, &from_file),
        "a third read (a retry) goes to the file"
    );
    assert_eq!(first.event, sent);
    assert_eq!(from_file.event, sent);
    assert_eq!(first.accepted_ms, from_file.accepted_ms);
}

#[tokio::test]
async fn an_event_swept_past_retention_is_not_read_from_memory() {
    let dir = tempfile::tempdir().expect("dir");
    let short = QueueConfig {
        retention: Duration::from_millis(1),
        dedup_window: Duration::from_millis(1),
        ..config()
    };
    let queue = Queue::open(dir.path(), short).expect("open");
    accept_one(&queue, event("evt_old", 5), &["sub_a"]).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(queue.sweep().await.expect("sweep"), 1);
    let key = EventKey::new("t", "evt_old");
    assert!(queue.event(&key).expect("read").is_none());
}

#[tokio::test]
async fn the_same_id_from_two_tenants_is_two_events() {
    let dir = tempfile::tempdir().expect("dir");
    let queue = Queue::open(dir.path(), config()).expect("open");
    let order = |tenant: &str, payload: &[u8]| pb::Event {
        tenant: tenant.into(),
        payload: payload.to_vec(),
        ..event("order-42", 0)
    };
    let accepted = queue
        .accept(vec![NewEvent {
            event: order("shop-a", b"a"),
            subscriptions: vec!["sub_a".into()],
            parked: Vec::new(),
        }])
        .await
        .expect("accept a");
    assert!(!accepted[0].duplicate);
    let accepted = queue
        .accept(vec![NewEvent {
            event: order("shop-b", b"b"),
            subscriptions: vec!["sub_b".into()],
            parked: Vec::new(),
        }])
        .await
        .expect("accept b");
    assert!(
        !accepted[0].duplicate,
        "another tenant's id is not a duplicate"
    );
    let again = queue
        .accept(vec![NewEvent {
            event: order("shop-a", b"a again"),
            subscriptions: vec!["sub_a".into()],
            parked: Vec::new(),
        }])
        .await
        .expect("accept a again");
    assert!(again[0].duplicate, "the same tenant's id is");

    let mut tasks = queue.due(u64::MAX - 1, 10, room(4)).expect("due");
    tasks.sort_by(|a, b| a.subscription_id.cmp(&b.subscription_id));
    let seen: Vec<(&str, &str, Vec<u8>)> = tasks
        .iter()
        .map(|task| {
            let stored = queue.event(&task.event).expect("read").expect("stored");
            (
                task.subscription_id.as_str(),
                task.event.tenant(),
                stored.event.payload.clone(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("sub_a", "shop-a", b"a".to_vec()),
            ("sub_b", "shop-b", b"b".to_vec())
        ]
    );
}

#[tokio::test]
async fn a_queue_written_before_events_were_keyed_by_tenant_is_rekeyed_when_it_opens() {
    let dir = tempfile::tempdir().expect("dir");
    let accepted_ms = now_ms();
    {
        // The file as an earlier agent left it: the event, its place in the retention order
        // and its delivery, all under the bare id.
        let db = redb::Database::create(dir.path().join("queue.redb")).expect("create");
        let txn = db.begin_write().expect("write");
        {
            let old = EventKey::stored("evt_old".into());
            let mut events = txn.open_table(EVENTS).expect("events");
            let value = encode_event(accepted_ms, 1, &event("evt_old", 10));
            events.insert("evt_old", value.as_slice()).expect("event");
            let mut accepted = txn.open_table(ACCEPTED_BY_EVENT).expect("accepted");
            accepted
                .insert((accepted_ms, "evt_old"), ())
                .expect("order");
            let mut tasks = txn.open_table(TASKS).expect("tasks");
            let value = encode_task(2, &old, "");
            tasks
                .insert(("sub_a", accepted_ms, 1), value.as_slice())
                .expect("task");
            let mut meta = txn.open_table(META).expect("meta");
            meta.insert(META_SEQ, 1).expect("seq");
            meta.insert(META_EVENTS, 1).expect("events");
            meta.insert(META_BYTES, 10).expect("bytes");
        }
        txn.commit().expect("commit");
    }
    let queue = Queue::open(dir.path(), config()).expect("open");
    let task = queue
        .due(u64::MAX - 1, 10, room(4))
        .expect("due")
        .pop()
        .expect("the old delivery");
    assert_eq!(task.event, EventKey::new("t", "evt_old"));
    assert_eq!(task.attempts, 2);
    let stored = queue.event(&task.event).expect("read").expect("stored");
    assert_eq!(stored.event.payload.len(), 10);
    let again = queue
        .accept(vec![NewEvent {
            event: event("evt_old", 10),
            subscriptions: vec!["sub_a".into()],
            parked: Vec::new(),
        }])
        .await
        .expect("accept");
    assert!(again[0].duplicate, "its id is still known to dedup");
    queue.close().await;
    // Once is enough: opening again changes nothing.
    let queue = Queue::open(dir.path(), config()).expect("reopen");
    let stats = queue.stats().expect("stats");
    assert_eq!(stats.events, 1);
    assert_eq!(
        (stats.waiting.events, stats.waiting.bytes),
        (1, 10),
        "its delivery to make counted when the counts were first made"
    );
}

/// Takes every due task and finishes it as delivered.
async fn deliver_all(queue: &Queue) {
    for task in queue.due(u64::MAX - 1, 1000, room(1000)).expect("due") {
        task.finish(Next::Done, pb::Attempt::default())
            .await
            .expect("complete");
    }
    queue.flush().await.expect("flush");
}

#[tokio::test]
async fn delivered_events_do_not_count_toward_the_bound() {
    let dir = tempfile::tempdir().expect("dir");
    let small = QueueConfig {
        max_events: 3,
        ..config()
    };
    let queue = Queue::open(dir.path(), small.clone()).expect("open");
    // Steady traffic the receivers keep up with: far more events than the bound, none refused.
    for i in 0..20 {
        let subscriptions = vec!["sub_a".into(), "sub_b".into()];
        queue
            .accept(vec![NewEvent {
                event: event(&format!("evt_{i}"), 10),
                subscriptions,
                parked: Vec::new(),
            }])
            .await
            .unwrap_or_else(|err| panic!("event {i}: {err}"));
        deliver_all(&queue).await;
    }
    let stats = queue.stats().expect("stats");
    assert_eq!((stats.events, stats.waiting.events), (20, 0));
    // Work that waits counts, until it is done; and the counts survive a restart.
    for i in 20..23 {
        accept_one(&queue, event(&format!("evt_{i}"), 10), &["sub_a"]).await;
    }
    queue.close().await;
    let queue = Queue::open(dir.path(), small).expect("reopen");
    let err = queue
        .accept(vec![NewEvent {
            event: event("evt_23", 10),
            subscriptions: vec!["sub_a".into()],
            parked: Vec::new(),
        }])
        .await
        .expect_err("3 events wait");
    assert!(err.to_string().contains("waiting for delivery"), "{err}");
    deliver_all(&queue).await;
    accept_one(&queue, event("evt_23", 10), &["sub_a"]).await;
}

#[tokio::test]
async fn one_tenant_holds_at_most_its_share_of_the_bound() {
    let dir = tempfile::tempdir().expect("dir");
    let queue = Queue::open(
        dir.path(),
        QueueConfig {
            max_events: 4,
            max_share: 0.5,
            ..config()
        },
    )
    .expect("open");
    let from = |tenant: &str, id: &str| NewEvent {
        event: pb::Event {
            tenant: tenant.into(),
            ..event(id, 10)
        },
        subscriptions: vec!["sub".into()],
        parked: Vec::new(),
    };
    queue
        .accept(vec![from("noisy", "n1"), from("noisy", "n2")])
        .await
        .expect("its share");
    let err = queue
        .accept(vec![from("noisy", "n3")])
        .await
        .expect_err("past its share");
    assert!(matches!(err, QueueError::Full(_)), "{err}");
    assert!(err.to_string().contains("tenant noisy"), "{err}");
    queue
        .accept(vec![from("quiet", "q1"), from("quiet", "q2")])
        .await
        .expect("another tenant is not refused");
}

#[tokio::test]
async fn kept_events_past_their_byte_bound_go_oldest_first() {
    let dir = tempfile::tempdir().expect("dir");
    let queue = Queue::open(
        dir.path(),
        QueueConfig {
            max_retained_bytes: 25,
            ..config()
        },
    )
    .expect("open");
    for i in 0..5 {
        accept_one(&queue, event(&format!("evt_{i}"), 10), &["sub"]).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Waiting events are never evicted.
    assert_eq!(queue.sweep().await.expect("sweep"), 0);
    deliver_all(&queue).await;
    assert_eq!(
        queue.sweep().await.expect("sweep"),
        3,
        "50 bytes kept, 25 allowed"
    );
    let stats = queue.stats().expect("stats");
    assert_eq!((stats.events, stats.bytes, stats.evicted), (2, 20, 3));
    for (i, kept) in [(0, false), (2, false), (3, true), (4, true)] {
        let key = EventKey::new("t", &format!("evt_{i}"));
        assert_eq!(queue.event(&key).expect("read").is_some(), kept, "evt_{i}");
    }
}

#[tokio::test]
async fn a_report_outbox_the_control_plane_does_not_empty_refuses_new_work() {
    let dir = tempfile::tempdir().expect("dir");
    let queue = Queue::open(
        dir.path(),
        QueueConfig {
            max_pending_reports: 2,
            ..config()
        },
    )
    .expect("open");
    for i in 0..2 {
        accept_one(&queue, event(&format!("evt_{i}"), 10), &["sub"]).await;
        deliver_all(&queue).await;
    }
    refused_as_full(&queue, "evt_2", "attempt reports").await;
    // The control plane acknowledges them: room again.
    let reports = queue.reports(0, 10).expect("reports");
    assert_eq!(reports.len(), 2);
    queue
        .ack_reports(reports[0].0, reports[1].0)
        .await
        .expect("ack");
    queue.flush().await.expect("flush");
    accept_one(&queue, event("evt_2", 10), &["sub"]).await;
}

/// Asserts that an event `id` for `sub` is refused as by a full queue (RESOURCE_EXHAUSTED),
/// naming `why`.
async fn refused_as_full(queue: &Queue, id: &str, why: &str) {
    let err = queue
        .accept(vec![NewEvent {
            event: event(id, 10),
            subscriptions: vec!["sub".into()],
            parked: Vec::new(),
        }])
        .await
        .expect_err("refused");
    assert!(matches!(err, QueueError::Full(_)), "{err}");
    assert!(err.to_string().contains(why), "{err}");
    assert_eq!(
        tonic::Status::from(err).code(),
        tonic::Code::ResourceExhausted
    );
}

/// Accepts `id` for `sub`, takes its task and finishes it delivered with `report`.
async fn deliver_with(queue: &Queue, id: &str, report: pb::Attempt) {
    accept_one(queue, event(id, 10), &["sub"]).await;
    let task = queue
        .due(u64::MAX - 1, 1, room(1))
        .expect("due")
        .pop()
        .expect("a task");
    task.finish(Next::Done, report).await.expect("complete");
    queue.flush().await.expect("flush");
}

/// A report carrying a copy of the request with a `body_bytes` body.
fn report_with_request(id: &str, body_bytes: usize) -> pb::Attempt {
    pb::Attempt {
        event_id: id.into(),
        request: Some(pb::SentRequest {
            method: "POST".into(),
            body: vec![b'x'; body_bytes],
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn an_outbox_past_half_its_byte_bound_drops_requests_and_past_it_refuses_new_work() {
    let dir = tempfile::tempdir().expect("dir");
    let bounded = QueueConfig {
        max_pending_report_bytes: 3_000,
        ..config()
    };
    let queue = Queue::open(dir.path(), bounded.clone()).expect("open");
    // 1,000 bytes of request: the first is kept; the second would pass half the bound.
    deliver_with(&queue, "evt_1", report_with_request("evt_1", 1_000)).await;
    deliver_with(&queue, "evt_2", report_with_request("evt_2", 1_000)).await;
    let reports = queue.reports(0, 10).expect("reports");
    let kept: Vec<bool> = reports.iter().map(|(_, r)| r.request.is_some()).collect();
    assert_eq!(
        kept,
        [true, false],
        "the second report left its request out"
    );
    let bytes: u64 = reports.iter().map(|(_, r)| r.encoded_len() as u64).sum();
    let stats = queue.stats().expect("stats");
    assert_eq!(stats.pending_report_bytes, bytes);
    assert_eq!(stats.requests_dropped, 1);

    // Reports are never refused, whatever their size; new work is, once they fill the bound.
    let long_error = pb::Attempt {
        error: "e".repeat(2_000),
        ..Default::default()
    };
    deliver_with(&queue, "evt_3", long_error).await;
    refused_as_full(&queue, "evt_4", "--max-pending-report-bytes").await;
    // An event with no deliveries adds no report: taken.
    accept_one(&queue, event("evt_none", 10), &[]).await;

    // The count survives a restart.
    let full = queue.stats().expect("stats").pending_report_bytes;
    assert!(full >= 3_000, "{full}");
    queue.close().await;
    let queue = Queue::open(dir.path(), bounded).expect("open again");
    assert_eq!(queue.stats().expect("stats").pending_report_bytes, full);

    // The control plane acknowledges them all: empty, and room again.
    let reports = queue.reports(0, 10).expect("reports");
    assert_eq!(reports.len(), 3);
    queue
        .ack_reports(reports[0].0, reports[2].0)
        .await
        .expect("ack");
    queue.flush().await.expect("flush");
    assert_eq!(queue.stats().expect("stats").pending_report_bytes, 0);
    accept_one(&queue, event("evt_4", 10), &["sub"]).await;
}

#[tokio::test]
async fn a_wrong_outbox_count_is_put_right_when_the_queue_opens() {
    let dir = tempfile::tempdir().expect("dir");
    let queue = Queue::open(dir.path(), config()).expect("open");
    deliver_with(&queue, "evt_1", report_with_request("evt_1", 300)).await;
    let bytes = queue.stats().expect("stats").pending_report_bytes;
    assert!(bytes > 300, "{bytes}");
    queue.close().await;
    {
        // An older agent ran on the file meanwhile and acknowledged nothing it counted.
        let db = redb::Database::open(dir.path().join("queue.redb")).expect("db");
        let txn = db.begin_write().expect("write");
        txn.open_table(META)
            .expect("meta")
            .insert(META_OUTBOX_BYTES, 1 << 40)
            .expect("count");
        txn.commit().expect("commit");
    }
    let queue = Queue::open(dir.path(), config()).expect("open again");
    assert_eq!(queue.stats().expect("stats").pending_report_bytes, bytes);
}

#[tokio::test]
async fn a_queue_written_before_the_outbox_bytes_were_counted_counts_them_when_it_opens() {
    let dir = tempfile::tempdir().expect("dir");
    let report = report_with_request("evt_1", 500);
    {
        // The file as an earlier agent left it: a report in the outbox, no byte count.
        let db = redb::Database::create(dir.path().join("queue.redb")).expect("create");
        let txn = db.begin_write().expect("write");
        {
            let mut outbox = txn.open_table(OUTBOX).expect("outbox");
            outbox
                .insert(1, report.encode_to_vec().as_slice())
                .expect("report");
            let mut meta = txn.open_table(META).expect("meta");
            meta.insert(META_SEQ, 1).expect("seq");
        }
        txn.commit().expect("commit");
    }
    let queue = Queue::open(dir.path(), config()).expect("open");
    let stats = queue.stats().expect("stats");
    assert_eq!(stats.pending_reports, 1);
    assert_eq!(stats.pending_report_bytes, report.encoded_len() as u64);
    queue.ack_reports(1, 1).await.expect("ack");
    queue.flush().await.expect("flush");
    assert_eq!(queue.stats().expect("stats").pending_report_bytes, 0);
}

/// What the fault suite's workload saw.
#[derive(Default)]
struct Workload {
    /// Events whose `Emit` was acknowledged.
    acknowledged: Vec<String>,
    /// Events whose delivery's outcome (done) was sent to the writer.
    delivered: std::collections::HashSet<String>,
    /// The error the fault gave, if it struck.
    failure: Option<QueueError>,
}

/// Accepts events one at a time and delivers them, some at once and some after a retry,
/// until `events` were tried or a write fails.
async fn run_workload(queue: &Queue, events: usize) -> Workload {
    let mut seen = Workload::default();
    for i in 0..events {
        let id = format!("evt_{i}");
        let new = NewEvent {
            event: event(&id, 100),
            subscriptions: vec!["sub".into()],
            parked: Vec::new(),
        };
        match queue.accept(vec![new]).await {
            Ok(_) => seen.acknowledged.push(id),
            Err(err) => {
                seen.failure = Some(err);
                return seen;
            }
        }
        let due = match queue.due(u64::MAX - 1, 4, room(4)) {
            Ok(due) => due,
            Err(err) => {
                seen.failure = Some(err);
                return seen;
            }
        };
        for task in due {
            let next = if task.attempts == 0 && i % 2 == 0 {
                Next::RetryAt(now_ms())
            } else {
                seen.delivered.insert(task.event.id().to_owned());
                Next::Done
            };
            task.finish(next, pb::Attempt::default())
                .await
                .expect("the writer takes outcomes");
        }
        if let Err(err) = queue.flush().await {
            seen.failure = Some(err);
            return seen;
        }
    }
    seen
}

#[tokio::test]
async fn every_write_and_sync_failing_leaves_the_queue_whole_and_writing_again_without_a_restart() {
    const EVENTS: usize = 6;
    let config = || QueueConfig {
        // Checkpoints now and then, so faults strike log appends, log syncs and checkpoints.
        checkpoint_every: Duration::from_millis(1),
        ..config()
    };
    // The workload's writes and syncs, counted on a disk that never fails.
    let clean = PowerLossDisk::default();
    let queue = clean.start(config());
    let start_ops = clean.state().ops;
    run_workload(&queue, EVENTS).await;
    queue.close().await;
    let points = clean.state().ops - start_ops;
    assert!(points > 20, "the workload writes ({points} points)");
    let mut rng = Rng(0x5EED);
    for fault in [Fault::NoSpace, Fault::Eio, Fault::Torn] {
        let mut struck = 0;
        for at in 0..points {
            let context = format!("{fault:?} at write or sync {at} of {points}");
            let disk = PowerLossDisk::default();
            let queue = disk.start(config());
            {
                let mut state = disk.state();
                state.fault = fault;
                state.writes_left = Some(at);
            }
            let seen = run_workload(&queue, EVENTS).await;
            if let Some(failure) = &seen.failure {
                struck += 1;
                let expected = match fault {
                    Fault::NoSpace => matches!(failure, QueueError::DiskFull(_)),
                    _ => matches!(failure, QueueError::Io(_)),
                };
                assert!(expected, "{context}: a typed disk fault, not {failure:?}");
                assert!(!*queue.writable().borrow(), "{context}: health hears of it");
            }
            // The fault clears: the same queue writes again, with nothing acknowledged lost.
            disk.state().writes_left = None;
            // (A flush reopens the files; its answer is the fault or nothing.)
            let _ = queue.flush().await;
            let after = NewEvent {
                event: event("evt_after", 100),
                subscriptions: vec!["sub".into()],
                parked: Vec::new(),
            };
            queue
                .accept(vec![after])
                .await
                .unwrap_or_else(|e| panic!("{context}: writes resume without a restart: {e}"));
            assert!(*queue.writable().borrow(), "{context}: healthy again");
            let check = |queue: &Queue, when: &str| {
                let tasks = stored_tasks(queue);
                for id in seen.acknowledged.iter().chain([&"evt_after".to_owned()]) {
                    assert!(
                        queue
                            .event(&EventKey::new("t", id))
                            .expect("read")
                            .is_some(),
                        "{context}, {when}: acknowledged {id} kept"
                    );
                    let pending = tasks.contains_key(&(id.clone(), "sub".to_owned()));
                    assert!(
                        pending || seen.delivered.contains(id),
                        "{context}, {when}: {id}'s delivery is neither made nor pending"
                    );
                }
            };
            check(&queue, "after the fault cleared");
            let due = queue.due(u64::MAX - 1, 20, room(20)).expect("due");
            assert!(
                due.iter().any(|task| task.event.id() == "evt_after"),
                "{context}: new work is handed out"
            );
            for task in due {
                task.finish(Next::Done, pb::Attempt::default())
                    .await
                    .expect("complete");
            }
            queue.flush().await.expect("outcomes commit");
            drop(queue);
            // And a power loss afterwards keeps it all.
            let image = disk.after_power_loss(&mut rng);
            let queue = image.start(config());
            for id in seen.acknowledged.iter().chain([&"evt_after".to_owned()]) {
                assert!(
                    queue
                        .event(&EventKey::new("t", id))
                        .expect("read")
                        .is_some(),
                    "{context}, after a power loss: acknowledged {id} kept"
                );
            }
            assert!(
                stored_tasks(&queue).is_empty(),
                "{context}: every delivery was made"
            );
            queue.close().await;
        }
        // Faults past the workload's last write (in its closing checkpoint) strike nothing.
        assert!(
            struck >= points / 2,
            "{fault:?}: the fault struck {struck} of {points} runs"
        );
    }
}

#[tokio::test]
async fn a_lease_dropped_unfinished_hands_its_task_back_as_it_was() {
    let disk = PowerLossDisk::default();
    let queue = disk.start(config());
    accept_one(&queue, event("evt_1", 10), &["sub"]).await;
    let lease = queue
        .due(u64::MAX - 1, 1, room(1))
        .expect("due")
        .pop()
        .expect("the delivery");
    assert!(
        queue
            .due(u64::MAX - 1, 10, room(10))
            .expect("due")
            .is_empty(),
        "taken while leased"
    );
    // An attempt cancelled half-way (its future dropped, as at shutdown) drops its lease.
    let attempt = async move {
        let _lease = lease;
        std::future::pending::<()>().await;
    };
    let cancelled = tokio::time::timeout(Duration::from_millis(10), attempt).await;
    assert!(cancelled.is_err());
    let again = queue.due(u64::MAX - 1, 10, room(10)).expect("due");
    assert_eq!(again.len(), 1, "handed back, due again");
    assert_eq!((again[0].event.id(), again[0].attempts), ("evt_1", 0));
    assert_eq!(
        queue.pending_reports().expect("reports"),
        0,
        "nothing recorded"
    );
}

#[tokio::test]
async fn the_next_due_time_passes_over_lanes_the_scheduler_admits_nothing_to() {
    let disk = PowerLossDisk::default();
    let queue = disk.start(config());
    accept_one(&queue, event("evt_1", 10), &["sub_full"]).await;
    accept_one(&queue, event("evt_2", 10), &["sub_open"]).await;
    let full_only = |lane: &str, _: usize| usize::from(lane != "sub_full");
    let nothing = |_: &str, _: usize| 0;
    assert!(queue.next_due(full_only).is_some(), "sub_open has room");
    assert_eq!(queue.next_due(nothing), None, "no lane has room");
    let taken = queue.due(u64::MAX - 1, 10, full_only).expect("due");
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].subscription_id, "sub_open");
    assert_eq!(
        queue.next_due(full_only),
        None,
        "sub_open's task is taken, sub_full admits nothing"
    );
}

#[tokio::test]
async fn a_sweep_removes_every_event_past_retention_however_many_batches_that_takes() {
    let dir = tempfile::tempdir().expect("dir");
    let short = QueueConfig {
        max_events: u64::MAX,
        max_bytes: u64::MAX,
        retention: Duration::from_millis(1),
        dedup_window: Duration::from_millis(1),
        ..config()
    };
    let queue = Queue::open(dir.path(), short).expect("open");
    let total = machine::SWEEP_BATCH + 5;
    for first in (0..total).step_by(1000) {
        let batch = (first..(first + 1000).min(total))
            .map(|i| NewEvent {
                event: event(&format!("evt_{i}"), 10),
                ..Default::default()
            })
            .collect();
        queue.accept(batch).await.expect("accept");
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(queue.sweep().await.expect("sweep"), total as u64);
    assert_eq!(queue.stats().expect("stats").events, 0);
}

#[tokio::test]
async fn a_retention_order_kept_per_event_is_rewritten_into_buckets_and_still_sweeps() {
    let dir = tempfile::tempdir().expect("dir");
    let accepted_ms = now_ms();
    {
        // The file as an earlier agent left it: one retention-order entry per event.
        let db = redb::Database::create(dir.path().join("queue.redb")).expect("create");
        let txn = db.begin_write().expect("write");
        {
            let mut events = txn.open_table(EVENTS).expect("events");
            let mut accepted = txn.open_table(ACCEPTED_BY_EVENT).expect("accepted");
            for (id, at) in [
                ("a", accepted_ms),
                ("b", accepted_ms),
                ("c", accepted_ms + 1),
            ] {
                let value = encode_event(at, 0, &event(id, 10));
                let key = EventKey::new("t", id);
                events
                    .insert(key.as_str(), value.as_slice())
                    .expect("event");
                accepted.insert((at, key.as_str()), ()).expect("order");
            }
            // And a bucket of the same time that a later agent wrote to the same file.
            let value = encode_event(accepted_ms, 0, &event("d", 10));
            let key = EventKey::new("t", "d");
            events
                .insert(key.as_str(), value.as_slice())
                .expect("event");
            let mut buckets = txn.open_table(ACCEPTED).expect("buckets");
            let bucket = encode_bucket([key.as_str()]);
            buckets
                .insert((accepted_ms, 0), bucket.as_slice())
                .expect("bucket");
            let mut meta = txn.open_table(META).expect("meta");
            meta.insert(META_EVENT_KEYS, 1).expect("keyed");
            meta.insert(META_EVENTS, 4).expect("events");
            meta.insert(META_BYTES, 40).expect("bytes");
        }
        txn.commit().expect("commit");
    }
    let short = QueueConfig {
        retention: Duration::from_millis(1),
        dedup_window: Duration::from_millis(1),
        ..config()
    };
    let queue = Queue::open(dir.path(), short).expect("open");
    assert_eq!(
        retention_buckets(&queue),
        3,
        "the later bucket kept beside two new"
    );
    {
        let db = queue.shared.db().expect("file open");
        let txn = db.begin_read().expect("read");
        assert!(
            txn.open_table(ACCEPTED_BY_EVENT).is_err(),
            "the old table is gone"
        );
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(queue.sweep().await.expect("sweep"), 4);
    assert_eq!(queue.stats().expect("stats").events, 0);
}

#[tokio::test]
async fn a_commit_of_many_events_keeps_their_retention_order_in_few_entries() {
    let dir = tempfile::tempdir().expect("dir");
    let short = QueueConfig {
        retention: Duration::from_millis(1),
        dedup_window: Duration::from_millis(1),
        max_events: 1000,
        ..config()
    };
    let queue = Queue::open(dir.path(), short.clone()).expect("open");
    let batch = (0..2500)
        .map(|i| NewEvent {
            event: event(&format!("evt_{i}"), 10),
            subscriptions: Vec::new(),
            parked: Vec::new(),
        })
        .collect();
    queue.accept(batch).await.expect("accept");
    queue.close().await;
    let queue = Queue::open(dir.path(), short).expect("reopen");
    assert_eq!(retention_buckets(&queue), 3, "at most 1,024 keys a bucket");
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(queue.sweep().await.expect("sweep"), 2500);
    assert_eq!(queue.stats().expect("stats").events, 0);
}

#[tokio::test]
async fn sweeps_replayed_after_a_power_loss_leave_the_retention_order_as_it_was() {
    let short = QueueConfig {
        retention: Duration::from_millis(1),
        dedup_window: Duration::from_millis(1),
        max_events: 1000,
        // No checkpoint until the restart: every change below is replayed from the log.
        checkpoint_every: CHECKPOINT_EVERY * 3600,
        ..config()
    };
    let batch = |prefix: &str, n: usize| -> Vec<NewEvent> {
        (0..n)
            .map(|i| NewEvent {
                event: event(&format!("{prefix}_{i}"), 10),
                subscriptions: Vec::new(),
                parked: Vec::new(),
            })
            .collect()
    };
    let mut rng = Rng(7);
    let disk = PowerLossDisk::default();
    let queue = disk.start(short.clone());
    // Two commits at two times: two buckets, in the file once the queue closes.
    queue.accept(batch("a", 5)).await.expect("accept");
    tokio::time::sleep(Duration::from_millis(5)).await;
    queue.accept(batch("b", 5)).await.expect("accept");
    queue.close().await;
    let queue = disk.start(short.clone());
    // Both swept whole: the file's buckets are emptied by the log's records.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(queue.sweep().await.expect("sweep"), 10);
    queue.accept(batch("c", 3)).await.expect("accept");
    let disk = disk.after_power_loss(&mut rng);
    let queue = disk.start(short);
    assert_eq!(queue.stats().expect("stats").events, 3, "only c_* are left");
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(queue.sweep().await.expect("sweep"), 3, "each entry once");
    assert_eq!(queue.stats().expect("stats").events, 0);
    // A swept id is free again.
    let again = queue.accept(batch("a", 1)).await.expect("accept");
    assert!(!again[0].duplicate);
}

/// How many entries (buckets) the queue file's retention order holds.
fn retention_buckets(queue: &Queue) -> u64 {
    use redb::ReadableTableMetadata as _;
    let db = queue.shared.db().expect("file open");
    let txn = db.begin_read().expect("read");
    txn.open_table(ACCEPTED)
        .expect("buckets")
        .len()
        .expect("len")
}

#[tokio::test]
async fn a_queue_file_that_is_damaged_or_in_use_is_named_and_explained() {
    let dir = tempfile::tempdir().expect("a temp dir");
    std::fs::write(dir.path().join("queue.redb"), vec![0x5a; 8192]).expect("written");
    let Err(damaged @ QueueError::DamagedFile(_)) = Queue::open(dir.path(), config()) else {
        panic!("a damaged file opened, or failed as something else");
    };
    let text = damaged.to_string();
    assert!(
        text.contains("queue.redb is damaged") && text.contains("move it aside"),
        "{text}"
    );

    let dir = tempfile::tempdir().expect("a temp dir");
    let _open = Queue::open(dir.path(), config()).expect("open");
    let Err(QueueError::Storage(text)) = Queue::open(dir.path(), config()) else {
        panic!("opened twice, or failed as something else");
    };
    assert!(
        text.contains("queue.redb is open in another process"),
        "{text}"
    );
}

#[tokio::test]
async fn below_the_disk_margin_new_events_are_refused_and_deliveries_go_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = Queue::open(dir.path(), config()).expect("open");
    accept_one(&queue, event("evt_1", 5), &["sub_a"]).await;
    queue.close().await;

    let short = QueueConfig {
        min_free_bytes: u64::MAX,
        ..config()
    };
    let queue = Queue::open(dir.path(), short).expect("open");
    assert!(
        !*queue.accepting().borrow(),
        "health hears of it before any event is refused"
    );
    assert!(*queue.writable().borrow(), "attempts go on");
    let refused = refused_new_event(&queue).await;
    assert!(matches!(refused, QueueError::DiskFull(_)), "{refused:?}");
    // Its outcome spends the margin.
    deliver_taken(&queue).await;
    queue.flush().await.expect("a flush adds nothing");
    assert!(!*queue.accepting().borrow(), "still no room");
    queue.close().await;

    let queue = Queue::open(dir.path(), config()).expect("open with room");
    assert!(*queue.accepting().borrow());
    assert!(
        queue.due(now_ms(), 10, room(16)).expect("due").is_empty(),
        "the delivery's outcome was kept"
    );
    queue.close().await;
}

#[tokio::test]
async fn the_oldest_delivery_leaves_out_subscriptions_parked_on_purpose() {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = Queue::open(dir.path(), config()).expect("open");
    queue
        .accept(vec![NewEvent {
            event: event("evt_parked", 10),
            subscriptions: vec!["sub_off".into()],
            parked: Vec::new(),
        }])
        .await
        .expect("accept");
    let stats = queue.stats().expect("stats");
    assert!(stats.oldest_pending_accepted_ms.is_some());
    let beside = queue
        .stats_beside_parked(|subscription| subscription == "sub_off")
        .expect("stats");
    assert_eq!(beside.oldest_pending_accepted_ms, None);
    assert_eq!(beside.pending_deliveries, 1, "still counted as pending");
    queue.close().await;
}

#[tokio::test]
async fn a_queue_file_that_can_never_be_used_is_refused_as_a_setting_not_waited_for() {
    for (name, what) in [("queue.redb", "directory"), ("queue.wal", "fifo")] {
        let dir = tempfile::tempdir().expect("a dir");
        let path = dir.path().join(name);
        match what {
            "directory" => std::fs::create_dir(&path).expect("a directory"),
            _ => {
                let made = std::process::Command::new("mkfifo")
                    .arg(&path)
                    .status()
                    .expect("mkfifo");
                assert!(made.success());
            }
        }
        let Err(err) = Queue::open(dir.path(), config()) else {
            panic!("a {what} in place of {name} was taken");
        };
        assert!(
            matches!(&err, QueueError::Unusable(why) if why.contains(name)),
            "{err:?}"
        );
        assert!(!err.is_disk_fault(), "not waited for as a disk fault");
    }
}

/// Why `queue` refuses a new event for `sub_a` (it must).
async fn refused_new_event(queue: &Queue) -> QueueError {
    queue
        .accept(vec![NewEvent {
            event: event("evt_refused", 5),
            subscriptions: vec!["sub_a".into()],
            parked: Vec::new(),
        }])
        .await
        .expect_err("new events refused")
}

/// Takes the delivery due first and writes its outcome, delivered (it must be written).
async fn deliver_taken(queue: &Queue) {
    let task = queue
        .due(now_ms(), 10, room(16))
        .expect("due")
        .pop()
        .expect("a delivery taken before");
    task.finish(Next::Done, pb::Attempt::default())
        .await
        .expect("its outcome is written");
}

/// What a `kill -9` would leave of the queue in `dir` now: its two files as written.
fn image_of(dir: &Path) -> tempfile::TempDir {
    let image = tempfile::tempdir().expect("tempdir");
    for name in [in_place::QUEUE_FILE, in_place::LOG_FILE] {
        std::fs::copy(dir.join(name), image.path().join(name)).expect("copy");
    }
    image
}

#[tokio::test]
async fn a_removed_log_is_made_again_before_the_next_event_and_nothing_is_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = Queue::open(dir.path(), config()).expect("open");
    // In the log only: no checkpoint since.
    accept_one(&queue, event("evt_1", 5), &["sub_a"]).await;
    let log = dir.path().join(in_place::LOG_FILE);
    std::fs::remove_file(&log).expect("rm queue.wal");

    // Made again before the next event is acknowledged, from the log still open.
    accept_one(&queue, event("evt_2", 5), &["sub_a"]).await;
    assert_eq!(
        std::fs::metadata(&log).expect("made again").len(),
        wal::WAL_BYTES
    );
    assert!(!dir.path().join("queue.wal.new").exists());
    assert!(*queue.accepting().borrow(), "events are still taken");

    let image = image_of(dir.path());
    queue.close().await;
    let after_kill = Queue::open(image.path(), config()).expect("what a kill -9 leaves opens");
    for id in ["evt_1", "evt_2"] {
        assert!(
            after_kill
                .event(&EventKey::new("t", id))
                .expect("read")
                .is_some(),
            "{id} kept"
        );
    }
    after_kill.close().await;
}

#[tokio::test]
async fn a_removed_queue_file_stops_new_events_until_it_is_back_and_deliveries_go_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = Queue::open(dir.path(), config()).expect("open");
    accept_one(&queue, event("evt_1", 5), &["sub_a"]).await;
    let (file, aside) = (
        dir.path().join(in_place::QUEUE_FILE),
        dir.path().join("aside.redb"),
    );
    std::fs::rename(&file, &aside).expect("move queue.redb away");

    queue.flush().await.expect("a flush looks at the files");
    assert!(!*queue.accepting().borrow(), "health hears of it");
    assert!(*queue.writable().borrow(), "attempts go on");
    // Not kept where a restart finds it.
    let refused = refused_new_event(&queue).await;
    assert!(
        matches!(&refused, QueueError::Displaced(why) if why.contains("removed")),
        "{refused:?}"
    );
    assert_eq!(
        tonic::Status::from(refused).code(),
        tonic::Code::Unavailable
    );
    deliver_taken(&queue).await;

    // The same file back: events are taken again.
    std::fs::rename(&aside, &file).expect("move it back");
    queue.flush().await.expect("flush");
    assert!(*queue.accepting().borrow());
    accept_one(&queue, event("evt_3", 5), &["sub_a"]).await;
    queue.close().await;
}

#[test]
fn a_log_missing_at_start_is_said_to_be_missing_not_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let queue = Queue::open(dir.path(), config()).expect("open");
        accept_one(&queue, event("evt_1", 5), &["sub_a"]).await;
        queue.close().await;
    });
    std::fs::remove_file(dir.path().join(in_place::LOG_FILE)).expect("rm queue.wal");
    let refused = runtime
        .block_on(async { Queue::open(dir.path(), config()) })
        .err()
        .expect("the log's records since the last checkpoint may be lost");
    assert!(
        matches!(refused, QueueError::CutLog { len: 0 })
            && refused
                .to_string()
                .contains("queue.wal is missing or empty"),
        "{refused}"
    );
}

#[test]
fn a_queue_file_cut_to_nothing_is_damage_not_a_new_queue() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let queue = Queue::open(dir.path(), config()).expect("open");
        accept_one(&queue, event("evt_1", 5), &["sub_a"]).await;
        queue.close().await;
    });
    let file = dir.path().join(in_place::QUEUE_FILE);
    std::fs::File::create(&file).expect("cut to nothing");
    let refused = runtime
        .block_on(async { Queue::open(dir.path(), config()) })
        .err()
        .expect("the events it held would be gone");
    assert!(
        matches!(&refused, QueueError::DamagedFile(why) if why.contains("is empty")),
        "{refused}"
    );
    // Moved away with its log, it starts empty; so does a first start cut short (an empty
    // file beside no log).
    std::fs::remove_file(dir.path().join(in_place::LOG_FILE)).expect("rm queue.wal");
    runtime.block_on(async {
        let queue = Queue::open(dir.path(), config()).expect("a new queue");
        queue.close().await;
    });
}
