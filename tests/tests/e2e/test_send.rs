//! Test-sends: `TestSubscription` makes one signed attempt to one subscription now, through
//! the agent, and answers what the endpoint said. Other subscriptions of the same type receive
//! nothing; a disabled subscription can be tested; the payload defaults to the catalogue's
//! example; the attempt is logged as a test and counts toward no health.

use std::time::Duration;

use herald_proto::v1 as pb;
use herald_proto::v1::event_types_client::EventTypesClient;
use herald_tests::{Response, World, secret_of, signature_verifies, subscription};
use serde_json::json;
use tonic::Code;

const WAIT: Duration = Duration::from_secs(15);

async fn test_send(
    world: &World,
    id: &str,
    event_type: &str,
    payload: &str,
) -> Result<pb::Attempt, tonic::Status> {
    let mut subscriptions = world
        .control_plane
        .subscriptions()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let answer = subscriptions
        .test_subscription(pb::TestSubscriptionRequest {
            id: id.into(),
            event_type: event_type.into(),
            payload: payload.as_bytes().to_vec(),
        })
        .await?;
    Ok(answer.into_inner().attempt.expect("an attempt"))
}

#[tokio::test]
async fn a_test_reaches_one_endpoint_and_is_logged_as_a_test() -> anyhow::Result<()> {
    let world = World::start().await?;
    let tested = world
        .control_plane
        .create(subscription(
            "shop-test",
            &world.receiver.url("/tested"),
            &["order.created"],
        ))
        .await?;
    let other = world
        .control_plane
        .create(subscription(
            "shop-test",
            &world.receiver.url("/other"),
            &["order.*"],
        ))
        .await?;
    world
        .control_plane
        .wait_applied(other.revision.max(tested.revision), WAIT)
        .await?;

    let attempt = test_send(&world, &tested.id, "", r#"{"order_id":"ord_test_1"}"#).await?;
    assert_eq!(attempt.status_code, 200, "{attempt:?}");
    assert!(attempt.test);
    assert_eq!(attempt.outcome(), pb::Outcome::Delivered);
    assert_eq!(attempt.event_type, "order.created", "its exact type");
    let requests = world.receiver.wait_for_requests(1, WAIT).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let requests_now = world.receiver.requests();
    assert_eq!(requests_now.len(), 1, "one request: {requests:?}");
    let request = &requests_now[0];
    assert_eq!(request.path, "/tested");
    assert_eq!(request.data(), json!({"order_id": "ord_test_1"}));
    assert_eq!(
        request.header("webhook-id"),
        Some(attempt.event_id.as_str())
    );
    assert!(signature_verifies(request, &[&secret_of(&tested)]));

    // Logged as a test of that subscription.
    let logged = world
        .control_plane
        .attempts(pb::AttemptFilter {
            subscription_id: tested.id.clone(),
            ..Default::default()
        })
        .await?;
    assert_eq!(logged.len(), 1);
    assert!(logged[0].test && logged[0].event_id == attempt.event_id);

    // A type the subscription does not receive is refused before anything is sent.
    let refused = test_send(&world, &tested.id, "product.created", "")
        .await
        .expect_err("not its type");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused
            .message()
            .contains("does not receive product.created")
    );
    let unknown = test_send(&world, "sub_nobody", "", "")
        .await
        .expect_err("unknown");
    assert_eq!(unknown.code(), Code::NotFound);
    Ok(())
}

#[tokio::test]
async fn a_failing_or_disabled_endpoint_is_tested_without_touching_its_health() -> anyhow::Result<()>
{
    let world = World::start().await?;
    let sub = world
        .control_plane
        .create(subscription(
            "shop-test",
            &world.receiver.url("/hooks"),
            &["order.*", "invoice.*"],
        ))
        .await?;
    // Patterns only and nothing catalogued: the caller is told to name a type.
    let unnamed = test_send(&world, &sub.id, "", "")
        .await
        .expect_err("no type to pick");
    assert_eq!(unnamed.code(), Code::InvalidArgument);
    assert!(
        unnamed.message().contains("--type"),
        "{}",
        unnamed.message()
    );
    let mut types = EventTypesClient::new(world.control_plane.channel().await?);
    types
        .create_event_type(pb::CreateEventTypeRequest {
            event_type: Some(pb::EventType {
                name: "order.paid".into(),
                description: "An order was paid.".into(),
                example: br#"{"order_id":"ord_example","total":"10.00"}"#.to_vec(),
                schema: br#"{"type":"object","required":["order_id"],"properties":{"order_id":{"type":"string"}}}"#.to_vec(),
                ..Default::default()
            }),
        })
        .await?;
    types
        .create_event_type(pb::CreateEventTypeRequest {
            event_type: Some(pb::EventType {
                name: "invoice.issued".into(),
                description: "An invoice was issued.".into(),
                ..Default::default()
            }),
        })
        .await?;
    let disabled = world
        .control_plane
        .disable(&sub.id, "checking it first")
        .await?;
    world
        .control_plane
        .wait_applied(disabled.revision, WAIT)
        .await?;

    // The endpoint fails: the answer says how, and the subscription's health is untouched.
    world
        .receiver
        .script([Response::new(503).body("maintenance until 14:00")]);
    let failed = test_send(&world, &sub.id, "", "").await?;
    assert_eq!(failed.status_code, 503);
    assert_eq!(failed.error_kind, "http_status");
    assert_eq!(failed.outcome(), pb::Outcome::Failed);
    assert!(
        failed.response_excerpt.contains("maintenance"),
        "{failed:?}"
    );
    // No exact type, so the catalogue's first type that the first pattern selects (an order,
    // though an invoice type comes first by name), with its example.
    assert_eq!(failed.event_type, "order.paid");
    let requests = world.receiver.wait_for_requests(1, WAIT).await?;
    assert_eq!(
        requests[0].data(),
        json!({"order_id": "ord_example", "total": "10.00"})
    );
    let health = world
        .control_plane
        .subscriptions()
        .await?
        .get_subscription_health(pb::GetSubscriptionHealthRequest { id: sub.id.clone() })
        .await?
        .into_inner();
    assert_eq!(health.consecutive_failures, 0, "{health:?}");
    assert_eq!(health.recent_attempts, 0, "{health:?}");

    // A payload its type's schema refuses is refused before anything is sent.
    let refused = test_send(&world, &sub.id, "order.paid", r#"{"order_id": 7}"#)
        .await
        .expect_err("order_id must be a string");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("at /order_id"),
        "{}",
        refused.message()
    );
    assert_eq!(world.receiver.requests().len(), 1, "nothing more was sent");

    // It answers again: the disabled subscription checks out before it is enabled.
    world.receiver.respond_with(204);
    let ok = test_send(&world, &sub.id, "order.created", r#"{"order_id":"ord_2"}"#).await?;
    assert_eq!(
        (ok.status_code, ok.event_type.as_str()),
        (204, "order.created")
    );
    assert!(!world.control_plane.get(&sub.id).await?.enabled);
    Ok(())
}
