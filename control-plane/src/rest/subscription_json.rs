//! A subscription in JSON: what reads answer ([`Subscription`]) and what creates and updates
//! send ([`SubscriptionSpec`]), with its endpoint health ([`Health`]).
//!
//! A spec takes the fields a read shows, so a client can GET a subscription, change a field
//! and PUT it back: the read-only ones it carries are ignored. Any other unknown field is
//! refused, so a misspelt option is not silently dropped.

use std::collections::BTreeMap;

use herald_core::validate::quoted;
use herald_proto::convert::{duration, std_duration};
use herald_proto::v1 as pb;
use herald_proto::words;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::json::{duration_text, millis, parse_duration, time, wire_duration};
use super::problem::ApiError;

/// A webhook endpoint.
#[derive(Debug, Serialize, ToSchema)]
pub struct Subscription {
    /// `sub_…`.
    pub id: String,
    /// The tenant it belongs to.
    pub tenant: String,
    /// Where requests go.
    pub url: String,
    /// Exact event types and patterns (`order.*`).
    pub event_types: Vec<String>,
    /// The payload filter (`{"total": {"$gte": 100}}`); none: every event of those types.
    #[schema(value_type = Option<Object>)]
    pub filter: Option<serde_json::Value>,
    /// `json` or `xml`.
    pub format: &'static str,
    /// `standard` (the Standard Webhooks envelope) or `raw`.
    pub envelope: &'static str,
    /// `v1` (HMAC-SHA256) or `v1a` (ed25519).
    pub signature: &'static str,
    /// Signing secrets, newest first; values only with `show_secrets` (and on create and
    /// rotation).
    pub secrets: Vec<Secret>,
    /// Extra request headers; values only with `show_secrets` (else blank, and
    /// `header_values_hidden`).
    pub headers: BTreeMap<String, String>,
    /// The header values are blank because this read may not show them.
    pub header_values_hidden: bool,
    /// The per-attempt timeout, e.g. `15s`.
    pub timeout: String,
    /// When to try again.
    pub retry: Retry,
    /// Whether deliveries are made.
    pub enabled: bool,
    /// Why it is disabled (empty while enabled).
    pub disabled_reason: String,
    /// When it was disabled.
    pub disabled_at: Option<String>,
    /// Deliveries parked before this time are skipped (set by an enable without
    /// `replay_parked`).
    pub skip_parked_before: Option<String>,
    /// A note for people.
    pub description: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Regions whose agents deliver it (empty: all).
    pub regions: Vec<String>,
    /// Attempts in flight at once per agent (0: the default).
    pub max_in_flight: u32,
    /// Requests per second per agent (0: no limit).
    pub rate_limit: u32,
    /// Consecutive failures that disable it (0: the default, 10).
    pub disable_after: u32,
    /// How long the failures must also have gone on, e.g. `1h` (none: no minimum).
    pub disable_min_failing: Option<String>,
    /// Whether the emitter's trace context is sent on.
    pub send_trace_context: bool,
    /// How deliveries leave the agent: `agent` (its egress proxy, if any), `direct`, or the
    /// subscription's own proxy URL (its password `****` unless secrets are shown).
    pub egress: String,
    /// The client certificate chain (PEM) presented for mutual TLS; empty: none.
    pub client_cert: String,
    /// When the client certificate expires.
    pub client_cert_expires_at: Option<String>,
    /// OAuth2 client credentials the agent fetches bearer tokens with (the secret blank
    /// unless secrets are shown).
    pub oauth2: Option<OAuth2>,
    /// When it was made.
    pub created_at: Option<String>,
    /// When it last changed.
    pub updated_at: Option<String>,
    /// The config store revision it is at (send it back to update).
    pub revision: i64,
}

/// A signing secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct Secret {
    /// `whsec_…` / `whsk_…`; present only when secrets are shown.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub secret: String,
    /// For ed25519 keys: the public key receivers verify with.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub public_key: String,
    /// When it was made.
    pub created_at: Option<String>,
    /// When a rotation ends it.
    pub expires_at: Option<String>,
}

/// When to try again after a failed attempt: a list of delays, or exponential backoff. Neither
/// means the default schedule (5s, 5m, 30m, 2h, 5h, 10h, 10h).
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// The delays after the first attempt, e.g. `["5s", "5m", "30m"]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub delays: Vec<String>,
    /// Delays growing by a factor up to a cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exponential: Option<Exponential>,
}

