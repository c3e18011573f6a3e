//! The HTTP API: the same operations, scope and refusals as gRPC, in JSON, with problem+json
//! errors and an OpenAPI document made from the code, over plain HTTP and over TLS.

use herald_control_plane::ServerTls;
use herald_tests::tls::CertUse;
use std::time::Duration;

use herald_tests::{
    AgentAndReceiver, AgentOptions, ConfigStore, ControlPlane, HeldPort, TestCa, event, eventually,
    subscription,
};
use reqwest::Method;
use serde_json::{Value, json};

const ADMIN: &str = "admin-rest-7e2b9c4a1f6d";
const SHOP_B: &str = "read-rest-b-3f8a1d6c9e2b";
const SHOP_B_ADMIN: &str = "admin-rest-b-9d2e6f1a4c7b";

fn tokens() -> String {
    format!(
        "admin {ADMIN} name=ops\nread {SHOP_B} name=shop-b-reader tenants=shop-b\n\
         admin {SHOP_B_ADMIN} name=shop-b-admin tenants=shop-b\n"
    )
}

/// A plain HTTP client (reqwest needs the process's TLS provider even for plain HTTP).
fn plain_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// A request of `method` to `path` with `token` and a JSON `body`: the status, the content
/// type and the JSON answer (null when there is none).
async fn call(
    client: &reqwest::Client,
    method: reqwest::Method,
    base: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> anyhow::Result<(u16, String, Value)> {
    let mut request = client.request(method, format!("{base}{path}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(serde_json::to_vec(body)?);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response.text().await?;
    let value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&body)?
    };
    Ok((status, content_type, value))
}

/// A GET of `path` with `token`.
async fn get(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    token: Option<&str>,
) -> anyhow::Result<(u16, String, Value)> {
    call(client, reqwest::Method::GET, base, path, token, None).await
}

#[tokio::test]
async fn the_http_api_answers_as_grpc_does() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = HeldPort::new()?;
    let control_plane = ControlPlane::start_with_tokens_configured(
        ConfigStore::Embedded,
        &tokens(),
        ADMIN,
        |config| config.http_listen = Some(http.addr()),
    )
    .await?;
    let sub_a = control_plane
        .create(subscription(
            "shop-a",
            "https://127.0.0.1:9/a",
            &["order.*"],
        ))
        .await?;
    let sub_b = control_plane
        .create(subscription(
            "shop-b",
            "https://127.0.0.1:9/b",
            &["order.*"],
        ))
        .await?;
    let base = format!("http://{}", http.addr());
    let client = plain_client();

    // The OpenAPI document needs no token.
    let (status, _, openapi) = get(&client, &base, "/api/v1/openapi.json", None).await?;
    assert_eq!(status, 200);
    assert_eq!(openapi["openapi"], "3.1.0");
    assert!(openapi["paths"]["/api/v1/subscriptions/{id}"]["get"].is_object());

    // No token: 401 as problem+json.
    let (status, content_type, problem) =
        get(&client, &base, "/api/v1/subscriptions", None).await?;
    assert_eq!(
        (status, content_type.as_str()),
        (401, "application/problem+json")
    );
    assert_eq!(problem["code"], "UNAUTHENTICATED");
    assert_eq!(problem["status"], 401);

    // The operator sees both; the scoped reader shop B's only.
    let (status, _, all) = get(&client, &base, "/api/v1/subscriptions", Some(ADMIN)).await?;
    assert_eq!(status, 200);
    assert_eq!(all["subscriptions"].as_array().map(Vec::len), Some(2));
    let (_, _, scoped) = get(&client, &base, "/api/v1/subscriptions", Some(SHOP_B)).await?;
    let tenants: Vec<&str> = scoped["subscriptions"]
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|s| s["tenant"].as_str())
        .collect();
    assert_eq!(tenants, ["shop-b"]);

    // One subscription: secrets only for an admin that asks; another tenant's is not found,
    // with the words an unknown id gets.
    let path = |id: &str| format!("/api/v1/subscriptions/{id}");
    let (status, _, read) = get(&client, &base, &path(&sub_b.id), Some(SHOP_B)).await?;
    assert_eq!(status, 200);
    assert_eq!(read["format"], "json");
    assert_eq!(read["revision"], sub_b.revision);
    assert!(read["secrets"][0]["secret"].is_null(), "{read}");
    let (_, _, shown) = get(
        &client,
        &base,
        &format!("{}?show_secrets=true", path(&sub_a.id)),
        Some(ADMIN),
    )
    .await?;
    assert!(
        shown["secrets"][0]["secret"]
            .as_str()
            .is_some_and(|s| s.starts_with("whsec_"))
    );
    let (status, _, refused) = get(
        &client,
        &base,
        &format!("{}?show_secrets=true", path(&sub_b.id)),
        Some(SHOP_B),
    )
    .await?;
    assert_eq!(
        (status, refused["code"].as_str()),
        (403, Some("PERMISSION_DENIED"))
    );
    let (status, _, hidden) = get(&client, &base, &path(&sub_a.id), Some(SHOP_B)).await?;
    let (_, _, unknown) = get(
        &client,
        &base,
        &path("sub_01NOSUCHSUBSCRIPTION00000"),
        Some(SHOP_B),
    )
    .await?;
    assert_eq!(status, 404);
    assert_eq!(
        hidden["detail"]
            .as_str()
            .map(|d| d.replace(&sub_a.id, "ID")),
        unknown["detail"]
            .as_str()
            .map(|d| d.replace("sub_01NOSUCHSUBSCRIPTION00000", "ID"))
    );
    let (status, _, bad) = get(
        &client,
        &base,
        &format!("{}?show_secrets=maybe", path(&sub_b.id)),
        Some(SHOP_B),
    )
    .await?;
    assert_eq!(
        (status, bad["code"].as_str()),
        (400, Some("INVALID_ARGUMENT"))
    );
    // A value the shared rules refuse names its field.
    let (status, _, refused) = call(
        &client,
        reqwest::Method::POST,
        &base,
        "/api/v1/subscriptions",
        Some(ADMIN),
        Some(&serde_json::json!({
            "tenant": "shop-a",
            "url": "ftp://shop-a.example/hooks",
            "event_types": ["order.created"],
        })),
    )
    .await?;
    assert_eq!(
        (status, refused["code"].as_str(), refused["field"].as_str()),
        (400, Some("INVALID_ARGUMENT"), Some("url")),
        "{refused}"
    );

    // The audit log, filtered and scoped as on gRPC.
    let (status, _, audit) = get(&client, &base, "/api/v1/audit?actor=ops", Some(ADMIN)).await?;
    assert_eq!(status, 200);
    assert_eq!(audit["entries"].as_array().map(Vec::len), Some(2));
    assert_eq!(audit["entries"][0]["action"], "subscription.create");
    let (_, _, scoped) = get(&client, &base, "/api/v1/audit", Some(SHOP_B)).await?;
    assert_eq!(scoped["entries"].as_array().map(Vec::len), Some(1));
    let (status, _, _) = get(&client, &base, "/api/v1/audit?since=yesterday", Some(ADMIN)).await?;
    assert_eq!(status, 400);
    // No actor's name holds a control character (PostgreSQL's text refuses NUL): refused on
    // either log, naming the field.
    let (status, _, refused) =
        get(&client, &base, "/api/v1/audit?actor=a%00b", Some(ADMIN)).await?;
    assert_eq!(
        (status, refused["field"].as_str()),
        (400, Some("actor")),
        "{refused}"
    );
    // RFC 3339 times take an offset (`+` percent-encoded in a query).
    let (status, _, offset) = get(
        &client,
        &base,
        "/api/v1/audit?actor=ops&since=2000-01-01T01:00:00%2B01:00",
        Some(ADMIN),
    )
    .await?;
    assert_eq!(status, 200, "{offset}");
    assert_eq!(offset["entries"].as_array().map(Vec::len), Some(2));
    // A time written right but before 1970 is refused for what it is.
    let (status, _, refused) = get(
        &client,
        &base,
        "/api/v1/audit?since=0001-01-01T00:00:00Z",
        Some(ADMIN),
    )
    .await?;
    assert_eq!(status, 400, "{refused}");
    assert!(
        refused["detail"]
            .as_str()
            .is_some_and(|d| d.contains("outside 1970-01-01")),
        "{refused}"
    );

    // A route that does not exist is a problem too.
    let (status, content_type, _) = get(&client, &base, "/api/v1/nothing", Some(ADMIN)).await?;
    assert_eq!(
        (status, content_type.as_str()),
        (404, "application/problem+json")
    );
    // Outside the API, a browser is shown a page and any other client the problem.
    let (status, content_type, _) = get(&client, &base, "/nothing", Some(ADMIN)).await?;
    assert_eq!(
        (status, content_type.as_str()),
        (404, "application/problem+json")
    );
    let page = client
        .get(format!("{base}/nothing"))
        .header("accept", "text/html,application/xhtml+xml,*/*;q=0.8")
        .send()
        .await?;
    assert_eq!(page.status(), 404);
    assert!(
        page.headers()["content-type"]
            .to_str()?
            .starts_with("text/html"),
        "{:?}",
        page.headers()
    );
    assert!(
        page.text()
            .await?
            .contains("There is no page at this address.")
    );
    // Where browsers look for an icon unasked, there is one.
    let icon = client.get(format!("{base}/favicon.ico")).send().await?;
    assert_eq!(
        (
            icon.status().as_u16(),
            icon.headers()["content-type"].to_str()?
        ),
        (200, "image/svg+xml")
    );
    let api = client
        .get(format!("{base}/api/v1/nothing"))
        .header("accept", "text/html,*/*")
        .send()
        .await?;
    assert_eq!(
        (
            api.status().as_u16(),
            api.headers()["content-type"].to_str()?
        ),
        (404, "application/problem+json"),
        "the API's paths answer as the API"
    );
    // So is a method a route does not have.
    let (status, content_type, problem) = call(
        &client,
        reqwest::Method::PATCH,
        &base,
        "/api/v1/subscriptions",
        Some(ADMIN),
        None,
    )
    .await?;
    assert_eq!(
        (status, content_type.as_str(), problem["code"].as_str()),
        (405, "application/problem+json", Some("UNIMPLEMENTED"))
    );

    // A gRPC client given this address instead of the gRPC API's is told so, in gRPC.
    let mut misdirected = herald_proto::v1::subscriptions_client::SubscriptionsClient::new(
        tonic::transport::Endpoint::from_shared(base.clone())?
            .connect()
            .await?,
    );
    let refused = misdirected
        .list_subscriptions(herald_proto::v1::ListSubscriptionsRequest::default())
        .await
        .expect_err("not the gRPC API");
    assert_eq!(refused.code(), tonic::Code::Unimplemented, "{refused:?}");
    assert!(
        refused.message().contains("--listen"),
        "{}",
        refused.message()
    );
    Ok(())
}

