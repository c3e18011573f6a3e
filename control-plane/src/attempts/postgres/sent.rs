//! The requests as sent in PostgreSQL ([`crate::attempts::sent`]): table `sent_requests`, one
//! row per delivery (event, subscription, tenant), every field a column (headers as a JSON
//! array of `[name, value]` pairs, the body as `bytea`), so `psql` shows them.
//!
//! A batch's requests are written in the transaction that stores its attempts, by one array
//! upsert, in key order (so that concurrent batches take the rows' locks in one order).
//! `last_at` is the start of the newest attempt that sent the kept body: once the partitions
//! holding every such attempt are dropped, the sweep deletes the row.

use std::time::SystemTime;

use deadpool_postgres::GenericClient;
use deadpool_postgres::Transaction;
use herald_proto::convert::{system_time, timestamp};
use herald_proto::v1 as pb;

use crate::attempts::sent::{
    Expunged, PAGE_BYTES, REQUEST_OVERHEAD, SentPage, SentQuery, per_delivery,
};

/// Schema version 5: the requests as sent.
pub const MIGRATION: &str = r#"
CREATE TABLE sent_requests (
    event_id        text NOT NULL,
    subscription_id text NOT NULL,
    tenant          text NOT NULL,
    attempt         integer NOT NULL,
    sent_at         timestamptz NOT NULL,
    last_at         timestamptz NOT NULL,
    method          text NOT NULL,
    url             text NOT NULL,
    headers         jsonb NOT NULL,
    body            bytea NOT NULL,
    body_size       bigint NOT NULL,
    PRIMARY KEY (event_id, subscription_id, tenant)
);
CREATE INDEX sent_requests_by_last_at ON sent_requests (last_at);
"#;

/// The columns a stored request replaces when a later attempt sent another body.
const REPLACED: [&str; 7] = [
    "attempt",
    "sent_at",
    "method",
    "url",
    "headers",
    "body",
    "body_size",
];
/// When a reported request replaces the stored one ([`crate::attempts::sent::replaces`]).
const REPLACES: &str = "EXCLUDED.body <> s.body AND EXCLUDED.attempt > s.attempt";
/// Rows the sweep deletes per statement.
const SWEEP_BATCH: i64 = 10_000;

/// Keeps the requests of a batch's new attempts ([`crate::attempts::sent`]).
pub(super) async fn write(
    txn: &Transaction<'_>,
    requests: Vec<pb::SentRequest>,
) -> Result<(), tokio_postgres::Error> {
    if requests.is_empty() {
        return Ok(());
    }
    let kept = per_delivery(requests);
    let last_at: Vec<SystemTime> = kept.iter().map(|k| k.last_sent_at).collect();
    let requests: Vec<pb::SentRequest> = kept.into_iter().map(|k| k.request).collect();
    let event_id: Vec<&str> = requests.iter().map(|r| r.event_id.as_str()).collect();
    let subscription_id: Vec<&str> = requests
        .iter()
        .map(|r| r.subscription_id.as_str())
        .collect();
    let tenant: Vec<&str> = requests.iter().map(|r| r.tenant.as_str()).collect();
    let attempt: Vec<i32> = requests.iter().map(|r| r.attempt as i32).collect();
    let sent_at: Vec<SystemTime> = requests
        .iter()
        .map(|r| r.sent_at.as_ref().map_or_else(SystemTime::now, system_time))
        .collect();
    let method: Vec<&str> = requests.iter().map(|r| r.method.as_str()).collect();
    let url: Vec<&str> = requests.iter().map(|r| r.url.as_str()).collect();
    let headers: Vec<String> = requests.iter().map(|r| headers_json(&r.headers)).collect();
    let body: Vec<&[u8]> = requests.iter().map(|r| r.body.as_slice()).collect();
    let body_size: Vec<i64> = requests.iter().map(|r| r.body_size as i64).collect();
    let replaced = REPLACED
        .iter()
        .map(|c| format!("{c} = CASE WHEN {REPLACES} THEN EXCLUDED.{c} ELSE s.{c} END"))
        .collect::<Vec<_>>()
        .join(", ");
    txn.execute(
        &format!(
            "INSERT INTO sent_requests AS s (event_id, subscription_id, tenant, attempt, sent_at, \
             last_at, method, url, headers, body, body_size) \
             SELECT e, sub, t, a, at, last, m, u, h::jsonb, b, n \
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::integer[], $5::timestamptz[], \
             $6::timestamptz[], $7::text[], $8::text[], $9::text[], $10::bytea[], $11::bigint[]) \
             AS r(e, sub, t, a, at, last, m, u, h, b, n) \
             ON CONFLICT (event_id, subscription_id, tenant) DO UPDATE SET \
             last_at = CASE WHEN EXCLUDED.body = s.body OR ({REPLACES}) \
             THEN GREATEST(s.last_at, EXCLUDED.last_at) ELSE s.last_at END, {replaced}"
        ),
        &[
            &event_id,
            &subscription_id,
            &tenant,
            &attempt,
            &sent_at,
            &last_at,
            &method,
            &url,
            &headers,
            &body,
            &body_size,
        ],
    )
    .await?;
    Ok(())
}

