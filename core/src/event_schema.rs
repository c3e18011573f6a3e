//! Event schemas: the JSON Schema (draft 2020-12) an event type's payloads are to satisfy.
//! Checked when a type is written to the catalogue (the schema compiles, its example passes)
//! and by agents on every emitted payload of the type, and on test-sends' payloads; a refusal
//! names where the payload fails.
//!
//! Formats (`date-time`, `email`, …) are checked, not just annotated. A schema may not fetch
//! anything: `$ref` resolves within the document only.

use serde_json::Value;

use crate::ValidationError;

/// The largest schema accepted, in bytes of JSON text.
pub const MAX_SCHEMA_BYTES: usize = 64 * 1024;
/// The most problems one refusal lists.
const MAX_PROBLEMS: usize = 3;
/// The longest description of one problem (the validator quotes the failing value).
const MAX_PROBLEM_LEN: usize = 300;

/// A compiled event schema.
pub struct EventSchema {
    validator: jsonschema::Validator,
    /// The schema as compact JSON: what is stored and shown.
    canonical: String,
}

impl std::fmt::Debug for EventSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EventSchema({} bytes)", self.canonical.len())
    }
}

impl EventSchema {
    /// Compiles a schema's JSON text; an empty text is no schema. Errors name the field
    /// `schema`.
    pub fn parse(text: &[u8]) -> Result<Option<EventSchema>, ValidationError> {
        const FIELD: &str = "schema";
        if text.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        if text.len() > MAX_SCHEMA_BYTES {
            return Err(ValidationError::new(
                FIELD,
                format!(
                    "is {} bytes, larger than the limit of {MAX_SCHEMA_BYTES} bytes",
                    text.len()
                ),
            ));
        }
        let schema: Value = serde_json::from_slice(text).map_err(|e| {
            ValidationError::new(FIELD, format!("is not a valid JSON document: {e}"))
        })?;
        if !schema.is_object() {
            return Err(ValidationError::new(
                FIELD,
                "must be a JSON Schema object (draft 2020-12)",
            ));
        }
        if let Some(dialect) = schema.get("$schema")
            && dialect.as_str() != Some("https://json-schema.org/draft/2020-12/schema")
        {
            return Err(ValidationError::new(
                FIELD,
                format!(
                    "$schema is {dialect}; Herald checks payloads with draft 2020-12 \
                     (https://json-schema.org/draft/2020-12/schema)"
                ),
            ));
        }
        if let Err(err) = jsonschema::draft202012::meta::validate(&schema) {
            let mut problem = format!(
                "is not a valid JSON Schema at {}: {err}",
                at(err.instance_path().as_str())
            );
            cut(&mut problem);
            return Err(ValidationError::new(FIELD, problem));
        }
        let validator = jsonschema::draft202012::options()
            .should_validate_formats(true)
            .build(&schema)
            .map_err(|e| ValidationError::new(FIELD, does_not_compile(&e)))?;
        Ok(Some(EventSchema {
            validator,
            canonical: schema.to_string(),
        }))
    }

    /// The schema as stored and shown: compact JSON.
    pub fn as_str(&self) -> &str {
        &self.canonical
    }

    /// Whether `payload` satisfies the schema; if not, a `payload` error naming where (a JSON
    /// pointer into the payload) and why, for the first few problems.
    pub fn check(&self, payload: &Value) -> Result<(), ValidationError> {
        let problems: Vec<String> = self
            .validator
            .iter_errors(payload)
            .take(MAX_PROBLEMS)
            .map(|e| {
                let mut problem = format!("at {}: {e}", at(e.instance_path().as_str()));
                cut(&mut problem);
                problem
            })
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ValidationError::new(
                "payload",
                format!(
                    "does not match its event type's schema: {}",
                    problems.join("; ")
                ),
            ))
        }
    }
}

/// Why a schema does not compile, in the catalogue's words.
fn does_not_compile(err: &jsonschema::ValidationError<'_>) -> String {
    use jsonschema::error::ValidationErrorKind;
    let mut problem = match err.kind() {
        ValidationErrorKind::Referencing(jsonschema::ReferencingError::Unretrievable {
            uri,
            ..
        }) => format!(
            "refers to {uri}, which Herald does not fetch: put what it refers to in the \
             schema's $defs and refer to it as #/$defs/…"
        ),
        _ => format!("does not compile: {err}"),
    };
    cut(&mut problem);
    problem
}

