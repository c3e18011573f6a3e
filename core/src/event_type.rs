//! Event types (`order.created`) and the patterns subscriptions use to choose them.
//!
//! Grammar: an event type is two or more segments separated by `.`; each segment is
//! `[a-z0-9_]+` and starts with a lowercase letter; the whole is at most
//! [`MAX_EVENT_TYPE_LEN`] bytes. A pattern is `*` (every type), `<segments>.*` (every type below
//! one or more leading segments: `order.*` matches `order.created` and `order.line.added`, but
//! neither `order` nor `orders.created`), or an exact event type. An [`EventFilter`] holds 1 to
//! [`MAX_EVENT_PATTERNS`] distinct patterns and matches when any of them does.

use std::fmt;

use crate::limits::{MAX_EVENT_PATTERNS, MAX_EVENT_TYPE_LEN};
use crate::validate::ValidationError;

/// The first segment of Herald's own operator events (`herald.subscription.disabled`, …): the
/// control plane raises them to the system tenant's subscriptions, and no one else may.
pub const HERALDS_OWN_PREFIX: &str = "herald.";

/// Whether `name` is one of Herald's own operator events (`herald.…`).
pub fn is_heralds_own(name: &str) -> bool {
    name.starts_with(HERALDS_OWN_PREFIX)
}

/// Checks that `value` is a valid event type such as `order.created`.
pub fn validate_event_type(value: &str) -> Result<(), ValidationError> {
    check_segments(value, 2, value).map_err(|reason| {
        ValidationError::new(
            "type",
            format!("{reason}; event types look like order.created"),
        )
    })
}

/// Checks that `value` is at most [`MAX_EVENT_TYPE_LEN`] bytes and made of at least
/// `min_segments` valid segments; the error is a reason without a field name, quoting `given`
/// (what the caller wrote: `value` itself, or the pattern it is the start of).
fn check_segments(value: &str, min_segments: usize, given: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if value.len() > MAX_EVENT_TYPE_LEN {
        return Err(format!(
            "is {} bytes, longer than the limit of {MAX_EVENT_TYPE_LEN}",
            value.len()
        ));
    }
    let mut count = 0;
    for segment in value.split('.') {
        let mut chars = segment.chars();
        let starts_with_letter = chars.next().is_some_and(|c| c.is_ascii_lowercase());
        let rest_valid = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !starts_with_letter || !rest_valid {
            return Err(format!(
                "{given:?} has segment {segment:?}, but segments must be lowercase letters, \
                 digits and '_', starting with a letter"
            ));
        }
        count += 1;
    }
    if count < min_segments {
        return Err(format!(
            "{given:?} needs at least {min_segments} dot-separated segments"
        ));
    }
    Ok(())
}

/// One entry of a subscription's `event_types`: which event types it selects.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EventPattern {
    /// `*`: every event type.
    All,
    /// `<prefix>.*`: every event type below these leading segments; holds the text before
    /// `.*`, e.g. `order` for `order.*`.
    Prefix(String),
    /// One event type, exactly.
    Exact(String),
}

impl EventPattern {
    /// Parses `*`, `<segments>.*` or an exact event type.
    pub fn parse(value: &str) -> Result<Self, ValidationError> {
        let invalid = |reason: String| {
            ValidationError::new(
                "event_types",
                format!("{reason}; patterns look like order.created, order.* or *"),
            )
        };
        if value == "*" {
            return Ok(Self::All);
        }
        if value.len() > MAX_EVENT_TYPE_LEN {
            return Err(invalid(format!(
                "a pattern is {} bytes, longer than the limit of {MAX_EVENT_TYPE_LEN}",
                value.len()
            )));
        }
        match value.strip_suffix(".*") {
            Some(prefix) => {
                check_segments(prefix, 1, value).map_err(invalid)?;
                Ok(Self::Prefix(prefix.to_owned()))
            }
            None => {
                check_segments(value, 2, value).map_err(invalid)?;
                Ok(Self::Exact(value.to_owned()))
            }
        }
    }

    /// Whether this pattern selects `event_type`.
    pub fn matches(&self, event_type: &str) -> bool {
        match self {
            Self::All => true,
            Self::Prefix(prefix) => event_type
                .strip_prefix(prefix.as_str())
                .and_then(|rest| rest.strip_prefix('.'))
                .is_some_and(|rest| !rest.is_empty()),
            Self::Exact(exact) => exact == event_type,
        }
    }
}

/// Writes the pattern's canonical text, the same text [`EventPattern::parse`] accepts.
impl fmt::Display for EventPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("*"),
            Self::Prefix(prefix) => write!(f, "{prefix}.*"),
            Self::Exact(exact) => f.write_str(exact),
        }
    }
}

/// A subscription's whole `event_types` list: 1 to [`MAX_EVENT_PATTERNS`] distinct patterns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFilter {
    /// The patterns in the order given; never empty, never repeated.
    patterns: Vec<EventPattern>,
}

