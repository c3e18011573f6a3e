//! The audit log in the embedded store: table `audit`, sequence number → `herald.v1.AuditEntry`
//! (protobuf), in the order changes were made; listings are reverse scans filtered per entry,
//! and the sweep removes entries older than the retention from the front.

use std::time::SystemTime;

use herald_proto::convert::system_time;
use herald_proto::v1 as pb;
use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{MAX_SCAN, SWEEP_BATCH, storage};
use crate::attempts::{LogError, page_size};
use crate::audit::query::{AuditFilter, AuditPage};

const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");

/// Appends `entry`.
pub(super) fn record(db: &Database, entry: &pb::AuditEntry) -> Result<(), LogError> {
    let txn = db.begin_write().map_err(storage)?;
    {
        let mut table = txn.open_table(AUDIT).map_err(storage)?;
        let seq = table.last().map_err(storage)?.map_or(0, |(k, _)| k.value()) + 1;
        table
            .insert(seq, entry.encode_to_vec().as_slice())
            .map_err(storage)?;
    }
    txn.commit().map_err(storage)
}

/// Entries matching `filter`, newest first, from before `page_token`'s.
pub(super) fn list(
    db: &Database,
    filter: &AuditFilter,
    page_size_asked: u32,
    page_token: &str,
) -> Result<AuditPage, LogError> {
    let before = if page_token.is_empty() {
        u64::MAX
    } else {
        page_token
            .parse::<u64>()
            .map_err(|_| LogError::InvalidQuery(crate::attempts::not_from_this_listing()))?
    };
    let size = page_size(page_size_asked);
    let txn = db.begin_read().map_err(storage)?;
    let table = match txn.open_table(AUDIT) {
        Ok(table) => table,
        // Nothing recorded yet.
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(AuditPage::default()),
        Err(err) => return Err(storage(err)),
    };
    let mut page = AuditPage::default();
    let mut last_seen = None;
    for (scanned, entry) in table.range(..before).map_err(storage)?.rev().enumerate() {
        let (seq, value) = entry.map_err(storage)?;
        if page.entries.len() == size || scanned == MAX_SCAN {
            page.next_page_token = last_seen.map(|s: u64| s.to_string()).unwrap_or_default();
            return Ok(page);
        }
        last_seen = Some(seq.value());
        let entry = pb::AuditEntry::decode(value.value()).map_err(storage)?;
        if filter.matches(&entry) {
            page.entries.push(entry);
        }
    }
    Ok(page)
}

/// Removes up to [`SWEEP_BATCH`] of the oldest entries made before `cutoff`; how many went.
pub(super) fn sweep_batch(db: &Database, cutoff: SystemTime) -> Result<usize, LogError> {
    let txn = db.begin_write().map_err(storage)?;
    let removed;
    {
        let mut table = txn.open_table(AUDIT).map_err(storage)?;
        let mut old = Vec::new();
        for entry in table.iter().map_err(storage)? {
            let (seq, value) = entry.map_err(storage)?;
            let entry = pb::AuditEntry::decode(value.value()).map_err(storage)?;
            let expired = entry.at.as_ref().is_none_or(|t| system_time(t) < cutoff);
            if !expired || old.len() >= SWEEP_BATCH {
                break;
            }
            old.push(seq.value());
        }
        for seq in &old {
            table.remove(*seq).map_err(storage)?;
        }
        removed = old.len();
    }
    txn.commit().map_err(storage)?;
    Ok(removed)
}
