//! What one [`super::Queue::due`] call reads: the lanes' due tasks, from a snapshot of the
//! file and the memtable merged in key order, taken lane by lane while each lane and the
//! caller have room.

use super::memtable::{self, Memtable, Overlay};
use super::records::decode_task;
use super::{QueueError, Task, lanes, storage};

/// The file's tasks table, as a read transaction sees it.
pub(super) type TaskTable = redb::ReadOnlyTable<(&'static str, u64, u64), &'static [u8]>;

/// A task read from the file or the memtable.
type TaskEntry<'a> = (
    memtable::Slot,
    memtable::Value<'a, redb::AccessGuard<'a, &'static [u8]>>,
);

/// A lane with work due by its hint, as the scheduler weighs it.
pub(super) struct LaneDue {
    /// Its hint.
    pub due: u64,
    /// The lane (subscription).
    pub lane: String,
    /// Its attempts under way.
    pub in_flight: usize,
}

/// What one [`Queue::due`] call reads: a snapshot of the file and the memtable, at `now_ms`,
/// for at most `limit` tasks.
pub(super) struct DueRead<'a> {
    pub tasks: &'a TaskTable,
    pub memtable: &'a Memtable,
    pub now_ms: u64,
    pub limit: usize,
}

impl DueRead<'_> {
    /// One visit of `lane`: takes its due tasks while the lane (`room` more) and `out` have
    /// room, then leaves the lane's hint and scan start where the visit ended.
    pub(super) fn visit(
        &self,
        lanes: &mut lanes::Lanes,
        lane: &str,
        mut room: usize,
        out: &mut Vec<Task>,
    ) -> Result<(), QueueError> {
        let mut hint = None;
        // Every task before `from` is taken; so is every one visited before the break.
        let from = lanes.scan_from(lane);
        let mut taken_up_to = None;
        for entry in lane_tasks(self.tasks, self.memtable, lane, from)? {
            let ((due, seq), value) = entry.map_err(storage)?;
            if lanes.is_taken(seq) {
                taken_up_to = Some((due, seq));
                continue;
            }
            if due > self.now_ms || room == 0 || out.len() >= self.limit {
                hint = Some(due);
                break;
            }
            let task = decode_task((lane, due, seq), value.bytes())?;
            lanes.take(lane, seq);
            taken_up_to = Some((due, seq));
            room -= 1;
            out.push(task);
        }
        if let Some((due, seq)) = taken_up_to {
            lanes.set_scan_from(lane, (due, seq + 1));
        }
        lanes.set_hint(lane, hint);
        Ok(())
    }
}

/// A lane's tasks from `from` on, in order: the file's and the memtable's.
pub(super) fn lane_tasks<'a>(
    tasks: &'a TaskTable,
    memtable: &'a Memtable,
    lane: &'a str,
    from: memtable::Slot,
) -> Result<impl Iterator<Item = Result<TaskEntry<'a>, redb::StorageError>> + 'a, QueueError> {
    let file = tasks
        .range((lane, from.0, from.1)..=(lane, u64::MAX, u64::MAX))
        .map_err(storage)?
        .map(|entry| {
            entry.map(|(key, value)| {
                let (_, due, seq) = key.value();
                ((due, seq), value)
            })
        });
    Ok(Overlay::new(file, memtable.lane_from(lane, from)))
}

/// Every lane that may hold a task: those with tasks in the file or in the memtable, in order.
pub(super) fn lanes_of(tasks: &TaskTable, memtable: &Memtable) -> Result<Vec<String>, QueueError> {
    let mut lanes: std::collections::BTreeSet<String> =
        memtable.lanes().map(str::to_owned).collect();
    let mut from = String::new();
    while let Some(entry) = tasks
        .range((from.as_str(), 0, 0)..)
        .map_err(storage)?
        .next()
    {
        let (key, _) = entry.map_err(storage)?;
        let lane = key.value().0.to_owned();
        // The smallest key after every key of this lane.
        from = format!("{lane}\0");
        lanes.insert(lane);
    }
    Ok(lanes.into_iter().collect())
}