/// Delays `base`, `base·factor`, `base·factor²`, … each at most `cap`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Exponential {
    /// The first delay, e.g. `5s`.
    pub base: String,
    /// 1.0 to 10.0.
    pub factor: f64,
    /// The longest delay, e.g. `1h`.
    pub cap: String,
    /// Attempts in all, the first included: 1 to 51.
    pub max_attempts: u32,
}

impl Retry {
    fn from_wire(policy: Option<&pb::RetryPolicy>) -> Self {
        let Some(policy) = policy else {
            return Retry::default();
        };
        Retry {
            delays: policy
                .delays
                .iter()
                .filter_map(|d| duration_text(Some(d)))
                .collect(),
            exponential: policy.exponential.as_ref().map(|e| Exponential {
                base: duration_text(e.base.as_ref()).unwrap_or_default(),
                factor: e.factor,
                cap: duration_text(e.cap.as_ref()).unwrap_or_default(),
                max_attempts: e.max_attempts,
            }),
        }
    }

    /// The wire policy; the control plane checks its bounds as for gRPC.
    fn to_wire(&self) -> Result<pb::RetryPolicy, ApiError> {
        let delays = self
            .delays
            .iter()
            .map(|d| parse_duration("retry.delays", d).map(duration))
            .collect::<Result<Vec<_>, _>>()?;
        let exponential = self
            .exponential
            .as_ref()
            .map(|e| {
                Ok::<_, ApiError>(pb::ExponentialBackoff {
                    base: Some(duration(parse_duration("retry.exponential.base", &e.base)?)),
                    factor: e.factor,
                    cap: Some(duration(parse_duration("retry.exponential.cap", &e.cap)?)),
                    max_attempts: e.max_attempts,
                })
            })
            .transpose()?;
        Ok(pb::RetryPolicy {
            delays,
            exponential,
        })
    }
}

impl From<pb::Subscription> for Subscription {
    fn from(sub: pb::Subscription) -> Self {
        let timeout = sub
            .timeout
            .as_ref()
            .and_then(std_duration)
            .unwrap_or(herald_core::subscription::DEFAULT_TIMEOUT);
        Subscription {
            egress: words::egress(&sub),
            client_cert_expires_at: time(sub.client_cert_expires_at.as_ref()),
            client_cert: sub.client_cert.clone(),
            oauth2: sub.oauth2.clone().map(OAuth2::from),
            format: words::format(sub.format),
            envelope: words::envelope(sub.envelope),
            signature: words::signature(sub.signature_scheme),
            secrets: sub
                .secrets
                .into_iter()
                .map(|s| Secret {
                    secret: s.secret,
                    public_key: s.public_key,
                    created_at: time(s.created_at.as_ref()),
                    expires_at: time(s.expires_at.as_ref()),
                })
                .collect(),
            headers: sub.headers.into_iter().collect(),
            header_values_hidden: sub.header_values_hidden,
            timeout: humantime::format_duration(timeout).to_string(),
            retry: Retry::from_wire(sub.retry.as_ref()),
            disabled_at: time(sub.disabled_at.as_ref()),
            skip_parked_before: time(sub.skip_parked_before.as_ref()),
            disable_min_failing: duration_text(sub.disable_min_failing.as_ref()),
            created_at: time(sub.created_at.as_ref()),
            updated_at: time(sub.updated_at.as_ref()),
            labels: sub.labels.into_iter().collect(),
            id: sub.id,
            tenant: sub.tenant,
            url: sub.url,
            event_types: sub.event_types,
            filter: (!sub.payload_filter.is_empty())
                .then(|| serde_json::from_str(&sub.payload_filter).ok())
                .flatten(),
            enabled: sub.enabled,
            disabled_reason: sub.disabled_reason,
            description: sub.description,
            regions: sub.regions,
            max_in_flight: sub.max_in_flight,
            rate_limit: sub.rate_limit,
            disable_after: sub.disable_after,
            send_trace_context: sub.send_trace_context,
            revision: sub.revision,
        }
    }
}

/// OAuth2 client credentials (client credentials grant). Unknown fields are refused, so a
/// misspelt `client_secret` on an update is said, not dropped.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OAuth2 {
    /// The token endpoint.
    pub token_url: String,
    /// The client id.
    pub client_id: String,
    /// The client secret: blank on reads without secrets; on update, blank keeps it.
    #[serde(default)]
    pub client_secret: String,
    /// The token request's `scope`.
    #[serde(default)]
    pub scope: String,
    /// The token request's `audience`.
    #[serde(default)]
    pub audience: String,
}

