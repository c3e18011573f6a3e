//! The subscription API: validation, revisions, not-found, secrets; and `Emit`'s validation.

use herald_proto::idempotency::was_replayed;
use herald_proto::v1 as pb;
use herald_tests::{ConfigStore, ControlPlane, Etcd, World, event, subscription};
use serde_json::json;
use tonic::Code;

#[tokio::test]
async fn invalid_input_is_refused_with_invalid_argument_naming_the_field() -> anyhow::Result<()> {
    let etcd = Etcd::start().await?;
    let cp = ControlPlane::start(ConfigStore::Etcd(vec![etcd.endpoint()])).await?;
    let mut admin = cp.subscriptions().await?;
    let good = subscription("shop-1", "https://shop.example/hooks", &["order.*"]);
    let cases: Vec<(&str, pb::Subscription)> = vec![
        (
            "url",
            pb::Subscription {
                url: "not a url".into(),
                ..good.clone()
            },
        ),
        (
            "url",
            pb::Subscription {
                url: "http://shop.example/plain".into(),
                ..good.clone()
            },
        ),
        (
            "format",
            pb::Subscription {
                format: 9,
                ..good.clone()
            },
        ),
        (
            "event_types",
            pb::Subscription {
                event_types: vec!["Order Created".into()],
                ..good.clone()
            },
        ),
        (
            "event_types",
            pb::Subscription {
                event_types: vec![],
                ..good.clone()
            },
        ),
        (
            "tenant",
            pb::Subscription {
                tenant: String::new(),
                ..good.clone()
            },
        ),
    ];
    for (field, bad) in cases {
        let status = admin
            .create_subscription(pb::CreateSubscriptionRequest {
                subscription: Some(bad),
                allow_unregistered: false,
                ..Default::default()
            })
            .await
            .expect_err(field);
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(
            status.message().starts_with(field),
            "{field}: {}",
            status.message()
        );
        assert_eq!(
            violated_field(&status).as_deref(),
            Some(field),
            "{status:?}"
        );
    }
    let missing = admin
        .create_subscription(pb::CreateSubscriptionRequest {
            subscription: None,
            allow_unregistered: false,
            ..Default::default()
        })
        .await
        .expect_err("no subscription");
    assert_eq!(missing.code(), Code::InvalidArgument);
    assert_eq!(
        violated_field(&missing).as_deref(),
        Some("subscription"),
        "{missing:?}"
    );
    Ok(())
}

