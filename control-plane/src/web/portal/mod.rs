//! The tenant portal at `/portal/{link}/`: what a platform shows each of its users (a shop)
//! by handing it a link (`herald portal link`, or `POST /api/v1/portal-links`) or embedding
//! that link in an iframe. It shows one tenant: its endpoints (add, edit, disable,
//! re-enable, rotate and reveal the secret, send a test), its delivery log with each
//! request's error, and replay, and the event types it may subscribe to ([`catalogue`]); a
//! read-only link shows the same and changes nothing.
//!
//! The link's token is in the path, so the portal needs no cookie (it works inside another
//! site's iframe) and no other site can post to it without the link. Its holder acts as
//! `portal:<tenant>`, an identity scoped to that tenant, through the same services as every
//! other caller; an expired or forged link shows a page that says so, and no data.

mod catalogue;
mod receiver;

use std::collections::BTreeSet;
use std::sync::Arc;

use askama::Template;
use axum::Router;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::Method;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use herald_proto::v1 as pb;
use herald_proto::v1::subscriptions_server::Subscriptions as _;
use serde::Deserialize;

use super::WebState;
use super::chart::Chart;
use super::console::deliveries::{
    EventAttempts, EventQuery, LogQuery, LogWords, event_attempts, outcome_choices, page_of,
    replay_as, shown_page,
};
use super::console::subscriptions::{Choice, Endpoint, choices, disable_as, enable_as, rotate_as};
use super::form::{FieldError, FormData, SubscriptionForm, refusal};
use super::page::{PageError, ShownError, form_status, query_value, render, render_with, when};
use super::session::{read_form, same_origin};
use super::test_card::{self, TestCard, Tested};
use super::views::{
    self, AttemptRow, EventAttempt, HealthView, SecretView, Setting, SubscriptionRow,
};
use crate::access::Role;
use crate::access::{Identity, Scope};
use crate::grpc::LinkRefusal;
use crate::rest::Authorized;
use crate::sealed_token::TokenError;

/// How the portal looks and where it may be embedded.
#[derive(Clone, Debug, clap::Args)]
pub struct Branding {
    /// The name the tenant portal shows in its header (your platform's).
    #[arg(
        long = "portal-name",
        env = "HERALD_PORTAL_NAME",
        default_value = "Webhooks"
    )]
    pub name: String,
    /// The portal's accent colour, `#rrggbb`.
    #[arg(long = "portal-color", env = "HERALD_PORTAL_COLOR", default_value = "#2454d6", value_parser = colour)]
    pub color: String,
    /// An https:// image URL for the portal's header.
    #[arg(long = "portal-logo-url", env = "HERALD_PORTAL_LOGO_URL", default_value = "", value_parser = logo_url)]
    pub logo_url: String,
    /// The sites that may embed the portal in an iframe: Content-Security-Policy
    /// frame-ancestors sources, e.g. "https://shop-platform.example" ('none': no site).
    #[arg(long = "portal-frame-ancestors", env = "HERALD_PORTAL_FRAME_ANCESTORS", default_value = "'none'", value_parser = frame_ancestors)]
    pub frame_ancestors: String,
}

fn colour(text: &str) -> Result<String, String> {
    let hex = text.strip_prefix('#').unwrap_or("");
    if hex.len() == 6 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(text.to_owned())
    } else {
        Err("expected a colour as #rrggbb".into())
    }
}

fn logo_url(text: &str) -> Result<String, String> {
    if text.is_empty() || (text.starts_with("https://") && url::Url::parse(text).is_ok()) {
        Ok(text.to_owned())
    } else {
        Err("expected an https:// URL".into())
    }
}

