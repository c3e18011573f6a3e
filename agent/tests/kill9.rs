//! A real agent process stopped the hard way and the polite way: `kill -9` in the middle of a
//! burst of 10,000 events (after a restart, every event whose `Emit` was acknowledged reaches
//! the receiver at least once), and SIGTERM (drain, flush, exit within the grace period).

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_proto::v1 as pb;
use herald_proto::v1::events_client::EventsClient;
use herald_tests::herald::{connect, serving_status};
use herald_tests::{
    AgentProcess, ConfigStore, ControlPlane, DaemonProcess, Etcd, FreezableDisk, Receiver,
    Response, TestCa, Tmpfs, eventually, subscription,
};
use tonic_health::pb::health_check_response::ServingStatus;

const EVENTS: usize = 10_000;
const BATCH: usize = 25;
const EMITTERS: usize = 8;

/// Emits the events of `ids` not yet acknowledged, in batches from several callers, recording
/// every acknowledged id; stops at the first failure (the agent died) or when all are done.
async fn emit_all(agent: &str, ids: Arc<Vec<String>>, acked: Arc<Mutex<HashSet<String>>>) {
    let pending: Vec<String> = {
        let acked = acked.lock().expect("lock");
        ids.iter()
            .filter(|id| !acked.contains(*id))
            .cloned()
            .collect()
    };
    let chunks: Vec<Vec<String>> = pending.chunks(BATCH).map(<[String]>::to_vec).collect();
    let chunks = Arc::new(Mutex::new(chunks));
    let mut emitters = Vec::new();
    for _ in 0..EMITTERS {
        let (chunks, acked, agent) = (chunks.clone(), acked.clone(), agent.to_owned());
        emitters.push(tokio::spawn(async move {
            let Ok(channel) = connect(&agent).await else {
                return;
            };
            let mut client = EventsClient::new(channel);
            loop {
                let Some(chunk) = chunks.lock().expect("lock").pop() else {
                    return;
                };
                let events = chunk
                    .iter()
                    .map(|id| pb::Event {
                        id: id.clone(),
                        tenant: "shop-1".into(),
                        r#type: "order.created".into(),
                        payload: format!(r#"{{"id":"{id}"}}"#).into_bytes(),
                        ..Default::default()
                    })
                    .collect();
                // As a client would: UNAVAILABLE (the agent has not reached the control plane
                // yet) is retried; any other failure (the agent is gone) ends this emitter.
                let request = pb::EmitBatchRequest { events };
                let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                loop {
                    match client.emit_batch(request.clone()).await {
                        Ok(_) => {
                            acked.lock().expect("lock").extend(chunk);
                            break;
                        }
                        Err(status)
                            if status.code() == tonic::Code::Unavailable
                                && tokio::time::Instant::now() < deadline =>
                        {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(_) => return,
                    }
                }
            }
        }));
    }
    for emitter in emitters {
        let _ = emitter.await;
    }
}

/// What every test here runs the agent process against: etcd, a control plane on it, and an
/// HTTPS receiver with a test CA (its PEM file for the agent's `--ca-file`).
struct Servers {
    cp: ControlPlane,
    receiver: Receiver,
    ca_file: std::path::PathBuf,
    _ca_dir: tempfile::TempDir,
    /// Last, so it outlives the control plane.
    _etcd: Etcd,
}

impl Servers {
    async fn start() -> anyhow::Result<Servers> {
        let etcd = Etcd::start().await?;
        let cp = ControlPlane::start(ConfigStore::Etcd(vec![etcd.endpoint()])).await?;
        let ca = TestCa::new();
        let ca_dir = tempfile::tempdir()?;
        let ca_file = ca.write_ca_pem(ca_dir.path())?;
        let receiver = Receiver::start(&ca).await?;
        Ok(Servers {
            cp,
            receiver,
            ca_file,
            _ca_dir: ca_dir,
            _etcd: etcd,
        })
    }
}

/// Emits order `n` of shop-1, with id `{prefix}_{n}`, to the agent at `url`.
async fn emit_order(
    url: &str,
    prefix: &str,
    n: usize,
) -> anyhow::Result<tonic::Response<pb::EmitResponse>> {
    EventsClient::new(connect(url).await?)
        .emit(pb::EmitRequest {
            event: Some(pb::Event {
                id: format!("{prefix}_{n}"),
                tenant: "shop-1".into(),
                r#type: "order.created".into(),
                payload: format!(r#"{{"n":{n}}}"#).into_bytes(),
                ..Default::default()
            }),
        })
        .await
        .map_err(anyhow::Error::from)
}

/// Waits until `receiver` got orders `{prefix}_0` to `{prefix}_{last}` after its first
/// `before` requests.
async fn wait_delivered(
    receiver: &Receiver,
    before: usize,
    prefix: &str,
    last: usize,
) -> anyhow::Result<()> {
    eventually(Duration::from_secs(30), "every event delivered", || async {
        let delivered: HashSet<String> = receiver.requests()[before..]
            .iter()
            .filter_map(|r| r.header("webhook-id").map(str::to_owned))
            .collect();
        Ok((0..=last)
            .all(|n| delivered.contains(&format!("{prefix}_{n}")))
            .then_some(()))
    })
    .await
}

/// Checks that `agent`, started on a full disk, serves without starting: `emit` is refused for
/// a full disk (after `UNAVAILABLE`, "the agent is starting", until its first try fails),
/// health says `NOT_SERVING`, the process runs on, and its log says `why`.
async fn starting_on_a_full_disk<F, Fut>(
    agent: &mut DaemonProcess,
    emit: F,
    why: &str,
) -> anyhow::Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<tonic::Response<pb::EmitResponse>>>,
{
    let refused = eventually(
        Duration::from_secs(20),
        "Emit refused for a full disk",
        || async {
            Ok(match emit().await {
                Err(err)
                    if herald_tests::herald::status_of(&err)?.code()
                        != tonic::Code::Unavailable =>
                {
                    Some(err)
                }
                _ => None,
            })
        },
    )
    .await?;
    let status = herald_tests::herald::status_of(&refused)?;
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert_eq!(
        herald_proto::refusal::Reason::of(status),
        Some(herald_proto::refusal::Reason::DiskFull),
        "{status:?}"
    );
    assert_eq!(
        serving_status(&agent.url(), "").await?,
        ServingStatus::NotServing
    );
    assert!(agent.exit_status().is_none(), "{}", agent.log());
    assert!(agent.log().contains(why), "{}", agent.log());
    Ok(())
}

/// An agent with `flags` in `data_dir` (a temp dir of its own when `None`) whose one
/// subscription, shop-1's orders one attempt at a time, the receiver holds: orders
/// `{prefix}_0` to `{prefix}_{held - 1}` are emitted and acknowledged, the first is being
/// attempted and none is delivered.
async fn agent_holding(
    servers: &Servers,
    data_dir: Option<&Path>,
    flags: &[&str],
    prefix: &str,
    held: usize,
) -> anyhow::Result<DaemonProcess> {
    let mut sub = subscription("shop-1", &servers.receiver.url("/orders"), &["order.*"]);
    sub.max_in_flight = 1;
    let sub = servers.cp.create(sub).await?;
    let binary = Path::new(env!("CARGO_BIN_EXE_herald-agent"));
    let (cp, ca) = (servers.cp.url(), &servers.ca_file);
    let agent = match data_dir {
        Some(dir) => AgentProcess::start_in(binary, cp, ca, dir, flags).await?,
        None => AgentProcess::start(binary, cp, ca, flags).await?,
    };
    servers
        .cp
        .wait_applied(sub.revision, Duration::from_secs(20))
        .await?;
    servers
        .receiver
        .respond_with_response(Response::new(204).delay(Duration::from_secs(60)));
    for n in 0..held {
        emit_order(&agent.url(), prefix, n).await?;
    }
    servers
        .receiver
        .wait_for_requests(1, Duration::from_secs(20))
        .await?;
    Ok(agent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_a_burst_loses_no_acknowledged_event() -> anyhow::Result<()> {
    let servers = Servers::start().await?;
    let (cp, receiver, ca_file) = (&servers.cp, &servers.receiver, &servers.ca_file);
    let mut sub = subscription("shop-1", &receiver.url("/orders"), &["order.*"]);
    sub.retry = Some(herald_proto::convert::retry_policy(
        &herald_core::retry::RetrySchedule::parse("100ms,200ms,500ms,1s,1s,1s,1s,1s,1s")?,
    ));
    let sub = cp.create(sub).await?;
    let binary = Path::new(env!("CARGO_BIN_EXE_herald-agent"));
    let mut agent = AgentProcess::start(binary, cp.url(), ca_file, &[]).await?;
    cp.wait_applied(sub.revision, Duration::from_secs(20))
        .await?;

    let ids: Arc<Vec<String>> =
        Arc::new((0..EVENTS).map(|i| format!("evt_burst_{i:05}")).collect());
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let url = agent.url();
    let burst = tokio::spawn({
        let (ids, acked) = (ids.clone(), acked.clone());
        async move { emit_all(&url, ids, acked).await }
    });
    eventually(
        Duration::from_secs(60),
        "3,000 events acknowledged",
        || async { Ok((acked.lock().expect("lock").len() >= 3_000).then_some(())) },
    )
    .await?;
    agent.kill9().await?;
    burst.await?;
    let acked_at_kill = acked.lock().expect("lock").len();
    assert!(
        acked_at_kill < EVENTS,
        "the kill came in the middle of the burst"
    );

    // Restart on the same queue and finish the burst, re-sending what was not acknowledged
    // (with the same ids, as a client retrying would).
    agent.restart().await?;
    emit_all(&agent.url(), ids.clone(), acked.clone()).await;
    let acked: HashSet<String> = acked.lock().expect("lock").clone();
    assert_eq!(
        acked.len(),
        EVENTS,
        "every event acknowledged in the end; the agent's exit: {:?}; its log:\n{}",
        agent.exit_status(),
        agent.log()
    );

    let received = eventually(
        Duration::from_secs(180),
        "every acknowledged event delivered",
        || async {
            if receiver.request_count() < acked.len() {
                return Ok(None);
            }
            let requests = receiver.requests();
            let ids: HashSet<String> = requests
                .iter()
                .filter_map(|r| r.header("webhook-id").map(str::to_owned))
                .collect();
            Ok(acked.is_subset(&ids).then_some(requests.len()))
        },
    )
    .await;
    let received = match received {
        Ok(received) => received,
        Err(err) => {
            let got: HashSet<String> = receiver
                .requests()
                .iter()
                .filter_map(|r| r.header("webhook-id").map(str::to_owned))
                .collect();
            let missing: Vec<_> = acked.difference(&got).take(5).collect();
            eprintln!(
                "missing {} of {}, e.g. {missing:?}",
                acked.len() - acked.intersection(&got).count(),
                acked.len()
            );
            agent.kill9().await?;
            let log =
                std::fs::read_to_string(agent.data_dir().join("agent.log")).unwrap_or_default();
            eprintln!(
                "agent log tail:\n{}",
                log.lines()
                    .rev()
                    .take(30)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            let cfg = herald_agent::queue::QueueConfig {
                max_events: u64::MAX,
                max_bytes: u64::MAX,
                max_share: 1.0,
                max_retained_bytes: u64::MAX,
                min_free_bytes: 0,
                recover_truncate: false,
                max_pending_reports: u64::MAX,
                max_pending_report_bytes: u64::MAX,
                max_parked_deliveries: u64::MAX,
                cache_bytes: herald_agent::queue::DEFAULT_CACHE_BYTES,
                retention: Duration::from_secs(3600),
                dedup_window: Duration::from_secs(3600),
                durable: true,
                durable_lag: herald_agent::queue::DURABLE_LAG,
                checkpoint_every: herald_agent::queue::CHECKPOINT_EVERY,
            };
            let queue = herald_agent::queue::Queue::open(agent.data_dir(), cfg)?;
            eprintln!(
                "pending tasks {:?}, reports {:?}",
                queue.pending_tasks(),
                queue.pending_reports()
            );
            let due = queue.due(u64::MAX - 1, 10, |_, n| 16_usize.saturating_sub(n))?;
            eprintln!(
                "due now: {:?}",
                due.iter()
                    .map(|t| (t.event.to_string(), t.due, t.attempts))
                    .collect::<Vec<_>>()
            );
            for id in &missing {
                let attempts = cp
                    .attempts(pb::AttemptFilter {
                        event_id: (*id).clone(),
                        ..Default::default()
                    })
                    .await?;
                eprintln!(
                    "{id}: stored {:?}; attempts {:?}",
                    queue
                        .event(&herald_agent::queue::EventKey::new("shop-1", id))?
                        .map(|e| e.accepted_ms),
                    attempts
                        .iter()
                        .map(|a| (a.attempt, a.status_code, &a.error_kind, &a.error, a.outcome))
                        .collect::<Vec<_>>()
                );
            }
            return Err(err);
        }
    };
    let duplicates = received - acked.len();
    println!(
        "kill -9 after {acked_at_kill} acknowledged events: {} deliveries for {} events, {duplicates} duplicates",
        received,
        acked.len()
    );
    // Only attempts in flight at the kill may repeat: at most the agent's max in flight.
    assert!(duplicates <= 1024, "{duplicates} duplicates");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_within_the_grace_period() -> anyhow::Result<()> {
    let servers = Servers::start().await?;
    let (cp, receiver, ca_file) = (&servers.cp, &servers.receiver, &servers.ca_file);
    // A slow receiver, so attempts are in flight when SIGTERM arrives (and for a while after).
    receiver.respond_with_response(
        herald_tests::Response::new(200).delay(Duration::from_millis(2_000)),
    );
    let sub = cp
        .create(subscription("shop-1", &receiver.url("/slow"), &["order.*"]))
        .await?;
    let binary = Path::new(env!("CARGO_BIN_EXE_herald-agent"));
    let mut agent = AgentProcess::start(binary, cp.url(), ca_file, &[]).await?;
    cp.wait_applied(sub.revision, Duration::from_secs(20))
        .await?;

    let ids: Arc<Vec<String>> = Arc::new((0..50).map(|i| format!("evt_term_{i}")).collect());
    let acked = Arc::new(Mutex::new(HashSet::new()));
    emit_all(&agent.url(), ids.clone(), acked.clone()).await;
    assert_eq!(acked.lock().expect("lock").len(), 50);
    receiver
        .wait_for_requests(1, Duration::from_secs(10))
        .await?;

    // While attempts finish, health says NOT_SERVING and Emit says why it refuses.
    agent.send_term().await?;
    eventually(Duration::from_secs(2), "health NOT_SERVING", || async {
        let status = herald_tests::herald::serving_status(&agent.url(), "").await;
        Ok(status
            .is_ok_and(|s| s == ServingStatus::NotServing)
            .then_some(()))
    })
    .await?;
    let refused = EventsClient::new(connect(&agent.url()).await?)
        .emit(pb::EmitRequest {
            event: Some(pb::Event {
                tenant: "shop-1".into(),
                r#type: "order.created".into(),
                payload: b"{}".to_vec(),
                ..Default::default()
            }),
        })
        .await
        .expect_err("refused while draining");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("shutting down"), "{refused:?}");

    // Grace is 5 s (set by the harness): the agent must be gone well within it plus start-up slack.
    let code = agent.wait_exit(Duration::from_secs(8)).await?;
    assert_eq!(code, Some(0), "a clean exit");
    let refused = connect(&agent.url()).await;
    assert!(refused.is_err(), "no longer accepting Emit");
    // With the control plane up, every attempt made was reported and acknowledged first.
    let log = agent.log();
    assert!(
        !log.contains("attempt reports left in the outbox"),
        "reports left although the control plane was up: {log}"
    );

    // Whatever was not sent before the exit is pending in the queue, and goes out on restart.
    receiver.respond_with(200);
    agent.restart().await?;
    eventually(
        Duration::from_secs(30),
        "all 50 events delivered",
        || async {
            let delivered: HashSet<String> = receiver
                .requests()
                .iter()
                .filter_map(|r| r.header("webhook-id").map(str::to_owned))
                .collect();
            Ok(ids.iter().all(|id| delivered.contains(id)).then_some(()))
        },
    )
    .await?;
    Ok(())
}

/// An agent killed right after it acknowledged a config comes back with that config, even with
/// the control plane gone: events emitted before it reaches the control plane again go to the
/// subscriptions it had acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_acknowledged_before_kill_9_survives_it() -> anyhow::Result<()> {
    let servers = Servers::start().await?;
    let (cp, receiver, ca_file) = (&servers.cp, &servers.receiver, &servers.ca_file);
    // The agent's first config holds another tenant's subscription only.
    let first = cp
        .create(subscription("shop-0", &receiver.url("/zero"), &["order.*"]))
        .await?;
    let binary = Path::new(env!("CARGO_BIN_EXE_herald-agent"));
    let mut agent = AgentProcess::start(binary, cp.url(), ca_file, &[]).await?;
    cp.wait_applied(first.revision, Duration::from_secs(20))
        .await?;

    // A new subscription, acknowledged by the agent, then kill -9 at once.
    let sub = cp
        .create(subscription(
            "shop-1",
            &receiver.url("/orders"),
            &["order.*"],
        ))
        .await?;
    cp.wait_applied(sub.revision, Duration::from_secs(20))
        .await?;
    agent.kill9().await?;
    servers.cp.stop().await?;

    agent.restart().await?;
    // It listens before its queue is open (Emit is UNAVAILABLE until then): as a client's
    // health check would, wait for SERVING.
    eventually(Duration::from_secs(20), "health SERVING", || async {
        Ok((serving_status(&agent.url(), "").await? == ServingStatus::Serving).then_some(()))
    })
    .await?;
    let mut client = EventsClient::new(connect(&agent.url()).await?);
    let response = client
        .emit(pb::EmitRequest {
            event: Some(pb::Event {
                tenant: "shop-1".into(),
                r#type: "order.created".into(),
                payload: br#"{"id":1}"#.to_vec(),
                ..Default::default()
            }),
        })
        .await?
        .into_inner();
    assert_eq!(
        response.matched,
        1,
        "the restarted agent matches with the config it acknowledged; its log:\n{}",
        agent.log()
    );
    receiver
        .wait_for_requests(1, Duration::from_secs(10))
        .await?;
    Ok(())
}

/// An agent whose log's fresh epoch holds `records` records, each synced before its Emit was
/// answered, killed with `kill -9`, then a bit flipped inside the first record; and its
/// control plane (the agent restarts against it).
async fn an_agent_whose_first_log_record_is_damaged(
    records: usize,
) -> anyhow::Result<(Servers, DaemonProcess)> {
    let (servers, agent) = an_agent_killed_with_log_records(records).await?;
    let wal = agent.data_dir().join("queue.wal");
    let mut bytes = std::fs::read(&wal)?;
    let inside_first = 24 + 9 + 1;
    bytes[inside_first] ^= 0xff;
    std::fs::write(&wal, &bytes)?;
    Ok((servers, agent))
}

/// An agent whose log's fresh epoch holds `records` records, each synced before its Emit was
/// answered, killed with `kill -9`; and its control plane.
async fn an_agent_killed_with_log_records(
    records: usize,
) -> anyhow::Result<(Servers, DaemonProcess)> {
    let servers = Servers::start().await?;
    let binary = Path::new(env!("CARGO_BIN_EXE_herald-agent"));
    let mut agent = AgentProcess::start(binary, servers.cp.url(), &servers.ca_file, &[]).await?;
    servers.cp.wait_applied(0, Duration::from_secs(20)).await?;
    // Past the first checkpoint's second: the first Emit below is a checkpoint, those after
    // it records of a fresh log epoch.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let mut client = EventsClient::new(connect(&agent.url()).await?);
    for n in 0..=records {
        client
            .emit(pb::EmitRequest {
                event: Some(pb::Event {
                    id: format!("evt_damaged_{n}"),
                    tenant: "shop-9".into(),
                    r#type: "order.created".into(),
                    payload: b"{}".to_vec(),
                    ..Default::default()
                }),
            })
            .await?;
    }
    agent.kill9().await?;
    Ok((servers, agent))
}

/// The queue's log cut short (a copy or restore that lost its end, a file system's repair):
/// the records after the cut, acknowledged ones among them, leave nothing to count. The agent
/// refuses to start (exit code 65) every time it is started so, until `--recover-truncate`
/// keeps what precedes the cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_cut_short_stops_the_agent_unless_told_to_truncate() -> anyhow::Result<()> {
    let (_servers, mut agent) = an_agent_killed_with_log_records(3).await?;
    let wal = std::fs::OpenOptions::new()
        .write(true)
        .open(agent.data_dir().join("queue.wal"))?;
    // Inside the second record: the first reads back whole, nothing after it is there.
    wal.set_len(24 + 9 + 40)?;
    drop(wal);
    for _ in 0..2 {
        let (code, said) = agent.run_expecting_exit(Duration::from_secs(20)).await?;
        assert_eq!(code, Some(65), "{said}");
        assert!(
            said.contains("queue.wal is 73 bytes long, cut short")
                && said.contains("--recover-truncate"),
            "{said}"
        );
    }
    agent.add_flags(&["--recover-truncate"]);
    agent.restart().await?;
    eventually(Duration::from_secs(20), "the cut logged", || async {
        Ok(agent.log().contains("was cut short").then_some(()))
    })
    .await?;
    assert!(agent.exit_status().is_none(), "it runs");
    Ok(())
}

/// The last record of the queue's log, synced (its Emit answered) and then damaged: nothing
/// of the epoch follows it but the seal written after its sync, which is enough to tell it
/// from a crash's torn tail. The agent refuses to start (exit code 65).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_last_log_record_stops_the_agent_too() -> anyhow::Result<()> {
    let (_servers, mut agent) = an_agent_whose_first_log_record_is_damaged(1).await?;
    let (code, said) = agent.run_expecting_exit(Duration::from_secs(20)).await?;
    assert_eq!(code, Some(65), "{said}");
    assert!(
        said.contains("queue.wal: the record at offset 0 does not read back whole")
            && said.contains("0 records written after it follow"),
        "{said}"
    );
    Ok(())
}

/// A record of the queue's log that was synced and then damaged (a bit flipped on disk): the
/// agent refuses to start, naming the offset and how many records follow (exit code 65),
/// rather than silently dropping acknowledged events; `--recover-truncate` starts it, keeping
/// what precedes the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_log_record_stops_the_agent_unless_told_to_truncate() -> anyhow::Result<()> {
    let (_servers, mut agent) = an_agent_whose_first_log_record_is_damaged(3).await?;
    let (code, said) = agent.run_expecting_exit(Duration::from_secs(20)).await?;
    assert_eq!(code, Some(65), "{said}");
    assert!(
        said.contains("queue.wal: the record at offset 0 does not read back whole")
            && said.contains("records written after it follow")
            && said.contains("--recover-truncate"),
        "{said}"
    );

    agent.add_flags(&["--recover-truncate"]);
    agent.restart().await?;
    // (The port listens before the queue opens: the log says when recovery is done.)
    eventually(
        Duration::from_secs(20),
        "the dropped records logged",
        || async {
            let log = agent.log();
            Ok(
                (log.contains("damaged record") && log.contains("records after it are dropped"))
                    .then_some(()),
            )
        },
    )
    .await?;
    // The line is logged before the queue is open: Emit answers UNAVAILABLE ("the agent is
    // starting") until it is.
    let client = EventsClient::new(connect(&agent.url()).await?);
    eventually(Duration::from_secs(20), "an event taken", || async {
        let taken = client
            .clone()
            .emit(pb::EmitRequest {
                event: Some(pb::Event {
                    tenant: "shop-9".into(),
                    r#type: "order.created".into(),
                    payload: b"{}".to_vec(),
                    ..Default::default()
                }),
            })
            .await;
        match taken {
            Ok(_) => Ok(Some(())),
            Err(status) if status.code() == tonic::Code::Unavailable => Ok(None),
            Err(status) => Err(status.into()),
        }
    })
    .await?;
    assert!(agent.exit_status().is_none(), "it runs");
    Ok(())
}

/// An agent killed while its disk is full cannot open its queue again until space is freed:
/// recovery writes (the log replayed into the queue file, the file repaired). It starts
/// anyway and says so, health `NOT_SERVING` and `Emit` refused as a full disk refuses it,
/// instead of exiting into its supervisor's restart loop; once space is freed it opens the
/// queue by itself and delivers what it acknowledged before the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_on_a_full_disk_starts_and_waits_for_room() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Some(disk) = Tmpfs::mount("48m")? else {
        return Ok(());
    };
    let servers = Servers::start().await?;
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let metrics_at = metrics.to_string();
    // Acknowledged and not delivered at the kill: the receiver holds the first attempt.
    let mut agent = agent_holding(
        &servers,
        Some(&disk.path().join("agent")),
        &[
            "--queue-min-free-bytes",
            "4194304",
            "--metrics-listen",
            &metrics_at,
        ],
        "evt_full",
        20,
    )
    .await?;
    // Whether the queue's gauges could be read, as a scrape sees it.
    let readable = || async move {
        let text = reqwest::get(format!("http://{metrics}/metrics"))
            .await?
            .text()
            .await?;
        let line = text
            .lines()
            .find(|line| line.starts_with("herald_queue_readable "))
            .ok_or_else(|| anyhow::anyhow!("no herald_queue_readable in {text}"))?;
        anyhow::Ok(line.ends_with(" 1"))
    };
    let url = agent.url();
    let emit = |n: usize| emit_order(&url, "evt_full", n);
    let filler = disk.fill()?;
    agent.restart().await?;

    starting_on_a_full_disk(&mut agent, || emit(20), "cannot open the queue").await?;
    assert!(
        !readable().await?,
        "metrics answer, and say the queue is not read"
    );

    let before = servers.receiver.request_count();
    servers.receiver.respond_with(204);
    std::fs::remove_file(&filler)?;
    eventually(Duration::from_secs(60), "health SERVING", || async {
        Ok((serving_status(&agent.url(), "").await? == ServingStatus::Serving).then_some(()))
    })
    .await?;
    emit(20).await?;
    assert!(readable().await?);
    wait_delivered(&servers.receiver, before, "evt_full", 20).await?;
    Ok(())
}

