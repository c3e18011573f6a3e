//! A throwaway certificate authority for tests.
//!
//! [`TestCa`] owns a self-signed CA made fresh for each test and a server certificate it issued
//! for `localhost` and `127.0.0.1`. Everything is generated up front, so the accessors cannot
//! fail. All rustls configs name the ring provider explicitly: nothing here depends on a
//! process-wide default provider.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Names the server certificate is valid for.
const SERVER_NAMES: [&str; 2] = ["localhost", "127.0.0.1"];

/// File name [`TestCa::write_ca_pem`] writes.
const CA_PEM_FILE: &str = "ca.pem";

/// A self-signed CA plus the TLS configs that use it.
pub struct TestCa {
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    server_config: Arc<ServerConfig>,
    client_config: Arc<ClientConfig>,
    /// Signs further certificates ([`TestCa::write_pair`]).
    issuer: Issuer<'static, KeyPair>,
}

/// What a certificate from [`TestCa::write_pair`] is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertUse {
    /// A server for `localhost` and `127.0.0.1`.
    Server,
    /// A client (mutual TLS).
    Client,
}

// === impl TestCa ===

impl TestCa {
    /// Makes a new CA and a server certificate for `localhost` and `127.0.0.1`.
    ///
    /// # Panics
    ///
    /// If key generation or signing fails, which only a broken crypto backend does; use
    /// [`TestCa::try_new`] to get the error instead.
    pub fn new() -> TestCa {
        match TestCa::try_new() {
            Ok(ca) => ca,
            Err(error) => panic!("creating the test CA: {error:#}"),
        }
    }

    /// Makes a new CA and a server certificate for `localhost` and `127.0.0.1`.
    pub fn try_new() -> anyhow::Result<TestCa> {
        let key = KeyPair::generate().context("generating the CA key")?;
        // A name of its own per CA, so a certificate from another test's CA fails as
        // `UnknownIssuer` instead of a confusing signature mismatch.
        let tag: String = key
            .public_key_raw()
            .iter()
            .rev()
            .take(6)
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("Herald Test CA {tag}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
        ];
        let ca_cert = params.self_signed(&key).context("self-signing the CA")?;
        let issuer = Issuer::new(params, key);

        let ca_der = ca_cert.der().clone();
        let server_config = server_config(&issuer).context("building the server TLS config")?;
        let client_config = client_config(&ca_der).context("building the client TLS config")?;
        Ok(TestCa {
            ca_pem: ca_cert.pem(),
            ca_der,
            server_config,
            client_config,
            issuer,
        })
    }

    /// Issues a certificate for `usage` and writes `dir/<name>.pem` and `dir/<name>-key.pem`;
    /// returns the two paths.
    pub fn write_pair(
        &self,
        dir: &Path,
        name: &str,
        usage: CertUse,
    ) -> anyhow::Result<(PathBuf, PathBuf)> {
        let mut params = CertificateParams::new(SERVER_NAMES.map(String::from).to_vec())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = match usage {
            CertUse::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            CertUse::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        let key = KeyPair::generate().context("generating a key")?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .context("signing a certificate")?;
        let cert_path = dir.join(format!("{name}.pem"));
        let key_path = dir.join(format!("{name}-key.pem"));
        std::fs::write(&cert_path, cert.pem())?;
        std::fs::write(&key_path, key.serialize_pem())?;
        Ok((cert_path, key_path))
    }

    /// The CA certificate, PEM-encoded, for clients that must trust it.
    pub fn ca_pem(&self) -> String {
        self.ca_pem.clone()
    }

    /// The CA certificate, DER-encoded.
    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.ca_der.clone()
    }

    /// Writes the CA certificate to `dir/ca.pem` and returns that path.
    pub fn write_ca_pem(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        let path = dir.join(CA_PEM_FILE);
        std::fs::write(&path, &self.ca_pem)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// A server config presenting the `localhost`/`127.0.0.1` certificate, ALPN `h2` and
    /// `http/1.1`.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.server_config)
    }

