//! The delivery state machine: what each kind of work does to the queue's tables. Accepting
//! events (dedup, the bounds on waiting work and each tenant's share of them, ordering-key
//! lines), finishing or rescheduling an attempt, replays, report acks, and the sweep of old
//! events. Every rule is a function of a [`View`] of one transaction, the time and the
//! counts of waiting work; the storage engine ([`super::writer`]) decides when and how the
//! changes become durable, and the model test drives these rules without a disk.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use herald_proto::convert::{duration, timestamp};
use herald_proto::v1 as pb;
use prost::Message;

use super::pending::{Pending, Tally};
use super::records::WaitingValue;
use super::view::View;
use super::{
    Accepted, EventKey, FastMap, FastSet, META_BYTES, META_EVENTS, META_EVICTED, META_OUTBOX_BYTES,
    META_SEQ, NewEvent, Next, QueueConfig, QueueError, Replay, StoredEvent, Task, decode_waiting,
    encode_event, encode_task, encode_waiting,
};
use herald_core::error_kind::ErrorKind;

/// Events removed by one sweep at most, so a sweep never makes one huge commit.
pub(super) const SWEEP_BATCH: usize = 10_000;

/// One piece of work for the state machine.
pub(super) enum Work {
    /// Store events and their deliveries.
    Accept(Vec<NewEvent>),
    /// Finish or reschedule an attempted task and add its report to the outbox.
    Complete {
        task: Task,
        next: Next,
        report: Box<pb::Attempt>,
    },
    /// Drop acknowledged reports `first..=last`.
    AckReports { first: u64, last: u64 },
    /// Queue deliveries of stored events again.
    Replay(Vec<Replay>),
    /// Drop events past retention, and kept events past their byte bound.
    Sweep,
    /// Nothing (a flush: only the commit matters).
    Nothing,
}

impl Work {
    /// Whether a crash may undo this work safely once done, so no caller waits for it to be
    /// durable: an attempt's outcome (the attempt is made again) or a report ack (the report
    /// is sent again).
    pub fn may_be_undone(&self) -> bool {
        matches!(self, Work::Complete { .. } | Work::AckReports { .. })
    }

    /// Whether this work adds deliveries to make (new events, replays): refused while the
    /// disk is below its margin, which is kept for finishing the work already taken.
    pub fn adds_deliveries(&self) -> bool {
        matches!(self, Work::Accept(_) | Work::Replay(_))
    }
}

/// What one piece of work produced, for its caller.
pub(super) enum Done {
    Accepted(Result<Vec<Accepted>, QueueError>),
    Replayed(Vec<Result<(), String>>),
    Swept(u64),
    Nothing,
}

/// A task's place in the lanes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Placed {
    /// Its lane (subscription).
    pub lane: String,
    /// When it is due (ms).
    pub due: u64,
    /// Its sequence number.
    pub seq: u64,
}

impl Placed {
    /// Where `task` is.
    pub fn of(task: &Task) -> Self {
        Placed {
            lane: task.subscription_id.clone(),
            due: task.due,
            seq: task.seq,
        }
    }
}

/// What a group of work changed besides the tables, for the engine to act on once the
/// commit is done.
#[derive(Default)]
pub(super) struct Effects {
    /// One per piece of work, in order.
    pub outcomes: Vec<Done>,
    /// Tasks added to the lanes.
    pub added: Vec<Placed>,
    /// Events stored, with how many deliveries each has ([`super::recent`]).
    pub accepted: Vec<(Arc<StoredEvent>, u32)>,
    /// Events removed.
    pub removed: Vec<EventKey>,
    /// Deliveries to parked subscriptions not kept: past `max_parked_deliveries`.
    pub parked_dropped: u64,
    /// Reports that joined the outbox without the request they sent: keeping it would have
    /// taken the outbox past half of `max_pending_report_bytes`.
    pub requests_dropped: u64,
}

