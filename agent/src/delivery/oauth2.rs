//! OAuth2 client credentials (RFC 6749 section 4.4) for receivers that want a bearer token:
//! the agent fetches a token from the subscription's token endpoint through the same guarded
//! transport as deliveries (so the SSRF guard and egress apply), keeps it until shortly
//! before it expires, and fetches a new one when a receiver answers 401 to it. One fetch per
//! credentials at a time: attempts that need a token while one is being fetched wait for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use herald_core::error_kind::ErrorKind;
use herald_core::error_text;
use herald_core::subscription::OAuth2Client;
use http_body_util::{BodyExt as _, Full, Limited};
use tokio::time::Instant;

use super::transport::HttpClient;

/// The largest token response read.
const MAX_TOKEN_RESPONSE: usize = 64 * 1024;
/// How long a token without `expires_in` is kept.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(5 * 60);
/// The longest a token is kept, whatever `expires_in` says: a day, after which a new one is
/// fetched (and no endpoint's answer can push the expiry past what a clock can hold).
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// The most a token is refreshed ahead of its expiry (a tenth of its life when shorter).
const MAX_MARGIN: Duration = Duration::from_secs(60);
/// Credentials whose tokens are kept at once; past it, those not in use are forgotten.
const MAX_CREDENTIALS: usize = 4096;

/// Why no token could be had; the attempt fails with the error kind [`TokenError::kind`] says.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The request to the token endpoint failed (connection, TLS, …).
    #[error("token endpoint {url}: {reason}")]
    Request {
        /// The endpoint.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The endpoint answered with a status other than 2xx.
    #[error("token endpoint {url} answered {status}: {excerpt}")]
    Status {
        /// The endpoint.
        url: String,
        /// Its status.
        status: u16,
        /// The start of its answer.
        excerpt: String,
    },
    /// The answer holds no usable token.
    #[error("token endpoint {url}: {reason}")]
    Answer {
        /// The endpoint.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No token within the attempt's timeout.
    #[error("token endpoint {url}: no token within the attempt's timeout")]
    Timeout {
        /// The endpoint.
        url: String,
    },
    /// The agent's target policy refuses the endpoint's address: no later try can differ.
    #[error("token endpoint {url}: {reason}")]
    Refused {
        /// The endpoint.
        url: String,
        /// Which address, and why it is refused.
        reason: String,
    },
}

impl TokenError {
    /// How the attempt that needed the token failed: `policy` (for good) when the target
    /// policy refuses the endpoint, as it would refuse a receiver; `oauth2` otherwise.
    pub fn kind(&self) -> ErrorKind {
        match self {
            TokenError::Refused { .. } => ErrorKind::Policy,
            _ => ErrorKind::OAuth2,
        }
    }
}

/// A bearer token and until when it is used.
#[derive(Clone)]
struct Token {
    value: String,
    good_until: Instant,
}

/// The tokens of every subscription's credentials; cloning shares them.
#[derive(Clone, Default)]
pub struct Tokens {
    held: Arc<Mutex<HashMap<String, Slot>>>,
}

/// The token of one set of credentials; locked while it is fetched.
type Slot = Arc<tokio::sync::Mutex<Option<Token>>>;

impl Tokens {
    /// A token for `client`: the one held while it is good, else a new one fetched with
    /// `http` (waiting for a fetch already under way), by `deadline`.
    pub async fn token(
        &self,
        http: &HttpClient,
        client: &OAuth2Client,
        deadline: Instant,
    ) -> Result<String, TokenError> {
        let slot = self.slot(client);
        let mut held = tokio::time::timeout_at(deadline, slot.lock())
            .await
            .map_err(|_| TokenError::Timeout {
                url: client.token_url.to_string(),
            })?;
        if let Some(token) = held.as_ref()
            && token.good_until > Instant::now()
        {
            return Ok(token.value.clone());
        }
        let token = tokio::time::timeout_at(deadline, fetch(http, client))
            .await
            .map_err(|_| TokenError::Timeout {
                url: client.token_url.to_string(),
            })??;
        *held = Some(token.clone());
        Ok(token.value)
    }

    /// Forgets `token` of `client` (a receiver refused it), so the next attempt fetches anew;
    /// a newer token already held is kept.
    pub async fn forget(&self, client: &OAuth2Client, token: &str) {
        let slot = self.slot(client);
        let mut held = slot.lock().await;
        if held.as_ref().is_some_and(|t| t.value == token) {
            *held = None;
        }
    }

    fn slot(&self, client: &OAuth2Client) -> Slot {
        let mut held = self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = client.fingerprint();
        if let Some(slot) = held.get(key) {
            return slot.clone();
        }
        if held.len() >= MAX_CREDENTIALS {
            // Credentials no attempt is using right now go; they are fetched again if needed.
            held.retain(|_, slot| Arc::strong_count(slot) > 1);
        }
        held.entry(key.to_owned()).or_default().clone()
    }
}

/// Fetches a token: a form POST of the client credentials grant, the client authenticated
/// with HTTP Basic (RFC 6749 section 2.3.1).
async fn fetch(http: &HttpClient, client: &OAuth2Client) -> Result<Token, TokenError> {
    let url = client.token_url.to_string();
    let request_failed = |reason: String| TokenError::Request {
        url: url.clone(),
        reason,
    };
    let form = {
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", "client_credentials");
        if !client.scope.is_empty() {
            form.append_pair("scope", &client.scope);
        }
        if !client.audience.is_empty() {
            form.append_pair("audience", &client.audience);
        }
        form.finish()
    };
    let encode =
        |text: &str| url::form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>();
    let basic = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        encode(&client.client_id),
        encode(client.client_secret())
    ));
    let mut authorization = http::HeaderValue::from_str(&format!("Basic {basic}"))
        .map_err(|e| request_failed(e.to_string()))?;
    authorization.set_sensitive(true);
    let request = http::Request::post(url.as_str())
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .header(http::header::ACCEPT, "application/json")
        .header(http::header::AUTHORIZATION, authorization)
        .body(Full::new(Bytes::from(form)))
        .map_err(|e| request_failed(e.to_string()))?;
    let response = http.request(request).await.map_err(|e| {
        let reason = error_text::chain(&e);
        match super::attempt::error_kind(&e) {
            ErrorKind::Policy => TokenError::Refused {
                url: url.clone(),
                reason,
            },
            _ => request_failed(reason),
        }
    })?;
    let status = response.status().as_u16();
    let body = Limited::new(response.into_body(), MAX_TOKEN_RESPONSE)
        .collect()
        .await
        .map_err(|e| request_failed(format!("reading the answer: {e}")))?
        .to_bytes();
    if !(200..300).contains(&status) {
        let excerpt = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
        return Err(TokenError::Status {
            url,
            status,
            excerpt,
        });
    }
    parse_token(&body, Instant::now()).map_err(|reason| TokenError::Answer { url, reason })
}

