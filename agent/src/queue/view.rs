//! What the delivery state machine ([`super::machine`]) sees of the queue's tables: keyed
//! reads and changes within one transaction, and nothing of files, logs or durability.
//!
//! The storage engine's write transaction ([`super::tables::Tables`]) is one view; the
//! in-memory [`MemoryView`] (tests only) is another, so the state machine's rules are tested
//! without a disk. Both hold the same encoded records (`encode_event`, `encode_task`, …).

use super::{QueueError, decode_event};

/// A task's key: (lane, due ms, seq).
pub(super) type TaskKey<'a> = (&'a str, u64, u64);
/// An `ordered` key: (subscription, ordering key, seq).
pub(super) type OrderedKey<'a> = (&'a str, &'a str, u64);

/// What the state machine needs of a stored event record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct EventRecord {
    /// When the event was accepted (ms since the epoch).
    pub accepted_ms: u64,
    /// How many subscriptions it matched.
    pub matched: u32,
    /// Its payload's size.
    pub payload_bytes: u64,
}

impl EventRecord {
    /// Reads an `events` value.
    pub fn decode(value: &[u8]) -> Result<Self, QueueError> {
        let stored = decode_event(value)?;
        Ok(EventRecord {
            accepted_ms: stored.accepted_ms,
            matched: stored.matched,
            payload_bytes: stored.event.payload.len() as u64,
        })
    }
}

/// A visitor of entries in key order: `Ok(true)` to go on, `Ok(false)` to stop.
pub(super) type Visit<'a, K> = &'a mut dyn FnMut(K, &[u8]) -> Result<bool, QueueError>;

/// The queue's tables as one transaction sees them (see the table layout in [`super`]).
/// Every change sets a key (or a range) to a value or to nothing.
pub(super) trait View {
    /// The event stored under `id` (an [`super::EventKey`]'s text), if any.
    fn event(&self, id: &str) -> Result<Option<EventRecord>, QueueError>;
    /// The entries of `accepted` before `before` ms, oldest first: (accepted-at, event id).
    fn each_accepted(
        &self,
        before: u64,
        visit: &mut dyn FnMut(u64, &str) -> Result<bool, QueueError>,
    ) -> Result<(), QueueError>;
    /// The line of an ordering key in a subscription, in order: (seq, `ordered` value).
    fn each_ordered(
        &self,
        subscription: &str,
        ordering_key: &str,
        visit: Visit<'_, u64>,
    ) -> Result<(), QueueError>;
    /// Reports in the outbox.
    fn pending_reports(&self) -> Result<u64, QueueError>;
    /// A counter of `meta` (0 when never set).
    fn meta(&self, name: &str) -> Result<u64, QueueError>;

