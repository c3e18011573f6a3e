//! What counts toward the queue's bounds: events that still have deliveries to make.
//!
//! `--max-queue-events` and `--max-queue-bytes` bound the work waiting: an event counts from
//! its acceptance until its last delivery is finished (delivered, failed for good or skipped);
//! a parked delivery (its subscription disabled) is still to make, so it counts too. Events
//! kept after that, for replay and to recognise duplicates, never cause a refusal: they are
//! bounded by bytes on their own (`--max-retained-bytes`), the oldest removed first by the
//! sweep. Each tenant may hold at most its share (`--max-queue-share`) of either bound, so one
//! noisy application cannot have every other tenant refused.
//!
//! The deliveries in the file (tasks, and the waiting lines of ordering keys) are the record;
//! these are counts of them, kept in memory by the writer and made again from the file each
//! time the queue opens ([`Pending::count`]). So counting costs the writer's commits no
//! write: each commit changes the counts as it adds and finishes deliveries, and puts them
//! back as they were when the commit fails ([`Pending::rollback`]).

use redb::{ReadableDatabase, ReadableTable};

use super::{
    EVENTS, EventKey, FastMap, ORDERED, QueueError, TASKS, decode_event, decode_task,
    decode_waiting, storage,
};

/// Events and payload bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Events.
    pub events: u64,
    /// Their payload bytes.
    pub bytes: u64,
}

/// An event's deliveries left to make, and its payload's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Left {
    deliveries: u32,
    bytes: u64,
    /// The event itself is gone (past retention): its deliveries, still in the queue, will
    /// be skipped. It no longer counts toward the bounds, but its id stays taken until they
    /// are, so that a new event with that id never inherits them.
    swept: bool,
}

impl Left {
    /// What this counts toward the bounds: one event and its bytes, or nothing once swept.
    fn counted(&self) -> Option<u64> {
        (!self.swept).then_some(self.bytes)
    }
}

/// The events with deliveries to make, per event, per tenant and in total.
#[derive(Debug, Default)]
pub(super) struct Pending {
    events: FastMap<EventKey, Left>,
    total: Tally,
    tenants: FastMap<String, Tally>,
    /// Deliveries to make per subscription (what `max_parked_deliveries` bounds for a
    /// disabled one).
    subscriptions: FastMap<String, u64>,
    /// What the commit being made changed, to put back if it fails: each event's state before.
    undo: Vec<(EventKey, Option<Left>)>,
    /// Each subscription's count before the commit being made, for the same purpose.
    subscriptions_before: FastMap<String, u64>,
}

impl Pending {
    /// Every tenant's waiting work.
    pub fn total(&self) -> Tally {
        self.total
    }

    /// `tenant`'s waiting work.
    pub fn tenant(&self, tenant: &str) -> Tally {
        self.tenants.get(tenant).copied().unwrap_or_default()
    }

    /// Whether `event` has deliveries to make.
    pub fn is_waiting(&self, event: &EventKey) -> bool {
        self.events.contains_key(event)
    }

    /// `n` more deliveries of `event` (of `payload_bytes`) are to be made.
    pub fn add_deliveries(&mut self, event: &EventKey, n: u32, payload_bytes: u64) {
        if n == 0 {
            return;
        }
        let left = match self.events.get(event) {
            Some(left) => Left {
                deliveries: left.deliveries.saturating_add(n),
                ..*left
            },
            None => Left {
                deliveries: n,
                bytes: payload_bytes,
                swept: false,
            },
        };
        self.set(event, Some(left));
    }

    /// One delivery of `event` is finished; the event no longer counts once none is left.
    pub fn finish_delivery(&mut self, event: &EventKey) {
        let Some(left) = self.events.get(event).copied() else {
            return;
        };
        let after = (left.deliveries > 1).then_some(Left {
            deliveries: left.deliveries - 1,
            ..left
        });
        self.set(event, after);
    }

