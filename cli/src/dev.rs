//! `herald dev`: Herald in one process for trying it out with nothing installed — the control
//! plane on the embedded store, an agent, and an inspection receiver that prints every webhook
//! it gets and whether its signature verifies. Plain http:// and loopback targets are allowed
//! here only.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use herald_agent::listen::{ListenAddr, Listener};
use herald_core::format::HEADER_EVENT_TYPE;
use herald_core::signing::{
    self, HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, PublicKey, SigningSecret,
};
use herald_proto::v1 as pb;
use herald_proto::v1::subscriptions_client::SubscriptionsClient;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::connect::channel;

/// How long the dev servers get to drain on Ctrl-C.
const GRACE: Duration = Duration::from_secs(5);
/// How much of a webhook body the receiver prints.
const MAX_PRINTED_BODY: usize = 2048;

#[derive(clap::Args)]
pub struct Args {
    /// Control-plane gRPC address.
    #[arg(long, default_value = "127.0.0.1:7700")]
    control_plane_listen: SocketAddr,
    /// Agent (Emit) gRPC address.
    #[arg(long, default_value = "127.0.0.1:7701")]
    agent_listen: SocketAddr,
    /// Inspection receiver address.
    #[arg(long, default_value = "127.0.0.1:7702")]
    receiver_listen: SocketAddr,
    /// Control-plane HTTP API address (REST under /api/v1/).
    #[arg(long, default_value = "127.0.0.1:7703")]
    http_listen: SocketAddr,
    /// Where people reach that address, when not by it (a name for this machine): the start
    /// of portal links, and a name the pages answer to. Without it they answer only IP
    /// addresses and localhost, so a page of another site cannot use them (DNS rebinding).
    #[arg(long, value_parser = herald_control_plane::public_url)]
    public_url: Option<String>,
    /// Where dev state is kept (subscriptions and the delivery log survive restarts).
    #[arg(long, env = "HERALD_DEV_DATA_DIR", default_value = ".herald-dev")]
    data_dir: PathBuf,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    herald_core::daemon::init_logs("warn,herald_control_plane=info,herald_agent=info");
    let bind = |addr: SocketAddr, what: &'static str| async move {
        TcpListener::bind(addr).await.with_context(|| {
            format!("cannot listen on {addr} for the {what} (is another herald dev running?)")
        })
    };
    let cp_listener = bind(args.control_plane_listen, "control plane").await?;
    let agent_listener = bind(args.agent_listen, "agent").await?;
    let receiver_listener = bind(args.receiver_listen, "receiver").await?;
    let control_plane_url = format!("http://{}", args.control_plane_listen);

    // Loopback and plain http are allowed here only: this is everything-on-one-machine mode.
    let loopback =
        herald_core::target::parse_allowlist("127.0.0.0/8,::1").map_err(anyhow::Error::msg)?;
    // Stopped in order on Ctrl-C: the agent first, so it drains its deliveries into the
    // receiver and its attempt reports into the control plane, then the other two.
    let stop_agent = CancellationToken::new();
    let stop = CancellationToken::new();
    // Cancelled when any of the three ends by itself (it failed to start, or failed later):
    // the others are stopped then, and its error is what `herald dev` exits with.
    let ended = CancellationToken::new();
    let cp_config = herald_control_plane::Config {
        allow_http: true,
        allow_targets: loopback.clone(),
        shutdown_grace: GRACE,
        http_listen: Some(args.http_listen),
        public_url: args.public_url.clone(),
        ..herald_control_plane::Config::new(
            args.control_plane_listen,
            args.data_dir.join("control-plane"),
        )
    };
    let control_plane = tokio::spawn(watched(
        ended.clone(),
        herald_control_plane::run(cp_config, cp_listener, stop.clone().cancelled_owned()),
    ));
    let agent_config = herald_agent::Config {
        region: "dev".into(),
        allow_http: true,
        allow_targets: loopback,
        max_in_flight: 256,
        shutdown_grace: GRACE,
        ..herald_agent::Config::new(
            &control_plane_url,
            ListenAddr::Tcp(args.agent_listen),
            args.data_dir.join("agent"),
        )
    };
    let agent = tokio::spawn(watched(
        ended.clone(),
        herald_agent::run(
            agent_config,
            Listener::Tcp(agent_listener),
            stop_agent.clone().cancelled_owned(),
        ),
    ));
    let inspector = Arc::new(Inspector {
        control_plane: control_plane_url.clone(),
        port: args.receiver_listen.port(),
    });
    let app = axum::Router::new().fallback(inspect).with_state(inspector);
    let receiver = tokio::spawn(watched(
        ended.clone(),
        axum::serve(receiver_listener, app)
            .with_graceful_shutdown(stop.clone().cancelled_owned())
            .into_future(),
    ));

    let receiver_url = format!("http://{}/hooks/orders", args.receiver_listen);
    let agent_url = format!("http://{}", args.agent_listen);
    // Commands copied from here reach this Herald, on whatever addresses it was given.
    let point_at =
        if control_plane_url == crate::DEFAULT_CONTROL_PLANE && agent_url == crate::DEFAULT_AGENT {
            String::new()
        } else {
            format!("\n  export HERALD_CONTROL_PLANE={control_plane_url} HERALD_AGENT={agent_url}")
        };
    // Said once both answer: a part that cannot start (another herald dev holding the data
    // directory) is said as such, with no banner claiming it runs.
    let parts = [control_plane_url.as_str(), agent_url.as_str()];
    let ready = tokio::select! {
        () = ended.cancelled() => false,
        () = herald_core::shutdown::signal() => false,
        () = serving(&parts) => true,
        () = tokio::time::sleep(READY_WITHIN) => {
            say(&format!(
                "the control plane or the agent is still not serving after {}s (a full disk \
                 under {}?); going on",
                READY_WITHIN.as_secs(),
                args.data_dir.display()
            ));
            true
        }
    };
    if !ready {
        return stop_after_failure(stop_agent, stop, agent, control_plane, receiver).await;
    }
    say(&format!(
        "Herald dev is running (state in {dir}; Ctrl-C to stop)\n\
         \n  control plane  {control_plane_url}\n  web console    http://{http}/\n  HTTP API       http://{http}/api/v1/ (OpenAPI: /api/v1/openapi.json)\n  agent (Emit)   {agent_url}\n  receiver       http://{receiver} — prints every webhook it gets\n\
         \nIn another terminal, try:\n{point_at}\
         \n  herald subscription create --tenant shop-1 --url {receiver_url} --events 'order.*' --format json\
         \n  herald emit --tenant shop-1 --type order.created --data '{{\"order_id\": \"42\", \"total\": \"19.99\", \"currency\": \"EUR\", \"lines\": [{{\"sku\": \"MUG-01\", \"qty\": 1, \"price\": \"19.99\"}}]}}'\
         \n  herald deliveries list --tenant shop-1\n\
         \n(`herald` is `cargo run -q --bin herald --` from the repository.)\n",
        dir = args.data_dir.display(),
        receiver = args.receiver_listen,
        http = args.http_listen,
    ));

    tokio::select! {
        () = herald_core::shutdown::signal() => say("stopping… (Ctrl-C again to stop at once)"),
        () = ended.cancelled() => say("a part of Herald dev stopped; stopping the others…"),
    }
    let stopping = async {
        stop_agent.cancel();
        let agent = agent.await;
        stop.cancel();
        // The receiver waits for its open requests; a client holding one open must not hold
        // Herald: it gets the grace period.
        let receiver = async {
            match tokio::time::timeout(GRACE, receiver).await {
                Ok(done) => anyhow::Ok(done.context("receiver task")??),
                Err(_) => Ok(()),
            }
        };
        let (cp, receiver) = tokio::join!(control_plane, receiver);
        agent.context("agent task")??;
        cp.context("control plane task")??;
        receiver?;
        anyhow::Ok(())
    };
    tokio::select! {
        stopped = stopping => stopped,
        () = herald_core::shutdown::signal() => {
            say("stopped at once");
            Ok(())
        }
    }
}