/// CSP sources: words of URL characters only, so the flag cannot add other directives.
fn frame_ancestors(text: &str) -> Result<String, String> {
    let ok = !text.trim().is_empty()
        && text.split_whitespace().all(|source| {
            source
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ":/.-_*'".contains(c))
        });
    if ok {
        Ok(text.split_whitespace().collect::<Vec<_>>().join(" "))
    } else {
        Err("expected CSP sources such as https://shop.example or 'self' or 'none'".into())
    }
}

impl Default for Branding {
    fn default() -> Self {
        Branding {
            name: "Webhooks".into(),
            color: "#2454d6".into(),
            logo_url: String::new(),
            frame_ancestors: "'none'".into(),
        }
    }
}

/// The portal's routes.
pub fn routes() -> Router<WebState> {
    Router::new()
        .route("/assets/portal-theme.css", get(theme))
        .route("/portal/{link}", get(to_home))
        .route("/portal/{link}/", get(endpoints))
        .route("/portal/{link}/endpoints", post(create))
        .route("/portal/{link}/endpoints/new", get(new_form))
        .route("/portal/{link}/endpoints/{id}", get(endpoint))
        .route(
            "/portal/{link}/endpoints/{id}/edit",
            get(edit_form).post(edit),
        )
        .route("/portal/{link}/endpoints/{id}/enable", post(enable))
        .route("/portal/{link}/endpoints/{id}/disable", post(disable))
        .route("/portal/{link}/endpoints/{id}/rotate-secret", post(rotate))
        .route("/portal/{link}/endpoints/{id}/test", get(tested).post(test))
        .route("/portal/{link}/event-types", get(catalogue::event_types))
        .route("/portal/{link}/deliveries", get(deliveries))
        .route("/portal/{link}/deliveries/rows", get(delivery_rows))
        .route("/portal/{link}/events/{event_id}", get(event))
        .route("/portal/{link}/events/{event_id}/replay", post(replay))
        .route("/portal/{link}/{*rest}", get(no_such_page))
}

/// An address under a portal link that is no page of it: said in the portal's look, once the
/// link is known to be one.
async fn no_such_page(_holder: Holder) -> PageError {
    PageError::Status(tonic::Status::not_found(
        "There is no such page here. Use the links at the top of the page.",
    ))
}

