//! Herald's own servers as test handles: a control plane and an agent running in-process on
//! real loopback sockets, each stopped (gracefully, through its shutdown future) when the
//! handle is stopped or dropped, and each re-raising a server error or panic on `stop`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use herald_agent::listen::{ListenAddr, Listener};
use herald_proto::bearer::{AuthedChannel, Bearer};
use herald_proto::v1 as pb;
use herald_proto::v1::agents_client::AgentsClient;
use herald_proto::v1::deliveries_client::DeliveriesClient;
use herald_proto::v1::events_client::EventsClient;
use herald_proto::v1::subscriptions_client::SubscriptionsClient;
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::port::HeldPort;

/// Shutdown grace for test servers: short, so a failing drain shows quickly.
const GRACE: Duration = Duration::from_secs(5);

/// Where a control plane keeps its config.
#[derive(Clone, Debug)]
pub enum ConfigStore {
    /// A real etcd at these endpoints.
    Etcd(Vec<String>),
    /// The embedded file store.
    Embedded,
}

/// A control plane running in-process.
pub struct ControlPlane {
    url: String,
    /// The operator token the helpers below call with (none when the API is open).
    bearer: Bearer,
    /// The operator's TLS settings, when the API speaks TLS.
    tls: Option<tonic::transport::ClientTlsConfig>,
    config: herald_control_plane::Config,
    stop: CancellationToken,
    task: Option<JoinHandle<Result<(), herald_control_plane::Error>>>,
    /// The port, kept while paused so a restart finds it free.
    port: HeldPort,
    _dir: TempDir,
}

impl ControlPlane {
    /// Starts a control plane on a free port that admits loopback targets (where the tests'
    /// receivers are).
    pub async fn start(store: ConfigStore) -> anyhow::Result<Self> {
        Self::start_with_targets(store, loopback()).await
    }

    /// Starts a control plane admitting only the special targets in `allow_targets`.
    pub async fn start_with_targets(
        store: ConfigStore,
        allow_targets: Vec<ipnet::IpNet>,
    ) -> anyhow::Result<Self> {
        Self::start_configured(store, |config| config.allow_targets = allow_targets).await
    }

    /// Starts a control plane that requires the API tokens in `tokens` (`ROLE TOKEN` lines);
    /// the helpers of the returned value call with `admin_token`.
    pub async fn start_with_tokens(
        store: ConfigStore,
        tokens: &str,
        admin_token: &str,
    ) -> anyhow::Result<Self> {
        Self::start_with_tokens_configured(store, tokens, admin_token, |_| {}).await
    }

    /// [`ControlPlane::start_with_tokens`] with the test defaults also changed by
    /// `configure`.
    pub async fn start_with_tokens_configured(
        store: ConfigStore,
        tokens: &str,
        admin_token: &str,
        configure: impl FnOnce(&mut herald_control_plane::Config),
    ) -> anyhow::Result<Self> {
        let tokens = tokens.to_owned();
        let mut control_plane = Self::start_configured(store, |config| {
            config.auth.auth_tokens = Some(tokens);
            configure(config);
        })
        .await?;
        control_plane.bearer = Bearer::parse(admin_token)?;
        Ok(control_plane)
    }

    /// Starts a control plane with the test defaults changed by `configure`.
    pub async fn start_configured(
        store: ConfigStore,
        configure: impl FnOnce(&mut herald_control_plane::Config),
    ) -> anyhow::Result<Self> {
        init_logs();
        let dir = tempfile::tempdir()?;
        let port = HeldPort::new()?;
        let listener = port.listen().await?;
        let addr = port.addr();
        let mut config = herald_control_plane::Config {
            etcd: match store {
                ConfigStore::Etcd(endpoints) => endpoints,
                ConfigStore::Embedded => vec![],
            },
            allow_targets: loopback(),
            shutdown_grace: GRACE,
            // Replicas on one etcd share one keyring, as they must in production.
            secrets: herald_control_plane::sealing::KeyringSource {
                secrets_key: Some(shared_keyring().to_owned()),
                secrets_key_file: None,
            },
            ..herald_control_plane::Config::new(addr, dir.path().to_owned())
        };
        configure(&mut config);
        let stop = CancellationToken::new();
        let task = tokio::spawn(herald_control_plane::run(
            config.clone(),
            listener,
            stop.clone().cancelled_owned(),
        ));
        if let Some(http) = config.http_listen {
            // The gRPC listener is bound before the start; the HTTP one during it.
            crate::eventually(
                Duration::from_secs(10),
                "the HTTP API to listen",
                || async { Ok(tokio::net::TcpStream::connect(http).await.ok().map(drop)) },
            )
            .await?;
        }
        Ok(ControlPlane {
            url: if config.tls.tls_cert_file.is_some() {
                format!("https://{addr}")
            } else {
                format!("http://{addr}")
            },
            bearer: Bearer::default(),
            tls: None,
            config,
            stop,
            task: Some(task),
            port,
            _dir: dir,
        })
    }

