//! The console's subscription pages: the list with search, one subscription (its settings,
//! secrets, health and recent attempts, with the actions on it), and the create and edit
//! forms with every option.

use askama::Template;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::{get, post};
use herald_proto::v1 as pb;
use herald_proto::v1::deliveries_server::Deliveries as _;
use herald_proto::v1::subscriptions_server::Subscriptions as _;
use serde::Deserialize;

use super::{Chrome, after_change};
use crate::rest::Authorized;
use std::time::SystemTime;

use crate::web::WebState;
use crate::web::chart::{CHART_ATTEMPTS, Chart, RECENT_ROWS, chart};
use crate::web::form::{FormData, SubscriptionForm, refusal};
use crate::web::page::{PageError, form_status, query_value, render, render_with};
use crate::web::session::{Console, ConsoleChange};
use crate::web::test_card::{self, TestCard, Tested};
use crate::web::views::{self, AttemptRow, HealthView, SecretView, Setting, SubscriptionRow};

pub fn routes() -> Router<WebState> {
    Router::new()
        .route("/subscriptions", get(list).post(create))
        .route("/subscriptions/new", get(new_form))
        .route("/subscriptions/{id}", get(show))
        .route("/subscriptions/{id}/edit", get(edit_form).post(edit))
        .route("/subscriptions/{id}/enable", post(enable))
        .route("/subscriptions/{id}/disable", post(disable))
        .route("/subscriptions/{id}/rotate-secret", post(rotate))
        .route("/subscriptions/{id}/test", get(tested).post(test))
        .route("/subscriptions/{id}/delete", post(delete))
}

/// Most subscriptions a search reads through before it stops (and says so).
const SEARCH_LIMIT: usize = 10_000;
/// Rows a list page shows.
const PAGE_ROWS: usize = 100;

#[derive(Template)]
#[template(path = "console/subscriptions.html")]
struct ListPage {
    chrome: Chrome,
    q: String,
    tenant: String,
    rows: Vec<SubscriptionRow>,
    next_page: String,
    /// The first page of the same search, when this is a later one.
    first_page: String,
    note: String,
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    tenant: String,
    #[serde(default)]
    page_token: String,
    #[serde(default)]
    done: String,
}

async fn list(
    State(state): State<WebState>,
    console: Console,
    Query(query): Query<ListQuery>,
) -> Result<Response, PageError> {
    let q = query.q.trim().to_owned();
    let mut rows = Vec::new();
    let mut token = query.page_token.clone();
    let mut read = 0;
    // Without a search, one page; with one, pages until a page of matches is found.
    loop {
        let page = state
            .services
            .subscriptions
            .list_subscriptions(console.caller.request(pb::ListSubscriptionsRequest {
                tenant: query.tenant.trim().to_owned(),
                page_size: if q.is_empty() { PAGE_ROWS as u32 } else { 1000 },
                page_token: token,
            }))
            .await?
            .into_inner();
        read += page.subscriptions.len();
        rows.extend(
            page.subscriptions
                .iter()
                .map(SubscriptionRow::from)
                .filter(|row| q.is_empty() || row.matches(&q)),
        );
        token = page.next_page_token;
        if q.is_empty() || token.is_empty() || rows.len() >= PAGE_ROWS || read >= SEARCH_LIMIT {
            break;
        }
    }
    let next_page = if token.is_empty() {
        String::new()
    } else {
        format!(
            "/subscriptions?q={}&tenant={}&page_token={}",
            query_value(&q),
            query_value(&query.tenant),
            query_value(&token)
        )
    };
    let note = match query.done.as_str() {
        "deleted" => "Subscription deleted.".to_owned(),
        _ => String::new(),
    };
    let first_page = if query.page_token.is_empty() {
        String::new()
    } else {
        format!(
            "/subscriptions?q={}&tenant={}",
            query_value(&q),
            query_value(&query.tenant)
        )
    };
    Ok(render(&ListPage {
        chrome: Chrome::new(&console, "subscriptions"),
        first_page,
        q,
        tenant: query.tenant,
        rows,
        next_page,
        note,
    }))
}

/// An event type offered in the form.
pub struct Choice {
    pub name: String,
    pub description: String,
    pub checked: bool,
}

#[derive(Template)]
#[template(path = "console/subscription_form.html")]
struct FormPage {
    chrome: Chrome,
    /// `None` for a new subscription.
    id: Option<String>,
    form: SubscriptionForm,
    choices: Vec<Choice>,
    /// Chosen patterns that are not catalogue entries (`order.*`).
    other_patterns: String,
    /// Patterns may be typed beside the catalogue's types.
    free_patterns: bool,
    error: String,
}

