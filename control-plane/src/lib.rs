//! Herald's control plane: stores subscriptions in the config store (etcd, or an embedded
//! file), streams them to agents, stores every delivery attempt the agents report, and serves
//! the operator API (`herald.v1.Subscriptions`, `Deliveries`, `Agents`).
//!
//! [`run`] is the whole server; `main` only parses [`Config`] and calls it, so tests and
//! `herald dev` run the real thing in-process on a listener of their choosing.

pub mod access;
pub mod agent_trust;
pub mod attempts;
pub mod audit;
pub mod auth;
pub mod client_certs;
pub mod console_sessions;
pub mod event_types;
pub mod fleet;
pub mod follow;
pub mod grpc;
pub mod health;
pub mod hub;
pub mod keyring_check;
pub mod keys;
pub mod metrics;
pub mod operator_events;
pub mod page_tokens;
pub mod portal_links;
pub mod presence;
pub mod recent;
pub mod redb_file;
pub mod relay;
pub mod replay;
pub mod rest;
pub mod run_to_end;
pub mod schema_feed;
pub mod sealed_token;
pub mod sealing;
pub mod server_tls;
pub mod store;
pub mod store_health;
pub mod subscriptions;
pub mod test_send;
pub mod web;

use herald_core::limits::DEFAULT_LOG_BODY_LIMIT;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use herald_proto::request_budget::RequestBudget;
use herald_proto::v1::agent_control_server::AgentControlServer;
use herald_proto::v1::agents_server::AgentsServer;
use herald_proto::v1::audit_server::AuditServer;
use herald_proto::v1::deliveries_server::DeliveriesServer;
use herald_proto::v1::event_types_server::EventTypesServer;
use herald_proto::v1::portal_server::PortalServer;
use herald_proto::v1::subscriptions_server::SubscriptionsServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::attempts::{AttemptLog, LogError};
use crate::auth::{AuthError, AuthLayer, Authenticator, TokenSource};
use crate::fleet::Fleet;
use crate::health::Health;
use crate::hub::ConfigHub;
use crate::sealing::{KeyringSource, SealingError};
use crate::store::{Store, StoreError};
use crate::subscriptions::Subscriptions;

/// The default gRPC listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7700";

