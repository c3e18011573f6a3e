//! Reading what a command is given in a file (or on standard input), within a limit.
//!
//! A file the command line names that cannot be used (absent, unreadable, too large, not
//! text) is a usage error (exit 2), as clap's own checks of `@file` flags are; a failure to
//! read one that exists is the operation failing (exit 1).

use std::io::ErrorKind;
use std::path::Path;

use herald_core::read_limited::{self, ReadError};

use crate::usage;

/// The text of `file` (`-`: standard input), refused when larger than `limit` bytes (never
/// cut: a cut file could still parse, as fewer entries).
pub fn read_text(file: &str, limit: u64) -> anyhow::Result<String> {
    let read = if file == "-" {
        read_limited::read_text_limited(std::io::stdin(), limit)
    } else {
        read_limited::read_text_file_limited(Path::new(file), limit)
    };
    read.map_err(|err| refused(file, err))
}

/// The most characters of a parser's message an error quotes.
const MAX_QUOTED_CHARS: usize = 300;

/// `text` (of `file`) read as YAML, or JSON, which YAML reads: or an error saying it is not
/// `what`, with at most a few lines of what the parser found (its message can quote a whole
/// value, and so a whole file).
pub fn parse_yaml<T: serde::de::DeserializeOwned>(
    file: &str,
    text: &str,
    what: &str,
) -> anyhow::Result<T> {
    serde_yaml_ng::from_str(text).map_err(|err| {
        let said = err.to_string();
        let mut quoted: String = said.chars().take(MAX_QUOTED_CHARS).collect();
        if quoted.len() < said.len() {
            quoted.push('…');
        }
        anyhow::anyhow!("{file} is not {what}: {quoted}")
    })
}

/// The bytes of `file` (`-`: standard input), refused when larger than `limit` bytes.
pub fn read_bytes(file: &str, limit: u64) -> anyhow::Result<Vec<u8>> {
    let read = if file == "-" {
        read_limited::read_limited(std::io::stdin(), limit)
    } else {
        read_limited::read_file_limited(Path::new(file), limit)
    };
    read.map_err(|err| refused(file, err))
}

/// The error for `file` that could not be read: a usage error when the file given is not one
/// the command can take.
fn refused(file: &str, err: ReadError) -> anyhow::Error {
    let name = if file == "-" { "standard input" } else { file };
    match &err {
        ReadError::TooLarge { .. } | ReadError::NotText => usage::usage(format!("{name}: {err}")),
        ReadError::Io(io)
            if matches!(
                io.kind(),
                ErrorKind::NotFound | ErrorKind::PermissionDenied | ErrorKind::IsADirectory
            ) =>
        {
            usage::usage(format!("{name}: {err}"))
        }
        ReadError::Io(_) => anyhow::Error::new(err).context(format!("reading {name}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_the_command_cannot_take_is_a_usage_error() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let big = dir.path().join("big.json");
        std::fs::write(&big, "x".repeat(100)).expect("written");
        let big = big.to_str().expect("utf-8");
        for err in [
            read_bytes(big, 10).expect_err("too large"),
            read_text("/nonexistent/file.yaml", 10).expect_err("absent"),
            read_bytes("/dev/zero", 4096).expect_err("endless"),
            read_text(dir.path().to_str().expect("utf-8"), 10).expect_err("a directory"),
        ] {
            assert!(err.downcast_ref::<usage::UsageError>().is_some(), "{err:#}");
        }
        assert_eq!(read_bytes(big, 100).expect("read").len(), 100);
    }

    #[test]
    fn a_file_that_does_not_parse_is_named_without_quoting_all_of_it() {
        let text = format!("\"{}\"", "x".repeat(100_000));
        let err = parse_yaml::<Vec<serde_json::Value>>("big.yaml", &text, "a list")
            .expect_err("a string, not a list");
        let message = err.to_string();
        assert!(message.starts_with("big.yaml is not a list: "), "{message}");
        assert!(message.len() < 1_000, "{} bytes", message.len());
    }
}
