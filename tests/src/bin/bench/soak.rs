//! A real `herald-agent` process under load, measured from outside (`bench rss`), and the
//! soak (`bench soak [MINUTES]`): months of steady traffic compressed by configuration —
//! retention and dedup window of 30 s instead of 72 h and 24 h — at a rate the receiver keeps
//! up with, sampling the agent's memory and its data directory's size every 30 s. A queue
//! that holds only what its retention asks for stays flat once the first retention periods
//! have passed.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use herald_proto::v1 as pb;
use herald_proto::v1::events_client::EventsClient;
use herald_tests::herald::connect;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Counter, control_plane, count, tenant_event};

/// A `herald-agent` process beside a control plane and a lean HTTPS receiver.
pub struct AgentProcess {
    control_plane: String,
    receiver: String,
    events: EventsClient<tonic::transport::Channel>,
    counter: Arc<Counter>,
    pid: u32,
    data_dir: tempfile::TempDir,
    _child: tokio::process::Child,
    _control_plane_dir: tempfile::TempDir,
    _ca_dir: tempfile::TempDir,
}

impl AgentProcess {
    /// Starts the control plane, the receiver and the agent (with `extra` flags), fsync on.
    pub async fn start(stop: &CancellationToken, extra: &[&str]) -> anyhow::Result<Self> {
        let binary = std::env::current_exe()?.with_file_name("herald-agent");
        anyhow::ensure!(
            binary.exists(),
            "{} not found: build it (cargo build --release --bins)",
            binary.display()
        );
        let (control_plane, control_plane_dir) = control_plane(stop).await?;
        let ca = herald_tests::TestCa::new();
        let ca_dir = tempfile::tempdir()?;
        let ca_file = ca.write_ca_pem(ca_dir.path())?;
        let counter = Arc::new(Counter::default());
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let receiver = format!("https://127.0.0.1:{}", listener.local_addr()?.port());
        let router = axum::Router::new()
            .fallback(count)
            .with_state(counter.clone());
        let _server = herald_tests::receiver::spawn_https(listener, &ca, router);
        let data_dir = tempfile::tempdir()?;
        let addr = TcpListener::bind("127.0.0.1:0").await?.local_addr()?;
        let child = tokio::process::Command::new(&binary)
            .args([
                "--control-plane",
                &control_plane,
                "--listen",
                &addr.to_string(),
            ])
            .arg("--data-dir")
            .arg(data_dir.path())
            .arg("--ca-file")
            .arg(&ca_file)
            .args(["--allow-targets", "127.0.0.0/8"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id().context("pid")?;
        let url = format!("http://{addr}");
        let channel =
            herald_tests::eventually(Duration::from_secs(30), "the agent to listen", || async {
                Ok(connect(&url).await.ok())
            })
            .await?;
        let events = EventsClient::new(channel);
        Ok(AgentProcess {
            control_plane,
            receiver,
            events,
            counter,
            pid,
            data_dir,
            _child: child,
            _control_plane_dir: control_plane_dir,
            _ca_dir: ca_dir,
        })
    }

    /// The agent's resident memory (MB).
    pub fn rss_mb(&self) -> anyhow::Result<f64> {
        rss_mb(self.pid)
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// A client of the agent's `Events` API.
    pub fn events(&self) -> EventsClient<tonic::transport::Channel> {
        self.events.clone()
    }

    /// The bytes the agent's data directory takes on disk (allocated blocks).
    pub fn disk_mb(&self) -> anyhow::Result<f64> {
        use std::os::unix::fs::MetadataExt as _;
        let mut blocks = 0;
        for entry in std::fs::read_dir(self.data_dir.path())? {
            blocks += entry?.metadata()?.blocks();
        }
        Ok((blocks * 512) as f64 / (1024.0 * 1024.0))
    }

    /// Deliveries the receiver has had.
    pub fn delivered(&self) -> usize {
        self.counter.count.load(Ordering::Relaxed)
    }

    /// Creates one subscription of tenant `load` on the receiver, with `max_in_flight`
    /// attempts to it at once (the lane's width), and waits until the agent delivers to it.
    pub async fn subscribe(&mut self, max_in_flight: u32) -> anyhow::Result<()> {
        let mut admin =
            pb::subscriptions_client::SubscriptionsClient::new(connect(&self.control_plane).await?);
        let mut subscription =
            herald_tests::subscription("load", &format!("{}/load", self.receiver), &["order.*"]);
        subscription.max_in_flight = max_in_flight;
        admin
            .create_subscription(pb::CreateSubscriptionRequest {
                subscription: Some(subscription),
                allow_unregistered: false,
                ..Default::default()
            })
            .await?;
        let events = self.events.clone();
        herald_tests::eventually(
            Duration::from_secs(30),
            "the subscription at the agent",
            || {
                let mut events = events.clone();
                async move {
                    let r = events
                        .emit(pb::EmitRequest {
                            event: Some(tenant_event("load")),
                        })
                        .await?;
                    Ok((r.get_ref().matched == 1).then_some(()))
                }
            },
        )
        .await
    }

    /// Emits `n` events of tenant `load` in one batch.
    pub async fn emit_batch(&mut self, n: usize) -> anyhow::Result<()> {
        let events = (0..n).map(|_| tenant_event("load")).collect();
        self.events
            .emit_batch(pb::EmitBatchRequest { events })
            .await?;
        Ok(())
    }
}

/// The resident memory (MB) of process `pid`.
pub fn rss_mb(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS")?;
    Ok(kb as f64 / 1024.0)
}

/// Events a second during the soak: steady, and well within what the receiver takes.
const SOAK_RATE: usize = 2_000;
/// The retention and dedup window the soak compresses 72 h and 24 h into.
const SOAK_RETENTION: &str = "30s";
/// How often the soak samples.
const SOAK_SAMPLE: Duration = Duration::from_secs(30);

/// Runs the soak for `length`, printing a sample every 30 s and the verdict.
pub async fn run(length: Duration) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    let mut agent = AgentProcess::start(
        &stop,
        &[
            "--retention",
            SOAK_RETENTION,
            "--dedup-window",
            SOAK_RETENTION,
        ],
    )
    .await?;
    agent
        .subscribe(herald_core::subscription::DEFAULT_MAX_IN_FLIGHT as u32)
        .await?;
    println!(
        "Soak: {SOAK_RATE} events/s for {} s, retention and dedup window {SOAK_RETENTION}",
        length.as_secs()
    );
    println!();
    println!("| after | events emitted | deliveries | agent RSS | data dir on disk |");
    println!("| ---: | ---: | ---: | ---: | ---: |");
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut next_sample = started + SOAK_SAMPLE;
    let mut emitted = 0usize;
    let mut samples: Vec<(f64, f64)> = Vec::new();
    while started.elapsed() < length {
        tick.tick().await;
        agent.emit_batch(SOAK_RATE / 20).await?;
        emitted += SOAK_RATE / 20;
        if Instant::now() >= next_sample {
            next_sample += SOAK_SAMPLE;
            let (rss, disk) = (agent.rss_mb()?, agent.disk_mb()?);
            samples.push((rss, disk));
            println!(
                "| {} s | {emitted} | {} | {rss:.1} MB | {disk:.1} MB |",
                started.elapsed().as_secs(),
                agent.delivered()
            );
        }
    }
    // Steady state: from the fourth sample on (two minutes: retention, the once-a-minute
    // sweep and a margin have passed). Flat means the second half grows no higher than the
    // first half's peak by more than 10%.
    let steady = samples.get(3..).unwrap_or_default();
    if steady.len() < 4 {
        println!("Too short for a verdict: run at least 4 minutes.");
        stop.cancel();
        return Ok(());
    }
    let (first, second) = steady.split_at(steady.len() / 2);
    let peak = |part: &[(f64, f64)], pick: fn(&(f64, f64)) -> f64| {
        part.iter().map(pick).fold(0.0, f64::max)
    };
    for (what, pick) in [
        ("RSS", (|s: &(f64, f64)| s.0) as fn(&(f64, f64)) -> f64),
        ("data dir", |s: &(f64, f64)| s.1),
    ] {
        let (before, after) = (peak(first, pick), peak(second, pick));
        println!(
            "{what}: peak {before:.1} MB in the first half of the steady state, {after:.1} MB in the second: {}",
            if after <= before * 1.1 {
                "flat"
            } else {
                "GROWING"
            }
        );
    }
    stop.cancel();
    Ok(())
}
