//! The catalogue's schemas, which the agent checks every emitted payload against: an event
//! whose type has a schema and whose payload does not satisfy it is refused at `Emit`
//! (`INVALID_ARGUMENT` naming where it fails), before anything is stored. The control plane
//! sends the schemas on the config stream (the whole set first, then each change); they are
//! saved with the config cache, so a restarted agent checks from its first event.

use std::collections::HashMap;
use std::sync::Arc;

use herald_core::ValidationError;
use herald_core::event_schema::EventSchema;
use herald_proto::v1 as pb;

/// One type's schema, as received and compiled.
#[derive(Debug)]
struct TypeSchema {
    wire: pb::TypeSchema,
    /// `None` when it does not compile here (said in the log): its payloads go unchecked
    /// rather than every event of the type refused.
    compiled: Option<EventSchema>,
}

impl TypeSchema {
    fn compile(wire: &pb::TypeSchema) -> TypeSchema {
        let compiled = match EventSchema::parse(&wire.schema) {
            Ok(compiled) => compiled,
            Err(err) => {
                tracing::warn!(
                    event_type = %wire.name,
                    error = %err,
                    "an event type's schema does not compile here; its payloads go unchecked"
                );
                None
            }
        };
        TypeSchema {
            wire: wire.clone(),
            compiled,
        }
    }
}

/// The schemas by event type. Immutable: an update builds a new set, which reuses what did
/// not change (compiling a schema costs far more than checking a payload).
#[derive(Debug, Default)]
pub struct SchemaSet {
    by_type: HashMap<String, Arc<TypeSchema>>,
}

impl SchemaSet {
    /// The set after `update` (a whole set replaces this one).
    pub fn apply(&self, update: &pb::SchemaUpdate) -> SchemaSet {
        let mut by_type = if update.whole {
            HashMap::new()
        } else {
            self.by_type.clone()
        };
        for name in &update.removals {
            by_type.remove(name);
        }
        for wire in &update.upserts {
            let schema = match self.by_type.get(&wire.name) {
                Some(held) if held.wire == *wire => held.clone(),
                _ => Arc::new(TypeSchema::compile(wire)),
            };
            by_type.insert(wire.name.clone(), schema);
        }
        SchemaSet { by_type }
    }

    /// Whether `other` holds the very same schemas (what [`SchemaSet::apply`] reused).
    pub fn same_as(&self, other: &SchemaSet) -> bool {
        self.by_type.len() == other.by_type.len()
            && self
                .by_type
                .iter()
                .all(|(name, s)| other.by_type.get(name).is_some_and(|o| Arc::ptr_eq(s, o)))
    }

    /// How many types have a schema.
    pub fn len(&self) -> usize {
        self.by_type.len()
    }

    /// Whether no type has a schema.
    pub fn is_empty(&self) -> bool {
        self.by_type.is_empty()
    }

    /// Whether `payload` (a JSON document) satisfies the schema of `event_type`; a type with
    /// no schema takes any payload. The error names the field `payload` and where it fails.
    pub fn check(&self, event_type: &str, payload: &[u8]) -> Result<(), ValidationError> {
        let Some(schema) = self
            .by_type
            .get(event_type)
            .and_then(|s| s.compiled.as_ref())
        else {
            return Ok(());
        };
        let payload: serde_json::Value = serde_json::from_slice(payload).map_err(|e| {
            ValidationError::new("payload", format!("is not a valid JSON document: {e}"))
        })?;
        schema.check(&payload)
    }

    /// The whole set, as the control plane would send it (sorted by type).
    pub fn to_update(&self) -> pb::SchemaUpdate {
        let mut upserts: Vec<pb::TypeSchema> =
            self.by_type.values().map(|s| s.wire.clone()).collect();
        upserts.sort_by(|a, b| a.name.cmp(&b.name));
        pb::SchemaUpdate {
            whole: true,
            upserts,
            removals: vec![],
            more: false,
        }
    }
}

/// A whole set arriving in parts (`more` set on all but the last), joined so it replaces the
/// held set at once.
#[derive(Default)]
pub struct SchemaParts {
    pending: Option<pb::SchemaUpdate>,
}

