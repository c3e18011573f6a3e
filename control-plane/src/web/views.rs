//! What the pages show of the API's messages, as plain text fields templates print.

use herald_proto::v1 as pb;
use herald_proto::words;

use super::page::{millis, when};

/// `bytes` (a JSON document) pretty-printed with its keys in their order (as a receiver gets
/// them); empty when they are not JSON (or empty).
pub fn pretty_json(bytes: &[u8]) -> String {
    if serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len() * 2);
    let mut depth = 0_usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut chars = text.chars().peekable();
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.extend(std::iter::repeat_n("  ", depth));
    };
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                // An empty object or array stays on its line.
                while chars.peek().is_some_and(|n| n.is_whitespace()) {
                    chars.next();
                }
                if chars.peek().is_some_and(|&n| n == '}' || n == ']') {
                    out.extend(chars.next());
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_whitespace() => {}
            c => out.push(c),
        }
    }
    out
}

/// A subscription in a list.
pub struct SubscriptionRow {
    pub id: String,
    pub tenant: String,
    pub url: String,
    pub event_types: String,
    pub format: &'static str,
    pub enabled: bool,
    pub disabled_reason: String,
    pub description: String,
}

impl From<&pb::Subscription> for SubscriptionRow {
    fn from(sub: &pb::Subscription) -> Self {
        SubscriptionRow {
            id: sub.id.clone(),
            tenant: sub.tenant.clone(),
            url: sub.url.clone(),
            event_types: sub.event_types.join(", "),
            format: words::format(sub.format),
            enabled: sub.enabled,
            disabled_reason: sub.disabled_reason.clone(),
            description: sub.description.clone(),
        }
    }
}

impl SubscriptionRow {
    /// Whether the row matches a search: `q` in its id, tenant, URL, event types or
    /// description (any case).
    pub fn matches(&self, q: &str) -> bool {
        let q = q.to_lowercase();
        [
            &self.id,
            &self.tenant,
            &self.url,
            &self.event_types,
            &self.description,
        ]
        .iter()
        .any(|field| field.to_lowercase().contains(&q))
    }
}

/// A subscription's settings, each as a label and a value.
pub struct Setting {
    pub label: &'static str,
    pub value: String,
    /// Whether only the operator sees it: how the operator's network reaches the endpoint and
    /// the operator's own notes, which the tenant's portal does not show.
    pub operator_only: bool,
}

/// The settings of `sub` the tenant's portal shows: all but the operator's own.
pub fn tenant_settings(sub: &pb::Subscription) -> Vec<Setting> {
    settings(sub)
        .into_iter()
        .filter(|setting| !setting.operator_only)
        .collect()
}

