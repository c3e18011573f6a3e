use prost::Message;

use super::create_key::CreateKey;
use super::*;

/// A registry on an embedded store in `dir` (keyring `k1`, no special targets), and the
/// store, for tests that read its raw records.
async fn registry_in(dir: &tempfile::TempDir) -> (Subscriptions, Store) {
    let store = Store::embedded(dir.path()).await.expect("a store");
    let keyring = Keyring::parse(&Keyring::generate_entry("k1").expect("a key")).expect("ok");
    let registry = Subscriptions::new(
        store.clone(),
        TargetPolicy::new(false, vec![]),
        Arc::new(keyring),
    );
    (registry, store)
}

/// A create's key outlives a restart of the embedded store (a create sent again after the
/// control plane crashed is what keys are for), answers for 24 hours, and is swept after.
#[tokio::test]
async fn a_create_key_outlives_a_restart_and_is_swept_after_its_day() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let keyring =
        Arc::new(Keyring::parse(&Keyring::generate_entry("k1").expect("a key")).expect("ok"));
    let open = |keyring: Arc<Keyring>| {
        let path = dir.path().to_owned();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            let store = loop {
                match Store::embedded(&path).await {
                    Ok(store) => break store,
                    // The dropped handle's tasks let go of the file within moments.
                    Err(err) if tokio::time::Instant::now() < deadline => {
                        tracing::debug!(error = %err, "the file is still held");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(err) => panic!("reopen: {err:?}"),
                }
            };
            Subscriptions::new(store, TargetPolicy::new(false, vec![]), keyring)
        }
    };
    let request = pb::CreateSubscriptionRequest {
        subscription: Some(orders_of("shop-a")),
        idempotency_key: "erp-7".into(),
        ..Default::default()
    };
    let key = CreateKey::of(&request).expect("valid").expect("a key");
    let registry = open(keyring.clone()).await;
    let first = match registry
        .create_keyed(orders_of("shop-a"), Some(&key))
        .await
        .expect("created")
    {
        Created::New(sub) => sub,
        replayed => panic!("{replayed:?}"),
    };
    drop(registry);

    let registry = open(keyring).await;
    match registry
        .create_keyed(orders_of("shop-a"), Some(&key))
        .await
        .expect("answered")
    {
        Created::Replayed(sub) => assert_eq!(sub.id, first.id),
        made => panic!("a second subscription after a restart: {made:?}"),
    }
    let now = SystemTime::now();
    assert_eq!(registry.sweep_create_keys(now).await.expect("swept"), 0);
    let later = now + create_key::KEPT_FOR + Duration::from_secs(1);
    assert_eq!(registry.sweep_create_keys(later).await.expect("swept"), 1);
    assert!(
        registry
            .created_with("shop-a", &key)
            .await
            .expect("read")
            .is_none()
    );
}

/// A subscription of `tenant` to its order events, at a public address.
fn orders_of(tenant: &str) -> pb::Subscription {
    pb::Subscription {
        tenant: tenant.into(),
        url: "https://93.184.215.14/hook".into(),
        event_types: vec!["order.*".into()],
        ..Default::default()
    }
}

#[tokio::test]
async fn a_scoped_listing_pages_through_its_tenants_only() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (registry, _) = registry_in(&dir).await;
    for (tenant, n) in [("shop-a", 3), ("shop-b", 2), ("shop-c", 2)] {
        for _ in 0..n {
            registry.create(orders_of(tenant)).await.expect("created");
        }
    }
    let scope = Scope::Only(["shop-a".to_owned(), "shop-c".to_owned()].into());
    let mut tenants = vec![];
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = registry
            .list_within(&scope, "", 2, &token)
            .await
            .expect("a page");
        assert!(page.subscriptions.len() <= 2);
        tenants.extend(page.subscriptions.into_iter().map(|s| s.tenant));
        pages += 1;
        if page.next_page_token.is_empty() {
            break;
        }
        assert!(
            !page.next_page_token.contains('/'),
            "tokens show nothing of the store's keys: {}",
            page.next_page_token
        );
        token = page.next_page_token;
    }
    assert_eq!(tenants, ["shop-a", "shop-a", "shop-a", "shop-c", "shop-c"]);
    assert!(pages >= 3);
    // A tenant outside the scope lists as empty; a token from another listing is refused.
    let outside = registry
        .list_within(&scope, "shop-b", 10, "")
        .await
        .expect("ok");
    assert!(outside.subscriptions.is_empty() && outside.next_page_token.is_empty());
    let all = registry.list("", 3, "").await.expect("ok");
    let foreign = registry
        .list_within(
            &Scope::Only(["shop-c".to_owned()].into()),
            "",
            2,
            &all.next_page_token,
        )
        .await;
    assert!(matches!(foreign, Err(SubscriptionError::Invalid(_))));
    for made_up in ["/herald/v1/subscriptions/shop-a/", "%%%", "_w"] {
        let refused = registry.list_within(&scope, "", 2, made_up).await;
        assert!(
            matches!(refused, Err(SubscriptionError::Invalid(_))),
            "{made_up}"
        );
    }
}