/// The catalogue as choices, with those `form` chose ticked, and the patterns it chose
/// beyond them.
pub async fn choices(
    state: &WebState,
    form: &SubscriptionForm,
) -> Result<(Vec<Choice>, String), PageError> {
    let chosen = form.chosen_event_types();
    let catalogue = state.services.event_types.catalogue().await?;
    // Deprecated types are offered only to endpoints that have them already.
    let choices: Vec<Choice> = catalogue
        .iter()
        .filter(|t| !t.built_in && (!t.deprecated || chosen.contains(&t.name)))
        .map(|t| Choice {
            checked: chosen.contains(&t.name),
            name: t.name.clone(),
            description: if t.deprecated {
                format!("(deprecated) {}", t.description)
            } else {
                t.description.clone()
            },
        })
        .collect();
    let other = chosen
        .iter()
        .filter(|c| !choices.iter().any(|choice| &choice.name == *c))
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    Ok((choices, other))
}

async fn form_page(
    state: &WebState,
    console: &Console,
    id: Option<String>,
    form: SubscriptionForm,
    error: String,
) -> Result<Response, PageError> {
    let (choices, other_patterns) = choices(state, &form).await?;
    Ok(render_with(
        form_status(&error),
        &FormPage {
            chrome: Chrome::new(console, "subscriptions"),
            id,
            form,
            choices,
            other_patterns,
            free_patterns: true,
            error,
        },
    ))
}

async fn new_form(State(state): State<WebState>, console: Console) -> Result<Response, PageError> {
    console.may_change()?;
    let form = SubscriptionForm {
        format: "json".into(),
        envelope: "standard".into(),
        signature: "v1".into(),
        create_key: herald_core::ids::new_form_key(),
        ..Default::default()
    };
    form_page(&state, &console, None, form, String::new()).await
}

async fn create(
    State(state): State<WebState>,
    ConsoleChange { console, form }: ConsoleChange,
) -> Result<Response, PageError> {
    let mut form = SubscriptionForm::from_form(&form);
    let subscription = match form.to_wire(String::new()) {
        Ok(sub) => sub,
        Err(err) => return form_page(&state, &console, None, form, err.text()).await,
    };
    let request = console.caller.request(pb::CreateSubscriptionRequest {
        subscription: Some(subscription),
        allow_unregistered: form.allow_unregistered,
        idempotency_key: form.create_key.clone(),
    });
    match state
        .services
        .subscriptions
        .create_subscription(request)
        .await
    {
        Ok(created) => Ok(after_change(
            &format!("/subscriptions/{}?show_secrets=true", created.get_ref().id),
            "created",
        )),
        Err(status) if is_form_error(&status) => {
            form_page(&state, &console, None, form, refusal(&status)).await
        }
        Err(status) => match form.key_refusal(&status) {
            Some(said) => form_page(&state, &console, None, form, said).await,
            None => Err(status.into()),
        },
    }
}

/// Whether a refusal is about what the form says (shown on the form) rather than the
/// request as a whole (shown as an error page).
fn is_form_error(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::InvalidArgument
            | tonic::Code::FailedPrecondition
            | tonic::Code::PermissionDenied
    )
}

/// What a subscription's page shows beyond its settings, read for the caller: its health,
/// the chart of its newest attempts and the most recent of them. Shared with the portal.
pub struct Endpoint {
    /// The subscription (secrets as asked and allowed).
    pub subscription: pb::Subscription,
    /// Its health.
    pub health: HealthView,
    /// Success rate and latency per hour.
    pub chart: Chart,
    /// Its newest attempts.
    pub rows: Vec<AttemptRow>,
}

impl Endpoint {
    /// Reads subscription `id` as `caller` may see it.
    pub async fn load(
        state: &WebState,
        caller: &Authorized,
        id: String,
        show_secrets: bool,
    ) -> Result<Self, PageError> {
        let services = &state.services;
        let subscription = services
            .subscriptions
            .get_subscription(caller.request(pb::GetSubscriptionRequest {
                id: id.clone(),
                show_secrets,
            }))
            .await?
            .into_inner();
        let health = services
            .subscriptions
            .get_subscription_health(
                caller.request(pb::GetSubscriptionHealthRequest { id: id.clone() }),
            )
            .await?
            .into_inner();
        let attempts = services
            .deliveries
            .list_attempts(caller.request(pb::ListAttemptsRequest {
                filter: Some(pb::AttemptFilter {
                    subscription_id: id,
                    ..Default::default()
                }),
                page_size: CHART_ATTEMPTS,
                page_token: String::new(),
            }))
            .await?
            .into_inner()
            .attempts;
        Ok(Endpoint {
            subscription,
            health: HealthView::from(&health),
            chart: chart(&attempts, SystemTime::now()),
            rows: attempts
                .iter()
                .take(RECENT_ROWS)
                .map(AttemptRow::from)
                .collect(),
        })
    }
}

