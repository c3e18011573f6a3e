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
//! The `unfinished` table holds, per event with deliveries to make, how many are left and its
//! payload's size; `meta` holds the totals (`pending_events`, `pending_bytes`) and each
//! tenant's (`pending_events/<tenant>`, `pending_bytes/<tenant>`). All change in the commits
//! that add and finish deliveries, so they survive restarts like the rest of the queue.

use std::collections::HashMap;

use redb::{ReadableDatabase, ReadableTable};

use super::tables::Tables;
use super::{
    EventKey, META, ORDERED, QueueError, TASKS, decode_event, decode_task, decode_waiting, storage,
};

pub(super) const PENDING_EVENTS: &str = "pending_events";
pub(super) const PENDING_BYTES: &str = "pending_bytes";
/// Events removed before their retention to keep retained payloads under the bound.
pub(super) const EVICTED: &str = "evicted";
/// 1 once the counts were made for a queue written before they were kept.
const PENDING_COUNTED: &str = "pending_counted";

/// Events and payload bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Events.
    pub events: u64,
    /// Their payload bytes.
    pub bytes: u64,
}

impl Tally {
    fn add(&mut self, events: u64, bytes: u64) {
        self.events += events;
        self.bytes += bytes;
    }

    fn sub(&mut self, events: u64, bytes: u64) {
        self.events = self.events.saturating_sub(events);
        self.bytes = self.bytes.saturating_sub(bytes);
    }
}

/// The pending counts as one commit changes them: read from `meta` as needed, written back
/// at its end ([`PendingCounts::store`]).
#[derive(Default)]
pub(super) struct PendingCounts {
    /// Every tenant's.
    pub total: Tally,
    /// Per tenant, those read or changed in this commit.
    tenants: HashMap<String, Tally>,
}

impl PendingCounts {
    /// The totals as stored.
    pub fn load(tables: &Tables<'_, '_>) -> Result<Self, QueueError> {
        Ok(PendingCounts {
            total: Tally {
                events: read_meta(tables, PENDING_EVENTS)?,
                bytes: read_meta(tables, PENDING_BYTES)?,
            },
            tenants: HashMap::new(),
        })
    }

    /// `tenant`'s counts.
    pub fn tenant(&mut self, tables: &Tables<'_, '_>, tenant: &str) -> Result<Tally, QueueError> {
        if let Some(tally) = self.tenants.get(tenant) {
            return Ok(*tally);
        }
        let tally = Tally {
            events: read_meta(tables, &tenant_name(PENDING_EVENTS, tenant))?,
            bytes: read_meta(tables, &tenant_name(PENDING_BYTES, tenant))?,
        };
        self.tenants.insert(tenant.to_owned(), tally);
        Ok(tally)
    }

    /// Writes the counts back.
    pub fn store(self, tables: &mut Tables<'_, '_>) -> Result<(), QueueError> {
        tables.put_meta(PENDING_EVENTS, self.total.events)?;
        tables.put_meta(PENDING_BYTES, self.total.bytes)?;
        for (tenant, tally) in self.tenants {
            tables.put_meta(&tenant_name(PENDING_EVENTS, &tenant), tally.events)?;
            tables.put_meta(&tenant_name(PENDING_BYTES, &tenant), tally.bytes)?;
        }
        Ok(())
    }

    fn change(
        &mut self,
        tables: &Tables<'_, '_>,
        event: &EventKey,
        apply: impl Fn(&mut Tally),
    ) -> Result<(), QueueError> {
        apply(&mut self.total);
        self.tenant(tables, event.tenant())?;
        if let Some(tally) = self.tenants.get_mut(event.tenant()) {
            apply(tally);
        }
        Ok(())
    }

    /// `n` more deliveries of `event` (of `payload_bytes`) are to be made.
    pub fn add_deliveries(
        &mut self,
        tables: &mut Tables<'_, '_>,
        event: &EventKey,
        n: u32,
        payload_bytes: u64,
    ) -> Result<(), QueueError> {
        if n == 0 {
            return Ok(());
        }
        let left = match tables.unfinished(event)? {
            Some((left, _)) => left.saturating_add(n),
            None => {
                self.change(tables, event, |t| t.add(1, payload_bytes))?;
                n
            }
        };
        tables.put_unfinished(event, left, payload_bytes)
    }

