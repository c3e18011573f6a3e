//! Operator events: the control plane tells operators, as ordinary webhooks of the system
//! tenant, when a delivery is exhausted, when a subscription is disabled, and when it is back.

use std::time::Duration;

use herald_proto::v1 as pb;
use herald_tests::herald::status_of;
use herald_tests::{Postgres, Receiver, World, event, subscription};
use serde_json::Value;

/// The operator events `receiver` got so far, by type.
fn events(receiver: &Receiver) -> Vec<Value> {
    receiver.requests().iter().map(|r| r.json()).collect()
}

async fn wait_for_type(receiver: &Receiver, event_type: &str) -> anyhow::Result<Value> {
    herald_tests::eventually(Duration::from_secs(15), event_type, || async {
        Ok(events(receiver)
            .into_iter()
            .find(|e| e["type"] == event_type))
    })
    .await
}

#[tokio::test]
async fn operators_hear_of_exhausted_deliveries_disables_and_recoveries() -> anyhow::Result<()> {
    let world = World::start().await?;
    let operators = Receiver::start(&world.ca).await?;
    let ops = world
        .control_plane
        .create(subscription(
            "herald",
            &operators.url("/ops"),
            &["herald.*"],
        ))
        .await?;

    world.receiver.respond_with(500);
    let mut shop = subscription("shop-1", &world.receiver.url("/hook"), &["order.*"]);
    shop.retry = Some(herald_proto::convert::retry_policy(
        &herald_core::retry::RetrySchedule::parse("50ms")?,
    ));
    shop.disable_after = 2;
    let shop = world.control_plane.create(shop).await?;
    world
        .control_plane
        .wait_applied(shop.revision.max(ops.revision), Duration::from_secs(10))
        .await?;
    let emitted = world
        .agent
        .emit(event(
            "shop-1",
            "order.created",
            &serde_json::json!({"id": 1}),
        ))
        .await?;

    let exhausted = wait_for_type(&operators, "herald.delivery.exhausted").await?;
    assert_eq!(exhausted["data"]["event_id"], emitted.event_id.as_str());
    assert_eq!(exhausted["data"]["subscription_id"], shop.id.as_str());
    assert_eq!(exhausted["data"]["attempts"], 2);
    assert_eq!(exhausted["data"]["last_status"], 500);

    let disabled = wait_for_type(&operators, "herald.subscription.disabled").await?;
    assert_eq!(disabled["data"]["subscription_id"], shop.id.as_str());
    assert_eq!(disabled["data"]["tenant"], "shop-1");
    assert!(
        disabled["data"]["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("auto: 2 consecutive failures")),
        "{disabled}"
    );

    world
        .control_plane
        .subscriptions()
        .await?
        .enable_subscription(pb::EnableSubscriptionRequest {
            id: shop.id.clone(),
            ..Default::default()
        })
        .await?;
    let recovered = wait_for_type(&operators, "herald.subscription.recovered").await?;
    assert_eq!(recovered["data"]["subscription_id"], shop.id.as_str());
    assert_eq!(recovered["data"]["reason"], "enabled");

    // Each event arrived once, with an id naming its type, signed like any webhook.
    let requests = operators.requests();
    let ids: Vec<&str> = requests
        .iter()
        .filter_map(|r| r.header("webhook-id"))
        .collect();
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "{ids:?}");
    assert!(ids.iter().all(|id| id.starts_with("herald.")), "{ids:?}");
    let secret = herald_tests::secret_of(&ops);
    assert!(
        requests
            .iter()
            .all(|r| herald_tests::signature_verifies(r, &[&secret]))
    );
    Ok(())
}

/// While the delivery log's database is down, an operator's disable still works and its
/// event waits in the config store until the log answers, then reaches operators; an enable
/// the log cannot reset the failure count of changes nothing and says why.
#[tokio::test]
async fn a_disable_during_a_log_outage_is_told_once_the_log_answers() -> anyhow::Result<()> {
    let mut postgres = Postgres::start().await?;
    let world = World::start_with_log(Some(postgres.url())).await?;
    let operators = Receiver::start(&world.ca).await?;
    let ops = world
        .control_plane
        .create(subscription(
            "herald",
            &operators.url("/ops"),
            &["herald.*"],
        ))
        .await?;
    let shop = world
        .control_plane
        .create(subscription(
            "shop-1",
            &world.receiver.url("/hook"),
            &["order.*"],
        ))
        .await?;
    world
        .control_plane
        .wait_applied(shop.revision.max(ops.revision), Duration::from_secs(10))
        .await?;

    postgres.stop().await?;
    let disabled = world
        .control_plane
        .disable(&shop.id, "shop moving hosts")
        .await?;
    assert!(!disabled.enabled);
    let refused = world
        .control_plane
        .enable(&shop.id, false)
        .await
        .expect_err("the failure count cannot be reset");
    let status = status_of(&refused)?;
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().starts_with("not enabled"), "{status:?}");
    assert!(
        !world.control_plane.get(&shop.id).await?.enabled,
        "nothing changed"
    );

    postgres.start_again().await?;
    let told = herald_tests::eventually(
        Duration::from_secs(30),
        "the disabled event after the outage",
        || async {
            Ok(events(&operators)
                .into_iter()
                .find(|e| e["type"] == "herald.subscription.disabled"))
        },
    )
    .await?;
    assert_eq!(told["data"]["subscription_id"], shop.id.as_str());
    assert_eq!(told["data"]["reason"], "shop moving hosts");
    let enabled = world.control_plane.enable(&shop.id, false).await?;
    assert!(enabled.enabled);
    wait_for_type(&operators, "herald.subscription.recovered").await?;
    Ok(())
}
