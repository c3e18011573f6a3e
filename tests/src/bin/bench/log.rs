//! `bench log`: the central delivery log.
//!
//! Ingest: attempt reports sent to a control plane (embedded store) over the real report
//! stream by 4 agents at once, batches of 500 attempts with up to 4 batches in flight per
//! stream, each batch committed durably before its ack; the baseline, in the same run, is the
//! same batches written straight into a log file (no gRPC). The batches are made before the
//! clock starts in both cases (agents make their reports on their own machines). Three rounds
//! of 100,000 attempts, median reported.
//!
//! Queries: the log is filled to `HERALD_BENCH_LOG_ATTEMPTS` attempts (default 10,000,000;
//! 1,000 subscriptions, 100 tenants, 2% failed) and a control plane serves `ListAttempts` for a
//! page of 50 with several filters; 200 queries per filter, p50/p99.

use std::time::{Duration, SystemTime};

use herald_control_plane::attempts::EmbeddedLog;
use herald_proto::convert::{duration, timestamp};
use herald_proto::v1 as pb;
use herald_proto::v1::agent_control_client::AgentControlClient;
use herald_proto::v1::deliveries_client::DeliveriesClient;
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

/// Attempt number `i` of the synthetic log: realistic sizes and spread.
fn attempt(i: u64, started_at: SystemTime) -> pb::Attempt {
    let failed = i.is_multiple_of(50);
    pb::Attempt {
        event_id: format!("evt_{i:016}"),
        subscription_id: format!("sub_bench_{:04}", i % SUBSCRIPTIONS),
        tenant: format!("shop-{}", i % TENANTS),
        event_type: "order.created".into(),
        attempt: 1,
        agent_id: format!("agt_bench_{}", i % STREAMS),
        started_at: Some(timestamp(started_at)),
        duration: Some(duration(Duration::from_millis(12))),
        status_code: if failed { 500 } else { 200 },
        error_kind: String::new(),
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
    }
}

fn batch(first: u64, len: u64) -> Vec<pb::Attempt> {
    let now = SystemTime::now();
    (first..first + len).map(|i| attempt(i, now)).collect()
}

/// A control plane on `dir`; the handle ends when `stop` fires and the log is closed.
async fn control_plane(
    dir: &std::path::Path,
    stop: &CancellationToken,
) -> anyhow::Result<(String, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let config = herald_control_plane::Config {
        shutdown_grace: Duration::from_secs(1),
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
async fn ingest_direct(log: &EmbeddedLog, first: u64, count: u64) -> anyhow::Result<f64> {
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

pub async fn run() -> anyhow::Result<()> {
    let total: u64 = std::env::var("HERALD_BENCH_LOG_ATTEMPTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);

    println!("## Delivery log: ingest (attempts/s, median of 3 rounds of {ROUND_ATTEMPTS})\n");
    let baseline_dir = tempfile::tempdir()?;
    let baseline_log = EmbeddedLog::open(baseline_dir.path())?;
    let dir = tempfile::tempdir()?;
    let stop = CancellationToken::new();
    let (url, server) = control_plane(dir.path(), &stop).await?;
    let (mut grpc, mut direct) = (vec![], vec![]);
    for round in 0..3 {
        let first = round * ROUND_ATTEMPTS;
        grpc.push(ingest_grpc(&url, first, ROUND_ATTEMPTS).await?);
        direct.push(ingest_direct(&baseline_log, first, ROUND_ATTEMPTS).await?);
    }
    let (grpc, direct) = (median(grpc), median(direct));
    println!("| case | attempts/s | vs direct |");
    println!("| --- | ---: | ---: |");
    println!("| straight into the log file (baseline) | {direct:.0} | 100% |");
    println!(
        "| report streams over gRPC, {STREAMS} agents | {grpc:.0} | {:.0}% |",
        100.0 * grpc / direct
    );
    drop(baseline_log);
    stop.cancel();
    server.await?;

    // Fill the control plane's own log to `total`, then query it through the API. Its
    // streams let go of the file shortly after it stops.
    let log = herald_tests::eventually(Duration::from_secs(10), "the log to be free", || async {
        Ok(EmbeddedLog::open(dir.path()).ok())
    })
    .await?;
    let mut next = 3 * ROUND_ATTEMPTS;
    let fill_start = Instant::now();
    while next < total {
        let len = (total - next).min(5_000);
        log.insert(batch(next, len)).await?;
        next += len;
    }
    let stored = log.len()?;
    println!(
        "\nFilled to {stored} attempts in {:.0} s ({:.0} attempts/s, one writer, batches of 5,000).\n",
        fill_start.elapsed().as_secs_f64(),
        (stored - 3 * ROUND_ATTEMPTS) as f64 / fill_start.elapsed().as_secs_f64()
    );
    drop(log);

    let stop = CancellationToken::new();
    let (url, server) = control_plane(dir.path(), &stop).await?;
    let mut client = DeliveriesClient::new(connect(&url).await?);
    println!("## Delivery log: a page of 50 over {stored} attempts ({QUERIES} queries each)\n");
    println!("| filter | p50 | p99 | attempts in page (median) |");
    println!("| --- | ---: | ---: | ---: |");
    type Filter = Box<dyn Fn(u64) -> pb::AttemptFilter>;
    let cases: Vec<(&str, Filter)> = vec![
        (
            "subscription",
            Box::new(|i| pb::AttemptFilter {
                subscription_id: format!("sub_bench_{:04}", i % SUBSCRIPTIONS),
                ..Default::default()
            }),
        ),
        (
            "subscription + outcome failed",
            Box::new(|i| pb::AttemptFilter {
                subscription_id: format!("sub_bench_{:04}", (i * 50) % SUBSCRIPTIONS),
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
