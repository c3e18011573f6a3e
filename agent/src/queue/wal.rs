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
//!
//! A damaged record that was synced is another matter: it, and the records after it, may have
//! been acknowledged. Each record's body starts with the index of the last record synced
//! before it was written ([`SYNCED_TAG`]), and each sync is followed by a *seal*, a record with
//! that mark and no changes, written where the next record goes (which overwrites it). So when
//! reading stops, the whole records of the epoch that follow, the seal included, tell whether
//! the one it stopped at was synced ([`EpochRead::damaged`]), even when it was the last: then
//! the queue refuses to open, naming the offset and how many records follow, unless told to
//! drop them (`--recover-truncate`).

use redb::StorageBackend;

use super::{QueueError, storage};

/// The log file's size. A commit whose changes do not fit in the room left makes a checkpoint
/// instead.
pub const WAL_BYTES: u64 = 8 * 1024 * 1024;
/// A record's header: length, checksum, epoch, index.
pub(super) const HEADER: usize = 4 + 4 + 8 + 8;
/// Zeros written per call while preallocating.
const FILL_CHUNK: usize = 64 * 1024;
/// The change that starts each record's body: "records up to this index were synced before
/// this one was written" (u64 LE; `u64::MAX` while none was). Replaying it changes nothing.
pub(super) const SYNCED_TAG: u8 = 14;
/// A record's synced mark: the tag and the index.
const SYNCED_MARK: usize = 1 + 8;
/// A seal: a record with the synced mark alone (see [`Wal::sync`]).
const SEAL: usize = HEADER + SYNCED_MARK;

/// The records of an epoch as read back.
#[derive(Debug, Default)]
pub(super) struct EpochRead {
    /// The bodies (without the synced mark), in order, up to the first missing or torn one.
    pub bodies: Vec<Vec<u8>>,
    /// Where reading stopped at a record that had been synced, if it did.
    pub damaged: Option<Damage>,
}

/// A synced record that does not read back whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Damage {
    /// Its offset in the file.
    pub offset: u64,
    /// The whole records of the epoch after it.
    pub following: u64,
}

/// The log, positioned after the current epoch's last record.
#[derive(Debug)]
pub(super) struct Wal {
    file: Box<dyn StorageBackend>,
    epoch: u64,
    next_index: u64,
    offset: u64,
    /// Records written since the last sync.
    unsynced: bool,
    /// The index of the last record synced in this epoch.
    synced_through: Option<u64>,
    /// The first I/O failure: the log's state on disk is unknown after it, so every later
    /// write fails with it until the queue is opened again.
    failed: Option<QueueError>,
    /// The file's length when it was opened (until it is preallocated).
    found_len: u64,
    /// On no file ([`Wal::detached`]).
    detached: bool,
}

impl Wal {
    /// Opens the log on `file` as it is: a log cut short stays so until [`Wal::preallocate`],
    /// so that recovery can tell ([`Wal::cut_short`]). The log starts without an epoch; call
    /// [`Wal::start_epoch`] before appending.
    pub fn open(file: Box<dyn StorageBackend>) -> std::io::Result<Wal> {
        let found_len = file.len()?;
        Ok(Wal {
            file,
            epoch: 0,
            next_index: 0,
            offset: 0,
            unsynced: false,
            synced_through: None,
            failed: None,
            found_len,
            detached: false,
        })
    }

    /// A log on no file, failed: holds the writer's place while the queue's files are closed
    /// after a disk fault, so that no handle of the queue keeps a failing file system busy
    /// (one remounted read-only must be unmounted for its repair), and refuses every write
    /// until the files are opened again.
    pub fn detached() -> Wal {
        Wal {
            file: Box::new(redb::backends::InMemoryBackend::new()),
            epoch: 0,
            next_index: 0,
            offset: 0,
            unsynced: false,
            synced_through: None,
            failed: Some(QueueError::Io(
                "the write-ahead log is closed until the queue's files are opened again".into(),
            )),
            found_len: 0,
            detached: true,
        }
    }

    /// Whether the log is on no file ([`Wal::detached`]): what it held is not in reach.
    pub fn is_detached(&self) -> bool {
        self.detached
    }

