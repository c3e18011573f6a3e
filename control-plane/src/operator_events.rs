//! Operator events: what the control plane itself has to tell, emitted as ordinary events of
//! a system tenant (`--system-tenant`, default `herald`), so operators subscribe to them like
//! to anything else (`herald subscription create --tenant herald --events 'herald.*' …`):
//!
//! - `herald.subscription.disabled`: a subscription was disabled (by an operator, after N
//!   consecutive failures, or because its receiver answered 410 Gone);
//! - `herald.subscription.recovered`: a disabled subscription was enabled again, or an
//!   endpoint's run of [`RECOVERY_MIN_FAILURES`] or more failures ended with a delivery;
//! - `herald.delivery.exhausted`: a delivery failed for good (its last attempt failed);
//! - `herald.subscription.certificate_expiring`: a subscription's client certificate (mutual
//!   TLS to its receiver) expires within 14 days.
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
//! `webhook-id`, and the agent's dedup window drops repeats. The hash is an HMAC under a
//! secret every replica shares ([`IdKey`], made once and sealed in the config store), so no
//! one outside can tell an event's id before it is raised.
//!
//! An event raised while the delivery log does not answer (its database down) waits in the
//! config store instead (`/herald/v1/operator-events/<id>`, where earlier versions kept the
//! whole outbox), and [`OperatorEvents::adopt_config_store_outbox`] moves it into the log's
//! outbox once the log answers (and at every start), so an operator's disable or enable
//! during the outage still tells operators.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use herald_proto::convert::timestamp;
use herald_proto::v1 as pb;
use prost::Message;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::attempts::{AttemptLog, LogError};
use crate::fleet::Fleet;
use crate::keyring_check::KeyringCheckError;
use crate::keys;
use crate::sealing::Keyring;
use crate::store::{Compare, Op, Store, StoreError, Txn, TxnOutcome};

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
/// A subscription's client certificate expires soon.
pub const CERTIFICATE_EXPIRING: OperatorEventType = OperatorEventType {
    name: "herald.subscription.certificate_expiring",
    description: "A subscription's client certificate (mutual TLS to its receiver) expires \
                  within 14 days: renew it with herald subscription update --client-cert.",
    example: r#"{"subscription_id":"sub_01JEXAMPLE","tenant":"shop-1","url":"https://erp.example/hooks","expires_at":"2026-12-18T00:00:00.000Z"}"#,
};
/// Every operator event type: built into the event-type catalogue.
pub const OPERATOR_EVENT_TYPES: [OperatorEventType; 4] = [
    SUBSCRIPTION_DISABLED,
    SUBSCRIPTION_RECOVERED,
    DELIVERY_EXHAUSTED,
    CERTIFICATE_EXPIRING,
];

pub use herald_core::validate::DEFAULT_SYSTEM_TENANT;
/// Outbox entries handed to an agent at once.
const DRAIN_BATCH: usize = 100;
/// How often the outbox is looked at without being woken.
const DRAIN_EVERY: Duration = Duration::from_secs(2);
/// How long an agent has to accept an emit order.
const AGENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Every this many drain rounds (about a minute), the config store is looked at for events
/// any replica left there.
const ADOPT_EVERY: u32 = 30;

/// The secret operator event ids are derived with: 32 random bytes made by the first replica,
/// kept sealed in the config store ([`keys::OPERATOR_EVENT_KEY`]) and read by every replica at
/// start, so every replica gives one event the same id.
#[derive(Clone)]
pub struct IdKey(hmac::Key);

impl std::fmt::Debug for IdKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdKey(<redacted>)")
    }
}

/// The associated data the id key is sealed with.
const ID_KEY_RECORD: &str = "operator-event-key";

impl IdKey {
    /// A key of these bytes (tests; replicas [`IdKey::load`] theirs).
    pub fn new(bytes: &[u8]) -> Self {
        IdKey(hmac::Key::new(hmac::HMAC_SHA256, bytes))
    }

