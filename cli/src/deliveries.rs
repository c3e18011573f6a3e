//! `herald deliveries …`: the central log of delivery attempts.

use std::time::SystemTime;

use anyhow::Context;
use herald_proto::convert::timestamp;
use herald_proto::v1 as pb;
use herald_proto::v1::deliveries_client::DeliveriesClient;

use crate::connect::{channel, status_error};
use crate::output::{self, Format};

#[derive(clap::Subcommand)]
pub enum Command {
    /// List attempts, newest first.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// Attempts per page (at most 1000).
        #[arg(long, default_value_t = 50)]
        page_size: u32,
        /// Continue from a previous page.
        #[arg(long, default_value = "")]
        page_token: String,
    },
}

/// Which attempts.
#[derive(clap::Args)]
pub struct FilterArgs {
    /// Only this subscription's.
    #[arg(long)]
    subscription: Option<String>,
    /// Only this tenant's.
    #[arg(long)]
    tenant: Option<String>,
    /// Only this event's.
    #[arg(long)]
    event: Option<String>,
    /// Only this outcome: delivered, retrying, failed, skipped.
    #[arg(long)]
    outcome: Option<String>,
    /// Only attempts this recent (e.g. 1h) or since a time (RFC 3339).
    #[arg(long)]
    since: Option<String>,
    /// Only attempts before this age (e.g. 10m) or time (RFC 3339).
    #[arg(long)]
    until: Option<String>,
}

/// `1h` (that long ago) or an RFC 3339 time.
fn when(text: &str) -> anyhow::Result<SystemTime> {
    if let Ok(ago) = humantime::parse_duration(text) {
        return Ok(SystemTime::now()
            .checked_sub(ago)
            .unwrap_or(SystemTime::UNIX_EPOCH));
    }
    humantime::parse_rfc3339_weak(text).with_context(|| {
        format!("{text:?} is neither a duration (1h) nor a time (2026-01-02T15:04:05Z)")
    })
}

impl FilterArgs {
    fn into_wire(self) -> anyhow::Result<pb::AttemptFilter> {
        let outcome = match self.outcome.as_deref() {
            None => pb::Outcome::Unspecified,
            Some("delivered") => pb::Outcome::Delivered,
            Some("retrying") => pb::Outcome::Retrying,
            Some("failed") => pb::Outcome::Failed,
            Some("skipped") => pb::Outcome::Skipped,
            Some(other) => anyhow::bail!(
                "--outcome {other:?}: expected delivered, retrying, failed or skipped"
            ),
        };
        Ok(pb::AttemptFilter {
            subscription_id: self.subscription.unwrap_or_default(),
            tenant: self.tenant.unwrap_or_default(),
            event_id: self.event.unwrap_or_default(),
            outcome: outcome as i32,
            since: self.since.as_deref().map(when).transpose()?.map(timestamp),
            until: self.until.as_deref().map(when).transpose()?.map(timestamp),
        })
    }
}

pub async fn run(cmd: Command, url: &str, format: Format) -> anyhow::Result<()> {
    let mut client = DeliveriesClient::new(channel(url).await?);
    match cmd {
        Command::List {
            filter,
            page_size,
            page_token,
        } => {
            let page = client
                .list_attempts(pb::ListAttemptsRequest {
                    filter: Some(filter.into_wire()?),
                    page_size,
                    page_token,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            let items: Vec<_> = page.attempts.iter().map(output::attempt).collect();
            output::list(
                format,
                "attempts",
                &items,
                &[
                    "started_at",
                    "event_id",
                    "subscription_id",
                    "attempt",
                    "result",
                    "duration_ms",
                    "outcome",
                    "error",
                ],
                &page.next_page_token,
            );
        }
    }
    Ok(())
}
