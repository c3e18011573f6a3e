//! What every web page shares: rendering a template into a response, the refusals a page can
//! end in ([`PageError`]), and the text helpers templates use.

use askama::Template;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};

use crate::rest::problem::http_status;

/// Renders `page`, or the error page if the template fails.
pub fn render(page: &impl Template) -> Response {
    match page.render() {
        Ok(html) => Html(html).into_response(),
        Err(err) => PageError::internal(err.to_string()).into_response(),
    }
}

/// Renders `page` with `status` (a form shown again with its refusal).
pub fn render_with(status: StatusCode, page: &impl Template) -> Response {
    let mut response = render(page);
    if response.status() == StatusCode::OK {
        *response.status_mut() = status;
    }
    response
}

/// The status of a form page: 400 when it is shown again with a refusal.
pub fn form_status(error: &str) -> StatusCode {
    if error.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    }
}

/// How a page request can end other than with its page.
#[derive(Debug)]
pub enum PageError {
    /// Not signed in (or the session ended): to the sign-in page, then back to `next`.
    SignIn {
        /// The page to come back to.
        next: String,
        /// Whether the request was for part of a page (a live update): the whole page then
        /// goes to the sign-in, rather than the sign-in page into the part.
        partial: bool,
    },
    /// A change without this session's CSRF token, or posted from another site.
    Csrf,
    /// A service's refusal, shown with its words.
    Status(tonic::Status),
    /// A portal link that is not one, or has expired.
    Link {
        /// What to tell the holder.
        message: &'static str,
    },
    /// A form's address opened as a page (a bookmark, a reload of a post's answer).
    WrongMethod,
}

impl PageError {
    /// Something broke inside; logged, and shown without detail.
    pub fn internal(detail: String) -> Self {
        tracing::error!(error = %detail, "web page failed");
        PageError::Status(tonic::Status::internal("the page could not be made"))
    }
}

impl From<tonic::Status> for PageError {
    fn from(status: tonic::Status) -> Self {
        PageError::Status(status)
    }
}

/// A refusal as its page showed it, kept on the response so that the portal can show it again
/// in its own look ([`super::portal::branded_errors`]).
#[derive(Clone, Debug)]
pub struct ShownError {
    /// The page's heading.
    pub title: String,
    /// What it says.
    pub message: String,
}

/// The page every refusal is shown on.
#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    title: &'a str,
    message: &'a str,
    sign_in: bool,
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (status, title, message, sign_in) = match &self {
            PageError::SignIn { next, partial } => {
                let next: String = url::form_urlencoded::byte_serialize(next.as_bytes()).collect();
                let login = format!("/login?next={next}");
                if *partial {
                    // htmx sends the whole window there.
                    return match header::HeaderValue::from_str(&login) {
                        Ok(to) => (StatusCode::OK, [("hx-redirect", to)]).into_response(),
                        Err(_) => StatusCode::UNAUTHORIZED.into_response(),
                    };
                }
                return Redirect::to(&login).into_response();
            }
            PageError::Csrf => (
                StatusCode::FORBIDDEN,
                "Form refused",
                "This form did not come from this console or its session has changed. \
                 Go back, reload the page and try again.",
                true,
            ),
            PageError::Status(status) => {
                let code = http_status(status.code());
                (
                    code,
                    code.canonical_reason().unwrap_or("Error"),
                    status.message(),
                    code == StatusCode::UNAUTHORIZED,
                )
            }
            PageError::Link { message } => {
                (StatusCode::FORBIDDEN, "Link not valid", *message, false)
            }
            PageError::WrongMethod => (
                StatusCode::METHOD_NOT_ALLOWED,
                "Not a page",
                "This address takes a form posted from its page, not a visit. Go back to that \
                 page and use its button.",
                false,
            ),
        };
        let page = ErrorPage {
            title,
            message,
            sign_in,
        };
        let mut response = match page.render() {
            Ok(html) => Html(html).into_response(),
            Err(_) => message.to_owned().into_response(),
        };
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("no-store"),
        );
        response.extensions_mut().insert(ShownError {
            title: title.to_owned(),
            message: message.to_owned(),
        });
        response
    }
}

/// An RFC 3339 time for people (to the second), or `—`.
pub fn when(ts: Option<&prost_types::Timestamp>) -> String {
    ts.map_or_else(
        || "—".to_owned(),
        |ts| humantime::format_rfc3339_seconds(herald_proto::convert::system_time(ts)).to_string(),
    )
}

/// Milliseconds of a duration, for people.
pub fn millis(d: Option<&prost_types::Duration>) -> String {
    let ms = d
        .and_then(herald_proto::convert::std_duration)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    format!("{ms:.0} ms")
}

/// `text` as a query-string value.
pub fn query_value(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}
