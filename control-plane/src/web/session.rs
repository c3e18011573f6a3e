//! Console sign-in: an API token exchanged for a session cookie, and the CSRF check on every
//! change.
//!
//! The cookie holds the token sealed with the keyring ([`sealed_token`](crate::sealed_token)),
//! so any replica reads it, and it is `HttpOnly` (no script reads it), `SameSite=Strict` and,
//! behind TLS, `Secure`. Each request is authorized with the token inside, as the API
//! authorizes it, so a token removed from the tokens file stops working in the console too.
//! Signing out ends the session on every replica ([`crate::console_sessions`]), so a copy of
//! the cookie does not outlive it. Every form carries a CSRF token derived from the cookie; a
//! change without it, or from a page of another origin, is refused.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{Extensions, HeaderMap, HeaderValue, Method, header};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use super::WebState;
use super::form::FormData;
use super::page::PageError;
use crate::access::Identity;
use crate::access::Role;
use crate::rest::Authorized;
use crate::rest::hosts::Site;
use crate::sealed_token::{self, Purpose};

/// The session cookie's name.
pub const COOKIE: &str = "herald_session";

/// How long a sign-in lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 60 * 60);

/// What the cookie holds.
#[derive(Serialize, Deserialize)]
struct Claims {
    /// The API token signed in with (empty while the API is open, or for a caller known by
    /// its client certificate).
    token: String,
    /// Which sign-in this is, so that signing out ends it everywhere.
    session: String,
}

/// The `Set-Cookie` value of a new session for `token`.
pub fn sign_in(state: &WebState, token: &str) -> Result<HeaderValue, PageError> {
    let value = sealed_token::seal(
        &state.keyring,
        Purpose::ConsoleSession,
        Claims {
            token: token.to_owned(),
            session: herald_core::ids::new_session_id(),
        },
        SystemTime::now(),
        SESSION_TTL,
    )
    .map_err(|e| PageError::internal(e.to_string()))?;
    cookie(state, &value, SESSION_TTL.as_secs())
}

/// Ends the session of `headers`' cookie on every replica, and answers the `Set-Cookie`
/// value that clears the browser's copy. A cookie that no longer opens needs no ending.
pub async fn sign_out(state: &WebState, headers: &HeaderMap) -> Result<HeaderValue, PageError> {
    let claims = cookie_value(headers).and_then(|cookie| {
        sealed_token::open::<Claims>(
            &state.keyring,
            Purpose::ConsoleSession,
            cookie,
            SystemTime::now(),
        )
        .ok()
    });
    if let Some(claims) = claims {
        state
            .sessions
            .end(&claims.session, SystemTime::now(), SESSION_TTL)
            .await
            .map_err(|err| {
                PageError::from(tonic::Status::unavailable(format!(
                    "the sign-out could not be recorded, so the session would still work \
                     elsewhere: {err}. Try again."
                )))
            })?;
    }
    cookie(state, "", 0)
}

fn cookie(state: &WebState, value: &str, max_age: u64) -> Result<HeaderValue, PageError> {
    let secure = if state.settings.secure_cookies {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    ))
    .map_err(|e| PageError::internal(e.to_string()))
}

/// The session cookie's value in `headers`.
fn cookie_value(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

/// The CSRF token of a session: only pages served to the cookie's holder can know it.
fn csrf_of(cookie: &str) -> String {
    let digest = sha2::Sha256::new()
        .chain_update(b"herald-csrf\0")
        .chain_update(cookie.as_bytes())
        .finalize();
    URL_SAFE_NO_PAD.encode(digest)
}

/// Checks `token` as the API would, for a sign-in: the identity it stands for, needing at
/// least `read`.
pub fn check_token(
    state: &WebState,
    token: &str,
    extensions: &axum::http::Extensions,
) -> Result<Option<Arc<Identity>>, tonic::Status> {
    let mut headers = HeaderMap::new();
    if !token.is_empty() {
        let value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            tonic::Status::unauthenticated("the token holds characters no token has")
        })?;
        headers.insert(header::AUTHORIZATION, value);
    }
    state
        .authenticator
        .authorize("/console", &headers, extensions, Role::Read)
}

/// A signed-in console user: who it is (for the calls it makes) and its CSRF token (for the
/// forms on its pages). Reads need the `read` role, changes `admin`.
pub struct Console {
    /// The caller, as the API knows it.
    pub caller: Authorized,
    /// The name shown in the page header.
    pub name: String,
    /// Whether the caller may change things (forms are shown only then).
    pub admin: bool,
    /// Whether the caller sees every tenant: what tenants share (the event-type catalogue's
    /// changes, the fleet of agents) is offered only then.
    pub every_tenant: bool,
    /// Goes in every form.
    pub csrf: String,
}

impl FromRequestParts<WebState> for Console {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, state: &WebState) -> Result<Self, PageError> {
        let sign_in_again = || PageError::SignIn {
            next: return_to(parts),
            partial: is_partial(&parts.headers),
        };
        let Some(cookie) = cookie_value(&parts.headers) else {
            return Err(sign_in_again());
        };
        let Ok(claims) = sealed_token::open::<Claims>(
            &state.keyring,
            Purpose::ConsoleSession,
            cookie,
            SystemTime::now(),
        ) else {
            return Err(sign_in_again());
        };
        let ended = state
            .sessions
            .ended(&claims.session, SystemTime::now())
            .await
            .map_err(|err| {
                PageError::from(tonic::Status::unavailable(format!(
                    "cannot tell whether this session was signed out of: {err}"
                )))
            })?;
        if ended {
            return Err(sign_in_again());
        }
        let identity =
            check_token(state, &claims.token, &parts.extensions).map_err(|_| sign_in_again())?;
        let role = identity.as_ref().map_or(Role::Admin, |i| i.role);
        let admin = role.covers(Role::Admin);
        if parts.method != Method::GET && parts.method != Method::HEAD && !admin {
            return Err(read_only());
        }
        Ok(Console {
            name: identity
                .as_ref()
                .map_or_else(|| "anonymous".to_owned(), |i| i.name.clone()),
            every_tenant: identity.as_ref().is_none_or(|i| i.tenants.is_all()),
            caller: Authorized(identity),
            admin,
            csrf: csrf_of(cookie),
        })
    }
}

