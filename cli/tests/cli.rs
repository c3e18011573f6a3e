//! The `herald` binary as an operator uses it: create a subscription, emit, read the log, and
//! get clear errors with a non-zero exit code.

use std::process::Output;

use anyhow::Context as _;
use std::time::Duration;

use herald_tests::{World, eventually, signature_verifies};
use serde_json::Value;

/// How long a test waits for something to happen.
const WAIT: Duration = Duration::from_secs(10);

/// Runs `herald` against the world's servers (without blocking them: they share this runtime).
async fn herald(world: &World, args: &[&str]) -> Output {
    herald_command()
        .args([
            "--control-plane",
            world.control_plane.url(),
            "--agent",
            world.agent.url(),
        ])
        .args(args)
        .output()
        .await
        .expect("herald runs")
}

/// The `herald` binary, blind to any config file of the user running the tests.
fn herald_command() -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"));
    let none = std::env::temp_dir().join(format!("herald-tests-no-config-{}", std::process::id()));
    command.env("HERALD_CONFIG", none);
    command
}

fn json(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "herald failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("herald -o json prints JSON")
}

#[tokio::test]
async fn the_tour_works_from_the_command_line() -> anyhow::Result<()> {
    let world = World::start().await?;
    let url = world.receiver.url("/hooks/orders");
    let created = json(
        &herald(
            &world,
            &[
                "subscription",
                "create",
                "--tenant",
                "shop-1",
                "--url",
                &url,
                "--events",
                "order.*,payment.confirmed",
                "--format",
                "json",
                "-o",
                "json",
            ],
        )
        .await,
    );
    let id = created["id"].as_str().expect("id").to_owned();
    let secret = created["secret"].as_str().expect("secret").to_owned();
    assert!(id.starts_with("sub_") && secret.starts_with("whsec_"));
    world
        .control_plane
        .wait_applied(
            created["revision"].as_i64().expect("revision"),
            Duration::from_secs(10),
        )
        .await?;

    let emitted = json(
        &herald(
            &world,
            &[
                "emit",
                "--tenant",
                "shop-1",
                "--type",
                "order.created",
                "--data",
                r#"{"order_id":42}"#,
                "-o",
                "json",
            ],
        )
        .await,
    );
    assert_eq!(emitted["matched"], 1);
    let requests = world
        .receiver
        .wait_for_requests(1, Duration::from_secs(10))
        .await?;
    assert!(signature_verifies(&requests[0], &[&secret]));

    let attempts = eventually(
        Duration::from_secs(10),
        "the attempt in the log",
        || async {
            let list = json(
                &herald(
                    &world,
                    &["deliveries", "list", "--subscription", &id, "-o", "json"],
                )
                .await,
            );
            let attempts = list["attempts"].as_array().cloned().unwrap_or_default();
            Ok((!attempts.is_empty()).then_some(attempts))
        },
    )
    .await?;
    assert_eq!(attempts[0]["outcome"], "delivered");
    assert_eq!(attempts[0]["status_code"], 200);
    assert_eq!(attempts[0]["event_id"], emitted["event_id"]);

    // By event-type pattern, status (a code or a class) and error kind.
    for (filter, found) in [
        (&["--event-type", "order.*", "--status", "2xx"][..], 1),
        (&["--status", "200"], 1),
        (&["--event-type", "product.*"], 0),
        (&["--status", "5xx"], 0),
        (&["--error-kind", "timeout"], 0),
    ] {
        let mut args = vec![
            "deliveries",
            "list",
            "--subscription",
            id.as_str(),
            "-o",
            "json",
        ];
        args.extend_from_slice(filter);
        let list = json(&herald(&world, &args).await);
        assert_eq!(
            list["attempts"].as_array().map(Vec::len),
            Some(found),
            "{filter:?}: {list}"
        );
    }
    for bad in [
        ["--status", "6xx"],
        ["--error-kind", "slow"],
        ["--event-type", "Order"],
    ] {
        let mut args = vec!["deliveries", "list"];
        args.extend_from_slice(&bad);
        let refused = herald(&world, &args).await;
        assert_eq!(refused.status.code(), Some(2), "{bad:?}");
    }

    // The table form names the columns a person reads.
    let table = herald(&world, &["deliveries", "list", "--subscription", &id]).await;
    let text = String::from_utf8(table.stdout)?;
    assert!(
        text.starts_with("STARTED_AT") && text.contains("delivered"),
        "{text}"
    );

    // One event's whole story, and an unknown event is an error.
    let event_id = emitted["event_id"].as_str().expect("event id").to_owned();
    let story = json(&herald(&world, &["deliveries", "get", &event_id, "-o", "json"]).await);
    assert_eq!(story["attempts"][0]["subscription_id"], id.as_str());
    let unknown = herald(&world, &["deliveries", "get", "evt_nothing_here"]).await;
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no attempts"));

    // Following the log: a new attempt shows up as one JSON line.
    let mut tail = herald_command()
        .args(["--control-plane", world.control_plane.url()])
        .args(["deliveries", "tail", "--subscription", &id, "-o", "json"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(
        tail.stdout.take().expect("stdout"),
    ));
    // Emitted until the tail (which connects asynchronously) shows one, for up to 10 s.
    let mut followed = None;
    for _ in 0..20 {
        herald(
            &world,
            &[
                "emit",
                "--tenant",
                "shop-1",
                "--type",
                "order.created",
                "--data",
                "{}",
            ],
        )
        .await;
        if let Ok(line) = tokio::time::timeout(Duration::from_millis(500), lines.next_line()).await
        {
            followed = Some(line);
            break;
        }
    }
    tail.kill().await?;
    let line = followed
        .context("no attempt tailed within 10 s")??
        .context("the tail ended")?;
    let attempt: Value = serde_json::from_str(&line)?;
    assert_eq!(attempt["subscription_id"], id.as_str());
    // A tail ends by itself at --until: at once, and well, when that has passed.
    let past = tokio::time::timeout(
        Duration::from_secs(10),
        herald(
            &world,
            &["deliveries", "tail", "--until", "2026-01-01T01:00:00+01:00"],
        ),
    )
    .await
    .context("a tail until a past moment ends")?;
    assert_eq!(past.status.code(), Some(0), "{past:?}");

    // Errors: the reason on stderr, exit code 1.
    let bad = herald(
        &world,
        &[
            "subscription",
            "create",
            "--tenant",
            "shop-1",
            "--url",
            "ftp://x",
            "--events",
            "order.*",
        ],
    )
    .await;
    assert_eq!(bad.status.code(), Some(1));
    let stderr = String::from_utf8(bad.stderr)?;
    assert!(stderr.contains("invalid argument: url"), "{stderr}");
    let missing = herald(&world, &["subscription", "get", "sub_missing"]).await;
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8(missing.stderr)?.contains("not found"));
    let usage = herald(&world, &["subscription", "frobnicate"]).await;
    assert_eq!(usage.status.code(), Some(2));
    Ok(())
}