/// Counters kept in `meta`, and the waiting work this group changes.
struct Counters<'p> {
    seq: u64,
    /// Events stored, delivered or not, and their payload bytes.
    events: u64,
    bytes: u64,
    /// Delivered events removed before their retention, to bound what is kept.
    evicted: u64,
    /// The bytes of the reports in the outbox.
    outbox_bytes: u64,
    /// The events with deliveries to make ([`super::pending`]).
    pending: &'p mut Pending,
}

/// Applies a group's work to `view` at `now` (ms), noting what it did in `effects`, and
/// returns the last sequence number used. An error is a storage failure: the whole group is
/// then abandoned (and `pending` rolled back by the caller).
pub(super) fn apply(
    view: &mut impl View,
    config: &QueueConfig,
    now: u64,
    works: Vec<Work>,
    pending: &mut Pending,
    effects: &mut Effects,
) -> Result<u64, QueueError> {
    let mut counters = Counters {
        seq: view.meta(META_SEQ)?,
        events: view.meta(META_EVENTS)?,
        bytes: view.meta(META_BYTES)?,
        evicted: view.meta(META_EVICTED)?,
        outbox_bytes: view.meta(META_OUTBOX_BYTES)?,
        pending,
    };
    let evicted_before = counters.evicted;
    let outbox_bytes_before = counters.outbox_bytes;
    for work in works {
        let done = match work {
            Work::Accept(new) => {
                Done::Accepted(accept(view, &mut counters, config, now, new, effects)?)
            }
            Work::Complete { task, next, report } => {
                complete(view, &mut counters, config, task, next, *report, effects)?;
                Done::Nothing
            }
            Work::Replay(items) => {
                Done::Replayed(replay(view, &mut counters, now, items, effects)?)
            }
            Work::AckReports { first, last } => {
                let removed = view.remove_reports(first, last)?;
                counters.outbox_bytes = counters.outbox_bytes.saturating_sub(removed);
                Done::Nothing
            }
            Work::Sweep => Done::Swept(sweep(view, &mut counters, config, now, effects)?),
            Work::Nothing => Done::Nothing,
        };
        effects.outcomes.push(done);
    }
    view.put_meta(META_SEQ, counters.seq)?;
    view.put_meta(META_EVENTS, counters.events)?;
    view.put_meta(META_BYTES, counters.bytes)?;
    if counters.evicted != evicted_before {
        view.put_meta(META_EVICTED, counters.evicted)?;
    }
    if counters.outbox_bytes != outbox_bytes_before {
        view.put_meta(META_OUTBOX_BYTES, counters.outbox_bytes)?;
    }
    Ok(counters.seq)
}

/// Records an attempt's outcome: the task goes, and comes back later for a retry; a finished
/// head of an ordering line hands its turn to the next delivery. The report joins the outbox.
fn complete(
    view: &mut impl View,
    counters: &mut Counters<'_>,
    config: &QueueConfig,
    task: Task,
    next: Next,
    mut report: pb::Attempt,
    effects: &mut Effects,
) -> Result<(), QueueError> {
    view.remove_task(task.key())?;
    match next {
        Next::RetryAt(due) => {
            counters.seq += 1;
            let value = encode_task(task.attempts + 1, &task.event, &task.ordering_key);
            view.put_task((task.subscription_id.as_str(), due, counters.seq), &value)?;
            effects.added.push(Placed {
                lane: task.subscription_id,
                due,
                seq: counters.seq,
            });
        }
        Next::Done => {
            counters.pending.finish_delivery(&task.event);
            counters.pending.finish_delivery_to(&task.subscription_id);
            if !task.ordering_key.is_empty()
                && let Some(placed) = next_in_order(view, &task)?
            {
                effects.added.push(placed);
            }
        }
    }
    let mut value = report.encode_to_vec();
    if report.request.is_some()
        && counters.outbox_bytes + value.len() as u64 > config.max_pending_report_bytes / 2
    {
        // The copy of the request is for the log, not for delivery: past half of the bound
        // it is not kept, so the attempts themselves still have room.
        report.request = None;
        value = report.encode_to_vec();
        effects.requests_dropped += 1;
    }
    put_report(view, counters, &value)
}

