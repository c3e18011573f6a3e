//! `herald event-types …`: the catalogue of event types subscribers choose from, with a
//! description, an example and a JSON Schema each.

use herald_proto::v1 as pb;
use herald_proto::v1::event_types_client::EventTypesClient;
use serde_json::{Value, json};

use crate::connect::{Server, status_error};
use crate::output::{self, Format};

/// The largest example or schema file read.
const MAX_DOCUMENT_FILE: u64 = 64 * 1024;
/// The largest catalogue file `import` reads.
const MAX_IMPORT_BYTES: u64 = 4 * 1024 * 1024;
/// The most types one import takes.
const MAX_IMPORT_TYPES: usize = 1000;

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
        /// A JSON Schema (draft 2020-12) for its payloads: JSON, or @path. The example and
        /// test-sends' payloads are checked against it, and agents refuse emitted payloads
        /// that fail it.
        #[arg(long)]
        schema: Option<String>,
    },
    /// Change a type's description, example or schema (what is not given stays).
    Update {
        /// The type's name.
        name: String,
        /// What it means.
        #[arg(long)]
        description: Option<String>,
        /// An example payload: JSON, or @path.
        #[arg(long)]
        example: Option<String>,
        /// A JSON Schema (draft 2020-12): JSON, or @path. Agents refuse emitted payloads
        /// that fail it.
        #[arg(long, conflicts_with = "no_schema")]
        schema: Option<String>,
        /// Remove the schema.
        #[arg(long)]
        no_schema: bool,
    },
    /// Mark a type deprecated: still delivered, flagged for the people choosing types.
    Deprecate {
        /// The type's name.
        name: String,
        /// Take the deprecation back.
        #[arg(long)]
        undo: bool,
    },
    /// Remove a type from the catalogue (subscriptions that name it keep it).
    Delete {
        /// The type's name.
        name: String,
    },
    /// Create or update the types of a catalogue file: YAML or JSON, `event_types:` a list of
    /// `name`, `description`, `example`, `schema` (and `deprecated`). Shows progress; goes on
    /// past a refused type and exits 1 if any was refused.
    Import {
        /// The file (`-` for standard input).
        file: String,
    },
    /// Show one event type with its example and schema.
    Get {
        /// The type's name.
        name: String,
    },
    /// List the registered event types, and Herald's built-in operator events (herald.*).
    List,
}

fn event_type(t: &pb::EventType) -> Value {
    let document = |bytes: &[u8]| serde_json::from_slice::<Value>(bytes).unwrap_or(Value::Null);
    json!({
        "name": t.name,
        "description": t.description,
        "example": document(&t.example),
        "schema": document(&t.schema),
        "deprecated": t.deprecated,
        "built_in": t.built_in,
        "created_at": output::time(t.created_at.as_ref()),
        "updated_at": output::time(t.updated_at.as_ref()),
    })
}

/// A JSON document given inline or as @path.
fn document(text: &str) -> anyhow::Result<Vec<u8>> {
    match text.strip_prefix('@') {
        Some(path) => crate::input::read_bytes(path, MAX_DOCUMENT_FILE),
        None => Ok(text.as_bytes().to_vec()),
    }
}

