//! The embedded delivery log: one redb file in the replica's data directory, for `herald dev`
//! and a single replica.
//!
//! Layout (one redb file, `attempts.redb`):
//! - `attempts`: sequence number → `herald.v1.Attempt` (protobuf). Sequence numbers grow with
//!   arrival, so "newest first" is a reverse scan.
//! - `attempt_ids`: `event_id \0 subscription_id \0 attempt` → sequence number. A report seen
//!   again (an agent re-sending after a lost ack) finds its id here and is not stored twice;
//!   its `event_id \0` prefix also finds every attempt of one event.
//! - `by_subscription`: (subscription id, sequence) → (), for a subscription's attempts.
//! - `by_tenant`, `by_event_type`, `by_error_kind`: (name, sequence) → (), and `by_status`:
//!   (HTTP status, sequence) → (), for the log's filters. A pattern (`order.*`) or a status
//!   class (`5xx`) merges the ranges of the names or codes under it, newest first.
//! - `by_event`: written by earlier versions (the `attempt_ids` prefix serves that lookup
//!   now); only the sweep still removes its entries.
//! - `health`: subscription id → `herald.v1.SubscriptionHealth`, counted in the commit that
//!   stores the attempts ([`super::derived`]).
//! - `followups`: number → [`Followup`], written by that commit, removed once acted on.
//! - `outbox`: operator event id → `herald.v1.Event`, until an agent accepts it.
//! - `audit`: sequence number → `herald.v1.AuditEntry`, the changes made through the operator
//!   API ([`audit`]), swept with the attempts' retention.
//! - `sent_requests` and its index by sequence number: the requests as sent, one per delivery,
//!   written in the commit that stores the attempt reporting it and swept with the last
//!   attempt that sent it ([`sent`]).
//!
//! A batch is one write transaction, committed durably before the agent's ack is sent.
//! Response excerpts and error texts are bounded by the agent, and bounded again here.
//!
//! Retention ([`EmbeddedLog::sweep`]): attempts are removed oldest first (in arrival order) once
//! they started longer ago than the retention period, or while the log holds more than its
//! limit of attempts; a sweep removes at most [`SWEEP_BATCH`] per commit.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use herald_core::limits::{PageBytes, bound_attempt_text};
use herald_proto::convert::system_time;
use herald_proto::v1 as pb;
use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use tokio::sync::broadcast;

use super::derived::{self, Followup, PendingFollowup, Reactions};
use herald_core::event_type::EventPattern;

use super::sent::{Expunged, SentPage, SentQuery, take_requests};
use super::{Filter, LogError, LogStore, Page, Stored, TAIL_BUFFER, page_size, storage};
use crate::audit::query::{AuditFilter, AuditPage};
use crate::redb_file::RedbFile;

mod audit;
mod sent;

const ATTEMPTS: TableDefinition<u64, &[u8]> = TableDefinition::new("attempts");
const ATTEMPT_IDS: TableDefinition<&str, u64> = TableDefinition::new("attempt_ids");
const BY_SUBSCRIPTION: TableDefinition<(&str, u64), ()> = TableDefinition::new("by_subscription");
const BY_EVENT: TableDefinition<(&str, u64), ()> = TableDefinition::new("by_event");
/// A tenant's attempts, oldest first: the delivery log of one tenant (the console's tenant
/// filter, every portal page) without scanning the others'.
const BY_TENANT: TableDefinition<(&str, u64), ()> = TableDefinition::new("by_tenant");
/// Attempts by event type.
const BY_EVENT_TYPE: TableDefinition<(&str, u64), ()> = TableDefinition::new("by_event_type");
/// Attempts by HTTP status, those that got an answer other than 2xx: the rare ones a filter
/// looks for. A 2xx filter walks another index or the log itself, where successes are most.
const BY_STATUS: TableDefinition<(u32, u64), ()> = TableDefinition::new("by_status");
/// Attempts by error kind (those that failed).
const BY_ERROR_KIND: TableDefinition<(&str, u64), ()> = TableDefinition::new("by_error_kind");
/// Attempts indexed in one commit when a log made before the indexes opens.
const BACKFILL_BATCH: usize = 100_000;
/// Facts about the log file itself.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// In [`META`]: the attempts up to this sequence number are in every index of [`Indexes`]
/// ([`u64::MAX`]: all of them, and every new one is added as it is stored). Logs made before
/// the filter indexes recorded `by_tenant_indexed_through` instead, for [`BY_TENANT`] alone.
const INDEXED: &str = "indexes_v2_indexed_through";
/// `meta` key written by the health probe after a disk fault: when it last wrote.
const PROBED: &str = "probed_at";
/// The most event types (or statuses) one pattern (or class) merges; beyond it a query
/// walks the log newest first instead.
const MAX_MERGED: usize = 1024;
const HEALTH: TableDefinition<&str, &[u8]> = TableDefinition::new("health");
const FOLLOWUPS: TableDefinition<u64, &[u8]> = TableDefinition::new("followups");
const OUTBOX: TableDefinition<&str, &[u8]> = TableDefinition::new("outbox");

/// Records examined by one query before it returns what it has with a continuation token,
/// so a query with a rare filter stays bounded in time.
const MAX_SCAN: usize = 100_000;
/// Attempts removed by one sweep commit at most.
pub const SWEEP_BATCH: usize = 10_000;

#[tonic::async_trait]
impl LogStore for EmbeddedLog {
    async fn store(
        &self,
        attempts: Vec<pb::Attempt>,
        reactions: Arc<dyn Reactions>,
    ) -> Result<Stored, LogError> {
        EmbeddedLog::store(self, attempts, reactions).await
    }

