//! Herald's agent: runs beside the services that emit events, accepts them over gRPC
//! (`herald.v1.Events`), and delivers each to every subscribed URL, signed, with retries,
//! reporting every attempt to the control plane. Subscriptions arrive over the config stream
//! from the control plane.
//!
//! [`run`] is the whole agent; `main` only parses [`Config`] and calls it.

pub mod agent_id;
pub mod backoff;
pub mod config_cache;
pub mod config_watch;
pub mod control_plane;
pub mod delivery;
pub mod emit;
pub mod emit_access;
pub mod listen;
pub mod metrics;
pub mod opening;
pub mod queue;
pub mod reporter;
pub mod routes;
pub mod schemas;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use herald_core::egress::ProxyUrl;
use herald_core::limits::DEFAULT_MAX_PAYLOAD_BYTES;
use herald_core::target::TargetPolicy;
use herald_proto::request_budget::{self, RequestBudget};
use herald_proto::v1::events_server::EventsServer;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config_watch::Identity;
use crate::control_plane::ControlPlane;
use crate::delivery::{Dispatcher, DispatcherParts};
use crate::emit::EmitService;
use crate::listen::{ListenAddr, Listener};
use crate::metrics::Metrics;
use crate::queue::{Queue, QueueConfig};

/// The default `Emit` listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7701";
/// The default `--max-pending-report-bytes`: an outage of the control plane fills at most
/// this much of the agent's disk with reports (half of it with copies of requests).
pub const DEFAULT_MAX_PENDING_REPORT_BYTES: u64 = 512 << 20;
/// The default `--max-emit-bytes-in-flight`: room for one request of the largest size gRPC
/// allows by default, or hundreds of ordinary ones. A decoded request takes a few times its
/// bytes on the wire; with 4 MiB a burst of large batches was also answered sooner than with
/// 16 MiB or none (BENCHMARKS.md).
pub const DEFAULT_MAX_EMIT_BYTES_IN_FLIGHT: usize = 4 << 20;
/// The least `--max-emit-bytes-in-flight`.
const MIN_EMIT_BYTES_IN_FLIGHT: usize = 64 << 10;

/// Parses `--max-emit-bytes-in-flight`: 64 KiB to 4 GiB (less one byte).
fn parse_emit_budget(text: &str) -> Result<usize, String> {
    herald_core::limits::parse_bytes_in(text, MIN_EMIT_BYTES_IN_FLIGHT..=u32::MAX as usize)
}

/// Parses `--report-stream-idle`: a duration of 1 s to 1 h.
fn parse_report_stream_idle(text: &str) -> Result<Duration, String> {
    let idle = herald_core::duration::parse(text)?;
    if (Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&idle) {
        Ok(idle)
    } else {
        Err("must be 1s to 1h".into())
    }
}

