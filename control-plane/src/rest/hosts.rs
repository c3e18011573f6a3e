//! Which sites the HTTP listener (REST API, console, portal) belongs to.
//!
//! - **DNS rebinding**: without tokens (`herald dev`, an open control plane) anyone who can
//!   reach the listener may use it, and a page of another site can too, once its name is made
//!   to resolve to the listener's address: the browser then takes the listener for that site,
//!   sending its requests and reading the answers. So an open listener answers only requests
//!   addressed to an IP address, `localhost` or `--public-url`'s host, names no rebinding page
//!   can have. With tokens, such a page has none, and every name is answered.
//! - **Behind a proxy** that sends its own address as `Host`, a browser's `Origin` (the
//!   public URL's) is not the request's `Host`: posts with the public URL's origin are from
//!   this site too ([`crate::web::session::from_another_site`]).

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::Request;
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};

use super::problem::ApiError;

/// The listener's own site, as every request carries it (a request extension).
#[derive(Clone, Debug, Default)]
pub struct Site {
    /// `--public-url`'s origin (`https://herald.example.com`, lowercase); none without it.
    public_origin: Option<String>,
    /// `--public-url`'s host (`herald.example.com`, lowercase).
    public_host: Option<String>,
    /// Whether the listener answers every name (tokens are required of callers).
    any_name: bool,
}

impl Site {
    /// The site of a listener reached at `public_url` (if given), for callers that need
    /// tokens (`any_name`) or not.
    pub fn new(public_url: Option<&str>, any_name: bool) -> Self {
        let parsed = public_url.and_then(|u| url::Url::parse(u).ok());
        Site {
            public_origin: parsed
                .as_ref()
                .map(|u| u.origin().ascii_serialization().to_ascii_lowercase()),
            public_host: parsed
                .as_ref()
                .and_then(|u| u.host_str().map(str::to_ascii_lowercase)),
            any_name,
        }
    }

    /// Whether `origin` (an `Origin` header's value) is the public URL's.
    pub fn is_public_origin(&self, origin: &str) -> bool {
        self.public_origin
            .as_deref()
            .is_some_and(|public| public.eq_ignore_ascii_case(origin.trim_end_matches('/')))
    }

    /// Whether a request with this `Host` is answered.
    pub fn answers(&self, host: &str) -> bool {
        if self.any_name {
            return true;
        }
        let name = host_name(host);
        name.eq_ignore_ascii_case("localhost")
            || name
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .is_ok()
            || self
                .public_host
                .as_deref()
                .is_some_and(|public| public.eq_ignore_ascii_case(name))
    }
}

/// The name of a `Host` value, without its port.
fn host_name(host: &str) -> &str {
    if host.starts_with('[') {
        // An IPv6 literal: `[::1]:7703`.
        return host.split_once(']').map_or(host, |(name, _)| name);
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

/// Refuses requests to a name the listener does not answer ([`Site::answers`]), and gives
/// the others the listener's [`Site`] (and a `Host` header, from HTTP/2's `:authority`).
pub async fn guard(site: Arc<Site>, mut request: Request, next: Next) -> Response {
    if !request.headers().contains_key(header::HOST)
        && let Some(authority) = request
            .uri()
            .authority()
            .and_then(|a| axum::http::HeaderValue::from_str(a.as_str()).ok())
    {
        // HTTP/2 names the host in `:authority`, not `Host`: the pages' checks read `Host`.
        request.headers_mut().insert(header::HOST, authority);
    }
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    if !site.answers(&host) {
        return ApiError::from(tonic::Status::permission_denied(format!(
            "this control plane runs without tokens, so it answers only requests addressed to \
             an IP address, localhost or --public-url's host, not {:?} (a page of another \
             site could otherwise use it through DNS rebinding): give --public-url (herald \
             dev takes it too), or --auth-tokens",
            host_name(&host)
        )))
        .into_response();
    }
    request.extensions_mut().insert(site);
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_listener_answers_addresses_localhost_and_its_public_name_only() {
        let site = Site::new(Some("https://Herald.example.com/"), false);
        for host in [
            "127.0.0.1:7703",
            "10.1.2.3",
            "[::1]:7703",
            "localhost:7703",
            "herald.example.com",
            "HERALD.example.com:443",
        ] {
            assert!(site.answers(host), "{host}");
        }
        for host in [
            "evil.example:7703",
            "evil.example",
            "",
            "127.0.0.1.nip.io:7703",
        ] {
            assert!(!site.answers(host), "{host}");
        }
        assert!(Site::new(None, true).answers("evil.example:7703"), "tokens");
    }

    #[test]
    fn the_public_origin_is_recognised() {
        let site = Site::new(Some("https://herald.example.com"), true);
        assert!(site.is_public_origin("https://herald.example.com"));
        assert!(site.is_public_origin("https://HERALD.example.com"));
        assert!(!site.is_public_origin("http://herald.example.com"));
        assert!(!site.is_public_origin("https://herald.example.com:8443"));
        assert!(!Site::new(None, true).is_public_origin("null"));
    }
}
