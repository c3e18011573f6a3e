//! The SSRF guard: special addresses are refused when a subscription is written and again at
//! delivery, after DNS, with the reason in the log.

use std::time::Duration;

use herald_proto::v1 as pb;
use herald_tests::{
    Agent, AgentOptions, ConfigStore, ControlPlane, Etcd, World, event, eventually, subscription,
};
use serde_json::json;
use tonic::Code;

#[tokio::test]
async fn the_control_plane_refuses_special_targets_unless_allowed() -> anyhow::Result<()> {
    let etcd = Etcd::start().await?;
    let cp =
        ControlPlane::start_with_targets(ConfigStore::Etcd(vec![etcd.endpoint()]), vec![]).await?;
    let mut admin = cp.subscriptions().await?;
    for (url, reason) in [
        ("https://10.0.0.1/hook", "private"),
        ("https://169.254.169.254/latest/meta-data/", "metadata"),
        ("https://[::ffff:127.0.0.1]/hook", "loopback"),
        ("https://2130706433/hook", "loopback"),
        ("https://[fd00:ec2::254]/", "unique local"),
        ("https://localhost:8443/hook", "loopback"),
        ("http://shop.example/hook", "https"),
    ] {
        let status = admin
            .create_subscription(pb::CreateSubscriptionRequest {
                subscription: Some(subscription("shop-1", url, &["order.*"])),
                allow_unregistered: false,
                ..Default::default()
            })
            .await
            .expect_err(url);
        assert_eq!(status.code(), Code::InvalidArgument, "{url}: {status:?}");
        assert!(
            status.message().starts_with("url"),
            "{url}: {}",
            status.message()
        );
        assert!(
            status.message().contains(reason),
            "{url}: {}",
            status.message()
        );
    }
    // A public address is fine.
    cp.create(subscription(
        "shop-1",
        "https://93.184.215.14/hook",
        &["order.*"],
    ))
    .await?;
    Ok(())
}

#[tokio::test]
async fn the_agent_refuses_special_targets_at_delivery_even_after_dns() -> anyhow::Result<()> {
    // The control plane admits loopback (so the subscriptions can be written); this agent does not.
    let world = World::start().await?;
    let guarded = Agent::start(
        world.control_plane.url(),
        AgentOptions {
            ca_file: Some(world.ca.write_ca_pem(&tempfile::tempdir()?.keep())?),
            allow_targets: Some(vec![]),
            ..Default::default()
        },
    )
    .await?;
    let port = world
        .receiver
        .url("/")
        .trim_start_matches("https://127.0.0.1:")
        .trim_end_matches('/')
        .to_owned();
    let literal = world
        .control_plane
        .create(subscription(
            "shop-1",
            &world.receiver.url("/literal"),
            &["order.*"],
        ))
        .await?;
    // A name, so the refusal must come from the resolver, after DNS.
    let named = world
        .control_plane
        .create(subscription(
            "shop-2",
            &format!("https://localhost:{port}/named"),
            &["order.*"],
        ))
        .await?;
    guarded
        .wait_applied(
            &world.control_plane,
            named.revision.max(literal.revision),
            Duration::from_secs(10),
        )
        .await?;

    for (tenant, sub) in [("shop-1", &literal), ("shop-2", &named)] {
        let emitted = guarded
            .emit(event(tenant, "order.created", &json!({})))
            .await?;
        assert_eq!(emitted.matched, 1);
        let attempt = eventually(
            Duration::from_secs(10),
            "the refused attempt in the log",
            || async {
                let attempts = world
                    .control_plane
                    .attempts(pb::AttemptFilter {
                        subscription_id: sub.id.clone(),
                        ..Default::default()
                    })
                    .await?;
                Ok(attempts.into_iter().next())
            },
        )
        .await?;
        assert_eq!(attempt.error_kind, "policy", "{attempt:?}");
        assert_eq!(attempt.outcome, pb::Outcome::Failed as i32, "not retried");
        assert!(attempt.error.contains("loopback"), "{}", attempt.error);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        world.receiver.request_count(),
        0,
        "nothing reached the receiver"
    );
    Ok(())
}
