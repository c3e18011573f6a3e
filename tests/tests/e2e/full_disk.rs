//! Disks that fill up. An agent's: Emit answers RESOURCE_EXHAUSTED and health NOT_SERVING, no
//! receiver is flooded, and once space is freed the agent writes, serves and delivers again by
//! itself, without a restart. A control plane's (its embedded stores): changes are refused,
//! reports wait in the agent, and all of them are stored once space is back. Each disk is a
//! real tmpfs the test mounts (skipped only where mounting is not permitted), filled with `dd`.

use std::time::Duration;

use herald_control_plane::store_health::LOG_SERVICE;
use herald_proto::v1 as pb;
use herald_tests::herald::{serving_status, status_of};
use herald_tests::{
    Agent, AgentAndReceiver, AgentOptions, ConfigStore, ControlPlane, Response, Tmpfs, World,
    event, eventually, subscription,
};
use serde_json::json;
use tonic_health::pb::health_check_response::ServingStatus;

const WAIT: Duration = Duration::from_secs(20);

/// An agent of `world` keeping its queue on `disk` with `min_free` bytes kept free, once it
/// applied shop-1's subscription to the receiver's `/orders` (`max_in_flight` attempts at a
/// time when given).
async fn agent_on(
    world: &World,
    disk: &Tmpfs,
    min_free: u64,
    max_in_flight: Option<u32>,
) -> anyhow::Result<Agent> {
    let mut sub = subscription("shop-1", &world.receiver.url("/orders"), &["order.*"]);
    if let Some(width) = max_in_flight {
        sub.max_in_flight = width;
    }
    let revision = world.control_plane.create(sub).await?.revision;
    world
        .another_agent_applied(
            AgentOptions {
                data_dir: Some(disk.path().join("agent")),
                queue_min_free_bytes: Some(min_free),
                ..Default::default()
            },
            revision,
        )
        .await
}

/// Emits order `n` of shop-1 to `agent`, once.
async fn emit_to(agent: &Agent, n: u32) -> anyhow::Result<tonic::Response<pb::EmitResponse>> {
    agent
        .events()
        .await?
        .emit(pb::EmitRequest {
            event: Some(event("shop-1", "order.created", &json!({ "n": n }))),
        })
        .await
        .map_err(anyhow::Error::from)
}

#[tokio::test]
async fn a_full_disk_refuses_events_floods_no_receiver_and_recovers_by_itself() -> anyhow::Result<()>
{
    let Some(disk) = Tmpfs::mount("48m")? else {
        return Ok(());
    };
    let world = World::start().await?;
    let agent = agent_on(&world, &disk, 4 * 1024 * 1024, None).await?;
    let emit = |n: u32| emit_to(&agent, n);
    emit(0).await?;
    world.receiver.wait_for_requests(1, WAIT).await?;

    // The disk fills up: health says so before anything is written (nothing is emitted).
    let filler = disk.fill()?;
    eventually(WAIT, "health NOT_SERVING with nothing written", || async {
        Ok((serving_status(agent.url(), "").await? == ServingStatus::NotServing).then_some(()))
    })
    .await?;
    let refused = eventually(WAIT, "Emit refused for a full disk", || async {
        Ok(emit(1).await.err())
    })
    .await?;
    let status = status_of(&refused)?;
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("disk is full"),
        "{}",
        status.message()
    );
    assert_eq!(
        herald_proto::refusal::Reason::of(status),
        Some(herald_proto::refusal::Reason::DiskFull),
        "a program tells a full disk from a full queue: {status:?}"
    );
    eventually(WAIT, "health NOT_SERVING", || async {
        Ok((serving_status(agent.url(), "").await? == ServingStatus::NotServing).then_some(()))
    })
    .await?;
    // No receiver is flooded meanwhile: nothing is sent again and again.
    let before = world.receiver.request_count();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        world.receiver.request_count() <= before + 1,
        "{} requests while the disk was full",
        world.receiver.request_count() - before
    );

    // Space is freed: the agent writes again by itself, serves, and delivers.
    std::fs::remove_file(&filler)?;
    eventually(Duration::from_secs(60), "health SERVING again", || async {
        Ok((serving_status(agent.url(), "").await? == ServingStatus::Serving).then_some(()))
    })
    .await?;
    let accepted = emit(2).await?.into_inner();
    let requests = eventually(WAIT, "the new event delivered", || async {
        let requests = world.receiver.requests();
        Ok(requests
            .iter()
            .any(|r| r.header("webhook-id") == Some(accepted.event_id.as_str()))
            .then_some(requests))
    })
    .await?;
    assert!(!requests.is_empty());
    Ok(())
}