#[tokio::test]
async fn the_http_api_speaks_tls_to_http1_and_http2_clients() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = TestCa::new();
    let dir = tempfile::tempdir()?;
    let (cert, key) = ca.write_pair(dir.path(), "control-plane", CertUse::Server)?;
    let http = HeldPort::new()?;
    let mut control_plane = ControlPlane::start_with_tokens_configured(
        ConfigStore::Embedded,
        &tokens(),
        ADMIN,
        |config| {
            config.http_listen = Some(http.addr());
            config.tls = ServerTls {
                tls_cert_file: Some(cert),
                tls_key_file: Some(key),
                tls_client_ca_file: None,
            };
        },
    )
    .await?;
    let ca_file = ca.write_ca_pem(dir.path())?;
    control_plane.use_tls(
        herald_proto::client_tls::config(Some(&ca_file), None, None)?.expect("TLS settings"),
    );
    control_plane
        .create(subscription(
            "shop-b",
            "https://127.0.0.1:9/b",
            &["order.*"],
        ))
        .await?;
    let base = format!("https://localhost:{}", http.addr().port());
    let root = reqwest::Certificate::from_pem(ca.ca_pem().as_bytes())?;
    for http1 in [true, false] {
        let mut builder = reqwest::Client::builder().add_root_certificate(root.clone());
        builder = if http1 {
            builder.http1_only()
        } else {
            builder.http2_prior_knowledge()
        };
        let client = builder.build()?;
        let (status, _, listed) =
            get(&client, &base, "/api/v1/subscriptions", Some(SHOP_B)).await?;
        assert_eq!(status, 200, "http1 {http1}: {listed}");
        assert_eq!(listed["subscriptions"].as_array().map(Vec::len), Some(1));
    }
    // Plain HTTP to the TLS port gets nothing.
    let plain = reqwest::get(format!("http://{}/api/v1/openapi.json", http.addr())).await;
    assert!(plain.is_err() || plain.is_ok_and(|r| !r.status().is_success()));
    Ok(())
}

