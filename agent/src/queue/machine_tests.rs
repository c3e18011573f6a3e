//! The delivery state machine against a model, without a disk: random groups of work on a
//! [`MemoryView`] with an injected clock, some of them abandoned as by a failed commit, and
//! after each group the rules that must hold between the tables, the counts of waiting work
//! and what was acknowledged.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use herald_proto::v1 as pb;

use super::*;
use crate::queue::pending::{Pending, Tally};
use crate::queue::tests::Rng;
use crate::queue::view::{EventRecord, MemoryView, View};
use crate::queue::{EventKey, NewEvent, Next, QueueConfig, QueueError, Replay, Task};
use crate::queue::{decode_task, decode_waiting};

/// The subscription that is disabled throughout.
const PARKED: &str = "sub_2";

fn config() -> QueueConfig {
    QueueConfig {
        max_events: 24,
        max_bytes: 24 * 40,
        max_share: 0.75,
        max_retained_bytes: 300,
        min_free_bytes: 0,
        recover_truncate: false,
        max_pending_reports: 60,
        // The byte bound is tested on the queue ([`super::tests`]); here only its count.
        max_pending_report_bytes: u64::MAX,
        max_parked_deliveries: 3,
        cache_bytes: crate::queue::DEFAULT_CACHE_BYTES,
        retention: Duration::from_millis(2_000),
        dedup_window: Duration::from_millis(800),
        durable: true,
        durable_lag: Duration::from_millis(50),
        checkpoint_every: Duration::from_secs(1),
    }
}

/// What the model knows: the deliveries still to make and the reports not acknowledged.
#[derive(Clone, Default)]
struct Model {
    /// (event, subscription) → deliveries still to make (a replay can add a second).
    deliveries: BTreeMap<(EventKey, String), u32>,
    /// Events acknowledged as new and still stored: when they were accepted, and matched.
    stored: HashMap<EventKey, (u64, u32)>,
    /// Reports in the outbox.
    reports: u64,
}

/// Every task in the view.
fn tasks(view: &MemoryView) -> Vec<Task> {
    view.tasks
        .iter()
        .map(|((lane, due, seq), value)| decode_task((lane, *due, *seq), value).expect("task"))
        .collect()
}

/// The waiting work counted from the tables, as [`Pending::count`] does from the file.
fn recount(view: &MemoryView) -> (Tally, BTreeMap<String, Tally>) {
    let mut left: BTreeMap<EventKey, u32> = BTreeMap::new();
    for task in tasks(view) {
        if task.ordering_key.is_empty() {
            *left.entry(task.event).or_default() += 1;
        }
    }
    for value in view.ordered.values() {
        *left
            .entry(decode_waiting(value).expect("ordered").event)
            .or_default() += 1;
    }
    let mut total = Tally::default();
    let mut tenants: BTreeMap<String, Tally> = BTreeMap::new();
    for event in left.keys() {
        let Some(record) = view.event(event.as_str()).expect("read") else {
            continue;
        };
        total.events += 1;
        total.bytes += record.payload_bytes;
        let tenant = tenants.entry(event.tenant().to_owned()).or_default();
        tenant.events += 1;
        tenant.bytes += record.payload_bytes;
    }
    (total, tenants)
}

