//! The event-type registry: the catalogue of event types subscribers choose from, with a
//! description, an example payload and optionally a JSON Schema each
//! (`/herald/v1/event-types/<name>` in the config store), and Herald's own operator events
//! (`herald.*`) built in. Types can be updated, deprecated (still delivered, flagged) and
//! deleted; a schema must compile and the example must satisfy it.
//!
//! While the registry holds any type of its own (and the control plane runs with
//! `--event-type-registry on`, the default), each pattern a subscription is *given* must select
//! at least one known type, so a typo such as `ordr.created` is refused, with the types it could
//! mean, instead of silently receiving nothing. The check never traps:
//!
//! - an empty registry checks nothing, so a new installation works at once;
//! - the built-in `herald.*` types always count, so operator-event subscriptions always work;
//! - patterns a subscription already has are never checked again (an update that does not
//!   change them, or registers types later, always goes through);
//! - a caller may pass `allow_unregistered` (`--allow-unregistered`) for types not registered
//!   yet, and `--event-type-registry advisory` logs what `on` would refuse and lets it through.

use std::collections::VecDeque;
use std::time::SystemTime;

use herald_core::ValidationError;
use herald_core::event_schema::EventSchema;
use herald_core::event_type::{EventFilter, EventPattern, validate_event_type};
use herald_core::limits::PageBytes;
use herald_proto::convert::timestamp;
use herald_proto::v1 as pb;
use prost::Message;

use crate::keys::EVENT_TYPES;
use crate::operator_events::OPERATOR_EVENT_TYPES;
use crate::store::{Compare, KeyValue, Op, Store, StoreError, Txn, TxnOutcome};

/// The largest example payload.
pub const MAX_EXAMPLE_BYTES: usize = 64 * 1024;
/// The most event types the registry holds.
pub const MAX_EVENT_TYPES: usize = 10_000;
/// How many registered types a refusal names as what a pattern could mean.
const MAX_SUGGESTIONS: usize = 5;
/// The largest page of event types a listing asks for.
pub const MAX_PAGE_SIZE: usize = 1000;
/// The names of Herald's own operator events; no registered type may take one.
const RESERVED_PREFIX: &str = herald_core::event_type::HERALDS_OWN_PREFIX;
/// How many stored types a listing reads at once.
const READ_CHUNK: usize = 16;

/// A page of event types, by name.
#[derive(Debug, Default)]
pub struct EventTypePage {
    /// The types.
    pub event_types: Vec<pb::EventType>,
    /// Where the next page starts (the last type's name); empty on the last page.
    pub next_page_token: String,
}

/// Whether subscriptions are checked against the registry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum RegistryMode {
    /// Checked while the registry holds any type: a pattern that selects none is refused.
    #[default]
    On,
    /// Checked and logged, never refused.
    Advisory,
    /// Never checked.
    Off,
}

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum EventTypeError {
    /// The request is malformed.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// No such event type.
    #[error("event type {0} is not registered")]
    NotFound(String),
    /// The name is taken.
    #[error("event type {0} is already registered")]
    Exists(String),
    /// The registry is full.
    #[error("the registry holds {MAX_EVENT_TYPES} event types, its limit")]
    Full,
    /// Someone changed the type between the read and the write.
    #[error("event type {0} changed meanwhile; read it again")]
    Changed(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored record could not be decoded: deleting it is the way out.
    #[error(
        "stored event type {0} is damaged (it does not decode): delete it \
         (herald event-types delete {0}) and register it again"
    )]
    Corrupt(String),
}

impl From<EventTypeError> for tonic::Status {
    fn from(err: EventTypeError) -> Self {
        use tonic::Status;
        match &err {
            EventTypeError::Invalid(invalid) => {
                herald_proto::convert::invalid_argument(invalid.clone())
            }
            EventTypeError::NotFound(_) => Status::not_found(err.to_string()),
            EventTypeError::Exists(_) => Status::already_exists(err.to_string()),
            EventTypeError::Changed(_) => Status::aborted(err.to_string()),
            EventTypeError::Full => Status::resource_exhausted(err.to_string()),
            EventTypeError::Store(store) => store.status(),
            EventTypeError::Corrupt(_) => Status::data_loss(err.to_string()),
        }
    }
}

