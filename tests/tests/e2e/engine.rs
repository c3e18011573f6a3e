//! How the delivery engine treats what receivers answer: 410 disables, Retry-After is honoured,
//! redirects are not followed; signing during a secret rotation and with ed25519 (`v1a`); rate
//! limits, exponential backoff, ordering keys and trace context.

use std::time::Duration;

use herald_core::signing::{self, PublicKey, Scheme, SigningSecret};
use herald_proto::v1 as pb;
use herald_proto::v1::events_client::EventsClient;
use herald_tests::{
    Response, World, event, eventually, secret_of, signature_verifies, subscription,
};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(15);

fn with_retries(mut sub: pb::Subscription, schedule: &str) -> pb::Subscription {
    let schedule = herald_core::retry::RetrySchedule::parse(schedule).expect("schedule");
    sub.retry = Some(herald_proto::convert::retry_policy(&schedule));
    sub
}

#[tokio::test]
async fn a_receiver_answering_410_gone_has_its_subscription_disabled() -> anyhow::Result<()> {
    let world = World::start().await?;
    world.receiver.respond_with(410);
    let sub = world
        .control_plane
        .create(subscription(
            "shop-1",
            &world.receiver.url("/gone"),
            &["order.*"],
        ))
        .await?;
    world.control_plane.wait_applied(sub.revision, WAIT).await?;
    world
        .agent
        .emit(event("shop-1", "order.created", &json!({})))
        .await?;

    let admin = world.control_plane.subscriptions().await?;
    let disabled = eventually(WAIT, "the subscription to be disabled", || {
        let mut admin = admin.clone();
        let id = sub.id.clone();
        async move {
            let s = admin
                .get_subscription(pb::GetSubscriptionRequest {
                    id,
                    show_secrets: false,
                })
                .await?
                .into_inner();
            Ok((!s.enabled).then_some(s))
        }
    })
    .await?;
    assert_eq!(disabled.disabled_reason, "gone (410)");
    let log = world
        .control_plane
        .attempts(pb::AttemptFilter {
            subscription_id: sub.id.clone(),
            ..Default::default()
        })
        .await?;
    assert_eq!(
        (log.len(), log[0].status_code),
        (1, 410),
        "no retry after 410"
    );
    assert_eq!(log[0].outcome, pb::Outcome::Failed as i32);

    world
        .control_plane
        .wait_applied(disabled.revision, WAIT)
        .await?;
    let after = world
        .agent
        .emit(event("shop-1", "order.created", &json!({})))
        .await?;
    assert_eq!(after.matched, 1, "parked while disabled");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(world.receiver.request_count(), 1, "nothing more sent");
    Ok(())
}

#[tokio::test]
async fn retry_after_is_honoured() -> anyhow::Result<()> {
    let world = World::start().await?;
    let sub = world
        .control_plane
        .create(with_retries(
            subscription("shop-1", &world.receiver.url("/busy"), &["order.*"]),
            "100ms,100ms",
        ))
        .await?;
    world.control_plane.wait_applied(sub.revision, WAIT).await?;
    world.receiver.script([
        Response::new(429).header("retry-after", "2"),
        Response::new(200),
    ]);
    world
        .agent
        .emit(event("shop-1", "order.created", &json!({})))
        .await?;
    let requests = world.receiver.wait_for_requests(2, WAIT).await?;
    let gap = requests[1]
        .received_at
        .duration_since(requests[0].received_at)?;
    assert!(
        gap >= Duration::from_millis(1900),
        "waited {gap:?}, asked for 2 s"
    );
    Ok(())
}