#[tokio::test]
async fn a_url_is_stored_as_requests_go_to_it_and_one_a_parser_would_change_is_refused() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (registry, _) = registry_in(&dir).await;
    let at = |url: &str| pb::Subscription {
        tenant: "shop-a".into(),
        url: url.into(),
        event_types: vec!["order.*".into()],
        ..Default::default()
    };
    let created = registry
        .create(at("https://93.184.215.14:443/shop/../hooks"))
        .await
        .expect("created");
    assert_eq!(created.url, "https://93.184.215.14/hooks");
    assert_eq!(
        registry.get(&created.id).await.expect("read").url,
        "https://93.184.215.14/hooks"
    );
    for bad in [
        "https:///93.184.215.14/h",
        " https://93.184.215.14/h",
        "https://93.184.215.14/h\nx",
        "https://93.184.215.14:0/h",
    ] {
        let refused = registry.create(at(bad)).await;
        assert!(
            matches!(&refused, Err(SubscriptionError::Invalid(e)) if e.field == "url"),
            "{bad:?}: {refused:?}"
        );
    }
}

#[tokio::test]
async fn masked_secrets_sent_back_keep_the_stored_ones_only_where_they_were_given() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (registry, _) = registry_in(&dir).await;
    let created = registry
        .create(pb::Subscription {
            egress: pb::Egress::Proxy as i32,
            egress_proxy: "http://egress:pw-1@93.184.215.15:3128".into(),
            oauth2: Some(pb::OAuth2 {
                token_url: "https://93.184.215.16/token".into(),
                client_id: "shop".into(),
                client_secret: "oauth-1".into(),
                ..Default::default()
            }),
            ..orders_of("shop-a")
        })
        .await
        .expect("created");
    let read = redact(registry.get(&created.id).await.expect("read"));
    assert_eq!(read.egress_proxy, "http://egress:****@93.184.215.15:3128");

    // Sent back as read: both stay.
    let kept = registry
        .update(read.clone(), created.revision)
        .await
        .expect("updated");
    assert_eq!(kept.egress_proxy, "http://egress:pw-1@93.184.215.15:3128");
    assert_eq!(
        kept.oauth2.as_ref().map(|o| o.client_secret.as_str()),
        Some("oauth-1")
    );

    // The masked password for another host is refused, not stored as the password.
    let other_host = registry
        .update(
            pb::Subscription {
                egress_proxy: "http://egress:****@93.184.215.17:3128".into(),
                ..read.clone()
            },
            kept.revision,
        )
        .await;
    assert!(
        matches!(&other_host, Err(SubscriptionError::Invalid(e)) if e.field == "egress_proxy"),
        "{other_host:?}"
    );
    // A blank client secret for another token endpoint is not the stored one.
    let other_endpoint = registry
        .update(
            pb::Subscription {
                oauth2: read.oauth2.clone().map(|o| pb::OAuth2 {
                    token_url: "https://93.184.215.18/token".into(),
                    ..o
                }),
                ..read.clone()
            },
            kept.revision,
        )
        .await;
    assert!(
        matches!(&other_endpoint, Err(SubscriptionError::Invalid(e)) if e.field.starts_with("oauth2")),
        "{other_endpoint:?}"
    );
    // A new subscription cannot start with a masked password either.
    let masked = registry
        .create(pb::Subscription {
            id: String::new(),
            oauth2: None,
            ..read
        })
        .await;
    assert!(
        matches!(&masked, Err(SubscriptionError::Invalid(e)) if e.field == "egress_proxy"),
        "{masked:?}"
    );
}