/// Checks that `name` could be an event type's, so that a name nothing could have is refused
/// as such (and not echoed back whole in a "not registered").
fn check_name(name: &str) -> Result<(), EventTypeError> {
    validate_event_type(name).map_err(|e| ValidationError::new("name", e.reason).into())
}

/// The registry over a config store; cloning shares it.
#[derive(Clone)]
pub struct EventTypes {
    store: Store,
    mode: RegistryMode,
}

impl EventTypes {
    /// The registry in `store`, checking subscriptions as `mode` says.
    pub fn new(store: Store, mode: RegistryMode) -> Self {
        EventTypes { store, mode }
    }

    /// Registers an event type; its name must be new.
    pub async fn create(
        &self,
        mut event_type: pb::EventType,
    ) -> Result<pb::EventType, EventTypeError> {
        check_name(&event_type.name)?;
        if built_in(&event_type.name).is_some() {
            return Err(EventTypeError::Exists(event_type.name));
        }
        if event_type.name.starts_with(RESERVED_PREFIX) {
            return Err(ValidationError::new(
                "name",
                format!(
                    "{RESERVED_PREFIX}* names are Herald's own operator events: name the type \
                     after your platform's groups (order.created)"
                ),
            )
            .into());
        }
        check_contents(&mut event_type)?;
        event_type.built_in = false;
        event_type.deprecated = false;
        if self.names().await?.len() >= MAX_EVENT_TYPES {
            return Err(EventTypeError::Full);
        }
        let now = Some(timestamp(SystemTime::now()));
        event_type.created_at = now;
        event_type.updated_at = now;
        let key = format!("{EVENT_TYPES}{}", event_type.name);
        let txn = Txn::default()
            .when(Compare::Absent(key.clone()))
            .then(Op::Put(key, event_type.encode_to_vec()));
        match self.store.txn(txn).await? {
            TxnOutcome::Committed { .. } => Ok(event_type),
            TxnOutcome::Conflict => Err(EventTypeError::Exists(event_type.name)),
        }
    }

    /// Replaces a registered type's description, example and schema.
    pub async fn update(&self, mut edited: pb::EventType) -> Result<pb::EventType, EventTypeError> {
        check_contents(&mut edited)?;
        self.modify(&edited.name.clone(), move |stored| {
            stored.description = edited.description;
            stored.example = edited.example;
            stored.schema = edited.schema;
        })
        .await
    }

    /// Marks a registered type deprecated, or not.
    pub async fn deprecate(
        &self,
        name: &str,
        deprecated: bool,
    ) -> Result<pb::EventType, EventTypeError> {
        self.modify(name, move |stored| stored.deprecated = deprecated)
            .await
    }

    /// Removes a registered type.
    pub async fn delete(&self, name: &str) -> Result<(), EventTypeError> {
        let kv = self.stored(name).await?;
        let txn = Txn::default()
            .when(Compare::ModRevision(kv.key.clone(), kv.mod_revision))
            .then(Op::Delete(kv.key));
        match self.store.txn(txn).await? {
            TxnOutcome::Committed { .. } => Ok(()),
            // Changed or deleted meanwhile: read it again before deleting.
            TxnOutcome::Conflict => Err(EventTypeError::Changed(name.to_owned())),
        }
    }

    /// The stored record of the registered type `name`, to change or remove: a built-in
    /// type is refused, an unknown one is not found.
    async fn stored(&self, name: &str) -> Result<KeyValue, EventTypeError> {
        if built_in(name).is_some() {
            return Err(ValidationError::new("name", format!("{name} is built in")).into());
        }
        check_name(name)?;
        let key = format!("{EVENT_TYPES}{name}");
        self.store
            .get(&key)
            .await?
            .ok_or_else(|| EventTypeError::NotFound(name.to_owned()))
    }

