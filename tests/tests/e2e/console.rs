//! The operator console in a real browser (Debian's chromium): sign in with an API token,
//! create a subscription through the form, watch a failing endpoint's attempts, disable and
//! re-enable it, replay an event; changes without the session's CSRF token are refused.

use std::time::Duration;

use herald_proto::v1 as pb;
use herald_tests::{
    AgentAndReceiver, AgentOptions, Browser, ConfigStore, ControlPlane, HeldPort, event, eventually,
};

const ADMIN: &str = "admin-console-5c1e8a2f7b3d";
const READER: &str = "read-console-8f2b6d1c4a9e";
const SHOP_ADMIN: &str = "admin-shop-console-2d7f9b4e1a6c";

/// A control plane serving the console (tokens for an admin `ops`, a reader `auditor`, an
/// admin of tenant `shop-1` and the agent), its agent and a receiver.
struct Console {
    control_plane: ControlPlane,
    agent: herald_tests::Agent,
    receiver: herald_tests::Receiver,
    /// The console's address, `http://host:port`.
    base: String,
    _http: HeldPort,
}

impl Console {
    async fn start() -> anyhow::Result<Console> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = HeldPort::new()?;
        let control_plane = ControlPlane::start_with_tokens_configured(
            ConfigStore::Embedded,
            &format!(
                "admin {ADMIN} name=ops\nread {READER} name=auditor\n\
                 admin {SHOP_ADMIN} name=shop-ops tenants=shop-1\nagent agent-console-token\n"
            ),
            ADMIN,
            |config| config.http_listen = Some(http.addr()),
        )
        .await?;
        let AgentAndReceiver {
            agent, receiver, ..
        } = AgentAndReceiver::start(
            control_plane.url(),
            AgentOptions {
                control_plane_token: Some("agent-console-token".into()),
                ..Default::default()
            },
        )
        .await?;
        Ok(Console {
            base: format!("http://{}", http.addr()),
            control_plane,
            agent,
            receiver,
            _http: http,
        })
    }
}

