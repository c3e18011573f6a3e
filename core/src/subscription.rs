//! A subscription as the delivery path uses it: every field already validated and parsed
//! (URL, event filter, secrets, schedule), so an agent never re-checks a rule at send time.
//! Built from the wire message in exactly one place (`herald_proto::convert::subscription`).

use std::time::{Duration, SystemTime};

use crate::event_type::EventFilter;
use crate::format::{Envelope, PayloadFormat};
use crate::retry::RetrySchedule;
use crate::signing::SigningSecret;

/// Per-attempt timeout when a subscription sets none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);
/// The longest per-attempt timeout a subscription may set.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(120);
/// How long replaced secrets keep signing after a rotation, by default.
pub const DEFAULT_ROTATION_GRACE: Duration = Duration::from_secs(24 * 60 * 60);
/// How many signing secrets a subscription may hold at once (the current one plus those in
/// their rotation grace period).
pub const MAX_SECRETS: usize = 8;
/// Attempts in flight to one endpoint at once (per agent), when a subscription sets none.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 16;
/// The most attempts in flight to one endpoint a subscription may ask for.
pub const MAX_MAX_IN_FLIGHT: u32 = 1024;
/// The highest per-subscription rate limit (requests per second).
pub const MAX_RATE_LIMIT: u32 = 100_000;
/// Consecutive failed attempts after which a subscription is disabled, by default.
pub const DEFAULT_DISABLE_AFTER: u32 = 10;
/// The most consecutive failures a subscription may allow before it is disabled.
pub const MAX_DISABLE_AFTER: u32 = 100_000;
/// The longest minimum failing time a subscription may ask for before it is disabled.
pub const MAX_DISABLE_MIN_FAILING: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// How many regions a subscription may name.
pub const MAX_REGIONS: usize = 32;

/// A validated webhook endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    /// `sub_…`.
    pub id: String,
    /// The owner; only this tenant's events reach the endpoint.
    pub tenant: String,
    /// Where requests go.
    pub url: url::Url,
    /// Which event types it receives.
    pub filter: EventFilter,
    /// Which of those events it receives, by their payload and attributes; `None`: all.
    pub payload_filter: Option<crate::payload_filter::PayloadFilter>,
    /// The body format.
    pub format: PayloadFormat,
    /// Whether the body wraps the payload in the Standard Webhooks envelope.
    pub envelope: Envelope,
    /// Signing secrets, newest first.
    pub secrets: Vec<Secret>,
    /// Extra request headers, validated against the reserved names.
    pub headers: Vec<(String, String)>,
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// When to try again after failures.
    pub retry: RetrySchedule,
    /// Attempts in flight to this endpoint at once (per agent): its lane's width, so a slow
    /// endpoint holds at most this many of the agent's delivery slots.
    pub max_in_flight: u32,
    /// Most requests per second to this endpoint (per agent); `None` means no limit.
    pub rate_limit: Option<u32>,
    /// Disabled subscriptions receive nothing: their deliveries are parked.
    pub enabled: bool,
    /// Parked deliveries of events accepted before this time are skipped, not sent (the
    /// subscription was enabled without replaying them); deliveries queued after it (a
    /// replay) are sent.
    pub skip_parked_before: Option<SystemTime>,
    /// Regions whose agents deliver it; empty means all.
    pub regions: Vec<String>,
    /// Whether requests carry the emitter's W3C `traceparent` (an opt-in: trace ids are
    /// internal unless the receiver shares the tracing system).
    pub send_trace_context: bool,
    /// How its deliveries leave the agent: through the agent's egress proxy (if any), directly,
    /// or through its own proxy.
    pub egress: crate::egress::Egress,
    /// The certificate and key presented to a receiver that requires mutual TLS.
    pub client_identity: Option<ClientIdentity>,
    /// OAuth2 client credentials: requests carry a bearer token fetched with them.
    pub oauth2: Option<OAuth2Client>,
    /// The store revision of this version.
    pub revision: i64,
}

/// The largest client certificate chain accepted (PEM).
pub const MAX_CLIENT_CERT_BYTES: usize = 32 * 1024;
/// The largest client key accepted (PEM).
pub const MAX_CLIENT_KEY_BYTES: usize = 16 * 1024;

/// A client certificate chain and its key, presented to a receiver that requires mutual TLS.
/// The key never shows in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    cert_pem: String,
    key_pem: String,
    /// Made once: the agent looks its connection pool up by it at every attempt.
    fingerprint: String,
}

impl ClientIdentity {
    /// The pair: the chain (PEM, leaf first) and its private key (PEM).
    pub fn new(cert_pem: String, key_pem: String) -> Self {
        let fingerprint = fingerprint(&[&cert_pem, &key_pem]);
        ClientIdentity {
            cert_pem,
            key_pem,
            fingerprint,
        }
    }

    /// The certificate chain, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The private key, PEM: for the TLS configuration and nothing else.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// A digest naming this pair (connections are pooled by it), revealing nothing of the key.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ClientIdentity {{ cert: {} bytes, key: <redacted> }}",
            self.cert_pem.len()
        )
    }
}