#[tokio::test]
async fn a_new_subscription_reads_back_its_scheme_and_names_each_region_once() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (registry, _) = registry_in(&dir).await;
    let created = registry.create(orders_of("shop-a")).await.expect("created");
    assert_eq!(
        created.signature_scheme,
        pb::SignatureScheme::HmacSha256 as i32,
        "no scheme named is HMAC-SHA256, and reads back so"
    );
    let twice = registry
        .create(pb::Subscription {
            regions: vec!["eu".into(), "us".into(), "eu".into()],
            ..orders_of("shop-a")
        })
        .await;
    assert!(
        matches!(&twice, Err(SubscriptionError::Invalid(e)) if e.field == "regions"),
        "{twice:?}"
    );
}

#[tokio::test]
async fn a_header_value_sent_back_blank_is_kept_only_for_the_same_origin() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (registry, _) = registry_in(&dir).await;
    let created = registry
        .create(pb::Subscription {
            headers: [("X-Api-Key".to_owned(), "key-1".to_owned())].into(),
            ..orders_of("shop-a")
        })
        .await
        .expect("created");
    let read = redact(registry.get(&created.id).await.expect("read"));
    assert_eq!(read.headers["X-Api-Key"], "");
    // Another path of the same origin: the value stays.
    let moved = registry
        .update(
            pb::Subscription {
                url: "https://93.184.215.14/other".into(),
                ..read.clone()
            },
            created.revision,
        )
        .await
        .expect("updated");
    let stored = registry.get(&moved.id).await.expect("read");
    assert_eq!(stored.headers["X-Api-Key"], "key-1");
    // Another host: the stored value is not sent there unless given again.
    let elsewhere = registry
        .update(
            pb::Subscription {
                url: "https://93.184.215.20/hook".into(),
                ..read.clone()
            },
            moved.revision,
        )
        .await;
    assert!(
        matches!(&elsewhere, Err(SubscriptionError::Invalid(e)) if e.field == "headers"),
        "{elsewhere:?}"
    );
    let given = registry
        .update(
            pb::Subscription {
                url: "https://93.184.215.20/hook".into(),
                headers: [("X-Api-Key".to_owned(), "key-2".to_owned())].into(),
                ..read
            },
            moved.revision,
        )
        .await
        .expect("given again");
    assert_eq!(
        registry.get(&given.id).await.expect("read").headers["X-Api-Key"],
        "key-2"
    );
}

#[tokio::test]
async fn oauth2_texts_are_one_line_and_a_tenant_is_never_a_path_step() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (registry, _) = registry_in(&dir).await;
    let with = |scope: &str, audience: &str, client_id: &str| pb::Subscription {
        oauth2: Some(pb::OAuth2 {
            token_url: "https://93.184.215.14/token".into(),
            client_id: client_id.into(),
            client_secret: "client-secret-1".into(),
            scope: scope.into(),
            audience: audience.into(),
        }),
        ..orders_of("shop-a")
    };
    for (sub, field) in [
        (with("webhooks\nX-Other: 1", "", "platform"), "oauth2.scope"),
        (with("", "api\u{1b}[2J", "platform"), "oauth2.audience"),
        (with("", "", "platform\u{0}"), "oauth2.client_id"),
        (orders_of(".."), "tenant"),
        (orders_of("."), "tenant"),
    ] {
        let refused = registry.create(sub).await;
        assert!(
            matches!(&refused, Err(SubscriptionError::Invalid(e)) if e.field == field),
            "{field}: {refused:?}"
        );
    }
    registry
        .create(with(
            "webhooks read",
            "https://api.shop.example",
            "platform",
        ))
        .await
        .expect("one line each");
}

