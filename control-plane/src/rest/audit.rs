//! `/api/v1/audit`: the changes made through the operator API, with who made them.

use axum::Json;
use axum::extract::State;
use herald_proto::v1 as pb;
use herald_proto::v1::audit_server::Audit as _;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::json::{parse_time, time};
use super::problem::{ApiError, Problem};
use super::{ApiQuery, ApiState, Authorized};

/// One change made through the operator API.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntry {
    /// When.
    pub at: Option<String>,
    /// Who: a token's or certificate's name.
    pub actor: String,
    /// The object's tenant (empty for what all tenants share).
    pub tenant: String,
    /// What was done (`subscription.create`, …).
    pub action: String,
    /// To what.
    pub object: String,
    /// The config store revision it wrote (0: none).
    pub revision: i64,
    /// More about it.
    pub detail: String,
}

impl From<pb::AuditEntry> for AuditEntry {
    fn from(entry: pb::AuditEntry) -> Self {
        AuditEntry {
            at: time(entry.at.as_ref()),
            actor: entry.actor,
            tenant: entry.tenant,
            action: entry.action,
            object: entry.object,
            revision: entry.revision,
            detail: entry.detail,
        }
    }
}

/// A page of audit entries.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    /// Newest first.
    pub entries: Vec<AuditEntry>,
    /// Where the next page starts; empty on the last.
    pub next_page_token: String,
}

/// Which audit entries.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only this tenant's.
    tenant: Option<String>,
    /// Only this actor's.
    actor: Option<String>,
    /// Entries at or after this time (RFC 3339).
    since: Option<String>,
    /// Entries before this time (RFC 3339).
    until: Option<String>,
    /// How many to answer at most: 0 or none means 100; more than 1000 means 1000.
    page_size: Option<u32>,
    /// Where the previous page ended.
    page_token: Option<String>,
}

/// The changes made through the operator API (those of the caller's tenants), newest first.
#[utoipa::path(
    get,
    path = "/api/v1/audit",
    operation_id = "ListAuditEntries",
    tag = "Audit",
    params(AuditQuery),
    responses(
        (status = 200, body = AuditPage),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn list_audit_entries(
    State(state): State<ApiState>,
    caller: Authorized,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> Result<Json<AuditPage>, ApiError> {
    let request = caller.request(pb::ListAuditEntriesRequest {
        filter: Some(pb::AuditFilter {
            since: parse_time("since", query.since.as_deref())?,
            until: parse_time("until", query.until.as_deref())?,
            tenant: query.tenant.unwrap_or_default(),
            actor: query.actor.unwrap_or_default(),
        }),
        page_size: query.page_size.unwrap_or_default(),
        page_token: query.page_token.unwrap_or_default(),
    });
    let page = state
        .services
        .audit
        .list_audit_entries(request)
        .await?
        .into_inner();
    Ok(Json(AuditPage {
        entries: page.entries.into_iter().map(Into::into).collect(),
        next_page_token: page.next_page_token,
    }))
}
