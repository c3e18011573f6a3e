//! An agent's interest: the tenants and event-type prefixes it emits for. The control plane
//! sends an agent only the subscriptions its interest can reach, and the agent refuses events
//! outside it (they would match nothing it holds and be silently undelivered otherwise).
//! Empty lists mean everything.

/// The most tenants and prefixes an interest names together.
pub const MAX_INTEREST: usize = 1000;

/// Tenants and event-type prefixes (`order.`, `invoice.created`); empty means all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Interest {
    /// Tenants; empty: every tenant.
    pub tenants: Vec<String>,
    /// Event-type prefixes; empty: every type.
    pub event_type_prefixes: Vec<String>,
}

impl Interest {
    /// Whether an event of `tenant` and `event_type` is within the interest.
    pub fn admits(&self, tenant: &str, event_type: &str) -> bool {
        (self.tenants.is_empty() || self.tenants.iter().any(|t| t == tenant))
            && self.covers_type(event_type)
    }

    /// Whether events of `event_type` can be within the interest (for some tenant).
    pub fn covers_type(&self, event_type: &str) -> bool {
        self.event_type_prefixes.is_empty()
            || self
                .event_type_prefixes
                .iter()
                .any(|p| event_type.starts_with(p.as_str()))
    }

    /// Why an event is refused, naming the interest; `None` when it is admitted.
    pub fn refusal(&self, tenant: &str, event_type: &str) -> Option<String> {
        if self.admits(tenant, event_type) {
            return None;
        }
        let tenants = if self.tenants.is_empty() {
            "every tenant".to_owned()
        } else {
            format!("tenants {}", self.tenants.join(","))
        };
        let types = if self.event_type_prefixes.is_empty() {
            "every event type".to_owned()
        } else {
            format!(
                "event types starting with {}",
                self.event_type_prefixes.join(",")
            )
        };
        Some(format!(
            "this agent emits for {tenants} and {types} only (--tenants, \
             --event-type-prefixes); event {tenant}/{event_type} is outside"
        ))
    }

    /// Whether a subscription of `tenant` with these event-type `patterns` can receive an
    /// event within the interest.
    pub fn reaches<'a>(&self, tenant: &str, patterns: impl IntoIterator<Item = &'a str>) -> bool {
        let tenant_ok = self.tenants.is_empty() || self.tenants.iter().any(|t| t == tenant);
        tenant_ok
            && (self.event_type_prefixes.is_empty()
                || patterns.into_iter().any(|pattern| {
                    self.event_type_prefixes
                        .iter()
                        .any(|prefix| pattern_overlaps(pattern, prefix))
                }))
    }
}

/// Whether an event-type pattern (`*`, `order.*`, `order.created`) can match an event type
/// starting with `prefix`.
fn pattern_overlaps(pattern: &str, prefix: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    let fixed = pattern.strip_suffix(".*").unwrap_or(pattern);
    fixed.starts_with(prefix)
        || (pattern.ends_with(".*") && prefix.starts_with(&format!("{fixed}.")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interest(tenants: &[&str], prefixes: &[&str]) -> Interest {
        Interest {
            tenants: tenants.iter().map(|t| t.to_string()).collect(),
            event_type_prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn patterns_overlap_prefixes() {
        assert!(pattern_overlaps("*", "order."));
        assert!(pattern_overlaps("order.created", "order."));
        assert!(pattern_overlaps("order.*", "order."));
        assert!(pattern_overlaps("order.*", "order.line."));
        assert!(!pattern_overlaps("product.*", "order."));
        assert!(!pattern_overlaps("product.created", "order"));
    }

    #[test]
    fn empty_means_everything() {
        let all = Interest::default();
        assert!(all.admits("any", "any.thing"));
        assert!(all.reaches("any", ["x.y"]));
        assert_eq!(all.refusal("any", "any.thing"), None);
    }

    #[test]
    fn events_and_subscriptions_outside_are_refused() {
        let shop = interest(&["shop-1"], &["order."]);
        assert!(shop.admits("shop-1", "order.created"));
        assert!(!shop.admits("shop-2", "order.created"));
        assert!(!shop.admits("shop-1", "invoice.created"));
        let why = shop.refusal("shop-2", "order.created").expect("refused");
        assert!(
            why.contains("shop-1") && why.contains("shop-2/order.created"),
            "{why}"
        );
        assert!(shop.reaches("shop-1", ["*"]));
        assert!(shop.reaches("shop-1", ["invoice.*", "order.created"]));
        assert!(!shop.reaches("shop-1", ["invoice.*"]));
        assert!(!shop.reaches("shop-2", ["*"]));
    }
}