#[tokio::test]
async fn delivery_options_are_set_from_the_command_line() -> anyhow::Result<()> {
    let world = World::start().await?;
    let url = world.receiver.url("/hooks/stock");
    let created = json(
        &herald(
            &world,
            &[
                "subscription",
                "create",
                "--tenant",
                "shop-1",
                "--url",
                &url,
                "--events",
                "stock.*",
                "--signature",
                "v1a",
                "--retry-exponential",
                "base=5s,factor=2,cap=1m,attempts=6",
                "--rate-limit",
                "50",
                "--trace-context",
                "on",
                "--header",
                "X-Api-Key=k-1",
                "--header",
                "X-Shop=one",
                "--label",
                "team=stock",
                "--label",
                "erp=sap",
                "-o",
                "json",
            ],
        )
        .await,
    );
    let id = created["id"].as_str().expect("id").to_owned();
    assert_eq!(
        created["labels"],
        serde_json::json!({"erp": "sap", "team": "stock"})
    );
    assert!(
        created["secret"]
            .as_str()
            .expect("secret")
            .starts_with("whsk_")
    );
    assert_eq!(created["signature"], "v1a");
    assert_eq!(created["retry_schedule"], "5s,10s,20s,40s,1m");
    assert_eq!(
        created["retry_exponential"],
        "base=5s,factor=2,cap=1m,attempts=6"
    );
    assert_eq!(created["rate_limit"], 50);
    assert_eq!(created["trace_context"], true);

    // The public key is shown without secrets; the signing key is not.
    let shown = json(&herald(&world, &["subscription", "get", &id, "-o", "json"]).await);
    let public_key = shown["public_keys"][0].as_str().expect("a public key");
    assert!(public_key.starts_with("whpk_"), "{shown}");
    assert!(shown.get("secret").is_none(), "{shown}");

    let updated = json(
        &herald(
            &world,
            &[
                "subscription",
                "update",
                &id,
                "--retry-schedule",
                "1s,2s",
                "--rate-limit",
                "0",
                "--disable-after",
                "5",
                "--disable-min-failing",
                "1h",
                "--trace-context",
                "off",
                "--remove-header",
                "x-api-key",
                "--remove-label",
                "erp",
                "--label",
                "team=inventory",
                "-o",
                "json",
            ],
        )
        .await,
    );
    // Removed and replaced; the other header kept its (hidden) value.
    assert_eq!(updated["labels"], serde_json::json!({"team": "inventory"}));
    let headers = updated["headers"].as_object().expect("headers");
    assert!(
        headers.contains_key("X-Shop") && headers.len() == 1,
        "{updated}"
    );
    let stored = world
        .control_plane
        .subscriptions()
        .await?
        .get_subscription(herald_proto::v1::GetSubscriptionRequest {
            id: id.clone(),
            show_secrets: true,
        })
        .await?
        .into_inner();
    assert_eq!(
        stored.headers.get("X-Shop").map(String::as_str),
        Some("one")
    );
    assert_eq!(updated["disable_after"], 5);
    assert_eq!(updated["trace_context"], false);
    assert_eq!(updated["disable_min_failing"], "1h");
    let health = json(&herald(&world, &["subscription", "health", &id, "-o", "json"]).await);
    assert_eq!(health["consecutive_failures"], 0);
    assert_eq!(health["subscription"], id.as_str());
    assert_eq!(updated["retry_schedule"], "1s,2s");
    assert_eq!(updated["retry_exponential"], Value::Null);
    assert_eq!(updated["rate_limit"], 0);

    // Regions are set, and cleared again for every region.
    let regional = json(
        &herald(
            &world,
            &[
                "subscription",
                "update",
                &id,
                "--regions",
                "eu-1,eu-2",
                "-o",
                "json",
            ],
        )
        .await,
    );
    assert_eq!(regional["regions"], serde_json::json!(["eu-1", "eu-2"]));
    let everywhere = herald(
        &world,
        &["subscription", "update", &id, "--all-regions", "-o", "json"],
    )
    .await;
    let everywhere = json(&everywhere);
    assert!(
        everywhere["regions"]
            .as_array()
            .is_none_or(|regions| regions.is_empty()),
        "{everywhere}"
    );

    // An update that changes nothing (no field, or only what it holds) writes nothing: the
    // revision stays, and the CLI says so.
    for unchanged in [&[][..], &["--all-regions"][..]] {
        let mut args = vec!["subscription", "update", id.as_str()];
        args.extend_from_slice(unchanged);
        let output = herald_command()
            .args(["--control-plane", world.control_plane.url()])
            .args(&args)
            .args(["-o", "json"])
            .output()
            .await?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "{stderr}");
        assert!(stderr.contains("nothing to change"), "{stderr}");
        let same: Value = serde_json::from_slice(&output.stdout)?;
        assert_eq!(same["revision"], everywhere["revision"], "{same}");
    }

    // Both forms at once, a bad backoff, and values the wire would read as "the default"
    // (0 in flight, 0 failures, no delays), are refused before anything is sent.
    for bad in [
        &[
            "--retry-schedule",
            "1s",
            "--retry-exponential",
            "base=1s,factor=2,cap=1m,attempts=3",
        ][..],
        &["--retry-exponential", "base=1s,factor=20,cap=1m,attempts=3"][..],
        &["--max-in-flight", "0"][..],
        &["--disable-after", "0"][..],
        &["--retry-schedule", ""][..],
    ] {
        let mut args = vec!["subscription", "update", &id];
        args.extend_from_slice(bad);
        let output = herald(&world, &args).await;
        assert_eq!(output.status.code(), Some(2), "{bad:?} was accepted");
        assert!(!String::from_utf8_lossy(&output.stderr).is_empty());
    }

    // Egress: its own proxy (the password never printed back), direct, the agent's again.
    let egress = |args: &'static [&'static str]| {
        let id = id.clone();
        let world = &world;
        async move {
            let mut all = vec!["subscription", "update", id.as_str()];
            all.extend_from_slice(args);
            all.extend_from_slice(&["-o", "json"]);
            json(&herald(world, &all).await)["egress"].clone()
        }
    };
    let own = egress(&["--egress-proxy", "http://egress:pa55@127.0.0.9:3128"]).await;
    assert_eq!(own, "http://egress:****@127.0.0.9:3128");
    let shown = json(&herald(&world, &["subscription", "get", &id, "-o", "json"]).await);
    assert_eq!(shown["egress"], "http://egress:****@127.0.0.9:3128");
    assert_eq!(egress(&["--no-egress-proxy"]).await, "direct");
    assert_eq!(egress(&["--egress-proxy", "agent"]).await, "agent");
    let output = herald(
        &world,
        &[
            "subscription",
            "update",
            &id,
            "--egress-proxy",
            "socks5://x:1",
        ],
    )
    .await;
    assert_eq!(
        output.status.code(),
        Some(2),
        "a bad proxy is a usage error"
    );

    // A client certificate for mutual TLS: read from files, the key never printed back.
    let dir = tempfile::tempdir()?;
    let (cert, key) =
        world
            .ca
            .write_pair(dir.path(), "cli-client", herald_tests::tls::CertUse::Client)?;
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let output = herald(
        &world,
        &[
            "subscription",
            "update",
            &id,
            "--client-cert",
            &cert,
            "--client-key",
            &key,
            "-o",
            "json",
        ],
    )
    .await;
    assert!(output.status.success(), "{output:?}");
    assert!(!String::from_utf8_lossy(&output.stdout).contains("PRIVATE KEY"));
    assert!(json(&output)["client_cert_expires_at"].is_string());
    let alone = herald(
        &world,
        &["subscription", "update", &id, "--client-cert", &cert],
    )
    .await;
    assert_eq!(alone.status.code(), Some(2), "a certificate needs its key");
    let removed = json(
        &herald(
            &world,
            &[
                "subscription",
                "update",
                &id,
                "--no-client-cert",
                "-o",
                "json",
            ],
        )
        .await,
    );
    assert_eq!(removed["client_cert_expires_at"], Value::Null);

    // OAuth2 client credentials: the secret is not printed back without --show-secret.
    let with_oauth2 = json(
        &herald(
            &world,
            &[
                "subscription",
                "update",
                &id,
                "--oauth2-token-url",
                "https://93.184.215.14/oauth/token",
                "--oauth2-client-id",
                "herald",
                "--oauth2-client-secret",
                "oauth-s3cret",
                "--oauth2-scope",
                "webhooks",
                "-o",
                "json",
            ],
        )
        .await,
    );
    assert_eq!(with_oauth2["oauth2"]["client_id"], "herald");
    assert_eq!(with_oauth2["oauth2"]["scope"], "webhooks");
    assert!(!with_oauth2.to_string().contains("oauth-s3cret"));
    let secret = json(
        &herald(
            &world,
            &["subscription", "get", &id, "--show-secret", "-o", "json"],
        )
        .await,
    );
    assert_eq!(secret["oauth2"]["client_secret"], "oauth-s3cret");
    let without = json(
        &herald(
            &world,
            &["subscription", "update", &id, "--no-oauth2", "-o", "json"],
        )
        .await,
    );
    assert_eq!(without["oauth2"], Value::Null);

    // A payload filter, inline or from a file, shown as the JSON it is; a bad one is a usage
    // error naming the bad part, before anything is sent.
    let filtered = json(
        &herald(
            &world,
            &[
                "subscription",
                "update",
                &id,
                "--filter",
                r#"{"quantity": {"$lte": 5}}"#,
                "-o",
                "json",
            ],
        )
        .await,
    );
    assert_eq!(
        filtered["filter"],
        serde_json::json!({"quantity": {"$lte": 5}})
    );
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("filter.json");
    std::fs::write(&file, r#"{"$attributes": {"warehouse": "wro-1"}}"#)?;
    let from_file = json(
        &herald(
            &world,
            &[
                "subscription",
                "update",
                &id,
                "--filter",
                &format!("@{}", file.display()),
                "-o",
                "json",
            ],
        )
        .await,
    );
    assert_eq!(
        from_file["filter"],
        serde_json::json!({"$attributes": {"warehouse": "wro-1"}})
    );
    let bad = herald(
        &world,
        &[
            "subscription",
            "update",
            &id,
            "--filter",
            r#"{"qty": {"$lower": 5}}"#,
        ],
    )
    .await;
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("qty.$lower: unknown operator"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let unfiltered = json(
        &herald(
            &world,
            &["subscription", "update", &id, "--no-filter", "-o", "json"],
        )
        .await,
    );
    assert_eq!(unfiltered["filter"], Value::Null);
    Ok(())
}

#[tokio::test]
async fn tokens_are_sent_and_refusals_explain_what_to_do() -> anyhow::Result<()> {
    use herald_tests::{ConfigStore, ControlPlane};
    const ADMIN: &str = "admin-7d2e9c4a1b3f";
    const READER: &str = "reader-1f8a3c6e9d2b";
    let control_plane = ControlPlane::start_with_tokens(
        ConfigStore::Embedded,
        &format!("admin {ADMIN}\nread {READER}\n"),
        ADMIN,
    )
    .await?;
    let run = |args: &[&str], token: Option<&str>| {
        let mut command = herald_command();
        command
            .args(["--control-plane", control_plane.url()])
            .args(args)
            .env_remove("HERALD_TOKEN");
        if let Some(token) = token {
            command.env("HERALD_TOKEN", token);
        }
        command.output()
    };
    let list = ["subscription", "list", "-o", "json"];

    let refused = run(&list, None).await?;
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("unauthenticated") && stderr.contains("HERALD_TOKEN"),
        "{stderr}"
    );

    json(&run(&list, Some(READER)).await?);
    let create = [
        "subscription",
        "create",
        "--tenant",
        "shop-1",
        "--url",
        "https://127.0.0.1:9/hook",
        "--events",
        "order.*",
        "-o",
        "json",
    ];
    let denied = run(&create, Some(READER)).await?;
    assert_eq!(denied.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert!(stderr.contains("permission denied"), "{stderr}");

    // The flag works as well as the environment.
    let mut args = vec!["--token", ADMIN];
    args.extend(create);
    let created = json(&run(&args, None).await?);
    assert!(created["id"].as_str().is_some_and(|id| !id.is_empty()));
    Ok(())
}

#[tokio::test]
async fn output_styles_and_completions() -> anyhow::Result<()> {
    use herald_tests::{ConfigStore, ControlPlane};
    let control_plane = ControlPlane::start(ConfigStore::Embedded).await?;
    let run = |args: &[&str]| {
        herald_command()
            .args(["--control-plane", control_plane.url()])
            .args(args)
            .env_remove("HERALD_OUTPUT")
            .output()
    };
    let created = run(&[
        "subscription",
        "create",
        "--tenant",
        "shop-7",
        "--url",
        "https://127.0.0.1:9/hook",
        "--events",
        "order.*",
        "-o",
        "yaml",
    ])
    .await?;
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let doc: serde_json::Value = serde_yaml_ng::from_slice(&created.stdout)?;
    assert_eq!(doc["tenant"], "shop-7");
    assert!(
        doc["secret"]
            .as_str()
            .is_some_and(|s| s.starts_with("whsec_"))
    );
    let id = doc["id"].as_str().expect("an id").to_owned();

    let listed = run(&["subscription", "list", "-o", "yaml"]).await?;
    let doc: serde_json::Value = serde_yaml_ng::from_slice(&listed.stdout)?;
    assert_eq!(doc["subscriptions"][0]["id"], id.as_str());

    let table = String::from_utf8(run(&["subscription", "list"]).await?.stdout)?;
    assert!(
        table.lines().next().is_some_and(|l| l.starts_with("ID")),
        "{table}"
    );
    let bare = String::from_utf8(run(&["subscription", "list", "--no-headers"]).await?.stdout)?;
    assert_eq!(bare.lines().count(), 1, "{bare}");
    assert!(bare.starts_with(&id), "{bare}");
    // Where more pages follow, the hint goes beside the rows (stderr), never among them.
    let second = run(&[
        "subscription",
        "create",
        "--tenant",
        "shop-7",
        "--url",
        "https://127.0.0.1:9/other",
        "--events",
        "order.*",
    ])
    .await?;
    assert!(second.status.success());
    let paged = run(&["subscription", "list", "--no-headers", "--page-size", "1"]).await?;
    let rows = String::from_utf8(paged.stdout)?;
    assert_eq!(rows.lines().count(), 1, "{rows}");
    assert!(
        String::from_utf8(paged.stderr)?.contains("(more: --page-token "),
        "the next page named"
    );

    for shell in ["bash", "zsh", "fish"] {
        let script = run(&["completion", shell]).await?;
        assert!(script.status.success());
        let text = String::from_utf8(script.stdout)?;
        assert!(
            text.contains("subscription") && text.contains("deliveries"),
            "{shell}"
        );
    }
    let usage = run(&["completion", "tcsh"]).await?;
    assert_eq!(usage.status.code(), Some(2), "bad usage exits 2");
    Ok(())
}

/// An address that is no Herald URL, or an http:// one with TLS settings (which would go
/// unused), is bad usage (exit 2) before anything is called.
#[tokio::test]
async fn an_address_of_another_scheme_or_tls_settings_for_http_are_bad_usage() -> anyhow::Result<()>
{
    let ca_file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    for (args, says) in [
        (
            vec![
                "--control-plane",
                "ftp://127.0.0.1:7700",
                "subscription",
                "list",
            ],
            "use http://host:port",
        ),
        (
            vec![
                "--agent",
                "127.0.0.1:7701",
                "emit",
                "--tenant",
                "t",
                "--type",
                "a.b",
                "--data",
                "{}",
            ],
            "use http://host:port",
        ),
        (
            vec![
                "--control-plane",
                "http://127.0.0.1:7700",
                "--tls-ca-file",
                ca_file.to_str().expect("a UTF-8 path"),
                "subscription",
                "list",
            ],
            "so use https://",
        ),
    ] {
        let output = herald_command()
            .env_remove("HERALD_CONTROL_PLANE")
            .env_remove("HERALD_AGENT")
            .args(&args)
            .output()
            .await?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    Ok(())
}

/// Addresses mixed up (the agent's given for the control plane's, and the other way round):
/// the error says which address each command calls.
#[tokio::test]
async fn a_command_sent_to_the_wrong_server_says_which_address_it_needs() -> anyhow::Result<()> {
    let world = World::start().await?;
    let listed = herald_command()
        .args(["--control-plane", world.agent.url(), "subscription", "list"])
        .output()
        .await?;
    let emitted = herald_command()
        .args(["--agent", world.control_plane.url()])
        .args(["emit", "--tenant", "shop-1", "--type", "order.created"])
        .args(["--data", "{}"])
        .output()
        .await?;
    for output in [listed, emitted] {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("not served at this address"), "{stderr}");
        assert!(
            stderr.contains("--control-plane") && stderr.contains("--agent"),
            "{stderr}"
        );
    }
    Ok(())
}

/// A control plane that accepts connections and never answers (a hung process, a black hole
/// behind a load balancer): the command ends with an error naming it, instead of waiting
/// for good.
#[tokio::test]
async fn a_server_that_never_answers_ends_the_command_with_an_error() -> anyhow::Result<()> {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", silent.local_addr()?);
    let holding = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let ended = tokio::time::timeout(
        Duration::from_secs(60),
        herald_command()
            .args(["--control-plane", &url, "subscription", "list"])
            .output(),
    )
    .await
    .context("the command waited on a silent server for a minute")??;
    holding.abort();
    let stderr = String::from_utf8_lossy(&ended.stderr);
    assert_eq!(ended.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("keep-alive timed out"), "{stderr}");
    Ok(())
}

#[tokio::test]
async fn enabling_without_the_parked_deliveries_says_how_to_send_them_after_all()
-> anyhow::Result<()> {
    let world = World::start().await?;
    let created = subscribe_to_orders(&world, &world.receiver.url("/hooks/orders")).await?;
    let id = created["id"].as_str().expect("id");
    let disabled = herald(&world, &["subscription", "disable", id]).await;
    assert!(disabled.status.success(), "{disabled:?}");
    let enabled = herald(&world, &["subscription", "enable", id]).await;
    assert!(enabled.status.success(), "{enabled:?}");
    let hint = String::from_utf8_lossy(&enabled.stderr);
    assert!(
        hint.contains("are skipped")
            && hint.contains(&format!(
                "herald deliveries replay --subscription {id} --since 20"
            ))
            && hint.contains("--outcome skipped"),
        "{hint}"
    );
    // Enabled already: nothing skipped now, nothing said.
    let again = herald(&world, &["subscription", "enable", id]).await;
    assert!(
        again.status.success() && again.stderr.is_empty(),
        "{again:?}"
    );
    // Sending them: nothing to say either.
    herald(&world, &["subscription", "disable", id]).await;
    let replayed = herald(&world, &["subscription", "enable", id, "--replay-parked"]).await;
    assert!(
        replayed.status.success() && replayed.stderr.is_empty(),
        "{replayed:?}"
    );
    Ok(())
}

#[tokio::test]
async fn replay_needs_a_target_and_reports_what_it_did() -> anyhow::Result<()> {
    use herald_tests::{ConfigStore, ControlPlane};
    let control_plane = ControlPlane::start(ConfigStore::Embedded).await?;
    let run = |args: &[&str]| {
        herald_command()
            .args(["--control-plane", control_plane.url()])
            .args(args)
            .output()
    };
    let aimless = run(&["deliveries", "replay"]).await?;
    assert_eq!(
        aimless.status.code(),
        Some(2),
        "naming nothing is bad usage"
    );
    let stderr = String::from_utf8_lossy(&aimless.stderr);
    assert!(stderr.contains("--event"), "{stderr}");

    let unknown = run(&["deliveries", "replay", "--event", "evt_none"]).await?;
    assert_eq!(
        unknown.status.code(),
        Some(1),
        "an unknown event is an error"
    );
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        stderr.contains("not found: no delivery of event evt_none is logged"),
        "{stderr}"
    );

    let unknown = run(&[
        "deliveries",
        "replay",
        "--subscription",
        "sub_none",
        "--since",
        "1h",
    ])
    .await?;
    assert_eq!(
        unknown.status.code(),
        Some(1),
        "an unknown subscription is an error too"
    );
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        stderr.contains("not found: subscription \"sub_none\" not found"),
        "{stderr}"
    );
    Ok(())
}

