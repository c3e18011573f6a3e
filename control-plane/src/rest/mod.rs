//! The HTTP API (`--http-listen`): a REST form of the operator API under `/api/v1/`, JSON in
//! and out, with its OpenAPI 3.1 document at `/api/v1/openapi.json` made from the code.
//!
//! Each route calls the gRPC service's own method with the caller's identity, so validation,
//! tenant scope, audit and refusals are the gRPC API's; a refusal is answered as
//! `application/problem+json` ([`problem`]). Callers authenticate as on gRPC: a bearer token,
//! or under mutual TLS a client certificate listed in `--auth-identities`. Reads need the
//! `read` role, changes `admin`.
//!
//! This first part serves the reads of subscriptions and of the audit log.

pub mod model;
pub mod problem;

use std::sync::Arc;

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::{Json, Router};
use herald_proto::convert::timestamp;
use herald_proto::v1 as pb;
use herald_proto::v1::audit_server::Audit as _;
use herald_proto::v1::subscriptions_server::Subscriptions as _;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use utoipa::{IntoParams, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::access::Caller;
use crate::auth::{Authenticator, Role};
use crate::grpc::{AuditService, SubscriptionsService};
use problem::ApiError;

/// The services the routes call, shared with the gRPC server.
#[derive(Clone)]
pub struct Services {
    /// `herald.v1.Subscriptions`.
    pub subscriptions: Arc<SubscriptionsService>,
    /// `herald.v1.Audit`.
    pub audit: Arc<AuditService>,
}

/// What every route has: the services and who may call.
#[derive(Clone)]
struct ApiState {
    services: Services,
    authenticator: Authenticator,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Herald",
        description = "The operator API of Herald's control plane: webhook subscriptions, \
                       delivery logs, the audit log. The same operations as gRPC \
                       (proto/herald/v1/herald.proto), with the same validation and refusals."
    ),
    components(schemas(problem::Problem)),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

/// Declares the bearer-token scheme every operation uses.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        openapi.security = Some(vec![utoipa::openapi::security::SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
    }
}

/// The routes and the OpenAPI document describing them.
pub fn api(services: Services, authenticator: Authenticator) -> (Router, utoipa::openapi::OpenApi) {
    let state = ApiState {
        services,
        authenticator,
    };
    let (router, openapi) = routes().with_state(state).split_for_parts();
    let document = openapi.clone();
    let router = router
        .route(
            "/api/v1/openapi.json",
            axum::routing::get(move || async move { Json(document) }),
        )
        .fallback(|| async { ApiError(tonic::Status::not_found("no such route")) });
    (router, openapi)
}

/// Every route, each registered with its OpenAPI operation (so none is served undocumented).
fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(list_subscriptions))
        .routes(routes!(get_subscription))
        .routes(routes!(list_audit_entries))
}

/// The caller of a route: authenticated as the gRPC API authenticates, needing `read` for
/// GET and `admin` for the rest.
struct Authorized(Option<Arc<crate::access::Identity>>);

impl FromRequestParts<ApiState> for Authorized {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let needed = if parts.method == axum::http::Method::GET {
            Role::Read
        } else {
            Role::Admin
        };
        Ok(Authorized(state.authenticator.authorize(
            parts.uri.path(),
            &parts.headers,
            &parts.extensions,
            needed,
        )?))
    }
}

impl Authorized {
    /// A gRPC request of `message` from this caller.
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(identity) = &self.0 {
            request.extensions_mut().insert(Caller(identity.clone()));
        }
        request
    }
}

/// A query string read as `T`; one that does not read is `INVALID_ARGUMENT` as problem+json.
struct ApiQuery<T>(T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(query) = Query::<T>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::invalid(e.body_text()))?;
        Ok(ApiQuery(query))
    }
}

/// Paging of a list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListSubscriptionsQuery {
    /// Only this tenant's.
    tenant: Option<String>,
    /// At most 1000; 0 or none means 100.
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
    params(ListSubscriptionsQuery),
    responses(
        (status = 200, body = model::SubscriptionPage),
        (status = 400, body = problem::Problem, content_type = "application/problem+json"),
        (status = 401, body = problem::Problem, content_type = "application/problem+json")
    )
)]
async fn list_subscriptions(
    State(state): State<ApiState>,
    caller: Authorized,
    ApiQuery(query): ApiQuery<ListSubscriptionsQuery>,
) -> Result<Json<model::SubscriptionPage>, ApiError> {
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
    Ok(Json(model::SubscriptionPage {
        subscriptions: page.subscriptions.into_iter().map(Into::into).collect(),
        next_page_token: page.next_page_token,
    }))
}

/// Whether to show secret values.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct GetSubscriptionQuery {
    /// Show signing secrets and header values (the `admin` role of the subscription's tenant).
    show_secrets: Option<bool>,
}

