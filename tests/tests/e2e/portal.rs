//! The tenant portal in a real browser: a link minted for one tenant opens its endpoints and
//! sent requests and nothing of any other tenant; the holder adds an endpoint from the
//! catalogue, reads a failing request's error, re-enables and replays; a read-only link
//! changes nothing; an expired or forged link shows a clear page and no data.

use std::time::{Duration, SystemTime};

use herald_control_plane::sealing::Keyring;
use herald_control_plane::web::portal_link::{self, Grant};
use herald_proto::v1 as pb;
use herald_proto::v1::event_types_client::EventTypesClient;
use herald_proto::v1::portal_client::PortalClient;
use herald_tests::{
    AgentAndReceiver, AgentOptions, Browser, ConfigStore, ControlPlane, Etcd, HeldPort, World,
    event, eventually, subscription,
};

const ADMIN: &str = "admin-portal-3b7d9e1f5a2c";
const SHOP_B_ADMIN: &str = "admin-portal-b-6e2a8c4f1d9b";

async fn link(
    control_plane: &ControlPlane,
    tenant: &str,
    read_only: bool,
) -> anyhow::Result<pb::PortalLink> {
    Ok(PortalClient::new(control_plane.channel().await?)
        .create_portal_link(pb::CreatePortalLinkRequest {
            tenant: tenant.into(),
            ttl: None,
            read_only,
        })
        .await?
        .into_inner())
}

