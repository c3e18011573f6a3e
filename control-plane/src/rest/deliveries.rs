//! `/api/v1/attempts` and `/api/v1/replays`: the central delivery log (listed in pages, or
//! followed live as server-sent events) and replays of what it holds.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::{Stream, StreamExt as _};
use herald_core::validate::quoted;
use herald_proto::v1 as pb;
use herald_proto::v1::deliveries_server::Deliveries as _;
use herald_proto::words;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::json::{millis, parse_time, time};
use super::problem::{ApiError, Problem};
use super::{ApiJson, ApiQueries, ApiQuery, ApiState, Authorized};

/// One HTTP attempt to deliver one event to one subscription.
#[derive(Debug, Serialize, ToSchema)]
pub struct Attempt {
    /// The event (its `webhook-id`).
    pub event_id: String,
    /// The subscription.
    pub subscription_id: String,
    /// The event's tenant.
    pub tenant: String,
    /// The event's type.
    pub event_type: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// The agent that made it.
    pub agent_id: String,
    /// When it started.
    pub started_at: Option<String>,
    /// Send to answer, in milliseconds.
    pub duration_ms: f64,
    /// The HTTP status, or 0 when no response came.
    pub status_code: u32,
    /// Why it failed: `http_status`, `timeout`, `connect`, `tls`, `dns`, … (empty on success).
    pub error_kind: String,
    /// The error, for people.
    pub error: String,
    /// `delivered`, `retrying`, `failed` or `skipped`.
    pub outcome: &'static str,
    /// When the next attempt is due (retrying only).
    pub next_attempt_at: Option<String>,
    /// The start of the response body.
    pub response_excerpt: String,
    /// The URL it went to.
    pub url: String,
    /// A test-send (`POST /api/v1/subscriptions/{id}/test`), not a delivery of an event.
    pub test: bool,
}

impl From<pb::Attempt> for Attempt {
    fn from(a: pb::Attempt) -> Self {
        Attempt {
            started_at: time(a.started_at.as_ref()),
            duration_ms: millis(a.duration.as_ref()),
            outcome: words::outcome(a.outcome),
            next_attempt_at: time(a.next_attempt_at.as_ref()),
            event_id: a.event_id,
            subscription_id: a.subscription_id,
            tenant: a.tenant,
            event_type: a.event_type,
            attempt: a.attempt,
            agent_id: a.agent_id,
            test: a.test,
            status_code: a.status_code,
            error_kind: a.error_kind,
            error: a.error,
            response_excerpt: a.response_excerpt,
            url: a.url,
        }
    }
}

/// A page of attempts.
#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptPage {
    /// Newest first.
    pub attempts: Vec<Attempt>,
    /// Where the next page starts; empty on the last.
    pub next_page_token: String,
}

/// Which attempts (every filter optional).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AttemptQuery {
    /// Only this subscription's.
    subscription_id: Option<String>,
    /// Only this tenant's.
    tenant: Option<String>,
    /// Only this event's.
    event_id: Option<String>,
    /// Only `delivered`, `retrying`, `failed` or `skipped` ones.
    outcome: Option<String>,
    /// Attempts started at or after this time (RFC 3339).
    since: Option<String>,
    /// Attempts started before this time (RFC 3339).
    until: Option<String>,
    /// Only events of this type or pattern (`order.created`, `order.*`).
    event_type: Option<String>,
    /// Only attempts answered with this HTTP status (`503`) or class (`5xx`).
    status: Option<String>,
    /// Only attempts that failed this way: `timeout`, `connect`, `tls`, `dns`, `http_status`
    /// (or `status`), `proxy`, `proxy_auth`, `oauth2`, `request`, `render`, `policy`,
    /// `skipped`, `storage`, `internal`.
    error_kind: Option<String>,
}

impl AttemptQuery {
    fn to_wire(&self) -> Result<pb::AttemptFilter, ApiError> {
        let outcome = match self.outcome.as_deref() {
            None | Some("") => pb::Outcome::Unspecified,
            Some(word) => parse_outcome(word)?,
        };
        Ok(pb::AttemptFilter {
            subscription_id: self.subscription_id.clone().unwrap_or_default(),
            tenant: self.tenant.clone().unwrap_or_default(),
            event_id: self.event_id.clone().unwrap_or_default(),
            outcome: outcome as i32,
            since: parse_time("since", self.since.as_deref())?,
            until: parse_time("until", self.until.as_deref())?,
            event_type: self.event_type.clone().unwrap_or_default(),
            status: self.status.clone().unwrap_or_default(),
            error_kind: self.error_kind.clone().unwrap_or_default(),
        })
    }
}

fn parse_outcome(word: &str) -> Result<pb::Outcome, ApiError> {
    words::parse_outcome(word).ok_or_else(|| {
        ApiError::invalid_field(
            "outcome",
            format!(
                "{} is none of delivered, retrying, failed, skipped",
                quoted(word)
            ),
        )
    })
}

/// Paging of a list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// How many to answer at most: 0 or none means 100; more than 1000 means 1000.
    page_size: Option<u32>,
    /// Where the previous page ended.
    page_token: Option<String>,
}

