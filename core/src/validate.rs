//! Validation of the fields callers send: tenants, event ids, URLs, payloads, custom headers,
//! descriptions, ordering keys and attributes.
//!
//! Each function checks one field and returns a [`ValidationError`] naming that field, so every
//! edge (gRPC, CLI, config) reports the same problem in the same words. The functions never echo
//! a value that may be secret (header values, URLs with credentials) or unbounded (anything that
//! failed its length check). Limits come from [`limits`].

pub use crate::limits;

use limits::{
    MAX_ATTRIBUTE_KEY_LEN, MAX_ATTRIBUTE_VALUE_LEN, MAX_ATTRIBUTES, MAX_DESCRIPTION_LEN,
    MAX_EVENT_ID_LEN, MAX_EVENT_TYPE_LEN, MAX_HEADER_NAME_LEN, MAX_HEADER_VALUE_LEN, MAX_HEADERS,
    MAX_ORDERING_KEY_LEN, MAX_TENANT_LEN, MAX_URL_LEN,
};

/// A field that breaks one of Herald's rules: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ValidationError {
    /// The field's name as callers know it, such as `tenant` or `url`.
    pub field: String,
    /// What is wrong, in lowercase words.
    pub reason: String,
}

/// The longest reason an error keeps: it travels back in a gRPC status (a header, which
/// clients limit to a few KiB) and into logs, so a reason that quotes a caller's value can
/// never grow with it.
pub const MAX_REASON_LEN: usize = 1024;

/// How many characters of a caller's value [`quoted`] shows.
const QUOTED_CHARS: usize = 64;

impl ValidationError {
    /// Builds an error for `field` explaining `reason`, cut to [`MAX_REASON_LEN`] bytes.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        let mut reason = reason.into();
        if reason.len() > MAX_REASON_LEN {
            let mut end = MAX_REASON_LEN;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
            reason.push('…');
        }
        Self {
            field: field.into(),
            reason,
        }
    }
}

/// A caller's value as an error shows it: quoted and escaped, and when long, its first
/// characters and its length, so that refusing a 70 KB value does not echo it.
pub fn quoted(value: &str) -> String {
    match value.char_indices().nth(QUOTED_CHARS) {
        None => format!("{value:?}"),
        Some((end, _)) => format!("{:?}… ({} bytes)", &value[..end], value.len()),
    }
}

/// Header names Herald sets itself or that belong to the HTTP connection; subscriptions may not
/// override them.
const RESERVED_HEADERS: [&str; 11] = [
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "webhook-event-type",
    "content-type",
    "content-length",
    "host",
    "user-agent",
    "transfer-encoding",
    "connection",
    "traceparent",
];

/// Header names of the connection, or of how the body is framed or sent on, that a caller may
/// not give a subscription: a receiver (or a proxy on the way) would read the request by them,
/// and `Content-Encoding: gzip` on a plain body fails every attempt. Refused when given
/// ([`headers_as_given`]); a record stored before they were still loads and sends them.
const CONNECTION_HEADERS: [&str; 8] = [
    "content-encoding",
    "expect",
    "keep-alive",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

/// Checks the header names a caller gives a subscription beyond [`custom_headers`]: none of
/// [`CONNECTION_HEADERS`].
pub fn headers_as_given<'a>(
    names: impl IntoIterator<Item = &'a str>,
) -> Result<(), ValidationError> {
    for name in names {
        if CONNECTION_HEADERS
            .iter()
            .any(|reserved| reserved.eq_ignore_ascii_case(name))
        {
            return Err(ValidationError::new(
                "headers",
                format!(
                    "header {name:?} belongs to the connection or to how the body is sent, \
                     which herald sets"
                ),
            ));
        }
    }
    Ok(())
}

/// The tenant Herald's own operator events (`herald.subscription.disabled`, …) belong to unless
/// `--system-tenant` names another; applications may not emit into it.
pub const DEFAULT_SYSTEM_TENANT: &str = "herald";

/// Checks a tenant name: 1 to [`MAX_TENANT_LEN`] characters of `[A-Za-z0-9_.-]`.
///
/// Tenants are part of etcd keys, so `/` and anything else outside that set is refused.
pub fn tenant(value: &str) -> Result<(), ValidationError> {
    identifier("tenant", value, MAX_TENANT_LEN, |c| {
        c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
    })
}

/// Checks a tenant a caller names for a new subscription: as [`tenant`], and not `.` or `..`,
/// which cannot name it in the URL paths of its portal and the HTTP API (a record stored before
/// this check is still read).
pub fn tenant_as_given(value: &str) -> Result<(), ValidationError> {
    tenant(value)?;
    if value == "." || value == ".." {
        return Err(ValidationError::new(
            "tenant",
            format!("{value:?} cannot name a tenant in a URL path"),
        ));
    }
    Ok(())
}

