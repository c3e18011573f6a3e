//! Subscriptions in the config store: create, read, list, update and the state changes
//! (enable, disable, rotate secret), each a revision-checked transaction so two operators
//! cannot overwrite each other silently. Every record is validated by
//! `herald_proto::convert::subscription` before it is written.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use herald_core::ValidationError;
use herald_core::signing::SigningSecret;
use herald_core::subscription::{DEFAULT_ROTATION_GRACE, MAX_SECRETS};
use herald_core::target::TargetPolicy;
use herald_proto::convert::{self, signature_scheme, system_time, timestamp, wire_secret};
use herald_proto::v1 as pb;

use crate::access::Scope;
use crate::keys;
use crate::sealing::{Keyring, SealingError};
use crate::store::{Compare, KeyValue, Op, Store, StoreError, Txn, TxnOutcome};

mod check;
mod create;
pub mod create_key;
mod listing;
mod masking;
mod record;

pub use create::Created;
pub use listing::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, Page};
use masking::{merged_egress_proxy, merged_headers, merged_oauth2};
pub use masking::{redact, same_origin, with_signing_secrets_only, without_write_only};
pub use record::decode;
use record::{encode, legacy_envelope, open_record};

/// Attempts at a read-modify-write before giving up under contention.
const MAX_CAS_ATTEMPTS: usize = 8;
/// The longest rotation grace period.
const MAX_ROTATION_GRACE: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// Why a subscription operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SubscriptionError {
    /// The request is malformed.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// No subscription has this id.
    #[error("subscription {0} not found")]
    NotFound(String),
    /// The stored revision is not the one the caller read.
    #[error("subscription {id} was changed: expected revision {expected}, stored {actual}")]
    StaleRevision {
        /// The subscription.
        id: String,
        /// What the caller sent.
        expected: i64,
        /// What is stored.
        actual: i64,
    },
    /// The tenant has as many subscriptions as it may.
    #[error(
        "tenant {tenant} has {limit} subscriptions, the most it may have; delete one first \
         (the control plane's --max-subscriptions-per-tenant)"
    )]
    TenantFull {
        /// The tenant.
        tenant: String,
        /// Its limit.
        limit: u64,
    },
    /// A rotation would end a secret before the grace it was given.
    #[error(
        "subscription {id} holds {MAX_SECRETS} signing secrets, the most it may; the oldest \
         verifies until {until}: rotate again after then, or with a grace of 0, which ends \
         every earlier secret now"
    )]
    TooManySecrets {
        /// The subscription.
        id: String,
        /// When its oldest secret stops verifying (RFC 3339).
        until: String,
    },
    /// A create named an idempotency key that an earlier create of the tenant, asking for
    /// something else, used within the key's 24 hours.
    #[error(
        "idempotency key {0:?} was used by another create of this tenant, with another request, \
         within the last 24 hours: use a new key for a new subscription"
    )]
    KeyReused(String),
    /// A create sent again with its idempotency key, whose subscription was deleted since.
    #[error("subscription {0}, which the create with this idempotency key made, was deleted")]
    KeyedCreateDeleted(String),
    /// Concurrent writers kept winning.
    #[error("subscription {0} is being changed concurrently; try again")]
    Contended(String),
    /// Concurrent creates of the same tenant kept winning.
    #[error("other subscriptions of tenant {0} were being created at the same time; try again")]
    CreatesContended(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A signing secret could not be sealed or opened.
    #[error("subscription {id}: {source}")]
    Sealing {
        /// The subscription.
        id: String,
        /// Why.
        source: SealingError,
    },
    /// A stored record could not be decoded.
    #[error("stored record {key} is corrupt: {reason}")]
    Corrupt {
        /// The store key.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

impl From<SubscriptionError> for tonic::Status {
    fn from(err: SubscriptionError) -> Self {
        use tonic::Status;
        match &err {
            SubscriptionError::Invalid(invalid) => {
                herald_proto::convert::invalid_argument(invalid.clone())
            }
            SubscriptionError::NotFound(_) | SubscriptionError::KeyedCreateDeleted(_) => {
                Status::not_found(err.to_string())
            }
            SubscriptionError::KeyReused(_) => Status::already_exists(err.to_string()),
            SubscriptionError::StaleRevision { .. } => Status::failed_precondition(err.to_string()),
            SubscriptionError::Contended(_) | SubscriptionError::CreatesContended(_) => {
                Status::aborted(err.to_string())
            }
            SubscriptionError::TooManySecrets { .. } => {
                Status::failed_precondition(err.to_string())
            }
            SubscriptionError::TenantFull { .. } => Status::resource_exhausted(err.to_string()),
            SubscriptionError::Store(store) => store.status(),
            SubscriptionError::Corrupt { key, .. } => {
                let remedy = keys::id_of_subscription_key(key).map_or(String::new(), |id| {
                    format!(": delete it (herald subscription delete {id}) and create it again")
                });
                Status::data_loss(format!("{err}{remedy}"))
            }
            SubscriptionError::Sealing { .. } => Status::internal(err.to_string()),
        }
    }
}

struct Located {
    /// The tenant it belongs to, as the id index says.
    tenant: String,
    /// The record.
    kv: KeyValue,
}

/// The subscription registry over a config store.
#[derive(Clone)]
pub struct Subscriptions {
    store: Store,
    /// Seals signing secrets before they are written, opens them when read.
    keyring: Arc<Keyring>,
    /// Which endpoint addresses are admitted (the SSRF guard's first check).
    policy: TargetPolicy,
    /// The most subscriptions one tenant may have.
    max_per_tenant: u64,
}

/// The most subscriptions one tenant may have unless the operator sets another limit: every
/// replica and agent holds every subscription in memory, and a tenant's portal link may
/// create them.
pub const DEFAULT_MAX_PER_TENANT: u64 = 1000;

impl Subscriptions {
    /// The config store the records live in.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// A registry on `store` admitting endpoints that `policy` allows, sealing secrets with
    /// `keyring`.
    pub fn new(store: Store, policy: TargetPolicy, keyring: Arc<Keyring>) -> Self {
        Subscriptions {
            store,
            keyring,
            policy,
            max_per_tenant: DEFAULT_MAX_PER_TENANT,
        }
    }

    /// The same registry, allowing each tenant at most `limit` subscriptions.
    pub fn with_max_per_tenant(mut self, limit: u64) -> Self {
        self.max_per_tenant = limit;
        self
    }

    /// Brings every stored record up to date at start, and returns how many were rewritten:
    /// secrets not sealed with the current sealing key (after a key rotation, or written before
    /// sealing) are resealed, and records written before envelopes existed get the envelope
    /// their receivers had (the bare payload, or for `system_tenant` the operator events'
    /// Standard Webhooks shape).
    pub async fn upgrade_all(&self, system_tenant: &str) -> Result<usize, SubscriptionError> {
        let mut upgraded = 0;
        let mut after: Option<String> = None;
        loop {
            let kvs = self
                .store
                .list_page(keys::SUBSCRIPTIONS, after.as_deref(), MAX_PAGE_SIZE)
                .await?;
            for kv in &kvs {
                let (sub, stale) = match open_record(kv, &self.keyring) {
                    Ok(opened) => opened,
                    // A damaged record opens on no replica: it is left for an operator to
                    // delete (the config hub names and counts it), and the others go on.
                    Err(err @ SubscriptionError::Corrupt { .. }) => {
                        tracing::error!(error = %err, "a stored subscription is damaged; left as it is");
                        continue;
                    }
                    Err(err) => return Err(err),
                };
                if stale || sub.envelope == pb::Envelope::Unspecified as i32 {
                    let change = |sub: &mut pb::Subscription, _| {
                        if sub.envelope == pb::Envelope::Unspecified as i32 {
                            sub.envelope = legacy_envelope(&sub.tenant, system_tenant) as i32;
                        }
                        Ok(())
                    };
                    match self.modify(&sub.id, change).await {
                        Ok(_) => upgraded += 1,
                        // Deleted meanwhile: nothing left to upgrade.
                        Err(SubscriptionError::NotFound(_)) => {}
                        Err(err) => return Err(err),
                    }
                }
            }
            match kvs.last() {
                Some(last) if kvs.len() == MAX_PAGE_SIZE => after = Some(last.key.clone()),
                _ => return Ok(upgraded),
            }
        }
    }

    /// Reads a subscription by id.
    pub async fn get(&self, id: &str) -> Result<pb::Subscription, SubscriptionError> {
        Ok(self.read(id).await?.0)
    }

    /// Replaces the mutable fields of a subscription, if it is still at `expected_revision`.
    pub async fn update(
        &self,
        request: pb::Subscription,
        expected_revision: i64,
    ) -> Result<pb::Subscription, SubscriptionError> {
        if expected_revision <= 0 {
            let reason = if expected_revision == 0 {
                "is required: send the revision you read"
            } else {
                "must be the revision you read, which is positive"
            };
            return Err(ValidationError::new("expected_revision", reason).into());
        }
        let (current, kv) = self.read(&request.id).await?;
        if !request.tenant.is_empty() && request.tenant != current.tenant {
            return Err(ValidationError::new("tenant", "cannot change").into());
        }
        // The scheme is chosen at creation: every secret, and every receiver's verifier,
        // follows it. Sent back as read (or left unspecified) it stays.
        if request.signature_scheme != pb::SignatureScheme::Unspecified as i32
            && signature_scheme(request.signature_scheme)?
                != signature_scheme(current.signature_scheme)?
        {
            return Err(ValidationError::new(
                "signature_scheme",
                "cannot change: create a new subscription with the other scheme",
            )
            .into());
        }
        if kv.mod_revision != expected_revision {
            return Err(SubscriptionError::StaleRevision {
                id: current.id,
                expected: expected_revision,
                actual: kv.mod_revision,
            });
        }
        let to_same_origin = same_origin(&request.url, &current.url);
        let stored = current.clone();
        let updated = pb::Subscription {
            url: request.url,
            event_types: request.event_types,
            payload_filter: request.payload_filter,
            format: request.format,
            headers: merged_headers(request.headers, &current.headers, to_same_origin)?,
            egress: request.egress,
            egress_proxy: merged_egress_proxy(request.egress_proxy, &current.egress_proxy),
            // The key is never read back: the same certificate sent without one keeps it.
            client_key: if request.client_key.is_empty()
                && request.client_cert == current.client_cert
            {
                current.client_key.clone()
            } else {
                request.client_key
            },
            client_cert: request.client_cert,
            // Reads without secrets blank the client secret: sent back blank, it stays.
            oauth2: merged_oauth2(request.oauth2, current.oauth2.as_ref(), to_same_origin)?,
            timeout: request.timeout,
            retry: request.retry,
            description: request.description,
            labels: request.labels,
            regions: request.regions,
            max_in_flight: request.max_in_flight,
            rate_limit: request.rate_limit,
            disable_after: request.disable_after,
            disable_min_failing: request.disable_min_failing,
            send_trace_context: request.send_trace_context,
            // Left unspecified, the envelope stays what it is.
            envelope: match request.envelope {
                0 => current.envelope,
                given => given,
            },
            updated_at: Some(timestamp(SystemTime::now())),
            ..current
        };
        self.write(updated, &kv, Some(&stored))
            .await?
            .ok_or_else(|| {
                // Someone wrote between our read and our write.
                SubscriptionError::StaleRevision {
                    id: request.id,
                    expected: expected_revision,
                    actual: expected_revision + 1,
                }
            })
    }

    /// Deletes a subscription of one of `tenants` (one outside is
    /// [`SubscriptionError::NotFound`]); with a non-zero `expected_revision`, only if it still
    /// matches. The record is not opened, so a damaged one, or one
    /// sealed with a key this replica lacks, can be removed too: deleting is how an operator
    /// clears it. Answers the id, tenant and the revision of the deletion.
    pub async fn delete_within(
        &self,
        tenants: &Scope,
        id: &str,
        expected_revision: i64,
    ) -> Result<pb::Subscription, SubscriptionError> {
        if expected_revision < 0 {
            return Err(ValidationError::new(
                "expected_revision",
                "must be 0 (whatever is stored) or the revision you read",
            )
            .into());
        }
        let Located { tenant, kv } = match self.locate_within(tenants, id).await {
            // A record written into the store by other means has no id entry: found by its key.
            Err(SubscriptionError::NotFound(_)) => self.locate_unindexed(tenants, id).await?,
            located => located?,
        };
        if expected_revision != 0 && kv.mod_revision != expected_revision {
            return Err(SubscriptionError::StaleRevision {
                id: id.to_owned(),
                expected: expected_revision,
                actual: kv.mod_revision,
            });
        }
        let txn = Txn::default()
            .when(Compare::ModRevision(kv.key.clone(), kv.mod_revision))
            .then(Op::Delete(kv.key))
            .then(Op::Delete(keys::subscription_id(id)))
            .then(Op::Delete(keys::health(id)))
            .then(Op::Delete(keys::certificate_warning(id)));
        match self.store.txn(txn).await? {
            TxnOutcome::Committed { revision } => Ok(pb::Subscription {
                id: id.to_owned(),
                tenant,
                revision,
                ..Default::default()
            }),
            TxnOutcome::Conflict => Err(SubscriptionError::Contended(id.to_owned())),
        }
    }

    /// Turns delivery to a subscription on again. The deliveries parked while it was disabled
    /// go out with `replay_parked`; otherwise they are skipped (`skip_parked_before`).
    pub async fn enable(
        &self,
        id: &str,
        replay_parked: bool,
    ) -> Result<pb::Subscription, SubscriptionError> {
        self.modify(id, move |sub, now| {
            if !sub.enabled {
                sub.skip_parked_before = (!replay_parked).then(|| timestamp(now));
            }
            sub.enabled = true;
            sub.disabled_reason.clear();
            sub.disabled_at = None;
            sub.updated_at = Some(timestamp(now));
            Ok(())
        })
        .await
    }

    /// Stops delivery to a subscription, recording why.
    pub async fn disable(
        &self,
        id: &str,
        reason: &str,
    ) -> Result<pb::Subscription, SubscriptionError> {
        let reason = reason.trim();
        herald_core::validate::shown_text("reason", reason, 256)?;
        let reason = match reason {
            "" => "manual".to_owned(),
            // What Herald writes when it disables one itself: an operator's reason cannot pass
            // for it in the list or the audit log.
            r if passes_for_heralds_own(r) => {
                return Err(ValidationError::new(
                    "reason",
                    "'auto:' and 'gone (' begin the reasons Herald records itself: word yours otherwise",
                )
                .into());
            }
            r => r.to_owned(),
        };
        self.modify(id, move |sub, now| {
            sub.enabled = false;
            sub.disabled_reason = reason.clone();
            sub.disabled_at = Some(timestamp(now));
            sub.updated_at = Some(timestamp(now));
            Ok(())
        })
        .await
    }

    /// Disables a subscription that is enabled, recording `reason`; `None` when it already was
    /// disabled (so when several replicas decide at once, one disables it and the others see
    /// that).
    pub async fn disable_if_enabled(
        &self,
        id: &str,
        reason: &str,
    ) -> Result<Option<pb::Subscription>, SubscriptionError> {
        for _ in 0..MAX_CAS_ATTEMPTS {
            let (mut sub, kv) = self.read(id).await?;
            if !sub.enabled {
                return Ok(None);
            }
            let now = SystemTime::now();
            sub.enabled = false;
            sub.disabled_reason = reason.to_owned();
            sub.disabled_at = Some(timestamp(now));
            sub.updated_at = Some(timestamp(now));
            if let Some(written) = self.write(sub, &kv, None).await? {
                return Ok(Some(written));
            }
        }
        Err(SubscriptionError::Contended(id.to_owned()))
    }

    /// Adds a new signing secret; the secrets in force keep signing for `grace` at most (one
    /// already in a shorter grace keeps its own), then expire. A grace of 0 ends them all now.
    /// Refused when the subscription would hold more than [`MAX_SECRETS`]: no secret ends
    /// before the grace it was given.
    pub async fn rotate_secret(
        &self,
        id: &str,
        grace: Option<Duration>,
    ) -> Result<pb::Subscription, SubscriptionError> {
        let grace = grace.unwrap_or(DEFAULT_ROTATION_GRACE);
        if grace > MAX_ROTATION_GRACE {
            return Err(ValidationError::new("grace", "at most 30 days").into());
        }
        self.modify(id, move |sub, now| {
            let ends = now + grace;
            for old in &mut sub.secrets {
                let until = old
                    .expires_at
                    .as_ref()
                    .map_or(ends, |at| system_time(at).min(ends));
                old.expires_at = Some(timestamp(until));
            }
            // Secrets whose time is up go.
            sub.secrets
                .retain(|s| s.expires_at.as_ref().is_none_or(|at| system_time(at) > now));
            if sub.secrets.len() >= MAX_SECRETS {
                let oldest = sub
                    .secrets
                    .iter()
                    .filter_map(|s| s.expires_at.as_ref().map(system_time))
                    .min()
                    .unwrap_or(ends);
                return Err(SubscriptionError::TooManySecrets {
                    id: sub.id.clone(),
                    until: humantime::format_rfc3339_seconds(oldest).to_string(),
                });
            }
            let scheme = signature_scheme(sub.signature_scheme)?;
            sub.secrets
                .insert(0, wire_secret(&SigningSecret::generate_for(scheme), now));
            sub.updated_at = Some(timestamp(now));
            Ok(())
        })
        .await
    }

    /// Reads the record and its store entry.
    async fn read(&self, id: &str) -> Result<(pb::Subscription, KeyValue), SubscriptionError> {
        self.read_within(&Scope::All, id).await
    }

    /// Reads a subscription by id if its tenant lies within `tenants`; one outside is
    /// [`SubscriptionError::NotFound`], known before its record is read, so nothing of it
    /// (not even a record that does not open) shows.
    pub async fn get_within(
        &self,
        tenants: &Scope,
        id: &str,
    ) -> Result<pb::Subscription, SubscriptionError> {
        Ok(self.read_within(tenants, id).await?.0)
    }

    async fn read_within(
        &self,
        tenants: &Scope,
        id: &str,
    ) -> Result<(pb::Subscription, KeyValue), SubscriptionError> {
        let Located { kv, .. } = self.locate_within(tenants, id).await?;
        Ok((decode(&kv, &self.keyring)?, kv))
    }

    /// Finds the stored record of subscription `id` if its tenant lies within `tenants`,
    /// without opening it.
    async fn locate_within(&self, tenants: &Scope, id: &str) -> Result<Located, SubscriptionError> {
        herald_core::validate::subscription_id(id)
            .map_err(|e| ValidationError::new("id", e.reason))?;
        let not_found = || SubscriptionError::NotFound(id.to_owned());
        let index = self
            .store
            .get(&keys::subscription_id(id))
            .await?
            .ok_or_else(not_found)?;
        let tenant = String::from_utf8(index.value).map_err(|_| SubscriptionError::Corrupt {
            key: index.key,
            reason: "tenant is not UTF-8".into(),
        })?;
        if !tenants.allows(&tenant) {
            return Err(not_found());
        }
        let kv = self
            .store
            .get(&keys::subscription(&tenant, id))
            .await?
            .ok_or_else(not_found)?;
        Ok(Located { tenant, kv })
    }

    /// Finds a stored record whose key names subscription `id` of one of `tenants` though no
    /// id entry points at it (one written straight into etcd, say), without opening it: the
    /// keys of the caller's tenants' subscriptions (of every one, for a caller who sees all)
    /// are read, so only a delete that found no id entry looks.
    async fn locate_unindexed(
        &self,
        tenants: &Scope,
        id: &str,
    ) -> Result<Located, SubscriptionError> {
        let not_found = || SubscriptionError::NotFound(id.to_owned());
        let keys = match tenants.names() {
            None => self.store.keys(keys::SUBSCRIPTIONS).await?,
            Some(names) => {
                let mut keys = Vec::new();
                for tenant in names {
                    keys.extend(self.store.keys(&keys::tenant_subscriptions(tenant)).await?);
                }
                keys
            }
        };
        let key = keys
            .into_iter()
            .find(|key| {
                keys::id_of_subscription_key(key) == Some(id)
                    && keys::tenant_of_subscription_key(key).is_some_and(|t| tenants.allows(t))
            })
            .ok_or_else(not_found)?;
        let tenant = keys::tenant_of_subscription_key(&key)
            .ok_or_else(not_found)?
            .to_owned();
        let kv = self.store.get(&key).await?.ok_or_else(not_found)?;
        Ok(Located { tenant, kv })
    }

    /// Writes `sub` over `kv` if `kv` is still current; `None` when it is not. A change a
    /// caller gives of the record `given_over` is checked as given (addresses through the
    /// target policy too); state changes (disable, rotate: `None`) only need the record to
    /// be valid.
    async fn write(
        &self,
        mut sub: pb::Subscription,
        kv: &KeyValue,
        given_over: Option<&pb::Subscription>,
    ) -> Result<Option<pb::Subscription>, SubscriptionError> {
        sub.revision = 0;
        match given_over {
            Some(stored) => self.check(&mut sub, Some(stored)).await?,
            None => {
                convert::subscription(&sub, true)?;
            }
        }
        let txn = Txn::default()
            .when(Compare::ModRevision(kv.key.clone(), kv.mod_revision))
            .then(Op::Put(kv.key.clone(), encode(&sub, &self.keyring)?));
        match self.store.txn(txn).await? {
            TxnOutcome::Committed { revision } => {
                sub.revision = revision;
                Ok(Some(sub))
            }
            TxnOutcome::Conflict => Ok(None),
        }
    }

    /// Read-modify-write, retried when another writer got in between.
    async fn modify(
        &self,
        id: &str,
        change: impl Fn(&mut pb::Subscription, SystemTime) -> Result<(), SubscriptionError>,
    ) -> Result<pb::Subscription, SubscriptionError> {
        for _ in 0..MAX_CAS_ATTEMPTS {
            let (mut sub, kv) = self.read(id).await?;
            change(&mut sub, SystemTime::now())?;
            if let Some(written) = self.write(sub, &kv, None).await? {
                return Ok(written);
            }
        }
        Err(SubscriptionError::Contended(id.to_owned()))
    }
}

/// Whether an operator's disable `reason` would read as one Herald records itself (`auto: N
/// consecutive failures`, `gone (410)`), in any case and whatever spacing or invisible
/// characters sit between its letters.
fn passes_for_heralds_own(reason: &str) -> bool {
    let skeleton: String = reason
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ':' | '('))
        .flat_map(char::to_lowercase)
        .collect();
    skeleton.starts_with("auto:") || skeleton.starts_with("gone(")
}

#[cfg(test)]
mod tests;
