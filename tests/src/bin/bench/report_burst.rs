//! `bench report-burst`: a `herald-control-plane` process (the release binary next to this one,
//! embedded stores) taking the reports of many agents at once, as after a restart of the
//! replica they report to: 300 report streams, one connection each, each sending one full
//! batch and keeping its stream open, as agents do; every attempt (about 2 KB) a distinct
//! event, so the log stores them all. Sampled every 10 ms from outside: the control plane's
//! peak RSS, and its RSS once every batch is acknowledged. Cases, alternating, two rounds each:
//! the defaults with the batches agents send (at most 512 KiB); the defaults with the 2 MB
//! batches agents sent before; and those 2 MB batches to a control plane as it was before
//! (no budget of reports, 1 MiB windows, the log's page cache at redb's 1 GiB).

use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use herald_proto::v1 as pb;
use herald_proto::v1::agent_control_client::AgentControlClient;
use herald_proto::v1::subscriptions_client::SubscriptionsClient;
use herald_tests::herald::connect;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_stream::StreamExt as _;
use tokio_util::sync::CancellationToken;

use super::soak::rss_mb;

/// Report streams at once.
const STREAMS: usize = 300;
/// Bytes of each attempt's response excerpt: attempts of about 2 KB.
const EXCERPT: usize = 1_900;

/// One case: its name, the control plane's flags and the attempts in each stream's batch.
struct Case {
    name: &'static str,
    flags: &'static [&'static str],
    attempts: usize,
}

const CASES: [Case; 3] = [
    Case {
        name: "defaults, batches of 500 KB",
        flags: &[],
        attempts: 250,
    },
    Case {
        name: "defaults, batches of 2 MB",
        flags: &[],
        attempts: 1000,
    },
    Case {
        name: "as before: no budget, 1 MiB windows, 1 GiB cache; batches of 2 MB",
        flags: &[
            "--max-report-bytes-in-flight",
            "4294967295",
            "--grpc-stream-window",
            "1048576",
            "--log-cache-bytes",
            "1073741824",
        ],
        attempts: 1000,
    },
];

/// Runs the cases and prints a table row per round.
pub async fn run() -> anyhow::Result<()> {
    println!(
        "| case | round | idle RSS | peak RSS during the burst | RSS after it | all stored in | attempts/s |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for round in 1..=2 {
        for case in &CASES {
            let stop = CancellationToken::new();
            let control_plane = ControlPlaneProcess::start(case.flags).await?;
            let batches = batches(&control_plane.url, case.attempts).await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let idle = rss_mb(control_plane.pid)?;
            let mut agents = Vec::new();
            for _ in 0..STREAMS {
                // A channel each: one connection per agent, as agents have.
                agents.push(AgentControlClient::new(connect(&control_plane.url).await?));
            }
            let pid = control_plane.pid;
            let sampler = tokio::spawn({
                let stop = stop.clone();
                async move {
                    let mut peak = 0.0_f64;
                    while !stop.is_cancelled() {
                        peak = peak.max(rss_mb(pid).unwrap_or(0.0));
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    peak
                }
            });
            let started = Instant::now();
            let mut streams = tokio::task::JoinSet::new();
            for (mut agent, batch) in agents.into_iter().zip(batches) {
                streams.spawn(async move {
                    let id = batch.batch_id;
                    let mut acks = agent
                        .report_attempts(tokio_stream::iter([batch]).chain(tokio_stream::pending()))
                        .await?
                        .into_inner();
                    let ack = acks.message().await?.context("an ack")?;
                    anyhow::ensure!(ack.batch_id == id, "the batch's own ack");
                    anyhow::Ok(())
                });
            }
            for acked in streams.join_all().await {
                acked?;
            }
            let took = started.elapsed();
            stop.cancel();
            let peak = sampler.await?;
            let after = rss_mb(pid)?;
            println!(
                "| {} | {round} | {idle:.1} MB | {peak:.1} MB | {after:.1} MB | {:.1} s | {:.0} |",
                case.name,
                took.as_secs_f64(),
                (STREAMS * case.attempts) as f64 / took.as_secs_f64()
            );
        }
    }
    Ok(())
}

/// A `herald-control-plane` process on a temporary directory.
struct ControlPlaneProcess {
    url: String,
    pid: u32,
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl ControlPlaneProcess {
    /// Starts the control plane with `flags` and waits until it answers.
    async fn start(flags: &[&str]) -> anyhow::Result<Self> {
        let binary = std::env::current_exe()?.with_file_name("herald-control-plane");
        anyhow::ensure!(
            binary.exists(),
            "{} not found: build it (cargo build --release --bins)",
            binary.display()
        );
        let dir = tempfile::tempdir()?;
        let addr = TcpListener::bind("127.0.0.1:0").await?.local_addr()?;
        let child = tokio::process::Command::new(&binary)
            .args(["--listen", &addr.to_string()])
            .arg("--data-dir")
            .arg(dir.path())
            .args(["--allow-targets", "127.0.0.0/8"])
            .args(flags)
            .env("RUST_LOG", "error")
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id().context("pid")?;
        let url = format!("http://{addr}");
        herald_tests::eventually(
            Duration::from_secs(30),
            "the control plane to listen",
            || async { Ok(connect(&url).await.ok()) },
        )
        .await?;
        Ok(ControlPlaneProcess {
            url,
            pid,
            _child: child,
            _dir: dir,
        })
    }
}

/// One batch of `attempts` per stream, of a subscription made on the control plane at `url`
/// (reports of unknown subscriptions are refused, not stored), every attempt its own event.
async fn batches(url: &str, attempts: usize) -> anyhow::Result<Vec<pb::ReportBatch>> {
    let sub = SubscriptionsClient::new(connect(url).await?)
        .create_subscription(pb::CreateSubscriptionRequest {
            subscription: Some(pb::Subscription {
                tenant: "bench".into(),
                url: "https://127.0.0.1:9/hook".into(),
                event_types: vec!["order.*".into()],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?
        .into_inner();
    let started_at = Some(herald_proto::convert::timestamp(SystemTime::now()));
    Ok((0..STREAMS)
        .map(|stream| pb::ReportBatch {
            batch_id: stream as u64 + 1,
            agent_id: format!("agt_{stream}"),
            attempts: (0..attempts)
                .map(|n| pb::Attempt {
                    event_id: format!("evt_{stream:04}_{n:04}"),
                    subscription_id: sub.id.clone(),
                    tenant: "bench".into(),
                    event_type: "order.created".into(),
                    attempt: 1,
                    agent_id: format!("agt_{stream}"),
                    started_at,
                    status_code: 200,
                    outcome: pb::Outcome::Delivered as i32,
                    url: "https://127.0.0.1:9/hook".into(),
                    response_excerpt: "y".repeat(EXCERPT),
                    ..Default::default()
                })
                .collect(),
        })
        .collect())
}
