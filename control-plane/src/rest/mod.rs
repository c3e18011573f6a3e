//! The HTTP API (`--http-listen`): a REST form of the operator API under `/api/v1/`, JSON in
//! and out, with its OpenAPI 3.1 document at `/api/v1/openapi.json` made from the code.
//!
//! Each route calls the gRPC service's own method with the caller's identity, so validation,
//! tenant scope, audit and refusals are the gRPC API's; a refusal is answered as
//! `application/problem+json` ([`problem`]). Callers authenticate as on gRPC: a bearer token,
//! or under mutual TLS a client certificate listed in `--auth-identities`. Reads need the
//! `read` role, changes `admin`.
//!
//! One module per resource holds its routes and JSON shapes: [`subscriptions`] (shapes in
//! [`subscription_json`]), [`deliveries`], [`catalogue`], [`fleet`], [`audit`].

pub mod audit;
pub mod catalogue;
pub mod deliveries;
pub mod fleet;
pub mod hosts;
pub mod json;
pub mod problem;
pub mod sent_requests;
pub mod subscription_json;
pub mod subscriptions;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::header;
use axum::http::request::Parts;
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::access::Caller;
use crate::access::Role;
use crate::auth::Authenticator;
use crate::grpc::{
    AgentsService, AuditService, DeliveriesService, EventTypesService, PortalService,
    SubscriptionsService,
};
use problem::ApiError;

/// Largest request body the API reads (a subscription with many headers is a few KiB).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The services the routes call, shared with the gRPC server.
#[derive(Clone)]
pub struct Services {
    /// `herald.v1.Subscriptions`.
    pub subscriptions: Arc<SubscriptionsService>,
    /// `herald.v1.EventTypes`.
    pub event_types: Arc<EventTypesService>,
    /// `herald.v1.Deliveries`.
    pub deliveries: Arc<DeliveriesService>,
    /// `herald.v1.Audit`.
    pub audit: Arc<AuditService>,
    /// `herald.v1.Agents`.
    pub agents: Arc<AgentsService>,
    /// `herald.v1.Portal`.
    pub portal: Arc<PortalService>,
}

/// What every route has: the services and who may call.
#[derive(Clone)]
pub struct ApiState {
    services: Services,
    authenticator: Authenticator,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Herald",
        description = "The operator API of Herald's control plane: webhook subscriptions, \
                       the event-type catalogue, delivery logs and replays, the fleet of \
                       agents, the audit log. The same operations as gRPC \
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
    let (router, mut openapi) = routes().with_state(state).split_for_parts();
    // Once every route is in: each gets the problems every route may answer.
    utoipa::Modify::modify(&problem::CommonProblems, &mut openapi);
    let document = openapi.clone();
    let router = router
        .route(
            "/api/v1/openapi.json",
            axum::routing::get(move || async move { Json(document) }),
        )
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES));
    (router, openapi)
}

/// The answer to a path no route serves, as a problem document (the web pages' fallback
/// answers browsers with a page instead: [`crate::web::not_found`]).
pub fn no_such_route() -> axum::response::Response {
    axum::response::IntoResponse::into_response(ApiError::from(tonic::Status::not_found(
        "no such route",
    )))
}

/// Every route, each registered with its OpenAPI operation (so none is served undocumented).
fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(
            subscriptions::list_subscriptions,
            subscriptions::create_subscription
        ))
        .routes(routes!(
            subscriptions::get_subscription,
            subscriptions::update_subscription,
            subscriptions::delete_subscription
        ))
        .routes(routes!(subscriptions::enable_subscription))
        .routes(routes!(subscriptions::disable_subscription))
        .routes(routes!(subscriptions::rotate_secret))
        .routes(routes!(subscriptions::test_subscription))
        .routes(routes!(subscriptions::get_subscription_health))
        .routes(routes!(
            catalogue::list_event_types,
            catalogue::create_event_type
        ))
        .routes(routes!(
            catalogue::get_event_type,
            catalogue::update_event_type,
            catalogue::delete_event_type
        ))
        .routes(routes!(catalogue::deprecate_event_type))
        .routes(routes!(deliveries::list_attempts))
        .routes(routes!(deliveries::tail_attempts))
        .routes(routes!(deliveries::replay_deliveries))
        .routes(routes!(
            sent_requests::get_sent_requests,
            sent_requests::expunge_sent_requests
        ))
        .routes(routes!(fleet::list_agents))
        .routes(routes!(fleet::create_portal_link))
        .routes(routes!(fleet::expire_portal_links))
        .routes(routes!(audit::list_audit_entries))
}