    /// `event` was removed from the queue (past retention): it no longer counts, though its
    /// deliveries left (to be skipped) keep its id taken.
    pub fn forget(&mut self, event: &EventKey) {
        if let Some(left) = self.events.get(event).copied() {
            self.set(
                event,
                Some(Left {
                    swept: true,
                    ..left
                }),
            );
        }
    }

    /// Deliveries to `subscription` still to make.
    pub fn deliveries_to(&self, subscription: &str) -> u64 {
        self.subscriptions.get(subscription).copied().unwrap_or(0)
    }

    /// A delivery to `subscription` was added.
    pub fn add_delivery_to(&mut self, subscription: &str) {
        self.change_subscription(subscription, |n| n + 1);
    }

    /// A delivery to `subscription` is finished.
    pub fn finish_delivery_to(&mut self, subscription: &str) {
        self.change_subscription(subscription, |n| n.saturating_sub(1));
    }

    fn change_subscription(&mut self, subscription: &str, change: impl FnOnce(u64) -> u64) {
        let before = self.deliveries_to(subscription);
        if !self.subscriptions_before.contains_key(subscription) {
            self.subscriptions_before
                .insert(subscription.to_owned(), before);
        }
        set_count(&mut self.subscriptions, subscription, change(before));
    }

    /// The commit that made the changes since the last call succeeded: they stay, and the
    /// counts of the subscriptions it changed are copied into `published` (what readers see).
    pub fn commit(&mut self, published: &mut FastMap<String, u64>) {
        self.undo.clear();
        for (subscription, _) in self.subscriptions_before.drain() {
            let now = self.subscriptions.get(&subscription).copied().unwrap_or(0);
            set_count(published, &subscription, now);
        }
    }

    /// Deliveries to make per subscription, for readers to start from (a copy, made when the
    /// queue opens; [`Pending::commit`] keeps it current).
    pub fn subscriptions(&self) -> FastMap<String, u64> {
        self.subscriptions.clone()
    }

    /// The commit failed: the counts go back to what they were before it.
    pub fn rollback(&mut self) {
        while let Some((event, before)) = self.undo.pop() {
            self.apply(&event, before);
        }
        for (subscription, before) in std::mem::take(&mut self.subscriptions_before) {
            set_count(&mut self.subscriptions, &subscription, before);
        }
    }

    /// Sets `event`'s state, remembering the one before for [`Pending::rollback`].
    fn set(&mut self, event: &EventKey, after: Option<Left>) {
        let before = self.apply(event, after);
        self.undo.push((event.clone(), before));
    }

    /// Sets `event`'s state and the tallies; returns the state before.
    fn apply(&mut self, event: &EventKey, after: Option<Left>) -> Option<Left> {
        let before = match after {
            Some(left) => self.events.insert(event.clone(), left),
            None => self.events.remove(event),
        };
        let tenant = match self.tenants.get_mut(event.tenant()) {
            Some(tally) => tally,
            None => self.tenants.entry(event.tenant().to_owned()).or_default(),
        };
        for tally in [&mut self.total, tenant] {
            if let Some(bytes) = before.as_ref().and_then(Left::counted) {
                tally.events = tally.events.saturating_sub(1);
                tally.bytes = tally.bytes.saturating_sub(bytes);
            }
            if let Some(bytes) = after.as_ref().and_then(Left::counted) {
                tally.events += 1;
                tally.bytes += bytes;
            }
        }
        if self.tenants.get(event.tenant()) == Some(&Tally::default()) {
            self.tenants.remove(event.tenant());
        }
        before
    }

