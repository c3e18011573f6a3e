//! The delivery log in PostgreSQL: one database shared by every control-plane replica, so each
//! lists, counts and follows the attempts reported through any of them.
//!
//! **Schema** (migrated at start, [`MIGRATIONS`]; the version is in `herald_schema`). Replicas
//! that start together take a transaction-scoped advisory lock ([`MIGRATION_LOCK`]) so one
//! migrates and the others find it done; a database migrated by a newer control plane is
//! refused ([`LogError::NewerSchema`]).
//!
//! - `attempts`: one row per attempt, range-partitioned by `started_at`, one partition a day
//!   (`attempts_YYYYMMDD`, UTC) and no default partition. Filter columns (`tenant`,
//!   `event_id`, `subscription_id`, `outcome`, …) are plain columns with an index each, ordered
//!   like the listing; the whole `herald.v1.Attempt` is kept in `record` (protobuf), and the
//!   fields people read (`status_code`, `error_kind`, `error`, `url`, `duration_ms`) are
//!   columns too, so `psql` shows them. `seq` is an identity: with `started_at` it orders and
//!   pages listings (newest first, keyset tokens `micros:seq`).
//! - Idempotent ingest: a unique index on (tenant, event, subscription, attempt, started_at)
//!   (a resent report is byte-for-byte the same attempt, start time included); a batch is one
//!   binary `COPY`, or an array insert with `ON CONFLICT DO NOTHING` when it holds attempts
//!   already stored ([`ingest`]), acknowledged after its commit.
//! - Partitions are made ahead (yesterday to [`DAYS_AHEAD`] days on), and on demand for a
//!   batch that needs another day, under an advisory lock ([`PARTITION_LOCK`]); attempts that
//!   started before the retention cut-off or more than [`MAX_DAYS_AHEAD`] days ahead are not
//!   stored (logged). Retention drops whole partitions: never a row-by-row `DELETE` of
//!   attempts.
//! - Live tails: each insert's transaction sends `NOTIFY herald_attempts` with the `seq`
//!   ranges it stored; every replica `LISTEN`s on its own connection and reads those rows, so
//!   a tail on any replica sees attempts reported through any other within moments
//!   ([`follow`]).
//! - `audit`: one row per change made through the operator API ([`audit`]); retention deletes
//!   the rows older than the cut-off (changes are few).
//! - `sent_requests`: the requests as sent, one row per delivery, written in the transaction
//!   that stores the attempts and deleted once no partition holds an attempt that sent them
//!   ([`sent`]).

use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use herald_core::disk_fault::DiskFault;
use herald_core::error_kind::StatusFilter;
use herald_core::error_text;
use herald_core::event_type::EventPattern;
use herald_core::limits::{PageBytes, bound_attempt_text};
use herald_proto::convert::system_time;
use herald_proto::v1 as pb;
use prost::Message as _;
use tokio::sync::broadcast;
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_util::sync::CancellationToken;

use super::derived::{PendingFollowup, Reactions};
use super::sent::{Expunged, SentPage, SentQuery, take_requests};
use super::{Filter, LogError, LogStore, Page, Stored, TAIL_BUFFER, page_size};
use crate::audit::query::{AuditFilter, AuditPage};

mod audit;
mod database_url;
mod derived;
mod follow;
mod ingest;
mod sent;

pub use follow::FOLLOWER_APPLICATION;

pub use database_url::DatabaseUrl;
use database_url::Tls;

/// The schema, one migration per version (index + 1).
pub const MIGRATIONS: &[&str] = &[
    ATTEMPTS,
    derived::MIGRATION,
    audit::MIGRATION,
    ATTEMPT_FILTERS,
    sent::MIGRATION,
];

/// Schema version 1: the attempts.
const ATTEMPTS: &str = r#"
CREATE TABLE attempts (
    seq             bigint GENERATED ALWAYS AS IDENTITY,
    started_at      timestamptz NOT NULL,
    tenant          text NOT NULL,
    event_id        text NOT NULL,
    subscription_id text NOT NULL,
    attempt         integer NOT NULL,
    event_type      text NOT NULL,
    outcome         smallint NOT NULL,
    status_code     integer NOT NULL,
    error_kind      text NOT NULL,
    error           text NOT NULL,
    url             text NOT NULL,
    agent_id        text NOT NULL,
    duration_ms     double precision NOT NULL,
    record          bytea NOT NULL
) PARTITION BY RANGE (started_at);
CREATE UNIQUE INDEX attempts_identity
    ON attempts (tenant, event_id, subscription_id, attempt, started_at);
CREATE INDEX attempts_newest ON attempts (started_at DESC, seq DESC);
CREATE INDEX attempts_by_subscription ON attempts (subscription_id, started_at DESC, seq DESC);
CREATE INDEX attempts_by_tenant ON attempts (tenant, started_at DESC, seq DESC);
CREATE INDEX attempts_by_event ON attempts (event_id, started_at DESC, seq DESC);
CREATE INDEX attempts_by_outcome ON attempts (outcome, started_at DESC, seq DESC);
CREATE INDEX attempts_by_seq ON attempts (seq);
"#;
/// Schema version 4: indexes for the log's filters by event type (byte order, so that a
/// pattern such as `order.*` is one range), HTTP status and status class (answers other than
/// 2xx: the rare ones; successes are found walking `attempts_newest`) and error kind, each
/// newest first so a filtered page reads only its own rows.
const ATTEMPT_FILTERS: &str = r#"
CREATE INDEX attempts_by_event_type
    ON attempts ((event_type COLLATE "C"), started_at DESC, seq DESC);
