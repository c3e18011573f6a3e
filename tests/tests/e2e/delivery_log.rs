//! The central delivery log: its contract checked against the embedded store and a real
//! PostgreSQL, and several control-plane replicas answering from one database.

use std::sync::Arc;
use std::time::Duration;

use herald_control_plane::attempts::postgres::{DatabaseUrl, FOLLOWER_APPLICATION, MIGRATIONS};
use herald_control_plane::attempts::{
    AttemptLog, EmbeddedLog, LogError, LogStore, LogStoreFlag, PostgresLog, conformance,
};
use herald_control_plane::store_health::LOG_SERVICE;
use herald_proto::v1 as pb;
use herald_tests::herald::serving_status;
use herald_tests::{
    AgentAndReceiver, AgentOptions, ConfigStore, ControlPlane, Etcd, HeldPort, Postgres, TestCa,
    World, event, eventually, subscription,
};

use crate::metrics::{scrape, value};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);
/// Long enough for the contract's checks, which store attempts up to 40 days old.
const YEAR: Duration = Duration::from_secs(365 * 24 * 60 * 60);

fn database(postgres: &Postgres) -> anyhow::Result<DatabaseUrl> {
    DatabaseUrl::parse(&postgres.url()).map_err(anyhow::Error::msg)
}

#[tokio::test]
async fn the_embedded_log_keeps_the_log_contract() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let log: AttemptLog = Arc::new(EmbeddedLog::open(dir.path())?);
    conformance::check_all(&log).await;
    Ok(())
}

