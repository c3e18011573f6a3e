//! Herald's benchmarks. Numbers go into BENCHMARKS.md with the command that made them.
//!
//! `bench emit`: `Emit` throughput and latency with durability on (fsync per group commit) and,
//! in the same run as the baseline, off: unary calls from 1, 16 and 64 concurrent callers, and
//! `EmitBatch` of 100 from 4 and 16 callers. The control plane (embedded store) and the agent run in this process;
//! the agent's delivery is paused (`--max-in-flight 0`) so only the Emit path is measured, and
//! every event matches one subscription (one task written per event). Each case runs three
//! rounds on a fresh agent; the median round is reported.
//!
//! `bench deliver`: deliveries/s from one agent to a local HTTPS receiver with 1, 10 and 1,000
//! subscriptions per event, against the same receiver driven by a plain HTTPS client (the same
//! TLS setup, 256 requests in flight) as the limit; and `Emit` → receiver latency at a steady
//! 1,000 events/s. Receiver, control plane, agent and load all share this process's 2 cores.
//! Each case runs three rounds, each a plain-client run followed by a Herald run of the same
//! number of deliveries and the same run to a twin tenant whose subscriptions each have a
//! payload filter the event passes, and reports the round with the median ratio (and the
//! median ratio of filtered to unfiltered). `BENCH_DELIVERIES`
//! (default 20,000) and `BENCH_FANOUT` (default `1,10,1000`) change the cases.
//!
//! `bench log`: the control plane's delivery log, ingest rate and query latency (see `log.rs`).
//!
//! `bench fleet`: config distribution to many agents (see `fleet.rs`).
//!
//! `bench schema`: `Emit` with and without checking the payload against its type's schema
//! (see `schema.rs`).
//!
//! `bench web`: the web console's and portal's pages and the REST API over a large delivery
//! log (see `web.rs`).
//!
//! `bench burst`: a `herald-agent` process's memory through a burst of large concurrent
//! `EmitBatch` calls, with and without its budget of request bytes (see `burst.rs`).
//!
//! `bench report-burst`: a `herald-control-plane` process's memory while 300 agents' report
//! streams each send it a full batch at once (see `report_burst.rs`).
//!
//! `bench rss`: the resident memory of a `herald-agent` process (the release binary next to
//! this one) connected to a control plane with one subscription: idle, then at 10,000
//! events/s with the subscription at the default width and as wide as `bench deliver`'s.

/// mimalloc instead of the system allocator: every delivery allocates for its request, its
/// response and its queue records. glibc's malloc took 13% of the CPU samples of `bench
/// deliver`; with mimalloc the CPU per delivery is about a quarter lower (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod burst;
mod fleet;
mod log;
mod report_burst;
mod schema;
mod soak;
mod web;

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
/// Requests in flight from the plain client of `bench deliver`, and the agent's attempts in
/// flight there: the same concurrency against the same receiver.
const PLAIN_IN_FLIGHT: usize = 256;
/// Concurrent `EmitBatch` callers feeding `bench deliver`.
const EMITTERS: usize = 4;
/// The type of every event the benchmarks emit.
const EVENT_TYPE: &str = "order.created";
/// The payload filter of `bench deliver`'s filtered subscriptions: [`PAYLOAD`] passes it.
const BENCH_FILTER: &str = r#"{"currency":{"$in":["EUR","PLN"]},"lines.sku":{"$startsWith":"TSHIRT"},"shop":{"$exist":true}}"#;
const PAYLOAD: &str = r#"{"order_id":"ord_8812","shop":"shop-1","total":"129.90","currency":"EUR","lines":[{"sku":"TSHIRT-M-BLUE","qty":2,"price":"39.95"},{"sku":"MUG-01","qty":1,"price":"50.00"}]}"#;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match std::env::args().nth(1).as_deref() {
        Some("emit") => emit().await,
        Some("rss") => rss().await,
        Some("burst") => burst::run().await,
        Some("report-burst") => report_burst::run().await,
        Some("soak") => {
            let minutes = std::env::args()
                .nth(2)
                .map(|m| m.parse::<u64>())
                .transpose()
                .context("usage: bench soak [MINUTES]")?
                .unwrap_or(8);
            soak::run(Duration::from_secs(minutes * 60)).await
        }
        Some("deliver") => deliver().await,
        Some("log") => log::run().await,
        Some("fleet") => fleet::run().await,
        Some("web") => web::run().await,
        Some("schema") => schema::run().await,
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
        _ => anyhow::bail!(
            "usage: bench emit|deliver|log|fleet|web|schema|rss|burst|report-burst|soak [MINUTES]|emit-case CALLERS BATCH [off]"
        ),
    }
}