#[tokio::test]
async fn an_operator_manages_a_failing_endpoint_from_the_console() -> anyhow::Result<()> {
    let Console {
        control_plane,
        agent,
        receiver,
        base,
        _http,
    } = Console::start().await?;
    receiver.respond_with(500);
    let browser = Browser::start().await?;

    // Any page asks for a sign-in first; a wrong token is refused with a reason.
    browser.open(&format!("{base}/subscriptions")).await?;
    assert!(
        browser.url().await?.contains("/login"),
        "{}",
        browser.url().await?
    );
    browser.fill("#token", "not-a-token").await?;
    browser.click("#sign-in").await?;
    assert!(!browser.text("#login-error").await?.is_empty());
    browser.fill("#token", ADMIN).await?;
    browser.click("#sign-in").await?;
    browser.wait_url("/subscriptions").await?;
    assert!(
        browser.page_text().await?.contains("ops"),
        "the signed-in name"
    );

    // Create a subscription through the form; its page shows the secret once asked.
    browser.click("#new-subscription").await?;
    browser.fill("#tenant", "shop-a").await?;
    browser.fill("#url", &receiver.url("/orders")).await?;
    browser.fill("#other_patterns", "order.*").await?;
    browser.fill("#description", "orders to the ERP").await?;
    // The form posted twice at once before the click (a double click, a page reloaded): the
    // three posts make one subscription.
    browser.post_form_twice("form.form").await?;
    browser.click("#save").await?;
    browser.wait_url("show_secrets").await?;
    let page = browser.page_text().await?;
    assert!(page.contains("Subscription created"), "{page}");
    assert!(browser.text("code.secret").await?.starts_with("whsec_"));
    let id = browser
        .url()
        .await?
        .split("/subscriptions/")
        .nth(1)
        .and_then(|rest| rest.split('?').next())
        .expect("the subscription's page")
        .to_owned();
    let created = control_plane.get(&id).await?;
    assert_eq!(created.description, "orders to the ERP");
    let listed = control_plane.subscriptions_of("shop-a").await?;
    assert_eq!(listed.len(), 1, "{listed:?}");
    control_plane
        .wait_applied(created.revision, Duration::from_secs(10))
        .await?;

    // The endpoint fails; its attempts show with their status and error.
    let emitted = agent
        .emit(event(
            "shop-a",
            "order.created",
            &serde_json::json!({"id": 7}),
        ))
        .await?;
    let log = format!("{base}/deliveries?subscription_id={id}");
    eventually(
        Duration::from_secs(15),
        "the failed attempt in the log",
        || async {
            browser.open(&log).await?;
            let rows = browser.text("#attempts").await?;
            Ok((rows.contains("500") && rows.contains(&emitted.event_id)).then_some(()))
        },
    )
    .await?;
    // A filter that does not read is said at the form that holds it, the filters kept.
    browser.open(&format!("{log}&since=yesterday")).await?;
    let refusal = browser.text("#filter-error").await?;
    assert!(refusal.contains("since"), "{refusal}");
    assert_eq!(
        browser.attribute("input[name=since]", "value").await?,
        "yesterday"
    );
    assert_eq!(
        browser
            .attribute("input[name=subscription_id]", "value")
            .await?,
        id
    );
    browser
        .open(&format!("{base}/events/{}", emitted.event_id))
        .await?;
    let detail = browser.page_text().await?;
    assert!(
        detail.contains("http_status") && detail.contains(&receiver.url("/orders")),
        "{detail}"
    );
    // The request's headers as sent: the event id, the signature's scheme with its value masked.
    browser.click("details.headers summary").await?;
    let headers = browser.text("details.headers").await?;
    assert!(
        headers.contains("webhook-id") && headers.contains(&emitted.event_id),
        "{headers}"
    );
    assert!(
        headers.contains("v1,… (masked)") && headers.contains("application/json"),
        "{headers}"
    );

    // Disable it, then re-enable it sending what was parked.
    browser.open(&format!("{base}/subscriptions/{id}")).await?;
    browser
        .fill("input[name=reason]", "ERP maintenance")
        .await?;
    browser.click("#disable").await?;
    browser.wait_url("done=disabled").await?;
    assert_eq!(browser.text("#state").await?, "disabled");
    assert!(!control_plane.get(&id).await?.enabled);
    // The event's page says its delivery waits parked, not at its last attempt's retry time.
    browser
        .open(&format!("{base}/events/{}", emitted.event_id))
        .await?;
    let detail = browser.page_text().await?;
    assert!(
        detail.contains("parked: the subscription is disabled"),
        "{detail}"
    );
    browser.open(&format!("{base}/subscriptions/{id}")).await?;
    // Sending what was parked is the default, as on the portal: nothing is skipped unasked.
    assert!(browser.has("#replay-parked:checked").await);
    browser.click("#enable").await?;
    browser.wait_url("done=enabled").await?;
    assert_eq!(browser.text("#state").await?, "enabled");

    // The receiver recovers; a replay from the event's page delivers it again.
    receiver.respond_with(200);
    let before = receiver.requests().len();
    browser
        .open(&format!("{base}/events/{}", emitted.event_id))
        .await?;
    browser.click("#replay").await?;
    browser.wait_url("done=replayed").await?;
    assert!(browser.text("#replay-note").await?.contains("queued again"));
    receiver
        .wait_for_requests(before + 1, Duration::from_secs(10))
        .await?;

    // A test event from the subscription's page (a type its pattern selects, typed in: the
    // catalogue is empty) says what the endpoint answered, and is logged as a test.
    let before = receiver.requests().len();
    browser.open(&format!("{base}/subscriptions/{id}")).await?;
    browser.fill("#test-type", "order.paid").await?;
    browser.click("#send-test").await?;
    browser
        .wait_url(&format!("/subscriptions/{id}/test"))
        .await?;
    let result = browser.text("#test-result").await?;
    assert!(
        result.contains("(order.paid) delivered") && result.contains("answered 200"),
        "{result}"
    );
    // (The parked delivery the enable sent, or the replay's, may still land after `before`.)
    eventually(
        Duration::from_secs(10),
        "the test event received",
        || async {
            let received = receiver.requests();
            Ok(received[before..]
                .iter()
                .any(|r| r.headers["webhook-event-type"] == "order.paid")
                .then_some(()))
        },
    )
    .await?;
    let tests = control_plane
        .attempts(herald_tests::attempts_of(&id))
        .await?
        .into_iter()
        .filter(|a| a.test && a.event_type == "order.paid")
        .count();
    assert_eq!(tests, 1);
    // The result has an address of its own: a reload shows it again and sends nothing.
    let shown = browser.url().await?;
    assert!(shown.contains("/test?event=evt_"), "{shown}");
    browser.open(&shown).await?;
    assert_eq!(browser.text("#test-result").await?, result);
    let tests = control_plane
        .attempts(herald_tests::attempts_of(&id))
        .await?
        .into_iter()
        .filter(|a| a.test)
        .count();
    assert_eq!(tests, 1, "a reload sends no other test");

    // A change posted without the session's CSRF token, or from another site, is refused.
    let cookie = browser.client.get_named_cookie("herald_session").await?;
    let client = reqwest::Client::new();
    let post = |body: &'static str, origin: Option<&'static str>| {
        let mut request = client
            .post(format!("{base}/subscriptions/{id}/disable"))
            .header("cookie", format!("herald_session={}", cookie.value()))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        request.send()
    };
    assert_eq!(post("reason=forged", None).await?.status().as_u16(), 403);
    assert_eq!(
        post("reason=forged&csrf=guess", None)
            .await?
            .status()
            .as_u16(),
        403
    );
    assert_eq!(
        post("reason=forged", Some("https://evil.example"))
            .await?
            .status()
            .as_u16(),
        403
    );
    assert!(
        control_plane.get(&id).await?.enabled,
        "nothing forged went through"
    );

    // An edit the API refuses comes back with what was typed, the tenant shown, and the
    // delivery options open, where the refused field is.
    browser
        .open(&format!("{base}/subscriptions/{id}/edit"))
        .await?;
    browser.click("details summary").await?;
    browser.fill("#timeout", "banana").await?;
    browser.click("#save").await?;
    let refusal = browser.text("#form-error").await?;
    assert!(refusal.starts_with("Timeout per attempt: "), "{refusal}");
    let form = browser.page_text().await?;
    assert!(form.contains("Tenant: shop-a"), "{form}");
    assert!(browser.has("details[open] #timeout").await, "{form}");
    // A refusal of the API's own rules names the field by its label too.
    browser.fill("#timeout", "").await?;
    browser.fill("#url", "ftp://shop-a.example/orders").await?;
    browser.click("#save").await?;
    // The same form comes back: wait for its new refusal, not the one it showed before.
    eventually(
        Duration::from_secs(10),
        "the URL's refusal on the form",
        || async {
            let refusal = browser.text("#form-error").await?;
            Ok(refusal.starts_with("Endpoint URL: ").then_some(()))
        },
    )
    .await?;

    // Deleting asks for the box to be ticked; a post without it deletes nothing.
    let unconfirmed = client
        .post(format!("{base}/subscriptions/{id}/delete"))
        .header("cookie", format!("herald_session={}", cookie.value()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "csrf={}&revision={}",
            browser.attribute("input[name=csrf]", "value").await?,
            control_plane.get(&id).await?.revision
        ))
        .send()
        .await?;
    assert!(
        !unconfirmed.status().is_success(),
        "{}",
        unconfirmed.status()
    );
    assert!(control_plane.get(&id).await.is_ok(), "still there");

    // Signing out ends the session.
    browser.click(".signout button").await?;
    browser.wait_url("/login").await?;
    browser.open(&format!("{base}/subscriptions/{id}")).await?;
    browser.wait_url("/login").await?;

    // A read token sees, and is offered no change.
    browser.fill("#token", READER).await?;
    browser.click("#sign-in").await?;
    browser.wait_url(&format!("/subscriptions/{id}")).await?;
    let page = browser.page_text().await?;
    assert!(page.contains("orders to the ERP"), "{page}");
    assert!(
        !page.contains("Rotate secret")
            && !page.contains("Edit")
            && !page.contains("Send a test event"),
        "{page}"
    );
    // Nor is it handed a form it could not save.
    browser
        .open(&format!("{base}/subscriptions/{id}/edit"))
        .await?;
    let page = browser.page_text().await?;
    assert!(
        page.contains("may read, not change") && !browser.has("#save").await,
        "{page}"
    );
    // It may still sign out.
    browser.open(&format!("{base}/subscriptions/{id}")).await?;
    browser.click(".signout button").await?;
    browser.wait_url("/login").await?;
    browser.open(&format!("{base}/subscriptions/{id}")).await?;
    browser.wait_url("/login").await?;

    // What every tenant shares (the agents, changes to the catalogue) is offered to an admin
    // of every tenant, not to one of some tenants, whom the API would refuse.
    for (token, every_tenant) in [(SHOP_ADMIN, false), (ADMIN, true)] {
        browser.open(&format!("{base}/event-types")).await?;
        browser.wait_url("/login").await?;
        browser.fill("#token", token).await?;
        browser.click("#sign-in").await?;
        browser.wait_url("/event-types").await?;
        assert_eq!(browser.has("#register").await, every_tenant, "{token}");
        assert_eq!(
            browser.has("a[href='/agents']").await,
            every_tenant,
            "{token}"
        );
        browser.click(".signout button").await?;
        browser.wait_url("/login").await?;
    }
    browser.close().await?;
    Ok(())
}

