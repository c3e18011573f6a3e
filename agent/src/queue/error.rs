//! Why the queue refused or failed ([`QueueError`]), and how the faults it meets (I/O, redb,
//! undecodable records) become one, keeping what kind of fault each is: a full disk and an
//! I/O error are answered differently, and no caller reads an error's text to tell them apart.

use herald_core::disk_fault::DiskFault;

/// Why the queue refused or failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum QueueError {
    /// The queue is at its configured bound.
    #[error("the agent's queue is full ({0}); retry later")]
    Full(String),
    /// The disk is full (or the quota reached): nothing more is written until space is freed.
    #[error("the agent's queue cannot write, the disk is full: {0}")]
    DiskFull(String),
    /// Reading or writing the queue's files failed (an I/O error).
    #[error("the agent's queue cannot write, an I/O error: {0}")]
    Io(String),
    /// A record is not as the queue wrote it, or the store refused an operation.
    #[error("the agent's queue failed: {0}")]
    Storage(String),
    /// The write-ahead log holds a record that was synced but does not read back whole;
    /// records written after it (perhaps acknowledged) would be lost by replaying only what
    /// precedes it.
    #[error(
        "queue.wal: the record at offset {offset} does not read back whole although it was \
         synced (so it may have been acknowledged), and {following} records written after it \
         follow; restart with --recover-truncate to keep what precedes it and drop the rest"
    )]
    DamagedLog {
        /// The damaged record's offset in the file.
        offset: u64,
        /// The whole records after it.
        following: u64,
    },
    /// The write-ahead log is shorter than it was made (it is preallocated), or gone: records
    /// written after the cut, perhaps acknowledged, are lost.
    #[error("{}", cut_log(*len))]
    CutLog {
        /// The file's length as found.
        len: u64,
    },
    /// The queue file does not read as the queue wrote it (damaged on disk, or not Herald's):
    /// the events it holds cannot be read, and no restart changes that.
    #[error(
        "{0}: its events cannot be read; restore it from a backup, or move it aside to start \
         with an empty queue (what it held is then lost)"
    )]
    DamagedFile(String),
    /// A queue file the agent can never use, whatever the disk does (one it may not open for
    /// writing, or one that is not a regular file): a setting to correct, not a fault to wait out.
    #[error("{0}")]
    Unusable(String),
    /// A queue file was removed or replaced under the running agent: what is written through
    /// its open handle would not survive a restart, so new events are refused until it is back.
    #[error("{0}")]
    Displaced(String),
    /// The queue is being opened (its log replayed into its file): the agent is starting.
    #[error("the agent is starting: its queue is being opened; retry shortly")]
    Opening,
    /// The queue is shutting down.
    #[error("the agent's queue is closed")]
    Closed,
}

/// What [`QueueError::CutLog`] says: a log of no bytes was most likely removed (the agent
/// makes a missing one empty), not cut.
fn cut_log(len: u64) -> String {
    if len == 0 {
        "queue.wal is missing or empty, though queue.redb names a log it wrote: the records \
         written since queue.redb's last checkpoint (perhaps acknowledged) are lost; restart \
         with --recover-truncate to go on with what queue.redb holds"
            .to_owned()
    } else {
        format!(
            "queue.wal is {len} bytes long, cut short of the {} it was made with, so the \
             records written after byte {len} (perhaps acknowledged) are lost; restart with \
             --recover-truncate to keep the records before the cut",
            super::wal::WAL_BYTES
        )
    }
}

impl QueueError {
    /// Whether the disk refused a write (full, or failing): the files' state is unknown after
    /// it, so the writer stops writing.
    pub fn is_disk_fault(&self) -> bool {
        matches!(self, QueueError::DiskFull(_) | QueueError::Io(_))
    }
}

impl From<QueueError> for tonic::Status {
    fn from(err: QueueError) -> Self {
        match &err {
            QueueError::Full(_) => tonic::Status::resource_exhausted(err.to_string()),
            QueueError::DiskFull(_) => herald_proto::refusal::disk_full(err.to_string()),
            QueueError::Io(_)
            | QueueError::Storage(_)
            | QueueError::DamagedLog { .. }
            | QueueError::CutLog { .. }
            | QueueError::DamagedFile(_)
            | QueueError::Unusable(_)
            | QueueError::Displaced(_)
            | QueueError::Opening
            | QueueError::Closed => tonic::Status::unavailable(err.to_string()),
        }
    }
}

/// An error the queue meets, as a [`QueueError`] that keeps what kind of fault it is.
pub(super) trait Fault {
    fn into_queue_error(self) -> QueueError;
}

impl From<DiskFault> for QueueError {
    fn from(fault: DiskFault) -> Self {
        match fault {
            DiskFault::Full(text) => QueueError::DiskFull(text),
            DiskFault::Io(text) => QueueError::Io(text),
        }
    }
}

impl Fault for std::io::Error {
    fn into_queue_error(self) -> QueueError {
        DiskFault::of_io(&self).into()
    }
}

impl Fault for redb::StorageError {
    fn into_queue_error(self) -> QueueError {
        match self {
            redb::StorageError::Io(err) => err.into_queue_error(),
            redb::StorageError::PreviousIo => {
                QueueError::Io("an earlier write to the queue file failed".into())
            }
            other => QueueError::Storage(other.to_string()),
        }
    }
}

/// redb's error types, each either a storage error or a refusal.
macro_rules! redb_fault {
    ($($kind:ty),*) => {$(
        impl Fault for $kind {
            fn into_queue_error(self) -> QueueError {
                match redb::Error::from(self) {
                    redb::Error::Io(err) => err.into_queue_error(),
                    redb::Error::PreviousIo => redb::StorageError::PreviousIo.into_queue_error(),
                    other => QueueError::Storage(other.to_string()),
                }
            }
        }
    )*};
}
redb_fault!(
    redb::Error,
    redb::TransactionError,
    redb::CommitError,
    redb::TableError,
    redb::DatabaseError,
    redb::SetDurabilityError
);

impl Fault for &str {
    fn into_queue_error(self) -> QueueError {
        QueueError::Storage(self.to_owned())
    }
}

impl Fault for String {
    fn into_queue_error(self) -> QueueError {
        QueueError::Storage(self)
    }
}

impl Fault for prost::DecodeError {
    fn into_queue_error(self) -> QueueError {
        QueueError::Storage(self.to_string())
    }
}

/// Any fault the queue meets, as a [`QueueError`] of its kind.
pub(super) fn storage(err: impl Fault) -> QueueError {
    err.into_queue_error()
}