    /// Applies `change` to the stored type `name`, if nobody wrote it meanwhile.
    async fn modify(
        &self,
        name: &str,
        change: impl FnOnce(&mut pb::EventType),
    ) -> Result<pb::EventType, EventTypeError> {
        let kv = self.stored(name).await?;
        let mut stored = pb::EventType::decode(kv.value.as_slice())
            .map_err(|_| EventTypeError::Corrupt(name.into()))?;
        change(&mut stored);
        stored.updated_at = Some(timestamp(SystemTime::now()));
        let txn = Txn::default()
            .when(Compare::ModRevision(kv.key.clone(), kv.mod_revision))
            .then(Op::Put(kv.key, stored.encode_to_vec()));
        match self.store.txn(txn).await? {
            TxnOutcome::Committed { .. } => Ok(stored),
            TxnOutcome::Conflict => Err(EventTypeError::Changed(name.to_owned())),
        }
    }

    /// One registered or built-in event type.
    pub async fn get(&self, name: &str) -> Result<pb::EventType, EventTypeError> {
        if let Some(event_type) = built_in(name) {
            return Ok(event_type);
        }
        check_name(name)?;
        let kv = self
            .store
            .get(&format!("{EVENT_TYPES}{name}"))
            .await?
            .ok_or_else(|| EventTypeError::NotFound(name.to_owned()))?;
        pb::EventType::decode(kv.value.as_slice()).map_err(|_| EventTypeError::Corrupt(name.into()))
    }

    /// A page of the registered event types and the built-in ones, by name, after the type
    /// `page_token` names (the first page when empty): at most `page_size` of them (0: as many
    /// as fit) and within [`herald_core::limits::MAX_PAGE_BYTES`]. Types are read from the store a few at a time (a
    /// type holds up to 128 KiB), so a page costs about its own size.
    pub async fn list_page(
        &self,
        page_size: u32,
        page_token: &str,
    ) -> Result<EventTypePage, EventTypeError> {
        // A page token is the last type of the page before: a name as types are named.
        if !page_token.is_empty()
            && herald_core::event_type::validate_event_type(page_token).is_err()
        {
            return Err(ValidationError::new("page_token", "is not from this listing").into());
        }
        let size = match page_size as usize {
            0 => usize::MAX,
            n => n.min(MAX_PAGE_SIZE),
        };
        let mut built_ins: VecDeque<pb::EventType> = OPERATOR_EVENT_TYPES
            .iter()
            .filter(|t| t.name > page_token)
            .filter_map(|t| built_in(t.name))
            .collect();
        built_ins
            .make_contiguous()
            .sort_by(|a, b| a.name.cmp(&b.name));
        let mut stored: VecDeque<pb::EventType> = VecDeque::new();
        let mut read_after = (!page_token.is_empty()).then(|| format!("{EVENT_TYPES}{page_token}"));
        let mut all_read = false;
        let mut page = EventTypePage::default();
        let mut bytes = PageBytes::default();
        loop {
            if stored.is_empty() && !all_read {
                let kvs = self
                    .store
                    .list_page(EVENT_TYPES, read_after.as_deref(), READ_CHUNK)
                    .await?;
                all_read = kvs.len() < READ_CHUNK;
                read_after = kvs.last().map(|kv| kv.key.clone()).or(read_after);
                for kv in &kvs {
                    stored.push_back(decode(kv)?);
                }
            }
            // The next type by name, stored or built in.
            let next = match (stored.front(), built_ins.front()) {
                (Some(s), Some(b)) if b.name < s.name => built_ins.pop_front(),
                (Some(_), _) => stored.pop_front(),
                (None, _) => built_ins.pop_front(),
            };
            let Some(next) = next else {
                break;
            };
            if page.event_types.len() == size || !bytes.fits(next.encoded_len()) {
                // It starts the next page.
                page.next_page_token = page
                    .event_types
                    .last()
                    .map(|t| t.name.clone())
                    .unwrap_or_default();
                return Ok(page);
            }
            page.event_types.push(next);
        }
        Ok(page)
    }

    /// Every registered event type and the built-in ones, by name: every page.
    pub async fn list(&self) -> Result<Vec<pb::EventType>, EventTypeError> {
        let mut all = Vec::new();
        let mut token = String::new();
        loop {
            let page = self.list_page(0, &token).await?;
            all.extend(page.event_types);
            if page.next_page_token.is_empty() {
                return Ok(all);
            }
            token = page.next_page_token;
        }
    }