    /// Counts the deliveries to make in the queue file: a task without an ordering key, or
    /// an entry in an ordering key's line (a line's head has both).
    pub fn count(db: &redb::Database) -> Result<Self, QueueError> {
        let txn = db.begin_read().map_err(storage)?;
        let mut left: FastMap<EventKey, u32> = FastMap::default();
        let mut pending = Pending::default();
        let tasks = txn.open_table(TASKS).map_err(storage)?;
        for entry in tasks.iter().map_err(storage)? {
            let (key, value) = entry.map_err(storage)?;
            let task = decode_task(key.value(), value.value())?;
            if task.ordering_key.is_empty() {
                *left.entry(task.event).or_default() += 1;
                *pending
                    .subscriptions
                    .entry(task.subscription_id)
                    .or_default() += 1;
            }
        }
        let ordered = txn.open_table(ORDERED).map_err(storage)?;
        for entry in ordered.iter().map_err(storage)? {
            let (key, value) = entry.map_err(storage)?;
            let event = decode_waiting(value.value())?.event;
            *left.entry(event).or_default() += 1;
            *pending
                .subscriptions
                .entry(key.value().0.to_owned())
                .or_default() += 1;
        }
        let events = txn.open_table(EVENTS).map_err(storage)?;
        for (event, deliveries) in left {
            // An event past retention has no record: its deliveries will be skipped.
            let left = match events.get(event.as_str()).map_err(storage)? {
                Some(value) => Left {
                    deliveries,
                    bytes: decode_event(value.value())?.event.payload.len() as u64,
                    swept: false,
                },
                None => Left {
                    deliveries,
                    bytes: 0,
                    swept: true,
                },
            };
            pending.apply(&event, Some(left));
        }
        Ok(pending)
    }
}

/// Sets `key`'s count in `counts`, keeping no entry for a count of 0.
fn set_count(counts: &mut FastMap<String, u64>, key: &str, count: u64) {
    if count == 0 {
        counts.remove(key);
    } else if let Some(held) = counts.get_mut(key) {
        *held = count;
    } else {
        counts.insert(key.to_owned(), count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_follow_deliveries_and_a_failed_commit_puts_them_back() {
        let mut pending = Pending::default();
        let mut published = FastMap::default();
        let (a, b) = (EventKey::new("shop-a", "e1"), EventKey::new("shop-b", "e1"));
        pending.add_deliveries(&a, 2, 10);
        pending.add_delivery_to("sub_1");
        pending.add_delivery_to("sub_2");
        pending.add_deliveries(&b, 1, 5);
        pending.add_delivery_to("sub_1");
        pending.commit(&mut published);
        assert_eq!(published.get("sub_1"), Some(&2));
        assert_eq!(published.get("sub_2"), Some(&1));
        assert_eq!(
            pending.total(),
            Tally {
                events: 2,
                bytes: 15
            }
        );
        assert_eq!(
            pending.tenant("shop-a"),
            Tally {
                events: 1,
                bytes: 10
            }
        );

        pending.finish_delivery(&a);
        pending.finish_delivery_to("sub_1");
        assert!(pending.is_waiting(&a), "one of its two left");
        pending.finish_delivery(&a);
        pending.finish_delivery_to("sub_2");
        pending.forget(&b);
        assert_eq!(pending.total(), Tally::default());
        pending.rollback();
        assert_eq!(pending.deliveries_to("sub_2"), 1, "put back");
        assert_eq!(
            published,
            pending.subscriptions(),
            "a failed commit publishes nothing"
        );
        assert_eq!(
            pending.total(),
            Tally {
                events: 2,
                bytes: 15
            }
        );
        assert_eq!(
            pending.tenant("shop-b"),
            Tally {
                events: 1,
                bytes: 5
            }
        );
        pending.finish_delivery(&a);
        pending.finish_delivery_to("sub_1");
        pending.finish_delivery(&a);
        pending.finish_delivery_to("sub_2");
        pending.commit(&mut published);
        assert_eq!(published.get("sub_1"), Some(&1));
        assert_eq!(published.get("sub_2"), None, "no entry for none left");
        assert_eq!(published, pending.subscriptions());
        assert_eq!(pending.tenant("shop-a"), Tally::default());
        assert!(!pending.is_waiting(&a));
    }
}
