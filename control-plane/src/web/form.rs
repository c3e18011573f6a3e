//! Reading HTML forms: the posted fields ([`FormData`]) and the subscription form that the
//! console and the portal share ([`SubscriptionForm`]), kept as typed text so a refused form is
//! shown again as the person typed it.

use std::collections::BTreeMap;

use herald_core::format::{Envelope, PayloadFormat};
use herald_core::retry::{Exponential, RetrySchedule};
use herald_core::validate::quoted;
use herald_proto::convert::{
    duration, exponential_policy, retry_policy, std_duration, wire_envelope, wire_format,
};
use herald_proto::v1 as pb;
use herald_proto::words;

/// The fields of a posted `application/x-www-form-urlencoded` body, in order.
#[derive(Debug, Default)]
pub struct FormData {
    fields: Vec<(String, String)>,
}

impl FormData {
    /// Parses a form body.
    pub fn parse(body: &[u8]) -> Self {
        FormData {
            fields: url::form_urlencoded::parse(body).into_owned().collect(),
        }
    }

    /// The first value of `name`, trimmed; empty when absent.
    pub fn text(&self, name: &str) -> String {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_default()
    }

    /// Every value of `name` (checkboxes and multi-selects send one each).
    pub fn all(&self, name: &str) -> Vec<String> {
        self.fields
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.trim().to_owned())
            .collect()
    }

    /// Whether checkbox `name` was ticked.
    pub fn checked(&self, name: &str) -> bool {
        self.fields.iter().any(|(k, v)| k == name && v != "false")
    }
}

/// A form's refusal: the field to blame, as the API names it (`url`, `oauth2.token_url`),
/// and why.
#[derive(Debug)]
pub struct FieldError {
    /// The field.
    pub field: String,
    /// What is wrong with its value.
    pub reason: String,
}

impl FieldError {
    /// `field` refused for `reason`.
    pub fn new(field: &str, reason: impl Into<String>) -> Self {
        FieldError {
            field: field.to_owned(),
            reason: reason.into(),
        }
    }

    /// The field an API refusal names (its `google.rpc.BadRequest` detail), if it names one.
    pub fn of_status(status: &tonic::Status) -> Option<Self> {
        herald_proto::convert::refused_field(status).map(|invalid| FieldError {
            field: invalid.field,
            reason: invalid.reason,
        })
    }

    /// For people: the field by the label the forms give it, then why.
    pub fn text(&self) -> String {
        match label(&self.field) {
            Some(label) => format!("{label}: {}", self.reason),
            None => format!("{}: {}", self.field, self.reason),
        }
    }
}

/// What a form says when the API refuses it: the field by its label when the API named
/// one, else the API's own words.
pub fn refusal(status: &tonic::Status) -> String {
    FieldError::of_status(status).map_or_else(|| status.message().to_owned(), |err| err.text())
}

/// The label the subscription and event-type forms show for an API field.
fn label(field: &str) -> Option<&'static str> {
    Some(match field {
        "tenant" => "Tenant",
        "url" => "Endpoint URL",
        "event_types" => "Events",
        "filter" | "payload_filter" => "Payload filter",
        "format" => "Format",
        "envelope" => "Body",
        "headers" => "Extra headers",
        "description" => "Description",
        "signature" | "signature_scheme" => "Signature",
        "secrets" => "Signing secrets",
        "timeout" => "Timeout per attempt",
        "retry" | "retry_schedule" => "Retry delays",
        "retry_exponential" => "Exponential backoff",
        "max_in_flight" => "Attempts in flight per agent",
        "rate_limit" => "Requests per second per agent",
        "disable_after" => "Disable after",
        "disable_min_failing" => "Disable once failing for",
        "regions" => "Regions",
        "labels" => "Labels",
        "egress" | "egress_proxy" => "Egress",
        "client_cert" => "Client certificate",
        "client_key" => "Client key",
        "oauth2.token_url" | "token_url" => "OAuth2 token URL",
        "oauth2.client_id" => "OAuth2 client id",
        "oauth2.client_secret" => "OAuth2 client secret",
        "oauth2.scope" => "OAuth2 scope",
        "oauth2.audience" => "OAuth2 audience",
        "name" => "Name",
        "example" => "Example payload",
        "schema" => "Schema",
        "event_type" => "Event type",
        "payload" => "Payload",
        "revision" | "expected_revision" => "Revision",
        _ => return None,
    })
}