/// Checks a region name: 1 to [`MAX_TENANT_LEN`] characters of `[A-Za-z0-9_.-]`, like a
/// tenant (regions name agents' places: `eu-west-1`, `dc2`).
pub fn region(value: &str) -> Result<(), ValidationError> {
    identifier("region", value, MAX_TENANT_LEN, |c| {
        c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
    })
}

/// Checks an agent's id as it names itself (`--id`): 1 to [`MAX_AGENT_FIELD_LEN`] characters
/// of `[A-Za-z0-9_.:-]`, as the ids agents make for themselves (`agt_…`) are. The control
/// plane lists agents by it and refuses a longer one.
pub fn agent_id(value: &str) -> Result<(), ValidationError> {
    identifier("agent_id", value, MAX_AGENT_FIELD_LEN, |c| {
        c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')
    })
}

/// Checks the name of the node an agent runs on: 1 to [`MAX_AGENT_FIELD_LEN`] bytes, shown
/// as given on one line ([`label`]).
pub fn node(value: &str) -> Result<(), ValidationError> {
    if value.is_empty() {
        return Err(ValidationError::new("node", "must not be empty"));
    }
    label("node", value, MAX_AGENT_FIELD_LEN)
}

/// Checks a short name shown in one cell of a list (a node, a version, an OAuth2 client id):
/// at most `max` bytes, as [`shown_text`] with no line break or tab either.
pub fn label(field: &str, value: &str, max: usize) -> Result<(), ValidationError> {
    shown_text(field, value, max)?;
    if let Some(bad) = value.chars().find(|c| c.is_control()) {
        return Err(ValidationError::new(
            field,
            format!("contains the control character {bad:?}: it is shown on one line"),
        ));
    }
    Ok(())
}

/// Checks an event-type prefix of an agent's interest (`--event-type-prefixes`): the start of
/// event types, such as `order.` or `order.created`, 1 to [`MAX_EVENT_TYPE_LEN`] characters of
/// `a-z`, `0-9`, `_` and `.`.
pub fn event_type_prefix(value: &str) -> Result<(), ValidationError> {
    let valid = !value.is_empty()
        && value.len() <= MAX_EVENT_TYPE_LEN
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.');
    if valid {
        Ok(())
    } else {
        Err(ValidationError::new(
            "event_type_prefix",
            format!(
                "{}: an event-type prefix is 1 to {MAX_EVENT_TYPE_LEN} characters of a-z, 0-9, _ \
                 and . (e.g. order.)",
                quoted(value)
            ),
        ))
    }
}

/// The longest agent id, node, region and version an agent may name itself by.
pub const MAX_AGENT_FIELD_LEN: usize = 128;

/// Checks an event id: 1 to [`MAX_EVENT_ID_LEN`] characters of `[A-Za-z0-9_.:-]`, and not
/// `.` or `..`.
///
/// The id is sent as the `webhook-id` header and signed, so it stays plain ASCII.
pub fn event_id(value: &str) -> Result<(), ValidationError> {
    identifier("id", value, MAX_EVENT_ID_LEN, |c| {
        c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')
    })?;
    // An event is named in URL paths (`/events/{id}`), where these two mean something else.
    if value == "." || value == ".." {
        return Err(ValidationError::new(
            "id",
            format!("{value:?} cannot name an event in a URL path"),
        ));
    }
    Ok(())
}

/// Checks a subscription id as a caller names one (`sub_…`, assigned by the control plane):
/// at most [`MAX_EVENT_ID_LEN`] bytes of the characters ids are made of, so that an id no
/// subscription can have is refused before it reaches a store or an audit entry.
pub fn subscription_id(value: &str) -> Result<(), ValidationError> {
    identifier("subscription_id", value, MAX_EVENT_ID_LEN, |c| {
        c.is_ascii_alphanumeric() || matches!(c, '_' | '-')
    })
}

/// Checks that `value` is non-empty, at most `max` bytes and made only of `allowed` characters.
fn identifier(
    field: &str,
    value: &str,
    max: usize,
    allowed: impl Fn(char) -> bool,
) -> Result<(), ValidationError> {
    if value.is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if value.len() > max {
        return Err(ValidationError::new(
            field,
            format!("is {} bytes, longer than the limit of {max}", value.len()),
        ));
    }
    if let Some(bad) = value.chars().find(|&c| !allowed(c)) {
        return Err(ValidationError::new(
            field,
            format!("{value:?} contains the character {bad:?}, which is not allowed"),
        ));
    }
    Ok(())
}

