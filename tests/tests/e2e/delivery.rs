//! Emit → match → signed HTTPS delivery → central log.

use std::time::Duration;

use herald_proto::v1 as pb;
use herald_tests::herald::{Agent, AgentOptions};
use herald_tests::{World, event, eventually, secret_of, signature_verifies, subscription};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn an_emitted_event_arrives_once_signed_and_is_logged() -> anyhow::Result<()> {
    let world = World::start().await?;
    let sub = world
        .control_plane
        .create(subscription(
            "shop-1",
            &world.receiver.url("/hooks/orders"),
            &["order.created"],
        ))
        .await?;
    assert!(secret_of(&sub).starts_with("whsec_"));
    world.control_plane.wait_applied(sub.revision, WAIT).await?;

    let payload = json!({"order_id": 42, "total": "19.99", "lines": [{"sku": "A-1", "qty": 2}]});
    let emitted = world
        .agent
        .emit(event("shop-1", "order.created", &payload))
        .await?;
    assert_eq!((emitted.matched, emitted.duplicate), (1, false));
    assert!(emitted.event_id.starts_with("evt_"));

    let requests = world.receiver.wait_for_requests(1, WAIT).await?;
    let request = &requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/hooks/orders");
    assert_eq!(
        request.header("webhook-id"),
        Some(emitted.event_id.as_str())
    );
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert!(
        request
            .header("user-agent")
            .is_some_and(|ua| ua.starts_with("Herald/"))
    );
    assert_eq!(request.header("webhook-event-type"), Some("order.created"));
    assert_eq!(
        request.data(),
        payload,
        "the body carries the payload as emitted"
    );
    assert!(signature_verifies(request, &[&secret_of(&sub)]));
    assert!(!signature_verifies(
        request,
        &["whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"]
    ));

    let log = eventually(WAIT, "the attempt in the central log", || async {
        let attempts = world
            .control_plane
            .attempts(pb::AttemptFilter {
                subscription_id: sub.id.clone(),
                ..Default::default()
            })
            .await?;
        Ok((!attempts.is_empty()).then_some(attempts))
    })
    .await?;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].event_id, emitted.event_id);
    assert_eq!(log[0].attempt, 1);
    assert_eq!(log[0].status_code, 200);
    assert_eq!(log[0].outcome, pb::Outcome::Delivered as i32);

    // Exactly once: nothing else arrives.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(world.receiver.request_count(), 1);

    // The same id again is a duplicate and is not delivered again.
    let mut again = event("shop-1", "order.created", &payload);
    again.id = emitted.event_id.clone();
    let dup = world.agent.emit(again).await?;
    assert!(dup.duplicate);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(world.receiver.request_count(), 1);
    Ok(())
}