    /// Copies the log as it is, records synced or not, into `to`, and syncs `to`: the same
    /// log on another file, to write on with [`Wal::use_file`] (the log's file was removed
    /// while open, say).
    pub fn copy_into(&self, to: &dyn StorageBackend) -> std::io::Result<()> {
        let len = self.file.len()?;
        let mut chunk = vec![0u8; FILL_CHUNK];
        let mut at = 0;
        while at < len {
            let n = usize::try_from(len - at).map_or(FILL_CHUNK, |n| n.min(FILL_CHUNK));
            self.file.read(at, &mut chunk[..n])?;
            to.write(at, &chunk[..n])?;
            at += n as u64;
        }
        to.sync_data()
    }

    /// Writes on `file` from now on: a copy of this log made with [`Wal::copy_into`].
    pub fn use_file(&mut self, file: Box<dyn StorageBackend>) {
        self.file = file;
    }

    /// The file's length when opened, if it was shorter than [`WAL_BYTES`]: new, its first
    /// preallocation interrupted, or cut (then the records after the cut are gone).
    pub fn cut_short(&self) -> Option<u64> {
        (self.found_len < WAL_BYTES).then_some(self.found_len)
    }

    /// Grows the file to [`WAL_BYTES`] of zeros if it is shorter, and syncs it.
    pub fn preallocate(&mut self) -> std::io::Result<()> {
        let len = self.file.len()?;
        if len < WAL_BYTES {
            let zeros = vec![0u8; FILL_CHUNK];
            let mut at = len;
            while at < WAL_BYTES {
                let n = usize::try_from(WAL_BYTES - at).map_or(FILL_CHUNK, |n| n.min(FILL_CHUNK));
                self.file.write(at, &zeros[..n])?;
                at += n as u64;
            }
            self.file.sync_data()?;
        }
        self.found_len = WAL_BYTES;
        Ok(())
    }

    /// The bodies of `epoch`'s records, in order, up to the first that is missing or torn;
    /// and whether that one had been synced.
    pub fn read_epoch(&self, epoch: u64) -> std::io::Result<EpochRead> {
        // Record by record rather than the whole file at once: recovery then holds only the
        // records it replays, not the log's full size.
        let len = self.file.len()?;
        let mut read = EpochRead::default();
        let mut at = 0u64;
        let mut index = 0;
        while let Some((body, end)) = self.record_at(at, epoch, index, len)? {
            // A seal (no changes) says what was synced; there is nothing in it to replay.
            let changes = strip_mark(body).1;
            if !changes.is_empty() {
                read.bodies.push(changes);
            }
            index += 1;
            at = end;
        }
        let stopped_at = index;
        let (following, synced) = self.after(at, epoch, stopped_at, len)?;
        if synced {
            read.damaged = Some(Damage {
                offset: at,
                following,
            });
        }
        Ok(read)
    }

    /// The body and end of record `index` of `epoch` at `at`, if one is there whole.
    fn record_at(
        &self,
        at: u64,
        epoch: u64,
        index: u64,
        len: u64,
    ) -> std::io::Result<Option<(Vec<u8>, u64)>> {
        if at + HEADER as u64 > len {
            return Ok(None);
        }
        let mut header = [0u8; HEADER];
        self.file.read(at, &mut header)?;
        let body_len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as u64;
        let end = at + HEADER as u64 + body_len;
        if end > len {
            return Ok(None);
        }
        let mut body = vec![0u8; body_len as usize];
        self.file.read(at + HEADER as u64, &mut body)?;
        Ok(is_record(&header, &body, epoch, index).then_some((body, end)))
    }

