//! The delivery log's contract as executable checks. Every [`LogStore`] must pass
//! [`check_all`]; the end-to-end tests run it against the embedded log and a real PostgreSQL.
//! Each check uses its own subscription and event ids, so the checks can share one log, but it
//! should hold nothing else (retention and counts are checked on the whole log).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use herald_core::limits::{MAX_ATTEMPT_TEXT_LEN, MAX_PAGE_BYTES};
use herald_proto::convert::timestamp;
use herald_proto::prost_types;
use herald_proto::v1 as pb;
use prost::Message as _;

use super::{AttemptLog, Filter, LogStore, Reactions, SentQuery};
use crate::access::Scope;
use crate::audit::query::AuditFilter;

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// Runs every check against `log`, which must start empty and keep attempts of the last 60
/// days at least (its checks store attempts up to 40 days old, then sweep with 30).
pub async fn check_all(log: &AttemptLog) {
    assert_eq!(log.len().await.expect("len"), 0, "the log starts empty");
    // First: the embedded log sweeps in the order attempts arrived, so old attempts stored
    // after fresh ones wait for those (a store may do better, none may do worse).
    retention_removes_what_started_before_the_cut_off(log.as_ref()).await;
    stores_once_and_pages_newest_first(log.as_ref()).await;
    filters_select_what_they_name(log.as_ref()).await;
    type_status_and_error_kind_filters_select_what_they_name(log.as_ref()).await;
    followers_see_what_is_stored_after_they_start(log.as_ref()).await;
    health_is_counted_once_in_the_commit_that_stores(log.as_ref()).await;
    follow_ups_stay_until_settled(log.as_ref()).await;
    the_outbox_keeps_an_event_once_until_emitted(log.as_ref()).await;
    audit_entries_are_listed_newest_first_within_scope_and_swept(log.as_ref()).await;
    requests_as_sent_are_kept_once_per_delivery_within_scope(log.as_ref()).await;
    texts_holding_nul_are_stored_and_the_batch_with_them(log.as_ref()).await;
    // Last: its thousand attempts would be the newest in the other checks' listings.
    pages_end_within_their_bytes(log.as_ref()).await;
}

/// 1,000 attempts with the longest error and excerpt are more than a page of bytes: pages hold
/// fewer than asked, each within [`MAX_PAGE_BYTES`], and together every attempt once.
async fn pages_end_within_their_bytes(log: &dyn LogStore) {
    let long = "x".repeat(MAX_ATTEMPT_TEXT_LEN);
    let batch: Vec<pb::Attempt> = (0..1000)
        .map(|n| pb::Attempt {
            error: long.clone(),
            response_excerpt: long.clone(),
            ..attempt(
                &format!("evt_b{n:04}"),
                "sub_bytes",
                1,
                pb::Outcome::Retrying,
                Duration::from_secs(1000 - n),
            )
        })
        .collect();
    log.insert(batch).await.expect("stored");
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = log
            .list(
                Filter::new(by_subscription("sub_bytes")).expect("a valid filter"),
                1000,
                &token,
            )
            .await
            .expect("a page");
        let bytes: usize = page.attempts.iter().map(|a| a.encoded_len() + 4).sum();
        assert!(bytes <= MAX_PAGE_BYTES, "a page of {bytes} bytes");
        pages += 1;
        seen.extend(page.attempts.iter().map(|a| a.event_id.clone()));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert!(pages >= 4, "{pages} pages of 8 KiB attempts");
    let expected: Vec<String> = (0..1000).rev().map(|n| format!("evt_b{n:04}")).collect();
    assert_eq!(seen, expected, "every attempt once, newest first");
}

/// Raises an event for each failed attempt, as the control plane does; knows no policy.
struct RaiseExhausted;

impl Reactions for RaiseExhausted {
    fn raise(&self, a: &pb::Attempt) -> Option<pb::Event> {
        (a.outcome() == pb::Outcome::Failed).then(|| pb::Event {
            id: format!("exhausted:{}:{}", a.event_id, a.subscription_id),
            tenant: "herald".into(),
            r#type: "herald.delivery.exhausted".into(),
            payload: b"{}".to_vec(),
            ..Default::default()
        })
    }

    fn disables(&self, _: &pb::SubscriptionHealth) -> Option<bool> {
        None
    }
}

fn raise_exhausted() -> Arc<dyn Reactions> {
    Arc::new(RaiseExhausted)
}

