//! The agent's routing table: the subscriptions it delivers, validated and indexed by tenant,
//! at one config revision, and the schemas it checks emitted payloads against. Immutable: a config update builds a new table, which replaces the
//! old one atomically in the `watch` channel every reader borrows from.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use herald_core::subscription::Subscription;
use herald_proto::convert;
use herald_proto::v1 as pb;

use crate::schemas::SchemaSet;
use herald_core::limits::{DEFAULT_LOG_BODY_LIMIT, MAX_LOG_BODY_LIMIT};

/// Why a config update was refused as a whole.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A delta does not follow the revision the agent holds.
    #[error("update to revision {update} is older than the applied revision {applied}")]
    Stale {
        /// The update's revision.
        update: i64,
        /// The agent's revision.
        applied: i64,
    },
}

/// Subscriptions by id and by tenant, at one revision.
#[derive(Debug, Default)]
pub struct Routes {
    /// The config revision this table reflects.
    pub revision: i64,
    /// False until the first snapshot (from the control plane or the disk cache) arrived.
    pub loaded: bool,
    /// Whether the table came from the control plane in this run. One read from the disk
    /// cache may be older than the subscriptions queued deliveries were made for (its last
    /// save failed, say): a delivery to a subscription it does not hold waits for the control
    /// plane's table rather than being skipped as removed.
    pub confirmed: bool,
    by_id: HashMap<String, Arc<Subscription>>,
    by_tenant: HashMap<String, Vec<Arc<Subscription>>>,
    /// The records as received, so the table can be saved and restored (static stability).
    wire: HashMap<String, Arc<pb::Subscription>>,
    /// The event types' schemas.
    schemas: Arc<SchemaSet>,
    /// The most request-body bytes the control plane's log keeps ([`Self::log_body_limit`]);
    /// `None` until a control plane said.
    log_body_limit: Option<u32>,
    /// The tenants the control plane admitted this agent for ([`Self::emit_refusal`]); `None`
    /// until one said.
    admitted_tenants: Option<pb::AdmittedTenants>,
    /// The subscriptions whose newest record this agent cannot read (written by a newer
    /// control plane, or damaged in the store), with why. Each keeps the version the table
    /// held before (or stays out), so one bad record holds back no other change; while any
    /// is here the table is not complete, and `revision` stays at the last revision it was.
    refused: BTreeMap<String, herald_core::ValidationError>,
}

impl Routes {
    /// A table holding `subscriptions`.
    fn new(
        revision: i64,
        by_id: HashMap<String, Arc<Subscription>>,
        wire: HashMap<String, Arc<pb::Subscription>>,
        schemas: Arc<SchemaSet>,
    ) -> Self {
        let mut by_tenant: HashMap<String, Vec<Arc<Subscription>>> = HashMap::new();
        for sub in by_id.values() {
            by_tenant
                .entry(sub.tenant.clone())
                .or_default()
                .push(sub.clone());
        }
        for subs in by_tenant.values_mut() {
            subs.sort_by(|a, b| a.id.cmp(&b.id));
        }
        Routes {
            revision,
            loaded: true,
            confirmed: true,
            by_id,
            by_tenant,
            wire,
            schemas,
            log_body_limit: None,
            admitted_tenants: None,
            refused: BTreeMap::new(),
        }
    }

    /// Whether the table holds every subscription's newest record: no refusal outstanding.
    pub fn is_complete(&self) -> bool {
        self.refused.is_empty()
    }

    /// The refusals outstanding in one line, for the control plane's agents list (the first
    /// few named); `None` when there is none.
    pub fn refusal_reason(&self) -> Option<String> {
        const NAMED: usize = 3;
        if self.refused.is_empty() {
            return None;
        }
        let mut reason = self
            .refused
            .iter()
            .take(NAMED)
            .map(|(id, why)| format!("subscription {id} is invalid: {why}"))
            .collect::<Vec<_>>()
            .join("; ");
        if self.refused.len() > NAMED {
            reason.push_str(&format!("; and {} more", self.refused.len() - NAMED));
        }
        reason.push_str(" (each kept at its previous version, if any)");
        Some(reason)
    }