/// The caller of a route: authenticated as the gRPC API authenticates, needing `read` for
/// GET and `admin` for the rest.
pub struct Authorized(pub(crate) Option<Arc<crate::access::Identity>>);

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
    pub(crate) fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(identity) = &self.0 {
            request.extensions_mut().insert(Caller(identity.clone()));
        }
        request
    }
}

/// A query string read as `T`; one that does not read, or names a parameter `T` does not
/// have (a misspelt filter would otherwise list everything), is `INVALID_ARGUMENT` as
/// problem+json.
pub struct ApiQuery<T>(T);

impl<T: DeserializeOwned + utoipa::IntoParams, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        only_known_parameters(parts, &parameter_names::<T>())?;
        Ok(ApiQuery(read_query(parts, state).await?))
    }
}

/// A query string read as two parts (the filter and the page of a listing), under the same
/// rules as [`ApiQuery`]: a parameter neither part has is refused.
pub struct ApiQueries<A, B>(A, B);

impl<A, B, S> FromRequestParts<S> for ApiQueries<A, B>
where
    A: DeserializeOwned + utoipa::IntoParams + Send,
    B: DeserializeOwned + utoipa::IntoParams + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let mut known = parameter_names::<A>();
        known.extend(parameter_names::<B>());
        only_known_parameters(parts, &known)?;
        Ok(ApiQueries(
            read_query(parts, state).await?,
            read_query(parts, state).await?,
        ))
    }
}

/// The query parameters `T` documents (and reads).
fn parameter_names<T: utoipa::IntoParams>() -> Vec<String> {
    T::into_params(|| Some(utoipa::openapi::path::ParameterIn::Query))
        .into_iter()
        .map(|parameter| parameter.name)
        .collect()
}

/// Refuses a query parameter not among `known`, naming it.
fn only_known_parameters(parts: &Parts, known: &[String]) -> Result<(), ApiError> {
    let query = parts.uri.query().unwrap_or_default();
    match url::form_urlencoded::parse(query.as_bytes())
        .find(|(name, _)| !known.iter().any(|k| k == name))
    {
        Some((name, _)) => Err(ApiError::invalid_field(
            &name,
            if known.is_empty() {
                "is not a parameter of this call, which takes none".to_owned()
            } else {
                format!(
                    "is not a parameter of this call; it takes {}",
                    known.join(", ")
                )
            },
        )),
        None => Ok(()),
    }
}

/// The query string read as `T`.
async fn read_query<T: DeserializeOwned, S: Send + Sync>(
    parts: &mut Parts,
    state: &S,
) -> Result<T, ApiError> {
    let Query(query) = Query::<T>::from_request_parts(parts, state)
        .await
        .map_err(|e| ApiError::invalid(e.body_text()))?;
    Ok(query)
}

/// A path's parameters read as `T`; one that does not read (bytes that are not UTF-8) is
/// `INVALID_ARGUMENT` as problem+json, as every other refusal of the API is.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path(value) = axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::invalid(e.body_text()))?;
        Ok(ApiPath(value))
    }
}

/// A JSON request body read as `T`: it must be sent as `application/json` and be a JSON
/// object (as every body the API documents is: serde would otherwise read an array as the
/// fields in order, past the refusal of unknown fields); one that does not read is
/// `INVALID_ARGUMENT` naming what is wrong, as problem+json.
pub struct ApiJson<T>(T);

/// Whether `headers` say the body is JSON.
fn sent_as_json(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"))
}

