//! The event-type registry: the catalogue of event types subscribers choose from, with a
//! description and an example payload each (`/herald/v1/event-types/<name>` in the config
//! store). While the registry holds any type (and the control plane runs with
//! `--event-type-registry on`, the default), a subscription's patterns must each select at
//! least one registered type, so a typo such as `ordr.created` is refused instead of silently
//! receiving nothing. An empty registry checks nothing, so a new installation works at once.

use std::time::SystemTime;

use herald_core::ValidationError;
use herald_core::event_type::{EventPattern, validate_event_type};
use herald_core::limits::MAX_DESCRIPTION_LEN;
use herald_proto::convert::timestamp;
use herald_proto::v1 as pb;
use prost::Message;

use crate::store::{Compare, Op, Store, StoreError, Txn, TxnOutcome};

/// The prefix of the registry's records.
const EVENT_TYPES: &str = "/herald/v1/event-types/";
/// The largest example payload.
pub const MAX_EXAMPLE_BYTES: usize = 64 * 1024;
/// The most event types the registry holds.
pub const MAX_EVENT_TYPES: usize = 10_000;

/// Whether subscriptions are checked against the registry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum RegistryMode {
    /// Checked while the registry holds any type.
    #[default]
    On,
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
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored record could not be decoded.
    #[error("stored event type {0} is corrupt")]
    Corrupt(String),
}

impl From<EventTypeError> for tonic::Status {
    fn from(err: EventTypeError) -> Self {
        use tonic::Status;
        match &err {
            EventTypeError::Invalid(_) => Status::invalid_argument(err.to_string()),
            EventTypeError::NotFound(_) => Status::not_found(err.to_string()),
            EventTypeError::Exists(_) => Status::already_exists(err.to_string()),
            EventTypeError::Full => Status::resource_exhausted(err.to_string()),
            EventTypeError::Store(store) if store.is_unavailable() => {
                Status::unavailable(store.unavailable_message())
            }
            EventTypeError::Store(_) | EventTypeError::Corrupt(_) => {
                Status::internal(err.to_string())
            }
        }
    }
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
        validate_event_type(&event_type.name)
            .map_err(|e| ValidationError::new("name", e.reason))?;
        if event_type.description.len() > MAX_DESCRIPTION_LEN {
            return Err(ValidationError::new(
                "description",
                format!("is longer than {MAX_DESCRIPTION_LEN} bytes"),
            )
            .into());
        }
        if event_type.example.len() > MAX_EXAMPLE_BYTES {
            return Err(ValidationError::new(
                "example",
                format!("is longer than {MAX_EXAMPLE_BYTES} bytes"),
            )
            .into());
        }
        if !event_type.example.is_empty()
            && serde_json::from_slice::<serde_json::Value>(&event_type.example).is_err()
        {
            return Err(ValidationError::new("example", "is not a JSON document").into());
        }
        if self.names().await?.len() >= MAX_EVENT_TYPES {
            return Err(EventTypeError::Full);
        }
        event_type.created_at = Some(timestamp(SystemTime::now()));
        let key = format!("{EVENT_TYPES}{}", event_type.name);
        let txn = Txn::default()
            .when(Compare::Absent(key.clone()))
            .then(Op::Put(key, event_type.encode_to_vec()));
        match self.store.txn(txn).await? {
            TxnOutcome::Committed { .. } => Ok(event_type),
            TxnOutcome::Conflict => Err(EventTypeError::Exists(event_type.name)),
        }
    }

    /// One registered event type.
    pub async fn get(&self, name: &str) -> Result<pb::EventType, EventTypeError> {
        let kv = self
            .store
            .get(&format!("{EVENT_TYPES}{name}"))
            .await?
            .ok_or_else(|| EventTypeError::NotFound(name.to_owned()))?;
        pb::EventType::decode(kv.value.as_slice()).map_err(|_| EventTypeError::Corrupt(name.into()))
    }

    /// Every registered event type, by name.
    pub async fn list(&self) -> Result<Vec<pb::EventType>, EventTypeError> {
        let (kvs, _) = self.store.list(EVENT_TYPES).await?;
        kvs.iter()
            .map(|kv| {
                pb::EventType::decode(kv.value.as_slice())
                    .map_err(|_| EventTypeError::Corrupt(kv.key.clone()))
            })
            .collect()
    }

    async fn names(&self) -> Result<Vec<String>, EventTypeError> {
        let (kvs, _) = self.store.list(EVENT_TYPES).await?;
        Ok(kvs
            .iter()
            .filter_map(|kv| kv.key.strip_prefix(EVENT_TYPES).map(str::to_owned))
            .collect())
    }

    /// Refuses patterns that select no registered event type (while the registry is on and
    /// holds any).
    pub async fn check(&self, patterns: &[String]) -> Result<(), EventTypeError> {
        if self.mode == RegistryMode::Off {
            return Ok(());
        }
        let names = self.names().await?;
        if names.is_empty() {
            return Ok(());
        }
        for text in patterns {
            let pattern = EventPattern::parse(text)?;
            if !names.iter().any(|name| pattern.matches(name)) {
                return Err(ValidationError::new(
                    "event_types",
                    format!(
                        "{text:?} selects no registered event type; see `herald event-types list`, \
                         or register it with `herald event-types create`"
                    ),
                )
                .into());
            }
        }
        Ok(())
    }
}
