//! The HTTPS client every delivery goes through: rustls with the ring provider, the system's
//! trust roots plus any extra CA file, pooled keep-alive connections, and no side doors:
//! redirects are not followed, system proxies are not used, and every address a host resolves
//! to passes the target policy before a connection is made (a URL with a literal address
//! skips the resolver, so the dispatcher checks those itself).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use herald_core::target::TargetPolicy;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// How long to wait for a TCP + TLS connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle connections kept per receiver host.
const MAX_IDLE_PER_HOST: usize = 64;

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The CA file could not be read or holds no certificate.
    #[error("ca file {path}: {reason}")]
    CaFile {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// rustls or reqwest refused the configuration.
    #[error("tls setup: {0}")]
    Tls(String),
}

/// Builds the delivery client. `ca_file` adds trust roots (PEM) for receivers with private CAs;
/// hosts resolving to addresses `policy` refuses are not connected to.
pub fn build(ca_file: Option<&Path>, policy: TargetPolicy) -> Result<reqwest::Client, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        // A malformed system certificate is skipped rather than failing every delivery.
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        let ca_error = |reason: String| ClientError::CaFile {
            path: path.display().to_string(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| ca_error(e.to_string()))?;
        let mut added = 0;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| ca_error(e.to_string()))?;
            roots.add(cert).map_err(|e| ca_error(e.to_string()))?;
            added += 1;
        }
        if added == 0 {
            return Err(ca_error("no PEM certificate in the file".into()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(GuardedResolver {
            policy: Arc::new(policy),
        })
        .connect_timeout(CONNECT_TIMEOUT)
        .pool_max_idle_per_host(MAX_IDLE_PER_HOST)
        .pool_idle_timeout(Duration::from_secs(90))
        .user_agent(concat!("Herald/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ClientError::Tls(e.to_string()))
}

/// A receiver's name the system resolver could not resolve (the attempt's error kind `dns`).
#[derive(Debug, thiserror::Error)]
#[error("cannot resolve {host}: {source}")]
pub struct LookupFailed {
    /// The name.
    pub host: String,
    /// The resolver's error.
    #[source]
    pub source: std::io::Error,
}

/// Resolves with the system resolver, then refuses the host if any of its addresses is one the
/// policy refuses (a host that mixes public and private answers is refused whole).
struct GuardedResolver {
    policy: Arc<TargetPolicy>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|source| LookupFailed {
                    host: host.clone(),
                    source,
                })?
                .collect();
            for addr in &addrs {
                policy.check_ip(&host, addr.ip())?;
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}