/// Control-plane settings; every flag is also an environment variable.
#[derive(Clone, Debug, clap::Args)]
pub struct Config {
    /// Address of the gRPC API (operators and agents).
    #[arg(long, env = "HERALD_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// etcd endpoints, comma-separated; without them the embedded store in --data-dir is used.
    #[arg(long, env = "HERALD_ETCD", value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// How to authenticate to etcd.
    #[command(flatten)]
    pub etcd_auth: store::EtcdAuth,
    /// Directory for the delivery log (and the embedded config store).
    #[arg(
        long,
        env = "HERALD_DATA_DIR",
        default_value = "herald-data/control-plane"
    )]
    pub data_dir: PathBuf,
    /// Accept http:// subscription URLs (for development and private networks).
    #[arg(long, env = "HERALD_ALLOW_HTTP")]
    pub allow_http: bool,
    /// Address ranges subscriptions may target although special (loopback, private, …),
    /// comma-separated CIDRs.
    #[arg(long, env = "HERALD_ALLOW_TARGETS", value_delimiter = ',', value_parser = herald_core::target::parse_cidr)]
    pub allow_targets: Vec<ipnet::IpNet>,
    /// The most subscriptions one tenant may have; a create past it is refused with
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "HERALD_MAX_SUBSCRIPTIONS_PER_TENANT", default_value_t = subscriptions::DEFAULT_MAX_PER_TENANT, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_subscriptions_per_tenant: u64,
    /// How long shutdown waits for open calls and streams to finish (at most 1 h).
    #[arg(long, env = "HERALD_SHUTDOWN_GRACE", default_value = "30s", value_parser = herald_core::shutdown::parse_grace)]
    pub shutdown_grace: Duration,
    /// How often the gRPC API pings each connection (HTTP/2 PING); one that does not answer
    /// within the same time is closed, so an agent whose host vanished is listed as
    /// disconnected and its streams end (1 s to 10 min).
    #[arg(long, env = "HERALD_KEEPALIVE_INTERVAL", default_value = "20s", value_parser = herald_core::keepalive::parse_interval)]
    pub keepalive_interval: Duration,
    /// Where the delivery log is kept: `embedded` (a file in --data-dir, for one replica) or
    /// `postgres://USER[:PASS]@HOST:PORT/DB`, one database every replica shares.
    #[arg(long, env = "HERALD_LOG_STORE", default_value = "embedded", value_parser = attempts::LogStoreFlag::from_arg, hide_env_values = true, hide_default_value = false)]
    pub log_store: attempts::LogStoreFlag,
    /// How long the delivery log keeps attempts (and the audit log its entries): at least 1 h.
    #[arg(long, env = "HERALD_LOG_RETENTION", default_value = "30days", value_parser = log_retention)]
    pub log_retention: Duration,
    /// How long one operation on a PostgreSQL delivery log (a report batch stored, a page
    /// listed) may take before the database counts as not answering: the call is then
    /// UNAVAILABLE (agents send their reports again) and the pool's idle connections are
    /// closed (1 s to 10 min).
    #[arg(long, env = "HERALD_LOG_ANSWER_TIMEOUT", default_value = "30s", value_parser = log_answer_timeout)]
    pub log_answer_timeout: Duration,
    /// The page cache of the embedded delivery log, in bytes: memory the control plane keeps
    /// for the log's recent pages, however large the log grows.
    #[arg(long, env = "HERALD_LOG_CACHE_BYTES", default_value_t = attempts::embedded::DEFAULT_CACHE_BYTES)]
    pub log_cache_bytes: usize,
    /// The most attempts the delivery log keeps; the oldest go first.
    #[arg(long, env = "HERALD_LOG_MAX_ATTEMPTS", default_value_t = 100_000_000)]
    pub log_max_attempts: u64,
    /// The most bytes of each delivery's request body the log keeps, with its headers
    /// (signatures and credentials masked): `herald deliveries get EVENT --show-body`. 0
    /// keeps none (agents then report none).
    #[arg(long, env = "HERALD_LOG_BODY_LIMIT", default_value_t = DEFAULT_LOG_BODY_LIMIT, value_parser = herald_core::limits::parse_log_body_limit)]
    pub log_body_limit: usize,
    /// The most bytes of agents' attempt reports read and held at once, across every report
    /// stream. A report batch beyond it waits for room while HTTP/2 flow control holds its
    /// bytes back on the agent, so agents reconnecting together with full batches cannot grow
    /// the replica's memory without bound.
    #[arg(long, env = "HERALD_MAX_REPORT_BYTES_IN_FLIGHT", default_value_t = DEFAULT_MAX_REPORT_BYTES_IN_FLIGHT, value_parser = parse_report_budget)]
    pub max_report_bytes_in_flight: usize,
    /// The HTTP/2 window of each gRPC call: what a client may send ahead of being read. It
    /// bounds what a report stream waiting for room holds here, and how fast one streams: a
    /// window per round trip (the default, over 100 ms, is 2.5 MB/s: about 1,000 attempts a
    /// second with 2 KiB bodies kept). Raise it for agents far away (64 KiB to 16 MiB).
    #[arg(long, env = "HERALD_GRPC_STREAM_WINDOW", default_value_t = DEFAULT_GRPC_STREAM_WINDOW, value_parser = parse_stream_window)]
    pub grpc_stream_window: usize,
    /// The keys that seal signing secrets in the config store.
    #[command(flatten)]
    pub secrets: KeyringSource,
    /// The API tokens and their roles.
    #[command(flatten)]
    pub auth: TokenSource,
    /// TLS for the gRPC API (and mutual TLS: agents and operators with certificates).
    #[command(flatten)]
    pub tls: ServerTls,
    /// Address of the Prometheus endpoint (`GET /metrics`); none by default.
    #[arg(long, env = "HERALD_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Address of the HTTP API (REST under /api/v1/, its OpenAPI document at
    /// /api/v1/openapi.json), with the gRPC API's TLS and authentication; none by default.
    #[arg(long, env = "HERALD_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// Where people reach the HTTP listener (e.g. https://herald.example.com), for the links
    /// the control plane hands out (tenant portal links); default: the --http-listen address.
    #[arg(long, env = "HERALD_PUBLIC_URL", value_parser = public_url)]
    pub public_url: Option<String>,
    /// How the tenant portal looks and where it may be embedded.
    #[command(flatten)]
    pub portal: web::portal::Branding,
    /// Address of a plain-text gRPC endpoint serving only health checks (grpc.health.v1), for
    /// probes that do not speak TLS (kubelet's); none by default.
    #[arg(long, env = "HERALD_HEALTH_LISTEN")]
    pub health_listen: Option<SocketAddr>,
    /// Check subscriptions against the event-type registry (while it holds any type): on
    /// (refuse a pattern no registered type matches), advisory (log it, refuse nothing) or off.
    #[arg(long, env = "HERALD_EVENT_TYPE_REGISTRY", value_enum, default_value_t = event_types::RegistryMode::On)]
    pub event_type_registry: event_types::RegistryMode,
    /// The tenant of operator events (herald.subscription.disabled, …).
    #[arg(long, env = "HERALD_SYSTEM_TENANT", default_value = operator_events::DEFAULT_SYSTEM_TENANT, value_parser = system_tenant)]
    pub system_tenant: String,
    /// This replica's name in the agents list (default: the host name and the API port):
    /// letters, digits, `.`, `_`, `-` and `:`.
    #[arg(long, env = "HERALD_REPLICA_NAME", value_parser = replica_name)]
    pub replica_name: Option<String>,
}

/// `--public-url`: an http:// or https:// URL, kept without a trailing slash.
pub fn public_url(text: &str) -> Result<String, String> {
    match url::Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") => {
            Ok(text.trim_end_matches('/').to_owned())
        }
        _ => Err("expected an http:// or https:// URL".into()),
    }
}