/// The settings of `sub` shown on its page.
pub fn settings(sub: &pb::Subscription) -> Vec<Setting> {
    let schedule = herald_proto::convert::retry_schedule(sub.retry.as_ref())
        .map(|s| s.to_string())
        .unwrap_or_default();
    let duration = |d: Option<&prost_types::Duration>| {
        d.and_then(herald_proto::convert::std_duration)
            .map(|d| humantime::format_duration(d).to_string())
    };
    let or = |n: u32, default: &str| {
        if n == 0 {
            default.to_owned()
        } else {
            n.to_string()
        }
    };
    let mut labels: Vec<String> = sub.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    labels.sort();
    let mut headers: Vec<String> = sub
        .headers
        .iter()
        .map(|(k, v)| {
            if sub.header_values_hidden && v.is_empty() {
                format!("{k}: (hidden)")
            } else {
                format!("{k}: {v}")
            }
        })
        .collect();
    headers.sort();
    let list = |items: Vec<String>| {
        if items.is_empty() {
            "—".to_owned()
        } else {
            items.join(", ")
        }
    };
    vec![
        Setting {
            label: "Tenant",
            operator_only: false,
            value: sub.tenant.clone(),
        },
        Setting {
            label: "URL",
            operator_only: false,
            value: sub.url.clone(),
        },
        Setting {
            label: "Event types",
            operator_only: false,
            value: sub.event_types.join(", "),
        },
        Setting {
            label: "Format",
            operator_only: false,
            value: words::format(sub.format).to_owned(),
        },
        Setting {
            label: "Envelope",
            operator_only: false,
            value: words::envelope(sub.envelope).to_owned(),
        },
        Setting {
            label: "Signature",
            operator_only: false,
            value: words::signature(sub.signature_scheme).to_owned(),
        },
        Setting {
            label: "Egress",
            operator_only: true,
            // Its proxy's password is never shown on a page, even to those who may read it.
            value: match words::parse_egress(&words::egress(sub)) {
                Ok(herald_core::egress::Egress::Proxy(proxy)) => {
                    format!("through the proxy {}", proxy.masked())
                }
                Ok(herald_core::egress::Egress::Direct) => "direct".to_owned(),
                _ => "the agent's (its egress proxy, if any)".to_owned(),
            },
        },
        Setting {
            label: "OAuth2",
            operator_only: false,
            value: match &sub.oauth2 {
                Some(o) => format!(
                    "bearer tokens from {} as {}{}",
                    o.token_url,
                    o.client_id,
                    if o.scope.is_empty() {
                        String::new()
                    } else {
                        format!(" (scope {})", o.scope)
                    }
                ),
                None => "—".to_owned(),
            },
        },
        Setting {
            label: "Client certificate",
            operator_only: false,
            value: match sub.client_cert_expires_at.as_ref() {
                Some(expires) if !sub.client_cert.is_empty() => format!(
                    "presented for mutual TLS; expires {}",
                    humantime::format_rfc3339_seconds(herald_proto::convert::system_time(expires))
                ),
                _ => "—".to_owned(),
            },
        },
        Setting {
            label: "Headers",
            operator_only: false,
            value: list(headers),
        },
        Setting {
            label: "Timeout",
            operator_only: false,
            value: duration(sub.timeout.as_ref()).unwrap_or_else(|| "15s".to_owned()),
        },
        Setting {
            label: "Retry delays",
            operator_only: false,
            value: schedule,
        },
        Setting {
            label: "Attempts in flight per agent",
            operator_only: false,
            value: or(sub.max_in_flight, "16"),
        },
        Setting {
            label: "Rate limit per agent",
            operator_only: false,
            value: or(sub.rate_limit, "none"),
        },
        Setting {
            label: "Disable after",
            operator_only: false,
            value: format!(
                "{} failures in a row{}",
                or(sub.disable_after, "10"),
                duration(sub.disable_min_failing.as_ref())
                    .map(|d| format!(" lasting {d}"))
                    .unwrap_or_default()
            ),
        },
        Setting {
            label: "Payload filter",
            operator_only: false,
            value: if sub.payload_filter.is_empty() {
                "none: every event of its types".to_owned()
            } else {
                sub.payload_filter.clone()
            },
        },
        Setting {
            label: "Regions",
            operator_only: true,
            value: if sub.regions.is_empty() {
                "all".to_owned()
            } else {
                sub.regions.join(", ")
            },
        },
        Setting {
            label: "Trace context sent",
            operator_only: false,
            value: if sub.send_trace_context { "yes" } else { "no" }.to_owned(),
        },
        Setting {
            label: "Labels",
            operator_only: true,
            value: list(labels),
        },
        Setting {
            label: "Description",
            operator_only: false,
            value: sub.description.clone(),
        },
        Setting {
            label: "Created",
            operator_only: false,
            value: when(sub.created_at.as_ref()),
        },
        Setting {
            label: "Updated",
            operator_only: false,
            value: when(sub.updated_at.as_ref()),
        },
        Setting {
            label: "Revision",
            operator_only: false,
            value: sub.revision.to_string(),
        },
    ]
}

/// A signing secret on a subscription's page.
pub struct SecretView {
    /// The value, when shown.
    pub secret: String,
    /// For ed25519: the public key.
    pub public_key: String,
    pub created: String,
    /// Empty while it does not expire.
    pub expires: String,
}

/// The secrets of `sub`.
pub fn secrets(sub: &pb::Subscription) -> Vec<SecretView> {
    sub.secrets
        .iter()
        .map(|s| SecretView {
            secret: s.secret.clone(),
            public_key: s.public_key.clone(),
            created: when(s.created_at.as_ref()),
            expires: s
                .expires_at
                .as_ref()
                .map(|t| when(Some(t)))
                .unwrap_or_default(),
        })
        .collect()
}

/// One attempt in the delivery log.
pub struct AttemptRow {
    pub event_id: String,
    pub subscription_id: String,
    pub tenant: String,
    pub event_type: String,
    pub attempt: u32,
    pub started: String,
    pub duration: String,
    /// The HTTP status, or `—` when none came.
    pub status: String,
    pub error_kind: String,
    pub error: String,
    pub outcome: &'static str,
    pub next_attempt: String,
    pub response_excerpt: String,
    pub url: String,
    pub agent: String,
    /// A test-send's attempt (no delivery of an emitted event).
    pub test: bool,
}