/// The accent colour of the portal, from `--portal-color` (a stylesheet, since the CSP
/// admits no inline style).
async fn theme(State(state): State<WebState>) -> Response {
    (
        [
            (axum::http::header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (axum::http::header::CACHE_CONTROL, "public, max-age=300"),
        ],
        format!(":root {{ --accent: {}; }}\n", state.settings.portal.color),
    )
        .into_response()
}

/// A refusal in the portal's look: a shop sees the platform's name, the page's heading and
/// what it says, and neither Herald's name nor the operators' console sign-in.
#[derive(Template)]
#[template(path = "portal/error.html")]
struct ErrorPage {
    name: String,
    logo_url: String,
    title: String,
    message: String,
}

/// Shows the portal's refusals ([`PageError`]s: an expired link, a service's refusal) in the
/// portal's look instead of the console's, keeping their status and headers.
pub async fn branded_errors(
    request: axum::extract::Request,
    next: axum::middleware::Next,
    brand: Branding,
) -> Response {
    let mut response = next.run(request).await;
    let Some(shown) = response.extensions_mut().remove::<ShownError>() else {
        return response;
    };
    let page = ErrorPage {
        name: brand.name,
        logo_url: brand.logo_url,
        title: shown.title,
        message: shown.message,
    };
    match page.render() {
        Ok(html) => {
            let (parts, _) = response.into_parts();
            Response::from_parts(parts, axum::body::Body::from(html))
        }
        Err(err) => {
            tracing::error!(error = %err, "the portal's error page failed");
            response
        }
    }
}

/// The holder of a portal link.
pub struct Holder {
    /// The tenant, as the services know the holder.
    caller: Authorized,
    tenant: String,
    read_only: bool,
    /// `/portal/{link}`: where the portal's links start.
    base: String,
    brand: Branding,
}

impl FromRequestParts<WebState> for Holder {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, state: &WebState) -> Result<Self, PageError> {
        let token = parts
            .uri
            .path()
            .strip_prefix("/portal/")
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_default();
        let grant = match state.services.portal.open_link(token).await {
            Ok(link) => link.grant,
            Err(LinkRefusal::Token(TokenError::Expired)) => {
                return Err(PageError::Link {
                    message: "This link has expired. Open the webhooks page again from where \
                              you found this link to get a new one.",
                });
            }
            Err(LinkRefusal::Ended) => {
                return Err(PageError::Link {
                    message: "This link no longer works: its links were withdrawn. Open the \
                              webhooks page again from where you found this link to get a \
                              new one.",
                });
            }
            Err(LinkRefusal::Token(_)) => {
                return Err(PageError::Link {
                    message: "This link is not a valid webhooks link.",
                });
            }
            Err(LinkRefusal::Unchecked(err)) => {
                tracing::warn!(error = %err, "cannot tell whether a portal link was withdrawn");
                return Err(PageError::Status(tonic::Status::unavailable(
                    "this link cannot be checked right now; try again in a moment",
                )));
            }
        };
        if parts.method != Method::GET && parts.method != Method::HEAD {
            same_origin(&parts.headers, &parts.extensions)?;
            if grant.read_only {
                return Err(PageError::from(tonic::Status::permission_denied(
                    "this link may look, not change",
                )));
            }
        }
        let identity = Identity {
            name: format!("portal:{}", grant.tenant),
            role: if grant.read_only {
                Role::Read
            } else {
                Role::Admin
            },
            tenants: Scope::Only(BTreeSet::from([grant.tenant.clone()])),
            regions: Scope::All,
        };
        Ok(Holder {
            caller: Authorized(Some(Arc::new(identity))),
            base: format!("/portal/{token}"),
            tenant: grant.tenant,
            read_only: grant.read_only,
            brand: state.settings.portal.clone(),
        })
    }
}

/// A change posted in the portal: the holder (who may change) and the form.
pub struct Change {
    holder: Holder,
    form: FormData,
}

impl FromRequest<WebState> for Change {
    type Rejection = PageError;

    async fn from_request(request: Request, state: &WebState) -> Result<Self, PageError> {
        let (mut parts, body) = request.into_parts();
        let holder = Holder::from_request_parts(&mut parts, state).await?;
        let form = read_form(Request::from_parts(parts, body), state).await?;
        Ok(Change { holder, form })
    }
}

/// What the header of every portal page shows.
pub struct Frame {
    name: String,
    logo_url: String,
    tenant: String,
    read_only: bool,
    base: String,
    section: &'static str,
}

impl Holder {
    fn frame(&self, section: &'static str) -> Frame {
        Frame {
            name: self.brand.name.clone(),
            logo_url: self.brand.logo_url.clone(),
            tenant: self.tenant.clone(),
            read_only: self.read_only,
            base: self.base.clone(),
            section,
        }
    }
}

async fn to_home(holder: Holder) -> Redirect {
    Redirect::to(&format!("{}/", holder.base))
}

#[derive(Template)]
#[template(path = "portal/endpoints.html")]
struct EndpointsPage {
    frame: Frame,
    rows: Vec<SubscriptionRow>,
    next_page: String,
    /// Whether this is a later page than the first.
    later: bool,
    note: String,
}

#[derive(Deserialize)]
struct PageQuery {
    #[serde(default)]
    page_token: String,
    #[serde(default)]
    done: String,
}