/// Adds a report to the outbox, counting its bytes.
fn put_report(
    view: &mut impl View,
    counters: &mut Counters<'_>,
    value: &[u8],
) -> Result<(), QueueError> {
    counters.seq += 1;
    counters.outbox_bytes += value.len() as u64;
    view.put_report(counters.seq, value)
}

/// Queues deliveries of stored events again, due now, outside any ordering line (a replay
/// is sent on its own). One result per item: queued, or why not.
fn replay(
    view: &mut impl View,
    counters: &mut Counters<'_>,
    now: u64,
    items: Vec<Replay>,
    effects: &mut Effects,
) -> Result<Vec<Result<(), String>>, QueueError> {
    let mut results = Vec::with_capacity(items.len());
    for item in items {
        let Some(stored) = view.event(item.event.as_str())? else {
            results.push(Err("the event is past retention on this agent".into()));
            continue;
        };
        counters
            .pending
            .add_deliveries(&item.event, 1, stored.payload_bytes);
        counters.pending.add_delivery_to(&item.subscription_id);
        counters.seq += 1;
        let value = encode_task(item.attempts_made, &item.event, "");
        view.put_task((item.subscription_id.as_str(), now, counters.seq), &value)?;
        effects.added.push(Placed {
            lane: item.subscription_id,
            due: now,
            seq: counters.seq,
        });
        results.push(Ok(()));
    }
    Ok(results)
}

/// Adds a first-attempt delivery of `event` to `subscription`, due at `due`. With an
/// ordering key it joins the key's line in `ordered`, and gets a task in `lanes` only at its
/// head. Returns whether it got a task now.
fn add_delivery(
    view: &mut impl View,
    subscription: &str,
    due: u64,
    seq: u64,
    event: &EventKey,
    ordering_key: &str,
) -> Result<bool, QueueError> {
    if !ordering_key.is_empty() {
        let mut waiting = false;
        view.each_ordered(subscription, ordering_key, &mut |_, _| {
            waiting = true;
            Ok(false)
        })?;
        view.put_ordered(
            (subscription, ordering_key, seq),
            &encode_waiting(due, event),
        )?;
        if waiting {
            return Ok(false);
        }
    }
    view.put_task(
        (subscription, due, seq),
        &encode_task(0, event, ordering_key),
    )?;
    Ok(true)
}

/// `task`, the head of its ordering key's line, is finished: it leaves the line, and the next
/// delivery in it (if any) gets its task, which is returned.
fn next_in_order(view: &mut impl View, task: &Task) -> Result<Option<Placed>, QueueError> {
    let (sub, key) = (task.subscription_id.as_str(), task.ordering_key.as_str());
    // The line's entries: (seq, what waits).
    let mut line: Vec<(u64, WaitingValue)> = Vec::new();
    view.each_ordered(sub, key, &mut |seq, value| {
        line.push((seq, decode_waiting(value)?));
        // The head and the one after it are all this needs (the head is normally first).
        Ok(line.len() < 2 || !line.iter().any(|(_, waiting)| waiting.event == task.event))
    })?;
    let Some(at) = line
        .iter()
        .position(|(_, waiting)| waiting.event == task.event)
    else {
        // Not in the line (written before ordering keys were kept): nothing waits on it.
        return Ok(None);
    };
    let (head_seq, _) = line.remove(at);
    view.remove_ordered((sub, key, head_seq))?;
    let Some((seq, WaitingValue { due, event })) = line.into_iter().next() else {
        return Ok(None);
    };
    view.put_task((sub, due, seq), &encode_task(0, &event, key))?;
    Ok(Some(Placed {
        lane: sub.to_owned(),
        due,
        seq,
    }))
}

