//! Mutual TLS to receivers: a subscription's client certificate is presented to a receiver
//! that requires one (from the test CA); without it the handshake fails with error kind
//! `tls`. The key is sealed at rest and never read back; the expiry is shown, and operators
//! hear of a certificate that expires within two weeks.

use std::time::Duration;

use herald_control_plane::store::Store;
use herald_proto::v1 as pb;
use herald_tests::tls::CertUse;
use herald_tests::{
    Receiver, World, attempts_of, event, secret_of, signature_verifies, subscription,
};
use serde_json::json;
use tonic::Code;

const WAIT: Duration = Duration::from_secs(15);

#[tokio::test]
async fn a_receiver_that_requires_a_client_certificate_gets_the_subscriptions() -> anyhow::Result<()>
{
    let world = World::start().await?;
    let strict = Receiver::start_requiring_client_certs(&world.ca).await?;
    let dir = tempfile::tempdir()?;
    let (cert_path, key_path) = world
        .ca
        .write_pair(dir.path(), "shop-erp", CertUse::Client)?;
    let (cert, key) = (
        std::fs::read_to_string(cert_path)?,
        std::fs::read_to_string(key_path)?,
    );

    let mut with_cert = subscription("shop-mtls", &strict.url("/with-cert"), &["order.*"]);
    with_cert.client_cert = cert.clone();
    with_cert.client_key = key.clone();
    let with_cert = world.control_plane.create(with_cert).await?;
    assert!(
        with_cert.client_key.is_empty(),
        "the key is never read back"
    );
    assert!(with_cert.client_cert_expires_at.is_some());
    let without = world
        .control_plane
        .create(subscription(
            "shop-mtls",
            &strict.url("/without"),
            &["order.*"],
        ))
        .await?;
    world
        .control_plane
        .wait_applied(without.revision, WAIT)
        .await?;

    world
        .agent
        .emit(event("shop-mtls", "order.created", &json!({"id": 1})))
        .await?;
    strict.wait_for_requests(1, WAIT).await?;
    let received = &strict.requests()[0];
    assert_eq!(received.path, "/with-cert");
    assert!(signature_verifies(received, &[&secret_of(&with_cert)]));
    let refused = world
        .control_plane
        .wait_logged(attempts_of(&without.id), WAIT)
        .await?;
    assert_eq!(refused[0].error_kind, "tls", "{:?}", refused[0]);

    // Read with secrets: still no key. Raw etcd values hold none of it.
    let shown = world
        .control_plane
        .subscriptions()
        .await?
        .get_subscription(pb::GetSubscriptionRequest {
            id: with_cert.id.clone(),
            show_secrets: true,
        })
        .await?
        .into_inner();
    assert!(shown.client_key.is_empty() && shown.client_cert == cert);
    let store = Store::etcd(&[world.etcd.endpoint()]).await?;
    let (kvs, _) = store.list("/herald/").await?;
    let key_body: String = key
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<String>();
    assert!(
        kvs.iter()
            .all(|kv| !String::from_utf8_lossy(&kv.value).contains(&key_body[..40])),
        "the client key is sealed at rest"
    );

    // An update that sends the certificate back without the key keeps the key: still delivered.
    let mut admin = world.control_plane.subscriptions().await?;
    let updated = admin
        .update_subscription(pb::UpdateSubscriptionRequest {
            subscription: Some(pb::Subscription {
                description: "the ERP's endpoint".into(),
                ..shown.clone()
            }),
            expected_revision: shown.revision,
            allow_unregistered: false,
        })
        .await?
        .into_inner();
    world
        .control_plane
        .wait_applied(updated.revision, WAIT)
        .await?;
    world
        .agent
        .emit(event("shop-mtls", "order.updated", &json!({"id": 1})))
        .await?;
    strict.wait_for_requests(2, WAIT).await?;

    // A key that is not the certificate's is refused, naming the field.
    let other_dir = tempfile::tempdir()?;
    let (_, other_key) = world
        .ca
        .write_pair(other_dir.path(), "other", CertUse::Client)?;
    let mut mismatched = subscription("shop-mtls", &strict.url("/x"), &["order.*"]);
    mismatched.client_cert = cert;
    mismatched.client_key = std::fs::read_to_string(other_key)?;
    let status = admin
        .create_subscription(pb::CreateSubscriptionRequest {
            subscription: Some(mismatched),
            allow_unregistered: false,
            ..Default::default()
        })
        .await
        .expect_err("a foreign key");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("client_key"), "{status:?}");
    Ok(())
}

#[tokio::test]
async fn operators_hear_of_a_client_certificate_that_expires_within_two_weeks() -> anyhow::Result<()>
{
    let world = World::start().await?;
    let operators = Receiver::start(&world.ca).await?;
    let ops = world
        .control_plane
        .create(subscription(
            "herald",
            &operators.url("/ops"),
            &["herald.subscription.*"],
        ))
        .await?;
    world.control_plane.wait_applied(ops.revision, WAIT).await?;

    // A certificate that ends in three days.
    let mut params = rcgen::CertificateParams::new(vec!["shop-erp".to_owned()])?;
    let (year, month, day) = date_in(Duration::from_secs(3 * 24 * 60 * 60));
    params.not_after = rcgen::date_time_ymd(year, month, day);
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    let mut sub = subscription("shop-exp", &world.receiver.url("/hook"), &["order.*"]);
    sub.client_cert = cert.pem();
    sub.client_key = key.serialize_pem();
    let created = world.control_plane.create(sub).await?;

    let warning = herald_tests::eventually(WAIT, "the expiry warning", || async {
        Ok(operators
            .requests()
            .iter()
            .map(|r| r.json())
            .find(|e| e["type"] == "herald.subscription.certificate_expiring"))
    })
    .await?;
    assert_eq!(warning["data"]["subscription_id"], created.id.as_str());
    assert!(warning["data"]["expires_at"].is_string(), "{warning}");
    // Once per certificate: an update that keeps it raises nothing more.
    let shown = world.control_plane.get(&created.id).await?;
    world
        .control_plane
        .subscriptions()
        .await?
        .update_subscription(pb::UpdateSubscriptionRequest {
            subscription: Some(pb::Subscription {
                description: "renew me".into(),
                ..shown.clone()
            }),
            expected_revision: shown.revision,
            allow_unregistered: false,
        })
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let warnings = operators
        .requests()
        .iter()
        .filter(|r| r.json()["type"] == "herald.subscription.certificate_expiring")
        .count();
    assert_eq!(warnings, 1);
    Ok(())
}

/// The UTC date (year, month, day) `after` from now.
fn date_in(after: Duration) -> (i32, u8, u8) {
    let text = humantime::format_rfc3339_seconds(std::time::SystemTime::now() + after).to_string();
    let part = |range: std::ops::Range<usize>| text[range].parse::<i64>().expect("a date");
    (part(0..4) as i32, part(5..7) as u8, part(8..10) as u8)
}