#[tokio::test]
async fn a_replay_that_cannot_reach_the_agent_says_so_and_exits_1() -> anyhow::Result<()> {
    let world = World::start().await?;
    subscribe_to_orders(&world, &world.receiver.url("/orders")).await?;
    let emitted = json(&emit_order(&world).await);
    let event = emitted["event_id"]
        .as_str()
        .context("an event id")?
        .to_owned();
    world
        .control_plane
        .wait_logged(
            herald_proto::v1::AttemptFilter {
                event_id: event.clone(),
                ..Default::default()
            },
            WAIT,
        )
        .await?;
    let World {
        agent,
        control_plane,
        receiver: _receiver,
        etcd: _etcd,
        ..
    } = world;
    agent.stop().await?;
    let replay = herald_command()
        .args(["--control-plane", control_plane.url()])
        .args(["deliveries", "replay", "--event", &event, "-o", "json"])
        .output()
        .await?;
    assert_eq!(replay.status.code(), Some(1), "{replay:?}");
    let stderr = String::from_utf8_lossy(&replay.stderr);
    assert!(
        stderr.contains("1 of the deliveries could not be replayed"),
        "{stderr}"
    );
    let answer: Value = serde_json::from_slice(&replay.stdout)?;
    assert_eq!(answer["queued"], 0);
    let reason = answer["not_replayable"][0]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(reason.contains("not connected"), "{answer}");
    Ok(())
}