/// Agent settings; every flag is also an environment variable.
#[derive(Clone, Debug, clap::Args)]
pub struct Config {
    /// Control-plane URLs, comma-separated; tried in turn.
    #[arg(
        long = "control-plane",
        env = "HERALD_CONTROL_PLANE",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:7700"
    )]
    pub control_plane: Vec<String>,
    /// Token the agent presents to the control plane (a token of role `agent`), when the
    /// control plane checks tokens.
    #[arg(long, env = "HERALD_CONTROL_PLANE_TOKEN", hide_env_values = true, value_parser = herald_proto::bearer::Bearer::parser())]
    pub control_plane_token: Option<herald_proto::bearer::Bearer>,
    /// Send the control-plane token over plain http:// to hosts other than this one's
    /// loopback (refused by default: use https:// and --control-plane-ca-file).
    #[arg(long, env = "HERALD_ALLOW_INSECURE_CONTROL_PLANE")]
    pub allow_insecure_control_plane: bool,
    /// CA (PEM) of the control plane's certificate; turns on TLS to it (https:// URLs).
    #[arg(long, env = "HERALD_CONTROL_PLANE_CA_FILE")]
    pub control_plane_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for a control plane that requires mutual TLS.
    #[arg(
        long,
        env = "HERALD_CONTROL_PLANE_CERT_FILE",
        requires = "control_plane_key_file"
    )]
    pub control_plane_cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        long,
        env = "HERALD_CONTROL_PLANE_KEY_FILE",
        requires = "control_plane_cert_file"
    )]
    pub control_plane_key_file: Option<PathBuf>,
    /// Where applications reach Emit: host:port or unix:/path.
    #[arg(long, env = "HERALD_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: ListenAddr,
    /// Directory for the agent's state: its id, the durable queue, the config cache.
    #[arg(long, env = "HERALD_DATA_DIR", default_value = "herald-data/agent")]
    pub data_dir: PathBuf,
    /// Agent id; by default one is made on first start and kept in --data-dir.
    #[arg(long, env = "HERALD_AGENT_ID", value_parser = agent_id_arg)]
    pub id: Option<String>,
    /// The region this agent runs in (`[A-Za-z0-9_.-]`, as subscriptions name regions).
    #[arg(long, env = "HERALD_REGION", default_value = "default", value_parser = region_arg)]
    pub region: String,
    /// The node this agent runs on.
    #[arg(long, env = "HERALD_NODE", default_value = "local", value_parser = node_arg)]
    pub node: String,
    /// Tenants this agent emits for, comma-separated (default: all). It receives only their
    /// subscriptions and refuses other tenants' events with FAILED_PRECONDITION.
    #[arg(long, env = "HERALD_TENANTS", value_delimiter = ',', value_parser = tenant)]
    pub tenants: Vec<String>,
    /// The tenant of Herald's operator events (the control plane's --system-tenant): Emit into
    /// it is refused with PERMISSION_DENIED.
    #[arg(long, env = "HERALD_SYSTEM_TENANT", default_value = herald_core::validate::DEFAULT_SYSTEM_TENANT, value_parser = tenant)]
    pub system_tenant: String,
    /// Event-type prefixes this agent emits, comma-separated, e.g. `order.,invoice.` (default:
    /// all). It receives only subscriptions that can match them and refuses other events.
    #[arg(long, env = "HERALD_EVENT_TYPE_PREFIXES", value_delimiter = ',', value_parser = event_type_prefix)]
    pub event_type_prefixes: Vec<String>,
    /// Extra trust roots (PEM) for receivers' certificates.
    #[arg(long, env = "HERALD_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// The HTTP proxy deliveries leave through, `http://[user:password@]host:port`, for
    /// receivers that accept traffic only from known addresses. The agent still resolves and
    /// checks each receiver itself and asks the proxy to CONNECT to the checked address. A
    /// subscription may pick its own proxy or none.
    #[arg(long, env = "HERALD_EGRESS_PROXY", hide_env_values = true, value_parser = egress_proxy)]
    pub egress_proxy: Option<ProxyUrl>,
    /// Deliver to http:// URLs too (development only).
    #[arg(long, env = "HERALD_ALLOW_HTTP")]
    pub allow_http: bool,
    /// Address ranges deliveries may reach although special (loopback, private, …),
    /// comma-separated CIDRs.
    #[arg(long, env = "HERALD_ALLOW_TARGETS", value_delimiter = ',', value_parser = herald_core::target::parse_cidr)]
    pub allow_targets: Vec<ipnet::IpNet>,
    /// The largest event payload accepted, in bytes.
    #[arg(long, env = "HERALD_MAX_PAYLOAD_BYTES", default_value_t = DEFAULT_MAX_PAYLOAD_BYTES, value_parser = herald_core::limits::parse_payload_limit)]
    pub max_payload_bytes: usize,
    /// The most bytes of `Emit` and `EmitBatch` requests read and held at once; callers beyond
    /// it wait for room (HTTP/2 flow control holds their bytes back), so a burst of large
    /// concurrent calls cannot grow the agent's memory without bound.
    #[arg(long, env = "HERALD_MAX_EMIT_BYTES_IN_FLIGHT", default_value_t = DEFAULT_MAX_EMIT_BYTES_IN_FLIGHT, value_parser = parse_emit_budget)]
    pub max_emit_bytes_in_flight: usize,
    /// Attempts in flight at once, across all subscriptions (0 pauses delivery).
    #[arg(long, env = "HERALD_MAX_IN_FLIGHT", default_value_t = 1024)]
    pub max_in_flight: usize,
    /// How long an event id is remembered to drop duplicates.
    #[arg(long, env = "HERALD_DEDUP_WINDOW", default_value = "24h", value_parser = herald_core::duration::parse)]
    pub dedup_window: Duration,
    /// How long accepted events are kept (for replay), delivered or not.
    #[arg(long, env = "HERALD_RETENTION", default_value = "72h", value_parser = herald_core::duration::parse)]
    pub retention: Duration,
    /// The most events with deliveries still to make (parked ones included); past it Emit
    /// answers RESOURCE_EXHAUSTED. Delivered events kept for replay do not count.
    #[arg(long, env = "HERALD_MAX_QUEUE_EVENTS", default_value_t = 1_000_000)]
    pub max_queue_events: u64,
    /// The most payload bytes of events with deliveries still to make; past it Emit answers
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "HERALD_MAX_QUEUE_BYTES", default_value_t = 1 << 30)]
    pub max_queue_bytes: u64,
    /// The share (0 to 1) of --max-queue-events and --max-queue-bytes one tenant may hold, so
    /// that one noisy application does not have every other tenant refused.
    #[arg(long, env = "HERALD_MAX_QUEUE_SHARE", default_value_t = 0.5, value_parser = share)]
    pub max_queue_share: f64,
    /// The most payload bytes of delivered events kept (for replay and to recognise
    /// duplicates); past it the oldest go before their retention, never refusing an event.
    #[arg(long, env = "HERALD_MAX_RETAINED_BYTES", default_value_t = 1 << 30)]
    pub max_retained_bytes: u64,
    /// The free bytes the queue keeps on its disk: below them Emit answers RESOURCE_EXHAUSTED
    /// (disk full) and health is NOT_SERVING, before a write can fail half-way; both recover
    /// by themselves once space is back.
    #[arg(long, env = "HERALD_QUEUE_MIN_FREE_BYTES", default_value_t = queue::DEFAULT_MIN_FREE_BYTES)]
    pub queue_min_free_bytes: u64,
    /// Start even when the queue's write-ahead log holds a damaged record that was synced:
    /// keep what precedes it and drop the records after it (logged at ERROR with how many).
    /// Without it the agent refuses to start (exit code 65), naming the offset.
    #[arg(long, env = "HERALD_RECOVER_TRUNCATE")]
    pub recover_truncate: bool,
    /// The most attempt reports waiting for the control plane's acknowledgement (it is
    /// unreachable); past it Emit answers RESOURCE_EXHAUSTED for events with deliveries.
    #[arg(long, env = "HERALD_MAX_PENDING_REPORTS", default_value_t = 1_000_000)]
    pub max_pending_reports: u64,
    /// The most bytes of attempt reports waiting for the control plane's acknowledgement;
    /// past it Emit answers RESOURCE_EXHAUSTED for events with deliveries. Past half of it,
    /// reports leave out the copy of the request they sent (--log-body-limit), counted in
    /// herald_reports_requests_dropped; the attempts are always reported.
    #[arg(long, env = "HERALD_MAX_PENDING_REPORT_BYTES", default_value_t = DEFAULT_MAX_PENDING_REPORT_BYTES)]
    pub max_pending_report_bytes: u64,
    /// The most deliveries kept parked for one disabled subscription; past it, an event's
    /// delivery to that subscription is not kept (logged centrally as skipped, counted in
    /// herald_queue_parked_deliveries_dropped). Its other deliveries go on.
    #[arg(long, env = "HERALD_MAX_PARKED_DELIVERIES", default_value_t = 100_000)]
    pub max_parked_deliveries: u64,
    /// The queue file's page cache in bytes: the pages read most (lanes' heads, recent
    /// events, the outbox) stay in memory. More helps a large backlog; the OS's page cache
    /// holds the rest of the file either way.
    #[arg(long, env = "HERALD_QUEUE_CACHE_BYTES", default_value_t = queue::DEFAULT_CACHE_BYTES)]
    pub queue_cache_bytes: usize,
    /// Fsync every queue commit before answering Emit. Off risks losing acknowledged events
    /// on a power loss (not on a process crash); for benchmarks and throwaway setups.
    #[arg(long, env = "HERALD_FSYNC", default_value_t = true, action = clap::ArgAction::Set)]
    pub fsync: bool,
    /// Check each emitted payload against its event type's JSON Schema in the catalogue and
    /// refuse one that fails (`INVALID_ARGUMENT` naming the JSON path). Off: payloads go
    /// unchecked, and the control plane sends this agent no schemas.
    #[arg(long, env = "HERALD_CHECK_SCHEMAS", default_value_t = true, action = clap::ArgAction::Set)]
    pub check_schemas: bool,
    /// How long the report stream to the control plane stays open with nothing to report
    /// (1 s to 1 h); the next report opens it again. A replica keeps a read buffer for each
    /// open report stream, so idle agents then cost it nothing.
    #[arg(long, env = "HERALD_REPORT_STREAM_IDLE", default_value = "30s", value_parser = parse_report_stream_idle)]
    pub report_stream_idle: Duration,
    /// How long shutdown waits for attempts in flight and report flushing (at most 1 h).
    #[arg(long, env = "HERALD_SHUTDOWN_GRACE", default_value = "30s", value_parser = herald_core::shutdown::parse_grace)]
    pub shutdown_grace: Duration,
    /// How often the Emit API pings each connection (HTTP/2 PING); one that does not answer
    /// within the same time is closed, so an application whose host or pod vanished does not
    /// hold its connection open for good (1 s to 10 min).
    #[arg(long, env = "HERALD_KEEPALIVE_INTERVAL", default_value = "20s", value_parser = herald_core::keepalive::parse_interval)]
    pub keepalive_interval: Duration,
    /// Who may call Emit.
    #[command(flatten)]
    pub emit_access: emit_access::EmitAccess,
    /// Address of the Prometheus endpoint (`GET /metrics`); none by default.
    #[arg(long, env = "HERALD_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
}