async fn endpoints(
    State(state): State<WebState>,
    holder: Holder,
    Query(query): Query<PageQuery>,
) -> Result<Response, PageError> {
    let later = !query.page_token.is_empty();
    let page = state
        .services
        .subscriptions
        .list_subscriptions(holder.caller.request(pb::ListSubscriptionsRequest {
            tenant: holder.tenant.clone(),
            page_size: 100,
            page_token: query.page_token,
        }))
        .await?
        .into_inner();
    let next_page = if page.next_page_token.is_empty() {
        String::new()
    } else {
        format!(
            "{}/?page_token={}",
            holder.base,
            query_value(&page.next_page_token)
        )
    };
    Ok(render(&EndpointsPage {
        frame: holder.frame("endpoints"),
        rows: page
            .subscriptions
            .iter()
            .map(SubscriptionRow::from)
            .collect(),
        next_page,
        later,
        note: if query.done == "deleted" {
            "Endpoint removed.".into()
        } else {
            String::new()
        },
    }))
}

#[derive(Template)]
#[template(path = "portal/endpoint_form.html")]
struct FormPage {
    frame: Frame,
    id: Option<String>,
    form: SubscriptionForm,
    choices: Vec<Choice>,
    other_patterns: String,
    /// Patterns may be typed while the catalogue is empty, and shown (and kept, or changed)
    /// where the endpoint has some already, such as `order.*`.
    free_patterns: bool,
    error: String,
}

async fn form_page(
    state: &WebState,
    holder: &Holder,
    id: Option<String>,
    form: SubscriptionForm,
    error: String,
) -> Result<Response, PageError> {
    let (choices, other_patterns) = choices(state, &form).await?;
    Ok(render_with(
        form_status(&error),
        &FormPage {
            frame: holder.frame("endpoints"),
            id,
            free_patterns: choices.is_empty() || !other_patterns.is_empty(),
            form,
            choices,
            other_patterns,
            error,
        },
    ))
}

async fn new_form(State(state): State<WebState>, holder: Holder) -> Result<Response, PageError> {
    if holder.read_only {
        return Err(tonic::Status::permission_denied("this link may look, not change").into());
    }
    let form = SubscriptionForm {
        format: "json".into(),
        envelope: "standard".into(),
        create_key: herald_core::ids::new_form_key(),
        ..Default::default()
    };
    form_page(&state, &holder, None, form, String::new()).await
}

/// Whether a refusal is about what the form says.
fn is_form_error(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition
    )
}

/// The fields of `sub` a tenant sets through the portal's form; everything else as a new
/// subscription has it by default.
fn portal_fields(sub: pb::Subscription) -> pb::Subscription {
    pb::Subscription {
        tenant: sub.tenant,
        url: sub.url,
        event_types: sub.event_types,
        payload_filter: sub.payload_filter,
        format: sub.format,
        envelope: sub.envelope,
        headers: sub.headers,
        description: sub.description,
        ..Default::default()
    }
}

async fn create(
    State(state): State<WebState>,
    Change { holder, form }: Change,
) -> Result<Response, PageError> {
    let mut form = SubscriptionForm::from_form(&form);
    // The link's tenant, whatever the form says; the platform's catalogue decides the types.
    form.tenant = holder.tenant.clone();
    form.allow_unregistered = false;
    // Only what the portal's form shows (as an edit keeps): the rest (egress, regions, limits,
    // retries, OAuth2, client certificates) is the platform's to set, never its tenant's.
    let subscription = match form.to_wire(String::new()).and_then(offered) {
        Ok(sub) => portal_fields(sub),
        Err(err) => return form_page(&state, &holder, None, form, err.text()).await,
    };
    let request = holder.caller.request(pb::CreateSubscriptionRequest {
        subscription: Some(subscription),
        allow_unregistered: false,
        idempotency_key: form.create_key.clone(),
    });
    match state
        .services
        .subscriptions
        .create_subscription(request)
        .await
    {
        Ok(created) => Ok(Redirect::to(&format!(
            "{}/endpoints/{}?show_secrets=true&done=created",
            holder.base,
            created.get_ref().id
        ))
        .into_response()),
        Err(status) if is_form_error(&status) => {
            form_page(&state, &holder, None, form, shop_refusal(&status)).await
        }
        Err(status) => match form.key_refusal(&status) {
            Some(said) => form_page(&state, &holder, None, form, said).await,
            None => Err(status.into()),
        },
    }
}