#[derive(Template)]
#[template(path = "console/subscription.html")]
struct ShowPage {
    chrome: Chrome,
    id: String,
    enabled: bool,
    disabled_reason: String,
    disabled_at: String,
    revision: i64,
    settings: Vec<Setting>,
    secrets: Vec<SecretView>,
    secrets_shown: bool,
    health: HealthView,
    /// Success rate and latency per hour.
    chart: Chart,
    /// The recent attempts.
    rows: Vec<AttemptRow>,
    /// Where links in the rows start (the console's root).
    base: &'static str,
    note: String,
    /// The test-send card, for those who may send.
    test: Option<TestCard>,
}

#[derive(Deserialize)]
struct ShowQuery {
    #[serde(default)]
    show_secrets: bool,
    #[serde(default)]
    done: String,
}

async fn show(
    State(state): State<WebState>,
    console: Console,
    Path(id): Path<String>,
    Query(query): Query<ShowQuery>,
) -> Result<Response, PageError> {
    let note = match query.done.as_str() {
        "created" => "Subscription created. Give its signing secret to the receiver.",
        "updated" => "Saved.",
        "enabled" => "Enabled: deliveries resume.",
        "disabled" => "Disabled: deliveries are parked until it is enabled.",
        "rotated" => "A new secret signs from now on; the old one until its expiry.",
        _ => "",
    };
    show_page(
        &state,
        &console,
        id,
        query.show_secrets,
        note,
        Tested::default(),
    )
    .await
}

/// Sends a test event; the attempt made is shown at the test's own address ([`tested`]),
/// a test that could not be made at once on the subscription's page.
async fn test(
    State(state): State<WebState>,
    Path(id): Path<String>,
    ConsoleChange { console, form }: ConsoleChange,
) -> Result<Response, PageError> {
    let page = format!("/subscriptions/{}", query_value(&id));
    match test_card::send_from_page(&state, &console.caller, id.clone(), &form, &page).await? {
        Ok(shown) => Ok(shown),
        Err(not_made) => show_page(&state, &console, id, false, "", not_made).await,
    }
}

/// The subscription's page with what the test the address names gave; without one (a test
/// send's address reloaded from before, typed in), the page itself.
async fn tested(
    State(state): State<WebState>,
    Path(id): Path<String>,
    console: Console,
    Query(query): Query<test_card::TestedQuery>,
    uri: axum::http::Uri,
) -> Result<Response, PageError> {
    match test_card::tested(&state, &console.caller, &id, &query).await {
        Some(tested) => show_page(&state, &console, id, false, "", tested).await,
        None => Ok(crate::web::to_the_tested_page(uri).await),
    }
}

/// The subscription's page, with `note` on top and what a test just sent gave.
async fn show_page(
    state: &WebState,
    console: &Console,
    id: String,
    show_secrets: bool,
    note: &str,
    tested: Tested,
) -> Result<Response, PageError> {
    let endpoint = Endpoint::load(state, &console.caller, id, show_secrets).await?;
    let sub = &endpoint.subscription;
    let test = if console.admin {
        let action = format!("/subscriptions/{}/test#test-send", sub.id);
        let csrf = console.csrf.clone();
        Some(TestCard::load(state, sub, action, csrf, tested).await)
    } else {
        None
    };
    Ok(render(&ShowPage {
        chrome: Chrome::new(console, "subscriptions"),
        id: sub.id.clone(),
        enabled: sub.enabled,
        disabled_reason: sub.disabled_reason.clone(),
        disabled_at: crate::web::page::when(sub.disabled_at.as_ref()),
        revision: sub.revision,
        settings: views::settings(sub),
        secrets: views::secrets(sub),
        secrets_shown: show_secrets,
        health: endpoint.health,
        chart: endpoint.chart,
        rows: endpoint.rows,
        base: "",
        note: note.to_owned(),
        test,
    }))
}

async fn edit_form(
    State(state): State<WebState>,
    console: Console,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    console.may_change()?;
    let sub = state
        .services
        .subscriptions
        .get_subscription(console.caller.request(pb::GetSubscriptionRequest {
            id: id.clone(),
            show_secrets: false,
        }))
        .await?
        .into_inner();
    form_page(
        &state,
        &console,
        Some(id),
        SubscriptionForm::from_wire(&sub),
        String::new(),
    )
    .await
}