impl Config {
    /// The defaults of every flag (as `--help` shows them), for an agent of `control_plane`
    /// listening on `listen` with its state in `data_dir`: what in-process users (`herald
    /// dev`, tests, benchmarks) start from before changing what they need.
    pub fn new(control_plane: &str, listen: ListenAddr, data_dir: PathBuf) -> Self {
        Config {
            control_plane: vec![control_plane.to_owned()],
            control_plane_token: None,
            allow_insecure_control_plane: false,
            control_plane_ca_file: None,
            control_plane_cert_file: None,
            control_plane_key_file: None,
            listen,
            data_dir,
            id: None,
            region: "default".into(),
            node: "local".into(),
            tenants: vec![],
            event_type_prefixes: vec![],
            system_tenant: herald_core::validate::DEFAULT_SYSTEM_TENANT.into(),
            ca_file: None,
            egress_proxy: None,
            allow_http: false,
            allow_targets: vec![],
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            max_emit_bytes_in_flight: DEFAULT_MAX_EMIT_BYTES_IN_FLIGHT,
            report_stream_idle: Duration::from_secs(30),
            max_in_flight: 1024,
            dedup_window: Duration::from_secs(24 * 60 * 60),
            retention: Duration::from_secs(72 * 60 * 60),
            max_queue_events: 1_000_000,
            max_queue_bytes: 1 << 30,
            max_queue_share: 0.5,
            max_retained_bytes: 1 << 30,
            queue_min_free_bytes: queue::DEFAULT_MIN_FREE_BYTES,
            recover_truncate: false,
            max_pending_reports: 1_000_000,
            max_pending_report_bytes: DEFAULT_MAX_PENDING_REPORT_BYTES,
            max_parked_deliveries: 100_000,
            queue_cache_bytes: queue::DEFAULT_CACHE_BYTES,
            fsync: true,
            check_schemas: true,
            shutdown_grace: Duration::from_secs(30),
            keepalive_interval: herald_core::keepalive::DEFAULT_INTERVAL,
            emit_access: emit_access::EmitAccess::default(),
            metrics_listen: None,
        }
    }
}

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The data directory is unusable.
    #[error("data dir {path}: {source}")]
    DataDir {
        /// The directory.
        path: String,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// The data directory's `agent-id` file holds no usable agent id.
    #[error(
        "{path} holds no usable agent id ({reason}): correct it, remove it for a new id, or \
         pass --id"
    )]
    AgentIdFile {
        /// The file.
        path: String,
        /// What is wrong with the id.
        reason: String,
    },
    /// The durable queue could not be opened.
    #[error(transparent)]
    Queue(#[from] queue::QueueError),
    /// The delivery client could not be built.
    #[error(transparent)]
    Client(#[from] delivery::transport::ClientError),
    /// The gRPC server failed.
    #[error("grpc server: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// The metrics endpoint could not listen.
    #[error("metrics-listen={addr}: {source}")]
    Metrics {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The control plane's TLS settings could not be used (a file, or half a setting).
    #[error(transparent)]
    TlsFile(#[from] herald_proto::client_tls::ClientTlsError),
    /// The interest names more tenants and prefixes than the control plane takes.
    #[error(
        "--tenants and --event-type-prefixes name {0} entries together; at most {max}",
        max = herald_core::interest::MAX_INTEREST
    )]
    Interest(usize),
    /// The reflection service could not be built from the API's descriptors.
    #[error("grpc reflection: {0}")]
    Reflection(#[from] herald_proto::discovery::ReflectionError),
    /// A control-plane URL would carry the token in clear (a configuration error).
    #[error(transparent)]
    Transport(#[from] control_plane::TransportError),
    /// The Emit tokens could not be used (a file, a line, the flag).
    #[error(transparent)]
    EmitTokens(#[from] emit_access::EmitTokensError),
}

impl Error {
    /// Whether the error is a setting that cannot be used (a file, an address, a directory):
    /// the start fails the way a bad flag does (exit code 64), since starting again without
    /// changing the configuration fails again.
    pub fn is_setting(&self) -> bool {
        match self {
            // A directory that cannot be made or used is a setting; a disk that is full or
            // failing under it may recover.
            Error::DataDir { source, .. } => !disk_may_recover(source),
            Error::Client(_)
            | Error::AgentIdFile { .. }
            | Error::Metrics { .. }
            | Error::TlsFile(_)
            | Error::Interest(_)
            | Error::Transport(_)
            | Error::EmitTokens(_) => true,
            Error::Queue(err) => matches!(err, queue::QueueError::Unusable(_)),
            Error::Serve(_) | Error::Reflection(_) => false,
        }
    }
}

/// Whether a failed write in the data directory is the disk's (full, over quota, failing),
/// which may pass without a change of settings, rather than the directory's (not one, not
/// writable, on a read-only file system).
pub(crate) fn disk_may_recover(err: &std::io::Error) -> bool {
    herald_core::disk_fault::DiskFault::of_io(err).is_full()
        || matches!(
            err.kind(),
            std::io::ErrorKind::Interrupted
                | std::io::ErrorKind::TimedOut
                | std::io::ErrorKind::Other
        )
        || err.raw_os_error() == Some(rustix::io::Errno::IO.raw_os_error())
}

impl Config {
    /// Checks that no control-plane URL would carry the agent's token in clear.
    pub fn check_control_plane_transport(&self) -> Result<(), control_plane::TransportError> {
        if let Some(token) = self.control_plane_token.as_ref().and_then(|t| t.token()) {
            herald_core::token_file::check_token(token)
                .map_err(|reason| control_plane::TransportError::Token { reason })?;
        }
        control_plane::check_transport(
            &self.control_plane,
            self.control_plane_token.is_some(),
            self.allow_insecure_control_plane,
            self.control_plane_ca_file.is_some() || self.control_plane_cert_file.is_some(),
        )
    }
}

/// Runs the agent on `listener` until `shutdown` completes; then stops accepting events,
/// lets attempts in flight finish and flushes reports, within the grace period.
pub async fn run(
    config: Config,
    listener: Listener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    config.check_control_plane_transport()?;
    let emit_guard = config.emit_access.guard()?;
    // Made first, so that a directory that cannot be made is said as such, id given or not.
    // One that exists is only looked at: making it again writes (`mkdir` waits for a frozen
    // file system to thaw, even for a directory that is there), and the server would not
    // answer until then.
    if !config.data_dir.is_dir() {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| Error::DataDir {
            path: config.data_dir.display().to_string(),
            // "File exists" would say the opposite of what is wrong.
            source: if config.data_dir.exists() {
                std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory")
            } else {
                source
            },
        })?;
    }
    // An empty id (`HERALD_AGENT_ID=`) means none given. A new id is made as the queue is
    // opened, serving meanwhile: writing it waits for a disk with room, as the queue does.
    let kept_id = match config.id.as_deref().map(str::trim) {
        Some(id) if !id.is_empty() => Some(id.to_owned()),
        _ => agent_id::read(&config.data_dir)?,
    };
    let interest = herald_core::interest::Interest {
        tenants: config.tenants.clone(),
        event_type_prefixes: config.event_type_prefixes.clone(),
    };
    let entries = interest.tenants.len() + interest.event_type_prefixes.len();
    if entries > herald_core::interest::MAX_INTEREST {
        return Err(Error::Interest(entries));
    }
    match &kept_id {
        Some(id) => {
            tracing::info!(agent = %id, region = %config.region, listen = %config.listen, "agent starting");
        }
        None => {
            tracing::info!(region = %config.region, listen = %config.listen, "agent starting with a new id");
        }
    }
    // Bound before anything is opened or spawned: a start that fails here leaves nothing behind.
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| Error::Metrics { addr, source })?,
        ),
        None => None,
    };
    let reflection = [tonic_health::pb::FILE_DESCRIPTOR_SET];
    // What this server serves, and nothing of the control plane's.
    let served = [
        herald_proto::v1::events_server::SERVICE_NAME,
        tonic_health::pb::health_server::SERVICE_NAME,
    ];
    let reflection_v1 = herald_proto::discovery::reflection_v1(&reflection, &served)?;
    let reflection_v1alpha = herald_proto::discovery::reflection_v1alpha(&reflection, &served)?;
    let policy = TargetPolicy::new(config.allow_http, config.allow_targets.clone());
    let transport = delivery::transport::Transport::build(
        config.ca_file.as_deref(),
        policy.clone(),
        config.egress_proxy.clone(),
    )?;
    // Read once now, so unusable files fail the start; again at every connection after.
    herald_proto::client_tls::config(
        config.control_plane_ca_file.as_deref(),
        config.control_plane_cert_file.as_deref(),
        config.control_plane_key_file.as_deref(),
    )?;
    let identity = config
        .control_plane_cert_file
        .clone()
        .zip(config.control_plane_key_file.clone());
    let tls = (config.control_plane_ca_file.is_some() || identity.is_some()).then(|| {
        control_plane::TlsPaths {
            ca: config.control_plane_ca_file.clone(),
            identity,
        }
    });
    let queue_config = QueueConfig {
        max_events: config.max_queue_events,
        max_bytes: config.max_queue_bytes,
        max_share: config.max_queue_share,
        max_retained_bytes: config.max_retained_bytes,
        min_free_bytes: config.queue_min_free_bytes,
        recover_truncate: config.recover_truncate,
        max_pending_reports: config.max_pending_reports,
        max_pending_report_bytes: config.max_pending_report_bytes,
        max_parked_deliveries: config.max_parked_deliveries,
        cache_bytes: config.queue_cache_bytes,
        retention: config.retention,
        dedup_window: config.dedup_window,
        durable: config.fsync,
        durable_lag: queue::DURABLE_LAG,
        checkpoint_every: queue::CHECKPOINT_EVERY,
    };
    // gRPC's default 4 MiB message limit would cap larger configured payloads silently.
    let max_message = config
        .max_payload_bytes
        .saturating_add(MESSAGE_OVERHEAD)
        .max(herald_proto::message_limit::DEFAULT_MAX_MESSAGE_BYTES);
    // Cancelled at shutdown: Emit refuses and health says NOT_SERVING while attempts in flight
    // finish; the listener closes after them.
    let draining = CancellationToken::new();
    let emit_budget = RequestBudget::new(config.max_emit_bytes_in_flight);
    // Events is served from the start; until the queue is open its calls are refused with why.
    let events = opening::EventsOnceOpen::default();
    let service = tonic::service::interceptor::InterceptedService::new(events.clone(), emit_guard);
    // Standard health checks (NOT_SERVING until the queue is open, and once draining) and
    // reflection beside Events.
    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, tonic_health::ServingStatus::NotServing).await;
    let metrics = Metrics::default();
    let cached = config_cache::load(&config.data_dir).map(|routes| {
        if config.check_schemas {
            routes
        } else {
            // Saved while checks were on.
            routes.with_schemas(&herald_proto::v1::SchemaUpdate {
                whole: true,
                ..Default::default()
            })
        }
    });
    if let Some(routes) = &cached {
        tracing::info!(
            revision = routes.revision,
            subscriptions = routes.len(),
            "delivering with the cached config until the control plane answers"
        );
    }
    let (routes_tx, routes) = watch::channel(Arc::new(cached.unwrap_or_default()));
    let background = TaskTracker::new();
    let reports_stop = CancellationToken::new();
    // Metrics are served from the start too, those of the queue once it is open.
    let opened: Arc<std::sync::OnceLock<Queue>> = Arc::default();
    if let Some(listener) = metrics_listener {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "serving metrics");
        }
        let (queue, routes, metrics) = (opened.clone(), routes.clone(), metrics.clone());
        let metrics_stop = reports_stop.clone();
        let requests = emit_budget.clone();
        let render = move || metrics.render(queue.get(), &routes.borrow(), &requests);
        background.spawn(async move {
            let shutdown = metrics_stop.cancelled_owned();
            if let Err(err) = herald_core::metrics::serve(listener, render, shutdown).await {
                tracing::warn!(error = %err, "metrics endpoint failed");
            }
        });
    }
    let serving = CancellationToken::new();
    let listening = serving.clone();
    let router = tonic::transport::Server::builder()
        // An application that stops answering (its host gone without closing the connection)
        // is cut off instead of holding a connection for good.
        .http2_keepalive_interval(Some(config.keepalive_interval))
        .http2_keepalive_timeout(Some(config.keepalive_interval))
        // A call past its deadline is DEADLINE_EXCEEDED (tonic's own answer is CANCELLED).
        .layer(herald_proto::deadline::DeadlineLayer)
        // A message over the limit is RESOURCE_EXHAUSTED, as gRPC's status table says.
        .layer(herald_proto::message_limit::layer(max_message))
        // Within it, requests are read only while their bytes fit the budget, and the HTTP/2
        // windows leave room for those being read beside those waiting.
        .layer(emit_budget.layer())
        .max_concurrent_streams(request_budget::MAX_STREAMS_PER_CONNECTION)
        .initial_stream_window_size(request_budget::STREAM_WINDOW)
        .initial_connection_window_size(request_budget::CONNECTION_WINDOW)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(service);
    let server = async move {
        match listener {
            Listener::Tcp(l) => {
                router
                    .serve_with_incoming_shutdown(
                        tonic::transport::server::TcpIncoming::from(l).with_nodelay(Some(true)),
                        listening.cancelled_owned(),
                    )
                    .await
            }
            #[cfg(unix)]
            Listener::Unix(l) => {
                router
                    .serve_with_incoming_shutdown(
                        tokio_stream::wrappers::UnixListenerStream::new(l),
                        listening.cancelled_owned(),
                    )
                    .await
            }
        }
    };
    // Boxed rather than pinned in place, so that it can be dropped (its listener closed) once
    // the drain is over, whether it finished in time or not.
    let mut server = Box::pin(server);
    herald_core::daemon::notify_ready();
    let mut shutdown = std::pin::pin!(shutdown);
    // A directory used before (its config cache is there) that lost its queue file: whatever
    // that file held is gone, which only the operator can know to be expected.
    if !config.data_dir.join("queue.redb").exists() && config_cache::path(&config.data_dir).exists()
    {
        tracing::warn!(
            dir = %config.data_dir.display(),
            "queue.redb is missing from a data dir used before: starting with an empty queue; \
             any events it held are gone"
        );
    }
    // A disk without room to open the queue in is waited for, serving meanwhile.
    let opening = async {
        let id = match kept_id {
            Some(id) => id,
            None => opening::make_agent_id(&config.data_dir, &events).await?,
        };
        let queue = opening::open_queue(&config.data_dir, queue_config, &events).await?;
        Ok::<_, Error>((id, queue))
    };
    let waited = tokio::select! {
        opened = opening => Ok(opened),
        result = &mut server => Err(result.err()),
        () = &mut shutdown => Err(None),
    };
    let (id, queue) = match waited {
        Ok(Ok(opened)) => opened,
        stopped => {
            match &stopped {
                // Said by the caller.
                Ok(Err(_)) => {}
                Err(Some(err)) => tracing::error!(error = %err, "the Emit server failed; stopping"),
                _ => tracing::info!("shutting down before the queue opened"),
            }
            herald_core::daemon::notify_stopping();
            reports_stop.cancel();
            background.close();
            let _ = tokio::time::timeout(BACKGROUND_STOP, background.wait()).await;
            return match stopped {
                Ok(Err(err)) => Err(err),
                Err(Some(err)) => Err(err.into()),
                _ => Ok(()),
            };
        }
    };
    let _ = opened.set(queue.clone());
    let control_plane = ControlPlane::new(
        config.control_plane.clone(),
        config.control_plane_token.clone().unwrap_or_default(),
        tls,
    );
    let stop = CancellationToken::new();
    let identity = Identity {
        id: id.clone(),
        node: config.node.clone(),
        region: config.region.clone(),
        interest: interest.clone(),
        checks_schemas: config.check_schemas,
    };
    let (saved_tx, saved) = watch::channel(routes.borrow().revision);
    background.spawn(config_cache::keep_saved(
        config.data_dir.clone(),
        routes.clone(),
        saved_tx,
    ));
    let reporter = tokio::spawn(reporter::run(
        control_plane.own_turns(),
        id.clone(),
        queue.clone(),
        reports_stop.clone(),
        config.shutdown_grace,
        config.report_stream_idle,
    ));
    background.spawn(sweep(queue.clone(), stop.clone()));
    let dispatcher = Dispatcher::start(
        DispatcherParts {
            transport,
            routes: routes.clone(),
            queue: queue.clone(),
            agent_id: id,
            policy,
            max_in_flight: config.max_in_flight,
            metrics: metrics.clone(),
        },
        stop.clone(),
    );
    let watcher = tokio::spawn(config_watch::run(
        control_plane.own_turns(),
        identity,
        routes_tx,
        saved,
        config_watch::OrderHandlers {
            queue: queue.clone(),
            dispatcher: dispatcher.clone(),
        },
        stop.clone(),
    ));
    events.open(
        EventsServer::new(EmitService::new(
            routes,
            queue.clone(),
            config.max_payload_bytes,
            interest,
            config.system_tenant.clone(),
            metrics,
            draining.clone(),
        ))
        .max_decoding_message_size(max_message)
        // Applications that compress their calls (gzip) are read, each message still held
        // to the limit once decompressed.
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip),
    );
    // Subscribed before the first look: a change after it is still seen by the reporter.
    let mut accepting = queue.accepting();
    let accepting_now = *accepting.borrow_and_update();
    set_health(&health, serving_if(accepting_now)).await;
    background.spawn(report_writable(accepting, health.clone(), draining.clone()));
    // A server that fails (its listener broke) stops the agent as a signal would, through the
    // same drain, and the failure is returned at the end.
    let failed = tokio::select! {
        result = &mut server => Some(result),
        () = &mut shutdown => None,
    };
    if let Some(Err(err)) = &failed {
        tracing::error!(error = %err, "the Emit server failed; stopping");
    }
    tracing::info!("shutting down: no new events; finishing attempts in flight");
    herald_core::daemon::notify_stopping();
    draining.cancel();
    set_health(&health, tonic_health::ServingStatus::NotServing).await;
    stop.cancel();
    let grace = config.shutdown_grace;
    // The listener stays open while attempts finish, so health checks see NOT_SERVING and
    // callers are told the agent is shutting down; then it closes.
    let drained = tokio::time::timeout(grace, async {
        let drain = async {
            dispatcher.drain().await;
            serving.cancel();
        };
        if failed.is_none() {
            // The server keeps answering (health, refusals) while the attempts finish.
            let _ = tokio::join!(drain, &mut server);
        } else {
            drain.await;
        }
    })
    .await;
    serving.cancel();
    // Past the grace period the server is polled no more: closed here, so that callers are
    // refused at once rather than left waiting in the backlog while the rest shuts down.
    drop(server);
    if drained.is_err() {
        tracing::warn!(?grace, "grace period over with attempts still in flight");
    }
    // Bounded: a disk that hangs must not hold the process past its stop timeout.
    match tokio::time::timeout(grace, queue.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::warn!(error = %err, "queue flush failed"),
        Err(_) => tracing::warn!(?grace, "queue flush did not finish in time"),
    }
    reports_stop.cancel();
    let _ = tokio::time::timeout(grace.saturating_add(Duration::from_secs(1)), reporter).await;
    watcher.abort();
    // The config cache's writer, the sweep, the metrics endpoint and the health reporter stop
    // on the signals above (or once the watcher is gone): wait for them, briefly.
    background.close();
    if tokio::time::timeout(BACKGROUND_STOP, background.wait())
        .await
        .is_err()
    {
        tracing::warn!("background tasks still running at exit");
    }
    // A last checkpoint: the next start has no log to replay.
    if tokio::time::timeout(grace, queue.close()).await.is_err() {
        tracing::warn!(
            ?grace,
            "the queue did not close in time; the next start replays its log"
        );
    }
    match failed {
        Some(Err(err)) => Err(err.into()),
        _ => Ok(()),
    }
}