    /// A server config like [`TestCa::server_config`] that also requires a client certificate
    /// issued by this CA (mutual TLS).
    pub fn server_config_requiring_client_certs(&self) -> anyhow::Result<Arc<ServerConfig>> {
        server_config_with(&self.issuer, Some(&self.ca_der))
    }

    /// A client config that trusts only this CA, without ALPN (clone it to add some).
    pub fn client_config(&self) -> Arc<ClientConfig> {
        Arc::clone(&self.client_config)
    }
}

impl Default for TestCa {
    /// Same as [`TestCa::new`].
    fn default() -> Self {
        TestCa::new()
    }
}

impl fmt::Debug for TestCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

// === helpers ===

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Issues a server certificate for [`SERVER_NAMES`] and builds a config around it.
fn server_config(issuer: &Issuer<'_, KeyPair>) -> anyhow::Result<Arc<ServerConfig>> {
    server_config_with(issuer, None)
}

/// The same, requiring a client certificate from `client_ca` when one is given.
fn server_config_with(
    issuer: &Issuer<'_, KeyPair>,
    client_ca: Option<&CertificateDer<'static>>,
) -> anyhow::Result<Arc<ServerConfig>> {
    let mut params = CertificateParams::new(SERVER_NAMES.map(String::from).to_vec())?;
    params
        .distinguished_name
        .push(DnType::CommonName, SERVER_NAMES[0]);
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().context("generating the server key")?;
    let cert = params
        .signed_by(&key, issuer)
        .context("signing the server certificate")?;

    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let builder =
        ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            roots.add(ca.clone())?;
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(vec![cert.der().clone()], key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn client_config(ca: &CertificateDer<'static>) -> anyhow::Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone())?;
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::ServerName;
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    use super::*;

    /// Handshakes a client offering `alpn` with a server using `server`, against `name`.
    async fn handshake(
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
        name: &str,
        alpn: &[&[u8]],
    ) -> anyhow::Result<Option<Vec<u8>>> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await?;
            TlsAcceptor::from(server).accept(tcp).await?;
            anyhow::Ok(())
        });
        let mut client = (*client).clone();
        client.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let tcp = TcpStream::connect(addr).await?;
        let tls = TlsConnector::from(Arc::new(client))
            .connect(ServerName::try_from(name.to_owned())?, tcp)
            .await?;
        let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        server.abort();
        Ok(alpn)
    }

    #[tokio::test]
    async fn server_cert_verifies_for_localhost_and_loopback_ip() -> anyhow::Result<()> {
        let ca = TestCa::new();
        for name in SERVER_NAMES {
            let alpn = handshake(ca.server_config(), ca.client_config(), name, &[b"h2"]).await?;
            assert_eq!(alpn.as_deref(), Some(&b"h2"[..]), "{name}");
        }
        let alpn = handshake(
            ca.server_config(),
            ca.client_config(),
            "localhost",
            &[b"http/1.1"],
        )
        .await?;
        assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
        Ok(())
    }

    #[tokio::test]
    async fn another_ca_is_not_trusted() {
        let (ours, theirs) = (TestCa::new(), TestCa::new());
        let result = handshake(
            ours.server_config(),
            theirs.client_config(),
            "localhost",
            &[],
        )
        .await;
        let error = format!("{:#}", result.expect_err("a foreign CA was trusted"));
        assert!(error.contains("UnknownIssuer"), "{error}");
    }

    #[test]
    fn writes_a_pem_that_parses_back() -> anyhow::Result<()> {
        let ca = TestCa::new();
        let dir = tempfile::tempdir()?;
        let path = ca.write_ca_pem(dir.path())?;
        assert_eq!(path, dir.path().join("ca.pem"));
        let pem = std::fs::read_to_string(&path)?;
        assert_eq!(pem, ca.ca_pem());
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
        Ok(())
    }
}