/// Stores one request's events (all or nothing). The outer error is a storage failure (aborts
/// the group); the inner one a refusal of this request only.
fn accept(
    view: &mut impl View,
    counters: &mut Counters<'_>,
    config: &QueueConfig,
    now: u64,
    new: Vec<NewEvent>,
    effects: &mut Effects,
) -> Result<Result<Vec<Accepted>, QueueError>, QueueError> {
    let window = u64::try_from(config.dedup_window.as_millis()).unwrap_or(u64::MAX);
    // First pass, read-only: duplicates, and whether the rest fits.
    let mut answers = Vec::with_capacity(new.len());
    let mut replaced = Vec::new();
    let (mut add_events, mut add_bytes) = (0u64, 0u64);
    // Ids are unique per tenant: another tenant's event of the same id is another event.
    let keys: Vec<EventKey> = new.iter().map(|item| EventKey::of(&item.event)).collect();
    // The first answer for each event in this request; a repeat gets the same one.
    let mut first_answer: FastMap<&EventKey, Option<Accepted>> = FastMap::default();
    for (item, id) in new.iter().zip(&keys) {
        if let Some(first) = first_answer.get(id) {
            answers.push(*first);
            continue;
        }
        // An id is taken while its event is within the dedup window, and while deliveries of
        // it are still to be made (the receivers would see the same webhook-id again, and
        // those deliveries must never send another payload).
        let taken = counters.pending.is_waiting(id);
        let earlier = match view.event(id.as_str())? {
            Some(old) if taken || now.saturating_sub(old.accepted_ms) < window => Some(old.matched),
            // Swept past retention with deliveries still to skip.
            None if taken => Some(0),
            // Seen long ago: replaced by this one.
            Some(old) => {
                replaced.push((old.accepted_ms, id.clone(), old.payload_bytes));
                None
            }
            None => None,
        };
        if let Some(matched) = earlier {
            let duplicate = Some(Accepted {
                matched,
                duplicate: true,
            });
            first_answer.insert(id, duplicate);
            answers.push(duplicate);
            continue;
        }
        first_answer.insert(id, None);
        answers.push(None);
        add_events += 1;
        add_bytes += item.event.payload.len() as u64;
    }
    let freed_events = replaced.len() as u64;
    let freed_bytes: u64 = replaced.iter().map(|(_, _, b)| b).sum();
    let events_after = counters.events + add_events - freed_events;
    let bytes_after = counters.bytes + add_bytes - freed_bytes;
    // The bounds count work waiting: the new events that have deliveries to make.
    let mut waiting = Tally::default();
    let mut by_tenant: BTreeMap<&str, Tally> = BTreeMap::new();
    let mut counted = FastSet::default();
    for ((item, answer), key) in new.iter().zip(&answers).zip(&keys) {
        if answer.is_some() || item.subscriptions.is_empty() || !counted.insert(key) {
            continue;
        }
        let bytes = item.event.payload.len() as u64;
        waiting.events += 1;
        waiting.bytes += bytes;
        let tally = by_tenant.entry(item.event.tenant.as_str()).or_default();
        tally.events += 1;
        tally.bytes += bytes;
    }
    if let Some(refusal) = over_bounds(counters.pending, config, waiting, &by_tenant) {
        return Ok(Err(refusal));
    }
    if waiting.events > 0 {
        // Each delivery adds a report; while the control plane acknowledges none (it is
        // unreachable), the outbox is bounded by refusing new work.
        let reports = view.pending_reports()?;
        if reports >= config.max_pending_reports {
            return Ok(Err(QueueError::Full(format!(
                "{reports} attempt reports wait for the control plane to acknowledge them, limit {}",
                config.max_pending_reports
            ))));
        }
        if counters.outbox_bytes >= config.max_pending_report_bytes {
            return Ok(Err(QueueError::Full(format!(
                "{} bytes of attempt reports wait for the control plane to acknowledge them, \
                 limit {} (--max-pending-report-bytes)",
                counters.outbox_bytes, config.max_pending_report_bytes
            ))));
        }
    }
    // Second pass: write.
    for (accepted_ms, id, _) in &replaced {
        view.remove_accepted(*accepted_ms, id.as_str())?;
    }
    let mut written = FastMap::default();
    let mut out = Vec::with_capacity(new.len());
    for ((item, answer), id) in new.into_iter().zip(answers).zip(keys.iter()) {
        if let Some(answer) = answer {
            out.push(answer);
            continue;
        }
        if let Some(&matched) = written.get(id) {
            // The same id twice in one request: the second is a duplicate of the first.
            out.push(Accepted {
                matched,
                duplicate: true,
            });
            continue;
        }
        let matched = u32::try_from(item.subscriptions.len()).unwrap_or(u32::MAX);
        view.put_event(id.as_str(), &encode_event(now, matched, &item.event))?;
        view.put_accepted(now, id.as_str())?;
        let mut deliveries = 0;
        for subscription in &item.subscriptions {
            if item.parked.contains(subscription)
                && counters.pending.deliveries_to(subscription) >= config.max_parked_deliveries
            {
                // A disabled subscription holds its share of parked deliveries: this one is
                // not kept, and the central log says so.
                let report = parked_full(&item.event, subscription, now, config);
                put_report(view, counters, &report.encode_to_vec())?;
                effects.parked_dropped += 1;
                continue;
            }
            counters.seq += 1;
            deliveries += 1;
            counters.pending.add_delivery_to(subscription);
            let key = item.event.ordering_key.as_str();
            if add_delivery(view, subscription, now, counters.seq, id, key)? {
                effects.added.push(Placed {
                    lane: subscription.clone(),
                    due: now,
                    seq: counters.seq,
                });
            }
        }
        counters
            .pending
            .add_deliveries(id, deliveries, item.event.payload.len() as u64);
        written.insert(id, matched);
        let stored = StoredEvent {
            event: item.event,
            accepted_ms: now,
        };
        effects.accepted.push((Arc::new(stored), deliveries));
        out.push(Accepted {
            matched,
            duplicate: false,
        });
    }
    counters.events = events_after;
    counters.bytes = bytes_after;
    Ok(Ok(out))
}

