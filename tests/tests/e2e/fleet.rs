//! The fleet side of config distribution: an agent given several control-plane replicas fails
//! over to another when its replica dies and receives the changes made meanwhile (deletions
//! included); a change the agent refuses leaves it on its last good config and shows in the
//! agents list.

use std::time::Duration;

use herald_control_plane::store::{Op, Store, Txn};
use herald_proto::v1 as pb;
use herald_tests::{
    Agent, AgentOptions, ConfigStore, ControlPlane, Etcd, Receiver, TestCa, event, eventually,
    subscription,
};
use prost::Message as _;

#[tokio::test]
async fn an_agent_fails_over_to_another_replica_and_misses_no_change() -> anyhow::Result<()> {
    let etcd = Etcd::start().await?;
    let replica = |name: &'static str| {
        move |config: &mut herald_control_plane::Config| {
            config.replica_name = Some(name.to_owned());
        }
    };
    let store = ConfigStore::Etcd(vec![etcd.endpoint()]);
    let first = ControlPlane::start_configured(store.clone(), replica("replica-a")).await?;
    let second = ControlPlane::start_configured(store, replica("replica-b")).await?;
    let ca = TestCa::new();
    let ca_dir = tempfile::tempdir()?;
    let agent = Agent::start(
        first.url(),
        AgentOptions {
            ca_file: Some(ca.write_ca_pem(ca_dir.path())?),
            more_control_planes: vec![second.url().to_owned()],
            ..Default::default()
        },
    )
    .await?;
    let receiver = Receiver::start(&ca).await?;
    let old = first
        .create(subscription("shop-1", &receiver.url("/old"), &["order.*"]))
        .await?;
    first
        .wait_applied(old.revision, Duration::from_secs(10))
        .await?;
    // Every replica lists the agent, with the replica its stream is on.
    assert_eq!(
        listed_on(&second, old.revision).await?,
        "replica-a",
        "the second replica sees the first one's agent"
    );

    // The agent's replica goes away; changes are made through the other one meanwhile.
    first.stop().await?;
    second
        .subscriptions()
        .await?
        .delete_subscription(pb::DeleteSubscriptionRequest {
            id: old.id.clone(),
            expected_revision: 0,
        })
        .await?;
    let new = second
        .create(subscription("shop-1", &receiver.url("/new"), &["order.*"]))
        .await?;
    // Within seconds the agent is on the second replica with the latest config.
    second
        .wait_applied(new.revision, Duration::from_secs(15))
        .await?;

    let emitted = agent
        .emit(event(
            "shop-1",
            "order.created",
            &serde_json::json!({"id": 1}),
        ))
        .await?;
    assert_eq!(emitted.matched, 1, "only the new subscription");
    let requests = receiver
        .wait_for_requests(1, Duration::from_secs(10))
        .await?;
    assert_eq!(requests[0].path, "/new");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.request_count(), 1, "nothing for the deleted one");
    assert_eq!(listed_on(&second, new.revision).await?, "replica-b");
    Ok(())
}

/// The replica the only agent is listed on by `control_plane`, once the list shows it
/// connected with `revision` applied.
async fn listed_on(control_plane: &ControlPlane, revision: i64) -> anyhow::Result<String> {
    eventually(
        Duration::from_secs(10),
        "the agent listed with its revision",
        || async {
            let agents = control_plane
                .agents()
                .await?
                .list_agents(pb::ListAgentsRequest {})
                .await?
                .into_inner()
                .agents;
            Ok(match &agents[..] {
                [agent] if agent.connected && agent.applied_revision >= revision => {
                    Some(agent.replica.clone())
                }
                _ => None,
            })
        },
    )
    .await
}

