//! The CLI's output formats are an interface scripts depend on: these snapshots pin the table,
//! JSON and YAML forms of a subscription, a subscription list and the delivery log. Ids and
//! times are replaced by placeholders. After a deliberate change, rewrite the files with
//! `HERALD_UPDATE_SNAPSHOTS=1 cargo test -p herald-cli --test snapshots` and review the diff.

use std::path::PathBuf;
use std::time::Duration;

use herald_tests::{World, eventually};

/// Runs `herald` against `world` (blind to any config file of the user).
async fn herald(world: &World, args: &[&str]) -> anyhow::Result<String> {
    let none =
        std::env::temp_dir().join(format!("herald-snapshots-no-config-{}", std::process::id()));
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .env("HERALD_CONFIG", none)
        .args([
            "--control-plane",
            world.control_plane.url(),
            "--agent",
            world.agent.url(),
        ])
        .args(args)
        .output()
        .await?;
    anyhow::ensure!(
        output.status.success(),
        "herald {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

/// Replaces what differs between runs with placeholders; tables also lose their alignment
/// (columns are as wide as their widest cell, which the placeholders change).
fn normalize(text: &str, world: &World, table: bool) -> String {
    let patterns = [
        (r"sub_[0-9A-Z]{26}", "sub_<id>"),
        (r"evt_[0-9A-Z]{26}", "evt_<id>"),
        (r"agt_[0-9A-Z]{26}", "agt_<id>"),
        (r"whsec_[A-Za-z0-9+/=]+", "whsec_<secret>"),
        (r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", "<time>"),
        (r#""duration_ms": \d+"#, r#""duration_ms": <ms>"#),
        (r"duration_ms: \d+", "duration_ms: <ms>"),
        (r#""revision": \d+"#, r#""revision": <rev>"#),
        (r"revision: \d+", "revision: <rev>"),
    ];
    let mut text = text.replace(&world.receiver.url(""), "https://<receiver>");
    for (pattern, placeholder) in patterns {
        text = regex::Regex::new(pattern)
            .expect("a valid pattern")
            .replace_all(&text, placeholder)
            .into_owned();
    }
    if !table {
        return text;
    }
    let squeeze = |line: &str| {
        line.split("  ")
            .filter(|c| !c.is_empty())
            .map(str::trim)
            .collect::<Vec<_>>()
            .join("  ")
    };
    let table_patterns = [
        // `revision  N` in an object table; the last column of a subscription row.
        (r"^revision  \d+$", "revision  <rev>"),
        (r"^(sub_<id>  .*)  \d+$", "$1  <rev>"),
        // The duration column before the outcome.
        (r"  \d+  (delivered|retrying|failed|skipped)", "  <ms>  $1"),
    ];
    text.lines()
        .map(|line| {
            table_patterns
                .iter()
                .fold(squeeze(line), |line, (pattern, to)| {
                    regex::Regex::new(pattern)
                        .expect("a valid pattern")
                        .replace(&line, *to)
                        .into_owned()
                })
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

fn check(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(format!("{name}.txt"));
    if std::env::var_os("HERALD_UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("snapshot dir");
        std::fs::write(&path, actual).expect("write snapshot");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (set HERALD_UPDATE_SNAPSHOTS=1 to create it)",
            path.display()
        )
    });
    assert!(
        expected == actual,
        "{name} changed:\n--- expected ({})\n{expected}\n--- actual\n{actual}",
        path.display()
    );
}

#[tokio::test]
async fn output_formats_are_stable() -> anyhow::Result<()> {
    let world = World::start().await?;
    let url = world.receiver.url("/hooks/orders");
    let created = herald(
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
            "xml",
            "--description",
            "ERP orders",
            "--header",
            "X-Shop=1",
            "--retry-schedule",
            "5s,1m",
            "-o",
            "json",
        ],
    )
    .await?;
    let id = serde_json::from_str::<serde_json::Value>(&created)?["id"]
        .as_str()
        .expect("an id")
        .to_owned();
    check("create.json", &normalize(&created, &world, false));
    for (style, name) in [
        ("table", "get.table"),
        ("json", "get.json"),
        ("yaml", "get.yaml"),
    ] {
        let out = herald(&world, &["subscription", "get", &id, "-o", style]).await?;
        check(name, &normalize(&out, &world, style == "table"));
    }
    for (style, name) in [("table", "list.table"), ("json", "list.json")] {
        let out = herald(&world, &["subscription", "list", "-o", style]).await?;
        check(name, &normalize(&out, &world, style == "table"));
    }
    world
        .control_plane
        .wait_applied(0, Duration::from_secs(10))
        .await?;
    herald(
        &world,
        &[
            "emit",
            "--tenant",
            "shop-1",
            "--type",
            "order.created",
            "--data",
            r#"{"n":1}"#,
            "--id",
            "evt-snapshot-1",
        ],
    )
    .await?;
    let log = eventually(
        Duration::from_secs(10),
        "the attempt in the log",
        || async {
            let out = herald(&world, &["deliveries", "list", "-o", "json"]).await?;
            Ok(out.contains("delivered").then_some(()))
        },
    );
    log.await?;
    for (style, name) in [("table", "deliveries.table"), ("yaml", "deliveries.yaml")] {
        let out = herald(&world, &["deliveries", "list", "-o", style]).await?;
        check(name, &normalize(&out, &world, style == "table"));
    }
    Ok(())
}
