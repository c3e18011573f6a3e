//! The agent as systemd runs it: it says when it is ready and when it stops, and writes JSON
//! logs when asked.

use herald_tests::run_as_service;

#[tokio::test]
async fn the_agent_notifies_readiness_and_logs_json_lines() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().display().to_string();
    // No control plane is running: the agent is ready to take events all the same.
    let run = run_as_service(
        env!("CARGO_BIN_EXE_herald-agent").as_ref(),
        &[
            "--control-plane",
            "http://127.0.0.1:9",
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
    assert!(!run.json_log_lines()?.is_empty(), "{}", run.stderr);
    Ok(())
}

#[tokio::test]
async fn listening_beyond_loopback_needs_the_flag_and_a_token() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().display().to_string();
    let agent = |extra: &[&str]| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald-agent"));
        command
            .args(["--listen", "0.0.0.0:0", "--data-dir", &data])
            .args(extra)
            .env_remove("HERALD_ALLOW_REMOTE_EMIT")
            .env_remove("HERALD_EMIT_TOKEN");
        command.output()
    };
    let refused = agent(&[]).await?;
    assert_eq!(refused.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("--allow-remote-emit"), "{stderr}");
    let refused = agent(&["--allow-remote-emit"]).await?;
    assert_eq!(refused.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("--emit-token or --emit-tokens is required"),
        "{stderr}"
    );
    // A tokens file that does not read as one stops the start too, naming the line.
    let tokens = dir.path().join("emit-tokens");
    std::fs::write(&tokens, "# apps\nshop-a-token-0123456789 tenant=shop-a\n")?;
    let tokens = tokens.display().to_string();
    let refused = agent(&["--allow-remote-emit", "--emit-tokens", &tokens]).await?;
    assert_eq!(refused.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("line 2") && stderr.contains("tenant="),
        "{stderr}"
    );
    Ok(())
}

#[tokio::test]
async fn settings_that_cannot_be_used_stop_the_start_with_exit_code_64() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data").display().to_string();
    let not_pem = dir.path().join("hostname");
    std::fs::write(&not_pem, "not a certificate\n")?;
    let not_pem = not_pem.display().to_string();
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let taken = taken.local_addr()?.to_string();
    let long_id = "x".repeat(129);
    // A queue file the agent can never open, whatever the disk does: a directory in its place.
    let blocked = dir.path().join("blocked");
    std::fs::create_dir_all(blocked.join("queue.redb"))?;
    let blocked = blocked.display().to_string();
    let cases: [(&[&str], &str); 10] = [
        (&["--id", &long_id], "agent_id"),
        (&["--region", "bad region!"], "region"),
        (&["--ca-file", "/nonexistent/ca.pem"], "ca file"),
        (
            &[
                "--control-plane",
                "https://127.0.0.1:9",
                "--control-plane-ca-file",
                &not_pem,
            ],
            "holds no PEM certificate",
        ),
        (
            &[
                "--control-plane",
                "http://127.0.0.1:9",
                "--control-plane-ca-file",
                &not_pem,
            ],
            "plain http",
        ),
        (&["--metrics-listen", &taken], "metrics-listen"),
        (&["--data-dir", "/proc/herald", "--id", "agt_1"], "data dir"),
        (&["--data-dir", &not_pem], "hostname: not a directory"),
        (&["--data-dir", &blocked], "queue.redb: Is a directory"),
        // No control plane holds a token this short: said at start, not as refusals forever.
        (
            &["--control-plane-token", "short"],
            "--control-plane-token: a token must be",
        ),
    ];
    for (flags, said) in cases {
        let refused = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald-agent"))
            .args(["--listen", "127.0.0.1:0"])
            .args(flags)
            // Where a case names none, a usable one.
            .env("HERALD_DATA_DIR", &data)
            .env_remove("HERALD_AGENT_ID")
            .output()
            .await?;
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(refused.status.code(), Some(64), "{flags:?}: {stderr}");
        assert!(stderr.contains(said), "{flags:?}: {stderr}");
    }
    Ok(())
}
