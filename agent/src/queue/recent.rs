//! Events accepted moments ago, kept in memory for their first attempts.
//!
//! Nearly every event is attempted within milliseconds of its acceptance, once per
//! subscription it matched. Reading it back from the queue file for each of those attempts
//! (a read transaction, a B-tree lookup and a decode) was a visible share of the delivery
//! path's CPU. So the writer, once an event's commit is done, also puts the event here with the
//! number of deliveries it has; each attempt that reads it counts one off, and the last one
//! takes it out. Retries read the file, as does anything not found here: this is a cache,
//! never the record.
//!
//! It is bounded twice over: by bytes ([`MAX_BYTES`]; an event that does not fit is simply not
//! kept) and by age. Entries live in two generations; at its first commit after each
//! [`GENERATION`] the writer drops the old one and makes the young one old, so an event whose
//! deliveries wait (a parked lane, an ordering key's line) leaves at the second such commit.
//! (A writer with nothing to commit keeps what is here, within the byte bound, until it
//! commits again.)

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{EventKey, FastMap, StoredEvent};

/// The most bytes of events kept (payloads and ids, estimated).
pub(super) const MAX_BYTES: usize = 8 * 1024 * 1024;
/// How long a generation lasts: an entry is dropped after one to two of them.
pub(super) const GENERATION: Duration = Duration::from_secs(1);
/// What an entry costs beyond its payload and strings (the map's slot, the event's fields).
const ENTRY_OVERHEAD: usize = 256;

/// The recently accepted events.
#[derive(Debug)]
pub(super) struct RecentEvents {
    young: FastMap<EventKey, Entry>,
    old: FastMap<EventKey, Entry>,
    bytes: usize,
    rotated: Instant,
}

#[derive(Debug)]
struct Entry {
    event: Arc<StoredEvent>,
    /// Attempts still expected to read it.
    reads_left: u32,
    bytes: usize,
}

impl Default for RecentEvents {
    fn default() -> Self {
        RecentEvents {
            young: FastMap::default(),
            old: FastMap::default(),
            bytes: 0,
            rotated: Instant::now(),
        }
    }
}

impl RecentEvents {
    /// Keeps `event`, to be read by `reads` attempts, if it fits; it replaces an entry of the
    /// same key (an id accepted again after its dedup window).
    pub(super) fn insert(&mut self, event: Arc<StoredEvent>, reads: u32) {
        let key = EventKey::of(&event.event);
        self.remove(&key);
        let e = &event.event;
        let bytes = ENTRY_OVERHEAD
            + 2 * e.id.len()
            + e.payload.len()
            + e.tenant.len()
            + e.r#type.len()
            + e.ordering_key.len()
            + e.traceparent.len()
            + e.attributes
                .iter()
                .map(|(k, v)| k.len() + v.len() + 48)
                .sum::<usize>();
        if reads == 0 || self.bytes + bytes > MAX_BYTES {
            return;
        }
        self.bytes += bytes;
        self.young.insert(
            key,
            Entry {
                event,
                reads_left: reads,
                bytes,
            },
        );
    }

    /// The event `id` for one attempt, if kept; the last expected attempt takes it out.
    pub(super) fn read(&mut self, id: &EventKey) -> Option<Arc<StoredEvent>> {
        let generation = if self.young.contains_key(id) {
            &mut self.young
        } else {
            &mut self.old
        };
        let entry = generation.get_mut(id)?;
        entry.reads_left = entry.reads_left.saturating_sub(1);
        let event = entry.event.clone();
        if entry.reads_left == 0 {
            let bytes = entry.bytes;
            generation.remove(id);
            self.bytes -= bytes;
        }
        Some(event)
    }

    /// Forgets `id` (its event was removed from the queue).
    pub(super) fn remove(&mut self, id: &EventKey) {
        if let Some(entry) = self.young.remove(id).or_else(|| self.old.remove(id)) {
            self.bytes -= entry.bytes;
        }
    }

