//! Signing secrets at rest: what an operator with `etcdctl` sees in the raw keys, and key
//! rotation of the control plane's keyring.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use herald_control_plane::sealing::Keyring;
use herald_control_plane::store::Store;
use herald_control_plane::subscriptions::Subscriptions;
use herald_core::target::TargetPolicy;
use herald_proto::v1 as pb;
use herald_tests::{World, event, secret_of, signature_verifies, subscription};
use prost::Message as _;

/// Every value under Herald's prefix, raw, as `etcdctl get --prefix /herald/` shows them.
async fn raw_values(etcd: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    let store = Store::etcd(&[etcd.to_owned()]).await?;
    let (kvs, _) = store.list("/herald/").await?;
    Ok(kvs.into_iter().map(|kv| kv.value).collect())
}

/// Whether `secret` (`whsec_…`) or its key bytes appear anywhere in `values`.
fn leaks(values: &[Vec<u8>], secret: &str) -> bool {
    let body = secret.split_once('_').map_or(secret, |(_, body)| body);
    let key = base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap_or_default();
    let contains = |value: &[u8], needle: &[u8]| {
        !needle.is_empty() && value.windows(needle.len()).any(|w| w == needle)
    };
    values.iter().any(|v| {
        contains(v, secret.as_bytes()) || contains(v, body.as_bytes()) || contains(v, &key)
    })
}