CREATE INDEX attempts_by_status ON attempts (status_code, started_at DESC, seq DESC)
    WHERE (status_code < 200 OR status_code > 299);
CREATE INDEX attempts_by_status_class
    ON attempts ((status_code / 100), started_at DESC, seq DESC)
    WHERE (status_code < 200 OR status_code > 299);
CREATE INDEX attempts_by_error_kind ON attempts (error_kind, started_at DESC, seq DESC)
    WHERE error_kind <> '';
"#;
/// The predicate of the status indexes, repeated in queries so the planner can use them.
const NOT_SUCCESS: &str = "(status_code < 200 OR status_code > 299)";
/// The advisory lock key migrations run under (`herald` in ASCII, then 1).
const MIGRATION_LOCK: i64 = 0x6865_7261_6c64_0001;
/// The advisory lock key partition changes run under.
const PARTITION_LOCK: i64 = 0x6865_7261_6c64_0002;
/// Days of partitions made ahead of today.
pub const DAYS_AHEAD: i64 = 3;
/// Attempts that started further ahead than this (a wrong clock) are not stored.
pub const MAX_DAYS_AHEAD: i64 = 31;
/// Partition changes give up rather than queue inserts behind them for longer than this.
const DDL_LOCK_TIMEOUT: &str = "SET LOCAL lock_timeout = '2s'";
/// Connections in a replica's pool.
const POOL_SIZE: usize = 16;
/// How long a query waits for a connection, or for a new one to be made.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one operation on the log (a batch stored, a page listed) may take before the
/// database counts as not answering, by default (`--log-answer-timeout`): the call is
/// UNAVAILABLE (an agent sends its reports again) rather than held for as long as TCP waits.
pub const DEFAULT_ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// The same for the retention sweep, which may delete many rows.
const SWEEP_TIMEOUT: Duration = Duration::from_secs(600);
/// A connection idle this long is probed (TCP keepalive), and one whose data goes
/// unacknowledged this long is closed (TCP user timeout): a lost host ends its connections
/// in about this time, not the kernel's 15 minutes.
const TCP_TIMEOUT: Duration = Duration::from_secs(30);
/// The notification channel of stored attempts.
const CHANNEL: &str = "herald_attempts";
const DAY_SECS: i64 = 24 * 60 * 60;

/// The delivery log in a PostgreSQL database.
pub struct PostgresLog {
    pool: Pool,
    url: DatabaseUrl,
    /// Attempts stored through any replica, as the follower reads them.
    tail: broadcast::Sender<Arc<pb::Attempt>>,
    /// Days whose partition is known to exist (days since the epoch, UTC).
    partitions: Mutex<BTreeSet<i64>>,
    /// How long attempts are kept: older ones are not stored.
    retention: Duration,
    /// How long one operation may take before the database counts as not answering.
    answer_timeout: Duration,
    /// Ends the follower when the log is dropped.
    stop: CancellationToken,
}

impl Drop for PostgresLog {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl PostgresLog {
    /// Connects, migrates the schema, makes the partitions ahead and starts following the
    /// attempts every replica stores; operations time out after [`DEFAULT_ANSWER_TIMEOUT`].
    pub async fn open(url: &DatabaseUrl, retention: Duration) -> Result<Self, LogError> {
        Self::open_with(url, retention, DEFAULT_ANSWER_TIMEOUT).await
    }

    /// As [`PostgresLog::open`]; an operation that takes longer than `answer_timeout` is
    /// [`LogError::Unavailable`].
    pub async fn open_with(
        url: &DatabaseUrl,
        retention: Duration,
        answer_timeout: Duration,
    ) -> Result<Self, LogError> {
        let recycling = || ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let tls = url.tls()?;
        let mut config = with_tcp_timeouts(url.config.clone());
        // The server ends a statement the replica gave up on (a second after it did), so a
        // slow database is not left running what nobody waits for.
        let statement_timeout = format!(
            "-c statement_timeout={}",
            (answer_timeout + Duration::from_secs(1)).as_millis()
        );
        let options = match config.get_options() {
            Some(given) if !given.is_empty() => format!("{given} {statement_timeout}"),
            _ => statement_timeout,
        };
        config.options(options);
        let manager = match &tls {
            Tls::Off => Manager::from_config(config, NoTls, recycling()),
            Tls::Verified(connect) => Manager::from_config(config, connect.clone(), recycling()),
        };
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| LogError::Storage(format!("{url}: {e}")))?;
        let (tail, _) = broadcast::channel(TAIL_BUFFER);
        let log = PostgresLog {
            pool,
            url: url.clone(),
            tail,
            partitions: Mutex::new(BTreeSet::new()),
            retention,
            answer_timeout,
            stop: CancellationToken::new(),
        };
        log.migrate().await?;
        let today = day_of(SystemTime::now());
        log.ensure_partitions(
            (first_kept_day(SystemTime::now(), retention)..=today + DAYS_AHEAD).collect(),
        )
        .await?;
        let (listening, mut listens) = tokio::sync::watch::channel(false);
        let follower = follow::Follower {
            url: url.clone(),
            tls,
            pool: log.pool.clone(),
            tail: log.tail.clone(),
            listening,
        };
        tokio::spawn(follower.run(log.stop.clone()));
        // Followers see what is stored after they start: from the moment the log is open.
        if tokio::time::timeout(CONNECT_TIMEOUT, listens.wait_for(|listening| *listening))
            .await
            .is_err()
        {
            tracing::warn!(database = %url, "delivery log: tails start once the database's notifications are heard");
        }
        Ok(log)
    }

