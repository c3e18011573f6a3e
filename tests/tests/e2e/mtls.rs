//! Mutual TLS on the control plane's API: agents and operators present certificates from the
//! configured CA; a caller with a certificate from another CA, or with none, gets nothing.

use std::time::Duration;

use herald_control_plane::ServerTls;
use herald_proto::client_tls;
use herald_proto::v1 as pb;
use herald_proto::v1::subscriptions_client::SubscriptionsClient;
use herald_tests::herald::connect_tls;
use herald_tests::tls::CertUse;
use herald_tests::{
    Agent, AgentOptions, ConfigStore, ControlPlane, HeldPort, Receiver, TestCa, event, subscription,
};

#[tokio::test]
async fn only_callers_with_a_certificate_from_the_ca_get_anything() -> anyhow::Result<()> {
    let ca = TestCa::new();
    let dir = tempfile::tempdir()?;
    let ca_file = ca.write_ca_pem(dir.path())?;
    let (server_cert, server_key) = ca.write_pair(dir.path(), "control-plane", CertUse::Server)?;
    let (agent_cert, agent_key) = ca.write_pair(dir.path(), "agent", CertUse::Client)?;
    let (operator_cert, operator_key) = ca.write_pair(dir.path(), "operator", CertUse::Client)?;
    let stranger_dir = tempfile::tempdir()?;
    let (stranger_cert, stranger_key) =
        TestCa::new().write_pair(stranger_dir.path(), "stranger", CertUse::Client)?;

    let tls = ServerTls {
        tls_cert_file: Some(server_cert),
        tls_key_file: Some(server_key),
        tls_client_ca_file: Some(ca_file.clone()),
    };
    let health_port = HeldPort::new()?;
    let mut control_plane = ControlPlane::start_configured(ConfigStore::Embedded, |config| {
        config.tls = tls;
        config.health_listen = Some(health_port.addr());
    })
    .await?;
    assert!(control_plane.url().starts_with("https://"));
    let operator = |cert, key| client_tls::config(Some(&ca_file), Some(cert), Some(key));
    control_plane.use_tls(operator(&operator_cert, &operator_key)?.expect("TLS settings"));

    let agent = Agent::start(
        control_plane.url(),
        AgentOptions {
            ca_file: Some(ca_file.clone()),
            control_plane_tls: Some((ca_file.clone(), agent_cert, agent_key)),
            ..Default::default()
        },
    )
    .await?;
    let receiver = Receiver::start(&ca).await?;
    let sub = control_plane
        .create(subscription("shop-1", &receiver.url("/hook"), &["order.*"]))
        .await?;
    control_plane
        .wait_applied(sub.revision, Duration::from_secs(10))
        .await?;
    agent
        .emit(event(
            "shop-1",
            "order.created",
            &serde_json::json!({"id": 1}),
        ))
        .await?;
    receiver
        .wait_for_requests(1, Duration::from_secs(10))
        .await?;

    // A certificate from another CA: the handshake fails, nothing is answered.
    let stranger = operator(&stranger_cert, &stranger_key)?.expect("TLS settings");
    let listed = async {
        SubscriptionsClient::new(connect_tls(control_plane.url(), stranger).await?)
            .list_subscriptions(pb::ListSubscriptionsRequest::default())
            .await
            .map_err(anyhow::Error::from)
    }
    .await;
    assert!(listed.is_err(), "a stranger's certificate is refused");
    // No certificate at all.
    let bare = client_tls::config(Some(&ca_file), None, None)?.expect("TLS settings");
    let listed = async {
        SubscriptionsClient::new(connect_tls(control_plane.url(), bare).await?)
            .list_subscriptions(pb::ListSubscriptionsRequest::default())
            .await
            .map_err(anyhow::Error::from)
    }
    .await;
    assert!(listed.is_err(), "a caller without a certificate is refused");
    // Plain HTTP/2 to a TLS port.
    let plain = async {
        let url = control_plane.url().replace("https://", "http://");
        SubscriptionsClient::new(herald_tests::herald::connect(&url).await?)
            .list_subscriptions(pb::ListSubscriptionsRequest::default())
            .await
            .map_err(anyhow::Error::from)
    }
    .await;
    assert!(plain.is_err());

    // Probes that speak no TLS check health on the plain health port, which serves nothing else.
    let health_url = format!("http://{}", health_port.addr());
    let status = tonic_health::pb::health_client::HealthClient::new(
        herald_tests::herald::connect(&health_url).await?,
    )
    .check(tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    })
    .await?
    .into_inner()
    .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let other = SubscriptionsClient::new(herald_tests::herald::connect(&health_url).await?)
        .list_subscriptions(pb::ListSubscriptionsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(other.code(), tonic::Code::Unimplemented);
    Ok(())
}

