//! Whether a failed read or write means the disk is full or failing. The two are answered
//! differently (a full disk with `RESOURCE_EXHAUSTED` until space is freed, an I/O error with
//! `UNAVAILABLE`), so every store on local files tells them apart by the same rule, from the
//! error's kind and never from its text.

use std::io;
use std::path::Path;

/// A fault of the disk under a store's files.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DiskFault {
    /// The disk (or the process's quota on it) is full: writes fail until space is freed.
    #[error("the disk is full: {0}")]
    Full(String),
    /// Reading or writing failed for another reason (a failing disk, a file removed).
    #[error("an I/O error: {0}")]
    Io(String),
}

impl DiskFault {
    /// The fault an I/O error is: full for ENOSPC and EDQUOT, an I/O error otherwise.
    pub fn of_io(err: &io::Error) -> DiskFault {
        const ENOSPC: i32 = 28;
        const EDQUOT: i32 = 122;
        let full = matches!(err.raw_os_error(), Some(ENOSPC | EDQUOT))
            || matches!(
                err.kind(),
                io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
            );
        if full {
            DiskFault::Full(err.to_string())
        } else {
            DiskFault::Io(err.to_string())
        }
    }

    /// Whether the disk is full (rather than failing).
    pub fn is_full(&self) -> bool {
        matches!(self, DiskFault::Full(_))
    }
}

/// The free space a disk that filled up must have again before a store says it takes new
/// work: a store's small write may fit in pages its file has free while every larger one
/// still fails, and answering between them would flap. Room for a few batches with the
/// bodies they carry, and the file's growth.
pub const RECOVERY_ROOM: u64 = 16 * 1024 * 1024;

/// Whether the file system holding `dir` has at least `min_free` bytes free for the process's
/// writes. A file system whose space cannot be read is taken to have them: the writes
/// themselves will tell.
pub fn has_room(dir: &Path, min_free: u64) -> bool {
    rustix::fs::statvfs(dir)
        .map(|stat| stat.f_bavail.saturating_mul(stat.f_frsize) >= min_free)
        .unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_and_a_quota_are_full_and_other_errors_are_io() {
        assert!(DiskFault::of_io(&io::Error::from_raw_os_error(28)).is_full());
        assert!(DiskFault::of_io(&io::Error::from_raw_os_error(122)).is_full());
        assert!(DiskFault::of_io(&io::Error::from(io::ErrorKind::StorageFull)).is_full());
        let eio = DiskFault::of_io(&io::Error::from_raw_os_error(5));
        assert!(matches!(eio, DiskFault::Io(_)), "{eio:?}");
    }

    #[test]
    fn room_is_the_free_space_of_the_directorys_file_system() {
        let dir = std::env::temp_dir();
        assert!(has_room(&dir, 0));
        assert!(!has_room(&dir, u64::MAX), "no file system has 16 EiB free");
    }
}
