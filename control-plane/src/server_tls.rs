//! TLS of the control plane's API from PEM files, read again when they change: the server's
//! certificate and key, and (for mutual TLS) the CA whose client certificates are required.
//! A renewed certificate or a rotated CA takes effect for new connections within
//! [`RELOAD_EVERY`], without a restart; a file that does not parse is logged and the previous
//! material stays in use.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use herald_core::tls_files::read_pem;

/// How often the files are checked for changes.
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);
/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error(transparent)]
    File(#[from] herald_core::tls_files::TlsFileError),
    /// A file's contents are not usable.
    #[error("TLS: {0}")]
    Invalid(String),
}

/// The files.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The server certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// CA certificates (PEM) of required client certificates, for mutual TLS.
    pub client_ca: Option<PathBuf>,
}

struct Material {
    key: Arc<CertifiedKey>,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
}

/// TLS material that follows its files.
pub struct ReloadingTls {
    files: TlsFiles,
    current: RwLock<Arc<Material>>,
    stamps: Mutex<Vec<Option<SystemTime>>>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn invalid(what: &str, err: impl std::fmt::Display) -> TlsError {
    TlsError::Invalid(format!("{what}: {err}"))
}

impl TlsFiles {
    fn paths(&self) -> Vec<&PathBuf> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .collect()
    }

    fn stamps(&self) -> Vec<Option<SystemTime>> {
        self.paths()
            .into_iter()
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .collect()
    }

    fn load(&self) -> Result<Material, TlsError> {
        let cert_pem = read_pem(&self.cert)?;
        let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid("certificate", e))?;
        if certs.is_empty() {
            return Err(invalid("certificate", "no certificate in the file"));
        }
        let key_pem = read_pem(&self.key)?;
        let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
            .map_err(|e| invalid("key", e))?
            .ok_or_else(|| invalid("key", "no private key in the file"))?;
        let provider = provider();
        // The key is read, and checked to be the certificate's: a renewal that has written one
        // file and not yet the other is refused (the previous pair stays in use), not served.
        let key = CertifiedKey::from_der(certs, key, &provider).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => invalid(
                "key",
                "does not belong to the certificate (its public key differs)",
            ),
            // The key does not load, or the certificate does not parse.
            e => invalid("certificate and key", e),
        })?;
        let verifier = match &self.client_ca {
            None => None,
            Some(ca) => {
                let pem = read_pem(ca)?;
                let mut roots = RootCertStore::empty();
                for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                    roots
                        .add(cert.map_err(|e| invalid("client CA", e))?)
                        .map_err(|e| invalid("client CA", e))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| invalid("client CA", e))?;
                Some(verifier)
            }
        };
        Ok(Material {
            key: Arc::new(key),
            verifier,
        })
    }
}

impl ReloadingTls {
    /// Loads the files now.
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let stamps = files.stamps();
        let material = files.load()?;
        Ok(Arc::new(ReloadingTls {
            files,
            current: RwLock::new(Arc::new(material)),
            stamps: Mutex::new(stamps),
        }))
    }

    fn material(&self) -> Arc<Material> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The acceptor for new connections (it always uses the current material), offering the
    /// application protocols `alpn` (gRPC: `h2`; HTTP: `h2` and `http/1.1`).
    pub fn acceptor(self: &Arc<Self>, alpn: &[&[u8]]) -> Result<TlsAcceptor, TlsError> {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid("protocol versions", e))?;
        let builder = if self.files.client_ca.is_some() {
            builder.with_client_cert_verifier(Arc::new(Verifier(self.clone())))
        } else {
            builder.with_no_client_auth()
        };
        let mut config = builder.with_cert_resolver(Arc::new(Resolver(self.clone())));
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    /// Reloads the files whenever they change, until `stop`.
    pub async fn follow(self: Arc<Self>, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(RELOAD_EVERY) => {}
            }
            let stamps = self.files.stamps();
            let changed = {
                let mut seen = self.stamps.lock().unwrap_or_else(|e| e.into_inner());
                let changed = *seen != stamps;
                *seen = stamps;
                changed
            };
            if !changed {
                continue;
            }
            match self.files.load() {
                Ok(material) => {
                    *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(material);
                    tracing::info!("TLS certificates reloaded");
                }
                Err(err) => {
                    tracing::warn!(error = %err, "TLS files changed but are not usable; keeping the previous ones")
                }
            }
        }
    }

    /// Accepts connections on `listener` and completes their handshakes (each on a task of
    /// its own, so a slow client holds up nobody), offering the protocols `alpn`, until `stop`;
    /// the accepting and handshaking tasks are `tasks`' (drained at shutdown).
    pub fn incoming(
        self: &Arc<Self>,
        listener: TcpListener,
        alpn: &[&[u8]],
        stop: CancellationToken,
        tasks: &TaskTracker,
    ) -> Result<
        tokio_stream::wrappers::ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>>,
        TlsError,
    > {
        let acceptor = self.acceptor(alpn)?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let handshakes = tasks.clone();
        tasks.spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = stop.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let (tcp, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        tracing::warn!(error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                handshakes.spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send(Ok(tls)).await;
                        }
                        Ok(Err(err)) => {
                            tracing::debug!(%peer, error = %err, "TLS handshake refused")
                        }
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
    }
}

/// Serves the current certificate.
#[derive(Debug)]
struct Resolver(Arc<ReloadingTls>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.material().key.clone())
    }
}

/// Checks client certificates against the current CA.
#[derive(Debug)]
struct Verifier(Arc<ReloadingTls>);

impl Verifier {
    fn inner(&self) -> Result<Arc<dyn ClientCertVerifier>, rustls::Error> {
        self.0
            .material()
            .verifier
            .clone()
            .ok_or_else(|| rustls::Error::General("no client CA loaded".into()))
    }
}

impl std::fmt::Debug for ReloadingTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ClientCertVerifier for Verifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner()?
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner()?.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner()?.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner()
            .map(|v| v.supported_verify_schemes())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for `localhost` and its key, written to `dir` as `name`.
    fn pair(dir: &std::path::Path, name: &str) -> (PathBuf, PathBuf) {
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("a cert");
        let (cert_file, key_file) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}-key.pem")),
        );
        std::fs::write(&cert_file, cert.pem()).expect("written");
        std::fs::write(&key_file, signing_key.serialize_pem()).expect("written");
        (cert_file, key_file)
    }

    #[test]
    fn a_key_that_is_not_the_certificate_s_is_refused() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (cert, key) = pair(dir.path(), "one");
        let (_, other_key) = pair(dir.path(), "two");
        let files = |key: &PathBuf| TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: None,
        };
        assert!(files(&key).load().is_ok(), "the pair");
        let refused = files(&other_key).load().err().expect("another key");
        assert!(
            matches!(&refused, TlsError::Invalid(why) if why.contains("does not belong")),
            "{refused:?}"
        );
    }
}