/// `sub` if it asks only for event types the portal offers: `herald.*` are the platform's own
/// events, which no tenant's endpoint receives.
fn offered(sub: pb::Subscription) -> Result<pb::Subscription, FieldError> {
    // Patterns that do not read (or too many, or twice) are said in the API's words; a
    // refusal of the API's for patterns that read is then one of the catalogue's
    // ([`shop_refusal`]).
    herald_core::event_type::EventFilter::parse(&sub.event_types)
        .map_err(|err| FieldError::new("event_types", err.reason))?;
    match sub
        .event_types
        .iter()
        .find(|t| herald_core::event_type::is_heralds_own(t))
    {
        Some(own) => Err(FieldError::new(
            "event_types",
            format!(
                "{own} names the platform's own events, which endpoints here do not receive: \
                 choose among the event types on the Event types page"
            ),
        )),
        None => Ok(sub),
    }
}

/// What a shop is told of a refused endpoint: the API's words, but for event types, which it
/// chooses from the platform's catalogue (the API's words speak of registering types). The
/// patterns were read already ([`offered`]): what the API refuses of them is the catalogue's.
fn shop_refusal(status: &tonic::Status) -> String {
    match FieldError::of_status(status) {
        Some(err) if err.field == "event_types" => FieldError::new(
            "event_types",
            "each must be an event type on the Event types page, or a pattern of them \
             such as order.*",
        )
        .text(),
        _ => refusal(status),
    }
}

#[derive(Deserialize)]
struct EndpointPath {
    #[allow(dead_code)]
    link: String,
    id: String,
}

#[derive(Template)]
#[template(path = "portal/endpoint.html")]
struct EndpointPage {
    frame: Frame,
    id: String,
    url: String,
    enabled: bool,
    disabled_reason: String,
    disabled_at: String,
    settings: Vec<Setting>,
    secrets: Vec<SecretView>,
    secrets_shown: bool,
    /// The receiver code's variables.
    receiver: receiver::Receiver,
    health: HealthView,
    chart: Chart,
    rows: Vec<AttemptRow>,
    base: String,
    note: String,
    /// The test-send card, unless the link may only look.
    test: Option<TestCard>,
}

#[derive(Deserialize)]
struct EndpointQuery {
    #[serde(default)]
    show_secrets: bool,
    #[serde(default)]
    done: String,
}

async fn endpoint(
    State(state): State<WebState>,
    holder: Holder,
    Path(path): Path<EndpointPath>,
    Query(query): Query<EndpointQuery>,
) -> Result<Response, PageError> {
    let show_secrets = query.show_secrets && !holder.read_only;
    let note = match query.done.as_str() {
        "created" => "Endpoint added. Use its signing secret to verify each request.",
        "updated" => "Saved.",
        "enabled" => "Enabled: deliveries resume.",
        "disabled" => "Disabled: deliveries wait until it is enabled again.",
        "rotated" => "A new secret signs from now on; the old one until its expiry.",
        _ => "",
    };
    endpoint_page(
        &state,
        &holder,
        path.id,
        show_secrets,
        note,
        Tested::default(),
    )
    .await
}

/// Sends a test event; the attempt made is shown at the test's own address ([`tested`]),
/// a test that could not be made at once on the endpoint's page.
async fn test(
    State(state): State<WebState>,
    Path(path): Path<EndpointPath>,
    Change { holder, form }: Change,
) -> Result<Response, PageError> {
    let page = format!("{}/endpoints/{}", holder.base, query_value(&path.id));
    match test_card::send_from_page(&state, &holder.caller, path.id.clone(), &form, &page).await? {
        Ok(shown) => Ok(shown),
        Err(not_made) => endpoint_page(&state, &holder, path.id, false, "", not_made).await,
    }
}

