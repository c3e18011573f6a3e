//! Conversions between wire messages and domain types. Validation of everything that arrives
//! over the API happens here, once: the control plane checks subscriptions with
//! [`subscription`] before storing them, the agent builds its delivery config with the same
//! function, and `Emit` checks events with [`validate_event`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald_core::ValidationError;
use herald_core::egress::{Egress, ProxyUrl};
use herald_core::event_type::{EventFilter, validate_event_type};
use herald_core::format::{Envelope, PayloadFormat};
use herald_core::limits::MAX_LABELS;
use herald_core::payload_filter::PayloadFilter;
use herald_core::retry::{Exponential, RetrySchedule};
use herald_core::signing::{Scheme, SigningSecret};
use herald_core::subscription::{
    ClientIdentity, DEFAULT_DISABLE_AFTER, DEFAULT_MAX_IN_FLIGHT, DEFAULT_TIMEOUT,
    MAX_CLIENT_CERT_BYTES, MAX_CLIENT_KEY_BYTES, MAX_DISABLE_AFTER, MAX_DISABLE_MIN_FAILING,
    MAX_MAX_IN_FLIGHT, MAX_OAUTH2_FIELD_BYTES, MAX_RATE_LIMIT, MAX_REGIONS, MAX_SECRETS,
    MAX_TIMEOUT, OAuth2Client, Secret, Subscription,
};
use herald_core::trace::TraceParent;
use herald_core::validate;

use crate::v1 as pb;

/// A wire timestamp for a system time (times before 1970 clamp to the epoch).
pub fn timestamp(time: SystemTime) -> prost_types::Timestamp {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(since.subsec_nanos()).unwrap_or(0),
    }
}

/// The last second RFC 3339 can write: 9999-12-31T23:59:59Z. Every time shown or sent (log
/// lines, JSON, webhook bodies) is written in RFC 3339, so no stored time goes past it.
pub const LATEST_SECONDS: i64 = 253_402_300_799;

/// The system time of a wire timestamp. Negative or malformed values clamp to the epoch, and
/// times after 9999 to [`LATEST_SECONDS`], so whatever a client, an agent or a raw record
/// holds can be written as RFC 3339 (which panics past year 9999) and added to.
pub fn system_time(ts: &prost_types::Timestamp) -> SystemTime {
    let secs = u64::try_from(ts.seconds.min(LATEST_SECONDS)).unwrap_or(0);
    let nanos = u32::try_from(ts.nanos).unwrap_or(0).min(999_999_999);
    UNIX_EPOCH + Duration::new(secs, nanos)
}

/// Checks a timestamp a client sets: from 1970 to the end of 9999 (what RFC 3339 writes),
/// with nanoseconds within the second.
pub fn validate_timestamp(
    field: &'static str,
    ts: &prost_types::Timestamp,
) -> Result<(), ValidationError> {
    if !(0..=LATEST_SECONDS).contains(&ts.seconds) {
        return Err(ValidationError::new(
            field,
            "must be between 1970-01-01T00:00:00Z and 9999-12-31T23:59:59Z",
        ));
    }
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return Err(ValidationError::new(
            field,
            "nanos must be from 0 to 999,999,999",
        ));
    }
    Ok(())
}

/// A wire duration.
pub fn duration(value: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(value.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(value.subsec_nanos()).unwrap_or(0),
    }
}

/// The duration of a stored wire duration; `None` when negative. Nanos past 999,999,999 (a
/// record written before callers' durations were checked, [`valid_duration`]) are read as
/// 999,999,999.
pub fn std_duration(value: &prost_types::Duration) -> Option<Duration> {
    let secs = u64::try_from(value.seconds).ok()?;
    let nanos = u32::try_from(value.nanos).ok()?;
    Some(Duration::new(secs, nanos.min(999_999_999)))
}

/// The duration of a wire duration a caller gives; `None` when negative, or not a valid
/// `google.protobuf.Duration` (nanos beyond ±999,999,999, or of the other sign than seconds),
/// which could otherwise pass a bound (119 s and 1.5e9 ns past one of 120 s).
pub fn valid_duration(value: &prost_types::Duration) -> Option<Duration> {
    let secs = u64::try_from(value.seconds).ok()?;
    let nanos = u32::try_from(value.nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000)?;
    Some(Duration::new(secs, nanos))
}