/// The follow-ups of `sub` not yet settled.
async fn followups_of(log: &dyn LogStore, sub: &str) -> Vec<super::PendingFollowup> {
    let all = log
        .followups(Duration::ZERO, 10_000)
        .await
        .expect("followups");
    all.into_iter()
        .filter(|f| f.followup.subscription_id == sub)
        .collect()
}

/// New attempts count into their subscription's health in the commit that stores them; a
/// batch stored again counts nothing, and raises no event twice.
async fn health_is_counted_once_in_the_commit_that_stores(log: &dyn LogStore) {
    let sub = "sub_health";
    assert_eq!(log.health(sub).await.expect("health"), None);
    let failures: Vec<pb::Attempt> = (0..3)
        .map(|i| {
            let age = Duration::from_millis(300 - i * 10);
            attempt(&format!("evt_h{i}"), sub, 1, pb::Outcome::Failed, age)
        })
        .collect();
    let stored = log
        .store(failures.clone(), raise_exhausted())
        .await
        .expect("store");
    assert_eq!(stored.attempts.len(), 3);
    let [followup] = stored.followups.as_slice() else {
        panic!("one follow-up for the subscription: {:?}", stored.followups);
    };
    let run = followup.followup.longest_run.as_ref().expect("a run grew");
    assert_eq!(run.consecutive_failures, 3);
    let health = log.health(sub).await.expect("health").expect("a record");
    assert_eq!(health.consecutive_failures, 3);
    assert_eq!(health.subscription_id, sub);
    assert_eq!(health.last_error, "HTTP 500");

    let again = log.store(failures, raise_exhausted()).await.expect("again");
    assert!(again.attempts.is_empty() && again.followups.is_empty());
    let health = log.health(sub).await.expect("health").expect("a record");
    assert_eq!(
        health.consecutive_failures, 3,
        "a resent batch counts nothing"
    );
    let raised: Vec<pb::Event> = log
        .outbox(10_000)
        .await
        .expect("outbox")
        .into_iter()
        .filter(|e| e.id.ends_with(&format!(":{sub}")))
        .collect();
    assert_eq!(raised.len(), 3, "one exhausted event per failed delivery");

    // A later delivery ends the run, and says how long it was.
    let delivered = attempt("evt_h9", sub, 1, pb::Outcome::Delivered, Duration::ZERO);
    let stored = log
        .store(vec![delivered], raise_exhausted())
        .await
        .expect("store");
    assert_eq!(stored.followups.len(), 1);
    assert_eq!(stored.followups[0].followup.ended_run, 3);
    let health = log.health(sub).await.expect("health").expect("a record");
    assert_eq!(health.consecutive_failures, 0);
    assert!(health.last_success_at.is_some());

    log.forget_health(sub).await.expect("forget");
    assert_eq!(log.health(sub).await.expect("health"), None);
    let ids: Vec<String> = raised.iter().map(|e| e.id.clone()).collect();
    log.emitted(&ids).await.expect("emitted");
    let settled: Vec<i64> = followups_of(log, sub).await.iter().map(|f| f.id).collect();
    log.settle(&settled).await.expect("settle");
}

/// A follow-up is kept until settled; the sweep's query sees only those old enough.
async fn follow_ups_stay_until_settled(log: &dyn LogStore) {
    let sub = "sub_followup";
    let mut gone = attempt("evt_f1", sub, 1, pb::Outcome::Failed, Duration::ZERO);
    gone.status_code = 410;
    let stored = log.insert(vec![gone]).await.expect("store");
    assert_eq!(stored.len(), 1);
    let left = followups_of(log, sub).await;
    let [pending] = left.as_slice() else {
        panic!("one follow-up left: {left:?}");
    };
    assert!(pending.followup.gone);
    assert!(pending.followup.recorded_at.is_some());
    let young = log
        .followups(Duration::from_secs(3600), 10_000)
        .await
        .expect("followups");
    assert!(
        young.iter().all(|f| f.followup.subscription_id != sub),
        "a follow-up younger than asked is not left behind yet"
    );
    log.settle(&[pending.id]).await.expect("settle");
    assert!(followups_of(log, sub).await.is_empty());
}