/// A disk nearly full, below the margin the queue keeps but not full: new events are refused
/// and health says NOT_SERVING, while the deliveries already taken go on, their outcomes
/// written in the margin kept for them, so every event acknowledged before reaches its
/// receiver. Once space is freed new events are taken again.
#[tokio::test]
async fn below_the_margin_new_events_wait_and_those_taken_are_delivered() -> anyhow::Result<()> {
    let Some(disk) = Tmpfs::mount("48m")? else {
        return Ok(());
    };
    let world = World::start().await?;
    // One attempt at a time, each answered after a while: a backlog when the disk fills.
    world
        .receiver
        .respond_with_response(Response::new(204).delay(Duration::from_millis(500)));
    let agent = agent_on(&world, &disk, 8 * 1024 * 1024, Some(1)).await?;
    let emit = |n: u32| emit_to(&agent, n);
    let mut taken = Vec::new();
    for n in 0..6 {
        taken.push(emit(n).await?.into_inner().event_id);
    }
    world.receiver.wait_for_requests(1, WAIT).await?;

    let filler = disk.fill_leaving(4 * 1024 * 1024)?;
    let refused = eventually(WAIT, "Emit refused below the margin", || async {
        Ok(emit(100).await.err())
    })
    .await?;
    let status = status_of(&refused)?;
    assert_eq!(
        herald_proto::refusal::Reason::of(status),
        Some(herald_proto::refusal::Reason::DiskFull),
        "{status:?}"
    );
    assert_eq!(
        serving_status(agent.url(), "").await?,
        ServingStatus::NotServing
    );
    eventually(WAIT, "every event taken before delivered", || async {
        let requests = world.receiver.requests();
        Ok(taken
            .iter()
            .all(|id| {
                requests
                    .iter()
                    .any(|r| r.header("webhook-id") == Some(id.as_str()))
            })
            .then_some(()))
    })
    .await?;
    assert_eq!(
        serving_status(agent.url(), "").await?,
        ServingStatus::NotServing,
        "still below the margin"
    );

    std::fs::remove_file(&filler)?;
    eventually(WAIT, "health SERVING again", || async {
        Ok((serving_status(agent.url(), "").await? == ServingStatus::Serving).then_some(()))
    })
    .await?;
    emit(200).await?;
    Ok(())
}

/// The queue files this test process holds open under `dir`.
fn queue_files_open(dir: &std::path::Path) -> anyhow::Result<usize> {
    let mut open = 0;
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let Ok(target) = std::fs::read_link(entry?.path()) else {
            continue;
        };
        let name = target.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if target.starts_with(dir) && name.starts_with("queue.") {
            open += 1;
        }
    }
    Ok(open)
}

/// A disk that fills up for good (no margin kept): once a write fails, the queue's files are
/// closed while they cannot be opened again, so that a failing file system (remounted
/// read-only, say) can be unmounted and repaired under a running agent; once space is back
/// the agent opens them again by itself, and takes events once 16 MiB are free (a little
/// room is not taken for the end of the fault: with no margin, health would flap).
#[tokio::test]
async fn a_queue_that_cannot_write_holds_no_file_open() -> anyhow::Result<()> {
    let Some(disk) = Tmpfs::mount("48m")? else {
        return Ok(());
    };
    let world = World::start().await?;
    let agent = agent_on(&world, &disk, 0, None).await?;
    emit_to(&agent, 0).await?;
    world.receiver.wait_for_requests(1, WAIT).await?;
    let dir = disk.path().join("agent");
    assert!(queue_files_open(&dir)? > 0, "the queue's files are open");

    // Filled in two parts, the last 8 MiB of it freed first.
    let filler = disk.fill_leaving(8 << 20)?;
    let rest = disk.fill_as("rest")?;
    let mut n = 1;
    eventually(WAIT, "a write refused", || {
        n += 1;
        let agent = &agent;
        let n = n;
        async move { Ok(emit_to(agent, n).await.err()) }
    })
    .await?;
    eventually(WAIT, "no queue file held open", || async {
        Ok((queue_files_open(&dir)? == 0).then_some(()))
    })
    .await?;

    std::fs::remove_file(&rest)?;
    eventually(
        Duration::from_secs(60),
        "files open again, events waiting for 16 MiB",
        || async {
            Ok(match emit_to(&agent, 999).await {
                Err(err)
                    if status_of(&err)?
                        .message()
                        .contains("after the disk filled up") =>
                {
                    Some(())
                }
                _ => None,
            })
        },
    )
    .await?;
    assert!(queue_files_open(&dir)? > 0, "open again");
    assert_eq!(
        serving_status(agent.url(), "").await?,
        ServingStatus::NotServing
    );

    std::fs::remove_file(&filler)?;
    eventually(Duration::from_secs(60), "health SERVING again", || async {
        Ok((serving_status(agent.url(), "").await? == ServingStatus::Serving).then_some(()))
    })
    .await?;
    emit_to(&agent, 1_000).await?;
    Ok(())
}

