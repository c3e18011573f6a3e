//! `herald portal …`: links into a tenant's portal, the web pages where one tenant manages
//! its own endpoints and reads its delivery log.

use std::time::Duration;

use herald_proto::convert::duration;
use herald_proto::v1 as pb;
use herald_proto::v1::portal_client::PortalClient;
use serde_json::json;

use crate::connect::{Server, status_error};
use crate::output::{self, Format};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Print a short-lived link that opens one tenant's portal (to hand out or embed in an
    /// iframe). Needs the control plane's --http-listen.
    Link {
        /// The tenant whose portal it opens.
        #[arg(long)]
        tenant: String,
        /// How long the link works (1m to 7d).
        #[arg(long, default_value = "1h", value_parser = herald_core::duration::parse)]
        ttl: Duration,
        /// The portal shows and changes nothing (no secrets, no forms).
        #[arg(long)]
        read_only: bool,
    },
    /// End every link into one tenant's portal made until now, on every replica (for a link
    /// that leaked, or a user who left). Links made afterwards work.
    ExpireLinks {
        /// The tenant whose links end.
        #[arg(long)]
        tenant: String,
    },
}

pub async fn run(cmd: Command, server: &Server, format: Format) -> anyhow::Result<()> {
    let mut client = PortalClient::new(server.channel().await?);
    match cmd {
        Command::Link {
            tenant,
            ttl,
            read_only,
        } => {
            let link = client
                .create_portal_link(pb::CreatePortalLinkRequest {
                    tenant,
                    ttl: Some(duration(ttl)),
                    read_only,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            if format.style == output::Style::Table {
                // The link alone, so `$(herald portal link …)` is the URL.
                output::write(&format!("{}\n", link.url))?;
            } else {
                output::object(
                    format,
                    &json!({
                        "url": link.url,
                        "tenant": link.tenant,
                        "read_only": link.read_only,
                        "expires_at": output::time(link.expires_at.as_ref()),
                    }),
                )?;
            }
        }
        Command::ExpireLinks { tenant } => {
            let expired = client
                .expire_portal_links(pb::ExpirePortalLinksRequest { tenant })
                .await
                .map_err(status_error)?
                .into_inner();
            let before = output::time(expired.before.as_ref());
            if format.style == output::Style::Table {
                output::write(&format!(
                    "{}'s portal links made until {before} no longer open\n",
                    expired.tenant
                ))?;
            } else {
                output::object(
                    format,
                    &json!({ "tenant": expired.tenant, "expired_before": before }),
                )?;
            }
        }
    }
    Ok(())
}