#[tokio::test]
async fn an_oauth2_secret_sent_back_blank_is_kept_only_for_the_same_origin() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (registry, _) = registry_in(&dir).await;
    let created = registry
        .create(pb::Subscription {
            oauth2: Some(pb::OAuth2 {
                token_url: "https://93.184.215.14/token".into(),
                client_id: "platform".into(),
                client_secret: "client-secret-1".into(),
                ..Default::default()
            }),
            ..orders_of("shop-a")
        })
        .await
        .expect("created");
    let read = redact(registry.get(&created.id).await.expect("read"));
    assert_eq!(read.oauth2.as_ref().expect("oauth2").client_secret, "");
    // Another path of the same origin: the secret stays.
    let moved = registry
        .update(
            pb::Subscription {
                url: "https://93.184.215.14/other".into(),
                ..read.clone()
            },
            created.revision,
        )
        .await
        .expect("updated");
    let stored = registry.get(&moved.id).await.expect("read");
    assert_eq!(
        stored.oauth2.expect("oauth2").client_secret,
        "client-secret-1"
    );
    // Another host: the tokens the stored secret gets would go there, so it must be given
    // again, as the owner of the new address would have it.
    let elsewhere = registry
        .update(
            pb::Subscription {
                url: "https://93.184.215.20/hook".into(),
                ..read.clone()
            },
            moved.revision,
        )
        .await;
    assert!(
        matches!(&elsewhere, Err(SubscriptionError::Invalid(e)) if e.field == "oauth2.client_secret"),
        "{elsewhere:?}"
    );
    let mut oauth2 = read.oauth2.clone().expect("oauth2");
    oauth2.client_secret = "client-secret-2".into();
    let given = registry
        .update(
            pb::Subscription {
                url: "https://93.184.215.20/hook".into(),
                oauth2: Some(oauth2),
                ..read
            },
            moved.revision,
        )
        .await
        .expect("given again");
    assert_eq!(
        registry
            .get(&given.id)
            .await
            .expect("read")
            .oauth2
            .expect("oauth2")
            .client_secret,
        "client-secret-2"
    );
}

#[tokio::test]
async fn an_operator_s_disable_reason_cannot_pass_for_herald_s_own() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (registry, _) = registry_in(&dir).await;
    let created = registry.create(orders_of("shop-a")).await.expect("created");
    for spoofed in [
        "auto: 3 consecutive failures",
        "gone (410)",
        "moved\u{202e}",
        "Auto: 10 consecutive failures",
        "auto\u{200b}: 3 consecutive failures",
        " GONE(410)",
    ] {
        let refused = registry.disable(&created.id, spoofed).await;
        assert!(
            matches!(&refused, Err(SubscriptionError::Invalid(e)) if e.field == "reason"),
            "{spoofed:?}: {refused:?}"
        );
    }
    let disabled = registry
        .disable(&created.id, "shop closed for inventory")
        .await
        .expect("disabled");
    assert_eq!(disabled.disabled_reason, "shop closed for inventory");
}

#[tokio::test]
async fn a_page_ends_within_its_bytes_and_the_next_goes_on_from_there() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (registry, _) = registry_in(&dir).await;
    // 80 subscriptions of some 33 KB each (32 custom headers of 1 KiB): 2.6 MB in all.
    let headers: std::collections::HashMap<String, String> = (0..herald_core::limits::MAX_HEADERS)
        .map(|n| {
            let value = "v".repeat(herald_core::limits::MAX_HEADER_VALUE_LEN);
            (format!("x-shop-{n}"), value)
        })
        .collect();
    for _ in 0..80 {
        registry
            .create(pb::Subscription {
                headers: headers.clone(),
                ..orders_of("shop-a")
            })
            .await
            .expect("created");
    }
    let mut ids = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = registry.list("", 1000, &token).await.expect("a page");
        let bytes: usize = page.subscriptions.iter().map(|s| s.encoded_len()).sum();
        assert!(
            bytes <= herald_core::limits::MAX_PAGE_BYTES,
            "{bytes} bytes"
        );
        ids.extend(page.subscriptions.into_iter().map(|s| s.id));
        pages += 1;
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 2);
    let mut distinct = ids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!((ids.len(), distinct.len()), (80, 80), "each once");
}

