//! The console's event-type catalogue: the types subscribers choose from, and registering
//! new ones.

use askama::Template;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use herald_proto::v1 as pb;
use herald_proto::v1::event_types_server::EventTypes as _;
use serde::Deserialize;

use super::{Chrome, after_change};
use crate::web::WebState;
use crate::web::form::refusal;
use crate::web::page::{PageError, render_with};
use crate::web::session::{Console, ConsoleChange};
use crate::web::views::pretty_json;

pub fn routes() -> Router<WebState> {
    Router::new().route("/event-types", get(list).post(create))
}

struct TypeRow {
    name: String,
    description: String,
    example: String,
    /// The JSON Schema, pretty-printed; empty when none.
    schema: String,
    built_in: bool,
    deprecated: bool,
}

#[derive(Template)]
#[template(path = "console/event_types.html")]
struct CataloguePage {
    chrome: Chrome,
    types: Vec<TypeRow>,
    error: String,
    note: String,
    name: String,
    description: String,
    example: String,
}

#[derive(Deserialize)]
struct CatalogueQuery {
    #[serde(default)]
    done: String,
}

async fn page(
    state: &WebState,
    console: &Console,
    status: StatusCode,
    note: &str,
    error: String,
    (name, description, example): (String, String, String),
) -> Result<Response, PageError> {
    let types = state.services.event_types.catalogue().await?;
    Ok(render_with(
        status,
        &CataloguePage {
            chrome: Chrome::new(console, "event-types"),
            types: types
                .into_iter()
                .map(|t| TypeRow {
                    example: String::from_utf8_lossy(&t.example).into_owned(),
                    schema: pretty_json(&t.schema),
                    deprecated: t.deprecated,
                    name: t.name,
                    description: t.description,
                    built_in: t.built_in,
                })
                .collect(),
            error,
            note: note.to_owned(),
            name,
            description,
            example,
        },
    ))
}

async fn list(
    State(state): State<WebState>,
    console: Console,
    Query(query): Query<CatalogueQuery>,
) -> Result<Response, PageError> {
    let note = if query.done == "created" {
        "Event type registered."
    } else {
        ""
    };
    page(
        &state,
        &console,
        StatusCode::OK,
        note,
        String::new(),
        Default::default(),
    )
    .await
}

async fn create(
    State(state): State<WebState>,
    ConsoleChange { console, form }: ConsoleChange,
) -> Result<Response, PageError> {
    let fields = (
        form.text("name"),
        form.text("description"),
        form.text("example"),
    );
    let request = console.caller.request(pb::CreateEventTypeRequest {
        event_type: Some(pb::EventType {
            name: fields.0.clone(),
            description: fields.1.clone(),
            example: fields.2.clone().into_bytes(),
            ..Default::default()
        }),
    });
    match state.services.event_types.create_event_type(request).await {
        Ok(_) => Ok(after_change("/event-types", "created")),
        Err(status)
            if matches!(
                status.code(),
                tonic::Code::InvalidArgument | tonic::Code::AlreadyExists
            ) =>
        {
            let error = refusal(&status);
            page(&state, &console, StatusCode::BAD_REQUEST, "", error, fields).await
        }
        Err(status) => Err(status.into()),
    }
}