#[tokio::test]
async fn contexts_remember_a_control_plane_and_its_token() -> anyhow::Result<()> {
    use herald_tests::{ConfigStore, ControlPlane};
    const ADMIN: &str = "admin-3b9e1c7d5a2f";
    let control_plane =
        ControlPlane::start_with_tokens(ConfigStore::Embedded, &format!("admin {ADMIN}\n"), ADMIN)
            .await?;
    let home = tempfile::tempdir()?;
    let config = home.path().join("herald").join("config.toml");
    let run = |args: &[&str]| {
        herald_command()
            .args(args)
            .env("HERALD_CONFIG", &config)
            .env_remove("HERALD_CONTROL_PLANE")
            .env_remove("HERALD_TOKEN")
            .env_remove("HERALD_CONTEXT")
            .output()
    };
    let saved = run(&[
        "context",
        "set",
        "local",
        "--url",
        control_plane.url(),
        "--set-token",
        ADMIN,
    ])
    .await?;
    assert!(
        saved.status.success(),
        "{}",
        String::from_utf8_lossy(&saved.stderr)
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&config)?.permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the file holds tokens");
    }

    // The first context becomes the current one: no flags needed.
    let listed = json(&run(&["subscription", "list", "-o", "json"]).await?);
    assert!(listed["subscriptions"].is_array());

    let contexts = String::from_utf8(run(&["context", "list"]).await?.stdout)?;
    assert!(
        contexts.contains("local") && !contexts.contains(ADMIN),
        "{contexts}"
    );
    let listed = json(&run(&["context", "list", "-o", "json"]).await?);
    assert_eq!(listed["contexts"][0]["name"], "local", "{listed}");
    assert_eq!(listed["contexts"][0]["current"], true, "{listed}");
    assert_eq!(listed["contexts"][0]["has_token"], true, "{listed}");

    // Scripts read what a change did on standard output.
    let saved = json(
        &run(&[
            "context",
            "set",
            "elsewhere",
            "--url",
            "http://127.0.0.1:9",
            "-o",
            "json",
        ])
        .await?,
    );
    assert_eq!(saved["saved"], "elsewhere");
    assert_eq!(saved["current"], false, "local stays the current one");
    let used = json(&run(&["context", "use", "elsewhere", "-o", "json"]).await?);
    assert_eq!(used["current"], "elsewhere");
    let unreachable = run(&["subscription", "list"]).await?;
    assert_eq!(unreachable.status.code(), Some(1));
    // --context picks one for a single command; an unknown one says what to do, as a usage
    // error (exit 2: called wrongly).
    let picked = json(&run(&["--context", "local", "subscription", "list", "-o", "json"]).await?);
    assert!(picked["subscriptions"].is_array());
    let unknown = run(&["--context", "nope", "subscription", "list"]).await?;
    assert_eq!(unknown.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("herald context list"));
    let unknown = run(&["context", "use", "nope"]).await?;
    assert_eq!(unknown.status.code(), Some(2));
    // A file named relative to where `set` ran is kept absolute: the context works anywhere.
    let conf = home.path().join("conf");
    std::fs::create_dir_all(&conf)?;
    std::fs::write(conf.join("ca.pem"), herald_tests::TestCa::new().ca_pem())?;
    let relative = herald_command()
        .args(["context", "set", "tls", "--url", "https://127.0.0.1:9"])
        .args(["--set-tls-ca-file", "conf/ca.pem"])
        .current_dir(home.path())
        .env("HERALD_CONFIG", &config)
        .output()
        .await?;
    assert!(relative.status.success(), "{relative:?}");
    let saved = std::fs::read_to_string(&config)?;
    let expected = home.path().join("conf").join("ca.pem");
    assert!(
        saved.contains(&format!("{:?}", expected.display().to_string())),
        "{saved}"
    );

    // Settings that could not be used are refused when set, and nothing is saved.
    let before = std::fs::read_to_string(&config)?;
    for (args, says) in [
        (vec!["--url", "bogus"], "use http://host:port"),
        (
            vec!["--set-tls-cert-file", "/nonexistent/client.pem"],
            "certificate and its key go together",
        ),
        (
            vec![
                "--url",
                "https://127.0.0.1:9",
                "--set-tls-ca-file",
                "/nonexistent/ca.pem",
            ],
            "/nonexistent/ca.pem",
        ),
    ] {
        let mut set = vec!["context", "set", "bad"];
        set.extend(&args);
        let refused = run(&set).await?;
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(refused.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    assert_eq!(std::fs::read_to_string(&config)?, before);
    let deleted = json(&run(&["context", "delete", "elsewhere", "-o", "json"]).await?);
    assert_eq!(deleted["deleted"], "elsewhere");
    Ok(())
}

/// Plain http:// to a server that speaks TLS: the error says to use https://; https:// to one
/// that does not, or to one whose CA was not given, says what to do.
#[tokio::test]
async fn plain_http_to_a_tls_server_says_to_use_https() -> anyhow::Result<()> {
    use herald_tests::tls::CertUse;
    use herald_tests::{ConfigStore, ControlPlane, TestCa};
    let ca = TestCa::new();
    let dir = tempfile::tempdir()?;
    let (cert, key) = ca.write_pair(dir.path(), "control-plane", CertUse::Server)?;
    let control_plane = ControlPlane::start_configured(ConfigStore::Embedded, |config| {
        config.tls = herald_control_plane::ServerTls {
            tls_cert_file: Some(cert),
            tls_key_file: Some(key),
            tls_client_ca_file: None,
        };
    })
    .await?;
    let list = |url: String| {
        herald_command()
            .args(["--control-plane", &url, "subscription", "list"])
            .env_remove("HERALD_TLS_CA_FILE")
            .output()
    };
    let plain = list(control_plane.url().replacen("https://", "http://", 1)).await?;
    let stderr = String::from_utf8_lossy(&plain.stderr);
    assert_eq!(plain.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("use https://"), "{stderr}");
    // https:// without a CA file trusts the system's CAs, which do not know the test CA.
    let untrusted = list(control_plane.url().to_owned()).await?;
    let stderr = String::from_utf8_lossy(&untrusted.stderr);
    assert_eq!(untrusted.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("certificate")
            && stderr.contains("give that CA's certificate with --tls-ca-file"),
        "{stderr}"
    );
    // https:// to a server that speaks plain HTTP/2 says to use http://.
    let plain_server = ControlPlane::start(ConfigStore::Embedded).await?;
    let tls_to_plain = list(plain_server.url().replacen("http://", "https://", 1)).await?;
    let stderr = String::from_utf8_lossy(&tls_to_plain.stderr);
    assert_eq!(tls_to_plain.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("does not speak TLS at this address: use http://"),
        "{stderr}"
    );
    Ok(())
}

/// A payload that is not JSON is the command line's mistake, said before anything is sent.
#[tokio::test]
async fn emit_refuses_data_that_is_not_json_as_bad_usage() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let binary = dir.path().join("binary.json");
    std::fs::write(&binary, b"{\"a\":\"\xff\"}")?;
    let binary = format!("@{}", binary.display());
    for data in ["not json", binary.as_str()] {
        let output = herald_command()
            // No agent listens there: the refusal comes first.
            .args([
                "--agent",
                "http://127.0.0.1:9",
                "emit",
                "--tenant",
                "shop-1",
            ])
            .args(["--type", "order.created", "--data", data])
            .output()
            .await?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{data}: {stderr}");
        assert!(stderr.contains("--data"), "{data}: {stderr}");
    }
    Ok(())
}