#[tokio::test]
async fn an_update_keeps_the_signature_scheme_or_refuses_to_change_it() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (registry, _) = registry_in(&dir).await;
    let created = registry
        .create(pb::Subscription {
            signature_scheme: pb::SignatureScheme::Ed25519 as i32,
            ..orders_of("shop-a")
        })
        .await
        .expect("created");
    let update = |scheme: i32, revision: i64| {
        registry.update(
            pb::Subscription {
                signature_scheme: scheme,
                description: "edited".into(),
                ..created.clone()
            },
            revision,
        )
    };
    for refused in [pb::SignatureScheme::HmacSha256 as i32, 99] {
        let err = update(refused, created.revision)
            .await
            .expect_err("refused");
        assert!(
            matches!(&err, SubscriptionError::Invalid(e) if e.field == "signature_scheme"),
            "{refused}: {err:?}"
        );
    }
    let kept = update(pb::SignatureScheme::Ed25519 as i32, created.revision)
        .await
        .expect("sent back as read");
    let unspecified = update(pb::SignatureScheme::Unspecified as i32, kept.revision)
        .await
        .expect("left unspecified");
    assert_eq!(
        unspecified.signature_scheme,
        pb::SignatureScheme::Ed25519 as i32
    );
}

#[tokio::test]
async fn a_tenant_holds_at_most_its_limit_of_subscriptions() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let registry = registry_in(&dir).await.0.with_max_per_tenant(2);
    let create = |tenant: &str| registry.create(orders_of(tenant));
    let first = create("shop-a").await.expect("created");
    create("shop-a").await.expect("created");
    let full = create("shop-a").await.expect_err("full");
    assert!(matches!(
        &full,
        SubscriptionError::TenantFull { limit: 2, .. }
    ));
    assert_eq!(
        tonic::Status::from(full).code(),
        tonic::Code::ResourceExhausted
    );
    // Another tenant is not held back; a delete makes room.
    create("shop-ab").await.expect("another tenant");
    registry
        .delete_within(&Scope::All, &first.id, first.revision)
        .await
        .expect("deleted");
    create("shop-a").await.expect("room again");
}

#[tokio::test]
async fn connection_headers_and_multi_line_label_keys_are_refused_when_given() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (registry, _) = registry_in(&dir).await;
    let with_header = pb::Subscription {
        headers: [("Content-Encoding".to_owned(), "gzip".to_owned())].into(),
        ..orders_of("shop-a")
    };
    let refused = registry.create(with_header).await.expect_err("refused");
    assert!(
        matches!(&refused, SubscriptionError::Invalid(e) if e.field == "headers"),
        "{refused:?}"
    );
    let with_label = pb::Subscription {
        labels: [("team\nops".to_owned(), "x".to_owned())].into(),
        ..orders_of("shop-a")
    };
    let refused = registry.create(with_label).await.expect_err("refused");
    assert!(
        matches!(&refused, SubscriptionError::Invalid(e) if e.field == "labels"),
        "{refused:?}"
    );
}

#[tokio::test]
async fn creates_racing_at_the_limit_do_not_pass_it_together() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let registry = registry_in(&dir).await.0.with_max_per_tenant(5);
    let racing = (0..30).map(|_| registry.create(orders_of("shop-a")));
    let answers = futures_util::future::join_all(racing).await;
    let created = answers.iter().filter(|a| a.is_ok()).count();
    assert_eq!(created, 5, "{answers:?}");
    assert!(
        answers
            .iter()
            .all(|a| matches!(a, Ok(_) | Err(SubscriptionError::TenantFull { .. })))
    );
    let listed = registry.list("shop-a", 100, "").await.expect("listed");
    assert_eq!(listed.subscriptions.len(), 5);
}

#[tokio::test]
async fn a_create_cannot_set_what_only_the_control_plane_sets() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (registry, _) = registry_in(&dir).await;
    // A time no RFC 3339 text can hold, and one that would skip every parked delivery.
    let far = prost_types::Timestamp {
        seconds: 300_000_000_000,
        nanos: 0,
    };
    let created = registry
        .create(pb::Subscription {
            skip_parked_before: Some(far),
            disabled_at: Some(far),
            ..orders_of("shop-a")
        })
        .await
        .expect("created");
    let stored = registry.get(&created.id).await.expect("stored");
    assert_eq!(stored.skip_parked_before, None);
    assert_eq!(stored.disabled_at, None);
    assert!(stored.enabled);
}

