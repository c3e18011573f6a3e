//! `herald audit …`: the changes made through the operator API, and who made them.

use std::time::SystemTime;

use herald_proto::convert::timestamp;
use herald_proto::v1 as pb;
use herald_proto::v1::audit_client::AuditClient;
use serde_json::json;

use crate::connect::{Server, status_error};
use crate::deliveries::when;
use crate::output::{self, Format};

/// The columns of the table.
const COLUMNS: [&str; 7] = [
    "at", "actor", "tenant", "action", "object", "revision", "detail",
];

#[derive(clap::Subcommand)]
pub enum Command {
    /// List changes, newest first.
    List {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
        /// Only this actor's (a token's name).
        #[arg(long)]
        actor: Option<String>,
        /// Only changes this recent (e.g. 24h) or since a time (RFC 3339).
        #[arg(long, value_parser = when)]
        since: Option<SystemTime>,
        /// Only changes before this age (e.g. 1h) or time (RFC 3339).
        #[arg(long, value_parser = when)]
        until: Option<SystemTime>,
        /// Changes per page (at most 1000).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
        page_size: u32,
        /// Continue from a previous page.
        #[arg(long, default_value = "")]
        page_token: String,
    },
}

pub async fn run(cmd: Command, server: &Server, format: Format) -> anyhow::Result<()> {
    let mut client = AuditClient::new(server.channel().await?);
    match cmd {
        Command::List {
            tenant,
            actor,
            since,
            until,
            page_size,
            page_token,
        } => {
            let page = client
                .list_audit_entries(pb::ListAuditEntriesRequest {
                    filter: Some(pb::AuditFilter {
                        tenant: tenant.unwrap_or_default(),
                        actor: actor.unwrap_or_default(),
                        since: since.map(timestamp),
                        until: until.map(timestamp),
                    }),
                    page_size,
                    page_token,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            let items: Vec<_> = page
                .entries
                .iter()
                .map(|e| {
                    json!({
                        "at": output::time(e.at.as_ref()),
                        "actor": e.actor,
                        "tenant": e.tenant,
                        "action": e.action,
                        "object": e.object,
                        "revision": e.revision,
                        "detail": e.detail,
                    })
                })
                .collect();
            output::list(format, "entries", &items, &COLUMNS, &page.next_page_token)?;
        }
    }
    Ok(())
}
