//! Conversions between wire messages and domain types. Validation of everything that arrives
//! over the API happens here, once: the control plane checks subscriptions with
//! [`subscription`] before storing them, the agent builds its delivery config with the same
//! function, and `Emit` checks events with [`validate_event`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald_core::ValidationError;
use herald_core::event_type::{EventFilter, validate_event_type};
use herald_core::format::PayloadFormat;
use herald_core::limits::MAX_LABELS;
use herald_core::retry::RetrySchedule;
use herald_core::signing::SigningSecret;
use herald_core::subscription::{
    DEFAULT_MAX_IN_FLIGHT, DEFAULT_TIMEOUT, MAX_MAX_IN_FLIGHT, MAX_REGIONS, MAX_SECRETS,
    MAX_TIMEOUT, Secret, Subscription,
};
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

/// The system time of a wire timestamp (negative or malformed values clamp to the epoch).
pub fn system_time(ts: &prost_types::Timestamp) -> SystemTime {
    let secs = u64::try_from(ts.seconds).unwrap_or(0);
    let nanos = u32::try_from(ts.nanos).unwrap_or(0).min(999_999_999);
    UNIX_EPOCH + Duration::new(secs, nanos)
}

/// A wire duration.
pub fn duration(value: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(value.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(value.subsec_nanos()).unwrap_or(0),
    }
}

/// The duration of a wire duration; `None` when negative.
pub fn std_duration(value: &prost_types::Duration) -> Option<Duration> {
    let secs = u64::try_from(value.seconds).ok()?;
    let nanos = u32::try_from(value.nanos).ok()?;
    Some(Duration::new(secs, nanos.min(999_999_999)))
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

/// The wire format of a domain format.
pub fn wire_format(format: PayloadFormat) -> pb::Format {
    match format {
        PayloadFormat::Json => pb::Format::Json,
        PayloadFormat::Xml => pb::Format::Xml,
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
    let format = payload_format(wire.format)?;
    validate::custom_headers(wire.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
    validate::description(&wire.description)?;
    if wire.labels.len() > MAX_LABELS {
        return Err(ValidationError::new(
            "labels",
            format!("at most {MAX_LABELS} labels"),
        ));
    }
    validate::attributes(wire.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map_err(|e| ValidationError::new("labels", e.reason))?;
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
    Ok(Subscription {
        id: wire.id.clone(),
        tenant: wire.tenant.clone(),
        url,
        filter,
        format,
        secrets,
        headers,
        timeout,
        retry,
        max_in_flight,
        enabled: wire.enabled,
        regions: wire.regions.clone(),
        revision: wire.revision,
    })
}

/// The retry schedule of a wire policy; no policy or no delays means the default schedule.
pub fn retry_schedule(policy: Option<&pb::RetryPolicy>) -> Result<RetrySchedule, ValidationError> {
    match policy {
        Some(policy) if !policy.delays.is_empty() => {
            let delays = policy
                .delays
                .iter()
                .map(|d| {
                    std_duration(d).ok_or_else(|| {
                        ValidationError::new("retry_schedule", "delays must not be negative")
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            RetrySchedule::new(delays)
        }
        _ => Ok(RetrySchedule::default()),
    }
}

/// The wire policy of a schedule.
pub fn retry_policy(schedule: &RetrySchedule) -> pb::RetryPolicy {
    pb::RetryPolicy {
        delays: schedule.delays().iter().copied().map(duration).collect(),
    }
}

/// Checks an emitted event: its id (when given), tenant, type, payload (a JSON document of at
/// most `max_payload_bytes`), ordering key and attributes.
pub fn validate_event(event: &pb::Event, max_payload_bytes: usize) -> Result<(), ValidationError> {
    if !event.id.is_empty() {
        validate::event_id(&event.id)?;
    }
    validate::tenant(&event.tenant)?;
    validate_event_type(&event.r#type)?;
    validate::json_payload(&event.payload, max_payload_bytes)?;
    validate::ordering_key(&event.ordering_key)?;
    validate::attributes(
        event
            .attributes
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str())),
    )?;
    Ok(())
}

/// The gRPC status for invalid input: `INVALID_ARGUMENT` naming the field.
pub fn invalid_argument(err: ValidationError) -> tonic::Status {
    tonic::Status::invalid_argument(err.to_string())
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
        ];
        for (field, break_it) in cases {
            let mut bad = wire();
            break_it(&mut bad);
            let err = subscription(&bad, false).expect_err(field);
            assert_eq!(err.field, field, "{err}");
        }
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
        let mut big = good;
        big.payload = vec![b' '; 2048];
        assert_eq!(validate_event(&big, 1024).unwrap_err().field, "payload");
    }

    #[test]
    fn times_round_trip() {
        let now = SystemTime::now();
        assert_eq!(system_time(&timestamp(now)), now);
        let d = Duration::from_millis(1500);
        assert_eq!(std_duration(&duration(d)), Some(d));
    }
}
