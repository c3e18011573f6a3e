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
    let len = std::fs::metadata(path).map_err(fail)?.len();
    if len > MAX_PEM_BYTES {
        return Err(fail(std::io::Error::other(format!(
            "{len} bytes, more than a PEM file of {MAX_PEM_BYTES} should be"
        ))));
    }
    std::fs::read(path).map_err(fail)
}
