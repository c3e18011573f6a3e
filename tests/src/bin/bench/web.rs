//! `bench web`: the web console, the tenant portal and the REST API over a large delivery
//! log. A control plane (embedded store and log, in this process) holds 1,000 subscriptions
//! of 100 tenants and `HERALD_BENCH_WEB_ATTEMPTS` attempts (default 10,000,000, spread over
//! the last day, 2% of each tenant's failed); each page is fetched 200 times over one
//! keep-alive HTTP/1.1 connection (signed in, rendered on the server) and its p50/p99
//! reported. Then the REST list of attempts and the gRPC `ListAttempts` it calls are timed in
//! turns, 200 pages of 50 each, for the ratio.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use herald_control_plane::attempts::{AttemptLog, EmbeddedLog};
use herald_proto::convert::{duration, timestamp};
use herald_proto::v1 as pb;
use herald_proto::v1::deliveries_client::DeliveriesClient;
use herald_proto::v1::portal_client::PortalClient;
use herald_proto::v1::subscriptions_client::SubscriptionsClient;
use herald_tests::herald::connect;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::log::percentile;

const SUBSCRIPTIONS: usize = 1000;
const TENANTS: usize = 100;
const REQUESTS: usize = 200;

/// A running control plane with its HTTP listener.
struct Server {
    grpc: String,
    http: String,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn start(dir: &std::path::Path) -> anyhow::Result<Server> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let http = TcpListener::bind("127.0.0.1:0").await?.local_addr()?;
    let config = herald_control_plane::Config {
        shutdown_grace: Duration::from_secs(1),
        allow_http: true,
        http_listen: Some(http),
        ..herald_control_plane::Config::new(addr, dir.to_owned())
    };
    let stop = CancellationToken::new();
    let cancelled = stop.clone();
    let task = tokio::spawn(async move {
        if let Err(err) =
            herald_control_plane::run(config, listener, cancelled.cancelled_owned()).await
        {
            eprintln!("control plane: {err}");
        }
    });
    let grpc = format!("http://{addr}");
    herald_tests::eventually(Duration::from_secs(10), "the control plane", || async {
        Ok(tokio::net::TcpStream::connect(http)
            .await
            .ok()
            .and(connect(&grpc).await.ok()))
    })
    .await?;
    Ok(Server {
        grpc,
        http: format!("http://{http}"),
        stop,
        task,
    })
}

impl Server {
    async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.task.await?;
        Ok(())
    }
}

/// Attempt `i` of `total`, to one of `subs`, started within the last day.
fn attempt(i: u64, total: u64, subs: &[pb::Subscription], now: SystemTime) -> pb::Attempt {
    let sub = &subs[i as usize % subs.len()];
    // Every tenant's every 50th attempt fails (2%), whatever its subscription.
    let failed = (i / TENANTS as u64).is_multiple_of(50);
    let age = Duration::from_secs((total - i) * 86_400 / total.max(1));
    pb::Attempt {
        event_id: format!("evt_{i:016}"),
        subscription_id: sub.id.clone(),
        tenant: sub.tenant.clone(),
        event_type: "order.created".into(),
        attempt: 1,
        agent_id: "agt_bench".into(),
        started_at: Some(timestamp(now - age)),
        duration: Some(duration(Duration::from_millis(5 + i % 40))),
        status_code: if failed { 500 } else { 200 },
        error_kind: if failed {
            "http_status".into()
        } else {
            String::new()
        },
        error: if failed {
            "the receiver answered 500".into()
        } else {
            String::new()
        },
        outcome: if failed {
            pb::Outcome::Failed
        } else {
            pb::Outcome::Delivered
        } as i32,
        next_attempt_at: None,
        response_excerpt: if failed {
            r#"{"error":"internal server error"}"#.into()
        } else {
            r#"{"ok":true}"#.into()
        },
        url: sub.url.clone(),
        test: false,
        request: None,
    }
}