fn system_tenant(text: &str) -> Result<String, String> {
    herald_core::validate::tenant(text).map_err(|e| e.to_string())?;
    Ok(text.to_owned())
}

/// TLS of the gRPC API.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ServerTls {
    /// Certificate (PEM) the API presents; with --tls-key-file, the API speaks TLS only.
    #[arg(long, env = "HERALD_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, env = "HERALD_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,
    /// CA (PEM) whose client certificates are required of every caller (mutual TLS): agents
    /// and operators without one get nothing.
    #[arg(long, env = "HERALD_TLS_CLIENT_CA_FILE", requires = "tls_cert_file")]
    pub tls_client_ca_file: Option<PathBuf>,
}

impl ServerTls {
    /// The files, when TLS is configured.
    fn files(&self) -> Option<server_tls::TlsFiles> {
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => Some(server_tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.tls_client_ca_file.clone(),
            }),
            _ => None,
        }
    }
}

impl Config {
    /// The etcd endpoints given, trimmed; `HERALD_ETCD=` (empty) means none, as leaving it
    /// out does: the embedded store.
    pub fn etcd_endpoints(&self) -> Vec<String> {
        self.etcd
            .iter()
            .map(|e| e.trim().to_owned())
            .filter(|e| !e.is_empty())
            .collect()
    }

    /// The defaults of every flag (as `--help` shows them), listening on `listen` with the
    /// delivery log (and the embedded store) in `data_dir`: what in-process users (`herald
    /// dev`, tests, benchmarks) start from before changing what they need.
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Self {
        Config {
            listen,
            etcd: vec![],
            etcd_auth: store::EtcdAuth::default(),
            data_dir,
            allow_http: false,
            allow_targets: vec![],
            max_subscriptions_per_tenant: subscriptions::DEFAULT_MAX_PER_TENANT,
            shutdown_grace: Duration::from_secs(30),
            keepalive_interval: herald_core::keepalive::DEFAULT_INTERVAL,
            log_store: attempts::LogStoreFlag::new("embedded"),
            log_retention: DEFAULT_LOG_RETENTION,
            log_max_attempts: DEFAULT_LOG_MAX_ATTEMPTS,
            log_cache_bytes: attempts::embedded::DEFAULT_CACHE_BYTES,
            log_answer_timeout: attempts::postgres::DEFAULT_ANSWER_TIMEOUT,
            log_body_limit: DEFAULT_LOG_BODY_LIMIT,
            max_report_bytes_in_flight: DEFAULT_MAX_REPORT_BYTES_IN_FLIGHT,
            grpc_stream_window: DEFAULT_GRPC_STREAM_WINDOW,
            secrets: KeyringSource::default(),
            auth: TokenSource::default(),
            tls: ServerTls::default(),
            metrics_listen: None,
            health_listen: None,
            http_listen: None,
            public_url: None,
            portal: web::portal::Branding::default(),
            event_type_registry: event_types::RegistryMode::On,
            system_tenant: operator_events::DEFAULT_SYSTEM_TENANT.into(),
            replica_name: None,
        }
    }
}

/// How long the delivery log keeps attempts by default: 30 days.
pub const DEFAULT_LOG_RETENTION: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// The most attempts the delivery log keeps by default.
pub const DEFAULT_LOG_MAX_ATTEMPTS: u64 = 100_000_000;
/// The default `--max-report-bytes-in-flight`: 64 of the largest report batches an agent sends
/// (512 KiB), 16 of the largest message the server reads. A decoded batch takes a few times
/// its bytes on the wire while it is stored.
pub const DEFAULT_MAX_REPORT_BYTES_IN_FLIGHT: usize = 32 << 20;
/// The default `--grpc-stream-window`.
pub const DEFAULT_GRPC_STREAM_WINDOW: usize = 256 << 10;

/// Parses `--max-report-bytes-in-flight`: 64 KiB to 4 GiB (less one byte).
fn parse_report_budget(text: &str) -> Result<usize, String> {
    herald_core::limits::parse_bytes_in(text, 64 << 10..=u32::MAX as usize)
}

/// The HTTP/2 window of `--grpc-stream-window` (clamped to its range, for in-process
/// configs that skip the parser).
fn stream_window(bytes: usize) -> u32 {
    u32::try_from(bytes.clamp(64 << 10, 16 << 20)).unwrap_or(16 << 20)
}

/// Parses `--grpc-stream-window`: 64 KiB (HTTP/2's own default) to 16 MiB.
fn parse_stream_window(text: &str) -> Result<usize, String> {
    herald_core::limits::parse_bytes_in(text, 64 << 10..=16 << 20)
}

/// How often the delivery log is swept for attempts past retention.
const LOG_SWEEP_EVERY: Duration = Duration::from_secs(60);

/// How often the creates' idempotency-key records past their 24 hours are swept.
const CREATE_KEY_SWEEP_EVERY: Duration = Duration::from_secs(3600);