#[tokio::test]
async fn an_event_with_more_attempts_than_its_page_shows_links_to_the_rest() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = HeldPort::new()?;
    let control_plane = ControlPlane::start_configured(ConfigStore::Embedded, |config| {
        config.http_listen = Some(http.addr())
    })
    .await?;
    let base = format!("http://{}", http.addr());
    let sub = control_plane
        .create(herald_tests::subscription(
            "shop-1",
            "https://127.0.0.1:9/orders",
            &["order.*"],
        ))
        .await?;

    // One event retried 250 times, as its agent would report the attempts.
    let attempts = (1..=250)
        .map(|n| pb::Attempt {
            event_id: "evt_retried".into(),
            subscription_id: sub.id.clone(),
            tenant: "shop-1".into(),
            event_type: "order.created".into(),
            attempt: n,
            agent_id: "agt_1".into(),
            started_at: Some(herald_proto::convert::timestamp(
                std::time::SystemTime::now(),
            )),
            status_code: 500,
            outcome: pb::Outcome::Retrying as i32,
            ..Default::default()
        })
        .collect();
    let batch = pb::ReportBatch {
        batch_id: 1,
        agent_id: "agt_1".into(),
        attempts,
    };
    let mut agent_control =
        pb::agent_control_client::AgentControlClient::new(control_plane.channel().await?);
    let ack = herald_tests::report(&mut agent_control, batch).await?;
    assert_eq!(ack.batch_id, 1);

    // The console (open here: signing in takes no token) shows the first 200 in full and
    // links to the log filtered by the event, where all of them page.
    let client = reqwest::Client::new();
    let cookie = herald_tests::open_console_session(&base).await?;
    let page = |url: String| {
        let request = client.get(url).header("cookie", cookie.clone());
        async move {
            let response = request.send().await?;
            anyhow::ensure!(response.status().is_success(), "{}", response.status());
            anyhow::Ok(response.text().await?)
        }
    };
    let event = page(format!("{base}/events/evt_retried")).await?;
    assert_eq!(event.matches("<article class=\"card attempt").count(), 200);
    assert!(event.contains("id=\"more-attempts\""), "{event}");
    assert!(
        event.contains("href=\"/deliveries?event_id=evt_retried\""),
        "{event}"
    );

    // The log pages back and forth: a later page links to the newest again.
    let first = page(format!("{base}/deliveries?event_id=evt_retried")).await?;
    assert!(
        !first.contains("id=\"newest\""),
        "the first page is the newest"
    );
    let older = link_of(&first, "older").expect("a link to older attempts");
    let second = page(format!("{base}{older}")).await?;
    let newest = link_of(&second, "newest").expect("a link back to the newest");
    assert!(
        newest.starts_with("/deliveries?") && newest.contains("event_id=evt_retried"),
        "{newest}"
    );
    assert!(!newest.contains("page_token"), "{newest}");

    // The shop's portal likewise, within the link.
    let link = herald_proto::v1::portal_client::PortalClient::new(control_plane.channel().await?)
        .create_portal_link(pb::CreatePortalLinkRequest {
            tenant: "shop-1".into(),
            ttl: None,
            read_only: true,
        })
        .await?
        .into_inner();
    let portal_event = page(format!("{}events/evt_retried", link.url)).await?;
    assert_eq!(
        portal_event
            .matches("<article class=\"card attempt")
            .count(),
        200
    );
    let path = link.url.trim_start_matches(&base).trim_end_matches('/');
    assert!(
        portal_event.contains(&format!("href=\"{path}/deliveries?event_id=evt_retried\"")),
        "{portal_event}"
    );
    Ok(())
}