#[tokio::test]
async fn every_address_a_delivery_connects_to_is_held_to_the_target_policy() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (registry, _) = registry_in(&dir).await;
    let refused = |result: Result<pb::Subscription, SubscriptionError>, field: &str| {
        assert!(
            matches!(&result, Err(SubscriptionError::Invalid(e)) if e.field == field),
            "{field}: {result:?}"
        );
    };
    // The subscription's own proxy: a literal address, and a name resolving to one.
    for proxy in ["http://169.254.169.254:80", "http://localhost:3128"] {
        let result = registry
            .create(pb::Subscription {
                egress: pb::Egress::Proxy as i32,
                egress_proxy: proxy.into(),
                ..orders_of("shop-1")
            })
            .await;
        refused(result, "egress_proxy");
    }
    // The OAuth2 token endpoint by a name that resolves to loopback, as the URL would be.
    let result = registry
        .create(pb::Subscription {
            oauth2: Some(pb::OAuth2 {
                token_url: "https://localhost:8443/token".into(),
                client_id: "platform".into(),
                client_secret: "client-secret".into(),
                ..Default::default()
            }),
            ..orders_of("shop-1")
        })
        .await;
    refused(result, "oauth2.token_url");
    // A header of its own named as the one the OAuth2 token goes in: two would be sent.
    let result = registry
        .create(pb::Subscription {
            oauth2: Some(pb::OAuth2 {
                token_url: "https://93.184.216.34/token".into(),
                client_id: "platform".into(),
                client_secret: "client-secret".into(),
                ..Default::default()
            }),
            headers: [("Authorization".to_owned(), "Bearer static".to_owned())].into(),
            ..orders_of("shop-1")
        })
        .await;
    refused(result, "headers");
}

#[tokio::test]
async fn sealed_values_a_caller_sends_are_neither_taken_nor_answered() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (registry, _) = registry_in(&dir).await;
    let sealed = pb::SealedSecret {
        key_id: "k1".into(),
        ..Default::default()
    };
    let created = registry
        .create(pb::Subscription {
            sealed_headers: [("x-evil".to_owned(), sealed.clone())].into(),
            sealed_egress_proxy: Some(sealed.clone()),
            sealed_client_key: Some(sealed.clone()),
            sealed_oauth2_client_secret: Some(sealed),
            ..orders_of("shop-1")
        })
        .await
        .expect("created");
    assert!(created.sealed_headers.is_empty());
    assert!(created.sealed_egress_proxy.is_none());
    assert!(created.sealed_client_key.is_none());
    assert!(created.sealed_oauth2_client_secret.is_none());
    assert!(created.secrets.iter().all(|s| s.sealed.is_none()));
}

#[tokio::test]
async fn a_proxy_admitted_before_is_not_checked_again_until_it_changes() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let store = Store::embedded(dir.path()).await.expect("a store");
    let keyring =
        Arc::new(Keyring::parse(&Keyring::generate_entry("k1").expect("a key")).expect("ok"));
    // Written while the policy admitted the internal proxy (an earlier version, or an
    // operator's wider --allow-targets then).
    let wide = Subscriptions::new(
        store.clone(),
        TargetPolicy::new(false, vec!["10.0.0.0/8".parse().expect("a range")]),
        keyring.clone(),
    );
    let created = wide
        .create(pb::Subscription {
            egress: pb::Egress::Proxy as i32,
            egress_proxy: "http://10.1.2.3:3128".into(),
            ..orders_of("shop-1")
        })
        .await
        .expect("created");
    let strict = Subscriptions::new(store, TargetPolicy::new(false, vec![]), keyring);
    let read = redact(strict.get(&created.id).await.expect("read"));
    let described = strict
        .update(
            pb::Subscription {
                description: "still through the internal proxy".into(),
                ..read.clone()
            },
            read.revision,
        )
        .await
        .expect("another change goes through");
    let revision = described.revision;
    let moved = strict
        .update(
            pb::Subscription {
                egress_proxy: "http://10.9.9.9:3128".into(),
                ..redact(described)
            },
            revision,
        )
        .await;
    assert!(
        matches!(&moved, Err(SubscriptionError::Invalid(e)) if e.field == "egress_proxy"),
        "a new proxy is checked: {moved:?}"
    );
}

