//! Making an opened queue file ready for use: its tables created, the one-time rewrites of a
//! retention order kept per event and of events keyed before tenants were part of their
//! keys, the write-ahead log replayed ([`recover`]), the outbox's byte count checked, and the
//! scheduler's index of lanes given its hints.

use redb::{Database, ReadableDatabase, ReadableTable};

use super::records::{
    decode_bucket, decode_event, decode_task, decode_waiting, encode_bucket, encode_task,
    encode_waiting,
};
use super::tables::{Tables, put_buckets};
use super::view::View;
use super::wal::Wal;
use super::{
    ACCEPTED, ACCEPTED_BY_EVENT, EVENTS, EventKey, META, META_EPOCH, META_EVENT_KEYS,
    META_OUTBOX_BYTES, ORDERED, OUTBOX, QueueError, TASKS, lanes, storage, wal,
};

/// Rewrites a queue written before events were keyed by tenant: each event, its place in the
/// retention order, and the deliveries that name it get the key of its tenant and id
/// ([`EventKey`]). One durable commit, once (`meta.event_keys` says it was done); returns how
/// many events were rekeyed.
pub(super) fn migrate_event_keys(db: &Database) -> Result<usize, QueueError> {
    let txn = db.begin_write().map_err(storage)?;
    let rekeyed;
    {
        let mut meta = txn.open_table(META).map_err(storage)?;
        if meta.get(META_EVENT_KEYS).map_err(storage)?.is_some() {
            return Ok(0);
        }
        let mut events = txn.open_table(EVENTS).map_err(storage)?;
        let mut renamed: std::collections::HashMap<String, EventKey> = Default::default();
        let mut moved = Vec::new();
        for entry in events.iter().map_err(storage)? {
            let (key, value) = entry.map_err(storage)?;
            let old = key.value().to_owned();
            if old.contains('/') {
                continue;
            }
            let event = decode_event(value.value())?.event;
            moved.push((old.clone(), value.value().to_vec()));
            renamed.insert(old, EventKey::of(&event));
        }
        for (old, value) in &moved {
            events.remove(old.as_str()).map_err(storage)?;
            events
                .insert(renamed[old].as_str(), value.as_slice())
                .map_err(storage)?;
        }
        let rename = |text: &str| renamed.get(text).cloned();
        let mut accepted = txn.open_table(ACCEPTED).map_err(storage)?;
        let mut rebucketed = Vec::new();
        for entry in accepted.iter().map_err(storage)? {
            let (key, value) = entry.map_err(storage)?;
            let keys = decode_bucket(value.value())?;
            if keys.iter().any(|id| rename(id).is_some()) {
                let mut keys: Vec<String> = keys
                    .into_iter()
                    .map(|id| {
                        rename(id).map_or_else(|| id.to_owned(), |new| new.as_str().to_owned())
                    })
                    .collect();
                keys.sort_unstable();
                rebucketed.push((key.value(), encode_bucket(keys.iter().map(String::as_str))));
            }
        }
        for (key, value) in rebucketed {
            accepted.insert(key, value.as_slice()).map_err(storage)?;
        }
        let mut tasks = txn.open_table(TASKS).map_err(storage)?;
        let mut retasked = Vec::new();
        for entry in tasks.iter().map_err(storage)? {
            let (key, value) = entry.map_err(storage)?;
            let (lane, due, seq) = key.value();
            let task = decode_task((lane, due, seq), value.value())?;
            if let Some(new) = rename(task.event.as_str()) {
                let value = encode_task(task.attempts, &new, &task.ordering_key);
                retasked.push(((lane.to_owned(), due, seq), value));
            }
        }
        for ((lane, due, seq), value) in retasked {
            tasks
                .insert((lane.as_str(), due, seq), value.as_slice())
                .map_err(storage)?;
        }
        let mut ordered = txn.open_table(ORDERED).map_err(storage)?;
        let mut reordered = Vec::new();
        for entry in ordered.iter().map_err(storage)? {
            let (key, value) = entry.map_err(storage)?;
            let waiting = decode_waiting(value.value())?;
            if let Some(new) = rename(waiting.event.as_str()) {
                let (lane, ordering_key, seq) = key.value();
                let key = (lane.to_owned(), ordering_key.to_owned(), seq);
                reordered.push((key, encode_waiting(waiting.due, &new)));
            }
        }
        for ((lane, ordering_key, seq), value) in reordered {
            ordered
                .insert(
                    (lane.as_str(), ordering_key.as_str(), seq),
                    value.as_slice(),
                )
                .map_err(storage)?;
        }
        meta.insert(META_EVENT_KEYS, 1).map_err(storage)?;
        rekeyed = moved.len();
    }
    txn.commit().map_err(storage)?;
    Ok(rekeyed)
}

