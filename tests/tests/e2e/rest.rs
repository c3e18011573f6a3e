//! The HTTP API: the same operations, scope and refusals as gRPC, in JSON, with problem+json
//! errors and an OpenAPI document made from the code, over plain HTTP and over TLS.

use herald_control_plane::ServerTls;
use herald_tests::tls::CertUse;
use herald_tests::{ConfigStore, ControlPlane, HeldPort, TestCa, subscription};
use serde_json::Value;

const ADMIN: &str = "admin-rest-7e2b9c4a1f6d";
const SHOP_B: &str = "read-rest-b-3f8a1d6c9e2b";

fn tokens() -> String {
    format!("admin {ADMIN} name=ops\nread {SHOP_B} name=shop-b-reader tenants=shop-b\n")
}

/// A GET of `path` with `token`: the status, the content type and the JSON body.
async fn get(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    token: Option<&str>,
) -> anyhow::Result<(u16, String, Value)> {
    let mut request = client.get(format!("{base}{path}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
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
    Ok((status, content_type, serde_json::from_str(&body)?))
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
    let client = reqwest::Client::new();

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

    // The audit log, filtered and scoped as on gRPC.
    let (status, _, audit) = get(&client, &base, "/api/v1/audit?actor=ops", Some(ADMIN)).await?;
    assert_eq!(status, 200);
    assert_eq!(audit["entries"].as_array().map(Vec::len), Some(2));
    assert_eq!(audit["entries"][0]["action"], "subscription.create");
    let (_, _, scoped) = get(&client, &base, "/api/v1/audit", Some(SHOP_B)).await?;
    assert_eq!(scoped["entries"].as_array().map(Vec::len), Some(1));
    let (status, _, _) = get(&client, &base, "/api/v1/audit?since=yesterday", Some(ADMIN)).await?;
    assert_eq!(status, 400);

    // A route that does not exist is a problem too.
    let (status, content_type, _) = get(&client, &base, "/api/v1/nothing", Some(ADMIN)).await?;
    assert_eq!(
        (status, content_type.as_str()),
        (404, "application/problem+json")
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
