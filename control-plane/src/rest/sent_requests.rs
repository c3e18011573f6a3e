//! `/api/v1/events/{event_id}/requests`: the requests as sent of one event's deliveries, as
//! the log keeps them (`GetSentRequests`), and their removal (`ExpungeSentRequests`).

use axum::Json;
use axum::extract::State;
use base64::Engine as _;
use herald_proto::v1 as pb;
use herald_proto::v1::deliveries_server::Deliveries as _;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::json::time;
use super::problem::{ApiError, Problem};
use super::{ApiPath, ApiQuery, ApiState, Authorized};

/// One request header as sent.
#[derive(Debug, Serialize, ToSchema)]
pub struct Header {
    /// In lower case.
    pub name: String,
    /// The value, or `(masked)` for the signature, an authorization and the subscription's
    /// own headers.
    pub value: String,
}

/// A delivery's request as the receiver got it.
#[derive(Debug, Serialize, ToSchema)]
pub struct SentRequest {
    /// The event (its `webhook-id`).
    pub event_id: String,
    /// The subscription it went to.
    pub subscription_id: String,
    /// The event's tenant.
    pub tenant: String,
    /// The attempt that sent it (the first whose body was this one).
    pub attempt: u32,
    /// When that attempt started.
    pub sent_at: Option<String>,
    /// `POST`.
    pub method: String,
    /// Where it went.
    pub url: String,
    /// In the order sent.
    pub headers: Vec<Header>,
    /// The body as text, when it is UTF-8.
    pub body: Option<String>,
    /// The body in base64, when it is not UTF-8 (a body cut by the log's limit may end inside
    /// a character).
    pub body_base64: Option<String>,
    /// The whole body's size in bytes.
    pub body_size: u64,
    /// The log keeps only the first `--log-body-limit` bytes of this body.
    pub body_cut: bool,
}

impl From<pb::SentRequest> for SentRequest {
    fn from(r: pb::SentRequest) -> Self {
        let body_cut = herald_proto::sent_request::is_cut(&r);
        let (body, body_base64) = match String::from_utf8(r.body) {
            Ok(text) => (Some(text), None),
            Err(err) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(err.as_bytes())),
            ),
        };
        SentRequest {
            sent_at: time(r.sent_at.as_ref()),
            event_id: r.event_id,
            subscription_id: r.subscription_id,
            tenant: r.tenant,
            attempt: r.attempt,
            method: r.method,
            url: r.url,
            headers: r
                .headers
                .into_iter()
                .map(|h| Header {
                    name: h.name,
                    value: h.value,
                })
                .collect(),
            body,
            body_base64,
            body_size: r.body_size,
            body_cut,
        }
    }
}

/// One event's requests, by subscription, a page at a time.
#[derive(Debug, Serialize, ToSchema)]
pub struct SentRequests {
    /// One per subscription, ordered by subscription id; a page holds about 2 MiB of bodies.
    pub requests: Vec<SentRequest>,
    /// Where the next page starts; empty on the last.
    pub next_page_token: String,
}

/// Which of an event's requests.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SentQuery {
    /// Only the request sent to this subscription.
    subscription_id: Option<String>,
    /// Only this tenant's event (event ids are unique per tenant).
    tenant: Option<String>,
    /// Where the previous page ended.
    page_token: Option<String>,
}

/// What an expunge removed.
#[derive(Debug, Serialize, ToSchema)]
pub struct Expunged {
    /// How many stored requests went (0 when none was stored).
    pub removed: u32,
}

/// The requests one event's deliveries sent (headers, with credentials masked, and bodies),
/// as far as the log keeps them (`--log-body-limit`).
#[utoipa::path(
    get,
    path = "/api/v1/events/{event_id}/requests",
    operation_id = "GetSentRequests",
    tag = "Deliveries",
    params(("event_id" = String, Path, description = "The event's id"), SentQuery),
    responses(
        (status = 200, body = SentRequests),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn get_sent_requests(
    State(state): State<ApiState>,
    caller: Authorized,
    ApiPath(event_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<SentQuery>,
) -> Result<Json<SentRequests>, ApiError> {
    let request = caller.request(pb::GetSentRequestsRequest {
        event_id,
        subscription_id: query.subscription_id.unwrap_or_default(),
        tenant: query.tenant.unwrap_or_default(),
        page_token: query.page_token.unwrap_or_default(),
    });
    let answer = state
        .services
        .deliveries
        .get_sent_requests(request)
        .await?
        .into_inner();
    Ok(Json(SentRequests {
        requests: answer.requests.into_iter().map(Into::into).collect(),
        next_page_token: answer.next_page_token,
    }))
}

/// Which event's requests to remove.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExpungeQuery {
    /// Only this tenant's event.
    tenant: Option<String>,
}

/// Removes the stored requests of one event's deliveries (for personal data); the attempts
/// stay. Recorded in the audit log.
#[utoipa::path(
    delete,
    path = "/api/v1/events/{event_id}/requests",
    operation_id = "ExpungeSentRequests",
    tag = "Deliveries",
    params(("event_id" = String, Path, description = "The event's id"), ExpungeQuery),
    responses(
        (status = 200, body = Expunged),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn expunge_sent_requests(
    State(state): State<ApiState>,
    caller: Authorized,
    ApiPath(event_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<ExpungeQuery>,
) -> Result<Json<Expunged>, ApiError> {
    let request = caller.request(pb::ExpungeSentRequestsRequest {
        event_id,
        tenant: query.tenant.unwrap_or_default(),
    });
    let answer = state
        .services
        .deliveries
        .expunge_sent_requests(request)
        .await?
        .into_inner();
    Ok(Json(Expunged {
        removed: answer.removed,
    }))
}
