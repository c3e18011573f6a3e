//! The byte layout of the queue's records (see the table layout in [`super`]): an event with
//! when it was accepted and how many subscriptions it matched, a task, an `ordered` entry, a
//! bucket of the retention order.
//! The storage engine and the state machine both read and write them through these.

use herald_proto::v1 as pb;
use prost::Message;

use super::{EventKey, QueueError, Task, storage};

/// An `events` value: the event, when it was accepted (ms since the epoch) and how many
/// subscriptions it matched.
#[derive(Debug)]
pub(super) struct EventValue {
    pub accepted_ms: u64,
    pub matched: u32,
    pub event: pb::Event,
}

/// An `ordered` value: when the delivery was due (ms since the epoch), and its event.
#[derive(Debug)]
pub(super) struct WaitingValue {
    pub due: u64,
    pub event: EventKey,
}

/// An `events` value's bytes.
pub(super) fn encode_event(accepted_ms: u64, matched: u32, event: &pb::Event) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + event.encoded_len());
    out.extend_from_slice(&accepted_ms.to_le_bytes());
    out.extend_from_slice(&matched.to_le_bytes());
    event.encode(&mut out).expect("a Vec grows as needed");
    out
}

/// Reads an `events` value.
pub(super) fn decode_event(bytes: &[u8]) -> Result<EventValue, QueueError> {
    let (accepted, rest) = bytes
        .split_first_chunk::<8>()
        .ok_or_else(|| storage("event record truncated"))?;
    let (matched, rest) = rest
        .split_first_chunk::<4>()
        .ok_or_else(|| storage("event record truncated"))?;
    let event = pb::Event::decode(rest).map_err(storage)?;
    Ok(EventValue {
        accepted_ms: u64::from_le_bytes(*accepted),
        matched: u32::from_le_bytes(*matched),
        event,
    })
}

/// Separates a task's event key from its ordering key; event keys never contain it.
const KEY_SEPARATOR: u8 = 0;

/// A task's value: its attempts so far, its event and its ordering key.
pub(super) fn encode_task(attempts: u32, event: &EventKey, ordering_key: &str) -> Vec<u8> {
    let event = event.as_str();
    let mut out = Vec::with_capacity(5 + event.len() + ordering_key.len());
    out.extend_from_slice(&attempts.to_le_bytes());
    out.extend_from_slice(event.as_bytes());
    if !ordering_key.is_empty() {
        out.push(KEY_SEPARATOR);
        out.extend_from_slice(ordering_key.as_bytes());
    }
    out
}

/// Reads the task stored under `key` (lane, due ms, seq).
pub(super) fn decode_task(key: (&str, u64, u64), bytes: &[u8]) -> Result<Task, QueueError> {
    let (attempts, rest) = bytes
        .split_first_chunk::<4>()
        .ok_or_else(|| storage("task record truncated"))?;
    let (event_id, ordering_key) = match rest.iter().position(|b| *b == KEY_SEPARATOR) {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &[][..]),
    };
    let text = |bytes: &[u8]| {
        String::from_utf8(bytes.to_vec()).map_err(|_| storage("task record is not UTF-8"))
    };
    Ok(Task {
        subscription_id: key.0.to_owned(),
        due: key.1,
        seq: key.2,
        event: EventKey::stored(text(event_id)?),
        attempts: u32::from_le_bytes(*attempts),
        ordering_key: text(ordering_key)?,
    })
}

/// An `ordered` entry's value: when the delivery was due, and its event.
pub(super) fn encode_waiting(due: u64, event: &EventKey) -> Vec<u8> {
    let event = event.as_str();
    let mut out = Vec::with_capacity(8 + event.len());
    out.extend_from_slice(&due.to_le_bytes());
    out.extend_from_slice(event.as_bytes());
    out
}

/// Reads an `ordered` entry's value.
pub(super) fn decode_waiting(bytes: &[u8]) -> Result<WaitingValue, QueueError> {
    let (due, event) = bytes
        .split_first_chunk::<8>()
        .ok_or_else(|| storage("ordered record truncated"))?;
    let event =
        String::from_utf8(event.to_vec()).map_err(|_| storage("ordered record is not UTF-8"))?;
    Ok(WaitingValue {
        due: u64::from_le_bytes(*due),
        event: EventKey::stored(event),
    })
}

/// An `accepted_at` value: event keys, in order, each followed by [`KEY_SEPARATOR`].
pub(super) fn encode_bucket<'a>(keys: impl IntoIterator<Item = &'a str>) -> Vec<u8> {
    let mut out = Vec::new();
    for key in keys {
        out.extend_from_slice(key.as_bytes());
        out.push(KEY_SEPARATOR);
    }
    out
}

/// Reads an `accepted_at` value.
pub(super) fn decode_bucket(bytes: &[u8]) -> Result<Vec<&str>, QueueError> {
    bytes
        .split(|b| *b == KEY_SEPARATOR)
        .filter(|key| !key.is_empty())
        .map(|key| std::str::from_utf8(key).map_err(|_| storage("accepted record is not UTF-8")))
        .collect()
}
