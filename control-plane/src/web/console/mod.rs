//! The operator console at `/`: sign in with an API token, then subscriptions, the delivery
//! log, the fleet and the event-type catalogue, as far as the token may see and change them.

mod catalogue;
pub(crate) mod deliveries;
mod fleet;
pub(crate) mod subscriptions;

use askama::Template;
use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use super::WebState;
use super::page::{PageError, render, render_with};
use super::session::{self, Console};

/// The console's routes.
pub fn routes() -> Router<WebState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/subscriptions") }))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .merge(subscriptions::routes())
        .merge(deliveries::routes())
        .merge(fleet::routes())
        .merge(catalogue::routes())
}

/// What the header of every console page shows.
pub struct Chrome {
    /// Who is signed in.
    pub user: String,
    /// For the forms of the page.
    pub csrf: String,
    /// Whether change forms are shown.
    pub admin: bool,
    /// Whether what every tenant shares is offered (the agents, the catalogue's changes).
    pub every_tenant: bool,
    /// The section of the navigation to mark.
    pub section: &'static str,
}

impl Chrome {
    fn new(console: &Console, section: &'static str) -> Self {
        Chrome {
            user: console.name.clone(),
            csrf: console.csrf.clone(),
            admin: console.admin,
            every_tenant: console.every_tenant,
            section,
        }
    }
}

#[derive(Template)]
#[template(path = "console/login.html")]
struct LoginPage {
    next: String,
    error: String,
    open: bool,
}

#[derive(Deserialize)]
struct LoginQuery {
    next: Option<String>,
}

/// Where to go after signing in: a page of this console only.
fn local_path(next: Option<&str>) -> String {
    match next {
        // Browsers drop tabs and newlines from URLs (`/\t/evil.example` is `//evil.example`)
        // and read `\` as `/`: a path holding any control character or backslash is refused.
        Some(path)
            if path.starts_with('/')
                && !path.starts_with("//")
                && !path.contains('\\')
                && !path.chars().any(char::is_control) =>
        {
            path.to_owned()
        }
        _ => "/subscriptions".to_owned(),
    }
}

async fn login_page(State(state): State<WebState>, Query(query): Query<LoginQuery>) -> Response {
    render(&LoginPage {
        next: local_path(query.next.as_deref()),
        error: String::new(),
        open: state.authenticator.is_open(),
    })
}

async fn login(State(state): State<WebState>, request: Request) -> Result<Response, PageError> {
    session::same_origin(request.headers(), request.extensions())?;
    let extensions = request.extensions().clone();
    let form = session::read_form(request, &state).await?;
    let token = form.text("token");
    let next = local_path(Some(&form.text("next")));
    if let Err(status) = session::check_token(&state, &token, &extensions) {
        let page = LoginPage {
            next,
            error: status.message().to_owned(),
            open: state.authenticator.is_open(),
        };
        return Ok(render_with(StatusCode::UNAUTHORIZED, &page));
    }
    let cookie = session::sign_in(&state, &token)?;
    Ok((
        StatusCode::SEE_OTHER,
        [(header::SET_COOKIE, cookie)],
        [(header::LOCATION, next)],
    )
        .into_response())
}

/// Signs out any session, read-only ones too (which may post nothing else): ending it needs no
/// rights, only a post from this site. The session ends on every replica, not only in this
/// browser.
async fn logout(
    State(state): State<WebState>,
    headers: axum::http::HeaderMap,
    extensions: axum::http::Extensions,
) -> Result<Response, PageError> {
    session::same_origin(&headers, &extensions)?;
    Ok((
        StatusCode::SEE_OTHER,
        [(
            header::SET_COOKIE,
            session::sign_out(&state, &headers).await?,
        )],
        [(header::LOCATION, "/login")],
    )
        .into_response())
}

/// A redirect after a change (post, then get), with a note for the next page.
fn after_change(path: &str, done: &str) -> Response {
    let separator = if path.contains('?') { '&' } else { '?' };
    Redirect::to(&format!(
        "{path}{separator}done={}",
        super::page::query_value(done)
    ))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_in_goes_on_to_pages_of_this_console_only() {
        assert_eq!(local_path(Some("/deliveries?x=1")), "/deliveries?x=1");
        for elsewhere in [
            "//evil.example",
            "/\\evil.example",
            "/\t/evil.example",
            "/\n/evil.example",
            "https://evil.example",
            "",
        ] {
            assert_eq!(
                local_path(Some(elsewhere)),
                "/subscriptions",
                "{elsewhere:?}"
            );
        }
        assert_eq!(local_path(None), "/subscriptions");
    }
}
