//! Herald's benchmarks. Numbers go into BENCHMARKS.md with the command that made them.
//!
//! `bench emit`: `Emit` throughput and latency with durability on (fsync per group commit) and,
//! in the same run as the baseline, off: unary calls from 1, 16 and 64 concurrent callers, and
//! `EmitBatch` of 100 from 4 and 16 callers. The control plane (embedded store) and the agent run in this process;
//! the agent's delivery is paused (`--max-in-flight 0`) so only the Emit path is measured, and
//! every event matches one subscription (one task written per event). Each case runs three
//! rounds on a fresh agent; the median round is reported.
//!
//! `bench rss`: the resident memory of an idle `herald-agent` process (the release binary next
//! to this one) connected to a control plane with one subscription.

use std::time::Duration;

use anyhow::Context as _;
use herald_agent::listen::{ListenAddr, Listener};
use herald_proto::v1 as pb;
use herald_proto::v1::events_client::EventsClient;
use herald_tests::herald::connect;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const ROUND: Duration = Duration::from_secs(3);
const ROUNDS: usize = 3;
const PAYLOAD: &str = r#"{"order_id":"ord_8812","shop":"shop-1","total":"129.90","currency":"EUR","lines":[{"sku":"TSHIRT-M-BLUE","qty":2,"price":"39.95"},{"sku":"MUG-01","qty":1,"price":"50.00"}]}"#;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match std::env::args().nth(1).as_deref() {
        Some("emit") => emit().await,
        Some("rss") => rss().await,
        Some("emit-case") => {
            let arg = |i: usize| -> anyhow::Result<usize> {
                std::env::args()
                    .nth(i)
                    .context("usage: bench emit-case CALLERS BATCH [off]")?
                    .parse()
                    .context("a number")
            };
            let fsync = std::env::args().nth(4).as_deref() != Some("off");
            emit_case(arg(2)?, arg(3)?, fsync).await
        }
        _ => anyhow::bail!("usage: bench emit|rss|emit-case CALLERS BATCH [off]"),
    }
}

/// A control plane on the embedded store with one `order.*` subscription of tenant `bench`.
async fn control_plane(stop: &CancellationToken) -> anyhow::Result<(String, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let config = herald_control_plane::Config {
        listen: addr,
        etcd: vec![],
        data_dir: dir.path().to_owned(),
        allow_http: false,
        allow_targets: herald_tests::herald::loopback(),
        shutdown_grace: Duration::from_secs(1),
    };
    tokio::spawn(herald_control_plane::run(
        config,
        listener,
        stop.clone().cancelled_owned(),
    ));
    let url = format!("http://{addr}");
    let mut admin = herald_proto::v1::subscriptions_client::SubscriptionsClient::new(
        herald_tests::eventually(Duration::from_secs(10), "the control plane", || async {
            Ok(connect(&url).await.ok())
        })
        .await?,
    );
    admin
        .create_subscription(pb::CreateSubscriptionRequest {
            subscription: Some(herald_tests::subscription(
                "bench",
                "https://127.0.0.1:9/hook",
                &["order.*"],
            )),
        })
        .await?;
    Ok((url, dir))
}

/// An agent with delivery paused; returns its URL once it accepts events.
async fn agent(
    control_plane: &str,
    fsync: bool,
    stop: &CancellationToken,
) -> anyhow::Result<(String, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let config = herald_agent::Config {
        control_plane: vec![control_plane.to_owned()],
        listen: ListenAddr::Tcp(addr),
        data_dir: dir.path().to_owned(),
        id: None,
        region: "bench".into(),
        node: "bench".into(),
        ca_file: None,
        allow_http: false,
        allow_targets: vec![],
        max_payload_bytes: herald_core::limits::DEFAULT_MAX_PAYLOAD_BYTES,
        max_in_flight: 0,
        dedup_window: Duration::from_secs(3600),
        retention: Duration::from_secs(3600),
        max_queue_events: u64::MAX,
        max_queue_bytes: u64::MAX,
        fsync,
        shutdown_grace: Duration::from_secs(1),
    };
    tokio::spawn(herald_agent::run(
        config,
        Listener::Tcp(listener),
        stop.clone().cancelled_owned(),
    ));
    let url = format!("http://{addr}");
    let client = EventsClient::new(
        herald_tests::eventually(Duration::from_secs(10), "the agent", || async {
            Ok(connect(&url).await.ok())
        })
        .await?,
    );
    herald_tests::eventually(Duration::from_secs(10), "the agent's config", || {
        let mut client = client.clone();
        async move {
            let r = client
                .emit(pb::EmitRequest {
                    event: Some(event()),
                })
                .await;
            Ok(r.ok().filter(|r| r.get_ref().matched == 1).map(|_| ()))
        }
    })
    .await?;
    Ok((url, dir))
}

fn event() -> pb::Event {
    pb::Event {
        tenant: "bench".into(),
        r#type: "order.created".into(),
        payload: PAYLOAD.as_bytes().to_vec(),
        ..Default::default()
    }
}