/// Shows no client secret.
impl std::fmt::Debug for OAuth2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuth2")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &(!self.client_secret.is_empty()).then_some("<redacted>"),
            )
            .field("scope", &self.scope)
            .field("audience", &self.audience)
            .finish()
    }
}

impl From<pb::OAuth2> for OAuth2 {
    fn from(o: pb::OAuth2) -> Self {
        OAuth2 {
            token_url: o.token_url,
            client_id: o.client_id,
            client_secret: o.client_secret,
            scope: o.scope,
            audience: o.audience,
        }
    }
}

/// A page of subscriptions.
#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriptionPage {
    /// In key order (tenant, then id).
    pub subscriptions: Vec<Subscription>,
    /// Where the next page starts; empty on the last.
    pub next_page_token: String,
}

/// What a create (POST) or an update (PUT) sets. An update replaces every field it may
/// change: one left out takes its default, except header values sent blank, which keep the
/// stored ones.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionSpec {
    /// The tenant whose events it receives (required on create; an update keeps it).
    #[serde(default)]
    pub tenant: String,
    /// Where requests go: `https://…`.
    pub url: String,
    /// Exact event types and patterns: `order.created`, `order.*`, `*`.
    pub event_types: Vec<String>,
    /// `json` (default) or `xml`.
    #[serde(default)]
    pub format: Option<String>,
    /// `standard` (default on create; an update without it keeps the current) or `raw`.
    #[serde(default)]
    pub envelope: Option<String>,
    /// `v1` (HMAC-SHA256, the default) or `v1a` (ed25519); set on create only.
    #[serde(default)]
    pub signature: Option<String>,
    /// Extra request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Per-attempt timeout, e.g. `15s` (the default).
    #[serde(default)]
    pub timeout: Option<String>,
    /// When to try again.
    #[serde(default)]
    pub retry: Option<Retry>,
    /// Receive only the events whose payload matches this filter (`{"total": {"$gte":
    /// 100}}`: operators `$eq $neq $gt $gte $lt $lte $in $nin $exist $startsWith $endsWith
    /// $and $or $not`, and `$attributes` for the event's attributes); none: every event.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub filter: Option<serde_json::Value>,
    /// A note for people.
    #[serde(default)]
    pub description: String,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Regions whose agents deliver it (empty: all).
    #[serde(default)]
    pub regions: Vec<String>,
    /// Attempts in flight at once per agent (0: the default, 16).
    #[serde(default)]
    pub max_in_flight: u32,
    /// Requests per second per agent (0: no limit).
    #[serde(default)]
    pub rate_limit: u32,
    /// Consecutive failures that disable it (0: the default, 10).
    #[serde(default)]
    pub disable_after: u32,
    /// How long the failures must also have gone on, e.g. `1h`.
    #[serde(default)]
    pub disable_min_failing: Option<String>,
    /// Send the emitter's trace context on.
    #[serde(default)]
    pub send_trace_context: bool,
    /// How deliveries leave the agent: `agent` (the default: its egress proxy, if any),
    /// `direct`, or a proxy URL `http://[user:password@]host:port`. On update, the masked
    /// URL a read shows keeps the stored password.
    #[serde(default)]
    pub egress: Option<String>,
    /// The client certificate chain (PEM) for mutual TLS, with `client_key`; empty: none.
    #[serde(default)]
    pub client_cert: String,
    /// Its private key (PEM): write-only. Empty with the same certificate keeps the stored key.
    #[serde(default)]
    pub client_key: String,
    /// OAuth2 client credentials; a blank secret on update keeps the stored one, except for a
    /// URL moved to another origin (the tokens it gets go only to the origin it was given for).
    #[serde(default)]
    pub oauth2: Option<OAuth2>,
    /// On update: the revision the caller read (required there; a stale one is 409).
    #[serde(default)]
    pub revision: Option<i64>,
    // The read-only fields a read shows: taken and ignored, so a read can be sent back.
    // The document lists them as read-only, so a validator passes such a round trip.
    /// Read-only: what a read shows; ignored here.
    #[serde(default, rename = "id")]
    #[schema(value_type = String, read_only)]
    _id: Option<serde::de::IgnoredAny>,
    /// Read-only: what a read shows; ignored here.
    #[serde(default, rename = "secrets")]
    #[schema(value_type = Vec<Object>, read_only)]
    _secrets: Option<serde::de::IgnoredAny>,
    /// Read-only: what a read shows; ignored here.
    #[serde(default, rename = "header_values_hidden")]
    #[schema(value_type = bool, read_only)]
    _header_values_hidden: Option<serde::de::IgnoredAny>,
    /// Read-only: what a read shows; ignored here.
    #[serde(default, rename = "client_cert_expires_at")]
    #[schema(value_type = Option<String>, read_only)]
    _client_cert_expires_at: Option<serde::de::IgnoredAny>,
    /// Read-only: what a read shows; ignored here.
    #[serde(default, rename = "enabled")]
    #[schema(value_type = bool, read_only)]
    _enabled: Option<serde::de::IgnoredAny>,
    /// Read-only: what a read shows; ignored here.
    #[serde(default, rename = "disabled_reason")]
    #[schema(value_type = String, read_only)]
    _disabled_reason: Option<serde::de::IgnoredAny>,
    /// Read-only: what a read shows; ignored here.
    #[serde(default, rename = "disabled_at")]
    #[schema(value_type = Option<String>, read_only)]
    _disabled_at: Option<serde::de::IgnoredAny>,
    /// Read-only: what a read shows; ignored here.
    #[serde(default, rename = "skip_parked_before")]
    #[schema(value_type = Option<String>, read_only)]
    _skip_parked_before: Option<serde::de::IgnoredAny>,
    /// Read-only: what a read shows; ignored here.
    #[serde(default, rename = "created_at")]
    #[schema(value_type = Option<String>, read_only)]
    _created_at: Option<serde::de::IgnoredAny>,
    /// Read-only: what a read shows; ignored here.
    #[serde(default, rename = "updated_at")]
    #[schema(value_type = Option<String>, read_only)]
    _updated_at: Option<serde::de::IgnoredAny>,
}