#[tokio::test]
async fn an_xml_subscription_gets_well_formed_xml_of_the_same_data() -> anyhow::Result<()> {
    let world = World::start().await?;
    let mut request = subscription("erp-7", &world.receiver.url("/erp"), &["invoice.*"]);
    request.format = pb::Format::Xml as i32;
    let sub = world.control_plane.create(request).await?;
    world.control_plane.wait_applied(sub.revision, WAIT).await?;

    let payload = json!({
        "invoice": {"number": "INV-9", "lines": [{"sku": "A&B", "qty": 1}, {"sku": "C", "qty": null}]},
        "paid": false,
        "total": 12.5,
    });
    world
        .agent
        .emit(event("erp-7", "invoice.created", &payload))
        .await?;
    let requests = world.receiver.wait_for_requests(1, WAIT).await?;
    let request = &requests[0];
    assert_eq!(request.header("content-type"), Some("application/xml"));
    assert!(
        signature_verifies(request, &[&secret_of(&sub)]),
        "XML bytes are the signed bytes"
    );

    // Well-formed: a strict reader walks it to the end; and it holds the same data.
    let text = std::str::from_utf8(&request.body)?;
    let mut reader = quick_xml::Reader::from_str(text);
    let mut texts = Vec::new();
    loop {
        match reader.read_event()? {
            quick_xml::events::Event::Eof => break,
            quick_xml::events::Event::Text(t) => texts.push(t.decode()?.into_owned()),
            _ => {}
        }
    }
    assert!(text.contains("<data>"), "{text}");
    assert!(text.contains("<number>INV-9</number>"), "{text}");
    assert!(text.contains("A&amp;B"), "{text}");
    assert!(text.contains(r#"<qty null="true"/>"#), "{text}");
    assert!(
        text.contains("<paid>false</paid>") && text.contains("<total>12.5</total>"),
        "{text}"
    );
    Ok(())
}

#[tokio::test]
async fn a_failed_attempt_is_retried_and_both_attempts_are_logged() -> anyhow::Result<()> {
    let world = World::start().await?;
    let mut request = subscription("shop-1", &world.receiver.url("/flaky"), &["order.*"]);
    request.retry = Some(pb::RetryPolicy {
        delays: vec![herald_proto::convert::duration(Duration::from_millis(100))],
        exponential: None,
    });
    let sub = world.control_plane.create(request).await?;
    world.control_plane.wait_applied(sub.revision, WAIT).await?;
    world.receiver.script([500, 200]);

    let emitted = world
        .agent
        .emit(event("shop-1", "order.updated", &json!({"order_id": 7})))
        .await?;
    let requests = world.receiver.wait_for_requests(2, WAIT).await?;
    let id = emitted.event_id.as_str();
    assert!(
        requests.iter().all(|r| r.header("webhook-id") == Some(id)),
        "same webhook-id on every try"
    );
    assert!(
        requests
            .iter()
            .all(|r| signature_verifies(r, &[&secret_of(&sub)]))
    );

    let log = eventually(WAIT, "both attempts in the central log", || async {
        let attempts = world
            .control_plane
            .attempts(pb::AttemptFilter {
                event_id: emitted.event_id.clone(),
                ..Default::default()
            })
            .await?;
        Ok((attempts.len() == 2).then_some(attempts))
    })
    .await?;
    // Newest first.
    assert_eq!((log[1].attempt, log[1].status_code), (1, 500));
    assert_eq!(log[1].outcome, pb::Outcome::Retrying as i32);
    assert!(log[1].next_attempt_at.is_some());
    assert_eq!((log[0].attempt, log[0].status_code), (2, 200));
    assert_eq!(log[0].outcome, pb::Outcome::Delivered as i32);
    Ok(())
}

#[tokio::test]
async fn events_reach_only_their_tenant_and_matching_patterns() -> anyhow::Result<()> {
    let world = World::start().await?;
    let orders = world
        .control_plane
        .create(subscription(
            "shop-1",
            &world.receiver.url("/shop-1/orders"),
            &["order.*"],
        ))
        .await?;
    let other_tenant = world
        .control_plane
        .create(subscription(
            "shop-2",
            &world.receiver.url("/shop-2/all"),
            &["*"],
        ))
        .await?;
    world
        .control_plane
        .wait_applied(other_tenant.revision.max(orders.revision), WAIT)
        .await?;

    let created = world
        .agent
        .emit(event("shop-1", "order.created", &json!({"n": 1})))
        .await?;
    assert_eq!(created.matched, 1, "only shop-1's order.* subscription");
    let product = world
        .agent
        .emit(event("shop-1", "product.created", &json!({"n": 2})))
        .await?;
    assert_eq!(product.matched, 0, "order.* does not match product.created");

    let requests = world.receiver.wait_for_requests(1, WAIT).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let paths: Vec<_> = world
        .receiver
        .requests()
        .iter()
        .map(|r| r.path.clone())
        .collect();
    assert_eq!(paths, ["/shop-1/orders"]);
    assert_eq!(
        requests[0].header("webhook-id"),
        Some(created.event_id.as_str())
    );
    Ok(())
}

#[tokio::test]
async fn the_same_event_id_from_two_tenants_is_delivered_to_each_with_its_payload()
-> anyhow::Result<()> {
    let world = World::start().await?;
    let mut subs = Vec::new();
    for tenant in ["shop-a", "shop-b"] {
        let path = format!("/{tenant}/orders");
        let sub = world
            .control_plane
            .create(subscription(
                tenant,
                &world.receiver.url(&path),
                &["order.*"],
            ))
            .await?;
        world.control_plane.wait_applied(sub.revision, WAIT).await?;
        subs.push(sub);
    }
    // Both shops number their orders themselves: the same id, two events.
    for (tenant, total) in [("shop-a", "10.00"), ("shop-b", "99.00")] {
        let mut order = event(tenant, "order.created", &json!({ "total": total }));
        order.id = "order-42".into();
        let emitted = world.agent.emit(order).await?;
        assert_eq!(
            (emitted.matched, emitted.duplicate),
            (1, false),
            "{tenant}'s order-42 is its own event"
        );
    }
    let requests = world.receiver.wait_for_requests(2, WAIT).await?;
    for (sub, total) in subs.iter().zip(["10.00", "99.00"]) {
        let path = format!("/{}/orders", sub.tenant);
        let request = requests
            .iter()
            .find(|r| r.path == path)
            .ok_or_else(|| anyhow::anyhow!("nothing reached {path}"))?;
        assert_eq!(request.header("webhook-id"), Some("order-42"));
        assert_eq!(request.data(), json!({ "total": total }), "{path}");
        assert!(
            signature_verifies(request, &[&secret_of(sub)]),
            "{path}: signed with its own tenant's secret"
        );
    }
    // The same shop sending order-42 again is a duplicate.
    let mut again = event("shop-a", "order.created", &json!({ "total": "10.00" }));
    again.id = "order-42".into();
    assert!(world.agent.emit(again).await?.duplicate);
    Ok(())
}

#[tokio::test]
async fn disabled_and_deleted_subscriptions_stop_receiving_within_a_second() -> anyhow::Result<()> {
    let world = World::start().await?;
    let sub = world
        .control_plane
        .create(subscription(
            "shop-1",
            &world.receiver.url("/h"),
            &["order.*"],
        ))
        .await?;
    world.control_plane.wait_applied(sub.revision, WAIT).await?;
    let mut admin = world.control_plane.subscriptions().await?;

    let disabled = admin
        .disable_subscription(pb::DisableSubscriptionRequest {
            id: sub.id.clone(),
            reason: String::new(),
        })
        .await?
        .into_inner();
    assert!(!disabled.enabled);
    assert_eq!(disabled.disabled_reason, "manual");
    world
        .control_plane
        .wait_applied(disabled.revision, Duration::from_secs(1))
        .await?;
    let parked = world
        .agent
        .emit(event("shop-1", "order.created", &json!({"parked": true})))
        .await?;
    assert_eq!(
        parked.matched, 1,
        "a disabled subscription's delivery is parked"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        world.receiver.request_count(),
        0,
        "nothing is sent while disabled"
    );

    // Enabled without replay: new events go out, the parked one is skipped (and logged).
    let enabled = admin
        .enable_subscription(pb::EnableSubscriptionRequest {
            id: sub.id.clone(),
            replay_parked: false,
        })
        .await?
        .into_inner();
    assert!(enabled.skip_parked_before.is_some());
    world
        .control_plane
        .wait_applied(enabled.revision, Duration::from_secs(1))
        .await?;
    assert_eq!(
        world
            .agent
            .emit(event("shop-1", "order.created", &json!({})))
            .await?
            .matched,
        1
    );
    world.receiver.wait_for_requests(1, WAIT).await?;
    let skipped = eventually(WAIT, "the parked delivery logged as skipped", || async {
        let log = world
            .control_plane
            .attempts(pb::AttemptFilter {
                event_id: parked.event_id.clone(),
                ..Default::default()
            })
            .await?;
        Ok(log
            .into_iter()
            .find(|a| a.outcome == pb::Outcome::Skipped as i32))
    })
    .await?;
    assert!(
        skipped.error.contains("without replaying"),
        "{}",
        skipped.error
    );
    assert_eq!(world.receiver.request_count(), 1);
    // It can still be sent: a replay of the skipped since the enable (what `herald
    // subscription enable` says to run).
    let replayed = herald_proto::v1::deliveries_client::DeliveriesClient::new(
        world.control_plane.channel().await?,
    )
    .replay_deliveries(pb::ReplayDeliveriesRequest {
        subscription_id: sub.id.clone(),
        since: enabled.skip_parked_before,
        outcome: pb::Outcome::Skipped as i32,
        ..Default::default()
    })
    .await?
    .into_inner();
    assert_eq!(replayed.queued, 1, "{replayed:?}");
    let requests = world.receiver.wait_for_requests(2, WAIT).await?;
    assert_eq!(
        requests[1].header("webhook-id"),
        Some(parked.event_id.as_str()),
        "the parked event, sent after all"
    );

    admin
        .delete_subscription(pb::DeleteSubscriptionRequest {
            id: sub.id.clone(),
            expected_revision: 0,
        })
        .await?;
    eventually(
        Duration::from_secs(1),
        "the deletion to reach the agent",
        || async {
            let r = world
                .agent
                .emit(event("shop-1", "order.created", &json!({})))
                .await?;
            Ok((r.matched == 0).then_some(()))
        },
    )
    .await?;
    let status = admin
        .get_subscription(pb::GetSubscriptionRequest {
            id: sub.id.clone(),
            show_secrets: false,
        })
        .await
        .expect_err("deleted");
    assert_eq!(status.code(), tonic::Code::NotFound);
    Ok(())
}

/// Another agent of `world`'s, started with `options`, once it holds shop-1's subscription
/// to `export.*` (at the receiver's `/exports`).
async fn exports_agent(world: &World, options: AgentOptions) -> anyhow::Result<Agent> {
    let sub = world
        .control_plane
        .create(subscription(
            "shop-1",
            &world.receiver.url("/exports"),
            &["export.*"],
        ))
        .await?;
    world.another_agent_applied(options, sub.revision).await
}

#[tokio::test]
async fn an_agent_given_room_for_large_payloads_takes_them_and_refuses_larger_batches()
-> anyhow::Result<()> {
    const MIB: usize = 1024 * 1024;
    let world = World::start().await?;
    let agent = exports_agent(
        &world,
        AgentOptions {
            max_payload_bytes: Some(5 * MIB),
            ..Default::default()
        },
    )
    .await?;

    // A payload past gRPC's usual 4 MiB message limit, within the agent's 5 MiB.
    let large = |bytes: usize| {
        event(
            "shop-1",
            "export.ready",
            &json!({ "data": "x".repeat(bytes) }),
        )
    };
    let emitted = agent.emit(large(4 * MIB + MIB / 2)).await?;
    assert_eq!(emitted.matched, 1);
    let requests = world.receiver.wait_for_requests(1, WAIT).await?;
    assert!(requests[0].body.len() > 4 * MIB + MIB / 2);

    // A batch whose message is over the agent's limit, though each payload is within it:
    // RESOURCE_EXHAUSTED, as gRPC says of a message over the limit; split it.
    let refused = agent
        .events()
        .await?
        .emit_batch(pb::EmitBatchRequest {
            events: vec![large(3 * MIB), large(3 * MIB)],
        })
        .await
        .expect_err("6 MiB in one message");
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(
        refused.message().contains("over the limit"),
        "{}",
        refused.message()
    );
    Ok(())
}

#[tokio::test]
async fn a_burst_of_large_batches_through_a_small_emit_budget_is_all_accepted_and_delivered()
-> anyhow::Result<()> {
    const KIB: usize = 1024;
    const CALLS: usize = 40;
    const EVENTS: usize = 20;
    let world = World::start().await?;
    // Room for about three of these 500 KiB batches at once: the others wait their turn, and
    // their bytes wait on the callers' side, on the same connection as those being read.
    let agent = exports_agent(
        &world,
        AgentOptions {
            max_emit_bytes_in_flight: Some(1536 * KIB),
            ..Default::default()
        },
    )
    .await?;

    let events = agent.events().await?;
    let calls = (0..CALLS).map(|call| {
        let mut events = events.clone();
        async move {
            let batch = (0..EVENTS)
                .map(|i| {
                    event(
                        "shop-1",
                        "export.ready",
                        &json!({ "call": call, "i": i, "data": "x".repeat(25 * KIB) }),
                    )
                })
                .collect();
            events
                .emit_batch(pb::EmitBatchRequest { events: batch })
                .await
        }
    });
    let answers = tokio::time::timeout(WAIT, futures_util::future::join_all(calls))
        .await
        .map_err(|_| anyhow::anyhow!("the burst did not finish: requests stalled each other"))?;
    for answer in answers {
        let accepted = answer?.into_inner();
        assert_eq!(accepted.results.len(), EVENTS);
    }
    let requests = world
        .receiver
        .wait_for_requests(CALLS * EVENTS, Duration::from_secs(60))
        .await?;
    assert_eq!(requests.len(), CALLS * EVENTS, "each event once");
    Ok(())
}