/// Lists attempts from the delivery log (those of the caller's tenants), newest first.
#[utoipa::path(
    get,
    path = "/api/v1/attempts",
    operation_id = "ListAttempts",
    tag = "Deliveries",
    params(AttemptQuery, PageQuery),
    responses(
        (status = 200, body = AttemptPage),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn list_attempts(
    State(state): State<ApiState>,
    caller: Authorized,
    ApiQueries(filter, page): ApiQueries<AttemptQuery, PageQuery>,
) -> Result<Json<AttemptPage>, ApiError> {
    let request = caller.request(pb::ListAttemptsRequest {
        filter: Some(filter.to_wire()?),
        page_size: page.page_size.unwrap_or_default(),
        page_token: page.page_token.unwrap_or_default(),
    });
    let page = state
        .services
        .deliveries
        .list_attempts(request)
        .await?
        .into_inner();
    Ok(Json(AttemptPage {
        attempts: page.attempts.into_iter().map(Into::into).collect(),
        next_page_token: page.next_page_token,
    }))
}

/// How often an idle live stream sends a comment, so proxies keep it open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Follows the delivery log live: each attempt reported from now on that matches the filter,
/// as a server-sent event `attempt` whose data is the attempt's JSON. A stream the server
/// cannot go on with ends with an event `error` whose data is a problem.
#[utoipa::path(
    get,
    path = "/api/v1/attempts/live",
    operation_id = "TailAttempts",
    tag = "Deliveries",
    params(AttemptQuery),
    responses(
        (status = 200, description = "Server-sent events `attempt` (an Attempt) and `error` \
                                      (a Problem)", content_type = "text/event-stream"),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn tail_attempts(
    State(state): State<ApiState>,
    caller: Authorized,
    ApiQuery(filter): ApiQuery<AttemptQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let request = caller.request(pb::TailAttemptsRequest {
        filter: Some(filter.to_wire()?),
    });
    let attempts = state
        .services
        .deliveries
        .tail_attempts(request)
        .await?
        .into_inner();
    let events = attempts
        .map(|item| match item {
            Ok(attempt) => (
                true,
                Event::default()
                    .event("attempt")
                    .json_data(Attempt::from(attempt)),
            ),
            Err(status) => (
                false,
                Event::default()
                    .event("error")
                    .json_data(ApiError::from(status).problem()),
            ),
        })
        // The error event is the last.
        .scan(true, |going, (ok, event)| {
            let send = std::mem::replace(going, ok);
            std::future::ready(send.then_some(event))
        })
        .filter_map(|event| std::future::ready(event.ok()))
        .map(Ok);
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

/// Which deliveries to replay: one event (optionally to one subscription), or a
/// subscription's deliveries in a time range.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// The event.
    #[serde(default)]
    event_id: String,
    /// The subscription.
    #[serde(default)]
    subscription_id: String,
    /// With `subscription_id` and no `event_id`: attempts started at or after this time.
    #[serde(default)]
    since: Option<String>,
    /// Attempts started before this time; none means now.
    #[serde(default)]
    until: Option<String>,
    /// Only deliveries whose latest attempt had this outcome (e.g. `failed`).
    #[serde(default)]
    outcome: Option<String>,
}

/// What a replay queued.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReplayResult {
    /// Deliveries queued again, in all.
    pub queued: u32,
    /// Per agent, how many it queued.
    pub agents: Vec<AgentReplayCount>,
    /// Deliveries that could not be queued, with the reason.
    pub not_replayable: Vec<ReplayMiss>,
    /// Of those queued, the ones whose subscription is disabled: they wait parked, and go out
    /// when it is enabled with `replay_parked` (an enable without it skips them).
    pub parked: u32,
}

/// How many deliveries one agent queued.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentReplayCount {
    /// The agent.
    pub agent_id: String,
    /// Deliveries it queued.
    pub queued: u32,
}

/// A delivery that could not be queued again.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReplayMiss {
    /// The event.
    pub event_id: String,
    /// The subscription.
    pub subscription_id: String,
    /// The agent that held it.
    pub agent_id: String,
    /// Why not.
    pub reason: String,
}

/// Delivers events again (new attempts, the same `webhook-id`) through the agents that
/// attempted them.
#[utoipa::path(
    post,
    path = "/api/v1/replays",
    operation_id = "ReplayDeliveries",
    tag = "Deliveries",
    request_body = ReplayRequest,
    responses(
        (status = 200, body = ReplayResult),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn replay_deliveries(
    State(state): State<ApiState>,
    caller: Authorized,
    ApiJson(body): ApiJson<ReplayRequest>,
) -> Result<Json<ReplayResult>, ApiError> {
    let outcome = match body.outcome.as_deref() {
        None | Some("") => pb::Outcome::Unspecified,
        Some(word) => parse_outcome(word)?,
    };
    let request = caller.request(pb::ReplayDeliveriesRequest {
        since: parse_time("since", body.since.as_deref())?,
        until: parse_time("until", body.until.as_deref())?,
        outcome: outcome as i32,
        event_id: body.event_id,
        subscription_id: body.subscription_id,
    });
    let result = state
        .services
        .deliveries
        .replay_deliveries(request)
        .await?
        .into_inner();
    Ok(Json(ReplayResult {
        queued: result.queued,
        parked: result.parked,
        agents: result
            .agents
            .into_iter()
            .map(|a| AgentReplayCount {
                agent_id: a.agent_id,
                queued: a.queued,
            })
            .collect(),
        not_replayable: result
            .not_replayable
            .into_iter()
            .map(|m| ReplayMiss {
                event_id: m.event_id,
                subscription_id: m.subscription_id,
                agent_id: m.agent_id,
                reason: m.reason,
            })
            .collect(),
    }))
}