/// Whether a request is htmx's for a part of a page (a live update), not a page.
pub(crate) fn is_partial(headers: &HeaderMap) -> bool {
    headers.contains_key("hx-request")
}

/// The page to come back to after signing in: the page asked for; for a live update, the page
/// it updates; for a change, the page it was posted from (what was posted is not posted again,
/// and its address answers no GET).
fn return_to(parts: &Parts) -> String {
    let page_of = |name: &str| {
        let url = parts.headers.get(name)?.to_str().ok()?;
        let url = url::Url::parse(url).ok()?;
        Some(match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        })
    };
    if is_partial(&parts.headers)
        && let Some(page) = page_of("hx-current-url")
    {
        return page;
    }
    if parts.method != Method::GET && parts.method != Method::HEAD {
        return page_of(header::REFERER.as_str()).unwrap_or_else(|| "/".to_owned());
    }
    parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned()
}

/// The refusal of a change (or of a form to make one) to a sign-in that may only read.
fn read_only() -> PageError {
    PageError::from(tonic::Status::permission_denied(
        "this sign-in may read, not change: sign in with an admin token",
    ))
}

impl Console {
    /// Refuses a form page to a sign-in that could not save it: said before anything is
    /// typed, not after.
    pub fn may_change(&self) -> Result<(), PageError> {
        if self.admin { Ok(()) } else { Err(read_only()) }
    }
}

/// A change posted from a console page: the signed-in admin and the form, whose CSRF token
/// matched and which came from this origin.
pub struct ConsoleChange {
    /// Who posts.
    pub console: Console,
    /// The posted fields.
    pub form: FormData,
}

impl FromRequest<WebState> for ConsoleChange {
    type Rejection = PageError;

    async fn from_request(request: Request, state: &WebState) -> Result<Self, PageError> {
        let (mut parts, body) = request.into_parts();
        same_origin(&parts.headers, &parts.extensions)?;
        let console = Console::from_request_parts(&mut parts, state).await?;
        let form = read_form(Request::from_parts(parts, body), state).await?;
        if form.text("csrf") != console.csrf {
            return Err(PageError::Csrf);
        }
        Ok(ConsoleChange { console, form })
    }
}

/// Reads a posted form (at most [`crate::rest::MAX_BODY_BYTES`]).
pub async fn read_form(request: Request, state: &WebState) -> Result<FormData, PageError> {
    let bytes = axum::body::Bytes::from_request(request, state)
        .await
        .map_err(|e| PageError::from(tonic::Status::invalid_argument(e.body_text())))?;
    Ok(FormData::parse(&bytes))
}

/// Refuses a post whose `Origin` names another site (browsers send it on every post).
pub fn same_origin(headers: &HeaderMap, extensions: &Extensions) -> Result<(), PageError> {
    if from_another_site(headers, extensions) {
        Err(PageError::Csrf)
    } else {
        Ok(())
    }
}

/// Whether a browser sent the request from a page of another origin: browsers name the
/// page's origin on every cross-site POST; API clients (the CLI, curl, SDKs) send none. The
/// listener's own origin is the request's `Host`, or its public URL's behind a proxy that
/// sends another `Host` ([`crate::rest::hosts`]).
pub(crate) fn from_another_site(headers: &HeaderMap, extensions: &Extensions) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return false;
    };
    let origin = origin.to_str().unwrap_or("\u{0}");
    if extensions
        .get::<Arc<Site>>()
        .is_some_and(|site| site.is_public_origin(origin))
    {
        return false;
    }
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let origin_host = origin
        .split_once("://")
        .map_or(origin, |(_, rest)| rest)
        .trim_end_matches('/');
    !origin_host.eq_ignore_ascii_case(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_found_among_others_and_csrf_follows_it() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; herald_session=abc; b=2"),
        );
        assert_eq!(cookie_value(&headers), Some("abc"));
        assert_eq!(csrf_of("abc"), csrf_of("abc"));
        assert_ne!(csrf_of("abc"), csrf_of("abd"));
    }

    #[test]
    fn posts_from_another_origin_are_refused() {
        let none = Extensions::new();
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:7703"));
        assert!(
            same_origin(&headers, &none).is_ok(),
            "no Origin: not a browser's cross-site post"
        );
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:7703"),
        );
        assert!(same_origin(&headers, &none).is_ok());
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(matches!(same_origin(&headers, &none), Err(PageError::Csrf)));
        // Behind a proxy that sends its own Host, the public URL's origin is this site's.
        let mut behind = Extensions::new();
        behind.insert(Arc::new(Site::new(
            Some("https://herald.example.com"),
            true,
        )));
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://herald.example.com"),
        );
        assert!(matches!(same_origin(&headers, &none), Err(PageError::Csrf)));
        assert!(same_origin(&headers, &behind).is_ok());
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(matches!(
            same_origin(&headers, &behind),
            Err(PageError::Csrf)
        ));
    }
}
