//! The requests as sent in PostgreSQL ([`crate::attempts::sent`]): table `sent_requests`, one
//! row per delivery (event, subscription, tenant), every field a column (headers as a JSON
//! array of `[name, value]` pairs, the body as `bytea`), so `psql` shows them.
//!
//! A batch's requests are written in the transaction that stores its attempts, by one array
//! upsert. `last_at` is the start of the newest attempt that sent the request: once the
//! partitions holding every such attempt are dropped, the sweep deletes the row.

use std::time::SystemTime;

use deadpool_postgres::GenericClient;
use deadpool_postgres::Transaction;
use herald_proto::convert::{system_time, timestamp};
use herald_proto::v1 as pb;

use crate::attempts::sent::{Expunged, SentQuery, per_delivery};

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
        .map(|c| {
            format!(
                "{c} = CASE WHEN EXCLUDED.body <> s.body AND EXCLUDED.attempt > s.attempt \
                 THEN EXCLUDED.{c} ELSE s.{c} END"
            )
        })
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
             last_at = GREATEST(s.last_at, EXCLUDED.last_at), {replaced}"
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

/// The requests `query` asks for, ordered by subscription.
pub(super) async fn list(
    client: &impl GenericClient,
    query: &SentQuery,
) -> Result<Vec<pb::SentRequest>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT event_id, subscription_id, tenant, attempt, sent_at, method, url, \
             headers::text, body, body_size FROM sent_requests WHERE event_id = $1 \
             ORDER BY subscription_id, tenant",
            &[&query.event_id()],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| {
            let headers: String = row.get(7);
            let pairs: Vec<(String, String)> = serde_json::from_str(&headers).unwrap_or_default();
            pb::SentRequest {
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
            }
        })
        .filter(|request| query.matches(request))
        .collect())
}

/// Removes the requests `query` asks for.
pub(super) async fn expunge(
    client: &mut deadpool_postgres::Object,
    query: &SentQuery,
) -> Result<Expunged, tokio_postgres::Error> {
    let txn = client.transaction().await?;
    let found = list(&txn, query).await?;
    let subscription_id: Vec<&str> = found.iter().map(|r| r.subscription_id.as_str()).collect();
    let tenant: Vec<&str> = found.iter().map(|r| r.tenant.as_str()).collect();
    let removed = txn
        .execute(
            "DELETE FROM sent_requests WHERE event_id = $1 AND (subscription_id, tenant) IN \
             (SELECT * FROM UNNEST($2::text[], $3::text[]))",
            &[&query.event_id(), &subscription_id, &tenant],
        )
        .await?;
    txn.commit().await?;
    Ok(Expunged {
        removed: removed as u32,
        tenants: found.into_iter().map(|r| r.tenant).collect(),
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