/// The subscription form, as text.
#[derive(Debug, Default, Clone)]
pub struct SubscriptionForm {
    /// The tenant (create only).
    pub tenant: String,
    /// The endpoint.
    pub url: String,
    /// Event types and patterns, comma-separated.
    pub event_types: String,
    /// The payload filter's JSON; empty: none.
    pub filter: String,
    /// `json` or `xml`.
    pub format: String,
    /// `standard` or `raw`.
    pub envelope: String,
    /// `v1` or `v1a` (create only).
    pub signature: String,
    /// `Name: value` per line; a blank value keeps the stored one.
    pub headers: String,
    /// E.g. `15s`.
    pub timeout: String,
    /// E.g. `5s,5m,30m`; empty: the default schedule.
    pub retry_schedule: String,
    /// E.g. `base=5s,factor=2,cap=1h,attempts=10`; instead of a schedule.
    pub retry_exponential: String,
    /// A note.
    pub description: String,
    /// `key=value` per line.
    pub labels: String,
    /// Comma-separated.
    pub regions: String,
    /// Attempts in flight per agent (empty: the default).
    pub max_in_flight: String,
    /// Requests per second per agent (empty: no limit).
    pub rate_limit: String,
    /// Failures in a row that disable it (empty: 10).
    pub disable_after: String,
    /// E.g. `1h` (empty: no minimum).
    pub disable_min_failing: String,
    /// Send the trace context on.
    pub send_trace_context: bool,
    /// `agent` (empty too), `direct`, or a proxy URL; a masked one keeps the stored password.
    pub egress: String,
    /// The client certificate chain (PEM) for mutual TLS; empty: none.
    pub client_cert: String,
    /// Its private key (PEM); empty with the same certificate keeps the stored key.
    pub client_key: String,
    /// OAuth2 token endpoint; empty: no OAuth2.
    pub oauth2_token_url: String,
    /// OAuth2 client id.
    pub oauth2_client_id: String,
    /// OAuth2 client secret; empty keeps the stored one.
    pub oauth2_client_secret: String,
    /// OAuth2 scope.
    pub oauth2_scope: String,
    /// OAuth2 audience.
    pub oauth2_audience: String,
    /// Accept event types outside the catalogue.
    pub allow_unregistered: bool,
    /// The revision read (edit only).
    pub revision: String,
    /// The key the create form was shown with, sent as the create's idempotency key (create
    /// only): the form posted twice makes one subscription.
    pub create_key: String,
}

/// PEM as a form posts it: line ends as `\n`, no blank edges.
fn normalized_pem(text: &str) -> String {
    let text = text.replace("\r\n", "\n");
    let text = text.trim();
    if text.is_empty() {
        String::new()
    } else {
        format!("{text}\n")
    }
}

impl SubscriptionForm {
    /// What to say when a create from this form was refused for its key (the form sent before,
    /// from the browser's history, with other values, or after the subscription it made was
    /// deleted): the form takes a new key, so that sending it again creates another.
    pub fn key_refusal(&mut self, status: &tonic::Status) -> Option<String> {
        let used = !self.create_key.is_empty()
            && matches!(
                status.code(),
                tonic::Code::AlreadyExists | tonic::Code::NotFound
            );
        used.then(|| {
            self.create_key = herald_core::ids::new_form_key();
            "This form was sent before and made a subscription (perhaps deleted since). \
             Send it again to create another."
                .to_owned()
        })
    }