    /// Drops the old generation and starts a new young one, once a [`GENERATION`] has passed
    /// by `now`.
    pub(super) fn age(&mut self, now: Instant) {
        if now.saturating_duration_since(self.rotated) < GENERATION {
            return;
        }
        self.rotated = now;
        let dropped = std::mem::replace(&mut self.old, std::mem::take(&mut self.young));
        self.bytes -= dropped.values().map(|e| e.bytes).sum::<usize>();
    }
}

#[cfg(test)]
mod tests {
    use herald_proto::v1 as pb;

    use super::*;

    fn key(id: &str) -> EventKey {
        EventKey::new("shop-1", id)
    }

    fn stored(id: &str, payload_len: usize) -> Arc<StoredEvent> {
        Arc::new(StoredEvent {
            event: pb::Event {
                id: id.into(),
                tenant: "shop-1".into(),
                payload: vec![b'1'; payload_len],
                ..Default::default()
            },
            accepted_ms: 7,
        })
    }

    #[test]
    fn an_event_is_kept_for_as_many_reads_as_it_has_deliveries() {
        let mut recent = RecentEvents::default();
        recent.insert(stored("evt_1", 10), 2);
        assert_eq!(recent.read(&key("evt_1")).expect("first").event.id, "evt_1");
        assert!(recent.read(&key("evt_1")).is_some(), "second");
        assert!(
            recent.read(&key("evt_1")).is_none(),
            "the last delivery took it"
        );
        assert_eq!(recent.bytes, 0);
    }

    #[test]
    fn an_event_that_does_not_fit_is_not_kept() {
        let mut recent = RecentEvents::default();
        recent.insert(stored("evt_big", MAX_BYTES), 1);
        assert!(recent.read(&key("evt_big")).is_none());
        recent.insert(stored("evt_half", MAX_BYTES / 2), 1);
        recent.insert(stored("evt_other_half", MAX_BYTES / 2), 1);
        assert!(recent.read(&key("evt_half")).is_some());
        assert!(
            recent.read(&key("evt_other_half")).is_none(),
            "the first half and the overheads left no room"
        );
        recent.insert(stored("evt_none", 10), 0);
        assert!(
            recent.read(&key("evt_none")).is_none(),
            "no delivery, nothing kept"
        );
        assert_eq!(recent.bytes, 0);
    }

    #[test]
    fn a_removed_or_replaced_event_is_gone() {
        let mut recent = RecentEvents::default();
        recent.insert(stored("evt_1", 10), 3);
        recent.remove(&key("evt_1"));
        assert!(recent.read(&key("evt_1")).is_none());
        recent.insert(stored("evt_2", 10), 3);
        recent.insert(stored("evt_2", 20), 1);
        assert_eq!(
            recent
                .read(&key("evt_2"))
                .expect("the new one")
                .event
                .payload
                .len(),
            20
        );
        assert!(recent.read(&key("evt_2")).is_none(), "the new one's count");
        assert_eq!(recent.bytes, 0);
    }

    #[test]
    fn an_event_not_read_leaves_after_two_generations() {
        let mut recent = RecentEvents::default();
        let start = recent.rotated;
        recent.insert(stored("evt_waiting", 10), 2);
        recent.age(start + GENERATION / 2);
        recent.age(start + GENERATION);
        assert!(
            recent.read(&key("evt_waiting")).is_some(),
            "old now, still kept"
        );
        recent.insert(stored("evt_young", 10), 2);
        recent.age(start + GENERATION * 3 / 2);
        recent.age(start + GENERATION * 2);
        assert!(
            recent.read(&key("evt_waiting")).is_none(),
            "dropped with its generation"
        );
        assert!(recent.read(&key("evt_young")).is_some(), "young became old");
        recent.age(start + GENERATION * 3);
        assert!(recent.read(&key("evt_young")).is_none());
        assert_eq!(recent.bytes, 0);
    }
}