/// Raising an event whose id is in the outbox keeps the first; emitted events go.
async fn the_outbox_keeps_an_event_once_until_emitted(log: &dyn LogStore) {
    let event = |payload: &str| pb::Event {
        id: "herald.subscription.disabled:conformance".into(),
        tenant: "herald".into(),
        r#type: "herald.subscription.disabled".into(),
        payload: payload.as_bytes().to_vec(),
        ..Default::default()
    };
    log.raise(&[event("first")]).await.expect("raise");
    log.raise(&[event("second")]).await.expect("raise again");
    let mine = |events: Vec<pb::Event>| -> Vec<pb::Event> {
        events
            .into_iter()
            .filter(|e| e.id == "herald.subscription.disabled:conformance")
            .collect()
    };
    let held = mine(log.outbox(10_000).await.expect("outbox"));
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].payload, b"first");
    log.emitted(&[held[0].id.clone()]).await.expect("emitted");
    assert!(mine(log.outbox(10_000).await.expect("outbox")).is_empty());
}

/// An attempt of `event` to `sub`, number `n`, that started `age` ago.
pub fn attempt(event: &str, sub: &str, n: u32, outcome: pb::Outcome, age: Duration) -> pb::Attempt {
    pb::Attempt {
        event_id: event.into(),
        subscription_id: sub.into(),
        tenant: "shop-1".into(),
        event_type: "order.created".into(),
        attempt: n,
        outcome: outcome as i32,
        status_code: if outcome == pb::Outcome::Delivered {
            200
        } else {
            500
        },
        url: "https://shop.example/hooks".into(),
        agent_id: "agt_conformance".into(),
        started_at: Some(timestamp(SystemTime::now() - age)),
        duration: Some(herald_proto::convert::duration(Duration::from_millis(12))),
        ..Default::default()
    }
}

/// A request as an agent reports it with an attempt.
pub fn sent(body: &str) -> pb::SentRequest {
    pb::SentRequest {
        method: "POST".into(),
        url: "https://shop.example/hooks".into(),
        headers: vec![
            pb::Header {
                name: "content-type".into(),
                value: "application/json".into(),
            },
            pb::Header {
                name: "webhook-signature".into(),
                value: herald_proto::sent_request::MASKED.into(),
            },
        ],
        body: body.as_bytes().to_vec(),
        body_size: body.len() as u64,
        ..Default::default()
    }
}

/// `attempt` as reported with the request it sent.
fn with_request(attempt: pb::Attempt, body: &str) -> pb::Attempt {
    pb::Attempt {
        request: Some(sent(body)),
        ..attempt
    }
}

/// The requests of `event` that a caller seeing `tenants` reads.
async fn sent_requests(
    log: &dyn LogStore,
    event: &str,
    subscription: &str,
    tenants: &Scope,
) -> Vec<pb::SentRequest> {
    let query = SentQuery::new(event, subscription, "", tenants).expect("a valid query");
    let page = log.sent_requests(query).await.expect("sent requests");
    assert!(page.next_page_token.is_empty(), "one page");
    page.requests
}

fn ids(page: &super::Page) -> Vec<&str> {
    page.attempts.iter().map(|a| a.event_id.as_str()).collect()
}

fn by_subscription(sub: &str) -> pb::AttemptFilter {
    pb::AttemptFilter {
        subscription_id: sub.into(),
        ..Default::default()
    }
}