impl SubscriptionSpec {
    /// The wire subscription it describes (id set by the caller for updates).
    pub fn to_wire(&self, id: String) -> Result<pb::Subscription, ApiError> {
        let format = match self.format.as_deref() {
            None => pb::Format::Unspecified,
            Some(word) => herald_proto::convert::wire_format(
                herald_core::format::PayloadFormat::parse(word).map_err(ApiError::validation)?,
            ),
        };
        let envelope = match self.envelope.as_deref() {
            None => pb::Envelope::Unspecified,
            Some(word) => herald_proto::convert::wire_envelope(
                herald_core::format::Envelope::parse(word).map_err(ApiError::validation)?,
            ),
        };
        let signature = match self.signature.as_deref() {
            None => pb::SignatureScheme::Unspecified,
            Some(word) => words::parse_signature(word).ok_or_else(|| {
                ApiError::invalid_field(
                    "signature",
                    format!("{} is neither v1 nor v1a", quoted(word)),
                )
            })?,
        };
        let mut wire = pb::Subscription {
            id,
            tenant: self.tenant.clone(),
            url: self.url.clone(),
            event_types: self.event_types.clone(),
            payload_filter: self
                .filter
                .as_ref()
                .filter(|f| !f.is_null())
                .map(|f| f.to_string())
                .unwrap_or_default(),
            format: format as i32,
            envelope: envelope as i32,
            signature_scheme: signature as i32,
            headers: self.headers.clone().into_iter().collect(),
            timeout: wire_duration("timeout", self.timeout.as_deref())?,
            retry: self.retry.as_ref().map(Retry::to_wire).transpose()?,
            description: self.description.clone(),
            labels: self.labels.clone().into_iter().collect(),
            regions: self.regions.clone(),
            max_in_flight: self.max_in_flight,
            rate_limit: self.rate_limit,
            disable_after: self.disable_after,
            disable_min_failing: wire_duration(
                "disable_min_failing",
                self.disable_min_failing.as_deref(),
            )?,
            send_trace_context: self.send_trace_context,
            client_cert: self.client_cert.clone(),
            client_key: self.client_key.clone(),
            oauth2: self.oauth2.clone().map(|o| pb::OAuth2 {
                token_url: o.token_url,
                client_id: o.client_id,
                client_secret: o.client_secret,
                scope: o.scope,
                audience: o.audience,
            }),
            ..Default::default()
        };
        if let Some(word) = self.egress.as_deref() {
            // A masked URL (as reads show it) is passed on: the update keeps the stored password.
            let egress = words::parse_egress(word)
                .map_err(|e| ApiError::invalid_field("egress", e.to_string()))?;
            herald_proto::convert::set_egress(&mut wire, &egress);
        }
        Ok(wire)
    }
}