#[tokio::test]
async fn subscriptions_and_the_catalogue_are_managed_over_http_as_over_grpc() -> anyhow::Result<()>
{
    let http = HeldPort::new()?;
    let control_plane = ControlPlane::start_with_tokens_configured(
        ConfigStore::Embedded,
        &tokens(),
        ADMIN,
        |config| config.http_listen = Some(http.addr()),
    )
    .await?;
    let base = format!("http://{}", http.addr());
    let client = plain_client();
    let send = |method: Method, path: &str, token: &str, body: Option<Value>| {
        let (client, base, path, token) = (
            client.clone(),
            base.clone(),
            path.to_owned(),
            token.to_owned(),
        );
        async move { call(&client, method, &base, &path, Some(&token), body.as_ref()).await }
    };

    // Create: 201 with where it lives, its id and its secret, every option as written.
    let spec = json!({
        "tenant": "shop-b",
        "url": "https://127.0.0.1:9/orders",
        "event_types": ["order.*"],
        "filter": {"total": {"$gte": 100}},
        "format": "xml",
        "headers": {"X-Api-Key": "k-123"},
        "timeout": "20s",
        "retry": {"exponential": {"base": "5s", "factor": 2.0, "cap": "1h", "max_attempts": 6}},
        "disable_after": 5,
        "disable_min_failing": "30m",
        "labels": {"team": "orders"},
    });
    let response = client
        .post(format!(
            "{base}/api/v1/subscriptions?allow_unregistered=true"
        ))
        .bearer_auth(SHOP_B_ADMIN)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&spec)?)
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 201);
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let created: Value = serde_json::from_str(&response.text().await?)?;
    let id = created["id"].as_str().expect("an id").to_owned();
    assert_eq!(location, Some(format!("/api/v1/subscriptions/{id}")));
    assert!(
        created["secrets"][0]["secret"]
            .as_str()
            .is_some_and(|s| s.starts_with("whsec_"))
    );
    assert_eq!(created["format"], "xml");
    assert_eq!(created["timeout"], "20s");
    assert_eq!(created["retry"]["exponential"]["max_attempts"], 6);
    assert_eq!(created["disable_min_failing"], "30m");
    assert_eq!(created["filter"], json!({"total": {"$gte": 100}}));

    // Refusals, each with the gRPC API's code and words.
    let path = format!("/api/v1/subscriptions/{id}");
    let refusals = [
        // Another tenant's admin may not create for shop-a.
        (send(Method::POST, "/api/v1/subscriptions", SHOP_B_ADMIN,
              Some(json!({"tenant": "shop-a", "url": "https://127.0.0.1:9/a", "event_types": ["a.b"]}))).await?,
         403, "PERMISSION_DENIED"),
        // A reader may not change anything.
        (send(Method::POST, &format!("{path}/disable"), SHOP_B, None).await?, 403, "PERMISSION_DENIED"),
        // Validation is the shared rules'.
        (send(Method::POST, "/api/v1/subscriptions", ADMIN,
              Some(json!({"tenant": "shop-b", "url": "ftp://x", "event_types": ["a.b"]}))).await?,
         400, "INVALID_ARGUMENT"),
        // A misspelt field is refused, not dropped.
        (send(Method::POST, "/api/v1/subscriptions", ADMIN,
              Some(json!({"tenant": "shop-b", "url": "https://127.0.0.1:9/a", "event_type": ["a.b"]}))).await?,
         400, "INVALID_ARGUMENT"),
        (send(Method::PUT, &path, ADMIN, Some(json!({"url": "https://127.0.0.1:9/a", "event_types": ["a.b"]}))).await?,
         400, "INVALID_ARGUMENT"),
        (send(Method::PUT, &path, ADMIN,
              Some(json!({"url": "https://127.0.0.1:9/a", "event_types": ["order.*"], "revision": 1}))).await?,
         409, "FAILED_PRECONDITION"),
        (send(Method::DELETE, &format!("{path}?revision=1"), ADMIN, None).await?, 409, "FAILED_PRECONDITION"),
        (send(Method::POST, &format!("{path}/rotate-secret"), ADMIN, Some(json!({"grace": "soon"}))).await?,
         400, "INVALID_ARGUMENT"),
    ];
    for (i, ((status, content_type, problem), want_status, want_code)) in
        refusals.into_iter().enumerate()
    {
        assert_eq!(
            (status, problem["code"].as_str()),
            (want_status, Some(want_code)),
            "refusal {i}: {problem}"
        );
        assert_eq!(content_type, "application/problem+json", "refusal {i}");
    }
    let (_, _, bad_url) = send(
        Method::POST,
        "/api/v1/subscriptions",
        ADMIN,
        Some(json!({"tenant": "shop-b", "url": "ftp://x", "event_types": ["a.b"]})),
    )
    .await?;
    let grpc = control_plane
        .create(subscription("shop-b", "ftp://x", &["a.b"]))
        .await
        .expect_err("the same refusal on gRPC");
    assert_eq!(
        bad_url["detail"].as_str(),
        grpc.downcast_ref::<tonic::Status>().map(|s| s.message())
    );
    // A body that is not JSON.
    let response = client
        .post(format!("{base}/api/v1/subscriptions"))
        .bearer_auth(ADMIN)
        .body("tenant=shop-b")
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 400);
    // A body over the API's limit (1 MiB): 413, as gRPC answers a message over its limit.
    let description = "x".repeat(2 * 1024 * 1024);
    let response = client
        .post(format!("{base}/api/v1/subscriptions"))
        .bearer_auth(ADMIN)
        .header("content-type", "application/json")
        .body(json!({"tenant": "shop-b", "description": description}).to_string())
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 413);
    let problem: serde_json::Value = serde_json::from_slice(&response.bytes().await?)?;
    assert_eq!(problem["code"], "RESOURCE_EXHAUSTED", "{problem}");
    assert_eq!(problem["status"], 413, "{problem}");

    // Update: a read sent back with one change keeps the rest, header values included.
    let (_, _, mut read) = send(Method::GET, &path, SHOP_B_ADMIN, None).await?;
    assert_eq!(read["headers"]["X-Api-Key"], "");
    read["description"] = json!("orders to the ERP");
    let (status, _, updated) = send(Method::PUT, &path, SHOP_B_ADMIN, Some(read)).await?;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["description"], "orders to the ERP");
    assert_eq!(updated["format"], "xml");
    assert_eq!(updated["retry"]["exponential"]["cap"], "1h");
    let (_, _, shown) = send(
        Method::GET,
        &format!("{path}?show_secrets=true"),
        SHOP_B_ADMIN,
        None,
    )
    .await?;
    assert_eq!(shown["headers"]["X-Api-Key"], "k-123");

    // Actions, with or without a body.
    let (status, _, disabled) = send(
        Method::POST,
        &format!("{path}/disable"),
        SHOP_B_ADMIN,
        Some(json!({"reason": "erp upgrade"})),
    )
    .await?;
    assert_eq!(
        (status, &disabled["enabled"], &disabled["disabled_reason"]),
        (200, &json!(false), &json!("erp upgrade"))
    );
    let (status, _, enabled) =
        send(Method::POST, &format!("{path}/enable"), SHOP_B_ADMIN, None).await?;
    assert_eq!((status, &enabled["enabled"]), (200, &json!(true)));
    assert!(enabled["skip_parked_before"].is_string(), "{enabled}");
    let (_, _, rotated) = send(
        Method::POST,
        &format!("{path}/rotate-secret"),
        SHOP_B_ADMIN,
        Some(json!({"grace": "1h"})),
    )
    .await?;
    assert_eq!(rotated["secrets"].as_array().map(Vec::len), Some(2));
    assert!(rotated["secrets"][1]["expires_at"].is_string(), "{rotated}");
    // A rotation answers the signing secrets it made, not the other secret values.
    assert!(!rotated.to_string().contains("k-123"), "{rotated}");
    // An empty action posted from another site's page is refused (a browser may attach
    // credentials of its own); the same from a client that names no site is taken.
    let forged = client
        .post(format!("{base}{path}/disable"))
        .bearer_auth(SHOP_B_ADMIN)
        .header("origin", "https://evil.example")
        .send()
        .await?;
    assert_eq!(forged.status().as_u16(), 403);
    let (status, _, still) = send(Method::GET, &path, SHOP_B, None).await?;
    assert_eq!((status, &still["enabled"]), (200, &json!(true)));
    let (status, _, health) = send(Method::GET, &format!("{path}/health"), SHOP_B, None).await?;
    assert_eq!((status, &health["consecutive_failures"]), (200, &json!(0)));

    // The catalogue: shared, so only a token of every tenant changes it.
    let order_paid =
        json!({"name": "order.paid", "description": "An order was paid", "example": {"id": 1}});
    let (status, _, _) = send(
        Method::POST,
        "/api/v1/event-types",
        SHOP_B_ADMIN,
        Some(order_paid.clone()),
    )
    .await?;
    assert_eq!(status, 403);
    let (status, _, created_type) = send(
        Method::POST,
        "/api/v1/event-types",
        ADMIN,
        Some(order_paid.clone()),
    )
    .await?;
    assert_eq!((status, &created_type["example"]["id"]), (201, &json!(1)));
    let (status, _, again) =
        send(Method::POST, "/api/v1/event-types", ADMIN, Some(order_paid)).await?;
    assert_eq!(
        (status, again["code"].as_str()),
        (409, Some("ALREADY_EXISTS"))
    );
    let (_, _, types) = send(Method::GET, "/api/v1/event-types", SHOP_B, None).await?;
    let names: Vec<&str> = types["event_types"]
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(
        names.contains(&"order.paid") && names.contains(&"herald.subscription.disabled"),
        "{names:?}"
    );
    let (status, _, one) =
        send(Method::GET, "/api/v1/event-types/order.paid", SHOP_B, None).await?;
    assert_eq!(
        (status, &one["description"]),
        (200, &json!("An order was paid"))
    );
    let (status, _, _) = send(Method::GET, "/api/v1/event-types/order.lost", SHOP_B, None).await?;
    assert_eq!(status, 404);

    // The fleet is every tenant's: not for a scoped token.
    let (status, _, agents) = send(Method::GET, "/api/v1/agents", ADMIN, None).await?;
    assert_eq!(
        (status, agents["agents"].as_array().map(Vec::len)),
        (200, Some(0))
    );
    let (status, _, _) = send(Method::GET, "/api/v1/agents", SHOP_B, None).await?;
    assert_eq!(status, 403);

    // Delete at the current revision; then it is gone.
    let revision = rotated["revision"].as_i64().expect("a revision");
    let (status, _, _) = send(
        Method::DELETE,
        &format!("{path}?revision={revision}"),
        SHOP_B_ADMIN,
        None,
    )
    .await?;
    assert_eq!(status, 204);
    let (status, _, _) = send(Method::GET, &path, ADMIN, None).await?;
    assert_eq!(status, 404);

    // Every change is in the audit log under the name of the token that made it.
    let (_, _, audit) = send(Method::GET, "/api/v1/audit?actor=shop-b-admin", ADMIN, None).await?;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        [
            "subscription.delete",
            "subscription.rotate_secret",
            "subscription.enable",
            "subscription.disable",
            "subscription.update",
            "subscription.create"
        ]
    );
    Ok(())
}