#[tokio::test]
async fn a_subscription_proxy_is_sealed_masked_on_reads_and_kept_by_a_masked_update() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (registry, store) = registry_in(&dir).await;
    let created = registry
        .create(pb::Subscription {
            egress: pb::Egress::Proxy as i32,
            egress_proxy: "http://egress:pa55-word@93.184.215.16:3128".into(),
            ..orders_of("shop-1")
        })
        .await
        .expect("created");
    let key = keys::subscription("shop-1", &created.id);
    let raw = store.get(&key).await.expect("read").expect("there");
    assert!(!String::from_utf8_lossy(&raw.value).contains("pa55-word"));
    let read = redact(registry.get(&created.id).await.expect("read"));
    assert_eq!(read.egress_proxy, "http://egress:****@93.184.215.16:3128");
    // Sent back as read, with another change: the password stays.
    let updated = registry
        .update(
            pb::Subscription {
                description: "via the egress proxy".into(),
                ..read.clone()
            },
            read.revision,
        )
        .await
        .expect("updated");
    assert_eq!(
        updated.egress_proxy,
        "http://egress:pa55-word@93.184.215.16:3128"
    );
    // A proxy URL without EGRESS_PROXY, or a bad one, is refused naming the field.
    for (egress, url) in [
        (pb::Egress::Direct, "http://93.184.215.16:3128"),
        (pb::Egress::Proxy, "https://93.184.215.16:3128"),
    ] {
        let refused = registry
            .update(
                pb::Subscription {
                    egress: egress as i32,
                    egress_proxy: url.into(),
                    ..updated.clone()
                },
                updated.revision,
            )
            .await;
        assert!(
            matches!(&refused, Err(SubscriptionError::Invalid(e)) if e.field == "egress_proxy"),
            "{refused:?}"
        );
    }
}

#[tokio::test]
async fn a_record_stored_before_the_stricter_checks_still_delivers_and_changes() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (registry, store) = registry_in(&dir).await;
    // What earlier versions accepted: a tab in the URL (parsers drop it), an escape in the
    // description, a timeout whose nanos are not normalised.
    let legacy = pb::Subscription {
        id: "sub_01OLDER".into(),
        url: "https://93.184.215.14/h\tx".into(),
        description: "\u{1b}[31mred".into(),
        oauth2: Some(pb::OAuth2 {
            token_url: "https://93.184.215.14/token".into(),
            client_id: "herald".into(),
            client_secret: "s3cret".into(),
            scope: "webhooks\nread".into(),
            audience: String::new(),
        }),
        timeout: Some(prost_types::Duration {
            seconds: 1,
            nanos: 2_000_000_000,
        }),
        envelope: pb::Envelope::Standard as i32,
        secrets: vec![wire_secret(&SigningSecret::generate(), SystemTime::now())],
        enabled: true,
        ..orders_of("shop-1")
    };
    let txn = Txn::default()
        .then(Op::Put(
            keys::subscription("shop-1", "sub_01OLDER"),
            encode(&legacy, &registry.keyring).expect("encoded"),
        ))
        .then(Op::Put(
            keys::subscription_id("sub_01OLDER"),
            b"shop-1".to_vec(),
        ));
    store.txn(txn).await.expect("written");
    // Agents read it; sealing upgrades, disabling and enabling go through.
    let read = registry.get("sub_01OLDER").await.expect("read");
    convert::subscription(&read, false).expect("an agent reads it");
    registry.upgrade_all("herald").await.expect("upgraded");
    let disabled = registry
        .disable("sub_01OLDER", "shop closed")
        .await
        .expect("disabled");
    assert!(!disabled.enabled);
    // Sent again as it is, it is held to today's checks, which say what to fix.
    let refused = registry.update(read, disabled.revision).await;
    assert!(
        matches!(&refused, Err(SubscriptionError::Invalid(e)) if e.field == "url"),
        "{refused:?}"
    );
}