    /// The store's id key, made and written when there is none, and sealed again with the
    /// current sealing key when another sealed it.
    pub async fn load(store: &Store, keyring: &Keyring) -> Result<IdKey, KeyringCheckError> {
        use base64::Engine as _;
        let base64 = base64::engine::general_purpose::STANDARD;
        let unreadable = |source| KeyringCheckError::Unreadable {
            record: "the operator event key".into(),
            source,
        };
        for _ in 0..3 {
            let Some(kv) = store.get(keys::OPERATOR_EVENT_KEY).await? else {
                let mut bytes = [0u8; 32];
                SystemRandom::new().fill(&mut bytes).map_err(|_| {
                    KeyringCheckError::Sealing(crate::sealing::SealingError::Random)
                })?;
                let sealed = keyring
                    .seal(ID_KEY_RECORD, &base64.encode(bytes))
                    .map_err(KeyringCheckError::Sealing)?;
                let txn = Txn::default()
                    .when(Compare::Absent(keys::OPERATOR_EVENT_KEY.into()))
                    .then(Op::Put(
                        keys::OPERATOR_EVENT_KEY.into(),
                        sealed.encode_to_vec(),
                    ));
                match store.txn(txn).await? {
                    TxnOutcome::Committed { .. } => return Ok(IdKey::new(&bytes)),
                    // Another replica made it first: read theirs.
                    TxnOutcome::Conflict => continue,
                }
            };
            let sealed = pb::SealedSecret::decode(kv.value.as_slice()).map_err(|e| {
                KeyringCheckError::Corrupt {
                    key: kv.key.clone(),
                    reason: e.to_string(),
                }
            })?;
            let text = keyring.open(ID_KEY_RECORD, &sealed).map_err(unreadable)?;
            let bytes = base64
                .decode(text.as_bytes())
                .map_err(|e| KeyringCheckError::Corrupt {
                    key: kv.key.clone(),
                    reason: e.to_string(),
                })?;
            if sealed.key_id != keyring.sealing_key_id() {
                // A rotated keyring: seal it with the new key, as subscriptions are.
                let resealed = keyring
                    .seal(ID_KEY_RECORD, &text)
                    .map_err(KeyringCheckError::Sealing)?;
                let txn = Txn::default()
                    .when(Compare::ModRevision(kv.key.clone(), kv.mod_revision))
                    .then(Op::Put(kv.key.clone(), resealed.encode_to_vec()));
                store.txn(txn).await?;
            }
            return Ok(IdKey::new(&bytes));
        }
        Err(KeyringCheckError::Corrupt {
            key: keys::OPERATOR_EVENT_KEY.into(),
            reason: "it keeps changing while it is read".into(),
        })
    }