#[tokio::test]
async fn the_delivery_log_is_listed_followed_live_and_replayed_over_http() -> anyhow::Result<()> {
    let http = HeldPort::new()?;
    let control_plane = ControlPlane::start_configured(ConfigStore::Embedded, |config| {
        config.http_listen = Some(http.addr());
    })
    .await?;
    let AgentAndReceiver {
        agent, receiver, ..
    } = AgentAndReceiver::start(control_plane.url(), AgentOptions::default()).await?;
    receiver.respond_with(503);
    let mut sub = subscription("shop-a", &receiver.url("/hook"), &["order.*"]);
    sub.retry = Some(herald_proto::convert::retry_policy(
        &herald_core::retry::RetrySchedule::parse("50ms")?,
    ));
    let sub = control_plane.create(sub).await?;
    control_plane
        .wait_applied(sub.revision, Duration::from_secs(10))
        .await?;
    let base = format!("http://{}", http.addr());
    let client = plain_client();

    // Follow the log live before anything is sent.
    let mut live = client
        .get(format!(
            "{base}/api/v1/attempts/live?subscription_id={}",
            sub.id
        ))
        .send()
        .await?;
    assert_eq!(live.status().as_u16(), 200);
    assert!(
        live.headers()["content-type"]
            .to_str()?
            .starts_with("text/event-stream")
    );

    let emitted = agent
        .emit(event("shop-a", "order.created", &json!({"id": 42})))
        .await?;

    // The first attempt arrives on the live stream as an `attempt` event.
    let mut text = String::new();
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = live.chunk().await? {
            text.push_str(&String::from_utf8_lossy(&chunk));
            if let Some(data) = text
                .split("\n\n")
                .filter(|e| e.contains("event: attempt"))
                .find_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
            {
                return anyhow::Ok(serde_json::from_str::<Value>(data)?);
            }
        }
        anyhow::bail!("the stream ended: {text}")
    })
    .await??;
    assert_eq!(seen["event_id"], emitted.event_id.as_str());
    assert_eq!(
        (&seen["status_code"], &seen["outcome"], &seen["attempt"]),
        (&json!(503), &json!("retrying"), &json!(1))
    );
    assert!(
        seen["duration_ms"].as_f64().is_some_and(|ms| ms > 0.0),
        "{seen}"
    );

    // Listed with filters, newest first; a filter that does not read is refused.
    let listed = eventually(
        Duration::from_secs(10),
        "the attempt in the log",
        || async {
            let (_, _, page) = get(
                &client,
                &base,
                &format!(
                    "/api/v1/attempts?event_id={}&outcome=failed",
                    emitted.event_id
                ),
                None,
            )
            .await?;
            Ok(page["attempts"]
                .as_array()
                .filter(|a| !a.is_empty())
                .cloned())
        },
    )
    .await?;
    assert_eq!(listed[0]["url"], receiver.url("/hook").as_str());
    let (status, _, _) = get(&client, &base, "/api/v1/attempts?outcome=lost", None).await?;
    assert_eq!(status, 400);
    // By event-type pattern, status class and error kind.
    let (status, _, page) = get(
        &client,
        &base,
        "/api/v1/attempts?event_type=order.*&status=5xx&error_kind=status",
        None,
    )
    .await?;
    assert_eq!(status, 200);
    let attempts = page["attempts"].as_array().cloned().unwrap_or_default();
    assert!(
        attempts
            .iter()
            .any(|a| a["event_id"] == emitted.event_id.as_str())
            && attempts
                .iter()
                .all(|a| a["status_code"] == 503 && a["error_kind"] == "http_status"),
        "{page}"
    );
    for (query, count) in [
        ("event_type=product.*", 0),
        ("status=2xx", 0),
        ("error_kind=timeout", 0),
    ] {
        let (status, _, page) =
            get(&client, &base, &format!("/api/v1/attempts?{query}"), None).await?;
        assert_eq!(
            (status, page["attempts"].as_array().map(Vec::len)),
            (200, Some(count)),
            "{query}"
        );
    }
    for bad in ["status=6xx", "error_kind=slow", "event_type=Order"] {
        let (status, _, _) = get(&client, &base, &format!("/api/v1/attempts?{bad}"), None).await?;
        assert_eq!(status, 400, "{bad}");
    }

    // The receiver recovers; a replay sends the event again with the same id.
    receiver.respond_with(200);
    let (status, _, replayed) = call(
        &client,
        Method::POST,
        &base,
        "/api/v1/replays",
        None,
        Some(&json!({"event_id": emitted.event_id})),
    )
    .await?;
    assert_eq!(
        (status, &replayed["queued"]),
        (200, &json!(1)),
        "{replayed}"
    );
    let requests = receiver
        .wait_for_requests(2, Duration::from_secs(10))
        .await?;
    assert_eq!(
        requests[1].header(herald_core::signing::HEADER_ID),
        Some(emitted.event_id.as_str())
    );

    // The request as sent: once for the delivery, as the receiver got it; then expunged.
    let path = format!("/api/v1/events/{}/requests", emitted.event_id);
    let (status, _, sent) = get(&client, &base, &path, None).await?;
    assert_eq!(status, 200, "{sent}");
    let listed = sent["requests"].as_array().cloned().unwrap_or_default();
    let [request] = listed.as_slice() else {
        panic!("one request for the delivery: {sent}");
    };
    assert_eq!(
        request["body"].as_str().map(str::as_bytes),
        Some(requests[0].body.as_ref())
    );
    assert_eq!(
        (&request["attempt"], &request["body_cut"]),
        (&json!(1), &json!(false))
    );
    assert!(
        request["headers"]
            .as_array()
            .is_some_and(|h| h.contains(&json!({"name": "webhook-signature", "value": "(masked)"}))),
        "{request}"
    );
    let (status, _, expunged) = call(&client, Method::DELETE, &base, &path, None, None).await?;
    assert_eq!((status, &expunged["removed"]), (200, &json!(1)));
    let (status, _, problem) = get(&client, &base, &path, None).await?;
    assert_eq!((status, problem["code"].as_str()), (404, Some("NOT_FOUND")));
    Ok(())
}

