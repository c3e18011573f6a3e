//! Reading the audit log: a query (what the asker asked for, within the tenants it may see)
//! and a page of entries. Both log stores answer it ([`crate::attempts::LogStore`]).

use std::time::SystemTime;

use herald_proto::convert::system_time;
use herald_proto::v1 as pb;

use crate::access::Scope;
use crate::attempts::LogError;

/// The longest actor a filter names: past any token's or certificate identity's name.
const MAX_ACTOR_FILTER_LEN: usize = 256;

/// A query of the audit log, with times converted once, and the tenants the asker may see.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    wire: pb::AuditFilter,
    since: Option<SystemTime>,
    until: Option<SystemTime>,
    tenants: Scope,
}

impl AuditFilter {
    /// A wire filter for a caller who may see the entries of `tenants` (an identity scoped to
    /// some tenants sees no entry of what every tenant shares).
    /// A tenant no tenant could be named is refused ([`LogError::InvalidQuery`]), not looked
    /// for.
    pub fn within(wire: pb::AuditFilter, tenants: &Scope) -> Result<Self, LogError> {
        if !wire.tenant.is_empty() {
            herald_core::validate::tenant(&wire.tenant).map_err(LogError::InvalidQuery)?;
        }
        if wire.actor.len() > MAX_ACTOR_FILTER_LEN {
            return Err(LogError::InvalidQuery(herald_core::ValidationError::new(
                "actor",
                format!(
                    "is {} bytes, longer than any actor's name (at most {MAX_ACTOR_FILTER_LEN})",
                    wire.actor.len()
                ),
            )));
        }
        // No actor's name holds one (and PostgreSQL's text refuses NUL).
        if let Some(bad) = wire.actor.chars().find(|c| c.is_control()) {
            return Err(LogError::InvalidQuery(herald_core::ValidationError::new(
                "actor",
                format!("contains the control character {bad:?}, which no actor's name holds"),
            )));
        }
        let range = crate::attempts::TimeRange::checked(wire.since.as_ref(), wire.until.as_ref())?;
        Ok(AuditFilter {
            since: range.since,
            until: range.until,
            wire,
            tenants: tenants.clone(),
        })
    }

    /// The filter as sent.
    pub fn wire(&self) -> &pb::AuditFilter {
        &self.wire
    }

    /// Entries at or after this time.
    pub fn since(&self) -> Option<SystemTime> {
        self.since
    }

    /// Entries before this time.
    pub fn until(&self) -> Option<SystemTime> {
        self.until
    }

    /// The tenants an entry must belong to, when the asker is scoped.
    pub fn tenants(&self) -> Option<Vec<&str>> {
        self.tenants
            .names()
            .map(|names| names.iter().map(String::as_str).collect())
    }

    /// Whether an entry passes.
    pub fn matches(&self, entry: &pb::AuditEntry) -> bool {
        let f = &self.wire;
        let at = entry.at.as_ref().map(system_time);
        (f.tenant.is_empty() || f.tenant == entry.tenant)
            && (f.actor.is_empty() || f.actor == entry.actor)
            && self.tenants.allows(&entry.tenant)
            && self
                .since
                .is_none_or(|since| at.is_some_and(|t| t >= since))
            && self.until.is_none_or(|until| at.is_some_and(|t| t < until))
    }
}

/// A page of audit entries, newest first.
#[derive(Debug, Default)]
pub struct AuditPage {
    /// The entries.
    pub entries: Vec<pb::AuditEntry>,
    /// Where the next page starts; empty on the last.
    pub next_page_token: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_no_tenant_could_be_named_is_refused() {
        let wire = |tenant: &str| pb::AuditFilter {
            tenant: tenant.into(),
            ..Default::default()
        };
        let refused = AuditFilter::within(wire(&"a".repeat(5000)), &Scope::All);
        assert!(
            matches!(&refused, Err(LogError::InvalidQuery(invalid)) if invalid.field == "tenant"),
            "{refused:?}"
        );
        AuditFilter::within(wire("shop-1"), &Scope::All).expect("a tenant's name");
        AuditFilter::within(wire(""), &Scope::All).expect("any tenant");
    }
}