/// How long shutdown waits for the background tasks (cache, sweep, metrics, health) to stop.
const BACKGROUND_STOP: Duration = Duration::from_secs(2);

/// Room in an `Emit` request for the event's fields besides its payload.
const MESSAGE_OVERHEAD: usize = 64 << 10;

/// Shows the queue's disk faults in the health checks: `NOT_SERVING` (the whole agent and
/// `herald.v1.Events`) while the queue takes no new events (it cannot write, or its disk is
/// below the margin), `SERVING` again once it does; until `draining`, when shutdown takes the
/// health checks over.
async fn report_writable(
    mut writable: tokio::sync::watch::Receiver<bool>,
    health: tonic_health::server::HealthReporter,
    draining: CancellationToken,
) {
    loop {
        tokio::select! {
            () = draining.cancelled() => return,
            changed = writable.changed() => if changed.is_err() { return },
        }
        let ok = *writable.borrow_and_update();
        if draining.is_cancelled() {
            return;
        }
        if ok {
            tracing::info!("the queue writes again: serving");
        } else {
            tracing::error!("the queue cannot write (disk full or failing): not serving");
        }
        set_health(&health, serving_if(ok)).await;
    }
}

/// `SERVING` when `ok`, else `NOT_SERVING`.
fn serving_if(ok: bool) -> tonic_health::ServingStatus {
    if ok {
        tonic_health::ServingStatus::Serving
    } else {
        tonic_health::ServingStatus::NotServing
    }
}

