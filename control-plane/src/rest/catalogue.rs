//! `/api/v1/event-types`: the catalogue of event types subscribers choose from.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use herald_proto::v1 as pb;
use herald_proto::v1::event_types_server::EventTypes as _;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::json::time;
use super::problem::{ApiError, Problem};
use super::{ApiJson, ApiPath, ApiQuery, ApiState, Authorized};

/// An event type.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventType {
    /// `<group>.<action>`, e.g. `order.created`.
    pub name: String,
    /// What it means, for the people choosing it.
    pub description: String,
    /// An example payload (any JSON); null when it has none.
    pub example: Option<serde_json::Value>,
    /// The JSON Schema (draft 2020-12) its payloads must satisfy; null: any JSON.
    #[schema(value_type = Option<Object>)]
    pub schema: Option<serde_json::Value>,
    /// Still delivered, flagged for the people choosing types.
    pub deprecated: bool,
    /// When it was registered.
    pub created_at: Option<String>,
    /// When it last changed.
    pub updated_at: Option<String>,
    /// Defined by Herald itself (`herald.*`), not stored in the catalogue.
    pub built_in: bool,
}

impl From<pb::EventType> for EventType {
    fn from(t: pb::EventType) -> Self {
        EventType {
            // Stored examples are JSON documents (checked when registered).
            example: serde_json::from_slice(&t.example).ok(),
            schema: serde_json::from_slice(&t.schema).ok(),
            deprecated: t.deprecated,
            created_at: time(t.created_at.as_ref()),
            updated_at: time(t.updated_at.as_ref()),
            name: t.name,
            description: t.description,
            built_in: t.built_in,
        }
    }
}

/// A page of the catalogue.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventTypeList {
    /// Types by name, Herald's own among them.
    pub event_types: Vec<EventType>,
    /// Where the next page starts; empty on the last page.
    pub next_page_token: String,
}

/// Paging of the catalogue.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CatalogueQuery {
    /// How many to answer at most: 0 or none means as many as fit in a page of about 2 MiB;
    /// more than 1000 means 1000.
    page_size: Option<u32>,
    /// Where the previous page ended.
    page_token: Option<String>,
}

/// A type to register.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEventType {
    /// `<group>.<action>`, e.g. `order.created`.
    name: String,
    /// What it means.
    #[serde(default)]
    description: String,
    /// An example payload (any JSON; it must satisfy the schema).
    #[serde(default)]
    example: Option<serde_json::Value>,
    /// A JSON Schema (draft 2020-12) its payloads must satisfy.
    #[serde(default)]
    #[schema(value_type = Object)]
    schema: Option<serde_json::Value>,
}

/// A type's new contents (what is left out is cleared).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EditedEventType {
    /// What it means.
    #[serde(default)]
    description: String,
    /// An example payload (any JSON).
    #[serde(default)]
    example: Option<serde_json::Value>,
    /// A JSON Schema (draft 2020-12).
    #[serde(default)]
    #[schema(value_type = Object)]
    schema: Option<serde_json::Value>,
}

/// Whether a type is deprecated.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Deprecation {
    /// True to deprecate (the default), false to take it back.
    #[serde(default = "yes")]
    deprecated: bool,
}

impl Default for Deprecation {
    fn default() -> Self {
        Deprecation { deprecated: true }
    }
}

fn yes() -> bool {
    true
}

/// A JSON value as the bytes the API stores (none: empty).
fn json_bytes(value: Option<&serde_json::Value>) -> Vec<u8> {
    value
        .filter(|v| !v.is_null())
        .map(|v| v.to_string().into_bytes())
        .unwrap_or_default()
}

