//! Keeps the agent's routing table current: one task holds the config stream to the control
//! plane open, applies each update atomically, acks (or nacks, keeping the last good table),
//! and reconnects with backoff and jitter. Everyone else reads the table from a
//! `tokio::sync::watch`. After a reconnect the agent names the revision it last applied from
//! a stream in this process; the control plane answers with the changes since (removals
//! included) when its history still covers them, or with a full snapshot. A config loaded
//! from the on-disk cache is never resumed from: a restarted agent always gets a snapshot, so
//! changes made while it was away — deletions included — are never missed.
//!
//! The stream also brings the event types' schemas (the whole set first, then each change),
//! which replace those in the table without acknowledgement. The same stream carries orders: replays (deliveries to make again) and emits (operator
//! events the control plane raises), which the agent queues, and test-sends, which it makes
//! at once; it answers each with what it did.

use std::sync::Arc;
use std::time::Duration;

use herald_proto::v1 as pb;
use herald_proto::v1::agent_control_client::AgentControlClient;
use herald_proto::v1::config_request::Kind;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::control_plane::ControlPlane;
use crate::delivery::Dispatcher;
use crate::queue::{EventKey, Queue, Replay};
use crate::routes::Routes;
use crate::schemas::SchemaParts;

/// What carries out the orders the stream brings: the queue (replays, emits) and the
/// dispatcher (test attempts).
pub struct OrderHandlers {
    /// Where replays and emitted events are queued.
    pub queue: Queue,
    /// What makes test attempts.
    pub dispatcher: Dispatcher,
}

/// Who this agent is, as told to the control plane.
#[derive(Clone, Debug)]
pub struct Identity {
    /// Agent id.
    pub id: String,
    /// Node name.
    pub node: String,
    /// Region.
    pub region: String,
    /// The tenants and event types it emits for.
    pub interest: herald_core::interest::Interest,
    /// Whether it checks emitted payloads against the event types' schemas (and wants them).
    pub checks_schemas: bool,
}

/// The longest an acknowledgement waits for the config cache to be saved.
const SAVE_WAIT: Duration = Duration::from_secs(5);
/// Test attempts one stream runs at once; more are answered as refused.
const MAX_TESTS: usize = 16;