impl SchemaParts {
    /// The update to apply once `update` is added: the joined set when it was the last part,
    /// the update itself when it was not a part, `None` while parts are still to come. A
    /// change arriving between the parts is a protocol error.
    pub fn add(&mut self, update: pb::SchemaUpdate) -> Result<Option<pb::SchemaUpdate>, String> {
        let Some(mut joined) = self.pending.take() else {
            if update.whole && update.more {
                self.pending = Some(update);
                return Ok(None);
            }
            return Ok(Some(update));
        };
        if !update.whole {
            return Err("a schema change cut off the whole set being sent".into());
        }
        joined.upserts.extend(update.upserts);
        if update.more {
            self.pending = Some(joined);
            return Ok(None);
        }
        joined.more = false;
        Ok(Some(joined))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORDER: &str = r#"{"type":"object","required":["total"],
        "properties":{"total":{"type":"number","minimum":0}}}"#;

    fn schema(name: &str, text: &str) -> pb::TypeSchema {
        pb::TypeSchema {
            name: name.into(),
            schema: text.as_bytes().to_vec(),
        }
    }

    fn whole(schemas: Vec<pb::TypeSchema>, more: bool) -> pb::SchemaUpdate {
        pb::SchemaUpdate {
            whole: true,
            upserts: schemas,
            removals: vec![],
            more,
        }
    }

    #[test]
    fn payloads_are_checked_against_their_types_schema_only() {
        let set = SchemaSet::default().apply(&whole(vec![schema("order.created", ORDER)], false));
        assert!(set.check("order.created", br#"{"total": 12.5}"#).is_ok());
        let err = set
            .check("order.created", br#"{"total": -1}"#)
            .expect_err("below the minimum");
        assert_eq!(err.field, "payload");
        assert!(err.reason.contains("at /total"), "{}", err.reason);
        let err = set
            .check("order.created", br#"{}"#)
            .expect_err("total missing");
        assert!(err.reason.contains("total"), "{}", err.reason);
        // Types without a schema take anything.
        assert!(set.check("order.removed", br#"{"total": -1}"#).is_ok());
    }

    #[test]
    fn changes_replace_remove_and_reuse_schemas() {
        let set = SchemaSet::default().apply(&whole(
            vec![
                schema("order.created", ORDER),
                schema("stock.changed", "{}"),
            ],
            false,
        ));
        let kept = set.by_type["order.created"].clone();
        let change = pb::SchemaUpdate {
            whole: false,
            upserts: vec![schema("stock.changed", r#"{"required":["sku"]}"#)],
            removals: vec!["order.created".into()],
            more: false,
        };
        let next = set.apply(&change);
        assert!(next.check("order.created", br#"{"total": -1}"#).is_ok());
        assert!(next.check("stock.changed", br#"{}"#).is_err());

        // A whole set that repeats a schema reuses its compiled form.
        let again = set.apply(&set.to_update());
        assert!(Arc::ptr_eq(&again.by_type["order.created"], &kept));
        assert_eq!(again.len(), 2);
        assert!(again.same_as(&set) && !next.same_as(&set));
        // An empty whole set drops every schema.
        assert!(again.apply(&whole(vec![], false)).is_empty());
    }

    #[test]
    fn a_schema_that_does_not_compile_checks_nothing() {
        let set = SchemaSet::default().apply(&whole(vec![schema("order.created", "[1]")], false));
        assert_eq!(set.len(), 1);
        assert!(set.check("order.created", b"{}").is_ok());
    }

    #[test]
    fn a_whole_set_in_parts_is_joined_and_may_not_be_cut_off() {
        let mut parts = SchemaParts::default();
        assert_eq!(parts.add(whole(vec![schema("a", "{}")], true)), Ok(None));
        let joined = parts
            .add(whole(vec![schema("b", "{}")], false))
            .expect("valid")
            .expect("joined");
        let names: Vec<&str> = joined.upserts.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert!(!joined.more);

        assert_eq!(parts.add(whole(vec![], true)), Ok(None));
        let change = pb::SchemaUpdate::default();
        assert!(parts.add(change).is_err());
    }
}
