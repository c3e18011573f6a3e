//! Egress through an HTTP proxy (Debian's tinyproxy): the agent resolves and checks each
//! receiver itself and asks the proxy to CONNECT to the checked address, keeping the name for
//! TLS; a subscription may go direct or through its own proxy; a refused target stays refused
//! with a proxy configured; proxy failures are logged with their own error kinds.

use std::time::Duration;

use herald_proto::v1 as pb;
use herald_tests::{
    AgentOptions, EgressProxy, Receiver, World, attempts_of, event, secret_of, signature_verifies,
};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(15);

#[tokio::test]
async fn deliveries_leave_through_the_proxy_to_the_address_the_agent_checked() -> anyhow::Result<()>
{
    let world = World::start().await?;
    let proxy = EgressProxy::start(Some(("egress", "s3cret"))).await?;
    let agent = world
        .another_agent_applied(
            AgentOptions {
                egress_proxy: Some(proxy.url()),
                interest: herald_core::interest::Interest {
                    tenants: vec!["shop-egress".into()],
                    event_type_prefixes: vec![],
                },
                ..Default::default()
            },
            0,
        )
        .await?;
    let port = world.receiver.addr().port();

    // By name: the agent resolves `localhost` and asks the proxy for the address; TLS through
    // the tunnel still checks the certificate for `localhost`.
    let mut sub = herald_tests::subscription(
        "shop-egress",
        &format!("https://localhost:{port}/via-proxy"),
        &["order.*"],
    );
    let proxied = world.control_plane.create(sub.clone()).await?;
    // Direct, although the agent has a proxy (to another receiver, to tell them apart).
    let other = Receiver::start(&world.ca).await?;
    sub.url = other.url("/direct");
    sub.egress = pb::Egress::Direct as i32;
    let direct = world.control_plane.create(sub.clone()).await?;
    world
        .control_plane
        .wait_applied(direct.revision, WAIT)
        .await?;

    agent
        .emit(event("shop-egress", "order.created", &json!({"id": 1})))
        .await?;
    world.receiver.wait_for_requests(1, WAIT).await?;
    other.wait_for_requests(1, WAIT).await?;
    let requests = world.receiver.requests();
    let via_proxy = requests
        .iter()
        .find(|r| r.path == "/via-proxy")
        .expect("the proxied delivery");
    assert!(signature_verifies(via_proxy, &[&secret_of(&proxied)]));

    let connects = proxy.connects();
    assert!(
        connects.contains(&format!("127.0.0.1:{port}")),
        "the proxy was asked for the checked address: {connects:?}\n{}",
        proxy.log()
    );
    assert!(
        connects
            .iter()
            .all(|target| !target.starts_with("localhost")),
        "the proxy resolves nothing: {connects:?}"
    );
    // The direct delivery did not go through the proxy.
    let other_port = other.addr().port();
    assert!(
        connects
            .iter()
            .all(|target| !target.ends_with(&format!(":{other_port}"))),
        "{connects:?}"
    );
    let delivered = world
        .control_plane
        .wait_logged(attempts_of(&proxied.id), WAIT)
        .await?;
    assert_eq!(delivered[0].outcome, pb::Outcome::Delivered as i32);
    Ok(())
}

#[tokio::test]
async fn a_refused_target_stays_refused_and_proxy_failures_have_their_own_kinds()
-> anyhow::Result<()> {
    let world = World::start().await?;
    let proxy = EgressProxy::start(Some(("egress", "s3cret"))).await?;
    // This agent refuses loopback targets; its proxy (set by its operator) is trusted.
    let guarded = world
        .another_agent_applied(
            AgentOptions {
                egress_proxy: Some(proxy.url()),
                allow_targets: Some(vec![]),
                interest: herald_core::interest::Interest {
                    tenants: vec!["shop-guarded".into()],
                    event_type_prefixes: vec![],
                },
                ..Default::default()
            },
            0,
        )
        .await?;
    let refused = world
        .control_plane
        .create(herald_tests::subscription(
            "shop-guarded",
            &world.receiver.url("/refused"),
            &["order.*"],
        ))
        .await?;
    world
        .control_plane
        .wait_applied(refused.revision, WAIT)
        .await?;
    guarded
        .emit(event("shop-guarded", "order.created", &json!({"id": 2})))
        .await?;
    let logged = world
        .control_plane
        .wait_logged(attempts_of(&refused.id), WAIT)
        .await?;
    assert_eq!(logged[0].error_kind, "policy", "{:?}", logged[0]);
    assert!(proxy.connects().is_empty(), "{}", proxy.log());

    // A subscription's own proxy with wrong credentials: `proxy_auth`; one that refuses the
    // tunnel (nothing listens behind it): `proxy`.
    let mut sub = herald_tests::subscription(
        "shop-egress-2",
        &world.receiver.url("/own-proxy"),
        &["order.*"],
    );
    sub.egress = pb::Egress::Proxy as i32;
    sub.egress_proxy = format!(
        "http://egress:wrong@{}",
        proxy
            .url_without_credentials()
            .trim_start_matches("http://")
    );
    let bad_credentials = world.control_plane.create(sub.clone()).await?;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    sub.url = format!("https://127.0.0.1:{}/nothing-there", closed.port());
    sub.egress_proxy = proxy.url();
    let nothing_behind = world.control_plane.create(sub).await?;
    let agent = world
        .another_agent_applied(
            AgentOptions {
                interest: herald_core::interest::Interest {
                    tenants: vec!["shop-egress-2".into()],
                    event_type_prefixes: vec![],
                },
                ..Default::default()
            },
            nothing_behind.revision,
        )
        .await?;
    agent
        .emit(event("shop-egress-2", "order.created", &json!({"id": 3})))
        .await?;
    let auth = world
        .control_plane
        .wait_logged(attempts_of(&bad_credentials.id), WAIT)
        .await?;
    assert_eq!(auth[0].error_kind, "proxy_auth", "{:?}", auth[0]);
    assert!(
        auth[0].error.contains("127.0.0.1") && !auth[0].error.contains("wrong"),
        "the proxy is named, its password is not: {}",
        auth[0].error
    );
    let tunnel = world
        .control_plane
        .wait_logged(attempts_of(&nothing_behind.id), WAIT)
        .await?;
    assert_eq!(tunnel[0].error_kind, "proxy", "{:?}", tunnel[0]);

    // Reads show the proxy's password masked; the raw read with secrets has it.
    let read = world.control_plane.get(&bad_credentials.id).await?;
    assert!(
        read.egress_proxy.contains("egress:****@") && !read.egress_proxy.contains("wrong"),
        "{}",
        read.egress_proxy
    );
    Ok(())
}