    /// The id's hash of what `key` names: the HMAC's first 16 bytes, in hex.
    fn hash(&self, event_type: &str, key: &str) -> String {
        let tag = hmac::sign(&self.0, format!("{event_type}\0{key}").as_bytes());
        tag.as_ref()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// Raises operator events and delivers them through the agents; cloning shares it.
#[derive(Clone)]
pub struct OperatorEvents {
    log: AttemptLog,
    /// Where events wait while the log does not answer.
    store: Store,
    fleet: Fleet,
    tenant: Arc<str>,
    ids: IdKey,
    wake: Arc<Notify>,
    /// Whether the config store may hold events to move into the log's outbox (at start, and
    /// after one was kept there).
    in_store: Arc<AtomicBool>,
}

impl OperatorEvents {
    /// Events of tenant `tenant`, kept in `log`'s outbox (in `store` while the log does not
    /// answer) until an agent of `fleet` takes them, their ids derived with `ids`.
    pub fn new(log: AttemptLog, store: Store, fleet: Fleet, tenant: &str, ids: IdKey) -> Self {
        OperatorEvents {
            log,
            store,
            fleet,
            tenant: tenant.into(),
            ids,
            wake: Arc::new(Notify::new()),
            in_store: Arc::new(AtomicBool::new(true)),
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

    /// `sub`'s client certificate expires at `expires_at`, within two weeks.
    pub async fn certificate_expiring(
        &self,
        sub: &pb::Subscription,
        expires_at: SystemTime,
    ) -> Result<(), LogError> {
        let at = timestamp(expires_at);
        let key = format!("{}\0{}", sub.id, at.seconds);
        let payload = json!({
            "subscription_id": sub.id,
            "tenant": sub.tenant,
            "url": sub.url,
            "expires_at": rfc3339(Some(&at)),
        });
        self.raise(CERTIFICATE_EXPIRING.name, &key, payload).await
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
        let hash = self.ids.hash(event_type, key);
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

    /// Writes the event to the outbox (once per id) and wakes the drain. While the log does
    /// not take it, the event waits in the config store; the log's error is returned only
    /// when neither takes it.
    async fn raise(
        &self,
        event_type: &str,
        key: &str,
        payload: serde_json::Value,
    ) -> Result<(), LogError> {
        let event = self.event(event_type, key, payload);
        match self.log.raise(std::slice::from_ref(&event)).await {
            Ok(()) => tracing::info!(id = %event.id, event_type, "operator event raised"),
            Err(err) => {
                let put = Txn::default().then(Op::Put(
                    keys::operator_event(&event.id),
                    event.encode_to_vec(),
                ));
                if let Err(store_err) = self.store.txn(put).await {
                    tracing::error!(id = %event.id, event_type, error = %store_err, "cannot keep the operator event in the config store either");
                    return Err(err);
                }
                self.in_store.store(true, Ordering::SeqCst);
                tracing::warn!(id = %event.id, event_type, error = %err, "operator event waits in the config store until the delivery log answers");
            }
        }
        self.wake.notify_one();
        Ok(())
    }

    /// Moves the operator events waiting in the config store (raised while the log did not
    /// answer, or left by an earlier version) into the delivery log's outbox; how many moved.
    pub async fn adopt_config_store_outbox(&self) -> Result<usize, AdoptError> {
        let store = &self.store;
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

    /// Hands outbox entries to connected agents until `shutdown`, first moving those waiting
    /// in the config store into the log.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut rounds: u32 = 0;
        loop {
            // Another replica may have left events there before it stopped: look now and then.
            rounds = rounds.wrapping_add(1);
            if rounds.is_multiple_of(ADOPT_EVERY) {
                self.in_store.store(true, Ordering::SeqCst);
            }
            if self.in_store.swap(false, Ordering::SeqCst) {
                match self.adopt_config_store_outbox().await {
                    Ok(0) => {}
                    Ok(moved) => tracing::info!(
                        moved,
                        "operator events moved from the config store into the delivery log's outbox"
                    ),
                    Err(err) => {
                        self.in_store.store(true, Ordering::SeqCst);
                        tracing::warn!(error = %err, "operator events wait in the config store");
                    }
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_replica_reads_the_same_id_key_and_outsiders_cannot_tell_the_ids() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let store = Store::embedded(dir.path()).await.expect("a store");
        let k1 = Keyring::generate_entry("k1").expect("a key");
        let keyring = Keyring::parse(&k1).expect("a keyring");
        let first = IdKey::load(&store, &keyring).await.expect("made");
        let second = IdKey::load(&store, &keyring).await.expect("read");
        let id = |key: &IdKey| key.hash(SUBSCRIPTION_DISABLED.name, "sub_1\0at");
        assert_eq!(
            id(&first),
            id(&second),
            "one event, one id, on every replica"
        );
        assert_eq!(id(&first).len(), 32);
        // Not the plain digest of what happened, nor another key's.
        assert_ne!(id(&first), id(&IdKey::new(&[0; 32])));
        let raw = store
            .get(keys::OPERATOR_EVENT_KEY)
            .await
            .expect("read")
            .expect("written");
        let sealed = pb::SealedSecret::decode(raw.value.as_slice()).expect("sealed");
        assert_eq!(sealed.key_id, "k1");

        // After a rotation the key is sealed with the new key and stays the same key.
        let k2 = Keyring::generate_entry("k2").expect("a key");
        let rotated = Keyring::parse(&format!("{k2}{k1}")).expect("a keyring");
        assert_eq!(
            id(&IdKey::load(&store, &rotated).await.expect("read")),
            id(&first)
        );
        let only_new = Keyring::parse(&k2).expect("a keyring");
        assert_eq!(
            id(&IdKey::load(&store, &only_new).await.expect("read")),
            id(&first)
        );
        // A keyring that cannot open it says so.
        let stranger = Keyring::parse(&Keyring::generate_entry("k9").expect("a key")).expect("ok");
        let refused = IdKey::load(&store, &stranger).await.unwrap_err();
        assert!(
            matches!(refused, KeyringCheckError::Unreadable { .. }),
            "{refused:?}"
        );
    }
}