/// An agent started for the first time on a full disk cannot keep the id it makes: instead of
/// exiting into a supervisor's restart loop, it serves (health `NOT_SERVING`, `Emit` refused
/// for a full disk), keeps its id once space is freed, and delivers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_first_started_on_a_full_disk_waits_for_room_to_keep_its_id() -> anyhow::Result<()>
{
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Some(disk) = Tmpfs::mount("48m")? else {
        return Ok(());
    };
    let servers = Servers::start().await?;
    let sub = servers
        .cp
        .create(subscription(
            "shop-1",
            &servers.receiver.url("/orders"),
            &["order.*"],
        ))
        .await?;
    let data_dir = disk.path().join("agent");
    std::fs::create_dir(&data_dir)?;
    let filler = disk.fill()?;
    let binary = Path::new(env!("CARGO_BIN_EXE_herald-agent"));
    let mut agent =
        AgentProcess::start_in(binary, servers.cp.url(), &servers.ca_file, &data_dir, &[]).await?;
    let url = agent.url();
    let emit = |n: usize| emit_order(&url, "evt_first", n);

    starting_on_a_full_disk(&mut agent, || emit(0), "cannot keep the agent's new id").await?;
    assert!(!data_dir.join("agent-id").exists());

    std::fs::remove_file(&filler)?;
    eventually(Duration::from_secs(60), "health SERVING", || async {
        Ok((serving_status(&agent.url(), "").await? == ServingStatus::Serving).then_some(()))
    })
    .await?;
    let id = std::fs::read_to_string(data_dir.join("agent-id"))?;
    servers
        .cp
        .wait_applied(sub.revision, Duration::from_secs(20))
        .await?;
    let agents = servers.cp.list_agents().await?;
    assert!(
        agents.iter().any(|a| a.id == id && a.connected),
        "{id} in {agents:?}"
    );
    emit(0).await?;
    wait_delivered(&servers.receiver, 0, "evt_first", 0).await?;
    Ok(())
}