    /// Stops gracefully, keeping the address and data, for [`ControlPlane::resume`].
    pub async fn pause(&mut self) -> anyhow::Result<()> {
        self.stop.cancel();
        join(self.task.take()).await
    }

    /// Starts again on the same address and data after [`ControlPlane::pause`].
    pub async fn resume(&mut self) -> anyhow::Result<()> {
        let listener = self.port.listen().await?;
        self.stop = CancellationToken::new();
        self.task = Some(tokio::spawn(herald_control_plane::run(
            self.config.clone(),
            listener,
            self.stop.clone().cancelled_owned(),
        )));
        Ok(())
    }

    /// The gRPC URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The gRPC address.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.port.addr()
    }

    /// A `Subscriptions` client (with the operator token, if any).
    pub async fn subscriptions(&self) -> anyhow::Result<SubscriptionsClient<AuthedChannel>> {
        Ok(SubscriptionsClient::new(self.channel().await?))
    }

    /// A `Deliveries` client (with the operator token, if any).
    pub async fn deliveries(&self) -> anyhow::Result<DeliveriesClient<AuthedChannel>> {
        Ok(DeliveriesClient::new(self.channel().await?))
    }

    /// An `Agents` client (with the operator token, if any).
    pub async fn agents(&self) -> anyhow::Result<AgentsClient<AuthedChannel>> {
        Ok(AgentsClient::new(self.channel().await?))
    }

    /// A channel whose calls carry the operator token, if any (over TLS, when set).
    pub async fn channel(&self) -> anyhow::Result<AuthedChannel> {
        let channel = match &self.tls {
            Some(tls) => connect_tls(&self.url, tls.clone()).await?,
            None => connect(&self.url).await?,
        };
        Ok(self.bearer.wrap(channel))
    }

    /// Makes the helpers call over TLS with `tls` (an operator's CA and certificate).
    pub fn use_tls(&mut self, tls: tonic::transport::ClientTlsConfig) {
        self.tls = Some(tls);
    }

    /// The subscription `id` as stored (secrets hidden).
    pub async fn get(&self, id: &str) -> anyhow::Result<pb::Subscription> {
        Ok(self
            .subscriptions()
            .await?
            .get_subscription(pb::GetSubscriptionRequest {
                id: id.to_owned(),
                show_secrets: false,
            })
            .await?
            .into_inner())
    }

    /// Disables subscription `id` for `reason`; returns it as stored.
    pub async fn disable(&self, id: &str, reason: &str) -> anyhow::Result<pb::Subscription> {
        Ok(self
            .subscriptions()
            .await?
            .disable_subscription(pb::DisableSubscriptionRequest {
                id: id.to_owned(),
                reason: reason.to_owned(),
            })
            .await?
            .into_inner())
    }

    /// Enables subscription `id`, sending its parked deliveries when `replay_parked` (else
    /// they are skipped); returns it as stored.
    pub async fn enable(&self, id: &str, replay_parked: bool) -> anyhow::Result<pb::Subscription> {
        Ok(self
            .subscriptions()
            .await?
            .enable_subscription(pb::EnableSubscriptionRequest {
                id: id.to_owned(),
                replay_parked,
            })
            .await?
            .into_inner())
    }

    /// Creates a subscription and returns it (with its secret).
    pub async fn create(&self, sub: pb::Subscription) -> anyhow::Result<pb::Subscription> {
        Ok(self
            .subscriptions()
            .await?
            .create_subscription(pb::CreateSubscriptionRequest {
                subscription: Some(sub),
                allow_unregistered: false,
                ..Default::default()
            })
            .await?
            .into_inner())
    }

    /// Creates subscriptions of `tenant` for events `order.*`, the n-th (from 1) to
    /// `url_of(n)`, until one is refused or `timeout` passes: the refusal, and how many were
    /// tried. For stores that fill up.
    pub async fn create_until_refused(
        &self,
        tenant: &str,
        url_of: impl Fn(u32) -> String,
        timeout: Duration,
    ) -> anyhow::Result<(tonic::Status, u32)> {
        let mut tried = 0;
        let refused = crate::eventually(timeout, "a subscription refused", || {
            tried += 1;
            let sub = subscription(tenant, &url_of(tried), &["order.*"]);
            async move { Ok(self.create(sub).await.err()) }
        })
        .await?;
        Ok((status_of(&refused)?.clone(), tried))
    }

    /// Every stored attempt matching `filter`, newest first.
    pub async fn attempts(&self, filter: pb::AttemptFilter) -> anyhow::Result<Vec<pb::Attempt>> {
        let mut client = self.deliveries().await?;
        let mut all = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = client
                .list_attempts(pb::ListAttemptsRequest {
                    filter: Some(filter.clone()),
                    page_size: 1000,
                    page_token,
                })
                .await?
                .into_inner();
            all.extend(page.attempts);
            if page.next_page_token.is_empty() {
                return Ok(all);
            }
            page_token = page.next_page_token;
        }
    }

    /// Waits until the log holds an attempt matching `filter`; every matching attempt then.
    pub async fn wait_logged(
        &self,
        filter: pb::AttemptFilter,
        timeout: Duration,
    ) -> anyhow::Result<Vec<pb::Attempt>> {
        crate::eventually(
            timeout,
            &format!("an attempt logged for {filter:?}"),
            || async {
                let logged = self.attempts(filter.clone()).await?;
                Ok((!logged.is_empty()).then_some(logged))
            },
        )
        .await
    }

    /// The subscriptions of `tenant` (its first page: up to 100).
    pub async fn subscriptions_of(&self, tenant: &str) -> anyhow::Result<Vec<pb::Subscription>> {
        Ok(self
            .subscriptions()
            .await?
            .list_subscriptions(pb::ListSubscriptionsRequest {
                tenant: tenant.into(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .subscriptions)
    }

    /// The agents this control plane lists.
    pub async fn list_agents(&self) -> anyhow::Result<Vec<pb::AgentInfo>> {
        Ok(self
            .agents()
            .await?
            .list_agents(pb::ListAgentsRequest {})
            .await?
            .into_inner()
            .agents)
    }

    /// Waits until every connected agent has applied at least `revision`.
    pub async fn wait_applied(&self, revision: i64, timeout: Duration) -> anyhow::Result<()> {
        crate::eventually(
            timeout,
            &format!("agents to apply revision {revision}"),
            || async {
                let agents = self.list_agents().await?;
                let connected: Vec<_> = agents.iter().filter(|a| a.connected).collect();
                Ok((!connected.is_empty()
                    && connected.iter().all(|a| a.applied_revision >= revision))
                .then_some(()))
            },
        )
        .await
    }

    /// Stops gracefully and reports how the server ended.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.stop.cancel();
        join(self.task.take()).await
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The keyring every control plane of this test process seals secrets with, made once: test
/// replicas share it, as replicas on one etcd must.
pub fn shared_keyring() -> &'static str {
    static KEYRING: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    KEYRING.get_or_init(|| {
        herald_control_plane::sealing::Keyring::generate_entry("test")
            .expect("randomness for a test key")
    })
}

/// Agent settings a test may change.
#[derive(Clone, Debug, Default)]
pub struct AgentOptions {
    /// Extra trust roots (the test CA).
    pub ca_file: Option<PathBuf>,
    /// Region.
    pub region: Option<String>,
    /// Queue bound in events waiting for delivery (default one million).
    pub max_queue_events: Option<u64>,
    /// One tenant's share of the queue's bounds (default the agent's, one half).
    pub max_queue_share: Option<f64>,
    /// Deliveries kept parked per disabled subscription (default the agent's).
    pub max_parked_deliveries: Option<u64>,
    /// Where the agent keeps its queue (default: a temp dir of its own).
    pub data_dir: Option<PathBuf>,
    /// The free bytes its queue keeps on its disk (default the agent's).
    pub queue_min_free_bytes: Option<u64>,
    /// Special targets admitted (default: loopback, where the tests' receivers are).
    pub allow_targets: Option<Vec<ipnet::IpNet>>,
    /// Attempts in flight across all subscriptions (default 256).
    pub max_in_flight: Option<usize>,
    /// The token the agent presents to the control plane.
    pub control_plane_token: Option<String>,
    /// The token Emit callers must present.
    pub emit_token: Option<String>,
    /// The file of tenant-scoped Emit tokens (`--emit-tokens`).
    pub emit_tokens_file: Option<PathBuf>,
    /// Where the agent serves `/metrics`.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// TLS to the control plane: its CA, and the agent's certificate and key.
    pub control_plane_tls: Option<(PathBuf, PathBuf, PathBuf)>,
    /// Control-plane replicas tried after the first one.
    pub more_control_planes: Vec<String>,
    /// The tenants and event-type prefixes it emits for (default: all).
    pub interest: herald_core::interest::Interest,
    /// A CA (PEM) to trust, written into the agent's directory (in place of `ca_file`): the test
    /// CA of the receivers, without a directory of the test's own.
    pub trusted_ca: Option<String>,
    /// The HTTP proxy deliveries leave through (default none).
    pub egress_proxy: Option<String>,
    /// Whether emitted payloads are checked against their type's schema (default yes).
    pub check_schemas: Option<bool>,
    /// How often the Emit API pings its connections (default the agent's).
    pub keepalive_interval: Option<Duration>,
    /// The largest payload Emit takes (default the agent's, 256 KiB).
    pub max_payload_bytes: Option<usize>,
    /// The bytes of Emit requests it holds at once (default the agent's, 4 MiB).
    pub max_emit_bytes_in_flight: Option<usize>,
    /// How long its report stream stays open with nothing to report (default the agent's).
    pub report_stream_idle: Option<Duration>,
}

/// An agent running in-process.
pub struct Agent {
    url: String,
    config: herald_agent::Config,
    /// The port, kept while paused so a restart finds it free.
    port: HeldPort,
    stop: CancellationToken,
    task: Option<JoinHandle<Result<(), herald_agent::Error>>>,
    _dir: TempDir,
}

impl Agent {
    /// Starts an agent on a free port, connected to `control_plane`.
    pub async fn start(control_plane: &str, options: AgentOptions) -> anyhow::Result<Self> {
        init_logs();
        let dir = tempfile::tempdir()?;
        let port = HeldPort::new()?;
        let listener = port.listen().await?;
        let addr = port.addr();
        let ca_file = match &options.trusted_ca {
            Some(pem) => {
                let path = dir.path().join("trusted-ca.pem");
                std::fs::write(&path, pem)?;
                Some(path)
            }
            None => options.ca_file,
        };
        let config = herald_agent::Config {
            control_plane: std::iter::once(control_plane.to_owned())
                .chain(options.more_control_planes)
                .collect(),
            control_plane_token: options
                .control_plane_token
                .as_deref()
                .map(herald_proto::bearer::Bearer::parse)
                .transpose()?,
            region: options.region.unwrap_or_else(|| "test".into()),
            node: "test-node".into(),
            tenants: options.interest.tenants,
            event_type_prefixes: options.interest.event_type_prefixes,
            ca_file,
            allow_targets: options.allow_targets.unwrap_or_else(loopback),
            egress_proxy: options
                .egress_proxy
                .as_deref()
                .map(herald_core::egress::ProxyUrl::parse)
                .transpose()?,
            max_in_flight: options.max_in_flight.unwrap_or(256),
            dedup_window: Duration::from_secs(3600),
            retention: Duration::from_secs(3600),
            max_queue_events: options.max_queue_events.unwrap_or(1_000_000),
            max_queue_share: options.max_queue_share.unwrap_or(0.5),
            max_parked_deliveries: options.max_parked_deliveries.unwrap_or(100_000),
            shutdown_grace: GRACE,
            emit_access: herald_agent::emit_access::EmitAccess {
                emit_token: options.emit_token,
                emit_tokens_file: options.emit_tokens_file,
                ..Default::default()
            },
            metrics_listen: options.metrics_listen,
            control_plane_ca_file: options.control_plane_tls.as_ref().map(|t| t.0.clone()),
            control_plane_cert_file: options.control_plane_tls.as_ref().map(|t| t.1.clone()),
            control_plane_key_file: options.control_plane_tls.as_ref().map(|t| t.2.clone()),
            check_schemas: options.check_schemas.unwrap_or(true),
            keepalive_interval: options
                .keepalive_interval
                .unwrap_or(herald_core::keepalive::DEFAULT_INTERVAL),
            queue_min_free_bytes: options
                .queue_min_free_bytes
                .unwrap_or(herald_agent::queue::DEFAULT_MIN_FREE_BYTES),
            max_payload_bytes: options
                .max_payload_bytes
                .unwrap_or(herald_core::limits::DEFAULT_MAX_PAYLOAD_BYTES),
            max_emit_bytes_in_flight: options
                .max_emit_bytes_in_flight
                .unwrap_or(herald_agent::DEFAULT_MAX_EMIT_BYTES_IN_FLIGHT),
            report_stream_idle: options
                .report_stream_idle
                .unwrap_or(Duration::from_secs(30)),
            ..herald_agent::Config::new(
                control_plane,
                ListenAddr::Tcp(addr),
                options.data_dir.unwrap_or_else(|| dir.path().to_owned()),
            )
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(herald_agent::run(
            config.clone(),
            Listener::Tcp(listener),
            stop.clone().cancelled_owned(),
        ));
        Ok(Agent {
            url: format!("http://{addr}"),
            config,
            port,
            stop,
            task: Some(task),
            _dir: dir,
        })
    }

    /// The agent's data directory (queue, config cache, id).
    pub fn data_dir(&self) -> &std::path::Path {
        &self.config.data_dir
    }

    /// Stops gracefully, keeping the address and data, for [`Agent::resume`].
    pub async fn pause(&mut self) -> anyhow::Result<()> {
        self.stop.cancel();
        join(self.task.take()).await
    }

    /// Starts again on the same address and data after [`Agent::pause`].
    pub async fn resume(&mut self) -> anyhow::Result<()> {
        let listener = self.port.listen().await?;
        self.stop = CancellationToken::new();
        self.task = Some(tokio::spawn(herald_agent::run(
            self.config.clone(),
            Listener::Tcp(listener),
            self.stop.clone().cancelled_owned(),
        )));
        Ok(())
    }

    /// The gRPC URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The gRPC address.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.port.addr()
    }

    /// An `Events` client.
    pub async fn events(&self) -> anyhow::Result<EventsClient<Channel>> {
        Ok(EventsClient::new(connect(&self.url).await?))
    }

    /// Emits one event, retrying while the agent has no config yet (it answers UNAVAILABLE).
    pub async fn emit(&self, event: pb::Event) -> anyhow::Result<pb::EmitResponse> {
        let client = self.events().await?;
        crate::eventually(
            Duration::from_secs(10),
            "the agent to accept events",
            || {
                let mut client = client.clone();
                let event = event.clone();
                async move {
                    match client.emit(pb::EmitRequest { event: Some(event) }).await {
                        Ok(response) => Ok(Some(response.into_inner())),
                        Err(status) if status.code() == tonic::Code::Unavailable => Ok(None),
                        Err(status) => Err(status.into()),
                    }
                }
            },
        )
        .await
    }

    /// The agent's id, from the `agent-id` file it writes as it starts.
    pub async fn id(&self) -> anyhow::Result<String> {
        let path = self.config.data_dir.join("agent-id");
        crate::eventually(Duration::from_secs(10), "the agent to write its id", || {
            let path = path.clone();
            async move {
                match tokio::fs::read_to_string(&path).await {
                    Ok(id) if !id.trim().is_empty() => Ok(Some(id.trim().to_owned())),
                    Ok(_) => Ok(None),
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(err) => Err(err.into()),
                }
            }
        })
        .await
    }

    /// Waits until this agent is connected to `control_plane` and has applied at least
    /// `revision`: [`ControlPlane::wait_applied`] looks only at agents already connected, which
    /// an agent started a moment ago may not be yet.
    pub async fn wait_applied(
        &self,
        control_plane: &ControlPlane,
        revision: i64,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let id = self.id().await?;
        crate::eventually(
            timeout,
            &format!("agent {id} to apply revision {revision}"),
            || async {
                let agents = control_plane.list_agents().await?;
                Ok(agents
                    .iter()
                    .any(|a| a.id == id && a.connected && a.applied_revision >= revision)
                    .then_some(()))
            },
        )
        .await
    }

    /// Stops gracefully and reports how the agent ended.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.stop.cancel();
        join(self.task.take()).await
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The loopback ranges, which the harness's receivers listen on.
pub fn loopback() -> Vec<ipnet::IpNet> {
    herald_core::target::parse_allowlist("127.0.0.0/8,::1").expect("valid ranges")
}

/// A gRPC channel to `url`.
pub async fn connect(url: &str) -> anyhow::Result<Channel> {
    tonic::transport::Endpoint::from_shared(url.to_owned())?
        .connect()
        .await
        .with_context(|| format!("connecting to {url}"))
}

/// The gRPC status an error of a helper above carries.
pub fn status_of(err: &anyhow::Error) -> anyhow::Result<&tonic::Status> {
    err.downcast_ref::<tonic::Status>()
        .ok_or_else(|| anyhow::anyhow!("not a gRPC status: {err:#}"))
}

/// The gRPC health of `service` (`""`: the server as a whole) at `url`.
pub async fn serving_status(
    url: &str,
    service: &str,
) -> anyhow::Result<tonic_health::pb::health_check_response::ServingStatus> {
    let mut health = tonic_health::pb::health_client::HealthClient::new(connect(url).await?);
    let answer = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.into(),
        })
        .await?
        .into_inner();
    Ok(answer.status())
}

/// Connects to `url` over TLS with `tls`.
pub async fn connect_tls(
    url: &str,
    tls: tonic::transport::ClientTlsConfig,
) -> anyhow::Result<Channel> {
    tonic::transport::Endpoint::from_shared(url.to_owned())?
        .tls_config(tls)?
        .connect()
        .await
        .with_context(|| format!("connecting to {url}"))
}

async fn join<E: std::error::Error + Send + Sync + 'static>(
    task: Option<JoinHandle<Result<(), E>>>,
) -> anyhow::Result<()> {
    let Some(task) = task else { return Ok(()) };
    match tokio::time::timeout(GRACE * 2, task).await {
        Err(_) => anyhow::bail!("server did not stop within {:?}", GRACE * 2),
        Ok(Err(join)) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
        Ok(Err(join)) => Err(join.into()),
        Ok(Ok(result)) => result.map_err(Into::into),
    }
}