/// A control plane on its embedded stores (config and delivery log in one data directory)
/// whose disk fills up: changes are refused with RESOURCE_EXHAUSTED and the log's health is
/// NOT_SERVING, while agents go on delivering and keep their reports. Once space is freed it
/// writes again by itself, without a restart, and every report held meanwhile reaches the log.
#[tokio::test]
async fn a_control_plane_whose_disk_fills_refuses_changes_loses_no_report_and_recovers()
-> anyhow::Result<()> {
    let Some(disk) = Tmpfs::mount("32m")? else {
        return Ok(());
    };
    let control_plane = ControlPlane::start_configured(ConfigStore::Embedded, |config| {
        config.data_dir = disk.path().join("control-plane");
    })
    .await?;
    let AgentAndReceiver {
        agent, receiver, ..
    } = AgentAndReceiver::start(control_plane.url(), AgentOptions::default()).await?;
    let sub = control_plane
        .create(subscription(
            "shop-1",
            &receiver.url("/orders"),
            &["order.*"],
        ))
        .await?;
    control_plane.wait_applied(sub.revision, WAIT).await?;
    // Bodies of 16 KiB, which the log keeps: a few of them outgrow what its file has free.
    let order = |n: u32| json!({ "n": n, "note": "x".repeat(16 * 1024) });
    agent
        .emit(event("shop-1", "order.created", &order(0)))
        .await?;
    let by_sub = pb::AttemptFilter {
        subscription_id: sub.id.clone(),
        ..Default::default()
    };
    control_plane.wait_logged(by_sub.clone(), WAIT).await?;

    // The disk fills up: a change is refused as the disk being full, not as an internal error.
    let filler = disk.fill()?;
    let (status, _) = control_plane
        .create_until_refused("shop-2", |n| receiver.url(&format!("/more/{n}")), WAIT)
        .await?;
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("disk is full"),
        "{}",
        status.message()
    );
    assert_eq!(
        herald_proto::refusal::Reason::of(&status),
        Some(herald_proto::refusal::Reason::DiskFull),
        "a program tells a full disk from a full queue: {status:?}"
    );

    // Webhooks still go out; their reports cannot be stored, and the log says so.
    for n in 1..=20 {
        agent
            .emit(event("shop-1", "order.created", &order(n)))
            .await?;
    }
    receiver.wait_for_requests(21, WAIT).await?;
    eventually(WAIT, "the log NOT_SERVING", || async {
        Ok(
            (serving_status(control_plane.url(), LOG_SERVICE).await? == ServingStatus::NotServing)
                .then_some(()),
        )
    })
    .await?;
    // And it stays so while the disk is full, though a probe's small write may fit in pages
    // the log's file has free (it is probed every 2 s; reports keep failing meanwhile).
    let watched_until = tokio::time::Instant::now() + Duration::from_secs(7);
    while tokio::time::Instant::now() < watched_until {
        assert_eq!(
            serving_status(control_plane.url(), LOG_SERVICE).await?,
            ServingStatus::NotServing,
            "the log said it answers while every report batch fails"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Space is freed: the log answers again and every attempt held meanwhile is stored, once.
    std::fs::remove_file(&filler)?;
    eventually(Duration::from_secs(60), "the log SERVING again", || async {
        Ok(
            (serving_status(control_plane.url(), LOG_SERVICE).await? == ServingStatus::Serving)
                .then_some(()),
        )
    })
    .await?;
    let logged = eventually(
        Duration::from_secs(60),
        "all 21 attempts logged",
        || async {
            let logged = control_plane.attempts(by_sub.clone()).await?;
            Ok((logged.len() >= 21).then_some(logged))
        },
    )
    .await?;
    let mut events: Vec<&str> = logged.iter().map(|a| a.event_id.as_str()).collect();
    events.sort_unstable();
    events.dedup();
    assert_eq!((logged.len(), events.len()), (21, 21), "{logged:?}");
    // The config store takes changes again too, once its file is opened again (tried less
    // often the longer writes kept failing: up to every 30 s).
    eventually(Duration::from_secs(60), "a change taken again", || async {
        let created = control_plane
            .create(subscription(
                "shop-2",
                &receiver.url("/after"),
                &["order.*"],
            ))
            .await;
        Ok(created.ok())
    })
    .await?;
    Ok(())
}