/// Parses and checks a delivery URL.
///
/// The URL must be at most [`MAX_URL_LEN`] bytes, use `https` (or `http` when `allow_http`),
/// name a host, and carry neither credentials (`user:pass@`, which would leak into logs) nor a
/// fragment (which is never sent to the server). The parsed URL is the normal form (host in
/// lower case, default port dropped, `..` resolved) to store: the one requests go to. A URL a
/// caller gives is checked first with [`url_as_given`].
pub fn url(value: &str, allow_http: bool) -> Result<url::Url, ValidationError> {
    const FIELD: &str = "url";
    if value.len() > MAX_URL_LEN {
        return Err(ValidationError::new(
            FIELD,
            format!(
                "is {} bytes, longer than the limit of {MAX_URL_LEN}",
                value.len()
            ),
        ));
    }
    let parsed = url::Url::parse(value)
        .map_err(|e| ValidationError::new(FIELD, format!("is not a valid URL: {e}")))?;
    match parsed.scheme() {
        "https" => {}
        "http" if allow_http => {}
        "http" => {
            return Err(ValidationError::new(
                FIELD,
                "must use https (http is allowed only where the operator started the control \
                 plane with --allow-http, for development)",
            ));
        }
        other => {
            let allowed = if allow_http { "http or https" } else { "https" };
            return Err(ValidationError::new(
                FIELD,
                format!("scheme {other:?} is not allowed, use {allowed}"),
            ));
        }
    }
    if parsed.host().is_none() {
        return Err(ValidationError::new(FIELD, "must name a host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(ValidationError::new(
            FIELD,
            "must not contain credentials (user:password@)",
        ));
    }
    if parsed.fragment().is_some() {
        return Err(ValidationError::new(
            FIELD,
            "must not contain a fragment (#...)",
        ));
    }
    Ok(parsed)
}

/// Checks a URL as a caller gives it (`field` names it), before [`url`] parses it: a parser
/// drops spaces and control characters and reads `https:///host` as `https://host`, so such a
/// URL would be delivered elsewhere than it reads. Refused on the way in; a stored one is still
/// read as the parser reads it.
pub fn url_as_given(field: &str, value: &str) -> Result<(), ValidationError> {
    if value.is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if let Some(bad) = value.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(ValidationError::new(
            field,
            format!("contains the character {bad:?}: percent-encode it"),
        ));
    }
    if let Some((_, rest)) = value.split_once("://")
        && rest.starts_with(['/', '\\'])
    {
        return Err(ValidationError::new(field, "must name a host after ://"));
    }
    if url::Url::parse(value).is_ok_and(|parsed| parsed.port() == Some(0)) {
        return Err(ValidationError::new(
            field,
            "port 0 names no port anything listens on",
        ));
    }
    Ok(())
}

/// The deepest an event payload may nest (arrays and objects within each other). The Standard
/// Webhooks envelope puts the payload one level down (`{"data": …}`), and the body a receiver
/// gets must stay within what its JSON parser reads: serde_json, the strictest common one,
/// stops at 128 levels.
pub const MAX_PAYLOAD_DEPTH: usize = 126;

/// Checks an event payload: at most `max_bytes` bytes, and one JSON document (any JSON value)
/// nesting at most [`MAX_PAYLOAD_DEPTH`] levels.
///
/// The size is checked before parsing so an oversized payload costs nothing to refuse. The
/// document is read as strictly as a full parse reads it (UTF-8, escapes, surrogate pairs,
/// numbers) but nothing of it is kept: this runs for every emitted event.
pub fn json_payload(bytes: &[u8], max_bytes: usize) -> Result<(), ValidationError> {
    const FIELD: &str = "payload";
    if bytes.len() > max_bytes {
        return Err(ValidationError::new(
            FIELD,
            format!(
                "is {} bytes, larger than the limit of {max_bytes} bytes",
                bytes.len()
            ),
        ));
    }
    let too_deep = std::cell::Cell::new(false);
    let mut reader = serde_json::Deserializer::from_slice(bytes);
    let read = serde::de::DeserializeSeed::deserialize(
        ReadThrough {
            levels_left: MAX_PAYLOAD_DEPTH,
            too_deep: &too_deep,
        },
        &mut reader,
    )
    .and_then(|()| reader.end());
    match read {
        Ok(()) => Ok(()),
        Err(_) if too_deep.get() => Err(ValidationError::new(
            FIELD,
            format!(
                "nests deeper than {MAX_PAYLOAD_DEPTH} levels of arrays and objects (the \
                 envelope adds one, and receivers' JSON parsers stop at 128)"
            ),
        )),
        Err(e) => Err(ValidationError::new(
            FIELD,
            format!("is not a valid JSON document: {e}"),
        )),
    }
}

