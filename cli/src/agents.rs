//! `herald agents …`: the agents connected to the control plane.

use herald_proto::v1 as pb;
use herald_proto::v1::agents_client::AgentsClient;

use crate::connect::{Server, status_error};
use crate::output::{self, Format};

#[derive(clap::Subcommand)]
pub enum Command {
    /// List agents with their config revision and connection state.
    List,
}

pub async fn run(cmd: Command, server: &Server, format: Format) -> anyhow::Result<()> {
    let mut client = AgentsClient::new(server.channel().await?);
    match cmd {
        Command::List => {
            let agents = client
                .list_agents(pb::ListAgentsRequest {})
                .await
                .map_err(status_error)?
                .into_inner()
                .agents;
            let items: Vec<_> = agents.iter().map(output::agent).collect();
            output::list(
                format,
                "agents",
                &items,
                &[
                    "id",
                    "region",
                    "node",
                    "version",
                    "connected",
                    "applied_revision",
                    "lag",
                    "last_seen",
                ],
                "",
            );
        }
    }
    Ok(())
}
