//! Errors of the HTTP API as `application/problem+json` (RFC 9457): the gRPC status a service
//! answered, with the HTTP status that means the same, so REST and gRPC callers see the same
//! refusals with the same messages.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tonic::Code;

/// A problem: the body of every error the HTTP API answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// Always `about:blank`: the status and `code` say what happened.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The HTTP status's reason phrase.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What was wrong, as the gRPC API says it (a field and a reason, …).
    pub detail: String,
    /// The gRPC status code's name (`NOT_FOUND`, `INVALID_ARGUMENT`, …).
    pub code: String,
    /// For `INVALID_ARGUMENT`, the field refused, as a dot-separated path of the request's
    /// JSON names (`url`, `oauth2.token_url`), when one field is to blame; as gRPC gives it
    /// in a `google.rpc.BadRequest` detail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// The HTTP status of a gRPC code (google.rpc.Code's mapping: a stale revision, another
/// change at the same time and a state that refuses the change, such as a ninth signing
/// secret, are all the conflict 409 names).
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted | Code::FailedPrecondition => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The problems any operation may answer, whatever else it documents: the same validation,
/// authentication and store failures reach every route.
const COMMON_PROBLEMS: [(&str, &str); 8] = [
    ("400", "The request breaks a rule: a field and why"),
    ("401", "No token, or one this control plane does not know"),
    ("403", "The token's role or tenants do not allow it"),
    (
        "429",
        "A limit is reached, such as a tenant's subscriptions",
    ),
    (
        "500",
        "Stored data that does not decode, or a fault of the control plane",
    ),
    (
        "503",
        "A store (etcd, the delivery log) does not answer; retry",
    ),
    (
        "504",
        "What the call waited for (an agent, a replica) did not answer in time",
    ),
    (
        "507",
        "A store's disk is full (code RESOURCE_EXHAUSTED): writes resume once space is freed",
    ),
];

/// The problem of an operation that changes something: the object changed meanwhile (a
/// stale revision, or another change at the same time), or its state refuses the change.
const CONFLICT: (&str, &str) = (
    "409",
    "The object changed meanwhile (ABORTED, or a stale revision: read it again and retry), or \
     its state refuses the change (FAILED_PRECONDITION, e.g. too many signing secrets)",
);

/// The problem of an operation that reads a body, when the body is over the API's limit.
const TOO_LARGE: (&str, &str) = ("413", "The request body is larger than the limit, 1 MiB");

/// Documents [`COMMON_PROBLEMS`] on every operation that does not name them itself, and
/// [`TOO_LARGE`] on those that read a body, so that a client generated from the document
/// expects every answer it may get.
pub struct CommonProblems;

impl utoipa::Modify for CommonProblems {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
        let problem = || {
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build()
        };
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                (&mut item.get, false),
                (&mut item.put, true),
                (&mut item.post, true),
                (&mut item.delete, true),
                (&mut item.patch, true),
            ];
            for (operation, changes) in operations {
                let Some(operation) = operation else {
                    continue;
                };
                let reads_body = operation.request_body.is_some().then_some(TOO_LARGE);
                let conflict = changes.then_some(CONFLICT);
                for (status, description) in COMMON_PROBLEMS
                    .into_iter()
                    .chain(reads_body)
                    .chain(conflict)
                {
                    operation
                        .responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| {
                            RefOr::T(
                                ResponseBuilder::new()
                                    .description(description)
                                    .content("application/problem+json", problem())
                                    .build(),
                            )
                        });
                }
            }
        }
    }
}

/// The name of a gRPC code, as `google.rpc.Code` spells it.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// A gRPC status as the HTTP API answers it.
#[derive(Debug)]
pub struct ApiError {
    /// The refusal as the gRPC API words it: its code and message are the problem's.
    pub status: tonic::Status,
    /// The HTTP status: the code's (see [`http_status`]), or a finer one HTTP has.
    http: StatusCode,
}

impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> Self {
        let http = match herald_proto::refusal::Reason::of(&status) {
            // Not a limit to back off from (429) but space an operator must free.
            Some(herald_proto::refusal::Reason::DiskFull) => StatusCode::INSUFFICIENT_STORAGE,
            None => http_status(status.code()),
        };
        ApiError { status, http }
    }
}

impl ApiError {
    /// A request the HTTP layer itself cannot read (query, JSON).
    pub fn invalid(detail: impl Into<String>) -> Self {
        tonic::Status::invalid_argument(detail.into()).into()
    }

