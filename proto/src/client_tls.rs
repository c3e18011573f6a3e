//! The client side of TLS to Herald's gRPC servers (agents and the CLI to the control plane):
//! the CA that signed the server's certificate, and for mutual TLS the client's own
//! certificate and key, all PEM files.

use std::path::Path;

use herald_core::tls_files::{TlsFileError, read_pem};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// The TLS settings for `ca` (turns TLS on) and, when both are given, the client
/// certificate `cert` with its `key`; `None` without a CA.
pub fn config(
    ca: Option<&Path>,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<Option<ClientTlsConfig>, TlsFileError> {
    let Some(ca) = ca else {
        return Ok(None);
    };
    let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read_pem(ca)?));
    if let (Some(cert), Some(key)) = (cert, key) {
        config = config.identity(Identity::from_pem(read_pem(cert)?, read_pem(key)?));
    }
    Ok(Some(config))
}