    async fn list(
        &self,
        filter: Filter,
        page_size: u32,
        page_token: &str,
    ) -> Result<Page, LogError> {
        EmbeddedLog::list(self, filter, page_size, page_token).await
    }

    async fn sweep(&self, max_age: Duration, max_attempts: u64) -> Result<u64, LogError> {
        EmbeddedLog::sweep(self, max_age, max_attempts).await
    }

    async fn sent_requests(&self, query: SentQuery) -> Result<SentPage, LogError> {
        self.blocking(false, move |db| sent::list(db, &query)).await
    }

    async fn expunge(&self, query: SentQuery) -> Result<Expunged, LogError> {
        self.blocking(true, move |db| sent::expunge(db, &query))
            .await
    }

    async fn record_change(&self, entry: pb::AuditEntry) -> Result<(), LogError> {
        self.blocking(true, move |db| audit::record(db, &entry))
            .await
    }

    async fn changes(
        &self,
        filter: AuditFilter,
        page_size: u32,
        page_token: &str,
    ) -> Result<AuditPage, LogError> {
        let token = page_token.to_owned();
        self.blocking(false, move |db| audit::list(db, &filter, page_size, &token))
            .await
    }

    async fn len(&self) -> Result<u64, LogError> {
        self.blocking(false, count_attempts).await
    }

    fn follow(&self) -> broadcast::Receiver<Arc<pb::Attempt>> {
        EmbeddedLog::follow(self)
    }

    async fn ping(&self) -> Result<(), LogError> {
        let file = self.file.clone();
        // Off the async threads: after a fault the file may be held while it is opened again.
        tokio::task::spawn_blocking(move || {
            let Some(fault) = file.fault() else {
                return file.run(false, |db| db.begin_read().map(drop).map_err(storage));
            };
            // After a disk fault the log answers once it can write again. A full disk needs
            // room for report batches first: the probe's small write alone may fit in pages
            // the file has free while every batch still fails.
            if fault.is_full()
                && !herald_core::disk_fault::has_room(
                    file.dir(),
                    herald_core::disk_fault::RECOVERY_ROOM,
                )
            {
                return Err(LogError::Disk(fault));
            }
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            file.run(true, |db| {
                let txn = db.begin_write().map_err(storage)?;
                txn.open_table(META)
                    .map_err(storage)?
                    .insert(PROBED, now)
                    .map_err(storage)?;
                txn.commit().map_err(storage)
            })
        })
        .await
        .map_err(storage)?
    }

    async fn health(
        &self,
        subscription_id: &str,
    ) -> Result<Option<pb::SubscriptionHealth>, LogError> {
        let id = subscription_id.to_owned();
        self.blocking(false, move |db| {
            let txn = db.begin_read().map_err(storage)?;
            let table = txn.open_table(HEALTH).map_err(storage)?;
            let Some(value) = table.get(id.as_str()).map_err(storage)? else {
                return Ok(None);
            };
            pb::SubscriptionHealth::decode(value.value())
                .map(Some)
                .map_err(storage)
        })
        .await
    }

    async fn forget_health(&self, subscription_id: &str) -> Result<(), LogError> {
        let id = subscription_id.to_owned();
        self.write(move |txn| {
            txn.open_table(HEALTH)
                .map_err(storage)?
                .remove(id.as_str())
                .map_err(storage)?;
            Ok(())
        })
        .await
    }

    async fn followups(
        &self,
        older_than: Duration,
        limit: usize,
    ) -> Result<Vec<PendingFollowup>, LogError> {
        let cutoff = super::before_now(older_than);
        self.blocking(false, move |db| {
            let txn = db.begin_read().map_err(storage)?;
            let table = txn.open_table(FOLLOWUPS).map_err(storage)?;
            let mut found = Vec::new();
            for entry in table.iter().map_err(storage)? {
                let (id, value) = entry.map_err(storage)?;
                let followup = Followup::decode(value.value()).map_err(storage)?;
                if followup
                    .recorded_at
                    .as_ref()
                    .is_some_and(|t| system_time(t) > cutoff)
                {
                    // Numbered in the order they were written: the rest are newer still.
                    break;
                }
                found.push(PendingFollowup {
                    id: id.value() as i64,
                    followup,
                });
                if found.len() == limit {
                    break;
                }
            }
            Ok(found)
        })
        .await
    }

    async fn settle(&self, ids: &[i64]) -> Result<(), LogError> {
        let ids = ids.to_vec();
        self.write(move |txn| {
            let mut table = txn.open_table(FOLLOWUPS).map_err(storage)?;
            for id in ids {
                table.remove(id as u64).map_err(storage)?;
            }
            Ok(())
        })
        .await
    }

    async fn raise(&self, events: &[pb::Event]) -> Result<(), LogError> {
        let events = events.to_vec();
        self.write(move |txn| put_events(txn, &events)).await
    }

    async fn outbox(&self, limit: usize) -> Result<Vec<pb::Event>, LogError> {
        self.blocking(false, move |db| {
            let txn = db.begin_read().map_err(storage)?;
            let table = txn.open_table(OUTBOX).map_err(storage)?;
            let mut events = Vec::new();
            for entry in table.iter().map_err(storage)?.take(limit) {
                let (_, value) = entry.map_err(storage)?;
                events.push(pb::Event::decode(value.value()).map_err(storage)?);
            }
            Ok(events)
        })
        .await
    }