#[tokio::test]
async fn watch_prints_a_list_again_when_it_changes() -> anyhow::Result<()> {
    use herald_tests::{ConfigStore, ControlPlane, subscription};
    use tokio::io::AsyncBufReadExt as _;
    let control_plane = ControlPlane::start(ConfigStore::Embedded).await?;
    let mut watcher = herald_command()
        .args(["--control-plane", control_plane.url()])
        .args(["subscription", "list", "--watch", "-o", "json"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = tokio::io::BufReader::new(watcher.stdout.take().context("stdout")?).lines();
    // Reads one pretty-printed JSON document (it ends with a `}` line).
    async fn document(
        lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    ) -> anyhow::Result<Value> {
        let mut text = String::new();
        let read = async {
            while let Some(line) = lines.next_line().await? {
                let end = line == "}";
                text.push_str(&line);
                text.push('\n');
                if end {
                    return anyhow::Ok(());
                }
            }
            anyhow::bail!("the watch ended")
        };
        tokio::time::timeout(Duration::from_secs(20), read).await??;
        Ok(serde_json::from_str(&text)?)
    }
    let first = document(&mut lines).await?;
    assert_eq!(first["subscriptions"], serde_json::json!([]));
    let created = control_plane
        .create(subscription(
            "shop-1",
            "https://127.0.0.1:9/hook",
            &["order.*"],
        ))
        .await?;
    let second = document(&mut lines).await?;
    assert_eq!(second["subscriptions"][0]["id"], created.id.as_str());
    watcher.kill().await?;
    Ok(())
}

#[tokio::test]
async fn import_creates_many_shows_progress_and_names_the_refused() -> anyhow::Result<()> {
    use herald_tests::{ConfigStore, ControlPlane};
    let control_plane = ControlPlane::start(ConfigStore::Embedded).await?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("subscriptions.yaml");
    std::fs::write(
        &file,
        r#"
- tenant: shop-1
  url: https://127.0.0.1:9/orders
  events: [order.created, order.updated]
  format: xml
  header: { X-Shop: "1" }
  retry-schedule: 5s,1m
- tenant: shop-2
  url: not a url
  events: order.*
- tenant: shop-3
  url: https://127.0.0.1:9/stock
  events: product.stock_changed
  max_in_flight: 4
"#,
    )?;
    let run = |args: &[&str]| {
        herald_command()
            .args(["--control-plane", control_plane.url()])
            .args(args)
            .output()
    };
    let imported = run(&[
        "subscription",
        "import",
        file.to_str().unwrap(),
        "-o",
        "json",
    ])
    .await?;
    assert_eq!(imported.status.code(), Some(1), "one entry was refused");
    let stderr = String::from_utf8_lossy(&imported.stderr);
    assert!(
        stderr.contains("[1/3] created") && stderr.contains("[2/3] refused"),
        "{stderr}"
    );
    assert!(stderr.contains("[3/3] created"), "{stderr}");
    let results: Value = serde_json::from_slice(&imported.stdout)?;
    assert_eq!(results["results"][1]["id"], "");
    assert!(
        results["results"][1]["error"]
            .as_str()
            .is_some_and(|e| e.contains("url"))
    );

    let listed = json(&run(&["subscription", "list", "-o", "json"]).await?);
    let subs = listed["subscriptions"].as_array().expect("a list");
    assert_eq!(subs.len(), 2);
    let orders = subs
        .iter()
        .find(|s| s["tenant"] == "shop-1")
        .expect("shop-1");
    assert_eq!(orders["format"], "xml");
    assert_eq!(
        orders["events"],
        serde_json::json!(["order.created", "order.updated"])
    );
    // Header values are sealed like secrets: a list names them; --show-secret shows them.
    assert_eq!(orders["headers"]["X-Shop"], "(hidden: --show-secret)");
    let id = orders["id"].as_str().expect("an id");
    let shown = json(&run(&["subscription", "get", id, "--show-secret", "-o", "json"]).await?);
    assert_eq!(shown["headers"]["X-Shop"], "1");
    // Each creation is in the audit log (the API is open: the actor is anonymous).
    let audit = json(&run(&["audit", "list", "--tenant", "shop-1", "-o", "json"]).await?);
    let entries = audit["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 1, "{audit}");
    assert_eq!(entries[0]["action"], "subscription.create");
    assert_eq!(entries[0]["actor"], "anonymous");
    assert_eq!(entries[0]["object"], id);
    let table = run(&["audit", "list", "--since", "1h"]).await?;
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.starts_with("AT"), "{table}");
    assert_eq!(
        table.lines().count(),
        3,
        "a header and two creations:\n{table}"
    );
    let stock = subs
        .iter()
        .find(|s| s["tenant"] == "shop-3")
        .expect("shop-3");
    assert_eq!(stock["max_in_flight"], 4);

    // The refused entry fixed and the file imported again: the entries created the first time
    // are not created twice.
    let fixed = std::fs::read_to_string(&file)?.replace("not a url", "https://127.0.0.1:9/all");
    std::fs::write(&file, fixed)?;
    let again = run(&[
        "subscription",
        "import",
        file.to_str().unwrap(),
        "-o",
        "json",
    ])
    .await?;
    assert_eq!(again.status.code(), Some(0), "{again:?}");
    let results: Value = serde_json::from_slice(&again.stdout)?;
    assert_eq!(results["results"][0]["id"], orders["id"]);
    assert_eq!(results["results"][2]["id"], stock["id"]);
    let done: Vec<&str> = (0..3)
        .map(|i| results["results"][i]["done"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        done,
        ["already created", "created", "already created"],
        "{results}"
    );
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains("1 created, 2 already created, 0 refused"),
        "{stderr}"
    );

    let listed = json(&run(&["subscription", "list", "-o", "json"]).await?);
    let tenants: Vec<&str> = listed["subscriptions"]
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|s| s["tenant"].as_str())
        .collect();
    assert_eq!(tenants.len(), 3, "{listed}");
    assert!(tenants.contains(&"shop-2"), "{listed}");

    // An entry created since, changed in another field: refused, saying why, not made twice.
    let changed = std::fs::read_to_string(&file)?.replace("max_in_flight: 4", "max_in_flight: 8");
    std::fs::write(&file, changed)?;
    let refused = run(&["subscription", "import", file.to_str().unwrap()]).await?;
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("[3/3] refused") && stderr.contains("imported within the last 24 hours"),
        "{stderr}"
    );
    let listed = json(&run(&["subscription", "list", "-o", "json"]).await?);
    assert_eq!(listed["subscriptions"].as_array().map(Vec::len), Some(3));

    // A create sent again with its key says that nothing new was made.
    let create = [
        "subscription",
        "create",
        "--tenant",
        "shop-4",
        "--url",
        "https://127.0.0.1:9/shop-4",
        "--events",
        "order.*",
        "--idempotency-key",
        "shop-4-setup",
        "-o",
        "json",
    ];
    let made = run(&create).await?;
    assert_eq!(made.status.code(), Some(0), "{made:?}");
    assert!(
        !String::from_utf8_lossy(&made.stderr).contains("earlier create"),
        "{made:?}"
    );
    let again = run(&create).await?;
    assert_eq!(again.status.code(), Some(0), "{again:?}");
    assert_eq!(json(&again)["id"], json(&made)["id"]);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains("made by an earlier create with this idempotency key"),
        "{stderr}"
    );
    Ok(())
}

#[tokio::test]
async fn the_shipped_catalogue_imports_and_types_are_updated_deprecated_and_deleted()
-> anyhow::Result<()> {
    use herald_tests::{ConfigStore, ControlPlane};
    let control_plane = ControlPlane::start(ConfigStore::Embedded).await?;
    let run = |args: &[&str]| {
        herald_command()
            .args(["--control-plane", control_plane.url()])
            .args(args)
            .output()
    };
    let catalogue = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/catalog/ecommerce.yaml"
    );
    let imported = run(&["event-types", "import", catalogue, "-o", "json"]).await?;
    assert_eq!(
        imported.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&imported.stderr)
    );
    let results = json(&imported);
    let done: Vec<&str> = results["results"]
        .as_array()
        .context("results")?
        .iter()
        .filter_map(|r| r["done"].as_str())
        .collect();
    assert_eq!(done.len(), 18, "{results}");
    assert!(done.iter().all(|d| *d == "created"), "{results}");
    for name in [
        "order.created",
        "order.changed",
        "order.removed",
        "product.created",
        "stock.changed",
        "category.removed",
        "invoice.added",
        "invoice.modified",
        "invoice.deleted",
        "contractor.added",
        "payment.added",
        "payment.confirmed",
        "shipment.delivered",
        "plan.changed",
    ] {
        let got = json(&run(&["event-types", "get", name, "-o", "json"]).await?);
        assert!(
            got["schema"].is_object() && got["example"].is_object(),
            "{name}: {got}"
        );
    }
    // The benchmarks' order satisfies the shipped order.created schema.
    let order = r#"{"order_id":"ord_8812","shop":"shop-1","total":"129.90","currency":"EUR","lines":[{"sku":"TSHIRT-M-BLUE","qty":2,"price":"39.95"},{"sku":"MUG-01","qty":1,"price":"50.00"}]}"#;
    let updated = run(&["event-types", "update", "order.created", "--example", order]).await?;
    assert_eq!(
        updated.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&updated.stderr)
    );
    // An example the schema refuses is refused, naming where.
    let refused = run(&[
        "event-types",
        "update",
        "order.created",
        "--example",
        r#"{"order_id":"o1","total":12.5,"currency":"EUR","lines":[]}"#,
    ])
    .await?;
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("at /total"), "{stderr}");

    // Importing again updates; deprecating and deleting.
    let again = json(&run(&["event-types", "import", catalogue, "-o", "json"]).await?);
    assert!(again["results"][0]["done"] == "updated", "{again}");
    let deprecated = json(&run(&["event-types", "deprecate", "plan.changed", "-o", "json"]).await?);
    assert_eq!(deprecated["deprecated"], true);
    let deleted = run(&["event-types", "delete", "plan.changed"]).await?;
    assert_eq!(deleted.status.code(), Some(0));
    let gone = run(&["event-types", "get", "plan.changed"]).await?;
    assert_eq!(gone.status.code(), Some(1));
    Ok(())
}

#[tokio::test]
async fn event_types_are_registered_listed_and_enforced() -> anyhow::Result<()> {
    use herald_tests::{ConfigStore, ControlPlane};
    let control_plane = ControlPlane::start(ConfigStore::Embedded).await?;
    let dir = tempfile::tempdir()?;
    let example = dir.path().join("order.json");
    std::fs::write(&example, r#"{"order_id": 42, "total": "19.99"}"#)?;
    let run = |args: &[&str]| {
        herald_command()
            .args(["--control-plane", control_plane.url()])
            .args(args)
            .output()
    };
    let at_example = format!("@{}", example.display());
    let created = json(
        &run(&[
            "event-types",
            "create",
            "order.created",
            "--description",
            "A shop got an order",
            "--example",
            &at_example,
            "-o",
            "json",
        ])
        .await?,
    );
    assert_eq!(created["example"]["order_id"], 42);
    let listed = String::from_utf8(run(&["event-types", "list"]).await?.stdout)?;
    assert!(
        listed.contains("order.created") && listed.contains("A shop got an order"),
        "{listed}"
    );
    let got = json(&run(&["event-types", "get", "order.created", "-o", "json"]).await?);
    assert_eq!(got["description"], "A shop got an order");

    let refused = run(&[
        "subscription",
        "create",
        "--tenant",
        "shop-1",
        "--url",
        "https://127.0.0.1:9/x",
        "--events",
        "invoice.created",
    ])
    .await?;
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("event-types"), "{stderr}");
    Ok(())
}

#[tokio::test]
async fn agents_list_shows_the_fleet_with_replica_lag_and_last_nack() -> anyhow::Result<()> {
    let world = World::start().await?;
    let listed = eventually(Duration::from_secs(10), "the agent listed", || async {
        let output = herald(&world, &["agents", "list"]).await;
        let table = String::from_utf8_lossy(&output.stdout).into_owned();
        Ok((output.status.success() && table.lines().count() >= 2).then_some(table))
    })
    .await?;
    let header: Vec<&str> = listed
        .lines()
        .next()
        .expect("a header")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "ID",
            "REGION",
            "NODE",
            "VERSION",
            "CONNECTED",
            "REPLICA",
            "APPLIED_REVISION",
            "LAG",
            "LAST_NACK",
            "LAST_SEEN"
        ]
    );
    let agents = json(&herald(&world, &["agents", "list", "-o", "json"]).await);
    let agent = &agents["agents"][0];
    assert_eq!(agent["connected"], true, "{agents}");
    assert!(
        agent["replica"]
            .as_str()
            .is_some_and(|r| r.ends_with(&format!(
                ":{}",
                world
                    .control_plane
                    .url()
                    .rsplit(':')
                    .next()
                    .unwrap_or_default()
            ))),
        "the replica is named host:port by default: {agents}"
    );
    assert!(agent["lag"].as_i64().is_some(), "{agents}");
    Ok(())
}