    /// The subscription with this id.
    pub fn get(&self, id: &str) -> Option<&Arc<Subscription>> {
        self.by_id.get(id)
    }

    /// The event types' schemas.
    pub fn schemas(&self) -> &Arc<SchemaSet> {
        &self.schemas
    }

    /// The most bytes of a request's body to report with an attempt: what the control plane's
    /// delivery log keeps (0: none, so nothing is captured), the default until it says.
    pub fn log_body_limit(&self) -> usize {
        self.log_body_limit
            .map_or(DEFAULT_LOG_BODY_LIMIT, |limit| limit as usize)
            .min(MAX_LOG_BODY_LIMIT)
    }

    /// The tenants the control plane admitted this agent for, as it last said.
    pub fn admitted_tenants(&self) -> Option<&pb::AdmittedTenants> {
        self.admitted_tenants.as_ref()
    }

    /// Why an event of `tenant` may not be emitted here although the agent's own flags allow
    /// it: the control plane admitted the agent for other tenants only (its token's, when the
    /// agent named none), so no subscription of `tenant` ever reaches it. `None` when it may.
    pub fn emit_refusal(&self, tenant: &str) -> Option<String> {
        let admitted = &self.admitted_tenants.as_ref()?.tenants;
        if admitted.is_empty() || admitted.iter().any(|t| t == tenant) {
            return None;
        }
        Some(format!(
            "the control plane admitted this agent for tenants {} only (its token's scope), \
             so no subscription of tenant {tenant:?} reaches it: emit through an agent whose \
             token covers that tenant",
            admitted.join(",")
        ))
    }

    /// The same table with the schemas after `update` (the same set, when it changes
    /// nothing: the config cache is saved again only for a change).
    pub fn with_schemas(&self, update: &pb::SchemaUpdate) -> Routes {
        let schemas = self.schemas.apply(update);
        let schemas = if schemas.same_as(&self.schemas) {
            self.schemas.clone()
        } else {
            Arc::new(schemas)
        };
        Routes {
            revision: self.revision,
            loaded: self.loaded,
            confirmed: self.confirmed,
            by_id: self.by_id.clone(),
            by_tenant: self.by_tenant.clone(),
            wire: self.wire.clone(),
            schemas,
            log_body_limit: self.log_body_limit,
            admitted_tenants: self.admitted_tenants.clone(),
            refused: self.refused.clone(),
        }
    }

    /// The ids of the disabled subscriptions: their deliveries are parked until they are
    /// enabled.
    pub fn disabled(&self) -> impl Iterator<Item = &str> {
        self.by_id
            .values()
            .filter(|sub| !sub.enabled)
            .map(|sub| sub.id.as_str())
    }