/// A batch is stored once however often it is sent; listings are newest first and pages
/// continue where the last ended.
async fn stores_once_and_pages_newest_first(log: &dyn LogStore) {
    // Oldest first, a millisecond apart, so "newest first" is one order in every store.
    let batch: Vec<pb::Attempt> = (0..5)
        .map(|i| {
            let age = Duration::from_millis(100 - i * 10);
            attempt(
                &format!("evt_p{i}"),
                "sub_pages",
                1,
                pb::Outcome::Delivered,
                age,
            )
        })
        .collect();
    let stored = log.insert(batch.clone()).await.expect("insert");
    assert_eq!(stored.len(), 5);
    assert_eq!(*stored[0], batch[0], "stored as reported");
    assert!(
        log.insert(batch.clone()).await.expect("again").is_empty(),
        "a batch sent again stores nothing twice"
    );
    let mut mixed = batch[..2].to_vec();
    mixed.push(attempt(
        "evt_p0",
        "sub_pages",
        2,
        pb::Outcome::Delivered,
        Duration::ZERO,
    ));
    let stored = log.insert(mixed).await.expect("partly new");
    assert_eq!(
        stored.len(),
        1,
        "only the new attempt of a partly new batch"
    );
    assert_eq!(stored[0].attempt, 2);

    let first = log
        .list(
            Filter::new(by_subscription("sub_pages")).expect("a valid filter"),
            2,
            "",
        )
        .await
        .expect("page 1");
    assert_eq!(ids(&first), ["evt_p0", "evt_p4"]);
    assert_eq!(first.attempts[0].attempt, 2);
    let second = log
        .list(
            Filter::new(by_subscription("sub_pages")).expect("a valid filter"),
            2,
            &first.next_page_token,
        )
        .await
        .expect("page 2");
    assert_eq!(ids(&second), ["evt_p3", "evt_p2"]);
    let third = log
        .list(
            Filter::new(by_subscription("sub_pages")).expect("a valid filter"),
            2,
            &second.next_page_token,
        )
        .await
        .expect("page 3");
    assert_eq!(ids(&third), ["evt_p1", "evt_p0"]);
    if !third.next_page_token.is_empty() {
        let end = log
            .list(
                Filter::new(by_subscription("sub_pages")).expect("a valid filter"),
                2,
                &third.next_page_token,
            )
            .await
            .expect("past the end");
        assert!(end.attempts.is_empty() && end.next_page_token.is_empty());
    }
    assert!(
        log.list(Filter::default(), 10, "garbage").await.is_err(),
        "a token from nowhere is refused"
    );
    let one = log
        .list(
            Filter::new(pb::AttemptFilter {
                event_id: "evt_p0".into(),
                ..Default::default()
            })
            .expect("a valid filter"),
            0,
            "",
        )
        .await
        .expect("by event");
    let numbers: Vec<u32> = one.attempts.iter().map(|a| a.attempt).collect();
    assert_eq!(numbers, [2, 1], "every attempt of one event, newest first");
}

/// Event-type patterns, statuses and classes, and error kinds keep only what they name,
/// newest first across the types and codes they span, and page.
async fn type_status_and_error_kind_filters_select_what_they_name(log: &dyn LogStore) {
    const TENANT: &str = "shop-conformance-filters";
    let cases = [
        ("evt_t1", "order.created", 200, ""),
        ("evt_t2", "order.line.added", 503, "http_status"),
        ("evt_t3", "orders.created", 404, "http_status"),
        ("evt_t4", "customer.created", 0, "timeout"),
        ("evt_t5", "order.paid", 502, "http_status"),
    ];
    let batch = cases
        .iter()
        .enumerate()
        .map(|(i, (event, event_type, status, kind))| pb::Attempt {
            tenant: TENANT.into(),
            event_type: (*event_type).into(),
            status_code: *status,
            error_kind: (*kind).into(),
            // evt_t5 the newest.
            ..attempt(
                event,
                "sub_filter_types",
                1,
                pb::Outcome::Retrying,
                Duration::from_secs(10 - i as u64),
            )
        })
        .collect();
    log.insert(batch).await.expect("insert");
    let listed = |event_type: &str, status: &str, error_kind: &str, page_size: u32| {
        let filter = pb::AttemptFilter {
            tenant: TENANT.into(),
            event_type: event_type.into(),
            status: status.into(),
            error_kind: error_kind.into(),
            ..Default::default()
        };
        async move {
            let filter = Filter::new(filter).expect("a valid filter");
            let mut ids = Vec::new();
            let mut token = String::new();
            loop {
                let page = log
                    .list(filter.clone(), page_size, &token)
                    .await
                    .expect("list");
                ids.extend(page.attempts.into_iter().map(|a| a.event_id));
                if page.next_page_token.is_empty() {
                    return ids;
                }
                token = page.next_page_token;
            }
        }
    };
    for (event_type, status, error_kind, expected) in [
        ("order.*", "", "", &["evt_t5", "evt_t2", "evt_t1"][..]),
        ("order.line.*", "", "", &["evt_t2"]),
        ("orders.created", "", "", &["evt_t3"]),
        (
            "*",
            "",
            "",
            &["evt_t5", "evt_t4", "evt_t3", "evt_t2", "evt_t1"],
        ),
        ("", "5xx", "", &["evt_t5", "evt_t2"]),
        ("", "503", "", &["evt_t2"]),
        ("", "2xx", "", &["evt_t1"]),
        ("", "", "timeout", &["evt_t4"]),
        ("", "", "status", &["evt_t5", "evt_t3", "evt_t2"]),
        ("order.*", "5xx", "http_status", &["evt_t5", "evt_t2"]),
        ("customer.*", "5xx", "", &[]),
    ] {
        for page_size in [100, 1] {
            assert_eq!(
                listed(event_type, status, error_kind, page_size).await,
                expected,
                "type {event_type:?}, status {status:?}, kind {error_kind:?}, pages of {page_size}"
            );
        }
    }
}

