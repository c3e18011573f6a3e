//! The audit log: every change made through the operator API, with who made it (the caller's
//! [`Identity`] name), the tenant, what was done to what, and the config store revision it
//! wrote. Entries are kept in the delivery log's store ([`crate::attempts::LogStore`]), so
//! every replica lists the same, and swept with the attempts' retention.
//!
//! An entry is written after the change succeeded. The config store and the log store are two
//! stores, so the two writes cannot be one commit: a change whose entry cannot be written is
//! kept, logged at ERROR and counted (`herald_audit_failures_total`), never undone. A caller
//! that gives up half-way (a deadline, a closed tab) does not stop the two writes: calls run to
//! their end ([`crate::run_to_end`]). Reading the log is [`query`].

use std::time::SystemTime;

use herald_proto::convert::timestamp;
use herald_proto::v1 as pb;

use crate::access::Identity;
use crate::attempts::AttemptLog;
use crate::metrics::Metrics;

pub mod query;

/// The longest detail kept.
const MAX_DETAIL: usize = 512;

/// What a change did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// A subscription was created.
    SubscriptionCreate,
    /// A subscription's settings were changed.
    SubscriptionUpdate,
    /// A subscription was deleted.
    SubscriptionDelete,
    /// A subscription was enabled.
    SubscriptionEnable,
    /// A subscription was disabled.
    SubscriptionDisable,
    /// A subscription got a new signing secret.
    SubscriptionRotateSecret,
    /// A test event was sent to a subscription.
    SubscriptionTest,
    /// An event type was added to the catalogue.
    EventTypeCreate,
    /// An event type's description, example or schema changed.
    EventTypeUpdate,
    /// An event type was deprecated, or the deprecation taken back.
    EventTypeDeprecate,
    /// An event type was removed from the catalogue.
    EventTypeDelete,
    /// Deliveries were queued again.
    DeliveriesReplay,
    /// The stored requests of an event's deliveries were removed.
    DeliveriesExpunge,
    /// A tenant portal link was handed out.
    PortalLink,
    /// A tenant's portal links made until then were ended.
    PortalLinksExpire,
}

impl Action {
    /// The action's name in entries.
    pub fn name(self) -> &'static str {
        match self {
            Action::SubscriptionCreate => "subscription.create",
            Action::SubscriptionUpdate => "subscription.update",
            Action::SubscriptionDelete => "subscription.delete",
            Action::SubscriptionEnable => "subscription.enable",
            Action::SubscriptionDisable => "subscription.disable",
            Action::SubscriptionRotateSecret => "subscription.rotate_secret",
            Action::SubscriptionTest => "subscription.test",
            Action::EventTypeCreate => "event_type.create",
            Action::EventTypeUpdate => "event_type.update",
            Action::EventTypeDeprecate => "event_type.deprecate",
            Action::EventTypeDelete => "event_type.delete",
            Action::DeliveriesReplay => "deliveries.replay",
            Action::DeliveriesExpunge => "deliveries.expunge",
            Action::PortalLink => "portal.link",
            Action::PortalLinksExpire => "portal.expire_links",
        }
    }
}

/// One change to record.
pub struct Change<'a> {
    /// What was done.
    pub action: Action,
    /// The object's tenant (empty for what all tenants share).
    pub tenant: &'a str,
    /// The object: a subscription id, an event type's name, what a replay named.
    pub object: &'a str,
    /// The config store revision the change wrote (0: none).
    pub revision: i64,
    /// More about it.
    pub detail: String,
}

/// Writes audit entries; cloning shares it.
#[derive(Clone)]
pub struct Recorder {
    log: AttemptLog,
    metrics: Metrics,
}

impl Recorder {
    /// Entries go to `log`; failures are counted in `metrics`.
    pub fn new(log: AttemptLog, metrics: Metrics) -> Self {
        Recorder { log, metrics }
    }

    /// Records `change`, made by `who`; a failure is logged and counted, not returned (the
    /// change itself is done).
    pub async fn record(&self, who: &Identity, change: Change<'_>) {
        let mut detail = change.detail;
        if detail.len() > MAX_DETAIL {
            let mut end = MAX_DETAIL;
            while !detail.is_char_boundary(end) {
                end -= 1;
            }
            detail.truncate(end);
        }
        let entry = pb::AuditEntry {
            at: Some(timestamp(SystemTime::now())),
            actor: who.name.clone(),
            tenant: change.tenant.to_owned(),
            action: change.action.name().to_owned(),
            object: change.object.to_owned(),
            revision: change.revision,
            detail,
        };
        if let Err(err) = self.log.record_change(entry).await {
            self.metrics.audit_failed();
            tracing::error!(
                error = %err,
                actor = %who.name,
                action = change.action.name(),
                object = change.object,
                "the change is made but its audit entry could not be written"
            );
        }
    }
}
