//! Connections to the control plane: the configured endpoints tried in turn, so an agent given
//! several replicas (`--control-plane URL1,URL2`) moves on when one is down.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use herald_proto::bearer::{AuthedChannel, Bearer};
use tonic::transport::{ClientTlsConfig, Endpoint};

/// Why the agent will not call a control-plane URL.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The token cannot be one the control plane accepts (its tokens files hold none such).
    #[error("--control-plane-token: {reason}")]
    Token {
        /// Why (never the token).
        reason: String,
    },
    /// The URL is not one.
    #[error("--control-plane {url}: not a URL: {reason}")]
    NotAUrl {
        /// The URL as given.
        url: String,
        /// Why.
        reason: String,
    },
    /// TLS settings were given for a URL that is not https: they would be ignored.
    #[error(
        "--control-plane {url} is plain http, but TLS settings are given \
         (--control-plane-ca-file, --control-plane-cert-file): use https:// (or drop them)"
    )]
    TlsOverHttp {
        /// The URL.
        url: String,
    },
    /// The token would cross the network in clear.
    #[error(
        "--control-plane {url} is plain http to another host: the agent's token would cross \
         the network in clear. Use https:// (with --control-plane-ca-file), or pass \
         --allow-insecure-control-plane on a network you trust"
    )]
    Insecure {
        /// The URL.
        url: String,
    },
}

/// Refuses a control-plane URL that would carry a token over plain `http://` to a host other
/// than this one's loopback, unless `allow_insecure`.
pub fn check_transport(
    endpoints: &[String],
    has_token: bool,
    allow_insecure: bool,
    tls: bool,
) -> Result<(), TransportError> {
    for url in endpoints {
        let parsed = reqwest::Url::parse(url).map_err(|e| TransportError::NotAUrl {
            url: url.clone(),
            reason: e.to_string(),
        })?;
        let plain = parsed.scheme() != "https";
        if plain && tls {
            return Err(TransportError::TlsOverHttp { url: url.clone() });
        }
        let loopback = match parsed.host() {
            Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        };
        if plain && has_token && !loopback && !allow_insecure {
            return Err(TransportError::Insecure { url: url.clone() });
        }
    }
    Ok(())
}

/// How long to wait for a connection to a control-plane replica, and for its answer to a
/// stream being opened.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The stream `open` opens on `url` once the control plane answers, or why not, naming
/// `url`: one that does not answer within [`CONNECT_TIMEOUT`] (a port that accepts and never
/// speaks, a replica that hangs) is passed over, rather than waited on until the connection's
/// keepalive gives up.
pub async fn opened<T>(
    url: &str,
    open: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, String> {
    match tokio::time::timeout(CONNECT_TIMEOUT, open).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(format!("{url}: {}", status.message())),
        Err(_) => Err(format!(
            "{url}: no answer within {} s",
            CONNECT_TIMEOUT.as_secs()
        )),
    }
}

/// The control-plane endpoints, tried round-robin.
#[derive(Clone, Debug)]
pub struct ControlPlane {
    endpoints: Arc<Vec<String>>,
    next: Arc<AtomicUsize>,
    /// The agent's token, sent on every call.
    bearer: Bearer,
    /// TLS to the control plane, when configured: the files, read at every connection so a
    /// renewed certificate is used from the next one on.
    tls: Option<TlsPaths>,
}

/// The PEM files of TLS to the control plane.
#[derive(Clone, Debug)]
pub struct TlsPaths {
    /// The CA of the control plane's certificate (none: the system's CAs).
    pub ca: Option<PathBuf>,
    /// The agent's certificate and key, for mutual TLS.
    pub identity: Option<(PathBuf, PathBuf)>,
}

impl ControlPlane {
    /// The endpoints (URLs like `http://127.0.0.1:7700`), called with `bearer`'s token.
    pub fn new(endpoints: Vec<String>, bearer: Bearer, tls: Option<TlsPaths>) -> Self {
        ControlPlane {
            endpoints: Arc::new(endpoints),
            next: Arc::new(AtomicUsize::new(0)),
            bearer,
            tls,
        }
    }

    /// The same endpoints, with turns of its own starting from the first: each stream (config,
    /// reports) tries the endpoints in the order given, whatever the others do.
    pub fn own_turns(&self) -> ControlPlane {
        ControlPlane {
            next: Arc::new(AtomicUsize::new(0)),
            ..self.clone()
        }
    }

    /// Makes the next connection go to the first endpoint again: for a stream that ended
    /// cleanly (a report stream closed while idle), which then prefers the first URL as a
    /// new one does, rather than move on to the next.
    pub fn start_over(&self) {
        self.next.store(0, Ordering::Relaxed);
    }

    /// Connects to the next endpoint in turn; the error names it.
    pub async fn connect(&self) -> Result<(String, AuthedChannel), String> {
        if self.endpoints.is_empty() {
            return Err("no control-plane endpoint configured".into());
        }
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.endpoints.len();
        let url = self.endpoints[index].clone();
        let mut endpoint = Endpoint::from_shared(url.clone()).map_err(|e| format!("{url}: {e}"))?;
        let mut tls: Option<ClientTlsConfig> = None;
        if let Some(paths) = &self.tls {
            let (cert, key) = match &paths.identity {
                Some((cert, key)) => (Some(cert.as_path()), Some(key.as_path())),
                None => (None, None),
            };
            tls = herald_proto::client_tls::config(paths.ca.as_deref(), cert, key)
                .map_err(|e| e.to_string())?;
        }
        if let Some(tls) = herald_proto::client_tls::for_url(&url, tls) {
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| format!("{url}: {e}"))?;
        }
        let endpoint = endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        // With its causes: "transport error" alone does not say that the server's certificate
        // was refused, or the connection.
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("{url}: {}", herald_core::error_text::chain(&e)))?;
        Ok((url, self.bearer.wrap(channel)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(url: &str, has_token: bool, allow: bool) -> Result<(), TransportError> {
        check_transport(&[url.to_owned()], has_token, allow, false)
    }

    #[test]
    fn tls_settings_are_refused_for_a_plain_http_url() {
        let refused = check_transport(&["http://127.0.0.1:7700".into()], false, false, true);
        assert!(matches!(refused, Err(TransportError::TlsOverHttp { .. })));
        assert!(check_transport(&["https://cp.internal:7700".into()], true, false, true).is_ok());
    }

    #[test]
    fn a_token_never_crosses_the_network_in_clear_unless_allowed() {
        assert!(matches!(
            check("http://cp.internal:7700", true, false),
            Err(TransportError::Insecure { .. })
        ));
        assert!(matches!(
            check("http://10.0.0.5:7700", true, false),
            Err(TransportError::Insecure { .. })
        ));
        assert!(check("https://cp.internal:7700", true, false).is_ok());
        for local in [
            "http://127.0.0.1:7700",
            "http://localhost:7700",
            "http://[::1]:7700",
        ] {
            assert!(check(local, true, false).is_ok(), "{local}");
        }
        assert!(
            check("http://cp.internal:7700", false, false).is_ok(),
            "no token"
        );
        assert!(
            check("http://cp.internal:7700", true, true).is_ok(),
            "allowed"
        );
        let one_bad = check_transport(
            &["https://a:1".into(), "http://b:1".into()],
            true,
            false,
            false,
        );
        assert!(matches!(one_bad, Err(TransportError::Insecure { url }) if url == "http://b:1"));
    }
}