#[tokio::test]
async fn redirects_are_not_followed_and_the_location_is_logged() -> anyhow::Result<()> {
    let world = World::start().await?;
    let elsewhere = world.receiver.url("/elsewhere");
    world
        .receiver
        .respond_with_response(Response::new(302).header("location", elsewhere.as_str()));
    let sub = world
        .control_plane
        .create(with_retries(
            subscription("shop-1", &world.receiver.url("/moved"), &["order.*"]),
            "100ms",
        ))
        .await?;
    world.control_plane.wait_applied(sub.revision, WAIT).await?;
    world
        .agent
        .emit(event("shop-1", "order.created", &json!({})))
        .await?;

    let log = eventually(WAIT, "both attempts logged", || async {
        let attempts = world
            .control_plane
            .attempts(pb::AttemptFilter {
                subscription_id: sub.id.clone(),
                ..Default::default()
            })
            .await?;
        Ok((attempts.len() == 2).then_some(attempts))
    })
    .await?;
    assert!(
        world.receiver.requests().iter().all(|r| r.path == "/moved"),
        "never followed"
    );
    assert_eq!(log[0].status_code, 302);
    assert!(log[0].error.contains(&elsewhere), "{}", log[0].error);
    assert_eq!(
        log[0].outcome,
        pb::Outcome::Failed as i32,
        "after the last attempt"
    );
    assert_eq!(log[1].outcome, pb::Outcome::Retrying as i32);
    Ok(())
}

#[tokio::test]
async fn during_a_rotation_both_secrets_sign() -> anyhow::Result<()> {
    let world = World::start().await?;
    let created = world
        .control_plane
        .create(subscription(
            "shop-1",
            &world.receiver.url("/rotating"),
            &["order.*"],
        ))
        .await?;
    let old = secret_of(&created);
    let rotated = world
        .control_plane
        .subscriptions()
        .await?
        .rotate_secret(pb::RotateSecretRequest {
            id: created.id.clone(),
            grace: Some(herald_proto::convert::duration(Duration::from_secs(3600))),
        })
        .await?
        .into_inner();
    let new = secret_of(&rotated);
    assert_ne!(old, new);
    world
        .control_plane
        .wait_applied(rotated.revision, WAIT)
        .await?;

    world
        .agent
        .emit(event("shop-1", "order.created", &json!({"n": 1})))
        .await?;
    let request = world.receiver.wait_for_requests(1, WAIT).await?.remove(0);
    let header = request.header("webhook-signature").unwrap_or_default();
    assert_eq!(
        header.split(' ').filter(|s| s.starts_with("v1,")).count(),
        2,
        "{header}"
    );
    assert!(
        signature_verifies(&request, &[&old]),
        "receivers still on the old secret verify"
    );
    assert!(
        signature_verifies(&request, &[&new]),
        "receivers on the new secret verify"
    );
    Ok(())
}

#[tokio::test]
async fn a_hanging_endpoint_does_not_delay_deliveries_to_others() -> anyhow::Result<()> {
    let world = World::start().await?;
    let hanging = herald_tests::Receiver::start(&world.ca).await?;
    hanging.respond_with_response(Response::new(200).delay(Duration::from_secs(20)));
    // 8 delivery slots in all; the hanging endpoint's lane may hold 4 of them.
    let agent = herald_tests::Agent::start(
        world.control_plane.url(),
        herald_tests::AgentOptions {
            trusted_ca: Some(world.ca.ca_pem()),
            max_in_flight: Some(8),
            ..Default::default()
        },
    )
    .await?;
    let mut slow = subscription("shop-slow", &hanging.url("/hang"), &["order.*"]);
    slow.max_in_flight = 4;
    let slow = world.control_plane.create(slow).await?;
    let fast = world
        .control_plane
        .create(subscription(
            "shop-fast",
            &world.receiver.url("/fast"),
            &["order.*"],
        ))
        .await?;
    agent
        .wait_applied(&world.control_plane, fast.revision.max(slow.revision), WAIT)
        .await?;

    let mut backlog = Vec::new();
    for i in 0..40 {
        backlog.push(pb::Event {
            id: format!("evt_slow_{i}"),
            ..event("shop-slow", "order.created", &json!({"i": i}))
        });
    }
    agent
        .events()
        .await?
        .emit_batch(pb::EmitBatchRequest { events: backlog })
        .await?;
    hanging.wait_for_requests(4, WAIT).await?;

    let started = tokio::time::Instant::now();
    agent
        .emit(event("shop-fast", "order.created", &json!({"fast": true})))
        .await?;
    world.receiver.wait_for_requests(1, WAIT).await?;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "the other endpoint waited {took:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        hanging.request_count(),
        4,
        "the hanging lane holds only its 4 slots"
    );
    Ok(())
}

