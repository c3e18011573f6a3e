//! Whether the queue's files are still the ones it writes. A file removed or replaced under a
//! running agent (a clean-up script, a hand, a restore) keeps taking its writes through the
//! open handle, but nothing written there survives the next start: the agent would
//! acknowledge events that a `kill -9` then loses. So the writer looks at both names whenever
//! it looks at the disk's free space ([`Placement::look`]; the queue's poll does too, every
//! second, while nothing is written): a log that is gone is made again from the one still
//! open (nothing is lost), and a queue file that is gone or replaced stops new events until
//! it is back. After a disk fault the files are opened again by name only while the names
//! are the files the queue wrote.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::wal::Wal;
use super::{QueueError, storage};

/// The queue file's name in the data dir.
pub const QUEUE_FILE: &str = "queue.redb";
/// The write-ahead log's name in the data dir.
pub const LOG_FILE: &str = "queue.wal";
/// Where a log made again is written before it takes [`LOG_FILE`]'s name.
const NEW_LOG_FILE: &str = "queue.wal.new";

/// A file as the file system knows it, whatever its name. The queue holds its files open, so
/// a number it remembers is not given to another file while it runs, even once removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    /// The file now at `path`, if any.
    fn at(path: &Path) -> Option<FileId> {
        std::fs::metadata(path).ok().map(|m| FileId {
            dev: m.dev(),
            ino: m.ino(),
        })
    }
}

/// The queue's two files as they were opened.
#[derive(Clone, Copy, Debug, Default)]
struct Opened {
    queue: Option<FileId>,
    log: Option<FileId>,
}

/// What a look at the files' names found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    /// Both names are the files the queue writes.
    InPlace,
    /// The log's name is gone (the queue file is in place): a new log can be made.
    LogGone,
    /// A file is gone or replaced and cannot be made again without losing what it holds.
    Lost(String),
}

/// The queue's files, as opened, in their directory.
#[derive(Debug)]
pub struct Placement {
    dir: PathBuf,
    opened: Mutex<Opened>,
}

impl Placement {
    /// The files of the queue in `dir`; [`Placement::remember`] once they are open.
    pub fn new(dir: PathBuf) -> Placement {
        Placement {
            dir,
            opened: Mutex::default(),
        }
    }

    /// The queue's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes the files now under both names as the ones the queue writes: after opening them.
    pub fn remember(&self) {
        *self.opened.lock().unwrap_or_else(|e| e.into_inner()) = Opened {
            queue: FileId::at(&self.dir.join(QUEUE_FILE)),
            log: FileId::at(&self.dir.join(LOG_FILE)),
        };
    }

    /// Takes the file now under the log's name as the log: after making a new one.
    pub fn remember_log(&self) {
        self.opened.lock().unwrap_or_else(|e| e.into_inner()).log =
            FileId::at(&self.dir.join(LOG_FILE));
    }

    /// Looks at both names (two `stat` calls).
    pub fn look(&self) -> Found {
        let opened = *self.opened.lock().unwrap_or_else(|e| e.into_inner());
        let (queue, log) = (self.dir.join(QUEUE_FILE), self.dir.join(LOG_FILE));
        let (queue_now, log_now) = (FileId::at(&queue), FileId::at(&log));
        if queue_now != opened.queue {
            return Found::Lost(format!(
                "{} was {} while the agent runs: the queue writes on in the file it opened, \
                 which the next start cannot read, so what the queue holds (events not yet \
                 delivered, reports not yet sent) is lost then. New events are refused; the \
                 deliveries already taken go on. Put the file back (the same file: moved back, \
                 not a copy), or let the queue drain (herald_queue_events 0) before a restart",
                queue.display(),
                if queue_now.is_none() {
                    "removed (or moved away)"
                } else {
                    "replaced"
                },
            ));
        }
        match log_now {
            same if same == opened.log => Found::InPlace,
            None => Found::LogGone,
            Some(_) => Found::Lost(format!(
                "{} was replaced while the agent runs: the next start would read that file as \
                 the queue's log. New events are refused; the deliveries already taken go on. \
                 Move the file away so that the agent makes its log again",
                log.display()
            )),
        }
    }
}

/// Makes the log again under its name in `dir` after it was removed, from `wal`, the log
/// still open: copied beside the name and synced, then put under it (the directory synced
/// after), and written on from then on. Every record stays where recovery reads it, so
/// nothing is lost. On failure nothing is left under either name and `wal` is unchanged.
pub(super) fn make_log_again(dir: &Path, wal: &mut Wal) -> Result<(), QueueError> {
    let (path, made) = (dir.join(LOG_FILE), dir.join(NEW_LOG_FILE));
    let copied = (|| {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&made)
            .map_err(storage)?;
        let backend = redb::backends::FileBackend::new(file).map_err(storage)?;
        wal.copy_into(&backend).map_err(storage)?;
        std::fs::rename(&made, &path).map_err(storage)?;
        Ok(backend)
    })();
    match copied {
        Ok(backend) => {
            if let Err(err) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
                // Some file systems cannot sync a directory; the log is in place all the same.
                tracing::warn!(dir = %dir.display(), error = %err, "cannot sync the queue's directory");
            }
            wal.use_file(Box::new(backend));
            Ok(())
        }
        Err(err) => {
            let _ = std::fs::remove_file(&made);
            Err(err)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_removed_replaced_or_put_back_is_told_apart() {
        let dir = tempfile::tempdir().expect("dir");
        let (queue, log) = (dir.path().join(QUEUE_FILE), dir.path().join(LOG_FILE));
        std::fs::write(&queue, b"q").expect("queue");
        std::fs::write(&log, b"l").expect("log");
        // Held open, as the queue holds them: a removed file's number is not given to another.
        let _held = [
            std::fs::File::open(&queue).expect("open"),
            std::fs::File::open(&log).expect("open"),
        ];
        let placement = Placement::new(dir.path().to_owned());
        placement.remember();
        assert_eq!(placement.look(), Found::InPlace);

        // The log removed: a new one can be made, and is then the log.
        std::fs::remove_file(&log).expect("rm log");
        assert_eq!(placement.look(), Found::LogGone);
        std::fs::write(&log, b"new").expect("new log");
        assert!(matches!(placement.look(), Found::Lost(why) if why.contains("replaced")));
        placement.remember_log();
        assert_eq!(placement.look(), Found::InPlace);

        // The queue file moved away and back is the same file; a copy is not.
        let aside = dir.path().join("aside");
        std::fs::rename(&queue, &aside).expect("move away");
        assert!(matches!(placement.look(), Found::Lost(why) if why.contains("removed")));
        std::fs::rename(&aside, &queue).expect("move back");
        assert_eq!(placement.look(), Found::InPlace);
        std::fs::copy(&queue, &aside).expect("copy");
        std::fs::rename(&aside, &queue).expect("copy over");
        assert!(matches!(placement.look(), Found::Lost(why) if why.contains("replaced")));
    }
}