    /// The form as posted.
    pub fn from_form(form: &FormData) -> Self {
        SubscriptionForm {
            tenant: form.text("tenant"),
            create_key: form.text("create_key"),
            url: form.text("url"),
            // Checkboxes (the portal's catalogue) and a text field (the console) both count.
            event_types: form
                .all("event_types")
                .into_iter()
                .filter(|v| !v.is_empty())
                .collect::<Vec<_>>()
                .join(","),
            filter: form.text("filter"),
            format: form.text("format"),
            envelope: form.text("envelope"),
            signature: form.text("signature"),
            headers: form.text("headers"),
            timeout: form.text("timeout"),
            retry_schedule: form.text("retry_schedule"),
            retry_exponential: form.text("retry_exponential"),
            description: form.text("description"),
            labels: form.text("labels"),
            regions: form.text("regions"),
            max_in_flight: form.text("max_in_flight"),
            rate_limit: form.text("rate_limit"),
            disable_after: form.text("disable_after"),
            disable_min_failing: form.text("disable_min_failing"),
            send_trace_context: form.checked("send_trace_context"),
            egress: form.text("egress"),
            client_cert: form.text("client_cert"),
            client_key: form.text("client_key"),
            oauth2_token_url: form.text("oauth2_token_url"),
            oauth2_client_id: form.text("oauth2_client_id"),
            oauth2_client_secret: form.text("oauth2_client_secret"),
            oauth2_scope: form.text("oauth2_scope"),
            oauth2_audience: form.text("oauth2_audience"),
            allow_unregistered: form.checked("allow_unregistered"),
            revision: form.text("revision"),
        }
    }

    /// The form filled from a stored subscription (header values as the read shows them).
    pub fn from_wire(sub: &pb::Subscription) -> Self {
        let (retry_schedule, retry_exponential) = match &sub.retry {
            Some(pb::RetryPolicy {
                exponential: Some(e),
                ..
            }) => {
                let text = |d: Option<&prost_types::Duration>| {
                    d.and_then(std_duration)
                        .map(|d| humantime::format_duration(d).to_string())
                        .unwrap_or_default()
                };
                (
                    String::new(),
                    format!(
                        "base={},factor={},cap={},attempts={}",
                        text(e.base.as_ref()),
                        e.factor,
                        text(e.cap.as_ref()),
                        e.max_attempts
                    ),
                )
            }
            Some(policy) if !policy.delays.is_empty() => (
                herald_proto::convert::retry_schedule(Some(policy))
                    .map(|s| s.to_string())
                    .unwrap_or_default(),
                String::new(),
            ),
            _ => (String::new(), String::new()),
        };
        let number = |n: u32| if n == 0 { String::new() } else { n.to_string() };
        SubscriptionForm {
            // Edits only: an edit has no create to repeat.
            create_key: String::new(),
            tenant: sub.tenant.clone(),
            url: sub.url.clone(),
            event_types: sub.event_types.join(","),
            format: words::format(sub.format).to_owned(),
            envelope: words::envelope(sub.envelope).to_owned(),
            signature: words::signature(sub.signature_scheme).to_owned(),
            headers: sub
                .headers
                .iter()
                .collect::<BTreeMap<_, _>>()
                .into_iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join("\n"),
            timeout: sub
                .timeout
                .as_ref()
                .and_then(std_duration)
                .map(|d| humantime::format_duration(d).to_string())
                .unwrap_or_default(),
            retry_schedule,
            retry_exponential,
            filter: sub.payload_filter.clone(),
            description: sub.description.clone(),
            labels: sub
                .labels
                .iter()
                .collect::<BTreeMap<_, _>>()
                .into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("\n"),
            regions: sub.regions.join(","),
            max_in_flight: number(sub.max_in_flight),
            rate_limit: number(sub.rate_limit),
            disable_after: number(sub.disable_after),
            disable_min_failing: sub
                .disable_min_failing
                .as_ref()
                .and_then(std_duration)
                .map(|d| humantime::format_duration(d).to_string())
                .unwrap_or_default(),
            send_trace_context: sub.send_trace_context,
            // Masked even when the read had secrets: a form never carries the password back.
            egress: match herald_proto::words::parse_egress(&herald_proto::words::egress(sub)) {
                Ok(herald_core::egress::Egress::Proxy(proxy)) => proxy.masked(),
                _ => herald_proto::words::egress(sub),
            },
            client_cert: sub.client_cert.clone(),
            // Never read back: left empty, the stored key stays.
            client_key: String::new(),
            oauth2_token_url: sub
                .oauth2
                .as_ref()
                .map(|o| o.token_url.clone())
                .unwrap_or_default(),
            oauth2_client_id: sub
                .oauth2
                .as_ref()
                .map(|o| o.client_id.clone())
                .unwrap_or_default(),
            // Not shown on a page: left empty, the stored secret stays.
            oauth2_client_secret: String::new(),
            oauth2_scope: sub
                .oauth2
                .as_ref()
                .map(|o| o.scope.clone())
                .unwrap_or_default(),
            oauth2_audience: sub
                .oauth2
                .as_ref()
                .map(|o| o.audience.clone())
                .unwrap_or_default(),
            allow_unregistered: false,
            revision: sub.revision.to_string(),
        }
    }

