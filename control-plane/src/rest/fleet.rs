//! `/api/v1/agents`: the fleet of agents, as every replica sees it; and
//! `/api/v1/portal-links`: links into a tenant's portal.

use axum::Json;
use axum::extract::State;
use herald_proto::v1 as pb;
use herald_proto::v1::agents_server::Agents as _;
use serde::Serialize;
use utoipa::ToSchema;

use super::json::time;
use super::problem::{ApiError, Problem};
use super::{ApiState, Authorized};

/// What the control plane knows of one agent.
#[derive(Debug, Serialize, ToSchema)]
pub struct Agent {
    /// The agent's id.
    pub id: String,
    /// The node it runs on.
    pub node: String,
    /// Its region.
    pub region: String,
    /// Its version.
    pub version: String,
    /// The config revision it last acknowledged.
    pub applied_revision: i64,
    /// The control plane's current revision, to compare with.
    pub current_revision: i64,
    /// Whether its config stream is open.
    pub connected: bool,
    /// Since when it is connected.
    pub connected_since: Option<String>,
    /// When it was last heard from.
    pub last_seen: Option<String>,
    /// The last change it refused, with the reason.
    pub last_nack: String,
    /// The control-plane replica whose stream it is (or was last) on.
    pub replica: String,
}

/// The fleet.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentList {
    /// Every agent known.
    pub agents: Vec<Agent>,
}

/// Lists the agents (a token of every tenant: agents serve many).
#[utoipa::path(
    get,
    path = "/api/v1/agents",
    operation_id = "ListAgents",
    tag = "Agents",
    responses(
        (status = 200, body = AgentList),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn list_agents(
    State(state): State<ApiState>,
    caller: Authorized,
) -> Result<Json<AgentList>, ApiError> {
    let list = state
        .services
        .agents
        .list_agents(caller.request(pb::ListAgentsRequest {}))
        .await?
        .into_inner();
    Ok(Json(AgentList {
        agents: list
            .agents
            .into_iter()
            .map(|a| Agent {
                connected_since: time(a.connected_since.as_ref()),
                last_seen: time(a.last_seen.as_ref()),
                id: a.id,
                node: a.node,
                region: a.region,
                version: a.version,
                applied_revision: a.applied_revision,
                current_revision: a.current_revision,
                connected: a.connected,
                last_nack: a.last_nack,
                replica: a.replica,
            })
            .collect(),
    }))
}

/// A portal link to mint.
#[derive(Debug, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPortalLink {
    /// The tenant whose portal it opens.
    tenant: String,
    /// How long it works, e.g. `1h` (the default), 1 minute to 7 days.
    #[serde(default)]
    ttl: Option<String>,
    /// Shows, changes nothing, reveals no secret.
    #[serde(default)]
    read_only: bool,
}

/// A link into a tenant's portal.
#[derive(Debug, Serialize, ToSchema)]
pub struct PortalLink {
    /// Open it (or embed it in an iframe) to show the tenant its portal.
    pub url: String,
    /// When it stops working.
    pub expires_at: Option<String>,
    /// The tenant.
    pub tenant: String,
    /// Whether it changes nothing.
    pub read_only: bool,
}

/// Mints a short-lived link into one tenant's portal (an `admin` of that tenant may), for
/// platforms that hand their users the webhook pages.
#[utoipa::path(
    post,
    path = "/api/v1/portal-links",
    operation_id = "CreatePortalLink",
    tag = "Portal",
    request_body = NewPortalLink,
    responses(
        (status = 200, body = PortalLink),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn create_portal_link(
    State(state): State<ApiState>,
    caller: Authorized,
    super::ApiJson(body): super::ApiJson<NewPortalLink>,
) -> Result<Json<PortalLink>, ApiError> {
    use herald_proto::v1::portal_server::Portal as _;
    let ttl = super::json::wire_duration("ttl", body.ttl.as_deref())?;
    let link = state
        .services
        .portal
        .create_portal_link(caller.request(pb::CreatePortalLinkRequest {
            tenant: body.tenant,
            ttl,
            read_only: body.read_only,
        }))
        .await?
        .into_inner();
    Ok(Json(PortalLink {
        expires_at: time(link.expires_at.as_ref()),
        url: link.url,
        tenant: link.tenant,
        read_only: link.read_only,
    }))
}

/// A tenant whose portal links end.
#[derive(Debug, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LinksToExpire {
    /// The tenant.
    tenant: String,
}

/// Until when a tenant's portal links are ended.
#[derive(Debug, Serialize, ToSchema)]
pub struct PortalLinksExpired {
    /// The tenant.
    pub tenant: String,
    /// Its links made until then no longer open.
    pub expired_before: Option<String>,
}

/// Ends every link into one tenant's portal made until now, on every replica (an `admin` of
/// that tenant may): for a link that leaked, or a user who left. Links made afterwards work.
#[utoipa::path(
    post,
    path = "/api/v1/portal-links/expire",
    operation_id = "ExpirePortalLinks",
    tag = "Portal",
    request_body = LinksToExpire,
    responses(
        (status = 200, body = PortalLinksExpired),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn expire_portal_links(
    State(state): State<ApiState>,
    caller: Authorized,
    super::ApiJson(body): super::ApiJson<LinksToExpire>,
) -> Result<Json<PortalLinksExpired>, ApiError> {
    use herald_proto::v1::portal_server::Portal as _;
    let expired = state
        .services
        .portal
        .expire_portal_links(caller.request(pb::ExpirePortalLinksRequest {
            tenant: body.tenant,
        }))
        .await?
        .into_inner();
    Ok(Json(PortalLinksExpired {
        tenant: expired.tenant,
        expired_before: time(expired.before.as_ref()),
    }))
}
