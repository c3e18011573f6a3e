//! `bench log [embedded|postgres]`: the central delivery log, on the embedded store (default)
//! or on a PostgreSQL server the bench starts (Debian's package, PostgreSQL's durable defaults).
//!
//! Ingest: attempt reports sent to a control plane over the real report stream by 4 agents at
//! once, batches of 500 attempts with up to 4 batches in flight per stream, each batch
//! committed durably before its ack; the baselines, in the same run, are the same batches
//! written straight into the store (no gRPC) and, on PostgreSQL, a binary `COPY` of the same
//! rows into the same table. The batches are made before the clock starts in every case
//! (agents make their reports on their own machines). Three rounds of 100,000 attempts,
//! median reported. On PostgreSQL, dropping a day's partition is timed while ingest runs.
//!
//! `HERALD_LOG_CACHE_BYTES` sets the embedded log's page cache, as it does the control plane's.
//!
//! Queries: the log is filled to `HERALD_BENCH_LOG_ATTEMPTS` attempts (default 10,000,000;
//! 1,000 subscriptions, 100 tenants, 8 event types of 4 groups, 2% failed: four in five of
//! those answered 500, one in five timed out) and a control plane serves `ListAttempts` for a
//! page of 50 with several filters; 200 queries per filter, p50/p99.

use std::time::{Duration, SystemTime};

use std::sync::Arc;

use herald_control_plane::attempts::postgres::DatabaseUrl;
use herald_control_plane::attempts::{AttemptLog, EmbeddedLog, LogStoreFlag, PostgresLog};
use herald_proto::convert::{duration, timestamp};
use herald_proto::v1 as pb;
use herald_proto::v1::agent_control_client::AgentControlClient;
use herald_proto::v1::deliveries_client::DeliveriesClient;
use herald_proto::v1::subscriptions_client::SubscriptionsClient;
use herald_tests::herald::connect;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const SUBSCRIPTIONS: u64 = 1000;
const TENANTS: u64 = 100;
const STREAMS: u64 = 4;
const BATCH: u64 = 500;
const WINDOW: usize = 4;
const ROUND_ATTEMPTS: u64 = 100_000;
const QUERIES: usize = 200;
/// The log's retention in the bench: long enough for the aged partition it drops.
const YEAR: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// The subscriptions the attempts are of, `(id, tenant)`: made through the API before any
/// attempt is sent, since the control plane stores reports of subscriptions it knows only.
static TARGETS: std::sync::OnceLock<Vec<(String, String)>> = std::sync::OnceLock::new();

/// The subscription and tenant of attempt `i`.
fn target(i: u64) -> &'static (String, String) {
    let targets = TARGETS.get().expect("the subscriptions are made first");
    &targets[(i % SUBSCRIPTIONS) as usize]
}

/// Makes the subscriptions through the control plane at `url`: subscription `j` is tenant
/// `shop-{j % TENANTS}`'s.
async fn make_targets(url: &str) -> anyhow::Result<()> {
    let mut client = SubscriptionsClient::new(connect(url).await?);
    let mut targets = Vec::new();
    for j in 0..SUBSCRIPTIONS {
        let tenant = format!("shop-{}", j % TENANTS);
        let sub = client
            .create_subscription(pb::CreateSubscriptionRequest {
                subscription: Some(pb::Subscription {
                    url: format!("https://{tenant}.example.com/webhooks/herald"),
                    tenant: tenant.clone(),
                    event_types: vec!["order.*".into()],
                    ..Default::default()
                }),
                allow_unregistered: true,
                ..Default::default()
            })
            .await?
            .into_inner();
        targets.push((sub.id, tenant));
    }
    TARGETS
        .set(targets)
        .map_err(|_| anyhow::anyhow!("subscriptions made twice"))
}

