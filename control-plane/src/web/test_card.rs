//! The "send a test event" card of a subscription's page, in the console and in the portal: a
//! platform (or its shop) checks an endpoint before going live, or before enabling it again,
//! and sees at once what the receiver answered. The test goes through `TestSubscription`
//! (see `crate::test_send`), so it is signed and sent as deliveries are, and logged with
//! `test` set.

use axum::response::{IntoResponse as _, Redirect, Response};
use herald_core::event_type::EventFilter;
use herald_proto::v1 as pb;
use herald_proto::v1::deliveries_server::Deliveries as _;
use herald_proto::v1::subscriptions_server::Subscriptions as _;
use serde::Deserialize;

use super::WebState;
use super::form::{FormData, refusal};
use super::page::{PageError, query_value};
use super::views::AttemptRow;
use crate::rest::Authorized;

/// The most event types the card offers.
const MAX_TYPES: usize = 200;

/// What the card shows: where it posts, the types to choose from, and the outcome of the
/// test just sent from it, if any.
pub struct TestCard {
    /// Where the form posts.
    pub action: String,
    /// The console's CSRF token (empty in the portal, whose link is its credential).
    pub csrf: String,
    /// The event types a test may be, as the subscription selects them.
    pub types: Vec<String>,
    /// The attempt the test made.
    pub attempt: Option<AttemptRow>,
    /// Why no attempt was made (no agent connected, a type it does not select, …).
    pub error: String,
}

/// What sending a test gave.
#[derive(Default)]
pub struct Tested {
    /// The attempt made.
    pub attempt: Option<AttemptRow>,
    /// Why none was made.
    pub error: String,
}

impl TestCard {
    /// The card for `sub`, posting to `action`, with what `tested` gave.
    /// A catalogue that cannot be read leaves the type to be typed in: the page still shows.
    pub async fn load(
        state: &WebState,
        sub: &pb::Subscription,
        action: String,
        csrf: String,
        tested: Tested,
    ) -> TestCard {
        let catalogue = match state.services.event_types.catalogue().await {
            Ok(catalogue) => catalogue,
            Err(status) => {
                tracing::warn!(error = %status.message(), "the test card cannot read the catalogue");
                vec![]
            }
        };
        TestCard {
            action,
            csrf,
            types: test_types(&sub.event_types, &catalogue),
            attempt: tested.attempt,
            error: tested.error,
        }
    }
}

/// The event types a test to a subscription of `patterns` may be, as the control plane orders
/// them ([`crate::test_send::test_types`]), from the catalogue's types neither built in nor
/// deprecated; at most [`MAX_TYPES`]. Empty when the patterns select nothing named: the
/// control plane then picks.
fn test_types(patterns: &[String], catalogue: &[pb::EventType]) -> Vec<String> {
    let Ok(filter) = EventFilter::parse(patterns) else {
        return vec![];
    };
    let catalogued: Vec<String> = catalogue
        .iter()
        .filter(|t| !t.built_in && !t.deprecated)
        .map(|t| t.name.clone())
        .collect();
    let mut types = crate::test_send::test_types(&filter, patterns, &catalogued);
    types.truncate(MAX_TYPES);
    types
}

/// Sends a test of the type the form names (or the control plane's choice) to subscription
/// `id` as `caller`, and answers what the page shows next: an attempt made is shown from the
/// log at its own address ([`tested_page`]), so a reload or Back sends nothing again; a test
/// that could not be made (nothing was sent) is shown at once, on the page the post answers.
pub async fn send_from_page(
    state: &WebState,
    caller: &Authorized,
    id: String,
    form: &FormData,
    page: &str,
) -> Result<Result<Response, Tested>, PageError> {
    let tested = send_as(state, caller, id.clone(), form).await?;
    let Some(attempt) = &tested.attempt else {
        return Ok(Err(tested));
    };
    // Only an attempt the log holds can be shown at its address (its entry may be missing:
    // a log that could not store it is told in the control plane's log, not here).
    let query = TestedQuery {
        event: attempt.event_id.clone(),
    };
    Ok(match self::tested(state, caller, &id, &query).await {
        Some(_) => Ok(Redirect::to(&tested_page(page, &attempt.event_id)).into_response()),
        None => Err(tested),
    })
}

/// The address that shows the test `event_id` sent from the subscription's `page`.
fn tested_page(page: &str, event_id: &str) -> String {
    format!("{page}/test?event={}#test-send", query_value(event_id))
}

/// What the address of a test sent names: the test event shown there.
#[derive(Deserialize)]
pub struct TestedQuery {
    #[serde(default)]
    event: String,
}

/// The test event `query` names, sent to subscription `id`, as the log holds its attempt;
/// `None` when there is none that `caller` may see (an address typed in, a log that did not
/// keep it): the page then shows without a result.
pub async fn tested(
    state: &WebState,
    caller: &Authorized,
    id: &str,
    query: &TestedQuery,
) -> Option<Tested> {
    if query.event.is_empty() {
        return None;
    }
    let page = state
        .services
        .deliveries
        .list_attempts(caller.request(pb::ListAttemptsRequest {
            filter: Some(pb::AttemptFilter {
                event_id: query.event.clone(),
                subscription_id: id.to_owned(),
                ..Default::default()
            }),
            page_size: 1,
            page_token: String::new(),
        }))
        .await
        .ok()?
        .into_inner();
    let attempt = page.attempts.first().filter(|a| a.test)?;
    Some(Tested {
        attempt: Some(AttemptRow::from(attempt)),
        error: String::new(),
    })
}

/// Sends a test of the type the form names (or the control plane's choice) to subscription
/// `id` as `caller`. A test that could not be made is an answer to show, not a failed page.
async fn send_as(
    state: &WebState,
    caller: &Authorized,
    id: String,
    form: &FormData,
) -> Result<Tested, PageError> {
    let answer = state
        .services
        .subscriptions
        .test_subscription(caller.request(pb::TestSubscriptionRequest {
            id,
            event_type: form.text("event_type").trim().to_owned(),
            payload: vec![],
        }))
        .await;
    match answer {
        Ok(answer) => Ok(Tested {
            attempt: answer.into_inner().attempt.as_ref().map(AttemptRow::from),
            error: String::new(),
        }),
        Err(status)
            if matches!(
                status.code(),
                tonic::Code::InvalidArgument
                    | tonic::Code::FailedPrecondition
                    | tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
            ) =>
        {
            Ok(Tested {
                attempt: None,
                error: refusal(&status),
            })
        }
        Err(status) => Err(status.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registered(name: &str, built_in: bool, deprecated: bool) -> pb::EventType {
        pb::EventType {
            name: name.into(),
            built_in,
            deprecated,
            ..Default::default()
        }
    }

    #[test]
    fn a_test_offers_the_types_the_subscription_selects() {
        let catalogue = [
            registered("herald.subscription.disabled", true, false),
            registered("invoice.created", false, false),
            registered("order.created", false, false),
            registered("order.legacy", false, true),
            registered("order.paid", false, false),
        ];
        // The exact type first (the control plane's own choice), then each pattern's types.
        let patterns = ["order.*".to_owned(), "stock.changed".to_owned()];
        assert_eq!(
            test_types(&patterns, &catalogue),
            ["stock.changed", "order.created", "order.paid"]
        );
        // Patterns in the subscription's order, though an invoice type comes first by name.
        let patterns = ["order.*".to_owned(), "invoice.*".to_owned()];
        assert_eq!(
            test_types(&patterns, &catalogue),
            ["order.created", "order.paid", "invoice.created"]
        );
        assert!(test_types(&["*".to_owned()], &[]).is_empty());
    }
}