/// The body's JSON text without the blanks around it.
fn trimmed(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |at| at + 1);
    &bytes[start..end.max(start)]
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        if !sent_as_json(request.headers()) {
            return Err(ApiError::invalid(
                "the body must be JSON, sent with Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|e| ApiError::unreadable_body(e.status(), e.body_text()))?;
        if trimmed(&bytes).first() != Some(&b'{') {
            return Err(ApiError::invalid("the body must be a JSON object ({…})"));
        }
        let Json(value) = Json::<T>::from_bytes(&bytes)
            .map_err(|e| ApiError::unreadable_body(e.status(), e.body_text()))?;
        Ok(ApiJson(value))
    }
}

/// The body of an action (enable, disable, rotate): JSON as [`ApiJson`] reads it, or nothing
/// (or JSON `null`) for the action's defaults.
pub struct ActionBody<T>(T);

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for ActionBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let (parts, body) = request.into_parts();
        let bytes = Bytes::from_request(Request::from_parts(parts.clone(), body), state)
            .await
            .map_err(|e| ApiError::unreadable_body(e.status(), e.body_text()))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            // A page on another site can post an empty form here, and the browser may add
            // credentials of its own (a client certificate) or none be needed (an open API):
            // an action without a body is taken only from a client that names no other site.
            if crate::web::session::from_another_site(&parts.headers, &parts.extensions) {
                return Err(ApiError::from(tonic::Status::permission_denied(
                    "a request from another site's page must send its action as JSON",
                )));
            }
            return Ok(ActionBody(T::default()));
        }
        if sent_as_json(&parts.headers) && trimmed(&bytes) == b"null" {
            return Ok(ActionBody(T::default()));
        }
        let ApiJson(value) =
            ApiJson::from_request(Request::from_parts(parts, bytes.into()), state).await?;
        Ok(ActionBody(value))
    }
}

/// Answers a gRPC call sent to the HTTP listener (a client given the console's address for the
/// gRPC API's) as gRPC says "no such service here", naming where the gRPC API is, instead of
/// with an HTTP page the client cannot read; passes every other request on.
pub async fn refuse_grpc(
    request: Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let is_grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if !is_grpc {
        return next.run(request).await;
    }
    let status = tonic::Status::unimplemented(
        "this is the control plane's HTTP listener (console, portal, REST API); its gRPC API \
         is on the address of --listen (127.0.0.1:7700 by default)",
    );
    status.into_http()
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

    /// The gRPC methods of the operator API: every service but the agents' own (`Events`,
    /// `AgentControl`).
    fn grpc_methods() -> std::collections::BTreeSet<String> {
        use prost::Message as _;
        let set = prost_types::FileDescriptorSet::decode(herald_proto::FILE_DESCRIPTOR_SET)
            .expect("the API's descriptors");
        set.file
            .iter()
            .flat_map(|f| &f.service)
            .filter(|s| !["Events", "AgentControl"].contains(&s.name()))
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
        // Every operator method has its route.
        operations.sort();
        assert_eq!(operations, methods.into_iter().collect::<Vec<_>>());
    }

    #[test]
    fn every_operation_documents_the_problems_any_route_may_answer() {
        let (_, mut openapi) = routes().split_for_parts();
        utoipa::Modify::modify(&problem::CommonProblems, &mut openapi);
        let json = serde_json::to_value(&openapi).expect("serializes");
        for (path, item) in json["paths"].as_object().expect("paths") {
            for (verb, operation) in item.as_object().expect("an item") {
                for status in ["400", "401", "403", "429", "500", "503"] {
                    let problem = &operation["responses"][status]["content"]["application/problem+json"]
                        ["schema"]["$ref"];
                    assert_eq!(
                        problem, "#/components/schemas/Problem",
                        "{verb} {path} {status}"
                    );
                }
                // A body over the limit is answered where a body is read.
                assert_eq!(
                    operation["responses"].get("413").is_some(),
                    operation.get("requestBody").is_some(),
                    "{verb} {path}"
                );
            }
        }
        // A type without a schema answers null for it, as the document says it may.
        let schema = &json["components"]["schemas"]["EventType"]["properties"]["schema"];
        assert!(
            schema["type"]
                .as_array()
                .is_some_and(|types| types.contains(&serde_json::json!("null"))),
            "{schema}"
        );
    }
}