#[tokio::test]
async fn every_route_refuses_callers_without_a_token_or_the_role() -> anyhow::Result<()> {
    let http = HeldPort::new()?;
    let _control_plane = ControlPlane::start_with_tokens_configured(
        ConfigStore::Embedded,
        &tokens(),
        ADMIN,
        |config| config.http_listen = Some(http.addr()),
    )
    .await?;
    let base = format!("http://{}", http.addr());
    let client = plain_client();
    let (_, _, openapi) = get(&client, &base, "/api/v1/openapi.json", None).await?;
    let mut checked = 0;
    for (template, item) in openapi["paths"].as_object().expect("paths") {
        let path = template
            .replace("{id}", "sub_01NOSUCHSUBSCRIPTION00000")
            .replace("{name}", "order.none")
            .replace("{event_id}", "evt_none");
        for verb in item.as_object().expect("operations").keys() {
            let method = Method::from_bytes(verb.to_uppercase().as_bytes())?;
            let body = (method != Method::GET && method != Method::DELETE).then(|| json!({}));
            for token in [None, Some("not-a-token")] {
                let (status, content_type, problem) =
                    call(&client, method.clone(), &base, &path, token, body.as_ref()).await?;
                assert_eq!(
                    (status, content_type.as_str(), problem["code"].as_str()),
                    (401, "application/problem+json", Some("UNAUTHENTICATED")),
                    "{verb} {path} with {token:?}"
                );
            }
            if method != Method::GET {
                let (status, _, problem) =
                    call(&client, method, &base, &path, Some(SHOP_B), body.as_ref()).await?;
                assert_eq!(
                    (status, problem["code"].as_str()),
                    (403, Some("PERMISSION_DENIED")),
                    "{verb} {path}: a read token may not change anything"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 18, "only {checked} operations documented");
    Ok(())
}

/// Bodies, paths and answers as the OpenAPI document says: a body is a JSON object (an array
/// is not read as the fields in order), an action takes `null` for its defaults, a path that
/// is not UTF-8 and an unknown OAuth2 field are refused as problems naming the field in this
/// API's words, and conflicts are documented.
#[tokio::test]
async fn the_http_api_reads_and_refuses_as_its_document_says() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = HeldPort::new()?;
    let control_plane = ControlPlane::start_with_tokens_configured(
        ConfigStore::Embedded,
        &tokens(),
        ADMIN,
        |config| config.http_listen = Some(http.addr()),
    )
    .await?;
    let created = control_plane
        .create(subscription(
            "shop-a",
            "https://127.0.0.1:9/a",
            &["order.*"],
        ))
        .await?;
    let base = format!("http://{}", http.addr());
    let client = plain_client();
    let post = |path: String, body: &'static str| {
        client
            .post(format!("{base}{path}"))
            .bearer_auth(ADMIN)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    // An array where an object goes is refused, and nothing is made.
    let array = post(
        "/api/v1/subscriptions".into(),
        r#"["shop-a","https://127.0.0.1:9/arr",["order.*"]]"#,
    )
    .await?;
    assert_eq!(array.status(), 400);
    let problem: Value = serde_json::from_str(&array.text().await?)?;
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("JSON object")),
        "{problem}"
    );
    let (_, _, listed) = get(&client, &base, "/api/v1/subscriptions", Some(ADMIN)).await?;
    assert_eq!(listed["subscriptions"].as_array().map(Vec::len), Some(1));
    let action = |verb: &str| format!("/api/v1/subscriptions/{}/{verb}", created.id);
    assert_eq!(post(action("disable"), r#"["x"]"#).await?.status(), 400);

    // `null` is an action's defaults, as the document says.
    assert_eq!(post(action("disable"), "null").await?.status(), 200);
    assert_eq!(post(action("enable"), " null ").await?.status(), 200);

    // A path that is not UTF-8 is a problem document, not plain text.
    let (status, content_type, problem) =
        get(&client, &base, "/api/v1/subscriptions/%FF", Some(ADMIN)).await?;
    assert_eq!(
        (status, content_type.as_str()),
        (400, "application/problem+json"),
        "{problem}"
    );
    assert_eq!(problem["code"], "INVALID_ARGUMENT");

    // A misspelt filter is refused naming it, not dropped (it would list every tenant's),
    // in listings that page too.
    for path in [
        "/api/v1/subscriptions?tenat=shop-a",
        "/api/v1/attempts?tenant=shop-a&page_size=5&evnt_id=e1",
    ] {
        let (status, _, problem) = get(&client, &base, path, Some(ADMIN)).await?;
        assert_eq!(status, 400, "{path}: {problem}");
        assert!(
            problem["field"] == "tenat" || problem["field"] == "evnt_id",
            "{problem}"
        );
    }
    let (status, _, _) = get(
        &client,
        &base,
        "/api/v1/attempts?tenant=shop-a&page_size=5",
        Some(ADMIN),
    )
    .await?;
    assert_eq!(status, 200, "a filter and a page together");

    // An OAuth2 field misspelt is refused, not dropped.
    let misspelt = post(
        "/api/v1/subscriptions".into(),
        r#"{"tenant":"shop-a","url":"https://127.0.0.1:9/o","event_types":["order.*"],
            "oauth2":{"token_url":"https://127.0.0.1:9/t","client_id":"c","client_secert":"s"}}"#,
    )
    .await?;
    assert_eq!(misspelt.status(), 400);

    // A refused revision is named as this API names it.
    let (status, _, problem) = call(
        &client,
        Method::DELETE,
        &base,
        &format!("/api/v1/subscriptions/{}?revision=-5", created.id),
        Some(ADMIN),
        None,
    )
    .await?;
    assert_eq!(status, 400, "{problem}");
    assert_eq!(problem["field"], "revision", "{problem}");
    // So are values the HTTP layer itself reads: durations, the signature, the egress.
    for (body, field) in [
        (
            r#"{"tenant":"shop-a","url":"https://127.0.0.1:9/d","event_types":["order.*"],"timeout":"soon"}"#,
            "timeout",
        ),
        (
            r#"{"tenant":"shop-a","url":"https://127.0.0.1:9/s","event_types":["order.*"],"signature":"v9"}"#,
            "signature",
        ),
        (
            r#"{"tenant":"shop-a","url":"https://127.0.0.1:9/e","event_types":["order.*"],"egress":"ftp://x"}"#,
            "egress",
        ),
    ] {
        let refused = post("/api/v1/subscriptions".into(), body).await?;
        assert_eq!(refused.status(), 400);
        let problem: Value = serde_json::from_str(&refused.text().await?)?;
        assert_eq!(problem["field"], field, "{problem}");
    }

    // Every change documents the conflict it may answer, every call the timeout.
    let (_, _, openapi) = get(&client, &base, "/api/v1/openapi.json", None).await?;
    // A read sent back as an update passes a validator of the document: the read-only fields
    // it carries are listed as such.
    let spec = &openapi["components"]["schemas"]["SubscriptionSpec"]["properties"];
    assert_eq!(spec["id"]["readOnly"], true, "{spec}");
    assert_eq!(spec["created_at"]["readOnly"], true, "{spec}");
    let required = &openapi["components"]["schemas"]["SubscriptionSpec"]["required"];
    assert!(
        !required
            .as_array()
            .is_some_and(|r| r.iter().any(|f| f == "id" || f == "enabled")),
        "{required}"
    );
    let rotate = &openapi["paths"]["/api/v1/subscriptions/{id}/rotate-secret"]["post"];
    assert!(rotate["responses"]["409"].is_object(), "{rotate}");
    assert!(rotate["responses"]["504"].is_object(), "{rotate}");
    let read = &openapi["paths"]["/api/v1/subscriptions/{id}"]["get"];
    assert!(read["responses"]["409"].is_null(), "reads change nothing");
    Ok(())
}

#[tokio::test]
async fn an_open_listener_answers_no_name_a_rebinding_page_could_have() -> anyhow::Result<()> {
    let http = HeldPort::new()?;
    let control_plane = ControlPlane::start_configured(ConfigStore::Embedded, |config| {
        config.http_listen = Some(http.addr());
        config.public_url = Some("https://herald.example.com".into());
    })
    .await?;
    let base = format!("http://{}", http.addr());
    let client = plain_client();
    let create = json!({"tenant": "shop-a", "url": "https://127.0.0.1:9/a", "event_types": ["*"]});
    let post = |host: &str, origin: Option<&str>| {
        let mut request = client
            .post(format!("{base}/api/v1/subscriptions"))
            .header("host", host)
            .header("content-type", "application/json")
            .body(create.to_string());
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        request.send()
    };
    // A page of evil.example, its name rebound to the listener's address, is refused...
    let port = http.addr().port();
    let rebound = post(
        &format!("evil.example:{port}"),
        Some(&format!("http://evil.example:{port}")),
    )
    .await?;
    assert_eq!(rebound.status(), 403);
    let problem: Value = serde_json::from_str(&rebound.text().await?)?;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("DNS rebinding"),
        "{problem}"
    );
    let page = client
        .get(format!("{base}/subscriptions"))
        .header("host", "evil.example")
        .send()
        .await?;
    assert_eq!(page.status(), 403, "the console too");
    // ...while its address, localhost and the public name are answered, and a post from the
    // public URL's page is this site's even when a proxy sends its own Host.
    for host in [
        http.addr().to_string(),
        format!("localhost:{port}"),
        "herald.example.com".to_owned(),
    ] {
        assert_eq!(post(&host, None).await?.status(), 201, "{host}");
    }
    let sign_out = |origin: &str| {
        client
            .post(format!("{base}/logout"))
            .header("host", http.addr().to_string())
            .header("origin", origin)
            .send()
    };
    assert_ne!(sign_out("https://herald.example.com").await?.status(), 403);
    assert_eq!(sign_out("https://evil.example").await?.status(), 403);
    drop(control_plane);
    Ok(())
}

