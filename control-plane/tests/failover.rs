//! A control-plane replica killed with SIGKILL: its agents move to another replica within
//! seconds and receive every change made meanwhile, deletions included; the fleet view on the
//! surviving replica shows them there. With the delivery log on PostgreSQL, no attempt, health
//! count or operator event is lost or doubled by the kill, and every replica lists the same.

use std::time::Duration;

use herald_proto::v1 as pb;
use herald_proto::v1::agents_client::AgentsClient;
use herald_proto::v1::deliveries_client::DeliveriesClient;
use herald_proto::v1::subscriptions_client::SubscriptionsClient;
use herald_tests::herald::connect;
use herald_tests::{
    Agent, AgentOptions, ControlPlaneProcess, DaemonProcess, Etcd, Postgres, Receiver, TestCa,
    event, eventually, subscription,
};

const WAIT: Duration = Duration::from_secs(20);

/// A `herald-control-plane` process on etcd with its delivery log in `log_store`, named
/// `name`; killed when dropped.
async fn replica(etcd: &Etcd, name: &str, log_store: &str) -> anyhow::Result<DaemonProcess> {
    ControlPlaneProcess::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_herald-control-plane")),
        &etcd.endpoint(),
        log_store,
        &["--replica-name", name],
    )
    .await
}

async fn admin(url: &str) -> anyhow::Result<SubscriptionsClient<tonic::transport::Channel>> {
    Ok(SubscriptionsClient::new(connect(url).await?))
}

/// The agents the replica at `url` lists.
async fn agents(url: &str) -> anyhow::Result<Vec<pb::AgentInfo>> {
    Ok(AgentsClient::new(connect(url).await?)
        .list_agents(pb::ListAgentsRequest {})
        .await?
        .into_inner()
        .agents)
}

/// Waits until the replica at `url` lists the one agent connected through `replica` with
/// `revision` applied.
async fn wait_listed(url: &str, replica: &str, revision: i64) -> anyhow::Result<()> {
    eventually(
        WAIT,
        &format!("the agent on {replica} at {revision}"),
        || async {
            let agents = agents(url).await?;
            Ok(agents
                .iter()
                .any(|a| a.connected && a.replica == replica && a.applied_revision >= revision)
                .then_some(()))
        },
    )
    .await
}

/// An agent on `first`, moving to `second` when `first` is gone, trusting `ca`.
async fn agent_of(
    first: &DaemonProcess,
    second: &DaemonProcess,
    ca: &TestCa,
) -> anyhow::Result<Agent> {
    Agent::start(
        &first.url(),
        AgentOptions {
            trusted_ca: Some(ca.ca_pem()),
            more_control_planes: vec![second.url()],
            ..Default::default()
        },
    )
    .await
}

/// Every attempt the replica at `url` lists for `filter`.
async fn attempts(url: &str, filter: pb::AttemptFilter) -> anyhow::Result<Vec<pb::Attempt>> {
    let mut client = DeliveriesClient::new(connect(url).await?);
    let page = client
        .list_attempts(pb::ListAttemptsRequest {
            filter: Some(filter),
            page_size: 1000,
            page_token: String::new(),
        })
        .await?
        .into_inner();
    Ok(page.attempts)
}

#[tokio::test]
async fn a_killed_replicas_agents_move_to_another_and_miss_no_change() -> anyhow::Result<()> {
    let etcd = Etcd::start().await?;
    let mut first = replica(&etcd, "replica-a", "embedded").await?;
    let second = replica(&etcd, "replica-b", "embedded").await?;
    let ca = TestCa::new();
    let agent = agent_of(&first, &second, &ca).await?;
    let receiver = Receiver::start(&ca).await?;
    let old = admin(&first.url())
        .await?
        .create_subscription(pb::CreateSubscriptionRequest {
            subscription: Some(subscription("shop-1", &receiver.url("/old"), &["order.*"])),
            allow_unregistered: false,
            ..Default::default()
        })
        .await?
        .into_inner();
    // The surviving replica will see the agent on the first one (presence in etcd).
    wait_listed(&second.url(), "replica-a", old.revision).await?;

    // SIGKILL: no goodbye to the agent, no lease revoked.
    first.kill9().await?;
    let mut admin = admin(&second.url()).await?;
    admin
        .delete_subscription(pb::DeleteSubscriptionRequest {
            id: old.id.clone(),
            expected_revision: 0,
        })
        .await?;
    let new = admin
        .create_subscription(pb::CreateSubscriptionRequest {
            subscription: Some(subscription("shop-1", &receiver.url("/new"), &["order.*"])),
            allow_unregistered: false,
            ..Default::default()
        })
        .await?
        .into_inner();
    wait_listed(&second.url(), "replica-b", new.revision).await?;

    let emitted = agent
        .emit(event(
            "shop-1",
            "order.created",
            &serde_json::json!({"n": 1}),
        ))
        .await?;
    assert_eq!(emitted.matched, 1, "only the new subscription");
    let requests = receiver.wait_for_requests(1, WAIT).await?;
    assert_eq!(requests[0].path, "/new");
    Ok(())
}

