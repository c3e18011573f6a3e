//! The free space the queue keeps on its disk (`--queue-min-free-bytes`). Below it new events
//! are refused while deliveries already taken go on, spending the margin on their outcomes.
//! After the disk filled up altogether, new events wait for at least
//! [`herald_core::disk_fault::RECOVERY_ROOM`] free, whatever the margin: with a small one, a
//! commit small enough for the pages the file has free would otherwise let events in, and
//! the next larger commit refuse them again, so health would flap on a disk still full.

use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;

use herald_core::disk_fault::RECOVERY_ROOM;

use super::QueueError;

/// The payload bytes of delivered events kept for replay and dedup on a disk of `disk_bytes`:
/// `configured`, but no more than an eighth of the disk. Kept events take about three times
/// their payload in the queue's file, which does not shrink once grown: on a small disk, a
/// bound made for a large one would fill it with events nobody waits for, and new ones would
/// be refused for the disk's margin although every receiver keeps up.
pub(super) fn retained_bound(configured: u64, disk_bytes: u64) -> u64 {
    if disk_bytes == 0 {
        // Not knowable: the flag alone.
        return configured;
    }
    configured.min(disk_bytes / 8)
}

/// How often the free space is looked at while there is enough.
pub(super) const SPACE_CHECK_EVERY: Duration = Duration::from_millis(100);

/// The free space the queue keeps on its disk.
pub(super) struct SpaceGuard {
    /// A directory on that disk.
    pub dir: PathBuf,
    /// Below this many free bytes, new events are refused.
    pub min_free: u64,
    checked_at: Instant,
    ok: bool,
    /// New events are being refused for want of space, and the log has said so once.
    refusing: bool,
    /// The disk filled up since it last had room: [`RECOVERY_ROOM`] is needed again.
    filled: bool,
}

impl SpaceGuard {
    /// Keeps `min_free` bytes free on the disk of `dir`.
    pub fn new(dir: PathBuf, min_free: u64) -> Self {
        SpaceGuard {
            dir,
            min_free,
            checked_at: Instant::now(),
            ok: false,
            refusing: false,
            filled: false,
        }
    }

    /// Whether the disk has the free space kept now (a disk whose space cannot be read is
    /// taken to have it: the writes themselves will tell).
    pub fn has_room(&self) -> bool {
        herald_core::disk_fault::has_room(&self.dir, self.min_free)
    }

    /// Whether the last [`SpaceGuard::check`] found the space needed.
    pub fn had_room(&self) -> bool {
        self.ok
    }

    /// The disk refused a write for want of space: new events wait for
    /// [`RECOVERY_ROOM`] (or the margin, if larger) from now on.
    pub fn filled_up(&mut self) {
        self.filled = true;
        self.ok = false;
    }

    /// The free bytes new events need now.
    fn needed(&self) -> u64 {
        if self.filled {
            self.min_free.max(RECOVERY_ROOM)
        } else {
            self.min_free
        }
    }

    /// Whether the disk has the free space needed for new events; looked at at most every
    /// [`SPACE_CHECK_EVERY`] while it has, and each time while it has not.
    pub fn check(&mut self) -> Result<(), QueueError> {
        if self.ok && self.checked_at.elapsed() < SPACE_CHECK_EVERY {
            return Ok(());
        }
        self.checked_at = Instant::now();
        let free = match rustix::fs::statvfs(&self.dir) {
            Ok(stat) => stat.f_bavail.saturating_mul(stat.f_frsize),
            // Not knowable here: the writes themselves will tell.
            Err(_) => u64::MAX,
        };
        self.judge(free)
    }

    /// Whether `free` bytes are the space needed for new events, and says so once.
    fn judge(&mut self, free: u64) -> Result<(), QueueError> {
        let needed = self.needed();
        self.ok = free >= needed;
        if self.ok {
            self.filled = false;
            if self.refusing {
                tracing::info!(free, dir = %self.dir.display(), "the queue's disk has room again: new events are taken");
                self.refusing = false;
            }
            return Ok(());
        }
        let low = QueueError::DiskFull(if self.filled {
            format!(
                "{free} bytes free on {}; after the disk filled up, new events wait for {needed}",
                self.dir.display()
            )
        } else {
            format!(
                "{free} bytes free on {}, below the {needed} the queue keeps free",
                self.dir.display()
            )
        });
        // Once, not once per refused call: the disk is full already.
        if !self.refusing {
            tracing::warn!(
                error = %low,
                "new events refused until the disk has room again; deliveries go on"
            );
            self.refusing = true;
        }
        Err(low)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivered_events_kept_take_at_most_an_eighth_of_a_small_disk() {
        const GIB: u64 = 1 << 30;
        assert_eq!(
            retained_bound(GIB, 100 * GIB),
            GIB,
            "a large disk: the flag"
        );
        assert_eq!(retained_bound(GIB, 48 << 20), 6 << 20, "48 MiB: 6 MiB");
        assert_eq!(retained_bound(GIB, 0), GIB, "a size not known: the flag");
    }

    #[test]
    fn after_the_disk_filled_up_new_events_wait_for_the_recovery_room() {
        let mut guard = SpaceGuard::new(PathBuf::from("/queue"), 0);
        assert!(guard.judge(4096).is_ok(), "no margin: any space will do");
        guard.filled_up();
        assert!(!guard.had_room());
        // A commit that fit in the file's free pages does not let events in again.
        let refused = guard
            .judge(RECOVERY_ROOM - 1)
            .expect_err("not room enough yet");
        assert!(
            matches!(&refused, QueueError::DiskFull(why) if why.contains("after the disk filled up")),
            "{refused:?}"
        );
        assert!(guard.judge(RECOVERY_ROOM).is_ok());
        assert!(guard.had_room());
        // The fault forgotten once there was room: the margin alone counts again.
        assert!(guard.judge(4096).is_ok());

        // A margin larger than the recovery room is what is asked, fault or not.
        let mut large = SpaceGuard::new(PathBuf::from("/queue"), 2 * RECOVERY_ROOM);
        large.filled_up();
        let refused = large.judge(RECOVERY_ROOM).expect_err("below the margin");
        assert!(
            matches!(&refused, QueueError::DiskFull(why) if why.contains(&(2 * RECOVERY_ROOM).to_string())),
            "{refused:?}"
        );
    }
}
