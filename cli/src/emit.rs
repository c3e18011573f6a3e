//! `herald emit`: sends one event through an agent, as an application would.

use herald_proto::v1 as pb;
use herald_proto::v1::events_client::EventsClient;
use serde_json::json;

use crate::connect::{Server, status_error};
use crate::output::{self, Format};

/// The largest `@file` payload read (the agent enforces its own, possibly lower, limit).
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

#[derive(clap::Args)]
pub struct Args {
    /// The tenant the event belongs to.
    #[arg(long)]
    tenant: String,
    /// The event type, e.g. order.created.
    #[arg(long = "type")]
    event_type: String,
    /// The JSON payload, or @path to read it from a file (@- for standard input).
    #[arg(long)]
    data: String,
    /// An idempotency key (default: assigned by the agent).
    #[arg(long, default_value = "")]
    id: String,
    /// Deliver in order with other events of this key.
    #[arg(long, default_value = "")]
    ordering_key: String,
}

pub async fn run(args: Args, agent: &Server, format: Format) -> anyhow::Result<()> {
    let given = match args.data.strip_prefix('@') {
        Some(file) => format!("--data @{file}"),
        None => "--data".to_owned(),
    };
    let payload = match args.data.strip_prefix('@') {
        Some(file) => crate::input::read_bytes(file, MAX_FILE_BYTES)?,
        None => args.data.into_bytes(),
    };
    // Checked here as `subscription test --data` is: a payload that is not JSON is the
    // command line's mistake (exit 2), not the agent's refusal.
    herald_core::validate::json_payload(&payload, MAX_FILE_BYTES as usize)
        .map_err(|err| crate::usage::usage(format!("{given}: {}", err.reason)))?;
    let mut client = EventsClient::new(agent.channel().await?);
    let response = client
        .emit(pb::EmitRequest {
            event: Some(pb::Event {
                id: args.id,
                tenant: args.tenant,
                r#type: args.event_type,
                payload,
                ordering_key: args.ordering_key,
                ..Default::default()
            }),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    output::object(
        format,
        &json!({
            "event_id": response.event_id,
            "matched": response.matched,
            "duplicate": response.duplicate,
        }),
    )?;
    Ok(())
}