    /// A pooled connection, or why the database cannot be reached (or refuses the login).
    async fn client(&self) -> Result<deadpool_postgres::Object, LogError> {
        self.pool.get().await.map_err(|e| match &e {
            deadpool_postgres::PoolError::Backend(err) if refuses_us(err) => {
                LogError::Refused(format!("{}: {}", self.url, error_text::chain(&e)))
            }
            // The pool's own words ("Timeout occurred while creating a new object") say less.
            deadpool_postgres::PoolError::Timeout(_) => LogError::Unavailable(format!(
                "{}: no connection within {} s",
                self.url,
                CONNECT_TIMEOUT.as_secs()
            )),
            _ => unavailable(&self.url, e),
        })
    }

    /// Applies the migrations this database has not had, under the migration lock.
    async fn migrate(&self) -> Result<(), LogError> {
        let mut client = self.client().await?;
        let txn = client.transaction().await.map_err(|e| self.error(e))?;
        // A migration may rebuild a large table: it is not held to the answer timeout.
        txn.batch_execute("SET LOCAL statement_timeout = 0")
            .await
            .map_err(|e| self.error(e))?;
        txn.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(|e| self.error(e))?;
        txn.batch_execute("CREATE TABLE IF NOT EXISTS herald_schema (version integer NOT NULL)")
            .await
            .map_err(|e| self.error(e))?;
        let found: Option<i32> = txn
            .query_opt("SELECT max(version) FROM herald_schema", &[])
            .await
            .map_err(|e| self.error(e))?
            .and_then(|row| row.get(0));
        let found = found.unwrap_or(0);
        let supported = MIGRATIONS.len() as i32;
        if found > supported {
            return Err(LogError::NewerSchema { found, supported });
        }
        for (index, migration) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            txn.batch_execute(migration)
                .await
                .map_err(|e| self.error(e))?;
            txn.execute(
                "INSERT INTO herald_schema (version) VALUES ($1)",
                &[&(index as i32 + 1)],
            )
            .await
            .map_err(|e| self.error(e))?;
            tracing::info!(version = index + 1, database = %self.url, "delivery log schema migrated");
        }
        txn.commit().await.map_err(|e| self.error(e))
    }

    /// A transaction for making or dropping partitions: one replica at a time, and giving up
    /// rather than waiting long for the table's lock (behind a backup, say), which would queue
    /// every insert behind it.
    async fn partition_change<'a>(
        &self,
        client: &'a mut deadpool_postgres::Object,
    ) -> Result<deadpool_postgres::Transaction<'a>, LogError> {
        let txn = client.transaction().await.map_err(|e| self.error(e))?;
        txn.execute("SELECT pg_advisory_xact_lock($1)", &[&PARTITION_LOCK])
            .await
            .map_err(|e| self.error(e))?;
        txn.batch_execute(DDL_LOCK_TIMEOUT)
            .await
            .map_err(|e| self.error(e))?;
        Ok(txn)
    }

    /// Makes the partitions of `days` that are not known to exist.
    async fn ensure_partitions(&self, days: BTreeSet<i64>) -> Result<(), LogError> {
        let missing: Vec<i64> = {
            let known = self.partitions.lock().expect("partitions lock");
            days.difference(&known).copied().collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        let mut client = self.client().await?;
        let txn = self.partition_change(&mut client).await?;
        for day in &missing {
            let from = day_start(*day);
            let to = day_start(day + 1);
            let sql = format!(
                "CREATE TABLE IF NOT EXISTS {} PARTITION OF attempts FOR VALUES FROM ('{}') TO ('{}')",
                partition_name(*day),
                humantime::format_rfc3339(from),
                humantime::format_rfc3339(to),
            );
            txn.batch_execute(&sql).await.map_err(|e| self.error(e))?;
        }
        txn.commit().await.map_err(|e| self.error(e))?;
        self.partitions
            .lock()
            .expect("partitions lock")
            .extend(missing);
        Ok(())
    }

    /// Stores a batch in one transaction that also counts the new attempts into health,
    /// writes what they derive and tells the followers; the positions in `kept` of the
    /// attempts that were new, and the follow-ups written.
    async fn store_batch(
        client: &mut deadpool_postgres::Object,
        kept: &[(SystemTime, pb::Attempt)],
        requests: &[Option<pb::SentRequest>],
        reactions: &dyn Reactions,
    ) -> Result<(Vec<usize>, Vec<PendingFollowup>), tokio_postgres::Error> {
        let columns = ingest::Columns::new(kept);
        let txn = client.transaction().await?;
        let written = ingest::write(&txn, &columns).await?;
        let new_requests = written
            .new
            .iter()
            .filter_map(|i| requests[*i].clone())
            .collect();
        sent::write(&txn, new_requests).await?;
        let fresh: Vec<&pb::Attempt> = written.new.iter().map(|i| &kept[*i].1).collect();
        let followups = derived::commit(&txn, &fresh, reactions).await?;
        if !written.seqs.is_empty() {
            txn.execute(
                "SELECT pg_notify($1, $2)",
                &[&CHANNEL, &follow::ranges(written.seqs)],
            )
            .await?;
        }
        txn.commit().await?;
        Ok((written.new, followups))
    }

    /// A database error as a log error: unavailable when the connection is gone or the
    /// statement ran past its limit (SQLSTATE 57014), a disk fault when the database's disk
    /// is full (SQLSTATE 53100).
    fn error(&self, err: tokio_postgres::Error) -> LogError {
        if err.is_closed()
            || err.as_db_error().is_none()
            || err.code() == Some(&SqlState::QUERY_CANCELED)
        {
            unavailable(&self.url, err)
        } else if refuses_us(&err) {
            LogError::Refused(format!("{}: {}", self.url, error_text::chain(&err)))
        } else if err.code() == Some(&SqlState::DISK_FULL) {
            LogError::Disk(DiskFault::Full(format!(
                "{}: {}",
                self.url,
                error_text::chain(&err)
            )))
        } else {
            LogError::Storage(format!("{}: {}", self.url, error_text::chain(&err)))
        }
    }
}

