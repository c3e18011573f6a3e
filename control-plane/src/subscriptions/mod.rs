//! Subscriptions in the config store: create, read, list, update and the state changes
//! (enable, disable, rotate secret), each a revision-checked transaction so two operators
//! cannot overwrite each other silently. Every record is validated by
//! `herald_proto::convert::subscription` before it is written.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use herald_core::egress::{MASKED_PASSWORD, ProxyUrl};
use herald_core::ids::new_subscription_id;
use herald_core::limits::MAX_DESCRIPTION_LEN;
use herald_core::limits::PageBytes;
use herald_core::signing::SigningSecret;
use herald_core::subscription::{DEFAULT_ROTATION_GRACE, MAX_SECRETS};
use herald_core::target::TargetPolicy;
use herald_core::{ValidationError, validate};
use herald_proto::convert::{self, signature_scheme, system_time, timestamp, wire_secret};
use herald_proto::v1 as pb;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::access::Scope;
use crate::keys;
use crate::sealing::{Keyring, SealingError};
use crate::store::{Compare, KeyValue, Op, Store, StoreError, Txn, TxnOutcome};

pub mod create_key;
mod masking;
mod record;

use create_key::{CreateKey, KeptCreate};
use masking::{merged_egress_proxy, merged_headers, merged_oauth2};
pub use masking::{redact, same_origin, with_signing_secrets_only, without_write_only};
pub use record::decode;
use record::{encode, legacy_envelope, open_record};

/// The largest page a list call returns.
pub const MAX_PAGE_SIZE: usize = 1000;
/// The page size when the caller names none.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Attempts at a read-modify-write before giving up under contention.
const MAX_CAS_ATTEMPTS: usize = 8;
/// How long the target check waits for DNS.
const DNS_TIMEOUT: Duration = Duration::from_secs(2);
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

/// A subscription's stored record, found by id and not yet opened.
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

/// How many times a create counts its tenant's subscriptions again when other creates of the
/// tenant commit first, before it answers `ABORTED` (retry): each round one of them commits.
const MAX_CREATE_ROUNDS: usize = 100;

