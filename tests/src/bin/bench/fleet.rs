//! `bench fleet`: config distribution at fleet scale, against a real etcd and the release
//! `herald-control-plane` binary (a child process, so its memory is its own).
//!
//! The agents are lightweight clients in this process: each opens its own connection and config
//! stream, says hello, and acks every update as a real agent does (joining snapshot parts).
//!
//! - Propagation: with 100 and then 1,000 agents connected, a subscription is updated through
//!   the admin API 30 times; for each update, the time from the call to each agent's ack of
//!   its revision. Reported per agent (p50/p99 over every agent and update) and for the whole
//!   fleet (the last agent's ack per update, p50/p99).
//! - Idle streams: the control plane's RSS with no agents, then 1,000 and 10,000 idle
//!   streams (agents interested in a tenant that has no subscriptions, so each holds an open
//!   stream and nothing else).
//! - Snapshot: 100,000 subscriptions created through the admin API, then one agent's time from
//!   opening its stream to holding the whole snapshot (the median of 3).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use herald_proto::v1 as pb;
use herald_proto::v1::agent_control_client::AgentControlClient;
use herald_proto::v1::config_request::Kind;
use herald_proto::v1::subscriptions_client::SubscriptionsClient;
use herald_tests::herald::connect;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::log::{median, percentile};

/// Updates timed per fleet size.
const UPDATES: usize = 30;
/// Subscriptions in the snapshot measurement.
const SNAPSHOT_SUBSCRIPTIONS: usize = 100_000;
/// Admin calls in flight while the snapshot's subscriptions are created.
const CREATORS: usize = 32;

