//! Creating subscriptions: a new id and first secret, the tenant's limit held against
//! racing creates, and idempotency keys that answer a create sent again with what the first made.

use std::time::SystemTime;

use herald_core::ids::new_subscription_id;
use herald_core::signing::SigningSecret;
use herald_proto::convert::{signature_scheme, timestamp, wire_secret};
use herald_proto::v1 as pb;

use super::create_key::{self, CreateKey, KeptCreate};
use super::record::encode;
use super::{SubscriptionError, Subscriptions};
use crate::keys;
use crate::store::{Compare, KeyValue, Op, Txn, TxnOutcome};

/// What a create answers.
#[derive(Debug)]
pub enum Created {
    /// A new subscription, as written.
    New(pb::Subscription),
    /// The subscription an earlier create with the same idempotency key made, as it is now.
    Replayed(pb::Subscription),
}

/// A create record as stored.
fn decode_create_key(kv: &KeyValue) -> Result<pb::CreateKeyRecord, SubscriptionError> {
    <pb::CreateKeyRecord as prost::Message>::decode(kv.value.as_slice()).map_err(|err| {
        SubscriptionError::Corrupt {
            key: kv.key.clone(),
            reason: err.to_string(),
        }
    })
}

/// How many times a create counts its tenant's subscriptions again when other creates of the
/// tenant commit first, before it answers `ABORTED` (retry): each round one of them commits.
const MAX_CREATE_ROUNDS: usize = 100;

impl Subscriptions {
    /// Creates a subscription: assigns its id and first signing secret; it starts enabled.
    pub async fn create(
        &self,
        request: pb::Subscription,
    ) -> Result<pb::Subscription, SubscriptionError> {
        match self.create_keyed(request, None).await? {
            Created::New(sub) | Created::Replayed(sub) => Ok(sub),
        }
    }

    /// Like [`Subscriptions::create`], for a create that may name an idempotency key: one
    /// sent again with the same key and request answers the subscription the first made.
    pub async fn create_keyed(
        &self,
        request: pb::Subscription,
        key: Option<&CreateKey>,
    ) -> Result<Created, SubscriptionError> {
        let now = SystemTime::now();
        let scheme = signature_scheme(request.signature_scheme)?;
        // New subscriptions get the Standard Webhooks envelope unless they ask for raw bodies.
        let envelope = match request.envelope {
            0 => pb::Envelope::Standard as i32,
            given => given,
        };
        // Read back as what it is: no scheme named is HMAC-SHA256.
        let signature_scheme = match request.signature_scheme {
            0 => pb::SignatureScheme::HmacSha256 as i32,
            given => given,
        };
        let mut sub = pb::Subscription {
            envelope,
            signature_scheme,
            id: new_subscription_id(),
            secrets: vec![wire_secret(&SigningSecret::generate_for(scheme), now)],
            enabled: true,
            disabled_reason: String::new(),
            disabled_at: None,
            created_at: Some(timestamp(now)),
            updated_at: Some(timestamp(now)),
            revision: 0,
            // Read-only: only an enable sets it.
            skip_parked_before: None,
            ..request
        };
        self.check(&mut sub, None).await?;
        self.create_rounds(sub, key, now).await
    }

    /// The subscription a create of `tenant` with `key` made within the key's 24 hours, if
    /// one did: a create sent again answers it, instead of making another.
    pub async fn created_with(
        &self,
        tenant: &str,
        key: &CreateKey,
    ) -> Result<Option<pb::Subscription>, SubscriptionError> {
        match self.kept_create(tenant, key, SystemTime::now()).await?.0 {
            Some(record) => Ok(Some(self.made_by(&record, key).await?)),
            None => Ok(None),
        }
    }

    /// The record a create of `tenant` with `key` left, while it is kept at `now`, and the
    /// condition a new record's write needs: none there, or the one past its time unchanged.
    pub(super) async fn kept_create(
        &self,
        tenant: &str,
        key: &CreateKey,
        now: SystemTime,
    ) -> Result<(Option<pb::CreateKeyRecord>, Compare), SubscriptionError> {
        let store_key = key.store_key(tenant);
        let Some(kv) = self.store.get(&store_key).await? else {
            return Ok((None, Compare::Absent(store_key)));
        };
        let record = decode_create_key(&kv)?;
        let unchanged = Compare::ModRevision(store_key, kv.mod_revision);
        Ok((create_key::kept(&record, now).then_some(record), unchanged))
    }