/// Each filter keeps only what it names, and filters combine.
async fn filters_select_what_they_name(log: &dyn LogStore) {
    let mut other_tenant = attempt(
        "evt_f3",
        "sub_filter_b",
        1,
        pb::Outcome::Delivered,
        Duration::ZERO,
    );
    other_tenant.tenant = "shop-2".into();
    log.insert(vec![
        attempt(
            "evt_f1",
            "sub_filter_a",
            1,
            pb::Outcome::Retrying,
            Duration::from_secs(7200),
        ),
        attempt(
            "evt_f2",
            "sub_filter_a",
            1,
            pb::Outcome::Delivered,
            Duration::ZERO,
        ),
        other_tenant,
    ])
    .await
    .expect("insert");
    let within = |filter: pb::AttemptFilter, tenants: Scope| async move {
        let page = log
            .list(
                Filter::within(filter, &tenants).expect("a valid filter"),
                100,
                "",
            )
            .await
            .expect("list");
        page.attempts
            .iter()
            .map(|a| a.event_id.clone())
            .filter(|id| id.starts_with("evt_f"))
            .collect::<Vec<_>>()
    };
    let list = |filter: pb::AttemptFilter| within(filter, Scope::All);
    assert_eq!(
        list(by_subscription("sub_filter_a")).await,
        ["evt_f2", "evt_f1"]
    );
    assert_eq!(
        list(pb::AttemptFilter {
            tenant: "shop-2".into(),
            ..Default::default()
        })
        .await,
        ["evt_f3"]
    );
    assert_eq!(
        list(pb::AttemptFilter {
            outcome: pb::Outcome::Retrying as i32,
            ..Default::default()
        })
        .await,
        ["evt_f1"]
    );
    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    assert_eq!(
        list(pb::AttemptFilter {
            subscription_id: "sub_filter_a".into(),
            since: Some(timestamp(hour_ago)),
            ..Default::default()
        })
        .await,
        ["evt_f2"]
    );
    assert_eq!(
        list(pb::AttemptFilter {
            until: Some(timestamp(hour_ago)),
            ..Default::default()
        })
        .await,
        ["evt_f1"]
    );
    assert!(
        list(pb::AttemptFilter {
            since: Some(timestamp(SystemTime::now() + Duration::from_secs(60))),
            ..Default::default()
        })
        .await
        .is_empty()
    );
    // A caller scoped to some tenants sees only theirs, whatever the filter names.
    let only = |tenants: &[&str]| Scope::Only(tenants.iter().map(|t| t.to_string()).collect());
    assert_eq!(
        within(pb::AttemptFilter::default(), only(&["shop-2"])).await,
        ["evt_f3"]
    );
    assert_eq!(
        within(pb::AttemptFilter::default(), only(&["shop-1", "shop-9"])).await,
        ["evt_f2", "evt_f1"]
    );
    assert!(
        within(by_subscription("sub_filter_b"), only(&["shop-1"]))
            .await
            .is_empty()
    );
    assert!(
        within(
            pb::AttemptFilter {
                tenant: "shop-2".into(),
                ..Default::default()
            },
            only(&["shop-1"])
        )
        .await
        .is_empty()
    );
}