/// An agent started while its disk is frozen (a storage snapshot, a stuck volume: writes wait
/// without failing) answers from the start, health `NOT_SERVING` and `Emit` `UNAVAILABLE`
/// ("the agent is starting"), instead of leaving callers and health checks unanswered until
/// the thaw; once the disk thaws it opens its queue and delivers what it acknowledged before
/// it was killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_started_on_a_frozen_disk_answers_and_starts_at_the_thaw() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Some(disk) = FreezableDisk::mount("64M")? else {
        return Ok(());
    };
    let servers = Servers::start().await?;
    // Acknowledged and not delivered at the kill: the receiver holds the first attempt.
    let mut agent = agent_holding(
        &servers,
        Some(&disk.path().join("agent")),
        &[],
        "evt_frozen",
        5,
    )
    .await?;
    let url = agent.url();
    let emit = |n: usize| emit_order(&url, "evt_frozen", n);
    agent.kill9().await?;
    disk.freeze()?;
    agent.restart().await?;

    eventually(Duration::from_secs(20), "health NOT_SERVING", || async {
        Ok((serving_status(&agent.url(), "").await? == ServingStatus::NotServing).then_some(()))
    })
    .await?;
    let refused = emit(5)
        .await
        .expect_err("refused while the queue cannot open");
    let status = herald_tests::herald::status_of(&refused)?;
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("starting"), "{status:?}");
    assert!(agent.exit_status().is_none(), "{}", agent.log());

    let before = servers.receiver.request_count();
    servers.receiver.respond_with(204);
    disk.thaw()?;
    eventually(Duration::from_secs(60), "health SERVING", || async {
        Ok((serving_status(&agent.url(), "").await? == ServingStatus::Serving).then_some(()))
    })
    .await?;
    emit(5).await?;
    wait_delivered(&servers.receiver, before, "evt_frozen", 5).await?;
    Ok(())
}