/// The endpoint's page with what the test the address names gave; without one, the page
/// itself.
async fn tested(
    State(state): State<WebState>,
    Path(path): Path<EndpointPath>,
    holder: Holder,
    Query(query): Query<test_card::TestedQuery>,
    uri: axum::http::Uri,
) -> Result<Response, PageError> {
    match test_card::tested(&state, &holder.caller, &path.id, &query).await {
        Some(tested) => endpoint_page(&state, &holder, path.id, false, "", tested).await,
        None => Ok(super::to_the_tested_page(uri).await),
    }
}

/// The endpoint's page, with `note` on top and what a test just sent gave.
async fn endpoint_page(
    state: &WebState,
    holder: &Holder,
    id: String,
    show_secrets: bool,
    note: &str,
    tested: Tested,
) -> Result<Response, PageError> {
    let endpoint = Endpoint::load(state, &holder.caller, id, show_secrets).await?;
    let sub = &endpoint.subscription;
    let test = if holder.read_only {
        None
    } else {
        let action = format!("{}/endpoints/{}/test#test-send", holder.base, sub.id);
        Some(TestCard::load(state, sub, action, String::new(), tested).await)
    };
    Ok(render(&EndpointPage {
        frame: holder.frame("endpoints"),
        id: sub.id.clone(),
        url: sub.url.clone(),
        enabled: sub.enabled,
        disabled_reason: sub.disabled_reason.clone(),
        disabled_at: when(sub.disabled_at.as_ref()),
        settings: views::tenant_settings(sub),
        secrets: views::secrets(sub),
        secrets_shown: show_secrets,
        receiver: receiver::Receiver::of(sub, !holder.read_only),
        health: endpoint.health,
        chart: endpoint.chart,
        rows: endpoint.rows,
        base: holder.base.clone(),
        note: note.to_owned(),
        test,
    }))
}

async fn edit_form(
    State(state): State<WebState>,
    holder: Holder,
    Path(path): Path<EndpointPath>,
) -> Result<Response, PageError> {
    if holder.read_only {
        return Err(tonic::Status::permission_denied("this link may look, not change").into());
    }
    let sub = state
        .services
        .subscriptions
        .get_subscription(holder.caller.request(pb::GetSubscriptionRequest {
            id: path.id.clone(),
            show_secrets: false,
        }))
        .await?
        .into_inner();
    form_page(
        &state,
        &holder,
        Some(path.id),
        SubscriptionForm::from_wire(&sub),
        String::new(),
    )
    .await
}

async fn edit(
    State(state): State<WebState>,
    Path(path): Path<EndpointPath>,
    Change { holder, form }: Change,
) -> Result<Response, PageError> {
    let id = path.id;
    let mut form = SubscriptionForm::from_form(&form);
    form.tenant = holder.tenant.clone();
    // What the portal's form does not show is kept as it is.
    let current = state
        .services
        .subscriptions
        .get_subscription(holder.caller.request(pb::GetSubscriptionRequest {
            id: id.clone(),
            show_secrets: false,
        }))
        .await?
        .into_inner();
    let wire = match (
        form.to_wire(id.clone()).and_then(offered),
        form.expected_revision(),
    ) {
        // The access tokens got with the platform's OAuth2 client go only to the origin the
        // platform gave them for; the portal cannot give the client secret again.
        (Ok(edited), Ok(_))
            if current.oauth2.is_some()
                && !crate::subscriptions::same_origin(&edited.url, &current.url) =>
        {
            let error = "This endpoint signs in to its receiver with the platform's OAuth2 \
                         client: only the platform can move it to another address (scheme, \
                         host or port). Keep the address, or add a new endpoint."
                .to_owned();
            return form_page(&state, &holder, Some(id), form, error).await;
        }
        (Ok(edited), Ok(revision)) => (
            pb::Subscription {
                url: edited.url,
                event_types: edited.event_types,
                payload_filter: edited.payload_filter,
                format: edited.format,
                envelope: edited.envelope,
                headers: edited.headers,
                description: edited.description,
                ..current
            },
            revision,
        ),
        (Err(err), _) | (_, Err(err)) => {
            return form_page(&state, &holder, Some(id), form, err.text()).await;
        }
    };
    let request = holder.caller.request(pb::UpdateSubscriptionRequest {
        subscription: Some(wire.0),
        expected_revision: wire.1,
        allow_unregistered: false,
    });
    match state
        .services
        .subscriptions
        .update_subscription(request)
        .await
    {
        Ok(_) => Ok(
            Redirect::to(&format!("{}/endpoints/{id}?done=updated", holder.base)).into_response(),
        ),
        Err(status) if is_form_error(&status) => {
            form_page(&state, &holder, Some(id), form, shop_refusal(&status)).await
        }
        Err(status) => Err(status.into()),
    }
}