/// The token in an answer received at `now`, kept until shortly before it expires.
fn parse_token(body: &[u8], now: Instant) -> Result<Token, String> {
    let answer: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("the answer is not JSON: {e}"))?;
    let value = answer["access_token"]
        .as_str()
        .filter(|t| !t.is_empty())
        .ok_or("the answer has no access_token")?;
    if http::HeaderValue::from_str(&format!("Bearer {value}")).is_err() {
        return Err("the access_token cannot be sent in a header".into());
    }
    if let Some(kind) = answer["token_type"].as_str()
        && !kind.eq_ignore_ascii_case("bearer")
    {
        return Err(format!("token_type {kind:?}, not Bearer"));
    }
    let lifetime = answer["expires_in"]
        .as_u64()
        .map_or(DEFAULT_LIFETIME, Duration::from_secs)
        .min(MAX_LIFETIME);
    let margin = (lifetime / 10).min(MAX_MARGIN);
    Ok(Token {
        value: value.to_owned(),
        good_until: now + lifetime - margin,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_kept_until_shortly_before_it_expires() {
        let now = Instant::now();
        let token = parse_token(
            br#"{"access_token":"tok-1","token_type":"bearer","expires_in":3600}"#,
            now,
        )
        .expect("a token");
        assert_eq!(token.value, "tok-1");
        assert_eq!(token.good_until, now + Duration::from_secs(3540));
        let short = parse_token(br#"{"access_token":"t","expires_in":10}"#, now).expect("ok");
        assert_eq!(short.good_until, now + Duration::from_secs(9));
        // An endpoint's `expires_in` is kept to a day.
        for huge in [86_401_u64, u64::MAX] {
            let answer = format!(r#"{{"access_token":"t","expires_in":{huge}}}"#);
            let token = parse_token(answer.as_bytes(), now).expect("ok");
            assert_eq!(token.good_until, now + MAX_LIFETIME - MAX_MARGIN);
        }
        let unknown = parse_token(br#"{"access_token":"t"}"#, now).expect("ok");
        assert_eq!(
            unknown.good_until,
            now + DEFAULT_LIFETIME - DEFAULT_LIFETIME / 10
        );
        for bad in [
            &br#"{"token_type":"bearer"}"#[..],
            br#"{"access_token":"t","token_type":"mac"}"#,
            br#"{"access_token":"a\nb"}"#,
            b"<html>",
        ] {
            assert!(
                parse_token(bad, now).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