/// One round's result.
struct Round {
    events_per_sec: f64,
    p50: Duration,
    p99: Duration,
}

/// Runs `callers` concurrent callers for [`ROUND`], each sending batches of `batch` (1 =
/// unary `Emit`); latencies are per call.
async fn round(url: &str, callers: usize, batch: usize) -> anyhow::Result<Round> {
    // One connection per 8 callers, as a pool of application instances would have.
    let mut channels = Vec::new();
    for _ in 0..callers.div_ceil(8) {
        channels.push(connect(url).await?);
    }
    let deadline = Instant::now() + ROUND;
    let mut tasks = Vec::new();
    for i in 0..callers {
        let mut client = EventsClient::new(channels[i / 8].clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut events = 0usize;
            while Instant::now() < deadline {
                let start = Instant::now();
                if batch == 1 {
                    client
                        .emit(pb::EmitRequest {
                            event: Some(event()),
                        })
                        .await?;
                } else {
                    let events = (0..batch).map(|_| event()).collect();
                    client.emit_batch(pb::EmitBatchRequest { events }).await?;
                }
                latencies.push(start.elapsed());
                events += batch;
            }
            anyhow::Ok((events, latencies))
        }));
    }
    let started = Instant::now();
    let mut total = 0;
    let mut latencies = Vec::new();
    for task in tasks {
        let (events, mut l) = task.await??;
        total += events;
        latencies.append(&mut l);
    }
    let elapsed = started.elapsed().max(ROUND);
    latencies.sort();
    let pick = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Ok(Round {
        events_per_sec: total as f64 / elapsed.as_secs_f64(),
        p50: pick(0.50),
        p99: pick(0.99),
    })
}

async fn emit() -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    let (cp, _cp_dir) = control_plane(&stop).await?;
    let cases: [(&str, usize, usize); 5] = [
        ("Emit, 1 caller", 1, 1),
        ("Emit, 16 callers", 16, 1),
        ("Emit, 64 callers", 64, 1),
        ("EmitBatch ×100, 4 callers", 4, 100),
        ("EmitBatch ×100, 16 callers", 16, 100),
    ];
    println!("| case | fsync | events/s (median of {ROUNDS}) | p50 | p99 | durable / fsync-off |");
    println!("| --- | --- | ---: | ---: | ---: | ---: |");
    for (name, callers, batch) in cases {
        let mut medians = Vec::new();
        for fsync in [true, false] {
            let agent_stop = CancellationToken::new();
            let (url, _dir) = agent(&cp, fsync, &agent_stop).await?;
            let mut rounds = Vec::new();
            for _ in 0..ROUNDS {
                rounds.push(
                    round(&url, callers, batch)
                        .await
                        .with_context(|| name.to_owned())?,
                );
            }
            rounds.sort_by(|a, b| a.events_per_sec.total_cmp(&b.events_per_sec));
            let median = rounds.swap_remove(ROUNDS / 2);
            medians.push(median.events_per_sec);
            let ratio = if fsync {
                String::new()
            } else {
                format!("{:.0}%", 100.0 * medians[0] / medians[1])
            };
            println!(
                "| {name} | {} | {:.0} | {:.2} ms | {:.2} ms | {ratio} |",
                if fsync { "on" } else { "off" },
                median.events_per_sec,
                median.p50.as_secs_f64() * 1000.0,
                median.p99.as_secs_f64() * 1000.0,
            );
            agent_stop.cancel();
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    stop.cancel();
    Ok(())
}

/// One ad-hoc case, one round: for exploring.
async fn emit_case(callers: usize, batch: usize, fsync: bool) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    let (cp, _cp_dir) = control_plane(&stop).await?;
    let (url, _dir) = agent(&cp, fsync, &stop).await?;
    let r = round(&url, callers, batch).await?;
    println!(
        "callers={callers} batch={batch} fsync={fsync}: {:.0} events/s, p50 {:.2} ms, p99 {:.2} ms",
        r.events_per_sec,
        r.p50.as_secs_f64() * 1000.0,
        r.p99.as_secs_f64() * 1000.0
    );
    stop.cancel();
    Ok(())
}

async fn rss() -> anyhow::Result<()> {
    let binary = std::env::current_exe()?.with_file_name("herald-agent");
    anyhow::ensure!(
        binary.exists(),
        "{} not found: build it (cargo build --release --bins)",
        binary.display()
    );
    let stop = CancellationToken::new();
    let (cp, _cp_dir) = control_plane(&stop).await?;
    let dir = tempfile::tempdir()?;
    let child = tokio::process::Command::new(&binary)
        .args([
            "--control-plane",
            &cp,
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().context("pid")?;
    let mut samples = Vec::new();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("VmRSS")?;
        samples.push(kb);
    }
    samples.sort();
    println!(
        "| idle herald-agent RSS (median of 5 samples, 1 s apart) | {:.1} MB |",
        samples[2] as f64 / 1024.0
    );
    stop.cancel();
    Ok(())
}