    async fn emitted(&self, ids: &[String]) -> Result<(), LogError> {
        let ids = ids.to_vec();
        self.write(move |txn| {
            let mut table = txn.open_table(OUTBOX).map_err(storage)?;
            for id in ids {
                table.remove(id.as_str()).map_err(storage)?;
            }
            Ok(())
        })
        .await
    }
}

/// Puts operator events into the outbox, keeping those already there.
fn put_events(txn: &redb::WriteTransaction, events: &[pb::Event]) -> Result<(), LogError> {
    let mut table = txn.open_table(OUTBOX).map_err(storage)?;
    for event in events {
        if table.get(event.id.as_str()).map_err(storage)?.is_none() {
            table
                .insert(event.id.as_str(), event.encode_to_vec().as_slice())
                .map_err(storage)?;
        }
    }
    Ok(())
}

/// The default page cache of the log file (`--log-cache-bytes`): the recent pages attempts
/// are added to, without growing with the log (redb's own default is 1 GiB).
pub const DEFAULT_CACHE_BYTES: usize = 64 << 20;

/// The delivery log in a local redb file; cloning shares it.
#[derive(Clone)]
pub struct EmbeddedLog {
    /// `attempts.redb`, opened again by itself after a disk fault.
    file: Arc<RedbFile>,
    tail: broadcast::Sender<Arc<pb::Attempt>>,
}

impl EmbeddedLog {
    /// Opens (or creates) `dir/attempts.redb` with the default page cache.
    pub fn open(dir: &Path) -> Result<Self, LogError> {
        Self::open_with_cache(dir, DEFAULT_CACHE_BYTES)
    }

    /// Opens (or creates) `dir/attempts.redb` with a page cache of `cache_bytes`.
    pub fn open_with_cache(dir: &Path, cache_bytes: usize) -> Result<Self, LogError> {
        std::fs::create_dir_all(dir).map_err(|e| storage(format!("{}: {e}", dir.display())))?;
        let file = RedbFile::create(&dir.join("attempts.redb"), cache_bytes).map_err(storage)?;
        file.run(true, init)?;
        let (tail, _) = broadcast::channel(TAIL_BUFFER);
        Ok(EmbeddedLog {
            file: Arc::new(file),
            tail,
        })
    }

    /// Runs `work` on the file off the async threads ([`RedbFile::run`]); `write` when it
    /// writes, so that its success clears a disk fault.
    async fn blocking<T: Send + 'static>(
        &self,
        write: bool,
        work: impl FnOnce(&Database) -> Result<T, LogError> + Send + 'static,
    ) -> Result<T, LogError> {
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || file.run(write, work))
            .await
            .map_err(storage)?
    }

    /// Stores a batch durably, skipping attempts already stored, with what it derives
    /// ([`LogStore::store`]).
    pub async fn store(
        &self,
        mut attempts: Vec<pb::Attempt>,
        reactions: Arc<dyn Reactions>,
    ) -> Result<Stored, LogError> {
        let requests = take_requests(&mut attempts);
        let (new, followups) = self
            .blocking(true, move |db| {
                insert_batch(db, attempts, requests, &*reactions)
            })
            .await?;
        let new: Vec<Arc<pb::Attempt>> = new.into_iter().map(Arc::new).collect();
        for attempt in &new {
            // No tail listening is fine.
            let _ = self.tail.send(attempt.clone());
        }
        Ok(Stored {
            attempts: new,
            followups,
        })
    }

    /// Runs `change` in a write transaction of its own, committed durably.
    async fn write(
        &self,
        change: impl FnOnce(&redb::WriteTransaction) -> Result<(), LogError> + Send + 'static,
    ) -> Result<(), LogError> {
        self.blocking(true, move |db| {
            let txn = db.begin_write().map_err(storage)?;
            change(&txn)?;
            txn.commit().map_err(storage)
        })
        .await
    }

    /// Attempts matching `filter`, newest first, a page at a time.
    pub async fn list(
        &self,
        filter: Filter,
        page_size_asked: u32,
        page_token: &str,
    ) -> Result<Page, LogError> {
        let before = if page_token.is_empty() {
            u64::MAX
        } else {
            page_token
                .parse::<u64>()
                .map_err(|_| LogError::InvalidQuery(crate::attempts::not_from_this_listing()))?
        };
        let size = page_size(page_size_asked);
        if filter.tenants().is_some_and(|t| t.is_empty()) {
            // None of the tenants asked for may be shown.
            return Ok(Page {
                attempts: vec![],
                next_page_token: String::new(),
            });
        }
        self.blocking(false, move |db| query(db, &filter, before, size))
            .await
    }

    /// Removes attempts that started more than `max_age` ago, and the oldest beyond
    /// `max_attempts`, until none is left to remove; returns how many went.
    pub async fn sweep(&self, max_age: Duration, max_attempts: u64) -> Result<u64, LogError> {
        let cutoff = SystemTime::now()
            .checked_sub(max_age)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut removed = 0;
        loop {
            let n = self
                .blocking(true, move |db| sweep_batch(db, cutoff, max_attempts))
                .await?;
            removed += n as u64;
            if n < SWEEP_BATCH {
                break;
            }
        }
        // Audit entries are kept as long as attempts (and are not attempts: not counted).
        loop {
            let n = self
                .blocking(true, move |db| audit::sweep_batch(db, cutoff))
                .await?;
            if n > 0 {
                tracing::info!(removed = n, "audit log: entries past retention removed");
            }
            if n < SWEEP_BATCH {
                return Ok(removed);
            }
        }
    }

    /// How many attempts the log holds.
    pub fn len(&self) -> Result<u64, LogError> {
        self.file.run(false, count_attempts)
    }

    /// Whether the log holds no attempt.
    pub fn is_empty(&self) -> Result<bool, LogError> {
        Ok(self.len()? == 0)
    }

    /// Every attempt stored from now on.
    pub fn follow(&self) -> broadcast::Receiver<Arc<pb::Attempt>> {
        self.tail.subscribe()
    }
}