/// Why the control plane stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config store could not be opened.
    #[error("config store: {0}")]
    Store(#[from] StoreError),
    /// etcd did not answer at start (exit code 1: a service manager starts the replica again,
    /// and it answers once etcd does).
    #[error(
        "config store: etcd at {endpoints} does not answer ({source}): is it running, and reachable from here?"
    )]
    EtcdUnreachable {
        /// The endpoints tried, comma-separated.
        endpoints: String,
        /// What the client library said.
        #[source]
        source: StoreError,
    },
    /// The delivery log could not be opened.
    #[error(transparent)]
    Log(#[from] LogError),
    /// `--log-store` names no usable store.
    #[error("log-store is not usable: {0}")]
    LogStore(String),
    /// The gRPC server failed.
    #[error("grpc server: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// The HTTP API could not listen.
    #[error("http-listen={addr}: {source}")]
    HttpListen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The health endpoint could not listen.
    #[error("health-listen={addr}: {source}")]
    HealthListen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The metrics endpoint could not listen.
    #[error("metrics-listen={addr}: {source}")]
    Metrics {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS files could not be used.
    #[error(transparent)]
    Tls(#[from] server_tls::TlsError),
    /// The API tokens could not be loaded.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The keyring that seals signing secrets could not be loaded.
    #[error(transparent)]
    Keyring(#[from] SealingError),
    /// Records could not be resealed with the current key.
    #[error("resealing signing secrets: {0}")]
    Reseal(#[from] crate::subscriptions::SubscriptionError),
    /// The keyring is not the one that sealed the store's records (a configuration error:
    /// exit 64).
    #[error(transparent)]
    KeyringCheck(#[from] keyring_check::KeyringCheckError),
    /// The reflection service could not be built from the API's descriptors.
    #[error("grpc reflection: {0}")]
    Reflection(#[from] herald_proto::discovery::ReflectionError),
}

impl Error {
    /// Whether the error is a setting that cannot be used (a listen address, a TLS file, the
    /// tokens or keyring, a database that refuses the login): the start fails the way a bad
    /// flag does (exit code 64), since starting again unchanged fails again.
    pub fn is_setting(&self) -> bool {
        match self {
            Error::LogStore(_)
            | Error::HttpListen { .. }
            | Error::HealthListen { .. }
            | Error::Metrics { .. }
            | Error::Tls(_)
            | Error::Auth(_)
            | Error::Log(LogError::Refused(_)) => true,
            // A key file that cannot be written (a full or failing disk) may be written later.
            Error::Keyring(sealing) => !matches!(sealing, SealingError::Io { .. }),
            // A store that does not answer the check now may answer it later.
            Error::KeyringCheck(check) => {
                !matches!(check, keyring_check::KeyringCheckError::Store(_))
            }
            Error::Store(_)
            | Error::EtcdUnreachable { .. }
            | Error::Log(_)
            | Error::Serve(_)
            | Error::Reseal(_)
            | Error::Reflection(_) => false,
        }
    }
}

/// Opens the stores and serves on `listener` until `shutdown` completes, then drains open
/// calls and streams for at most the configured grace period.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    let tokens = config.auth.load()?;
    let certificates = config.auth.load_identities()?;
    if certificates.is_some() && config.tls.tls_client_ca_file.is_none() {
        return Err(Error::Auth(AuthError::IdentitiesNeedClientCa));
    }
    let authenticator = Authenticator::new(tokens.clone(), certificates);
    match &tokens {
        Some(tokens) => tracing::info!(?tokens, "API calls need a bearer token"),
        None => tracing::warn!(
            "no --auth-tokens: the API is open to anyone who can reach {}",
            config.listen
        ),
    }
    let keyring = Arc::new(config.secrets.load(&config.data_dir)?);
    let etcd = config.etcd_endpoints();
    let store = if etcd.is_empty() {
        let dir = config.data_dir.join("config");
        tracing::info!(dir = %dir.display(), "using the embedded config store (no --etcd given)");
        Store::embedded(&dir).await?
    } else {
        tracing::info!(endpoints = ?etcd, "using etcd");
        Store::etcd_with(&etcd, &config.etcd_auth)
            .await
            .map_err(|source| Error::EtcdUnreachable {
                endpoints: etcd.join(","),
                source,
            })?
    };
    let checked = keyring_check::verify(&store, &keyring).await?;
    if !checked.foreign.is_empty() {
        tracing::warn!(
            key_ids = ?checked.foreign,
            "the config store holds keyring check values of keys this control plane lacks: \
             records sealed with them would not open here (a key rotation that has not \
             reached every replica?)"
        );
    }
    let log_store = config.log_store.parse().map_err(Error::LogStore)?;
    let log = attempts::open(attempts::OpenLog {
        url: &log_store,
        data_dir: &config.data_dir,
        retention: config.log_retention,
        cache_bytes: config.log_cache_bytes,
        answer_timeout: config.log_answer_timeout,
    })
    .await?;
    tracing::info!(store = %log_store, "delivery log opened");
    if !etcd.is_empty() && log_store == attempts::LogStoreUrl::Embedded {
        tracing::warn!(
            "the delivery log is embedded in this replica: other replicas on the same etcd keep \
             logs and endpoint health of their own; run several replicas with \
             --log-store postgres://…"
        );
    }
    let stop = CancellationToken::new();
    // A start that fails after this point (a listener that cannot bind, unusable TLS files)
    // returns early: the work already spawned stops with it.
    let _stop_on_return = stop.clone().drop_guard();
    // The replica's background work (the log's sweep, watches, relays, side listeners):
    // stopped by `stop`, and drained with the calls at shutdown, within the grace period.
    let background = TaskTracker::new();
    // Calls that change something finish when their callers give up ([`run_to_end`]).
    let run_to_end = run_to_end::RunToEndLayer::new(&background);
    background.spawn(sweep_log(
        log.clone(),
        config.log_retention,
        config.log_max_attempts,
        stop.clone(),
    ));
    let hub = ConfigHub::start(store.clone(), keyring.clone(), stop.clone(), &background);
    let schemas = schema_feed::SchemaFeed::start(store.clone(), stop.clone(), &background);
    let replica = config
        .replica_name
        .clone()
        .unwrap_or_else(|| format!("{}:{}", host_name(), config.listen.port()));
    let fleet = Fleet::new(&replica);
    background.spawn(presence::run(store.clone(), fleet.clone(), stop.clone()));
    let relay = relay::Relay::new(store.clone(), fleet.clone(), &replica);
    background.spawn(relay.clone().serve(stop.clone()));

    let policy =
        herald_core::target::TargetPolicy::new(config.allow_http, config.allow_targets.clone());
    let registry = Subscriptions::new(store.clone(), policy, keyring.clone())
        .with_max_per_tenant(config.max_subscriptions_per_tenant);
    background.spawn(sweep_create_keys(registry.clone(), stop.clone()));
    let upgraded = registry
        .upgrade_all(&config.system_tenant)
        .await
        .map_err(|err| match err {
            subscriptions::SubscriptionError::Sealing { id, source } => {
                Error::KeyringCheck(keyring_check::KeyringCheckError::Unreadable {
                    record: format!("subscription {id}"),
                    source,
                })
            }
            other => Error::Reseal(other),
        })?;
    if upgraded > 0 {
        tracing::info!(
            upgraded,
            key_id = keyring.sealing_key_id(),
            "stored subscriptions brought up to date (sealing key, envelope)"
        );
    }
    let metrics = metrics::Metrics::default();
    let event_types = event_types::EventTypes::new(store.clone(), config.event_type_registry);
    let event_ids = operator_events::IdKey::load(&store, &keyring).await?;
    // Its drain first moves what waits in the config store into the log's outbox.
    let events = operator_events::OperatorEvents::new(
        log.clone(),
        store.clone(),
        fleet.clone(),
        &config.system_tenant,
        event_ids,
    );
    background.spawn(events.clone().run(stop.clone()));
    background.spawn(client_certs::watch(
        registry.clone(),
        store.clone(),
        events.clone(),
        stop.clone(),
    ));
    let presence_store = store.clone();
    let recorder = audit::Recorder::new(log.clone(), metrics.clone());
    let health = Health::new(
        log.clone(),
        registry.clone(),
        hub.clone(),
        metrics.clone(),
        events,
        recorder.clone(),
    );
    background.spawn(health.clone().run(stop.clone()));
    let report_budget = RequestBudget::new(config.max_report_bytes_in_flight);
    if let Some(addr) = config.metrics_listen {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Metrics { addr, source })?;
        tracing::info!(%addr, "serving metrics");
        let (hub, fleet, metrics) = (hub.clone(), fleet.clone(), metrics.clone());
        let reports = report_budget.clone();
        let render = move || {
            let unopened = hub.unreadable();
            metrics.render(fleet.streams(), hub.revision(), unopened.as_ref(), &reports)
        };
        let shutdown = stop.clone().cancelled_owned();
        background.spawn(async move {
            if let Err(err) = herald_core::metrics::serve(listener, render, shutdown).await {
                tracing::warn!(error = %err, "metrics endpoint failed");
            }
        });
    }
    // Standard health checks (NOT_SERVING once draining) and reflection beside the API.
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<SubscriptionsServer<grpc::SubscriptionsService>>()
        .await;
    health_reporter
        .set_serving::<DeliveriesServer<grpc::DeliveriesService>>()
        .await;
    health_reporter
        .set_serving::<AgentsServer<grpc::AgentsService>>()
        .await;
    health_reporter
        .set_serving::<AuditServer<grpc::AuditService>>()
        .await;
    health_reporter
        .set_serving::<PortalServer<grpc::PortalService>>()
        .await;
    health_reporter
        .set_serving::<EventTypesServer<grpc::EventTypesService>>()
        .await;
    health_reporter
        .set_serving::<AgentControlServer<grpc::AgentControlService>>()
        .await;
    // The log and the config store answered as they opened: so they say from the first call
    // on, until the watch's probes tell otherwise.
    for store_service in store_health::STORE_SERVICES {
        health_reporter
            .set_service_status(store_service, tonic_health::ServingStatus::Serving)
            .await;
    }
    let log_watch_stop = CancellationToken::new();
    let _log_watch_stop_on_return = log_watch_stop.clone().drop_guard();
    let log_watch = tokio::spawn(store_health::watch(
        log.clone(),
        store.clone(),
        health_reporter.clone(),
        metrics.clone(),
        log_watch_stop.clone(),
    ));
    if let Some(addr) = config.health_listen {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::HealthListen { addr, source })?;
        tracing::info!(%addr, "serving health checks in plain text");
        let health = tonic::transport::Server::builder()
            .max_concurrent_streams(herald_proto::MAX_STREAMS_PER_CONNECTION)
            .add_service(health_service.clone())
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                stop.clone().cancelled_owned(),
            );
        background.spawn(async move {
            if let Err(err) = health.await {
                tracing::warn!(error = %err, "health endpoint failed");
            }
        });
    }
    let reflection = [tonic_health::pb::FILE_DESCRIPTOR_SET];
    // Clients that compress their requests (grpc-java's and grpc-go's gzip, say) are read;
    // a message is still held to its limit once decompressed. Agents' own calls
    // (AgentControl) are not compressed, and their report budget counts bytes as sent.
    const GZIP: tonic::codec::CompressionEncoding = tonic::codec::CompressionEncoding::Gzip;
    // What reflection lists: this server's services, and nothing of the agent's.
    const SERVED: [&str; 8] = [
        tonic_health::pb::health_server::SERVICE_NAME,
        herald_proto::v1::subscriptions_server::SERVICE_NAME,
        herald_proto::v1::event_types_server::SERVICE_NAME,
        herald_proto::v1::deliveries_server::SERVICE_NAME,
        herald_proto::v1::audit_server::SERVICE_NAME,
        herald_proto::v1::agents_server::SERVICE_NAME,
        herald_proto::v1::portal_server::SERVICE_NAME,
        herald_proto::v1::agent_control_server::SERVICE_NAME,
    ];
    let tls = match config.tls.files() {
        Some(files) => {
            let tls = server_tls::ReloadingTls::load(files)?;
            background.spawn(tls.clone().follow(stop.clone()));
            tracing::info!(
                mutual = config.tls.tls_client_ca_file.is_some(),
                "the API speaks TLS (certificates reloaded when their files change)"
            );
            Some(tls)
        }
        None => None,
    };
    // Shared by the gRPC server and the HTTP API.
    let subscriptions_service = Arc::new(grpc::SubscriptionsService::new(
        registry.clone(),
        health.clone(),
        log.clone(),
        event_types.clone(),
        test_send::Testers {
            fleet: fleet.clone(),
            relay: relay.clone(),
            log_body_limit: config.log_body_limit,
            system_tenant: config.system_tenant.clone(),
        },
        recorder.clone(),
    ));
    let page_tokens = page_tokens::PageTokens::new(keyring.clone());
    let audit_service = Arc::new(grpc::AuditService::new(log.clone(), page_tokens.clone()));
    let event_types_service = Arc::new(grpc::EventTypesService::new(event_types, recorder.clone()));
    let deliveries_service = Arc::new(grpc::DeliveriesService::new(
        log.clone(),
        hub.clone(),
        fleet.clone(),
        relay,
        recorder.clone(),
        grpc::Streams::new(stop.clone(), &background),
        metrics.clone(),
        page_tokens,
    ));
    // Where people reach the web pages, for the links handed out.
    let public_url = config.http_listen.map(|addr| {
        config.public_url.clone().unwrap_or_else(|| {
            let scheme = if tls.is_some() { "https" } else { "http" };
            format!("{scheme}://{addr}")
        })
    });
    let portal_service = Arc::new(grpc::PortalService::new(
        keyring.clone(),
        public_url.clone(),
        portal_links::PortalLinks::new(store.clone()),
        recorder.clone(),
    ));
    let agents_service = Arc::new(grpc::AgentsService::new(
        fleet.clone(),
        hub.clone(),
        presence_store,
    ));
    let http = match config.http_listen {
        None => None,
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| Error::HttpListen { addr, source })?;
            let services = rest::Services {
                subscriptions: subscriptions_service.clone(),
                event_types: event_types_service.clone(),
                deliveries: deliveries_service.clone(),
                audit: audit_service.clone(),
                agents: agents_service.clone(),
                portal: portal_service.clone(),
            };
            let pages = web::router(web::WebState::new(
                services.clone(),
                authenticator.clone(),
                keyring.clone(),
                console_sessions::ConsoleSessions::new(store.clone()),
                web::WebSettings {
                    // Behind a TLS-terminating proxy the pages are https too.
                    secure_cookies: tls.is_some()
                        || public_url
                            .as_deref()
                            .is_some_and(|url| url.starts_with("https://")),
                    portal: config.portal.clone(),
                },
            ));
            let (api, _) = rest::api(services, authenticator.clone());
            let site = Arc::new(rest::hosts::Site::new(
                config.public_url.as_deref(),
                !authenticator.is_open(),
            ));
            let api = pages
                .merge(api)
                .fallback(web::not_found)
                .layer(run_to_end.clone())
                .layer(axum::middleware::from_fn(move |request, next| {
                    rest::hosts::guard(site.clone(), request, next)
                }))
                .layer(axum::middleware::from_fn(rest::refuse_grpc));
            tracing::info!(%addr, tls = tls.is_some(), "serving the HTTP API");
            Some(match &tls {
                Some(tls) => {
                    let incoming =
                        tls.incoming(listener, &[b"h2", b"http/1.1"], stop.clone(), &background)?;
                    tokio::spawn(rest::serve(api, incoming, stop.clone()))
                }
                None => tokio::spawn(rest::serve(
                    api,
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                    stop.clone(),
                )),
            })
        }
    };
    let router = tonic::transport::Server::builder()
        // A peer that stops answering (its host gone without closing the connection) is cut
        // off: its streams end, and its agent is listed as disconnected.
        .http2_keepalive_interval(Some(config.keepalive_interval))
        .http2_keepalive_timeout(Some(config.keepalive_interval))
        .max_concurrent_streams(herald_proto::MAX_STREAMS_PER_CONNECTION)
        .initial_stream_window_size(stream_window(config.grpc_stream_window))
        // Room for a few calls' windows: a report stream waiting for room in the budget
        // leaves the agent's other calls on the connection room to go on.
        .initial_connection_window_size(stream_window(config.grpc_stream_window).saturating_mul(4))
        // A call past its deadline is DEADLINE_EXCEEDED (tonic's own answer is CANCELLED).
        .layer(herald_proto::deadline::DeadlineLayer)
        // A message over the limit is RESOURCE_EXHAUSTED, as gRPC's status table says.
        .layer(herald_proto::message_limit::layer(
            herald_proto::message_limit::DEFAULT_MAX_MESSAGE_BYTES,
        ))
        .layer(AuthLayer::new(authenticator.clone()))
        // Each report batch is read only once its bytes fit the budget of reports in flight.
        .layer(report_budget.per_message_layer(grpc::BUDGETED_ROUTES, grpc::BATCH_ARRIVAL))
        .add_service(health_service)
        .add_service(herald_proto::discovery::reflection_v1(
            &reflection,
            &SERVED,
        )?)
        .add_service(herald_proto::discovery::reflection_v1alpha(
            &reflection,
            &SERVED,
        )?)
        // The services that change something: a change whose caller gives up half-way is still
        // made whole, its audit entry too.
        .add_service(
            run_to_end
                .wrap(SubscriptionsServer::from_arc(subscriptions_service).accept_compressed(GZIP)),
        )
        .add_service(
            run_to_end
                .wrap(EventTypesServer::from_arc(event_types_service).accept_compressed(GZIP)),
        )
        .add_service(
            run_to_end.wrap(DeliveriesServer::from_arc(deliveries_service).accept_compressed(GZIP)),
        )
        .add_service(AuditServer::from_arc(audit_service).accept_compressed(GZIP))
        .add_service(AgentsServer::from_arc(agents_service).accept_compressed(GZIP))
        .add_service(
            run_to_end.wrap(PortalServer::from_arc(portal_service).accept_compressed(GZIP)),
        )
        .add_service(AgentControlServer::new(grpc::AgentControlService::new(
            grpc::ConfigFeeds {
                hub,
                schemas,
                log_body_limit: config.log_body_limit as u32,
            },
            registry,
            fleet,
            log,
            health,
            metrics,
            grpc::Streams::new(stop.clone(), &background),
        )));
    let server: std::pin::Pin<
        Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>,
    > = match &tls {
        Some(tls) => Box::pin(router.serve_with_incoming_shutdown(
            tls.incoming(listener, &[b"h2"], stop.clone(), &background)?,
            stop.clone().cancelled_owned(),
        )),
        None => Box::pin(router.serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            stop.clone().cancelled_owned(),
        )),
    };
    tracing::info!(addr = %config.listen, "control plane serving");
    herald_core::daemon::notify_ready();

    tokio::pin!(server);
    // A server that fails (its listener broke) stops the replica as a signal would, through
    // the same drain, and the failure is returned at the end.
    let failed = tokio::select! {
        result = &mut server => Some(result),
        () = shutdown => None,
    };
    if let Some(Err(err)) = &failed {
        tracing::error!(error = %err, "the gRPC server failed; stopping");
    }
    tracing::info!("shutting down: draining calls and streams");
    herald_core::daemon::notify_stopping();
    log_watch_stop.cancel();
    let _ = log_watch.await;
    for store_service in store_health::STORE_SERVICES {
        health_reporter
            .set_service_status(store_service, tonic_health::ServingStatus::NotServing)
            .await;
    }
    health_reporter
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    health_reporter
        .set_not_serving::<SubscriptionsServer<grpc::SubscriptionsService>>()
        .await;
    health_reporter
        .set_not_serving::<DeliveriesServer<grpc::DeliveriesService>>()
        .await;
    health_reporter
        .set_not_serving::<AgentsServer<grpc::AgentsService>>()
        .await;
    health_reporter
        .set_not_serving::<AuditServer<grpc::AuditService>>()
        .await;
    health_reporter
        .set_not_serving::<EventTypesServer<grpc::EventTypesService>>()
        .await;
    health_reporter
        .set_not_serving::<AgentControlServer<grpc::AgentControlService>>()
        .await;
    stop.cancel();
    let drained = async {
        let served = match failed {
            None => server.await,
            Some(_) => Ok(()),
        };
        if let Some(http) = http {
            let _ = http.await;
        }
        background.close();
        background.wait().await;
        served
    };
    match tokio::time::timeout(config.shutdown_grace, drained).await {
        Ok(result) => result?,
        Err(_) => tracing::warn!(grace = ?config.shutdown_grace, "grace period over; closing"),
    }
    match failed {
        Some(Err(err)) => Err(err.into()),
        _ => Ok(()),
    }
}