#[tokio::test]
async fn postgresql_keeps_the_log_contract() -> anyhow::Result<()> {
    let postgres = Postgres::start().await?;
    let log: AttemptLog = Arc::new(PostgresLog::open(&database(&postgres)?, YEAR).await?);
    conformance::check_all(&log).await;

    // What psql sees: readable columns, one partition a day, no default partition.
    let (client, connection) =
        tokio_postgres::connect(&postgres.url(), tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let rows = client
        .query(
            "SELECT event_id, status_code, url FROM attempts WHERE event_id = 'evt_kept'",
            &[],
        )
        .await?;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, i32>(1), 200);
    assert_eq!(rows[0].get::<_, String>(2), "https://shop.example/hooks");
    let partitions = client
        .query(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i \
             JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent \
             WHERE p.relname = 'attempts'",
            &[],
        )
        .await?;
    assert!(
        partitions.len() >= 5,
        "yesterday to three days ahead, at least"
    );
    for row in &partitions {
        let (name, bound): (String, String) = (row.get(0), row.get(1));
        assert!(name.starts_with("attempts_20"), "{name}");
        assert!(bound.starts_with("FOR VALUES FROM"), "{name}: {bound}");
    }

    // Each filter's condition, as the log writes it, is served by its own index: with
    // sequential scans priced out, no plan falls back to one, or to walking the whole log
    // newest first (`attempts_newest`, on each day's partition `<day>_started_at_seq_idx`).
    client.execute("SET enable_seqscan = off", &[]).await?;
    for condition in [
        r#"(event_type COLLATE "C") = 'order.created'"#,
        r#"(event_type COLLATE "C") > 'order.' AND (event_type COLLATE "C") < 'order/'"#,
        "status_code = 503 AND (status_code < 200 OR status_code > 299)",
        "(status_code / 100) = 5 AND (status_code < 200 OR status_code > 299)",
        "error_kind = 'timeout' AND error_kind <> ''",
    ] {
        let plan: Vec<String> = client
            .query(
                &format!(
                    "EXPLAIN SELECT seq, started_at, record FROM attempts WHERE {condition} \
                     ORDER BY started_at DESC, seq DESC LIMIT 101"
                ),
                &[],
            )
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
        let plan = plan.join("\n");
        let indexes: Vec<&str> = plan
            .split(" using ")
            .skip(1)
            .filter_map(|rest| rest.split_whitespace().next())
            // attempts_20261205_status_code_started_at_seq_idx → status_code_started_at_seq_idx
            .filter_map(|index| index.splitn(3, '_').nth(2))
            .collect();
        assert!(!plan.contains("Seq Scan"), "{condition}:\n{plan}");
        assert!(
            !indexes.is_empty() && indexes.iter().all(|i| *i != "started_at_seq_idx"),
            "{condition}:\n{plan}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn replicas_starting_together_migrate_once_and_a_newer_schema_is_refused()
-> anyhow::Result<()> {
    let postgres = Postgres::start().await?;
    let url = database(&postgres)?;
    let (a, b, c) = tokio::join!(
        PostgresLog::open(&url, YEAR),
        PostgresLog::open(&url, YEAR),
        PostgresLog::open(&url, YEAR),
    );
    let (a, _b, _c) = (a?, b?, c?);
    a.insert(vec![conformance::attempt(
        "evt_race",
        "sub_race",
        1,
        pb::Outcome::Delivered,
        Duration::ZERO,
    )])
    .await?;

    let (client, connection) =
        tokio_postgres::connect(&postgres.url(), tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let versions = client
        .query("SELECT version FROM herald_schema ORDER BY version", &[])
        .await?;
    let versions: Vec<i32> = versions.iter().map(|r| r.get(0)).collect();
    let expected: Vec<i32> = (1..=MIGRATIONS.len() as i32).collect();
    assert_eq!(versions, expected, "migrated once");

    client
        .execute("INSERT INTO herald_schema (version) VALUES (99)", &[])
        .await?;
    match PostgresLog::open(&url, YEAR).await {
        Err(err @ LogError::NewerSchema { found: 99, .. }) => {
            assert!(err.to_string().contains("version 99"), "{err}");
        }
        Err(other) => anyhow::bail!("expected a newer-schema refusal, got {other}"),
        Ok(_) => anyhow::bail!("a newer schema was used"),
    }
    Ok(())
}

#[tokio::test]
async fn a_database_that_goes_away_is_unavailable_until_it_returns() -> anyhow::Result<()> {
    let mut postgres = Postgres::start().await?;
    let log = PostgresLog::open(&database(&postgres)?, YEAR).await?;
    let before = conformance::attempt(
        "evt_up",
        "sub_down",
        1,
        pb::Outcome::Delivered,
        Duration::ZERO,
    );
    assert_eq!(log.insert(vec![before]).await?.len(), 1);

    postgres.stop().await?;
    let during = conformance::attempt(
        "evt_down",
        "sub_down",
        1,
        pb::Outcome::Delivered,
        Duration::ZERO,
    );
    match log.insert(vec![during.clone()]).await {
        Err(LogError::Unavailable(message)) => {
            assert!(message.contains("PostgreSQL at 127.0.0.1"), "{message}")
        }
        other => anyhow::bail!("expected the database to be unavailable, got {other:?}"),
    }
    let status = tonic::Status::from(log.list(Default::default(), 10, "").await.unwrap_err());
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");

    postgres.start_again().await?;
    // The report the agent kept is stored when it sends it again; nothing is doubled.
    let stored = eventually(WAIT, "the database back", || async {
        Ok(log.insert(vec![during.clone()]).await.ok())
    })
    .await?;
    assert_eq!(stored.len(), 1);
    let page = log
        .list(
            herald_control_plane::attempts::Filter::new(pb::AttemptFilter {
                subscription_id: "sub_down".into(),
                ..Default::default()
            })
            .expect("a valid filter"),
            10,
            "",
        )
        .await?;
    let ids: Vec<&str> = page.attempts.iter().map(|a| a.event_id.as_str()).collect();
    assert_eq!(ids, ["evt_down", "evt_up"]);
    Ok(())
}

/// A database that stops answering without closing its connections (a host that hangs, a
/// network that drops packets) makes each call UNAVAILABLE within the answer timeout, instead
/// of holding it for as long as TCP waits; once it answers again, so does the log, on fresh
/// connections.
#[tokio::test]
async fn a_database_that_stops_answering_is_unavailable_within_the_answer_timeout()
-> anyhow::Result<()> {
    let mut postgres = Postgres::start().await?;
    let limit = Duration::from_secs(2);
    let log = PostgresLog::open_with(&database(&postgres)?, YEAR, limit).await?;
    // Connections in the pool, each able to hang on the frozen server.
    let first = conformance::attempt(
        "evt_a",
        "sub_frozen",
        1,
        pb::Outcome::Delivered,
        Duration::ZERO,
    );
    assert_eq!(log.insert(vec![first]).await?.len(), 1);
    let (a, b) = tokio::join!(
        log.list(Default::default(), 10, ""),
        log.list(Default::default(), 10, "")
    );
    a?;
    b?;

    postgres.freeze().await?;
    let during = conformance::attempt(
        "evt_b",
        "sub_frozen",
        1,
        pb::Outcome::Delivered,
        Duration::ZERO,
    );
    for call in 0..3 {
        let started = tokio::time::Instant::now();
        let stored =
            tokio::time::timeout(Duration::from_secs(20), log.insert(vec![during.clone()]))
                .await
                .map_err(|_| anyhow::anyhow!("call {call} held past 20 s by a frozen database"))?;
        assert!(
            matches!(stored, Err(LogError::Unavailable(_))),
            "call {call}: {stored:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "call {call}: {:?}",
            started.elapsed()
        );
    }

    postgres.thaw().await?;
    let stored = eventually(WAIT, "the database answering again", || async {
        Ok(log.insert(vec![during.clone()]).await.ok())
    })
    .await?;
    assert!(stored.len() <= 1, "stored once at most: {stored:?}");
    let page = log.list(Default::default(), 10, "").await?;
    let ids: Vec<&str> = page.attempts.iter().map(|a| a.event_id.as_str()).collect();
    assert_eq!(ids, ["evt_b", "evt_a"]);
    Ok(())
}

#[tokio::test]
async fn every_replica_lists_and_follows_what_any_replica_stored() -> anyhow::Result<()> {
    let etcd = Etcd::start().await?;
    let postgres = Postgres::start().await?;
    let store = ConfigStore::Etcd(vec![etcd.endpoint()]);
    let shared = LogStoreFlag::new(postgres.url());
    let start = |shared: LogStoreFlag| {
        ControlPlane::start_configured(store.clone(), move |config| config.log_store = shared)
    };
    let a = start(shared.clone()).await?;
    let b = start(shared).await?;
    let AgentAndReceiver {
        agent, receiver, ..
    } = AgentAndReceiver::start(a.url(), AgentOptions::default()).await?;
    let sub = b
        .create(subscription(
            "shop-1",
            &receiver.url("/hooks"),
            &["order.*"],
        ))
        .await?;
    a.wait_applied(sub.revision, WAIT).await?;

    // A tail on the replica the agent does not report to.
    let mut tail = b
        .deliveries()
        .await?
        .tail_attempts(pb::TailAttemptsRequest {
            filter: Some(pb::AttemptFilter {
                subscription_id: sub.id.clone(),
                ..Default::default()
            }),
        })
        .await?
        .into_inner();
    let emitted = agent
        .emit(event("shop-1", "order.created", &json!({"order_id": 7})))
        .await?;
    let followed = tokio::time::timeout(WAIT, tail.message())
        .await
        .map_err(|_| anyhow::anyhow!("no attempt tailed on the other replica within 10 s"))??
        .ok_or_else(|| anyhow::anyhow!("the tail ended"))?;
    assert_eq!(followed.event_id, emitted.event_id);

    for replica in [&a, &b] {
        let attempts = eventually(WAIT, "the attempt on every replica", || async {
            let attempts = replica
                .attempts(pb::AttemptFilter {
                    subscription_id: sub.id.clone(),
                    ..Default::default()
                })
                .await?;
            Ok((!attempts.is_empty()).then_some(attempts))
        })
        .await?;
        assert_eq!(attempts[0].event_id, emitted.event_id);
    }
    // The health view counts the same from either replica.
    let mut answers = Vec::new();
    for replica in [&a, &b] {
        let got = replica
            .subscriptions()
            .await?
            .get_subscription_health(pb::GetSubscriptionHealthRequest { id: sub.id.clone() })
            .await?
            .into_inner();
        answers.push((got.recent_attempts, got.success_rate.to_bits()));
    }
    assert_eq!(answers[0], answers[1], "both replicas answer alike");
    assert_eq!(answers[0].0, 1);

    // A replay asked of the replica the agent is not connected to reaches it through the
    // replica that holds it, and the answer comes back: a new attempt, same webhook-id.
    eventually(WAIT, "the agent's presence on every replica", || async {
        let agents = b.list_agents().await?;
        Ok(agents.iter().any(|a| a.connected).then_some(()))
    })
    .await?;
    let replayed = b
        .deliveries()
        .await?
        .replay_deliveries(pb::ReplayDeliveriesRequest {
            event_id: emitted.event_id.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(replayed.queued, 1, "{replayed:?}");
    assert!(replayed.not_replayable.is_empty(), "{replayed:?}");
    let requests = receiver.wait_for_requests(2, WAIT).await?;
    assert!(
        requests
            .iter()
            .all(|r| r.header("webhook-id") == Some(emitted.event_id.as_str()))
    );

    // A test-send asked of the replica the agent is not connected to is made by the agent
    // through the replica that holds it, answered, and logged as a test.
    let tested = b
        .subscriptions()
        .await?
        .test_subscription(pb::TestSubscriptionRequest {
            id: sub.id.clone(),
            event_type: "order.created".into(),
            payload: br#"{"order_id": "ord_test"}"#.to_vec(),
        })
        .await?
        .into_inner()
        .attempt
        .expect("an attempt");
    assert_eq!((tested.status_code, tested.test), (200, true), "{tested:?}");
    let requests = receiver.wait_for_requests(3, WAIT).await?;
    assert_eq!(
        requests[2].header("webhook-id"),
        Some(tested.event_id.as_str())
    );
    let logged = b
        .attempts(pb::AttemptFilter {
            event_id: tested.event_id.clone(),
            ..Default::default()
        })
        .await?;
    assert!(logged.len() == 1 && logged[0].test, "{logged:?}");

    // With the replica that stored it gone, the other still lists it.
    agent.stop().await?;
    a.stop().await?;
    let attempts = b
        .attempts(pb::AttemptFilter {
            event_id: emitted.event_id.clone(),
            ..Default::default()
        })
        .await?;
    assert_eq!(attempts.len(), 2, "the attempt and its replay");

    // With no agent connected anywhere, a test-send says so.
    eventually(WAIT, "the agent's absence on the replica left", || async {
        let agents = b.list_agents().await?;
        Ok(agents.iter().all(|a| !a.connected).then_some(()))
    })
    .await?;
    let refused = b
        .subscriptions()
        .await?
        .test_subscription(pb::TestSubscriptionRequest {
            id: sub.id.clone(),
            event_type: "order.created".into(),
            payload: vec![],
        })
        .await
        .expect_err("no agent");
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    Ok(())
}

#[tokio::test]
async fn the_log_speaks_tls_to_the_database_and_checks_who_answers() -> anyhow::Result<()> {
    let ca = TestCa::new();
    let postgres = Postgres::start_tls(&ca).await?;
    let dir = tempfile::tempdir()?;
    let trusted = ca.write_ca_pem(dir.path())?;
    let with_root = |root: &std::path::Path| {
        DatabaseUrl::parse(&format!(
            "{}?sslmode=verify-full&sslrootcert={}",
            postgres.url(),
            root.display()
        ))
        .map_err(anyhow::Error::msg)
    };
    let log = PostgresLog::open(&with_root(&trusted)?, YEAR).await?;
    let stored = log
        .insert(vec![conformance::attempt(
            "evt_tls",
            "sub_tls",
            1,
            pb::Outcome::Delivered,
            Duration::ZERO,
        )])
        .await?;
    assert_eq!(stored.len(), 1);

    // Every connection of the log is encrypted, as the server sees it.
    let (client, connection) =
        tokio_postgres::connect(&postgres.url(), tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let rows = client
        .query(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a ON a.pid = s.pid \
             WHERE a.application_name = 'herald-control-plane'",
            &[],
        )
        .await?;
    assert!(!rows.is_empty());
    assert!(
        rows.iter().all(|row| row.get::<_, bool>(0)),
        "a plain connection"
    );

    // A server whose certificate another CA signed is not talked to.
    let stranger = TestCa::new();
    let other_dir = tempfile::tempdir()?;
    let untrusted = stranger.write_ca_pem(other_dir.path())?;
    assert!(
        PostgresLog::open(&with_root(&untrusted)?, YEAR)
            .await
            .is_err()
    );
    Ok(())
}

#[tokio::test]
async fn a_partition_dropped_behind_a_replicas_back_is_made_again() -> anyhow::Result<()> {
    let postgres = Postgres::start().await?;
    let log = PostgresLog::open(&database(&postgres)?, YEAR).await?;
    let (client, connection) =
        tokio_postgres::connect(&postgres.url(), tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    // The day after tomorrow: made ahead at start, so the log believes it exists.
    let ahead = std::time::SystemTime::now() + Duration::from_secs(2 * 24 * 60 * 60);
    let date = humantime::format_rfc3339(ahead).to_string();
    let partition = format!("attempts_{}", date[..10].replace('-', ""));
    client
        .batch_execute(&format!("DROP TABLE {partition}"))
        .await?;
    let mut early = conformance::attempt(
        "evt_ahead",
        "sub_ahead",
        1,
        pb::Outcome::Delivered,
        Duration::ZERO,
    );
    early.started_at = Some(herald_proto::convert::timestamp(ahead));
    assert_eq!(
        log.insert(vec![early]).await?.len(),
        1,
        "stored, not refused"
    );
    let found = client
        .query("SELECT 1 FROM pg_class WHERE relname = $1", &[&partition])
        .await?;
    assert_eq!(found.len(), 1, "{partition} made again");
    Ok(())
}

#[tokio::test]
async fn a_tail_misses_nothing_stored_while_its_replica_was_not_listening() -> anyhow::Result<()> {
    let postgres = Postgres::start().await?;
    let url = database(&postgres)?;
    let a = PostgresLog::open(&url, YEAR).await?;
    let b = PostgresLog::open(&url, YEAR).await?;
    let mut tail = b.follow();
    let stored = |n: u32| {
        conformance::attempt(
            &format!("evt_gap_{n}"),
            "sub_gap",
            1,
            pb::Outcome::Delivered,
            Duration::ZERO,
        )
    };
    a.insert(vec![stored(1)]).await?;
    let first = tokio::time::timeout(WAIT, tail.recv()).await??;
    assert_eq!(first.event_id, "evt_gap_1");

    // The followers' connections are cut (a failover, a restart of a pooler), and attempts are
    // stored before they listen again: their notifications reach nobody.
    let (client, connection) =
        tokio_postgres::connect(&postgres.url(), tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let cut = client
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&FOLLOWER_APPLICATION],
        )
        .await?;
    assert_eq!(cut, 2, "one follower per replica");
    a.insert(vec![stored(2), stored(3)]).await?;

    let mut followed = Vec::new();
    while followed.len() < 2 {
        let got = tokio::time::timeout(WAIT, tail.recv())
            .await
            .map_err(|_| anyhow::anyhow!("tailed {followed:?} only, within 10 s"))??;
        followed.push(got.event_id.clone());
    }
    assert_eq!(followed, ["evt_gap_2", "evt_gap_3"]);
    Ok(())
}

#[tokio::test]
async fn postgresql_restarted_mid_traffic_loses_and_doubles_no_attempt() -> anyhow::Result<()> {
    use tonic_health::pb::health_check_response::ServingStatus;
    let mut postgres = Postgres::start().await?;
    let world = World::start_with_log(Some(postgres.url())).await?;
    let sub = world
        .control_plane
        .create(subscription(
            "shop-1",
            &world.receiver.url("/hooks"),
            &["order.*"],
        ))
        .await?;
    world.control_plane.wait_applied(sub.revision, WAIT).await?;
    let cp = world.control_plane.url().to_owned();
    assert_eq!(
        serving_status(&cp, LOG_SERVICE).await?,
        ServingStatus::Serving
    );
    let mut emitted = Vec::new();
    let mut emit = async |n: u32| -> anyhow::Result<()> {
        let mut order = event("shop-1", "order.created", &json!({ "order_id": n }));
        order.id = format!("evt_restart_{n:03}");
        world.agent.emit(order.clone()).await?;
        emitted.push(order.id);
        tokio::time::sleep(Duration::from_millis(5)).await;
        Ok(())
    };
    for n in 0..60 {
        emit(n).await?;
    }

    // The database goes away mid-traffic: deliveries go on, their reports wait in the agent.
    postgres.stop().await?;
    for n in 60..120 {
        emit(n).await?;
    }
    eventually(WAIT, "health checks to show the log down", || async {
        let status = serving_status(&cp, LOG_SERVICE).await?;
        Ok((status == ServingStatus::NotServing).then_some(()))
    })
    .await?;
    assert_eq!(
        serving_status(&cp, "herald.v1.Deliveries").await?,
        ServingStatus::NotServing
    );
    let refused = world
        .control_plane
        .attempts(pb::AttemptFilter::default())
        .await
        .expect_err("no listing without the database");
    let status = refused
        .downcast_ref::<tonic::Status>()
        .ok_or_else(|| anyhow::anyhow!("not a gRPC status: {refused}"))?;
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status
            .message()
            .contains(&format!("127.0.0.1:{}", postgres.port())),
        "the answer names the database: {}",
        status.message()
    );

    // It comes back: the waiting reports are stored, each attempt once.
    postgres.start_again().await?;
    for n in 120..180 {
        emit(n).await?;
    }
    let stored = eventually(
        Duration::from_secs(40),
        "every attempt in the log",
        || async {
            let attempts = world
                .control_plane
                .attempts(pb::AttemptFilter {
                    subscription_id: sub.id.clone(),
                    ..Default::default()
                })
                .await?;
            Ok((attempts.len() >= emitted.len()).then_some(attempts))
        },
    )
    .await?;
    let mut ids: Vec<&str> = stored.iter().map(|a| a.event_id.as_str()).collect();
    ids.sort();
    assert_eq!(ids.len(), emitted.len(), "no attempt stored twice");
    assert_eq!(ids, emitted, "every delivery's attempt, once");
    assert!(
        stored.iter().all(|a| a.outcome() == pb::Outcome::Delivered),
        "each was delivered at its first attempt"
    );
    eventually(WAIT, "health checks to show the log back", || async {
        let status = serving_status(&cp, LOG_SERVICE).await?;
        Ok((status == ServingStatus::Serving).then_some(()))
    })
    .await?;

    // A database that answers without the log's tables (renamed by hand) stores nothing: it
    // is down as far as health checks go, until they are back.
    let (client, connection) =
        tokio_postgres::connect(&postgres.url(), tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    for (from, to, status) in [
        ("attempts", "attempts_hidden", ServingStatus::NotServing),
        ("attempts_hidden", "attempts", ServingStatus::Serving),
    ] {
        client
            .batch_execute(&format!("ALTER TABLE {from} RENAME TO {to}"))
            .await?;
        eventually(WAIT, "health checks to follow the table", || async {
            let now = serving_status(&cp, LOG_SERVICE).await?;
            Ok((now == status).then_some(()))
        })
        .await?;
    }
    Ok(())
}

/// A tail whose client goes away ends at once, even when no attempt ever matches its filter:
/// months of dashboards opened and closed leave nothing running behind them.
#[tokio::test]
async fn a_tail_ends_when_its_client_goes_away_though_nothing_matches() -> anyhow::Result<()> {
    let metrics = HeldPort::new()?;
    let control_plane = ControlPlane::start_configured(ConfigStore::Embedded, |config| {
        config.metrics_listen = Some(metrics.addr())
    })
    .await?;
    let open_tails = || async {
        let samples = scrape(metrics.addr()).await?;
        anyhow::Ok(value(&samples, "herald_log_tails"))
    };
    let mut deliveries = control_plane.deliveries().await?;
    let tails = [
        deliveries
            .tail_attempts(pb::TailAttemptsRequest {
                filter: Some(pb::AttemptFilter {
                    tenant: "shop-nobody".into(),
                    ..Default::default()
                }),
            })
            .await?
            .into_inner(),
        deliveries
            .tail_attempts(pb::TailAttemptsRequest { filter: None })
            .await?
            .into_inner(),
    ];
    assert_eq!(open_tails().await?, 2.0);
    drop(tails);
    eventually(WAIT, "the tails to end", || async {
        Ok((open_tails().await? == 0.0).then_some(()))
    })
    .await?;
    Ok(())
}

/// A tail ends by itself only after its `until` (at once when that is long past); a replica that
/// shuts down ends its tails with UNAVAILABLE, so that a client tails again rather than take
/// the end for the end of what it asked for.
#[tokio::test]
async fn a_tail_ends_at_its_until_and_a_replica_shutting_down_ends_it_unavailable()
-> anyhow::Result<()> {
    let control_plane = ControlPlane::start(ConfigStore::Embedded).await?;
    let mut deliveries = control_plane.deliveries().await?;
    let mut past = deliveries
        .tail_attempts(pb::TailAttemptsRequest {
            filter: Some(pb::AttemptFilter {
                until: Some(herald_proto::convert::timestamp(
                    std::time::SystemTime::now() - Duration::from_secs(3600),
                )),
                ..Default::default()
            }),
        })
        .await?
        .into_inner();
    let ended = tokio::time::timeout(WAIT, past.message()).await?;
    assert!(matches!(ended, Ok(None)), "{ended:?}");

    let mut open = deliveries
        .tail_attempts(pb::TailAttemptsRequest { filter: None })
        .await?
        .into_inner();
    let stopping = tokio::spawn(control_plane.stop());
    let ended = tokio::time::timeout(WAIT, open.message()).await?;
    let status = ended.expect_err("ended with a status");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    stopping.await??;
    Ok(())
}

/// Agents reconnecting together with full report batches do not have a replica read them all
/// at once: a batch that does not fit its budget of reports in flight waits, its bytes held
/// back on the agent's side, until the batch holding the budget is done with.
#[tokio::test]
async fn a_report_batch_waits_while_others_hold_the_replicas_budget_of_reports()
-> anyhow::Result<()> {
    let metrics = HeldPort::new()?;
    let control_plane = ControlPlane::start_configured(ConfigStore::Embedded, |config| {
        config.max_report_bytes_in_flight = 64 << 10;
        config.metrics_listen = Some(metrics.addr());
    })
    .await?;
    let sub = control_plane
        .create(subscription(
            "shop-1",
            "https://127.0.0.1:9/hook",
            &["order.*"],
        ))
        .await?;
    let budget = |samples: &std::collections::BTreeMap<String, f64>| {
        (
            value(samples, "herald_report_bytes_in_flight"),
            value(samples, "herald_report_streams_waiting"),
        )
    };

    // A report stream (as an agent on a slow link would) has sent the first 1,000 bytes of a
    // 60,000-byte batch: the replica holds that much of its budget for it.
    let mut stalled = half_sent_report(control_plane.addr(), 60_000, 1_000).await?;
    eventually(WAIT, "the stalled batch's share", || async {
        let samples = scrape(metrics.addr()).await?;
        Ok((budget(&samples) == (60_000.0, 0.0)).then_some(()))
    })
    .await?;

    // An agent's batch of some 10 KB does not fit beside it: it waits, unread and unstored.
    let attempts = (0..20)
        .map(|n| pb::Attempt {
            event_id: format!("evt_{n}"),
            subscription_id: sub.id.clone(),
            tenant: "shop-1".into(),
            event_type: "order.created".into(),
            attempt: 1,
            agent_id: "agt_1".into(),
            started_at: Some(herald_proto::convert::timestamp(
                std::time::SystemTime::now(),
            )),
            duration: Some(herald_proto::convert::duration(Duration::from_millis(5))),
            status_code: 200,
            outcome: pb::Outcome::Delivered as i32,
            response_excerpt: "x".repeat(500),
            ..Default::default()
        })
        .collect();
    let batch = pb::ReportBatch {
        batch_id: 1,
        agent_id: "agt_1".into(),
        attempts,
    };
    let mut agent =
        pb::agent_control_client::AgentControlClient::new(control_plane.channel().await?);
    let mut acks = agent
        .report_attempts(futures_util::StreamExt::chain(
            futures_util::stream::iter([batch]),
            futures_util::stream::pending(),
        ))
        .await?
        .into_inner();
    // (What was left of the budget is set aside for it meanwhile: the whole budget is held.)
    eventually(WAIT, "the batch to wait for room", || async {
        let samples = scrape(metrics.addr()).await?;
        Ok((budget(&samples) == (65_536.0, 1.0)).then_some(()))
    })
    .await?;
    assert!(
        control_plane
            .attempts(pb::AttemptFilter::default())
            .await?
            .is_empty(),
        "nothing of the waiting batch is stored"
    );

    // The stalled stream gives up: its share goes back, and the waiting batch is stored.
    stalled.send_reset(h2::Reason::CANCEL);
    let ack = tokio::time::timeout(WAIT, acks.message())
        .await??
        .expect("an ack");
    assert_eq!(ack.batch_id, 1);
    assert_eq!(
        control_plane
            .attempts(pb::AttemptFilter::default())
            .await?
            .len(),
        20
    );
    let samples = scrape(metrics.addr()).await?;
    assert_eq!(budget(&samples), (0.0, 0.0), "every share given back");
    Ok(())
}

/// Opens a report stream to the control plane at `addr` and sends `sent` bytes of a batch
/// declaring `length`, then nothing more.
async fn half_sent_report(
    addr: std::net::SocketAddr,
    length: u32,
    sent: usize,
) -> anyhow::Result<h2::SendStream<bytes::Bytes>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let (client, connection) = h2::client::handshake(tcp).await?;
    tokio::spawn(connection);
    let request = http::Request::post(format!(
        "http://{addr}/herald.v1.AgentControl/ReportAttempts"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(())?;
    let (_response, mut stream) = client.ready().await?.send_request(request, false)?;
    let mut bytes = vec![0];
    bytes.extend_from_slice(&length.to_be_bytes());
    bytes.resize(5 + sent, 0x0a);
    stream.send_data(bytes.into(), false)?;
    Ok(stream)
}

/// An agent with nothing to report closes its report stream, so the replica holds nothing for
/// it, and opens one again for its next report.
#[tokio::test]
async fn an_idle_agent_closes_its_report_stream_and_opens_one_for_the_next_report()
-> anyhow::Result<()> {
    let metrics = HeldPort::new()?;
    let control_plane = ControlPlane::start_configured(ConfigStore::Embedded, |config| {
        config.metrics_listen = Some(metrics.addr());
    })
    .await?;
    let AgentAndReceiver {
        agent, receiver, ..
    } = AgentAndReceiver::start(
        control_plane.url(),
        AgentOptions {
            report_stream_idle: Some(Duration::from_secs(1)),
            ..Default::default()
        },
    )
    .await?;
    let sub = control_plane
        .create(subscription("shop-1", &receiver.url("/hook"), &["order.*"]))
        .await?;
    control_plane.wait_applied(sub.revision, WAIT).await?;
    let open_streams = || async {
        let samples = scrape(metrics.addr()).await?;
        anyhow::Ok(value(&samples, "herald_report_streams"))
    };

    for n in 1..=2 {
        let mut e = event("shop-1", "order.created", &json!({ "n": n }));
        e.id = format!("evt-{n}");
        agent.emit(e).await?;
        let logged = control_plane
            .wait_logged(
                pb::AttemptFilter {
                    event_id: format!("evt-{n}"),
                    ..Default::default()
                },
                WAIT,
            )
            .await?;
        assert_eq!(logged[0].outcome(), pb::Outcome::Delivered);
        // A second after its report is acknowledged, the stream is closed.
        eventually(WAIT, "the idle report stream to close", || async {
            Ok((open_streams().await? == 0.0).then_some(()))
        })
        .await?;
    }
    receiver.wait_for_requests(2, WAIT).await?;
    Ok(())
}

#[tokio::test]
async fn a_log_over_its_limit_drops_a_full_day_once_and_leaves_the_empty_one_made_again()
-> anyhow::Result<()> {
    let postgres = Postgres::start().await?;
    let log = PostgresLog::open(&database(&postgres)?, YEAR).await?;
    let (client, connection) =
        tokio_postgres::connect(&postgres.url(), tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    const DAY: Duration = Duration::from_secs(24 * 60 * 60);
    let yesterday = humantime::format_rfc3339(std::time::SystemTime::now() - DAY).to_string();
    let partition = format!("attempts_{}", yesterday[..10].replace('-', ""));
    let attempts = [
        ("evt_y1", DAY),
        ("evt_y2", DAY),
        ("evt_t1", Duration::ZERO),
        ("evt_t2", Duration::ZERO),
    ]
    .map(|(id, age)| conformance::attempt(id, "sub_limit", 1, pb::Outcome::Delivered, age));
    assert_eq!(log.insert(attempts.to_vec()).await?.len(), 4);
    // The sweep reads the planner's sizes, as autovacuum would keep them.
    client.batch_execute("ANALYZE attempts").await?;

    assert_eq!(log.sweep(YEAR, 1).await?, 2, "yesterday's two attempts go");
    assert_eq!(log.len().await?, 2);
    let made_again = partition_oid(&client, &partition)
        .await?
        .expect("yesterday made again: within retention");
    client.batch_execute("ANALYZE attempts").await?;
    assert_eq!(log.sweep(YEAR, 1).await?, 0, "still over by today alone");
    assert_eq!(
        partition_oid(&client, &partition).await?,
        Some(made_again),
        "the empty day is left alone, not dropped and made again at every sweep"
    );
    Ok(())
}

/// The catalogue's id of the table named `partition`, if there is one: a table dropped and made
/// again has a new one.
async fn partition_oid(
    client: &tokio_postgres::Client,
    partition: &str,
) -> anyhow::Result<Option<i64>> {
    let rows = client
        .query(
            "SELECT oid::bigint FROM pg_class WHERE relname = $1",
            &[&partition],
        )
        .await?;
    Ok(rows.first().map(|row| row.get::<_, i64>(0)))
}
