//! The control plane as systemd runs it: it says when it is ready and when it stops, writes
//! JSON logs when asked, and stops on SIGTERM within its grace period with streams open.

use herald_tests::run_as_service;

#[tokio::test]
async fn the_control_plane_notifies_readiness_and_logs_json_lines() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().display().to_string();
    let run = run_as_service(
        env!("CARGO_BIN_EXE_herald-control-plane").as_ref(),
        &[
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &data,
            "--log-format",
            "json",
        ],
    )
    .await?;
    assert_eq!(run.exit, Some(0), "{}", run.stderr);
    assert_eq!(run.notifications, ["READY=1", "STOPPING=1"]);
    assert!(run.json_log_lines()?.len() >= 2, "{}", run.stderr);
    Ok(())
}

/// Starts the control plane with `flags` (on a free port, in a fresh data directory),
/// expecting it to refuse to start: its exit code and what it wrote to stderr.
async fn refused_start(flags: &[&str]) -> anyhow::Result<(Option<i32>, String)> {
    let dir = tempfile::tempdir()?;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald-control-plane"))
        .args(["--listen", "127.0.0.1:0"])
        .args(flags)
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .await?;
    Ok((
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

#[tokio::test]
async fn a_refused_log_store_is_a_usage_error_that_never_shows_the_password() -> anyhow::Result<()>
{
    for store in [
        "postgres://herald:s3cret-pw@db.internal:5432/herald?sslmode=require",
        "postgres://herald:s3cret-pw@db.internal:5432/",
        "mysql://herald:s3cret-pw@db.internal/herald",
        // The password `s3cret-pw/x@y` typed without its escapes.
        "postgres://herald:s3cret-pw/x@y@db.internal:5432/herald",
    ] {
        let (code, stderr) = refused_start(&["--log-store", store]).await?;
        assert_eq!(code, Some(64), "{store}: {stderr}");
        assert!(stderr.contains("log-store"), "{stderr}");
        assert!(
            !stderr.contains("s3cret-pw"),
            "the password leaked: {stderr}"
        );
    }
    Ok(())
}

/// etcd settings that cannot work stop the start as configuration errors (exit 64, naming the
/// flag), where they used to exit 1 and be restarted again and again by a service manager.
#[tokio::test]
async fn unusable_etcd_settings_stop_the_start_with_exit_code_64() -> anyhow::Result<()> {
    for (flags, says) in [
        (vec!["--etcd", "::bad::"], "--etcd"),
        (
            vec![
                "--etcd",
                "https://127.0.0.1:9",
                "--etcd-ca-file",
                "/nonexistent/ca.pem",
            ],
            "--etcd-ca-file /nonexistent/ca.pem",
        ),
        // A TLS file without etcd would be ignored in silence.
        (vec!["--etcd-ca-file", "/nonexistent/ca.pem"], "--etcd"),
    ] {
        let (code, stderr) = refused_start(&flags).await?;
        assert_eq!(code, Some(64), "{flags:?}: {stderr}");
        assert!(stderr.contains(says), "{flags:?}: {stderr}");
    }
    // `HERALD_ETCD=` (empty) is no etcd, as documented: TLS files then say what is missing.
    let dir = tempfile::tempdir()?;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald-control-plane"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--etcd-ca-file",
            "/nonexistent/ca.pem",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .env("HERALD_ETCD", "")
        .output()
        .await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("no --etcd endpoint"), "{stderr}");
    Ok(())
}

/// An address already taken for the HTTP API, health checks or metrics stops the start as a
/// configuration error, as the gRPC address does.
#[tokio::test]
async fn an_address_in_use_stops_the_start_with_exit_code_64() -> anyhow::Result<()> {
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let taken = taken.local_addr()?.to_string();
    for flag in ["--http-listen", "--health-listen", "--metrics-listen"] {
        let (code, stderr) = refused_start(&[flag, &taken]).await?;
        assert_eq!(code, Some(64), "{flag}: {stderr}");
        assert!(stderr.contains(&flag[2..]), "{flag}: {stderr}");
        // Its log lines, read from a pipe (as by a log file or the journal), are plain text.
        assert!(stderr.contains("INFO"), "{stderr}");
        assert!(
            !stderr.contains('\x1b'),
            "colour codes in a log: {stderr:?}"
        );
    }
    Ok(())
}

/// A database that refuses the login (no such role, no such database) stops the start as a
/// configuration error: a restart would fail the same way, so service managers should not
/// retry it (their units stop restarting on 64).
#[tokio::test]
async fn a_database_that_refuses_the_login_stops_the_start_with_exit_code_64() -> anyhow::Result<()>
{
    let postgres = herald_tests::Postgres::start().await?;
    for store in [
        format!("postgres://nobody@127.0.0.1:{}/herald", postgres.port()),
        format!("postgres://herald@127.0.0.1:{}/nosuchdb", postgres.port()),
    ] {
        let (code, stderr) = refused_start(&["--log-store", &store]).await?;
        assert_eq!(code, Some(64), "{store}: {stderr}");
        assert!(stderr.contains("delivery log refused"), "{stderr}");
    }
    Ok(())
}

/// SIGTERM while an agent holds its config and report streams open and an operator tails the
/// log: every stream's task ends at shutdown, so the replica drains them and exits cleanly
/// well within its grace period (5 s, set by the harness) instead of waiting it out.
#[tokio::test]
async fn sigterm_ends_every_open_stream_and_the_replica_exits_within_its_grace()
-> anyhow::Result<()> {
    use std::time::Duration;

    use tokio::time::Instant;

    use futures_util::StreamExt as _;
    use herald_proto::v1 as pb;
    use herald_proto::v1::deliveries_client::DeliveriesClient;
    use herald_proto::v1::subscriptions_client::SubscriptionsClient;
    use herald_tests::herald::connect;
    use herald_tests::{Agent, AgentOptions, ControlPlaneProcess, Etcd, Receiver, TestCa};

    let etcd = Etcd::start().await?;
    let mut replica = ControlPlaneProcess::start(
        env!("CARGO_BIN_EXE_herald-control-plane").as_ref(),
        &etcd.endpoint(),
        "embedded",
        &[],
    )
    .await?;
    let ca = TestCa::new();
    let receiver = Receiver::start(&ca).await?;
    let agent = Agent::start(
        &replica.url(),
        AgentOptions {
            trusted_ca: Some(ca.ca_pem()),
            ..Default::default()
        },
    )
    .await?;
    SubscriptionsClient::new(connect(&replica.url()).await?)
        .create_subscription(pb::CreateSubscriptionRequest {
            subscription: Some(herald_tests::subscription(
                "shop-1",
                &receiver.url("/orders"),
                &["order.*"],
            )),
            allow_unregistered: false,
            ..Default::default()
        })
        .await?;
    let mut tail = DeliveriesClient::new(connect(&replica.url()).await?)
        .tail_attempts(pb::TailAttemptsRequest { filter: None })
        .await?
        .into_inner();
    // The agent has the subscription (config stream) and reports its attempt (report stream),
    // which the tail shows.
    herald_tests::eventually(Duration::from_secs(20), "a delivery", || async {
        let order = herald_tests::event("shop-1", "order.created", &serde_json::json!({"n": 1}));
        Ok((agent.emit(order).await?.matched == 1).then_some(()))
    })
    .await?;
    receiver
        .wait_for_requests(1, Duration::from_secs(20))
        .await?;
    let seen = tokio::time::timeout(Duration::from_secs(20), tail.next())
        .await?
        .expect("the tail is open")?;
    assert_eq!(seen.tenant, "shop-1");

    let asked = Instant::now();
    assert_eq!(replica.terminate(Duration::from_secs(20)).await?, Some(0));
    let took = asked.elapsed();
    let log = replica.log();
    assert!(
        took < Duration::from_secs(4),
        "the replica took {took:?} to stop, as if a stream outlived the shutdown:\n{log}"
    );
    assert!(!log.contains("grace period over"), "{log}");
    // The tail ended with the replica, and was not cut off mid-message.
    let ended = tokio::time::timeout(Duration::from_secs(5), tail.next()).await?;
    assert!(
        !matches!(ended, Some(Ok(_))),
        "the tail still streams: {ended:?}"
    );
    Ok(())
}