    /// A `field` of the request (its JSON name) the HTTP layer itself refuses for `reason`:
    /// `INVALID_ARGUMENT` naming it, in the problem's `field` too.
    pub fn invalid_field(field: &str, reason: impl Into<String>) -> Self {
        herald_proto::convert::invalid_field(field, reason).into()
    }

    /// A value refused by the shared validation rules, worded as gRPC words it.
    pub fn validation(err: herald_core::validate::ValidationError) -> Self {
        herald_proto::convert::invalid_argument(err).into()
    }

    /// A request body over the API's `limit` of bytes: `413 Content Too Large`, and
    /// `RESOURCE_EXHAUSTED` as gRPC answers a message over its limit.
    pub fn too_large(limit: usize) -> Self {
        ApiError {
            status: tonic::Status::resource_exhausted(format!(
                "the request body is larger than the limit of {limit} bytes"
            )),
            http: StatusCode::PAYLOAD_TOO_LARGE,
        }
    }

    /// A route asked with a method it does not have: `405 Method Not Allowed`, and
    /// `UNIMPLEMENTED` as gRPC answers a method it does not serve.
    pub fn method_not_allowed() -> Self {
        ApiError {
            status: tonic::Status::unimplemented(
                "this route has no such method: see /api/v1/openapi.json for the ones it has",
            ),
            http: StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    /// A body an extractor could not read, from the rejection's HTTP `status` and `reason`:
    /// a body over the API's limit is [`Self::too_large`], any other `INVALID_ARGUMENT`.
    pub fn unreadable_body(status: StatusCode, reason: String) -> Self {
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            Self::too_large(super::MAX_BODY_BYTES)
        } else {
            Self::invalid(reason)
        }
    }

    /// The problem document that describes it.
    pub fn problem(&self) -> Problem {
        Problem {
            kind: "about:blank",
            title: self.http.canonical_reason().unwrap_or("Error").to_owned(),
            status: self.http.as_u16(),
            detail: self.status.message().to_owned(),
            code: code_name(self.status.code()).to_owned(),
            field: herald_proto::convert::refused_field(&self.status)
                .map(|invalid| json_field(invalid.field)),
        }
    }
}

/// A field as the gRPC API names it, as this API's JSON does: the payload filter is `filter`,
/// the expected revision `revision` and the signature scheme `signature` here; every other
/// name is the same.
fn json_field(field: String) -> String {
    // The gRPC fields the JSON names otherwise, and what JSON calls them.
    const RENAMED: [(&str, &str); 3] = [
        ("payload_filter", "filter"),
        ("expected_revision", "revision"),
        ("signature_scheme", "signature"),
    ];
    for (grpc, json) in RENAMED {
        if let Some(rest) = field.strip_prefix(grpc)
            && (rest.is_empty() || rest.starts_with('.'))
        {
            return format!("{json}{rest}");
        }
    }
    field
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = self.problem();
        let mut response = (self.http, axum::Json(problem)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if self.http == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_insufficient_storage_and_a_limit_too_many_requests() {
        let disk = ApiError::from(herald_proto::refusal::disk_full("the disk is full"));
        assert_eq!(disk.problem().status, 507);
        assert_eq!(disk.problem().code, "RESOURCE_EXHAUSTED");
        let limit = ApiError::from(tonic::Status::resource_exhausted("the tenant is full"));
        assert_eq!(limit.problem().status, 429);
    }

    #[test]
    fn statuses_map_as_google_rpc_says() {
        assert_eq!(http_status(Code::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(http_status(Code::InvalidArgument), StatusCode::BAD_REQUEST);
        assert_eq!(http_status(Code::PermissionDenied), StatusCode::FORBIDDEN);
        assert_eq!(http_status(Code::Unauthenticated), StatusCode::UNAUTHORIZED);
        assert_eq!(http_status(Code::FailedPrecondition), StatusCode::CONFLICT);
        assert_eq!(
            http_status(Code::Unavailable),
            StatusCode::SERVICE_UNAVAILABLE
        );
        let response = ApiError::from(tonic::Status::unauthenticated("no token")).into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
    }

    #[test]
    fn a_refused_field_is_named_as_this_apis_json_names_it() {
        let refused = |field: &str| {
            ApiError::from(herald_proto::convert::invalid_field(field, "is wrong"))
                .problem()
                .field
        };
        assert_eq!(refused("payload_filter").as_deref(), Some("filter"));
        assert_eq!(refused("retry").as_deref(), Some("retry"));
        assert_eq!(
            refused("oauth2.token_url").as_deref(),
            Some("oauth2.token_url")
        );
        assert_eq!(
            refused("payload_filters").as_deref(),
            Some("payload_filters")
        );
    }
}
