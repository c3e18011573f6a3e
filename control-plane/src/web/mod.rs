//! The web pages on the HTTP listener: the operator console at `/` ([`console`]) and each
//! tenant's portal at `/portal/` ([`portal`]).
//!
//! Pages are rendered on the server from templates compiled into the binary (askama, under
//! `control-plane/templates/`), with one small vendored script (htmx, for live updates)
//! and one stylesheet, both served from `/assets/`: no build step, nothing fetched from
//! elsewhere, and every page works without the script. Every response carries a strict
//! Content-Security-Policy (no inline script or style) and is not cached. Pages call the gRPC
//! services with the caller's identity, as the REST API does, so what a page shows and
//! allows is exactly what the API allows that caller.

mod chart;
pub mod console;
pub mod form;
pub mod page;
pub mod portal;
pub mod portal_link;
pub mod session;
mod test_card;
mod views;

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::auth::Authenticator;
use crate::console_sessions::ConsoleSessions;
use crate::rest::Services;
use crate::sealing::Keyring;

/// How the web pages present themselves; from the control plane's flags.
#[derive(Clone, Debug, Default)]
pub struct WebSettings {
    /// Cookies only over HTTPS (the HTTP listener speaks TLS, or `--public-url` is https://
    /// behind a proxy that terminates it).
    pub secure_cookies: bool,
    /// The tenant portal's look and where it may be embedded.
    pub portal: portal::Branding,
}

/// What every page handler has.
#[derive(Clone)]
pub struct WebState {
    services: Services,
    authenticator: Authenticator,
    keyring: Arc<Keyring>,
    sessions: ConsoleSessions,
    settings: Arc<WebSettings>,
}

impl WebState {
    /// The state of the pages: the services they call, who may sign in, the keyring that
    /// seals sessions and portal links, the sessions signed out of, and the settings.
    pub fn new(
        services: Services,
        authenticator: Authenticator,
        keyring: Arc<Keyring>,
        sessions: ConsoleSessions,
        settings: WebSettings,
    ) -> Self {
        WebState {
            services,
            authenticator,
            keyring,
            sessions,
            settings: Arc::new(settings),
        }
    }
}

/// The console's and the portal's pages, and their assets.
pub fn router(state: WebState) -> Router {
    let frame_ancestors = state.settings.portal.frame_ancestors.clone();
    let console = console::routes()
        .method_not_allowed_fallback(wrong_method)
        .layer(axum::middleware::from_fn(|request, next| {
            secure_headers(request, next, "'none'".to_owned())
        }))
        .with_state(state.clone());
    let brand = state.settings.portal.clone();
    let portal = portal::routes()
        .method_not_allowed_fallback(wrong_method)
        .layer(axum::middleware::from_fn(move |request, next| {
            portal::branded_errors(request, next, brand.clone())
        }))
        .layer(axum::middleware::from_fn(move |request, next| {
            secure_headers(request, next, frame_ancestors.clone())
        }))
        .with_state(state);
    Router::new()
        .route("/assets/htmx.min.js", axum::routing::get(htmx))
        .route("/assets/herald.css", axum::routing::get(stylesheet))
        .route("/assets/favicon.svg", axum::routing::get(favicon))
        .route("/favicon.ico", axum::routing::get(favicon))
        .merge(console)
        .merge(portal)
}

/// The answer to a page's address asked with a method it does not take (a form's address
/// opened as a page), with the pages' security headers as every page has them.
async fn wrong_method() -> Response {
    page::PageError::WrongMethod.into_response()
}

/// The answer to a visit to a test send's address (a reload, a bookmark, Back past the
/// answer): the page the test was sent from, without sending another.
pub(crate) async fn to_the_tested_page(uri: axum::http::Uri) -> Response {
    let path = uri.path();
    let page = path.strip_suffix("/test").unwrap_or(path);
    axum::response::Redirect::to(page).into_response()
}

/// The answer to a path nothing serves: a page for a browser asking outside the API, the
/// API's problem document for everyone else (the HTTP API and the pages share one listener).
pub async fn not_found(uri: axum::http::Uri, headers: axum::http::HeaderMap) -> Response {
    let wants_page = !uri.path().starts_with("/api/")
        && headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .any(|accept| accept.contains("text/html"));
    if wants_page {
        page::PageError::Status(tonic::Status::not_found(
            "There is no page at this address.",
        ))
        .into_response()
    } else {
        crate::rest::no_such_route()
    }
}

/// The vendored htmx (2.0, BSD Zero Clause licence: `assets/htmx.LICENSE`).
const HTMX: &str = include_str!("../../assets/htmx.min.js");
/// The one stylesheet.
const CSS: &str = include_str!("../../assets/herald.css");

async fn htmx() -> Response {
    asset("text/javascript; charset=utf-8", HTMX)
}

async fn stylesheet() -> Response {
    asset("text/css; charset=utf-8", CSS)
}

/// The pages' icon (also at `/favicon.ico`, where browsers look for it unasked: SVG is
/// read there by every current browser).
const FAVICON: &str = include_str!("../../assets/favicon.svg");

async fn favicon() -> Response {
    asset("image/svg+xml", FAVICON)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// The headers every page carries: a CSP that admits only this origin's script and style
/// (and no framing except by `frame_ancestors`), no sniffing, no referrer to other sites
/// (portal links hold their token in the path; same-origin posts still carry their
/// `Origin`), no caching.
async fn secure_headers(request: Request, next: Next, frame_ancestors: String) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    let policy = format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: https:; \
         connect-src 'self'; form-action 'self'; base-uri 'none'; \
         frame-ancestors {frame_ancestors}"
    );
    if let Ok(value) = HeaderValue::from_str(&policy) {
        headers.insert(header::CONTENT_SECURITY_POLICY, value);
    }
    if frame_ancestors == "'none'" {
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}