/// Any JSON value within `levels_left` levels of nesting, read through and dropped. Unlike
/// `serde::de::IgnoredAny`, which skips strings without checking their bytes or escapes, every
/// part is parsed as a full `serde_json::Value` parse would parse it, without allocating for
/// it.
#[derive(Clone, Copy)]
struct ReadThrough<'a> {
    /// How many more arrays or objects may open.
    levels_left: usize,
    /// Set when a value nests deeper: the parse's error is that, not bad JSON.
    too_deep: &'a std::cell::Cell<bool>,
}

impl ReadThrough<'_> {
    /// The reader of the values one level down, or the error when none may open.
    fn inner<E: serde::de::Error>(self) -> Result<Self, E> {
        match self.levels_left.checked_sub(1) {
            Some(levels_left) => Ok(ReadThrough {
                levels_left,
                ..self
            }),
            None => {
                self.too_deep.set(true);
                Err(E::custom(format_args!(
                    "nests deeper than {MAX_PAYLOAD_DEPTH} levels"
                )))
            }
        }
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for ReadThrough<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for ReadThrough<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let inner = self.inner()?;
        while seq.next_element_seed(inner)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let inner = self.inner()?;
        while map.next_key_seed(inner)?.is_some() {
            map.next_value_seed(inner)?;
        }
        Ok(())
    }
}

/// Checks a subscription's custom headers.
///
/// At most [`MAX_HEADERS`] headers; names are HTTP token names of at most
/// [`MAX_HEADER_NAME_LEN`] bytes made of ASCII letters, digits and `-`, not reserved (Herald's own `webhook-*` headers, `content-type`, hop-by-hop headers, ...,
/// compared case-insensitively) and not repeated; values are visible ASCII or spaces (so no CR or
/// LF) and at most [`MAX_HEADER_VALUE_LEN`] bytes. Values are never echoed: they often hold
/// credentials.
pub fn custom_headers<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<(), ValidationError> {
    const FIELD: &str = "headers";
    let mut seen: Vec<&str> = Vec::new();
    for (name, value) in headers {
        if seen.len() == MAX_HEADERS {
            return Err(ValidationError::new(
                FIELD,
                format!("more than {MAX_HEADERS} headers"),
            ));
        }
        if name.is_empty() {
            return Err(ValidationError::new(FIELD, "a header name is empty"));
        }
        if name.len() > MAX_HEADER_NAME_LEN {
            return Err(ValidationError::new(
                FIELD,
                format!("a header name is longer than {MAX_HEADER_NAME_LEN} bytes"),
            ));
        }
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(ValidationError::new(
                FIELD,
                format!("header name {name:?} may only contain ASCII letters, digits and '-'"),
            ));
        }
        if RESERVED_HEADERS
            .iter()
            .any(|reserved| reserved.eq_ignore_ascii_case(name))
        {
            return Err(ValidationError::new(
                FIELD,
                format!("header {name:?} is reserved and set by herald"),
            ));
        }
        if seen.iter().any(|other| other.eq_ignore_ascii_case(name)) {
            return Err(ValidationError::new(
                FIELD,
                format!("header {name:?} is given more than once"),
            ));
        }
        if value.len() > MAX_HEADER_VALUE_LEN {
            return Err(ValidationError::new(
                FIELD,
                format!(
                    "value of header {name:?} is {} bytes, longer than the limit of {MAX_HEADER_VALUE_LEN}",
                    value.len()
                ),
            ));
        }
        if !value.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
            return Err(ValidationError::new(
                FIELD,
                format!("value of header {name:?} may only contain visible ASCII and spaces"),
            ));
        }
        seen.push(name);
    }
    Ok(())
}

/// Checks a subscription description: at most [`MAX_DESCRIPTION_LEN`] bytes. (A description
/// a caller gives is [`shown_text`] too; a stored one is read as it is.)
pub fn description(value: &str) -> Result<(), ValidationError> {
    max_len("description", value, MAX_DESCRIPTION_LEN)
}

/// Checks text that people read in lists, pages and the audit log (a description, a disable
/// reason): at most `max` bytes, with no character that hides or reorders what is shown
/// (control characters but newline and tab, and the bidirectional overrides and isolates of
/// "Trojan Source").
pub fn shown_text(field: &str, value: &str, max: usize) -> Result<(), ValidationError> {
    max_len(field, value, max)?;
    let hides = |c: char| {
        (c.is_control() && c != '\n' && c != '\t')
            || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
    };
    if let Some(bad) = value.chars().find(|&c| hides(c)) {
        return Err(ValidationError::new(
            field,
            format!("contains the character {bad:?}, which would hide or reorder what is shown"),
        ));
    }
    Ok(())
}