#[tonic::async_trait]
impl LogStore for PostgresLog {
    async fn store(
        &self,
        attempts: Vec<pb::Attempt>,
        reactions: Arc<dyn Reactions>,
    ) -> Result<Stored, LogError> {
        self.bounded(self.answer_timeout, async {
            let now = SystemTime::now();
            let oldest = day_of(now.checked_sub(self.retention).unwrap_or(UNIX_EPOCH));
            let newest = day_of(now) + MAX_DAYS_AHEAD;
            let mut kept = Vec::with_capacity(attempts.len());
            for mut attempt in attempts {
                let started = attempt.started_at.as_ref().map_or(now, system_time);
                let day = day_of(started);
                if day < oldest || day > newest {
                    tracing::warn!(
                        event = %attempt.event_id,
                        subscription = %attempt.subscription_id,
                        started_at = %humantime::format_rfc3339_millis(started),
                        "attempt outside the delivery log's retention or too far ahead; not stored"
                    );
                    continue;
                }
                bound_attempt_text(&mut attempt.response_excerpt);
                bound_attempt_text(&mut attempt.error);
                kept.push((started, attempt));
            }
            if kept.is_empty() {
                return Ok(Stored::default());
            }
            let requests = take_requests(kept.iter_mut().map(|(_, a)| a));
            self.ensure_partitions(kept.iter().map(|(t, _)| day_of(*t)).collect())
                .await?;

            let days: BTreeSet<i64> = kept.iter().map(|(t, _)| day_of(*t)).collect();
            let mut client = self.client().await?;
            let (new, followups) =
                match Self::store_batch(&mut client, &kept, &requests, &*reactions).await {
                    // A day's partition this replica believed in is gone (dropped by another replica's
                    // size limit, or lost in a failover): make it again, once.
                    Err(err) if err.code() == Some(&SqlState::CHECK_VIOLATION) => {
                        self.partitions
                            .lock()
                            .expect("partitions lock")
                            .retain(|day| !days.contains(day));
                        self.ensure_partitions(days).await?;
                        Self::store_batch(&mut client, &kept, &requests, &*reactions).await
                    }
                    other => other,
                }
                .map_err(|e| self.error(e))?;
            let mut kept: Vec<Option<pb::Attempt>> =
                kept.into_iter().map(|(_, a)| Some(a)).collect();
            Ok(Stored {
                attempts: new
                    .into_iter()
                    .filter_map(|i| kept[i].take())
                    .map(Arc::new)
                    .collect(),
                followups,
            })
        })
        .await
    }

