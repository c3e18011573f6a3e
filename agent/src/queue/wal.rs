//! The queue's write-ahead log: the changes of each commit since the last checkpoint, appended
//! to a preallocated file so that making a small commit durable costs one short sequential
//! write and one `fdatasync`, instead of the dozen scattered pages a durable redb commit writes.
//!
//! # Layout
//! `queue.wal` is [`WAL_BYTES`] long, written with zeros when created (so a sync never has to
//! update the file's size or extent map). It holds the records of one *epoch*, from offset 0,
//! back to back:
//!
//! | field | bytes |
//! | --- | --- |
//! | body length | 4 (u32, LE) |
//! | CRC-32 of everything after it | 4 (u32, LE) |
//! | epoch | 8 (u64, LE) |
//! | index within the epoch (0, 1, 2, …) | 8 (u64, LE) |
//! | body (the commit's changes, see [`super::tables`]) | body length |
//!
//! Each checkpoint (a durable redb commit) starts a new epoch, recorded in the same commit, and
//! the log is written again from offset 0. Bytes after the current epoch's last record are
//! left over from earlier epochs, or torn by a crash.
//!
//! # Recovery
//! Reading stops at the first record that is not whole (checksum), not of the epoch the queue
//! file names, or not the next index. A record is only acknowledged after a sync of it and of
//! every record before it, so every acknowledged record is read back. A record written but not
//! synced may be torn or lost, and any record after it is ignored even if it survived: records
//! are replayed in order or not at all. Because every open starts a new epoch, leftovers of an
//! older epoch — even ones at the very offset and index a new record would have — never match.

use redb::StorageBackend;

use super::{QueueError, storage};

/// The log file's size. A commit whose changes do not fit in the room left makes a checkpoint
/// instead.
pub const WAL_BYTES: u64 = 8 * 1024 * 1024;
/// A record's header: length, checksum, epoch, index.
const HEADER: usize = 4 + 4 + 8 + 8;
/// Zeros written per call while preallocating.
const FILL_CHUNK: usize = 64 * 1024;

/// The log, positioned after the current epoch's last record.
#[derive(Debug)]
pub(super) struct Wal {
    file: Box<dyn StorageBackend>,
    epoch: u64,
    next_index: u64,
    offset: u64,
    /// Records written since the last sync.
    unsynced: bool,
    /// The first I/O failure: the log's state on disk is unknown after it, so every later
    /// write fails with it until the queue is opened again.
    failed: Option<QueueError>,
}

impl Wal {
    /// Opens the log on `file`, growing it to [`WAL_BYTES`] of zeros first if it is shorter.
    /// The log starts without an epoch; call [`Wal::start_epoch`] before appending.
    pub fn open(file: Box<dyn StorageBackend>) -> std::io::Result<Wal> {
        let len = file.len()?;
        if len < WAL_BYTES {
            let zeros = vec![0u8; FILL_CHUNK];
            let mut at = len;
            while at < WAL_BYTES {
                let n = usize::try_from(WAL_BYTES - at).map_or(FILL_CHUNK, |n| n.min(FILL_CHUNK));
                file.write(at, &zeros[..n])?;
                at += n as u64;
            }
            file.sync_data()?;
        }
        Ok(Wal {
            file,
            epoch: 0,
            next_index: 0,
            offset: 0,
            unsynced: false,
            failed: None,
        })
    }

    /// The bodies of `epoch`'s records, in order, up to the first that is missing or torn.
    pub fn read_epoch(&self, epoch: u64) -> std::io::Result<Vec<Vec<u8>>> {
        // Record by record rather than the whole file at once: recovery then holds only the
        // records it replays, not the log's full size.
        let len = self.file.len()?;
        let mut bodies = Vec::new();
        let mut at = 0u64;
        let mut header = [0u8; HEADER];
        while at + HEADER as u64 <= len {
            self.file.read(at, &mut header)?;
            let body_len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as u64;
            let end = at + HEADER as u64 + body_len;
            if end > len {
                break;
            }
            let mut body = vec![0u8; body_len as usize];
            self.file.read(at + HEADER as u64, &mut body)?;
            if !is_record(&header, &body, epoch, bodies.len() as u64) {
                break;
            }
            bodies.push(body);
            at = end;
        }
        Ok(bodies)
    }

    /// Starts writing `epoch` from the beginning of the file. Only after a checkpoint that names
    /// `epoch` is durable: the records of the previous epoch are overwritten from here on.
    pub fn start_epoch(&mut self, epoch: u64) {
        self.epoch = epoch;
        self.next_index = 0;
        self.offset = 0;
        self.unsynced = false;
    }

    /// Whether a record with a body of `len` bytes fits in the room left.
    pub fn has_room(&self, len: usize) -> bool {
        self.offset + (HEADER + len) as u64 <= WAL_BYTES
    }