/// The report of a delivery to a parked subscription that was not kept: it holds
/// `max_parked_deliveries` already.
fn parked_full(
    event: &pb::Event,
    subscription: &str,
    now: u64,
    config: &QueueConfig,
) -> pb::Attempt {
    pb::Attempt {
        event_id: event.id.clone(),
        subscription_id: subscription.to_owned(),
        tenant: event.tenant.clone(),
        event_type: event.r#type.clone(),
        attempt: 1,
        started_at: Some(timestamp(UNIX_EPOCH + Duration::from_millis(now))),
        duration: Some(duration(Duration::ZERO)),
        error_kind: ErrorKind::Skipped.as_str().to_owned(),
        error: format!(
            "the subscription is disabled and {} of its deliveries are parked already \
             (--max-parked-deliveries): this one was not kept",
            config.max_parked_deliveries
        ),
        outcome: pb::Outcome::Skipped as i32,
        ..Default::default()
    }
}

/// Why `waiting` more events (`by_tenant`) would not fit the bounds on work waiting, if they
/// would not: the queue's, or a tenant's share of it.
fn over_bounds(
    pending: &Pending,
    config: &QueueConfig,
    waiting: Tally,
    by_tenant: &BTreeMap<&str, Tally>,
) -> Option<QueueError> {
    if waiting.events == 0 {
        return None;
    }
    let total = pending.total();
    if total.events + waiting.events > config.max_events {
        return Some(QueueError::Full(format!(
            "{} events are waiting for delivery, limit {}",
            total.events, config.max_events
        )));
    }
    if total.bytes + waiting.bytes > config.max_bytes {
        return Some(QueueError::Full(format!(
            "{} payload bytes are waiting for delivery, limit {}",
            total.bytes, config.max_bytes
        )));
    }
    let (share_events, share_bytes) = (
        share_of(config.max_events, config.max_share),
        share_of(config.max_bytes, config.max_share),
    );
    for (tenant, adds) in by_tenant {
        let held = pending.tenant(tenant);
        if held.events + adds.events > share_events {
            return Some(QueueError::Full(format!(
                "tenant {tenant} has {} events waiting for delivery, its share of the limit is {share_events}",
                held.events
            )));
        }
        if held.bytes + adds.bytes > share_bytes {
            return Some(QueueError::Full(format!(
                "tenant {tenant} has {} payload bytes waiting for delivery, its share of the limit is {share_bytes}",
                held.bytes
            )));
        }
    }
    None
}