/// The rules that hold between the tables, the counts and the model after every group.
fn check(view: &MemoryView, pending: &Pending, model: &Model, at: &str) {
    // The counts of waiting work are the tables' deliveries, in total and per tenant.
    let (total, tenants) = recount(view);
    assert_eq!(pending.total(), total, "{at}: waiting work");
    for (tenant, tally) in &tenants {
        assert_eq!(pending.tenant(tenant), *tally, "{at}: tenant {tenant}");
    }
    // The counters of stored events are the events table's.
    let records: Vec<EventRecord> = view
        .events
        .values()
        .map(|value| EventRecord::decode(value).expect("event"))
        .collect();
    assert_eq!(
        view.meta(META_EVENTS).unwrap(),
        records.len() as u64,
        "{at}"
    );
    let bytes: u64 = records.iter().map(|r| r.payload_bytes).sum();
    assert_eq!(view.meta(META_BYTES).unwrap(), bytes, "{at}");
    // The retention order holds each stored event once, at its acceptance time.
    assert_eq!(
        view.accepted.len(),
        view.events.len(),
        "{at}: retention order"
    );
    for (at_ms, id) in view.accepted.keys() {
        let record = view.event(id).unwrap().expect("indexed events are stored");
        assert_eq!(record.accepted_ms, *at_ms, "{at}: {id}");
    }
    // Each ordering line has one task: its head's.
    let mut lines: BTreeMap<(String, String), Vec<EventKey>> = BTreeMap::new();
    for ((sub, key, _), value) in &view.ordered {
        let event = decode_waiting(value).expect("ordered").event;
        lines
            .entry((sub.clone(), key.clone()))
            .or_default()
            .push(event);
    }
    let mut ordered_tasks: BTreeMap<(String, String), Vec<EventKey>> = BTreeMap::new();
    for task in tasks(view) {
        if !task.ordering_key.is_empty() {
            ordered_tasks
                .entry((task.subscription_id, task.ordering_key))
                .or_default()
                .push(task.event);
        }
    }
    for (line, events) in &lines {
        assert_eq!(
            ordered_tasks.get(line),
            Some(&vec![events[0].clone()]),
            "{at}: line {line:?} has one task, its head's"
        );
    }
    assert_eq!(
        ordered_tasks.len(),
        lines.len(),
        "{at}: no task outside a line"
    );
    // The deliveries to make are the model's: none lost, none made up.
    let mut found: BTreeMap<(EventKey, String), u32> = BTreeMap::new();
    for task in tasks(view) {
        if task.ordering_key.is_empty() {
            *found.entry((task.event, task.subscription_id)).or_default() += 1;
        }
    }
    for ((sub, _, _), value) in &view.ordered {
        let event = decode_waiting(value).expect("ordered").event;
        *found.entry((event, sub.clone())).or_default() += 1;
    }
    assert_eq!(found, model.deliveries, "{at}: deliveries to make");
    for sub in ["sub_0", "sub_1", PARKED] {
        let held: u32 = found
            .iter()
            .filter(|((_, s), _)| s == sub)
            .map(|(_, n)| n)
            .sum();
        assert_eq!(pending.deliveries_to(sub), u64::from(held), "{at}: {sub}");
    }
    assert_eq!(view.outbox.len() as u64, model.reports, "{at}: outbox");
    // The outbox's byte count is its reports' bytes.
    let outbox_bytes: u64 = view.outbox.values().map(|v| v.len() as u64).sum();
    assert_eq!(
        view.meta(META_OUTBOX_BYTES).unwrap(),
        outbox_bytes,
        "{at}: outbox bytes"
    );
}

/// A random request of one to three events from a small pool of ids in two tenants.
fn request(rng: &mut Rng) -> Vec<NewEvent> {
    (0..=rng.below(3))
        .map(|_| {
            let tenant = ["shop-a", "shop-b"][rng.below(2) as usize];
            let ordering_key = match rng.below(4) {
                0 => "cart-1",
                1 => "cart-2",
                _ => "",
            };
            NewEvent {
                event: pb::Event {
                    id: format!("evt_{}", rng.below(30)),
                    tenant: tenant.into(),
                    r#type: "order.created".into(),
                    payload: vec![b'x'; 10 + rng.below(30) as usize],
                    ordering_key: ordering_key.into(),
                    ..Default::default()
                },
                subscriptions: (0..3)
                    .filter(|_| rng.below(2) == 0)
                    .map(|s| format!("sub_{s}"))
                    .collect(),
                // sub_2 is disabled: its deliveries are parked, a few at most.
                parked: vec![PARKED.to_owned()],
            }
        })
        .collect()
}