impl From<&pb::Attempt> for AttemptRow {
    fn from(a: &pb::Attempt) -> Self {
        AttemptRow {
            event_id: a.event_id.clone(),
            subscription_id: a.subscription_id.clone(),
            tenant: a.tenant.clone(),
            event_type: a.event_type.clone(),
            attempt: a.attempt,
            started: when(a.started_at.as_ref()),
            duration: millis(a.duration.as_ref()),
            status: if a.status_code == 0 {
                "—".to_owned()
            } else {
                a.status_code.to_string()
            },
            error_kind: a.error_kind.clone(),
            error: a.error.clone(),
            outcome: words::outcome(a.outcome),
            next_attempt: a
                .next_attempt_at
                .as_ref()
                .map(|t| when(Some(t)))
                .unwrap_or_default(),
            response_excerpt: a.response_excerpt.clone(),
            url: a.url.clone(),
            agent: a.agent_id.clone(),
            test: a.test,
        }
    }
}

/// An endpoint's health, for people.
pub struct HealthView {
    pub consecutive_failures: u32,
    pub failing_since: String,
    pub last_success: String,
    pub last_failure: String,
    pub last_error: String,
    pub recent_attempts: u32,
    /// E.g. `98.5%`.
    pub success_rate: String,
    pub latency_p50: String,
    pub latency_p99: String,
}

impl From<&pb::SubscriptionHealth> for HealthView {
    fn from(h: &pb::SubscriptionHealth) -> Self {
        HealthView {
            consecutive_failures: h.consecutive_failures,
            failing_since: when(h.failing_since.as_ref()),
            last_success: when(h.last_success_at.as_ref()),
            last_failure: when(h.last_failure_at.as_ref()),
            last_error: h.last_error.clone(),
            recent_attempts: h.recent_attempts,
            success_rate: if h.recent_attempts == 0 {
                "—".to_owned()
            } else {
                format!("{:.1}%", h.success_rate * 100.0)
            },
            latency_p50: millis(h.latency_p50.as_ref()),
            latency_p99: millis(h.latency_p99.as_ref()),
        }
    }
}

/// One attempt of an event on its page: the row, the request's headers, and its body as the
/// log keeps it.
pub struct EventAttempt {
    pub row: AttemptRow,
    /// Name and value of each header the request carried, as the subscription's settings
    /// make them (the signature masked, custom header values hidden).
    pub headers: Vec<SentHeader>,
    /// The body sent to the attempt's subscription, when the log keeps it (`--log-body-limit`).
    pub body: Option<SentBody>,
}

/// The body of a request as sent, as the pages show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentBody {
    /// The bytes kept, as text (bytes that are not UTF-8 shown as U+FFFD).
    pub text: String,
    /// How many bytes are kept.
    pub kept: usize,
    /// The whole body's size in bytes.
    pub size: u64,
    /// Whether the log keeps only the start of it.
    pub cut: bool,
}

impl From<&pb::SentRequest> for SentBody {
    fn from(r: &pb::SentRequest) -> Self {
        SentBody {
            text: String::from_utf8_lossy(&r.body).into_owned(),
            kept: r.body.len(),
            size: r.body_size,
            cut: herald_proto::sent_request::is_cut(r),
        }
    }
}

/// One header of a request as the pages show it.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SentHeader {
    pub name: String,
    /// The value, or a placeholder where it is secret or not known here.
    pub value: String,
}

impl SentHeader {
    fn new(name: &str, value: impl Into<String>) -> Self {
        Self {
            name: name.to_owned(),
            value: value.into(),
        }
    }
}