/// A follower gets each attempt stored after it started, once; a resent one is not news.
/// (It may also get attempts stored just before it started: a follower fed by the database
/// hears of them a moment later.)
async fn followers_see_what_is_stored_after_they_start(log: &dyn LogStore) {
    let mut follower = log.follow();
    let fresh = attempt(
        "evt_tail",
        "sub_tail",
        1,
        pb::Outcome::Delivered,
        Duration::ZERO,
    );
    log.insert(vec![fresh.clone()]).await.expect("insert");
    log.insert(vec![fresh.clone()]).await.expect("again");
    log.insert(vec![attempt(
        "evt_tail_2",
        "sub_tail",
        1,
        pb::Outcome::Delivered,
        Duration::ZERO,
    )])
    .await
    .expect("insert");
    let mut followed: Vec<Arc<pb::Attempt>> = Vec::new();
    while followed.last().is_none_or(|a| a.event_id != "evt_tail_2") {
        let got = tokio::time::timeout(Duration::from_secs(10), follower.recv())
            .await
            .expect("followed within 10 s")
            .expect("a follower keeps up");
        if got.subscription_id == "sub_tail" {
            followed.push(got);
        }
    }
    assert_eq!(*followed[0], fresh);
    let ids: Vec<&str> = followed.iter().map(|a| a.event_id.as_str()).collect();
    assert_eq!(
        ids,
        ["evt_tail", "evt_tail_2"],
        "the resent attempt was not sent again"
    );
}

/// Attempts that started before the retention cut-off go (whole days at least); the others
/// stay, and the log counts what it holds.
async fn retention_removes_what_started_before_the_cut_off(log: &dyn LogStore) {
    log.insert(vec![
        with_request(
            attempt(
                "evt_old_1",
                "sub_retention",
                1,
                pb::Outcome::Failed,
                40 * DAY,
            ),
            "{\"old\":1}",
        ),
        attempt(
            "evt_old_2",
            "sub_retention",
            1,
            pb::Outcome::Failed,
            33 * DAY,
        ),
        with_request(
            attempt("evt_kept", "sub_retention", 1, pb::Outcome::Delivered, DAY),
            "{\"kept\":1}",
        ),
    ])
    .await
    .expect("insert");
    assert_eq!(log.len().await.expect("len"), 3);
    let removed = log.sweep(30 * DAY, u64::MAX).await.expect("sweep");
    assert_eq!(removed, 2, "the attempts past retention");
    assert_eq!(log.len().await.expect("len"), 1);
    let left = log
        .list(
            Filter::new(by_subscription("sub_retention")).expect("a valid filter"),
            10,
            "",
        )
        .await
        .expect("list");
    assert_eq!(ids(&left), ["evt_kept"]);
    assert_eq!(log.sweep(30 * DAY, u64::MAX).await.expect("again"), 0);
    // A request as sent goes with the attempts that sent it, and stays with them.
    assert!(
        sent_requests(log, "evt_old_1", "", &Scope::All)
            .await
            .is_empty()
    );
    let kept = sent_requests(log, "evt_kept", "", &Scope::All).await;
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].body, b"{\"kept\":1}");
}

/// Audit entries: newest first, by tenant, actor and time, within the asker's scope, paged, and
/// gone with the retention.
async fn audit_entries_are_listed_newest_first_within_scope_and_swept(log: &dyn LogStore) {
    let entry = |actor: &str, tenant: &str, object: &str, age: Duration| pb::AuditEntry {
        at: Some(timestamp(SystemTime::now() - age)),
        actor: actor.into(),
        tenant: tenant.into(),
        action: "subscription.update".into(),
        object: object.into(),
        revision: 7,
        detail: "why".into(),
    };
    for e in [
        entry("ops", "shop-1", "sub_old", 40 * DAY),
        entry("ops", "shop-1", "sub_a", Duration::from_secs(300)),
        entry("shop-2-admin", "shop-2", "sub_b", Duration::from_secs(200)),
        entry("ops", "", "order.created", Duration::from_secs(100)),
    ] {
        log.record_change(e).await.expect("recorded");
    }
    let list = |wire: pb::AuditFilter, tenants: Scope| async move {
        let page = log
            .changes(
                AuditFilter::within(wire, &tenants).expect("a valid filter"),
                100,
                "",
            )
            .await
            .expect("listed");
        page.entries
            .into_iter()
            .map(|e| e.object)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        list(pb::AuditFilter::default(), Scope::All).await,
        ["order.created", "sub_b", "sub_a", "sub_old"]
    );
    let first = &log
        .changes(AuditFilter::default(), 1, "")
        .await
        .expect("listed");
    assert_eq!(first.entries[0].actor, "ops");
    assert_eq!(first.entries[0].revision, 7);
    assert_eq!(first.entries[0].detail, "why");
    let second = log
        .changes(AuditFilter::default(), 1, &first.next_page_token)
        .await
        .expect("page 2");
    assert_eq!(second.entries[0].object, "sub_b");
    assert_eq!(
        list(
            pb::AuditFilter {
                actor: "ops".into(),
                tenant: "shop-1".into(),
                ..Default::default()
            },
            Scope::All
        )
        .await,
        ["sub_a", "sub_old"]
    );
    assert_eq!(
        list(
            pb::AuditFilter {
                since: Some(timestamp(SystemTime::now() - Duration::from_secs(250))),
                ..Default::default()
            },
            Scope::All
        )
        .await,
        ["order.created", "sub_b"]
    );
    // A caller scoped to shop-2 sees shop-2's, and nothing of what all tenants share.
    let shop_2 = Scope::Only(["shop-2".to_owned()].into());
    assert_eq!(list(pb::AuditFilter::default(), shop_2).await, ["sub_b"]);
    log.sweep(30 * DAY, u64::MAX).await.expect("sweep");
    assert_eq!(
        list(pb::AuditFilter::default(), Scope::All).await,
        ["order.created", "sub_b", "sub_a"]
    );
}