/// What the model expects of a group's work once it is committed.
enum Expect {
    Accept(Vec<NewEvent>),
    Complete(Task, Next),
    Replay(Vec<Replay>),
    Ack(u64),
    Sweep,
}

/// One random piece of work on the current tables, and what the model expects of it.
fn random_work(rng: &mut Rng, view: &MemoryView, now: u64) -> Option<(Work, Expect)> {
    Some(match rng.below(10) {
        0..=3 => {
            let new = request(rng);
            (Work::Accept(new.clone()), Expect::Accept(new))
        }
        4..=6 => {
            let all = tasks(view);
            let task = all
                .get(rng.below(all.len().max(1) as u64) as usize)?
                .clone();
            let next = if rng.below(3) == 0 {
                Next::RetryAt(now + rng.below(300))
            } else {
                Next::Done
            };
            let work = Work::Complete {
                task: task.clone(),
                next,
                report: Box::default(),
            };
            (work, Expect::Complete(task, next))
        }
        7 => {
            let ids: Vec<&String> = view.events.keys().collect();
            let id = ids.get(rng.below(ids.len().max(1) as u64) as usize)?;
            let items = vec![Replay {
                event: EventKey::stored((*id).clone()),
                subscription_id: format!("sub_{}", rng.below(3)),
                attempts_made: 1,
            }];
            (Work::Replay(items.clone()), Expect::Replay(items))
        }
        8 => {
            let first = *view.outbox.keys().next()?;
            let last = *view
                .outbox
                .keys()
                .nth(rng.below(4) as usize)
                .unwrap_or(&first);
            let acked = view.outbox.range(first..=last).count() as u64;
            (Work::AckReports { first, last }, Expect::Ack(acked))
        }
        _ => (Work::Sweep, Expect::Sweep),
    })
}

/// Brings the model up to date with a committed piece of work and its answer.
/// The state a piece of work was answered in.
struct Answered<'a> {
    view: &'a MemoryView,
    pending: &'a Pending,
    now: u64,
    at: &'a str,
}