    /// The subscription a kept create record names, for a create with `key` sent again.
    pub(super) async fn made_by(
        &self,
        record: &pb::CreateKeyRecord,
        key: &CreateKey,
    ) -> Result<pb::Subscription, SubscriptionError> {
        let judged =
            key.judge(record, &self.keyring)
                .map_err(|source| SubscriptionError::Sealing {
                    id: record.subscription_id.clone(),
                    source,
                })?;
        match judged {
            KeptCreate::OtherRequest => Err(SubscriptionError::KeyReused(key.text().to_owned())),
            KeptCreate::Same(id) => match self.get(&id).await {
                Err(SubscriptionError::NotFound(_)) => {
                    Err(SubscriptionError::KeyedCreateDeleted(id))
                }
                found => found,
            },
        }
    }

    /// Removes the create records past their time at `now` (each only if unchanged since it
    /// was read); how many it removed. A record that does not decode is removed too: nothing
    /// can use it.
    pub async fn sweep_create_keys(&self, now: SystemTime) -> Result<u64, SubscriptionError> {
        let (records, _) = self.store.list(keys::CREATE_KEYS).await?;
        let mut removed = 0;
        for kv in records {
            if decode_create_key(&kv).is_ok_and(|record| create_key::kept(&record, now)) {
                continue;
            }
            let txn = Txn::default()
                .when(Compare::ModRevision(kv.key.clone(), kv.mod_revision))
                .then(Op::Delete(kv.key));
            if let TxnOutcome::Committed { .. } = self.store.txn(txn).await? {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Writes `sub` as a new subscription, with a record of `key` when the create names one,
    /// counting the tenant's subscriptions again whenever another create of it came first. A
    /// create with the same key that came first is answered instead.
    pub(super) async fn create_rounds(
        &self,
        mut sub: pb::Subscription,
        key: Option<&CreateKey>,
        now: SystemTime,
    ) -> Result<Created, SubscriptionError> {
        let record_key = keys::subscription(&sub.tenant, &sub.id);
        let index = keys::subscription_id(&sub.id);
        let guard = keys::tenant_creates(&sub.tenant);
        for _ in 0..MAX_CREATE_ROUNDS {
            let keyed = match key {
                Some(key) => {
                    let (kept, unchanged) = self.kept_create(&sub.tenant, key, now).await?;
                    // A create with the same key came first: its subscription is the answer.
                    // Or this one did, its write applied although the store's answer was lost:
                    // then it is this create's.
                    if let Some(record) = kept {
                        let first = self.made_by(&record, key).await?;
                        return Ok(if first.id == sub.id {
                            Created::New(first)
                        } else {
                            Created::Replayed(first)
                        });
                    }
                    let record = key.record(&sub.id, now, &self.keyring).map_err(|source| {
                        SubscriptionError::Sealing {
                            id: sub.id.clone(),
                            source,
                        }
                    })?;
                    Some((unchanged, key.store_key(&sub.tenant), record))
                }
                None => None,
            };
            // The guard first, then the count: a create of the tenant that commits after the
            // guard was read changes it (and this one counts again), one before it is counted.
            let guard_holds = match self.store.get(&guard).await? {
                Some(kv) => Compare::ModRevision(guard.clone(), kv.mod_revision),
                None => Compare::Absent(guard.clone()),
            };
            let held = self
                .store
                .count(&keys::tenant_subscriptions(&sub.tenant))
                .await?;
            if held >= self.max_per_tenant {
                // A create with the same key may have taken the last place meanwhile.
                if let Some(key) = key
                    && let Some(first) = self.created_with(&sub.tenant, key).await?
                {
                    return Ok(Created::Replayed(first));
                }
                return Err(SubscriptionError::TenantFull {
                    tenant: sub.tenant,
                    limit: self.max_per_tenant,
                });
            }
            let mut txn = Txn::default()
                .when(guard_holds)
                .when(Compare::Absent(record_key.clone()))
                .when(Compare::Absent(index.clone()))
                .then(Op::Put(record_key.clone(), encode(&sub, &self.keyring)?))
                .then(Op::Put(index.clone(), sub.tenant.clone().into_bytes()))
                .then(Op::Put(guard.clone(), sub.id.clone().into_bytes()));
            if let Some((unchanged, store_key, record)) = keyed {
                txn = txn.when(unchanged).then(Op::Put(store_key, record));
            }
            if let TxnOutcome::Committed { revision } = self.store.txn(txn).await? {
                sub.revision = revision;
                return Ok(Created::New(sub));
            }
            // Another create of the tenant came first (a fresh ULID id collides only if the
            // clock and randomness both repeat), perhaps with the same key: look again.
        }
        Err(SubscriptionError::CreatesContended(sub.tenant))
    }
}