/// How long `herald dev` waits for its parts to serve before it says they do not.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// Returns once every gRPC server at `urls` says it is serving (standard health checks).
async fn serving(urls: &[&str]) {
    for url in urls {
        loop {
            let answer = async {
                let mut health =
                    tonic_health::pb::health_client::HealthClient::new(channel(url).await?);
                let status = health
                    .check(tonic_health::pb::HealthCheckRequest::default())
                    .await?
                    .into_inner()
                    .status;
                anyhow::Ok(
                    status
                        == tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
                )
            };
            if matches!(answer.await, Ok(true)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Stops what still runs after a part failed to start (or a stop was asked for before all
/// served), and answers a part's error, if one failed.
async fn stop_after_failure(
    stop_agent: CancellationToken,
    stop: CancellationToken,
    agent: tokio::task::JoinHandle<Result<(), herald_agent::Error>>,
    control_plane: tokio::task::JoinHandle<Result<(), herald_control_plane::Error>>,
    receiver: tokio::task::JoinHandle<std::io::Result<()>>,
) -> anyhow::Result<()> {
    stop_agent.cancel();
    stop.cancel();
    let (agent, control_plane, receiver) = tokio::join!(agent, control_plane, receiver);
    control_plane.context("control plane task")??;
    agent.context("agent task")??;
    receiver.context("receiver task")??;
    Ok(())
}

/// Runs `part` and cancels `ended` when it ends, however it ends.
async fn watched<T>(ended: CancellationToken, part: impl Future<Output = T>) -> T {
    let _ended = ended.drop_guard();
    part.await
}

/// Prints `text` for the person watching. With nobody reading (`herald dev | head`), Herald
/// keeps running: Ctrl-C stops it, as always.
fn say(text: &str) {
    let _ = crate::output::write(&format!("{text}\n"));
}

/// The inspection receiver's state: where to look up subscriptions' secrets.
struct Inspector {
    control_plane: String,
    port: u16,
}

impl Inspector {
    /// Which subscriptions pointing at this URL signed the request, if any.
    async fn verify(&self, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> anyhow::Result<String> {
        let header = |name| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .with_context(|| format!("no {name} header"))
        };
        let id = header(HEADER_ID)?;
        let timestamp: i64 = header(HEADER_TIMESTAMP)?
            .parse()
            .context("bad webhook-timestamp")?;
        let signature = header(HEADER_SIGNATURE)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        if !signing::verify_timestamp(timestamp, now, 5 * 60) {
            anyhow::bail!("webhook-timestamp is more than 5 minutes away from now");
        }
        let mut client = SubscriptionsClient::new(channel(&self.control_plane).await?);
        let target = uri.path_and_query().map_or("/", |p| p.as_str());
        let mut page_token = String::new();
        let mut checked = 0;
        loop {
            let page = client
                .list_subscriptions(pb::ListSubscriptionsRequest {
                    tenant: String::new(),
                    page_size: 1000,
                    page_token,
                })
                .await?
                .into_inner();
            for sub in page.subscriptions {
                let Ok(url) = url_parts(&sub.url) else {
                    continue;
                };
                if url != (self.port, target.to_owned()) {
                    continue;
                }
                checked += 1;
                let full = client
                    .get_subscription(pb::GetSubscriptionRequest {
                        id: sub.id.clone(),
                        show_secrets: true,
                    })
                    .await?
                    .into_inner();
                let secrets: Vec<SigningSecret> = full
                    .secrets
                    .iter()
                    .filter_map(|s| SigningSecret::parse(&s.secret).ok())
                    .collect();
                let public_keys: Vec<PublicKey> = full
                    .secrets
                    .iter()
                    .filter_map(|s| PublicKey::parse(&s.public_key).ok())
                    .collect();
                if signing::verify(&secrets, signature, id, timestamp, body)
                    || signing::verify_asymmetric(&public_keys, signature, id, timestamp, body)
                {
                    return Ok(format!("signature verified (subscription {})", sub.id));
                }
            }
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        anyhow::bail!(
            "signature does NOT verify against the {checked} subscription(s) pointing here"
        )
    }
}

/// The port and path+query of a URL, to match requests to subscriptions.
fn url_parts(text: &str) -> anyhow::Result<(u16, String)> {
    let url = url::Url::parse(text)?;
    let port = url.port_or_known_default().unwrap_or(0);
    let mut path = url.path().to_owned();
    if let Some(query) = url.query() {
        path.push('?');
        path.push_str(query);
    }
    Ok((port, path))
}

async fn inspect(
    State(inspector): State<Arc<Inspector>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let verdict = match inspector.verify(&uri, &headers, &body).await {
        Ok(ok) => format!("✔ {ok}"),
        Err(err) => format!("✘ {err:#}"),
    };
    let show = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned()
    };
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX_PRINTED_BODY)]).into_owned();
    let body_text = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .filter(|t| t.len() <= MAX_PRINTED_BODY)
        .unwrap_or(text);
    // A request that is no webhook may carry anything (so may a JSON string, which serde
    // leaves C1 controls in): shown, not obeyed by the terminal.
    let body_text =
        String::from_utf8_lossy(&crate::output::terminal_safe(body_text.as_bytes())).into_owned();
    let verdict =
        String::from_utf8_lossy(&crate::output::terminal_safe(verdict.as_bytes())).into_owned();
    say(&format!(
        "── webhook received: {method} {uri}\n   webhook-id: {}\n   webhook-event-type: {}\n   content-type: {}\n   {verdict}\n{}\n",
        show(HEADER_ID),
        show(HEADER_EVENT_TYPE),
        show("content-type"),
        body_text
            .lines()
            .map(|l| format!("   {l}"))
            .collect::<Vec<_>>()
            .join("\n"),
    ));
    StatusCode::NO_CONTENT
}
