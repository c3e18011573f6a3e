//! The control plane as systemd runs it: it says when it is ready and when it stops, and
//! writes JSON logs when asked.

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

#[tokio::test]
async fn a_refused_log_store_is_a_usage_error_that_never_shows_the_password() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    for store in [
        "postgres://herald:s3cret-pw@db.internal:5432/herald?sslmode=require",
        "postgres://herald:s3cret-pw@db.internal:5432/",
        "mysql://herald:s3cret-pw@db.internal/herald",
    ] {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald-control-plane"))
            .args(["--listen", "127.0.0.1:0", "--log-store", store])
            .arg("--data-dir")
            .arg(dir.path())
            .output()
            .await?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{store}: {stderr}");
        assert!(stderr.contains("log-store"), "{stderr}");
        assert!(
            !stderr.contains("s3cret-pw"),
            "the password leaked: {stderr}"
        );
    }
    Ok(())
}