#[tokio::test]
async fn a_rotated_client_ca_takes_effect_without_a_restart() -> anyhow::Result<()> {
    let ca = TestCa::new();
    let newer = TestCa::new();
    let dir = tempfile::tempdir()?;
    let ca_file = ca.write_ca_pem(dir.path())?;
    let (server_cert, server_key) = ca.write_pair(dir.path(), "control-plane", CertUse::Server)?;
    let (operator_cert, operator_key) = ca.write_pair(dir.path(), "operator", CertUse::Client)?;
    let newer_dir = tempfile::tempdir()?;
    let (agent_cert, agent_key) = newer.write_pair(newer_dir.path(), "agent", CertUse::Client)?;
    // The CA file the control plane checks clients against: at first only the old CA.
    let client_ca = dir.path().join("client-ca.pem");
    std::fs::write(&client_ca, ca.ca_pem())?;

    let tls = ServerTls {
        tls_cert_file: Some(server_cert),
        tls_key_file: Some(server_key),
        tls_client_ca_file: Some(client_ca.clone()),
    };
    let mut control_plane =
        ControlPlane::start_configured(ConfigStore::Embedded, |config| config.tls = tls).await?;
    control_plane.use_tls(
        client_tls::config(Some(&ca_file), Some(&operator_cert), Some(&operator_key))?
            .expect("TLS settings"),
    );
    let _agent = Agent::start(
        control_plane.url(),
        AgentOptions {
            control_plane_tls: Some((ca_file.clone(), agent_cert, agent_key)),
            ..Default::default()
        },
    )
    .await?;
    let connected = || async {
        let agents = control_plane.list_agents().await?;
        anyhow::Ok(agents.iter().any(|a| a.connected))
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!connected().await?, "the agent's CA is not trusted yet");

    // Rotation: the new CA joins the file; no restart.
    std::fs::write(&client_ca, format!("{}{}", ca.ca_pem(), newer.ca_pem()))?;
    herald_tests::eventually(Duration::from_secs(30), "the agent to connect", || async {
        Ok(connected().await?.then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn certificate_holders_are_known_by_their_subject() -> anyhow::Result<()> {
    use herald_proto::v1::audit_client::AuditClient;
    let ca = TestCa::new();
    let dir = tempfile::tempdir()?;
    let ca_file = ca.write_ca_pem(dir.path())?;
    let (server_cert, server_key) = ca.write_pair(dir.path(), "control-plane", CertUse::Server)?;
    let pair = |name: &str| ca.write_pair(dir.path(), name, CertUse::Client);
    let (agent_cert, agent_key) = pair("agent-eu")?;
    let (ops_cert, ops_key) = pair("ops")?;
    let (reader_cert, reader_key) = pair("shop-b-reader")?;
    let (unlisted_cert, unlisted_key) = pair("unlisted")?;
    let identities = dir.path().join("identities");
    std::fs::write(
        &identities,
        "agent agent-eu tenants=shop-a\n\
         admin ops name=operators\n\
         read shop-b-reader tenants=shop-b\n",
    )?;
    let tls = ServerTls {
        tls_cert_file: Some(server_cert),
        tls_key_file: Some(server_key),
        tls_client_ca_file: Some(ca_file.clone()),
    };
    let mut control_plane = ControlPlane::start_configured(ConfigStore::Embedded, |config| {
        config.tls = tls;
        config.auth.auth_identities_file = Some(identities);
    })
    .await?;
    let as_holder = |cert: &std::path::Path, key: &std::path::Path| {
        client_tls::config(Some(&ca_file), Some(cert), Some(key))
    };
    control_plane.use_tls(as_holder(&ops_cert, &ops_key)?.expect("TLS settings"));

    // The agent's certificate is its credential: no token.
    let agent = Agent::start(
        control_plane.url(),
        AgentOptions {
            ca_file: Some(ca_file.clone()),
            control_plane_tls: Some((ca_file.clone(), agent_cert, agent_key)),
            ..Default::default()
        },
    )
    .await?;
    let receiver = Receiver::start(&ca).await?;
    let created = control_plane
        .create(subscription("shop-a", &receiver.url("/hook"), &["order.*"]))
        .await?;
    control_plane
        .create(subscription("shop-b", &receiver.url("/b"), &["order.*"]))
        .await?;
    control_plane
        .wait_applied(created.revision, Duration::from_secs(10))
        .await?;
    agent
        .emit(event(
            "shop-a",
            "order.created",
            &serde_json::json!({"id": 1}),
        ))
        .await?;
    receiver
        .wait_for_requests(1, Duration::from_secs(10))
        .await?;

    // The operator's changes carry its name.
    let entries = AuditClient::new(
        connect_tls(
            control_plane.url(),
            as_holder(&ops_cert, &ops_key)?.expect("TLS"),
        )
        .await?,
    )
    .list_audit_entries(pb::ListAuditEntriesRequest::default())
    .await?
    .into_inner()
    .entries;
    assert!(!entries.is_empty() && entries.iter().all(|e| e.actor == "operators"));

    // The scoped reader lists shop B only and may change nothing.
    let mut reader = SubscriptionsClient::new(
        connect_tls(
            control_plane.url(),
            as_holder(&reader_cert, &reader_key)?.expect("TLS"),
        )
        .await?,
    );
    let listed = reader
        .list_subscriptions(pb::ListSubscriptionsRequest::default())
        .await?
        .into_inner();
    let tenants: Vec<&str> = listed
        .subscriptions
        .iter()
        .map(|s| s.tenant.as_str())
        .collect();
    assert_eq!(tenants, ["shop-b"]);
    let refused = reader
        .delete_subscription(pb::DeleteSubscriptionRequest {
            id: created.id.clone(),
            expected_revision: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);

    // A certificate from the CA whose subject is not listed is nobody.
    let unknown = SubscriptionsClient::new(
        connect_tls(
            control_plane.url(),
            as_holder(&unlisted_cert, &unlisted_key)?.expect("TLS"),
        )
        .await?,
    )
    .list_subscriptions(pb::ListSubscriptionsRequest::default())
    .await
    .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::Unauthenticated, "{unknown:?}");
    Ok(())
}
