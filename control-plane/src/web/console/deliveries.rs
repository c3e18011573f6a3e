//! The console's delivery log: attempts with filters, updated live while the first page is
//! shown; one event's attempts in full (status, error, response excerpt, timing), and replay.

use askama::Template;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::{get, post};
use herald_core::validate::quoted;
use herald_proto::v1 as pb;
use herald_proto::v1::deliveries_server::Deliveries as _;
use herald_proto::v1::subscriptions_server::Subscriptions as _;
use serde::Deserialize;

use axum::response::IntoResponse as _;

use super::Chrome;
use crate::rest::Authorized;
use crate::web::WebState;
use crate::web::page::{PageError, query_value, render, render_with};
use crate::web::session::{Console, ConsoleChange};
use crate::web::views::{AttemptRow, EventAttempt, SentBody, sent_headers};

pub fn routes() -> Router<WebState> {
    Router::new()
        .route("/deliveries", get(log))
        .route("/deliveries/rows", get(rows))
        .route("/events/{event_id}", get(event))
        .route("/events/{event_id}/replay", post(replay))
}

/// Attempts a page shows.
const PAGE_ROWS: u32 = 50;

/// The log's filters, as the page's form sends them.
#[derive(Debug, Default, Deserialize)]
pub struct LogQuery {
    #[serde(default)]
    pub subscription_id: String,
    #[serde(default)]
    pub tenant: String,
    #[serde(default)]
    pub event_id: String,
    #[serde(default)]
    pub outcome: String,
    /// `1h` (that long ago) or an RFC 3339 time.
    #[serde(default)]
    pub since: String,
    /// An event type or pattern.
    #[serde(default)]
    pub event_type: String,
    /// An HTTP status or class (`5xx`).
    #[serde(default)]
    pub status: String,
    /// An error kind.
    #[serde(default)]
    pub error_kind: String,
    #[serde(default)]
    pub page_token: String,
}

impl LogQuery {
    /// The filter, or why it does not read.
    pub fn filter(&self) -> Result<pb::AttemptFilter, tonic::Status> {
        let outcome = match self.outcome.as_str() {
            "" => pb::Outcome::Unspecified,
            word => herald_proto::words::parse_outcome(word).ok_or_else(|| {
                tonic::Status::invalid_argument(format!(
                    "outcome: {} is not an outcome",
                    quoted(word)
                ))
            })?,
        };
        let since = match self.since.trim() {
            "" => None,
            text => Some(herald_proto::convert::timestamp(since(text)?)),
        };
        Ok(pb::AttemptFilter {
            subscription_id: self.subscription_id.trim().to_owned(),
            tenant: self.tenant.trim().to_owned(),
            event_id: self.event_id.trim().to_owned(),
            outcome: outcome as i32,
            since,
            until: None,
            event_type: self.event_type.trim().to_owned(),
            status: self.status.trim().to_owned(),
            error_kind: self.error_kind.trim().to_owned(),
        })
    }

    /// The query string of these filters (without the page).
    pub fn query_string(&self) -> String {
        format!(
            "subscription_id={}&tenant={}&event_id={}&outcome={}&since={}&event_type={}&status={}&error_kind={}",
            query_value(&self.subscription_id),
            query_value(&self.tenant),
            query_value(&self.event_id),
            query_value(&self.outcome),
            query_value(&self.since),
            query_value(&self.event_type),
            query_value(&self.status),
            query_value(&self.error_kind)
        )
    }
}

/// The outcomes a log can be filtered by, each with whether it is `chosen`.
pub fn outcome_choices(chosen: &str) -> Vec<(&'static str, bool)> {
    ["delivered", "retrying", "failed", "skipped"]
        .into_iter()
        .map(|word| (word, chosen == word))
        .collect()
}

/// `1h` (that long ago) or an RFC 3339 time ([`herald_core::time_text`]).
fn since(text: &str) -> Result<std::time::SystemTime, tonic::Status> {
    use herald_core::time_text::{self, TimeTextError};
    time_text::ago_or_time(text, std::time::SystemTime::now()).map_err(|err| {
        tonic::Status::invalid_argument(match err {
            TimeTextError::Unreadable => format!(
                "since: {} is neither a duration (1h) nor a time (2026-01-02T15:04:05Z)",
                quoted(text)
            ),
            TimeTextError::OutOfRange => format!("since: {} {err}", quoted(text)),
        })
    })
}