/// Lists the catalogue, a page at a time.
#[utoipa::path(
    get,
    path = "/api/v1/event-types",
    operation_id = "ListEventTypes",
    tag = "Event types",
    params(CatalogueQuery),
    responses(
        (status = 200, body = EventTypeList),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn list_event_types(
    State(state): State<ApiState>,
    caller: Authorized,
    ApiQuery(query): ApiQuery<CatalogueQuery>,
) -> Result<Json<EventTypeList>, ApiError> {
    let list = state
        .services
        .event_types
        .list_event_types(caller.request(pb::ListEventTypesRequest {
            page_size: query.page_size.unwrap_or_default(),
            page_token: query.page_token.unwrap_or_default(),
        }))
        .await?
        .into_inner();
    Ok(Json(EventTypeList {
        event_types: list.event_types.into_iter().map(Into::into).collect(),
        next_page_token: list.next_page_token,
    }))
}

/// One event type.
#[utoipa::path(
    get,
    path = "/api/v1/event-types/{name}",
    operation_id = "GetEventType",
    tag = "Event types",
    params(("name" = String, Path, description = "The type's name, e.g. order.created")),
    responses(
        (status = 200, body = EventType),
        (status = 404, body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn get_event_type(
    State(state): State<ApiState>,
    caller: Authorized,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<EventType>, ApiError> {
    let found = state
        .services
        .event_types
        .get_event_type(caller.request(pb::GetEventTypeRequest { name }))
        .await?
        .into_inner();
    Ok(Json(found.into()))
}

/// Registers an event type (a token of every tenant: the catalogue is shared).
#[utoipa::path(
    post,
    path = "/api/v1/event-types",
    operation_id = "CreateEventType",
    tag = "Event types",
    request_body = NewEventType,
    responses(
        (status = 201, body = EventType, headers(("location" = String))),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn create_event_type(
    State(state): State<ApiState>,
    caller: Authorized,
    ApiJson(body): ApiJson<NewEventType>,
) -> Result<impl IntoResponse, ApiError> {
    let request = caller.request(pb::CreateEventTypeRequest {
        event_type: Some(pb::EventType {
            name: body.name,
            description: body.description,
            example: json_bytes(body.example.as_ref()),
            schema: json_bytes(body.schema.as_ref()),
            ..Default::default()
        }),
    });
    let created = state
        .services
        .event_types
        .create_event_type(request)
        .await?
        .into_inner();
    let location = format!("/api/v1/event-types/{}", created.name);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(EventType::from(created)),
    ))
}

/// Replaces a type's description, example and schema.
#[utoipa::path(
    put,
    path = "/api/v1/event-types/{name}",
    operation_id = "UpdateEventType",
    tag = "Event types",
    params(("name" = String, Path, description = "The type's name, e.g. order.created")),
    request_body = EditedEventType,
    responses(
        (status = 200, body = EventType),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn update_event_type(
    State(state): State<ApiState>,
    caller: Authorized,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<EditedEventType>,
) -> Result<Json<EventType>, ApiError> {
    let request = caller.request(pb::UpdateEventTypeRequest {
        event_type: Some(pb::EventType {
            name,
            description: body.description,
            example: json_bytes(body.example.as_ref()),
            schema: json_bytes(body.schema.as_ref()),
            ..Default::default()
        }),
    });
    let updated = state
        .services
        .event_types
        .update_event_type(request)
        .await?
        .into_inner();
    Ok(Json(updated.into()))
}

/// Deprecates a type (`{"deprecated": false}` takes it back).
#[utoipa::path(
    post,
    path = "/api/v1/event-types/{name}/deprecate",
    operation_id = "DeprecateEventType",
    tag = "Event types",
    params(("name" = String, Path, description = "The type's name, e.g. order.created")),
    request_body(content = Option<Deprecation>),
    responses(
        (status = 200, body = EventType),
        (status = 404, body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn deprecate_event_type(
    State(state): State<ApiState>,
    caller: Authorized,
    ApiPath(name): ApiPath<String>,
    super::ActionBody(body): super::ActionBody<Deprecation>,
) -> Result<Json<EventType>, ApiError> {
    let request = caller.request(pb::DeprecateEventTypeRequest {
        name,
        deprecated: body.deprecated,
    });
    let changed = state
        .services
        .event_types
        .deprecate_event_type(request)
        .await?
        .into_inner();
    Ok(Json(changed.into()))
}

/// Removes a type from the catalogue.
#[utoipa::path(
    delete,
    path = "/api/v1/event-types/{name}",
    operation_id = "DeleteEventType",
    tag = "Event types",
    params(("name" = String, Path, description = "The type's name, e.g. order.created")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn delete_event_type(
    State(state): State<ApiState>,
    caller: Authorized,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    state
        .services
        .event_types
        .delete_event_type(caller.request(pb::DeleteEventTypeRequest { name }))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