    /// The event types chosen, one by one.
    pub fn chosen_event_types(&self) -> Vec<String> {
        split_list(&self.event_types)
    }

    /// The wire subscription the form describes (with `id` for an edit). Values are checked
    /// here only as far as reading them; the control plane's rules check the rest.
    pub fn to_wire(&self, id: String) -> Result<pb::Subscription, FieldError> {
        let bad = |field: &str, why: String| FieldError::new(field, why);
        let format = match self.format.as_str() {
            "" => pb::Format::Unspecified,
            word => wire_format(PayloadFormat::parse(word).map_err(|e| bad("format", e.reason))?),
        };
        let envelope = match self.envelope.as_str() {
            "" => pb::Envelope::Unspecified,
            word => wire_envelope(Envelope::parse(word).map_err(|e| bad("envelope", e.reason))?),
        };
        let signature = match self.signature.as_str() {
            "" => pb::SignatureScheme::Unspecified,
            word => words::parse_signature(word).ok_or_else(|| {
                bad(
                    "signature",
                    format!("{} is neither v1 nor v1a", quoted(word)),
                )
            })?,
        };
        let duration_of = |field: &str, text: &str| {
            if text.is_empty() {
                return Ok(None);
            }
            herald_core::duration::parse(text)
                .map(|d| Some(duration(d)))
                .map_err(|reason| bad(field, reason))
        };
        let count = |field: &str, text: &str| {
            if text.is_empty() {
                return Ok(0);
            }
            text.parse::<u32>()
                .map_err(|_| bad(field, format!("{} is not a whole number", quoted(text))))
        };
        let retry = match (
            self.retry_schedule.as_str(),
            self.retry_exponential.as_str(),
        ) {
            ("", "") => None,
            (schedule, "") => Some(retry_policy(
                &RetrySchedule::parse(schedule).map_err(|e| bad("retry_schedule", e.reason))?,
            )),
            ("", exponential) => Some(exponential_policy(
                &Exponential::parse(exponential).map_err(|e| bad("retry_exponential", e.reason))?,
            )),
            _ => {
                return Err(bad(
                    "retry",
                    "give a schedule or exponential backoff, not both".into(),
                ));
            }
        };
        let mut headers = std::collections::HashMap::new();
        for line in self.headers.lines().filter(|l| !l.trim().is_empty()) {
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| bad("headers", format!("{} is not `Name: value`", quoted(line))))?;
            headers.insert(name.trim().to_owned(), value.trim().to_owned());
        }
        let mut labels = std::collections::HashMap::new();
        for line in self.labels.lines().filter(|l| !l.trim().is_empty()) {
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| bad("labels", format!("{} is not `key=value`", quoted(line))))?;
            labels.insert(key.trim().to_owned(), value.trim().to_owned());
        }
        let egress = herald_proto::words::parse_egress(&self.egress)
            .map_err(|e| bad("egress", e.to_string()))?;
        let mut wire = pb::Subscription {
            id,
            tenant: self.tenant.clone(),
            url: self.url.clone(),
            event_types: self.chosen_event_types(),
            payload_filter: self.filter.trim().to_owned(),
            format: format as i32,
            envelope: envelope as i32,
            signature_scheme: signature as i32,
            headers,
            timeout: duration_of("timeout", &self.timeout)?,
            retry,
            description: self.description.clone(),
            labels,
            regions: split_list(&self.regions),
            max_in_flight: count("max_in_flight", &self.max_in_flight)?,
            rate_limit: count("rate_limit", &self.rate_limit)?,
            disable_after: count("disable_after", &self.disable_after)?,
            disable_min_failing: duration_of("disable_min_failing", &self.disable_min_failing)?,
            send_trace_context: self.send_trace_context,
            ..Default::default()
        };
        herald_proto::convert::set_egress(&mut wire, &egress);
        wire.client_cert = normalized_pem(&self.client_cert);
        wire.client_key = normalized_pem(&self.client_key);
        wire.oauth2 = (!self.oauth2_token_url.trim().is_empty()).then(|| pb::OAuth2 {
            token_url: self.oauth2_token_url.trim().to_owned(),
            client_id: self.oauth2_client_id.trim().to_owned(),
            client_secret: self.oauth2_client_secret.trim().to_owned(),
            scope: self.oauth2_scope.trim().to_owned(),
            audience: self.oauth2_audience.trim().to_owned(),
        });
        Ok(wire)
    }

    /// The revision read, for an update.
    pub fn expected_revision(&self) -> Result<i64, FieldError> {
        self.revision
            .parse()
            .map_err(|_| FieldError::new("revision", "missing; reload the page"))
    }
}

