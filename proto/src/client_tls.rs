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
    /// A client certificate without the CA file that turns TLS on: the certificate (and any
    /// token) would go nowhere, or in plain text.
    #[error("a client certificate needs the server's CA file too (TLS is off without it)")]
    IdentityWithoutCa,
}

/// The TLS settings for `ca` (turns TLS on) and, when given, the client certificate `cert`
/// with its `key`; `None` without a CA. Half a setting (a certificate without its key, or
/// either without a CA) is refused rather than quietly dropped.
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
    let Some(ca) = ca else {
        return match identity {
            Some(_) => Err(ClientTlsError::IdentityWithoutCa),
            None => Ok(None),
        };
    };
    let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read_pem(ca)?));
    if let Some((cert, key)) = identity {
        config = config.identity(Identity::from_pem(read_pem(cert)?, read_pem(key)?));
    }
    Ok(Some(config))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(matches!(
            config(None, Some(cert), Some(key)),
            Err(ClientTlsError::IdentityWithoutCa)
        ));
        // The files are read only for a whole setting: this one names a missing CA file.
        assert!(matches!(
            config(Some(ca), None, None),
            Err(ClientTlsError::File(_))
        ));
    }
}