    /// The registered names, read from the keys alone (a type's value holds its schema and
    /// example, up to 128 KiB).
    async fn names(&self) -> Result<Vec<String>, EventTypeError> {
        let keys = self.store.keys(EVENT_TYPES).await?;
        Ok(keys
            .iter()
            .filter_map(|key| key.strip_prefix(EVENT_TYPES).map(str::to_owned))
            .collect())
    }

    /// Checks the patterns a subscription is given against the catalogue: each pattern not in
    /// `kept` (what the subscription already has) must select a registered or built-in type,
    /// while the registry is on and holds any type of its own. With `allow_unregistered`, or
    /// in advisory mode, such a pattern is logged and let through.
    pub async fn check(
        &self,
        patterns: &[String],
        kept: &[String],
        allow_unregistered: bool,
    ) -> Result<(), EventTypeError> {
        // The list's own rules (its length first) before any matching: each pattern is
        // matched against the whole catalogue.
        EventFilter::parse(patterns)?;
        if self.mode == RegistryMode::Off {
            return Ok(());
        }
        let new: Vec<&String> = patterns.iter().filter(|p| !kept.contains(p)).collect();
        if new.is_empty() {
            return Ok(());
        }
        let mut names = self.names().await?;
        if names.is_empty() {
            return Ok(());
        }
        names.extend(OPERATOR_EVENT_TYPES.iter().map(|t| t.name.to_owned()));
        for text in new {
            let pattern = EventPattern::parse(text)?;
            if names.iter().any(|name| pattern.matches(name)) {
                continue;
            }
            if allow_unregistered || self.mode == RegistryMode::Advisory {
                tracing::warn!(
                    pattern = %text,
                    "subscription pattern selects no registered event type; accepted"
                );
                continue;
            }
            return Err(ValidationError::new(
                "event_types",
                format!(
                    "{text:?} selects no registered event type; registered types closest to it: \
                     {}. Register it (`herald event-types create`), or set allow_unregistered \
                     (`--allow-unregistered`) to subscribe before it is registered",
                    closest(text, &names).join(", ")
                ),
            )
            .into());
        }
        Ok(())
    }
}

/// Checks a type's description, example and schema (the schema compiles; the example, when
/// both are given, satisfies it) and stores the schema in canonical form.
fn check_contents(event_type: &mut pb::EventType) -> Result<(), ValidationError> {
    herald_core::validate::shown_text(
        "description",
        &event_type.description,
        herald_core::limits::MAX_DESCRIPTION_LEN,
    )?;
    if event_type.example.len() > MAX_EXAMPLE_BYTES {
        return Err(ValidationError::new(
            "example",
            format!("is longer than {MAX_EXAMPLE_BYTES} bytes"),
        ));
    }
    let example = match event_type.example.is_empty() {
        true => None,
        false => {
            // Held to what a payload is held to: a test send delivers it as one.
            herald_core::validate::json_payload(&event_type.example, MAX_EXAMPLE_BYTES)
                .map_err(|e| ValidationError::new("example", e.reason))?;
            Some(
                serde_json::from_slice::<serde_json::Value>(&event_type.example)
                    .map_err(|_| ValidationError::new("example", "is not a JSON document"))?,
            )
        }
    };
    let schema = EventSchema::parse(&event_type.schema)?;
    if let (Some(schema), Some(example)) = (&schema, &example) {
        schema
            .check(example)
            .map_err(|e| ValidationError::new("example", e.reason))?;
    }
    event_type.schema = schema
        .map(|s| s.as_str().as_bytes().to_vec())
        .unwrap_or_default();
    Ok(())
}

/// The built-in event type `name`, if it is one.
/// A stored event type, or which one is damaged.
fn decode(kv: &KeyValue) -> Result<pb::EventType, EventTypeError> {
    pb::EventType::decode(kv.value.as_slice()).map_err(|_| {
        let name = kv.key.strip_prefix(EVENT_TYPES).unwrap_or(&kv.key);
        EventTypeError::Corrupt(name.to_owned())
    })
}