    /// The whole records of `epoch` after `from` (where reading stopped at record `stopped`),
    /// and whether one of them says `stopped` had been synced.
    ///
    /// Most opens stop at the epoch's clean end: zeros, or a record of an earlier epoch left
    /// over (epochs only grow). A synced record zeroed or overwritten looks the same, so the
    /// rest of the file is searched, a chunk at a time, for later records of the epoch all the
    /// same (a few milliseconds for the whole log, once per open). Otherwise the stopped
    /// record's successor is where its header says it ends (a torn or damaged body keeps its
    /// header), and records follow one another from there; where a header is itself damaged
    /// the rest of the file is searched too.
    fn after(&self, from: u64, epoch: u64, stopped: u64, len: u64) -> std::io::Result<(u64, bool)> {
        let (mut following, mut synced) = (0, false);
        let mut next_index = stopped + 1;
        let mut at = from;
        while let Some(header) = self.header_at(at, len)? {
            let header_epoch = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
            // Zeros (a record's header never is all zeros) or an earlier epoch's leftover: the
            // epoch's end, unless a record of it turns up further on.
            let next = if header_epoch < epoch || header == [0u8; HEADER] {
                self.search(at + 1, epoch, next_index, len)?
            } else {
                let body_len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as u64;
                let natural = at + HEADER as u64 + body_len;
                match self.record_at(natural, epoch, next_index, len)? {
                    Some(found) => Some((natural, next_index, found)),
                    None => self.search(at + 1, epoch, next_index, len)?,
                }
            };
            let Some((_, index, (body, end))) = next else {
                break;
            };
            next_index = index + 1;
            let mut count = |body: Vec<u8>| {
                let (through, changes) = strip_mark(body);
                // A seal is no commit of its own.
                if !changes.is_empty() {
                    following += 1;
                }
                if through.is_some_and(|through| through >= stopped) {
                    synced = true;
                }
            };
            count(body);
            // Records of the epoch follow one another from here.
            let mut at_end = end;
            while let Some((body, end)) = self.record_at(at_end, epoch, next_index, len)? {
                count(body);
                next_index += 1;
                at_end = end;
            }
            at = at_end;
        }
        Ok((following, synced))
    }

    /// The header at `at`, if the file holds one there.
    fn header_at(&self, at: u64, len: u64) -> std::io::Result<Option<[u8; HEADER]>> {
        if at + HEADER as u64 > len {
            return Ok(None);
        }
        let mut header = [0u8; HEADER];
        self.file.read(at, &mut header)?;
        Ok(Some(header))
    }

    /// The first whole record of `epoch`, numbered `min_index` or more, from `from` on: its
    /// offset, index, body and end.
    #[allow(clippy::type_complexity)]
    fn search(
        &self,
        from: u64,
        epoch: u64,
        min_index: u64,
        len: u64,
    ) -> std::io::Result<Option<(u64, u64, (Vec<u8>, u64))>> {
        const CHUNK: u64 = 64 * 1024;
        let wanted = epoch.to_le_bytes();
        let mut chunk = vec![0u8; (CHUNK as usize) + HEADER];
        let mut at = from;
        while at + HEADER as u64 <= len {
            let n = (len - at).min(CHUNK + HEADER as u64) as usize;
            self.file.read(at, &mut chunk[..n])?;
            // Candidates: where the epoch's bytes are, 8 bytes into a header.
            for i in memchr::memmem::find_iter(&chunk[8.min(n)..n], &wanted) {
                if i >= CHUNK as usize || i + HEADER > n {
                    continue;
                }
                let index = u64::from_le_bytes(chunk[i + 16..i + 24].try_into().expect("8"));
                if index < min_index {
                    continue;
                }
                let offset = at + i as u64;
                if let Some(found) = self.record_at(offset, epoch, index, len)? {
                    return Ok(Some((offset, index, found)));
                }
            }
            at += CHUNK;
        }
        Ok(None)
    }

    /// Starts writing `epoch` from the beginning of the file. Only after a checkpoint that names
    /// `epoch` is durable: the records of the previous epoch are overwritten from here on.
    pub fn start_epoch(&mut self, epoch: u64) {
        self.epoch = epoch;
        self.next_index = 0;
        self.offset = 0;
        self.unsynced = false;
        self.synced_through = None;
    }

    /// Whether a record with a body of `len` bytes fits in the room left, with the seal that
    /// follows it once synced.
    pub fn has_room(&self, len: usize) -> bool {
        self.offset + (HEADER + SYNCED_MARK + len) as u64 + SEAL as u64 <= WAL_BYTES
    }