/// Makes the log's tables in a new file, and indexes a log made before the indexes.
fn init(db: &Database) -> Result<(), LogError> {
    let txn = db.begin_write().map_err(storage)?;
    let indexed_through;
    {
        Indexes::open(&txn)?;
        let records = txn.open_table(ATTEMPTS).map_err(storage)?;
        let mut meta = txn.open_table(META).map_err(storage)?;
        let progress = meta.get(INDEXED).map_err(storage)?.map(|v| v.value());
        indexed_through = match progress {
            Some(seq) => seq,
            // A new log: every attempt will be indexed as it is stored.
            None if records.is_empty().map_err(storage)? => {
                meta.insert(INDEXED, u64::MAX).map_err(storage)?;
                u64::MAX
            }
            // A log made before the index.
            None => 0,
        };
        txn.open_table(ATTEMPT_IDS).map_err(storage)?;
        txn.open_table(BY_EVENT).map_err(storage)?;
        txn.open_table(HEALTH).map_err(storage)?;
        txn.open_table(FOLLOWUPS).map_err(storage)?;
        txn.open_table(OUTBOX).map_err(storage)?;
        sent::create(&txn)?;
    }
    txn.commit().map_err(storage)?;
    if indexed_through != u64::MAX {
        backfill_indexes(db, indexed_through)?;
    }
    Ok(())
}

/// How many attempts the log holds.
fn count_attempts(db: &Database) -> Result<u64, LogError> {
    let txn = db.begin_read().map_err(storage)?;
    txn.open_table(ATTEMPTS)
        .map_err(storage)?
        .len()
        .map_err(storage)
}

fn attempt_id(a: &pb::Attempt) -> String {
    format!("{}\0{}\0{}", a.event_id, a.subscription_id, a.attempt)
}

/// Stores the attempts of a batch that are new, the requests they carried (`requests`, one
/// entry per attempt) and what they derive, in one commit; the new attempts and the
/// follow-ups written.
fn insert_batch(
    db: &Database,
    attempts: Vec<pb::Attempt>,
    requests: Vec<Option<pb::SentRequest>>,
    reactions: &dyn Reactions,
) -> Result<(Vec<pb::Attempt>, Vec<PendingFollowup>), LogError> {
    let txn = db.begin_write().map_err(storage)?;
    let mut stored = Vec::with_capacity(attempts.len());
    let mut followups = Vec::new();
    {
        let mut records = txn.open_table(ATTEMPTS).map_err(storage)?;
        let mut ids = txn.open_table(ATTEMPT_IDS).map_err(storage)?;
        let mut indexes = Indexes::open(&txn)?;
        let mut sent = sent::Requests::open(&txn)?;
        let mut seq = records
            .last()
            .map_err(storage)?
            .map_or(0, |(k, _)| k.value());
        for (mut attempt, request) in attempts.into_iter().zip(requests) {
            let id = attempt_id(&attempt);
            if ids.get(id.as_str()).map_err(storage)?.is_some() {
                continue;
            }
            bound_attempt_text(&mut attempt.response_excerpt);
            bound_attempt_text(&mut attempt.error);
            seq += 1;
            records
                .insert(seq, attempt.encode_to_vec().as_slice())
                .map_err(storage)?;
            ids.insert(id.as_str(), seq).map_err(storage)?;
            indexes.insert(&attempt, seq)?;
            if let Some(request) = request {
                sent.keep(request, seq)?;
            }
            stored.push(attempt);
        }
        let new: Vec<&pb::Attempt> = stored.iter().collect();
        let mut health = txn.open_table(HEALTH).map_err(storage)?;
        let mut current = std::collections::HashMap::new();
        for id in derived::subscriptions(&new) {
            if let Some(value) = health.get(id.as_str()).map_err(storage)? {
                let record = pb::SubscriptionHealth::decode(value.value()).map_err(storage)?;
                current.insert(id, record);
            }
        }
        let derived = derived::derive(&new, |id| current.get(id).cloned(), reactions);
        for record in &derived.records {
            health
                .insert(
                    record.subscription_id.as_str(),
                    record.health.encode_to_vec().as_slice(),
                )
                .map_err(storage)?;
        }
        let mut table = txn.open_table(FOLLOWUPS).map_err(storage)?;
        let mut next = table.last().map_err(storage)?.map_or(0, |(k, _)| k.value());
        for followup in derived.followups {
            next += 1;
            table
                .insert(next, followup.encode_to_vec().as_slice())
                .map_err(storage)?;
            followups.push(PendingFollowup {
                id: next as i64,
                followup,
            });
        }
        drop(table);
        put_events(&txn, &derived.events)?;
    }
    txn.commit().map_err(storage)?;
    Ok((stored, followups))
}

/// The secondary indexes of attempts, open in one write transaction: every attempt stored
/// is added to each, and removed from each when swept.
struct Indexes<'t> {
    by_subscription: redb::Table<'t, (&'static str, u64), ()>,
    by_tenant: redb::Table<'t, (&'static str, u64), ()>,
    by_event_type: redb::Table<'t, (&'static str, u64), ()>,
    by_status: redb::Table<'t, (u32, u64), ()>,
    by_error_kind: redb::Table<'t, (&'static str, u64), ()>,
}