/// The headers of attempt `a`, made as the agent makes them from the subscription `sub` (its
/// current settings; `None` when it is gone): the content type, the Standard Webhooks
/// headers (`webhook-timestamp` is the attempt's start), the event type, the trace context
/// when sent on, and the subscription's own headers, their values hidden.
pub fn sent_headers(a: &pb::Attempt, sub: Option<&pb::Subscription>) -> Vec<SentHeader> {
    use herald_core::signing::{HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP};
    let timestamp = a
        .started_at
        .as_ref()
        .map(|t| t.seconds.to_string())
        .unwrap_or_default();
    let mut headers = Vec::new();
    if let Some(sub) = sub {
        let format = herald_proto::convert::payload_format(sub.format)
            .unwrap_or(herald_core::format::PayloadFormat::Json);
        headers.push(SentHeader::new("content-type", format.content_type()));
    }
    headers.push(SentHeader::new(HEADER_ID, a.event_id.clone()));
    headers.push(SentHeader::new(HEADER_TIMESTAMP, timestamp));
    let scheme = sub.map_or("v1", |s| words::signature(s.signature_scheme));
    headers.push(SentHeader::new(
        HEADER_SIGNATURE,
        format!("{scheme},… (masked)"),
    ));
    headers.push(SentHeader::new(
        herald_core::format::HEADER_EVENT_TYPE,
        a.event_type.clone(),
    ));
    if let Some(sub) = sub {
        if sub.send_trace_context {
            headers.push(SentHeader::new(
                herald_core::trace::HEADER,
                "(the emitter's trace, when it sent one)",
            ));
        }
        let mut custom: Vec<SentHeader> = sub
            .headers
            .keys()
            .map(|name| SentHeader::new(name, "(hidden)"))
            .collect();
        custom.sort();
        headers.extend(custom);
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_portal_shows_no_operator_notes_or_network() {
        let sub = pb::Subscription {
            labels: [("internal-note".to_owned(), "on probation".to_owned())].into(),
            regions: vec!["eu-west".into()],
            description: "orders to the ERP".into(),
            ..Default::default()
        };
        let shown = |settings: Vec<Setting>| -> Vec<String> {
            settings
                .into_iter()
                .map(|s| format!("{}: {}", s.label, s.value))
                .collect()
        };
        let console = shown(settings(&sub));
        let portal = shown(tenant_settings(&sub));
        for operator_only in ["Labels: internal-note=on probation", "Regions: eu-west"] {
            assert!(console.iter().any(|s| s == operator_only), "{console:?}");
            assert!(!portal.iter().any(|s| s == operator_only), "{portal:?}");
        }
        assert!(console.iter().any(|s| s.starts_with("Egress")));
        assert!(!portal.iter().any(|s| s.starts_with("Egress")));
        assert!(portal.iter().any(|s| s == "Description: orders to the ERP"));
        assert_eq!(portal.len() + 3, console.len());
    }

    #[test]
    fn pretty_json_keeps_the_order_and_the_strings() {
        let shown =
            pretty_json(br#"{"type":"a.b","data":{"z":[1, 2],"a":{},"s":"x, {y}: \"q\""},"e":[]}"#);
        assert_eq!(
            shown,
            "{\n  \"type\": \"a.b\",\n  \"data\": {\n    \"z\": [\n      1,\n      2\n    ],\n    \
             \"a\": {},\n    \"s\": \"x, {y}: \\\"q\\\"\"\n  },\n  \"e\": []\n}"
        );
        assert_eq!(pretty_json(b"not json"), "");
        assert_eq!(pretty_json(b""), "");
    }

    #[test]
    fn the_headers_sent_follow_the_subscription_and_hide_what_is_secret() {
        let attempt = pb::Attempt {
            event_id: "evt_1".into(),
            event_type: "order.created".into(),
            started_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 5,
            }),
            ..Default::default()
        };
        let sub = pb::Subscription {
            format: pb::Format::Xml as i32,
            signature_scheme: pb::SignatureScheme::Ed25519 as i32,
            headers: [("X-Api-Key".to_owned(), "k-123".to_owned())].into(),
            ..Default::default()
        };
        let headers = sent_headers(&attempt, Some(&sub));
        let value = |name: &str| {
            headers
                .iter()
                .find(|h| h.name == name)
                .map(|h| h.value.as_str())
        };
        assert_eq!(value("content-type"), Some("application/xml"));
        assert_eq!(value("webhook-id"), Some("evt_1"));
        assert_eq!(value("webhook-timestamp"), Some("1700000000"));
        assert!(
            value("webhook-signature").is_some_and(|v| v.starts_with("v1a,") && !v.contains('='))
        );
        assert_eq!(value("X-Api-Key"), Some("(hidden)"));
        assert_eq!(value("traceparent"), None, "not sent on by default");
        let gone = sent_headers(&attempt, None);
        assert_eq!(gone.first().map(|h| h.name.as_str()), Some("webhook-id"));
    }
}