/// Rewrites the retention order of a queue written when it had one entry per event into
/// buckets of the events accepted at the same time, in `txn`; returns how many entries were
/// rewritten. Done before the log is replayed, whose records change the buckets.
pub(super) fn migrate_accepted(txn: &redb::WriteTransaction) -> Result<usize, QueueError> {
    let mut by_time: std::collections::BTreeMap<u64, Vec<String>> = Default::default();
    {
        let old = txn.open_table(ACCEPTED_BY_EVENT).map_err(storage)?;
        for entry in old.iter().map_err(storage)? {
            let (key, _) = entry.map_err(storage)?;
            let (at, id) = key.value();
            by_time.entry(at).or_default().push(id.to_owned());
        }
    }
    txn.delete_table(ACCEPTED_BY_EVENT).map_err(storage)?;
    let mut accepted = txn.open_table(ACCEPTED).map_err(storage)?;
    let mut moved = 0;
    for (at, mut keys) in by_time {
        moved += keys.len();
        keys.sort_unstable();
        // After any bucket the time has already (a file an older agent wrote to again).
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        put_buckets(&mut accepted, at, &keys)?;
    }
    Ok(moved)
}

/// Counts the outbox's bytes into `meta.outbox_bytes` at every open: the state machine keeps
/// the count from then on, but a file an older agent wrote to (or one written before the
/// count existed) may hold reports it did not count. The outbox is bounded, so this reads at
/// most `max_pending_report_bytes`.
pub(super) fn count_outbox_bytes(db: &Database) -> Result<(), QueueError> {
    let txn = db.begin_write().map_err(storage)?;
    {
        let mut meta = txn.open_table(META).map_err(storage)?;
        let outbox = txn.open_table(OUTBOX).map_err(storage)?;
        let mut bytes = 0;
        for entry in outbox.iter().map_err(storage)? {
            bytes += entry.map_err(storage)?.1.value().len() as u64;
        }
        let counted = meta
            .get(META_OUTBOX_BYTES)
            .map_err(storage)?
            .map(|v| v.value());
        if counted == Some(bytes) {
            return Ok(());
        }
        meta.insert(META_OUTBOX_BYTES, bytes).map_err(storage)?;
    }
    txn.commit().map_err(storage)
}

/// Gives `index` a hint for each lane of the file: its earliest task, one seek per lane. (An
/// index in use keeps its taken tasks; hints it already had may be early, as hints may.)
pub(super) fn index_lanes(db: &Database, index: &mut lanes::Lanes) -> Result<(), QueueError> {
    use std::ops::Bound;
    let txn = db.begin_read().map_err(storage)?;
    let Ok(tasks) = txn.open_table(TASKS) else {
        return Ok(());
    };
    let mut after: Option<String> = None;
    loop {
        let start = match &after {
            Some(lane) => Bound::Excluded((lane.as_str(), u64::MAX, u64::MAX)),
            None => Bound::Unbounded,
        };
        let mut range = tasks
            .range::<(&str, u64, u64)>((start, Bound::Unbounded))
            .map_err(storage)?;
        let Some(entry) = range.next() else { break };
        let (key, _) = entry.map_err(storage)?;
        let (lane, due, seq) = key.value();
        index.added(lane, due, seq);
        after = Some(lane.to_owned());
    }
    Ok(())
}