/// The SHA-256 of `parts`, each ended by a zero byte, in hex: a name for secret settings that
/// reveals nothing of them.
fn fingerprint(parts: &[&str]) -> String {
    use sha2::Digest as _;
    let mut digest = sha2::Sha256::new();
    for part in parts {
        digest.update(part.as_bytes());
        digest.update([0]);
    }
    digest
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The longest OAuth2 client id, scope or audience accepted.
pub const MAX_OAUTH2_FIELD_BYTES: usize = 1024;

/// OAuth2 client credentials (RFC 6749 section 4.4) for a receiver that wants a bearer token.
/// The secret never shows in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct OAuth2Client {
    /// The token endpoint.
    pub token_url: url::Url,
    /// The client id.
    pub client_id: String,
    client_secret: String,
    /// The `scope` of the token request; empty: none.
    pub scope: String,
    /// The `audience` of the token request; empty: none.
    pub audience: String,
    /// Made once: the agent looks its token up by it at every attempt.
    fingerprint: String,
}

impl OAuth2Client {
    /// The credentials.
    pub fn new(
        token_url: url::Url,
        client_id: String,
        client_secret: String,
        scope: String,
        audience: String,
    ) -> Self {
        let fingerprint = fingerprint(&[
            token_url.as_str(),
            &client_id,
            &client_secret,
            &scope,
            &audience,
        ]);
        OAuth2Client {
            token_url,
            client_id,
            client_secret,
            scope,
            audience,
            fingerprint,
        }
    }

    /// The client secret: for the token request and nothing else.
    pub fn client_secret(&self) -> &str {
        &self.client_secret
    }

    /// A digest naming these credentials (tokens are cached by it), revealing nothing of
    /// the secret.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}

impl std::fmt::Debug for OAuth2Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuth2Client")
            .field("token_url", &self.token_url.as_str())
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("scope", &self.scope)
            .field("audience", &self.audience)
            .finish()
    }
}

/// A signing secret and, once replaced by a rotation, when it stops signing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secret {
    /// The key.
    pub secret: SigningSecret,
    /// `None` while it is current.
    pub expires_at: Option<SystemTime>,
}

impl Subscription {
    /// Whether an event of this tenant and type goes to this subscription (at once, or parked
    /// until it is enabled when it is disabled).
    pub fn accepts(&self, tenant: &str, event_type: &str) -> bool {
        self.tenant == tenant && self.filter.matches(event_type)
    }

    /// Whether agents of `region` deliver this subscription.
    pub fn serves_region(&self, region: &str) -> bool {
        self.regions.is_empty() || self.regions.iter().any(|r| r == region)
    }

    /// The secrets that sign a request sent at `now`: every secret not yet expired.
    pub fn signing_secrets(&self, now: SystemTime) -> Vec<SigningSecret> {
        self.secrets
            .iter()
            .filter(|s| s.expires_at.is_none_or(|at| at > now))
            .map(|s| s.secret.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscription() -> Subscription {
        Subscription {
            id: "sub_1".into(),
            tenant: "shop-1".into(),
            url: url::Url::parse("https://example.com/hook").expect("url"),
            filter: EventFilter::parse(&["order.*"]).expect("filter"),
            payload_filter: None,
            format: PayloadFormat::Json,
            envelope: Envelope::Standard,
            secrets: vec![],
            headers: vec![],
            timeout: DEFAULT_TIMEOUT,
            retry: RetrySchedule::default(),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT as u32,
            rate_limit: None,
            enabled: true,
            skip_parked_before: None,
            regions: vec![],
            send_trace_context: false,
            egress: crate::egress::Egress::AgentDefault,
            client_identity: None,
            oauth2: None,
            revision: 1,
        }
    }

    #[test]
    fn accepts_only_its_tenant_and_types_enabled_or_not() {
        let mut sub = subscription();
        assert!(sub.accepts("shop-1", "order.created"));
        assert!(!sub.accepts("shop-2", "order.created"));
        assert!(!sub.accepts("shop-1", "product.created"));
        sub.enabled = false;
        assert!(
            sub.accepts("shop-1", "order.created"),
            "parked, not dropped"
        );
    }

    #[test]
    fn expired_secrets_stop_signing() {
        let now = SystemTime::now();
        let mut sub = subscription();
        let current = SigningSecret::generate();
        let old = SigningSecret::generate();
        let gone = SigningSecret::generate();
        sub.secrets = vec![
            Secret {
                secret: current.clone(),
                expires_at: None,
            },
            Secret {
                secret: old.clone(),
                expires_at: Some(now + Duration::from_secs(60)),
            },
            Secret {
                secret: gone,
                expires_at: Some(now - Duration::from_secs(1)),
            },
        ];
        assert_eq!(sub.signing_secrets(now), vec![current, old]);
    }

    #[test]
    fn regions_scope_delivery() {
        let mut sub = subscription();
        assert!(sub.serves_region("eu-1"));
        sub.regions = vec!["us-1".into()];
        assert!(!sub.serves_region("eu-1"));
        assert!(sub.serves_region("us-1"));
    }
}
