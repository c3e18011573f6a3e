//! The HTTP transport every delivery goes through: rustls with the ring provider, the system's
//! trust roots plus any extra CA file, pooled keep-alive connections (HTTP/1.1, or HTTP/2 where
//! the receiver offers it), and no side doors: redirects are not followed, system proxies are
//! not used, and every address is resolved by the agent and passes the target policy before a
//! connection is made.
//!
//! Deliveries leave directly or through an HTTP egress proxy (the agent's `--egress-proxy`, or
//! a subscription's own). Through a proxy the agent still resolves and checks the receiver's
//! name itself and asks the proxy to `CONNECT` to the checked address; TLS then runs through
//! the tunnel with the receiver's name (SNI, certificate check and `Host` keep it), so a proxy
//! never reaches an address the policy refuses.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use herald_core::egress::{Egress, ProxyUrl};
use herald_core::subscription::ClientIdentity;
use herald_core::target::{TargetError, TargetPolicy};
use http_body_util::Full;
use hyper::Uri;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::classify::ErrorKind;

/// How long to wait for a TCP connection (and, through a proxy, its answer to `CONNECT`).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle connections kept per receiver host.
const MAX_IDLE_PER_HOST: usize = 64;
/// How long an idle connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Routes of subscriptions' own (their proxy, their client certificate) with a client and
/// connection pool kept at once; past it the least recently made is dropped.
const MAX_OWN_ROUTES: usize = 256;
/// The longest answer head a proxy may give to `CONNECT`.
const MAX_PROXY_ANSWER: usize = 8 * 1024;

/// A pooled HTTP client for one route (direct, or through one proxy).
pub type HttpClient = Client<HttpsConnector<GuardedConnector>, Full<Bytes>>;

/// Why the transport could not be built.
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
    /// rustls refused the configuration.
    #[error("tls setup: {0}")]
    Tls(String),
    /// A subscription's client certificate or key is unusable.
    #[error("client certificate: {0}")]
    ClientCertificate(String),
}

/// The TLS settings of `base` presenting `identity`'s certificate to receivers that ask.
fn with_client_certificate(
    base: &rustls::ClientConfig,
    identity: &ClientIdentity,
) -> Result<rustls::ClientConfig, ClientError> {
    let unusable = |reason: String| ClientError::ClientCertificate(reason);
    let chain = rustls_pemfile::certs(&mut identity.cert_pem().as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unusable(e.to_string()))?;
    let key = rustls_pemfile::private_key(&mut identity.key_pem().as_bytes())
        .map_err(|e| unusable(e.to_string()))?
        .ok_or_else(|| unusable("no private key".into()))?;
    let provider = base.crypto_provider().clone();
    let certified = rustls::sign::CertifiedKey::from_der(chain, key, &provider)
        .map_err(|e| unusable(e.to_string()))?;
    let mut tls = base.clone();
    tls.client_auth_cert_resolver = Arc::new(AlwaysPresent(Arc::new(certified)));
    Ok(tls)
}