/// An error text or excerpt holding NUL (a token endpoint's or receiver's answer quoted) is
/// stored with U+FFFD in its place, and so is the rest of its batch: PostgreSQL's text refuses
/// NUL, and one such answer must not keep an agent's reports out of the log.
async fn texts_holding_nul_are_stored_and_the_batch_with_them(log: &dyn LogStore) {
    let quoted = pb::Attempt {
        error: "token endpoint answered 500: bad\0 nul body".into(),
        response_excerpt: "\0\0".into(),
        ..attempt("evt_nul", "sub_nul", 1, pb::Outcome::Retrying, DAY / 24)
    };
    let beside = attempt("evt_nul2", "sub_nul", 1, pb::Outcome::Delivered, DAY / 48);
    log.insert(vec![quoted, beside]).await.expect("stored");
    let listed = listed_of(log, "sub_nul").await;
    let errors: Vec<&str> = listed.attempts.iter().map(|a| a.error.as_str()).collect();
    assert_eq!(
        errors,
        ["", "token endpoint answered 500: bad\u{FFFD} nul body"],
        "newest first, both stored"
    );
    assert_eq!(listed.attempts[1].response_excerpt, "\u{FFFD}\u{FFFD}");
}

/// The first page of `sub`'s attempts.
async fn listed_of(log: &dyn LogStore, sub: &str) -> super::Page {
    let filter = Filter::new(by_subscription(sub)).expect("a valid filter");
    log.list(filter, 10, "").await.expect("list")
}