#[tokio::test]
async fn a_shop_manages_its_endpoints_in_its_portal_and_sees_no_other_shop() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = HeldPort::new()?;
    let control_plane = ControlPlane::start_with_tokens_configured(
        ConfigStore::Embedded,
        &format!(
            "admin {ADMIN} name=platform\nadmin {SHOP_B_ADMIN} name=shop-b tenants=shop-b\n\
             agent agent-portal-token\n"
        ),
        ADMIN,
        |config| {
            config.http_listen = Some(http.addr());
            config.portal.name = "Acme Shops".into();
            config.portal.color = "#aa3300".into();
            config.portal.frame_ancestors = "https://platform.example".into();
        },
    )
    .await?;
    let AgentAndReceiver {
        agent, receiver, ..
    } = AgentAndReceiver::start(
        control_plane.url(),
        AgentOptions {
            control_plane_token: Some("agent-portal-token".into()),
            ..Default::default()
        },
    )
    .await?;
    receiver.respond_with(500);
    let mut catalogue = EventTypesClient::new(control_plane.channel().await?);
    for (name, description, example) in [
        ("order.created", "An order was placed", ""),
        (
            "invoice.created",
            "An invoice was issued",
            r#"{"invoice": "F-2026-7", "total": "19.99"}"#,
        ),
    ] {
        catalogue
            .create_event_type(pb::CreateEventTypeRequest {
                event_type: Some(pb::EventType {
                    name: name.into(),
                    description: description.into(),
                    example: example.as_bytes().to_vec(),
                    ..Default::default()
                }),
            })
            .await?;
    }
    let other = control_plane
        .create(subscription(
            "shop-b",
            "https://127.0.0.1:9/shop-b-secret-hook",
            &["order.created"],
        ))
        .await?;

    // A tenant's own admin may mint links for it, not for another tenant.
    let client = reqwest::Client::new();
    let base = format!("http://{}", http.addr());
    let refused = client
        .post(format!("{base}/api/v1/portal-links"))
        .bearer_auth(SHOP_B_ADMIN)
        .header("content-type", "application/json")
        .body(r#"{"tenant": "shop-a"}"#)
        .send()
        .await?;
    assert_eq!(refused.status().as_u16(), 403);
    let minted = link(&control_plane, "shop-a", false).await?;
    assert!(
        minted.url.starts_with(&format!("{base}/portal/")),
        "{}",
        minted.url
    );

    // The portal carries the platform's name, may be framed only where the flag says.
    let response = client.get(&minted.url).send().await?;
    let csp = response.headers()["content-security-policy"]
        .to_str()?
        .to_owned();
    assert!(
        csp.contains("frame-ancestors https://platform.example"),
        "{csp}"
    );
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    let theme = client
        .get(format!("{base}/assets/portal-theme.css"))
        .send()
        .await?
        .text()
        .await?;
    assert!(theme.contains("#aa3300"));

    let browser = Browser::start().await?;
    browser.open(&minted.url).await?;
    let home = browser.page_text().await?;
    assert!(
        home.contains("Acme Shops") && home.contains("No endpoints yet"),
        "{home}"
    );
    assert!(!home.contains("shop-b"), "{home}");

    // The event types it may subscribe to, with an example body as its endpoint gets it;
    // Herald's own types are not among them.
    browser.click("a[href$='/event-types']").await?;
    browser.wait_url("/event-types").await?;
    let types = browser.page_text().await?;
    assert!(
        types.contains("order.created")
            && types.contains("An invoice was issued")
            && !types.contains("herald."),
        "{types}"
    );
    let invoice = browser.text("#type-invoice\\.created .json-body").await?;
    assert!(
        invoice.contains("\"type\": \"invoice.created\"") && invoice.contains("F-2026-7"),
        "{invoice}"
    );
    browser.open(&minted.url).await?;

    // Add an endpoint with event types picked from the catalogue, in XML.
    browser.click("#add-endpoint").await?;
    browser.fill("#url", &receiver.url("/shop-a")).await?;
    browser.click("input[value='order.created']").await?;
    browser.click("#format option[value='xml']").await?;
    // Posted twice at once before the click: one endpoint all the same.
    browser.post_form_twice("form.form").await?;
    browser.click("#save").await?;
    browser.wait_url("done=created").await?;
    let secret = browser.text("code.secret").await?;
    assert!(secret.starts_with("whsec_"), "{secret}");
    let snippet = browser.text("#snippet").await?;
    assert!(snippet.contains(&secret), "the sample receiver has it");
    assert!(
        snippet.contains("json_parse=False"),
        "an XML body is not read as JSON: {snippet}"
    );
    let id = browser
        .url()
        .await?
        .split("/endpoints/")
        .nth(1)
        .and_then(|rest| rest.split('?').next())
        .expect("the endpoint's page")
        .to_owned();
    let created = control_plane.get(&id).await?;
    assert_eq!(created.tenant, "shop-a");
    assert_eq!(created.event_types, ["order.created"]);
    let shop_a = control_plane.subscriptions_of("shop-a").await?;
    assert_eq!(
        shop_a.iter().filter(|s| s.url == created.url).count(),
        1,
        "{shop_a:?}"
    );
    assert_eq!(created.format, pb::Format::Xml as i32);
    control_plane
        .wait_applied(created.revision, Duration::from_secs(10))
        .await?;

    // Another tenant's endpoint does not exist here.
    browser
        .open(&format!("{}endpoints/{}", minted.url, other.id))
        .await?;
    let page = browser.page_text().await?;
    assert!(
        page.contains("Not Found") && !page.contains("shop-b-secret-hook"),
        "{page}"
    );

    // A test event shows at once what the endpoint answers (500 here), signed as
    // deliveries are.
    browser
        .open(&format!("{}endpoints/{id}", minted.url))
        .await?;
    browser
        .click("#test-type option[value='order.created']")
        .await?;
    browser.click("#send-test").await?;
    browser.wait_url(&format!("/endpoints/{id}/test")).await?;
    let result = browser.text("#test-result").await?;
    assert!(
        result.contains("not delivered") && result.contains("answered 500"),
        "{result}"
    );
    let tested = receiver
        .wait_for_requests(1, Duration::from_secs(10))
        .await?;
    assert_eq!(tested[0].path, "/shop-a");
    assert_eq!(tested[0].headers["webhook-event-type"], "order.created");
    // A reload of the result shows it again and sends nothing.
    let shown = browser.url().await?;
    browser.open(&shown).await?;
    assert_eq!(browser.text("#test-result").await?, result);
    assert_eq!(receiver.requests().len(), 1, "a reload sends no other test");

    // A failing request shows with its error, on the list and on its own page.
    let emitted = agent
        .emit(event(
            "shop-a",
            "order.created",
            &serde_json::json!({"id": 1}),
        ))
        .await?;
    let log = format!("{}deliveries", minted.url);
    eventually(
        Duration::from_secs(15),
        "the failed request in the portal",
        || async {
            browser.open(&log).await?;
            let rows = browser.text("#attempts").await?;
            Ok((rows.contains("500") && rows.contains(&emitted.event_id)).then_some(()))
        },
    )
    .await?;
    // Each request names the endpoint it went to (a shop may have several).
    let rows = browser.text("#attempts").await?;
    assert!(rows.contains(&receiver.url("/shop-a")), "{rows}");
    assert!(!browser.page_text().await?.contains("shop-b-secret-hook"));
    browser
        .click(&format!("a[href$='/events/{}']", emitted.event_id))
        .await?;
    browser
        .wait_url(&format!("/events/{}", emitted.event_id))
        .await?;
    assert!(browser.page_text().await?.contains("http_status"));
    // With the body it was sent, as the log keeps it (XML, as the endpoint asked).
    browser.click("details.body summary").await?;
    let body = browser.text("details.body pre").await?;
    assert!(
        body.starts_with("<?xml") && body.contains("order.created"),
        "{body}"
    );

    // A filter that does not read is said at the form that holds it.
    browser.open(&format!("{log}?since=yesterday")).await?;
    let refusal = browser.text("#filter-error").await?;
    assert!(refusal.contains("since"), "{refusal}");
    assert_eq!(
        browser.attribute("input[name=since]", "value").await?,
        "yesterday"
    );

    // Disable, re-enable, and send the failed one again once the server is fixed.
    browser
        .open(&format!("{}endpoints/{id}", minted.url))
        .await?;
    browser.click("#disable").await?;
    browser.wait_url("done=disabled").await?;
    assert_eq!(browser.text("#state").await?, "disabled");
    browser.click("#enable").await?;
    browser.wait_url("done=enabled").await?;
    assert_eq!(browser.text("#state").await?, "active");
    receiver.respond_with(200);
    let before = receiver.requests().len();
    browser
        .open(&format!("{}events/{}", minted.url, emitted.event_id))
        .await?;
    browser.click("#replay").await?;
    browser.wait_url("done=replayed").await?;
    assert!(browser.text("#replay-note").await?.contains("queued again"));
    receiver
        .wait_for_requests(before + 1, Duration::from_secs(10))
        .await?;

    // A read-only link shows the same and offers, and takes, no change.
    let read_only = link(&control_plane, "shop-a", true).await?;
    browser
        .open(&format!("{}endpoints/{id}", read_only.url))
        .await?;
    let page = browser.page_text().await?;
    assert!(page.contains(&receiver.url("/shop-a")), "{page}");
    for change in ["#reveal", "#disable", "#edit", "#rotate", "#send-test"] {
        assert!(
            !browser.has(change).await,
            "read-only, yet {change} is offered"
        );
    }
    let forged = client
        .post(format!("{}endpoints/{id}/disable", read_only.url))
        .send()
        .await?;
    assert_eq!(forged.status().as_u16(), 403);
    assert!(control_plane.get(&id).await?.enabled);

    // Event types it is not offered are refused in words for a shop: Herald's own, and one
    // the platform never registered (no talk of registering it).
    for (types, said) in [
        (
            "herald.*",
            "own events, which endpoints here do not receive",
        ),
        ("secret.thing", "an event type on the Event types page"),
    ] {
        let form = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs([
                ("url", receiver.url("/shop-a-other").as_str()),
                ("event_types", types),
                ("format", "json"),
            ])
            .finish();
        let page = client
            .post(format!("{}endpoints", minted.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await?
            .text()
            .await?;
        assert!(
            page.contains(said) && !page.contains("event-types create"),
            "{types}: {page}"
        );
    }

    // A form posted with fields the portal never shows sets none of them: egress, regions,
    // limits and labels are the platform's to set.
    let crafted_url = receiver.url("/shop-a-crafted");
    let form = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("url", crafted_url.as_str()),
            ("event_types", "order.created"),
            ("format", "json"),
            ("egress", "direct"),
            ("regions", "eu"),
            ("max_in_flight", "3"),
            ("labels", "owner=shop"),
            ("disable_after", "100"),
        ])
        .finish();
    let posted = client
        .post(format!("{}endpoints", minted.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await?;
    assert!(posted.status().is_success(), "{}", posted.status());
    let listed = control_plane.subscriptions_of("shop-a").await?;
    let crafted = listed
        .iter()
        .find(|s| s.url == crafted_url)
        .expect("created");
    assert_eq!(
        crafted.egress,
        pb::Egress::AgentDefault as i32,
        "{crafted:?}"
    );
    assert!(
        crafted.regions.is_empty() && crafted.labels.is_empty(),
        "{crafted:?}"
    );
    assert!(
        crafted.max_in_flight != 3 && crafted.disable_after != 100,
        "{crafted:?}"
    );

    // An endpoint the platform subscribed with a pattern keeps it when the shop edits
    // something else: the form shows the pattern beside the catalogue's types.
    let patterned = control_plane
        .create(subscription(
            "shop-a",
            &receiver.url("/shop-a-orders"),
            &["order.*"],
        ))
        .await?;
    browser
        .open(&format!("{}endpoints/{}/edit", minted.url, patterned.id))
        .await?;
    browser.fill("#description", "all orders").await?;
    browser.click("#save").await?;
    browser.wait_url("done=updated").await?;
    let edited = control_plane.get(&patterned.id).await?;
    assert_eq!(
        (edited.description.as_str(), edited.event_types.as_slice()),
        ("all orders", ["order.*".to_owned()].as_slice())
    );

    // An endpoint that signs in with the platform's OAuth2 client keeps its origin: the
    // tokens that client gets go only where the platform sent them.
    let signed_in = control_plane
        .create(pb::Subscription {
            oauth2: Some(pb::OAuth2 {
                token_url: receiver.url("/token"),
                client_id: "platform".into(),
                client_secret: "platform-client-secret".into(),
                ..Default::default()
            }),
            ..subscription("shop-a", &receiver.url("/shop-a-signed-in"), &["order.*"])
        })
        .await?;
    browser
        .open(&format!("{}endpoints/{}/edit", minted.url, signed_in.id))
        .await?;
    browser
        .fill("#url", "https://collector.example/elsewhere")
        .await?;
    browser.click("#save").await?;
    eventually(Duration::from_secs(10), "the move refused", || async {
        Ok(browser
            .page_text()
            .await?
            .contains("only the platform can move it")
            .then_some(()))
    })
    .await?;
    assert_eq!(
        control_plane.get(&signed_in.id).await?.url,
        signed_in.url,
        "not moved"
    );

    // An expired link and a forged one say so, and show nothing.
    let keyring = Keyring::parse(herald_tests::herald::shared_keyring())?;
    let grant = Grant {
        tenant: "shop-a".into(),
        read_only: false,
    };
    let expired = portal_link::mint(
        &keyring,
        &grant,
        SystemTime::now() - Duration::from_secs(7200),
        Duration::from_secs(3600),
    )?;
    browser.open(&format!("{base}{expired}")).await?;
    let page = browser.page_text().await?;
    assert!(
        page.contains("This link has expired") && !page.contains("shop-a"),
        "{page}"
    );
    // In the portal's look, the platform's name, not Herald's, and no console sign-in.
    assert_eq!(browser.text(".brand").await?, "Acme Shops");
    assert!(!browser.has("a[href='/login']").await, "{page}");
    let mut tampered = minted.url.clone();
    let at = base.len() + "/portal/".len() + 5;
    let swap = if &tampered[at..at + 1] == "A" {
        "B"
    } else {
        "A"
    };
    tampered.replace_range(at..at + 1, swap);
    browser.open(&tampered).await?;
    assert!(browser.page_text().await?.contains("not a valid"));
    let nowhere = client
        .get(format!("{}no-such-page", minted.url))
        .send()
        .await?;
    assert_eq!(nowhere.status().as_u16(), 404);
    let html = nowhere.text().await?;
    assert!(
        html.contains("<title>Not Found · Acme Shops</title>") && !html.contains("Herald"),
        "{html}"
    );
    let refused = client.get(&tampered).send().await?;
    assert_eq!(refused.status().as_u16(), 403);
    assert_eq!(
        refused.headers().get("cache-control").map(|v| v.as_bytes()),
        Some(&b"no-store"[..])
    );
    let html = refused.text().await?;
    assert!(
        html.contains("<title>Link not valid · Acme Shops</title>") && !html.contains("Herald"),
        "{html}"
    );
    browser.close().await?;
    Ok(())
}

#[tokio::test]
async fn expiring_a_tenants_links_ends_them_on_every_replica() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let etcd = Etcd::start().await?;
    let tokens =
        format!("admin {ADMIN} name=platform\nadmin {SHOP_B_ADMIN} name=shop-b tenants=shop-b\n");
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let http = HeldPort::new()?;
        let control_plane = ControlPlane::start_with_tokens_configured(
            ConfigStore::Etcd(vec![etcd.endpoint()]),
            &tokens,
            ADMIN,
            |config| config.http_listen = Some(http.addr()),
        )
        .await?;
        replicas.push((control_plane, http));
    }
    let (first, second) = (&replicas[0].0, &replicas[1].0);
    let client = reqwest::Client::new();
    // A page of a link, as opened on `replica`: its status and text.
    let open = |replica: usize, url: &str| {
        let (client, first_base) = (client.clone(), format!("http://{}", replicas[0].1.addr()));
        let url = url.replace(
            &first_base,
            &format!("http://{}", replicas[replica].1.addr()),
        );
        async move {
            let response = client.get(url).send().await?;
            anyhow::Ok((response.status().as_u16(), response.text().await?))
        }
    };
    let shop_a = link(first, "shop-a", false).await?;
    let shop_a_read_only = link(first, "shop-a", true).await?;
    let shop_b = link(first, "shop-b", false).await?;
    for replica in [0, 1] {
        for minted in [&shop_a, &shop_a_read_only, &shop_b] {
            let (status, _) = open(replica, &minted.url).await?;
            assert_eq!(status, 200, "{} on replica {replica}", minted.tenant);
        }
    }

    // Shop B's own admin may end only shop B's links.
    let mut shop_b_admin = PortalClient::new(
        herald_proto::bearer::Bearer::new(Some(SHOP_B_ADMIN))?
            .wrap(herald_tests::herald::connect(second.url()).await?),
    );
    let refused = shop_b_admin
        .expire_portal_links(pb::ExpirePortalLinksRequest {
            tenant: "shop-a".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    let refused = shop_b_admin
        .expire_portal_links(pb::ExpirePortalLinksRequest {
            tenant: "Shop A!".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");

    // The platform ends shop A's links on the second replica: both replicas refuse them,
    // read-only or not; shop B's still open, and a link made afterwards opens.
    let expired = PortalClient::new(second.channel().await?)
        .expire_portal_links(pb::ExpirePortalLinksRequest {
            tenant: "shop-a".into(),
        })
        .await?
        .into_inner();
    assert_eq!(expired.tenant, "shop-a");
    assert!(expired.before.is_some());
    for replica in [0, 1] {
        for minted in [&shop_a, &shop_a_read_only] {
            let (status, page) = open(replica, &minted.url).await?;
            assert_eq!(status, 403, "replica {replica}: {page}");
            assert!(
                page.contains("withdrawn") && !page.contains("shop-a"),
                "replica {replica}: {page}"
            );
        }
        let (status, _) = open(replica, &shop_b.url).await?;
        assert_eq!(status, 200, "shop B's link on replica {replica}");
    }
    let fresh = link(first, "shop-a", false).await?;
    for replica in [0, 1] {
        let (status, _) = open(replica, &fresh.url).await?;
        assert_eq!(status, 200, "a new link on replica {replica}");
    }
    // Ending them again is harmless, and moves the time on.
    let again = PortalClient::new(first.channel().await?)
        .expire_portal_links(pb::ExpirePortalLinksRequest {
            tenant: "shop-a".into(),
        })
        .await?
        .into_inner();
    let at = |t: &Option<prost_types::Timestamp>| t.map(|t| (t.seconds, t.nanos));
    assert!(at(&again.before) >= at(&expired.before));
    assert_eq!(open(1, &fresh.url).await?.0, 403);

    // Each expiry is in the audit log of the replica it was made on (each keeps its own
    // here), by whom and for which tenant.
    for replica in [first, second] {
        let entries = herald_proto::v1::audit_client::AuditClient::new(replica.channel().await?)
            .list_audit_entries(pb::ListAuditEntriesRequest::default())
            .await?
            .into_inner()
            .entries;
        let expiries: Vec<_> = entries
            .iter()
            .filter(|e| e.action == "portal.expire_links")
            .map(|e| (e.actor.as_str(), e.tenant.as_str()))
            .collect();
        assert_eq!(expiries, [("platform", "shop-a")]);
    }
    Ok(())
}

/// The text an HTML text node shows (the page's code has no markup, only entities).
fn text_of_html(html: &str) -> String {
    [
        ("&lt;", "<"),
        ("&gt;", ">"),
        ("&quot;", "\""),
        ("&#34;", "\""),
        ("&#39;", "'"),
        ("&#x27;", "'"),
        ("&amp;", "&"),
    ]
    .iter()
    .fold(html.to_owned(), |text, (entity, character)| {
        text.replace(entity, character)
    })
}

/// Runs the Python receiver code of an endpoint's portal page on `request` as it arrived,
/// and on the same request with one byte of its body changed; what `receive` answered each.
async fn run_sample_receiver(
    snippet: &str,
    request: &herald_tests::ReceivedRequest,
) -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("receiver.py"), snippet)?;
    std::fs::write(dir.path().join("body"), &request.body)?;
    let headers: serde_json::Map<String, serde_json::Value> = request
        .headers
        .iter()
        .map(|(name, value)| {
            let value = value.to_str().unwrap_or_default();
            (name.as_str().to_owned(), value.into())
        })
        .collect();
    std::fs::write(
        dir.path().join("headers.json"),
        serde_json::to_vec(&headers)?,
    )?;
    let harness = r#"
import json, sys, types
sys.path.insert(0, ".")
import receiver
body = open("body", "rb").read()
headers = json.load(open("headers.json"))
genuine = receiver.receive(types.SimpleNamespace(body=body, headers=headers))
changed = body[:-1] + bytes([body[-1] ^ 1])
forged = receiver.receive(types.SimpleNamespace(body=changed, headers=headers))
print(genuine, forged)
"#;
    let output = tokio::process::Command::new("/usr/bin/python3")
        .args(["-c", harness])
        .current_dir(dir.path())
        .output()
        .await?;
    anyhow::ensure!(
        output.status.success(),
        "the sample receiver failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?.trim().to_owned())
}

#[tokio::test]
async fn an_ed25519_endpoints_sample_receiver_verifies_its_requests_in_python() -> anyhow::Result<()>
{
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = HeldPort::new()?;
    let world = World::start_configured(|config| config.http_listen = Some(http.addr())).await?;
    let World {
        control_plane,
        agent,
        receiver,
        ..
    } = &world;
    let mut sub = subscription("shop-ed", &receiver.url("/erp"), &["invoice.*"]);
    sub.signature_scheme = pb::SignatureScheme::Ed25519 as i32;
    sub.format = pb::Format::Xml as i32;
    let sub = control_plane.create(sub).await?;
    control_plane
        .wait_applied(sub.revision, Duration::from_secs(10))
        .await?;
    agent
        .emit(event(
            "shop-ed",
            "invoice.created",
            &serde_json::json!({"invoice": "F-2026-7", "total": "19.99"}),
        ))
        .await?;
    let requests = receiver
        .wait_for_requests(1, Duration::from_secs(10))
        .await?;

    // The page's receiver code holds the public key (never the signing key), reads XML, and
    // run as a shop would run it, takes the request and refuses it changed.
    let page_url = format!(
        "{}endpoints/{}",
        link(control_plane, "shop-ed", false).await?.url,
        sub.id
    );
    let page = reqwest::get(&page_url).await?.text().await?;
    let snippet = page
        .split_once(r#"<pre class="excerpt" id="snippet">"#)
        .and_then(|(_, rest)| rest.split_once("</pre>"))
        .map(|(code, _)| text_of_html(code))
        .ok_or_else(|| anyhow::anyhow!("no receiver code on the page"))?;
    let public_key = &sub.secrets[0].public_key;
    assert!(snippet.contains(public_key.as_str()), "{snippet}");
    assert!(!snippet.contains("whsk_"), "{snippet}");
    assert!(snippet.contains("ElementTree"), "{snippet}");
    assert_eq!(
        run_sample_receiver(&snippet, &requests[0]).await?,
        "204 401"
    );
    Ok(())
}