/// Headers as the JSON array of `[name, value]` pairs the table keeps.
fn headers_json(headers: &[pb::Header]) -> String {
    let pairs: Vec<[&str; 2]> = headers
        .iter()
        .map(|h| [h.name.as_str(), h.value.as_str()])
        .collect();
    serde_json::to_string(&pairs).unwrap_or_else(|_| "[]".into())
}

/// A page of the requests `query` asks for, ordered by subscription: the first row, and those
/// after it while the page holds at most [`PAGE_BYTES`], filtered by the database.
pub(super) async fn list(
    client: &impl GenericClient,
    query: &SentQuery,
) -> Result<SentPage, tokio_postgres::Error> {
    let tenants: Option<Vec<&str>> = query.tenants();
    let rows = client
        .query(
            "SELECT event_id, subscription_id, tenant, attempt, sent_at, method, url, \
             headers::text, body, body_size, more FROM ( \
               SELECT *, sum(octet_length(body) + $5::bigint) OVER w AS running, \
               row_number() OVER w AS n, \
               count(*) OVER () > count(*) OVER w AS more \
               FROM sent_requests \
               WHERE event_id = $1 AND subscription_id > $2 \
               AND ($3 = '' OR subscription_id = $3) \
               AND ($4::text[] IS NULL OR tenant = ANY($4)) \
               WINDOW w AS (ORDER BY subscription_id, tenant) \
             ) r WHERE running <= $6::bigint OR n = 1 \
             ORDER BY subscription_id, tenant",
            &[
                &query.event_id(),
                &query.after(),
                &query.subscription_id(),
                &tenants,
                &(REQUEST_OVERHEAD as i64),
                &(PAGE_BYTES as i64),
            ],
        )
        .await?;
    let mut page = SentPage::default();
    let mut more = false;
    for row in &rows {
        let headers: String = row.get(7);
        let pairs: Vec<(String, String)> = serde_json::from_str(&headers).unwrap_or_default();
        more = row.get(10);
        page.requests.push(pb::SentRequest {
            event_id: row.get(0),
            subscription_id: row.get(1),
            tenant: row.get(2),
            attempt: row.get::<_, i32>(3) as u32,
            sent_at: Some(timestamp(row.get(4))),
            method: row.get(5),
            url: row.get(6),
            headers: pairs
                .into_iter()
                .map(|(name, value)| pb::Header { name, value })
                .collect(),
            body: row.get(8),
            body_size: row.get::<_, i64>(9) as u64,
        });
    }
    if more {
        page.next_page_token = page
            .requests
            .last()
            .map(|r| r.subscription_id.clone())
            .unwrap_or_default();
    }
    Ok(page)
}

/// Removes the requests `query` asks for.
pub(super) async fn expunge(
    client: &deadpool_postgres::Object,
    query: &SentQuery,
) -> Result<Expunged, tokio_postgres::Error> {
    let tenants: Option<Vec<&str>> = query.tenants();
    let rows = client
        .query(
            "DELETE FROM sent_requests WHERE event_id = $1 \
             AND ($2 = '' OR subscription_id = $2) \
             AND ($3::text[] IS NULL OR tenant = ANY($3)) RETURNING tenant",
            &[&query.event_id(), &query.subscription_id(), &tenants],
        )
        .await?;
    Ok(Expunged {
        removed: rows.len() as u32,
        tenants: rows.iter().map(|row| row.get(0)).collect(),
    })
}

/// Deletes the requests whose newest attempt started before `cut` (the start of the oldest
/// day the log still holds); returns how many went.
pub(super) async fn sweep(
    client: &deadpool_postgres::Object,
    cut: SystemTime,
) -> Result<u64, tokio_postgres::Error> {
    let mut removed = 0;
    loop {
        let n = client
            .execute(
                "DELETE FROM sent_requests WHERE ctid IN (SELECT ctid FROM sent_requests \
                 WHERE last_at < $1 LIMIT $2)",
                &[&cut, &SWEEP_BATCH],
            )
            .await?;
        removed += n;
        if (n as i64) < SWEEP_BATCH {
            return Ok(removed);
        }
    }
}