/// Runs the three measurements and prints their tables.
pub async fn run() -> anyhow::Result<()> {
    let binary = std::env::current_exe()?.with_file_name("herald-control-plane");
    anyhow::ensure!(
        binary.exists(),
        "{} not found: build it (cargo build --release --bins)",
        binary.display()
    );
    let etcd = herald_tests::Etcd::start().await?;
    let dir = tempfile::tempdir()?;
    let port = herald_tests::HeldPort::new()?;
    let addr = port.addr();
    let child = tokio::process::Command::new(&binary)
        .args(["--listen", &addr.to_string(), "--etcd", &etcd.endpoint()])
        .arg("--data-dir")
        .arg(dir.path())
        .args([
            "--event-type-registry",
            "off",
            "--allow-targets",
            "127.0.0.0/8",
        ])
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().context("pid")?;
    let url = format!("http://{addr}");
    let mut admin = SubscriptionsClient::new(
        herald_tests::eventually(Duration::from_secs(20), "the control plane", || async {
            Ok(connect(&url).await.ok())
        })
        .await?,
    );
    let mut sub = admin
        .create_subscription(pb::CreateSubscriptionRequest {
            subscription: Some(herald_tests::subscription(
                "bench",
                "https://127.0.0.1:9/hook",
                &["order.*"],
            )),
            allow_unregistered: false,
            ..Default::default()
        })
        .await?
        .into_inner();

    println!("## Propagation (update through the admin API → every agent acked)\n");
    println!("| agents | per agent p50 | per agent p99 | whole fleet p50 | whole fleet p99 |");
    println!("| ---: | ---: | ---: | ---: | ---: |");
    for agents in [100, 1000] {
        let fleet = Fleet::connect(&url, agents, "bench", &format!("prop{agents}")).await?;
        fleet.wait_all(sub.revision).await?;
        let (mut each, mut whole) = (Vec::new(), Vec::new());
        for round in 0..UPDATES {
            let started = Instant::now();
            let mut update = sub.clone();
            update.description = format!("round {round}");
            sub = admin
                .update_subscription(pb::UpdateSubscriptionRequest {
                    subscription: Some(update),
                    expected_revision: sub.revision,
                    allow_unregistered: false,
                })
                .await?
                .into_inner();
            let acks = fleet.acks_of(sub.revision).await?;
            let mut latencies: Vec<Duration> = acks.iter().map(|t| *t - started).collect();
            latencies.sort();
            whole.push(*latencies.last().context("acks")?);
            each.append(&mut latencies);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        each.sort();
        whole.sort();
        println!(
            "| {agents} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms |",
            ms(percentile(&each, 0.50)),
            ms(percentile(&each, 0.99)),
            ms(percentile(&whole, 0.50)),
            ms(percentile(&whole, 0.99)),
        );
        fleet.close().await;
    }

    println!("\n## Idle config streams (control-plane RSS)\n");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let base = settled_rss(pid).await?;
    println!("| streams | control-plane RSS | per stream |");
    println!("| ---: | ---: | ---: |");
    println!("| 0 | {:.1} MB | |", base / 1024.0);
    for streams in [1000, 10_000] {
        let fleet = Fleet::connect(&url, streams, "nobody", &format!("idle{streams}")).await?;
        fleet.wait_all(sub.revision).await?;
        let rss = settled_rss(pid).await?;
        println!(
            "| {streams} | {:.1} MB | {:.1} KB |",
            rss / 1024.0,
            (rss - base) / streams as f64
        );
        fleet.close().await;
    }

    println!("\n## Snapshot of {SNAPSHOT_SUBSCRIPTIONS} subscriptions\n");
    let created = Instant::now();
    let revision = create_many(&admin, SNAPSHOT_SUBSCRIPTIONS).await?;
    eprintln!(
        "created {SNAPSHOT_SUBSCRIPTIONS} subscriptions in {:.1} s",
        created.elapsed().as_secs_f64()
    );
    let mut times = Vec::new();
    let mut parts = 0;
    for _ in 0..3 {
        let (took, count, n) = snapshot_time(&url, revision).await?;
        anyhow::ensure!(
            count > SNAPSHOT_SUBSCRIPTIONS,
            "the snapshot held {count} subscriptions"
        );
        times.push(took.as_secs_f64());
        parts = n;
    }
    println!("| subscriptions | parts | time to the whole snapshot (median of 3) |");
    println!("| ---: | ---: | ---: |");
    println!(
        "| {} | {parts} | {:.2} s |",
        SNAPSHOT_SUBSCRIPTIONS + 1,
        median(times)
    );
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The process's resident memory in KiB, once it has stopped moving (the median of 5 reads a
/// second apart).
async fn settled_rss(pid: u32) -> anyhow::Result<f64> {
    let mut reads = Vec::new();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("VmRSS")?;
        reads.push(kb);
    }
    Ok(median(reads))
}

/// One agent's ack: which agent, which revision, when.
type Ack = (usize, i64, Instant);

/// Lightweight agents, each on its own connection and config stream.
struct Fleet {
    size: usize,
    acks: tokio::sync::Mutex<mpsc::UnboundedReceiver<Ack>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Fleet {
    /// Connects `size` agents interested in `tenant`, named `{name}-{n}`.
    async fn connect(url: &str, size: usize, tenant: &str, name: &str) -> anyhow::Result<Fleet> {
        let (acks_tx, acks) = mpsc::unbounded_channel();
        let mut tasks = Vec::with_capacity(size);
        for n in 0..size {
            let channel = connect(url).await?;
            let hello = pb::AgentHello {
                agent_id: format!("{name}-{n}"),
                node: "bench".into(),
                region: "bench".into(),
                version: "bench".into(),
                tenants: vec![tenant.to_owned()],
                ..Default::default()
            };
            let acks = acks_tx.clone();
            tasks.push(tokio::spawn(async move {
                let _ = agent(channel, hello, |revision, _, _| {
                    let _ = acks.send((n, revision, Instant::now()));
                })
                .await;
            }));
        }
        Ok(Fleet {
            size,
            acks: tokio::sync::Mutex::new(acks),
            tasks,
        })
    }

    /// Waits until every agent acked `revision` or later.
    async fn wait_all(&self, revision: i64) -> anyhow::Result<()> {
        self.acks_of(revision).await.map(|_| ())
    }

    /// When each agent acked `revision` (or a later one), in no particular order.
    async fn acks_of(&self, revision: i64) -> anyhow::Result<Vec<Instant>> {
        let mut seen = vec![None; self.size];
        let mut missing = self.size;
        let mut acks = self.acks.lock().await;
        let deadline = Instant::now() + Duration::from_secs(120);
        while missing > 0 {
            let (n, acked, at) = tokio::time::timeout_at(deadline, acks.recv())
                .await
                .with_context(|| format!("{missing} agents did not ack revision {revision}"))?
                .context("every agent ended")?;
            if acked >= revision && seen[n].is_none() {
                seen[n] = Some(at);
                missing -= 1;
            }
        }
        Ok(seen.into_iter().flatten().collect())
    }

    async fn close(self) {
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// A lightweight agent: says hello, then acks every config update (joining snapshot parts),
/// calling `applied` with each revision, the number of subscriptions it then holds, and the
/// parts of the update (more than one for a large snapshot).
async fn agent(
    channel: Channel,
    hello: pb::AgentHello,
    mut applied: impl FnMut(i64, usize, usize),
) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel(4);
    let send = |kind| pb::ConfigRequest { kind: Some(kind) };
    tx.send(send(Kind::Hello(hello))).await?;
    let mut updates = AgentControlClient::new(channel)
        .stream_config(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut held = std::collections::HashSet::new();
    // Parts of the snapshot being received so far (0: none in progress).
    let mut parts = 0;
    while let Some(update) = updates.message().await? {
        if update.snapshot && parts == 0 {
            held.clear();
        }
        for id in &update.removals {
            held.remove(id);
        }
        held.extend(update.upserts.into_iter().map(|s| s.id));
        parts += 1;
        if update.more {
            continue;
        }
        applied(update.revision, held.len(), parts);
        parts = 0;
        tx.send(send(Kind::Ack(pb::ConfigAck {
            revision: update.revision,
        })))
        .await?;
    }
    Ok(())
}

/// Creates `count` subscriptions of tenant `bulk`; the store revision after the last.
async fn create_many(admin: &SubscriptionsClient<Channel>, count: usize) -> anyhow::Result<i64> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..CREATORS {
        let (mut admin, next) = (admin.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut last = 0;
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= count {
                    return anyhow::Ok(last);
                }
                let created = admin
                    .create_subscription(pb::CreateSubscriptionRequest {
                        subscription: Some(herald_tests::subscription(
                            "bulk",
                            &format!("https://127.0.0.1:9/hooks/{n}"),
                            &["order.*", "invoice.created"],
                        )),
                        allow_unregistered: false,
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                last = last.max(created.revision);
            }
        }));
    }
    let mut revision = 0;
    for task in tasks {
        revision = revision.max(task.await??);
    }
    Ok(revision)
}

/// One agent interested in everything: the time from opening its stream to holding the whole
/// snapshot at `revision` or later, how many subscriptions it held, and in how many parts.
async fn snapshot_time(url: &str, revision: i64) -> anyhow::Result<(Duration, usize, usize)> {
    let channel = connect(url).await?;
    let hello = pb::AgentHello {
        agent_id: "snapshot".into(),
        region: "bench".into(),
        ..Default::default()
    };
    let started = Instant::now();
    let (done_tx, mut done) = mpsc::unbounded_channel();
    let task = tokio::spawn(agent(channel, hello, move |applied, held, parts| {
        let _ = done_tx.send((applied, held, parts, Instant::now()));
    }));
    let result = loop {
        let (applied, held, parts, at) = done.recv().await.context("the stream ended")?;
        if applied >= revision {
            break (at - started, held, parts);
        }
    };
    task.abort();
    Ok(result)
}
