//! The catalogue's schemas as agents need them: one watch on the event-type records per
//! control-plane replica, holding each type's schema in memory and broadcasting every change,
//! so agent streams hand agents the schemas they check emitted payloads against without
//! reading the store per agent. After a watch failure it lists again and broadcasts the
//! difference from what it held, as the config hub does.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use herald_proto::v1 as pb;
use prost::Message;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::follow::{self, FollowError, Run};
use crate::keys;
use crate::store::{KeyValue, Store, WatchEvent};

/// Changes kept for streams that fall behind; a stream further behind sends the whole set
/// again.
const CHANGE_BUFFER: usize = 256;

/// Schemas by event type.
pub type Schemas = BTreeMap<String, Arc<pb::TypeSchema>>;

/// One store revision's changes to the schemas.
#[derive(Debug, Default, PartialEq)]
pub struct SchemaChange {
    /// Types whose schema is new or changed.
    pub upserts: Vec<Arc<pb::TypeSchema>>,
    /// Types that no longer have a schema.
    pub removals: Vec<String>,
}

impl SchemaChange {
    fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.removals.is_empty()
    }

    /// The change as sent to an agent that wants the types `wanted` selects: updates of
    /// about `part_bytes` each (each applies on its own), none when it concerns no such type.
    pub fn to_updates(
        &self,
        wanted: impl Fn(&str) -> bool,
        part_bytes: usize,
    ) -> Vec<pb::SchemaUpdate> {
        let upserts = self.upserts.iter().filter(|s| wanted(&s.name));
        let mut updates: Vec<pb::SchemaUpdate> = chunks(upserts, part_bytes)
            .filter(|chunk| !chunk.is_empty())
            .map(|upserts| pb::SchemaUpdate {
                upserts,
                ..Default::default()
            })
            .collect();
        let removals: Vec<String> = self
            .removals
            .iter()
            .filter(|name| wanted(name))
            .cloned()
            .collect();
        if !removals.is_empty() {
            match updates.last_mut() {
                Some(last) => last.removals = removals,
                None => updates.push(pb::SchemaUpdate {
                    removals,
                    ..Default::default()
                }),
            }
        }
        updates
    }
}

/// The feed; cloning shares it.
#[derive(Clone)]
pub struct SchemaFeed {
    schemas: Arc<RwLock<Schemas>>,
    changes: broadcast::Sender<Arc<SchemaChange>>,
    /// True once the catalogue was listed.
    loaded: watch::Receiver<bool>,
}

impl SchemaFeed {
    /// Starts following the catalogue in `store`, until `shutdown`, as one of `tasks`.
    pub fn start(store: Store, shutdown: CancellationToken, tasks: &TaskTracker) -> Self {
        let (changes, _) = broadcast::channel(CHANGE_BUFFER);
        let (loaded_tx, loaded) = watch::channel(false);
        let feed = SchemaFeed {
            schemas: Arc::default(),
            changes,
            loaded,
        };
        let follower = feed.clone();
        tasks.spawn(async move {
            let follow = follow::forever("event-type schemas", || async {
                let mut listed = false;
                let result = follower.follow_once(&store, &loaded_tx, &mut listed).await;
                Run {
                    progressed: listed,
                    result: result.and_then(|()| Err("the store ended the watch".into())),
                }
            });
            tokio::select! {
                () = follow => {}
                () = shutdown.cancelled() => {}
            }
        });
        feed
    }

    /// Waits until the catalogue was listed once (an agent given the schemas before would
    /// drop those it saved).
    pub async fn ready(&self) {
        let mut loaded = self.loaded.clone();
        let _ = loaded.wait_for(|loaded| *loaded).await;
    }

    /// Every schema now, and a receiver of every change after them.
    pub fn subscribe(&self) -> (Schemas, broadcast::Receiver<Arc<SchemaChange>>) {
        let schemas = self.schemas.read().unwrap_or_else(|e| e.into_inner());
        (schemas.clone(), self.changes.subscribe())
    }

