//! An OAuth2 token endpoint for end-to-end tests: HTTPS with the test CA, the client
//! credentials grant with HTTP Basic client authentication, tokens `tok-1`, `tok-2`, … with a
//! lifetime the test sets, and a count of the tokens it issued.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::TestCa;

/// A token endpoint on a free loopback port; stopped when dropped.
pub struct TokenEndpoint {
    url: String,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

struct Shared {
    client_id: String,
    client_secret: String,
    expires_in: AtomicU64,
    issued: AtomicU64,
    bodies: std::sync::Mutex<Vec<String>>,
}

impl TokenEndpoint {
    /// Starts one that issues tokens to `client_id`/`client_secret`, each good for
    /// `expires_in` seconds.
    pub async fn start(
        ca: &TestCa,
        client_id: &str,
        client_secret: &str,
        expires_in: u64,
    ) -> anyhow::Result<TokenEndpoint> {
        Self::start_on("127.0.0.1", ca, client_id, client_secret, expires_in).await
    }

    /// The same on another loopback address `ip` (`127.0.0.2`: one an agent's policy may
    /// refuse while it admits `127.0.0.1`).
    pub async fn start_on(
        ip: &str,
        ca: &TestCa,
        client_id: &str,
        client_secret: &str,
        expires_in: u64,
    ) -> anyhow::Result<TokenEndpoint> {
        let listener = TcpListener::bind((ip, 0)).await?;
        let url = format!("https://{}/oauth/token", listener.local_addr()?);
        let shared = Arc::new(Shared {
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
            expires_in: AtomicU64::new(expires_in),
            issued: AtomicU64::new(0),
            bodies: std::sync::Mutex::default(),
        });
        let router = axum::Router::new()
            .route("/oauth/token", axum::routing::post(token))
            .with_state(shared.clone());
        let server = crate::receiver::spawn_https(listener, ca, router);
        Ok(TokenEndpoint {
            url,
            shared,
            server,
        })
    }

    /// The token URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// How many tokens it issued.
    pub fn issued(&self) -> u64 {
        self.shared.issued.load(Ordering::SeqCst)
    }

    /// The form bodies of the token requests it answered with a token.
    pub fn bodies(&self) -> Vec<String> {
        self.shared.bodies.lock().expect("lock").clone()
    }
}

impl Drop for TokenEndpoint {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn token(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: String) -> Response {
    let expected = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", shared.client_id, shared.client_secret));
    let authorized = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Basic {expected}"));
    if !authorized || !body.contains("grant_type=client_credentials") {
        return (StatusCode::UNAUTHORIZED, r#"{"error":"invalid_client"}"#).into_response();
    }
    let n = shared.issued.fetch_add(1, Ordering::SeqCst) + 1;
    shared.bodies.lock().expect("lock").push(body);
    let answer = serde_json::json!({
        "access_token": format!("tok-{n}"),
        "token_type": "Bearer",
        "expires_in": shared.expires_in.load(Ordering::SeqCst),
    });
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        answer.to_string(),
    )
        .into_response()
}