/// Presents one certificate whenever a server asks for one.
#[derive(Debug)]
struct AlwaysPresent(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for AlwaysPresent {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The delivery transport: one pooled client per route.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<TransportInner>,
}

struct TransportInner {
    tls: rustls::ClientConfig,
    policy: Arc<TargetPolicy>,
    agent_proxy: Option<ProxyUrl>,
    direct: HttpClient,
    /// Through the agent's own proxy, when it has one.
    agent_route: Option<HttpClient>,
    /// Through subscriptions' own proxies, or with their client certificates.
    own_routes: Mutex<OwnRoutes>,
}

/// The clients of subscriptions' own routes, by proxy URL (credentials included) and client
/// certificate fingerprint.
#[derive(Default)]
struct OwnRoutes {
    clients: HashMap<String, OwnRoute>,
    /// Routes made so far: each route's `made` is its number, so the oldest is the least.
    made: u64,
}

struct OwnRoute {
    made: u64,
    client: HttpClient,
}

impl Transport {
    /// Builds the transport. `ca_file` adds trust roots (PEM) for receivers with private CAs;
    /// targets whose addresses `policy` refuses are not connected to; `agent_proxy` is where
    /// deliveries go unless their subscription says otherwise.
    pub fn build(
        ca_file: Option<&Path>,
        policy: TargetPolicy,
        agent_proxy: Option<ProxyUrl>,
    ) -> Result<Self, ClientError> {
        let tls = tls_config(ca_file)?;
        let policy = Arc::new(policy);
        let direct = client(&tls, &policy, None);
        let agent_route = agent_proxy.as_ref().map(|proxy| {
            client(
                &tls,
                &policy,
                Some(ProxyChoice {
                    url: proxy,
                    trusted: true,
                }),
            )
        });
        Ok(Transport {
            inner: Arc::new(TransportInner {
                tls,
                policy,
                agent_proxy,
                direct,
                agent_route,
                own_routes: Mutex::default(),
            }),
        })
    }

    /// The client for deliveries that leave as `egress` says, presenting `identity` to
    /// receivers that ask for a client certificate. The common routes are made once; the others
    /// (a subscription's own proxy, a client certificate) on first use, and kept.
    pub fn client(
        &self,
        egress: &Egress,
        identity: Option<&ClientIdentity>,
    ) -> Result<HttpClient, ClientError> {
        let inner = &self.inner;
        match (egress, identity) {
            (Egress::Direct, None) => return Ok(inner.direct.clone()),
            (Egress::AgentDefault, None) => {
                return Ok(inner.agent_route.as_ref().unwrap_or(&inner.direct).clone());
            }
            _ => {}
        }
        let proxy = match egress {
            Egress::Direct => None,
            Egress::AgentDefault => inner
                .agent_proxy
                .as_ref()
                .map(|url| ProxyChoice { url, trusted: true }),
            Egress::Proxy(url) => Some(ProxyChoice {
                url,
                trusted: false,
            }),
        };
        let key = format!(
            "{}|{}|{}",
            proxy.as_ref().map_or(String::new(), |p| p.url.expose()),
            proxy.as_ref().is_some_and(|p| p.trusted),
            identity.map_or("", ClientIdentity::fingerprint)
        );
        let mut routes = inner
            .own_routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(route) = routes.clients.get(&key) {
            return Ok(route.client.clone());
        }
        let tls = match identity {
            None => inner.tls.clone(),
            Some(identity) => with_client_certificate(&inner.tls, identity)?,
        };
        if routes.clients.len() >= MAX_OWN_ROUTES
            && let Some(oldest) = routes
                .clients
                .iter()
                .min_by_key(|(_, route)| route.made)
                .map(|(key, _)| key.clone())
        {
            routes.clients.remove(&oldest);
        }
        routes.made += 1;
        let route = OwnRoute {
            made: routes.made,
            client: client(&tls, &inner.policy, proxy),
        };
        let client = route.client.clone();
        routes.clients.insert(key, route);
        Ok(client)
    }

    /// The agent's own egress proxy, if any.
    pub fn agent_proxy(&self) -> Option<&ProxyUrl> {
        self.inner.agent_proxy.as_ref()
    }
}

/// The TLS settings of every route: system roots, the extra CA file, the ring provider.
fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, ClientError> {
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
        let pem =
            herald_core::tls_files::read_pem(path).map_err(|e| ca_error(e.source.to_string()))?;
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
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A proxy for a route, and whether its address is trusted: the agent's own (set by its
/// operator) is; a subscription's must pass the target policy like a receiver's.
struct ProxyChoice<'a> {
    url: &'a ProxyUrl,
    trusted: bool,
}

fn client(
    tls: &rustls::ClientConfig,
    policy: &Arc<TargetPolicy>,
    proxy: Option<ProxyChoice<'_>>,
) -> HttpClient {
    let connector = GuardedConnector {
        policy: policy.clone(),
        proxy: proxy.map(|choice| {
            Arc::new(ProxyRoute {
                authorization: choice.url.authorization(),
                url: choice.url.clone(),
                trusted: choice.trusted,
            })
        }),
    };
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls.clone())
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(connector);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(MAX_IDLE_PER_HOST)
        .build(https)
}