    /// Appends a record (not synced yet). The caller checks [`Wal::has_room`] first.
    pub fn append(&mut self, body: &[u8]) -> Result<(), QueueError> {
        self.check()?;
        if !self.has_room(body.len()) {
            return Err(storage("the write-ahead log is full"));
        }
        let record = self.record(body)?;
        let written = self.file.write(self.offset, &record);
        self.fail_on(written)?;
        self.offset += record.len() as u64;
        self.next_index += 1;
        self.unsynced = true;
        Ok(())
    }

    /// The next record, with `body`, as written: header, synced mark, body.
    fn record(&self, body: &[u8]) -> Result<Vec<u8>, QueueError> {
        let mut record = Vec::with_capacity(HEADER + SYNCED_MARK + body.len());
        let len = u32::try_from(SYNCED_MARK + body.len())
            .map_err(|_| storage("a log record over 4 GiB"))?;
        record.extend_from_slice(&len.to_le_bytes());
        record.extend_from_slice(&[0; 4]);
        record.extend_from_slice(&self.epoch.to_le_bytes());
        record.extend_from_slice(&self.next_index.to_le_bytes());
        record.push(SYNCED_TAG);
        record.extend_from_slice(&self.synced_through.unwrap_or(u64::MAX).to_le_bytes());
        record.extend_from_slice(body);
        let crc = crc32fast::hash(&record[8..]);
        record[4..8].copy_from_slice(&crc.to_le_bytes());
        Ok(record)
    }

    /// Makes every appended record durable, then seals them.
    pub fn sync(&mut self) -> Result<(), QueueError> {
        self.check()?;
        if self.unsynced {
            let synced = self.file.sync_data();
            self.fail_on(synced)?;
            self.unsynced = false;
            self.synced_through = self.next_index.checked_sub(1);
            self.seal();
        }
        Ok(())
    }