/// Checks an event's ordering key: at most [`MAX_ORDERING_KEY_LEN`] bytes (empty means none),
/// without control characters (it is shown, and logged, as the name of a line of deliveries).
pub fn ordering_key(value: &str) -> Result<(), ValidationError> {
    max_len("ordering_key", value, MAX_ORDERING_KEY_LEN)?;
    if let Some(bad) = value.chars().find(|c| c.is_control()) {
        return Err(ValidationError::new(
            "ordering_key",
            format!("contains the control character {bad:?}"),
        ));
    }
    Ok(())
}

/// Checks an event's attributes: at most [`MAX_ATTRIBUTES`] entries, keys 1 to
/// [`MAX_ATTRIBUTE_KEY_LEN`] bytes without control characters, values at most
/// [`MAX_ATTRIBUTE_VALUE_LEN`] bytes, neither with a character that hides or reorders what is
/// shown ([`shown_text`]).
pub fn attributes<'a>(
    attributes: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<(), ValidationError> {
    string_map("attributes", "attribute", attributes, KeyLines::One)
}

/// Checks a stored subscription's labels by the rules of [`attributes`] but a key's lines
/// (their count is checked apart, against the labels' own limit): a record stored before keys
/// were held to one line still loads. What a caller gives is checked by [`labels_as_given`].
pub fn labels<'a>(
    labels: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<(), ValidationError> {
    string_map("labels", "label", labels, KeyLines::Any)
}

/// Checks the labels a caller gives by the rules of [`attributes`], keys on one line included.
pub fn labels_as_given<'a>(
    labels: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<(), ValidationError> {
    string_map("labels", "label", labels, KeyLines::One)
}

/// Whether a map's keys may hold line breaks and tabs (as keys stored before they were
/// refused do).
#[derive(Clone, Copy, PartialEq, Eq)]
enum KeyLines {
    /// No control character at all.
    One,
    /// Line breaks and tabs, as values may.
    Any,
}

/// Checks a map of short texts named `field`, each entry a `noun`.
fn string_map<'a>(
    field: &str,
    noun: &str,
    entries: impl IntoIterator<Item = (&'a str, &'a str)>,
    key_lines: KeyLines,
) -> Result<(), ValidationError> {
    for (count, (key, value)) in entries.into_iter().enumerate() {
        if count == MAX_ATTRIBUTES {
            return Err(ValidationError::new(
                field,
                format!("more than {MAX_ATTRIBUTES} {noun}s"),
            ));
        }
        if key.is_empty() {
            return Err(ValidationError::new(
                field,
                format!("a {noun} key is empty"),
            ));
        }
        if key.len() > MAX_ATTRIBUTE_KEY_LEN {
            return Err(ValidationError::new(
                field,
                format!(
                    "a {noun} key is {} bytes, longer than the limit of {MAX_ATTRIBUTE_KEY_LEN}",
                    key.len()
                ),
            ));
        }
        if value.len() > MAX_ATTRIBUTE_VALUE_LEN {
            return Err(ValidationError::new(
                field,
                format!(
                    "value of {noun} {} is {} bytes, longer than the limit of {MAX_ATTRIBUTE_VALUE_LEN}",
                    quoted(key),
                    value.len()
                ),
            ));
        }
        shown_text(field, key, MAX_ATTRIBUTE_KEY_LEN)
            .map_err(|e| ValidationError::new(field, format!("a {noun} key {}", e.reason)))?;
        // A value may run over lines; a key is one name.
        if let Some(bad) = key
            .chars()
            .find(|c| c.is_control())
            .filter(|_| key_lines == KeyLines::One)
        {
            return Err(ValidationError::new(
                field,
                format!(
                    "a {noun} key contains the character {bad:?}: keys hold no control characters"
                ),
            ));
        }
        shown_text(field, value, MAX_ATTRIBUTE_VALUE_LEN).map_err(|e| {
            ValidationError::new(
                field,
                format!("value of {noun} {} {}", quoted(key), e.reason),
            )
        })?;
    }
    Ok(())
}

