//! Whether the delivery log's store answers, as health checks and metrics show it: probed
//! every [`PROBE_EVERY`]; while it does not answer, the gRPC health of [`LOG_SERVICE`] and of
//! `herald.v1.Deliveries` (whose every call needs the log) is `NOT_SERVING`, and
//! `herald_delivery_log_up` is 0. The other services keep serving: config streams and
//! subscription changes do not need the log, and agents keep their reports until it is back.

use std::time::Duration;

use herald_proto::v1::deliveries_server::DeliveriesServer;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::attempts::AttemptLog;
use crate::grpc::DeliveriesService;
use crate::metrics::Metrics;

/// The health-check name of the delivery log itself.
pub const LOG_SERVICE: &str = "herald.DeliveryLog";
/// How often the log is probed.
const PROBE_EVERY: Duration = Duration::from_secs(2);

/// Probes `log` until `stop`, keeping `reporter` and `metrics` up to date.
pub async fn watch(
    log: AttemptLog,
    reporter: HealthReporter,
    metrics: Metrics,
    stop: CancellationToken,
) {
    let mut up = None;
    loop {
        let answered = tokio::select! {
            () = stop.cancelled() => return,
            result = tokio::time::timeout(PROBE_EVERY, log.ping()) => match result {
                Ok(Ok(())) => Ok(()),
                Ok(Err(err)) => Err(err.to_string()),
                Err(_) => Err(format!("no answer within {PROBE_EVERY:?}")),
            },
        };
        let now_up = answered.is_ok();
        if up != Some(now_up) {
            match &answered {
                Ok(()) if up.is_some() => tracing::info!("delivery log answers again"),
                Ok(()) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "delivery log does not answer: report batches wait in the agents' outboxes")
                }
            }
            let status = if now_up {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            reporter.set_service_status(LOG_SERVICE, status).await;
            reporter
                .set_service_status(
                    <DeliveriesServer<DeliveriesService> as tonic::server::NamedService>::NAME,
                    status,
                )
                .await;
            metrics.log_up(now_up);
            up = Some(now_up);
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(PROBE_EVERY) => {}
        }
    }
}