/// A page of subscriptions.
pub struct Page {
    /// The subscriptions, in key order.
    pub subscriptions: Vec<pb::Subscription>,
    /// Where the next page starts; empty on the last.
    pub next_page_token: String,
}

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

    /// Validates a record and checks its URL against the target policy: the literal address,
    /// or what the host resolves to now. A host that does not resolve here is admitted: the
    /// agent checks the addresses it connects to at every delivery.
    /// Checks what a caller gives, `stored` being the record it changes (none: a new one).
    /// The receiver's URL is held to the target policy every time; the OAuth2 token endpoint's
    /// DNS answer and the subscription's own proxy only when new or changed, so a record an
    /// earlier version admitted (an internal proxy the agents allow) still takes other changes.
    async fn check(
        &self,
        sub: &mut pb::Subscription,
        stored: Option<&pb::Subscription>,
    ) -> Result<(), SubscriptionError> {
        record::clear_storage_only(sub);
        // What a caller gives is held to more than a stored record is read with: a record
        // stored before these checks still delivers, and is refused only when sent again.
        validate::url_as_given("url", &sub.url)?;
        if let Some(oauth2) = &sub.oauth2 {
            validate::url_as_given("oauth2.token_url", &oauth2.token_url)?;
        }
        validate::shown_text("description", &sub.description, MAX_DESCRIPTION_LEN)?;
        validate::labels_as_given(sub.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
        validate::headers_as_given(sub.headers.keys().map(String::as_str))?;
        if sub.oauth2.is_some()
            && let Some(name) = sub
                .headers
                .keys()
                .find(|n| n.eq_ignore_ascii_case("authorization"))
        {
            return Err(ValidationError::new(
                "headers",
                format!(
                    "header {} is what the OAuth2 client (oauth2) sends its token in: give \
                     one or the other",
                    validate::quoted(name)
                ),
            )
            .into());
        }
        let mut regions = std::collections::BTreeSet::new();
        if let Some(twice) = sub.regions.iter().find(|r| !regions.insert(r.as_str())) {
            return Err(ValidationError::new(
                "regions",
                format!(
                    "region {} is listed more than once",
                    validate::quoted(twice)
                ),
            )
            .into());
        }
        convert::check_given_durations(sub)?;
        let domain = convert::subscription(sub, self.policy.allow_http)?;
        // A masked proxy URL that kept no stored password (another user, host or port, or a
        // new subscription) would make `****` the password.
        if ProxyUrl::parse(&sub.egress_proxy).is_ok_and(|proxy| proxy.has_masked_password()) {
            return Err(ValidationError::new(
                "egress_proxy",
                format!(
                    "carries the masked password {MASKED_PASSWORD}: send the proxy's password \
                     (a masked URL keeps the stored one only for the same user, host and port)"
                ),
            )
            .into());
        }
        // URLs are stored in the form requests go to (`validate::url`).
        sub.url = domain.url.to_string();
        if let (Some(checked), Some(wire)) = (&domain.oauth2, sub.oauth2.as_mut()) {
            wire.token_url = checked.token_url.to_string();
        }
        // Stored as checked: canonical JSON, so reads show one form whatever was written.
        sub.payload_filter = domain
            .payload_filter
            .as_ref()
            .map(|f| f.as_str().to_owned())
            .unwrap_or_default();
        // The client certificate parses, its key matches, and its expiry is recorded.
        sub.client_cert_expires_at = match &domain.client_identity {
            Some(identity) => Some(timestamp(crate::client_certs::pem::check(
                identity.cert_pem(),
                identity.key_pem(),
            )?)),
            None => None,
        };
        // Every address a delivery may connect to, as the agent's policy will check it: the
        // receiver, the OAuth2 token endpoint and the subscription's own proxy.
        let refuse = |field: &'static str| {
            move |err: herald_core::target::TargetError| {
                ValidationError::new(field, err.to_string())
            }
        };
        self.policy.check_url(&domain.url).map_err(refuse("url"))?;
        self.check_resolved("url", &domain.url).await?;
        if let Some(oauth2) = &domain.oauth2 {
            self.policy
                .check_url(&oauth2.token_url)
                .map_err(refuse("oauth2.token_url"))?;
            let same_endpoint = stored
                .and_then(|s| s.oauth2.as_ref())
                .zip(sub.oauth2.as_ref())
                .is_some_and(|(before, now)| before.token_url == now.token_url);
            if !same_endpoint {
                self.check_resolved("oauth2.token_url", &oauth2.token_url)
                    .await?;
            }
        }
        let same_proxy =
            stored.is_some_and(|s| s.egress == sub.egress && s.egress_proxy == sub.egress_proxy);
        if let herald_core::egress::Egress::Proxy(proxy) = &domain.egress
            && !same_proxy
        {
            // A proxy speaks http:// whatever the receivers do: its address alone is checked.
            self.check_host("egress_proxy", proxy.host(), proxy.port())
                .await?;
        }
        Ok(())
    }

    /// Checks what the host of `url` (`field`) resolves to now, when it is a name (the
    /// policy's `check_url` has checked a literal address).
    async fn check_resolved(
        &self,
        field: &'static str,
        url: &url::Url,
    ) -> Result<(), ValidationError> {
        match url.host() {
            Some(url::Host::Domain(host)) => {
                let port = url.port_or_known_default().unwrap_or(443);
                self.check_host(field, host, port).await
            }
            _ => Ok(()),
        }
    }

    /// Checks every address `host` (`field`) stands for now: itself when it is an address,
    /// else what it resolves to.
    async fn check_host(
        &self,
        field: &'static str,
        host: &str,
        port: u16,
    ) -> Result<(), ValidationError> {
        let addrs = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => resolve(host, port).await,
        };
        for ip in addrs {
            self.policy
                .check_ip(host, ip)
                .map_err(|err| ValidationError::new(field, err.to_string()))?;
        }
        Ok(())
    }

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
    async fn kept_create(
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
    async fn made_by(
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
    async fn create_rounds(
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

    /// Reads a subscription by id.
    pub async fn get(&self, id: &str) -> Result<pb::Subscription, SubscriptionError> {
        Ok(self.read(id).await?.0)
    }

    /// Lists subscriptions of one tenant (or all, for an empty tenant), a page at a time.
    pub async fn list(
        &self,
        tenant: &str,
        page_size: u32,
        page_token: &str,
    ) -> Result<Page, SubscriptionError> {
        self.list_within(&Scope::All, tenant, page_size, page_token)
            .await
    }

    /// Lists the subscriptions of `tenants` a page at a time: those of `tenant` when it is
    /// given (none when it lies outside `tenants`), else those of every tenant in `tenants`,
    /// in key order.
    pub async fn list_within(
        &self,
        tenants: &Scope,
        tenant: &str,
        page_size: u32,
        page_token: &str,
    ) -> Result<Page, SubscriptionError> {
        if !tenant.is_empty() {
            herald_core::validate::tenant(tenant)?;
        }
        let size = match page_size as usize {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        // The tenants' key ranges to read, in key order: one prefix, or each scoped tenant's.
        let prefixes: Vec<String> = match (tenant, tenants.names()) {
            ("", None) => vec![keys::SUBSCRIPTIONS.to_owned()],
            ("", Some(names)) => names
                .iter()
                .map(|t| keys::tenant_subscriptions(t))
                .collect(),
            (tenant, _) if tenants.allows(tenant) => vec![keys::tenant_subscriptions(tenant)],
            _ => vec![],
        };
        // A token holds the last key of the previous page: start in the range holding it.
        let last_key = page_token_key(page_token)?;
        let (start, after) = match &last_key {
            None => (0, None),
            Some(last_key) => {
                let index = prefixes
                    .iter()
                    .position(|p| last_key.starts_with(p.as_str()))
                    .ok_or_else(not_from_this_listing)?;
                (index, Some(last_key.as_str()))
            }
        };
        let mut kvs = Vec::new();
        for (i, prefix) in prefixes.iter().enumerate().skip(start) {
            let after = if i == start { after } else { None };
            kvs.extend(
                self.store
                    .list_page(prefix, after, size - kvs.len())
                    .await?,
            );
            if kvs.len() == size {
                break;
            }
        }
        // Within the page's bytes too: the rest comes on the next page.
        let mut bytes = PageBytes::default();
        let full = kvs.iter().position(|kv| !bytes.fits(kv.value.len()));
        if let Some(full) = full {
            kvs.truncate(full);
        }
        let next_page_token = match kvs.last() {
            Some(last) if kvs.len() == size || full.is_some() => {
                URL_SAFE_NO_PAD.encode(last.key.as_bytes())
            }
            _ => String::new(),
        };
        let subscriptions = kvs
            .iter()
            .map(|kv| decode(kv, &self.keyring))
            .collect::<Result<_, _>>()?;
        Ok(Page {
            subscriptions,
            next_page_token,
        })
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
        let Located { tenant, kv } = self.locate_within(tenants, id).await?;
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

/// What `host` resolves to now (nothing when it does not resolve within [`DNS_TIMEOUT`]: a
/// name this replica cannot resolve may still be one the agents can, and they check every
/// address they connect to).
async fn resolve(host: &str, port: u16) -> Vec<std::net::IpAddr> {
    match tokio::time::timeout(DNS_TIMEOUT, tokio::net::lookup_host((host, port))).await {
        Ok(Ok(addrs)) => addrs.map(|addr| addr.ip()).collect(),
        _ => vec![],
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

/// The refusal of a page token no listing of this kind handed out.
fn not_from_this_listing() -> ValidationError {
    ValidationError::new("page_token", "is not from this listing")
}

/// The last key of the page before the one `page_token` asks for (`None`: the first page).
/// Tokens are opaque to callers (the key, base64url-encoded), so the store's layout is no part
/// of the API.
fn page_token_key(page_token: &str) -> Result<Option<String>, ValidationError> {
    if page_token.is_empty() {
        return Ok(None);
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(page_token)
        .map_err(|_| not_from_this_listing())?;
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| not_from_this_listing())
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    /// A registry on an embedded store in `dir` (keyring `k1`, no special targets), and the
    /// store, for tests that read its raw records.
    async fn registry_in(dir: &tempfile::TempDir) -> (Subscriptions, Store) {
        let store = Store::embedded(dir.path()).await.expect("a store");
        let keyring = Keyring::parse(&Keyring::generate_entry("k1").expect("a key")).expect("ok");
        let registry = Subscriptions::new(
            store.clone(),
            TargetPolicy::new(false, vec![]),
            Arc::new(keyring),
        );
        (registry, store)
    }

    /// A create's key outlives a restart of the embedded store (a create sent again after the
    /// control plane crashed is what keys are for), answers for 24 hours, and is swept after.
    #[tokio::test]
    async fn a_create_key_outlives_a_restart_and_is_swept_after_its_day() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let keyring =
            Arc::new(Keyring::parse(&Keyring::generate_entry("k1").expect("a key")).expect("ok"));
        let open = |keyring: Arc<Keyring>| {
            let path = dir.path().to_owned();
            async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                let store = loop {
                    match Store::embedded(&path).await {
                        Ok(store) => break store,
                        // The dropped handle's tasks let go of the file within moments.
                        Err(err) if tokio::time::Instant::now() < deadline => {
                            tracing::debug!(error = %err, "the file is still held");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(err) => panic!("reopen: {err:?}"),
                    }
                };
                Subscriptions::new(store, TargetPolicy::new(false, vec![]), keyring)
            }
        };
        let request = pb::CreateSubscriptionRequest {
            subscription: Some(orders_of("shop-a")),
            idempotency_key: "erp-7".into(),
            ..Default::default()
        };
        let key = CreateKey::of(&request).expect("valid").expect("a key");
        let registry = open(keyring.clone()).await;
        let first = match registry
            .create_keyed(orders_of("shop-a"), Some(&key))
            .await
            .expect("created")
        {
            Created::New(sub) => sub,
            replayed => panic!("{replayed:?}"),
        };
        drop(registry);

        let registry = open(keyring).await;
        match registry
            .create_keyed(orders_of("shop-a"), Some(&key))
            .await
            .expect("answered")
        {
            Created::Replayed(sub) => assert_eq!(sub.id, first.id),
            made => panic!("a second subscription after a restart: {made:?}"),
        }
        let now = SystemTime::now();
        assert_eq!(registry.sweep_create_keys(now).await.expect("swept"), 0);
        let later = now + create_key::KEPT_FOR + Duration::from_secs(1);
        assert_eq!(registry.sweep_create_keys(later).await.expect("swept"), 1);
        assert!(
            registry
                .created_with("shop-a", &key)
                .await
                .expect("read")
                .is_none()
        );
    }

    /// A subscription of `tenant` to its order events, at a public address.
    fn orders_of(tenant: &str) -> pb::Subscription {
        pb::Subscription {
            tenant: tenant.into(),
            url: "https://93.184.215.14/hook".into(),
            event_types: vec!["order.*".into()],
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_scoped_listing_pages_through_its_tenants_only() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (registry, _) = registry_in(&dir).await;
        for (tenant, n) in [("shop-a", 3), ("shop-b", 2), ("shop-c", 2)] {
            for _ in 0..n {
                registry.create(orders_of(tenant)).await.expect("created");
            }
        }
        let scope = Scope::Only(["shop-a".to_owned(), "shop-c".to_owned()].into());
        let mut tenants = vec![];
        let mut token = String::new();
        let mut pages = 0;
        loop {
            let page = registry
                .list_within(&scope, "", 2, &token)
                .await
                .expect("a page");
            assert!(page.subscriptions.len() <= 2);
            tenants.extend(page.subscriptions.into_iter().map(|s| s.tenant));
            pages += 1;
            if page.next_page_token.is_empty() {
                break;
            }
            assert!(
                !page.next_page_token.contains('/'),
                "tokens show nothing of the store's keys: {}",
                page.next_page_token
            );
            token = page.next_page_token;
        }
        assert_eq!(tenants, ["shop-a", "shop-a", "shop-a", "shop-c", "shop-c"]);
        assert!(pages >= 3);
        // A tenant outside the scope lists as empty; a token from another listing is refused.
        let outside = registry
            .list_within(&scope, "shop-b", 10, "")
            .await
            .expect("ok");
        assert!(outside.subscriptions.is_empty() && outside.next_page_token.is_empty());
        let all = registry.list("", 3, "").await.expect("ok");
        let foreign = registry
            .list_within(
                &Scope::Only(["shop-c".to_owned()].into()),
                "",
                2,
                &all.next_page_token,
            )
            .await;
        assert!(matches!(foreign, Err(SubscriptionError::Invalid(_))));
        for made_up in ["/herald/v1/subscriptions/shop-a/", "%%%", "_w"] {
            let refused = registry.list_within(&scope, "", 2, made_up).await;
            assert!(
                matches!(refused, Err(SubscriptionError::Invalid(_))),
                "{made_up}"
            );
        }
    }

    #[tokio::test]
    async fn a_url_is_stored_as_requests_go_to_it_and_one_a_parser_would_change_is_refused() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (registry, _) = registry_in(&dir).await;
        let at = |url: &str| pb::Subscription {
            tenant: "shop-a".into(),
            url: url.into(),
            event_types: vec!["order.*".into()],
            ..Default::default()
        };
        let created = registry
            .create(at("https://93.184.215.14:443/shop/../hooks"))
            .await
            .expect("created");
        assert_eq!(created.url, "https://93.184.215.14/hooks");
        assert_eq!(
            registry.get(&created.id).await.expect("read").url,
            "https://93.184.215.14/hooks"
        );
        for bad in [
            "https:///93.184.215.14/h",
            " https://93.184.215.14/h",
            "https://93.184.215.14/h\nx",
        ] {
            let refused = registry.create(at(bad)).await;
            assert!(
                matches!(&refused, Err(SubscriptionError::Invalid(e)) if e.field == "url"),
                "{bad:?}: {refused:?}"
            );
        }
    }

    #[tokio::test]
    async fn masked_secrets_sent_back_keep_the_stored_ones_only_where_they_were_given() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (registry, _) = registry_in(&dir).await;
        let created = registry
            .create(pb::Subscription {
                egress: pb::Egress::Proxy as i32,
                egress_proxy: "http://egress:pw-1@93.184.215.15:3128".into(),
                oauth2: Some(pb::OAuth2 {
                    token_url: "https://93.184.215.16/token".into(),
                    client_id: "shop".into(),
                    client_secret: "oauth-1".into(),
                    ..Default::default()
                }),
                ..orders_of("shop-a")
            })
            .await
            .expect("created");
        let read = redact(registry.get(&created.id).await.expect("read"));
        assert_eq!(read.egress_proxy, "http://egress:****@93.184.215.15:3128");

        // Sent back as read: both stay.
        let kept = registry
            .update(read.clone(), created.revision)
            .await
            .expect("updated");
        assert_eq!(kept.egress_proxy, "http://egress:pw-1@93.184.215.15:3128");
        assert_eq!(
            kept.oauth2.as_ref().map(|o| o.client_secret.as_str()),
            Some("oauth-1")
        );

        // The masked password for another host is refused, not stored as the password.
        let other_host = registry
            .update(
                pb::Subscription {
                    egress_proxy: "http://egress:****@93.184.215.17:3128".into(),
                    ..read.clone()
                },
                kept.revision,
            )
            .await;
        assert!(
            matches!(&other_host, Err(SubscriptionError::Invalid(e)) if e.field == "egress_proxy"),
            "{other_host:?}"
        );
        // A blank client secret for another token endpoint is not the stored one.
        let other_endpoint = registry
            .update(
                pb::Subscription {
                    oauth2: read.oauth2.clone().map(|o| pb::OAuth2 {
                        token_url: "https://93.184.215.18/token".into(),
                        ..o
                    }),
                    ..read.clone()
                },
                kept.revision,
            )
            .await;
        assert!(
            matches!(&other_endpoint, Err(SubscriptionError::Invalid(e)) if e.field.starts_with("oauth2")),
            "{other_endpoint:?}"
        );
        // A new subscription cannot start with a masked password either.
        let masked = registry
            .create(pb::Subscription {
                id: String::new(),
                oauth2: None,
                ..read
            })
            .await;
        assert!(
            matches!(&masked, Err(SubscriptionError::Invalid(e)) if e.field == "egress_proxy"),
            "{masked:?}"
        );
    }

    #[tokio::test]
    async fn a_new_subscription_reads_back_its_scheme_and_names_each_region_once() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (registry, _) = registry_in(&dir).await;
        let created = registry.create(orders_of("shop-a")).await.expect("created");
        assert_eq!(
            created.signature_scheme,
            pb::SignatureScheme::HmacSha256 as i32,
            "no scheme named is HMAC-SHA256, and reads back so"
        );
        let twice = registry
            .create(pb::Subscription {
                regions: vec!["eu".into(), "us".into(), "eu".into()],
                ..orders_of("shop-a")
            })
            .await;
        assert!(
            matches!(&twice, Err(SubscriptionError::Invalid(e)) if e.field == "regions"),
            "{twice:?}"
        );
    }

    #[tokio::test]
    async fn a_header_value_sent_back_blank_is_kept_only_for_the_same_origin() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (registry, _) = registry_in(&dir).await;
        let created = registry
            .create(pb::Subscription {
                headers: [("X-Api-Key".to_owned(), "key-1".to_owned())].into(),
                ..orders_of("shop-a")
            })
            .await
            .expect("created");
        let read = redact(registry.get(&created.id).await.expect("read"));
        assert_eq!(read.headers["X-Api-Key"], "");
        // Another path of the same origin: the value stays.
        let moved = registry
            .update(
                pb::Subscription {
                    url: "https://93.184.215.14/other".into(),
                    ..read.clone()
                },
                created.revision,
            )
            .await
            .expect("updated");
        let stored = registry.get(&moved.id).await.expect("read");
        assert_eq!(stored.headers["X-Api-Key"], "key-1");
        // Another host: the stored value is not sent there unless given again.
        let elsewhere = registry
            .update(
                pb::Subscription {
                    url: "https://93.184.215.20/hook".into(),
                    ..read.clone()
                },
                moved.revision,
            )
            .await;
        assert!(
            matches!(&elsewhere, Err(SubscriptionError::Invalid(e)) if e.field == "headers"),
            "{elsewhere:?}"
        );
        let given = registry
            .update(
                pb::Subscription {
                    url: "https://93.184.215.20/hook".into(),
                    headers: [("X-Api-Key".to_owned(), "key-2".to_owned())].into(),
                    ..read
                },
                moved.revision,
            )
            .await
            .expect("given again");
        assert_eq!(
            registry.get(&given.id).await.expect("read").headers["X-Api-Key"],
            "key-2"
        );
    }

    #[tokio::test]
    async fn an_oauth2_secret_sent_back_blank_is_kept_only_for_the_same_origin() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (registry, _) = registry_in(&dir).await;
        let created = registry
            .create(pb::Subscription {
                oauth2: Some(pb::OAuth2 {
                    token_url: "https://93.184.215.14/token".into(),
                    client_id: "platform".into(),
                    client_secret: "client-secret-1".into(),
                    ..Default::default()
                }),
                ..orders_of("shop-a")
            })
            .await
            .expect("created");
        let read = redact(registry.get(&created.id).await.expect("read"));
        assert_eq!(read.oauth2.as_ref().expect("oauth2").client_secret, "");
        // Another path of the same origin: the secret stays.
        let moved = registry
            .update(
                pb::Subscription {
                    url: "https://93.184.215.14/other".into(),
                    ..read.clone()
                },
                created.revision,
            )
            .await
            .expect("updated");
        let stored = registry.get(&moved.id).await.expect("read");
        assert_eq!(
            stored.oauth2.expect("oauth2").client_secret,
            "client-secret-1"
        );
        // Another host: the tokens the stored secret gets would go there, so it must be given
        // again, as the owner of the new address would have it.
        let elsewhere = registry
            .update(
                pb::Subscription {
                    url: "https://93.184.215.20/hook".into(),
                    ..read.clone()
                },
                moved.revision,
            )
            .await;
        assert!(
            matches!(&elsewhere, Err(SubscriptionError::Invalid(e)) if e.field == "oauth2.client_secret"),
            "{elsewhere:?}"
        );
        let mut oauth2 = read.oauth2.clone().expect("oauth2");
        oauth2.client_secret = "client-secret-2".into();
        let given = registry
            .update(
                pb::Subscription {
                    url: "https://93.184.215.20/hook".into(),
                    oauth2: Some(oauth2),
                    ..read
                },
                moved.revision,
            )
            .await
            .expect("given again");
        assert_eq!(
            registry
                .get(&given.id)
                .await
                .expect("read")
                .oauth2
                .expect("oauth2")
                .client_secret,
            "client-secret-2"
        );
    }

    #[tokio::test]
    async fn an_operator_s_disable_reason_cannot_pass_for_herald_s_own() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (registry, _) = registry_in(&dir).await;
        let created = registry.create(orders_of("shop-a")).await.expect("created");
        for spoofed in [
            "auto: 3 consecutive failures",
            "gone (410)",
            "moved\u{202e}",
            "Auto: 10 consecutive failures",
            "auto\u{200b}: 3 consecutive failures",
            " GONE(410)",
        ] {
            let refused = registry.disable(&created.id, spoofed).await;
            assert!(
                matches!(&refused, Err(SubscriptionError::Invalid(e)) if e.field == "reason"),
                "{spoofed:?}: {refused:?}"
            );
        }
        let disabled = registry
            .disable(&created.id, "shop closed for inventory")
            .await
            .expect("disabled");
        assert_eq!(disabled.disabled_reason, "shop closed for inventory");
    }

    #[tokio::test]
    async fn a_page_ends_within_its_bytes_and_the_next_goes_on_from_there() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (registry, _) = registry_in(&dir).await;
        // 80 subscriptions of some 33 KB each (32 custom headers of 1 KiB): 2.6 MB in all.
        let headers: std::collections::HashMap<String, String> = (0
            ..herald_core::limits::MAX_HEADERS)
            .map(|n| {
                let value = "v".repeat(herald_core::limits::MAX_HEADER_VALUE_LEN);
                (format!("x-shop-{n}"), value)
            })
            .collect();
        for _ in 0..80 {
            registry
                .create(pb::Subscription {
                    headers: headers.clone(),
                    ..orders_of("shop-a")
                })
                .await
                .expect("created");
        }
        let mut ids = Vec::new();
        let mut token = String::new();
        let mut pages = 0;
        loop {
            let page = registry.list("", 1000, &token).await.expect("a page");
            let bytes: usize = page.subscriptions.iter().map(|s| s.encoded_len()).sum();
            assert!(
                bytes <= herald_core::limits::MAX_PAGE_BYTES,
                "{bytes} bytes"
            );
            ids.extend(page.subscriptions.into_iter().map(|s| s.id));
            pages += 1;
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!(pages, 2);
        let mut distinct = ids.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!((ids.len(), distinct.len()), (80, 80), "each once");
    }

    #[tokio::test]
    async fn an_update_keeps_the_signature_scheme_or_refuses_to_change_it() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (registry, _) = registry_in(&dir).await;
        let created = registry
            .create(pb::Subscription {
                signature_scheme: pb::SignatureScheme::Ed25519 as i32,
                ..orders_of("shop-a")
            })
            .await
            .expect("created");
        let update = |scheme: i32, revision: i64| {
            registry.update(
                pb::Subscription {
                    signature_scheme: scheme,
                    description: "edited".into(),
                    ..created.clone()
                },
                revision,
            )
        };
        for refused in [pb::SignatureScheme::HmacSha256 as i32, 99] {
            let err = update(refused, created.revision)
                .await
                .expect_err("refused");
            assert!(
                matches!(&err, SubscriptionError::Invalid(e) if e.field == "signature_scheme"),
                "{refused}: {err:?}"
            );
        }
        let kept = update(pb::SignatureScheme::Ed25519 as i32, created.revision)
            .await
            .expect("sent back as read");
        let unspecified = update(pb::SignatureScheme::Unspecified as i32, kept.revision)
            .await
            .expect("left unspecified");
        assert_eq!(
            unspecified.signature_scheme,
            pb::SignatureScheme::Ed25519 as i32
        );
    }

    #[tokio::test]
    async fn a_tenant_holds_at_most_its_limit_of_subscriptions() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let registry = registry_in(&dir).await.0.with_max_per_tenant(2);
        let create = |tenant: &str| registry.create(orders_of(tenant));
        let first = create("shop-a").await.expect("created");
        create("shop-a").await.expect("created");
        let full = create("shop-a").await.expect_err("full");
        assert!(matches!(
            &full,
            SubscriptionError::TenantFull { limit: 2, .. }
        ));
        assert_eq!(
            tonic::Status::from(full).code(),
            tonic::Code::ResourceExhausted
        );
        // Another tenant is not held back; a delete makes room.
        create("shop-ab").await.expect("another tenant");
        registry
            .delete_within(&Scope::All, &first.id, first.revision)
            .await
            .expect("deleted");
        create("shop-a").await.expect("room again");
    }

    #[tokio::test]
    async fn connection_headers_and_multi_line_label_keys_are_refused_when_given() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (registry, _) = registry_in(&dir).await;
        let with_header = pb::Subscription {
            headers: [("Content-Encoding".to_owned(), "gzip".to_owned())].into(),
            ..orders_of("shop-a")
        };
        let refused = registry.create(with_header).await.expect_err("refused");
        assert!(
            matches!(&refused, SubscriptionError::Invalid(e) if e.field == "headers"),
            "{refused:?}"
        );
        let with_label = pb::Subscription {
            labels: [("team\nops".to_owned(), "x".to_owned())].into(),
            ..orders_of("shop-a")
        };
        let refused = registry.create(with_label).await.expect_err("refused");
        assert!(
            matches!(&refused, SubscriptionError::Invalid(e) if e.field == "labels"),
            "{refused:?}"
        );
    }

    #[tokio::test]
    async fn creates_racing_at_the_limit_do_not_pass_it_together() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let registry = registry_in(&dir).await.0.with_max_per_tenant(5);
        let racing = (0..30).map(|_| registry.create(orders_of("shop-a")));
        let answers = futures_util::future::join_all(racing).await;
        let created = answers.iter().filter(|a| a.is_ok()).count();
        assert_eq!(created, 5, "{answers:?}");
        assert!(
            answers
                .iter()
                .all(|a| matches!(a, Ok(_) | Err(SubscriptionError::TenantFull { .. })))
        );
        let listed = registry.list("shop-a", 100, "").await.expect("listed");
        assert_eq!(listed.subscriptions.len(), 5);
    }

    #[tokio::test]
    async fn a_create_cannot_set_what_only_the_control_plane_sets() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (registry, _) = registry_in(&dir).await;
        // A time no RFC 3339 text can hold, and one that would skip every parked delivery.
        let far = prost_types::Timestamp {
            seconds: 300_000_000_000,
            nanos: 0,
        };
        let created = registry
            .create(pb::Subscription {
                skip_parked_before: Some(far),
                disabled_at: Some(far),
                ..orders_of("shop-a")
            })
            .await
            .expect("created");
        let stored = registry.get(&created.id).await.expect("stored");
        assert_eq!(stored.skip_parked_before, None);
        assert_eq!(stored.disabled_at, None);
        assert!(stored.enabled);
    }

    #[tokio::test]
    async fn every_address_a_delivery_connects_to_is_held_to_the_target_policy() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (registry, _) = registry_in(&dir).await;
        let refused = |result: Result<pb::Subscription, SubscriptionError>, field: &str| {
            assert!(
                matches!(&result, Err(SubscriptionError::Invalid(e)) if e.field == field),
                "{field}: {result:?}"
            );
        };
        // The subscription's own proxy: a literal address, and a name resolving to one.
        for proxy in ["http://169.254.169.254:80", "http://localhost:3128"] {
            let result = registry
                .create(pb::Subscription {
                    egress: pb::Egress::Proxy as i32,
                    egress_proxy: proxy.into(),
                    ..orders_of("shop-1")
                })
                .await;
            refused(result, "egress_proxy");
        }
        // The OAuth2 token endpoint by a name that resolves to loopback, as the URL would be.
        let result = registry
            .create(pb::Subscription {
                oauth2: Some(pb::OAuth2 {
                    token_url: "https://localhost:8443/token".into(),
                    client_id: "platform".into(),
                    client_secret: "client-secret".into(),
                    ..Default::default()
                }),
                ..orders_of("shop-1")
            })
            .await;
        refused(result, "oauth2.token_url");
        // A header of its own named as the one the OAuth2 token goes in: two would be sent.
        let result = registry
            .create(pb::Subscription {
                oauth2: Some(pb::OAuth2 {
                    token_url: "https://93.184.216.34/token".into(),
                    client_id: "platform".into(),
                    client_secret: "client-secret".into(),
                    ..Default::default()
                }),
                headers: [("Authorization".to_owned(), "Bearer static".to_owned())].into(),
                ..orders_of("shop-1")
            })
            .await;
        refused(result, "headers");
    }

    #[tokio::test]
    async fn sealed_values_a_caller_sends_are_neither_taken_nor_answered() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (registry, _) = registry_in(&dir).await;
        let sealed = pb::SealedSecret {
            key_id: "k1".into(),
            ..Default::default()
        };
        let created = registry
            .create(pb::Subscription {
                sealed_headers: [("x-evil".to_owned(), sealed.clone())].into(),
                sealed_egress_proxy: Some(sealed.clone()),
                sealed_client_key: Some(sealed.clone()),
                sealed_oauth2_client_secret: Some(sealed),
                ..orders_of("shop-1")
            })
            .await
            .expect("created");
        assert!(created.sealed_headers.is_empty());
        assert!(created.sealed_egress_proxy.is_none());
        assert!(created.sealed_client_key.is_none());
        assert!(created.sealed_oauth2_client_secret.is_none());
        assert!(created.secrets.iter().all(|s| s.sealed.is_none()));
    }

    #[tokio::test]
    async fn a_proxy_admitted_before_is_not_checked_again_until_it_changes() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let store = Store::embedded(dir.path()).await.expect("a store");
        let keyring =
            Arc::new(Keyring::parse(&Keyring::generate_entry("k1").expect("a key")).expect("ok"));
        // Written while the policy admitted the internal proxy (an earlier version, or an
        // operator's wider --allow-targets then).
        let wide = Subscriptions::new(
            store.clone(),
            TargetPolicy::new(false, vec!["10.0.0.0/8".parse().expect("a range")]),
            keyring.clone(),
        );
        let created = wide
            .create(pb::Subscription {
                egress: pb::Egress::Proxy as i32,
                egress_proxy: "http://10.1.2.3:3128".into(),
                ..orders_of("shop-1")
            })
            .await
            .expect("created");
        let strict = Subscriptions::new(store, TargetPolicy::new(false, vec![]), keyring);
        let read = redact(strict.get(&created.id).await.expect("read"));
        let described = strict
            .update(
                pb::Subscription {
                    description: "still through the internal proxy".into(),
                    ..read.clone()
                },
                read.revision,
            )
            .await
            .expect("another change goes through");
        let revision = described.revision;
        let moved = strict
            .update(
                pb::Subscription {
                    egress_proxy: "http://10.9.9.9:3128".into(),
                    ..redact(described)
                },
                revision,
            )
            .await;
        assert!(
            matches!(&moved, Err(SubscriptionError::Invalid(e)) if e.field == "egress_proxy"),
            "a new proxy is checked: {moved:?}"
        );
    }

    #[tokio::test]
    async fn a_subscription_proxy_is_sealed_masked_on_reads_and_kept_by_a_masked_update() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (registry, store) = registry_in(&dir).await;
        let created = registry
            .create(pb::Subscription {
                egress: pb::Egress::Proxy as i32,
                egress_proxy: "http://egress:pa55-word@93.184.215.16:3128".into(),
                ..orders_of("shop-1")
            })
            .await
            .expect("created");
        let key = keys::subscription("shop-1", &created.id);
        let raw = store.get(&key).await.expect("read").expect("there");
        assert!(!String::from_utf8_lossy(&raw.value).contains("pa55-word"));
        let read = redact(registry.get(&created.id).await.expect("read"));
        assert_eq!(read.egress_proxy, "http://egress:****@93.184.215.16:3128");
        // Sent back as read, with another change: the password stays.
        let updated = registry
            .update(
                pb::Subscription {
                    description: "via the egress proxy".into(),
                    ..read.clone()
                },
                read.revision,
            )
            .await
            .expect("updated");
        assert_eq!(
            updated.egress_proxy,
            "http://egress:pa55-word@93.184.215.16:3128"
        );
        // A proxy URL without EGRESS_PROXY, or a bad one, is refused naming the field.
        for (egress, url) in [
            (pb::Egress::Direct, "http://93.184.215.16:3128"),
            (pb::Egress::Proxy, "https://93.184.215.16:3128"),
        ] {
            let refused = registry
                .update(
                    pb::Subscription {
                        egress: egress as i32,
                        egress_proxy: url.into(),
                        ..updated.clone()
                    },
                    updated.revision,
                )
                .await;
            assert!(
                matches!(&refused, Err(SubscriptionError::Invalid(e)) if e.field == "egress_proxy"),
                "{refused:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_record_stored_before_the_stricter_checks_still_delivers_and_changes() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (registry, store) = registry_in(&dir).await;
        // What earlier versions accepted: a tab in the URL (parsers drop it), an escape in the
        // description, a timeout whose nanos are not normalised.
        let legacy = pb::Subscription {
            id: "sub_01OLDER".into(),
            url: "https://93.184.215.14/h\tx".into(),
            description: "\u{1b}[31mred".into(),
            timeout: Some(prost_types::Duration {
                seconds: 1,
                nanos: 2_000_000_000,
            }),
            envelope: pb::Envelope::Standard as i32,
            secrets: vec![wire_secret(&SigningSecret::generate(), SystemTime::now())],
            enabled: true,
            ..orders_of("shop-1")
        };
        let txn = Txn::default()
            .then(Op::Put(
                keys::subscription("shop-1", "sub_01OLDER"),
                encode(&legacy, &registry.keyring).expect("encoded"),
            ))
            .then(Op::Put(
                keys::subscription_id("sub_01OLDER"),
                b"shop-1".to_vec(),
            ));
        store.txn(txn).await.expect("written");
        // Agents read it; sealing upgrades, disabling and enabling go through.
        let read = registry.get("sub_01OLDER").await.expect("read");
        convert::subscription(&read, false).expect("an agent reads it");
        registry.upgrade_all("herald").await.expect("upgraded");
        let disabled = registry
            .disable("sub_01OLDER", "shop closed")
            .await
            .expect("disabled");
        assert!(!disabled.enabled);
        // Sent again as it is, it is held to today's checks, which say what to fix.
        let refused = registry.update(read, disabled.revision).await;
        assert!(
            matches!(&refused, Err(SubscriptionError::Invalid(e)) if e.field == "url"),
            "{refused:?}"
        );
    }

    #[tokio::test]
    async fn header_values_written_in_the_clear_are_sealed_at_start() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (registry, store) = registry_in(&dir).await;
        // A record as an earlier version wrote it: header values in the clear.
        let legacy = pb::Subscription {
            id: "sub_01LEGACY".into(),
            tenant: "shop-1".into(),
            url: "https://93.184.215.14/hook".into(),
            event_types: vec!["order.*".into()],
            headers: [("X-Api-Key".to_owned(), "clear-value-123".to_owned())].into(),
            envelope: pb::Envelope::Standard as i32,
            secrets: vec![wire_secret(&SigningSecret::generate(), SystemTime::now())],
            ..Default::default()
        };
        let key = keys::subscription("shop-1", "sub_01LEGACY");
        let txn = Txn::default()
            .then(Op::Put(key.clone(), legacy.encode_to_vec()))
            .then(Op::Put(
                keys::subscription_id("sub_01LEGACY"),
                b"shop-1".to_vec(),
            ));
        store.txn(txn).await.expect("written");
        assert_eq!(registry.upgrade_all("herald").await.expect("upgraded"), 1);
        let raw = store.get(&key).await.expect("read").expect("there");
        let stored = pb::Subscription::decode(raw.value.as_slice()).expect("a record");
        assert!(stored.headers.is_empty());
        assert_eq!(stored.sealed_headers["X-Api-Key"].key_id, "k1");
        let read = registry.get("sub_01LEGACY").await.expect("read");
        assert_eq!(read.headers["X-Api-Key"], "clear-value-123");
        assert_eq!(registry.upgrade_all("herald").await.expect("upgraded"), 0);
        let redacted = redact(read);
        assert!(redacted.header_values_hidden && redacted.headers["X-Api-Key"].is_empty());
    }
}