/// Runs the config stream until `shutdown`.
pub async fn run(
    control_plane: ControlPlane,
    identity: Identity,
    routes: watch::Sender<Arc<Routes>>,
    saved: watch::Receiver<i64>,
    handlers: OrderHandlers,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    // The revision last applied from a stream (0: none yet, so the first stream snapshots).
    let mut resume_from = 0;
    loop {
        let session = follow(
            &control_plane,
            &identity,
            &routes,
            saved.clone(),
            &handlers,
            &mut backoff,
            &mut resume_from,
        );
        let result = tokio::select! {
            () = shutdown.cancelled() => return,
            result = session => result,
        };
        if let Err(err) = result {
            if backoff.should_warn() {
                tracing::warn!(error = %err, "config stream lost; reconnecting");
            } else {
                tracing::debug!(error = %err, "config stream still down; reconnecting");
            }
        }
        let delay = backoff.next_delay();
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// One stream session: hello, then updates until the stream ends.
async fn follow(
    control_plane: &ControlPlane,
    identity: &Identity,
    routes: &watch::Sender<Arc<Routes>>,
    mut saved: watch::Receiver<i64>,
    handlers: &OrderHandlers,
    backoff: &mut Backoff,
    resume_from: &mut i64,
) -> Result<(), String> {
    let (url, channel) = control_plane.connect().await?;
    let (tx, rx) = mpsc::channel(16);
    let hello = pb::AgentHello {
        agent_id: identity.id.clone(),
        node: identity.node.clone(),
        region: identity.region.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        tenants: identity.interest.tenants.clone(),
        event_type_prefixes: identity.interest.event_type_prefixes.clone(),
        last_revision: *resume_from,
        checks_schemas: identity.checks_schemas,
    };
    let send = |kind| pb::ConfigRequest { kind: Some(kind) };
    tx.send(send(Kind::Hello(hello)))
        .await
        .map_err(|_| "config stream closed")?;
    let mut updates = crate::control_plane::opened(
        &url,
        AgentControlClient::new(channel).stream_config(ReceiverStream::new(rx)),
    )
    .await?;
    tracing::info!(control_plane = %url, "config stream open");
    let mut parts = SnapshotParts::default();
    let mut schema_parts = SchemaParts::default();
    // Whether this stream brought schemas before its first config: a control plane that sends
    // none (older than this agent) leaves payloads unchecked rather than checked against
    // schemas it can no longer change.
    let mut schemas_sent = false;
    // Test attempts in flight; ended with the session (their answers would have nowhere to go).
    let mut tests = tokio::task::JoinSet::new();
    loop {
        while tests.try_join_next().is_some() {}
        let update = match updates.message().await {
            Ok(Some(update)) => update,
            Ok(None) => return Err(format!("{url} ended the config stream")),
            Err(status) => return Err(format!("{url}: {}", status.message())),
        };
        let Some(mut update) = parts.add(update)? else {
            continue;
        };
        if let Some(schemas) = update.schemas.take() {
            schemas_sent = true;
            if let Some(schemas) = schema_parts.add(schemas)? {
                let table = routes.borrow().with_schemas(&schemas);
                tracing::debug!(
                    schemas = table.schemas().len(),
                    "event-type schemas applied"
                );
                routes.send_replace(Arc::new(table));
            }
            continue;
        }
        if let Some(order) = update.emit {
            let table = routes.borrow().clone();
            let result = emit(&handlers.queue, &table, &identity.interest, order).await;
            tx.send(send(Kind::EmitResult(result)))
                .await
                .map_err(|_| "config stream closed")?;
            continue;
        }
        if let Some(order) = update.test {
            let order_id = order.order_id;
            while tests.try_join_next().is_some() {}
            if tests.len() >= MAX_TESTS {
                let busy = pb::TestResult {
                    order_id,
                    attempt: None,
                    error: format!("the agent is running {MAX_TESTS} test attempts already"),
                    busy: true,
                };
                tx.send(send(Kind::TestResult(busy)))
                    .await
                    .map_err(|_| "config stream closed")?;
                continue;
            }
            let (dispatcher, tx) = (handlers.dispatcher.clone(), tx.clone());
            tests.spawn(async move {
                let result = match order.event {
                    None => Err("the order has no event".to_owned()),
                    Some(event) => dispatcher.test(&order.subscription_id, &event).await,
                };
                let result = match result {
                    Ok(attempt) => pb::TestResult {
                        order_id,
                        attempt: Some(attempt),
                        ..Default::default()
                    },
                    Err(error) => pb::TestResult {
                        order_id,
                        error,
                        ..Default::default()
                    },
                };
                // A closed stream: the control plane has stopped waiting.
                let _ = tx.send(send(Kind::TestResult(result))).await;
            });
            continue;
        }
        if let Some(order) = update.replay {
            let table = routes.borrow().clone();
            let result = replay(&handlers.queue, &table, order).await;
            tx.send(send(Kind::ReplayResult(result)))
                .await
                .map_err(|_| "config stream closed")?;
            continue;
        }
        if !schemas_sent {
            schemas_sent = true;
            if !routes.borrow().schemas().is_empty() {
                if identity.checks_schemas {
                    tracing::warn!(
                        control_plane = %url,
                        "the control plane sends no event-type schemas (it is older than \
                         this agent): emitted payloads go unchecked while this stream lasts"
                    );
                }
                let none = pb::SchemaUpdate {
                    whole: true,
                    ..Default::default()
                };
                let table = routes.borrow().with_schemas(&none);
                routes.send_replace(Arc::new(table));
            }
        }
        let applied = routes.borrow().apply(&update);
        let reply = match applied {
            Ok(table) => {
                let refusal = table.refusal_reason();
                // The last complete revision: a table holding refusals is resumed from before
                // them, so that a stream opened again sends the refused records again.
                let revision = table.revision;
                let count = table.len();
                routes.send_replace(Arc::new(table));
                *resume_from = revision;
                // Acknowledged once on disk: a restart never falls back to an older table
                // than the control plane believes this agent has.
                let on_disk = saved.wait_for(|saved| *saved >= revision);
                if tokio::time::timeout(SAVE_WAIT, on_disk).await.is_err() {
                    tracing::warn!(
                        revision,
                        "the config cache is slow to save; acknowledging anyway"
                    );
                }
                if update.snapshot {
                    backoff.reset();
                }
                // A whole config (a stream's first, or one after falling behind) is worth an
                // operator's eye; each change after it is not.
                if update.snapshot {
                    tracing::info!(revision, subscriptions = count, "config snapshot applied");
                } else {
                    tracing::debug!(revision, subscriptions = count, "config change applied");
                }
                match refusal {
                    // The rest of the update is applied, but the agent is not current: it
                    // says so (the agents list shows it) at every update until the records
                    // read or go.
                    Some(reason) => {
                        tracing::warn!(
                            revision = update.revision,
                            reason,
                            "subscriptions refused; each keeps its previous version"
                        );
                        Kind::Nack(pb::ConfigNack {
                            revision: update.revision,
                            reason,
                        })
                    }
                    None => Kind::Ack(pb::ConfigAck { revision }),
                }
            }
            Err(err) => {
                tracing::warn!(revision = update.revision, error = %err, "config refused; keeping the last good config");
                Kind::Nack(pb::ConfigNack {
                    revision: update.revision,
                    reason: err.to_string(),
                })
            }
        };
        tx.send(send(reply))
            .await
            .map_err(|_| "config stream closed")?;
    }
}

/// A snapshot arriving in parts (`more` set on all but the last), joined so it is applied
/// and acked once, as a whole.
#[derive(Default)]
struct SnapshotParts {
    pending: Option<pb::ConfigUpdate>,
}

impl SnapshotParts {
    /// The update to apply once `update` is added: the joined snapshot when it was the last
    /// part, the update itself when it was not a part, `None` while parts are still to come.
    /// A part that does not continue the snapshot in progress is a protocol error.
    fn add(&mut self, update: pb::ConfigUpdate) -> Result<Option<pb::ConfigUpdate>, String> {
        let Some(mut joined) = self.pending.take() else {
            if update.snapshot && update.more {
                self.pending = Some(update);
                return Ok(None);
            }
            return Ok(Some(update));
        };
        if !update.snapshot || update.revision != joined.revision {
            return Err(format!(
                "a snapshot at revision {} was cut off by an update at revision {}",
                joined.revision, update.revision
            ));
        }
        joined.upserts.extend(update.upserts);
        joined.log_body_limit = update.log_body_limit.or(joined.log_body_limit);
        joined.admitted_tenants = update.admitted_tenants.or(joined.admitted_tenants);
        if update.more {
            self.pending = Some(joined);
            return Ok(None);
        }
        joined.more = false;
        Ok(Some(joined))
    }
}

/// Queues a replay order's deliveries; the result names each one that could not be queued.
async fn replay(queue: &Queue, routes: &Routes, order: pb::ReplayOrder) -> pb::ReplayResult {
    let miss = |item: &pb::ReplayItem, reason: &str| pb::ReplayMiss {
        event_id: item.event_id.clone(),
        subscription_id: item.subscription_id.clone(),
        agent_id: String::new(),
        reason: reason.to_owned(),
    };
    let mut missed = Vec::new();
    let mut wanted = Vec::new();
    for item in order.items {
        if routes.get(&item.subscription_id).is_none() {
            missed.push(miss(
                &item,
                "the subscription is not in this agent's config",
            ));
        } else {
            wanted.push(item);
        }
    }
    let replays = wanted
        .iter()
        .map(|item| Replay {
            // The subscription's tenant is the event's: ids are unique per tenant.
            event: EventKey::new(
                routes
                    .get(&item.subscription_id)
                    .map_or("", |sub| sub.tenant.as_str()),
                &item.event_id,
            ),
            subscription_id: item.subscription_id.clone(),
            attempts_made: item.next_attempt.saturating_sub(1),
        })
        .collect();
    let mut queued = 0;
    match queue.replay(replays).await {
        Ok(results) => {
            for (item, result) in wanted.iter().zip(results) {
                match result {
                    Ok(()) => queued += 1,
                    Err(reason) => missed.push(miss(item, &reason)),
                }
            }
        }
        Err(err) => {
            let reason = format!("the queue failed: {err}");
            missed.extend(wanted.iter().map(|item| miss(item, &reason)));
        }
    }
    tracing::info!(
        order = order.order_id,
        queued,
        missed = missed.len(),
        "replay order handled"
    );
    pb::ReplayResult {
        order_id: order.order_id,
        queued,
        missed,
    }
}

/// Emits an order's events as if an application had (they are validated the same way, and
/// must be within the agent's interest).
async fn emit(
    queue: &Queue,
    routes: &Routes,
    interest: &herald_core::interest::Interest,
    order: pb::EmitOrder,
) -> pb::EmitResult {
    let failed = |error: String| pb::EmitResult {
        order_id: order.order_id,
        results: vec![],
        error,
    };
    if !routes.loaded {
        return failed("the agent has no configuration yet".into());
    }
    for event in &order.events {
        if let Err(err) = herald_proto::convert::validate_event(
            event,
            herald_core::limits::DEFAULT_MAX_PAYLOAD_BYTES,
        ) {
            return failed(err.to_string());
        }
        if let Some(why) = interest.refusal(&event.tenant, &event.r#type) {
            return failed(why);
        }
    }
    let order_id = order.order_id;
    match crate::emit::accept(queue, routes, order.events, None).await {
        Ok(results) => pb::EmitResult {
            order_id,
            results,
            error: String::new(),
        },
        Err(err) => failed(err.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(revision: i64, ids: &[&str], more: bool) -> pb::ConfigUpdate {
        pb::ConfigUpdate {
            revision,
            snapshot: true,
            more,
            upserts: ids
                .iter()
                .map(|id| pb::Subscription {
                    id: (*id).into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn snapshot_parts_are_joined_before_they_are_applied() {
        let mut parts = SnapshotParts::default();
        assert_eq!(parts.add(part(7, &["a", "b"], true)), Ok(None));
        assert_eq!(parts.add(part(7, &["c"], true)), Ok(None));
        let joined = parts
            .add(part(7, &["d"], false))
            .expect("valid")
            .expect("whole");
        let ids: Vec<&str> = joined.upserts.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c", "d"]);
        assert!(joined.snapshot && !joined.more);

        // Single-part snapshots and deltas pass straight through.
        let whole = part(8, &["a"], false);
        assert_eq!(parts.add(whole.clone()), Ok(Some(whole)));
        let delta = pb::ConfigUpdate {
            revision: 9,
            removals: vec!["a".into()],
            ..Default::default()
        };
        assert_eq!(parts.add(delta.clone()), Ok(Some(delta)));
    }

    #[test]
    fn a_snapshot_cut_off_is_refused() {
        let mut parts = SnapshotParts::default();
        assert_eq!(parts.add(part(7, &["a"], true)), Ok(None));
        let delta = pb::ConfigUpdate {
            revision: 8,
            ..Default::default()
        };
        assert!(parts.add(delta).is_err());
        // A new snapshot after the error starts clean.
        assert_eq!(parts.add(part(9, &["b"], true)), Ok(None));
        assert!(parts.add(part(10, &["c"], false)).is_err());
    }
}