/// Cuts a problem's text to [`MAX_PROBLEM_LEN`] bytes, at a character boundary.
fn cut(text: &mut String) {
    if text.len() > MAX_PROBLEM_LEN {
        let mut end = MAX_PROBLEM_LEN;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
}

/// A JSON pointer for people: `/` for the document itself.
fn at(pointer: &str) -> &str {
    if pointer.is_empty() { "/" } else { pointer }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn order_schema() -> EventSchema {
        let schema = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "required": ["order_id", "total", "lines"],
            "properties": {
                "order_id": {"type": "string"},
                "total": {"type": "string", "pattern": "^[0-9]+\\.[0-9]{2}$"},
                "placed_at": {"type": "string", "format": "date-time"},
                "lines": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["sku", "qty"],
                        "properties": {"sku": {"type": "string"}, "qty": {"type": "integer", "minimum": 1}}
                    }
                }
            }
        });
        EventSchema::parse(schema.to_string().as_bytes())
            .expect("valid")
            .expect("a schema")
    }

    #[test]
    fn payloads_are_checked_and_refusals_name_the_path() {
        let schema = order_schema();
        let good = json!({"order_id": "o1", "total": "12.50", "lines": [{"sku": "A", "qty": 2}]});
        assert_eq!(schema.check(&good), Ok(()));
        let err = schema
            .check(&json!({"order_id": "o1", "total": "12.50", "lines": [{"sku": "A", "qty": 0}]}))
            .expect_err("qty 0");
        assert_eq!(err.field, "payload");
        assert!(err.reason.contains("at /lines/0/qty"), "{err}");
        let err = schema
            .check(&json!({"order_id": "o1", "total": 12.5, "lines": []}))
            .expect_err("two problems");
        assert!(
            err.reason.contains("at /total") && err.reason.contains("at /lines"),
            "{err}"
        );
        let err = schema.check(&json!([1])).expect_err("not an object");
        assert!(err.reason.contains("at /:"), "{err}");
        let long = "x".repeat(10_000);
        let err = schema
            .check(&json!({"order_id": "o1", "total": long, "lines": [{"sku": "A", "qty": 1}]}))
            .expect_err("a long bad value");
        assert!(
            err.reason.len() < 1200,
            "bounded: {} bytes",
            err.reason.len()
        );
        let err = schema
            .check(&json!({"order_id": "o1", "total": "1.00", "lines": [{"sku": "A", "qty": 1}], "placed_at": "yesterday"}))
            .expect_err("formats are checked");
        assert!(err.reason.contains("at /placed_at"), "{err}");
    }

    #[test]
    fn bad_schemas_are_refused() {
        for (text, expected) in [
            (&b"{\"type\": \"objekt\"}"[..], "is not a valid JSON Schema"),
            (b"[1]", "must be a JSON Schema object"),
            (b"{\"type\": ", "is not a valid JSON document"),
            (
                br#"{"$schema": "http://json-schema.org/draft-07/schema#"}"#,
                "draft 2020-12",
            ),
            (
                br#"{"$ref": "https://example.com/order.json"}"#,
                "refers to https://example.com/order.json, which Herald does not fetch",
            ),
            (
                br#"{"$ref": "file:///etc/passwd"}"#,
                "which Herald does not fetch",
            ),
        ] {
            let err = EventSchema::parse(text).expect_err("refused");
            assert_eq!(err.field, "schema");
            assert!(
                err.reason.contains(expected),
                "{}: {err}",
                String::from_utf8_lossy(text)
            );
        }
        let remote = EventSchema::parse(br#"{"$ref": "https://example.com/order.json"}"#)
            .expect_err("refused");
        assert!(!remote.reason.contains("feature"), "{remote}");
        // Patterns of the common kind compile and check.
        let sku = EventSchema::parse(
            br#"{"properties": {"sku": {"type": "string", "pattern": "^[A-Z]{2,8}-\\d+$"}}}"#,
        )
        .expect("compiles")
        .expect("a schema");
        assert!(sku.check(&serde_json::json!({"sku": "TSHIRT-42"})).is_ok());
        assert!(sku.check(&serde_json::json!({"sku": "tshirt"})).is_err());
        assert!(EventSchema::parse(b"").expect("empty").is_none());
        let big = format!("{{\"description\": \"{}\"}}", "x".repeat(MAX_SCHEMA_BYTES));
        assert!(EventSchema::parse(big.as_bytes()).is_err());
    }
}
