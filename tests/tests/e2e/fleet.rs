//! The fleet side of config distribution: an agent given several control-plane replicas fails
//! over to another when its replica dies and receives the changes made meanwhile (deletions
//! included); a record the agent cannot read is refused alone, keeps nothing else back, and
//! shows in the agents list. A peer whose host vanishes is cut off: an agent by its control plane, an
//! application by its agent.

use std::time::Duration;

use herald_control_plane::store::{Op, Store, Txn, TxnOutcome};
use herald_proto::v1 as pb;
use herald_tests::{
    Agent, AgentAndReceiver, AgentOptions, ConfigStore, ControlPlane, Etcd, Relay, event,
    eventually, subscription,
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
    let AgentAndReceiver {
        agent, receiver, ..
    } = AgentAndReceiver::start(
        first.url(),
        AgentOptions {
            more_control_planes: vec![second.url().to_owned()],
            ..Default::default()
        },
    )
    .await?;
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

/// A replica started after the agent applied its config elsewhere lists it as current: the
/// store's other writes since the last change (presence records, guards) are not lag.
#[tokio::test]
async fn a_replica_started_later_lists_an_agent_current_elsewhere_as_current() -> anyhow::Result<()>
{
    let etcd = Etcd::start().await?;
    let store = ConfigStore::Etcd(vec![etcd.endpoint()]);
    let first = ControlPlane::start(store.clone()).await?;
    let AgentAndReceiver {
        agent: _agent,
        receiver,
        ..
    } = AgentAndReceiver::start(first.url(), AgentOptions::default()).await?;
    let sub = first
        .create(subscription("shop-1", &receiver.url("/hook"), &["order.*"]))
        .await?;
    first
        .wait_applied(sub.revision, Duration::from_secs(10))
        .await?;
    // A write beside the subscriptions, as presence records and guards make all the time.
    let raw = Store::etcd(&[etcd.endpoint()]).await?;
    let TxnOutcome::Committed { revision } = raw
        .txn(Txn::default().then(Op::Put("/herald/v1/elsewhere".into(), b"x".to_vec())))
        .await?
    else {
        anyhow::bail!("the write conflicted");
    };
    assert!(revision > sub.revision);

    let later = ControlPlane::start(store).await?;
    let agent = eventually(
        Duration::from_secs(10),
        "the later replica to list the agent",
        || async {
            let agents = later.list_agents().await?;
            Ok(agents.into_iter().find(|a| a.connected))
        },
    )
    .await?;
    assert!(
        agent.current_revision >= revision,
        "the later replica is at the store's revision: {agent:?}"
    );
    assert_eq!(
        agent.applied_revision, agent.current_revision,
        "no lag for an agent that holds every subscription: {agent:?}"
    );

    // A subscription change made through the later replica reaches the agent on the first.
    let moved = later
        .create(subscription("shop-1", &receiver.url("/more"), &["order.*"]))
        .await?;
    later
        .wait_applied(moved.revision, Duration::from_secs(10))
        .await?;
    Ok(())
}

/// A control-plane URL that accepts connections and never answers is passed over within
/// seconds, as docs/regions.md says, not once the connection's keepalive gives up (30 s).
#[tokio::test]
async fn a_control_plane_that_never_answers_is_passed_over_within_seconds() -> anyhow::Result<()> {
    let control_plane = ControlPlane::start(ConfigStore::Embedded).await?;
    // Bound and never accepted: the kernel completes each connection, nothing ever answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let silent_url = format!("http://{}", silent.local_addr()?);
    let started = tokio::time::Instant::now();
    let _agent = Agent::start(
        &silent_url,
        AgentOptions {
            more_control_planes: vec![control_plane.url().to_owned()],
            ..Default::default()
        },
    )
    .await?;
    eventually(
        Duration::from_secs(40),
        "the agent on the replica that answers",
        || async {
            let agents = control_plane.list_agents().await?;
            Ok(agents.into_iter().find(|a| a.connected))
        },
    )
    .await?;
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "passed over after {:?}",
        started.elapsed()
    );
    Ok(())
}