/// Requests as sent: stored apart from the attempts, once per delivery (the first attempt's,
/// until a later one sent another body), listed by subscription within the asker's tenants,
/// and expunged without touching the attempts.
async fn requests_as_sent_are_kept_once_per_delivery_within_scope(log: &dyn LogStore) {
    let sub = "sub_sent_1";
    let ms = Duration::from_millis;
    let first = with_request(
        attempt("evt_sent", sub, 1, pb::Outcome::Retrying, ms(300)),
        "{\"total\":120}",
    );
    let second = with_request(
        attempt("evt_sent", sub, 2, pb::Outcome::Retrying, ms(200)),
        "{\"total\":120}",
    );
    let stored = log
        .insert(vec![first.clone(), second])
        .await
        .expect("insert");
    assert!(
        stored.iter().all(|a| a.request.is_none()),
        "attempts carry no request"
    );
    let listed = listed_of(log, sub).await;
    assert_eq!(listed.attempts.len(), 2);
    assert!(listed.attempts.iter().all(|a| a.request.is_none()));

    let all = &Scope::All;
    let got = sent_requests(log, "evt_sent", "", all).await;
    assert_eq!(got.len(), 1, "one request per delivery: {got:?}");
    let request = &got[0];
    assert_eq!(request.attempt, 1, "the first attempt that sent the body");
    assert_eq!(request.body, b"{\"total\":120}");
    assert_eq!(request.body_size, 13);
    assert_eq!(
        (request.subscription_id.as_str(), request.tenant.as_str()),
        (sub, "shop-1")
    );
    assert_eq!(request.method, "POST");
    assert_eq!(request.headers, sent("").headers);
    // When the attempt started (PostgreSQL keeps microseconds).
    let micros = |t: Option<&prost_types::Timestamp>| t.map(|t| (t.seconds, t.nanos / 1000));
    assert_eq!(
        micros(request.sent_at.as_ref()),
        micros(first.started_at.as_ref())
    );

    // Reported again: nothing changes. A later attempt with another body replaces it.
    log.insert(vec![first]).await.expect("again");
    assert_eq!(sent_requests(log, "evt_sent", "", all).await, got);
    let third = with_request(
        attempt("evt_sent", sub, 3, pb::Outcome::Delivered, ms(100)),
        "<total>120</total>",
    );
    log.insert(vec![third]).await.expect("third");
    let got = sent_requests(log, "evt_sent", "", all).await;
    assert_eq!(
        (got[0].attempt, got[0].body.as_slice()),
        (3, &b"<total>120</total>"[..])
    );

    // Another subscription's delivery of the same event: listed after it, or alone.
    let other = with_request(
        attempt("evt_sent", "sub_sent_2", 1, pb::Outcome::Delivered, ms(50)),
        "{}",
    );
    log.insert(vec![other]).await.expect("other");
    let subs = |got: Vec<pb::SentRequest>| {
        got.into_iter()
            .map(|r| r.subscription_id)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        subs(sent_requests(log, "evt_sent", "", all).await),
        ["sub_sent_1", "sub_sent_2"]
    );
    assert_eq!(
        subs(sent_requests(log, "evt_sent", "sub_sent_2", all).await),
        ["sub_sent_2"]
    );

    // Another tenant's delivery of an event with the same id: a caller who may see every
    // tenant and names one reads that tenant's alone, and expunges that tenant's alone.
    let theirs = with_request(
        pb::Attempt {
            tenant: "shop-3".into(),
            ..attempt("evt_sent", "sub_sent_3", 1, pb::Outcome::Delivered, ms(40))
        },
        "{\"theirs\":1}",
    );
    log.insert(vec![theirs]).await.expect("theirs");
    let named = |tenant: &str| SentQuery::new("evt_sent", "", tenant, all).expect("valid");
    let of_shop_1 = log.sent_requests(named("shop-1")).await.expect("listed");
    assert_eq!(subs(of_shop_1.requests), ["sub_sent_1", "sub_sent_2"]);
    let expunged = log.expunge(named("shop-3")).await.expect("expunge");
    assert_eq!(expunged.removed, 1, "shop-3's request alone");
    assert_eq!(expunged.tenants.into_iter().collect::<Vec<_>>(), ["shop-3"]);
    assert_eq!(sent_requests(log, "evt_sent", "", all).await.len(), 2);

    // Another tenant's caller reads none, and expunges none.
    let shop_2 = Scope::Only(["shop-2".to_owned()].into());
    assert!(sent_requests(log, "evt_sent", "", &shop_2).await.is_empty());
    let query = |tenants: &Scope| SentQuery::new("evt_sent", "", "", tenants).expect("valid");
    let expunged = log.expunge(query(&shop_2)).await.expect("expunge");
    assert_eq!(expunged.removed, 0);
    assert_eq!(sent_requests(log, "evt_sent", "", all).await.len(), 2);

    let expunged = log.expunge(query(all)).await.expect("expunge");
    assert_eq!(expunged.removed, 2);
    assert_eq!(expunged.tenants.into_iter().collect::<Vec<_>>(), ["shop-1"]);
    assert!(sent_requests(log, "evt_sent", "", all).await.is_empty());
    let listed = listed_of(log, sub).await;
    assert_eq!(listed.attempts.len(), 3, "the attempts stay");
    assert_eq!(log.expunge(query(all)).await.expect("again").removed, 0);

    // An event sent to many subscriptions is read a page of about 2 MiB at a time.
    let big = "x".repeat(700 * 1024);
    let attempts = (1..=3)
        .map(|i| {
            let sub = format!("sub_page_{i}");
            with_request(
                attempt("evt_paged", &sub, 1, pb::Outcome::Delivered, ms(10)),
                &big,
            )
        })
        .collect();
    log.insert(attempts).await.expect("insert");
    let mut pages = Vec::new();
    let mut token = String::new();
    loop {
        let query = SentQuery::page("evt_paged", "", "", all, &token).expect("valid");
        let page = log.sent_requests(query).await.expect("a page");
        pages.push(subs(page.requests));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        assert!(pages.len() < 5, "pages end: {pages:?}");
    }
    assert_eq!(
        pages,
        [vec!["sub_page_1", "sub_page_2"], vec!["sub_page_3"]]
    );
}
