//! Reading what a command is given in a file (or on standard input), within a limit.

use anyhow::Context as _;
use herald_core::read_limited::{read_limited, read_text_file_limited, read_text_limited};

/// The text of `file` (`-`: standard input), refused when larger than `limit` bytes (never
/// cut: a cut file could still parse, as fewer entries).
pub fn read_text(file: &str, limit: u64) -> anyhow::Result<String> {
    if file == "-" {
        return read_text_limited(std::io::stdin(), limit).context("reading standard input");
    }
    read_text_file_limited(std::path::Path::new(file), limit)
        .with_context(|| format!("reading {file}"))
}

/// The bytes of `file` (`-`: standard input), refused when larger than `limit` bytes.
pub fn read_bytes(file: &str, limit: u64) -> anyhow::Result<Vec<u8>> {
    if file == "-" {
        return read_limited(std::io::stdin(), limit).context("reading standard input");
    }
    herald_core::read_limited::read_file_limited(std::path::Path::new(file), limit)
        .with_context(|| format!("reading {file}"))
}
