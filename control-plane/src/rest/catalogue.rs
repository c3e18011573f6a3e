//! `/api/v1/event-types`: the catalogue of event types subscribers choose from.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use herald_proto::v1 as pb;
use herald_proto::v1::event_types_server::EventTypes as _;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::json::time;
use super::problem::{ApiError, Problem};
use super::{ApiJson, ApiState, Authorized};

/// An event type.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventType {
    /// `<group>.<action>`, e.g. `order.created`.
    pub name: String,
    /// What it means, for the people choosing it.
    pub description: String,
    /// An example payload.
    #[schema(value_type = Object)]
    pub example: Option<serde_json::Value>,
    /// When it was registered.
    pub created_at: Option<String>,
    /// Defined by Herald itself (`herald.*`), not stored in the catalogue.
    pub built_in: bool,
}

impl From<pb::EventType> for EventType {
    fn from(t: pb::EventType) -> Self {
        EventType {
            // Stored examples are JSON documents (checked when registered).
            example: serde_json::from_slice(&t.example).ok(),
            created_at: time(t.created_at.as_ref()),
            name: t.name,
            description: t.description,
            built_in: t.built_in,
        }
    }
}

/// The catalogue.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventTypeList {
    /// Every type, Herald's own included.
    pub event_types: Vec<EventType>,
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
    /// An example payload (any JSON).
    #[serde(default)]
    #[schema(value_type = Object)]
    example: Option<serde_json::Value>,
}

/// Lists the catalogue.
#[utoipa::path(
    get,
    path = "/api/v1/event-types",
    operation_id = "ListEventTypes",
    tag = "Event types",
    responses(
        (status = 200, body = EventTypeList),
        (status = 401, body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn list_event_types(
    State(state): State<ApiState>,
    caller: Authorized,
) -> Result<Json<EventTypeList>, ApiError> {
    let list = state
        .services
        .event_types
        .list_event_types(caller.request(pb::ListEventTypesRequest {}))
        .await?
        .into_inner();
    Ok(Json(EventTypeList {
        event_types: list.event_types.into_iter().map(Into::into).collect(),
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
    Path(name): Path<String>,
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
    let example = match &body.example {
        None => Vec::new(),
        Some(value) => {
            serde_json::to_vec(value).map_err(|e| ApiError::invalid(format!("example: {e}")))?
        }
    };
    let request = caller.request(pb::CreateEventTypeRequest {
        event_type: Some(pb::EventType {
            name: body.name,
            description: body.description,
            example,
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
