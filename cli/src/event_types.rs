//! `herald event-types …`: the catalogue of event types subscribers choose from.

use anyhow::Context as _;
use herald_proto::v1 as pb;
use herald_proto::v1::event_types_client::EventTypesClient;
use serde_json::{Value, json};

use crate::connect::{Server, status_error};
use crate::output::{self, Format};

/// The largest example file read.
const MAX_EXAMPLE_FILE: u64 = 64 * 1024;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Register an event type (e.g. order.created).
    Create {
        /// The type's name, `<group>.<action>`.
        name: String,
        /// What it means, for the people choosing it.
        #[arg(long, default_value = "")]
        description: String,
        /// An example payload: JSON, or @path to read it from a file.
        #[arg(long)]
        example: Option<String>,
    },
    /// Show one event type with its example.
    Get {
        /// The type's name.
        name: String,
    },
    /// List the registered event types, and Herald's built-in operator events (herald.*).
    List,
}

fn event_type(t: &pb::EventType) -> Value {
    let example = serde_json::from_slice::<Value>(&t.example).unwrap_or(Value::Null);
    json!({
        "name": t.name,
        "description": t.description,
        "example": example,
        "built_in": t.built_in,
        "created_at": output::time(t.created_at.as_ref()),
    })
}

pub async fn run(cmd: Command, server: &Server, format: Format) -> anyhow::Result<()> {
    let mut client = EventTypesClient::new(server.channel().await?);
    match cmd {
        Command::Create {
            name,
            description,
            example,
        } => {
            let example = match example.as_deref() {
                None => Vec::new(),
                Some(text) => match text.strip_prefix('@') {
                    Some(path) => {
                        let len = std::fs::metadata(path)
                            .with_context(|| format!("reading {path}"))?
                            .len();
                        if len > MAX_EXAMPLE_FILE {
                            anyhow::bail!("{path} is {len} bytes; the limit is {MAX_EXAMPLE_FILE}");
                        }
                        std::fs::read(path).with_context(|| format!("reading {path}"))?
                    }
                    None => text.as_bytes().to_vec(),
                },
            };
            let created = client
                .create_event_type(pb::CreateEventTypeRequest {
                    event_type: Some(pb::EventType {
                        name,
                        description,
                        example,
                        created_at: None,
                        built_in: false,
                    }),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            output::object(format, &event_type(&created))?;
        }
        Command::Get { name } => {
            let found = client
                .get_event_type(pb::GetEventTypeRequest { name })
                .await
                .map_err(status_error)?
                .into_inner();
            output::object(format, &event_type(&found))?;
        }
        Command::List => {
            let types = client
                .list_event_types(pb::ListEventTypesRequest {})
                .await
                .map_err(status_error)?
                .into_inner()
                .event_types;
            let items: Vec<Value> = types.iter().map(event_type).collect();
            output::list(
                format,
                "event_types",
                &items,
                &["name", "built_in", "description"],
                "",
            )?;
        }
    }
    Ok(())
}