/// Attempt number `i` of the synthetic log: realistic sizes and spread.
/// The event types of the bench's attempts, in turn.
const EVENT_TYPES: [&str; 8] = [
    "order.created",
    "order.changed",
    "product.changed",
    "stock.changed",
    "order.paid",
    "invoice.added",
    "product.created",
    "order.removed",
];

fn attempt(i: u64, started_at: SystemTime) -> pb::Attempt {
    let failed = i.is_multiple_of(50);
    let timed_out = i.is_multiple_of(250);
    let (subscription_id, tenant) = target(i);
    pb::Attempt {
        event_id: format!("evt_{i:016}"),
        subscription_id: subscription_id.clone(),
        tenant: tenant.clone(),
        event_type: EVENT_TYPES[(i % EVENT_TYPES.len() as u64) as usize].into(),
        attempt: 1,
        agent_id: format!("agt_bench_{}", i % STREAMS),
        started_at: Some(timestamp(started_at)),
        duration: Some(duration(Duration::from_millis(12))),
        status_code: match (failed, timed_out) {
            (_, true) => 0,
            (true, false) => 500,
            (false, false) => 200,
        },
        error_kind: match (failed, timed_out) {
            (_, true) => "timeout",
            (true, false) => "http_status",
            (false, false) => "",
        }
        .into(),
        error: String::new(),
        outcome: if failed {
            pb::Outcome::Failed
        } else {
            pb::Outcome::Delivered
        } as i32,
        next_attempt_at: None,
        response_excerpt: if failed {
            r#"{"error":"internal server error","request_id":"req_5f1c0e"}"#.into()
        } else {
            r#"{"ok":true}"#.into()
        },
        url: format!("https://shop-{}.example.com/webhooks/herald", i % TENANTS),
        test: false,
        request: None,
    }
}

fn batch(first: u64, len: u64) -> Vec<pb::Attempt> {
    let now = SystemTime::now();
    (first..first + len).map(|i| attempt(i, now)).collect()
}

/// A control plane on `dir` keeping its log in `store`; the handle ends when `stop` fires and
/// the log is closed.
async fn control_plane(
    dir: &std::path::Path,
    store: &LogStoreFlag,
    stop: &CancellationToken,
) -> anyhow::Result<(String, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let config = herald_control_plane::Config {
        shutdown_grace: Duration::from_secs(1),
        log_store: store.clone(),
        log_retention: YEAR,
        log_cache_bytes: cache_bytes(),
        ..herald_control_plane::Config::new(addr, dir.to_owned())
    };
    let stop = stop.clone();
    let task = tokio::spawn(async move {
        if let Err(err) = herald_control_plane::run(config, listener, stop.cancelled_owned()).await
        {
            eprintln!("control plane: {err}");
        }
    });
    let url = format!("http://{addr}");
    herald_tests::eventually(Duration::from_secs(10), "the control plane", || async {
        Ok(connect(&url).await.ok())
    })
    .await?;
    Ok((url, task))
}

/// Sends attempts `first..first+count` over `STREAMS` report streams; returns attempts/s.
async fn ingest_grpc(url: &str, first: u64, count: u64) -> anyhow::Result<f64> {
    let per_stream = count / STREAMS;
    // The load is made before the clock starts: agents make it on their own machines.
    let mut prepared = Vec::new();
    for s in 0..STREAMS {
        let base = first + s * per_stream;
        let batches: Vec<pb::ReportBatch> = (0..per_stream / BATCH)
            .map(|b| pb::ReportBatch {
                batch_id: b + 1,
                agent_id: format!("agt_bench_{s}"),
                attempts: batch(base + b * BATCH, BATCH),
            })
            .collect();
        prepared.push((connect(url).await?, batches));
    }
    let start = Instant::now();
    let mut streams = Vec::new();
    for (channel, reports) in prepared {
        streams.push(tokio::spawn(async move {
            let (tx, rx) = tokio::sync::mpsc::channel::<pb::ReportBatch>(WINDOW);
            let mut acks = AgentControlClient::new(channel)
                .report_attempts(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await?
                .into_inner();
            let batches = reports.len();
            let sender = tokio::spawn(async move {
                for report in reports {
                    if tx.send(report).await.is_err() {
                        return;
                    }
                }
            });
            let mut acked = 0;
            while acked < batches {
                acks.message()
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("report stream ended"))?;
                acked += 1;
            }
            sender.await?;
            anyhow::Ok(())
        }));
    }
    for stream in streams {
        stream.await??;
    }
    Ok(count as f64 / start.elapsed().as_secs_f64())
}