impl EventFilter {
    /// Parses every pattern; refuses an empty list, too many patterns and repeats.
    pub fn parse<S: AsRef<str>>(patterns: &[S]) -> Result<Self, ValidationError> {
        const FIELD: &str = "event_types";
        if patterns.is_empty() {
            return Err(ValidationError::new(
                FIELD,
                "at least one event type pattern is required",
            ));
        }
        if patterns.len() > MAX_EVENT_PATTERNS {
            return Err(ValidationError::new(
                FIELD,
                format!(
                    "{} patterns, more than the limit of {MAX_EVENT_PATTERNS}",
                    patterns.len()
                ),
            ));
        }
        let mut parsed: Vec<EventPattern> = Vec::with_capacity(patterns.len());
        for text in patterns {
            let pattern = EventPattern::parse(text.as_ref())?;
            if parsed.contains(&pattern) {
                return Err(ValidationError::new(
                    FIELD,
                    format!("pattern \"{pattern}\" is listed more than once"),
                ));
            }
            parsed.push(pattern);
        }
        Ok(Self { patterns: parsed })
    }

    /// Whether any pattern selects `event_type`.
    pub fn matches(&self, event_type: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(event_type))
    }

    /// The patterns, in the order they were given.
    pub fn patterns(&self) -> &[EventPattern] {
        &self.patterns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_event_types() {
        for ok in [
            "order.created",
            "product.stock_changed",
            "herald.subscription.disabled",
            "a1.b_2",
            &format!("a.{}", "b".repeat(MAX_EVENT_TYPE_LEN - 2)),
        ] {
            assert_eq!(validate_event_type(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn a_refused_pattern_is_quoted_as_written() {
        for bad in ["order.*.*", "*.*", "*.x.*"] {
            let err = EventPattern::parse(bad).unwrap_err();
            assert!(
                err.reason.starts_with(&format!("{bad:?} has segment")),
                "{err}"
            );
        }
    }

    #[test]
    fn invalid_event_types() {
        for bad in [
            "",
            "order",
            "Order.created",
            "order.Created",
            "order..x",
            "order.",
            ".order",
            "order.*",
            "*",
            "order.1created",
            "order._x",
            "order.created-x",
            "order created.x",
            "ordér.created",
            &format!("a.{}", "b".repeat(MAX_EVENT_TYPE_LEN - 1)),
        ] {
            let err = validate_event_type(bad).unwrap_err();
            assert_eq!(err.field, "type", "{bad}");
        }
    }

    #[test]
    fn pattern_parsing() {
        assert_eq!(EventPattern::parse("*"), Ok(EventPattern::All));
        assert_eq!(
            EventPattern::parse("order.*"),
            Ok(EventPattern::Prefix("order".to_owned()))
        );
        assert_eq!(
            EventPattern::parse("order.line.*"),
            Ok(EventPattern::Prefix("order.line".to_owned()))
        );
        assert_eq!(
            EventPattern::parse("order.created"),
            Ok(EventPattern::Exact("order.created".to_owned()))
        );
        for bad in [
            "",
            "order",
            ".*",
            "*.*",
            "order.**",
            "order*",
            "Order.*",
            "order.*.x",
            "**",
            "order..*",
            " *",
        ] {
            let err = EventPattern::parse(bad).unwrap_err();
            assert_eq!(err.field, "event_types", "{bad}");
        }
    }

    #[test]
    fn pattern_matching() {
        let prefix = EventPattern::parse("order.*").unwrap();
        assert!(prefix.matches("order.created"));
        assert!(prefix.matches("order.line.added"));
        assert!(!prefix.matches("orders.created"));
        assert!(!prefix.matches("order"));
        assert!(!prefix.matches("order."));
        assert!(!prefix.matches("product.order.created"));

        let exact = EventPattern::parse("order.created").unwrap();
        assert!(exact.matches("order.created"));
        assert!(!exact.matches("order.created.late"));
        assert!(!exact.matches("order.deleted"));

        assert!(EventPattern::All.matches("anything.at_all"));
    }

    #[test]
    fn pattern_display_round_trips() {
        for text in ["*", "order.*", "order.line.*", "order.created"] {
            let pattern = EventPattern::parse(text).unwrap();
            assert_eq!(pattern.to_string(), text);
            assert_eq!(EventPattern::parse(&pattern.to_string()), Ok(pattern));
        }
    }

    #[test]
    fn filter_matches_any_pattern() {
        let filter = EventFilter::parse(&["order.*", "product.stock_changed"]).unwrap();
        assert_eq!(filter.patterns().len(), 2);
        assert!(filter.matches("order.paid"));
        assert!(filter.matches("product.stock_changed"));
        assert!(!filter.matches("product.created"));
        assert!(EventFilter::parse(&["*"]).unwrap().matches("x.y"));
    }

    #[test]
    fn filter_refusals() {
        let none: [&str; 0] = [];
        assert_eq!(EventFilter::parse(&none).unwrap_err().field, "event_types");
        assert!(EventFilter::parse(&["order.*", "order.*"]).is_err());
        assert!(EventFilter::parse(&["order.created", "bad"]).is_err());
        let many: Vec<String> = (0..=MAX_EVENT_PATTERNS)
            .map(|i| format!("group.action_{i}"))
            .collect();
        assert!(EventFilter::parse(&many[..MAX_EVENT_PATTERNS]).is_ok());
        assert!(EventFilter::parse(&many).is_err());
    }
}