/// The shortest `--log-retention`: less would empty the logs (the audit log included) at the
/// first sweep, which is never what an operator means.
const MIN_LOG_RETENTION: Duration = Duration::from_secs(3600);

/// A `--log-answer-timeout`: a duration of 1 s to 10 min.
fn log_answer_timeout(text: &str) -> Result<Duration, String> {
    let limit = herald_core::duration::parse(text)?;
    if !(Duration::from_secs(1)..=Duration::from_secs(600)).contains(&limit) {
        return Err(format!("{text:?} is not between 1s and 10m"));
    }
    Ok(limit)
}

/// A `--log-retention`: a duration of at least [`MIN_LOG_RETENTION`].
fn log_retention(text: &str) -> Result<Duration, String> {
    let retention = herald_core::duration::parse(text)?;
    if retention < MIN_LOG_RETENTION {
        return Err(format!("{text:?} is shorter than the least allowed, 1h"));
    }
    Ok(retention)
}

/// A replica name: part of the keys of the orders relayed to it, so no `/`.
fn replica_name(text: &str) -> Result<String, String> {
    let fits = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':');
    if text.is_empty() || text.len() > 128 || !text.chars().all(fits) {
        return Err("use 1 to 128 letters, digits, '.', '_', '-' or ':'".into());
    }
    Ok(text.to_owned())
}