/// Writes the same batches straight into `log` from `STREAMS` tasks; returns attempts/s.
async fn ingest_direct(log: &AttemptLog, first: u64, count: u64) -> anyhow::Result<f64> {
    let per_stream = count / STREAMS;
    let prepared: Vec<Vec<Vec<pb::Attempt>>> = (0..STREAMS)
        .map(|s| {
            let base = first + s * per_stream;
            (0..per_stream / BATCH)
                .map(|b| batch(base + b * BATCH, BATCH))
                .collect()
        })
        .collect();
    let start = Instant::now();
    let mut writers = Vec::new();
    for batches in prepared {
        let log = log.clone();
        writers.push(tokio::spawn(async move {
            for attempts in batches {
                log.insert(attempts).await?;
            }
            anyhow::Ok(())
        }));
    }
    for writer in writers {
        writer.await??;
    }
    Ok(count as f64 / start.elapsed().as_secs_f64())
}

/// The middle value.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The value at fraction `p` of already sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

/// Which store the bench measures.
enum Store {
    Embedded,
    Postgres(Box<herald_tests::Postgres>),
}

impl Store {
    fn url(&self) -> anyhow::Result<LogStoreFlag> {
        Ok(match self {
            Store::Embedded => LogStoreFlag::new("embedded"),
            Store::Postgres(pg) => LogStoreFlag::new(pg.url()),
        })
    }

    /// A log of this store for writing straight into it: a file of its own in `dir` for the
    /// embedded store, the same database for PostgreSQL.
    async fn open(&self, dir: &std::path::Path) -> anyhow::Result<AttemptLog> {
        Ok(match self {
            Store::Embedded => Arc::new(EmbeddedLog::open_with_cache(dir, cache_bytes())?),
            Store::Postgres(pg) => Arc::new(PostgresLog::open(&database(pg)?, YEAR).await?),
        })
    }
}

