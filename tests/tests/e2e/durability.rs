//! The agent keeps delivering when everything around it fails: the control plane down for
//! 30 s, a restart with no control plane, a full queue, a start that fails half-way.

use std::collections::HashSet;
use std::time::Duration;

use herald_proto::v1 as pb;
use herald_tests::{
    AgentOptions, ConfigStore, ControlPlane, HeldPort, World, event, eventually, subscription,
};

use crate::metrics::{scrape, value};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn deliveries_go_on_while_the_control_plane_is_down_and_every_attempt_is_logged_once()
-> anyhow::Result<()> {
    let mut world = World::start().await?;
    let sub = world
        .control_plane
        .create(subscription(
            "shop-1",
            &world.receiver.url("/orders"),
            &["order.*"],
        ))
        .await?;
    world.control_plane.wait_applied(sub.revision, WAIT).await?;
    let mut emitted = Vec::new();
    for i in 0..5 {
        emitted.push(
            world
                .agent
                .emit(event("shop-1", "order.created", &json!({"i": i})))
                .await?
                .event_id,
        );
    }

    world.control_plane.pause().await?;
    // 30 s without a control plane: events keep being accepted and delivered.
    for i in 0..30 {
        let response = world
            .agent
            .emit(event("shop-1", "order.created", &json!({"down": i})))
            .await?;
        assert_eq!(response.matched, 1);
        emitted.push(response.event_id);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    world
        .receiver
        .wait_for_requests(emitted.len(), WAIT)
        .await?;

    world.control_plane.resume().await?;
    let log = eventually(WAIT, "every attempt in the central log", || async {
        let attempts = world
            .control_plane
            .attempts(pb::AttemptFilter {
                subscription_id: sub.id.clone(),
                ..Default::default()
            })
            .await?;
        Ok((attempts.len() >= emitted.len()).then_some(attempts))
    })
    .await?;
    // Exactly once: one delivered first attempt per event, nothing twice.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log_again = world
        .control_plane
        .attempts(pb::AttemptFilter {
            subscription_id: sub.id.clone(),
            ..Default::default()
        })
        .await?;
    assert_eq!(log_again.len(), log.len());
    assert_eq!(log.len(), emitted.len());
    let logged: HashSet<_> = log
        .iter()
        .map(|a| (a.event_id.clone(), a.attempt))
        .collect();
    assert_eq!(logged.len(), log.len(), "no attempt stored twice");
    for id in &emitted {
        assert!(logged.contains(&(id.clone(), 1)), "{id} logged");
    }
    assert!(
        log.iter()
            .all(|a| a.outcome == pb::Outcome::Delivered as i32)
    );
    Ok(())
}

#[tokio::test]
async fn an_agent_started_without_a_control_plane_delivers_with_its_cached_config()
-> anyhow::Result<()> {
    let mut world = World::start().await?;
    let keep = world
        .control_plane
        .create(subscription(
            "shop-1",
            &world.receiver.url("/keep"),
            &["order.*"],
        ))
        .await?;
    let removed = world
        .control_plane
        .create(subscription(
            "shop-1",
            &world.receiver.url("/removed"),
            &["order.*"],
        ))
        .await?;
    world
        .control_plane
        .wait_applied(removed.revision.max(keep.revision), WAIT)
        .await?;
    let cache = herald_agent::config_cache::path(world.agent.data_dir());
    eventually(WAIT, "the config cache to be written", || async {
        let cached = herald_agent::config_cache::load(world.agent.data_dir());
        Ok(cached.filter(|r| r.len() == 2).map(|_| ()))
    })
    .await?;
    assert!(cache.exists());

    // While the agent is away, one subscription is deleted; then the control plane goes too.
    world.agent.pause().await?;
    let mut admin = world.control_plane.subscriptions().await?;
    admin
        .delete_subscription(pb::DeleteSubscriptionRequest {
            id: removed.id.clone(),
            expected_revision: 0,
        })
        .await?;
    drop(admin);
    world.control_plane.pause().await?;

    // The agent starts with no control plane and delivers with what it last knew.
    world.agent.resume().await?;
    let offline = world
        .agent
        .emit(event("shop-1", "order.created", &json!({"offline": true})))
        .await?;
    assert_eq!(
        offline.matched, 2,
        "the cached config, deletion not yet known"
    );
    world.receiver.wait_for_requests(2, WAIT).await?;

    // The control plane returns: a full resync, so the deletion made in the gap arrives.
    world.control_plane.resume().await?;
    eventually(WAIT, "the deletion to reach the agent", || async {
        let r = world
            .agent
            .emit(event("shop-1", "order.created", &json!({})))
            .await?;
        Ok((r.matched == 1).then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn deliveries_a_stale_cached_config_does_not_hold_wait_for_the_control_plane()
-> anyhow::Result<()> {
    let mut world = World::start().await?;
    // The receiver fails at first: the delivery stays queued, retried every second.
    world.receiver.respond_with(503);
    let mut orders = subscription("shop-1", &world.receiver.url("/orders"), &["order.*"]);
    let schedule = herald_core::retry::RetrySchedule::parse(&["1s"; 20].join(","))?;
    orders.retry = Some(herald_proto::convert::retry_policy(&schedule));
    let sub = world.control_plane.create(orders).await?;
    world.control_plane.wait_applied(sub.revision, WAIT).await?;
    world
        .agent
        .emit(event("shop-1", "order.created", &json!({"id": 42})))
        .await?;
    world.receiver.wait_for_requests(1, WAIT).await?;

    // The agent stops; its config cache is older than the subscription (a save that failed
    // on a full disk, say), and the control plane is away when it starts again.
    world.agent.pause().await?;
    let stale = herald_agent::routes::Routes::default().apply(&pb::ConfigUpdate {
        revision: 1,
        snapshot: true,
        ..Default::default()
    })?;
    herald_agent::config_cache::save(world.agent.data_dir(), &stale)?;
    world.control_plane.pause().await?;
    world.receiver.respond_with(200);
    let before = world.receiver.requests().len();
    world.agent.resume().await?;
    // Past the delivery's next due time (a second) with only the stale table.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(world.receiver.requests().len(), before);

    // The subscription it does not know is not taken for removed: once the control plane is
    // back, the delivery is made (skipped, it never would be).
    world.control_plane.resume().await?;
    world.receiver.wait_for_requests(before + 1, WAIT).await?;
    Ok(())
}

#[tokio::test]
async fn a_full_queue_answers_resource_exhausted_and_loses_nothing_before() -> anyhow::Result<()> {
    let world = World::start().await?;
    // The receiver is down: the events wait for their retries, and fill the queue.
    world.receiver.respond_with(503);
    let mut orders = subscription("shop-1", &world.receiver.url("/orders"), &["order.*"]);
    let schedule = herald_core::retry::RetrySchedule::parse("500ms,500ms,500ms,500ms,500ms")?;
    orders.retry = Some(herald_proto::convert::retry_policy(&schedule));
    let sub = world.control_plane.create(orders).await?;
    let small = world
        .another_agent_applied(
            AgentOptions {
                max_queue_events: Some(5),
                max_queue_share: Some(1.0),
                ..Default::default()
            },
            sub.revision,
        )
        .await?;
    let mut accepted = Vec::new();
    for i in 0..5 {
        accepted.push(
            small
                .emit(event("shop-1", "order.created", &json!({"i": i})))
                .await?
                .event_id,
        );
    }
    let status = small
        .events()
        .await?
        .emit(pb::EmitRequest {
            event: Some(event("shop-1", "order.created", &json!({"i": 5}))),
        })
        .await
        .expect_err("the sixth does not fit");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("full"), "{}", status.message());
    assert_eq!(
        herald_proto::refusal::Reason::of(&status),
        None,
        "a full queue is a limit to back off from, not a full disk"
    );

    // The receiver is back: every accepted event arrives, and the queue has room again.
    world.receiver.respond_with(200);
    let delivered = eventually(WAIT, "every accepted event delivered", || async {
        let delivered: HashSet<String> = world
            .control_plane
            .attempts(pb::AttemptFilter {
                subscription_id: sub.id.clone(),
                outcome: pb::Outcome::Delivered as i32,
                ..Default::default()
            })
            .await?
            .into_iter()
            .map(|a| a.event_id)
            .collect();
        Ok(accepted
            .iter()
            .all(|id| delivered.contains(id))
            .then_some(delivered))
    })
    .await?;
    assert_eq!(delivered.len(), 5);
    eventually(WAIT, "room in the queue again", || async {
        Ok(small
            .emit(event("shop-1", "order.created", &json!({"i": 6})))
            .await
            .ok())
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_queue_bounded_at_200_takes_1000_events_the_receiver_keeps_up_with() -> anyhow::Result<()>
{
    let world = World::start().await?;
    let sub = world
        .control_plane
        .create(subscription(
            "shop-1",
            &world.receiver.url("/orders"),
            &["order.*"],
        ))
        .await?;
    let small = world
        .another_agent_applied(
            AgentOptions {
                max_queue_events: Some(200),
                ..Default::default()
            },
            sub.revision,
        )
        .await?;
    // In steps of 50 (a quarter of the bound, half of one tenant's share), each step once
    // the one before is delivered: the pace of a receiver that keeps up.
    for step in 0..20 {
        for i in 0..50 {
            let n = step * 50 + i;
            small
                .emit(event("shop-1", "order.created", &json!({ "n": n })))
                .await
                .map_err(|err| anyhow::anyhow!("event {n} refused: {err}"))?;
        }
        world
            .receiver
            .wait_for_requests((step as usize + 1) * 50, WAIT)
            .await?;
    }
    assert_eq!(world.receiver.request_count(), 1000);
    Ok(())
}

#[tokio::test]
async fn a_disabled_subscription_keeps_a_bounded_number_of_parked_deliveries() -> anyhow::Result<()>
{
    let world = World::start().await?;
    let open = world
        .control_plane
        .create(subscription(
            "shop-1",
            &world.receiver.url("/open"),
            &["order.*"],
        ))
        .await?;
    let closed = world
        .control_plane
        .create(subscription(
            "shop-1",
            &world.receiver.url("/closed"),
            &["order.*"],
        ))
        .await?;
    let agent_metrics = HeldPort::new()?;
    let agent = world
        .another_agent_applied(
            AgentOptions {
                max_parked_deliveries: Some(3),
                metrics_listen: Some(agent_metrics.addr()),
                ..Default::default()
            },
            0,
        )
        .await?;
    let mut admin = world.control_plane.subscriptions().await?;
    let disabled = admin
        .disable_subscription(pb::DisableSubscriptionRequest {
            id: closed.id.clone(),
            reason: String::new(),
        })
        .await?
        .into_inner();
    world
        .control_plane
        .wait_applied(disabled.revision.max(open.revision), WAIT)
        .await?;
    for n in 0..10 {
        let emitted = agent
            .emit(event("shop-1", "order.created", &json!({ "n": n })))
            .await?;
        assert_eq!(emitted.matched, 2, "event {n}: both match; never refused");
    }
    world.receiver.wait_for_requests(10, WAIT).await?;
    // Three parked; the seven past the bound are logged as not kept, naming the flag.
    let not_kept = eventually(WAIT, "seven deliveries logged as not kept", || async {
        let log = world
            .control_plane
            .attempts(pb::AttemptFilter {
                subscription_id: closed.id.clone(),
                ..Default::default()
            })
            .await?;
        let not_kept: Vec<pb::Attempt> = log
            .into_iter()
            .filter(|a| {
                a.outcome == pb::Outcome::Skipped as i32
                    && a.error.contains("--max-parked-deliveries")
            })
            .collect();
        Ok((not_kept.len() == 7).then_some(not_kept))
    })
    .await?;
    assert!(
        not_kept
            .iter()
            .all(|a| !a.agent_id.is_empty() && a.error_kind == "skipped"),
        "{not_kept:?}"
    );
    // The agent counts both: three parked now, seven not kept.
    eventually(WAIT, "the parked gauges", || async {
        let samples = scrape(agent_metrics.addr()).await?;
        let parked = value(&samples, "herald_queue_deliveries_parked");
        let dropped = value(&samples, "herald_queue_parked_deliveries_dropped");
        anyhow::ensure!(
            parked == 3.0 && dropped == 7.0,
            "parked {parked}, dropped {dropped}"
        );
        Ok(Some(()))
    })
    .await?;
    // Enabled with its parked deliveries: the three kept go out, and only they.
    admin
        .enable_subscription(pb::EnableSubscriptionRequest {
            id: closed.id.clone(),
            replay_parked: true,
        })
        .await?;
    world.receiver.wait_for_requests(13, WAIT).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let to_closed = world
        .receiver
        .requests()
        .iter()
        .filter(|r| r.path == "/closed")
        .count();
    assert_eq!(to_closed, 3);
    eventually(WAIT, "none parked once enabled", || async {
        let samples = scrape(agent_metrics.addr()).await?;
        let parked = value(&samples, "herald_queue_deliveries_parked");
        anyhow::ensure!(parked == 0.0, "parked {parked}");
        Ok(Some(()))
    })
    .await?;
    Ok(())
}

/// A start that fails (here: the metrics port is taken) leaves nothing running behind it: the
/// same data directory starts at once afterwards and delivers.
#[tokio::test]
async fn a_failed_start_leaves_the_data_directory_free_for_the_next() -> anyhow::Result<()> {
    let world = World::start().await?;
    let sub = world
        .control_plane
        .create(subscription(
            "shop-1",
            &world.receiver.url("/restarted"),
            &["order.*"],
        ))
        .await?;
    world.control_plane.wait_applied(sub.revision, WAIT).await?;
    let data = tempfile::tempdir()?;
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let mut failed = world
        .another_agent(AgentOptions {
            data_dir: Some(data.path().to_owned()),
            metrics_listen: Some(taken.local_addr()?),
            ..Default::default()
        })
        .await?;
    let err = failed.pause().await.expect_err("the metrics port is taken");
    assert!(
        matches!(
            err.downcast_ref::<herald_agent::Error>(),
            Some(herald_agent::Error::Metrics { .. })
        ),
        "{err:#}"
    );

    let agent = world
        .another_agent(AgentOptions {
            data_dir: Some(data.path().to_owned()),
            ..Default::default()
        })
        .await?;
    let emitted = eventually(WAIT, "the second start accepting events", || async {
        Ok(agent
            .emit(event("shop-1", "order.created", &json!({ "n": 1 })))
            .await
            .ok()
            .filter(|e| e.matched == 1))
    })
    .await?;
    let arrived = world.receiver.wait_for_requests(1, WAIT).await?;
    assert_eq!(
        arrived[0].header("webhook-id"),
        Some(emitted.event_id.as_str())
    );
    Ok(())
}

/// The same for a control plane: one whose start fails after its stores opened (the metrics
/// port is taken) stops what it started, so the same data directory serves again.
#[tokio::test]
async fn a_control_plane_that_fails_to_start_frees_its_data_directory() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let metrics = taken.local_addr()?;
    let mut failed = ControlPlane::start_configured(ConfigStore::Embedded, |config| {
        config.data_dir = data.path().to_owned();
        config.metrics_listen = Some(metrics);
    })
    .await?;
    let err = failed.pause().await.expect_err("the metrics port is taken");
    assert!(
        matches!(
            err.downcast_ref::<herald_control_plane::Error>(),
            Some(herald_control_plane::Error::Metrics { .. })
        ),
        "{err:#}"
    );

    // What the failed start spawned lets go of the files as it stops: the next start finds
    // them free within moments (a start that still finds them held fails, and is tried again).
    let created = eventually(WAIT, "a second start serving the same data", || async {
        let control_plane = ControlPlane::start_configured(ConfigStore::Embedded, |config| {
            config.data_dir = data.path().to_owned();
        })
        .await?;
        let created = control_plane
            .create(subscription(
                "shop-1",
                "https://127.0.0.1:9/hooks",
                &["order.*"],
            ))
            .await
            .ok();
        Ok(created.map(|sub| (control_plane, sub)))
    })
    .await;
    let (control_plane, sub) = created?;
    assert_eq!(
        control_plane.get(&sub.id).await?.url,
        "https://127.0.0.1:9/hooks"
    );
    Ok(())
}