    /// Appends a record (not synced yet). The caller checks [`Wal::has_room`] first.
    pub fn append(&mut self, body: &[u8]) -> Result<(), QueueError> {
        self.check()?;
        if !self.has_room(body.len()) {
            return Err(storage("the write-ahead log is full"));
        }
        let mut record = Vec::with_capacity(HEADER + body.len());
        let len = u32::try_from(body.len()).map_err(|_| storage("a log record over 4 GiB"))?;
        record.extend_from_slice(&len.to_le_bytes());
        record.extend_from_slice(&[0; 4]);
        record.extend_from_slice(&self.epoch.to_le_bytes());
        record.extend_from_slice(&self.next_index.to_le_bytes());
        record.extend_from_slice(body);
        let crc = crc32fast::hash(&record[8..]);
        record[4..8].copy_from_slice(&crc.to_le_bytes());
        let written = self.file.write(self.offset, &record);
        self.fail_on(written)?;
        self.offset += record.len() as u64;
        self.next_index += 1;
        self.unsynced = true;
        Ok(())
    }

    /// Makes every appended record durable.
    pub fn sync(&mut self) -> Result<(), QueueError> {
        self.check()?;
        if self.unsynced {
            let synced = self.file.sync_data();
            self.fail_on(synced)?;
            self.unsynced = false;
        }
        Ok(())
    }

    fn check(&self) -> Result<(), QueueError> {
        match &self.failed {
            Some(first) => Err(first.clone()),
            None => Ok(()),
        }
    }

    fn fail_on(&mut self, result: std::io::Result<()>) -> Result<(), QueueError> {
        result.map_err(|err| {
            let failure = match storage(err) {
                QueueError::DiskFull(e) => QueueError::DiskFull(format!("write-ahead log: {e}")),
                QueueError::Io(e) => QueueError::Io(format!("write-ahead log: {e}")),
                other => other,
            };
            self.failed = Some(failure.clone());
            failure
        })
    }
}

/// Whether `header` and `body` are a whole record, number `index` of `epoch`.
fn is_record(header: &[u8; HEADER], body: &[u8], epoch: u64, index: u64) -> bool {
    let field = |range: std::ops::Range<usize>| {
        u64::from_le_bytes(header[range].try_into().expect("8 bytes"))
    };
    let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header[8..]);
    hasher.update(body);
    hasher.finalize() == crc && field(8..16) == epoch && field(16..24) == index
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A file in memory.
    #[derive(Clone, Debug, Default)]
    struct Memory(Arc<Mutex<Vec<u8>>>);

    impl StorageBackend for Memory {
        fn len(&self) -> std::io::Result<u64> {
            Ok(self.0.lock().expect("lock").len() as u64)
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
            let bytes = self.0.lock().expect("lock");
            let at = offset as usize;
            out.copy_from_slice(&bytes[at..at + out.len()]);
            Ok(())
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.0.lock().expect("lock").resize(len as usize, 0);
            Ok(())
        }
        fn sync_data(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
            let mut bytes = self.0.lock().expect("lock");
            let at = offset as usize;
            if bytes.len() < at + data.len() {
                bytes.resize(at + data.len(), 0);
            }
            bytes[at..at + data.len()].copy_from_slice(data);
            Ok(())
        }
    }

    fn open(file: &Memory) -> Wal {
        Wal::open(Box::new(file.clone())).expect("open")
    }

    #[test]
    fn records_of_an_epoch_read_back_in_order() {
        let file = Memory::default();
        let mut wal = open(&file);
        assert_eq!(file.len().expect("len"), WAL_BYTES, "preallocated");
        wal.start_epoch(7);
        for body in [&b"one"[..], b"", b"three"] {
            wal.append(body).expect("append");
        }
        wal.sync().expect("sync");
        let bodies = open(&file).read_epoch(7).expect("read");
        assert_eq!(bodies, vec![b"one".to_vec(), vec![], b"three".to_vec()]);
        assert!(open(&file).read_epoch(8).expect("read").is_empty());
    }

    #[test]
    fn reading_stops_at_a_torn_record_and_ignores_what_follows() {
        let file = Memory::default();
        let mut wal = open(&file);
        wal.start_epoch(1);
        for body in [&b"first"[..], b"second", b"third"] {
            wal.append(body).expect("append");
        }
        // Tear the second record's last byte; the third survived whole.
        let second_end = (2 * HEADER + 5 + 6) as u64;
        file.write(second_end - 1, b"X").expect("tear");
        let bodies = open(&file).read_epoch(1).expect("read");
        assert_eq!(bodies, vec![b"first".to_vec()]);
    }

    #[test]
    fn leftovers_of_an_earlier_epoch_never_join_a_later_one() {
        let file = Memory::default();
        let mut wal = open(&file);
        wal.start_epoch(1);
        for body in [&b"aaaa"[..], b"bbbb", b"cccc"] {
            wal.append(body).expect("append");
        }
        // A new epoch writes a record of the same size at the same place, then stops: the
        // old second record sits exactly where the new second one would.
        wal.start_epoch(2);
        wal.append(b"dddd").expect("append");
        let bodies = open(&file).read_epoch(2).expect("read");
        assert_eq!(bodies, vec![b"dddd".to_vec()]);
    }

    #[test]
    fn a_full_log_refuses_a_record_it_has_no_room_for() {
        let file = Memory::default();
        let mut wal = open(&file);
        wal.start_epoch(1);
        let big = vec![0u8; (WAL_BYTES as usize) / 2];
        assert!(wal.has_room(big.len()));
        wal.append(&big).expect("first half");
        assert!(!wal.has_room(big.len()));
        assert!(wal.append(&big).is_err());
    }
}