#[tokio::test]
async fn revisions_guard_updates_and_unknown_ids_are_not_found() -> anyhow::Result<()> {
    let etcd = Etcd::start().await?;
    let cp = ControlPlane::start(ConfigStore::Etcd(vec![etcd.endpoint()])).await?;
    let mut admin = cp.subscriptions().await?;
    let created = cp
        .create(subscription(
            "shop-1",
            "https://shop.example/hooks",
            &["order.*"],
        ))
        .await?;

    let read = admin
        .get_subscription(pb::GetSubscriptionRequest {
            id: created.id.clone(),
            show_secrets: false,
        })
        .await?
        .into_inner();
    assert_eq!(read.revision, created.revision);
    assert!(
        read.secrets.iter().all(|s| s.secret.is_empty()),
        "secrets hidden unless asked"
    );
    let shown = admin
        .get_subscription(pb::GetSubscriptionRequest {
            id: created.id.clone(),
            show_secrets: true,
        })
        .await?
        .into_inner();
    assert_eq!(shown.secrets[0].secret, created.secrets[0].secret);

    let first = admin
        .update_subscription(pb::UpdateSubscriptionRequest {
            subscription: Some(pb::Subscription {
                description: "first".into(),
                ..read.clone()
            }),
            expected_revision: read.revision,
            allow_unregistered: false,
        })
        .await?
        .into_inner();
    assert!(first.revision > read.revision);
    assert_eq!(first.description, "first");

    // A second writer who read the old revision is refused, not silently overwriting.
    let stale = admin
        .update_subscription(pb::UpdateSubscriptionRequest {
            subscription: Some(pb::Subscription {
                description: "second".into(),
                ..read.clone()
            }),
            expected_revision: read.revision,
            allow_unregistered: false,
        })
        .await
        .expect_err("stale revision");
    assert_eq!(stale.code(), Code::FailedPrecondition, "{stale:?}");

    let stale_delete = admin
        .delete_subscription(pb::DeleteSubscriptionRequest {
            id: created.id.clone(),
            expected_revision: read.revision,
        })
        .await
        .expect_err("stale delete");
    assert_eq!(stale_delete.code(), Code::FailedPrecondition);

    for call in ["get", "enable", "delete"] {
        let id = "sub_doesnotexist".to_owned();
        let status = match call {
            "get" => admin
                .get_subscription(pb::GetSubscriptionRequest {
                    id,
                    show_secrets: false,
                })
                .await
                .map(|_| ()),
            "enable" => admin
                .enable_subscription(pb::EnableSubscriptionRequest {
                    id,
                    replay_parked: false,
                })
                .await
                .map(|_| ()),
            _ => admin
                .delete_subscription(pb::DeleteSubscriptionRequest {
                    id,
                    expected_revision: 0,
                })
                .await
                .map(|_| ()),
        }
        .expect_err(call);
        assert_eq!(status.code(), Code::NotFound, "{call}: {status:?}");
    }

    // Rotation adds a secret and keeps the old one signing for the grace period.
    let rotated = admin
        .rotate_secret(pb::RotateSecretRequest {
            id: created.id.clone(),
            grace: None,
        })
        .await?
        .into_inner();
    assert_eq!(rotated.secrets.len(), 2);
    assert_ne!(rotated.secrets[0].secret, created.secrets[0].secret);
    assert_eq!(rotated.secrets[1].secret, created.secrets[0].secret);
    assert!(rotated.secrets[1].expires_at.is_some());

    // Up to 8 secrets at once: a rotation that would end one before its grace is refused and
    // says when the oldest ends; a grace of 0 ends every earlier secret now.
    let rotate = |grace: Option<prost_types::Duration>| {
        let mut admin = admin.clone();
        let id = created.id.clone();
        async move {
            admin
                .rotate_secret(pb::RotateSecretRequest { id, grace })
                .await
                .map(|r| r.into_inner())
        }
    };
    for held in 3..=8 {
        assert_eq!(rotate(None).await?.secrets.len(), held);
    }
    let refused = rotate(None).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains("8 signing secrets") && refused.message().contains("grace of 0"),
        "{refused:?}"
    );
    let fresh = rotate(Some(prost_types::Duration::default())).await?;
    assert_eq!(fresh.secrets.len(), 1, "{:?}", fresh.secrets);
    assert!(fresh.secrets[0].expires_at.is_none());

    // Listing pages through every subscription of a tenant.
    for i in 0..5 {
        cp.create(subscription(
            "shop-9",
            &format!("https://shop.example/{i}"),
            &["*"],
        ))
        .await?;
    }
    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = admin
            .list_subscriptions(pb::ListSubscriptionsRequest {
                tenant: "shop-9".into(),
                page_size: 2,
                page_token,
            })
            .await?
            .into_inner();
        assert!(page.subscriptions.len() <= 2);
        seen.extend(page.subscriptions.into_iter().map(|s| s.url));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    seen.sort();
    assert_eq!(
        seen,
        (0..5)
            .map(|i| format!("https://shop.example/{i}"))
            .collect::<Vec<_>>()
    );
    Ok(())
}

#[tokio::test]
async fn emit_refuses_invalid_events() -> anyhow::Result<()> {
    let world = World::start().await?;
    let mut events = world.agent.events().await?;
    let good = event("shop-1", "order.created", &json!({"ok": true}));
    let cases: Vec<(&str, pb::Event)> = vec![
        (
            "payload",
            pb::Event {
                payload: b"{not json".to_vec(),
                ..good.clone()
            },
        ),
        (
            "payload",
            pb::Event {
                payload: vec![b' '; 300 * 1024],
                ..good.clone()
            },
        ),
        (
            "type",
            pb::Event {
                r#type: "order".into(),
                ..good.clone()
            },
        ),
        (
            "tenant",
            pb::Event {
                tenant: String::new(),
                ..good.clone()
            },
        ),
        (
            "id",
            pb::Event {
                id: "has spaces".into(),
                ..good.clone()
            },
        ),
    ];
    for (field, bad) in cases {
        let status = events
            .emit(pb::EmitRequest { event: Some(bad) })
            .await
            .expect_err(field);
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(
            status.message().starts_with(field),
            "{field}: {}",
            status.message()
        );
        assert_eq!(
            violated_field(&status).as_deref(),
            Some(field),
            "{status:?}"
        );
    }
    let batch = events
        .emit_batch(pb::EmitBatchRequest {
            events: vec![
                good.clone(),
                pb::Event {
                    r#type: "x".into(),
                    ..good
                },
            ],
        })
        .await
        .expect_err("one bad event rejects the batch");
    assert_eq!(batch.code(), Code::InvalidArgument);
    assert_eq!(
        violated_field(&batch).as_deref(),
        Some("events[1].type"),
        "{batch:?}"
    );
    assert!(
        batch.message().starts_with("events[1]"),
        "{}",
        batch.message()
    );
    Ok(())
}