async fn enable(
    State(state): State<WebState>,
    Path(path): Path<EndpointPath>,
    Change { holder, form }: Change,
) -> Result<Response, PageError> {
    enable_as(&state, &holder.caller, path.id.clone(), &form).await?;
    Ok(Redirect::to(&format!(
        "{}/endpoints/{}?done=enabled",
        holder.base, path.id
    ))
    .into_response())
}

async fn disable(
    State(state): State<WebState>,
    Path(path): Path<EndpointPath>,
    Change { holder, form }: Change,
) -> Result<Response, PageError> {
    disable_as(&state, &holder.caller, path.id.clone(), &form).await?;
    Ok(Redirect::to(&format!(
        "{}/endpoints/{}?done=disabled",
        holder.base, path.id
    ))
    .into_response())
}

async fn rotate(
    State(state): State<WebState>,
    Path(path): Path<EndpointPath>,
    Change { holder, form }: Change,
) -> Result<Response, PageError> {
    rotate_as(&state, &holder.caller, path.id.clone(), &form).await?;
    Ok(Redirect::to(&format!(
        "{}/endpoints/{}?show_secrets=true&done=rotated",
        holder.base, path.id
    ))
    .into_response())
}

#[derive(Template)]
#[template(path = "portal/deliveries.html")]
struct DeliveriesPage {
    frame: Frame,
    query: LogQuery,
    endpoints: Vec<(String, String, bool)>,
    outcomes: Vec<(&'static str, bool)>,
    rows: Vec<AttemptRow>,
    filters: String,
    /// The link to the newest page; empty on it.
    newest: String,
    /// The link to the next page; empty on the last.
    next_page: String,
    live: bool,
    base: String,
    /// The first column's heading.
    first_heading: &'static str,
    /// What the paging links call the rows.
    noun: &'static str,
    /// Why the filters were refused; empty when they were not.
    error: String,
}

/// The portal's log: the requests sent to the tenant's endpoints.
const PORTAL_LOG: LogWords = LogWords {
    first_heading: "Sent",
    noun: "requests",
};

/// The log query of a portal page: always the link's tenant.
fn tenant_query(holder: &Holder, mut query: LogQuery) -> LogQuery {
    query.tenant = holder.tenant.clone();
    query
}

/// Endpoints the sent-requests filter offers at most (a longer list is no use to pick from;
/// an endpoint past it can still be chosen from its own page).
const ENDPOINT_CHOICES: usize = 1000;

/// The link's endpoints to filter by, as (id, URL, whether `chosen`), read page by page; the
/// chosen one is offered even when it is past [`ENDPOINT_CHOICES`].
async fn endpoint_choices(
    state: &WebState,
    holder: &Holder,
    chosen: &str,
) -> Result<Vec<(String, String, bool)>, PageError> {
    let mut choices = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = state
            .services
            .subscriptions
            .list_subscriptions(holder.caller.request(pb::ListSubscriptionsRequest {
                tenant: holder.tenant.clone(),
                page_size: (ENDPOINT_CHOICES - choices.len()) as u32,
                page_token,
            }))
            .await?
            .into_inner();
        choices.extend(page.subscriptions.into_iter().map(|s| {
            let is_chosen = s.id == chosen;
            (s.id, s.url, is_chosen)
        }));
        page_token = page.next_page_token;
        if page_token.is_empty() || choices.len() >= ENDPOINT_CHOICES {
            break;
        }
    }
    if !chosen.is_empty() && !choices.iter().any(|(id, _, _)| id == chosen) {
        choices.push((chosen.to_owned(), chosen.to_owned(), true));
    }
    Ok(choices)
}

