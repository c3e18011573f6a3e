//! Operator events: what the control plane itself has to tell, emitted as ordinary events of
//! a system tenant (`--system-tenant`, default `herald`), so operators subscribe to them like
//! to anything else (`herald subscription create --tenant herald --events 'herald.*' …`):
//!
//! - `herald.subscription.disabled`: a subscription was disabled (by an operator, after N
//!   consecutive failures, or because its receiver answered 410 Gone);
//! - `herald.subscription.recovered`: a disabled subscription was enabled again, or an
//!   endpoint's run of [`RECOVERY_MIN_FAILURES`] or more failures ended with a delivery;
//! - `herald.delivery.exhausted`: a delivery failed for good (its last attempt failed).
//!
//! An event's payload is what happened (`{"subscription_id": …, …}`); subscriptions receive it
//! in the Standard Webhooks envelope `{"type": …, "timestamp": …, "data": {…}}` like every
//! other webhook (or bare, with `--envelope raw`).
//!
//! Each event is first written to an outbox in the delivery log (so every replica shares it;
//! `herald.delivery.exhausted` in the very commit that stores the failed attempt), then handed
//! to a connected agent over its config stream, which emits it like an application would; the
//! outbox entry goes once the agent has accepted it. So an event survives a control-plane
//! restart or `kill -9` and waits while no agent is connected. Ids are derived from what
//! happened (`<type>:<hash>`), so an event raised twice (two replicas, a retry) is one
//! `webhook-id`, and the agent's dedup window drops repeats.
//!
//! Earlier versions kept the outbox in the config store (`/herald/v1/operator-events/<id>`);
//! [`OperatorEvents::adopt_config_store_outbox`] moves what is left there at start.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use herald_proto::convert::timestamp;
use herald_proto::v1 as pb;
use prost::Message;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::attempts::{AttemptLog, LogError};
use crate::fleet::Fleet;
use crate::keys;
use crate::store::{Compare, Op, Store, StoreError, Txn};

/// An operator event's type and what it means.
#[derive(Clone, Copy, Debug)]
pub struct OperatorEventType {
    /// `herald.…`.
    pub name: &'static str,
    /// What it tells, for the event-type catalogue.
    pub description: &'static str,
    /// An example payload.
    pub example: &'static str,
}

/// A subscription was disabled.
pub const SUBSCRIPTION_DISABLED: OperatorEventType = OperatorEventType {
    name: "herald.subscription.disabled",
    description: "A subscription was disabled: by an operator, after too many consecutive \
                  failures, or because its receiver answered 410 Gone.",
    example: r#"{"subscription_id":"sub_01JEXAMPLE","tenant":"shop-1","url":"https://shop.example/hooks","reason":"auto: 10 consecutive failures","disabled_at":"2026-12-04T12:00:00.000Z"}"#,
};
/// A disabled subscription works again.
pub const SUBSCRIPTION_RECOVERED: OperatorEventType = OperatorEventType {
    name: "herald.subscription.recovered",
    description: "A disabled subscription was enabled again, or an endpoint's run of failures \
                  ended with a delivery.",
    example: r#"{"subscription_id":"sub_01JEXAMPLE","tenant":"shop-1","url":"https://shop.example/hooks","reason":"enabled","failures":0}"#,
};
/// A delivery failed for good.
pub const DELIVERY_EXHAUSTED: OperatorEventType = OperatorEventType {
    name: "herald.delivery.exhausted",
    description: "A delivery failed for good: its last attempt failed.",
    example: r#"{"event_id":"evt_01JEXAMPLE","subscription_id":"sub_01JEXAMPLE","tenant":"shop-1","event_type":"order.created","attempts":8,"last_status":500,"last_error":"","agent_id":"agt_01JEXAMPLE"}"#,
};
/// Every operator event type: built into the event-type catalogue.
pub const OPERATOR_EVENT_TYPES: [OperatorEventType; 3] = [
    SUBSCRIPTION_DISABLED,
    SUBSCRIPTION_RECOVERED,
    DELIVERY_EXHAUSTED,
];

pub use herald_core::validate::DEFAULT_SYSTEM_TENANT;
/// Outbox entries handed to an agent at once.
const DRAIN_BATCH: usize = 100;
/// How often the outbox is looked at without being woken.
const DRAIN_EVERY: Duration = Duration::from_secs(2);
/// How long an agent has to accept an emit order.
const AGENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Raises operator events and delivers them through the agents; cloning shares it.
#[derive(Clone)]
pub struct OperatorEvents {
    log: AttemptLog,
    fleet: Fleet,
    tenant: Arc<str>,
    wake: Arc<Notify>,
}

impl OperatorEvents {
    /// Events of tenant `tenant`, kept in `log`'s outbox until an agent of `fleet` takes them.
    pub fn new(log: AttemptLog, fleet: Fleet, tenant: &str) -> Self {
        OperatorEvents {
            log,
            fleet,
            tenant: tenant.into(),
            wake: Arc::new(Notify::new()),
        }
    }

    /// The system tenant.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// `sub` was disabled (its record as written, with reason and time).
    pub async fn subscription_disabled(&self, sub: &pb::Subscription) -> Result<(), LogError> {
        let at = sub.disabled_at.unwrap_or_default();
        let key = format!("{}\0{}\0{}", sub.id, at.seconds, at.nanos);
        let payload = json!({
            "subscription_id": sub.id,
            "tenant": sub.tenant,
            "url": sub.url,
            "reason": sub.disabled_reason,
            "disabled_at": rfc3339(sub.disabled_at.as_ref()),
        });
        self.raise(SUBSCRIPTION_DISABLED.name, &key, payload).await
    }

