//! Payload filters: a subscription receives only the events whose payload (or attributes)
//! match its filter. The control plane refuses a bad filter naming the bad part and stores a
//! good one in canonical form; the agent applies it when it accepts an event, so an event a
//! filter refuses is not counted in `matched` and never reaches the endpoint.

use std::time::Duration;

use herald_proto::v1 as pb;
use herald_tests::{World, event, subscription};
use serde_json::json;
use tonic::Code;

const WAIT: Duration = Duration::from_secs(15);

fn filtered(tenant: &str, url: &str, filter: &str) -> pb::Subscription {
    let mut sub = subscription(tenant, url, &["order.*"]);
    sub.payload_filter = filter.into();
    sub
}

fn with_attribute(mut event: pb::Event, key: &str, value: &str) -> pb::Event {
    event.attributes.insert(key.into(), value.into());
    event
}

#[tokio::test]
async fn each_endpoint_receives_only_the_events_its_filter_matches() -> anyhow::Result<()> {
    let world = World::start().await?;
    let tenant = "shop-filters";
    let big = world
        .control_plane
        .create(filtered(
            tenant,
            &world.receiver.url("/big"),
            r#"{ "total": {"$gte": 100}, "currency": {"$in": ["EUR", "PLN"]} }"#,
        ))
        .await?;
    assert_eq!(
        big.payload_filter, r#"{"currency":{"$in":["EUR","PLN"]},"total":{"$gte":100}}"#,
        "stored canonical"
    );
    let pos = world
        .control_plane
        .create(filtered(
            tenant,
            &world.receiver.url("/pos"),
            r#"{"$attributes": {"channel": "pos"}, "$not": {"tags": "test"}}"#,
        ))
        .await?;
    let all = world
        .control_plane
        .create(subscription(
            tenant,
            &world.receiver.url("/all"),
            &["order.*"],
        ))
        .await?;
    world
        .control_plane
        .wait_applied(all.revision.max(pos.revision).max(big.revision), WAIT)
        .await?;

    let emitted = [
        // Big, in EUR, from the web shop: /big and /all.
        (
            event(
                tenant,
                "order.created",
                &json!({"id": 1, "total": 150, "currency": "EUR"}),
            ),
            "web",
            2,
        ),
        // Small, at the till: /pos and /all.
        (
            event(
                tenant,
                "order.created",
                &json!({"id": 2, "total": 20, "currency": "EUR"}),
            ),
            "pos",
            2,
        ),
        // Big, at the till, in PLN: all three.
        (
            event(
                tenant,
                "order.paid",
                &json!({"id": 3, "total": 999.5, "currency": "PLN"}),
            ),
            "pos",
            3,
        ),
        // A test order at the till, in USD: /all only.
        (
            event(
                tenant,
                "order.created",
                &json!({"id": 4, "total": 500, "currency": "USD", "tags": ["test"]}),
            ),
            "pos",
            1,
        ),
        // Money as a decimal string, as shops often send it: big, then small, from the web.
        (
            event(
                tenant,
                "order.created",
                &json!({"id": 5, "total": "129.90", "currency": "EUR"}),
            ),
            "web",
            2,
        ),
        (
            event(
                tenant,
                "order.created",
                &json!({"id": 6, "total": "19.99", "currency": "EUR"}),
            ),
            "web",
            1,
        ),
    ];
    for (event, channel, matched) in emitted {
        let answer = world
            .agent
            .emit(with_attribute(event, "channel", channel))
            .await?;
        assert_eq!(answer.matched, matched, "{answer:?}");
    }
    world.receiver.wait_for_requests(11, WAIT).await?;
    // Nothing more arrives: the refused events made no deliveries.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut got: Vec<(String, u64)> = world
        .receiver
        .requests()
        .iter()
        .map(|r| {
            let body: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON body");
            (r.path.clone(), body["data"]["id"].as_u64().expect("an id"))
        })
        .collect();
    got.sort();
    let expected: Vec<(String, u64)> = [
        ("/all", 1),
        ("/all", 2),
        ("/all", 3),
        ("/all", 4),
        ("/all", 5),
        ("/all", 6),
        ("/big", 1),
        ("/big", 3),
        ("/big", 5),
        ("/pos", 2),
        ("/pos", 3),
    ]
    .iter()
    .map(|(p, i)| (p.to_string(), *i))
    .collect();
    assert_eq!(got, expected);

    // Removing the filter: every order again.
    let mut open = world.control_plane.get(&big.id).await?;
    open.payload_filter.clear();
    let updated = world
        .control_plane
        .subscriptions()
        .await?
        .update_subscription(pb::UpdateSubscriptionRequest {
            expected_revision: open.revision,
            subscription: Some(open),
            allow_unregistered: false,
        })
        .await?
        .into_inner();
    assert_eq!(updated.payload_filter, "");
    world
        .control_plane
        .wait_applied(updated.revision, WAIT)
        .await?;
    let answer = world
        .agent
        .emit(event(
            tenant,
            "order.created",
            &json!({"id": 5, "total": 1}),
        ))
        .await?;
    assert_eq!(answer.matched, 2, "/big and /all");
    Ok(())
}

#[tokio::test]
async fn bad_filters_are_refused_naming_the_bad_part() -> anyhow::Result<()> {
    let world = World::start().await?;
    let mut subscriptions = world.control_plane.subscriptions().await?;
    for (filter, expected) in [
        (
            r#"{"total": {"$gtx": 100}}"#,
            "payload_filter: total.$gtx: unknown operator",
        ),
        (
            r#"{"$or": []}"#,
            "payload_filter: $or: must be a non-empty array",
        ),
        (
            r#"{"total": "#,
            "payload_filter: is not a valid JSON document",
        ),
        (
            &format!(r#"{{"a": "{}"}}"#, "x".repeat(9000)),
            "payload_filter: is 9009 bytes, larger than the limit of 8192 bytes",
        ),
    ] {
        let status = subscriptions
            .create_subscription(pb::CreateSubscriptionRequest {
                subscription: Some(filtered("shop-bad", &world.receiver.url("/x"), filter)),
                allow_unregistered: true,
                ..Default::default()
            })
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().starts_with(expected),
            "{expected}: {}",
            status.message()
        );
        // The field as the proto names it.
        let refused = herald_proto::convert::refused_field(&status).expect("a field violation");
        assert_eq!(refused.field, "payload_filter");
    }
    Ok(())
}