pub async fn run(cmd: Command, server: &Server, format: Format) -> anyhow::Result<()> {
    let mut client = EventTypesClient::new(server.channel().await?);
    match cmd {
        Command::Create {
            name,
            description,
            example,
            schema,
        } => {
            let created = client
                .create_event_type(pb::CreateEventTypeRequest {
                    event_type: Some(pb::EventType {
                        name,
                        description,
                        example: example
                            .as_deref()
                            .map(document)
                            .transpose()?
                            .unwrap_or_default(),
                        schema: schema
                            .as_deref()
                            .map(document)
                            .transpose()?
                            .unwrap_or_default(),
                        ..Default::default()
                    }),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            output::object(format, &event_type(&created))?;
        }
        Command::Update {
            name,
            description,
            example,
            schema,
            no_schema,
        } => {
            let mut current = client
                .get_event_type(pb::GetEventTypeRequest { name })
                .await
                .map_err(status_error)?
                .into_inner();
            if let Some(description) = description {
                current.description = description;
            }
            if let Some(example) = example {
                current.example = document(&example)?;
            }
            if let Some(schema) = schema {
                current.schema = document(&schema)?;
            }
            if no_schema {
                current.schema.clear();
            }
            let updated = client
                .update_event_type(pb::UpdateEventTypeRequest {
                    event_type: Some(current),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            output::object(format, &event_type(&updated))?;
        }
        Command::Deprecate { name, undo } => {
            let changed = client
                .deprecate_event_type(pb::DeprecateEventTypeRequest {
                    name,
                    deprecated: !undo,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            output::object(format, &event_type(&changed))?;
        }
        Command::Delete { name } => {
            client
                .delete_event_type(pb::DeleteEventTypeRequest { name: name.clone() })
                .await
                .map_err(status_error)?;
            output::object(format, &serde_json::json!({ "deleted": name }))?;
        }
        Command::Import { file } => import(&mut client, &file, format).await?,
        Command::Get { name } => {
            let found = client
                .get_event_type(pb::GetEventTypeRequest { name })
                .await
                .map_err(status_error)?
                .into_inner();
            output::object(format, &event_type(&found))?;
        }
        Command::List => {
            // The whole catalogue, a page (of about 2 MiB at most) at a time.
            let mut types = Vec::new();
            let mut page_token = String::new();
            loop {
                let page = client
                    .list_event_types(pb::ListEventTypesRequest {
                        page_size: 0,
                        page_token,
                    })
                    .await
                    .map_err(status_error)?
                    .into_inner();
                types.extend(page.event_types);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            let items: Vec<Value> = types.iter().map(event_type).collect();
            output::list(
                format,
                "event_types",
                &items,
                &["name", "built_in", "deprecated", "description"],
                "",
            )?;
        }
    }
    Ok(())
}

/// One type of a catalogue file.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogueEntry {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    example: Option<Value>,
    #[serde(default)]
    schema: Option<Value>,
    #[serde(default)]
    deprecated: bool,
}

/// A catalogue file.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Catalogue {
    event_types: Vec<CatalogueEntry>,
}

impl CatalogueEntry {
    fn into_wire(self) -> (pb::EventType, bool) {
        let bytes = |value: Option<Value>| {
            value
                .filter(|v| !v.is_null())
                .map(|v| v.to_string().into_bytes())
                .unwrap_or_default()
        };
        let wire = pb::EventType {
            name: self.name,
            description: self.description,
            example: bytes(self.example),
            schema: bytes(self.schema),
            ..Default::default()
        };
        (wire, self.deprecated)
    }
}

/// Creates each type of the file, or updates it when it exists.
async fn import(
    client: &mut EventTypesClient<herald_proto::bearer::AuthedChannel>,
    file: &str,
    format: Format,
) -> anyhow::Result<()> {
    let text = crate::input::read_text(file, MAX_IMPORT_BYTES)?;
    let catalogue: Catalogue = crate::input::parse_yaml(
        file,
        &text,
        "a catalogue (event_types: a list of name, description, example, schema)",
    )?;
    let total = catalogue.event_types.len();
    if total > MAX_IMPORT_TYPES {
        anyhow::bail!("{file} has {total} types; one import takes at most {MAX_IMPORT_TYPES}");
    }
    let mut results = Vec::with_capacity(total);
    let mut refused = 0;
    for (index, entry) in catalogue.event_types.into_iter().enumerate() {
        let number = index + 1;
        let (wire, deprecated) = entry.into_wire();
        let name = wire.name.clone();
        let outcome = async {
            let done = match client
                .create_event_type(pb::CreateEventTypeRequest {
                    event_type: Some(wire.clone()),
                })
                .await
            {
                Ok(_) => "created",
                Err(status) if status.code() == tonic::Code::AlreadyExists => {
                    client
                        .update_event_type(pb::UpdateEventTypeRequest {
                            event_type: Some(wire),
                        })
                        .await
                        .map_err(status_error)?;
                    "updated"
                }
                Err(status) => return Err(status_error(status)),
            };
            let changed = client
                .get_event_type(pb::GetEventTypeRequest { name: name.clone() })
                .await
                .map_err(status_error)?
                .into_inner();
            if changed.deprecated != deprecated {
                client
                    .deprecate_event_type(pb::DeprecateEventTypeRequest {
                        name: name.clone(),
                        deprecated,
                    })
                    .await
                    .map_err(status_error)?;
            }
            anyhow::Ok(done)
        }
        .await;
        match outcome {
            Ok(done) => {
                output::note(&format!("[{number}/{total}] {done} {name}"));
                results.push(json!({"entry": number, "name": name, "done": done, "error": ""}));
            }
            Err(err) => {
                refused += 1;
                output::note(&format!("[{number}/{total}] {name} refused: {err:#}"));
                results.push(
                    json!({"entry": number, "name": name, "done": "", "error": format!("{err:#}")}),
                );
            }
        }
    }
    output::list(
        format,
        "results",
        &results,
        &["entry", "name", "done", "error"],
        "",
    )?;
    output::note(&format!("{} imported, {refused} refused", total - refused));
    if refused > 0 {
        anyhow::bail!(
            "{refused} of {total} types were refused (see above); the others were imported"
        );
    }
    Ok(())
}