/// A page of the log for `caller`: its rows and the link to the next page's query.
pub async fn page_of(
    state: &WebState,
    caller: &Authorized,
    query: &LogQuery,
) -> Result<(Vec<AttemptRow>, String), PageError> {
    let page = state
        .services
        .deliveries
        .list_attempts(caller.request(pb::ListAttemptsRequest {
            filter: Some(query.filter()?),
            page_size: PAGE_ROWS,
            page_token: query.page_token.clone(),
        }))
        .await?
        .into_inner();
    Ok((
        page.attempts.iter().map(AttemptRow::from).collect(),
        page.next_page_token,
    ))
}

/// What a log page shows: a page of rows, or why its filters do not read (shown above the
/// form that holds them, so they can be corrected).
pub struct Shown {
    /// The rows.
    pub rows: Vec<AttemptRow>,
    /// The next page's token; empty on the last page.
    pub next_page_token: String,
    /// Why the filters were refused; empty when they were not.
    pub refusal: String,
}

impl Shown {
    /// The page's HTTP status: 400 for filters refused.
    pub fn status(&self) -> axum::http::StatusCode {
        crate::web::page::form_status(&self.refusal)
    }
}

/// [`page_of`], with filters refused as the page's refusal rather than an error page.
pub async fn shown_page(
    state: &WebState,
    caller: &Authorized,
    query: &LogQuery,
) -> Result<Shown, PageError> {
    match page_of(state, caller, query).await {
        Ok((rows, next_page_token)) => Ok(Shown {
            rows,
            next_page_token,
            refusal: String::new(),
        }),
        Err(PageError::Status(status)) if status.code() == tonic::Code::InvalidArgument => {
            Ok(Shown {
                rows: Vec::new(),
                next_page_token: String::new(),
                refusal: status.message().to_owned(),
            })
        }
        Err(err) => Err(err),
    }
}

#[derive(Template)]
#[template(path = "console/deliveries.html")]
struct LogPage {
    chrome: Chrome,
    query: LogQuery,
    rows: Vec<AttemptRow>,
    /// The query string of the filters, for the live rows and the next page.
    filters: String,
    /// The link to the newest page; empty on it.
    newest: String,
    /// The link to the next page; empty on the last.
    next_page: String,
    /// Whether the rows refresh themselves (the first page only).
    live: bool,
    /// The outcomes to filter by, and whether each is the one chosen.
    outcomes: Vec<(&'static str, bool)>,
    /// Where links in the rows start (the console's root).
    base: &'static str,
    /// The first column's heading.
    first_heading: &'static str,
    /// What the paging links call the rows.
    noun: &'static str,
    /// Why the filters were refused; empty when they were not.
    error: String,
}

async fn log(
    State(state): State<WebState>,
    console: Console,
    Query(query): Query<LogQuery>,
) -> Result<Response, PageError> {
    let shown = shown_page(&state, &console.caller, &query).await?;
    let filters = query.query_string();
    Ok(render_with(
        shown.status(),
        &LogPage {
            chrome: Chrome::new(&console, "deliveries"),
            live: query.page_token.is_empty() && shown.refusal.is_empty(),
            outcomes: outcome_choices(&query.outcome),
            base: "",
            first_heading: CONSOLE_LOG.first_heading,
            noun: CONSOLE_LOG.noun,
            newest: CONSOLE_LOG.newest("", &filters, &query.page_token),
            next_page: CONSOLE_LOG.next_page("", &filters, &shown.next_page_token),
            filters,
            query,
            rows: shown.rows,
            error: shown.refusal,
        },
    ))
}

/// What a log's table is called where it is shown: the console's attempts, the portal's
/// requests.
pub struct LogWords {
    /// The first column's heading.
    pub first_heading: &'static str,
    /// What the paging links call the rows.
    pub noun: &'static str,
}

/// The console's log.
const CONSOLE_LOG: LogWords = LogWords {
    first_heading: "Started",
    noun: "attempts",
};

impl LogWords {
    /// The link to the log's newest page under `base`, when `page_token` is of a later page.
    pub fn newest(&self, base: &str, filters: &str, page_token: &str) -> String {
        if page_token.is_empty() {
            String::new()
        } else {
            format!("{base}/deliveries?{filters}")
        }
    }

    /// The link to the page `next_page_token` starts, under `base`; empty on the last page.
    pub fn next_page(&self, base: &str, filters: &str, next_page_token: &str) -> String {
        if next_page_token.is_empty() {
            String::new()
        } else {
            format!(
                "{base}/deliveries?{filters}&page_token={}",
                query_value(next_page_token)
            )
        }
    }