#[tokio::test]
async fn raw_etcd_values_reveal_no_signing_secret() -> anyhow::Result<()> {
    let world = World::start().await?;
    let created = world
        .control_plane
        .create(subscription(
            "shop-1",
            &world.receiver.url("/hook"),
            &["order.*"],
        ))
        .await?;
    let first = secret_of(&created);
    assert!(first.starts_with("whsec_"));
    let mut subs = world.control_plane.subscriptions().await?;
    let rotated = subs
        .rotate_secret(pb::RotateSecretRequest {
            id: created.id.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let second = secret_of(&rotated);
    assert_ne!(first, second);

    let values = raw_values(&world.etcd.endpoint()).await?;
    assert!(!values.is_empty());
    assert!(
        !leaks(&values, &first),
        "the first secret is readable in etcd"
    );
    assert!(
        !leaks(&values, &second),
        "the rotated secret is readable in etcd"
    );

    // The control plane still opens them: the API shows them on request, and the agent signs.
    let shown = subs
        .get_subscription(pb::GetSubscriptionRequest {
            id: created.id.clone(),
            show_secrets: true,
        })
        .await?
        .into_inner();
    let shown: Vec<&str> = shown.secrets.iter().map(|s| s.secret.as_str()).collect();
    assert_eq!(shown, [second.as_str(), first.as_str()]);
    world
        .control_plane
        .wait_applied(rotated.revision, Duration::from_secs(10))
        .await?;
    world
        .agent
        .emit(event(
            "shop-1",
            "order.created",
            &serde_json::json!({"id": 1}),
        ))
        .await?;
    let requests = world
        .receiver
        .wait_for_requests(1, Duration::from_secs(10))
        .await?;
    assert!(signature_verifies(&requests[0], &[&second]));
    assert!(signature_verifies(&requests[0], &[&first]));
    Ok(())
}

#[tokio::test]
async fn a_rotated_keyring_reseals_every_record_and_the_old_key_can_go() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::embedded(dir.path()).await?;
    let policy = TargetPolicy::new(false, vec![]);
    let old = Keyring::generate_entry("old")?;
    let new = Keyring::generate_entry("new")?;

    let before = Subscriptions::new(
        store.clone(),
        policy.clone(),
        Arc::new(Keyring::parse(&old)?),
    );
    let mut ids = vec![];
    for n in 0..3 {
        let sub = subscription(
            &format!("shop-{n}"),
            "https://93.184.215.14/hook",
            &["order.*"],
        );
        ids.push(before.create(sub).await?);
    }
    assert_eq!(before.upgrade_all("herald").await?, 0);

    let rotated = Subscriptions::new(
        store.clone(),
        policy.clone(),
        Arc::new(Keyring::parse(&format!("{new}{old}"))?),
    );
    assert_eq!(rotated.upgrade_all("herald").await?, 3);
    assert_eq!(rotated.upgrade_all("herald").await?, 0);
    let (kvs, _) = store.list("/herald/v1/subscriptions/").await?;
    assert_eq!(kvs.len(), 3);
    for kv in &kvs {
        let stored = pb::Subscription::decode(kv.value.as_slice())?;
        for secret in &stored.secrets {
            assert!(secret.secret.is_empty());
            assert_eq!(
                secret.sealed.as_ref().map(|s| s.key_id.as_str()),
                Some("new")
            );
        }
    }

    // With the old key gone, every secret still opens and is unchanged.
    let after = Subscriptions::new(store, policy, Arc::new(Keyring::parse(&new)?));
    for created in &ids {
        let read = after.get(&created.id).await?;
        assert_eq!(secret_of(&read), secret_of(created));
    }
    Ok(())
}

#[tokio::test]
async fn custom_header_values_are_sealed_and_shown_only_with_show_secrets() -> anyhow::Result<()> {
    const KEY: &str = "receiver-api-key-5f2b9c1e7a4d";
    let world = World::start().await?;
    let created = world
        .control_plane
        .create(pb::Subscription {
            headers: [("X-Api-Key".to_owned(), KEY.to_owned())].into(),
            ..subscription("shop-1", &world.receiver.url("/hook"), &["order.*"])
        })
        .await?;
    // The create's answer hides it as reads do: the caller has it, its output need not.
    assert_eq!(created.headers["X-Api-Key"], "", "the create's answer");
    assert!(created.header_values_hidden);
    let raw = raw_values(&world.etcd.endpoint()).await?;
    assert!(
        !raw.iter()
            .any(|v| v.windows(KEY.len()).any(|w| w == KEY.as_bytes())),
        "the header value is readable in etcd"
    );

    // Reads without show_secrets name the header and hide its value.
    let mut subs = world.control_plane.subscriptions().await?;
    let get = |show_secrets| pb::GetSubscriptionRequest {
        id: created.id.clone(),
        show_secrets,
    };
    let read = subs.get_subscription(get(false)).await?.into_inner();
    assert_eq!(read.headers["X-Api-Key"], "");
    assert!(read.header_values_hidden);
    let listed = subs
        .list_subscriptions(pb::ListSubscriptionsRequest::default())
        .await?
        .into_inner();
    assert_eq!(listed.subscriptions[0].headers["X-Api-Key"], "");
    let shown = subs.get_subscription(get(true)).await?.into_inner();
    assert_eq!(shown.headers["X-Api-Key"], KEY);
    assert!(!shown.header_values_hidden);

    // A read-modify-write by a caller shown blank values keeps them, and adds its own, even
    // from a client that does not know header_values_hidden (it sends it unset).
    let mut changed = read.clone();
    changed.header_values_hidden = false;
    changed.headers.insert("X-Shop".into(), "shop-1".into());
    let updated = subs
        .update_subscription(pb::UpdateSubscriptionRequest {
            expected_revision: read.revision,
            subscription: Some(changed),
            allow_unregistered: false,
        })
        .await?
        .into_inner();
    let shown = subs.get_subscription(get(true)).await?.into_inner();
    assert_eq!(shown.headers["X-Api-Key"], KEY);
    assert_eq!(shown.headers["X-Shop"], "shop-1");

    // The agent sends the values.
    world
        .control_plane
        .wait_applied(updated.revision, Duration::from_secs(10))
        .await?;
    world
        .agent
        .emit(event(
            "shop-1",
            "order.created",
            &serde_json::json!({"id": 1}),
        ))
        .await?;
    let requests = world
        .receiver
        .wait_for_requests(1, Duration::from_secs(10))
        .await?;
    let header = |name: &str| {
        requests[0]
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    assert_eq!(header("x-api-key").as_deref(), Some(KEY));
    assert_eq!(header("x-shop").as_deref(), Some("shop-1"));
    Ok(())
}