#[tokio::test]
async fn header_values_written_in_the_clear_are_sealed_at_start() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (registry, store) = registry_in(&dir).await;
    // A record as an earlier version wrote it: header values in the clear.
    let legacy = pb::Subscription {
        id: "sub_01LEGACY".into(),
        tenant: "shop-1".into(),
        url: "https://93.184.215.14/hook".into(),
        event_types: vec!["order.*".into()],
        headers: [("X-Api-Key".to_owned(), "clear-value-123".to_owned())].into(),
        envelope: pb::Envelope::Standard as i32,
        secrets: vec![wire_secret(&SigningSecret::generate(), SystemTime::now())],
        ..Default::default()
    };
    let key = keys::subscription("shop-1", "sub_01LEGACY");
    let txn = Txn::default()
        .then(Op::Put(key.clone(), legacy.encode_to_vec()))
        .then(Op::Put(
            keys::subscription_id("sub_01LEGACY"),
            b"shop-1".to_vec(),
        ));
    store.txn(txn).await.expect("written");
    assert_eq!(registry.upgrade_all("herald").await.expect("upgraded"), 1);
    let raw = store.get(&key).await.expect("read").expect("there");
    let stored = pb::Subscription::decode(raw.value.as_slice()).expect("a record");
    assert!(stored.headers.is_empty());
    assert_eq!(stored.sealed_headers["X-Api-Key"].key_id, "k1");
    let read = registry.get("sub_01LEGACY").await.expect("read");
    assert_eq!(read.headers["X-Api-Key"], "clear-value-123");
    assert_eq!(registry.upgrade_all("herald").await.expect("upgraded"), 0);
    let redacted = redact(read);
    assert!(redacted.header_values_hidden && redacted.headers["X-Api-Key"].is_empty());
}

#[tokio::test]
async fn a_record_under_another_subscriptions_key_is_damaged() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (registry, store) = registry_in(&dir).await;
    let created = registry.create(orders_of("shop-1")).await.expect("created");
    let stored = registry.get(&created.id).await.expect("read");
    let value = encode(&stored, &registry.keyring).expect("encoded");
    let at = |key: String| KeyValue {
        key,
        value: value.clone(),
        mod_revision: 7,
    };
    record::decode(
        &at(keys::subscription("shop-1", &created.id)),
        &registry.keyring,
    )
    .expect("its own key");
    for elsewhere in [
        keys::subscription("shop-9", "sub_01FAKEFAKEFAKEFAKEFAKEFAKE"),
        keys::subscription("shop-9", &created.id),
        keys::subscription("shop-1", "sub_01FAKEFAKEFAKEFAKEFAKEFAKE"),
    ] {
        let refused = record::decode(&at(elsewhere.clone()), &registry.keyring);
        assert!(
            matches!(&refused, Err(SubscriptionError::Corrupt { key, .. }) if *key == elsewhere),
            "{elsewhere}: {refused:?}"
        );
    }
    // Such a record, written straight into the store, has no id entry: a delete by the id its
    // key names still clears it (within the caller's tenants), as the damage report says to.
    let fake = keys::subscription("shop-9", "sub_01FAKEFAKEFAKEFAKEFAKEFAKE");
    store
        .txn(Txn::default().then(Op::Put(fake.clone(), value.clone())))
        .await
        .expect("written");
    let shop_1_only = Scope::Only(["shop-1".to_owned()].into());
    assert!(matches!(
        registry
            .delete_within(&shop_1_only, "sub_01FAKEFAKEFAKEFAKEFAKEFAKE", 0)
            .await,
        Err(SubscriptionError::NotFound(_))
    ));
    let deleted = registry
        .delete_within(&Scope::All, "sub_01FAKEFAKEFAKEFAKEFAKEFAKE", 0)
        .await
        .expect("deleted");
    assert_eq!(deleted.tenant, "shop-9");
    assert!(store.get(&fake).await.expect("read").is_none());
    registry.get(&created.id).await.expect("the real one stays");
}