/// The field a status's `google.rpc.BadRequest` detail names, as a client of gRPC's standard
/// error model reads it.
fn violated_field(status: &tonic::Status) -> Option<String> {
    use tonic_types::StatusExt as _;
    let bad_request = status.get_details_bad_request()?;
    bad_request
        .field_violations
        .into_iter()
        .next()
        .map(|violation| violation.field)
}

/// A platform's create that timed out is sent again with its idempotency key: one
/// subscription, the same answer (its secret included), whether the two are sent one after
/// the other or at once; the key is the tenant's own, and it cannot be reused for another
/// subscription.
#[tokio::test]
async fn a_create_sent_again_with_its_idempotency_key_makes_one_subscription() -> anyhow::Result<()>
{
    let etcd = Etcd::start().await?;
    let cp = ControlPlane::start(ConfigStore::Etcd(vec![etcd.endpoint()])).await?;
    let mut admin = cp.subscriptions().await?;
    let create = |tenant: &str, url: &str, key: &str| pb::CreateSubscriptionRequest {
        subscription: Some(subscription(tenant, url, &["order.*"])),
        allow_unregistered: false,
        idempotency_key: key.into(),
    };
    let count = |tenant: &'static str| {
        let cp = &cp;
        async move { anyhow::Ok(cp.subscriptions_of(tenant).await?.len()) }
    };

    let first = admin
        .create_subscription(create("shop-1", "https://shop.example/a", "sync-42"))
        .await?;
    assert!(!was_replayed(&first), "the first create made it");
    let first = first.into_inner();
    let again = admin
        .create_subscription(create("shop-1", "https://shop.example/a", "sync-42"))
        .await?;
    assert!(was_replayed(&again), "the answer says nothing new was made");
    let again = again.into_inner();
    assert_eq!(again.id, first.id);
    assert_eq!(again.secrets, first.secrets, "the answer holds the secret");
    assert_eq!(count("shop-1").await?, 1);

    // Another request with the key is refused; another tenant's key of the same name is its own.
    let reused = admin
        .create_subscription(create("shop-1", "https://shop.example/b", "sync-42"))
        .await
        .expect_err("another request with the key");
    assert_eq!(reused.code(), Code::AlreadyExists, "{reused:?}");
    let other_tenant = admin
        .create_subscription(create("shop-2", "https://shop.example/a", "sync-42"))
        .await?
        .into_inner();
    assert_ne!(other_tenant.id, first.id);

    // Sent eight times at once: one subscription, one answer.
    let mut racing = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let mut admin = admin.clone();
        let request = create("shop-1", "https://shop.example/c", "sync-43");
        racing.spawn(async move { admin.create_subscription(request).await });
    }
    let mut ids = std::collections::HashSet::new();
    let mut made = 0;
    while let Some(answer) = racing.join_next().await {
        let answer = answer??;
        made += usize::from(!was_replayed(&answer));
        ids.insert(answer.into_inner().id);
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(made, 1, "one answer made it, the others say they did not");
    assert_eq!(count("shop-1").await?, 2);

    // Deleted since: the key does not make it again.
    admin
        .delete_subscription(pb::DeleteSubscriptionRequest {
            id: first.id.clone(),
            ..Default::default()
        })
        .await?;
    let gone = admin
        .create_subscription(create("shop-1", "https://shop.example/a", "sync-42"))
        .await
        .expect_err("deleted since");
    assert_eq!(gone.code(), Code::NotFound, "{gone:?}");
    assert!(gone.message().contains(&first.id), "{gone:?}");

    // Checked as any field is.
    let bad = admin
        .create_subscription(create("shop-1", "https://shop.example/d", "tab\tkey"))
        .await
        .expect_err("not printable");
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    assert_eq!(violated_field(&bad).as_deref(), Some("idempotency_key"));
    Ok(())
}
