//! The requests as sent in the embedded store ([`crate::attempts::sent`]):
//!
//! - `sent_requests`: `event_id \0 subscription_id \0 tenant` → (the sequence number of the
//!   newest attempt that sent it, `herald.v1.SentRequest` as protobuf). The `event_id \0`
//!   prefix finds one event's requests, ordered by subscription.
//! - `sent_requests_by_seq`: (that sequence number, key) → (), so the sweep that removes the
//!   attempts up to a sequence number removes the requests no remaining attempt sent.

use herald_proto::v1 as pb;
use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::storage;
use crate::attempts::LogError;
use crate::attempts::sent::{self, Expunged, PageFill, SentPage, SentQuery};

const REQUESTS: TableDefinition<&str, (u64, &[u8])> = TableDefinition::new("sent_requests");
const BY_SEQ: TableDefinition<(u64, &str), ()> = TableDefinition::new("sent_requests_by_seq");

/// Creates the tables (so that reads find them).
pub(super) fn create(txn: &redb::WriteTransaction) -> Result<(), LogError> {
    txn.open_table(REQUESTS).map_err(storage)?;
    txn.open_table(BY_SEQ).map_err(storage)?;
    Ok(())
}

fn key(request: &pb::SentRequest) -> String {
    let (event, subscription, tenant) = sent::delivery_key(request);
    format!("{event}\0{subscription}\0{tenant}")
}

/// The range of keys of one event's requests.
fn event_range(event_id: &str) -> (String, String) {
    (format!("{event_id}\0"), format!("{event_id}\u{1}"))
}

/// The requests tables, open in one write transaction.
pub(super) struct Requests<'t> {
    requests: redb::Table<'t, &'static str, (u64, &'static [u8])>,
    by_seq: redb::Table<'t, (u64, &'static str), ()>,
}

impl<'t> Requests<'t> {
    pub(super) fn open(txn: &'t redb::WriteTransaction) -> Result<Self, LogError> {
        Ok(Requests {
            requests: txn.open_table(REQUESTS).map_err(storage)?,
            by_seq: txn.open_table(BY_SEQ).map_err(storage)?,
        })
    }

    /// Keeps `request`, reported with the attempt stored as `seq`: as its delivery's request
    /// unless one is stored that it does not replace ([`sent::replaces`]). The kept request
    /// lasts as long as attempt `seq` when that attempt sent its body.
    pub(super) fn keep(&mut self, request: pb::SentRequest, seq: u64) -> Result<(), LogError> {
        let key = key(&request);
        let stored = match self.requests.get(key.as_str()).map_err(storage)? {
            Some(value) => {
                let (last, bytes) = value.value();
                Some((last, pb::SentRequest::decode(bytes).map_err(storage)?))
            }
            None => None,
        };
        let (kept, last) = match stored {
            Some((last, stored)) => {
                self.by_seq.remove((last, key.as_str())).map_err(storage)?;
                // The request lasts as long as the newest attempt that sent its body.
                if sent::replaces(&stored, &request) {
                    (request, last.max(seq))
                } else if request.body == stored.body {
                    (stored, last.max(seq))
                } else {
                    (stored, last)
                }
            }
            None => (request, seq),
        };
        self.requests
            .insert(key.as_str(), (last, kept.encode_to_vec().as_slice()))
            .map_err(storage)?;
        self.by_seq
            .insert((last, key.as_str()), ())
            .map_err(storage)?;
        Ok(())
    }

    /// Removes the requests whose newest attempt is at or before `seq` (those attempts are
    /// gone); returns how many went.
    pub(super) fn sweep_through(&mut self, seq: u64) -> Result<usize, LogError> {
        let mut gone = Vec::new();
        for entry in self.by_seq.range((0, "")..(seq + 1, "")).map_err(storage)? {
            let (k, _) = entry.map_err(storage)?;
            let (last, key) = k.value();
            gone.push((last, key.to_owned()));
        }
        for (last, key) in &gone {
            self.by_seq.remove((*last, key.as_str())).map_err(storage)?;
            self.requests.remove(key.as_str()).map_err(storage)?;
        }
        Ok(gone.len())
    }
}

/// A page of the requests `query` asks for, ordered by subscription.
pub(super) fn list(db: &Database, query: &SentQuery) -> Result<SentPage, LogError> {
    let txn = db.begin_read().map_err(storage)?;
    let table = txn.open_table(REQUESTS).map_err(storage)?;
    let (mut low, high) = event_range(query.event_id());
    if !query.after().is_empty() {
        // Past every key of the page token's subscription.
        low = format!("{}\0{}\u{1}", query.event_id(), query.after());
    }
    let mut page = PageFill::default();
    for entry in table.range(low.as_str()..high.as_str()).map_err(storage)? {
        let (_, value) = entry.map_err(storage)?;
        let request = pb::SentRequest::decode(value.value().1).map_err(storage)?;
        if query.matches(&request) && !page.add(request) {
            break;
        }
    }
    Ok(page.finish())
}

/// Removes the requests `query` asks for, in one commit.
pub(super) fn expunge(db: &Database, query: &SentQuery) -> Result<Expunged, LogError> {
    let txn = db.begin_write().map_err(storage)?;
    let mut expunged = Expunged::default();
    {
        let mut tables = Requests::open(&txn)?;
        let (low, high) = event_range(query.event_id());
        let mut gone = Vec::new();
        for entry in tables
            .requests
            .range(low.as_str()..high.as_str())
            .map_err(storage)?
        {
            let (key, value) = entry.map_err(storage)?;
            let (last, bytes) = value.value();
            let request = pb::SentRequest::decode(bytes).map_err(storage)?;
            if query.matches(&request) {
                gone.push((last, key.value().to_owned()));
                expunged.tenants.insert(request.tenant);
            }
        }
        for (last, key) in &gone {
            tables.requests.remove(key.as_str()).map_err(storage)?;
            tables
                .by_seq
                .remove((*last, key.as_str()))
                .map_err(storage)?;
        }
        expunged.removed = gone.len() as u32;
    }
    txn.commit().map_err(storage)?;
    Ok(expunged)
}