fn expect(model: &mut Model, expected: Expect, done: &Done, answered: &Answered<'_>) {
    let Answered {
        view,
        pending,
        now,
        at,
    } = *answered;
    match (expected, done) {
        (Expect::Accept(new), Done::Accepted(Ok(answers))) => {
            if answers.iter().any(|a| !a.duplicate && a.matched > 0) {
                // New events never take the waiting work past its bounds (a replay, which an
                // operator asks for, may).
                let config = config();
                assert!(pending.total().events <= config.max_events, "{at}");
                assert!(pending.total().bytes <= config.max_bytes, "{at}");
            }
            let window = config().dedup_window.as_millis() as u64;
            let mut seen: HashMap<EventKey, u32> = HashMap::new();
            for (item, answer) in new.iter().zip(answers) {
                let key = EventKey::of(&item.event);
                if let Some(&matched) = seen.get(&key) {
                    assert!(answer.duplicate, "{at}: a repeat within the request");
                    assert_eq!(answer.matched, matched, "{at}");
                    continue;
                }
                let waiting = model.deliveries.keys().any(|(event, _)| *event == key);
                match model.stored.get(&key) {
                    Some(&(accepted, matched)) if waiting || now - accepted < window => {
                        assert!(answer.duplicate, "{at}: {key} within the dedup window");
                        assert_eq!(answer.matched, matched, "{at}");
                    }
                    None if waiting => {
                        assert!(answer.duplicate, "{at}: {key} has deliveries to skip");
                        assert_eq!(answer.matched, 0, "{at}");
                    }
                    _ => {
                        assert!(!answer.duplicate, "{at}: {key} is new");
                        model.stored.insert(key.clone(), (now, answer.matched));
                        for sub in &item.subscriptions {
                            let held: u32 = model
                                .deliveries
                                .iter()
                                .filter(|((_, s), _)| s == sub)
                                .map(|(_, n)| n)
                                .sum();
                            if sub == PARKED && u64::from(held) >= config().max_parked_deliveries {
                                // Not kept: reported as skipped.
                                model.reports += 1;
                                continue;
                            }
                            *model
                                .deliveries
                                .entry((key.clone(), sub.clone()))
                                .or_default() += 1;
                        }
                    }
                }
                seen.insert(key, answer.matched);
            }
        }
        (Expect::Accept(new), Done::Accepted(Err(QueueError::Full(_)))) => {
            // Refused only when the new waiting work would pass a bound.
            let config = config();
            let mut adds: BTreeMap<&str, Tally> = BTreeMap::new();
            let mut firsts = std::collections::HashSet::new();
            for item in &new {
                let key = EventKey::of(&item.event);
                let window = config.dedup_window.as_millis() as u64;
                let waiting = model.deliveries.keys().any(|(event, _)| *event == key);
                let duplicate = waiting
                    || model
                        .stored
                        .get(&key)
                        .is_some_and(|&(accepted, _)| now - accepted < window);
                if duplicate || item.subscriptions.is_empty() || !firsts.insert(key) {
                    continue;
                }
                let tally = adds.entry(item.event.tenant.as_str()).or_default();
                tally.events += 1;
                tally.bytes += item.event.payload.len() as u64;
            }
            let total = pending.total();
            let share = |limit: u64| ((limit as f64 * config.max_share) as u64).max(1);
            let new_events: u64 = adds.values().map(|t| t.events).sum();
            let new_bytes: u64 = adds.values().map(|t| t.bytes).sum();
            let over = total.events + new_events > config.max_events
                || total.bytes + new_bytes > config.max_bytes
                || adds.iter().any(|(tenant, add)| {
                    let held = pending.tenant(tenant);
                    held.events + add.events > share(config.max_events)
                        || held.bytes + add.bytes > share(config.max_bytes)
                })
                || (new_events > 0 && model.reports >= config.max_pending_reports);
            assert!(over, "{at}: refused although it fits");
        }
        (Expect::Complete(task, next), Done::Nothing) => {
            model.reports += 1;
            if next == Next::Done {
                let key = (task.event.clone(), task.subscription_id.clone());
                let left = model
                    .deliveries
                    .get_mut(&key)
                    .expect("a delivery to finish");
                *left -= 1;
                if *left == 0 {
                    model.deliveries.remove(&key);
                }
            }
        }
        (Expect::Replay(items), Done::Replayed(results)) => {
            for (item, result) in items.iter().zip(results) {
                let stored = view.events.contains_key(item.event.as_str());
                assert_eq!(result.is_ok(), stored, "{at}: replayed only while stored");
                if stored {
                    *model
                        .deliveries
                        .entry((item.event.clone(), item.subscription_id.clone()))
                        .or_default() += 1;
                }
            }
        }
        (Expect::Ack(acked), Done::Nothing) => model.reports -= acked,
        (Expect::Sweep, Done::Swept(_)) => {
            // Swept: past retention, or kept without deliveries to make (past the byte bound).
            let keep = config().retention.max(config().dedup_window).as_millis() as u64;
            model.stored.retain(|key, (accepted, _)| {
                if view.events.contains_key(key.as_str()) {
                    return true;
                }
                let waiting = model.deliveries.keys().any(|(event, _)| event == key);
                assert!(
                    now - *accepted >= keep || !waiting,
                    "{at}: {key} removed with deliveries to make and within retention"
                );
                false
            });
            // Deliveries of a swept event are skipped when their turn comes; the model keeps
            // them, as the tables do.
        }
        (_, _) => panic!("{at}: an unexpected answer"),
    }
}