/// The embedded log's page cache: `HERALD_LOG_CACHE_BYTES`, as for the control plane, else
/// its default.
fn cache_bytes() -> usize {
    std::env::var("HERALD_LOG_CACHE_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(herald_control_plane::attempts::embedded::DEFAULT_CACHE_BYTES)
}

fn database(pg: &herald_tests::Postgres) -> anyhow::Result<DatabaseUrl> {
    DatabaseUrl::parse(&pg.url()).map_err(anyhow::Error::msg)
}

pub async fn run() -> anyhow::Result<()> {
    let total: u64 = std::env::var("HERALD_BENCH_LOG_ATTEMPTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let store = match std::env::args().nth(2).as_deref() {
        None | Some("embedded") => Store::Embedded,
        Some("postgres") => {
            Store::Postgres(Box::new(herald_tests::Postgres::start_durable().await?))
        }
        Some(other) => anyhow::bail!("bench log: {other}: use embedded or postgres"),
    };
    let store_url = store.url()?;

    println!("## Delivery log: ingest (attempts/s, median of 3 rounds of {ROUND_ATTEMPTS})\n");
    let baseline_dir = tempfile::tempdir()?;
    let baseline_log = store.open(baseline_dir.path()).await?;
    let dir = tempfile::tempdir()?;
    let stop = CancellationToken::new();
    let (url, server) = control_plane(dir.path(), &store_url, &stop).await?;
    make_targets(&url).await?;
    let (mut grpc, mut direct, mut copied) = (vec![], vec![], vec![]);
    for round in 0..3 {
        let first = round * ROUND_ATTEMPTS;
        grpc.push(ingest_grpc(&url, first, ROUND_ATTEMPTS).await?);
        // The baselines take their own ids, so they store as much as the API did.
        direct.push(ingest_direct(&baseline_log, 10_000_000_000 + first, ROUND_ATTEMPTS).await?);
        if let Store::Postgres(pg) = &store {
            copied.push(postgres_bench::copy(pg, 20_000_000_000 + first, ROUND_ATTEMPTS).await?);
        }
    }
    let (grpc, direct) = (median(grpc), median(direct));
    println!("| case | attempts/s | vs direct | vs COPY |");
    println!("| --- | ---: | ---: | ---: |");
    let copy = (!copied.is_empty()).then(|| median(copied));
    let vs_copy = |rate: f64| copy.map_or("-".to_owned(), |c| format!("{:.0}%", 100.0 * rate / c));
    if let Some(copy) = copy {
        println!("| binary COPY into the same table (baseline) | {copy:.0} | - | 100% |");
    }
    println!(
        "| straight into the store, {STREAMS} writers (baseline) | {direct:.0} | 100% | {} |",
        vs_copy(direct)
    );
    println!(
        "| report streams over gRPC, {STREAMS} agents | {grpc:.0} | {:.0}% | {} |",
        100.0 * grpc / direct,
        vs_copy(grpc)
    );
    drop(baseline_log);
    stop.cancel();
    server.await?;

    if let Store::Postgres(pg) = &store {
        postgres_bench::drop_partition_under_ingest(pg).await?;
    }

    // Fill the control plane's own log to `total`, then query it through the API. Its
    // streams let go of the file shortly after it stops.
    let log: AttemptLog = match &store {
        Store::Embedded => {
            herald_tests::eventually(Duration::from_secs(10), "the log to be free", || async {
                Ok(EmbeddedLog::open_with_cache(dir.path(), cache_bytes()).ok())
            })
            .await
            .map(|log| Arc::new(log) as AttemptLog)?
        }
        Store::Postgres(pg) => Arc::new(PostgresLog::open(&database(pg)?, YEAR).await?),
    };
    let mut next = 3 * ROUND_ATTEMPTS;
    let already = log.len().await?;
    // Reports the control plane refused would be acked too: count what it stored.
    anyhow::ensure!(
        already >= 3 * ROUND_ATTEMPTS,
        "the report streams stored {already} of {} attempts",
        3 * ROUND_ATTEMPTS
    );
    let fill_start = Instant::now();
    while already + (next - 3 * ROUND_ATTEMPTS) < total {
        let len = (total - already - (next - 3 * ROUND_ATTEMPTS)).min(5_000);
        log.insert(batch(next, len)).await?;
        next += len;
    }
    let stored = log.len().await?;
    println!(
        "\nFilled to {stored} attempts in {:.0} s ({:.0} attempts/s, one writer, batches of 5,000).\n",
        fill_start.elapsed().as_secs_f64(),
        (stored - already) as f64 / fill_start.elapsed().as_secs_f64()
    );
    drop(log);

    let stop = CancellationToken::new();
    let (url, server) = control_plane(dir.path(), &store_url, &stop).await?;
    let mut client = DeliveriesClient::new(connect(&url).await?);
    println!("## Delivery log: a page of 50 over {stored} attempts ({QUERIES} queries each)\n");
    println!("| filter | p50 | p99 | attempts in page (median) |");
    println!("| --- | ---: | ---: | ---: |");
    type Filter = Box<dyn Fn(u64) -> pb::AttemptFilter>;
    let cases: Vec<(&str, Filter)> = vec![
        (
            "subscription",
            Box::new(|i| pb::AttemptFilter {
                subscription_id: target(i).0.clone(),
                ..Default::default()
            }),
        ),
        (
            "subscription + outcome failed",
            Box::new(|i| pb::AttemptFilter {
                subscription_id: target(i * 50).0.clone(),
                outcome: pb::Outcome::Failed as i32,
                ..Default::default()
            }),
        ),
        (
            "event id",
            Box::new(move |i| pb::AttemptFilter {
                event_id: format!("evt_{:016}", (i * 7919) % stored),
                ..Default::default()
            }),
        ),
        (
            "tenant",
            Box::new(|i| pb::AttemptFilter {
                tenant: format!("shop-{}", i % TENANTS),
                ..Default::default()
            }),
        ),
        (
            "outcome failed",
            Box::new(|_| pb::AttemptFilter {
                outcome: pb::Outcome::Failed as i32,
                ..Default::default()
            }),
        ),
        (
            "event type",
            Box::new(|i| pb::AttemptFilter {
                event_type: EVENT_TYPES[(i % EVENT_TYPES.len() as u64) as usize].into(),
                ..Default::default()
            }),
        ),
        (
            "event-type pattern (order.*)",
            Box::new(|_| pb::AttemptFilter {
                event_type: "order.*".into(),
                ..Default::default()
            }),
        ),
        (
            "status class 5xx",
            Box::new(|_| pb::AttemptFilter {
                status: "5xx".into(),
                ..Default::default()
            }),
        ),
        (
            "error kind timeout",
            Box::new(|_| pb::AttemptFilter {
                error_kind: "timeout".into(),
                ..Default::default()
            }),
        ),
        (
            "tenant + event-type pattern + 5xx",
            Box::new(|i| pb::AttemptFilter {
                tenant: format!("shop-{}", i % TENANTS),
                event_type: "order.*".into(),
                status: "5xx".into(),
                ..Default::default()
            }),
        ),
        (
            "none (newest 50)",
            Box::new(|_| pb::AttemptFilter::default()),
        ),
    ];
    for (name, filter) in cases {
        let mut times = Vec::with_capacity(QUERIES);
        let mut sizes = Vec::with_capacity(QUERIES);
        for i in 0..QUERIES as u64 {
            let start = Instant::now();
            let page = client
                .list_attempts(pb::ListAttemptsRequest {
                    filter: Some(filter(i)),
                    page_size: 50,
                    page_token: String::new(),
                })
                .await?
                .into_inner();
            times.push(start.elapsed());
            sizes.push(page.attempts.len() as f64);
        }
        times.sort();
        println!(
            "| {name} | {:.2} ms | {:.2} ms | {:.0} |",
            percentile(&times, 0.5).as_secs_f64() * 1e3,
            percentile(&times, 0.99).as_secs_f64() * 1e3,
            median(sizes)
        );
    }
    stop.cancel();
    server.await?;
    Ok(())
}

/// What only the PostgreSQL store is measured by: a binary COPY baseline, and dropping a day's
/// partition while ingest runs.
mod postgres_bench {
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use herald_control_plane::attempts::{LogStore, PostgresLog};
    use herald_proto::convert::std_duration;
    use prost::Message as _;
    use tokio::time::Instant;
    use tokio_postgres::binary_copy::BinaryCopyInWriter;
    use tokio_postgres::types::Type;

    use super::{BATCH, STREAMS, YEAR, attempt, batch, database};

    /// Copies attempts `first..first+count` into `attempts` with one binary COPY per writer,
    /// from `STREAMS` writers; returns attempts/s.
    pub async fn copy(pg: &herald_tests::Postgres, first: u64, count: u64) -> anyhow::Result<f64> {
        let per_stream = count / STREAMS;
        let now = SystemTime::now();
        let mut prepared = Vec::new();
        for s in 0..STREAMS {
            let (client, connection) =
                tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            let base = first + s * per_stream;
            let rows: Vec<_> = (base..base + per_stream).map(|i| attempt(i, now)).collect();
            prepared.push((client, rows));
        }
        let start = Instant::now();
        let mut writers = Vec::new();
        for (client, rows) in prepared {
            writers.push(tokio::spawn(async move {
                let sink = client
                    .copy_in(
                        "COPY attempts (started_at, tenant, event_id, subscription_id, attempt, \
                         event_type, outcome, status_code, error_kind, error, url, agent_id, \
                         duration_ms, record) FROM STDIN (FORMAT binary)",
                    )
                    .await?;
                let types = [
                    Type::TIMESTAMPTZ,
                    Type::TEXT,
                    Type::TEXT,
                    Type::TEXT,
                    Type::INT4,
                    Type::TEXT,
                    Type::INT2,
                    Type::INT4,
                    Type::TEXT,
                    Type::TEXT,
                    Type::TEXT,
                    Type::TEXT,
                    Type::FLOAT8,
                    Type::BYTEA,
                ];
                let writer = BinaryCopyInWriter::new(sink, &types);
                tokio::pin!(writer);
                for a in rows {
                    let started = a
                        .started_at
                        .as_ref()
                        .map(herald_proto::convert::system_time);
                    let duration_ms = a
                        .duration
                        .as_ref()
                        .and_then(std_duration)
                        .map_or(0.0, |d| d.as_secs_f64() * 1000.0);
                    let record = a.encode_to_vec();
                    writer
                        .as_mut()
                        .write(&[
                            &started,
                            &a.tenant,
                            &a.event_id,
                            &a.subscription_id,
                            &(a.attempt as i32),
                            &a.event_type,
                            &(a.outcome as i16),
                            &(a.status_code as i32),
                            &a.error_kind,
                            &a.error,
                            &a.url,
                            &a.agent_id,
                            &duration_ms,
                            &record,
                        ])
                        .await?;
                }
                writer.finish().await?;
                anyhow::Ok(())
            }));
        }
        for writer in writers {
            writer.await??;
        }
        Ok(count as f64 / start.elapsed().as_secs_f64())
    }

    /// Fills a day 40 days back with 200,000 attempts, then drops it (retention 30 days) while
    /// `STREAMS` writers keep inserting batches; prints how long the drop took.
    pub async fn drop_partition_under_ingest(pg: &herald_tests::Postgres) -> anyhow::Result<()> {
        let log = Arc::new(PostgresLog::open(&database(pg)?, YEAR).await?);
        let old = SystemTime::now() - Duration::from_secs(40 * 24 * 60 * 60);
        let mut next = 30_000_000_000u64;
        for _ in 0..40 {
            log.insert((next..next + 5_000).map(|i| attempt(i, old)).collect())
                .await?;
            next += 5_000;
        }
        let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let mut writers = Vec::new();
        for s in 0..STREAMS {
            let (log, running) = (log.clone(), running.clone());
            writers.push(tokio::spawn(async move {
                let mut first = 40_000_000_000 + s * 1_000_000_000;
                let mut written = 0u64;
                while running.load(std::sync::atomic::Ordering::Relaxed) {
                    log.insert(batch(first, BATCH)).await?;
                    first += BATCH;
                    written += BATCH;
                }
                anyhow::Ok(written)
            }));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let start = Instant::now();
        let removed = log
            .sweep(Duration::from_secs(30 * 24 * 60 * 60), u64::MAX)
            .await?;
        let took = start.elapsed();
        tokio::time::sleep(Duration::from_millis(500)).await;
        running.store(false, std::sync::atomic::Ordering::Relaxed);
        let mut written = 0;
        for writer in writers {
            written += writer.await??;
        }
        println!(
            "\nDropping a day's partition ({removed} attempts) with {STREAMS} writers inserting: \
             {:.0} ms ({written} attempts inserted meanwhile).\n",
            took.as_secs_f64() * 1e3
        );
        Ok(())
    }
}