    /// `sub` works again: `how` says why (`enabled`, or the delivery that ended a run of
    /// `failures` failures); `occurrence` tells this recovery from others of the subscription
    /// (the enabling revision, or when the delivery started).
    pub async fn subscription_recovered(
        &self,
        sub: &pb::Subscription,
        how: &str,
        failures: u32,
        occurrence: &str,
    ) -> Result<(), LogError> {
        let key = format!("{}\0{}\0{}", sub.id, how, occurrence);
        let payload = json!({
            "subscription_id": sub.id,
            "tenant": sub.tenant,
            "url": sub.url,
            "reason": how,
            "failures": failures,
        });
        self.raise(SUBSCRIPTION_RECOVERED.name, &key, payload).await
    }

    /// The `herald.delivery.exhausted` event of a delivery that failed for good, if `attempt`
    /// was its last: what the delivery log raises, in the commit that stores the attempt.
    pub fn exhausted(&self, attempt: &pb::Attempt) -> Option<pb::Event> {
        // An operator event that could not be delivered raises no further event.
        if attempt.outcome() != pb::Outcome::Failed || attempt.tenant == *self.tenant {
            return None;
        }
        let key = format!("{}\0{}", attempt.event_id, attempt.subscription_id);
        let payload = json!({
            "event_id": attempt.event_id,
            "subscription_id": attempt.subscription_id,
            "tenant": attempt.tenant,
            "event_type": attempt.event_type,
            "attempts": attempt.attempt,
            "last_status": attempt.status_code,
            "last_error": if attempt.error.is_empty() { &attempt.error_kind } else { &attempt.error },
            "agent_id": attempt.agent_id,
        });
        Some(self.event(DELIVERY_EXHAUSTED.name, &key, payload))
    }

    /// Wakes the drain: the outbox holds something new.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The event of type `event_type` about what `key` names.
    fn event(&self, event_type: &str, key: &str, payload: serde_json::Value) -> pb::Event {
        let digest = Sha256::digest(format!("{event_type}\0{key}").as_bytes());
        let hash: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        let now = SystemTime::now();
        pb::Event {
            id: format!("{event_type}:{hash}"),
            tenant: self.tenant.to_string(),
            r#type: event_type.to_owned(),
            payload: payload.to_string().into_bytes(),
            occurred_at: Some(timestamp(now)),
            ..Default::default()
        }
    }

    /// Writes the event to the outbox (once per id) and wakes the drain.
    async fn raise(
        &self,
        event_type: &str,
        key: &str,
        payload: serde_json::Value,
    ) -> Result<(), LogError> {
        let event = self.event(event_type, key, payload);
        self.log.raise(std::slice::from_ref(&event)).await?;
        tracing::info!(id = %event.id, event_type, "operator event raised");
        self.wake.notify_one();
        Ok(())
    }

    /// Moves the operator events an earlier version left in the config store's outbox into
    /// the delivery log's; how many moved.
    pub async fn adopt_config_store_outbox(&self, store: &Store) -> Result<usize, AdoptError> {
        let mut moved = 0;
        loop {
            let kvs = store
                .list_page(keys::OPERATOR_EVENTS, None, DRAIN_BATCH)
                .await?;
            if kvs.is_empty() {
                return Ok(moved);
            }
            let events: Vec<pb::Event> = kvs
                .iter()
                .filter_map(|kv| pb::Event::decode(kv.value.as_slice()).ok())
                .collect();
            self.log.raise(&events).await?;
            for kv in &kvs {
                let txn = Txn::default()
                    .when(Compare::ModRevision(kv.key.clone(), kv.mod_revision))
                    .then(Op::Delete(kv.key.clone()));
                store.txn(txn).await?;
            }
            moved += events.len();
        }
    }

    /// Hands outbox entries to connected agents until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(DRAIN_EVERY) => {}
            }
            loop {
                match self.drain_once().await {
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(err) => {
                        tracing::warn!(error = %err, "operator events wait in the outbox");
                        break;
                    }
                }
            }
        }
    }

    /// Hands one batch to an agent; whether a full batch went (there may be more).
    async fn drain_once(&self) -> Result<bool, String> {
        let events = self
            .log
            .outbox(DRAIN_BATCH)
            .await
            .map_err(|e| e.to_string())?;
        if events.is_empty() {
            return Ok(false);
        }
        let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
        let Some(answer) = self.fleet.send_emit(events) else {
            return Err("no agent is connected to this control plane".into());
        };
        let result = match tokio::time::timeout(AGENT_TIMEOUT, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => return Err("the agent went away before answering".into()),
            Err(_) => return Err("the agent did not answer in time".into()),
        };
        if !result.error.is_empty() {
            return Err(format!("the agent refused them: {}", result.error));
        }
        if let Err(err) = self.log.emitted(&ids).await {
            // Emitted, not cleared: the next round emits them again, and the agent's dedup
            // window drops the repeats.
            tracing::warn!(error = %err, "cannot clear emitted operator events");
        }
        Ok(ids.len() == DRAIN_BATCH)
    }
}

/// Why the config store's old outbox could not be moved.
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    /// The config store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The delivery log failed.
    #[error(transparent)]
    Log(#[from] LogError),
}

fn rfc3339(ts: Option<&prost_types::Timestamp>) -> serde_json::Value {
    ts.map_or(serde_json::Value::Null, |ts| {
        json!(humantime::format_rfc3339_millis(herald_proto::convert::system_time(ts)).to_string())
    })
}