/// Why no connection to a receiver was made; the attempt's error kind follows from it.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URL has no host.
    #[error("no host in {0}")]
    NoHost(String),
    /// The target policy refused an address the name resolves to.
    #[error(transparent)]
    Policy(#[from] TargetError),
    /// The name could not be resolved.
    #[error(transparent)]
    Dns(#[from] LookupFailed),
    /// No address of the receiver took a connection.
    #[error("connect to {addr}: {source}")]
    Connect {
        /// The last address tried.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The receiver did not take the connection in time.
    #[error("connect to {addr}: no answer within {}s", CONNECT_TIMEOUT.as_secs())]
    ConnectTimeout {
        /// The last address tried.
        addr: SocketAddr,
    },
    /// The proxy could not be reached, or broke the connection.
    #[error("egress proxy {proxy}: {source}")]
    ProxyUnreachable {
        /// The proxy (its password masked).
        proxy: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The proxy answered `CONNECT` with a status other than 2xx, 401 and 407.
    #[error("egress proxy {proxy} refused CONNECT to {target}: {status}")]
    ProxyRefused {
        /// The proxy (its password masked).
        proxy: String,
        /// The checked address asked for.
        target: SocketAddr,
        /// Its answer.
        status: u16,
    },
    /// The proxy asks for credentials (407, or 401 as some proxies answer `CONNECT`): none
    /// given, or refused.
    #[error("egress proxy {proxy} refused the credentials ({status})")]
    ProxyAuth {
        /// The proxy (its password masked).
        proxy: String,
        /// Its answer.
        status: u16,
    },
    /// The proxy's answer was not HTTP, too long, or late.
    #[error("egress proxy {proxy}: {reason}")]
    ProxyProtocol {
        /// The proxy (its password masked).
        proxy: String,
        /// What was wrong.
        reason: String,
    },
}

impl ConnectError {
    /// The attempt's error kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ConnectError::NoHost(_) => ErrorKind::Request,
            ConnectError::Policy(_) => ErrorKind::Policy,
            ConnectError::Dns(_) => ErrorKind::Dns,
            ConnectError::Connect { .. } => ErrorKind::Connect,
            ConnectError::ConnectTimeout { .. } => ErrorKind::Timeout,
            ConnectError::ProxyUnreachable { .. }
            | ConnectError::ProxyRefused { .. }
            | ConnectError::ProxyProtocol { .. } => ErrorKind::Proxy,
            ConnectError::ProxyAuth { .. } => ErrorKind::ProxyAuth,
        }
    }
}

/// A receiver's name the system resolver could not resolve (the attempt's error kind `dns`).
#[derive(Debug, thiserror::Error)]
#[error("cannot resolve {host}: {source}")]
pub struct LookupFailed {
    /// The name.
    pub host: String,
    /// The resolver's error.
    #[source]
    pub source: io::Error,
}

/// Connects to receivers: resolves, checks every address against the policy, then connects
/// directly or through the proxy's tunnel.
#[derive(Clone)]
pub struct GuardedConnector {
    policy: Arc<TargetPolicy>,
    proxy: Option<Arc<ProxyRoute>>,
}

struct ProxyRoute {
    url: ProxyUrl,
    authorization: Option<String>,
    /// Whether the proxy's own address may skip the target policy.
    trusted: bool,
}

impl tower_service::Service<Uri> for GuardedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = ConnectError;
    type Future =
        Pin<Box<dyn Future<Output = Result<TokioIo<TcpStream>, ConnectError>> + Send + 'static>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let connector = self.clone();
        Box::pin(async move { connector.connect(dst).await })
    }
}

impl GuardedConnector {
    async fn connect(self, dst: Uri) -> Result<TokioIo<TcpStream>, ConnectError> {
        let host = dst
            .host()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
            .filter(|h| !h.is_empty())
            .ok_or_else(|| ConnectError::NoHost(dst.to_string()))?;
        let port = dst
            .port_u16()
            .unwrap_or(if dst.scheme_str() == Some("http") {
                80
            } else {
                443
            });
        let addrs = resolve_checked(&self.policy, host, port).await?;
        let stream = match &self.proxy {
            None => connect_first(&addrs).await?,
            Some(proxy) => tunnel_first(&self.policy, proxy, &addrs).await?,
        };
        // Requests are small and written whole: send them at once.
        let _ = stream.set_nodelay(true);
        Ok(TokioIo::new(stream))
    }
}

/// The addresses of `host`, each allowed by the policy; a host that mixes allowed and refused
/// answers is refused whole. A literal address skips the resolver.
async fn resolve_checked(
    policy: &TargetPolicy,
    host: &str,
    port: u16,
) -> Result<Vec<SocketAddr>, ConnectError> {
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(|source| LookupFailed {
                host: host.to_owned(),
                source,
            })?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(LookupFailed {
            host: host.to_owned(),
            source: io::Error::new(io::ErrorKind::NotFound, "no address"),
        }
        .into());
    }
    for addr in &addrs {
        policy.check_ip(host, addr.ip())?;
    }
    Ok(addrs)
}