/// Items separated by commas or white space.
fn split_list(text: &str) -> Vec<String> {
    text.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_create_form_refused_for_its_key_takes_a_new_one() {
        let mut form = SubscriptionForm {
            create_key: "frm_1".into(),
            ..Default::default()
        };
        assert!(
            form.key_refusal(&tonic::Status::invalid_argument("url: no"))
                .is_none()
        );
        assert_eq!(form.create_key, "frm_1");
        for code in [tonic::Code::AlreadyExists, tonic::Code::NotFound] {
            let said = form.key_refusal(&tonic::Status::new(code, "used"));
            assert!(
                said.is_some_and(|s| s.contains("Send it again")),
                "{code:?}"
            );
            assert!(form.create_key.starts_with("frm_") && form.create_key != "frm_1");
            form.create_key = "frm_1".into();
        }
        // An edit's form has no key: its refusals are the page's.
        let mut edit = SubscriptionForm::default();
        assert!(
            edit.key_refusal(&tonic::Status::not_found("gone"))
                .is_none()
        );
    }

    #[test]
    fn a_stored_subscription_round_trips_through_the_form() {
        let body = b"tenant=shop-a&url=https%3A%2F%2Fshop.example%2Fh&event_types=order.*&\
                     event_types=invoice.created&format=xml&envelope=raw&signature=v1a&\
                     headers=X-Api-Key%3A+k1%0D%0AX-Shop%3A+a&timeout=20s&\
                     retry_exponential=base%3D5s%2Cfactor%3D2%2Ccap%3D1h%2Cattempts%3D4&\
                     labels=team%3Dorders&regions=eu%2C+us&disable_after=3&\
                     disable_min_failing=1h&send_trace_context=on";
        let form = SubscriptionForm::from_form(&FormData::parse(body));
        let wire = form.to_wire("sub_1".into()).expect("valid");
        assert_eq!(wire.event_types, ["order.*", "invoice.created"]);
        assert_eq!(wire.format, pb::Format::Xml as i32);
        assert_eq!(wire.signature_scheme, pb::SignatureScheme::Ed25519 as i32);
        assert_eq!(wire.headers["X-Api-Key"], "k1");
        assert_eq!(wire.regions, ["eu", "us"]);
        assert!(wire.send_trace_context);
        let again = SubscriptionForm::from_wire(&wire)
            .to_wire("sub_1".into())
            .expect("valid");
        assert_eq!(again.retry, wire.retry);
        assert_eq!(again.headers, wire.headers);
        assert_eq!(again.timeout, wire.timeout);
        assert_eq!(again.disable_min_failing, wire.disable_min_failing);
    }

    #[test]
    fn a_bad_value_names_its_field() {
        let form = SubscriptionForm::from_form(&FormData::parse(b"url=x&timeout=soon"));
        let err = form.to_wire(String::new()).expect_err("no duration");
        assert_eq!(err.field, "timeout");
        assert!(
            err.text().starts_with("Timeout per attempt: "),
            "{}",
            err.text()
        );
        let form = SubscriptionForm::from_form(&FormData::parse(b"headers=no-colon"));
        assert!(form.to_wire(String::new()).is_err());
    }
}