/// Sets the health of the whole agent and of `herald.v1.Events`, which always agree.
async fn set_health(
    health: &tonic_health::server::HealthReporter,
    status: tonic_health::ServingStatus,
) {
    health.set_service_status("", status).await;
    health
        .set_service_status(
            <EventsServer<EmitService> as tonic::server::NamedService>::NAME,
            status,
        )
        .await;
}

/// How often events past retention are removed.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Removes events past retention, periodically, until `stop`.
async fn sweep(queue: Queue, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(SWEEP_EVERY) => {}
        }
        match queue.sweep().await {
            Ok(0) => {}
            Ok(removed) => tracing::debug!(removed, "events past retention removed"),
            Err(err) => tracing::warn!(error = %err, "retention sweep failed"),
        }
    }
}

/// `--max-queue-share`: a fraction above 0, at most 1.
fn share(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(share) if share > 0.0 && share <= 1.0 => Ok(share),
        _ => Err("a share of the queue's bounds, above 0 and at most 1 (0.5 is half)".into()),
    }
}

/// An `--egress-proxy` value: an http:// proxy URL.
fn egress_proxy(text: &str) -> Result<ProxyUrl, String> {
    ProxyUrl::parse(text.trim()).map_err(|e| e.to_string())
}

/// A `--tenants` entry: a valid tenant name.
/// `--id`: empty means none given (one is made and kept in the data directory).
fn agent_id_arg(text: &str) -> Result<String, String> {
    let id = text.trim();
    if !id.is_empty() {
        herald_core::validate::agent_id(id).map_err(|e| e.to_string())?;
    }
    Ok(id.to_owned())
}

