//! Reading a file or a stream whole, within a limit. The size a file reports is not enough:
//! pipes, devices and process substitutions (`--data @/dev/zero`, `@<(jq …)`) report none, so
//! the limit is kept while reading, and input past it is refused rather than cut.

use std::io::Read;
use std::path::Path;

/// Why input could not be read whole.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// There was more than the limit.
    #[error("larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// Reading failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The input was to be text and is not UTF-8.
    #[error("not UTF-8 text")]
    NotText,
}

/// All of `reader`, refused when it holds more than `limit` bytes (it reads at most one more).
pub fn read_limited(reader: impl Read, limit: u64) -> Result<Vec<u8>, ReadError> {
    let mut bytes = Vec::new();
    reader
        .take(limit.saturating_add(1))
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(ReadError::TooLarge { limit });
    }
    Ok(bytes)
}

/// The whole file at `path` (of any kind: a pipe or device too), refused past `limit` bytes.
pub fn read_file_limited(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    let file = std::fs::File::open(path)?;
    // A regular file says its size: refuse a large one before reading any of it.
    if file.metadata()?.len() > limit {
        return Err(ReadError::TooLarge { limit });
    }
    read_limited(file, limit)
}

/// The whole file at `path` as text, refused past `limit` bytes.
pub fn read_text_file_limited(path: &Path, limit: u64) -> Result<String, ReadError> {
    String::from_utf8(read_file_limited(path, limit)?).map_err(|_| ReadError::NotText)
}

/// All of `reader` as text, refused past `limit` bytes.
pub fn read_text_limited(reader: impl Read, limit: u64) -> Result<String, ReadError> {
    String::from_utf8(read_limited(reader, limit)?).map_err(|_| ReadError::NotText)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_past_the_limit_is_refused_not_cut() {
        assert_eq!(read_limited(&b"abc"[..], 3).expect("at the limit"), b"abc");
        assert!(matches!(
            read_limited(&b"abcd"[..], 3),
            Err(ReadError::TooLarge { limit: 3 })
        ));
        // An endless stream stops one byte past the limit.
        assert!(matches!(
            read_limited(std::io::repeat(0), 1024),
            Err(ReadError::TooLarge { limit: 1024 })
        ));
        assert!(matches!(
            read_text_limited(&[0xff, 0xfe][..], 10),
            Err(ReadError::NotText)
        ));
    }

    #[test]
    fn files_of_any_kind_are_bounded() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let small = dir.path().join("small");
        std::fs::write(&small, "hello").expect("written");
        assert_eq!(
            read_text_file_limited(&small, 5).expect("read"),
            "hello".to_owned()
        );
        assert!(matches!(
            read_file_limited(&small, 4),
            Err(ReadError::TooLarge { limit: 4 })
        ));
        // A device reports no size: the limit holds while reading.
        assert!(matches!(
            read_file_limited(Path::new("/dev/zero"), 4096),
            Err(ReadError::TooLarge { limit: 4096 })
        ));
        assert!(matches!(
            read_file_limited(&dir.path().join("absent"), 10),
            Err(ReadError::Io(_))
        ));
    }
}