    /// The first page's table alone, with the link to the page after it: the live update.
    pub fn live_table(
        &self,
        rows: Vec<AttemptRow>,
        base: &str,
        filters: &str,
        next_page_token: &str,
    ) -> LogTable {
        LogTable {
            rows,
            base: base.to_owned(),
            first_heading: self.first_heading,
            noun: self.noun,
            newest: String::new(),
            next_page: self.next_page(base, filters, next_page_token),
        }
    }
}

/// The log's table and its paging links alone (the live update, swapped whole so that "Older"
/// continues from the rows shown); shared with the portal.
#[derive(Template)]
#[template(path = "console/log_table.html")]
pub struct LogTable {
    /// The attempts.
    rows: Vec<AttemptRow>,
    /// Where links in the rows start.
    base: String,
    /// The first column's heading.
    first_heading: &'static str,
    /// What the paging links call the rows.
    noun: &'static str,
    /// The link to the newest page; empty on it.
    newest: String,
    /// The link to the next page; empty on the last.
    next_page: String,
}

/// The first page's table alone, for the live update.
async fn rows(
    State(state): State<WebState>,
    console: Console,
    Query(query): Query<LogQuery>,
) -> Result<Response, PageError> {
    let (rows, next_page_token) = page_of(&state, &console.caller, &query).await?;
    Ok(render(&CONSOLE_LOG.live_table(
        rows,
        "",
        &query.query_string(),
        &next_page_token,
    )))
}

#[derive(Template)]
#[template(path = "console/event.html")]
struct EventPage {
    chrome: Chrome,
    event_id: String,
    attempts: Vec<EventAttempt>,
    /// Whether the log holds more attempts than those shown.
    more: bool,
    /// The log filtered by this event.
    log: String,
    note: String,
}

/// What an event's page is told after a replay (`done=replayed&queued=N&parked=P&missed=M`).
#[derive(Deserialize)]
pub struct EventQuery {
    #[serde(default)]
    done: String,
    #[serde(default)]
    queued: u32,
    #[serde(default)]
    parked: u32,
    #[serde(default)]
    missed: u32,
}

impl EventQuery {
    /// What the page says after a replay; no text comes from the link itself.
    pub fn note(&self) -> String {
        if self.done != "replayed" {
            return String::new();
        }
        let deliveries = if self.queued == 1 {
            "delivery"
        } else {
            "deliveries"
        };
        let mut note = format!("Replay: {} {deliveries} queued again.", self.queued);
        if self.parked > 0 {
            note.push_str(&format!(
                " {} of them wait parked: their subscription is disabled, and they go out when \
                 it is enabled with the parked deliveries sent (otherwise they are skipped).",
                self.parked
            ));
        }
        if self.missed > 0 {
            note.push_str(&format!(
                " {} could not be (their agent is gone or no longer holds the event).",
                self.missed
            ));
        }
        note
    }
}

/// Attempts an event's page shows in full at most; the rest are in the log, filtered by the
/// event (an event sent to hundreds of endpoints, each retried, has thousands).
const EVENT_ATTEMPTS: u32 = 200;

/// An event's attempts as its page shows them.
pub struct EventAttempts {
    /// The first [`EVENT_ATTEMPTS`] (or fewer) the log lists, with the headers each request
    /// carried.
    pub attempts: Vec<EventAttempt>,
    /// Whether the log holds more than these.
    pub more: bool,
}

/// The attempts of `event_id` that `caller` may see (the first [`EVENT_ATTEMPTS`]), each with
/// the headers its request carried; `NOT_FOUND` when there is none.
pub async fn event_attempts(
    state: &WebState,
    caller: &Authorized,
    event_id: &str,
) -> Result<EventAttempts, PageError> {
    let page = state
        .services
        .deliveries
        .list_attempts(caller.request(pb::ListAttemptsRequest {
            filter: Some(pb::AttemptFilter {
                event_id: event_id.to_owned(),
                ..Default::default()
            }),
            page_size: EVENT_ATTEMPTS,
            page_token: String::new(),
        }))
        .await?
        .into_inner();
    let attempts = page.attempts;
    if attempts.is_empty() {
        return Err(tonic::Status::not_found(format!("no attempts of event {event_id}")).into());
    }
    // The subscriptions the event went to (one each; a deleted one is simply not found).
    let mut subscriptions = std::collections::HashMap::new();
    for attempt in &attempts {
        if subscriptions.contains_key(&attempt.subscription_id) {
            continue;
        }
        let found = state
            .services
            .subscriptions
            .get_subscription(caller.request(pb::GetSubscriptionRequest {
                id: attempt.subscription_id.clone(),
                show_secrets: false,
            }))
            .await
            .ok()
            .map(tonic::Response::into_inner);
        subscriptions.insert(attempt.subscription_id.clone(), found);
    }
    // The bodies sent, one per subscription, as far as the log keeps them (none while its
    // --log-body-limit is 0: NOT_FOUND then, and the page shows none).
    let bodies: std::collections::HashMap<String, SentBody> = state
        .services
        .deliveries
        .get_sent_requests(caller.request(pb::GetSentRequestsRequest {
            event_id: event_id.to_owned(),
            ..Default::default()
        }))
        .await
        .map(|sent| {
            sent.into_inner()
                .requests
                .iter()
                .map(|r| (r.subscription_id.clone(), SentBody::from(r)))
                .collect()
        })
        .unwrap_or_default();
    // The newest attempt of each delivery (attempts come newest first) whose subscription is
    // disabled now waits parked, not at the time its attempt named.
    let mut latest_seen = std::collections::HashSet::new();
    let attempts = attempts
        .iter()
        .map(|a| {
            let subscription = subscriptions
                .get(&a.subscription_id)
                .and_then(Option::as_ref);
            let mut row = AttemptRow::from(a);
            let latest = latest_seen.insert(a.subscription_id.clone());
            if latest && !row.next_attempt.is_empty() && subscription.is_some_and(|s| !s.enabled) {
                row.next_attempt =
                    "parked: the subscription is disabled; sent once it is enabled".to_owned();
            }
            EventAttempt {
                row,
                headers: sent_headers(a, subscription),
                body: bodies.get(&a.subscription_id).cloned(),
            }
        })
        .collect();
    Ok(EventAttempts {
        attempts,
        more: !page.next_page_token.is_empty(),
    })
}

async fn event(
    State(state): State<WebState>,
    console: Console,
    Path(event_id): Path<String>,
    Query(query): Query<EventQuery>,
) -> Result<Response, PageError> {
    let EventAttempts { attempts, more } =
        event_attempts(&state, &console.caller, &event_id).await?;
    Ok(render(&EventPage {
        chrome: Chrome::new(&console, "deliveries"),
        log: format!("/deliveries?event_id={}", query_value(&event_id)),
        event_id,
        attempts,
        more,
        note: query.note(),
    }))
}

/// Replays `event_id` (to one subscription when the form names it); the query that tells the
/// next page how it went.
pub async fn replay_as(
    state: &WebState,
    caller: &Authorized,
    event_id: String,
    subscription_id: String,
) -> Result<String, PageError> {
    let replayed = state
        .services
        .deliveries
        .replay_deliveries(caller.request(pb::ReplayDeliveriesRequest {
            event_id,
            subscription_id,
            ..Default::default()
        }))
        .await?
        .into_inner();
    Ok(format!(
        "done=replayed&queued={}&parked={}&missed={}",
        replayed.queued,
        replayed.parked,
        replayed.not_replayable.len()
    ))
}

async fn replay(
    State(state): State<WebState>,
    Path(event_id): Path<String>,
    ConsoleChange { console, form }: ConsoleChange,
) -> Result<Response, PageError> {
    let outcome = replay_as(
        &state,
        &console.caller,
        event_id.clone(),
        form.text("subscription_id"),
    )
    .await?;
    Ok(
        axum::response::Redirect::to(&format!("/events/{}?{outcome}", query_value(&event_id)))
            .into_response(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replay_note_says_what_waits_parked_and_takes_no_text_from_the_link() {
        let query = |query: &str| -> EventQuery {
            let uri: axum::http::Uri = format!("/events/evt_1?{query}").parse().expect("a uri");
            Query::try_from_uri(&uri).expect("a replay's query").0
        };
        assert_eq!(
            query("done=replayed&queued=1&parked=0&missed=0").note(),
            "Replay: 1 delivery queued again."
        );
        let parked = query("done=replayed&queued=3&parked=2&missed=1").note();
        assert!(
            parked.starts_with("Replay: 3 deliveries queued again. 2 of them wait parked")
                && parked.contains("1 could not be"),
            "{parked}"
        );
        assert_eq!(query("done=%3Cb%3Ehi%3C%2Fb%3E&queued=1").note(), "");
    }
}