/// Checks that `value` is at most `max` bytes.
fn max_len(field: &str, value: &str, max: usize) -> Result<(), ValidationError> {
    if value.len() > max {
        return Err(ValidationError::new(
            field,
            format!("is {} bytes, longer than the limit of {max}", value.len()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_message_names_the_field() {
        let err = ValidationError::new("tenant", "must not be empty");
        assert_eq!(err.to_string(), "tenant: must not be empty");
    }

    #[test]
    fn a_refusal_never_echoes_a_long_value_whole() {
        assert_eq!(quoted("order.x"), "\"order.x\"");
        let long = "é".repeat(70_000);
        let shown = quoted(&long);
        assert!(shown.ends_with("… (140000 bytes)"), "{shown}");
        assert!(shown.len() < 200, "{shown}");
        let err = ValidationError::new("status", long.clone());
        assert!(err.reason.len() <= MAX_REASON_LEN + '…'.len_utf8());
        assert!(err.reason.ends_with('…'));
    }

    #[test]
    fn tenant_rules() {
        for ok in ["acme", "Acme_EU-1.prod", "...", &"a".repeat(MAX_TENANT_LEN)] {
            assert_eq!(tenant(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "acme/eu",
            "acme eu",
            "acme:eu",
            "ac\u{e9}me",
            &"a".repeat(MAX_TENANT_LEN + 1),
        ] {
            let err = tenant(bad).unwrap_err();
            assert_eq!(err.field, "tenant", "{bad}");
        }
        for named_in_paths in [".", ".."] {
            assert_eq!(tenant(named_in_paths), Ok(()), "a stored one is read");
            let err = tenant_as_given(named_in_paths).unwrap_err();
            assert_eq!(err.field, "tenant");
        }
    }

    #[test]
    fn event_id_rules() {
        for ok in [
            "evt_01J",
            "order:42.v1-a",
            "...",
            &"x".repeat(MAX_EVENT_ID_LEN),
        ] {
            assert_eq!(event_id(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "a/b",
            "a b",
            "a\nb",
            ".",
            "..",
            &"x".repeat(MAX_EVENT_ID_LEN + 1),
        ] {
            assert_eq!(event_id(bad).unwrap_err().field, "id", "{bad:?}");
        }
    }

    #[test]
    fn url_accepts_https_and_http_only_when_allowed() {
        let parsed = url("https://example.com/hooks?x=1", false).unwrap();
        assert_eq!(parsed.host_str(), Some("example.com"));
        assert!(url("http://localhost:8080/h", true).is_ok());
        let err = url("http://localhost:8080/h", false).unwrap_err();
        assert_eq!(err.field, "url");
        assert!(err.reason.contains("https"), "{err}");
    }

    #[test]
    fn url_refusals() {
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        for bad in [
            "",
            "not a url",
            "ftp://example.com/",
            "file:///etc/passwd",
            "https://user:pass@example.com/",
            "https://user@example.com/",
            "https://example.com/#frag",
            "https://example.com/#",
            "unix:/run/sock",
            long.as_str(),
        ] {
            assert_eq!(url(bad, true).unwrap_err().field, "url", "{bad:?}");
        }
        // What a parser would quietly change into another address.
        for bad in [
            "http:///x",
            "https:////example.com/",
            "https://\\example.com/",
            "  https://example.com/",
            "https://example.com/h\nx",
            "https://example.com/h\tx",
            "https://example.com/h\0x",
            "https://127.0.\t0.1/h",
            "https://example.com/a b",
            "http://127.0.0.1:0/",
            "https://example.com:0/hooks",
        ] {
            assert_eq!(
                url_as_given("url", bad).unwrap_err().field,
                "url",
                "{bad:?}"
            );
        }
        url_as_given("url", "https://example.com/a%20b?q=1").expect("as given");
    }

    #[test]
    fn a_url_parses_to_the_address_requests_go_to() {
        let parsed = url("https://Shop.Example:443/a/../hooks", false).unwrap();
        assert_eq!(parsed.as_str(), "https://shop.example/hooks");
        assert_eq!(
            url("https://shop.example", false).unwrap().as_str(),
            "https://shop.example/"
        );
    }

    #[test]
    fn shown_text_keeps_lines_and_refuses_what_hides_or_reorders_them() {
        shown_text("d", "Orders for the ERP\n\tsee the runbook — zażółć", 100).expect("fine");
        for bad in [
            "a\0b",
            "a\u{1b}[31mred",
            "abc\u{202e}cba",
            "x\u{2066}y",
            "z\u{85}",
        ] {
            assert_eq!(shown_text("d", bad, 100).unwrap_err().field, "d", "{bad:?}");
        }
        assert!(shown_text("d", "long", 3).is_err());
    }

    #[test]
    fn url_errors_do_not_echo_credentials() {
        let err = url("https://alice:s3cret@example.com/", false).unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }

    #[test]
    fn json_payload_accepts_any_json_value() {
        for ok in [
            &b"{\"a\":1}"[..],
            b"[1,2]",
            b"\"text\"",
            b"42",
            b"null",
            b" true \n",
        ] {
            assert!(json_payload(ok, 100).is_ok(), "{ok:?}");
        }
    }

    #[test]
    fn json_payloads_nest_at_most_126_levels_so_enveloped_bodies_parse() {
        for open in ["[", "{\"a\":"] {
            let close = if open == "[" { "]" } else { "}" };
            let nested = |levels: usize| {
                format!("{}1{}", open.repeat(levels), close.repeat(levels)).into_bytes()
            };
            assert!(json_payload(&nested(126), 1 << 20).is_ok(), "{open}");
            // One level down in the envelope, the deepest payload still parses.
            let enveloped = format!(
                r#"{{"type":"order.created","data":{}}}"#,
                String::from_utf8(nested(126)).expect("text")
            );
            assert!(serde_json::from_str::<serde_json::Value>(&enveloped).is_ok());
            let refused = json_payload(&nested(127), 1 << 20).expect_err("too deep");
            assert!(
                refused.reason.starts_with("nests deeper than 126"),
                "{refused:?}"
            );
            assert!(json_payload(&nested(10_000), 1 << 20).is_err(), "{open}");
        }
        // Bad JSON at any depth is said to be bad JSON.
        let bad = format!("{}x{}", "[".repeat(5), "]".repeat(5));
        let refused = json_payload(bad.as_bytes(), 1 << 20).expect_err("bad");
        assert!(
            refused.reason.starts_with("is not a valid JSON"),
            "{refused:?}"
        );
    }

    #[test]
    fn json_payload_refuses_what_a_full_parse_refuses() {
        // serde_json refuses nesting deeper than 128.
        let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
        for doc in [
            &br#"{"a":[1,{"b":null}],"c":"x\u00e9\n","d":-1.5e3,"e":18446744073709551615}"#[..],
            br#"{"big":123456789012345678901234567890}"#,
            br#""\ud83d\ude00""#,
            "\"caf\u{e9}\"".as_bytes(),
            deep.as_bytes(),
        ] {
            let full = serde_json::from_slice::<serde_json::Value>(doc).is_ok();
            assert_eq!(json_payload(doc, 10_000).is_ok(), full, "{doc:?}");
            assert!(full, "{doc:?}");
        }
        let deeper = format!("{}{}", "[".repeat(200), "]".repeat(200));
        for bad in [
            &b"\"\xff\""[..],
            b"{\"\xc3\":1}",
            br#""\ud800""#,
            br#""\x""#,
            b"\"a\x01b\"",
            br#"{"a":1,}"#,
            br#"[01]"#,
            br#"{1:2}"#,
            deeper.as_bytes(),
        ] {
            assert!(
                serde_json::from_slice::<serde_json::Value>(bad).is_err(),
                "{bad:?}"
            );
            assert!(json_payload(bad, 10_000).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn json_payload_checks_size_before_parsing() {
        let err = json_payload(b"not json at all", 5).unwrap_err();
        assert_eq!(err.field, "payload");
        assert_eq!(err.reason, "is 15 bytes, larger than the limit of 5 bytes");
        assert!(json_payload(b"12345", 5).is_ok());
    }

    #[test]
    fn json_payload_reports_where_parsing_failed() {
        let err = json_payload(b"{\n  \"a\": }", 100).unwrap_err();
        assert_eq!(err.field, "payload");
        assert!(err.reason.contains("line 2"), "{err}");
        for bad in [&b""[..], b"{} {}", b"{\"a\":1", b"\xff"] {
            assert!(json_payload(bad, 100).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn custom_headers_accepts_ordinary_headers() {
        let value = "v".repeat(MAX_HEADER_VALUE_LEN);
        assert_eq!(
            custom_headers([
                ("X-Api-Key", "abc 123 !~"),
                ("authorization", "Bearer t"),
                ("X-Long", value.as_str()),
                ("x-empty", ""),
            ]),
            Ok(())
        );
        assert_eq!(custom_headers([]), Ok(()));
    }

    #[test]
    fn custom_headers_refuses_reserved_names_in_any_case() {
        for name in RESERVED_HEADERS {
            let upper = name.to_ascii_uppercase();
            let err = custom_headers([(upper.as_str(), "x")]).unwrap_err();
            assert_eq!(err.field, "headers");
            assert!(err.reason.contains("reserved"), "{err}");
        }
        assert!(custom_headers([("Webhook-Signature", "v1,x")]).is_err());
        for given in [
            "Content-Encoding",
            "expect",
            "Upgrade",
            "TE",
            "Proxy-Authorization",
        ] {
            assert!(headers_as_given([given]).is_err(), "{given}");
            // A record stored before they were refused still loads.
            assert!(custom_headers([(given, "x")]).is_ok(), "{given}");
        }
        assert!(headers_as_given(["X-Shop", "Authorization", "Cookie"]).is_ok());
    }

    #[test]
    fn custom_headers_refusals() {
        let long = "v".repeat(MAX_HEADER_VALUE_LEN + 1);
        let cases: [(&str, &str); 8] = [
            ("", "x"),
            ("x header", "x"),
            ("x_header", "x"),
            ("x:y", "x"),
            ("x-a", "line\r\nInjected: 1"),
            ("x-a", "tab\there"),
            ("x-a", "caf\u{e9}"),
            ("x-a", long.as_str()),
        ];
        for (name, value) in cases {
            assert!(
                custom_headers([(name, value)]).is_err(),
                "{name:?}: {value:?}"
            );
        }
        assert!(custom_headers([("X-A", "1"), ("x-a", "2")]).is_err());
    }

    #[test]
    fn custom_headers_limits_the_count() {
        let names: Vec<String> = (0..=MAX_HEADERS).map(|i| format!("x-h{i}")).collect();
        let headers = names.iter().map(|n| (n.as_str(), "v"));
        assert!(custom_headers(headers.clone().take(MAX_HEADERS)).is_ok());
        assert!(custom_headers(headers).is_err());
        // And each name's length.
        let longest = "x".repeat(MAX_HEADER_NAME_LEN);
        assert!(custom_headers([(longest.as_str(), "v")]).is_ok());
        let longer = format!("{longest}y");
        let refused = custom_headers([(longer.as_str(), "v")]).expect_err("too long");
        assert!(!refused.to_string().contains(&longer), "{refused}");
    }

    #[test]
    fn custom_header_errors_do_not_echo_values() {
        let err = custom_headers([("x-token", "s3cret\n")]).unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }

    #[test]
    fn length_limits() {
        assert!(description(&"d".repeat(MAX_DESCRIPTION_LEN)).is_ok());
        assert_eq!(
            description(&"d".repeat(MAX_DESCRIPTION_LEN + 1))
                .unwrap_err()
                .field,
            "description"
        );
        assert!(ordering_key("").is_ok());
        assert!(ordering_key("k\u{0}\u{1}").is_err());
        assert!(ordering_key("customer 42/ß").is_ok());
        assert!(ordering_key(&"k".repeat(MAX_ORDERING_KEY_LEN)).is_ok());
        assert_eq!(
            ordering_key(&"k".repeat(MAX_ORDERING_KEY_LEN + 1))
                .unwrap_err()
                .field,
            "ordering_key"
        );
    }

    #[test]
    fn attribute_rules() {
        let key = "k".repeat(MAX_ATTRIBUTE_KEY_LEN);
        let value = "v".repeat(MAX_ATTRIBUTE_VALUE_LEN);
        assert!(attributes([("region", "eu"), (key.as_str(), value.as_str())]).is_ok());
        let long_key = "k".repeat(MAX_ATTRIBUTE_KEY_LEN + 1);
        let long_value = "v".repeat(MAX_ATTRIBUTE_VALUE_LEN + 1);
        for (k, v) in [
            ("", "x"),
            (long_key.as_str(), "x"),
            ("k", long_value.as_str()),
        ] {
            assert_eq!(attributes([(k, v)]).unwrap_err().field, "attributes");
        }
        let keys: Vec<String> = (0..=MAX_ATTRIBUTES).map(|i| format!("k{i}")).collect();
        let all = keys.iter().map(|k| (k.as_str(), "v"));
        assert!(attributes(all.clone().take(MAX_ATTRIBUTES)).is_ok());
        assert!(attributes(all).is_err());
        // Nothing that hides what is shown, in keys or values; lines and tabs in values pass.
        for (k, v) in [
            ("k\0", "v"),
            ("k", "v\0"),
            ("a\u{202E}b", "v"),
            ("k", "\x1b[2J"),
            ("k\n", "v"),
            ("a\tb", "v"),
        ] {
            assert!(attributes([(k, v)]).is_err(), "{k:?} {v:?}");
        }
        assert!(attributes([("k", "two\nlines\tand a tab")]).is_ok());
        // Labels by the same rules, named as labels.
        let refused = labels([("", "x")]).unwrap_err();
        assert_eq!(refused.field, "labels");
        assert_eq!(refused.reason, "a label key is empty");
        assert!(labels_as_given([("k\n", "v")]).is_err());
        // A stored record's label keys still load as they were kept.
        assert!(labels([("k\n", "v")]).is_ok());
    }
}
