//! The client side of TLS to Herald's gRPC servers (agents and the CLI to the control plane):
//! the CA that signed the server's certificate, and for mutual TLS the client's own
//! certificate and key, all PEM files.

use std::path::Path;

use herald_core::tls_files::{TlsFileError, read_pem};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// Why the TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ClientTlsError {
    /// A file could not be read.
    #[error(transparent)]
    File(#[from] TlsFileError),
    /// A client certificate without its key, or a key without its certificate: mutual TLS
    /// would silently be off.
    #[error("a client certificate and its key go together: give both files or neither")]
    HalfIdentity,
    /// A file that reads but holds no PEM block of what it should: TLS would fail at every
    /// connection, long after the start.
    #[error("{path}: holds no PEM {what}")]
    NotPem {
        /// The file.
        path: std::path::PathBuf,
        /// What it should hold: `certificate` or `private key`.
        what: &'static str,
    },
}

/// The PEM certificates in `path`, refused when it holds none.
fn read_certificates(path: &Path) -> Result<Vec<u8>, ClientTlsError> {
    let pem = read_pem(path)?;
    let certificates = rustls_pemfile::certs(&mut pem.as_slice())
        .filter_map(Result::ok)
        .count();
    if certificates == 0 {
        return Err(ClientTlsError::NotPem {
            path: path.to_owned(),
            what: "certificate",
        });
    }
    Ok(pem)
}

/// The PEM private key in `path`, refused when it holds none.
fn read_key(path: &Path) -> Result<Vec<u8>, ClientTlsError> {
    let pem = read_pem(path)?;
    match rustls_pemfile::private_key(&mut pem.as_slice()) {
        Ok(Some(_)) => Ok(pem),
        _ => Err(ClientTlsError::NotPem {
            path: path.to_owned(),
            what: "private key",
        }),
    }
}

/// The TLS settings for `ca` and, when given, the client certificate `cert` with its `key`;
/// a certificate without a CA trusts the system's CAs for the server's, as an `https://` URL
/// without settings does; `None` without either. Half an identity (a certificate without its
/// key, or a key without its certificate) is refused rather than quietly dropped.
pub fn config(
    ca: Option<&Path>,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<Option<ClientTlsConfig>, ClientTlsError> {
    let identity = match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => return Err(ClientTlsError::HalfIdentity),
    };
    let mut config = match (ca, identity) {
        (Some(ca), _) => {
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read_certificates(ca)?))
        }
        (None, Some(_)) => ClientTlsConfig::new().with_native_roots(),
        (None, None) => return Ok(None),
    };
    if let Some((cert, key)) = identity {
        config = config.identity(Identity::from_pem(read_certificates(cert)?, read_key(key)?));
    }
    Ok(Some(config))
}

/// The TLS settings to reach `url` with: `configured` when given; for an `https://` URL without
/// them, the system's trusted CAs (a control plane behind a certificate of a public or
/// company CA needs no CA file); none for any other URL.
pub fn for_url(url: &str, configured: Option<ClientTlsConfig>) -> Option<ClientTlsConfig> {
    let https = url
        .split_once("://")
        .is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case("https"));
    match configured {
        Some(config) => Some(config),
        None if https => Some(ClientTlsConfig::new().with_native_roots()),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_without_settings_trusts_the_system() {
        assert!(for_url("https://cp.example.com:7700", None).is_some());
        assert!(for_url("HTTPS://cp.example.com:7700", None).is_some());
        assert!(for_url("http://127.0.0.1:7700", None).is_none());
        assert!(for_url("unix:/run/herald.sock", None).is_none());
        assert!(for_url("http://127.0.0.1:7700", Some(ClientTlsConfig::new())).is_some());
    }

    #[test]
    fn half_a_setting_is_refused() {
        let (ca, cert, key) = (Path::new("ca.pem"), Path::new("c.pem"), Path::new("k.pem"));
        assert!(matches!(config(None, None, None), Ok(None)));
        assert!(matches!(
            config(Some(ca), Some(cert), None),
            Err(ClientTlsError::HalfIdentity)
        ));
        assert!(matches!(
            config(Some(ca), None, Some(key)),
            Err(ClientTlsError::HalfIdentity)
        ));
        // A certificate alone trusts the system's CAs: its files are read.
        assert!(matches!(
            config(None, Some(cert), Some(key)),
            Err(ClientTlsError::File(_))
        ));
        // The files are read only for a whole setting: this one names a missing CA file.
        assert!(matches!(
            config(Some(ca), None, None),
            Err(ClientTlsError::File(_))
        ));
    }

    #[test]
    fn a_file_without_its_pem_block_is_refused() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let text = dir.path().join("hostname");
        std::fs::write(&text, "not a certificate\n").expect("written");
        assert!(matches!(
            config(Some(&text), None, None),
            Err(ClientTlsError::NotPem {
                what: "certificate",
                ..
            })
        ));
    }
}