/// Times `REQUESTS` GETs of `path`; p50 and p99 in ms. Every answer must be a 200.
async fn time_page(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    cookie: &str,
) -> anyhow::Result<(f64, f64)> {
    let mut times = Vec::with_capacity(REQUESTS);
    for _ in 0..REQUESTS {
        let start = Instant::now();
        let response = client
            .get(format!("{base}{path}"))
            .header("cookie", cookie)
            .send()
            .await?;
        let status = response.status();
        let body = response.bytes().await?;
        times.push(start.elapsed());
        anyhow::ensure!(
            status.is_success(),
            "{path}: {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    times.sort();
    Ok((
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        percentile(&times, 0.99).as_secs_f64() * 1e3,
    ))
}

pub async fn run() -> anyhow::Result<()> {
    // reqwest's TLS needs the process's provider, even for plain HTTP.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let total: u64 = std::env::var("HERALD_BENCH_WEB_ATTEMPTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let dir = tempfile::tempdir()?;

    // The subscriptions, through the API.
    let server = start(dir.path()).await?;
    let mut subscriptions = SubscriptionsClient::new(connect(&server.grpc).await?);
    let mut subs = Vec::with_capacity(SUBSCRIPTIONS);
    for i in 0..SUBSCRIPTIONS {
        let tenant = format!("shop-{}", i % TENANTS);
        let sub = subscriptions
            .create_subscription(pb::CreateSubscriptionRequest {
                subscription: Some(pb::Subscription {
                    url: format!("https://{tenant}.example.com/webhooks/{i}"),
                    tenant,
                    event_types: vec!["order.*".into()],
                    description: format!("endpoint {i}"),
                    ..Default::default()
                }),
                allow_unregistered: true,
                ..Default::default()
            })
            .await?
            .into_inner();
        subs.push(sub);
    }
    server.stop().await?;

    // The log, written straight into its file (as the report streams would, faster).
    let log: AttemptLog = herald_tests::eventually(Duration::from_secs(10), "the log", || async {
        Ok(EmbeddedLog::open(dir.path()).ok())
    })
    .await
    .map(|log| Arc::new(log) as AttemptLog)?;
    let now = SystemTime::now();
    let fill = Instant::now();
    let mut next = log.len().await?;
    while next < total {
        let len = (total - next).min(5_000);
        log.insert(
            (next..next + len)
                .map(|i| attempt(i, total, &subs, now))
                .collect(),
        )
        .await?;
        next += len;
    }
    println!(
        "Filled the log to {} attempts in {:.0} s.\n",
        log.len().await?,
        fill.elapsed().as_secs_f64()
    );
    drop(log);

    let server = start(dir.path()).await?;
    let client = reqwest::Client::builder().http1_only().build()?;
    // The API is open here: signing in takes no token.
    let cookie = herald_tests::open_console_session(&server.http).await?;
    let link = PortalClient::new(connect(&server.grpc).await?)
        .create_portal_link(pb::CreatePortalLinkRequest {
            tenant: subs[7].tenant.clone(),
            ttl: None,
            read_only: false,
        })
        .await?
        .into_inner();
    let portal = link.url.trim_start_matches(&server.http).to_owned();
    let sub = &subs[7];
    let event = format!(
        "evt_{:016}",
        total - 1 - (total - 1) % SUBSCRIPTIONS as u64 + 7
    );
    let pages = [
        (
            "console: subscriptions (first 100)",
            "/subscriptions".to_owned(),
        ),
        (
            "console: search subscriptions",
            "/subscriptions?q=endpoint+977".to_owned(),
        ),
        (
            "console: a subscription (health, chart of its newest 1,000 attempts)",
            format!("/subscriptions/{}", sub.id),
        ),
        (
            "console: delivery log (newest 50)",
            "/deliveries".to_owned(),
        ),
        (
            "console: delivery log of a tenant, failed",
            format!("/deliveries?tenant={}&outcome=failed", sub.tenant),
        ),
        (
            "console: delivery log of a subscription",
            format!("/deliveries?subscription_id={}", sub.id),
        ),
        ("console: an event's attempts", format!("/events/{event}")),
        ("console: agents", "/agents".to_owned()),
        ("console: event types", "/event-types".to_owned()),
        ("portal: endpoints", portal.clone()),
        (
            "portal: an endpoint",
            format!("{portal}endpoints/{}", sub.id),
        ),
        ("portal: sent requests", format!("{portal}deliveries")),
    ];
    println!(
        "## Web pages over {total} attempts and {SUBSCRIPTIONS} subscriptions ({REQUESTS} requests each)\n"
    );
    println!("| page | p50 | p99 |");
    println!("| --- | ---: | ---: |");
    for (name, path) in &pages {
        let (p50, p99) = time_page(&client, &server.http, path, &cookie).await?;
        println!("| {name} | {p50:.2} ms | {p99:.2} ms |");
    }

    // REST against gRPC: the same page of attempts, in turns.
    let mut grpc = DeliveriesClient::new(connect(&server.grpc).await?);
    let (mut rest_times, mut grpc_times) = (Vec::new(), Vec::new());
    for i in 0..REQUESTS {
        let sub = &subs[(i * 13) % SUBSCRIPTIONS];
        let start = Instant::now();
        let page = grpc
            .list_attempts(pb::ListAttemptsRequest {
                filter: Some(pb::AttemptFilter {
                    subscription_id: sub.id.clone(),
                    ..Default::default()
                }),
                page_size: 50,
                page_token: String::new(),
            })
            .await?
            .into_inner();
        grpc_times.push(start.elapsed());
        anyhow::ensure!(page.attempts.len() == 50, "a full page over gRPC");
        let start = Instant::now();
        let body = client
            .get(format!(
                "{}/api/v1/attempts?subscription_id={}&page_size=50",
                server.http, sub.id
            ))
            .send()
            .await?
            .bytes()
            .await?;
        rest_times.push(start.elapsed());
        anyhow::ensure!(body.len() > 1000, "a page over REST");
    }
    rest_times.sort();
    grpc_times.sort();
    let (rest, grpc) = (
        percentile(&rest_times, 0.5).as_secs_f64() * 1e3,
        percentile(&grpc_times, 0.5).as_secs_f64() * 1e3,
    );
    println!(
        "\n## A page of 50 attempts of one subscription: REST against gRPC ({REQUESTS} each, in turns)\n"
    );
    println!("| API | p50 | p99 |");
    println!("| --- | ---: | ---: |");
    println!(
        "| gRPC `ListAttempts` | {grpc:.2} ms | {:.2} ms |",
        percentile(&grpc_times, 0.99).as_secs_f64() * 1e3
    );
    println!(
        "| REST `GET /api/v1/attempts` | {rest:.2} ms | {:.2} ms |",
        percentile(&rest_times, 0.99).as_secs_f64() * 1e3
    );
    println!("\nREST / gRPC at p50: {:.2}×", rest / grpc);
    server.stop().await?;
    Ok(())
}
