//! The body a subscription receives: its format (the event's JSON, or XML rendered from it) and
//! its envelope (the Standard Webhooks `{"type", "timestamp", "data"}` around the payload, or the
//! payload alone).
//!
//! Payloads are stored as JSON; format and envelope only change the bytes sent. The signature
//! always covers the bytes actually sent, so it is computed over [`render_body`]'s output.
//!
//! The JSON envelope is written around the payload's own bytes, which were checked to be one
//! JSON document when the event was accepted: `{"type":"order.created","timestamp":
//! "2026-12-04T12:00:00.123Z","data":<payload as emitted>}`. `timestamp` is when the event
//! occurred (RFC 3339, UTC, milliseconds). The XML envelope is described in [`xml`].

use std::time::SystemTime;

use crate::validate::ValidationError;
use crate::xml;

/// The header naming the event's type on every request, whatever the envelope.
pub const HEADER_EVENT_TYPE: &str = "webhook-event-type";

/// How a body carries the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Envelope {
    /// The Standard Webhooks envelope `{"type", "timestamp", "data"}`: every webhook has one
    /// shape, and the receiver learns the type from the body.
    #[default]
    Standard,
    /// The payload alone, for receivers built for it (the type is in [`HEADER_EVENT_TYPE`]).
    Raw,
}

impl Envelope {
    /// Parses `standard` or `raw`, in any case.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        if s.eq_ignore_ascii_case("standard") {
            Ok(Self::Standard)
        } else if s.eq_ignore_ascii_case("raw") {
            Ok(Self::Raw)
        } else {
            Err(ValidationError::new(
                "envelope",
                format!("{:?} is not an envelope, use standard or raw", truncate(s)),
            ))
        }
    }

    /// The envelope's canonical name: `standard` or `raw`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Standard => "standard",
            Self::Raw => "raw",
        }
    }
}

/// What of an event goes into a webhook's body.
#[derive(Debug, Clone, Copy)]
pub struct EventBody<'a> {
    /// `order.created`.
    pub event_type: &'a str,
    /// When the event occurred.
    pub occurred_at: SystemTime,
    /// The payload as emitted: one JSON document.
    pub payload: &'a [u8],
}

/// The request body for `event` in a subscription's `format` and `envelope`.
pub fn render_body(
    format: PayloadFormat,
    envelope: Envelope,
    event: &EventBody<'_>,
) -> Result<Vec<u8>, RenderError> {
    let timestamp = || humantime::format_rfc3339_millis(event.occurred_at).to_string();
    match (format, envelope) {
        (PayloadFormat::Json, Envelope::Raw) => Ok(event.payload.to_vec()),
        (PayloadFormat::Json, Envelope::Standard) => {
            let event_type =
                serde_json::to_string(event.event_type).map_err(RenderError::InvalidJson)?;
            let timestamp = timestamp();
            let mut body = Vec::with_capacity(event.payload.len() + event_type.len() + 64);
            body.extend_from_slice(b"{\"type\":");
            body.extend_from_slice(event_type.as_bytes());
            body.extend_from_slice(b",\"timestamp\":\"");
            body.extend_from_slice(timestamp.as_bytes());
            body.extend_from_slice(b"\",\"data\":");
            body.extend_from_slice(event.payload);
            body.push(b'}');
            Ok(body)
        }
        (PayloadFormat::Xml, Envelope::Raw) => Ok(xml::render(event.payload)?),
        (PayloadFormat::Xml, Envelope::Standard) => Ok(xml::render_envelope(
            event.event_type,
            &timestamp(),
            event.payload,
        )?),
    }
}

/// How a subscription wants its request bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PayloadFormat {
    /// The payload's JSON bytes, unchanged.
    #[default]
    Json,
    /// XML rendered from the payload by [`xml::render`].
    Xml,
}

/// Why a payload could not be rendered in a subscription's format.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The payload is not a JSON document, so it has no XML form.
    #[error("payload is not valid JSON")]
    InvalidJson(#[source] serde_json::Error),
    /// The payload could not be written as XML.
    #[error("payload has no XML form")]
    Xml(#[source] xml::XmlError),
}

impl From<xml::XmlError> for RenderError {
    fn from(err: xml::XmlError) -> Self {
        match err {
            xml::XmlError::Json(err) => RenderError::InvalidJson(err),
            err @ xml::XmlError::Write(_) => RenderError::Xml(err),
        }
    }
}

impl PayloadFormat {
    /// Parses `json` or `xml`, in any case.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        if s.eq_ignore_ascii_case("json") {
            Ok(Self::Json)
        } else if s.eq_ignore_ascii_case("xml") {
            Ok(Self::Xml)
        } else {
            Err(ValidationError::new(
                "format",
                format!("{:?} is not a format, use json or xml", truncate(s)),
            ))
        }
    }

    /// The format's canonical name: `json` or `xml`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Xml => "xml",
        }
    }

    /// The `content-type` header value for bodies in this format.
    pub fn content_type(&self) -> &'static str {
        match self {
            Self::Json => "application/json",
            Self::Xml => "application/xml",
        }
    }
}

