//! Endpoint health: an endpoint that keeps failing is disabled after N consecutive failed
//! attempts, counted across every agent and control-plane replica; while it is disabled its
//! deliveries are parked, and re-enabling it (replaying them or not) starts a fresh count.

use std::time::Duration;

use herald_control_plane::attempts::LogStoreFlag;
use herald_proto::v1 as pb;
use herald_tests::{
    Agent, AgentOptions, ConfigStore, ControlPlane, Postgres, World, event, eventually,
    subscription,
};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

async fn health(world: &World, id: &str) -> anyhow::Result<pb::SubscriptionHealth> {
    Ok(world
        .control_plane
        .subscriptions()
        .await?
        .get_subscription_health(pb::GetSubscriptionHealthRequest { id: id.to_owned() })
        .await?
        .into_inner())
}

async fn get(world: &World, id: &str) -> anyhow::Result<pb::Subscription> {
    Ok(world
        .control_plane
        .subscriptions()
        .await?
        .get_subscription(pb::GetSubscriptionRequest {
            id: id.to_owned(),
            show_secrets: false,
        })
        .await?
        .into_inner())
}

#[tokio::test]
async fn two_agents_on_two_replicas_failing_one_endpoint_disable_it_once() -> anyhow::Result<()> {
    // Replicas count health in the delivery log they share.
    let postgres = Postgres::start().await?;
    let world = World::start_with_log(Some(postgres.url())).await?;
    // A second control-plane replica on the same etcd and database, with an agent of its own.
    let shared = LogStoreFlag::new(postgres.url());
    let replica = ControlPlane::start_configured(
        ConfigStore::Etcd(vec![world.etcd.endpoint()]),
        move |config| config.log_store = shared,
    )
    .await?;
    let second = Agent::start(
        replica.url(),
        AgentOptions {
            trusted_ca: Some(world.ca.ca_pem()),
            ..Default::default()
        },
    )
    .await?;
    world.receiver.respond_with(500);
    let mut request = subscription("shop-1", &world.receiver.url("/down"), &["order.*"]);
    let schedule = herald_core::retry::RetrySchedule::parse("50ms,50ms,50ms,50ms,50ms,50ms")?;
    request.retry = Some(herald_proto::convert::retry_policy(&schedule));
    let sub = world.control_plane.create(request).await?;
    assert_eq!(sub.disable_after, 0, "the default applies");
    world.control_plane.wait_applied(sub.revision, WAIT).await?;
    second.wait_applied(&replica, sub.revision, WAIT).await?;

    // Seven attempts per event, from each agent: 14 failures in all, more than 10.
    world
        .agent
        .emit(event("shop-1", "order.created", &json!({"n": 1})))
        .await?;
    second
        .emit(event("shop-1", "order.created", &json!({"n": 2})))
        .await?;
    let disabled = eventually(WAIT, "the subscription to be disabled", || async {
        let sub = get(&world, &sub.id).await?;
        Ok((!sub.enabled).then_some(sub))
    })
    .await?;
    assert!(
        disabled.disabled_reason.starts_with("auto: ")
            && disabled.disabled_reason.ends_with(" consecutive failures"),
        "{}",
        disabled.disabled_reason
    );
    let failures: u32 = disabled
        .disabled_reason
        .trim_start_matches("auto: ")
        .trim_end_matches(" consecutive failures")
        .parse()?;
    assert!(failures >= 10, "{failures}");
    assert!(disabled.disabled_at.is_some());

    // The other replica saw the same run of failures and did not disable it again: the record
    // stays at the revision of the one disable.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(get(&world, &sub.id).await?.revision, disabled.revision);
    let record = health(&world, &sub.id).await?;
    assert!(record.consecutive_failures >= 10, "{record:?}");
    assert!(record.failing_since.is_some() && record.last_failure_at.is_some());
    assert_eq!(record.last_error, "HTTP 500");

    // Once every agent has the change, nothing more is sent: new events are parked.
    world
        .control_plane
        .wait_applied(disabled.revision, WAIT)
        .await?;
    replica.wait_applied(disabled.revision, WAIT).await?;
    let sent = world.receiver.request_count();
    let mut parked = Vec::new();
    for (n, agent) in [(3, &world.agent), (4, &second)] {
        let mut event = event("shop-1", "order.created", &json!({ "n": n }));
        event.id = format!("evt_parked_{n}");
        assert_eq!(agent.emit(event.clone()).await?.matched, 1);
        parked.push(event.id);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        world.receiver.request_count(),
        sent,
        "nothing sent while disabled"
    );

    // The receiver recovers; re-enabled by hand with the parked deliveries replayed: every
    // one arrives, and the count starts again from zero.
    world.receiver.respond_with(200);
    let enabled = world.control_plane.enable(&sub.id, true).await?;
    assert!(enabled.enabled && enabled.disabled_reason.is_empty());
    assert!(enabled.skip_parked_before.is_none());
    assert_eq!(health(&world, &sub.id).await?.consecutive_failures, 0);
    eventually(WAIT, "the parked deliveries", || async {
        let ids: Vec<String> = world
            .receiver
            .requests()
            .iter()
            .filter_map(|r| r.header("webhook-id").map(str::to_owned))
            .collect();
        Ok(parked.iter().all(|id| ids.contains(id)).then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_success_ends_the_run_and_the_limit_is_per_subscription() -> anyhow::Result<()> {
    let world = World::start().await?;
    let mut request = subscription("shop-1", &world.receiver.url("/flaky"), &["order.*"]);
    let schedule = herald_core::retry::RetrySchedule::parse("50ms,50ms,50ms,50ms")?;
    request.retry = Some(herald_proto::convert::retry_policy(&schedule));
    request.disable_after = 3;
    let sub = world.control_plane.create(request).await?;
    world.control_plane.wait_applied(sub.revision, WAIT).await?;

    // Two failures, then a success: no disable, and the run is over.
    world.receiver.script([500, 500]);
    world
        .agent
        .emit(event("shop-1", "order.created", &json!({})))
        .await?;
    world.receiver.wait_for_requests(3, WAIT).await?;
    let record = eventually(WAIT, "the success to end the run", || async {
        let record = health(&world, &sub.id).await?;
        // The log shows the success as soon as it is stored; the run ends once it is counted.
        Ok(
            (record.last_success_at.is_some() && record.consecutive_failures == 0)
                .then_some(record),
        )
    })
    .await?;
    assert!(record.failing_since.is_none());
    assert!(get(&world, &sub.id).await?.enabled);

    // Three failures in a row reach this subscription's limit of 3.
    world.receiver.script([500, 500, 500]);
    world
        .agent
        .emit(event("shop-1", "order.created", &json!({})))
        .await?;
    let disabled = eventually(WAIT, "the subscription to be disabled", || async {
        let sub = get(&world, &sub.id).await?;
        Ok((!sub.enabled).then_some(sub))
    })
    .await?;
    // At least 3: a report batch may carry a fourth failure made before the agents heard.
    let failures: u32 = disabled
        .disabled_reason
        .trim_start_matches("auto: ")
        .trim_end_matches(" consecutive failures")
        .parse()?;
    assert!(failures >= 3, "{}", disabled.disabled_reason);
    // The audit log says Herald did it, and why.
    let entry = eventually(WAIT, "the disabling in the audit log", || async {
        let entries =
            herald_proto::v1::audit_client::AuditClient::new(world.control_plane.channel().await?)
                .list_audit_entries(pb::ListAuditEntriesRequest::default())
                .await?
                .into_inner()
                .entries;
        Ok(entries
            .into_iter()
            .find(|e| e.action == "subscription.disable" && e.object == sub.id))
    })
    .await?;
    assert_eq!(
        (
            entry.actor.as_str(),
            entry.tenant.as_str(),
            entry.detail.as_str()
        ),
        ("herald", "shop-1", disabled.disabled_reason.as_str())
    );
    Ok(())
}

#[tokio::test]
async fn health_shows_the_recent_success_rate_and_latency() -> anyhow::Result<()> {
    let world = World::start().await?;
    let mut sub = subscription("shop-1", &world.receiver.url("/hook"), &["order.*"]);
    sub.retry = Some(herald_proto::convert::retry_policy(
        &herald_core::retry::RetrySchedule::parse("50ms")?,
    ));
    let sub = world.control_plane.create(sub).await?;
    world
        .control_plane
        .wait_applied(sub.revision, Duration::from_secs(10))
        .await?;
    for n in 0..3 {
        world
            .agent
            .emit(event(
                "shop-1",
                "order.created",
                &serde_json::json!({ "n": n }),
            ))
            .await?;
    }
    world
        .receiver
        .wait_for_requests(3, Duration::from_secs(10))
        .await?;
    world.receiver.respond_with(500);
    world
        .agent
        .emit(event(
            "shop-1",
            "order.created",
            &serde_json::json!({ "n": 3 }),
        ))
        .await?;
    let client = world.control_plane.subscriptions().await?;
    let health = herald_tests::eventually(
        Duration::from_secs(10),
        "5 attempts logged and counted",
        || {
            let mut client = client.clone();
            let id = sub.id.clone();
            async move {
                let health = client
                    .get_subscription_health(pb::GetSubscriptionHealthRequest { id })
                    .await?
                    .into_inner();
                // The log has the attempts first; their count into health follows.
                Ok(
                    (health.recent_attempts == 5 && health.consecutive_failures == 2)
                        .then_some(health),
                )
            }
        },
    )
    .await?;
    assert!((health.success_rate - 0.6).abs() < 1e-9, "{health:?}");
    assert!(health.latency_p50.is_some() && health.latency_p99.is_some());
    assert!(health.recent_since.is_some());
    assert_eq!(health.consecutive_failures, 2);
    Ok(())
}