    /// One delivery of `event` is finished; the event no longer counts once none is left.
    pub fn finish_delivery(
        &mut self,
        tables: &mut Tables<'_, '_>,
        event: &EventKey,
    ) -> Result<(), QueueError> {
        let Some((left, bytes)) = tables.unfinished(event)? else {
            return Ok(());
        };
        if left > 1 {
            return tables.put_unfinished(event, left - 1, bytes);
        }
        tables.remove_unfinished(event)?;
        self.change(tables, event, |t| t.sub(1, bytes))
    }

    /// `event` was removed from the queue (past retention): it no longer counts.
    pub fn forget(
        &mut self,
        tables: &mut Tables<'_, '_>,
        event: &EventKey,
    ) -> Result<(), QueueError> {
        let Some((_, bytes)) = tables.unfinished(event)? else {
            return Ok(());
        };
        tables.remove_unfinished(event)?;
        self.change(tables, event, |t| t.sub(1, bytes))
    }
}

fn tenant_name(counter: &str, tenant: &str) -> String {
    format!("{counter}/{tenant}")
}

fn read_meta(tables: &Tables<'_, '_>, name: &str) -> Result<u64, QueueError> {
    Ok(tables
        .meta
        .get(name)
        .map_err(storage)?
        .map_or(0, |v| v.value()))
}

/// An `unfinished` value: deliveries left (u32 LE) · payload bytes (u64 LE).
pub(super) fn encode_unfinished(left: u32, bytes: u64) -> [u8; 12] {
    let mut out = [0; 12];
    out[..4].copy_from_slice(&left.to_le_bytes());
    out[4..].copy_from_slice(&bytes.to_le_bytes());
    out
}

pub(super) fn decode_unfinished(value: &[u8]) -> Result<(u32, u64), QueueError> {
    let (left, rest) = value
        .split_first_chunk::<4>()
        .ok_or_else(|| storage("unfinished record truncated"))?;
    let bytes = rest
        .first_chunk::<8>()
        .ok_or_else(|| storage("unfinished record truncated"))?;
    Ok((u32::from_le_bytes(*left), u64::from_le_bytes(*bytes)))
}

/// Makes the counts of a queue written before they were kept, from its deliveries: once, in
/// one durable commit. Returns how many events have deliveries to make.
pub(super) fn count_once(db: &redb::Database) -> Result<u64, QueueError> {
    {
        let txn = db.begin_read().map_err(storage)?;
        let meta = txn.open_table(META).map_err(storage)?;
        if meta.get(PENDING_COUNTED).map_err(storage)?.is_some() {
            return Ok(0);
        }
    }
    // Every delivery to make: a task without an ordering key, or an `ordered` entry (a line's
    // head has both).
    let mut left: HashMap<String, u32> = HashMap::new();
    {
        let txn = db.begin_read().map_err(storage)?;
        let tasks = txn.open_table(TASKS).map_err(storage)?;
        for entry in tasks.iter().map_err(storage)? {
            let (key, value) = entry.map_err(storage)?;
            let task = decode_task(key.value(), value.value())?;
            if task.ordering_key.is_empty() {
                *left.entry(task.event.to_string()).or_default() += 1;
            }
        }
        let ordered = txn.open_table(ORDERED).map_err(storage)?;
        for entry in ordered.iter().map_err(storage)? {
            let (_, value) = entry.map_err(storage)?;
            let (_, event) = decode_waiting(value.value())?;
            *left.entry(event.to_string()).or_default() += 1;
        }
    }
    let txn = db.begin_write().map_err(storage)?;
    let counted;
    {
        let mut tables = Tables::open(&txn, None)?;
        let mut counts = PendingCounts::load(&tables)?;
        for (key, n) in left {
            let bytes = match tables.events.get(key.as_str()).map_err(storage)? {
                Some(value) => decode_event(value.value())?.2.payload.len() as u64,
                // Past retention: its deliveries will be skipped.
                None => continue,
            };
            counts.add_deliveries(&mut tables, &EventKey::stored(key), n, bytes)?;
        }
        counted = counts.total.events;
        counts.store(&mut tables)?;
        tables.put_meta(PENDING_COUNTED, 1)?;
    }
    txn.commit().map_err(storage)?;
    Ok(counted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unfinished_values_round_trip() {
        let value = encode_unfinished(3, 1 << 40);
        assert_eq!(decode_unfinished(&value).expect("decodes"), (3, 1 << 40));
        assert!(decode_unfinished(&value[..5]).is_err());
    }
}