/// Queue files removed under a running agent (a clean-up script, a hand). Its log: the agent
/// puts what the log held into its queue file and makes the log again, so a `kill -9` after
/// loses nothing. Its queue file: what the agent would write there is lost at the next start,
/// so new events are refused (`UNAVAILABLE`, health `NOT_SERVING`) until the file is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_files_removed_under_a_running_agent_lose_no_acknowledged_event() -> anyhow::Result<()>
{
    let _ = rustls::crypto::ring::default_provider().install_default();
    let servers = Servers::start().await?;
    let mut agent = agent_holding(&servers, None, &[], "evt_removed", 5).await?;
    let url = agent.url();
    let emit = |n: usize| emit_order(&url, "evt_removed", n);

    // The log removed: made again, events still taken.
    let log = agent.data_dir().join("queue.wal");
    std::fs::remove_file(&log)?;
    eventually(Duration::from_secs(20), "queue.wal made again", || async {
        Ok(std::fs::metadata(&log)
            .is_ok_and(|m| m.len() == 8 * 1024 * 1024)
            .then_some(()))
    })
    .await?;
    for n in 5..10 {
        emit(n).await?;
    }

    // The queue file moved away: new events refused until it is back.
    let (file, aside) = (
        agent.data_dir().join("queue.redb"),
        agent.data_dir().join("queue.redb.aside"),
    );
    std::fs::rename(&file, &aside)?;
    eventually(Duration::from_secs(20), "health NOT_SERVING", || async {
        Ok((serving_status(&agent.url(), "").await? == ServingStatus::NotServing).then_some(()))
    })
    .await?;
    let refused = emit(10)
        .await
        .expect_err("refused while queue.redb is away");
    let status = herald_tests::herald::status_of(&refused)?;
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("queue.redb was removed"),
        "{status:?}"
    );
    std::fs::rename(&aside, &file)?;
    eventually(Duration::from_secs(20), "health SERVING", || async {
        Ok((serving_status(&agent.url(), "").await? == ServingStatus::Serving).then_some(()))
    })
    .await?;
    emit(10).await?;

    // What a kill -9 leaves holds every acknowledged event.
    let before = servers.receiver.request_count();
    servers.receiver.respond_with(204);
    agent.restart().await?;
    wait_delivered(&servers.receiver, before, "evt_removed", 10).await?;
    Ok(())
}

/// A data dir used before that lost its queue file (removed by a hand, a clean-up script):
/// the agent starts with an empty queue, and says that whatever the file held is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_file_lost_from_a_used_data_dir_is_warned_about() -> anyhow::Result<()> {
    let servers = Servers::start().await?;
    let binary = Path::new(env!("CARGO_BIN_EXE_herald-agent"));
    let mut agent = AgentProcess::start(binary, servers.cp.url(), &servers.ca_file, &[]).await?;
    servers.cp.wait_applied(0, Duration::from_secs(20)).await?;
    let cache = agent.data_dir().join("config-cache.pb");
    eventually(Duration::from_secs(20), "the config cached", || async {
        Ok(cache.exists().then_some(()))
    })
    .await?;
    agent.kill9().await?;
    std::fs::remove_file(agent.data_dir().join("queue.redb"))?;
    agent.restart().await?;
    eventually(Duration::from_secs(20), "the loss said", || async {
        Ok(agent
            .log()
            .contains("queue.redb is missing from a data dir used before")
            .then_some(()))
    })
    .await?;
    assert!(agent.exit_status().is_none(), "it runs");
    Ok(())
}
