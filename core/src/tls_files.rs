//! TLS settings read from PEM files, shared by the gRPC servers and clients of every binary:
//! a certificate and key to present, and a CA to check the other side against.

use std::path::{Path, PathBuf};

/// Why a TLS file could not be used.
#[derive(Debug, thiserror::Error)]
#[error("TLS file {path}: {source}")]
pub struct TlsFileError {
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub source: std::io::Error,
}

/// The largest PEM file read.
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// Reads a PEM file (bounded in size).
pub fn read_pem(path: &Path) -> Result<Vec<u8>, TlsFileError> {
    let fail = |source| TlsFileError {
        path: path.to_owned(),
        source,
    };
    crate::read_limited::read_file_limited(path, MAX_PEM_BYTES).map_err(|err| match err {
        crate::read_limited::ReadError::Io(err) => fail(err),
        other => fail(std::io::Error::other(format!(
            "{other}: more than a PEM file should be"
        ))),
    })
}
