//! The body format a subscription receives: the event's JSON as given, or XML rendered from it.
//!
//! Payloads are stored and signed as JSON; the format only changes the bytes sent. The signature
//! always covers the bytes actually sent, so it is computed over [`PayloadFormat::render_body`]'s
//! output.

use crate::validate::ValidationError;
use crate::xml;

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

    /// The request body for a JSON `payload`: the bytes themselves, or their XML rendering.
    pub fn render_body(&self, payload: &[u8]) -> Result<Vec<u8>, RenderError> {
        match self {
            Self::Json => Ok(payload.to_vec()),
            Self::Xml => {
                let value = serde_json::from_slice(payload).map_err(RenderError::InvalidJson)?;
                Ok(xml::render(&value))
            }
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

    #[test]
    fn json_bodies_are_the_bytes_given() {
        let payload = b"{ \"b\": 1,  \"a\": 2 }";
        assert_eq!(PayloadFormat::Json.render_body(payload).unwrap(), payload);
    }

    #[test]
    fn xml_bodies_are_rendered() {
        let body = PayloadFormat::Xml.render_body(br#"{"a":1}"#).unwrap();
        assert_eq!(body, xml::render(&serde_json::json!({"a": 1})));
        assert!(matches!(
            PayloadFormat::Xml.render_body(b"{oops"),
            Err(RenderError::InvalidJson(_))
        ));
    }
}
