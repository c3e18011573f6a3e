//! Whether the control plane's stores answer, as health checks and metrics show it. Each is
//! probed every [`PROBE_EVERY`]:
//!
//! - the delivery log: while it does not answer, the gRPC health of [`LOG_SERVICE`] and of
//!   `herald.v1.Deliveries` (whose every call needs the log) is `NOT_SERVING`, and
//!   `herald_delivery_log_up` is 0. Config streams and subscription changes do not need the
//!   log, and agents keep their reports until it is back.
//! - the config store (etcd, or the embedded store): while it does not answer,
//!   [`CONFIG_STORE_SERVICE`], `herald.v1.Subscriptions`, `herald.v1.EventTypes` and
//!   `herald.v1.Agents` (which lists every replica's agents from the store) are
//!   `NOT_SERVING`, and `herald_config_store_up` is 0. Agents keep delivering on the config
//!   they hold, and the delivery log keeps taking their reports.

use std::future::Future;
use std::time::Duration;

use herald_proto::v1::agents_server::AgentsServer;
use herald_proto::v1::deliveries_server::DeliveriesServer;
use herald_proto::v1::event_types_server::EventTypesServer;
use herald_proto::v1::subscriptions_server::SubscriptionsServer;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::attempts::AttemptLog;
use crate::grpc::{AgentsService, DeliveriesService, EventTypesService, SubscriptionsService};
use crate::keys;
use crate::metrics::Metrics;
use crate::store::Store;

/// The health-check name of the delivery log itself.
pub const LOG_SERVICE: &str = "herald.DeliveryLog";
/// The health-check name of the config store itself.
pub const CONFIG_STORE_SERVICE: &str = "herald.ConfigStore";
/// The health-check names of the stores themselves.
pub const STORE_SERVICES: [&str; 2] = [LOG_SERVICE, CONFIG_STORE_SERVICE];
/// How often each store is probed.
const PROBE_EVERY: Duration = Duration::from_secs(2);

/// Probes `log` and `store` until `stop`, keeping `reporter` and `metrics` up to date.
pub async fn watch(
    log: AttemptLog,
    store: Store,
    reporter: HealthReporter,
    metrics: Metrics,
    stop: CancellationToken,
) {
    let log_metrics = metrics.clone();
    let log_probe = probe(
        Probed {
            what: "delivery log",
            meanwhile: "report batches wait in the agents' outboxes",
            services: &[LOG_SERVICE, DeliveriesServer::<DeliveriesService>::NAME],
        },
        || {
            let log = log.clone();
            async move { log.ping().await.map_err(|err| err.to_string()) }
        },
        move |up| log_metrics.log_up(up),
        reporter.clone(),
        stop.clone(),
    );
    let config_probe = probe(
        Probed {
            what: "config store",
            meanwhile: "subscriptions cannot be changed; agents deliver on the config they hold",
            services: &[
                CONFIG_STORE_SERVICE,
                SubscriptionsServer::<SubscriptionsService>::NAME,
                EventTypesServer::<EventTypesService>::NAME,
                AgentsServer::<AgentsService>::NAME,
            ],
        },
        || {
            let store = store.clone();
            async move {
                store
                    .get(keys::OPERATOR_EVENT_KEY)
                    .await
                    .map(drop)
                    .map_err(|err| err.to_string())
            }
        },
        move |up| metrics.config_store_up(up),
        reporter,
        stop,
    );
    futures_util::future::join(log_probe, config_probe).await;
}

/// What a probe reports on.
struct Probed {
    /// The store, as the log names it.
    what: &'static str,
    /// What happens while it does not answer.
    meanwhile: &'static str,
    /// The health-check names that follow it.
    services: &'static [&'static str],
}

/// Calls `ping` every [`PROBE_EVERY`] until `stop`; when the answer changes, sets the
/// services of `probed` and tells `set_up`.
async fn probe<P, F>(
    probed: Probed,
    ping: P,
    set_up: impl Fn(bool),
    reporter: HealthReporter,
    stop: CancellationToken,
) where
    P: Fn() -> F,
    F: Future<Output = Result<(), String>>,
{
    let mut up = None;
    loop {
        let answered = tokio::select! {
            () = stop.cancelled() => return,
            result = tokio::time::timeout(PROBE_EVERY, ping()) => match result {
                Ok(answer) => answer,
                Err(_) => Err(format!("no answer within {PROBE_EVERY:?}")),
            },
        };
        let now_up = answered.is_ok();
        if up != Some(now_up) {
            match &answered {
                Ok(()) if up.is_some() => tracing::info!(store = probed.what, "answers again"),
                Ok(()) => {}
                Err(err) => {
                    tracing::warn!(store = probed.what, error = %err, meanwhile = probed.meanwhile, "does not answer")
                }
            }
            let status = if now_up {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            for service in probed.services {
                reporter.set_service_status(*service, status).await;
            }
            set_up(now_up);
            up = Some(now_up);
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(PROBE_EVERY) => {}
        }
    }
}