impl<'t> Indexes<'t> {
    fn open(txn: &'t redb::WriteTransaction) -> Result<Self, LogError> {
        Ok(Indexes {
            by_subscription: txn.open_table(BY_SUBSCRIPTION).map_err(storage)?,
            by_tenant: txn.open_table(BY_TENANT).map_err(storage)?,
            by_event_type: txn.open_table(BY_EVENT_TYPE).map_err(storage)?,
            by_status: txn.open_table(BY_STATUS).map_err(storage)?,
            by_error_kind: txn.open_table(BY_ERROR_KIND).map_err(storage)?,
        })
    }

    /// Adds the attempt stored as `seq` (again: adding twice is harmless).
    fn insert(&mut self, a: &pb::Attempt, seq: u64) -> Result<(), LogError> {
        self.by_subscription
            .insert((a.subscription_id.as_str(), seq), ())
            .map_err(storage)?;
        self.by_tenant
            .insert((a.tenant.as_str(), seq), ())
            .map_err(storage)?;
        self.by_event_type
            .insert((a.event_type.as_str(), seq), ())
            .map_err(storage)?;
        if indexes_status(a.status_code) {
            self.by_status
                .insert((a.status_code, seq), ())
                .map_err(storage)?;
        }
        if !a.error_kind.is_empty() {
            self.by_error_kind
                .insert((a.error_kind.as_str(), seq), ())
                .map_err(storage)?;
        }
        Ok(())
    }

    /// Removes the attempt stored as `seq`.
    fn remove(&mut self, a: &pb::Attempt, seq: u64) -> Result<(), LogError> {
        self.by_subscription
            .remove((a.subscription_id.as_str(), seq))
            .map_err(storage)?;
        self.by_tenant
            .remove((a.tenant.as_str(), seq))
            .map_err(storage)?;
        self.by_event_type
            .remove((a.event_type.as_str(), seq))
            .map_err(storage)?;
        self.by_status
            .remove((a.status_code, seq))
            .map_err(storage)?;
        self.by_error_kind
            .remove((a.error_kind.as_str(), seq))
            .map_err(storage)?;
        Ok(())
    }
}

/// Whether [`BY_STATUS`] holds attempts answered with `status`: any answer but a success.
fn indexes_status(status: u32) -> bool {
    status != 0 && !(200..300).contains(&status)
}

/// Adds to [`Indexes`] the attempts after sequence number `after` of a log made before some
/// of them existed, in commits of [`BACKFILL_BATCH`], oldest first; each commit records how
/// far it got in [`META`], so a replica stopped part way goes on from there.
fn backfill_indexes(db: &Database, mut after: u64) -> Result<(), LogError> {
    let total = db
        .begin_read()
        .map_err(storage)?
        .open_table(ATTEMPTS)
        .map_err(storage)?
        .len()
        .map_err(storage)?;
    if total > 0 {
        tracing::info!(
            attempts = total,
            from = after,
            "indexing the delivery log for its filters (once, for a log made before those indexes)"
        );
    }
    loop {
        let txn = db.begin_write().map_err(storage)?;
        let last;
        {
            let records = txn.open_table(ATTEMPTS).map_err(storage)?;
            let mut indexes = Indexes::open(&txn)?;
            let mut count = 0;
            let mut seen = None;
            for entry in records.range(after + 1..).map_err(storage)? {
                let (seq, value) = entry.map_err(storage)?;
                let attempt = pb::Attempt::decode(value.value()).map_err(storage)?;
                indexes.insert(&attempt, seq.value())?;
                seen = Some(seq.value());
                count += 1;
                if count == BACKFILL_BATCH {
                    break;
                }
            }
            last = seen;
            let mut meta = txn.open_table(META).map_err(storage)?;
            meta.insert(INDEXED, last.unwrap_or(u64::MAX))
                .map_err(storage)?;
        }
        txn.commit().map_err(storage)?;
        match last {
            Some(seq) => after = seq,
            None => return Ok(()),
        }
    }
}

/// One sweep commit: removes up to [`SWEEP_BATCH`] of the oldest attempts that started before
/// `cutoff` or are beyond `max_attempts`, with their index entries.
fn sweep_batch(db: &Database, cutoff: SystemTime, max_attempts: u64) -> Result<usize, LogError> {
    let txn = db.begin_write().map_err(storage)?;
    let removed;
    {
        let mut records = txn.open_table(ATTEMPTS).map_err(storage)?;
        let mut ids = txn.open_table(ATTEMPT_IDS).map_err(storage)?;
        let mut by_event = txn.open_table(BY_EVENT).map_err(storage)?;
        let mut indexes = Indexes::open(&txn)?;
        let excess = records.len().map_err(storage)?.saturating_sub(max_attempts);
        let mut old = Vec::new();
        for entry in records.iter().map_err(storage)? {
            let (seq, value) = entry.map_err(storage)?;
            let attempt = pb::Attempt::decode(value.value()).map_err(storage)?;
            let expired = attempt
                .started_at
                .as_ref()
                .is_none_or(|t| system_time(t) < cutoff);
            if old.len() >= SWEEP_BATCH || !(expired || (old.len() as u64) < excess) {
                break;
            }
            old.push((seq.value(), attempt));
        }
        if let Some((newest, _)) = old.last() {
            sent::Requests::open(&txn)?.sweep_through(*newest)?;
        }
        for (seq, attempt) in &old {
            records.remove(*seq).map_err(storage)?;
            ids.remove(attempt_id(attempt).as_str()).map_err(storage)?;
            by_event
                .remove((attempt.event_id.as_str(), *seq))
                .map_err(storage)?;
            indexes.remove(attempt, *seq)?;
        }
        removed = old.len();
    }
    txn.commit().map_err(storage)?;
    Ok(removed)
}

