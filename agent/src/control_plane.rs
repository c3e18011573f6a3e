//! Connections to the control plane: the configured endpoints tried in turn, so an agent given
//! several replicas (`--control-plane URL1,URL2`) moves on when one is down.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use herald_proto::bearer::{AuthedChannel, Bearer};
use tonic::transport::{ClientTlsConfig, Endpoint};

/// How long to wait for a connection to a control-plane replica.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// The CA of the control plane's certificate.
    pub ca: PathBuf,
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

    /// Connects to the next endpoint in turn; the error names it.
    pub async fn connect(&self) -> Result<(String, AuthedChannel), String> {
        if self.endpoints.is_empty() {
            return Err("no control-plane endpoint configured".into());
        }
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.endpoints.len();
        let url = self.endpoints[index].clone();
        let mut endpoint = Endpoint::from_shared(url.clone()).map_err(|e| format!("{url}: {e}"))?;
        if let Some(paths) = &self.tls {
            let (cert, key) = match &paths.identity {
                Some((cert, key)) => (Some(cert.as_path()), Some(key.as_path())),
                None => (None, None),
            };
            let tls: Option<ClientTlsConfig> =
                herald_proto::client_tls::config(Some(&paths.ca), cert, key)
                    .map_err(|e| e.to_string())?;
            if let Some(tls) = tls {
                endpoint = endpoint
                    .tls_config(tls)
                    .map_err(|e| format!("{url}: {e}"))?;
            }
        }
        let endpoint = endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        Ok((url, self.bearer.wrap(channel)))
    }
}
