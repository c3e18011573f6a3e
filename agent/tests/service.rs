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
    assert!(stderr.contains("--emit-token is required"), "{stderr}");
    Ok(())
}