#[tokio::test]
async fn a_replica_killed_mid_traffic_loses_and_doubles_no_attempt_count_or_event()
-> anyhow::Result<()> {
    let etcd = Etcd::start().await?;
    let postgres = Postgres::start().await?;
    let log = postgres.url();
    let mut first = replica(&etcd, "replica-a", &log).await?;
    let second = replica(&etcd, "replica-b", &log).await?;
    let ca = TestCa::new();
    let agent = agent_of(&first, &second, &ca).await?;
    // One receiver that always fails, and one where operators hear of it.
    let failing = Receiver::start(&ca).await?;
    failing.respond_with(500);
    let operators = Receiver::start(&ca).await?;
    let mut down = subscription("shop-1", &failing.url("/down"), &["order.*"]);
    // Three attempts per event, spread out so the kill falls among them; a limit the run
    // does not reach, so every failure stays counted in one run.
    let schedule = herald_core::retry::RetrySchedule::parse("300ms,300ms")?;
    down.retry = Some(herald_proto::convert::retry_policy(&schedule));
    down.disable_after = 1000;
    let mut a = admin(&first.url()).await?;
    let create = |sub| pb::CreateSubscriptionRequest {
        subscription: Some(sub),
        allow_unregistered: false,
        ..Default::default()
    };
    let down = a.create_subscription(create(down)).await?.into_inner();
    let ops = a
        .create_subscription(create(subscription(
            "herald",
            &operators.url("/ops"),
            &["herald.delivery.*"],
        )))
        .await?
        .into_inner();
    wait_listed(&second.url(), "replica-a", ops.revision).await?;

    const EVENTS: usize = 8;
    for n in 0..EVENTS {
        let mut order = event("shop-1", "order.created", &serde_json::json!({ "n": n }));
        order.id = format!("evt_kill_{n}");
        agent.emit(order).await?;
    }
    let by_sub = pb::AttemptFilter {
        subscription_id: down.id.clone(),
        ..Default::default()
    };
    // Some attempts are reported through the first replica; then it dies mid-traffic.
    eventually(WAIT, "the first attempts in the log", || async {
        Ok((!attempts(&second.url(), by_sub.clone()).await?.is_empty()).then_some(()))
    })
    .await?;
    first.kill9().await?;

    // The agent moves to the second replica and sends what was not acknowledged.
    let listed = eventually(WAIT, "every attempt in the log", || async {
        let listed = attempts(&second.url(), by_sub.clone()).await?;
        Ok((listed.len() >= 3 * EVENTS).then_some(listed))
    })
    .await?;
    let mut keys: Vec<(String, u32)> = listed
        .iter()
        .map(|a| (a.event_id.clone(), a.attempt))
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 3 * EVENTS, "each attempt once: {keys:?}");
    assert_eq!(listed.len(), 3 * EVENTS, "no attempt twice");

    // Every failure counted, once, into the one run.
    let health = admin(&second.url())
        .await?
        .get_subscription_health(pb::GetSubscriptionHealthRequest {
            id: down.id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(health.consecutive_failures, 3 * EVENTS as u32, "{health:?}");

    // Operators hear of each exhausted delivery, once.
    let heard = eventually(WAIT, "an exhausted event per delivery", || async {
        let mut ids: Vec<String> = operators
            .requests()
            .iter()
            .filter_map(|r| r.header("webhook-id").map(str::to_owned))
            .collect();
        ids.sort();
        ids.dedup();
        Ok((ids.len() >= EVENTS).then_some(ids))
    })
    .await?;
    assert_eq!(
        heard.len(),
        EVENTS,
        "one event per exhausted delivery: {heard:?}"
    );

    // The killed replica, started again, lists the same.
    first.restart().await?;
    assert_eq!(
        attempts(&first.url(), by_sub.clone()).await?.len(),
        3 * EVENTS
    );
    Ok(())
}
