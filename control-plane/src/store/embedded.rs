//! [`super::Store`] in one redb file (`config.redb`), for `herald dev` and single-node installs.
//!
//! Layout:
//! - `kv`: key → `mod_revision` (8 bytes, little-endian) followed by the value.
//! - `log`: revision → that revision's changes (see [`encode_changes`]), the watch history.
//! - `meta`: `revision` (the last committed revision) and `compacted` (the oldest revision the
//!   log still holds).
//! - `leased`: key → the lease it is bound to. Leases themselves live in memory: the store has
//!   one process, so when it stops every lease ends, and opening the store deletes every key
//!   still bound to one (as etcd would once their TTLs ran out). A reaper deletes the keys of
//!   leases that expire while the store is open.
//!
//! Every [`Txn`] is one redb write transaction committed with immediate durability (fsync), so
//! a write acknowledged to a caller survives a crash. Commits and the broadcast that wakes
//! watchers happen under one lock, so watchers see revisions in order. The log keeps the last
//! [`LOG_KEEP`] revisions; a watch from before that answers [`StoreError::Compacted`].

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{broadcast, mpsc};

use crate::redb_file::{Failure, IntoFailure, RedbFile};

use super::{
    Compare, KeyValue, LeaseId, Op, StoreError, Txn, TxnOutcome, WatchBatch, WatchEvent,
    WatchReceiver,
};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const LEASED: TableDefinition<&str, i64> = TableDefinition::new("leased");
const META_REVISION: &str = "revision";
const META_COMPACTED: &str = "compacted";

/// How many revisions of history the log keeps for watchers.
pub const LOG_KEEP: u64 = 10_000;
/// Revisions removed from the log at once when it outgrows [`LOG_KEEP`].
const LOG_TRIM: u64 = 1_000;
/// Buffered batches per watcher.
const WATCH_BUFFER: usize = 256;
/// Batches kept for watchers that fall behind before they re-read the log.
const BROADCAST_BUFFER: usize = 1024;
/// The file's page cache: the control plane keeps the whole config in memory besides (the
/// hub), so the file is read mostly at start.
const CACHE_BYTES: usize = 16 << 20;
/// How often expired leases are looked for.
const REAP_EVERY: Duration = Duration::from_millis(250);

/// The embedded store. Cloning shares the open file.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// `config.redb`, opened again by itself after a disk fault.
    file: RedbFile,
    /// Held across commit and broadcast so watchers receive revisions in order.
    commit_lock: Mutex<()>,
    /// Every committed revision's changes, unfiltered.
    changes: broadcast::Sender<Arc<WatchBatch>>,
    /// Live leases: their TTL and when they expire unless renewed.
    leases: Mutex<HashMap<LeaseId, (Duration, Instant)>>,
    next_lease: AtomicI64,
}

impl EmbeddedStore {
    /// Opens `dir/config.redb`, creating the directory and file when missing.
    pub async fn open(dir: &Path) -> Result<Self, StoreError> {
        let dir = dir.to_owned();
        blocking(move || {
            std::fs::create_dir_all(&dir)
                .map_err(|e| embedded(format!("{}: {e}", dir.display())))?;
            let file = RedbFile::create(&dir.join("config.redb"), CACHE_BYTES).map_err(embedded)?;
            file.run(true, |db| {
                let txn = db.begin_write().map_err(embedded)?;
                {
                    txn.open_table(KV).map_err(embedded)?;
                    txn.open_table(LOG).map_err(embedded)?;
                    txn.open_table(META).map_err(embedded)?;
                    txn.open_table(LEASED).map_err(embedded)?;
                }
                txn.commit().map_err(embedded)
            })?;
            let (changes, _) = broadcast::channel(BROADCAST_BUFFER);
            let inner = Inner {
                file,
                commit_lock: Mutex::new(()),
                changes,
                leases: Mutex::new(HashMap::new()),
                next_lease: AtomicI64::new(1),
            };
            // The leases of the last process ended with it.
            inner.delete_leased(|_| true)?;
            Ok(inner)
        })
        .await
        .map(|inner| {
            let inner = Arc::new(inner);
            tokio::spawn(reap(Arc::downgrade(&inner)));
            EmbeddedStore { inner }
        })
    }