/// The machine's name: `$HOSTNAME` (a pod's name in Kubernetes), else the kernel's.
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "control-plane".to_owned())
}

/// Sweeps the delivery log every [`LOG_SWEEP_EVERY`] until `stop`.
async fn sweep_log(
    log: AttemptLog,
    retention: Duration,
    max_attempts: u64,
    stop: CancellationToken,
) {
    loop {
        match log.sweep(retention, max_attempts).await {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, "delivery log: attempts past retention removed"),
            Err(err) => tracing::error!(error = %err, "delivery log sweep failed"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(LOG_SWEEP_EVERY) => {}
        }
    }
}

/// Sweeps the creates' idempotency-key records past their time, now and every hour, until
/// `stop` (every replica does; a record is removed once, whoever comes first).
async fn sweep_create_keys(registry: Subscriptions, stop: CancellationToken) {
    loop {
        match registry
            .sweep_create_keys(std::time::SystemTime::now())
            .await
        {
            Ok(0) => {}
            Ok(removed) => {
                tracing::debug!(removed, "create idempotency keys past 24 hours removed")
            }
            Err(err) => tracing::warn!(error = %err, "sweeping create idempotency keys failed"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(CREATE_KEY_SWEEP_EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_holds_the_flags_defaults() {
        use clap::{Args as _, FromArgMatches as _};
        let command = Config::augment_args(clap::Command::new("control-plane"));
        let matches = command
            .try_get_matches_from([
                "control-plane",
                "--listen",
                "127.0.0.1:7700",
                "--data-dir",
                "/d",
            ])
            .expect("parses");
        let parsed = Config::from_arg_matches(&matches).expect("a config");
        let made = Config::new("127.0.0.1:7700".parse().expect("an address"), "/d".into());
        assert_eq!(format!("{parsed:?}"), format!("{made:?}"));
    }

    #[test]
    fn the_report_budget_and_stream_window_are_bytes_within_their_ranges() {
        assert_eq!(
            parse_report_budget("33554432"),
            Ok(DEFAULT_MAX_REPORT_BYTES_IN_FLIGHT)
        );
        assert_eq!(parse_report_budget("4294967295"), Ok(4_294_967_295));
        assert_eq!(
            parse_stream_window("262144"),
            Ok(DEFAULT_GRPC_STREAM_WINDOW)
        );
        assert_eq!(parse_stream_window("16777216"), Ok(16 << 20));
        for refused in ["65535", "4294967296", "0", "32MiB", "-1", ""] {
            assert!(parse_report_budget(refused).is_err(), "{refused:?}");
        }
        for refused in ["65535", "16777217", "256KiB"] {
            assert!(parse_stream_window(refused).is_err(), "{refused:?}");
        }
        // What an in-process config sets past the range is held to it.
        assert_eq!(stream_window(0), 64 << 10);
        assert_eq!(stream_window(usize::MAX), 16 << 20);
    }
}
