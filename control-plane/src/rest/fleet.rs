//! `/api/v1/agents`: the fleet of agents, as every replica sees it.

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
