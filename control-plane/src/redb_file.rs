//! The control plane's redb files (the embedded delivery log and config store), opened again
//! after a disk fault.
//!
//! Once a write to a redb file fails with an I/O error (the disk full, or failing), redb refuses
//! every later transaction until the file is closed and opened again. [`RedbFile`] does that by
//! itself on the next use, so a control plane whose disk filled up writes again soon after
//! space is freed, without a restart. Opening again may mean a repair (redb checks a file
//! that was not closed cleanly), so while writes keep failing it is tried less and less often:
//! at once, then after [`REOPEN_FIRST`] and twice as long each time, up to [`REOPEN_MAX`]. Until a write succeeds
//! again the fault is kept ([`RedbFile::fault`]) for health checks to report.
//!
//! Errors keep what kind of fault they are ([`Fault`]): a full disk is answered with
//! `RESOURCE_EXHAUSTED` and an I/O error with `UNAVAILABLE`, never told apart by their text.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use herald_core::disk_fault::DiskFault;
use redb::Database;
use tokio::time::Instant;

/// How long after a fault the file is first opened again.
pub const REOPEN_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between two openings while writes keep failing.
pub const REOPEN_MAX: Duration = Duration::from_secs(30);
/// How long opening again waits for the reads still using the old handle to finish.
const READERS_WAIT: Duration = Duration::from_millis(200);

/// A redb file that is opened again after a disk fault. Shared by reference (`Arc`).
pub struct RedbFile {
    path: PathBuf,
    /// redb's page cache, in bytes (redb's own default is 1 GiB).
    cache_bytes: usize,
    slot: Mutex<Slot>,
}

struct Slot {
    /// The open database; `None` once it was closed to be opened again and that failed.
    db: Option<Arc<Database>>,
    /// The fault seen since the last write that succeeded.
    fault: Option<DiskFault>,
    /// The handle refuses every transaction since the fault: it must be opened again.
    broken: bool,
    /// When the next attempt to open again may be made.
    next_try: Instant,
    /// The wait before the next opening after this one, doubled while writes keep failing.
    backoff: Duration,
}

/// What the file's errors are: either a disk fault or another failure.
pub trait Fault {
    /// The disk fault this error is, if it is one.
    fn disk_fault(&self) -> Option<&DiskFault>;
}

impl RedbFile {
    /// Opens (or creates) the file at `path`, with a page cache of `cache_bytes`.
    pub fn create(path: &Path, cache_bytes: usize) -> Result<Self, Failure> {
        let db = open(path, cache_bytes).map_err(|err| not_opened(path, err))?;
        Ok(RedbFile {
            path: path.to_owned(),
            cache_bytes,
            slot: Mutex::new(Slot {
                db: Some(Arc::new(db)),
                fault: None,
                broken: false,
                next_try: Instant::now(),
                backoff: REOPEN_FIRST,
            }),
        })
    }

    /// The directory the file is in.
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// The fault seen since the last write that succeeded, if any.
    pub fn fault(&self) -> Option<DiskFault> {
        self.slot().fault.clone()
    }

    /// Runs `work` on the database (opened again first, after a fault) and notes what its
    /// result says of the disk: a disk fault breaks the handle; a `write` that succeeds
    /// clears the fault. Blocking: call it off the async threads.
    pub fn run<T, E: Fault + From<DiskFault>>(
        &self,
        write: bool,
        work: impl FnOnce(&Database) -> Result<T, E>,
    ) -> Result<T, E> {
        let db = self.db()?;
        let result = work(&db);
        drop(db);
        match &result {
            Ok(_) if write => self.wrote(),
            Ok(_) => {}
            Err(err) => {
                if let Some(fault) = err.disk_fault() {
                    self.faulted(fault.clone());
                }
            }
        }
        result
    }