#[tokio::test]
async fn a_receiver_that_answers_without_reading_the_body_is_delivered_to() -> anyhow::Result<()> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let world = World::start().await?;
    // Answers 200 at once, never reading the request body (as many frameworks may).
    let answered = Arc::new(AtomicUsize::new(0));
    let handler = {
        let answered = answered.clone();
        move || {
            answered.fetch_add(1, Ordering::Relaxed);
            async { http::StatusCode::OK }
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("https://127.0.0.1:{}/early", listener.local_addr()?.port());
    let _server = herald_tests::receiver::spawn_https(
        listener,
        &world.ca,
        axum::Router::new().fallback(handler),
    );
    let sub = world
        .control_plane
        .create(subscription("shop-1", &url, &["order.*"]))
        .await?;
    world.control_plane.wait_applied(sub.revision, WAIT).await?;

    let big = "x".repeat(200 * 1024);
    for i in 0..20 {
        world
            .agent
            .emit(event(
                "shop-1",
                "order.created",
                &json!({"i": i, "blob": big}),
            ))
            .await?;
    }
    let log = eventually(WAIT, "20 attempts logged", || async {
        let attempts = world
            .control_plane
            .attempts(pb::AttemptFilter {
                subscription_id: sub.id.clone(),
                ..Default::default()
            })
            .await?;
        Ok((attempts.len() >= 20).then_some(attempts))
    })
    .await?;
    let failed: Vec<_> = log
        .iter()
        .filter(|a| a.outcome != pb::Outcome::Delivered as i32)
        .collect();
    assert!(
        failed.is_empty(),
        "{} not delivered at once, e.g. {:?}",
        failed.len(),
        failed.first()
    );
    Ok(())
}

#[tokio::test]
async fn a_failing_endpoint_gets_one_probe_at_a_time() -> anyhow::Result<()> {
    let world = World::start().await?;
    // Down, and slow about it: each answer takes 200 ms.
    world
        .receiver
        .respond_with_response(Response::new(503).delay(Duration::from_millis(200)));
    let mut request = with_retries(
        subscription("shop-1", &world.receiver.url("/down"), &["order.*"]),
        "50ms,50ms,50ms,50ms,50ms,50ms,50ms,50ms",
    );
    // Not auto-disabled during the outage: this is about the breaker.
    request.disable_after = 10_000;
    let sub = world.control_plane.create(request).await?;
    world.control_plane.wait_applied(sub.revision, WAIT).await?;
    let events = (0..30)
        .map(|i| event("shop-1", "order.created", &json!({"i": i})))
        .collect();
    world
        .agent
        .events()
        .await?
        .emit_batch(pb::EmitBatchRequest { events })
        .await?;

    // The first wave is the lane's full width (16); once 5 in a row failed, one at a time.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = world.receiver.request_count();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let in_a_second = world.receiver.request_count() - before;
    assert!(before >= 16, "the first wave went out ({before})");
    assert!(
        in_a_second <= 6,
        "{in_a_second} requests in a second: the breaker did not narrow the lane"
    );

    // Back up: the probe succeeds and the backlog flows at full width again.
    world.receiver.respond_with(200);
    eventually(WAIT, "every event delivered", || async {
        let delivered = world
            .control_plane
            .attempts(pb::AttemptFilter {
                subscription_id: sub.id.clone(),
                outcome: pb::Outcome::Delivered as i32,
                ..Default::default()
            })
            .await?;
        Ok((delivered.len() == 30).then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn ed25519_subscriptions_sign_v1a_verifiable_with_the_public_key() -> anyhow::Result<()> {
    let world = World::start().await?;
    let mut request = subscription("shop-1", &world.receiver.url("/v1a"), &["order.*"]);
    request.signature_scheme = pb::SignatureScheme::Ed25519 as i32;
    let sub = world.control_plane.create(request).await?;
    assert!(sub.secrets[0].secret.starts_with("whsk_"));
    world.control_plane.wait_applied(sub.revision, WAIT).await?;
    // What a receiver is given: the public key, readable without secrets.
    let listed = world
        .control_plane
        .subscriptions()
        .await?
        .get_subscription(pb::GetSubscriptionRequest {
            id: sub.id.clone(),
            show_secrets: false,
        })
        .await?
        .into_inner();
    assert!(listed.secrets[0].secret.is_empty());
    let public_key = PublicKey::parse(&listed.secrets[0].public_key)?;

    world
        .agent
        .emit(event("shop-1", "order.created", &json!({"order": 7})))
        .await?;
    let request = world.receiver.wait_for_requests(1, WAIT).await?.remove(0);
    let header = request.header("webhook-signature").unwrap_or_default();
    assert!(header.starts_with("v1a,"), "{header}");
    let timestamp: i64 = request
        .header("webhook-timestamp")
        .unwrap_or_default()
        .parse()?;
    let id = request.header("webhook-id").unwrap_or_default();
    assert!(signing::verify_asymmetric(
        &[public_key],
        header,
        id,
        timestamp,
        &request.body
    ));
    let other = SigningSecret::generate_for(Scheme::Ed25519)
        .public_key()
        .expect("a public key");
    assert!(!signing::verify_asymmetric(
        &[other],
        header,
        id,
        timestamp,
        &request.body
    ));

    // A rotation keeps the scheme: two v1a signatures during the grace period.
    let rotated = world
        .control_plane
        .subscriptions()
        .await?
        .rotate_secret(pb::RotateSecretRequest {
            id: sub.id.clone(),
            grace: None,
        })
        .await?
        .into_inner();
    assert!(
        rotated
            .secrets
            .iter()
            .all(|s| s.public_key.starts_with("whpk_"))
    );
    world
        .control_plane
        .wait_applied(rotated.revision, WAIT)
        .await?;
    world
        .agent
        .emit(event("shop-1", "order.created", &json!({"order": 8})))
        .await?;
    let request = world.receiver.wait_for_requests(2, WAIT).await?.remove(1);
    let header = request.header("webhook-signature").unwrap_or_default();
    assert_eq!(
        header.split(' ').filter(|s| s.starts_with("v1a,")).count(),
        2,
        "{header}"
    );
    Ok(())
}

#[tokio::test]
async fn a_rate_limited_endpoint_gets_no_more_than_its_rate() -> anyhow::Result<()> {
    const RATE: u32 = 10;
    const EVENTS: usize = 25;
    let world = World::start().await?;
    let mut request = subscription("shop-1", &world.receiver.url("/limited"), &["order.*"]);
    request.rate_limit = RATE;
    let sub = world.control_plane.create(request).await?;
    world.control_plane.wait_applied(sub.revision, WAIT).await?;
    for n in 0..EVENTS {
        world
            .agent
            .emit(event("shop-1", "order.created", &json!({ "n": n })))
            .await?;
    }
    let requests = world.receiver.wait_for_requests(EVENTS, WAIT).await?;
    let mut times: Vec<_> = requests.iter().map(|r| r.received_at).collect();
    times.sort();
    // A bucket of one token refilled at 10/s: 24 more requests need at least 2.4 s.
    let span = times[EVENTS - 1].duration_since(times[0])?;
    assert!(
        span >= Duration::from_millis(2_200),
        "{EVENTS} requests in {span:?}"
    );
    // And no one-second window holds more than the rate (plus the bucket's one token).
    for (i, start) in times.iter().enumerate() {
        let in_window = times[i..]
            .iter()
            .take_while(|t| t.duration_since(*start).unwrap_or_default() < Duration::from_secs(1))
            .count();
        assert!(
            in_window <= RATE as usize + 1,
            "{in_window} requests within one second"
        );
    }
    Ok(())
}

#[tokio::test]
async fn exponential_backoff_spaces_the_retries() -> anyhow::Result<()> {
    let world = World::start().await?;
    let mut request = subscription("shop-1", &world.receiver.url("/backoff"), &["order.*"]);
    let backoff = herald_core::retry::Exponential::parse("base=200ms,factor=3,cap=1s,attempts=4")?;
    request.retry = Some(herald_proto::convert::exponential_policy(&backoff));
    let sub = world.control_plane.create(request).await?;
    world.control_plane.wait_applied(sub.revision, WAIT).await?;
    world.receiver.script([500, 500, 500, 500]);
    world
        .agent
        .emit(event("shop-1", "order.created", &json!({})))
        .await?;
    let requests = world.receiver.wait_for_requests(4, WAIT).await?;
    let gaps: Vec<Duration> = requests
        .windows(2)
        .map(|w| w[1].received_at.duration_since(w[0].received_at))
        .collect::<Result<_, _>>()?;
    // 200 ms, 600 ms, then capped at 1 s; each within the ±20% jitter (and scheduling slack).
    for (gap, scheduled) in gaps.iter().zip([200, 600, 1000]) {
        let low = Duration::from_millis(scheduled * 8 / 10);
        let high = Duration::from_millis(scheduled * 12 / 10 + 500);
        assert!(
            (low..high).contains(gap),
            "gap {gap:?}, scheduled {scheduled} ms: {gaps:?}"
        );
    }
    let log = eventually(WAIT, "the final attempt in the log", || async {
        let log = world
            .control_plane
            .attempts(pb::AttemptFilter {
                subscription_id: sub.id.clone(),
                ..Default::default()
            })
            .await?;
        Ok((log.len() == 4).then_some(log))
    })
    .await?;
    assert!(
        log.iter()
            .any(|a| a.attempt == 4 && a.outcome == pb::Outcome::Failed as i32),
        "after the fourth attempt the delivery has failed: {log:?}"
    );
    // The stored policy is the exponential form, as written.
    let stored = world
        .control_plane
        .subscriptions()
        .await?
        .get_subscription(pb::GetSubscriptionRequest {
            id: sub.id.clone(),
            show_secrets: false,
        })
        .await?
        .into_inner();
    assert!(stored.retry.and_then(|r| r.exponential).is_some());
    Ok(())
}

#[tokio::test]
async fn events_with_an_ordering_key_arrive_in_order_under_retries() -> anyhow::Result<()> {
    let world = World::start().await?;
    let sub = world
        .control_plane
        .create(with_retries(
            subscription("shop-1", &world.receiver.url("/fifo"), &["order.*"]),
            "300ms,300ms,300ms",
        ))
        .await?;
    world.control_plane.wait_applied(sub.revision, WAIT).await?;
    world.receiver.script([500, 500]);
    let keyed: Vec<String> = (1..=5).map(|n| format!("evt_fifo_{n}")).collect();
    for id in &keyed {
        let mut event = event("shop-1", "order.updated", &json!({ "id": id }));
        event.id = id.clone();
        event.ordering_key = "order-42".into();
        world.agent.emit(event).await?;
    }
    // The head fails; an event without a key is not held up behind it.
    world.receiver.wait_for_requests(1, WAIT).await?;
    let mut free = event("shop-1", "order.updated", &json!({}));
    free.id = "evt_free".into();
    world.agent.emit(free).await?;

    let ids_in_arrival = || -> Vec<String> {
        world
            .receiver
            .requests()
            .iter()
            .filter_map(|r| r.header("webhook-id").map(str::to_owned))
            .collect()
    };
    eventually(WAIT, "every event delivered", || async {
        let ids = ids_in_arrival();
        Ok(keyed
            .iter()
            .chain([&"evt_free".to_owned()])
            .all(|id| ids.contains(id))
            .then_some(()))
    })
    .await?;
    let arrivals = ids_in_arrival();
    let keyed_arrivals: Vec<&String> = arrivals.iter().filter(|id| keyed.contains(id)).collect();
    let mut order: Vec<&String> = keyed_arrivals.clone();
    order.dedup();
    assert_eq!(order, keyed.iter().collect::<Vec<_>>(), "{arrivals:?}");
    assert!(
        keyed_arrivals.iter().filter(|id| **id == &keyed[0]).count() >= 2,
        "the head was retried: {arrivals:?}"
    );
    let position = |id: &str| arrivals.iter().position(|a| a == id).expect("arrived");
    assert!(
        position("evt_free") < position(&keyed[1]),
        "the event without a key went ahead: {arrivals:?}"
    );
    Ok(())
}

#[tokio::test]
async fn the_emitters_trace_context_goes_out_to_subscriptions_that_opt_in() -> anyhow::Result<()> {
    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let world = World::start().await?;
    let mut traced = subscription("shop-1", &world.receiver.url("/traced"), &["order.*"]);
    traced.send_trace_context = true;
    world.control_plane.create(traced).await?;
    // A subscription that has not opted in: trace ids stay inside.
    let private = world
        .control_plane
        .create(subscription(
            "shop-1",
            &world.receiver.url("/private"),
            &["order.*"],
        ))
        .await?;
    world
        .control_plane
        .wait_applied(private.revision, WAIT)
        .await?;
    let mut events = EventsClient::new(herald_tests::herald::connect(world.agent.url()).await?);

    // From the call's metadata…
    let mut call = tonic::Request::new(pb::EmitRequest {
        event: Some(event("shop-1", "order.created", &json!({"n": 1}))),
    });
    call.metadata_mut().insert("traceparent", PARENT.parse()?);
    events.emit(call).await?;
    // …or from the event itself (which wins over the metadata).
    let mut own = event("shop-1", "order.created", &json!({"n": 2}));
    own.traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00".into();
    let mut call = tonic::Request::new(pb::EmitRequest { event: Some(own) });
    call.metadata_mut().insert("traceparent", PARENT.parse()?);
    events.emit(call).await?;
    // An event without trace context sends none.
    world
        .agent
        .emit(event("shop-1", "order.created", &json!({"n": 3})))
        .await?;

    let requests = world.receiver.wait_for_requests(6, WAIT).await?;
    assert!(
        requests
            .iter()
            .filter(|r| r.path == "/private")
            .all(|r| r.header("traceparent").is_none()),
        "a subscription that did not opt in gets no traceparent"
    );
    let trace_of = |n: u64| {
        requests
            .iter()
            .find(|r| r.path == "/traced" && r.data()["n"] == n)
            .and_then(|r| r.header("traceparent").map(str::to_owned))
    };
    let first = trace_of(1).expect("a traceparent");
    assert!(
        first.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && first.ends_with("-01"),
        "same trace: {first}"
    );
    assert_ne!(first, PARENT, "the delivery is a span of its own");
    let second = trace_of(2).expect("a traceparent");
    assert!(
        second.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
        "{second}"
    );
    assert_eq!(trace_of(3), None);

    // A malformed trace context in the event is refused, naming the field.
    let mut bad = event("shop-1", "order.created", &json!({}));
    bad.traceparent = "00-not-a-trace".into();
    let status = events
        .emit(pb::EmitRequest { event: Some(bad) })
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("traceparent"),
        "{}",
        status.message()
    );
    Ok(())
}