async fn edit(
    State(state): State<WebState>,
    Path(id): Path<String>,
    ConsoleChange { console, form }: ConsoleChange,
) -> Result<Response, PageError> {
    let form = SubscriptionForm::from_form(&form);
    let request = match (form.to_wire(id.clone()), form.expected_revision()) {
        (Ok(subscription), Ok(expected_revision)) => {
            console.caller.request(pb::UpdateSubscriptionRequest {
                subscription: Some(subscription),
                expected_revision,
                allow_unregistered: form.allow_unregistered,
            })
        }
        (Err(err), _) | (_, Err(err)) => {
            return form_page(&state, &console, Some(id), form, err.text()).await;
        }
    };
    match state
        .services
        .subscriptions
        .update_subscription(request)
        .await
    {
        Ok(_) => Ok(after_change(&format!("/subscriptions/{id}"), "updated")),
        Err(status) if is_form_error(&status) => {
            let message = if status.code() == tonic::Code::FailedPrecondition {
                format!(
                    "{} Someone changed it since you opened this form: reload it to see \
                     their change.",
                    status.message()
                )
            } else {
                refusal(&status)
            };
            form_page(&state, &console, Some(id), form, message).await
        }
        Err(status) => Err(status.into()),
    }
}

/// Enables `id` as the form asks; shared with the portal.
pub async fn enable_as(
    state: &WebState,
    caller: &Authorized,
    id: String,
    form: &FormData,
) -> Result<(), PageError> {
    state
        .services
        .subscriptions
        .enable_subscription(caller.request(pb::EnableSubscriptionRequest {
            id,
            replay_parked: form.checked("replay_parked"),
        }))
        .await?;
    Ok(())
}

/// Disables `id` as the form asks; shared with the portal.
pub async fn disable_as(
    state: &WebState,
    caller: &Authorized,
    id: String,
    form: &FormData,
) -> Result<(), PageError> {
    state
        .services
        .subscriptions
        .disable_subscription(caller.request(pb::DisableSubscriptionRequest {
            id,
            reason: form.text("reason"),
        }))
        .await?;
    Ok(())
}

/// Rotates the secret of `id` as the form asks; shared with the portal.
pub async fn rotate_as(
    state: &WebState,
    caller: &Authorized,
    id: String,
    form: &FormData,
) -> Result<(), PageError> {
    let grace = match form.text("grace").as_str() {
        "" => None,
        text => Some(herald_proto::convert::duration(
            herald_core::duration::parse(text).map_err(|reason| {
                herald_proto::convert::invalid_argument(herald_core::ValidationError::new(
                    "grace", reason,
                ))
            })?,
        )),
    };
    state
        .services
        .subscriptions
        .rotate_secret(caller.request(pb::RotateSecretRequest { id, grace }))
        .await?;
    Ok(())
}

async fn enable(
    State(state): State<WebState>,
    Path(id): Path<String>,
    ConsoleChange { console, form }: ConsoleChange,
) -> Result<Response, PageError> {
    enable_as(&state, &console.caller, id.clone(), &form).await?;
    Ok(after_change(&format!("/subscriptions/{id}"), "enabled"))
}

async fn disable(
    State(state): State<WebState>,
    Path(id): Path<String>,
    ConsoleChange { console, form }: ConsoleChange,
) -> Result<Response, PageError> {
    disable_as(&state, &console.caller, id.clone(), &form).await?;
    Ok(after_change(&format!("/subscriptions/{id}"), "disabled"))
}

async fn rotate(
    State(state): State<WebState>,
    Path(id): Path<String>,
    ConsoleChange { console, form }: ConsoleChange,
) -> Result<Response, PageError> {
    rotate_as(&state, &console.caller, id.clone(), &form).await?;
    Ok(after_change(
        &format!("/subscriptions/{id}?show_secrets=true"),
        "rotated",
    ))
}

async fn delete(
    State(state): State<WebState>,
    Path(id): Path<String>,
    ConsoleChange { console, form }: ConsoleChange,
) -> Result<Response, PageError> {
    // The box the page asks to tick: a deletion cannot be undone.
    if !form.checked("confirm") {
        return Err(tonic::Status::failed_precondition(
            "tick the box to confirm the deletion: it cannot be undone",
        )
        .into());
    }
    let expected_revision = form.text("revision").parse().unwrap_or(0);
    state
        .services
        .subscriptions
        .delete_subscription(console.caller.request(pb::DeleteSubscriptionRequest {
            id,
            expected_revision,
        }))
        .await?;
    Ok(after_change("/subscriptions", "deleted"))
}