/// At most the first 32 characters of `s`, so an error never echoes a huge input.
fn truncate(s: &str) -> &str {
    s.char_indices().nth(32).map_or(s, |(end, _)| &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_is_case_insensitive() {
        assert_eq!(PayloadFormat::parse("json"), Ok(PayloadFormat::Json));
        assert_eq!(PayloadFormat::parse("XML"), Ok(PayloadFormat::Xml));
        assert_eq!(PayloadFormat::parse("Json"), Ok(PayloadFormat::Json));
        for bad in ["", "yaml", " json", "jsonx"] {
            assert_eq!(PayloadFormat::parse(bad).unwrap_err().field, "format");
        }
    }

    #[test]
    fn parse_errors_are_bounded() {
        let err = PayloadFormat::parse(&"y".repeat(10_000)).unwrap_err();
        assert!(err.reason.len() < 100, "{err}");
    }

    #[test]
    fn names_and_content_types() {
        assert_eq!(PayloadFormat::default(), PayloadFormat::Json);
        for format in [PayloadFormat::Json, PayloadFormat::Xml] {
            assert_eq!(PayloadFormat::parse(format.as_str()), Ok(format));
        }
        assert_eq!(PayloadFormat::Json.content_type(), "application/json");
        assert_eq!(PayloadFormat::Xml.content_type(), "application/xml");
    }

    fn event(payload: &[u8]) -> EventBody<'_> {
        EventBody {
            event_type: "order.created",
            occurred_at: SystemTime::UNIX_EPOCH
                + std::time::Duration::from_millis(1_764_849_600_123),
            payload,
        }
    }

    #[test]
    fn raw_json_bodies_are_the_bytes_given() {
        let payload = b"{ \"b\": 1,  \"a\": 2 }";
        let body = render_body(PayloadFormat::Json, Envelope::Raw, &event(payload)).unwrap();
        assert_eq!(body, payload);
    }

    #[test]
    fn the_json_envelope_wraps_the_payload_as_emitted() {
        let payload = b"{ \"b\": 1,  \"a\": [2] }";
        let body = render_body(PayloadFormat::Json, Envelope::Standard, &event(payload)).unwrap();
        assert_eq!(
            String::from_utf8(body.clone()).unwrap(),
            "{\"type\":\"order.created\",\"timestamp\":\"2025-12-04T12:00:00.123Z\",\
             \"data\":{ \"b\": 1,  \"a\": [2] }}"
        );
        let value: serde_json::Value = serde_json::from_slice(&body).expect("one JSON document");
        assert_eq!(value["data"], serde_json::json!({"a": [2], "b": 1}));
        for scalar in [&b"42"[..], b"\"text\"", b"null", b"[1,2]"] {
            let body =
                render_body(PayloadFormat::Json, Envelope::Standard, &event(scalar)).unwrap();
            let value: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
            assert_eq!(
                value["data"],
                serde_json::from_slice::<serde_json::Value>(scalar).unwrap()
            );
        }
    }

    #[test]
    fn xml_bodies_are_rendered_with_or_without_the_envelope() {
        let payload = br#"{"a":1}"#;
        let raw = render_body(PayloadFormat::Xml, Envelope::Raw, &event(payload)).unwrap();
        assert_eq!(raw, xml::render(payload).unwrap());
        let wrapped = render_body(PayloadFormat::Xml, Envelope::Standard, &event(payload)).unwrap();
        assert_eq!(
            wrapped,
            xml::render_envelope("order.created", "2025-12-04T12:00:00.123Z", payload).unwrap()
        );
        assert!(matches!(
            render_body(PayloadFormat::Xml, Envelope::Raw, &event(b"{oops")),
            Err(RenderError::InvalidJson(_))
        ));
    }

    #[test]
    fn envelopes_parse_by_name() {
        assert_eq!(Envelope::default(), Envelope::Standard);
        for envelope in [Envelope::Standard, Envelope::Raw] {
            assert_eq!(Envelope::parse(envelope.as_str()), Ok(envelope));
        }
        assert_eq!(Envelope::parse("RAW"), Ok(Envelope::Raw));
        assert_eq!(Envelope::parse("bare").unwrap_err().field, "envelope");
    }
}