/// `herald subscription create` of shop-1's `order.*` events at `url`, as JSON, once the agent
/// has applied it.
#[tokio::test]
async fn a_test_send_prints_the_answer_and_exits_by_it() -> anyhow::Result<()> {
    let world = World::start().await?;
    let sub = subscribe_to_orders(&world, &world.receiver.url("/test")).await?;
    let id = sub["id"].as_str().context("an id")?;
    let sent = herald(
        &world,
        &[
            "subscription",
            "test",
            id,
            "--type",
            "order.created",
            "--data",
            r#"{"order_id": "ord_t"}"#,
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(
        sent.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let answer = json(&sent);
    assert_eq!(
        (&answer["status_code"], &answer["test"]),
        (&Value::from(200), &Value::Bool(true))
    );
    assert_eq!(
        world.receiver.wait_for_requests(1, WAIT).await?[0].path,
        "/test"
    );

    world
        .receiver
        .script([herald_tests::Response::new(500).body("database down")]);
    let failed = herald(
        &world,
        &["subscription", "test", id, "--type", "order.paid"],
    )
    .await;
    assert_eq!(failed.status.code(), Some(1));
    let (stdout, stderr) = (
        String::from_utf8_lossy(&failed.stdout),
        String::from_utf8_lossy(&failed.stderr),
    );
    assert!(
        stdout.contains("database down") && stdout.contains("500"),
        "{stdout}"
    );
    assert!(stderr.contains("the endpoint answered 500"), "{stderr}");

    let bad = herald(&world, &["subscription", "test", id, "--data", "{not json"]).await;
    assert_eq!(bad.status.code(), Some(2), "a usage error");
    Ok(())
}

#[tokio::test]
async fn show_body_prints_the_request_as_the_receiver_got_it_until_expunged() -> anyhow::Result<()>
{
    let world = World::start().await?;
    let sub = subscribe_to_orders(&world, &world.receiver.url("/orders")).await?;
    let id = sub["id"].as_str().context("an id")?;
    let emitted = json(
        &emit_order_of(
            &world,
            r#"{"order_id": "ord_b", "note": "Zoë \u00e9 <b>&"}"#,
        )
        .await,
    );
    let event_id = emitted["event_id"].as_str().context("an event id")?;
    let received = world.receiver.wait_for_requests(1, WAIT).await?[0]
        .body
        .clone();

    let shown = eventually(WAIT, "the request to be logged", || async {
        let out = herald(
            &world,
            &["deliveries", "get", event_id, "--show-body", "-o", "json"],
        )
        .await;
        Ok(out.status.success().then(|| json(&out)))
    })
    .await?;
    let request = &shown["requests"][0];
    assert_eq!(request["subscription_id"].as_str(), Some(id));
    assert_eq!(
        request["body"].as_str().map(str::as_bytes),
        Some(received.as_ref()),
        "byte for byte"
    );
    assert_eq!(request["body_cut"], Value::Bool(false));
    assert_eq!(shown["attempts"][0]["event_id"].as_str(), Some(event_id));

    // The table ends with the body as it was sent, after the request's headers.
    let table = herald(&world, &["deliveries", "get", event_id, "--show-body"]).await;
    assert!(table.status.success());
    let mut tail = received.to_vec();
    tail.push(b'\n');
    assert!(
        table.stdout.ends_with(&tail),
        "{}",
        String::from_utf8_lossy(&table.stdout)
    );
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("webhook-signature: (masked)"), "{text}");
    assert!(text.contains(&format!("webhook-id: {event_id}")), "{text}");

    // Expunged: the attempts stay, the body is gone, and asking for it fails.
    let expunged = json(&herald(&world, &["deliveries", "expunge", event_id, "-o", "json"]).await);
    assert_eq!(expunged["removed"], Value::from(1));
    let listed = herald(&world, &["deliveries", "get", event_id]).await;
    assert!(listed.status.success());
    let gone = herald(&world, &["deliveries", "get", event_id, "--show-body"]).await;
    assert_eq!(gone.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&gone.stderr);
    assert!(
        stderr.contains("not found") && stderr.contains("no request is stored"),
        "{stderr}"
    );
    // The attempts are still shown, above the error.
    let stdout = String::from_utf8_lossy(&gone.stdout);
    assert!(
        stdout.contains("delivered") && !stdout.contains("--- request to"),
        "{stdout}"
    );
    Ok(())
}

async fn subscribe_to_orders(world: &World, url: &str) -> anyhow::Result<Value> {
    let created = json(
        &herald(
            world,
            &[
                "subscription",
                "create",
                "--tenant",
                "shop-1",
                "--url",
                url,
                "--events",
                "order.*",
                "-o",
                "json",
            ],
        )
        .await,
    );
    let revision = created["revision"].as_i64().context("a revision")?;
    world.control_plane.wait_applied(revision, WAIT).await?;
    Ok(created)
}

/// `herald emit` of an `order.created` event of shop-1 with an empty payload.
async fn emit_order(world: &World) -> Output {
    emit_order_of(world, "{}").await
}

/// `herald emit` of an `order.created` event of shop-1 with `data`.
async fn emit_order_of(world: &World, data: &str) -> Output {
    herald(
        world,
        &[
            "emit",
            "--tenant",
            "shop-1",
            "--type",
            "order.created",
            "--data",
            data,
            "-o",
            "json",
        ],
    )
    .await
}

/// Runs `herald` with its standard output a pipe whose reader is already gone, as in
/// `herald … | head -0`.
async fn herald_into_closed_pipe(world: &World, args: &[&str]) -> anyhow::Result<Output> {
    let (reader, writer) = std::io::pipe()?;
    drop(reader);
    let output = herald_command()
        .args([
            "--control-plane",
            world.control_plane.url(),
            "--agent",
            world.agent.url(),
        ])
        .args(args)
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        // Not `output()`, which would capture standard output itself.
        .spawn()?
        .wait_with_output()
        .await?;
    Ok(output)
}

#[tokio::test]
async fn no_command_panics_when_its_reader_goes_away() -> anyhow::Result<()> {
    let world = World::start().await?;
    let url = world.receiver.url("/hooks/pipe");
    let created = subscribe_to_orders(&world, &url).await?;
    let id = created["id"].as_str().expect("id").to_owned();
    let emitted = json(&emit_order(&world).await);
    let event_id = emitted["event_id"].as_str().expect("event id").to_owned();
    world.receiver.wait_for_requests(1, WAIT).await?;
    eventually(WAIT, "the attempt in the log", || async {
        let got = herald(&world, &["deliveries", "get", &event_id]).await;
        Ok(got.status.success().then_some(()))
    })
    .await?;
    let dir = tempfile::tempdir()?;
    let import = dir.path().join("one.yaml");
    std::fs::write(
        &import,
        format!("- tenant: shop-9\n  url: {url}\n  events: order.*\n"),
    )?;
    let import = import.to_str().expect("utf-8 path").to_owned();

    let commands: Vec<Vec<&str>> = vec![
        vec!["--help"],
        vec!["--version"],
        vec!["subscription", "--help"],
        vec!["completion", "bash"],
        vec!["completion", "zsh"],
        vec!["completion", "fish"],
        vec!["subscription", "list"],
        vec!["subscription", "list", "-o", "json"],
        vec!["subscription", "list", "-o", "yaml"],
        vec!["subscription", "list", "--watch"],
        vec!["subscription", "get", &id],
        vec!["subscription", "get", &id, "--show-secret", "--watch"],
        vec!["subscription", "health", &id],
        vec!["subscription", "update", &id, "--description", "piped"],
        vec!["subscription", "disable", &id],
        vec!["subscription", "enable", &id],
        vec!["subscription", "rotate-secret", &id, "--grace", "1h"],
        vec!["subscription", "import", &import],
        vec![
            "subscription",
            "create",
            "--tenant",
            "shop-8",
            "--url",
            &url,
            "--events",
            "order.*",
        ],
        vec!["deliveries", "list"],
        vec!["deliveries", "list", "-o", "json"],
        vec!["deliveries", "get", &event_id],
        vec!["deliveries", "replay", "--event", &event_id],
        vec!["event-types", "list"],
        vec!["event-types", "get", "herald.delivery.exhausted"],
        vec!["agents", "list"],
        vec!["agents", "list", "--watch"],
        vec![
            "emit",
            "--tenant",
            "shop-2",
            "--type",
            "order.created",
            "--data",
            "{}",
        ],
        vec!["context", "list"],
    ];
    for args in &commands {
        let output = tokio::time::timeout(WAIT, herald_into_closed_pipe(&world, args))
            .await
            .with_context(|| format!("herald {args:?} went on with nobody reading"))??;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !stderr.contains("panicked"),
            "herald {args:?} panicked: {stderr}"
        );
        assert_eq!(
            output.status.code(),
            Some(0),
            "herald {args:?} ends quietly: {stderr}"
        );
    }

    // A follower ends once there is something to write and nobody to read it.
    let tail = herald_command()
        .args(["--control-plane", world.control_plane.url()])
        .args(["deliveries", "tail", "--subscription", &id])
        .stdout({
            let (reader, writer) = std::io::pipe()?;
            drop(reader);
            writer
        })
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut ended = None;
    let mut tail = Some(tail);
    for _ in 0..20 {
        emit_order(&world).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Some(status) = tail.as_mut().expect("running").try_wait()? {
            ended = Some(status);
            break;
        }
    }
    let status = ended.context("the tail went on writing into a closed pipe")?;
    let stderr = tail.expect("the tail").wait_with_output().await?.stderr;
    assert!(
        status.success() && !String::from_utf8_lossy(&stderr).contains("panicked"),
        "{status:?}: {}",
        String::from_utf8_lossy(&stderr)
    );
    Ok(())
}

#[tokio::test]
async fn usage_errors_exit_2_wherever_they_are_found() -> anyhow::Result<()> {
    use herald_tests::{ConfigStore, ControlPlane};
    let control_plane = ControlPlane::start(ConfigStore::Embedded).await?;
    let dir = tempfile::tempdir()?;
    let run = |args: &[&str]| {
        herald_command()
            .env("HERALD_CONFIG", dir.path().join("config.toml"))
            .args(["--control-plane", control_plane.url()])
            .args(args)
            .output()
    };
    let create = [
        "subscription",
        "create",
        "--tenant",
        "t",
        "--url",
        "https://x.example/h",
    ];
    let with = |extra: &[&'static str]| -> Vec<&str> {
        create
            .iter()
            .copied()
            .chain(extra.iter().copied())
            .collect()
    };
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["subscription", "frobnicate"], "unrecognized"),
        (vec!["deliveries", "list", "--outcome", "bogus"], "bogus"),
        (
            vec!["deliveries", "list", "--since", "yesterday"],
            "yesterday",
        ),
        (vec!["deliveries", "tail", "--until", "soon"], "soon"),
        (
            vec!["deliveries", "list", "--since", "0001-01-01T00:00:00Z"],
            "outside 1970-01-01",
        ),
        (
            vec!["audit", "list", "--since", "1969-12-31T23:59:59Z"],
            "outside 1970-01-01",
        ),
        (vec!["deliveries", "replay"], "--event"),
        (with(&[]), "--events is required"),
        (with(&["--events", "order.*", "--format", "yaml"]), "yaml"),
        (
            with(&["--events", "order.*", "--remove-header", "X-A"]),
            "--remove-header changes an existing subscription",
        ),
        (
            with(&["--events", "order.*", "--no-oauth2"]),
            "subscription update",
        ),
        (with(&["--events", "order.*", "--envelope", "bare"]), "bare"),
        (
            with(&["--events", "order.*", "--header", "X-Key"]),
            "NAME=VALUE",
        ),
        (
            with(&["--events", "order.*", "--retry-schedule", "soon"]),
            "soon",
        ),
        (
            with(&["--events", "order.*", "--retry-exponential", "base=1s"]),
            "retry",
        ),
        (
            vec!["subscription", "update", "sub_x", "--format", "csv"],
            "csv",
        ),
        (
            vec!["context", "set", "no such name!", "--url", "http://x"],
            "context name",
        ),
        (vec!["completion", "tcsh"], "tcsh"),
    ];
    for (args, says) in &cases {
        let output = run(args).await?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "herald {args:?}: {stderr}");
        assert!(
            stderr.contains(says),
            "herald {args:?} names {says:?}: {stderr}"
        );
    }
    // A refusal by the server is a failed operation, not bad usage.
    let refused = run(&[
        "subscription",
        "create",
        "--tenant",
        "t",
        "--url",
        "ftp://x",
        "--events",
        "order.*",
    ])
    .await?;
    assert_eq!(refused.status.code(), Some(1));
    Ok(())
}