/// One subscription; another tenant's is not found, as an id nobody has.
#[utoipa::path(
    get,
    path = "/api/v1/subscriptions/{id}",
    operation_id = "GetSubscription",
    tag = "Subscriptions",
    params(("id" = String, Path, description = "The subscription's id (sub_…)"), GetSubscriptionQuery),
    responses(
        (status = 200, body = model::Subscription),
        (status = 401, body = problem::Problem, content_type = "application/problem+json"),
        (status = 403, body = problem::Problem, content_type = "application/problem+json"),
        (status = 404, body = problem::Problem, content_type = "application/problem+json")
    )
)]
async fn get_subscription(
    State(state): State<ApiState>,
    caller: Authorized,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<GetSubscriptionQuery>,
) -> Result<Json<model::Subscription>, ApiError> {
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

/// Which audit entries.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct AuditQuery {
    /// Only this tenant's.
    tenant: Option<String>,
    /// Only this actor's.
    actor: Option<String>,
    /// Entries at or after this time (RFC 3339).
    since: Option<String>,
    /// Entries before this time (RFC 3339).
    until: Option<String>,
    /// At most 1000; 0 or none means 100.
    page_size: Option<u32>,
    /// Where the previous page ended.
    page_token: Option<String>,
}

/// An RFC 3339 query time.
fn query_time(
    field: &str,
    text: Option<String>,
) -> Result<Option<prost_types::Timestamp>, ApiError> {
    text.map(|text| {
        humantime::parse_rfc3339_weak(&text)
            .map(timestamp)
            .map_err(|_| ApiError::invalid(format!("{field}: {text:?} is not an RFC 3339 time")))
    })
    .transpose()
}

/// The changes made through the operator API (those of the caller's tenants), newest first.
#[utoipa::path(
    get,
    path = "/api/v1/audit",
    operation_id = "ListAuditEntries",
    tag = "Audit",
    params(AuditQuery),
    responses(
        (status = 200, body = model::AuditPage),
        (status = 400, body = problem::Problem, content_type = "application/problem+json"),
        (status = 401, body = problem::Problem, content_type = "application/problem+json")
    )
)]
async fn list_audit_entries(
    State(state): State<ApiState>,
    caller: Authorized,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> Result<Json<model::AuditPage>, ApiError> {
    let request = caller.request(pb::ListAuditEntriesRequest {
        filter: Some(pb::AuditFilter {
            tenant: query.tenant.unwrap_or_default(),
            actor: query.actor.unwrap_or_default(),
            since: query_time("since", query.since)?,
            until: query_time("until", query.until)?,
        }),
        page_size: query.page_size.unwrap_or_default(),
        page_token: query.page_token.unwrap_or_default(),
    });
    let page = state
        .services
        .audit
        .list_audit_entries(request)
        .await?
        .into_inner();
    Ok(Json(model::AuditPage {
        entries: page.entries.into_iter().map(Into::into).collect(),
        next_page_token: page.next_page_token,
    }))
}

/// Serves `router` on the connections of `incoming` until `stop`, then lets open
/// connections finish their requests (the caller bounds how long it waits).
pub async fn serve<S, IO>(router: Router, incoming: S, stop: CancellationToken)
where
    S: futures_util::Stream<Item = Result<IO, std::io::Error>> + Send + 'static,
    IO: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected
        + Unpin
        + Send
        + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
{
    use futures_util::StreamExt as _;
    use tower::ServiceExt as _;
    let tracker = TaskTracker::new();
    let mut incoming = std::pin::pin!(incoming);
    loop {
        let io = tokio::select! {
            () = stop.cancelled() => break,
            next = incoming.next() => match next {
                Some(Ok(io)) => io,
                Some(Err(err)) => {
                    tracing::debug!(error = %err, "HTTP API: connection not accepted");
                    continue;
                }
                None => break,
            },
        };
        // The connection's certificate, for callers known by it (mutual TLS).
        let info = io.connect_info();
        let service = router.clone().map_request(
            move |mut request: axum::http::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(info.clone());
                request.map(axum::body::Body::new)
            },
        );
        let service = hyper_util::service::TowerToHyperService::new(service);
        let stop = stop.clone();
        tracker.spawn(async move {
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            let connection =
                builder.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(io), service);
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
    tracker.close();
    tracker.wait().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gRPC methods of the operator API, `Service/Method` → `Method`.
    fn grpc_methods() -> std::collections::BTreeSet<String> {
        use prost::Message as _;
        let set = prost_types::FileDescriptorSet::decode(herald_proto::FILE_DESCRIPTOR_SET)
            .expect("the API's descriptors");
        set.file
            .iter()
            .flat_map(|f| &f.service)
            .flat_map(|s| s.method.iter().map(|m| m.name().to_owned()))
            .collect()
    }

    #[test]
    fn every_route_is_in_the_openapi_document_under_its_grpc_name() {
        let (_, openapi) = routes().split_for_parts();
        let json = serde_json::to_value(&openapi).expect("serializes");
        assert_eq!(json["openapi"], "3.1.0");
        let methods = grpc_methods();
        let mut operations = vec![];
        for (path, item) in json["paths"].as_object().expect("paths") {
            for (verb, operation) in item.as_object().expect("an item") {
                let id = operation["operationId"].as_str().expect("an operation id");
                assert!(
                    methods.contains(id),
                    "{verb} {path}: {id} is no gRPC method"
                );
                assert!(path.starts_with("/api/v1/"), "{path}");
                operations.push(id.to_owned());
            }
        }
        operations.sort();
        assert_eq!(
            operations,
            ["GetSubscription", "ListAuditEntries", "ListSubscriptions"]
        );
    }
}