    /// How many subscriptions the table holds.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The subscriptions an event of this tenant and type goes to, ordered by id (disabled ones
    /// included: their deliveries are parked until they are enabled).
    pub fn matching(&self, tenant: &str, event_type: &str) -> Vec<Arc<Subscription>> {
        self.by_tenant
            .get(tenant)
            .map(|subs| {
                subs.iter()
                    .filter(|s| s.accepts(tenant, event_type))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The table after `update`, with the upserts it could not read left at their version in
    /// this table (and [refused](Self::refusal_reason) until a readable record or a removal
    /// replaces them); or why the whole update is refused (the caller keeps this table).
    ///
    /// A table with refusals outstanding keeps the revision of the last complete one, so that
    /// a stream resumed from it is sent the refused records again.
    pub fn apply(&self, update: &pb::ConfigUpdate) -> Result<Routes, ApplyError> {
        if !update.snapshot && update.revision < self.revision {
            return Err(ApplyError::Stale {
                update: update.revision,
                applied: self.revision,
            });
        }
        let (mut by_id, mut wire, mut refused) = if update.snapshot {
            (HashMap::new(), HashMap::new(), BTreeMap::new())
        } else {
            (self.by_id.clone(), self.wire.clone(), self.refused.clone())
        };
        for id in &update.removals {
            by_id.remove(id);
            wire.remove(id);
            refused.remove(id);
        }
        for wire_sub in &update.upserts {
            // URL scheme and target policy are the delivery's to enforce; here, the record.
            match convert::subscription(wire_sub, true) {
                Ok(sub) => {
                    refused.remove(&sub.id);
                    wire.insert(sub.id.clone(), Arc::new(wire_sub.clone()));
                    by_id.insert(sub.id.clone(), Arc::new(sub));
                }
                Err(source) => {
                    let id = wire_sub.id.clone();
                    // A snapshot starts from nothing: the version this table holds stays.
                    if let (Some(sub), Some(record)) = (self.by_id.get(&id), self.wire.get(&id)) {
                        by_id.insert(id.clone(), sub.clone());
                        wire.insert(id.clone(), record.clone());
                    }
                    refused.insert(id, source);
                }
            }
        }
        // A saved table carries its schemas; the stream sends them on their own.
        let schemas = match &update.schemas {
            Some(schemas) => Arc::new(self.schemas.apply(schemas)),
            None => self.schemas.clone(),
        };
        let revision = if refused.is_empty() {
            update.revision
        } else {
            self.revision
        };
        let mut routes = Routes::new(revision, by_id, wire, schemas);
        routes.log_body_limit = update.log_body_limit.or(self.log_body_limit);
        // A snapshot says it (or not: an older control plane, which narrows nothing); a change
        // keeps what the stream's snapshot said.
        routes.admitted_tenants = if update.snapshot {
            update.admitted_tenants.clone()
        } else {
            update
                .admitted_tenants
                .clone()
                .or_else(|| self.admitted_tenants.clone())
        };
        routes.refused = refused;
        Ok(routes)
    }

    /// The whole table as a snapshot update, as the control plane would send it, with the
    /// schemas.
    pub fn to_snapshot(&self) -> pb::ConfigUpdate {
        let mut upserts: Vec<pb::Subscription> =
            self.wire.values().map(|s| (**s).clone()).collect();
        upserts.sort_by(|a, b| a.id.cmp(&b.id));
        pb::ConfigUpdate {
            revision: self.revision,
            snapshot: true,
            upserts,
            removals: vec![],
            replay: None,
            emit: None,
            test: None,
            more: false,
            schemas: (!self.schemas.is_empty()).then(|| self.schemas.to_update()),
            log_body_limit: self.log_body_limit,
            admitted_tenants: self.admitted_tenants.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::signing::SigningSecret;

    fn wire(id: &str, tenant: &str, types: &[&str]) -> pb::Subscription {
        pb::Subscription {
            id: id.into(),
            tenant: tenant.into(),
            url: "https://example.com/h".into(),
            event_types: types.iter().map(|t| t.to_string()).collect(),
            secrets: vec![pb::SigningSecret {
                secret: SigningSecret::generate().expose(),
                ..Default::default()
            }],
            enabled: true,
            ..Default::default()
        }
    }

    #[test]
    fn snapshot_then_delta() {
        let snapshot = pb::ConfigUpdate {
            revision: 5,
            snapshot: true,
            upserts: vec![
                wire("sub_a", "t1", &["order.*"]),
                wire("sub_b", "t1", &["product.created"]),
                wire("sub_c", "t2", &["*"]),
            ],
            removals: vec![],
            replay: None,
            emit: None,
            test: None,
            more: false,
            schemas: None,
            log_body_limit: Some(1024),
            admitted_tenants: Some(pb::AdmittedTenants {
                tenants: vec!["t1".into(), "t2".into()],
            }),
        };
        assert_eq!(Routes::default().log_body_limit(), DEFAULT_LOG_BODY_LIMIT);
        assert_eq!(Routes::default().emit_refusal("t3"), None, "none said yet");
        let routes = Routes::default().apply(&snapshot).expect("snapshot");
        assert_eq!(routes.log_body_limit(), 1024);
        let ids =
            |subs: Vec<Arc<Subscription>>| subs.iter().map(|s| s.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(routes.matching("t1", "order.created")), ["sub_a"]);
        assert_eq!(ids(routes.matching("t1", "product.created")), ["sub_b"]);
        assert!(routes.matching("t3", "order.created").is_empty());

        let mut disabled = wire("sub_a", "t1", &["order.*"]);
        disabled.enabled = false;
        let delta = pb::ConfigUpdate {
            revision: 6,
            snapshot: false,
            upserts: vec![disabled],
            removals: vec!["sub_b".into()],
            replay: None,
            emit: None,
            test: None,
            more: false,
            schemas: None,
            log_body_limit: None,
            admitted_tenants: None,
        };
        let next = routes.apply(&delta).expect("delta");
        // The control plane's body limit and admitted tenants hold until it says others, and
        // are saved.
        assert_eq!(next.log_body_limit(), 1024);
        assert_eq!(next.to_snapshot().log_body_limit, Some(1024));
        assert_eq!(next.emit_refusal("t2"), None);
        let refusal = next
            .emit_refusal("t3")
            .expect("outside the admitted tenants");
        assert!(refusal.contains("tenants t1,t2 only"), "{refusal}");
        let saved = Routes::default()
            .apply(&next.to_snapshot())
            .expect("the saved table");
        assert!(saved.emit_refusal("t3").is_some());
        // A snapshot of an older control plane says nothing of it: the agent's own flags rule.
        let older = pb::ConfigUpdate {
            admitted_tenants: None,
            ..next.to_snapshot()
        };
        assert_eq!(
            next.apply(&older).expect("snapshot").emit_refusal("t3"),
            None
        );
        // Still matched (its deliveries are parked), but known to be disabled.
        let matched = next.matching("t1", "order.created");
        assert_eq!(ids(matched.clone()), ["sub_a"]);
        assert!(!matched[0].enabled);
        assert!(next.get("sub_b").is_none());
        assert_eq!(next.len(), 2);

        // A saved table restores to the same table.
        let restored = Routes::default()
            .apply(&next.to_snapshot())
            .expect("restore");
        assert_eq!(restored.revision, 6);
        assert_eq!(restored.to_snapshot(), next.to_snapshot());

        let stale = pb::ConfigUpdate {
            revision: 5,
            ..delta.clone()
        };
        assert!(matches!(next.apply(&stale), Err(ApplyError::Stale { .. })));
    }

    #[test]
    fn an_unreadable_subscription_keeps_its_previous_version_and_holds_back_nothing_else() {
        let snapshot = pb::ConfigUpdate {
            revision: 5,
            snapshot: true,
            upserts: vec![wire("sub_a", "t1", &["order.*"])],
            ..Default::default()
        };
        let routes = Routes::default().apply(&snapshot).expect("snapshot");
        assert!(routes.is_complete());

        // One delta: sub_a changed to a pattern that is not one, sub_b new and sound, sub_c
        // new and unreadable.
        let delta = pb::ConfigUpdate {
            revision: 7,
            upserts: vec![
                wire("sub_a", "t1", &["Not A Type"]),
                wire("sub_b", "t1", &["product.created"]),
                wire("sub_c", "t1", &["order..x"]),
            ],
            ..Default::default()
        };
        let next = routes.apply(&delta).expect("delta");
        assert!(!next.is_complete());
        let reason = next.refusal_reason().expect("a reason");
        assert!(
            reason.contains("sub_a") && reason.contains("sub_c") && !reason.contains("sub_b"),
            "{reason}"
        );
        assert_eq!(
            next.revision, 5,
            "resumed from the last complete revision, so the refused records come again"
        );
        assert!(
            next.get("sub_a")
                .expect("kept")
                .accepts("t1", "order.created")
        );
        assert!(next.get("sub_b").is_some());
        assert!(next.get("sub_c").is_none());
        // What is saved is what is delivered with: the previous record of sub_a.
        assert_eq!(next.to_snapshot().upserts[0], wire_of(&routes, "sub_a"));

        // A later delta that leaves them alone: still refused, still not complete.
        let later = pb::ConfigUpdate {
            revision: 8,
            upserts: vec![wire("sub_d", "t1", &["stock.*"])],
            ..Default::default()
        };
        let later = next.apply(&later).expect("delta");
        assert!(later.get("sub_d").is_some());
        assert_eq!(
            (later.revision, later.refusal_reason()),
            (5, Some(reason.clone()))
        );

        // A snapshot holding the same records (a reconnect): the same table.
        let snapshot = pb::ConfigUpdate {
            revision: 9,
            snapshot: true,
            upserts: delta.upserts.clone(),
            ..Default::default()
        };
        let resnapped = next.apply(&snapshot).expect("snapshot");
        assert_eq!(resnapped.refusal_reason(), Some(reason));
        assert_eq!(resnapped.to_snapshot().upserts, next.to_snapshot().upserts);

        // From nothing (an agent's first snapshot), the unreadable ones are left out.
        let first = Routes::default().apply(&snapshot).expect("snapshot");
        assert_eq!(first.len(), 1);
        assert!(first.get("sub_b").is_some());

        // sub_a readable again and sub_c removed: complete, at the update's revision.
        let fixed = pb::ConfigUpdate {
            revision: 10,
            upserts: vec![wire("sub_a", "t1", &["order.paid"])],
            removals: vec!["sub_c".into()],
            ..Default::default()
        };
        let fixed = later.apply(&fixed).expect("delta");
        assert!(fixed.is_complete() && fixed.refusal_reason().is_none());
        assert_eq!(fixed.revision, 10);
        assert!(
            !fixed
                .get("sub_a")
                .expect("a")
                .accepts("t1", "order.created")
        );
    }

    #[test]
    fn a_refusal_of_many_names_a_few() {
        let upserts = (0..10)
            .map(|i| wire(&format!("sub_{i}"), "t1", &["Bad Type"]))
            .collect();
        let update = pb::ConfigUpdate {
            revision: 1,
            snapshot: true,
            upserts,
            ..Default::default()
        };
        let reason = Routes::default()
            .apply(&update)
            .expect("snapshot")
            .refusal_reason()
            .expect("a reason");
        assert!(
            reason.contains("sub_2") && !reason.contains("sub_3"),
            "{reason}"
        );
        assert!(reason.contains("and 7 more"), "{reason}");
    }

    fn wire_of(routes: &Routes, id: &str) -> pb::Subscription {
        (**routes.wire.get(id).expect("a record")).clone()
    }

    #[test]
    fn schemas_outlive_subscription_changes_and_are_saved_with_the_table() {
        let schemas = pb::SchemaUpdate {
            whole: true,
            upserts: vec![pb::TypeSchema {
                name: "order.created".into(),
                schema: br#"{"required": ["id"]}"#.to_vec(),
            }],
            ..Default::default()
        };
        // The schemas arrive before the first snapshot, and stay through it.
        let early = Routes::default().with_schemas(&schemas);
        assert!(!early.loaded);
        let snapshot = pb::ConfigUpdate {
            revision: 3,
            snapshot: true,
            upserts: vec![wire("sub_a", "t1", &["order.*"])],
            ..Default::default()
        };
        let routes = early.apply(&snapshot).expect("snapshot");
        assert!(routes.schemas().check("order.created", b"{}").is_err());
        // The same set again (every reconnect) is the same set: nothing to save.
        let again = routes.with_schemas(&schemas);
        assert!(Arc::ptr_eq(again.schemas(), routes.schemas()));

        let restored = Routes::default()
            .apply(&routes.to_snapshot())
            .expect("restore");
        assert_eq!(restored.len(), 1);
        assert!(restored.schemas().check("order.created", b"{}").is_err());
        assert!(
            restored
                .schemas()
                .check("order.created", br#"{"id": 1}"#)
                .is_ok()
        );
    }
}
