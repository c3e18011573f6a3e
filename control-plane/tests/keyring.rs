//! Replicas that refuse a wrong keyring: one started with another key of the same id exits 64
//! before it serves anything; one whose keyring cannot open a record written later (a key
//! rotation that has not reached it) refuses agents a config without it, and those agents
//! deliver through a replica that can.

use std::time::Duration;

use herald_control_plane::sealing::{Keyring, KeyringSource};
use herald_proto::v1 as pb;
use herald_proto::v1::agent_control_client::AgentControlClient;
use herald_proto::v1::config_request::Kind;
use herald_proto::v1::subscriptions_client::SubscriptionsClient;
use herald_tests::herald::connect;
use herald_tests::{
    Agent, AgentOptions, ConfigStore, ControlPlane, ControlPlaneProcess, Etcd, Receiver, TestCa,
    event, subscription,
};

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn a_replica_with_another_key_of_the_same_id_exits_64() -> anyhow::Result<()> {
    let etcd = Etcd::start().await?;
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_herald-control-plane"));
    let good = ControlPlaneProcess::start(binary, &etcd.endpoint(), "embedded", &[]).await?;
    let mut restarted =
        ControlPlaneProcess::start(binary, &etcd.endpoint(), "embedded", &[]).await?;
    let ca = TestCa::new();
    let receiver = Receiver::start(&ca).await?;
    // The agent is on the replica that will come back with the wrong keyring.
    let agent = Agent::start(
        &restarted.url(),
        AgentOptions {
            trusted_ca: Some(ca.ca_pem()),
            more_control_planes: vec![good.url()],
            ..Default::default()
        },
    )
    .await?;

    // That replica comes back with another key called `test` (the test replicas' key id). The
    // store holds no subscription yet: the check value alone gives it away.
    restarted.set_env("HERALD_SECRETS_KEY", &Keyring::generate_entry("test")?);
    let (code, log) = restarted.run_expecting_exit(WAIT).await?;
    assert_eq!(code, Some(64), "{log}");
    assert!(
        log.contains("key \"test\"") && log.contains("--secrets-key-file"),
        "{log}"
    );
    assert!(
        tokio::net::TcpStream::connect(restarted.url().trim_start_matches("http://"))
            .await
            .is_err(),
        "it never served"
    );

    // The agent moved to the good replica and delivers on.
    let created = SubscriptionsClient::new(connect(&good.url()).await?)
        .create_subscription(pb::CreateSubscriptionRequest {
            subscription: Some(subscription("shop-1", &receiver.url("/hook"), &["order.*"])),
            allow_unregistered: false,
            ..Default::default()
        })
        .await?
        .into_inner();
    let emitted = herald_tests::eventually(WAIT, "the agent to hold the subscription", || async {
        let emitted = agent
            .emit(event(
                "shop-1",
                "order.created",
                &serde_json::json!({"n": 1}),
            ))
            .await?;
        Ok((emitted.matched == 1).then_some(emitted))
    })
    .await?;
    let requests = receiver.wait_for_requests(1, WAIT).await?;
    let webhook_id = requests[0].headers.get("webhook-id").map(|v| v.as_bytes());
    assert_eq!(webhook_id, Some(emitted.event_id.as_bytes()));
    assert!(created.revision > 0);
    Ok(())
}

#[tokio::test]
async fn a_replica_that_cannot_open_a_record_sends_its_agents_elsewhere() -> anyhow::Result<()> {
    let etcd = Etcd::start().await?;
    let store = ConfigStore::Etcd(vec![etcd.endpoint()]);
    // A key rotation that reached one replica and not the other: the first seals with k2,
    // which the second does not hold.
    let (k1, k2) = (
        Keyring::generate_entry("k1")?,
        Keyring::generate_entry("k2")?,
    );
    let with_keyring = |keyring: String| {
        move |config: &mut herald_control_plane::Config| {
            config.secrets = KeyringSource {
                secrets_key: Some(keyring),
                secrets_key_file: None,
            }
        }
    };
    let stranger = ControlPlane::start_configured(store.clone(), with_keyring(k1.clone())).await?;
    // Serving before the other starts: the first replica makes the store's shared records.
    herald_tests::eventually(WAIT, "the stranger to serve", || async {
        let listed = stranger
            .subscriptions()
            .await?
            .list_subscriptions(pb::ListSubscriptionsRequest::default())
            .await;
        Ok(listed.ok().map(|_| ()))
    })
    .await?;
    let good = ControlPlane::start_configured(store, with_keyring(format!("{k2}{k1}"))).await?;
    let ca = TestCa::new();
    let receiver = Receiver::start(&ca).await?;
    let agent = Agent::start(
        stranger.url(),
        AgentOptions {
            trusted_ca: Some(ca.ca_pem()),
            more_control_planes: vec![good.url().to_owned()],
            ..Default::default()
        },
    )
    .await?;
    good.create(subscription("shop-1", &receiver.url("/hook"), &["order.*"]))
        .await?;

    // The stranger refuses config streams while it cannot open the record.
    let hello = pb::ConfigRequest {
        kind: Some(Kind::Hello(pb::AgentHello {
            agent_id: "agt_probe".into(),
            ..Default::default()
        })),
    };
    let stranger_url = stranger.url().to_owned();
    let refused = herald_tests::eventually(WAIT, "the stranger to refuse streams", || {
        let (hello, url) = (hello.clone(), stranger_url.clone());
        async move {
            let requests = futures_util::StreamExt::chain(
                futures_util::stream::iter([hello]),
                futures_util::stream::pending(),
            );
            let answer = AgentControlClient::new(connect(&url).await?)
                .stream_config(requests)
                .await;
            Ok(answer.err())
        }
    })
    .await?;
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains(
            "1 stored subscription(s) are sealed with a key this control plane's keyring lacks"
        ),
        "{refused:?}"
    );

    // Its agent moved to the good replica and delivers with the whole config.
    let emitted = herald_tests::eventually(WAIT, "the agent to hold the subscription", || async {
        let emitted = agent
            .emit(event(
                "shop-1",
                "order.created",
                &serde_json::json!({"n": 1}),
            ))
            .await?;
        Ok((emitted.matched == 1).then_some(emitted))
    })
    .await?;
    let requests = receiver.wait_for_requests(1, WAIT).await?;
    let webhook_id = requests[0].headers.get("webhook-id").map(|v| v.as_bytes());
    assert_eq!(webhook_id, Some(emitted.event_id.as_bytes()));
    Ok(())
}