/// `--region`: named as subscriptions' regions are, so that they can name it.
fn region_arg(text: &str) -> Result<String, String> {
    herald_core::validate::region(text.trim()).map_err(|e| e.to_string())?;
    Ok(text.trim().to_owned())
}

/// `--node`.
fn node_arg(text: &str) -> Result<String, String> {
    herald_core::validate::node(text.trim()).map_err(|e| e.to_string())?;
    Ok(text.trim().to_owned())
}

fn tenant(text: &str) -> Result<String, String> {
    herald_core::validate::tenant(text.trim()).map_err(|e| e.to_string())?;
    Ok(text.trim().to_owned())
}

/// An `--event-type-prefixes` entry: the start of event types, e.g. `order.` or `order.created`.
fn event_type_prefix(text: &str) -> Result<String, String> {
    let prefix = text.trim();
    herald_core::validate::event_type_prefix(prefix).map_err(|e| e.reason)?;
    Ok(prefix.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_emit_budget_is_a_number_of_bytes_within_its_range() {
        assert_eq!(
            parse_emit_budget("4194304"),
            Ok(DEFAULT_MAX_EMIT_BYTES_IN_FLIGHT)
        );
        assert_eq!(parse_emit_budget("65536"), Ok(65536));
        assert_eq!(parse_emit_budget("4294967295"), Ok(4_294_967_295));
        for refused in ["65535", "4294967296", "0", "4MiB", "-1", ""] {
            assert!(parse_emit_budget(refused).is_err(), "{refused:?}");
        }
    }

    #[test]
    fn the_report_stream_idle_is_a_duration_within_its_range() {
        assert_eq!(parse_report_stream_idle("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(
            parse_report_stream_idle("1h"),
            Ok(Duration::from_secs(3600))
        );
        for refused in ["0s", "500ms", "61min", "30", ""] {
            assert!(parse_report_stream_idle(refused).is_err(), "{refused:?}");
        }
    }

    #[test]
    fn new_holds_the_flags_defaults() {
        use clap::{Args as _, FromArgMatches as _};
        let command = Config::augment_args(clap::Command::new("agent"));
        let matches = command
            .try_get_matches_from([
                "agent",
                "--control-plane",
                "http://cp:7700",
                "--listen",
                "127.0.0.1:7701",
                "--data-dir",
                "/d",
            ])
            .expect("parses");
        let parsed = Config::from_arg_matches(&matches).expect("a config");
        let made = Config::new(
            "http://cp:7700",
            "127.0.0.1:7701".parse().expect("an address"),
            "/d".into(),
        );
        assert_eq!(format!("{parsed:?}"), format!("{made:?}"));
    }
}