/// Makes an opened queue file and log ready for use: creates the tables, rewrites an old
/// retention order ([`migrate_accepted`]), replays the log ([`recover`]) and rekeys old
/// events. Returns the log at the start of its new epoch.
pub(super) fn prepare(
    db: &Database,
    wal: Box<dyn redb::StorageBackend>,
    recover_truncate: bool,
) -> Result<(wal::Wal, u64), QueueError> {
    let txn = db.begin_write().map_err(storage)?;
    {
        txn.open_table(EVENTS).map_err(storage)?;
        txn.open_table(ACCEPTED).map_err(storage)?;
        txn.open_table(TASKS).map_err(storage)?;
        txn.open_table(ORDERED).map_err(storage)?;
        txn.open_table(OUTBOX).map_err(storage)?;
        txn.open_table(META).map_err(storage)?;
    }
    let moved = migrate_accepted(&txn)?;
    txn.commit().map_err(storage)?;
    if moved > 0 {
        tracing::info!(
            events = moved,
            "the queue's retention order rewritten into buckets"
        );
    }
    let mut wal = wal::Wal::open(wal).map_err(storage)?;
    let (epoch, replayed) = recover(db, &mut wal, recover_truncate)?;
    if replayed > 0 {
        tracing::info!(
            commits = replayed,
            "queue recovered from its write-ahead log"
        );
    }
    let rekeyed = migrate_event_keys(db)?;
    if rekeyed > 0 {
        tracing::info!(events = rekeyed, "queued events keyed by tenant and id");
    }
    count_outbox_bytes(db)?;
    Ok((wal, epoch))
}

/// Replays the log's records of the epoch the queue file names, if any, then makes a
/// checkpoint that starts a new epoch (so nothing left in the log from before can ever be
/// read as part of it). Returns the new epoch and how many records were replayed.
fn recover(db: &Database, wal: &mut Wal, truncate: bool) -> Result<(u64, usize), QueueError> {
    let txn = db.begin_write().map_err(storage)?;
    let epoch = {
        let meta = txn.open_table(META).map_err(storage)?;
        meta.get(META_EPOCH)
            .map_err(storage)?
            .map_or(0, |v| v.value())
    };
    // The log is preallocated before its first epoch starts: once the queue file names an
    // epoch, a shorter log was cut, and the records after the cut (perhaps acknowledged) are
    // gone without a trace to count.
    if let Some(len) = wal.cut_short()
        && epoch > 0
    {
        if !truncate {
            return Err(QueueError::CutLog { len });
        }
        tracing::error!(
            len,
            "the queue's write-ahead log was cut short: as --recover-truncate asks, the records \
             before the cut are kept and those after it are lost"
        );
    }
    let read = wal.read_epoch(epoch).map_err(storage)?;
    wal.preallocate().map_err(storage)?;
    if let Some(damage) = read.damaged {
        if !truncate {
            return Err(QueueError::DamagedLog {
                offset: damage.offset,
                following: damage.following,
            });
        }
        tracing::error!(
            offset = damage.offset,
            dropped = damage.following + 1,
            "the queue's write-ahead log has a damaged record: as --recover-truncate asks, what \
             precedes it is kept, and it and the records after it are dropped"
        );
    }
    let bodies = read.bodies;
    {
        // Every change goes into the file directly: this commit is a checkpoint.
        let mut tables = Tables::open(&txn, None)?;
        for body in &bodies {
            tables.replay(body)?;
        }
        tables.put_meta(META_EPOCH, epoch + 1)?;
        tables.finish()?;
    }
    txn.commit().map_err(storage)?;
    wal.start_epoch(epoch + 1);
    Ok((epoch + 1, bodies.len()))
}