    /// Stores an event record.
    fn put_event(&mut self, id: &str, value: &[u8]) -> Result<(), QueueError>;
    /// Removes an event record.
    fn remove_event(&mut self, id: &str) -> Result<(), QueueError>;
    /// Indexes an event by its acceptance time.
    fn put_accepted(&mut self, at: u64, id: &str) -> Result<(), QueueError>;
    /// Removes an event from the acceptance-time index.
    fn remove_accepted(&mut self, at: u64, id: &str) -> Result<(), QueueError>;
    /// Stores a task.
    fn put_task(&mut self, key: TaskKey<'_>, value: &[u8]) -> Result<(), QueueError>;
    /// Removes a task.
    fn remove_task(&mut self, key: TaskKey<'_>) -> Result<(), QueueError>;
    /// Stores an `ordered` entry.
    fn put_ordered(&mut self, key: OrderedKey<'_>, value: &[u8]) -> Result<(), QueueError>;
    /// Removes an `ordered` entry.
    fn remove_ordered(&mut self, key: OrderedKey<'_>) -> Result<(), QueueError>;
    /// Adds a report to the outbox.
    fn put_report(&mut self, seq: u64, value: &[u8]) -> Result<(), QueueError>;
    /// Removes reports `first..=last` from the outbox; returns the bytes they held.
    fn remove_reports(&mut self, first: u64, last: u64) -> Result<u64, QueueError>;
    /// Sets a counter.
    fn put_meta(&mut self, name: &str, value: u64) -> Result<(), QueueError>;
}

#[cfg(test)]
pub(super) use memory::MemoryView;

#[cfg(test)]
mod memory {
    use std::collections::BTreeMap;

    use super::*;

    /// The queue's tables in ordered maps: the state machine's rules, tested without a disk.
    #[derive(Clone, Debug, Default)]
    pub(in crate::queue) struct MemoryView {
        pub events: BTreeMap<String, Vec<u8>>,
        pub accepted: BTreeMap<(u64, String), ()>,
        pub tasks: BTreeMap<(String, u64, u64), Vec<u8>>,
        pub ordered: BTreeMap<(String, String, u64), Vec<u8>>,
        pub outbox: BTreeMap<u64, Vec<u8>>,
        pub meta: BTreeMap<String, u64>,
    }

    impl View for MemoryView {
        fn event(&self, id: &str) -> Result<Option<EventRecord>, QueueError> {
            self.events
                .get(id)
                .map(|value| EventRecord::decode(value))
                .transpose()
        }

        fn each_accepted(
            &self,
            before: u64,
            visit: &mut dyn FnMut(u64, &str) -> Result<bool, QueueError>,
        ) -> Result<(), QueueError> {
            for (at, id) in self.accepted.keys() {
                if *at >= before || !visit(*at, id)? {
                    break;
                }
            }
            Ok(())
        }

        fn each_ordered(
            &self,
            subscription: &str,
            ordering_key: &str,
            visit: Visit<'_, u64>,
        ) -> Result<(), QueueError> {
            let from = (subscription.to_owned(), ordering_key.to_owned(), 0);
            let to = (subscription.to_owned(), ordering_key.to_owned(), u64::MAX);
            for ((_, _, seq), value) in self.ordered.range(from..=to) {
                if !visit(*seq, value)? {
                    break;
                }
            }
            Ok(())
        }

        fn pending_reports(&self) -> Result<u64, QueueError> {
            Ok(self.outbox.len() as u64)
        }

        fn meta(&self, name: &str) -> Result<u64, QueueError> {
            Ok(self.meta.get(name).copied().unwrap_or(0))
        }

        fn put_event(&mut self, id: &str, value: &[u8]) -> Result<(), QueueError> {
            self.events.insert(id.to_owned(), value.to_vec());
            Ok(())
        }

        fn remove_event(&mut self, id: &str) -> Result<(), QueueError> {
            self.events.remove(id);
            Ok(())
        }

        fn put_accepted(&mut self, at: u64, id: &str) -> Result<(), QueueError> {
            self.accepted.insert((at, id.to_owned()), ());
            Ok(())
        }

        fn remove_accepted(&mut self, at: u64, id: &str) -> Result<(), QueueError> {
            self.accepted.remove(&(at, id.to_owned()));
            Ok(())
        }

        fn put_task(&mut self, key: TaskKey<'_>, value: &[u8]) -> Result<(), QueueError> {
            self.tasks
                .insert((key.0.to_owned(), key.1, key.2), value.to_vec());
            Ok(())
        }

        fn remove_task(&mut self, key: TaskKey<'_>) -> Result<(), QueueError> {
            self.tasks.remove(&(key.0.to_owned(), key.1, key.2));
            Ok(())
        }

        fn put_ordered(&mut self, key: OrderedKey<'_>, value: &[u8]) -> Result<(), QueueError> {
            self.ordered
                .insert((key.0.to_owned(), key.1.to_owned(), key.2), value.to_vec());
            Ok(())
        }

        fn remove_ordered(&mut self, key: OrderedKey<'_>) -> Result<(), QueueError> {
            self.ordered
                .remove(&(key.0.to_owned(), key.1.to_owned(), key.2));
            Ok(())
        }

        fn put_report(&mut self, seq: u64, value: &[u8]) -> Result<(), QueueError> {
            self.outbox.insert(seq, value.to_vec());
            Ok(())
        }

        fn remove_reports(&mut self, first: u64, last: u64) -> Result<u64, QueueError> {
            let mut removed = 0;
            self.outbox.retain(|seq, value| {
                let keep = !(first..=last).contains(seq);
                if !keep {
                    removed += value.len() as u64;
                }
                keep
            });
            Ok(removed)
        }

        fn put_meta(&mut self, name: &str, value: u64) -> Result<(), QueueError> {
            self.meta.insert(name.to_owned(), value);
            Ok(())
        }
    }
}