/// A connection to the first of `addrs` that takes one.
async fn connect_first(addrs: &[SocketAddr]) -> Result<TcpStream, ConnectError> {
    let mut last = None;
    for &addr in addrs {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(source)) => last = Some(ConnectError::Connect { addr, source }),
            Err(_) => last = Some(ConnectError::ConnectTimeout { addr }),
        }
    }
    Err(last.expect("resolve_checked returns at least one address"))
}

/// A tunnel through the proxy to the first of `addrs` it connects to. A refusal of the
/// credentials ends the search at once: every address would get the same answer.
async fn tunnel_first(
    policy: &TargetPolicy,
    proxy: &ProxyRoute,
    addrs: &[SocketAddr],
) -> Result<TcpStream, ConnectError> {
    let proxy_addrs = if proxy.trusted {
        None
    } else {
        Some(resolve_checked(policy, proxy.url.host(), proxy.url.port()).await?)
    };
    let mut last = None;
    for &addr in addrs {
        match tunnel(proxy, proxy_addrs.as_deref(), addr).await {
            Ok(stream) => return Ok(stream),
            Err(err @ ConnectError::ProxyAuth { .. }) => return Err(err),
            Err(err) => last = Some(err),
        }
    }
    Err(last.expect("resolve_checked returns at least one address"))
}

/// Opens a connection to the proxy (at `checked` addresses when given, else its name as
/// resolved) and asks it to `CONNECT` to `target`: an address, never a name, so the proxy
/// resolves nothing.
async fn tunnel(
    proxy: &ProxyRoute,
    checked: Option<&[SocketAddr]>,
    target: SocketAddr,
) -> Result<TcpStream, ConnectError> {
    let shown = || proxy.url.masked();
    let handshake = async {
        let connected = match checked {
            Some(addrs) => TcpStream::connect(addrs).await,
            None => TcpStream::connect((proxy.url.host(), proxy.url.port())).await,
        };
        let mut stream = connected.map_err(|source| ConnectError::ProxyUnreachable {
            proxy: shown(),
            source,
        })?;
        let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some(authorization) = &proxy.authorization {
            request.push_str("Proxy-Authorization: ");
            request.push_str(authorization);
            request.push_str("\r\n");
        }
        request.push_str("\r\n");
        let broken = |source| ConnectError::ProxyUnreachable {
            proxy: shown(),
            source,
        };
        stream.write_all(request.as_bytes()).await.map_err(broken)?;
        let mut answer = Vec::with_capacity(512);
        let mut chunk = [0u8; 1024];
        loop {
            let n = stream.read(&mut chunk).await.map_err(broken)?;
            if n == 0 {
                return Err(ConnectError::ProxyProtocol {
                    proxy: shown(),
                    reason: "closed the connection before answering CONNECT".into(),
                });
            }
            answer.extend_from_slice(&chunk[..n]);
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(&answer) {
                Ok(httparse::Status::Complete(length)) => {
                    let status = response.code.unwrap_or_default();
                    return match status {
                        200..=299 if length == answer.len() => Ok(stream),
                        200..=299 => Err(ConnectError::ProxyProtocol {
                            proxy: shown(),
                            reason: "sent data before the tunnel was used".into(),
                        }),
                        401 | 407 => Err(ConnectError::ProxyAuth {
                            proxy: shown(),
                            status,
                        }),
                        status => Err(ConnectError::ProxyRefused {
                            proxy: shown(),
                            target,
                            status,
                        }),
                    };
                }
                Ok(httparse::Status::Partial) if answer.len() < MAX_PROXY_ANSWER => {}
                Ok(httparse::Status::Partial) => {
                    return Err(ConnectError::ProxyProtocol {
                        proxy: shown(),
                        reason: format!("answer to CONNECT longer than {MAX_PROXY_ANSWER} bytes"),
                    });
                }
                Err(err) => {
                    return Err(ConnectError::ProxyProtocol {
                        proxy: shown(),
                        reason: format!("answer to CONNECT is not HTTP: {err}"),
                    });
                }
            }
        }
    };
    tokio::time::timeout(CONNECT_TIMEOUT, handshake)
        .await
        .unwrap_or_else(|_| {
            Err(ConnectError::ProxyProtocol {
                proxy: shown(),
                reason: format!("no answer to CONNECT within {}s", CONNECT_TIMEOUT.as_secs()),
            })
        })
}