/// Sequence numbers, newest first.
type Seqs = Box<dyn Iterator<Item = Result<u64, LogError>>>;

/// An index by name (tenant, subscription, event type, error kind).
type ByName = redb::ReadOnlyTable<(&'static str, u64), ()>;
/// The index by HTTP status.
type ByCode = redb::ReadOnlyTable<(u32, u64), ()>;

/// The sequence numbers of one name's entries in an index, below `before`, newest first.
fn name_range(table: &ByName, name: &str, before: u64) -> Result<Seqs, LogError> {
    let range = table.range((name, 0)..(name, before)).map_err(storage)?;
    Ok(Box::new(
        range
            .rev()
            .map(|e| e.map(|(k, _)| k.value().1).map_err(storage)),
    ))
}

/// The sequence numbers of one status's entries, below `before`, newest first.
fn code_range(table: &ByCode, code: u32, before: u64) -> Result<Seqs, LogError> {
    let range = table.range((code, 0)..(code, before)).map_err(storage)?;
    Ok(Box::new(
        range
            .rev()
            .map(|e| e.map(|(k, _)| k.value().1).map_err(storage)),
    ))
}

/// The distinct names in an index from `low` up to (not including) `high`, at most
/// [`MAX_MERGED`]; `None` when there are more. Each step seeks past the previous name's
/// entries (no sequence number is `u64::MAX`).
fn distinct_names(table: &ByName, low: &str, high: &str) -> Result<Option<Vec<String>>, LogError> {
    let mut names: Vec<String> = Vec::new();
    loop {
        let from = match names.last() {
            Some(last) => (last.as_str(), u64::MAX),
            None => (low, 0),
        };
        let next = table.range(from..(high, 0)).map_err(storage)?.next();
        let Some(entry) = next else {
            return Ok(Some(names));
        };
        if names.len() == MAX_MERGED {
            return Ok(None);
        }
        names.push(entry.map_err(storage)?.0.value().0.to_owned());
    }
}

/// The distinct statuses in the index from `low` up to (not including) `high`.
fn distinct_codes(table: &ByCode, low: u32, high: u32) -> Result<Vec<u32>, LogError> {
    let mut codes: Vec<u32> = Vec::new();
    loop {
        let from = match codes.last() {
            Some(last) => (*last, u64::MAX),
            None => (low, 0),
        };
        let next = table.range(from..(high, 0)).map_err(storage)?.next();
        let Some(entry) = next else {
            return Ok(codes);
        };
        codes.push(entry.map_err(storage)?.0.value().0);
    }
}

/// Several newest-first sources merged into one, newest first.
fn newest_first(mut sources: Vec<Seqs>) -> Seqs {
    let mut heads = std::collections::BinaryHeap::new();
    let mut failed = None;
    for (i, source) in sources.iter_mut().enumerate() {
        match source.next() {
            Some(Ok(seq)) => heads.push((seq, i)),
            Some(Err(err)) => failed = Some(err),
            None => {}
        }
    }
    Box::new(std::iter::from_fn(move || {
        if let Some(err) = failed.take() {
            return Some(Err(err));
        }
        let (seq, i) = heads.pop()?;
        match sources[i].next() {
            Some(Ok(next)) => heads.push((next, i)),
            Some(Err(err)) => failed = Some(err),
            None => {}
        }
        Some(Ok(seq))
    }))
}

fn query(db: &Database, filter: &Filter, before: u64, size: usize) -> Result<Page, LogError> {
    let txn = db.begin_read().map_err(storage)?;
    let records = txn.open_table(ATTEMPTS).map_err(storage)?;
    // Pick the narrowest index the filter allows; the rest of the filter is applied per record.
    // Error kinds and statuses other than 2xx are rare across the log; a tenant's attempts are
    // fewer than those of a type, which every tenant shares.
    let wire = filter.wire();
    let seqs: Option<Seqs> = if !wire.subscription_id.is_empty() {
        let table = txn.open_table(BY_SUBSCRIPTION).map_err(storage)?;
        Some(name_range(&table, wire.subscription_id.as_str(), before)?)
    } else if !wire.event_id.is_empty() {
        // One event has few attempts: collect their sequence numbers, newest first.
        let table = txn.open_table(ATTEMPT_IDS).map_err(storage)?;
        let (from, to) = (
            format!("{}\0", wire.event_id),
            format!("{}\u{1}", wire.event_id),
        );
        let mut seqs = Vec::new();
        for entry in table.range(from.as_str()..to.as_str()).map_err(storage)? {
            let seq = entry.map_err(storage)?.1.value();
            if seq < before {
                seqs.push(seq);
            }
        }
        seqs.sort_unstable_by(|a, b| b.cmp(a));
        Some(Box::new(seqs.into_iter().map(Ok)))
    } else if let Some(kind) = filter.error_kind() {
        let table = txn.open_table(BY_ERROR_KIND).map_err(storage)?;
        Some(name_range(&table, kind, before)?)
    } else if let Some(status) = filter
        .status()
        .filter(|s| indexes_status(u32::from(s.range().0)))
    {
        let table = txn.open_table(BY_STATUS).map_err(storage)?;
        let (low, high) = status.range();
        // At most a hundred codes in a class.
        let codes = distinct_codes(&table, u32::from(low), u32::from(high) + 1)?;
        Some(newest_first(
            codes
                .into_iter()
                .map(|code| code_range(&table, code, before))
                .collect::<Result<_, _>>()?,
        ))
    } else if !wire.tenant.is_empty() {
        let table = txn.open_table(BY_TENANT).map_err(storage)?;
        Some(name_range(&table, wire.tenant.as_str(), before)?)
    } else if let Some(pattern) = filter.event_type() {
        let table = txn.open_table(BY_EVENT_TYPE).map_err(storage)?;
        match pattern {
            EventPattern::Exact(event_type) => {
                Some(name_range(&table, event_type.as_str(), before)?)
            }
            EventPattern::Prefix(prefix) => {
                // The types below `prefix.`: from `prefix.` up to `prefix/` ('/' follows '.').
                let (low, high) = (format!("{prefix}."), format!("{prefix}/"));
                let types = distinct_names(&table, &low, &high)?;
                match types {
                    Some(types) => Some(newest_first(
                        types
                            .iter()
                            .map(|t| name_range(&table, t.as_str(), before))
                            .collect::<Result<_, _>>()?,
                    )),
                    None => None,
                }
            }
            EventPattern::All => None,
        }
    } else {
        None
    };
    let seqs = match seqs {
        Some(seqs) => seqs,
        None => {
            let range = records.range(..before).map_err(storage)?;
            Box::new(
                range
                    .rev()
                    .map(|e| e.map(|(k, _)| k.value()).map_err(storage)),
            )
        }
    };
    let mut attempts = Vec::new();
    let mut bytes = PageBytes::default();
    let mut last_seen = None;
    // More may follow: continue after the last attempt seen next time.
    let more = |attempts, last_seen: Option<u64>| Page {
        attempts,
        next_page_token: last_seen.map(|s| s.to_string()).unwrap_or_default(),
    };
    for (scanned, seq) in seqs.enumerate() {
        let seq = seq?;
        if attempts.len() == size || scanned == MAX_SCAN {
            return Ok(more(attempts, last_seen));
        }
        if let Some(record) = records.get(seq).map_err(storage)? {
            let attempt = pb::Attempt::decode(record.value()).map_err(storage)?;
            if filter.matches(&attempt) {
                if !bytes.fits(record.value().len()) {
                    return Ok(more(attempts, last_seen));
                }
                attempts.push(attempt);
            }
        }
        last_seen = Some(seq);
    }
    Ok(Page {
        attempts,
        next_page_token: String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_proto::convert::timestamp;

    fn attempt(event: &str, sub: &str, n: u32, outcome: pb::Outcome) -> pb::Attempt {
        pb::Attempt {
            event_id: event.into(),
            subscription_id: sub.into(),
            tenant: "shop-1".into(),
            attempt: n,
            outcome: outcome as i32,
            started_at: Some(timestamp(SystemTime::now())),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn stores_once_and_pages_newest_first() {
        let dir = tempfile::tempdir().expect("dir");
        let log = EmbeddedLog::open(dir.path()).expect("open");
        let batch: Vec<_> = (0..5)
            .map(|i| attempt(&format!("evt_{i}"), "sub_a", 1, pb::Outcome::Delivered))
            .chain([attempt("evt_x", "sub_b", 1, pb::Outcome::Retrying)])
            .collect();
        assert_eq!(log.insert(batch.clone()).await.expect("insert").len(), 6);
        assert!(
            log.insert(batch).await.expect("insert again").is_empty(),
            "idempotent"
        );

        let by_sub = Filter::new(pb::AttemptFilter {
            subscription_id: "sub_a".into(),
            ..Default::default()
        })
        .expect("a valid filter");
        let first = log.list(by_sub.clone(), 2, "").await.expect("page 1");
        let ids: Vec<_> = first.attempts.iter().map(|a| a.event_id.as_str()).collect();
        assert_eq!(ids, ["evt_4", "evt_3"]);
        let second = log
            .list(by_sub.clone(), 2, &first.next_page_token)
            .await
            .expect("page 2");
        let ids: Vec<_> = second
            .attempts
            .iter()
            .map(|a| a.event_id.as_str())
            .collect();
        assert_eq!(ids, ["evt_2", "evt_1"]);
        let third = log
            .list(by_sub, 2, &second.next_page_token)
            .await
            .expect("page 3");
        assert_eq!(third.attempts.len(), 1);
        assert!(third.next_page_token.is_empty());

        let retrying = pb::AttemptFilter {
            outcome: pb::Outcome::Retrying as i32,
            ..Default::default()
        };
        let page = log
            .list(Filter::new(retrying).expect("a valid filter"), 10, "")
            .await
            .expect("by outcome");
        assert_eq!(page.attempts.len(), 1);
        assert_eq!(page.attempts[0].subscription_id, "sub_b");

        let future = pb::AttemptFilter {
            since: Some(timestamp(
                SystemTime::now() + std::time::Duration::from_secs(60),
            )),
            ..Default::default()
        };
        assert!(
            log.list(Filter::new(future).expect("a valid filter"), 10, "")
                .await
                .expect("by time")
                .attempts
                .is_empty()
        );
        assert!(log.list(Filter::default(), 10, "garbage").await.is_err());
    }

    #[tokio::test]
    async fn filters_are_served_by_indexes_even_in_a_log_made_before_them() {
        let dir = tempfile::tempdir().expect("dir");
        let of = |tenant: &str, event: &str| pb::Attempt {
            tenant: tenant.into(),
            event_type: "order.created".into(),
            status_code: 200,
            ..attempt(event, "sub_a", 1, pb::Outcome::Delivered)
        };
        let batch: Vec<_> = (0..250)
            .map(|i| {
                let mut a = of(
                    if i % 5 == 0 { "shop-b" } else { "shop-a" },
                    &format!("evt_{i}"),
                );
                a.event_type = ["order.paid", "order.created", "orders.created"][i % 3].into();
                if i % 10 == 0 {
                    a.status_code = 503;
                    a.error_kind = "http_status".into();
                }
                a
            })
            .collect();
        let log = EmbeddedLog::open(dir.path()).expect("open");
        log.insert(batch).await.expect("insert");
        drop(log);
        // As a log written before the tenant index: no index entries, no progress.
        {
            let db = Database::create(dir.path().join("attempts.redb")).expect("db");
            let txn = db.begin_write().expect("txn");
            for index in [BY_TENANT, BY_EVENT_TYPE, BY_ERROR_KIND] {
                txn.delete_table(index).expect("drop the index");
            }
            txn.delete_table(BY_STATUS).expect("drop the index");
            txn.open_table(META)
                .expect("meta")
                .remove(INDEXED)
                .expect("forget");
            txn.commit().expect("commit");
        }
        let log = EmbeddedLog::open(dir.path()).expect("reopen indexes it");
        log.insert(vec![of("shop-b", "evt_new")])
            .await
            .expect("insert");
        let shop_b = Filter::new(pb::AttemptFilter {
            tenant: "shop-b".into(),
            ..Default::default()
        })
        .expect("a valid filter");
        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let page = log.list(shop_b.clone(), 20, &token).await.expect("page");
            assert!(page.attempts.iter().all(|a| a.tenant == "shop-b"));
            seen.extend(page.attempts.into_iter().map(|a| a.event_id));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!(seen.len(), 51, "50 old and 1 new");
        assert_eq!(seen[0], "evt_new", "newest first");
        assert_eq!(seen[50], "evt_0");
        let filter = |event_type: &str, status: &str, error_kind: &str| pb::AttemptFilter {
            event_type: event_type.into(),
            status: status.into(),
            error_kind: error_kind.into(),
            ..Default::default()
        };
        for (filter, expected) in [
            (filter("order.*", "", ""), 168),
            (filter("order.paid", "", ""), 84),
            (filter("orders.*", "", ""), 83),
            (filter("*", "2xx", ""), 226),
            (filter("", "503", ""), 25),
            (filter("", "5xx", "status"), 25),
            (filter("order.paid", "5xx", ""), 9),
            (filter("", "", "timeout"), 0),
        ] {
            let what = format!("{filter:?}");
            let filter = Filter::new(filter).expect("a valid filter");
            // Newest first across the merged types and codes, by pages of 7.
            let mut seen = Vec::new();
            let mut token = String::new();
            loop {
                let page = log.list(filter.clone(), 7, &token).await.expect("page");
                assert!(page.attempts.iter().all(|a| filter.matches(a)), "{what}");
                seen.extend(page.attempts);
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
            assert_eq!(seen.len(), expected, "{what}");
            let numbers: Vec<u64> = seen
                .iter()
                .map(|a| {
                    a.event_id
                        .trim_start_matches("evt_")
                        .parse()
                        .unwrap_or(u64::MAX)
                })
                .collect();
            assert!(
                numbers.windows(2).all(|w| w[0] > w[1]),
                "{what}: {numbers:?}"
            );
        }
    }

    #[tokio::test]
    async fn retention_removes_old_attempts_and_keeps_the_log_within_its_size() {
        let dir = tempfile::tempdir().expect("dir");
        let log = EmbeddedLog::open(dir.path()).expect("open");
        let day = Duration::from_secs(24 * 60 * 60);
        let aged = |event: &str, age: Duration| pb::Attempt {
            started_at: Some(timestamp(SystemTime::now() - age)),
            ..attempt(event, "sub_a", 1, pb::Outcome::Delivered)
        };
        let batch = vec![
            aged("evt_old_1", 40 * day),
            aged("evt_old_2", 31 * day),
            aged("evt_new_1", day),
            aged("evt_new_2", Duration::ZERO),
            aged("evt_new_3", Duration::ZERO),
        ];
        log.insert(batch).await.expect("insert");
        assert_eq!(log.sweep(30 * day, 1_000).await.expect("sweep"), 2);
        let left = |log: EmbeddedLog| async move {
            let page = log
                .list(
                    Filter::new(pb::AttemptFilter {
                        subscription_id: "sub_a".into(),
                        ..Default::default()
                    })
                    .expect("a valid filter"),
                    100,
                    "",
                )
                .await
                .expect("list");
            page.attempts
                .into_iter()
                .map(|a| a.event_id)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            left(log.clone()).await,
            ["evt_new_3", "evt_new_2", "evt_new_1"]
        );
        // Over the size limit: the oldest go, whatever their age.
        assert_eq!(log.sweep(30 * day, 2).await.expect("sweep"), 1);
        assert_eq!(left(log.clone()).await, ["evt_new_3", "evt_new_2"]);
        assert_eq!(log.len().expect("len"), 2);
        // Removed from every index: the event lookup finds nothing, and a late re-sent report
        // of a removed attempt is a new record.
        let by_event = pb::AttemptFilter {
            event_id: "evt_old_1".into(),
            ..Default::default()
        };
        assert!(
            log.list(Filter::new(by_event).expect("a valid filter"), 10, "")
                .await
                .expect("list")
                .attempts
                .is_empty()
        );
        assert_eq!(log.sweep(30 * day, 2).await.expect("nothing left"), 0);
    }
}