/// The replica the only agent is listed on by `control_plane`, once the list shows it
/// connected with `revision` applied.
async fn listed_on(control_plane: &ControlPlane, revision: i64) -> anyhow::Result<String> {
    eventually(
        Duration::from_secs(10),
        "the agent listed with its revision",
        || async {
            let agents = control_plane.list_agents().await?;
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
async fn a_record_the_agent_cannot_read_is_refused_alone_and_shows_in_the_agents_list()
-> anyhow::Result<()> {
    let etcd = Etcd::start().await?;
    let control_plane = ControlPlane::start(ConfigStore::Etcd(vec![etcd.endpoint()])).await?;
    let AgentAndReceiver {
        agent, receiver, ..
    } = AgentAndReceiver::start(control_plane.url(), AgentOptions::default()).await?;
    let good = control_plane
        .create(subscription("shop-1", &receiver.url("/hook"), &["order.*"]))
        .await?;
    control_plane
        .wait_applied(good.revision, Duration::from_secs(10))
        .await?;

    // One write, as a broken tool might make it straight into etcd: a record the API would
    // never write (no signing secret, a pattern that is not one) beside a sound change to the
    // good subscription (its URL moved). The agent receives both in one delta.
    let broken = pb::Subscription {
        id: "sub_broken".into(),
        tenant: "shop-1".into(),
        url: "https://127.0.0.1:9/x".into(),
        event_types: vec!["order..*".into()],
        enabled: true,
        ..Default::default()
    };
    let store = Store::etcd(&[etcd.endpoint()]).await?;
    let good_key = format!("/herald/v1/subscriptions/shop-1/{}", good.id);
    let stored = store.get(&good_key).await?.expect("the good record");
    let mut moved = pb::Subscription::decode(stored.value.as_slice())?;
    moved.url = receiver.url("/moved");
    let TxnOutcome::Committed { revision } = store
        .txn(
            Txn::default()
                .then(Op::Put(
                    "/herald/v1/subscriptions/shop-1/sub_broken".into(),
                    broken.encode_to_vec(),
                ))
                .then(Op::Put(good_key, moved.encode_to_vec())),
        )
        .await?
    else {
        anyhow::bail!("the write conflicted");
    };

    // The bad record is named, and the agent is not listed as current while it holds it.
    let nacked = eventually(
        Duration::from_secs(10),
        "the agent to refuse the bad record",
        || async {
            let agents = control_plane.list_agents().await?;
            Ok(agents.into_iter().find(|a| !a.last_nack.is_empty()))
        },
    )
    .await?;
    assert!(
        nacked.last_nack.contains("sub_broken"),
        "{}",
        nacked.last_nack
    );
    assert!(nacked.applied_revision < revision, "{nacked:?}");
    // The rest of the change is applied all the same.
    let emitted = agent
        .emit(event(
            "shop-1",
            "order.created",
            &serde_json::json!({"id": 2}),
        ))
        .await?;
    assert_eq!(emitted.matched, 1, "the bad record matches nothing");
    let requests = receiver
        .wait_for_requests(1, Duration::from_secs(10))
        .await?;
    assert_eq!(requests[0].path, "/moved", "the sound change was applied");

    // The record goes: the agent holds the whole config again, and says so.
    let TxnOutcome::Committed { revision: gone } = store
        .txn(Txn::default().then(Op::Delete(
            "/herald/v1/subscriptions/shop-1/sub_broken".into(),
        )))
        .await?
    else {
        anyhow::bail!("the delete conflicted");
    };
    eventually(
        Duration::from_secs(10),
        "the agent current, its refusal cleared",
        || async {
            let agents = control_plane.list_agents().await?;
            Ok(agents
                .into_iter()
                .find(|a| a.last_nack.is_empty() && a.applied_revision >= gone))
        },
    )
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

    // A first stream: the snapshot, then deltas until the replica has seen the three writes
    // (it may open the stream before its watch of the store delivers the last of them).
    let (_hello, mut first) = open_stream(&control_plane, 0).await?;
    let snapshot = first.message().await?.expect("a snapshot");
    assert!(snapshot.snapshot);
    let mut known: Vec<String> = snapshot.upserts.into_iter().map(|s| s.id).collect();
    let mut held = snapshot.revision;
    while held < changed.revision {
        let delta = first.message().await?.expect("a delta");
        assert!(!delta.snapshot, "a delta, not a snapshot");
        known.extend(delta.upserts.into_iter().map(|s| s.id));
        held = delta.revision;
    }
    known.sort();
    let mut created = vec![kept.id.clone(), doomed.id.clone(), changed.id.clone()];
    created.sort();
    assert_eq!(known, created);
    drop(first);

    // While the agent is away: one change, one deletion, one new subscription.
    let mut admin = control_plane.subscriptions().await?;
    changed.description = "changed while away".into();
    let revision = changed.revision;
    changed = admin
        .update_subscription(pb::UpdateSubscriptionRequest {
            subscription: Some(changed),
            expected_revision: revision,
            allow_unregistered: false,
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

#[tokio::test]
async fn an_agent_that_stops_reading_gets_a_fresh_snapshot_and_slows_no_one() -> anyhow::Result<()>
{
    const WRITES: usize = 10_000;
    const WRITERS: usize = 32;
    let etcd = Etcd::start().await?;
    let control_plane = ControlPlane::start(ConfigStore::Etcd(vec![etcd.endpoint()])).await?;
    let (_stuck_hello, mut stuck) = open_stream(&control_plane, 0).await?;
    assert!(stuck.message().await?.expect("a snapshot").snapshot);
    let (_quick_hello, mut quick) = open_stream(&control_plane, 0).await?;
    let (seen_tx, seen) = tokio::sync::watch::channel(0_i64);
    tokio::spawn(async move {
        while let Ok(Some(update)) = quick.message().await {
            seen_tx.send_replace(update.revision);
        }
    });

    // Many changes, each its own revision, straight into etcd; the stuck agent reads none.
    let store = Store::etcd(&[etcd.endpoint()]).await?;
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut writers = Vec::new();
    for _ in 0..WRITERS {
        let (store, next) = (store.clone(), next.clone());
        writers.push(tokio::spawn(async move {
            let mut last = 0;
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= WRITES {
                    return anyhow::Ok(last);
                }
                let sub = pb::Subscription {
                    id: format!("sub_slow{n:05}"),
                    tenant: "shop-1".into(),
                    url: "https://127.0.0.1:9/x".into(),
                    event_types: vec!["order.*".into()],
                    description: "x".repeat(1000),
                    enabled: true,
                    ..Default::default()
                };
                let key = format!("/herald/v1/subscriptions/shop-1/{}", sub.id);
                let txn = Txn::default().then(Op::Put(key, sub.encode_to_vec()));
                if let herald_control_plane::store::TxnOutcome::Committed { revision } =
                    store.txn(txn).await?
                {
                    last = last.max(revision);
                }
            }
        }));
    }
    let mut last = 0;
    for writer in writers {
        last = last.max(writer.await??);
    }

    // The agent that reads kept up…
    let mut seen = seen;
    tokio::time::timeout(Duration::from_secs(30), seen.wait_for(|r| *r >= last))
        .await
        .map_err(|_| anyhow::anyhow!("the reading agent fell behind"))??;
    // …and the stuck one, once it reads again, is given a fresh snapshot of everything.
    let fresh = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let update = stuck.message().await?.expect("the stream stays open");
            if update.snapshot {
                let mut parts = vec![update];
                while parts.last().is_some_and(|p| p.more) {
                    parts.push(stuck.message().await?.expect("the next part"));
                }
                return anyhow::Ok(parts);
            }
        }
    })
    .await??;
    let held: usize = fresh.iter().map(|p| p.upserts.len()).sum();
    assert!(held >= WRITES - 100, "the fresh snapshot holds {held}");
    Ok(())
}

#[tokio::test]
async fn an_agent_receives_only_what_its_interest_reaches_and_refuses_other_events()
-> anyhow::Result<()> {
    let etcd = Etcd::start().await?;
    let control_plane = ControlPlane::start(ConfigStore::Etcd(vec![etcd.endpoint()])).await?;
    let AgentAndReceiver {
        agent, receiver, ..
    } = AgentAndReceiver::start(
        control_plane.url(),
        AgentOptions {
            interest: herald_core::interest::Interest {
                tenants: vec!["shop-a".into()],
                event_type_prefixes: vec!["order.".into()],
            },
            ..Default::default()
        },
    )
    .await?;
    let url = receiver.url("/hook");
    let orders = control_plane
        .create(subscription("shop-a", &url, &["order.*"]))
        .await?;
    let everything = control_plane
        .create(subscription("shop-a", &url, &["*"]))
        .await?;
    control_plane
        .create(subscription("shop-a", &url, &["invoice.*"]))
        .await?;
    let last = control_plane
        .create(subscription("shop-b", &url, &["order.*"]))
        .await?;
    control_plane
        .wait_applied(last.revision, Duration::from_secs(10))
        .await?;

    // What the agent holds (its saved config): shop-a's subscriptions that order events reach.
    // The others were never sent, yet it counts as current (it was waited for above).
    let held = eventually(Duration::from_secs(10), "the saved config", || async {
        Ok(herald_agent::config_cache::load(agent.data_dir())
            .filter(|routes| routes.revision >= everything.revision)
            .map(|routes| routes.to_snapshot()))
    })
    .await?;
    assert!(held.revision < last.revision, "nothing sent for the rest");
    let mut ids: Vec<&str> = held.upserts.iter().map(|s| s.id.as_str()).collect();
    ids.sort();
    let mut expected = vec![orders.id.as_str(), everything.id.as_str()];
    expected.sort();
    assert_eq!(ids, expected);
    assert!(held.upserts.iter().all(|s| s.tenant == "shop-a"));

    // Events it serves are accepted; others are refused, not silently dropped.
    let accepted = agent
        .emit(event("shop-a", "order.created", &serde_json::json!({})))
        .await?;
    assert_eq!(accepted.matched, 2);
    let mut events = agent.events().await?;
    for (tenant, event_type) in [("shop-b", "order.created"), ("shop-a", "invoice.created")] {
        let refused = events
            .emit(pb::EmitRequest {
                event: Some(event(tenant, event_type, &serde_json::json!({}))),
            })
            .await
            .expect_err("outside the agent's interest");
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
        assert!(
            refused.message().contains("--tenants"),
            "{}",
            refused.message()
        );
    }
    Ok(())
}

/// An agent whose host vanishes (no FIN, no RST, no answers: here a relay that goes silent)
/// is listed as disconnected within two keepalive intervals, as the control plane's pings go
/// unanswered, instead of staying "connected" for as long as nothing is sent to it.
#[tokio::test]
async fn an_agent_whose_host_vanishes_is_listed_as_disconnected() -> anyhow::Result<()> {
    let control_plane = ControlPlane::start_configured(ConfigStore::Embedded, |config| {
        config.keepalive_interval = Duration::from_secs(1);
    })
    .await?;
    let relay = Relay::start(control_plane.addr()).await?;
    let _agent = Agent::start(&relay.url(), AgentOptions::default()).await?;
    eventually(Duration::from_secs(10), "the agent connected", || async {
        let agents = control_plane.list_agents().await?;
        Ok(matches!(&agents[..], [agent] if agent.connected).then_some(()))
    })
    .await?;

    relay.freeze();
    let gone = eventually(
        Duration::from_secs(10),
        "the agent listed as gone",
        || async {
            let agents = control_plane.list_agents().await?;
            Ok(match &agents[..] {
                [agent] if !agent.connected => Some(agent.clone()),
                _ => None,
            })
        },
    )
    .await?;
    assert!(gone.last_seen.is_some());
    Ok(())
}

/// An application whose host (or pod) vanishes while connected to its agent, frozen behind a
/// relay: the agent's pings go unanswered and it closes the connection within two keepalive
/// intervals, instead of holding it, and what it holds, for good.
#[tokio::test]
async fn an_application_whose_host_vanishes_is_cut_off_by_its_agent() -> anyhow::Result<()> {
    let control_plane = ControlPlane::start(ConfigStore::Embedded).await?;
    let agent = Agent::start(
        control_plane.url(),
        AgentOptions {
            keepalive_interval: Some(Duration::from_secs(1)),
            ..Default::default()
        },
    )
    .await?;
    let relay = Relay::start(agent.addr()).await?;
    let channel = herald_tests::herald::connect(&relay.url()).await?;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await?;
    assert_eq!(relay.open_upstreams(), 1);

    relay.freeze();
    eventually(
        Duration::from_secs(10),
        "the agent closing the silent connection",
        || async { Ok((relay.open_upstreams() == 0).then_some(())) },
    )
    .await?;
    Ok(())
}
