//! The audit log in PostgreSQL: table `audit`, one row per change made through the operator
//! API, every field a column (so `psql` shows them), listed newest first with keyset paging
//! on (`at`, `seq`). Changes are few, so retention deletes rows older than the cut-off.

use std::time::SystemTime;

use herald_proto::convert::{system_time, timestamp};
use herald_proto::v1 as pb;
use tokio_postgres::types::ToSql;

use super::PageToken;
use crate::attempts::page_size;
use crate::audit::query::{AuditFilter, AuditPage};

/// Schema version 3: the audit log.
pub const MIGRATION: &str = r#"
CREATE TABLE audit (
    seq      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at       timestamptz NOT NULL,
    actor    text NOT NULL,
    tenant   text NOT NULL,
    action   text NOT NULL,
    object   text NOT NULL,
    revision bigint NOT NULL,
    detail   text NOT NULL
);
CREATE INDEX audit_newest ON audit (at DESC, seq DESC);
CREATE INDEX audit_by_tenant ON audit (tenant, at DESC, seq DESC);
CREATE INDEX audit_by_actor ON audit (actor, at DESC, seq DESC);
"#;

/// Inserts `entry`.
pub async fn record(
    client: &deadpool_postgres::Object,
    entry: &pb::AuditEntry,
) -> Result<(), tokio_postgres::Error> {
    let at = entry.at.as_ref().map_or_else(SystemTime::now, system_time);
    client
        .execute(
            "INSERT INTO audit (at, actor, tenant, action, object, revision, detail) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &at,
                &entry.actor,
                &entry.tenant,
                &entry.action,
                &entry.object,
                &entry.revision,
                &entry.detail,
            ],
        )
        .await?;
    Ok(())
}

/// The query listing what `filter` selects after `after`, newest first, one more than a page.
pub fn query(
    filter: &AuditFilter,
    after: Option<&PageToken>,
    size: usize,
) -> (String, Vec<Box<dyn ToSql + Sync + Send>>) {
    let mut conditions: Vec<String> = Vec::new();
    let mut params: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
    let mut param = |value: Box<dyn ToSql + Sync + Send>| {
        params.push(value);
        format!("${}", params.len())
    };
    let wire = filter.wire();
    for (column, value) in [("tenant", &wire.tenant), ("actor", &wire.actor)] {
        if !value.is_empty() {
            let p = param(Box::new(value.clone()));
            conditions.push(format!("{column} = {p}"));
        }
    }
    if let Some(tenants) = filter.tenants() {
        let tenants: Vec<String> = tenants.into_iter().map(str::to_owned).collect();
        let p = param(Box::new(tenants));
        conditions.push(format!("tenant = ANY({p})"));
    }
    if let Some(since) = filter.since() {
        let p = param(Box::new(since));
        conditions.push(format!("at >= {p}"));
    }
    if let Some(until) = filter.until() {
        let p = param(Box::new(until));
        conditions.push(format!("at < {p}"));
    }
    if let Some(after) = after {
        let t = param(Box::new(after.started_at));
        let s = param(Box::new(after.seq));
        conditions.push(format!("(at, seq) < ({t}, {s})"));
    }
    let limit = param(Box::new(size as i64 + 1));
    let sql = format!(
        "SELECT seq, at, actor, tenant, action, object, revision, detail FROM audit {} \
         ORDER BY at DESC, seq DESC LIMIT {limit}",
        if conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conditions.join(" AND "))
        }
    );
    (sql, params)
}

/// Runs a listing.
pub async fn list(
    client: &deadpool_postgres::Object,
    filter: &AuditFilter,
    page_size_asked: u32,
    after: Option<PageToken>,
) -> Result<AuditPage, tokio_postgres::Error> {
    let size = page_size(page_size_asked);
    let (sql, params) = query(filter, after.as_ref(), size);
    let refs: Vec<&(dyn ToSql + Sync)> = params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect();
    let rows = client.query(sql.as_str(), &refs).await?;
    let more = rows.len() > size;
    let mut page = AuditPage::default();
    let mut last = None;
    for row in rows.iter().take(size) {
        let at: SystemTime = row.get(1);
        page.entries.push(pb::AuditEntry {
            at: Some(timestamp(at)),
            actor: row.get(2),
            tenant: row.get(3),
            action: row.get(4),
            object: row.get(5),
            revision: row.get(6),
            detail: row.get(7),
        });
        last = Some(PageToken {
            seq: row.get(0),
            started_at: at,
        });
    }
    if let (true, Some(last)) = (more, last) {
        page.next_page_token = last.to_string();
    }
    Ok(page)
}

/// Deletes entries made before `cutoff`; how many went.
pub async fn sweep(
    client: &deadpool_postgres::Object,
    cutoff: SystemTime,
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute("DELETE FROM audit WHERE at < $1", &[&cutoff])
        .await
}