/// `Idempotency-Key` on the HTTP API's create: sent again, the same subscription; another body
/// with the key, 409.
#[tokio::test]
async fn a_create_sent_again_with_an_idempotency_key_makes_one_subscription() -> anyhow::Result<()>
{
    let http = HeldPort::new()?;
    let control_plane = ControlPlane::start_with_tokens_configured(
        ConfigStore::Embedded,
        &tokens(),
        ADMIN,
        |config| config.http_listen = Some(http.addr()),
    )
    .await?;
    let base = format!("http://{}", http.addr());
    let client = plain_client();
    let post = |body: Value, key: &'static str| {
        let request = client
            .post(format!("{base}/api/v1/subscriptions"))
            .bearer_auth(ADMIN)
            .header("idempotency-key", key)
            .header("content-type", "application/json")
            .body(body.to_string());
        async move {
            let response = request.send().await?;
            let status = response.status().as_u16();
            let replayed = response.headers().get("idempotent-replayed").cloned();
            let mut body: Value = serde_json::from_str(&response.text().await?)?;
            body["(replayed header)"] =
                json!(replayed.map(|v| v.to_str().unwrap_or("?").to_owned()));
            anyhow::Ok((status, body))
        }
    };
    let body = json!({
        "tenant": "shop-a",
        "url": "https://127.0.0.1:9/orders",
        "event_types": ["order.created"],
    });
    let (status, first) = post(body.clone(), "erp-sync-7").await?;
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["(replayed header)"], Value::Null, "made: {first}");
    let (status, again) = post(body.clone(), "erp-sync-7").await?;
    assert_eq!(status, 201, "{again}");
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["(replayed header)"], "true", "{again}");
    assert_eq!(control_plane.subscriptions_of("shop-a").await?.len(), 1);

    let mut other = body;
    other["url"] = json!("https://127.0.0.1:9/stock");
    let (status, refused) = post(other.clone(), "erp-sync-7").await?;
    assert_eq!(
        (status, refused["code"].as_str()),
        (409, Some("ALREADY_EXISTS")),
        "{refused}"
    );
    // Two keys on one request: which one is meant cannot be told.
    let twice = client
        .post(format!("{base}/api/v1/subscriptions"))
        .bearer_auth(ADMIN)
        .header("idempotency-key", "a")
        .header("idempotency-key", "b")
        .header("content-type", "application/json")
        .body(other.to_string())
        .send()
        .await?;
    assert_eq!(twice.status().as_u16(), 400);
    Ok(())
}