#[tokio::test]
async fn the_tours_files_ship_and_work() -> anyhow::Result<()> {
    use herald_tests::{ConfigStore, ControlPlane};
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let control_plane = ControlPlane::start_configured(ConfigStore::Embedded, |config| {
        config.allow_http = true;
        config.allow_targets = herald_tests::herald::loopback();
    })
    .await?;
    // The tour imports the shop catalogue first: the subscriptions file's types are in it.
    let catalogue = herald_command()
        .args(["--control-plane", control_plane.url()])
        .args(["event-types", "import"])
        .arg(examples.join("catalog/ecommerce.yaml"))
        .output()
        .await?;
    assert!(catalogue.status.success(), "{catalogue:?}");
    let subscriptions = examples.join("subscriptions.yaml");
    let imported = herald_command()
        .args(["--control-plane", control_plane.url()])
        .args(["subscription", "import"])
        .arg(&subscriptions)
        .args(["-o", "json"])
        .output()
        .await?;
    let results = json(&imported);
    let created = results["results"].as_array().expect("results");
    assert_eq!(created.len(), 3);
    assert!(created.iter().all(|r| r["error"] == ""), "{results}");
    let listed = json(
        &herald_command()
            .args(["--control-plane", control_plane.url()])
            .args(["subscription", "list", "-o", "json"])
            .output()
            .await?,
    );
    let envelopes: Vec<(&str, &str)> = listed["subscriptions"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|s| {
            (
                s["envelope"].as_str().unwrap_or_default(),
                s["format"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert!(envelopes.contains(&("raw", "json")), "{envelopes:?}");
    assert!(envelopes.contains(&("standard", "xml")), "{envelopes:?}");

    // The tour's event file is one JSON payload an agent takes, before the shop catalogue is
    // imported and after (it satisfies the catalogue's schema of `order.created`).
    let world = World::start().await?;
    let order = format!("@{}", examples.join("order.json").display());
    let emit_args = [
        "emit",
        "--tenant",
        "shop-1",
        "--type",
        "order.created",
        "--data",
        &order,
        "-o",
        "json",
    ];
    let emit_order = || herald(&world, &emit_args);
    let emitted = json(&emit_order().await);
    assert!(
        emitted["event_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("evt_"))
    );
    let catalogue = examples.join("catalog/ecommerce.yaml");
    let imported = herald(
        &world,
        &["event-types", "import", &catalogue.display().to_string()],
    )
    .await;
    assert!(imported.status.success(), "{imported:?}");
    // Once the agent checks the catalogue's schemas (a payload without `lines` is refused),
    // the tour's file still goes through.
    eventually(WAIT, "the catalogue's schemas at the agent", || async {
        let probe = herald(
            &world,
            &[
                "emit",
                "--tenant",
                "shop-1",
                "--type",
                "order.created",
                "--data",
                r#"{"order_id": "ord_1", "total": "1.00", "currency": "EUR"}"#,
            ],
        )
        .await;
        Ok((!probe.status.success()).then_some(()))
    })
    .await?;
    let emitted = emit_order().await;
    assert!(
        emitted.status.success(),
        "{}",
        String::from_utf8_lossy(&emitted.stderr)
    );
    Ok(())
}

#[tokio::test]
async fn subscriptions_and_health_show_what_is_in_force() -> anyhow::Result<()> {
    let world = World::start().await?;
    let created = subscribe_to_orders(&world, &world.receiver.url("/hooks/health")).await?;
    let id = created["id"].as_str().expect("id").to_owned();
    assert_eq!(
        created["timeout"], "15s",
        "the default timeout, not nothing"
    );
    assert_eq!(created["envelope"], "standard");
    assert_eq!(created["max_in_flight"], 16);
    assert_eq!(created["disable_after"], 10);
    emit_order(&world).await;
    world.receiver.wait_for_requests(1, WAIT).await?;
    let health = eventually(WAIT, "the delivery in the health view", || async {
        let health = json(&herald(&world, &["subscription", "health", &id, "-o", "json"]).await);
        Ok((health["recent_attempts"] == 1).then_some(health))
    })
    .await?;
    assert!(
        health["last_success_at"].is_string(),
        "a delivery just succeeded: {health}"
    );
    assert_eq!(health["consecutive_failures"], 0);

    // Secrets read as a list, one a line, in the table.
    herald(&world, &["subscription", "rotate-secret", &id]).await;
    let table = herald(&world, &["subscription", "get", &id, "--show-secret"]).await;
    let text = String::from_utf8(table.stdout)?;
    let secret_lines: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("secrets "))
        .take(2)
        .collect();
    assert_eq!(secret_lines.len(), 2, "{text}");
    assert!(
        secret_lines[0].contains("secret: whsec_") && secret_lines[1].contains("expires_at: 20"),
        "{text}"
    );
    assert!(!text.contains('{'), "no raw JSON in a table: {text}");
    Ok(())
}

/// Runs `herald dev` with standard output `stdout`: subscribes its receiver, emits until a
/// delivery is in the log, then presses Ctrl-C; what it printed and how it ended.
async fn dev_session(stdout: std::process::Stdio) -> anyhow::Result<Output> {
    let dir = tempfile::tempdir()?;
    let (ports, dev) = start_dev(dir.path(), stdout)?;
    let [control_plane, agent, receiver, http] = ports.each_ref().map(|p| p.addr().to_string());
    let run = |args: &[&str]| {
        herald_command()
            .args(["--control-plane", &format!("http://{control_plane}")])
            .args(["--agent", &format!("http://{agent}")])
            .args(args)
            .output()
    };
    let created = eventually(WAIT, "herald dev answering", || async {
        let out = run(&[
            "subscription",
            "create",
            "--tenant",
            "shop-1",
            "--url",
            &format!("http://{receiver}/hooks/orders"),
            "--events",
            "order.*",
            "-o",
            "json",
        ])
        .await?;
        Ok(out.status.success().then(|| json(&out)))
    })
    .await?;
    let id = created["id"].as_str().expect("id").to_owned();
    eventually(
        WAIT,
        "the agent delivering to the new subscription",
        || async {
            let out = run(&[
                "emit",
                "--tenant",
                "shop-1",
                "--type",
                "order.created",
                "--data",
                "{}",
                "-o",
                "json",
            ])
            .await?;
            // Until the agent has its first config, Emit answers UNAVAILABLE: try again.
            Ok((out.status.success() && json(&out)["matched"] == 1).then_some(()))
        },
    )
    .await?;
    eventually(WAIT, "the delivery in the log", || async {
        let out = run(&["deliveries", "list", "--subscription", &id, "-o", "json"]).await?;
        let attempts = json(&out)["attempts"].clone();
        Ok(attempts
            .as_array()
            .is_some_and(|a| a.iter().any(|a| a["outcome"] == "delivered"))
            .then_some(()))
    })
    .await?;

    // The HTTP API lists the subscription too (HTTP/1.1 by hand: a plain client).
    let listed = {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut stream = tokio::net::TcpStream::connect(&http).await?;
        stream
            .write_all(
                b"GET /api/v1/subscriptions HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            )
            .await?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await?;
        answer
    };
    assert!(
        listed.starts_with("HTTP/1.1 200") && listed.contains(&id),
        "{listed}"
    );

    // A portal link opens shop-1's webhook pages, its endpoint listed.
    let out = run(&["portal", "link", "--tenant", "shop-1", "--ttl", "10m"]).await?;
    let link = String::from_utf8(out.stdout)?.trim().to_owned();
    let path = link
        .strip_prefix(&format!("http://{http}"))
        .filter(|path| path.starts_with("/portal/"))
        .with_context(|| format!("a portal link: {link}"))?
        .to_owned();
    let page = |path: String| {
        let http = http.clone();
        async move {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            let mut stream = tokio::net::TcpStream::connect(&http).await?;
            let request =
                format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
            stream.write_all(request.as_bytes()).await?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await?;
            anyhow::Ok(answer)
        }
    };
    let portal = page(path.clone()).await?;
    assert!(
        portal.starts_with("HTTP/1.1 200") && portal.contains("/hooks/orders"),
        "{portal}"
    );
    // Expiring shop-1's links ends that one; a link made afterwards opens.
    let out = run(&["portal", "expire-links", "--tenant", "shop-1"]).await?;
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("shop-1's portal links made until"),
        "{out:?}"
    );
    let ended = page(path).await?;
    assert!(
        ended.starts_with("HTTP/1.1 403")
            && ended.contains("withdrawn")
            && !ended.contains("/hooks/orders"),
        "{ended}"
    );
    let out = run(&["portal", "link", "--tenant", "shop-1", "--ttl", "10m"]).await?;
    let link = String::from_utf8(out.stdout)?.trim().to_owned();
    let path = link
        .strip_prefix(&format!("http://{http}"))
        .with_context(|| format!("a portal link: {link}"))?
        .to_owned();
    let portal = page(path).await?;
    assert!(portal.starts_with("HTTP/1.1 200"), "{portal}");
    let out = run(&["portal", "link", "--tenant", "shop-1", "--ttl", "30days"]).await?;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ttl"));

    // A client in the middle of a request to the receiver (its body never finished) does
    // not hold Herald past the grace period.
    let held = {
        use tokio::io::AsyncWriteExt as _;
        let mut stream = tokio::net::TcpStream::connect(&receiver).await?;
        stream
            .write_all(b"POST /hooks/orders HTTP/1.1\r\nHost: dev\r\nContent-Length: 100\r\n\r\n{")
            .await?;
        stream
    };

    let pid = dev.id().context("dev is running")?.to_string();
    let interrupted = tokio::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .await?;
    assert!(interrupted.success());
    let stopped = tokio::time::timeout(Duration::from_secs(20), dev.wait_with_output())
        .await
        .context("herald dev did not stop within 20 s of Ctrl-C")??;
    drop(held);
    Ok(stopped)
}

/// `herald dev` on free ports (control plane, agent, receiver, HTTP API) keeping its state in
/// `dir`; the ports and the running process.
fn start_dev(
    dir: &std::path::Path,
    stdout: std::process::Stdio,
) -> anyhow::Result<([herald_tests::HeldPort; 4], tokio::process::Child)> {
    use herald_tests::HeldPort;
    let ports = [
        HeldPort::new()?,
        HeldPort::new()?,
        HeldPort::new()?,
        HeldPort::new()?,
    ];
    let [control_plane, agent, receiver, http] = ports.each_ref().map(|p| p.addr().to_string());
    let dev = herald_command()
        .args(["dev", "--control-plane-listen", &control_plane])
        .args(["--agent-listen", &agent, "--receiver-listen", &receiver])
        .args(["--http-listen", &http])
        .env("HERALD_DEV_DATA_DIR", dir)
        .stdout(stdout)
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    Ok((ports, dev))
}

#[tokio::test]
async fn a_second_dev_on_the_same_state_stops_at_once_and_says_why() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (ports, _first) = start_dev(dir.path(), std::process::Stdio::null())?;
    let control_plane = format!("http://{}", ports[0].addr());
    eventually(WAIT, "the first herald dev answering", || async {
        let out = herald_command()
            .args(["--control-plane", &control_plane, "subscription", "list"])
            .output()
            .await?;
        Ok(out.status.success().then_some(()))
    })
    .await?;

    let (_, second) = start_dev(dir.path(), std::process::Stdio::null())?;
    let ended = tokio::time::timeout(Duration::from_secs(20), second.wait_with_output())
        .await
        .context("a second herald dev on the same state kept running")??;
    let stderr = String::from_utf8_lossy(&ended.stderr);
    assert_eq!(ended.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is open in another process"), "{stderr}");
    Ok(())
}

#[tokio::test]
async fn dev_stops_on_ctrl_c_with_every_report_delivered() -> anyhow::Result<()> {
    let stopped = dev_session(std::process::Stdio::piped()).await?;
    let stdout = String::from_utf8_lossy(&stopped.stdout);
    let stderr = String::from_utf8_lossy(&stopped.stderr);
    assert!(stopped.status.success(), "{stderr}");
    assert!(
        stdout.contains("webhook received") && stdout.contains("webhook-event-type: order.created"),
        "{stdout}"
    );
    // On ports other than the defaults, the commands it suggests are pointed at it.
    assert!(
        stdout.contains("export HERALD_CONTROL_PLANE=http://127.0.0.1:")
            && stdout.contains(" HERALD_AGENT=http://127.0.0.1:"),
        "{stdout}"
    );
    for sign in [
        "report stream lost",
        "left in the outbox",
        "panicked",
        "ERROR",
    ] {
        assert!(
            !stderr.contains(sign),
            "a clean stop leaves nothing behind ({sign}): {stderr}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn dev_keeps_serving_when_nobody_reads_its_output() -> anyhow::Result<()> {
    let (reader, writer) = std::io::pipe()?;
    drop(reader);
    let stopped = dev_session(writer.into()).await?;
    let stderr = String::from_utf8_lossy(&stopped.stderr);
    assert!(stopped.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    Ok(())
}

/// The README's deployment commands: the second `sh` block of its "Deployment" section.
fn readme_deployment_block() -> anyhow::Result<String> {
    let readme = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"),
    )?;
    let section = readme
        .split("\n## Deployment\n")
        .nth(1)
        .context("the README has a Deployment section")?;
    let section = section.split("\n## ").next().unwrap_or(section);
    section
        .split("```sh\n")
        .skip(1)
        .filter_map(|block| block.split("\n```").next())
        .find(|block| block.contains("herald-control-plane"))
        .map(str::to_owned)
        .context("the Deployment section has a block that starts the control plane")
}

#[tokio::test]
async fn the_readmes_deployment_commands_connect_as_written() -> anyhow::Result<()> {
    let block = readme_deployment_block()?;
    let etcd = herald_tests::Etcd::start().await?;
    let port = herald_tests::HeldPort::new()?;
    let dir = tempfile::tempdir()?;
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_herald"))
        .parent()
        .context("the binaries' directory")?;
    for daemon in ["herald-control-plane", "herald-agent"] {
        anyhow::ensure!(
            bin.join(daemon).exists(),
            "{daemon} is not built beside herald: build the workspace (cargo build --bins)"
        );
    }
    let output = dir.path().join("output.txt");
    let mut shell = tokio::process::Command::new("bash")
        // The CLI in the block reads no config file of the user running the tests.
        .env("HERALD_CONFIG", dir.path().join("no-config.toml"))
        .args(["-euo", "pipefail", "-c", &block])
        .env("ETCD", etcd.endpoint())
        .env("CONF", dir.path().join("conf"))
        .env("DATA", dir.path().join("data"))
        .env("RUN", dir.path().join("run"))
        .env("BIN", bin)
        .env("LISTEN", port.addr().to_string())
        // The certificate the block makes names CP_HOST, which the URL must use.
        .env("CP_HOST", "localhost")
        .env("CP", format!("https://localhost:{}", port.addr().port()))
        .stdout(std::fs::File::create(&output)?)
        .stderr(std::fs::File::create(dir.path().join("stderr.txt"))?)
        // Its own process group: the daemons it starts in the background are stopped with it.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()?;
    let group = shell.id().context("the shell runs")?.to_string();
    let status = tokio::time::timeout(Duration::from_secs(60), shell.wait()).await;
    // SIGTERM to the whole group (`--` so the negative id is not read as an option).
    let stop = tokio::process::Command::new("kill")
        .args(["-s", "TERM", "--", &format!("-{group}")])
        .status()
        .await;
    let status = status.context("the README's commands did not finish within 60 s")??;
    let printed = std::fs::read_to_string(&output)?;
    let stderr = std::fs::read_to_string(dir.path().join("stderr.txt"))?;
    assert!(status.success(), "{status}: {printed}\n{stderr}");
    let agents: Vec<&str> = printed.lines().collect();
    assert!(
        agents.first().is_some_and(|l| l.starts_with("ID"))
            && agents.get(1).is_some_and(|l| l.contains(" true ")),
        "the agent is listed as connected:\n{printed}\n{stderr}"
    );
    assert!(stop?.success(), "the daemons got SIGTERM");
    // They drain and exit; a group that outlives the grace period is killed and reported.
    let gone = eventually(
        Duration::from_secs(40),
        "the daemons to stop on SIGTERM",
        || async {
            let alive = tokio::process::Command::new("kill")
                .args(["-s", "0", "--", &format!("-{group}")])
                .stderr(std::process::Stdio::null())
                .status()
                .await?;
            Ok((!alive.success()).then_some(()))
        },
    )
    .await;
    if gone.is_err() {
        let _ = tokio::process::Command::new("kill")
            .args(["-s", "KILL", "--", &format!("-{group}")])
            .status()
            .await;
    }
    gone?;
    Ok(())
}