fn run(seed: u64) {
    let mut rng = Rng(seed | 1);
    let mut view = MemoryView::default();
    let mut pending = Pending::default();
    // What readers see of the per-subscription counts, kept by each commit's changes.
    let mut published = FastMap::default();
    let mut model = Model::default();
    let mut now = 1_000_000u64;
    for step in 0..400 {
        let at = format!("seed {seed} step {step}");
        now += rng.below(120);
        let mut group = Vec::new();
        let mut expected = Vec::new();
        for _ in 0..=rng.below(3) {
            let Some((work, expect)) = random_work(&mut rng, &view, now) else {
                continue;
            };
            // A task is handed out once until its outcome is committed, and reports are acked
            // in order: one outcome per task and one ack in a group.
            let repeat = group.iter().any(|other| match (other, &work) {
                (Work::Complete { task: a, .. }, Work::Complete { task: b, .. }) => a.seq == b.seq,
                (Work::AckReports { .. }, Work::AckReports { .. }) => true,
                _ => false,
            });
            if !repeat {
                group.push(work);
                expected.push(expect);
            }
        }
        if rng.below(8) == 0 {
            // A commit that fails: its changes are dropped and the counts put back.
            let mut scratch = view.clone();
            let mut effects = Effects::default();
            apply(
                &mut scratch,
                &config(),
                now,
                group,
                &mut pending,
                &mut effects,
            )
            .expect("apply");
            pending.rollback();
            assert_eq!(published, pending.subscriptions(), "{at}: published counts");
            check(&view, &pending, &model, &format!("{at} (failed commit)"));
            continue;
        }
        // A group's work is applied in order within one transaction; checked one by one.
        for (work, expect_one) in group.into_iter().zip(expected) {
            let mut effects = Effects::default();
            apply(
                &mut view,
                &config(),
                now,
                vec![work],
                &mut pending,
                &mut effects,
            )
            .expect("apply");
            let done = effects.outcomes.first().expect("one outcome");
            let answered = Answered {
                view: &view,
                pending: &pending,
                now,
                at: &at,
            };
            self::expect(&mut model, expect_one, done, &answered);
        }
        pending.commit(&mut published);
        assert_eq!(published, pending.subscriptions(), "{at}: published counts");
        check(&view, &pending, &model, &at);
    }
}

#[test]
fn the_state_machine_keeps_its_rules_under_random_work_and_failed_commits() {
    for seed in 1..=40u64 {
        run(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    }
}

#[test]
fn evicting_an_entry_whose_event_was_accepted_again_later_keeps_that_event_and_its_entry() {
    use crate::queue::{META_BYTES, META_EVENTS, encode_event};
    let event = |id: &str| pb::Event {
        id: id.into(),
        tenant: "t".into(),
        payload: vec![b'x'; 200],
        ..Default::default()
    };
    let mut view = MemoryView::default();
    // "t/a" was accepted at 10; an entry at 5 is left from an earlier acceptance of its id.
    view.events
        .insert("t/a".into(), encode_event(10, 0, &event("a")));
    view.accepted.insert((5, "t/a".into()), ());
    view.accepted.insert((10, "t/a".into()), ());
    view.events
        .insert("t/b".into(), encode_event(20, 0, &event("b")));
    view.accepted.insert((20, "t/b".into()), ());
    view.meta.insert(META_EVENTS.into(), 2);
    view.meta.insert(META_BYTES.into(), 400);
    let mut pending = Pending::default();
    let mut effects = Effects::default();
    // Retention is far off; the kept events' 400 bytes are past the 300 kept at most.
    apply(
        &mut view,
        &config(),
        30,
        vec![Work::Sweep],
        &mut pending,
        &mut effects,
    )
    .expect("apply");
    assert!(matches!(effects.outcomes[..], [Done::Swept(1)]));
    assert_eq!(view.events.keys().collect::<Vec<_>>(), ["t/b"]);
    assert_eq!(
        view.accepted.keys().cloned().collect::<Vec<_>>(),
        [(20, "t/b".to_owned())],
        "the stale entry and the evicted event's own entry are both gone"
    );
}