/// A control plane on the embedded store with one `order.*` subscription of tenant `bench`
/// (`BENCH_LOG_BODY_LIMIT` sets its `--log-body-limit`).
async fn control_plane(stop: &CancellationToken) -> anyhow::Result<(String, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let mut config = herald_control_plane::Config {
        allow_targets: herald_tests::herald::loopback(),
        shutdown_grace: Duration::from_secs(1),
        ..herald_control_plane::Config::new(addr, dir.path().to_owned())
    };
    // The log's body limit (`--log-body-limit`; default 64 KiB): `BENCH_LOG_BODY_LIMIT=0`
    // measures deliveries whose reports carry no request.
    if let Some(limit) = std::env::var("BENCH_LOG_BODY_LIMIT")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config.log_body_limit = limit;
    }
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
            allow_unregistered: false,
            ..Default::default()
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
        region: "bench".into(),
        node: "bench".into(),
        max_in_flight: 0,
        queue_cache_bytes: queue_cache_bytes(),
        dedup_window: Duration::from_secs(3600),
        retention: Duration::from_secs(3600),
        max_queue_events: u64::MAX,
        max_queue_bytes: u64::MAX,
        fsync,
        shutdown_grace: Duration::from_secs(1),
        ..herald_agent::Config::new(control_plane, ListenAddr::Tcp(addr), dir.path().to_owned())
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
        r#type: EVENT_TYPE.into(),
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
async fn round(
    url: &str,
    callers: usize,
    batch: usize,
    event: &pb::Event,
) -> anyhow::Result<Round> {
    // One connection per 8 callers, as a pool of application instances would have.
    let mut channels = Vec::new();
    for _ in 0..callers.div_ceil(8) {
        channels.push(connect(url).await?);
    }
    let deadline = Instant::now() + ROUND;
    let mut tasks = Vec::new();
    for i in 0..callers {
        let mut client = EventsClient::new(channels[i / 8].clone());
        let event = event.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut events = 0usize;
            while Instant::now() < deadline {
                let start = Instant::now();
                if batch == 1 {
                    client
                        .emit(pb::EmitRequest {
                            event: Some(event.clone()),
                        })
                        .await?;
                } else {
                    let events = (0..batch).map(|_| event.clone()).collect();
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
                    round(&url, callers, batch, &event())
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
    let r = round(&url, callers, batch, &event()).await?;
    println!(
        "callers={callers} batch={batch} fsync={fsync}: {:.0} events/s, p50 {:.2} ms, p99 {:.2} ms",
        r.events_per_sec,
        r.p50.as_secs_f64() * 1000.0,
        r.p99.as_secs_f64() * 1000.0
    );
    stop.cancel();
    Ok(())
}

/// The agent as its own process: RSS idle, then while it takes and delivers 10,000 events/s
/// to one subscription. Twice, each with a fresh agent: the subscription at the default width
/// (attempts in flight to it at once), then as wide as `bench deliver`'s subscriptions. A lane
/// too narrow for the rate lets a backlog grow during the measurement, and the backlog is part
/// of the memory; the deliveries/s column shows which case kept up.
async fn rss() -> anyhow::Result<()> {
    const RATE: usize = 10_000;
    const LOAD: Duration = Duration::from_secs(15);
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!("| what | value |");
    println!("| --- | ---: |");
    let widths = [
        herald_core::subscription::DEFAULT_MAX_IN_FLIGHT,
        PLAIN_IN_FLIGHT,
    ];
    for (case, width) in widths.into_iter().enumerate() {
        let stop = CancellationToken::new();
        let mut agent = soak::AgentProcess::start(&stop, &[]).await?;
        if case == 0 {
            let mut idle = Vec::new();
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                idle.push(agent.rss_mb()?);
            }
            println!(
                "| idle herald-agent RSS (median of 5 samples, 1 s apart) | {:.1} MB |",
                median(idle)
            );
        }

        // Under load: 10,000 events/s in batches of 100.
        agent.subscribe(width as u32).await?;
        let started = Instant::now();
        let delivered_before = agent.delivered();
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let mut samples = Vec::new();
        let mut next_sample = started + Duration::from_secs(5);
        let mut emitted = 0usize;
        while started.elapsed() < LOAD {
            tick.tick().await;
            agent.emit_batch(RATE / 100).await?;
            emitted += RATE / 100;
            if Instant::now() >= next_sample {
                samples.push(agent.rss_mb()?);
                next_sample += Duration::from_secs(1);
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        let delivered = agent.delivered() - delivered_before;
        let max = samples.iter().copied().fold(0.0, f64::max);
        println!(
            "| herald-agent RSS at {:.0} events/s emitted, {:.0} deliveries/s, subscription {width} wide (median / max of {} samples, 1 s apart, after 5 s) | {:.1} / {:.1} MB |",
            emitted as f64 / elapsed,
            delivered as f64 / elapsed,
            samples.len(),
            median(samples.clone()),
            max
        );
        stop.cancel();
    }
    Ok(())
}

/// The lean receiver of the delivery benchmark: counts requests and, when asked, notes when
/// each `webhook-id` arrived.
#[derive(Default)]
struct Counter {
    count: std::sync::atomic::AtomicUsize,
    arrivals: std::sync::Mutex<std::collections::HashMap<String, Instant>>,
    /// Recorded ids that arrived again.
    repeats: std::sync::atomic::AtomicUsize,
    record: std::sync::atomic::AtomicBool,
}

async fn count(
    axum::extract::State(counter): axum::extract::State<std::sync::Arc<Counter>>,
    headers: http::HeaderMap,
    _body: bytes::Bytes,
) -> http::StatusCode {
    use std::sync::atomic::Ordering;
    if counter.record.load(Ordering::Relaxed)
        && let Some(id) = headers.get("webhook-id").and_then(|v| v.to_str().ok())
    {
        let mut arrivals = counter.arrivals.lock().expect("lock");
        if arrivals.contains_key(id) {
            counter.repeats.fetch_add(1, Ordering::Relaxed);
        } else {
            arrivals.insert(id.to_owned(), Instant::now());
        }
    }
    counter.count.fetch_add(1, Ordering::Relaxed);
    http::StatusCode::NO_CONTENT
}

async fn wait_count(counter: &Counter, target: usize, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while counter.count.load(std::sync::atomic::Ordering::Relaxed) < target {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {target} deliveries arrived",
            counter.count.load(std::sync::atomic::Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

async fn deliver() -> anyhow::Result<()> {
    use std::sync::atomic::Ordering;
    let deliveries: usize = std::env::var("BENCH_DELIVERIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let ca = herald_tests::TestCa::new();
    let ca_dir = tempfile::tempdir()?;
    let ca_file = ca.write_ca_pem(ca_dir.path())?;
    let counter = std::sync::Arc::new(Counter::default());
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("https://127.0.0.1:{}", listener.local_addr()?.port());
    let router = axum::Router::new()
        .fallback(count)
        .with_state(counter.clone());
    let _server = herald_tests::receiver::spawn_https(listener, &ca, router);

    // The limit: the same receiver driven by a plain HTTPS client, 256 requests in flight,
    // sending the requests Herald sends (the same headers and body); and, for comparison, bare
    // POSTs of the payload.
    let client = herald_agent::delivery::transport::Transport::build(
        Some(&ca_file),
        herald_core::target::TargetPolicy::new(false, herald_tests::herald::loopback()),
        None,
    )?
    .client(&herald_core::egress::Egress::Direct, None)?;
    let stop = CancellationToken::new();
    let (cp, _cp_dir) = control_plane(&stop).await?;
    let mut admin =
        herald_proto::v1::subscriptions_client::SubscriptionsClient::new(connect(&cp).await?);
    let dir = tempfile::tempdir()?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let config = herald_agent::Config {
        region: "bench".into(),
        node: "bench".into(),
        ca_file: Some(ca_file.clone()),
        allow_targets: herald_tests::herald::loopback(),
        dedup_window: Duration::from_secs(3600),
        retention: Duration::from_secs(3600),
        max_queue_events: u64::MAX,
        max_queue_bytes: u64::MAX,
        shutdown_grace: Duration::from_secs(1),
        // As many attempts in flight as the plain client has requests.
        max_in_flight: PLAIN_IN_FLIGHT,
        ..herald_agent::Config::new(&cp, ListenAddr::Tcp(addr), dir.path().to_owned())
    };
    tokio::spawn(herald_agent::run(
        config,
        Listener::Tcp(listener),
        stop.clone().cancelled_owned(),
    ));
    let agent_url = format!("http://{addr}");
    let agent = EventsClient::new(
        herald_tests::eventually(Duration::from_secs(10), "the agent", || async {
            Ok(connect(&agent_url).await.ok())
        })
        .await?,
    );

    println!(
        "| subscriptions per event | events | plain client, same requests, deliveries/s | Herald, deliveries/s | Herald / plain | CPU µs per delivery, plain | CPU µs per delivery, Herald | plain client, bare POSTs, requests/s | Herald / bare POSTs | Herald with a payload filter on every subscription / without |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for subscriptions in std::env::var("BENCH_FANOUT")
        .ok()
        .map(|v| {
            v.split(',')
                .filter_map(|n| n.parse().ok())
                .collect::<Vec<usize>>()
        })
        .unwrap_or(vec![1, 10, 1000])
    {
        let tenant = format!("fanout-{subscriptions}");
        // The same subscriptions again for a twin tenant, each with a payload filter the
        // bench's order passes (three conditions, one through an array): the filter's cost.
        let filtered_tenant = format!("fanout-{subscriptions}-filtered");
        for (tenant, filter) in [(&tenant, ""), (&filtered_tenant, BENCH_FILTER)] {
            for i in 0..subscriptions {
                let mut sub = herald_tests::subscription(
                    tenant,
                    &format!("{base}/{tenant}/{i}"),
                    &["order.*"],
                );
                // The agent's attempts in flight, as many as the plain client's requests,
                // shared out: one endpoint gets them all, ten a tenth each, and many keep the
                // default width (together still more than the agent runs at once).
                sub.max_in_flight = PLAIN_IN_FLIGHT
                    .div_ceil(subscriptions)
                    .max(herald_core::subscription::DEFAULT_MAX_IN_FLIGHT)
                    as u32;
                sub.payload_filter = filter.to_owned();
                admin
                    .create_subscription(pb::CreateSubscriptionRequest {
                        subscription: Some(sub),
                        allow_unregistered: false,
                        ..Default::default()
                    })
                    .await?;
            }
            herald_tests::eventually(
                Duration::from_secs(30),
                "the subscriptions at the agent",
                || {
                    let mut agent = agent.clone();
                    let probe = tenant_event(tenant);
                    async move {
                        let r = agent.emit(pb::EmitRequest { event: Some(probe) }).await?;
                        Ok((r.get_ref().matched as usize == subscriptions).then_some(()))
                    }
                },
            )
            .await?;
        }
        // The probes delivered too; start counting from here.
        wait_count(
            &counter,
            counter.count.load(Ordering::Relaxed),
            Duration::from_secs(1),
        )
        .await?;
        let events = deliveries / subscriptions;
        let url = format!("{base}/plain");
        let mut rounds = Vec::new();
        let mut filter_ratios = Vec::new();
        for _ in 0..ROUNDS {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let bare = plain_round(&client, &url, deliveries, None).await?;
            tokio::time::sleep(Duration::from_millis(500)).await;
            let headers = WebhookHeaders::make(deliveries);
            let plain = plain_round(&client, &url, deliveries, Some(headers)).await?;
            tokio::time::sleep(Duration::from_millis(500)).await;
            let herald = herald_round(&agent, &counter, &tenant, events, subscriptions).await?;
            tokio::time::sleep(Duration::from_millis(500)).await;
            let filtered =
                herald_round(&agent, &counter, &filtered_tenant, events, subscriptions).await?;
            filter_ratios.push(filtered.rate / herald.rate);
            rounds.push((plain, herald, bare));
        }
        // The round with the median ratio, so its numbers belong together.
        rounds.sort_by(|a, b| (a.1.rate / a.0.rate).total_cmp(&(b.1.rate / b.0.rate)));
        filter_ratios.sort_by(f64::total_cmp);
        let (plain, herald, bare) = &rounds[ROUNDS / 2];
        println!(
            "| {subscriptions} | {events} | {:.0} | {:.0} | {:.0}% | {:.1} | {:.1} | {:.0} | {:.0}% | {:.0}% |",
            plain.rate,
            herald.rate,
            100.0 * herald.rate / plain.rate,
            plain.cpu_us,
            herald.cpu_us,
            bare.rate,
            100.0 * herald.rate / bare.rate,
            100.0 * filter_ratios[ROUNDS / 2],
        );
    }

    // Through an egress proxy (Debian's tinyproxy) beside direct, one subscription each,
    // alternating rounds; the proxy's own CPU is its process's, not counted here.
    if std::env::var("BENCH_PROXY").map_or(true, |v| v != "0") {
        proxy_rounds(&mut admin, &agent, &counter, &base, deliveries).await?;
    }
    // With OAuth2: how many tokens 10,000 deliveries fetch while the token is valid.
    oauth2_round(&mut admin, &agent, &counter, &base, &ca).await?;

    // Latency at a steady 1,000 events/s, one subscription.
    let tenant = "latency";
    admin
        .create_subscription(pb::CreateSubscriptionRequest {
            subscription: Some(herald_tests::subscription(
                tenant,
                &format!("{base}/latency"),
                &["order.*"],
            )),
            allow_unregistered: false,
            ..Default::default()
        })
        .await?;
    herald_tests::eventually(Duration::from_secs(30), "the latency subscription", || {
        let mut agent = agent.clone();
        let probe = tenant_event(tenant);
        async move {
            let r = agent.emit(pb::EmitRequest { event: Some(probe) }).await?;
            Ok((r.get_ref().matched == 1).then_some(()))
        }
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    counter.record.store(true, Ordering::Relaxed);
    let mut sent = Vec::new();
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    let mut agent = agent.clone();
    for i in 0..5_000 {
        ticker.tick().await;
        let id = format!("evt_latency_{i}");
        let at = Instant::now();
        agent
            .emit(pb::EmitRequest {
                event: Some(pb::Event {
                    id: id.clone(),
                    ..tenant_event(tenant)
                }),
            })
            .await?;
        sent.push((id, at));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let arrivals = counter.arrivals.lock().expect("lock").clone();
    let mut latencies: Vec<Duration> = sent
        .iter()
        .filter_map(|(id, at)| arrivals.get(id).map(|arrived| arrived.duration_since(*at)))
        .collect();
    anyhow::ensure!(
        latencies.len() == sent.len(),
        "{} of {} arrived",
        latencies.len(),
        sent.len()
    );
    // Only a lost response or a crash makes a receiver see an event twice; neither happens here.
    let repeats = counter.repeats.load(Ordering::Relaxed);
    anyhow::ensure!(repeats == 0, "{repeats} events arrived twice");
    latencies.sort();
    let pick = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    println!();
    println!("| Emit → receiver at 1,000 events/s (5,000 events) | p50 | p99 |");
    println!("| --- | ---: | ---: |");
    println!(
        "| one subscription, fsync on | {:.2} ms | {:.2} ms |",
        pick(0.5).as_secs_f64() * 1000.0,
        pick(0.99).as_secs_f64() * 1000.0
    );
    stop.cancel();
    Ok(())
}

/// A subscription of `tenant` to the bench's receiver, as wide as the plain client.
fn wide_subscription(tenant: &str, base: &str) -> pb::Subscription {
    let mut sub = herald_tests::subscription(tenant, &format!("{base}/{tenant}"), &["order.*"]);
    sub.max_in_flight = PLAIN_IN_FLIGHT as u32;
    sub
}

/// Creates `sub` and waits until the agent matches its tenant's events to it.
async fn create_and_wait(
    admin: &mut herald_proto::v1::subscriptions_client::SubscriptionsClient<
        tonic::transport::Channel,
    >,
    agent: &EventsClient<tonic::transport::Channel>,
    sub: pb::Subscription,
) -> anyhow::Result<()> {
    let tenant = sub.tenant.clone();
    admin
        .create_subscription(pb::CreateSubscriptionRequest {
            subscription: Some(sub),
            allow_unregistered: false,
            ..Default::default()
        })
        .await?;
    herald_tests::eventually(
        Duration::from_secs(30),
        "the subscription at the agent",
        || {
            let mut agent = agent.clone();
            let probe = tenant_event(&tenant);
            async move {
                let r = agent.emit(pb::EmitRequest { event: Some(probe) }).await?;
                Ok((r.get_ref().matched == 1).then_some(()))
            }
        },
    )
    .await
}

/// `bench deliver`'s egress case: the same deliveries to one subscription directly and to one
/// whose own egress proxy is a tinyproxy, in alternating rounds; prints the median of each.
async fn proxy_rounds(
    admin: &mut herald_proto::v1::subscriptions_client::SubscriptionsClient<
        tonic::transport::Channel,
    >,
    agent: &EventsClient<tonic::transport::Channel>,
    counter: &Counter,
    base: &str,
    deliveries: usize,
) -> anyhow::Result<()> {
    let proxy = herald_tests::EgressProxy::start(None).await?;
    for (tenant, egress) in [
        ("egress-direct", herald_core::egress::Egress::Direct),
        (
            "egress-proxy",
            herald_core::egress::Egress::Proxy(herald_core::egress::ProxyUrl::parse(&proxy.url())?),
        ),
    ] {
        let mut sub = wide_subscription(tenant, base);
        herald_proto::convert::set_egress(&mut sub, &egress);
        create_and_wait(admin, agent, sub).await?;
    }
    let mut direct = Vec::new();
    let mut proxied = Vec::new();
    for _ in 0..ROUNDS {
        tokio::time::sleep(Duration::from_millis(500)).await;
        direct.push(herald_round(agent, counter, "egress-direct", deliveries, 1).await?);
        tokio::time::sleep(Duration::from_millis(500)).await;
        proxied.push(herald_round(agent, counter, "egress-proxy", deliveries, 1).await?);
    }
    anyhow::ensure!(
        !proxy.connects().is_empty(),
        "the proxied deliveries went through the proxy"
    );
    let median = |rounds: &mut Vec<Rate>| {
        rounds.sort_by(|a, b| a.rate.total_cmp(&b.rate));
        Rate {
            rate: rounds[ROUNDS / 2].rate,
            cpu_us: rounds[ROUNDS / 2].cpu_us,
        }
    };
    let (direct, proxied) = (median(&mut direct), median(&mut proxied));
    println!();
    println!(
        "| egress, one subscription ({deliveries} deliveries, median of {ROUNDS} rounds) | deliveries/s | vs direct | CPU µs per delivery (this process) |"
    );
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| direct | {:.0} | 100% | {:.1} |",
        direct.rate, direct.cpu_us
    );
    println!(
        "| through tinyproxy (CONNECT to the checked address) | {:.0} | {:.0}% | {:.1} |",
        proxied.rate,
        100.0 * proxied.rate / direct.rate,
        proxied.cpu_us
    );
    Ok(())
}

/// `bench deliver`'s OAuth2 case: 10,000 deliveries to one subscription with client
/// credentials, against the same deliveries without; prints the rates and the tokens fetched.
async fn oauth2_round(
    admin: &mut herald_proto::v1::subscriptions_client::SubscriptionsClient<
        tonic::transport::Channel,
    >,
    agent: &EventsClient<tonic::transport::Channel>,
    counter: &Counter,
    base: &str,
    ca: &herald_tests::TestCa,
) -> anyhow::Result<()> {
    const DELIVERIES: usize = 10_000;
    let endpoint = herald_tests::TokenEndpoint::start(ca, "bench", "bench-secret", 3600).await?;
    let oauth2 = pb::OAuth2 {
        token_url: endpoint.url().to_owned(),
        client_id: "bench".into(),
        client_secret: "bench-secret".into(),
        ..Default::default()
    };
    for (tenant, oauth2) in [("oauth2", Some(oauth2)), ("oauth2-none", None)] {
        let mut sub = wide_subscription(tenant, base);
        sub.oauth2 = oauth2;
        create_and_wait(admin, agent, sub).await?;
    }
    let tenant = "oauth2";
    tokio::time::sleep(Duration::from_millis(500)).await;
    let with = herald_round(agent, counter, tenant, DELIVERIES, 1).await?;
    // Every token the endpoint issued, the probes' deliveries included.
    let fetched = endpoint.issued();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let without = herald_round(agent, counter, "oauth2-none", DELIVERIES, 1).await?;
    println!();
    println!(
        "| OAuth2, one subscription ({DELIVERIES} deliveries) | deliveries/s | tokens fetched |"
    );
    println!("| --- | ---: | ---: |");
    println!("| without OAuth2 | {:.0} | — |", without.rate);
    println!(
        "| with OAuth2 (token valid 1 h) | {:.0} | {fetched} |",
        with.rate
    );
    Ok(())
}

/// One round's rate and the CPU time this process spent per delivery meanwhile.
struct Rate {
    rate: f64,
    cpu_us: f64,
}

impl Rate {
    fn since(started: Instant, cpu_before: f64, deliveries: usize) -> Rate {
        let elapsed = started.elapsed().as_secs_f64();
        Rate {
            rate: deliveries as f64 / elapsed,
            cpu_us: (cpu_seconds() - cpu_before) * 1e6 / deliveries as f64,
        }
    }
}

/// The headers of one request a plain client sends as Herald sends them: `content-type`,
/// `webhook-event-type` and the Standard Webhooks `webhook-id`, `webhook-timestamp` and
/// `webhook-signature`, with values of the same shape (a fresh id, a real signature), never
/// indexed as Herald's are; and the body in the Standard Webhooks envelope.
struct WebhookHeaders {
    id: http::HeaderValue,
    timestamp: http::HeaderValue,
    signature: http::HeaderValue,
    body: bytes::Bytes,
}

impl WebhookHeaders {
    /// `n` requests' headers, made before a round's clock starts: the plain client only sends.
    fn make(n: usize) -> Vec<WebhookHeaders> {
        let secret = herald_core::signing::SigningSecret::generate();
        let sensitive = |text: &str| {
            let mut value = http::HeaderValue::from_str(text).expect("header value");
            value.set_sensitive(true);
            value
        };
        let now = std::time::SystemTime::now();
        let timestamp = now
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        (0..n)
            .map(|_| {
                let id = herald_core::ids::new_event_id();
                let body = herald_core::format::render_body(
                    herald_core::format::PayloadFormat::Json,
                    herald_core::format::Envelope::Standard,
                    &herald_core::format::EventBody {
                        event_type: EVENT_TYPE,
                        occurred_at: now,
                        payload: PAYLOAD.as_bytes(),
                    },
                )
                .expect("the payload is JSON");
                let signature = herald_core::signing::signature_header(
                    std::slice::from_ref(&secret),
                    &id,
                    timestamp,
                    &body,
                );
                WebhookHeaders {
                    id: sensitive(&id),
                    timestamp: sensitive(&timestamp.to_string()),
                    signature: sensitive(&signature),
                    body: body.into(),
                }
            })
            .collect()
    }
}

/// The limit: `deliveries` requests to the receiver from a plain HTTPS client (the agent's
/// HTTP transport, used directly), 256 in flight. With `headers`, request `i` carries `headers[i]` (the
/// requests Herald sends); without, each is a bare POST of the payload.
async fn plain_round(
    client: &herald_agent::delivery::transport::HttpClient,
    url: &str,
    deliveries: usize,
    headers: Option<Vec<WebhookHeaders>>,
) -> anyhow::Result<Rate> {
    use std::sync::atomic::Ordering;
    let headers = std::sync::Arc::new(headers);
    let started = Instant::now();
    let cpu_before = cpu_seconds();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..PLAIN_IN_FLIGHT {
        let (client, next, url) = (client.clone(), next.clone(), url.to_owned());
        let headers = headers.clone();
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= deliveries {
                    break;
                }
                let post = http::Request::post(&url);
                let request = match headers.as_ref().as_ref().map(|all| &all[i]) {
                    Some(h) => {
                        use herald_core::format::HEADER_EVENT_TYPE;
                        use herald_core::signing::{HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP};
                        let json = herald_core::format::PayloadFormat::Json.content_type();
                        post.header(http::header::CONTENT_TYPE, json)
                            .header(HEADER_ID, h.id.clone())
                            .header(HEADER_TIMESTAMP, h.timestamp.clone())
                            .header(HEADER_SIGNATURE, h.signature.clone())
                            .header(HEADER_EVENT_TYPE, EVENT_TYPE)
                            .body(http_body_util::Full::new(h.body.clone()))?
                    }
                    None => post.body(http_body_util::Full::new(bytes::Bytes::from_static(
                        PAYLOAD.as_bytes(),
                    )))?,
                };
                let response = client.request(request).await?;
                anyhow::ensure!(
                    response.status().is_success(),
                    "plain client got {}",
                    response.status()
                );
                // Read to the end, as the agent does, so the connection goes back to the pool.
                http_body_util::BodyExt::collect(response.into_body()).await?;
            }
            anyhow::Ok(())
        }));
    }
    for worker in workers {
        worker.await??;
    }
    Ok(Rate::since(started, cpu_before, deliveries))
}

/// `events` events emitted for `tenant` (batches of 100 from [`EMITTERS`] callers), timed
/// until all `events × subscriptions` deliveries arrived.
async fn herald_round(
    agent: &EventsClient<tonic::transport::Channel>,
    counter: &Counter,
    tenant: &str,
    events: usize,
    subscriptions: usize,
) -> anyhow::Result<Rate> {
    use std::sync::atomic::Ordering;
    let before = counter.count.load(Ordering::Relaxed);
    let started = Instant::now();
    let cpu_before = cpu_seconds();
    // Several callers, as applications emit, so that no single caller's wait for its commit
    // bounds the deliveries.
    let left = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(events));
    let mut callers = Vec::new();
    for _ in 0..EMITTERS {
        let (mut agent, left, tenant) = (agent.clone(), left.clone(), tenant.to_owned());
        callers.push(tokio::spawn(async move {
            while let Ok(left_before) =
                left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    n.checked_sub(n.clamp(1, 100))
                })
            {
                let batch = (0..left_before.min(100))
                    .map(|_| tenant_event(&tenant))
                    .collect();
                agent
                    .emit_batch(pb::EmitBatchRequest { events: batch })
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for caller in callers {
        caller.await??;
    }
    let deliveries = events * subscriptions;
    wait_count(counter, before + deliveries, Duration::from_secs(300)).await?;
    Ok(Rate::since(started, cpu_before, deliveries))
}

/// The bench event, for `tenant`.
fn tenant_event(tenant: &str) -> pb::Event {
    pb::Event {
        tenant: tenant.into(),
        ..event()
    }
}

/// CPU time (user and system) this process has used, in seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which ends with ')'): utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// The agent's queue cache for in-process agents: `HERALD_QUEUE_CACHE_BYTES` as the agent
/// reads it, so that runs with other sizes compare in one build.
fn queue_cache_bytes() -> usize {
    std::env::var("HERALD_QUEUE_CACHE_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(herald_agent::queue::DEFAULT_CACHE_BYTES)
}