    async fn list(
        &self,
        filter: Filter,
        page_size_asked: u32,
        page_token: &str,
    ) -> Result<Page, LogError> {
        self.bounded(self.answer_timeout, async {
            let size = page_size(page_size_asked);
            let after = PageToken::parse(page_token)?;
            let mut conditions: Vec<String> = Vec::new();
            let mut params: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
            let param = |value: Box<dyn ToSql + Sync + Send>, params: &mut Vec<_>| {
                params.push(value);
                format!("${}", params.len())
            };
            for (column, value) in [
                ("subscription_id", &filter.wire().subscription_id),
                ("tenant", &filter.wire().tenant),
                ("event_id", &filter.wire().event_id),
            ] {
                if !value.is_empty() {
                    let p = param(Box::new(value.clone()), &mut params);
                    conditions.push(format!("{column} = {p}"));
                }
            }
            match filter.tenants() {
                None => {}
                Some(tenants) if tenants.is_empty() => {
                    // None of the tenants asked for may be shown.
                    return Ok(Page {
                        attempts: vec![],
                        next_page_token: String::new(),
                    });
                }
                Some(tenants) => {
                    let tenants: Vec<String> = tenants.into_iter().map(str::to_owned).collect();
                    let p = param(Box::new(tenants), &mut params);
                    conditions.push(format!("tenant = ANY({p})"));
                }
            }
            if filter.wire().outcome != pb::Outcome::Unspecified as i32 {
                let p = param(Box::new(filter.wire().outcome as i16), &mut params);
                conditions.push(format!("outcome = {p}"));
            }
            match filter.event_type() {
                None | Some(EventPattern::All) => {}
                Some(EventPattern::Exact(event_type)) => {
                    let p = param(Box::new(event_type.clone()), &mut params);
                    conditions.push(format!(r#"(event_type COLLATE "C") = {p}"#));
                }
                Some(EventPattern::Prefix(prefix)) => {
                    // The types below `prefix.`: from `prefix.` up to `prefix/` ('/' follows '.').
                    let low = param(Box::new(format!("{prefix}.")), &mut params);
                    let high = param(Box::new(format!("{prefix}/")), &mut params);
                    conditions.push(format!(
                        r#"(event_type COLLATE "C") > {low} AND (event_type COLLATE "C") < {high}"#
                    ));
                }
            }
            match filter.status() {
                None => {}
                Some(StatusFilter::Code(code)) => {
                    let p = param(Box::new(i32::from(code)), &mut params);
                    conditions.push(format!("status_code = {p}"));
                    if code / 100 != 2 {
                        conditions.push(NOT_SUCCESS.to_owned());
                    }
                }
                Some(StatusFilter::Class(class)) => {
                    let p = param(Box::new(i32::from(class)), &mut params);
                    conditions.push(format!("(status_code / 100) = {p}"));
                    if class != 2 {
                        conditions.push(NOT_SUCCESS.to_owned());
                    }
                }
            }
            if let Some(kind) = filter.error_kind() {
                let p = param(Box::new(kind.to_owned()), &mut params);
                // The literal lets the planner use the partial index.
                conditions.push(format!("error_kind = {p} AND error_kind <> ''"));
            }
            if let Some(since) = filter.since {
                let p = param(Box::new(since), &mut params);
                conditions.push(format!("started_at >= {p}"));
            }
            if let Some(until) = filter.until {
                let p = param(Box::new(until), &mut params);
                conditions.push(format!("started_at < {p}"));
            }
            if let Some(after) = &after {
                let t = param(Box::new(after.started_at), &mut params);
                let s = param(Box::new(after.seq), &mut params);
                conditions.push(format!("(started_at, seq) < ({t}, {s})"));
            }
            let limit = param(Box::new(size as i64 + 1), &mut params);
            let sql = format!(
                "SELECT seq, started_at, record FROM attempts {} ORDER BY started_at DESC, seq DESC LIMIT {limit}",
                if conditions.is_empty() {
                    String::new()
                } else {
                    format!("WHERE {}", conditions.join(" AND "))
                }
            );
            let refs: Vec<&(dyn ToSql + Sync)> = params
                .iter()
                .map(|p| p.as_ref() as &(dyn ToSql + Sync))
                .collect();
            let client = self.client().await?;
            let rows = client
                .query(sql.as_str(), &refs)
                .await
                .map_err(|e| self.error(e))?;
            let mut more = rows.len() > size;
            let mut attempts = Vec::with_capacity(size.min(rows.len()));
            let mut bytes = PageBytes::default();
            let mut last = None;
            for row in rows.iter().take(size) {
                let record: &[u8] = row.get(2);
                if !bytes.fits(record.len()) {
                    more = true;
                    break;
                }
                attempts.push(pb::Attempt::decode(record).map_err(super::storage)?);
                last = Some(PageToken {
                    seq: row.get(0),
                    started_at: row.get(1),
                });
            }
            Ok(Page {
                attempts,
                next_page_token: match (more, last) {
                    (true, Some(last)) => last.to_string(),
                    _ => String::new(),
                },
            })
        })
        .await
    }

    async fn sweep(&self, max_age: Duration, max_attempts: u64) -> Result<u64, LogError> {
        self.bounded(SWEEP_TIMEOUT, async {
            let cutoff = SystemTime::now().checked_sub(max_age).unwrap_or(UNIX_EPOCH);
            let today = day_of(SystemTime::now());
            let mut client = self.client().await?;
            // The sweep may delete many rows: its statements have the sweep's own limit.
            client
                .batch_execute(&format!(
                    "SET statement_timeout = {}",
                    SWEEP_TIMEOUT.as_millis()
                ))
                .await
                .map_err(|e| self.error(e))?;
            let partitions: Vec<(String, i64)> = client
                .query(
                    "SELECT c.relname FROM pg_inherits i \
                     JOIN pg_class c ON c.oid = i.inhrelid \
                     JOIN pg_class p ON p.oid = i.inhparent \
                     WHERE p.oid = 'attempts'::regclass ORDER BY c.relname",
                    &[],
                )
                .await
                .map_err(|e| self.error(e))?
                .iter()
                .filter_map(|row| {
                    let name: String = row.get(0);
                    partition_day(&name).map(|day| (name, day))
                })
                .collect();
            // Whole days past retention go; then, while the log holds more than its limit, the
            // oldest days (never today's). Sizes are the planner's estimates (kept by autovacuum),
            // so a sweep never scans the log; a partition that is dropped is counted first.
            let mut counts = Vec::with_capacity(partitions.len());
            for (name, day) in &partitions {
                let row = client
                    .query_one(
                        "SELECT GREATEST(reltuples, 0)::bigint FROM pg_class WHERE oid = $1::text::regclass",
                        &[name],
                    )
                    .await
                    .map_err(|e| self.error(e))?;
                counts.push((name.clone(), *day, row.get::<_, i64>(0) as u64));
            }
            let mut total: u64 = counts.iter().map(|(_, _, n)| n).sum();
            let mut removed = 0;
            let mut dropped = BTreeSet::new();
            for (name, day, estimate) in counts {
                let expired = day_start(day + 1) <= cutoff;
                let over = total > max_attempts && day < today;
                if !(expired || over) {
                    continue;
                }
                let rows = client
                    .query_one(&format!("SELECT count(*) FROM {name}"), &[])
                    .await
                    .map_err(|e| self.error(e))?
                    .get::<_, i64>(0) as u64;
                if rows == 0 && !expired {
                    // An empty day within retention frees nothing; dropping it would only have it
                    // made again below, and again at every sweep while the log is over its limit.
                    // (Its estimate, if stale, counts for nothing either.)
                    total = total.saturating_sub(estimate);
                    continue;
                }
                let txn = self.partition_change(&mut client).await?;
                txn.batch_execute(&format!("DROP TABLE IF EXISTS {name}"))
                    .await
                    .map_err(|e| self.error(e))?;
                txn.commit().await.map_err(|e| self.error(e))?;
                self.partitions
                    .lock()
                    .expect("partitions lock")
                    .remove(&day);
                tracing::info!(partition = %name, attempts = rows, "delivery log: a day's partition dropped");
                dropped.insert(day);
                total = total.saturating_sub(estimate);
                removed += rows;
            }
            // Requests as sent go once every attempt that sent them is gone: when they were last
            // sent before the oldest day still held.
            let oldest_held = partitions
                .iter()
                .map(|(_, day)| *day)
                .filter(|day| !dropped.contains(day))
                .min()
                .unwrap_or(today - 1);
            let requests = sent::sweep(&client, day_start(oldest_held))
                .await
                .map_err(|e| self.error(e))?;
            if requests > 0 {
                tracing::info!(
                    removed = requests,
                    "delivery log: requests as sent past retention removed"
                );
            }
            let audited = audit::sweep(&client, cutoff)
                .await
                .map_err(|e| self.error(e))?;
            if audited > 0 {
                tracing::info!(
                    removed = audited,
                    "audit log: entries past retention removed"
                );
            }
            // Back to the connection's own limit before it returns to the pool.
            client
                .batch_execute("RESET statement_timeout")
                .await
                .map_err(|e| self.error(e))?;
            drop(client);
            let now = SystemTime::now();
            self.ensure_partitions((first_kept_day(now, max_age)..=day_of(now) + DAYS_AHEAD).collect())
                .await?;
            Ok(removed)
        })
        .await
    }

    async fn sent_requests(&self, query: SentQuery) -> Result<SentPage, LogError> {
        self.bounded(self.answer_timeout, async {
            let client = self.client().await?;
            sent::list(&client, &query).await.map_err(|e| self.error(e))
        })
        .await
    }

    async fn expunge(&self, query: SentQuery) -> Result<Expunged, LogError> {
        self.bounded(self.answer_timeout, async {
            let client = self.client().await?;
            sent::expunge(&client, &query)
                .await
                .map_err(|e| self.error(e))
        })
        .await
    }

    async fn record_change(&self, entry: pb::AuditEntry) -> Result<(), LogError> {
        self.bounded(self.answer_timeout, async {
            let client = self.client().await?;
            audit::record(&client, &entry)
                .await
                .map_err(|e| self.error(e))
        })
        .await
    }

    async fn changes(
        &self,
        filter: AuditFilter,
        page_size: u32,
        page_token: &str,
    ) -> Result<AuditPage, LogError> {
        self.bounded(self.answer_timeout, async {
            let after = PageToken::parse(page_token)?;
            let client = self.client().await?;
            audit::list(&client, &filter, page_size, after)
                .await
                .map_err(|e| self.error(e))
        })
        .await
    }

    async fn len(&self) -> Result<u64, LogError> {
        self.bounded(self.answer_timeout, async {
            let client = self.client().await?;
            let row = client
                .query_one("SELECT count(*) FROM attempts", &[])
                .await
                .map_err(|e| self.error(e))?;
            Ok(row.get::<_, i64>(0) as u64)
        })
        .await
    }

    fn follow(&self) -> broadcast::Receiver<Arc<pb::Attempt>> {
        self.tail.subscribe()
    }

    async fn ping(&self) -> Result<(), LogError> {
        // The tables a report batch writes, not only the server: a database that answers
        // without them (a table renamed or dropped by hand, a restore into another schema)
        // stores nothing. Planned, never read (LIMIT 0).
        self.bounded(self.answer_timeout, async {
            self.execute(
                "SELECT 1 FROM attempts, sent_requests, subscription_health, health_followups, \
                 operator_events LIMIT 0",
                &[],
            )
            .await
        })
        .await
    }

    async fn health(
        &self,
        subscription_id: &str,
    ) -> Result<Option<pb::SubscriptionHealth>, LogError> {
        self.bounded(self.answer_timeout, async {
            let client = self.client().await?;
            let row = client
                .query_opt(
                    "SELECT record FROM subscription_health WHERE subscription_id = $1",
                    &[&subscription_id],
                )
                .await
                .map_err(|e| self.error(e))?;
            Ok(row.map(|row| derived::decode_health(subscription_id, row.get(0))))
        })
        .await
    }

    async fn forget_health(&self, subscription_id: &str) -> Result<(), LogError> {
        self.bounded(self.answer_timeout, async {
            self.execute(
                "DELETE FROM subscription_health WHERE subscription_id = $1",
                &[&subscription_id],
            )
            .await
        })
        .await
    }

    async fn followups(
        &self,
        older_than: Duration,
        limit: usize,
    ) -> Result<Vec<PendingFollowup>, LogError> {
        self.bounded(self.answer_timeout, async {
            let client = self.client().await?;
            let rows = client
                .query(
                    "SELECT id, record FROM health_followups WHERE recorded_at <= $1 \
                     ORDER BY id LIMIT $2",
                    &[&super::before_now(older_than), &(limit as i64)],
                )
                .await
                .map_err(|e| self.error(e))?;
            Ok(rows
                .iter()
                .map(|row| derived::decode_followup(row.get(0), row.get(1)))
                .collect())
        })
        .await
    }

    async fn settle(&self, ids: &[i64]) -> Result<(), LogError> {
        self.bounded(self.answer_timeout, async {
            self.execute("DELETE FROM health_followups WHERE id = ANY($1)", &[&ids])
                .await
        })
        .await
    }

    async fn raise(&self, events: &[pb::Event]) -> Result<(), LogError> {
        self.bounded(self.answer_timeout, async {
            let mut client = self.client().await?;
            let txn = client.transaction().await.map_err(|e| self.error(e))?;
            derived::put_events(&txn, events)
                .await
                .map_err(|e| self.error(e))?;
            txn.commit().await.map_err(|e| self.error(e))
        })
        .await
    }

    async fn outbox(&self, limit: usize) -> Result<Vec<pb::Event>, LogError> {
        self.bounded(self.answer_timeout, async {
            let client = self.client().await?;
            let rows = client
                .query(
                    "SELECT record FROM operator_events ORDER BY seq LIMIT $1",
                    &[&(limit as i64)],
                )
                .await
                .map_err(|e| self.error(e))?;
            rows.iter()
                .map(|row| pb::Event::decode(row.get::<_, &[u8]>(0)).map_err(super::storage))
                .collect()
        })
        .await
    }

    async fn emitted(&self, ids: &[String]) -> Result<(), LogError> {
        self.bounded(self.answer_timeout, async {
            self.execute("DELETE FROM operator_events WHERE id = ANY($1)", &[&ids])
                .await
        })
        .await
    }
}

impl PostgresLog {
    /// `work`, or [`LogError::Unavailable`] once it has taken `limit`: a server that stopped
    /// answering (a frozen or lost host, a network dropping packets) otherwise holds the call,
    /// and the connection, for as long as TCP waits. The connections idle in the pool then go
    /// too (the one `work` held among them: it may wait on that server forever), so the next
    /// call connects afresh.
    async fn bounded<T>(
        &self,
        limit: Duration,
        work: impl std::future::Future<Output = Result<T, LogError>>,
    ) -> Result<T, LogError> {
        match tokio::time::timeout(limit, work).await {
            Ok(done) => done,
            Err(_) => {
                let dropped = self.pool.retain(|_, _| false).removed.len();
                tracing::warn!(database = %self.url, dropped, "delivery log: no answer in time; idle connections closed");
                Err(LogError::Unavailable(format!(
                    "{}: no answer within {}",
                    self.url,
                    humantime::format_duration(limit)
                )))
            }
        }
    }

    /// Runs one statement on a pooled connection.
    async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<(), LogError> {
        let client = self.client().await?;
        client
            .execute(sql, params)
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }
}

/// Where a listing goes on: after the row with this start time and `seq`.
struct PageToken {
    started_at: SystemTime,
    seq: i64,
}

impl PageToken {
    fn parse(text: &str) -> Result<Option<Self>, LogError> {
        if text.is_empty() {
            return Ok(None);
        }
        let bad = || LogError::InvalidQuery(crate::attempts::not_from_this_listing());
        let (micros, seq) = text.split_once(':').ok_or_else(bad)?;
        let micros: u64 = micros.parse().map_err(|_| bad())?;
        Ok(Some(PageToken {
            started_at: UNIX_EPOCH + Duration::from_micros(micros),
            seq: seq.parse().map_err(|_| bad())?,
        }))
    }
}

impl fmt::Display for PageToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let micros = self
            .started_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros());
        write!(f, "{micros}:{}", self.seq)
    }
}