    pub(super) fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let id = self.inner.next_lease.fetch_add(1, Ordering::Relaxed);
        self.inner.leases().insert(id, (ttl, Instant::now() + ttl));
        Ok(id)
    }

    pub(super) fn keep_lease_alive(&self, lease: LeaseId) -> Result<bool, StoreError> {
        let mut leases = self.inner.leases();
        let now = Instant::now();
        match leases.get_mut(&lease) {
            Some((ttl, deadline)) if *deadline > now => {
                *deadline = now + *ttl;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    pub(super) async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.inner.leases().remove(&lease);
        let inner = self.inner.clone();
        blocking(move || inner.delete_leased(|l| l == lease)).await
    }

    pub(super) async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let inner = self.inner.clone();
        let key = key.to_owned();
        blocking(move || {
            inner.read(|txn| {
                let table = txn.open_table(KV).map_err(embedded)?;
                let value = table.get(key.as_str()).map_err(embedded)?;
                value.map(|v| decode_kv(&key, v.value())).transpose()
            })
        })
        .await
    }

    pub(super) async fn get_many(
        &self,
        keys: &[String],
    ) -> Result<Vec<Option<KeyValue>>, StoreError> {
        let inner = self.inner.clone();
        let keys = keys.to_vec();
        blocking(move || {
            inner.read(|txn| {
                let table = txn.open_table(KV).map_err(embedded)?;
                keys.iter()
                    .map(|key| {
                        let value = table.get(key.as_str()).map_err(embedded)?;
                        value.map(|v| decode_kv(key, v.value())).transpose()
                    })
                    .collect()
            })
        })
        .await
    }

    pub(super) async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64), StoreError> {
        let inner = self.inner.clone();
        let prefix = prefix.to_owned();
        blocking(move || {
            inner.read(|txn| {
                let revision = current_revision(&txn.open_table(META).map_err(embedded)?)?;
                let table = txn.open_table(KV).map_err(embedded)?;
                let kvs = scan(&table, &prefix, None, usize::MAX)?;
                Ok((kvs, revision))
            })
        })
        .await
    }

    pub(super) async fn keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let inner = self.inner.clone();
        let prefix = prefix.to_owned();
        blocking(move || {
            inner.read(|txn| {
                let table = txn.open_table(KV).map_err(embedded)?;
                let mut keys = Vec::new();
                for entry in table.range(prefix.as_str()..).map_err(embedded)? {
                    let (key, _) = entry.map_err(embedded)?;
                    if !key.value().starts_with(&prefix) {
                        break;
                    }
                    keys.push(key.value().to_owned());
                }
                Ok(keys)
            })
        })
        .await
    }

    pub(super) async fn count(&self, prefix: &str) -> Result<u64, StoreError> {
        // One file on one node: walking the keys is the count.
        Ok(self.keys(prefix).await?.len() as u64)
    }

    pub(super) async fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        let inner = self.inner.clone();
        let prefix = prefix.to_owned();
        let after = after.map(str::to_owned);
        blocking(move || {
            inner.read(|txn| {
                let table = txn.open_table(KV).map_err(embedded)?;
                scan(&table, &prefix, after.as_deref(), limit)
            })
        })
        .await
    }

    pub(super) async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        let inner = self.inner.clone();
        blocking(move || inner.commit(txn)).await
    }

    pub(super) async fn watch(
        &self,
        prefix: &str,
        from_revision: i64,
    ) -> Result<WatchReceiver, StoreError> {
        // Subscribe before reading the log, so no revision falls between the two.
        let mut live = self.inner.changes.subscribe();
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let prefix = prefix.to_owned();
        let from = u64::try_from(from_revision.max(1)).unwrap_or(1);
        // Check compaction up front so the caller gets the error from `watch` itself.
        let history = {
            let inner = self.inner.clone();
            let prefix = prefix.clone();
            blocking(move || inner.read_log(&prefix, from)).await?
        };
        // The task must not keep the store open: when the last handle goes, the broadcast
        // closes and the task ends.
        let inner: Weak<Inner> = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut next = from;
            for batch in history {
                next = batch.revision as u64 + 1;
                if tx.send(Ok(batch)).await.is_err() {
                    return;
                }
            }
            loop {
                match live.recv().await {
                    Ok(batch) if (batch.revision as u64) < next => continue,
                    Ok(batch) => {
                        next = batch.revision as u64 + 1;
                        if let Some(batch) = filter_batch(&batch, &prefix)
                            && tx.send(Ok(batch)).await.is_err()
                        {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Fell behind the live feed: catch up from the log instead.
                        let Some(inner) = inner.upgrade() else { return };
                        let prefix = prefix.clone();
                        let read = blocking(move || inner.read_log(&prefix, next)).await;
                        match read {
                            Ok(batches) => {
                                for batch in batches {
                                    next = batch.revision as u64 + 1;
                                    if tx.send(Ok(batch)).await.is_err() {
                                        return;
                                    }
                                }
                            }
                            Err(err) => {
                                let _ = tx.send(Err(err)).await;
                                return;
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(rx)
    }
}

impl Inner {
    fn leases(&self) -> std::sync::MutexGuard<'_, HashMap<LeaseId, (Duration, Instant)>> {
        self.leases.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn commit(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        self.write(|kv, _| {
            // Checked under the commit lock: the reaper deletes an expired lease's keys under
            // it too, so no key is bound to a lease after its keys were reaped.
            for op in &txn.ops {
                if let Op::PutLeased(_, _, lease) = op {
                    let alive = self
                        .leases()
                        .get(lease)
                        .is_some_and(|(_, deadline)| *deadline > Instant::now());
                    if !alive {
                        return Err(embedded(format!("requested lease {lease} not found")));
                    }
                }
            }
            for compare in &txn.compares {
                let holds = match compare {
                    Compare::Absent(key) => kv.get(key.as_str()).map_err(embedded)?.is_none(),
                    Compare::ModRevision(key, rev) => {
                        match kv.get(key.as_str()).map_err(embedded)? {
                            Some(v) => decode_kv(key, v.value())?.mod_revision == *rev,
                            None => false,
                        }
                    }
                };
                if !holds {
                    return Ok(None);
                }
            }
            Ok(Some(txn.ops))
        })
        .map(|revision| match revision {
            Some(revision) => TxnOutcome::Committed { revision },
            None => TxnOutcome::Conflict,
        })
    }

    /// Deletes, in one revision, every key bound to a lease `ended` says is over.
    fn delete_leased(&self, ended: impl Fn(LeaseId) -> bool) -> Result<(), StoreError> {
        self.write(|_, leased| {
            let mut deletes = Vec::new();
            for entry in leased.iter().map_err(embedded)? {
                let (key, lease) = entry.map_err(embedded)?;
                if ended(lease.value()) {
                    deletes.push(Op::Delete(key.value().to_owned()));
                }
            }
            Ok((!deletes.is_empty()).then_some(deletes))
        })
        .map(|_| ())
    }

    /// One write at a new revision: `decide` reads the current keys and lease bindings and
    /// returns the ops to apply, or `None` to write nothing. The revision written, if any.
    fn write(
        &self,
        decide: impl FnOnce(
            &redb::Table<&str, &[u8]>,
            &redb::Table<&str, i64>,
        ) -> Result<Option<Vec<Op>>, StoreError>,
    ) -> Result<Option<i64>, StoreError> {
        let _order = self
            .commit_lock
            .lock()
            .map_err(|_| embedded("commit lock poisoned"))?;
        let batch = self.file.run(true, |db| -> Result<_, StoreError> {
            let write = db.begin_write().map_err(embedded)?;
            let batch = {
                let mut kv = write.open_table(KV).map_err(embedded)?;
                let mut leased = write.open_table(LEASED).map_err(embedded)?;
                let Some(ops) = decide(&kv, &leased)? else {
                    return Ok(None);
                };
                let mut meta = write.open_table(META).map_err(embedded)?;
                let revision = current_revision(&meta)? + 1;
                let mut events = Vec::with_capacity(ops.len());
                for op in ops {
                    let (key, value, lease) = match op {
                        Op::Put(key, value) => (key, Some(value), None),
                        Op::PutLeased(key, value, lease) => (key, Some(value), Some(lease)),
                        Op::Delete(key) => (key, None, None),
                    };
                    match lease {
                        Some(lease) => leased.insert(key.as_str(), lease).map_err(embedded)?,
                        None => leased.remove(key.as_str()).map_err(embedded)?,
                    };
                    match value {
                        Some(value) => {
                            kv.insert(key.as_str(), encode_kv(revision, &value).as_slice())
                                .map_err(embedded)?;
                            events.push(WatchEvent::Put(KeyValue {
                                key,
                                value,
                                mod_revision: revision,
                            }));
                        }
                        None => {
                            if kv.remove(key.as_str()).map_err(embedded)?.is_some() {
                                events.push(WatchEvent::Delete { key });
                            }
                        }
                    }
                }
                let rev = revision as u64;
                let mut log = write.open_table(LOG).map_err(embedded)?;
                log.insert(rev, encode_changes(&events).as_slice())
                    .map_err(embedded)?;
                meta.insert(META_REVISION, rev).map_err(embedded)?;
                let compacted = meta
                    .get(META_COMPACTED)
                    .map_err(embedded)?
                    .map_or(1, |v| v.value());
                if rev.saturating_sub(compacted) >= LOG_KEEP + LOG_TRIM {
                    let keep_from = compacted + LOG_TRIM;
                    log.retain_in(compacted..keep_from, |_, _| false)
                        .map_err(embedded)?;
                    meta.insert(META_COMPACTED, keep_from).map_err(embedded)?;
                }
                WatchBatch { revision, events }
            };
            write.commit().map_err(embedded)?;
            Ok(Some(batch))
        })?;
        let Some(batch) = batch else {
            return Ok(None);
        };
        let revision = batch.revision;
        // No receivers is fine: nobody is watching.
        let _ = self.changes.send(Arc::new(batch));
        Ok(Some(revision))
    }

    /// The logged changes under `prefix` from revision `from` on (revisions with none omitted).
    fn read_log(&self, prefix: &str, from: u64) -> Result<Vec<WatchBatch>, StoreError> {
        self.read(|txn| Self::log_of(txn, prefix, from))
    }

    /// Runs `read` in a read transaction ([`RedbFile::run`]).
    fn read<T>(
        &self,
        read: impl FnOnce(&redb::ReadTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.file
            .run(false, |db| read(&db.begin_read().map_err(embedded)?))
    }

    fn log_of(
        txn: &redb::ReadTransaction,
        prefix: &str,
        from: u64,
    ) -> Result<Vec<WatchBatch>, StoreError> {
        let meta = txn.open_table(META).map_err(embedded)?;
        let compacted = meta
            .get(META_COMPACTED)
            .map_err(embedded)?
            .map_or(1, |v| v.value());
        if from < compacted {
            return Err(StoreError::Compacted {
                requested: from as i64,
                compacted: compacted as i64,
            });
        }
        let log = txn.open_table(LOG).map_err(embedded)?;
        let mut batches = Vec::new();
        for entry in log.range(from..).map_err(embedded)? {
            let (rev, changes) = entry.map_err(embedded)?;
            let batch = WatchBatch {
                revision: rev.value() as i64,
                events: decode_changes(changes.value(), rev.value() as i64)?,
            };
            if let Some(batch) = filter_batch(&batch, prefix) {
                batches.push(batch);
            }
        }
        Ok(batches)
    }
}

/// Deletes the keys of leases that expire, while the store is open.
async fn reap(inner: Weak<Inner>) {
    loop {
        tokio::time::sleep(REAP_EVERY).await;
        let Some(inner) = inner.upgrade() else { return };
        let now = Instant::now();
        let expired: Vec<LeaseId> = {
            let mut leases = inner.leases();
            let expired = leases
                .iter()
                .filter(|(_, (_, deadline))| *deadline <= now)
                .map(|(id, _)| *id)
                .collect::<Vec<_>>();
            for id in &expired {
                leases.remove(id);
            }
            expired
        };
        if expired.is_empty() {
            continue;
        }
        let result = blocking(move || inner.delete_leased(|l| expired.contains(&l))).await;
        if let Err(err) = result {
            tracing::error!(error = %err, "cannot delete the keys of expired leases");
        }
    }
}

fn scan(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<KeyValue>, StoreError> {
    let mut out = Vec::new();
    let start = after.unwrap_or(prefix);
    for entry in table.range(start..).map_err(embedded)? {
        if out.len() >= limit {
            break;
        }
        let (key, value) = entry.map_err(embedded)?;
        let key = key.value();
        if !key.starts_with(prefix) {
            break;
        }
        if Some(key) == after {
            continue;
        }
        out.push(decode_kv(key, value.value())?);
    }
    Ok(out)
}

fn current_revision(meta: &impl ReadableTable<&'static str, u64>) -> Result<i64, StoreError> {
    Ok(meta
        .get(META_REVISION)
        .map_err(embedded)?
        .map_or(0, |v| v.value() as i64))
}

fn filter_batch(batch: &WatchBatch, prefix: &str) -> Option<WatchBatch> {
    let events: Vec<WatchEvent> = batch
        .events
        .iter()
        .filter(|event| match event {
            WatchEvent::Put(kv) => kv.key.starts_with(prefix),
            WatchEvent::Delete { key } => key.starts_with(prefix),
        })
        .cloned()
        .collect();
    (!events.is_empty()).then_some(WatchBatch {
        revision: batch.revision,
        events,
    })
}

fn encode_kv(revision: i64, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + value.len());
    out.extend_from_slice(&revision.to_le_bytes());
    out.extend_from_slice(value);
    out
}

fn decode_kv(key: &str, stored: &[u8]) -> Result<KeyValue, StoreError> {
    let (rev, value) = stored
        .split_first_chunk::<8>()
        .ok_or_else(|| embedded(format!("record of {key} is truncated")))?;
    Ok(KeyValue {
        key: key.to_owned(),
        value: value.to_vec(),
        mod_revision: i64::from_le_bytes(*rev),
    })
}

/// A revision's changes: for each, a tag byte (`P`ut or `D`elete), the key (u32 LE length +
/// bytes) and, for puts, the value (u32 LE length + bytes).
fn encode_changes(events: &[WatchEvent]) -> Vec<u8> {
    let mut out = Vec::new();
    let field = |out: &mut Vec<u8>, bytes: &[u8]| {
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
    };
    for event in events {
        match event {
            WatchEvent::Put(kv) => {
                out.push(b'P');
                field(&mut out, kv.key.as_bytes());
                field(&mut out, &kv.value);
            }
            WatchEvent::Delete { key } => {
                out.push(b'D');
                field(&mut out, key.as_bytes());
            }
        }
    }
    out
}

fn decode_changes(mut bytes: &[u8], revision: i64) -> Result<Vec<WatchEvent>, StoreError> {
    fn field<'a>(bytes: &mut &'a [u8]) -> Result<&'a [u8], StoreError> {
        let (len, rest) = bytes
            .split_first_chunk::<4>()
            .ok_or_else(|| embedded("log record truncated"))?;
        let len = u32::from_le_bytes(*len) as usize;
        if rest.len() < len {
            return Err(embedded("log record truncated"));
        }
        let (value, rest) = rest.split_at(len);
        *bytes = rest;
        Ok(value)
    }
    let key_of = |raw: &[u8]| {
        String::from_utf8(raw.to_vec()).map_err(|_| embedded("log record key is not UTF-8"))
    };
    let mut events = Vec::new();
    while let Some((tag, rest)) = bytes.split_first() {
        bytes = rest;
        match tag {
            b'P' => {
                let key = key_of(field(&mut bytes)?)?;
                let value = field(&mut bytes)?.to_vec();
                events.push(WatchEvent::Put(KeyValue {
                    key,
                    value,
                    mod_revision: revision,
                }));
            }
            b'D' => events.push(WatchEvent::Delete {
                key: key_of(field(&mut bytes)?)?,
            }),
            other => return Err(embedded(format!("log record has unknown tag {other}"))),
        }
    }
    Ok(events)
}

/// Any failure of the store's file, as a [`StoreError`] of its kind.
fn embedded(err: impl IntoFailure) -> StoreError {
    match err.into_failure() {
        Failure::Disk(fault) => StoreError::Disk(fault),
        Failure::Other(text) => StoreError::Embedded(text),
    }
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| embedded(format!("store task failed: {e}")))?
}
