//! The console's fleet page: every agent, its region, the revision it applied against the
//! current one (its lag), and the last change it refused.

use askama::Template;
use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use herald_proto::v1 as pb;
use herald_proto::v1::agents_server::Agents as _;

use super::Chrome;
use crate::web::WebState;
use crate::web::page::{PageError, render, when};
use crate::web::session::Console;

pub fn routes() -> Router<WebState> {
    Router::new().route("/agents", get(agents))
}

struct AgentRow {
    id: String,
    node: String,
    region: String,
    version: String,
    applied: i64,
    lag: i64,
    connected: bool,
    since: String,
    last_seen: String,
    replica: String,
    last_nack: String,
}

#[derive(Template)]
#[template(path = "console/agents.html")]
struct AgentsPage {
    chrome: Chrome,
    agents: Vec<AgentRow>,
    regions: Vec<(String, usize)>,
}

async fn agents(State(state): State<WebState>, console: Console) -> Result<Response, PageError> {
    let agents = state
        .services
        .agents
        .list_agents(console.caller.request(pb::ListAgentsRequest {}))
        .await?
        .into_inner()
        .agents;
    let mut regions = std::collections::BTreeMap::<String, usize>::new();
    for agent in agents.iter().filter(|a| a.connected) {
        *regions.entry(agent.region.clone()).or_default() += 1;
    }
    Ok(render(&AgentsPage {
        chrome: Chrome::new(&console, "agents"),
        regions: regions.into_iter().collect(),
        agents: agents
            .iter()
            .map(|a| AgentRow {
                id: a.id.clone(),
                node: a.node.clone(),
                region: a.region.clone(),
                version: a.version.clone(),
                applied: a.applied_revision,
                lag: a.current_revision.saturating_sub(a.applied_revision).max(0),
                connected: a.connected,
                since: when(a.connected_since.as_ref()),
                last_seen: when(a.last_seen.as_ref()),
                replica: a.replica.clone(),
                last_nack: a.last_nack.clone(),
            })
            .collect(),
    }))
}
