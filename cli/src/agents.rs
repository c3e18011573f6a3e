//! `herald agents …`: the agents connected to the control plane.

use herald_proto::v1 as pb;
use herald_proto::v1::agents_client::AgentsClient;

use crate::connect::{Server, status_error};
use serde_json::Value;

use crate::output::{self, Format};
use crate::watch::Watch;

#[derive(clap::Subcommand)]
pub enum Command {
    /// List agents with their config revision and connection state.
    List {
        /// Show the list again whenever it changes (Ctrl-C stops).
        #[arg(long, short = 'w')]
        watch: bool,
    },
}

pub async fn run(cmd: Command, server: &Server, format: Format) -> anyhow::Result<()> {
    let mut client = AgentsClient::new(server.channel().await?);
    match cmd {
        Command::List { watch } => {
            let mut shown = Watch::default();
            loop {
                let agents = client
                    .list_agents(pb::ListAgentsRequest {})
                    .await
                    .map_err(status_error)?
                    .into_inner()
                    .agents;
                let items: Vec<_> = agents.iter().map(output::agent).collect();
                shown.show(Value::Array(items), |items| {
                    output::list(
                        format,
                        "agents",
                        items.as_array().map_or(&[][..], Vec::as_slice),
                        &[
                            "id",
                            "region",
                            "node",
                            "version",
                            "connected",
                            "replica",
                            "applied_revision",
                            "lag",
                            "last_nack",
                            "last_seen",
                        ],
                        "",
                    )
                })?;
                if !watch || !Watch::next_round().await {
                    break;
                }
            }
        }
    }
    Ok(())
}