    /// The database to use now, opened again first when a fault broke it.
    fn db(&self) -> Result<Arc<Database>, DiskFault> {
        let mut slot = self.slot();
        if let (false, Some(db)) = (slot.broken, &slot.db) {
            return Ok(db.clone());
        }
        let fault = slot
            .fault
            .clone()
            .unwrap_or_else(|| DiskFault::Io("the file is not open".into()));
        let now = Instant::now();
        if now < slot.next_try {
            return Err(fault);
        }
        slot.next_try = now + slot.backoff;
        slot.backoff = (slot.backoff * 2).min(REOPEN_MAX);
        if let Some(old) = slot.db.take() {
            // redb locks its file: it opens again only once every read still using the old
            // handle has let go of it.
            let deadline = now + READERS_WAIT;
            while Arc::strong_count(&old) > 1 {
                if Instant::now() >= deadline {
                    slot.db = Some(old);
                    return Err(fault);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        match open(&self.path, self.cache_bytes) {
            Ok(db) => {
                tracing::info!(file = %self.path.display(), %fault, "opened again after a disk fault");
                let db = Arc::new(db);
                slot.db = Some(db.clone());
                slot.broken = false;
                Ok(db)
            }
            Err(err) => {
                tracing::warn!(file = %self.path.display(), error = %err, "cannot open again yet");
                Err(fault)
            }
        }
    }

    fn faulted(&self, fault: DiskFault) {
        let mut slot = self.slot();
        if slot.fault.is_none() {
            tracing::error!(file = %self.path.display(), %fault, "a disk fault: writes are refused until it is opened again with space to write");
        }
        slot.fault = Some(fault);
        slot.broken = true;
    }

    fn wrote(&self) {
        let mut slot = self.slot();
        if let Some(fault) = slot.fault.take() {
            tracing::info!(file = %self.path.display(), %fault, "writes succeed again after a disk fault");
        }
        slot.backoff = REOPEN_FIRST;
    }

    fn slot(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Why the file at `path` did not open, naming it.
/// Opens (or creates) the redb file at `path` with a page cache of `cache_bytes`.
fn open(path: &Path, cache_bytes: usize) -> Result<Database, redb::DatabaseError> {
    Database::builder().set_cache_size(cache_bytes).create(path)
}

fn not_opened(path: &Path, err: redb::DatabaseError) -> Failure {
    let at = path.display();
    match err {
        redb::DatabaseError::DatabaseAlreadyOpen => Failure::Other(format!(
            "{at} is open in another process: is another control plane (or herald dev) \
             running on this --data-dir?"
        )),
        redb::DatabaseError::Storage(redb::StorageError::Io(err))
            if err.kind() == std::io::ErrorKind::InvalidData =>
        {
            Failure::Other(format!(
                "{at} is damaged or not one of Herald's files: {err}"
            ))
        }
        other => match other.into_failure() {
            Failure::Disk(DiskFault::Full(e)) => {
                Failure::Disk(DiskFault::Full(format!("{at}: {e}")))
            }
            Failure::Disk(DiskFault::Io(e)) => Failure::Disk(DiskFault::Io(format!("{at}: {e}"))),
            Failure::Other(e) => Failure::Other(format!("{at}: {e}")),
        },
    }
}

/// A failure met on a redb file: a disk fault, or another failure (a record that does not
/// decode, a task that died, a store that breaks its own rules) told by its text.
#[derive(Debug)]
pub enum Failure {
    /// The disk is full or failing.
    Disk(DiskFault),
    /// Anything else.
    Other(String),
}

/// An error met on a redb file, as the [`Failure`] it is.
pub trait IntoFailure {
    /// The failure this error is.
    fn into_failure(self) -> Failure;
}

/// redb's error types: a disk fault, or a failure of the store.
macro_rules! redb_failure {
    ($($kind:ty),*) => {$(
        impl IntoFailure for $kind {
            fn into_failure(self) -> Failure {
                match redb::Error::from(self) {
                    redb::Error::Io(err) => Failure::Disk(DiskFault::of_io(&err)),
                    redb::Error::PreviousIo => Failure::Disk(DiskFault::Io(
                        "an earlier write to the file failed; it is opened again".into(),
                    )),
                    other => Failure::Other(other.to_string()),
                }
            }
        }
    )*};
}
redb_failure!(
    redb::Error,
    redb::StorageError,
    redb::TransactionError,
    redb::CommitError,
    redb::TableError,
    redb::DatabaseError
);

impl IntoFailure for Failure {
    fn into_failure(self) -> Failure {
        self
    }
}

impl IntoFailure for std::io::Error {
    fn into_failure(self) -> Failure {
        Failure::Disk(DiskFault::of_io(&self))
    }
}

/// Failures that are not the disk's.
macro_rules! other_failure {
    ($($kind:ty),*) => {$(
        impl IntoFailure for $kind {
            fn into_failure(self) -> Failure {
                Failure::Other(self.to_string())
            }
        }
    )*};
}
other_failure!(String, &str, prost::DecodeError, tokio::task::JoinError);

#[cfg(test)]
mod tests {
    use super::*;

    const TEST_CACHE: usize = 1 << 20;

    #[derive(Debug)]
    enum TestError {
        Disk(DiskFault),
        Other,
    }

    impl From<DiskFault> for TestError {
        fn from(fault: DiskFault) -> Self {
            TestError::Disk(fault)
        }
    }

    impl Fault for TestError {
        fn disk_fault(&self) -> Option<&DiskFault> {
            match self {
                TestError::Disk(fault) => Some(fault),
                TestError::Other => None,
            }
        }
    }

    use redb::ReadableDatabase;

    const T: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("t");

    fn put(file: &RedbFile, value: u64) -> Result<(), TestError> {
        file.run(true, |db| {
            let txn = db.begin_write().map_err(|_| TestError::Other)?;
            txn.open_table(T)
                .map_err(|_| TestError::Other)?
                .insert("k", value)
                .map_err(|_| TestError::Other)?;
            txn.commit().map_err(|_| TestError::Other)
        })
    }

    #[test]
    fn a_disk_fault_reopens_the_file_and_a_write_clears_it() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let file = RedbFile::create(&dir.path().join("f.redb"), TEST_CACHE).expect("created");
        put(&file, 1).expect("written");
        assert_eq!(file.fault(), None);

        let fault = DiskFault::Full("No space left on device (os error 28)".into());
        let failed: Result<(), TestError> = file.run(true, |_| Err(fault.clone().into()));
        assert!(failed.is_err());
        assert_eq!(file.fault(), Some(fault.clone()));
        // Other failures are not disk faults and change nothing.
        let _ = file.run::<(), TestError>(false, |_| Err(TestError::Other));
        assert_eq!(file.fault(), Some(fault));

        // The next use opens the file again; the value written before is there.
        let value = file
            .run(false, |db| {
                let txn = db.begin_read().map_err(|_| TestError::Other)?;
                let table = txn.open_table(T).map_err(|_| TestError::Other)?;
                let got = table.get("k").map_err(|_| TestError::Other)?;
                Ok::<_, TestError>(got.map(|v| v.value()))
            })
            .expect("read after opening again");
        assert_eq!(value, Some(1));
        assert!(file.fault().is_some(), "a read does not clear the fault");
        put(&file, 2).expect("written again");
        assert_eq!(file.fault(), None);
    }

    #[test]
    fn while_writes_keep_failing_the_file_is_opened_again_less_often() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let file = RedbFile::create(&dir.path().join("f.redb"), TEST_CACHE).expect("created");
        let full = || DiskFault::Full("ENOSPC".into());
        let mut waits = Vec::new();
        for _ in 0..7 {
            let _ = file.run::<(), TestError>(true, |_| Err(full().into()));
            file.slot().next_try = Instant::now();
            // This use opens the file again and sets when the next opening may be.
            let _ = file.run::<(), TestError>(false, |_| Ok(()));
            waits.push(file.slot().backoff);
        }
        let secs: Vec<u64> = waits.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [2, 4, 8, 16, 30, 30, 30]);
        put(&file, 1).expect("written");
        assert_eq!(file.slot().backoff, REOPEN_FIRST);
    }

    #[test]
    fn a_file_that_is_not_a_database_or_is_in_use_is_named_and_explained() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let garbage = dir.path().join("garbage.redb");
        std::fs::write(&garbage, vec![0x5a; 8192]).expect("written");
        let Err(Failure::Other(text)) = RedbFile::create(&garbage, TEST_CACHE) else {
            panic!("garbage opened, or as a disk fault");
        };
        assert!(text.contains("garbage.redb is damaged"), "{text}");

        let path = dir.path().join("f.redb");
        let _open = RedbFile::create(&path, TEST_CACHE).expect("created");
        let Err(Failure::Other(text)) = RedbFile::create(&path, TEST_CACHE) else {
            panic!("opened twice");
        };
        assert!(text.contains("f.redb is open in another process"), "{text}");
    }

    #[test]
    fn a_reader_holding_the_old_handle_delays_opening_again_without_blocking() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let file = RedbFile::create(&dir.path().join("f.redb"), TEST_CACHE).expect("created");
        let held = file.db().expect("open");
        let fault = DiskFault::Io("EIO".into());
        let _ = file.run::<(), TestError>(true, |_| Err(fault.clone().into()));
        let refused = file.run::<(), TestError>(false, |_| Ok(()));
        assert!(
            matches!(refused, Err(TestError::Disk(DiskFault::Io(_)))),
            "{refused:?}"
        );
        drop(held);
        // Within the reopen interval the file is not tried again.
        assert!(file.run::<(), TestError>(false, |_| Ok(())).is_err());
        file.slot().next_try = Instant::now();
        file.run::<(), TestError>(false, |_| Ok(()))
            .expect("opened again once the reader let go");
    }
}
