//! `/api/v1/subscriptions`: webhook endpoints, their actions (enable, disable, rotate the
//! secret) and their health.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use herald_proto::convert::duration;
use herald_proto::v1 as pb;
use herald_proto::v1::subscriptions_server::Subscriptions as _;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::problem::{ApiError, Problem};
use super::subscription_json::{Health, Subscription, SubscriptionPage, SubscriptionSpec};
use super::{ActionBody, ApiJson, ApiPath, ApiQuery, ApiState, Authorized, json};

/// Paging of a list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this tenant's.
    tenant: Option<String>,
    /// How many to answer at most: 0 or none means 100; more than 1000 means 1000.
    page_size: Option<u32>,
    /// Where the previous page ended.
    page_token: Option<String>,
}

/// Lists subscriptions (those of the tenants the caller may see), a page at a time.
#[utoipa::path(
    get,
    path = "/api/v1/subscriptions",
    operation_id = "ListSubscriptions",
    tag = "Subscriptions",
    params(ListQuery),
    responses(
        (status = 200, body = SubscriptionPage),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn list_subscriptions(
    State(state): State<ApiState>,
    caller: Authorized,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<SubscriptionPage>, ApiError> {
    let request = caller.request(pb::ListSubscriptionsRequest {
        tenant: query.tenant.unwrap_or_default(),
        page_size: query.page_size.unwrap_or_default(),
        page_token: query.page_token.unwrap_or_default(),
    });
    let page = state
        .services
        .subscriptions
        .list_subscriptions(request)
        .await?
        .into_inner();
    Ok(Json(SubscriptionPage {
        subscriptions: page.subscriptions.into_iter().map(Into::into).collect(),
        next_page_token: page.next_page_token,
    }))
}

/// Whether a create or update may name event types the catalogue lacks.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WriteQuery {
    /// Accept event-type patterns that select no registered event type.
    allow_unregistered: Option<bool>,
}

/// Creates a subscription; the answer holds its id and its signing secret. With an
/// `Idempotency-Key`, the same request sent again within 24 hours makes no second
/// subscription and answers the first, as it is now, with `Idempotent-Replayed: true` (a
/// different request with that key: 409).
#[utoipa::path(
    post,
    path = "/api/v1/subscriptions",
    operation_id = "CreateSubscription",
    tag = "Subscriptions",
    params(
        WriteQuery,
        (
            "Idempotency-Key" = Option<String>,
            Header,
            description = "Makes the create safe to send again: up to 255 printable ASCII characters, kept per tenant for 24 hours"
        )
    ),
    request_body = SubscriptionSpec,
    responses(
        (
            status = 201,
            body = Subscription,
            headers(
                ("location" = String),
                (
                    "idempotent-replayed" = String,
                    description = "`true` when an earlier create with the same Idempotency-Key made the subscription: nothing new was made"
                )
            )
        ),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (
            status = 404,
            description = "The subscription this Idempotency-Key's create made was deleted since (NOT_FOUND)",
            body = Problem,
            content_type = "application/problem+json"
        ),
        (
            status = 409,
            description = "This Idempotency-Key was used within 24 hours by a create with another body (ALREADY_EXISTS)",
            body = Problem,
            content_type = "application/problem+json"
        )
    )
)]
pub async fn create_subscription(
    State(state): State<ApiState>,
    caller: Authorized,
    ApiQuery(query): ApiQuery<WriteQuery>,
    headers: HeaderMap,
    ApiJson(spec): ApiJson<SubscriptionSpec>,
) -> Result<impl IntoResponse, ApiError> {
    if headers.get_all("idempotency-key").iter().count() > 1 {
        return Err(ApiError::invalid_field(
            "Idempotency-Key",
            "is given more than once: send one key",
        ));
    }
    let idempotency_key = match headers.get("idempotency-key") {
        Some(value) => value
            .to_str()
            .map_err(|_| {
                ApiError::invalid_field(
                    "Idempotency-Key",
                    "may hold only printable ASCII characters",
                )
            })?
            .to_owned(),
        None => String::new(),
    };
    let request = caller.request(pb::CreateSubscriptionRequest {
        subscription: Some(spec.to_wire(String::new())?),
        allow_unregistered: query.allow_unregistered.unwrap_or(false),
        idempotency_key,
    });
    let answer = state
        .services
        .subscriptions
        .create_subscription(request)
        .await?;
    let replayed = herald_proto::idempotency::was_replayed(&answer);
    let created = answer.into_inner();
    let location = format!("/api/v1/subscriptions/{}", created.id);
    let mut response = (
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(Subscription::from(created)),
    )
        .into_response();
    if replayed {
        response.headers_mut().insert(
            herald_proto::idempotency::REPLAYED,
            header::HeaderValue::from_static("true"),
        );
    }
    Ok(response)
}