#[tokio::test]
async fn a_refused_change_keeps_the_last_good_config_and_shows_in_the_agents_list()
-> anyhow::Result<()> {
    let etcd = Etcd::start().await?;
    let control_plane = ControlPlane::start(ConfigStore::Etcd(vec![etcd.endpoint()])).await?;
    let ca = TestCa::new();
    let ca_dir = tempfile::tempdir()?;
    let agent = Agent::start(
        control_plane.url(),
        AgentOptions {
            ca_file: Some(ca.write_ca_pem(ca_dir.path())?),
            ..Default::default()
        },
    )
    .await?;
    let receiver = Receiver::start(&ca).await?;
    let good = control_plane
        .create(subscription("shop-1", &receiver.url("/hook"), &["order.*"]))
        .await?;
    control_plane
        .wait_applied(good.revision, Duration::from_secs(10))
        .await?;

    // A record the API would never write (no signing secret, a pattern that is not one), put
    // straight into etcd as a broken tool might.
    let broken = pb::Subscription {
        id: "sub_broken".into(),
        tenant: "shop-1".into(),
        url: "https://127.0.0.1:9/x".into(),
        event_types: vec!["order..*".into()],
        enabled: true,
        ..Default::default()
    };
    let store = Store::etcd(&[etcd.endpoint()]).await?;
    store
        .txn(Txn::default().then(Op::Put(
            "/herald/v1/subscriptions/shop-1/sub_broken".into(),
            broken.encode_to_vec(),
        )))
        .await?;

    let nacked = eventually(
        Duration::from_secs(10),
        "the agent to refuse it",
        || async {
            let agents = control_plane
                .agents()
                .await?
                .list_agents(pb::ListAgentsRequest {})
                .await?
                .into_inner()
                .agents;
            Ok(agents.into_iter().find(|a| !a.last_nack.is_empty()))
        },
    )
    .await?;
    assert!(
        nacked.last_nack.contains("sub_broken"),
        "{}",
        nacked.last_nack
    );
    assert!(nacked.applied_revision >= good.revision);

    // The good subscription still delivers.
    let emitted = agent
        .emit(event(
            "shop-1",
            "order.created",
            &serde_json::json!({"id": 2}),
        ))
        .await?;
    assert_eq!(emitted.matched, 1);
    receiver
        .wait_for_requests(1, Duration::from_secs(10))
        .await?;
    Ok(())
}

#[tokio::test]
async fn an_agent_that_names_a_recent_revision_gets_only_the_changes_since() -> anyhow::Result<()> {
    let etcd = Etcd::start().await?;
    let control_plane = ControlPlane::start(ConfigStore::Etcd(vec![etcd.endpoint()])).await?;
    let url = "https://127.0.0.1:9/hook";
    let kept = control_plane
        .create(subscription("shop-1", url, &["order.*"]))
        .await?;
    let doomed = control_plane
        .create(subscription("shop-1", url, &["order.*"]))
        .await?;
    let mut changed = control_plane
        .create(subscription("shop-1", url, &["order.*"]))
        .await?;

    // A first stream: the snapshot, at the revision the agent then holds.
    let (_hello, mut first) = open_stream(&control_plane, 0).await?;
    let snapshot = first.message().await?.expect("a snapshot");
    assert!(snapshot.snapshot);
    assert_eq!(snapshot.upserts.len(), 3);
    let held = snapshot.revision;
    drop(first);

    // While the agent is away: one change, one deletion, one new subscription.
    let mut admin = control_plane.subscriptions().await?;
    changed.description = "changed while away".into();
    let revision = changed.revision;
    changed = admin
        .update_subscription(pb::UpdateSubscriptionRequest {
            subscription: Some(changed),
            expected_revision: revision,
        })
        .await?
        .into_inner();
    admin
        .delete_subscription(pb::DeleteSubscriptionRequest {
            id: doomed.id.clone(),
            expected_revision: 0,
        })
        .await?;
    let added = control_plane
        .create(subscription("shop-1", url, &["order.*"]))
        .await?;

    // Back with the revision it holds: deltas with exactly what changed (one, unless the
    // replica had not seen the last write yet when the stream opened).
    let (_hello, mut resumed) = open_stream(&control_plane, held).await?;
    let (mut upserts, mut removals) = (Vec::new(), Vec::new());
    loop {
        let delta = resumed.message().await?.expect("a delta");
        assert!(!delta.snapshot, "a delta, not a snapshot");
        upserts.extend(delta.upserts.into_iter().map(|s| s.id));
        removals.extend(delta.removals);
        if delta.revision >= added.revision {
            break;
        }
    }
    upserts.sort();
    let mut expected = vec![changed.id.clone(), added.id.clone()];
    expected.sort();
    assert_eq!(upserts, expected, "not {}", kept.id);
    assert_eq!(removals, vec![doomed.id]);

    // A revision the replica has never reached gets a snapshot.
    let (_hello, mut ahead) = open_stream(&control_plane, added.revision + 1000).await?;
    let fresh = ahead.message().await?.expect("a snapshot");
    assert!(fresh.snapshot);
    assert_eq!(fresh.upserts.len(), 3);
    Ok(())
}

/// Opens a config stream as an agent holding `last_revision`; the sender keeps it open.
async fn open_stream(
    control_plane: &ControlPlane,
    last_revision: i64,
) -> anyhow::Result<(
    tokio::sync::mpsc::Sender<pb::ConfigRequest>,
    tonic::Streaming<pb::ConfigUpdate>,
)> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::ConfigRequest {
        kind: Some(pb::config_request::Kind::Hello(pb::AgentHello {
            agent_id: "agt_raw".into(),
            last_revision,
            ..Default::default()
        })),
    })
    .await?;
    let updates = pb::agent_control_client::AgentControlClient::new(control_plane.channel().await?)
        .stream_config(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    Ok((tx, updates))
}
