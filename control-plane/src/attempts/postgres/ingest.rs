//! Writing a batch of attempts into `attempts`, inside the transaction that stores it.
//!
//! Most batches are new to the log, so they go in with a binary `COPY`, the fastest way
//! PostgreSQL takes rows, their `seq`s drawn from the table's identity sequence first. A batch
//! that holds an attempt already stored (an agent sending again after a lost ack) makes the
//! `COPY` fail on the unique index; the transaction then rolls back to a savepoint taken before
//! it and writes the batch with `INSERT … ON CONFLICT DO NOTHING`, which skips what is there.

use std::collections::HashMap;
use std::time::SystemTime;

use deadpool_postgres::Transaction;
use herald_proto::convert::std_duration;
use herald_proto::v1 as pb;
use prost::Message as _;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};

/// The column list both ways of writing use, after `seq`.
const COLUMNS: &str = "started_at, tenant, event_id, subscription_id, attempt, event_type, \
                       outcome, status_code, error_kind, error, url, agent_id, duration_ms, record";

/// What writing a batch stored.
pub(super) struct Written {
    /// The positions in the batch of the attempts new to the log.
    pub new: Vec<usize>,
    /// Their `seq`s.
    pub seqs: Vec<i64>,
}

/// Writes `columns` into `attempts` within `txn`, skipping attempts already stored.
pub(super) async fn write(
    txn: &Transaction<'_>,
    columns: &Columns<'_>,
) -> Result<Written, tokio_postgres::Error> {
    txn.batch_execute("SAVEPOINT batch").await?;
    match copy(txn, columns).await {
        Ok(written) => {
            txn.batch_execute("RELEASE SAVEPOINT batch").await?;
            Ok(written)
        }
        Err(err) if err.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            txn.batch_execute("ROLLBACK TO SAVEPOINT batch").await?;
            insert_new(txn, columns).await
        }
        Err(err) => Err(err),
    }
}

/// Copies every row, with `seq`s drawn first.
async fn copy(
    txn: &Transaction<'_>,
    columns: &Columns<'_>,
) -> Result<Written, tokio_postgres::Error> {
    let n = columns.len();
    let seqs: Vec<i64> = txn
        .query(
            "SELECT nextval(pg_get_serial_sequence('attempts', 'seq')) \
             FROM generate_series(1, $1::integer)",
            &[&(n as i32)],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let sink = txn
        .copy_in(&format!(
            "COPY attempts (seq, {COLUMNS}) FROM STDIN (FORMAT binary)"
        ))
        .await?;
    let writer = BinaryCopyInWriter::new(sink, &COPY_TYPES);
    tokio::pin!(writer);
    for (i, seq) in seqs.iter().enumerate() {
        let mut row: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(15);
        row.push(seq);
        row.extend(columns.row(i));
        writer.as_mut().write(&row).await?;
    }
    writer.finish().await?;
    Ok(Written {
        new: (0..n).collect(),
        seqs,
    })
}

/// The types of a copied row: `seq`, then [`COLUMNS`].
const COPY_TYPES: [Type; 15] = [
    Type::INT8,
    Type::TIMESTAMPTZ,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::INT4,
    Type::TEXT,
    Type::INT2,
    Type::INT4,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::FLOAT8,
    Type::BYTEA,
];

/// Inserts the rows not stored yet, in one array insert.
async fn insert_new(
    txn: &Transaction<'_>,
    columns: &Columns<'_>,
) -> Result<Written, tokio_postgres::Error> {
    let rows = txn
        .query(
            &format!(
                "INSERT INTO attempts ({COLUMNS}) \
                 SELECT * FROM UNNEST($1::timestamptz[], $2::text[], $3::text[], $4::text[], \
                 $5::integer[], $6::text[], $7::smallint[], $8::integer[], $9::text[], \
                 $10::text[], $11::text[], $12::text[], $13::double precision[], $14::bytea[]) \
                 ON CONFLICT DO NOTHING \
                 RETURNING seq, tenant, event_id, subscription_id, attempt"
            ),
            &columns.arrays(),
        )
        .await?;
    let positions: HashMap<(&str, &str, &str, i32), usize> = (0..columns.len())
        .map(|i| {
            let identity = (
                columns.tenant[i],
                columns.event_id[i],
                columns.subscription_id[i],
                columns.attempt[i],
            );
            (identity, i)
        })
        .collect();
    let mut written = Written {
        new: Vec::with_capacity(rows.len()),
        seqs: Vec::with_capacity(rows.len()),
    };
    for row in &rows {
        let identity = (row.get(1), row.get(2), row.get(3), row.get(4));
        if let Some(i) = positions.get(&identity) {
            written.new.push(*i);
            written.seqs.push(row.get(0));
        }
    }
    written.new.sort_unstable();
    Ok(written)
}

/// The columns of a batch, one array each, borrowing the attempts' text.
#[derive(Default)]
pub(super) struct Columns<'a> {
    started_at: Vec<SystemTime>,
    tenant: Vec<&'a str>,
    event_id: Vec<&'a str>,
    subscription_id: Vec<&'a str>,
    attempt: Vec<i32>,
    event_type: Vec<&'a str>,
    outcome: Vec<i16>,
    status_code: Vec<i32>,
    error_kind: Vec<&'a str>,
    error: Vec<&'a str>,
    url: Vec<&'a str>,
    agent_id: Vec<&'a str>,
    duration_ms: Vec<f64>,
    record: Vec<Vec<u8>>,
}

impl<'a> Columns<'a> {
    /// The columns of `attempts`, each with the time it started.
    pub(super) fn new(attempts: &'a [(SystemTime, pb::Attempt)]) -> Self {
        let mut columns = Columns::default();
        for (started_at, a) in attempts {
            columns.started_at.push(*started_at);
            columns.tenant.push(&a.tenant);
            columns.event_id.push(&a.event_id);
            columns.subscription_id.push(&a.subscription_id);
            columns.attempt.push(a.attempt as i32);
            columns.event_type.push(&a.event_type);
            columns.outcome.push(a.outcome as i16);
            columns.status_code.push(a.status_code as i32);
            columns.error_kind.push(&a.error_kind);
            columns.error.push(&a.error);
            columns.url.push(&a.url);
            columns.agent_id.push(&a.agent_id);
            columns.duration_ms.push(
                a.duration
                    .as_ref()
                    .and_then(std_duration)
                    .map_or(0.0, |d| d.as_secs_f64() * 1000.0),
            );
            columns.record.push(a.encode_to_vec());
        }
        columns
    }

    fn len(&self) -> usize {
        self.started_at.len()
    }

    /// Row `i`, in [`COLUMNS`] order.
    fn row(&self, i: usize) -> [&(dyn ToSql + Sync); 14] {
        [
            &self.started_at[i],
            &self.tenant[i],
            &self.event_id[i],
            &self.subscription_id[i],
            &self.attempt[i],
            &self.event_type[i],
            &self.outcome[i],
            &self.status_code[i],
            &self.error_kind[i],
            &self.error[i],
            &self.url[i],
            &self.agent_id[i],
            &self.duration_ms[i],
            &self.record[i],
        ]
    }

    /// The whole columns, in [`COLUMNS`] order.
    fn arrays(&self) -> [&(dyn ToSql + Sync); 14] {
        [
            &self.started_at,
            &self.tenant,
            &self.event_id,
            &self.subscription_id,
            &self.attempt,
            &self.event_type,
            &self.outcome,
            &self.status_code,
            &self.error_kind,
            &self.error,
            &self.url,
            &self.agent_id,
            &self.duration_ms,
            &self.record,
        ]
    }
}