/// The address of the link with this `id` in `html` (its entities read).
fn link_of(html: &str, id: &str) -> Option<String> {
    let end = html.find(&format!("\" id=\"{id}\""))?;
    let start = html[..end].rfind("href=\"")? + "href=\"".len();
    Some(html[start..end].replace("&#38;", "&").replace("&amp;", "&"))
}

#[tokio::test]
async fn signing_out_ends_the_session_everywhere_and_the_live_log_pages_without_gaps()
-> anyhow::Result<()> {
    let Console {
        control_plane,
        agent,
        receiver,
        base,
        _http,
    } = Console::start().await?;
    let created = control_plane
        .create(herald_tests::subscription(
            "shop-a",
            &receiver.url("/orders"),
            &["order.*"],
        ))
        .await?;
    control_plane
        .wait_applied(created.revision, Duration::from_secs(10))
        .await?;
    let emit = |from: usize, to: usize| {
        let agent = &agent;
        async move {
            for n in from..to {
                let mut order = event("shop-a", "order.created", &serde_json::json!({ "n": n }));
                order.id = format!("order-{n:03}");
                agent.emit(order).await?;
            }
            anyhow::Ok(())
        }
    };
    let log = format!("{base}/deliveries?tenant=shop-a");
    let logged = |n: usize| {
        let control_plane = &control_plane;
        async move {
            eventually(Duration::from_secs(20), "the attempts logged", || async {
                let page = control_plane
                    .deliveries()
                    .await?
                    .list_attempts(pb::ListAttemptsRequest {
                        filter: Some(pb::AttemptFilter {
                            tenant: "shop-a".into(),
                            ..Default::default()
                        }),
                        page_size: 1000,
                        page_token: String::new(),
                    })
                    .await?
                    .into_inner();
                Ok((page.attempts.len() >= n).then_some(()))
            })
            .await
        }
    };
    emit(0, 60).await?;
    logged(60).await?;

    let browser = Browser::start().await?;
    browser.open(&log).await?;
    browser.fill("#token", ADMIN).await?;
    browser.click("#sign-in").await?;
    browser.wait_url("/deliveries").await?;
    let older_at_load = browser.attribute("#older", "href").await?;

    // Newer attempts arrive while the first page is open: the live update brings them and the
    // link to older ones with them, so paging on shows every attempt once.
    emit(60, 75).await?;
    logged(75).await?;
    eventually(Duration::from_secs(15), "the live update", || async {
        let older = browser.attribute("#older", "href").await?;
        Ok((older != older_at_load).then_some(()))
    })
    .await?;
    let mut seen = std::collections::BTreeSet::new();
    loop {
        let rows = browser.text("#attempts").await?;
        for word in rows.split_whitespace() {
            if word.starts_with("order-") {
                assert!(seen.insert(word.to_owned()), "{word} shown twice");
            }
        }
        if !browser.has("#older").await {
            break;
        }
        browser.click("#older").await?;
        browser.wait_url("page_token").await?;
    }
    assert_eq!(seen.len(), 75, "every attempt shown once: {seen:?}");

    // A copy of the session's cookie works until the session is signed out of, then nowhere.
    browser.open(&log).await?;
    browser.text("#attempts").await?;
    let cookie = browser
        .cookie("herald_session")
        .await?
        .expect("a session cookie");
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let get = |path: &str| {
        client
            .get(format!("{base}{path}"))
            .header("cookie", &cookie)
            .send()
    };
    assert_eq!(get("/subscriptions").await?.status(), 200);
    // A test send's address, visited (a reload, Back), leads to its page and sends nothing;
    // another form's address says it is no page.
    let visited = get(&format!("/subscriptions/{}/test", created.id)).await?;
    assert_eq!(visited.status(), 303);
    assert_eq!(
        visited.headers()["location"].to_str()?,
        format!("/subscriptions/{}", created.id)
    );
    // So does one naming an event that was no test of it.
    let visited = get(&format!(
        "/subscriptions/{}/test?event=evt_01NOSUCHEVENT0000000000000",
        created.id
    ))
    .await?;
    assert_eq!(visited.status(), 303);
    let wrong = client
        .get(format!("{base}/subscriptions/{}/disable", created.id))
        .header("cookie", &cookie)
        .header("accept", "text/html")
        .send()
        .await?;
    assert_eq!(wrong.status(), 405);
    assert!(wrong.text().await?.contains("Not a page"));
    let signed_out = client
        .post(format!("{base}/logout"))
        .header("cookie", &cookie)
        .send()
        .await?;
    assert_eq!(signed_out.status(), 303);
    let refused = get("/subscriptions").await?;
    assert_eq!(refused.status(), 303, "the copy no longer opens pages");
    assert!(
        refused.headers()["location"]
            .to_str()?
            .starts_with("/login"),
        "{refused:?}"
    );

    // The open page's next live update takes the whole window to the sign-in, to come back to
    // the log, rather than the sign-in page into the table.
    let url = browser.wait_url("/login").await?;
    assert!(url.contains("next=%2Fdeliveries"), "{url}");
    assert!(
        !browser.has("#attempts").await,
        "no log in the sign-in page"
    );

    // A change posted with the ended session comes back to the page it was posted from.
    let posted = client
        .post(format!("{base}/subscriptions/{}/disable", created.id))
        .header("cookie", &cookie)
        .header("referer", format!("{base}/subscriptions/{}", created.id))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("reason=x")
        .send()
        .await?;
    assert_eq!(posted.status(), 303);
    assert_eq!(
        posted.headers()["location"].to_str()?,
        format!("/login?next=%2Fsubscriptions%2F{}", created.id)
    );
    assert!(control_plane.get(&created.id).await?.enabled);
    browser.close().await
}