/// Checks every duration of a subscription a caller gives ([`valid_duration`]); their bounds
/// are checked when it is read ([`subscription`]).
pub fn check_given_durations(wire: &pb::Subscription) -> Result<(), ValidationError> {
    let retry = wire.retry.as_ref();
    let exponential = retry.and_then(|r| r.exponential.as_ref());
    let given = [
        ("timeout", wire.timeout.as_ref()),
        ("disable_min_failing", wire.disable_min_failing.as_ref()),
        ("retry", exponential.and_then(|e| e.base.as_ref())),
        ("retry", exponential.and_then(|e| e.cap.as_ref())),
    ]
    .into_iter()
    .chain(
        retry
            .into_iter()
            .flat_map(|r| r.delays.iter().map(|d| ("retry", Some(d)))),
    );
    for (field, duration) in given {
        if let Some(duration) = duration
            && duration.seconds >= 0
            && valid_duration(duration).is_none()
        {
            return Err(ValidationError::new(
                field,
                "is not a valid Duration: nanos must be 0 to 999,999,999, of the sign of seconds",
            ));
        }
    }
    Ok(())
}

/// The domain format of a wire format (unspecified means JSON).
pub fn payload_format(format: i32) -> Result<PayloadFormat, ValidationError> {
    match pb::Format::try_from(format) {
        Ok(pb::Format::Unspecified | pb::Format::Json) => Ok(PayloadFormat::Json),
        Ok(pb::Format::Xml) => Ok(PayloadFormat::Xml),
        Err(_) => Err(ValidationError::new(
            "format",
            format!("unknown format {format}"),
        )),
    }
}

/// The domain envelope of a wire envelope. Unspecified reads as raw: a record stored before
/// envelopes existed keeps the bodies it had (the control plane resolves unspecified to
/// standard when it creates a subscription).
pub fn envelope(envelope: i32) -> Result<Envelope, ValidationError> {
    match pb::Envelope::try_from(envelope) {
        Ok(pb::Envelope::Unspecified | pb::Envelope::Raw) => Ok(Envelope::Raw),
        Ok(pb::Envelope::Standard) => Ok(Envelope::Standard),
        Err(_) => Err(ValidationError::new(
            "envelope",
            format!("unknown envelope {envelope}"),
        )),
    }
}

/// The wire envelope of a domain envelope.
pub fn wire_envelope(envelope: Envelope) -> pb::Envelope {
    match envelope {
        Envelope::Standard => pb::Envelope::Standard,
        Envelope::Raw => pb::Envelope::Raw,
    }
}

/// The wire format of a domain format.
pub fn wire_format(format: PayloadFormat) -> pb::Format {
    match format {
        PayloadFormat::Json => pb::Format::Json,
        PayloadFormat::Xml => pb::Format::Xml,
    }
}

/// The domain scheme of a wire signature scheme (unspecified means HMAC-SHA256).
pub fn signature_scheme(scheme: i32) -> Result<Scheme, ValidationError> {
    match pb::SignatureScheme::try_from(scheme) {
        Ok(pb::SignatureScheme::Unspecified | pb::SignatureScheme::HmacSha256) => {
            Ok(Scheme::HmacSha256)
        }
        Ok(pb::SignatureScheme::Ed25519) => Ok(Scheme::Ed25519),
        Err(_) => Err(ValidationError::new(
            "signature_scheme",
            format!("unknown signature scheme {scheme}"),
        )),
    }
}

/// The wire form of a signing secret made at `created_at`, with its public key when it has one.
pub fn wire_secret(secret: &SigningSecret, created_at: SystemTime) -> pb::SigningSecret {
    pb::SigningSecret {
        secret: secret.expose(),
        created_at: Some(timestamp(created_at)),
        expires_at: None,
        public_key: secret
            .public_key()
            .map(|key| key.to_string())
            .unwrap_or_default(),
        sealed: None,
    }
}