    /// Writes the seal after the records just synced: a record without changes saying they
    /// were, where the next record will go (which overwrites it, saying the same). So a
    /// damaged last record, synced and acknowledged, is told from a crash's torn tail too:
    /// the seal follows it. Not synced itself: after a process crash the kernel still holds
    /// it, and a power loss leaves the synced records whole. Best effort: a failing disk is
    /// reported by the next append or sync.
    fn seal(&mut self) {
        let Ok(seal) = self.record(&[]) else {
            return;
        };
        if self.offset + seal.len() as u64 <= WAL_BYTES
            && let Err(err) = self.file.write(self.offset, &seal)
        {
            tracing::warn!(error = %err, "cannot seal the write-ahead log's synced records");
        }
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

/// A body's synced mark (the index it names, `None` for none yet or a record without one, as
/// earlier versions wrote), and the body after it.
fn strip_mark(body: Vec<u8>) -> (Option<u64>, Vec<u8>) {
    match body.split_first() {
        Some((&SYNCED_TAG, rest)) if rest.len() >= 8 => {
            let through = u64::from_le_bytes(rest[..8].try_into().expect("8 bytes"));
            let through = (through != u64::MAX).then_some(through);
            (through, rest[8..].to_vec())
        }
        _ => (None, body),
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
        let mut wal = Wal::open(Box::new(file.clone())).expect("open");
        wal.preallocate().expect("preallocated");
        wal
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
        let read = open(&file).read_epoch(7).expect("read");
        // A record without changes (as a seal is) has nothing to replay.
        assert_eq!(read.bodies, vec![b"one".to_vec(), b"three".to_vec()]);
        assert_eq!(read.damaged, None);
        assert!(open(&file).read_epoch(8).expect("read").bodies.is_empty());
    }

    #[test]
    fn reading_stops_at_a_torn_record_and_ignores_what_follows() {
        let file = Memory::default();
        let mut wal = open(&file);
        wal.start_epoch(1);
        for body in [&b"first"[..], b"second", b"third"] {
            wal.append(body).expect("append");
        }
        // Tear the second record's last byte; the third survived whole. None was synced: a
        // crash's torn tail, not damage.
        let second_end = (2 * (HEADER + SYNCED_MARK) + 5 + 6) as u64;
        file.write(second_end - 1, b"X").expect("tear");
        let read = open(&file).read_epoch(1).expect("read");
        assert_eq!(read.bodies, vec![b"first".to_vec()]);
        assert_eq!(read.damaged, None, "nothing after it was acknowledged");
    }

    #[test]
    fn a_damaged_record_that_was_synced_is_told_with_what_follows() {
        let file = Memory::default();
        let mut wal = open(&file);
        wal.start_epoch(3);
        for body in [&b"first"[..], b"second"] {
            wal.append(body).expect("append");
        }
        wal.sync().expect("sync");
        for body in [&b"third"[..], b"fourth"] {
            wal.append(body).expect("append");
        }
        wal.sync().expect("sync");
        // A bit flips in the second record, synced long before.
        let second_body = (2 * HEADER + SYNCED_MARK + 5 + SYNCED_MARK) as u64;
        file.write(second_body, b"X").expect("flip");
        let read = open(&file).read_epoch(3).expect("read");
        assert_eq!(read.bodies, vec![b"first".to_vec()]);
        assert_eq!(
            read.damaged,
            Some(Damage {
                offset: (HEADER + SYNCED_MARK + 5) as u64,
                following: 2,
            })
        );
    }

    #[test]
    fn a_damaged_last_record_that_was_synced_is_told_by_its_seal() {
        let file = Memory::default();
        let mut wal = open(&file);
        wal.start_epoch(4);
        wal.append(b"first").expect("append");
        wal.sync().expect("sync");
        wal.append(b"last").expect("append");
        wal.sync().expect("sync");
        // A bit flips in the last record, synced and so acknowledged: nothing but the seal
        // follows it.
        let last = (HEADER + SYNCED_MARK + 5) as u64;
        file.write(last + (HEADER + SYNCED_MARK) as u64, b"X")
            .expect("flip");
        let read = open(&file).read_epoch(4).expect("read");
        assert_eq!(read.bodies, vec![b"first".to_vec()]);
        assert_eq!(
            read.damaged,
            Some(Damage {
                offset: last,
                following: 0,
            })
        );
        // The same record torn before its sync (no seal after it) is a crash's tail.
        let file = Memory::default();
        let mut wal = open(&file);
        wal.start_epoch(4);
        wal.append(b"first").expect("append");
        wal.sync().expect("sync");
        wal.append(b"last").expect("append");
        file.write(last + (HEADER + SYNCED_MARK) as u64, b"X")
            .expect("tear");
        let read = open(&file).read_epoch(4).expect("read");
        assert_eq!(read.bodies, vec![b"first".to_vec()]);
        assert_eq!(read.damaged, None);
    }

    #[test]
    fn a_synced_record_zeroed_or_given_another_epoch_is_told_as_damage() {
        for (what, overwrite) in [
            ("zeroed", vec![0u8; HEADER + SYNCED_MARK + 6]),
            ("an earlier epoch", 1u64.to_le_bytes().to_vec()),
        ] {
            let file = Memory::default();
            let mut wal = open(&file);
            wal.start_epoch(5);
            for body in [&b"first"[..], b"second"] {
                wal.append(body).expect("append");
            }
            wal.sync().expect("sync");
            for body in [&b"third"[..], b"fourth"] {
                wal.append(body).expect("append");
            }
            wal.sync().expect("sync");
            let second = (HEADER + SYNCED_MARK + 5) as u64;
            // Zeros over the whole second record, or its epoch's bytes made older.
            let at = if overwrite.len() == 8 {
                second + 8
            } else {
                second
            };
            file.write(at, &overwrite).expect("overwrite");
            let read = open(&file).read_epoch(5).expect("read");
            assert_eq!(read.bodies, vec![b"first".to_vec()], "{what}");
            assert_eq!(
                read.damaged.map(|d| d.offset),
                Some(second),
                "{what}: acknowledged records are missing"
            );
        }
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
        let read = open(&file).read_epoch(2).expect("read");
        assert_eq!(read.bodies, vec![b"dddd".to_vec()]);
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