    /// Lists the catalogue, broadcasts how it differs from what the feed held, then applies
    /// and broadcasts each change the watch brings. `Ok` when the watch ends.
    async fn follow_once(
        &self,
        store: &Store,
        loaded: &watch::Sender<bool>,
        listed: &mut bool,
    ) -> Result<(), FollowError> {
        let (kvs, revision) = store.list(keys::EVENT_TYPES).await?;
        let fresh: Schemas = kvs
            .iter()
            .filter_map(schema_of)
            .map(|s| (s.name.clone(), s))
            .collect();
        let mut watch = store.watch(keys::EVENT_TYPES, revision + 1).await?;
        {
            let mut schemas = self.schemas.write().unwrap_or_else(|e| e.into_inner());
            let change = difference(&schemas, &fresh);
            *schemas = fresh;
            self.publish(change);
        }
        loaded.send_replace(true);
        *listed = true;
        while let Some(batch) = watch.recv().await {
            let mut change = SchemaChange::default();
            let mut schemas = self.schemas.write().unwrap_or_else(|e| e.into_inner());
            for event in batch?.events {
                let (name, schema) = match &event {
                    WatchEvent::Put(kv) => (name_of(&kv.key), schema_of(kv)),
                    WatchEvent::Delete { key } => (name_of(key), None),
                };
                match schema {
                    Some(schema) => {
                        if schemas.get(name) != Some(&schema) {
                            schemas.insert(name.to_owned(), schema.clone());
                            change.removals.retain(|n| n != name);
                            change.upserts.push(schema);
                        }
                    }
                    None => {
                        if schemas.remove(name).is_some() {
                            change.upserts.retain(|s| s.name != name);
                            change.removals.push(name.to_owned());
                        }
                    }
                }
            }
            // Sent under the lock, so a subscriber's set and its first change line up.
            self.publish(change);
        }
        Ok(())
    }

    fn publish(&self, change: SchemaChange) {
        if !change.is_empty() {
            let _ = self.changes.send(Arc::new(change));
        }
    }
}

/// The type a record's key names.
fn name_of(key: &str) -> &str {
    key.strip_prefix(keys::EVENT_TYPES).unwrap_or(key)
}

/// The schema of a stored event type; `None` when it has none (or the record is unreadable,
/// said in the log: its payloads go unchecked rather than refused).
fn schema_of(kv: &KeyValue) -> Option<Arc<pb::TypeSchema>> {
    match pb::EventType::decode(kv.value.as_slice()) {
        Ok(event_type) if !event_type.schema.is_empty() => Some(Arc::new(pb::TypeSchema {
            name: event_type.name,
            schema: event_type.schema,
        })),
        Ok(_) => None,
        Err(err) => {
            tracing::error!(key = %kv.key, error = %err, "cannot decode a stored event type");
            None
        }
    }
}

/// The change that turns `old` into `new`.
fn difference(old: &Schemas, new: &Schemas) -> SchemaChange {
    SchemaChange {
        upserts: new
            .iter()
            .filter(|(name, schema)| old.get(*name) != Some(*schema))
            .map(|(_, schema)| schema.clone())
            .collect(),
        removals: old
            .keys()
            .filter(|name| !new.contains_key(*name))
            .cloned()
            .collect(),
    }
}

/// The whole set as sent to an agent that wants the types `wanted` selects: parts of about
/// `part_bytes` each (`more` set on all but the last), each built only when the previous one
/// has been taken; one empty part when there are none, so the agent drops any it held.
pub fn whole_set<'a>(
    schemas: &'a Schemas,
    wanted: impl Fn(&str) -> bool + 'a,
    part_bytes: usize,
) -> impl Iterator<Item = pb::SchemaUpdate> + 'a {
    let wanted = schemas.values().filter(move |s| wanted(&s.name));
    let mut chunks = chunks(wanted, part_bytes).peekable();
    std::iter::from_fn(move || {
        let upserts = chunks.next()?;
        Some(pb::SchemaUpdate {
            whole: true,
            upserts,
            removals: vec![],
            more: chunks.peek().is_some(),
        })
    })
}