/// How an endpoint is doing.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// The subscription.
    pub subscription_id: String,
    /// Failed attempts since the last success.
    pub consecutive_failures: u32,
    /// The first failure of the current run of failures.
    pub failing_since: Option<String>,
    /// The last failure.
    pub last_failure_at: Option<String>,
    /// The newest delivered attempt known.
    pub last_success_at: Option<String>,
    /// The last failure's status code or error.
    pub last_error: String,
    /// Attempts in the recent window (the last 24 hours, at most 10,000).
    pub recent_attempts: u32,
    /// Where the recent window starts.
    pub recent_since: Option<String>,
    /// Delivered among the recent attempts, 0 to 1.
    pub success_rate: f64,
    /// Median attempt duration, in milliseconds.
    pub latency_p50_ms: f64,
    /// 99th percentile attempt duration, in milliseconds.
    pub latency_p99_ms: f64,
}

impl From<pb::SubscriptionHealth> for Health {
    fn from(h: pb::SubscriptionHealth) -> Self {
        Health {
            failing_since: time(h.failing_since.as_ref()),
            last_failure_at: time(h.last_failure_at.as_ref()),
            last_success_at: time(h.last_success_at.as_ref()),
            recent_since: time(h.recent_since.as_ref()),
            latency_p50_ms: millis(h.latency_p50.as_ref()),
            latency_p99_ms: millis(h.latency_p99.as_ref()),
            subscription_id: h.subscription_id,
            consecutive_failures: h.consecutive_failures,
            last_error: h.last_error,
            recent_attempts: h.recent_attempts,
            success_rate: h.success_rate,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire() -> pb::Subscription {
        pb::Subscription {
            id: "sub_01ABC".into(),
            tenant: "shop-a".into(),
            url: "https://shop.example/hook".into(),
            event_types: vec!["order.*".into()],
            format: pb::Format::Xml as i32,
            envelope: pb::Envelope::Standard as i32,
            timeout: Some(duration(std::time::Duration::from_secs(20))),
            retry: Some(pb::RetryPolicy {
                delays: vec![duration(std::time::Duration::from_secs(5))],
                exponential: None,
            }),
            disable_after: 3,
            revision: 7,
            enabled: true,
            ..Default::default()
        }
    }

    #[test]
    fn a_read_sent_back_as_a_spec_describes_the_same_subscription() {
        let read = serde_json::to_value(Subscription::from(wire())).expect("serializes");
        let spec: SubscriptionSpec = serde_json::from_value(read).expect("a read is a spec");
        assert_eq!(spec.revision, Some(7));
        let back = spec.to_wire("sub_01ABC".into()).expect("valid");
        let expected = wire();
        assert_eq!(back.url, expected.url);
        assert_eq!(back.format, expected.format);
        assert_eq!(back.envelope, expected.envelope);
        assert_eq!(back.timeout, expected.timeout);
        assert_eq!(back.retry, expected.retry);
        assert_eq!(back.disable_after, 3);
    }

    #[test]
    fn unknown_fields_and_bad_words_are_refused_by_name() {
        let typo = serde_json::from_value::<SubscriptionSpec>(serde_json::json!({
            "url": "https://x.example", "event_types": ["a.b"], "evnt_types": []
        }));
        assert!(typo.is_err());
        let spec: SubscriptionSpec = serde_json::from_value(serde_json::json!({
            "url": "https://x.example", "event_types": ["a.b"], "timeout": "soon"
        }))
        .expect("reads");
        let err = spec.to_wire(String::new()).expect_err("no duration");
        assert!(
            err.status.message().starts_with("timeout: "),
            "{}",
            err.status.message()
        );
        let spec: SubscriptionSpec = serde_json::from_value(serde_json::json!({
            "url": "https://x.example", "event_types": ["a.b"], "signature": "v2"
        }))
        .expect("reads");
        assert!(spec.to_wire(String::new()).is_err());
    }
}