/// Logs from servers in tests, filtered by `RUST_LOG` (default: warnings), shown by the test
/// runner for failing tests.
fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// The filter of every logged attempt to one subscription.
pub fn attempts_of(subscription_id: &str) -> pb::AttemptFilter {
    pb::AttemptFilter {
        subscription_id: subscription_id.to_owned(),
        ..Default::default()
    }
}

/// Sends `batch` on a new report stream, as an agent reports attempts, and waits (up to
/// 10 s) for the control plane's ack; the stream stays open until then.
pub async fn report(
    client: &mut herald_proto::v1::agent_control_client::AgentControlClient<AuthedChannel>,
    batch: pb::ReportBatch,
) -> anyhow::Result<pb::ReportAck> {
    let mut acks = client
        .report_attempts(tokio_stream::StreamExt::chain(
            tokio_stream::iter([batch]),
            tokio_stream::pending(),
        ))
        .await?
        .into_inner();
    tokio::time::timeout(Duration::from_secs(10), acks.message())
        .await
        .context("no ack within 10 s")??
        .context("the report stream ended without an ack")
}

/// A subscription request: `tenant` receives `events` at `url`.
pub fn subscription(tenant: &str, url: &str, events: &[&str]) -> pb::Subscription {
    pb::Subscription {
        tenant: tenant.into(),
        url: url.into(),
        event_types: events.iter().map(|e| e.to_string()).collect(),
        ..Default::default()
    }
}

/// An event of `tenant` and `event_type` with a JSON payload.
pub fn event(tenant: &str, event_type: &str, payload: &serde_json::Value) -> pb::Event {
    pb::Event {
        tenant: tenant.into(),
        r#type: event_type.into(),
        payload: payload.to_string().into_bytes(),
        ..Default::default()
    }
}
