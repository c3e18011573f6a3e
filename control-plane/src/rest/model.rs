//! The HTTP API's JSON shapes, made from the gRPC messages: times in RFC 3339, durations as
//! `15s`, enums as lowercase words (as `herald -o json` prints them), and nothing of the
//! storage-only fields. Each derives its OpenAPI schema.

use std::collections::BTreeMap;

use herald_proto::convert::{std_duration, system_time};
use herald_proto::v1 as pb;
use serde::Serialize;
use utoipa::ToSchema;

/// RFC 3339 text of a wire timestamp.
fn time(ts: Option<&prost_types::Timestamp>) -> Option<String> {
    ts.map(|ts| humantime::format_rfc3339_millis(system_time(ts)).to_string())
}

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
    /// `json` or `xml`.
    pub format: &'static str,
    /// `standard` (the Standard Webhooks envelope) or `raw`.
    pub envelope: &'static str,
    /// `v1` (HMAC-SHA256) or `v1a` (ed25519).
    pub signature: &'static str,
    /// Signing secrets, newest first; values only with `show_secrets`.
    pub secrets: Vec<Secret>,
    /// Extra request headers; values only with `show_secrets` (else blank, and
    /// `header_values_hidden`).
    pub headers: BTreeMap<String, String>,
    /// The header values are blank because this read may not show them.
    pub header_values_hidden: bool,
    /// The per-attempt timeout, e.g. `15s`.
    pub timeout: String,
    /// Whether deliveries are made.
    pub enabled: bool,
    /// Why it is disabled (empty while enabled).
    pub disabled_reason: String,
    /// When it was disabled.
    pub disabled_at: Option<String>,
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
    /// Whether the emitter's trace context is sent on.
    pub send_trace_context: bool,
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

impl From<pb::Subscription> for Subscription {
    fn from(sub: pb::Subscription) -> Self {
        let timeout = sub
            .timeout
            .as_ref()
            .and_then(std_duration)
            .unwrap_or(herald_core::subscription::DEFAULT_TIMEOUT);
        Subscription {
            format: match pb::Format::try_from(sub.format) {
                Ok(pb::Format::Xml) => "xml",
                _ => "json",
            },
            envelope: match pb::Envelope::try_from(sub.envelope) {
                Ok(pb::Envelope::Standard) => "standard",
                _ => "raw",
            },
            signature: match pb::SignatureScheme::try_from(sub.signature_scheme) {
                Ok(pb::SignatureScheme::Ed25519) => "v1a",
                _ => "v1",
            },
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
            disabled_at: time(sub.disabled_at.as_ref()),
            created_at: time(sub.created_at.as_ref()),
            updated_at: time(sub.updated_at.as_ref()),
            labels: sub.labels.into_iter().collect(),
            id: sub.id,
            tenant: sub.tenant,
            url: sub.url,
            event_types: sub.event_types,
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

/// A page of subscriptions.
#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriptionPage {
    /// In key order (tenant, then id).
    pub subscriptions: Vec<Subscription>,
    /// Where the next page starts; empty on the last.
    pub next_page_token: String,
}

/// One change made through the operator API.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntry {
    /// When.
    pub at: Option<String>,
    /// Who: a token's or certificate's name.
    pub actor: String,
    /// The object's tenant (empty for what all tenants share).
    pub tenant: String,
    /// What was done (`subscription.create`, …).
    pub action: String,
    /// To what.
    pub object: String,
    /// The config store revision it wrote (0: none).
    pub revision: i64,
    /// More about it.
    pub detail: String,
}

impl From<pb::AuditEntry> for AuditEntry {
    fn from(entry: pb::AuditEntry) -> Self {
        AuditEntry {
            at: time(entry.at.as_ref()),
            actor: entry.actor,
            tenant: entry.tenant,
            action: entry.action,
            object: entry.object,
            revision: entry.revision,
            detail: entry.detail,
        }
    }
}

/// A page of audit entries.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    /// Newest first.
    pub entries: Vec<AuditEntry>,
    /// Where the next page starts; empty on the last.
    pub next_page_token: String,
}