fn built_in(name: &str) -> Option<pb::EventType> {
    OPERATOR_EVENT_TYPES
        .iter()
        .find(|t| t.name == name)
        .map(|t| pb::EventType {
            name: t.name.to_owned(),
            description: t.description.to_owned(),
            example: t.example.as_bytes().to_vec(),
            built_in: true,
            ..Default::default()
        })
}

/// The names most like `pattern`, closest first: those sharing its group (`order.` of
/// `order.*`) before the others, then by edit distance.
fn closest(pattern: &str, names: &[String]) -> Vec<String> {
    let group = pattern.split('.').next().unwrap_or(pattern);
    let mut ranked: Vec<(bool, usize, &String)> = names
        .iter()
        .map(|name| {
            let other_group = name.split('.').next() != Some(group);
            (other_group, strsim::levenshtein(pattern, name), name)
        })
        .collect();
    ranked.sort();
    ranked
        .into_iter()
        .take(MAX_SUGGESTIONS)
        .map(|(_, _, name)| name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn suggestions_start_with_the_same_group_then_the_nearest() {
        let registered = names(&[
            "invoice.created",
            "order.created",
            "order.updated",
            "payment.confirmed",
            "product.created",
        ]);
        assert_eq!(
            closest("ordr.created", &registered)[0],
            "order.created",
            "a typo names what it could mean"
        );
        let orders = closest("order.*", &registered);
        assert_eq!(orders[..2], names(&["order.created", "order.updated"]));
        assert_eq!(closest("x.y", &registered).len(), MAX_SUGGESTIONS);
    }

    #[tokio::test]
    async fn a_name_no_type_could_have_is_refused_not_looked_up() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let store = Store::embedded(dir.path()).await.expect("a store");
        let registry = EventTypes::new(store, RegistryMode::On);
        fn is_bad_name<T>(result: &Result<T, EventTypeError>) -> bool {
            matches!(result, Err(EventTypeError::Invalid(e)) if e.field == "name")
        }
        for name in [
            "y".repeat(70_000),
            "Order.Created".to_owned(),
            String::new(),
        ] {
            let got = registry.get(&name).await;
            assert!(is_bad_name(&got), "get {:.20}: {got:?}", name);
            let deleted = registry.delete(&name).await;
            assert!(is_bad_name(&deleted), "delete {:.20}: {deleted:?}", name);
            let deprecated = registry.deprecate(&name, true).await;
            assert!(is_bad_name(&deprecated), "deprecate {:.20}", name);
        }
        let unknown = registry.get("order.created").await;
        assert!(
            matches!(unknown, Err(EventTypeError::NotFound(_))),
            "{unknown:?}"
        );
    }

    #[test]
    fn an_example_nests_no_deeper_than_a_payload_may() {
        let nested = |levels: usize| format!("{}1{}", "[".repeat(levels), "]".repeat(levels));
        let with_example = |example: String| pb::EventType {
            name: "deep.example".into(),
            example: example.into_bytes(),
            ..Default::default()
        };
        let depth = herald_core::validate::MAX_PAYLOAD_DEPTH;
        assert!(check_contents(&mut with_example(nested(depth))).is_ok());
        let refused = check_contents(&mut with_example(nested(depth + 1))).expect_err("deeper");
        assert_eq!(refused.field, "example");
        assert!(refused.reason.starts_with("nests deeper"), "{refused:?}");
    }

    #[tokio::test]
    async fn the_catalogue_pages_by_name_within_its_bytes_built_in_types_among_the_rest() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let store = Store::embedded(dir.path()).await.expect("a store");
        let registry = EventTypes::new(store, RegistryMode::On);
        // 40 types of some 120 KB each (example and schema near their limits): 4.8 MB.
        let schema = serde_json::json!({"type": "object", "description": "y".repeat(60_000)});
        let example = serde_json::json!({"p": "x".repeat(60_000)});
        for (group, n) in [("invoice", 20), ("order", 20)] {
            for i in 0..n {
                registry
                    .create(pb::EventType {
                        name: format!("{group}.t{i:02}"),
                        schema: schema.to_string().into_bytes(),
                        example: example.to_string().into_bytes(),
                        ..Default::default()
                    })
                    .await
                    .expect("registered");
            }
        }
        let pages = |size: u32| {
            let registry = &registry;
            async move {
                let mut pages: Vec<Vec<String>> = vec![];
                let mut token = String::new();
                loop {
                    let page = registry.list_page(size, &token).await.expect("a page");
                    let bytes: usize = page.event_types.iter().map(|t| t.encoded_len()).sum();
                    assert!(
                        bytes <= herald_core::limits::MAX_PAGE_BYTES,
                        "{bytes} bytes"
                    );
                    pages.push(page.event_types.into_iter().map(|t| t.name).collect());
                    if page.next_page_token.is_empty() {
                        return pages;
                    }
                    token = page.next_page_token;
                }
            }
        };
        let mut expected: Vec<String> = (0..20)
            .flat_map(|i| [format!("invoice.t{i:02}"), format!("order.t{i:02}")])
            .chain(OPERATOR_EVENT_TYPES.iter().map(|t| t.name.to_owned()))
            .collect();
        expected.sort();
        let by_bytes = pages(0).await;
        assert!(by_bytes.len() >= 3, "{} pages", by_bytes.len());
        assert_eq!(by_bytes.concat(), expected, "each type once, by name");
        let by_count = pages(7).await;
        assert!(by_count.iter().all(|page| page.len() <= 7));
        assert_eq!(by_count.concat(), expected);
        assert_eq!(registry.list().await.expect("all").len(), expected.len());
        for garbage in [
            "x".repeat(200),
            "zzz".to_owned(),
            "Order.Created".to_owned(),
        ] {
            let refused = registry.list_page(0, &garbage).await;
            assert!(
                matches!(refused, Err(EventTypeError::Invalid(_))),
                "{garbage}: {refused:?}"
            );
        }
    }

    #[tokio::test]
    async fn herald_s_own_names_are_not_registered() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let store = Store::embedded(dir.path()).await.expect("a store");
        let registry = EventTypes::new(store, RegistryMode::On);
        let named = |name: &str| pb::EventType {
            name: name.into(),
            ..Default::default()
        };
        let reserved = registry.create(named("herald.order.created")).await;
        assert!(
            matches!(&reserved, Err(EventTypeError::Invalid(e)) if e.field == "name"),
            "{reserved:?}"
        );
        let built_in = registry.create(named("herald.delivery.exhausted")).await;
        assert!(
            matches!(built_in, Err(EventTypeError::Exists(_))),
            "{built_in:?}"
        );
        registry
            .create(named("heraldry.created"))
            .await
            .expect("only herald.* is reserved");
    }

    #[tokio::test]
    async fn too_many_patterns_are_refused_before_any_matching() {
        use herald_core::limits::MAX_EVENT_PATTERNS;
        let dir = tempfile::tempdir().expect("a temp dir");
        let store = Store::embedded(dir.path()).await.expect("a store");
        let registry = EventTypes::new(store, RegistryMode::Off);
        let many: Vec<String> = (0..=MAX_EVENT_PATTERNS)
            .map(|i| format!("order.t{i}"))
            .collect();
        let refused = registry.check(&many, &[], true).await;
        assert!(
            matches!(&refused, Err(EventTypeError::Invalid(e)) if e.field == "event_types"),
            "{refused:?}"
        );
        registry
            .check(&many[..MAX_EVENT_PATTERNS], &[], true)
            .await
            .expect("at the limit");
    }

    #[test]
    fn operator_events_are_built_in() {
        for t in OPERATOR_EVENT_TYPES {
            let event_type = built_in(t.name).expect("built in");
            assert!(event_type.built_in);
            assert!(
                serde_json::from_slice::<serde_json::Value>(&event_type.example).is_ok(),
                "{} has a JSON example",
                t.name
            );
            assert!(validate_event_type(t.name).is_ok());
        }
        assert!(built_in("order.created").is_none());
    }
}