/// The day (since the epoch, UTC) `t` falls in.
fn day_of(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64 / DAY_SECS,
        Err(before) => -(before.duration().as_secs() as i64 / DAY_SECS) - 1,
    }
}

/// Midnight (UTC) starting `day`.
fn day_start(day: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs((day.max(0) * DAY_SECS) as u64)
}

/// `attempts_YYYYMMDD`.
fn partition_name(day: i64) -> String {
    let date = humantime::format_rfc3339(day_start(day)).to_string();
    format!("attempts_{}", date[..10].replace('-', ""))
}

/// The day of a partition named by [`partition_name`].
fn partition_day(name: &str) -> Option<i64> {
    let digits = name.strip_prefix("attempts_")?;
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let text = format!(
        "{}-{}-{}T00:00:00Z",
        &digits[..4],
        &digits[4..6],
        &digits[6..8]
    );
    humantime::parse_rfc3339(&text).ok().map(day_of)
}

/// The oldest day whose partition is made ahead: yesterday (attempts started before midnight
/// are reported after it), unless the retention is shorter than that: a day wholly past it
/// would be dropped by the next sweep and made again, every minute.
fn first_kept_day(now: SystemTime, retention: Duration) -> i64 {
    let cutoff = now.checked_sub(retention).unwrap_or(UNIX_EPOCH);
    (day_of(now) - 1).max(day_of(cutoff))
}