/// `schemas` in chunks of about `part_bytes` encoded (a schema larger than that is a chunk of
/// its own), each built when asked for; at least one chunk, empty when there are none.
fn chunks<'a>(
    schemas: impl Iterator<Item = &'a Arc<pb::TypeSchema>> + 'a,
    part_bytes: usize,
) -> impl Iterator<Item = Vec<pb::TypeSchema>> + 'a {
    let mut schemas = schemas.peekable();
    let mut first = true;
    std::iter::from_fn(move || {
        if !first && schemas.peek().is_none() {
            return None;
        }
        first = false;
        let (mut chunk, mut bytes) = (Vec::new(), 0);
        while let Some(&schema) = schemas.peek() {
            // The field's tag and length prefix, then the message.
            let len = schema.encoded_len();
            let size = 1 + prost::length_delimiter_len(len) + len;
            if bytes + size > part_bytes && !chunk.is_empty() {
                break;
            }
            bytes += size;
            chunk.push(pb::TypeSchema::clone(schema));
            schemas.next();
        }
        Some(chunk)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(entries: &[(&str, &str)]) -> Schemas {
        entries
            .iter()
            .map(|(name, schema)| {
                let schema = pb::TypeSchema {
                    name: (*name).into(),
                    schema: schema.as_bytes().to_vec(),
                };
                ((*name).to_owned(), Arc::new(schema))
            })
            .collect()
    }

    #[test]
    fn a_relisting_yields_only_what_changed() {
        let old = set(&[("kept", "{}"), ("changed", "{}"), ("gone", "{}")]);
        let new = set(&[
            ("kept", "{}"),
            ("changed", r#"{"type":"object"}"#),
            ("added", "{}"),
        ]);
        let change = difference(&old, &new);
        let upserts: Vec<&str> = change.upserts.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(upserts, ["added", "changed"]);
        assert_eq!(change.removals, ["gone"]);
        assert!(difference(&new, &new).is_empty());
    }

    #[test]
    fn a_large_set_goes_in_parts_and_an_empty_one_in_one() {
        let big = "x".repeat(400);
        let schemas = set(&[("a", &big), ("b", &big), ("c", &big)]);
        let parts: Vec<_> = whole_set(&schemas, |_| true, 900).collect();
        let names: Vec<Vec<&str>> = parts
            .iter()
            .map(|p| p.upserts.iter().map(|s| s.name.as_str()).collect())
            .collect();
        assert_eq!(names, [vec!["a", "b"], vec!["c"]]);
        assert!(parts.iter().all(|p| p.whole));
        assert_eq!(
            parts.iter().map(|p| p.more).collect::<Vec<_>>(),
            [true, false]
        );

        let none: Vec<_> = whole_set(&schemas, |name| name == "z", 900).collect();
        assert_eq!(none.len(), 1);
        assert!(none[0].whole && !none[0].more && none[0].upserts.is_empty());
    }

    #[test]
    fn a_change_goes_in_parts_of_the_types_wanted_only() {
        let big = "x".repeat(400);
        let set = set(&[("order.a", &big), ("order.b", &big), ("stock.c", &big)]);
        let change = SchemaChange {
            upserts: set.values().cloned().collect(),
            removals: vec!["order.gone".into(), "stock.gone".into()],
        };
        let updates = change.to_updates(|name| name.starts_with("order."), 900);
        let names: Vec<Vec<&str>> = updates
            .iter()
            .map(|u| u.upserts.iter().map(|s| s.name.as_str()).collect())
            .collect();
        assert_eq!(names, [vec!["order.a", "order.b"]]);
        assert_eq!(updates[0].removals, ["order.gone"]);
        assert!(updates.iter().all(|u| !u.whole && !u.more));

        let small = change.to_updates(|name| name.starts_with("order."), 500);
        assert_eq!(small.len(), 2, "one schema a part");
        assert_eq!(small[1].removals, ["order.gone"], "with the last part");
        assert!(
            change
                .to_updates(|name| name.starts_with("plan."), 900)
                .is_empty()
        );
    }
}