async fn deliveries(
    State(state): State<WebState>,
    holder: Holder,
    Query(query): Query<LogQuery>,
) -> Result<Response, PageError> {
    let query = tenant_query(&holder, query);
    let shown = shown_page(&state, &holder.caller, &query).await?;
    let endpoints = endpoint_choices(&state, &holder, &query.subscription_id).await?;
    let filters = query.query_string();
    Ok(render_with(
        shown.status(),
        &DeliveriesPage {
            frame: holder.frame("deliveries"),
            live: query.page_token.is_empty() && shown.refusal.is_empty(),
            newest: PORTAL_LOG.newest(&holder.base, &filters, &query.page_token),
            next_page: PORTAL_LOG.next_page(&holder.base, &filters, &shown.next_page_token),
            first_heading: PORTAL_LOG.first_heading,
            noun: PORTAL_LOG.noun,
            outcomes: outcome_choices(&query.outcome),
            endpoints,
            filters,
            query,
            rows: shown.rows,
            base: holder.base.clone(),
            error: shown.refusal,
        },
    ))
}

async fn delivery_rows(
    State(state): State<WebState>,
    holder: Holder,
    Query(query): Query<LogQuery>,
) -> Result<Response, PageError> {
    let query = tenant_query(&holder, query);
    let (rows, next_page_token) = page_of(&state, &holder.caller, &query).await?;
    Ok(render(&PORTAL_LOG.live_table(
        rows,
        &holder.base,
        &query.query_string(),
        &next_page_token,
    )))
}

#[derive(Deserialize)]
struct EventPath {
    #[allow(dead_code)]
    link: String,
    event_id: String,
}

#[derive(Template)]
#[template(path = "portal/event.html")]
struct EventPage {
    frame: Frame,
    event_id: String,
    attempts: Vec<EventAttempt>,
    /// Whether the log holds more attempts than those shown.
    more: bool,
    /// The sent requests filtered by this event.
    log: String,
    note: String,
}

async fn event(
    State(state): State<WebState>,
    holder: Holder,
    Path(path): Path<EventPath>,
    Query(query): Query<EventQuery>,
) -> Result<Response, PageError> {
    // The holder's identity is scoped to its tenant: another tenant's event has no attempts.
    let EventAttempts { attempts, more } =
        event_attempts(&state, &holder.caller, &path.event_id).await?;
    Ok(render(&EventPage {
        frame: holder.frame("deliveries"),
        log: format!(
            "{}/deliveries?event_id={}",
            holder.base,
            query_value(&path.event_id)
        ),
        event_id: path.event_id,
        attempts,
        more,
        note: query.note(),
    }))
}

async fn replay(
    State(state): State<WebState>,
    Path(path): Path<EventPath>,
    Change { holder, form }: Change,
) -> Result<Response, PageError> {
    let outcome = replay_as(
        &state,
        &holder.caller,
        path.event_id.clone(),
        form.text("subscription_id"),
    )
    .await?;
    Ok(Redirect::to(&format!(
        "{}/events/{}?{outcome}",
        holder.base,
        query_value(&path.event_id)
    ))
    .into_response())
}