/// Whether the database refuses this control plane's login or the rights it needs, by
/// SQLSTATE: a wrong password (28P01) or role (28000), a database that does not exist
/// (3D000), no right to act (42501) or no schema to create tables in (3F000).
fn refuses_us(err: &tokio_postgres::Error) -> bool {
    [
        SqlState::INVALID_PASSWORD,
        SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
        SqlState::INVALID_CATALOG_NAME,
        SqlState::INSUFFICIENT_PRIVILEGE,
        SqlState::INVALID_SCHEMA_NAME,
    ]
    .iter()
    .any(|state| err.code() == Some(state))
}

/// `config` with TCP keepalives probing after at most [`TCP_TIMEOUT`] idle, and a TCP user
/// timeout of [`TCP_TIMEOUT`] unless the URL sets a non-zero one.
pub(crate) fn with_tcp_timeouts(mut config: tokio_postgres::Config) -> tokio_postgres::Config {
    if config.get_keepalives_idle() > TCP_TIMEOUT {
        config.keepalives_idle(TCP_TIMEOUT);
    }
    if config.get_tcp_user_timeout().is_none_or(Duration::is_zero) {
        config.tcp_user_timeout(TCP_TIMEOUT);
    }
    config
}

fn unavailable(url: &DatabaseUrl, err: impl std::error::Error) -> LogError {
    LogError::Unavailable(format!("{url}: {}", error_text::chain(&err)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_made_only_for_days_the_retention_keeps() {
        let noon = UNIX_EPOCH + Duration::from_secs(1_796_385_600); // 2026-12-04T12:00:00Z
        let today = day_of(noon);
        let hour = Duration::from_secs(3600);
        assert_eq!(first_kept_day(noon, 30 * 24 * hour), today - 1);
        assert_eq!(first_kept_day(noon, 24 * hour), today - 1);
        assert_eq!(
            first_kept_day(noon, hour),
            today,
            "yesterday is past a 1 h retention"
        );
        let past_midnight = day_start(today) + Duration::from_secs(1800);
        assert_eq!(
            first_kept_day(past_midnight, hour),
            today - 1,
            "at 00:30, a 1 h retention still keeps 23:30"
        );
    }

    #[test]
    fn days_and_partition_names_round_trip() {
        let t = UNIX_EPOCH + Duration::from_secs(1_796_385_600); // 2026-12-04T12:00:00Z
        let day = day_of(t);
        assert_eq!(partition_name(day), "attempts_20261204");
        assert_eq!(partition_day("attempts_20261204"), Some(day));
        assert!(day_start(day) <= t && t < day_start(day + 1));
        assert_eq!(partition_day("attempts_2026120"), None);
        assert_eq!(partition_day("other_20261204"), None);
    }

    #[test]
    fn page_tokens_round_trip() {
        let token = PageToken {
            started_at: UNIX_EPOCH + Duration::from_micros(1_796_385_600_123_456),
            seq: 42,
        };
        let parsed = PageToken::parse(&token.to_string())
            .expect("parses")
            .expect("a token");
        assert_eq!((parsed.started_at, parsed.seq), (token.started_at, 42));
        assert!(PageToken::parse("garbage").is_err());
        assert!(PageToken::parse("").expect("empty").is_none());
    }
}
