//! Replay: a delivery that failed for good is delivered again once the receiver recovers,
//! with the same `webhook-id` and the attempt numbers continuing; a delivery whose agent is
//! gone is reported as not replayable.

use std::time::Duration;

use herald_core::signing::HEADER_ID;
use herald_proto::v1 as pb;
use herald_proto::v1::deliveries_client::DeliveriesClient;
use herald_tests::{World, event, eventually, subscription};

async fn attempts_of(world: &World, event_id: &str) -> anyhow::Result<Vec<pb::Attempt>> {
    world
        .control_plane
        .attempts(pb::AttemptFilter {
            event_id: event_id.to_owned(),
            ..Default::default()
        })
        .await
}

#[tokio::test]
async fn a_failed_delivery_is_replayed_with_the_same_webhook_id() -> anyhow::Result<()> {
    let world = World::start().await?;
    world.receiver.respond_with(500);
    let mut sub = subscription("shop-1", &world.receiver.url("/hook"), &["order.*"]);
    let schedule = herald_core::retry::RetrySchedule::parse("50ms")?;
    sub.retry = Some(herald_proto::convert::retry_policy(&schedule));
    let sub = world.control_plane.create(sub).await?;
    world
        .control_plane
        .wait_applied(sub.revision, Duration::from_secs(10))
        .await?;
    let emitted = world
        .agent
        .emit(event(
            "shop-1",
            "order.created",
            &serde_json::json!({"id": 9}),
        ))
        .await?;
    let id = emitted.event_id;
    let failed = eventually(Duration::from_secs(10), "the delivery to fail", || async {
        let attempts = attempts_of(&world, &id).await?;
        Ok(attempts
            .iter()
            .any(|a| a.outcome() == pb::Outcome::Failed)
            .then_some(attempts))
    })
    .await?;
    assert_eq!(failed.len(), 2, "two attempts, then failed for good");
    let agent_id = failed[0].agent_id.clone();

    // The receiver recovers; the operator replays the event.
    world.receiver.respond_with(200);
    let mut deliveries = DeliveriesClient::new(world.control_plane.channel().await?);
    let replayed = deliveries
        .replay_deliveries(pb::ReplayDeliveriesRequest {
            event_id: id.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(replayed.queued, 1, "{replayed:?}");
    assert_eq!(replayed.agents[0].agent_id, agent_id);
    assert!(replayed.not_replayable.is_empty(), "{replayed:?}");

    let requests = world
        .receiver
        .wait_for_requests(3, Duration::from_secs(10))
        .await?;
    assert!(
        requests
            .iter()
            .all(|r| r.header(HEADER_ID) == Some(id.as_str()))
    );
    let delivered = eventually(Duration::from_secs(10), "the replay in the log", || async {
        let attempts = attempts_of(&world, &id).await?;
        Ok(attempts
            .iter()
            .find(|a| a.outcome() == pb::Outcome::Delivered)
            .cloned())
    })
    .await?;
    assert_eq!(
        delivered.attempt, 3,
        "attempt numbers continue after the logged ones"
    );
    assert_eq!(replayed.parked, 0, "{replayed:?}");

    // Replayed while its subscription is disabled, the delivery is queued and said to wait
    // parked.
    let disabled = world.control_plane.disable(&sub.id, "maintenance").await?;
    world
        .control_plane
        .wait_applied(disabled.revision, Duration::from_secs(10))
        .await?;
    let parked = deliveries
        .replay_deliveries(pb::ReplayDeliveriesRequest {
            event_id: id.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!((parked.queued, parked.parked), (1, 1), "{parked:?}");
    world.control_plane.enable(&sub.id, true).await?;
    world
        .receiver
        .wait_for_requests(4, Duration::from_secs(10))
        .await?;

    // Replaying what is now delivered, filtered to failed deliveries, finds nothing.
    let none = deliveries
        .replay_deliveries(pb::ReplayDeliveriesRequest {
            subscription_id: sub.id.clone(),
            since: Some(herald_proto::convert::timestamp(
                std::time::SystemTime::now() - Duration::from_secs(3600),
            )),
            outcome: pb::Outcome::Failed as i32,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(none.queued, 0);
    assert!(none.not_replayable.is_empty(), "{none:?}");

    // An event the log holds nothing of is not found, not "nothing queued".
    let unknown = deliveries
        .replay_deliveries(pb::ReplayDeliveriesRequest {
            event_id: "order-never-emitted".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound, "{unknown:?}");
    assert!(
        unknown.message().contains("order-never-emitted"),
        "{unknown:?}"
    );

    // A request naming nothing is refused.
    let refused = deliveries
        .replay_deliveries(pb::ReplayDeliveriesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    // So is one naming an id no event or subscription can have (nothing is written of it).
    for request in [
        pb::ReplayDeliveriesRequest {
            event_id: "e".repeat(100_000),
            ..Default::default()
        },
        pb::ReplayDeliveriesRequest {
            subscription_id: "sub 1; drop".into(),
            since: Some(herald_proto::convert::timestamp(
                std::time::SystemTime::now(),
            )),
            ..Default::default()
        },
    ] {
        let refused = deliveries.replay_deliveries(request).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
        let field = herald_proto::convert::refused_field(&refused)
            .expect("a field violation")
            .field;
        assert!(
            ["event_id", "subscription_id"].contains(&field.as_str())
                && refused.message().starts_with(&format!("{field}:")),
            "{refused:?}"
        );
    }
    // A subscription without a start names the start.
    let refused = deliveries
        .replay_deliveries(pb::ReplayDeliveriesRequest {
            subscription_id: "sub_01M9ZZZZZZZZZZZZZZZZZZZZZZ".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        herald_proto::convert::refused_field(&refused).map(|f| f.field),
        Some("since".to_owned()),
        "{refused:?}"
    );

    // With its agent gone, the event is reported, not skipped.
    let World {
        agent,
        control_plane,
        receiver: _receiver,
        etcd: _etcd,
        ..
    } = world;
    agent.stop().await?;
    let gone = DeliveriesClient::new(control_plane.channel().await?)
        .replay_deliveries(pb::ReplayDeliveriesRequest {
            event_id: id.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(gone.queued, 0);
    assert_eq!(gone.not_replayable.len(), 1, "{gone:?}");
    assert_eq!(gone.not_replayable[0].agent_id, agent_id);
    assert!(
        gone.not_replayable[0].reason.contains("not connected"),
        "{gone:?}"
    );
    Ok(())
}