/// Whether to show secret values.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct GetQuery {
    /// Show signing secrets and header values (the `admin` role of the subscription's tenant).
    show_secrets: Option<bool>,
}

/// One subscription; another tenant's is not found, as an id nobody has.
#[utoipa::path(
    get,
    path = "/api/v1/subscriptions/{id}",
    operation_id = "GetSubscription",
    tag = "Subscriptions",
    params(("id" = String, Path, description = "The subscription's id (sub_…)"), GetQuery),
    responses(
        (status = 200, body = Subscription),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn get_subscription(
    State(state): State<ApiState>,
    caller: Authorized,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<GetQuery>,
) -> Result<Json<Subscription>, ApiError> {
    let request = caller.request(pb::GetSubscriptionRequest {
        id,
        show_secrets: query.show_secrets.unwrap_or(false),
    });
    let sub = state
        .services
        .subscriptions
        .get_subscription(request)
        .await?
        .into_inner();
    Ok(Json(sub.into()))
}

/// Replaces a subscription's settings. `revision` must be the one read: a stale one is 409,
/// so two editors never overwrite each other unseen.
#[utoipa::path(
    put,
    path = "/api/v1/subscriptions/{id}",
    operation_id = "UpdateSubscription",
    tag = "Subscriptions",
    params(("id" = String, Path, description = "The subscription's id (sub_…)"), WriteQuery),
    request_body = SubscriptionSpec,
    responses(
        (status = 200, body = Subscription),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn update_subscription(
    State(state): State<ApiState>,
    caller: Authorized,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<WriteQuery>,
    ApiJson(spec): ApiJson<SubscriptionSpec>,
) -> Result<Json<Subscription>, ApiError> {
    let expected_revision = spec
        .revision
        .ok_or_else(|| ApiError::invalid_field("revision", "required (the revision you read)"))?;
    // A spec without a tenant keeps the stored one (the tenant cannot change).
    let subscription = spec.to_wire(id)?;
    let request = caller.request(pb::UpdateSubscriptionRequest {
        subscription: Some(subscription),
        expected_revision,
        allow_unregistered: query.allow_unregistered.unwrap_or(false),
    });
    let updated = state
        .services
        .subscriptions
        .update_subscription(request)
        .await?
        .into_inner();
    Ok(Json(updated.into()))
}

/// Which revision a delete expects.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// Delete only if the stored revision is still this one.
    revision: Option<i64>,
}

/// Deletes a subscription.
#[utoipa::path(
    delete,
    path = "/api/v1/subscriptions/{id}",
    operation_id = "DeleteSubscription",
    tag = "Subscriptions",
    params(("id" = String, Path, description = "The subscription's id (sub_…)"), DeleteQuery),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn delete_subscription(
    State(state): State<ApiState>,
    caller: Authorized,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<DeleteQuery>,
) -> Result<StatusCode, ApiError> {
    let request = caller.request(pb::DeleteSubscriptionRequest {
        id,
        expected_revision: query.revision.unwrap_or(0),
    });
    state
        .services
        .subscriptions
        .delete_subscription(request)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// How to enable.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnableBody {
    /// Send the deliveries parked while it was disabled (otherwise they are skipped).
    #[serde(default)]
    replay_parked: bool,
}

/// Resumes delivery to a subscription (the body may be empty).
#[utoipa::path(
    post,
    path = "/api/v1/subscriptions/{id}/enable",
    operation_id = "EnableSubscription",
    tag = "Subscriptions",
    params(("id" = String, Path, description = "The subscription's id (sub_…)")),
    request_body(content = Option<EnableBody>),
    responses(
        (status = 200, body = Subscription),
        (status = 404, body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn enable_subscription(
    State(state): State<ApiState>,
    caller: Authorized,
    ApiPath(id): ApiPath<String>,
    ActionBody(body): ActionBody<EnableBody>,
) -> Result<Json<Subscription>, ApiError> {
    let request = caller.request(pb::EnableSubscriptionRequest {
        id,
        replay_parked: body.replay_parked,
    });
    let sub = state
        .services
        .subscriptions
        .enable_subscription(request)
        .await?
        .into_inner();
    Ok(Json(sub.into()))
}

/// Why it is disabled.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DisableBody {
    /// Recorded as the reason; `manual` when empty.
    #[serde(default)]
    reason: String,
}

/// Stops delivery to a subscription; its deliveries are parked until it is enabled.
#[utoipa::path(
    post,
    path = "/api/v1/subscriptions/{id}/disable",
    operation_id = "DisableSubscription",
    tag = "Subscriptions",
    params(("id" = String, Path, description = "The subscription's id (sub_…)")),
    request_body(content = Option<DisableBody>),
    responses(
        (status = 200, body = Subscription),
        (status = 404, body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn disable_subscription(
    State(state): State<ApiState>,
    caller: Authorized,
    ApiPath(id): ApiPath<String>,
    ActionBody(body): ActionBody<DisableBody>,
) -> Result<Json<Subscription>, ApiError> {
    let request = caller.request(pb::DisableSubscriptionRequest {
        id,
        reason: body.reason,
    });
    let sub = state
        .services
        .subscriptions
        .disable_subscription(request)
        .await?
        .into_inner();
    Ok(Json(sub.into()))
}

/// How long the old secrets keep signing.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateBody {
    /// E.g. `1h`; default 24 h.
    #[serde(default)]
    grace: Option<String>,
}

/// Adds a new signing secret (shown in the answer); the previous ones keep signing for the
/// grace period.
#[utoipa::path(
    post,
    path = "/api/v1/subscriptions/{id}/rotate-secret",
    operation_id = "RotateSecret",
    tag = "Subscriptions",
    params(("id" = String, Path, description = "The subscription's id (sub_…)")),
    request_body(content = Option<RotateBody>),
    responses(
        (status = 200, body = Subscription),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn rotate_secret(
    State(state): State<ApiState>,
    caller: Authorized,
    ApiPath(id): ApiPath<String>,
    ActionBody(body): ActionBody<RotateBody>,
) -> Result<Json<Subscription>, ApiError> {
    let grace = body
        .grace
        .as_deref()
        .map(|g| json::parse_duration("grace", g).map(duration))
        .transpose()?;
    let request = caller.request(pb::RotateSecretRequest { id, grace });
    let sub = state
        .services
        .subscriptions
        .rotate_secret(request)
        .await?
        .into_inner();
    Ok(Json(sub.into()))
}

/// What a test-send sends; both optional.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TestBody {
    /// The event type; default: the subscription's first exact type, or the first catalogued
    /// type its first pattern selecting any selects.
    #[serde(default)]
    event_type: Option<String>,
    /// The payload; default: the event type's catalogue example.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    payload: Option<serde_json::Value>,
}

/// Sends one test event to this subscription only, now, through a connected agent, and answers
/// the attempt (status, duration, error, the start of the response). Works on a disabled
/// subscription; logged as a test, counted toward no health.
#[utoipa::path(
    post,
    path = "/api/v1/subscriptions/{id}/test",
    operation_id = "TestSubscription",
    tag = "Subscriptions",
    params(("id" = String, Path, description = "The subscription's id (sub_…)")),
    request_body(content = Option<TestBody>),
    responses(
        (status = 200, body = super::deliveries::Attempt),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn test_subscription(
    State(state): State<ApiState>,
    caller: Authorized,
    ApiPath(id): ApiPath<String>,
    ActionBody(body): ActionBody<TestBody>,
) -> Result<Json<super::deliveries::Attempt>, ApiError> {
    let request = caller.request(pb::TestSubscriptionRequest {
        id,
        event_type: body.event_type.unwrap_or_default(),
        payload: body
            .payload
            .map(|p| p.to_string().into_bytes())
            .unwrap_or_default(),
    });
    let attempt = state
        .services
        .subscriptions
        .test_subscription(request)
        .await?
        .into_inner()
        .attempt
        .unwrap_or_default();
    Ok(Json(attempt.into()))
}

/// How the endpoint is doing: failures in a row, recent success rate and latency.
#[utoipa::path(
    get,
    path = "/api/v1/subscriptions/{id}/health",
    operation_id = "GetSubscriptionHealth",
    tag = "Subscriptions",
    params(("id" = String, Path, description = "The subscription's id (sub_…)")),
    responses(
        (status = 200, body = Health),
        (status = 404, body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn get_subscription_health(
    State(state): State<ApiState>,
    caller: Authorized,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Health>, ApiError> {
    let request = caller.request(pb::GetSubscriptionHealthRequest { id });
    let health = state
        .services
        .subscriptions
        .get_subscription_health(request)
        .await?
        .into_inner();
    Ok(Json(health.into()))
}