/// Validates a complete subscription record (as stored: with id and secrets) and builds the
/// domain form. `allow_http` admits `http://` URLs.
pub fn subscription(
    wire: &pb::Subscription,
    allow_http: bool,
) -> Result<Subscription, ValidationError> {
    if !wire.id.starts_with("sub_") {
        return Err(ValidationError::new(
            "id",
            "must be a subscription id (sub_…)",
        ));
    }
    validate::event_id(&wire.id).map_err(|e| ValidationError::new("id", e.reason))?;
    validate::tenant(&wire.tenant)?;
    let url = validate::url(&wire.url, allow_http)?;
    let filter = EventFilter::parse(&wire.event_types)?;
    let payload_filter = PayloadFilter::parse(&wire.payload_filter)?;
    let format = payload_format(wire.format)?;
    let envelope = envelope(wire.envelope)?;
    validate::custom_headers(wire.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
    validate::description(&wire.description)?;
    if wire.labels.len() > MAX_LABELS {
        return Err(ValidationError::new(
            "labels",
            format!("at most {MAX_LABELS} labels"),
        ));
    }
    validate::labels(wire.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
    let timeout = match &wire.timeout {
        None => DEFAULT_TIMEOUT,
        Some(t) => std_duration(t)
            .filter(|t| !t.is_zero() && *t <= MAX_TIMEOUT)
            .ok_or_else(|| {
                ValidationError::new(
                    "timeout",
                    format!("must be more than 0 and at most {}s", MAX_TIMEOUT.as_secs()),
                )
            })?,
    };
    let retry = retry_schedule(wire.retry.as_ref())?;
    let max_in_flight = match wire.max_in_flight {
        0 => DEFAULT_MAX_IN_FLIGHT as u32,
        n if n > MAX_MAX_IN_FLIGHT => {
            return Err(ValidationError::new(
                "max_in_flight",
                format!("at most {MAX_MAX_IN_FLIGHT}"),
            ));
        }
        n => n,
    };
    let rate_limit = match wire.rate_limit {
        0 => None,
        n if n > MAX_RATE_LIMIT => {
            return Err(ValidationError::new(
                "rate_limit",
                format!("at most {MAX_RATE_LIMIT} requests per second"),
            ));
        }
        n => Some(n),
    };
    disable_policy(wire)?;
    if wire.secrets.is_empty() || wire.secrets.len() > MAX_SECRETS {
        return Err(ValidationError::new(
            "secrets",
            format!("must hold 1 to {MAX_SECRETS} secrets"),
        ));
    }
    let secrets = wire
        .secrets
        .iter()
        .map(|s| {
            Ok(Secret {
                secret: SigningSecret::parse(&s.secret)
                    .map_err(|e| ValidationError::new("secrets", e.to_string()))?,
                expires_at: s.expires_at.as_ref().map(system_time),
            })
        })
        .collect::<Result<Vec<_>, ValidationError>>()?;
    let scheme = signature_scheme(wire.signature_scheme)?;
    if secrets.iter().any(|s| s.secret.scheme() != scheme) {
        return Err(ValidationError::new(
            "secrets",
            "every secret must be of the subscription's signature scheme",
        ));
    }
    if wire.regions.len() > MAX_REGIONS {
        return Err(ValidationError::new(
            "regions",
            format!("at most {MAX_REGIONS} regions"),
        ));
    }
    for region in &wire.regions {
        validate::tenant(region).map_err(|e| ValidationError::new("regions", e.reason))?;
    }
    let mut headers: Vec<(String, String)> = wire
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    headers.sort();
    let egress = egress(wire)?;
    let client_identity = client_identity(wire)?;
    let oauth2 = oauth2(wire, allow_http)?;
    Ok(Subscription {
        id: wire.id.clone(),
        tenant: wire.tenant.clone(),
        url,
        filter,
        payload_filter,
        format,
        envelope,
        secrets,
        headers,
        timeout,
        retry,
        max_in_flight,
        rate_limit,
        enabled: wire.enabled,
        skip_parked_before: wire.skip_parked_before.as_ref().map(system_time),
        regions: wire.regions.clone(),
        send_trace_context: wire.send_trace_context,
        egress,
        client_identity,
        oauth2,
        revision: wire.revision,
    })
}

/// The client certificate and key of a subscription's mutual TLS, when it has them: both or
/// neither, PEM, within their limits (the control plane checks that they parse and match).
pub fn client_identity(wire: &pb::Subscription) -> Result<Option<ClientIdentity>, ValidationError> {
    match (wire.client_cert.is_empty(), wire.client_key.is_empty()) {
        (true, true) => return Ok(None),
        (false, true) => {
            return Err(ValidationError::new(
                "client_key",
                "is required with client_cert",
            ));
        }
        (true, false) => {
            return Err(ValidationError::new(
                "client_cert",
                "is required with client_key",
            ));
        }
        (false, false) => {}
    }
    if wire.client_cert.len() > MAX_CLIENT_CERT_BYTES
        || !wire.client_cert.contains("-----BEGIN CERTIFICATE-----")
    {
        return Err(ValidationError::new(
            "client_cert",
            format!("must be PEM certificates, at most {MAX_CLIENT_CERT_BYTES} bytes"),
        ));
    }
    if wire.client_key.len() > MAX_CLIENT_KEY_BYTES || !wire.client_key.contains("PRIVATE KEY-----")
    {
        return Err(ValidationError::new(
            "client_key",
            format!("must be a PEM private key, at most {MAX_CLIENT_KEY_BYTES} bytes"),
        ));
    }
    Ok(Some(ClientIdentity::new(
        wire.client_cert.clone(),
        wire.client_key.clone(),
    )))
}

/// The OAuth2 client credentials of a subscription, when it has them: an https:// token URL
/// (http:// where allowed), a client id and secret, within their limits.
pub fn oauth2(
    wire: &pb::Subscription,
    allow_http: bool,
) -> Result<Option<OAuth2Client>, ValidationError> {
    let Some(o) = &wire.oauth2 else {
        return Ok(None);
    };
    let field = |name: &str| format!("oauth2.{name}");
    let token_url = validate::url(&o.token_url, allow_http)
        .map_err(|e| ValidationError::new(field("token_url"), e.reason))?;
    for (name, value, required) in [
        ("client_id", &o.client_id, true),
        ("client_secret", &o.client_secret, true),
        ("scope", &o.scope, false),
        ("audience", &o.audience, false),
    ] {
        if (required && value.is_empty()) || value.len() > MAX_OAUTH2_FIELD_BYTES {
            return Err(ValidationError::new(
                field(name),
                if required {
                    format!("is required, at most {MAX_OAUTH2_FIELD_BYTES} bytes")
                } else {
                    format!("at most {MAX_OAUTH2_FIELD_BYTES} bytes")
                },
            ));
        }
    }
    Ok(Some(OAuth2Client::new(
        token_url,
        o.client_id.clone(),
        o.client_secret.clone(),
        o.scope.clone(),
        o.audience.clone(),
    )))
}

/// Sets how `sub`'s deliveries leave the agent (its proxy URL in full: sealed at rest).
pub fn set_egress(sub: &mut pb::Subscription, egress: &Egress) {
    let (mode, proxy) = match egress {
        Egress::AgentDefault => (pb::Egress::AgentDefault, String::new()),
        Egress::Direct => (pb::Egress::Direct, String::new()),
        Egress::Proxy(proxy) => (pb::Egress::Proxy, proxy.expose()),
    };
    sub.egress = mode as i32;
    sub.egress_proxy = proxy;
}

/// How a subscription's deliveries leave the agent; `egress_proxy` is set with EGRESS_PROXY
/// and only then.
pub fn egress(wire: &pb::Subscription) -> Result<Egress, ValidationError> {
    let mode = pb::Egress::try_from(wire.egress)
        .map_err(|_| ValidationError::new("egress", format!("unknown value {}", wire.egress)))?;
    match mode {
        pb::Egress::Proxy => ProxyUrl::parse(&wire.egress_proxy)
            .map(Egress::Proxy)
            .map_err(|e| ValidationError::new("egress_proxy", e.to_string())),
        _ if !wire.egress_proxy.is_empty() => Err(ValidationError::new(
            "egress_proxy",
            "set only with egress EGRESS_PROXY",
        )),
        pb::Egress::AgentDefault => Ok(Egress::AgentDefault),
        pb::Egress::Direct => Ok(Egress::Direct),
    }
}

/// When the control plane disables a failing subscription: after this many consecutive failed
/// attempts, and, when set, once they have gone on this long.
pub fn disable_policy(wire: &pb::Subscription) -> Result<(u32, Option<Duration>), ValidationError> {
    let after = match wire.disable_after {
        0 => DEFAULT_DISABLE_AFTER,
        n if n > MAX_DISABLE_AFTER => {
            return Err(ValidationError::new(
                "disable_after",
                format!("at most {MAX_DISABLE_AFTER}"),
            ));
        }
        n => n,
    };
    let min_failing = match &wire.disable_min_failing {
        None => None,
        Some(d) => Some(
            std_duration(d)
                .filter(|d| *d <= MAX_DISABLE_MIN_FAILING)
                .ok_or_else(|| {
                    ValidationError::new("disable_min_failing", "must be 0 to 30 days")
                })?,
        ),
    };
    Ok((after, min_failing.filter(|d| !d.is_zero())))
}

/// The retry schedule of a wire policy: its delays, or its exponential backoff expanded; no
/// policy, or one with neither, means the default schedule. Both at once is refused.
pub fn retry_schedule(policy: Option<&pb::RetryPolicy>) -> Result<RetrySchedule, ValidationError> {
    let Some(policy) = policy else {
        return Ok(RetrySchedule::default());
    };
    match (&policy.delays[..], &policy.exponential) {
        ([], None) => Ok(RetrySchedule::default()),
        ([], Some(exponential)) => exponential_backoff(exponential)?.schedule(),
        (delays, None) => {
            let delays = delays
                .iter()
                .map(|d| {
                    std_duration(d)
                        .ok_or_else(|| ValidationError::new("retry", "delays must not be negative"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            RetrySchedule::new(delays)
        }
        (_, Some(_)) => Err(ValidationError::new(
            "retry",
            "set delays or exponential, not both",
        )),
    }
}

/// The exponential backoff of a wire message; bounds are checked when it is expanded.
pub fn exponential_backoff(wire: &pb::ExponentialBackoff) -> Result<Exponential, ValidationError> {
    let delay = |name: &str, d: Option<&prost_types::Duration>| match d {
        None => Err(ValidationError::new(
            "retry",
            format!("exponential {name} is required"),
        )),
        // A negative delay is out of the same range as any other: 1 ms to 7 days.
        Some(d) => std_duration(d).ok_or_else(|| {
            ValidationError::new(
                "retry",
                format!(
                    "{name} is negative, outside {}ms to {}days",
                    herald_core::retry::MIN_DELAY.as_millis(),
                    herald_core::retry::MAX_DELAY.as_secs() / (24 * 60 * 60)
                ),
            )
        }),
    };
    Ok(Exponential {
        base: delay("base", wire.base.as_ref())?,
        factor: wire.factor,
        cap: delay("cap", wire.cap.as_ref())?,
        max_attempts: wire.max_attempts,
    })
}

/// The wire policy of a schedule.
pub fn retry_policy(schedule: &RetrySchedule) -> pb::RetryPolicy {
    pb::RetryPolicy {
        delays: schedule.delays().iter().copied().map(duration).collect(),
        exponential: None,
    }
}

/// The wire policy of an exponential backoff.
pub fn exponential_policy(backoff: &Exponential) -> pb::RetryPolicy {
    pb::RetryPolicy {
        delays: Vec::new(),
        exponential: Some(pb::ExponentialBackoff {
            base: Some(duration(backoff.base)),
            factor: backoff.factor,
            cap: Some(duration(backoff.cap)),
            max_attempts: backoff.max_attempts,
        }),
    }
}

/// Checks an emitted event: its id (when given), tenant, type, payload (a JSON document of at
/// most `max_payload_bytes`), ordering key, time of occurrence, trace context and attributes.
pub fn validate_event(event: &pb::Event, max_payload_bytes: usize) -> Result<(), ValidationError> {
    if !event.id.is_empty() {
        validate::event_id(&event.id)?;
    }
    validate::tenant(&event.tenant)?;
    validate_event_type(&event.r#type)?;
    validate::json_payload(&event.payload, max_payload_bytes)?;
    validate::ordering_key(&event.ordering_key)?;
    if let Some(occurred_at) = &event.occurred_at {
        validate_timestamp("occurred_at", occurred_at)?;
    }
    if !event.traceparent.is_empty() {
        TraceParent::parse(&event.traceparent)
            .map_err(|e| ValidationError::new("traceparent", e.to_string()))?;
    }
    validate::attributes(
        event
            .attributes
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str())),
    )?;
    Ok(())
}

/// The gRPC status for invalid input: `INVALID_ARGUMENT` naming the field, in its message
/// and, for clients that read the standard error model, as a `google.rpc.BadRequest` field
/// violation in the status details.
pub fn invalid_argument(err: ValidationError) -> tonic::Status {
    use tonic_types::{ErrorDetails, StatusExt as _};
    let message = err.to_string();
    tonic::Status::with_error_details(
        tonic::Code::InvalidArgument,
        message,
        ErrorDetails::with_bad_request_violation(err.field, err.reason),
    )
}

/// `INVALID_ARGUMENT` for `field` refused for `reason`, as [`invalid_argument`] words it.
pub fn invalid_field(field: &str, reason: impl Into<String>) -> tonic::Status {
    invalid_argument(ValidationError::new(field, reason))
}

/// `value`, or `INVALID_ARGUMENT` saying `field` is required (a message field left unset).
pub fn required<T>(value: Option<T>, field: &str) -> Result<T, tonic::Status> {
    value.ok_or_else(|| invalid_field(field, "is required"))
}

/// The field an `INVALID_ARGUMENT` status names in its details, and why it was refused
/// (`None` for a status without a field violation).
pub fn refused_field(status: &tonic::Status) -> Option<ValidationError> {
    use tonic_types::StatusExt as _;
    let violation = status
        .get_details_bad_request()?
        .field_violations
        .into_iter()
        .next()?;
    Some(ValidationError::new(violation.field, violation.description))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire() -> pb::Subscription {
        pb::Subscription {
            id: "sub_01".into(),
            tenant: "shop-1".into(),
            url: "https://shop.example/hooks".into(),
            event_types: vec!["order.*".into()],
            format: pb::Format::Xml as i32,
            secrets: vec![pb::SigningSecret {
                secret: SigningSecret::generate().expose(),
                ..Default::default()
            }],
            enabled: true,
            ..Default::default()
        }
    }

    #[test]
    fn a_complete_record_converts() {
        let sub = subscription(&wire(), false).expect("valid");
        assert_eq!(sub.format, PayloadFormat::Xml);
        assert_eq!(sub.timeout, DEFAULT_TIMEOUT);
        assert_eq!(sub.retry, RetrySchedule::default());
        assert!(sub.accepts("shop-1", "order.created"));
    }

    #[test]
    fn each_bad_field_is_named() {
        type Breaker = Box<dyn Fn(&mut pb::Subscription)>;
        let cases: Vec<(&str, Breaker)> = vec![
            ("tenant", Box::new(|s| s.tenant.clear())),
            ("url", Box::new(|s| s.url = "not a url".into())),
            ("url", Box::new(|s| s.url = "http://shop.example/".into())),
            (
                "event_types",
                Box::new(|s| s.event_types = vec!["Order".into()]),
            ),
            ("format", Box::new(|s| s.format = 7)),
            ("secrets", Box::new(|s| s.secrets.clear())),
            (
                "timeout",
                Box::new(|s| s.timeout = Some(duration(Duration::from_secs(999)))),
            ),
            (
                "headers",
                Box::new(|s| {
                    s.headers.insert("webhook-id".into(), "x".into());
                }),
            ),
            (
                "rate_limit",
                Box::new(|s| s.rate_limit = MAX_RATE_LIMIT + 1),
            ),
            ("signature_scheme", Box::new(|s| s.signature_scheme = 9)),
            (
                "secrets",
                Box::new(|s| s.signature_scheme = pb::SignatureScheme::Ed25519 as i32),
            ),
            (
                "retry",
                Box::new(|s| {
                    let mut both = exponential_policy(&Exponential {
                        base: Duration::from_secs(1),
                        factor: 2.0,
                        cap: Duration::from_secs(60),
                        max_attempts: 3,
                    });
                    both.delays = vec![duration(Duration::from_secs(1))];
                    s.retry = Some(both);
                }),
            ),
            (
                "retry",
                Box::new(|s| {
                    s.retry = Some(pb::RetryPolicy {
                        delays: vec![],
                        exponential: Some(pb::ExponentialBackoff {
                            base: None,
                            factor: 2.0,
                            cap: Some(duration(Duration::from_secs(60))),
                            max_attempts: 3,
                        }),
                    });
                }),
            ),
        ];
        for (field, break_it) in cases {
            let mut bad = wire();
            break_it(&mut bad);
            let err = subscription(&bad, false).expect_err(field);
            assert_eq!(err.field, field, "{err}");
        }
    }

    #[test]
    fn exponential_policies_expand_and_rate_limits_carry_over() {
        let mut wire = wire();
        wire.retry = Some(exponential_policy(&Exponential {
            base: Duration::from_secs(2),
            factor: 2.0,
            cap: Duration::from_secs(5),
            max_attempts: 4,
        }));
        wire.rate_limit = 50;
        let sub = subscription(&wire, false).expect("valid");
        assert_eq!(sub.retry.to_string(), "2s,4s,5s");
        assert_eq!(sub.rate_limit, Some(50));
        wire.rate_limit = 0;
        assert_eq!(subscription(&wire, false).expect("valid").rate_limit, None);
    }

    #[test]
    fn ed25519_subscriptions_carry_whsk_keys() {
        let mut wire = wire();
        wire.signature_scheme = pb::SignatureScheme::Ed25519 as i32;
        let key = SigningSecret::generate_for(Scheme::Ed25519);
        wire.secrets = vec![wire_secret(&key, SystemTime::now())];
        assert!(wire.secrets[0].public_key.starts_with("whpk_"));
        let sub = subscription(&wire, false).expect("valid");
        assert_eq!(sub.secrets[0].secret, key);
    }

    #[test]
    fn events_are_checked() {
        let good = pb::Event {
            tenant: "shop-1".into(),
            r#type: "order.created".into(),
            payload: br#"{"id":42}"#.to_vec(),
            ..Default::default()
        };
        validate_event(&good, 1024).expect("valid");
        let mut bad = good.clone();
        bad.payload = b"{not json".to_vec();
        assert_eq!(validate_event(&bad, 1024).unwrap_err().field, "payload");
        let mut bad = good.clone();
        bad.r#type = "order".into();
        assert_eq!(validate_event(&bad, 1024).unwrap_err().field, "type");
        let mut big = good.clone();
        big.payload = vec![b' '; 2048];
        assert_eq!(validate_event(&big, 1024).unwrap_err().field, "payload");
        // Times RFC 3339 cannot write are refused, not delivered.
        for (seconds, nanos) in [
            (LATEST_SECONDS + 1, 0),
            (-1, 0),
            (0, -1),
            (0, 1_000_000_000),
        ] {
            let mut bad = good.clone();
            bad.occurred_at = Some(prost_types::Timestamp { seconds, nanos });
            assert_eq!(
                validate_event(&bad, 1024).unwrap_err().field,
                "occurred_at",
                "{seconds}.{nanos}"
            );
        }
        let mut last = good;
        last.occurred_at = Some(prost_types::Timestamp {
            seconds: LATEST_SECONDS,
            nanos: 999_999_999,
        });
        validate_event(&last, 1024).expect("the last second of 9999");
    }

    #[test]
    fn times_past_9999_clamp_so_they_can_be_written() {
        for seconds in [LATEST_SECONDS + 1, 300_000_000_000, i64::MAX] {
            let time = system_time(&prost_types::Timestamp { seconds, nanos: 0 });
            assert_eq!(
                humantime::format_rfc3339_seconds(time).to_string(),
                "9999-12-31T23:59:59Z"
            );
        }
        let before = system_time(&prost_types::Timestamp {
            seconds: -5,
            nanos: 0,
        });
        assert_eq!(before, UNIX_EPOCH);
    }

    #[test]
    fn times_round_trip() {
        let now = SystemTime::now();
        assert_eq!(system_time(&timestamp(now)), now);
        let d = Duration::from_millis(1500);
        assert_eq!(std_duration(&duration(d)), Some(d));
    }

    #[test]
    fn only_a_valid_non_negative_duration_is_a_given_duration() {
        let wire = |seconds, nanos| prost_types::Duration { seconds, nanos };
        assert_eq!(
            valid_duration(&wire(1, 999_999_999)),
            Some(Duration::new(1, 999_999_999))
        );
        // Not normalised: 119 s and 1.5 s more would pass a bound of 120 s.
        assert_eq!(valid_duration(&wire(119, 1_500_000_000)), None);
        assert_eq!(valid_duration(&wire(1, 2_000_000_000)), None);
        assert_eq!(valid_duration(&wire(120, -5)), None, "signs differ");
        assert_eq!(valid_duration(&wire(-1, 0)), None, "negative");
        // A stored one is still read, as before.
        assert_eq!(
            std_duration(&wire(119, 1_500_000_000)),
            Some(Duration::new(119, 999_999_999))
        );
        let given = pb::Subscription {
            timeout: Some(wire(119, 1_500_000_000)),
            ..Default::default()
        };
        assert_eq!(check_given_durations(&given).unwrap_err().field, "timeout");
        let delays = pb::Subscription {
            retry: Some(pb::RetryPolicy {
                delays: vec![wire(5, 0), wire(1, 2_000_000_000)],
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(check_given_durations(&delays).unwrap_err().field, "retry");
        check_given_durations(&pb::Subscription::default()).expect("none given");
    }
}