/// `share` (0 to 1) of `limit`, at least 1.
fn share_of(limit: u64, share: f64) -> u64 {
    ((limit as f64 * share.clamp(0.0, 1.0)).floor() as u64).max(1)
}

/// Removes up to [`SWEEP_BATCH`] events accepted before the retention period (and the dedup
/// window), then kept events past their byte bound ([`evict`]). Returns how many went.
fn sweep(
    view: &mut impl View,
    counters: &mut Counters<'_>,
    config: &QueueConfig,
    now: u64,
    effects: &mut Effects,
) -> Result<u64, QueueError> {
    let keep = config
        .retention
        .max(config.dedup_window)
        .max(Duration::from_millis(1));
    let cutoff = now.saturating_sub(u64::try_from(keep.as_millis()).unwrap_or(u64::MAX));
    let mut old = Vec::new();
    view.each_accepted(cutoff, &mut |at, id| {
        old.push((at, id.to_owned()));
        Ok(old.len() < SWEEP_BATCH)
    })?;
    for (at, id) in &old {
        view.remove_accepted(*at, id)?;
        // Only the record this entry names: a later event of the same id has its own entry.
        if let Some(stored) = view.event(id)?.filter(|stored| stored.accepted_ms == *at) {
            let key = EventKey::stored(id.clone());
            view.remove_event(id)?;
            counters.pending.forget(&key);
            effects.removed.push(key);
            counters.events = counters.events.saturating_sub(1);
            counters.bytes = counters.bytes.saturating_sub(stored.payload_bytes);
        }
    }
    Ok(old.len() as u64 + evict(view, counters, config, effects)?)
}

/// Removes the oldest delivered events while those kept (for replay and duplicate detection)
/// hold more than `max_retained_bytes`, at most [`SWEEP_BATCH`]; events with deliveries to
/// make stay. Returns how many went.
fn evict(
    view: &mut impl View,
    counters: &mut Counters<'_>,
    config: &QueueConfig,
    effects: &mut Effects,
) -> Result<u64, QueueError> {
    let mut retained = counters
        .bytes
        .saturating_sub(counters.pending.total().bytes);
    if retained <= config.max_retained_bytes {
        return Ok(0);
    }
    let mut victims = Vec::new();
    let mut stale = Vec::new();
    let read = &*view;
    read.each_accepted(u64::MAX, &mut |at, id| {
        if retained <= config.max_retained_bytes {
            return Ok(false);
        }
        let event = EventKey::stored(id.to_owned());
        if counters.pending.is_waiting(&event) {
            return Ok(true);
        }
        // Only the record this entry names; an entry without one goes alone.
        match read.event(id)?.filter(|stored| stored.accepted_ms == at) {
            Some(stored) => {
                retained = retained.saturating_sub(stored.payload_bytes);
                victims.push((at, event, stored.payload_bytes));
            }
            None => stale.push((at, event)),
        }
        Ok(victims.len() + stale.len() < SWEEP_BATCH)
    })?;
    for (at, event) in &stale {
        view.remove_accepted(*at, event.as_str())?;
    }
    for (at, event, bytes) in &victims {
        view.remove_accepted(*at, event.as_str())?;
        view.remove_event(event.as_str())?;
        effects.removed.push(event.clone());
        counters.events = counters.events.saturating_sub(1);
        counters.bytes = counters.bytes.saturating_sub(*bytes);
        counters.evicted += 1;
    }
    if !victims.is_empty() {
        tracing::info!(
            events = victims.len(),
            limit = config.max_retained_bytes,
            "delivered events removed before their retention: the kept ones reached --max-retained-bytes"
        );
    }
    Ok(victims.len() as u64)
}

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
