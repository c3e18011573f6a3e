//! The body sent: the log keeps each delivery's request as the receiver got it (headers with
//! the signature and credentials masked, and the body byte for byte), once per delivery, in
//! PostgreSQL as in the embedded log, cut to `--log-body-limit` (none at 0), until it is
//! expunged.

use std::time::Duration;

use herald_proto::sent_request::MASKED;
use herald_proto::v1 as pb;
use herald_tests::{Postgres, World, event, eventually, subscription};

use serde_json::json;
use tonic::Code;

const WAIT: Duration = Duration::from_secs(15);

/// Subscribes to `order.*` with a credential in a header of its own, emits one order, and
/// returns the event id once the receiver has its request.
async fn deliver_one_order(world: &World, payload: &serde_json::Value) -> anyhow::Result<String> {
    let mut sub = subscription("shop-1", &world.receiver.url("/orders"), &["order.*"]);
    sub.headers
        .insert("x-api-key".into(), "k-very-secret".into());
    let created = world.control_plane.create(sub).await?;
    world
        .control_plane
        .wait_applied(created.revision, WAIT)
        .await?;
    let emitted = world
        .agent
        .emit(event("shop-1", "order.created", payload))
        .await?;
    world.receiver.wait_for_requests(1, WAIT).await?;
    Ok(emitted.event_id)
}

/// The attempts logged for `event_id`.
async fn attempts_of(world: &World, event_id: &str) -> anyhow::Result<Vec<pb::Attempt>> {
    world
        .control_plane
        .attempts(pb::AttemptFilter {
            event_id: event_id.into(),
            ..Default::default()
        })
        .await
}

/// The requests stored for `event_id`, once the log has any.
async fn stored(world: &World, event_id: &str) -> anyhow::Result<Vec<pb::SentRequest>> {
    let deliveries = world.control_plane.deliveries().await?;
    eventually(WAIT, "the request to be logged", || {
        let mut deliveries = deliveries.clone();
        async move {
            match deliveries
                .get_sent_requests(pb::GetSentRequestsRequest {
                    event_id: event_id.into(),
                    ..Default::default()
                })
                .await
            {
                Ok(answer) => Ok(Some(answer.into_inner().requests)),
                Err(status) if status.code() == Code::NotFound => Ok(None),
                Err(status) => Err(status.into()),
            }
        }
    })
    .await
}

async fn the_request_is_kept_as_the_receiver_got_it(world: &World) -> anyhow::Result<()> {
    let payload = json!({"order_id": "ord_1", "customer": "Zoë Łukasiewicz", "total": 129.5});
    let event_id = deliver_one_order(world, &payload).await?;
    let received = world.receiver.requests()[0].clone();
    let requests = stored(world, &event_id).await?;
    let [request] = requests.as_slice() else {
        panic!("one request per delivery: {requests:?}");
    };
    assert_eq!(request.body, received.body.as_ref(), "byte for byte");
    assert_eq!(request.body_size, received.body.len() as u64);
    assert_eq!((request.method.as_str(), request.attempt), ("POST", 1));
    assert_eq!(request.url, world.receiver.url("/orders"));
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|h| h.name == name)
            .map(|h| h.value.as_str())
    };
    assert_eq!(header("webhook-id"), received.header("webhook-id"));
    assert_eq!(
        header("webhook-timestamp"),
        received.header("webhook-timestamp")
    );
    assert_eq!(header("content-type"), received.header("content-type"));
    assert_eq!(header("webhook-signature"), Some(MASKED));
    assert_eq!(header("x-api-key"), Some(MASKED));
    assert!(
        !format!("{requests:?}").contains("k-very-secret"),
        "no credential is stored"
    );

    // The attempts are listed without it.
    let attempts = attempts_of(world, &event_id).await?;
    assert!(attempts.iter().all(|a| a.request.is_none()), "{attempts:?}");

    // Expunged: gone, the attempts stay.
    let mut deliveries = world.control_plane.deliveries().await?;
    let expunged = deliveries
        .expunge_sent_requests(pb::ExpungeSentRequestsRequest {
            event_id: event_id.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(expunged.removed, 1);
    let gone = deliveries
        .get_sent_requests(pb::GetSentRequestsRequest {
            event_id: event_id.clone(),
            ..Default::default()
        })
        .await
        .expect_err("expunged");
    assert_eq!(gone.code(), Code::NotFound);
    let attempts = attempts_of(world, &event_id).await?;
    assert_eq!(attempts.len(), 1, "the attempt stays");
    Ok(())
}

#[tokio::test]
async fn the_embedded_log_keeps_the_request_as_the_receiver_got_it() -> anyhow::Result<()> {
    let world = World::start().await?;
    the_request_is_kept_as_the_receiver_got_it(&world).await
}

#[tokio::test]
async fn postgresql_keeps_the_request_as_the_receiver_got_it() -> anyhow::Result<()> {
    let postgres = Postgres::start().await?;
    let world = World::start_with_log(Some(postgres.url())).await?;
    the_request_is_kept_as_the_receiver_got_it(&world).await
}

#[tokio::test]
async fn the_log_keeps_no_more_of_a_body_than_its_limit() -> anyhow::Result<()> {
    let payload = json!({"order_id": "ord_cut", "note": "x".repeat(200)});
    let world = World::start_configured(|config| config.log_body_limit = 32).await?;
    let event_id = deliver_one_order(&world, &payload).await?;
    let received = world.receiver.requests()[0].body.clone();
    let requests = stored(&world, &event_id).await?;
    assert_eq!(requests[0].body, received[..32], "the first 32 bytes");
    assert_eq!(
        requests[0].body_size,
        received.len() as u64,
        "and the whole size"
    );
    drop(world);

    // At 0 the log keeps none (and the agent reports none).
    let world = World::start_configured(|config| config.log_body_limit = 0).await?;
    let event_id = deliver_one_order(&world, &payload).await?;
    let attempts = eventually(WAIT, "the attempt to be logged", || async {
        let attempts = attempts_of(&world, &event_id).await?;
        Ok((!attempts.is_empty()).then_some(attempts))
    })
    .await?;
    assert_eq!(attempts[0].outcome(), pb::Outcome::Delivered);
    let none = world
        .control_plane
        .deliveries()
        .await?
        .get_sent_requests(pb::GetSentRequestsRequest {
            event_id,
            ..Default::default()
        })
        .await
        .expect_err("none kept");
    assert_eq!(none.code(), Code::NotFound);
    assert!(
        none.message().contains("--log-body-limit"),
        "{}",
        none.message()
    );
    Ok(())
}
