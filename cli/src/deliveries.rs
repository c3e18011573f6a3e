//! `herald deliveries …`: the central log of delivery attempts.

use std::time::SystemTime;

use herald_proto::convert::timestamp;
use herald_proto::v1 as pb;
use herald_proto::v1::deliveries_client::DeliveriesClient;

use crate::connect::{Server, status_error};
use crate::output::{self, Format};
use crate::usage::usage;

#[derive(clap::Subcommand)]
pub enum Command {
    /// List attempts, newest first.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// Attempts per page (at most 1000).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
        page_size: u32,
        /// Continue from a previous page.
        #[arg(long, default_value = "")]
        page_token: String,
    },
    /// Every attempt of one event, across its subscriptions, oldest first; with
    /// `--show-body`, also the request each subscription was sent (headers and body).
    Get {
        /// The event id (evt_… or the emitter's own id).
        event: String,
        /// Also print the request as sent to each subscription: its headers (signatures and
        /// credentials masked) and its body, byte for byte (as far as the log keeps it:
        /// --log-body-limit).
        #[arg(long)]
        show_body: bool,
        /// Only this subscription's attempts and request.
        #[arg(long)]
        subscription: Option<String>,
        /// Only this tenant's event (event ids are unique per tenant).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Remove the stored requests (headers and bodies) of one event's deliveries, for
    /// personal data; the attempts stay.
    Expunge {
        /// The event id.
        event: String,
        /// Only this tenant's event.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Follow attempts as they are stored (Ctrl-C stops); one line each (with `-o json`, one
    /// JSON object a line; no header, as rows come one at a time).
    Tail {
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Deliver again (new attempts, same webhook-id): one event (`--event`, optionally
    /// `--subscription`), or a subscription's deliveries since a time (`--subscription`
    /// `--since`, optionally `--until`, `--outcome failed`).
    Replay {
        /// The event to deliver again.
        #[arg(long)]
        event: Option<String>,
        /// Only deliveries to this subscription.
        #[arg(long)]
        subscription: Option<String>,
        /// Deliveries attempted this recently (e.g. 2h) or since a time (RFC 3339).
        #[arg(long, requires = "subscription", value_parser = when)]
        since: Option<SystemTime>,
        /// Deliveries attempted before this age or time.
        #[arg(long, requires = "since", value_parser = when)]
        until: Option<SystemTime>,
        /// Only deliveries whose last attempt had this outcome (e.g. failed).
        #[arg(long, value_enum)]
        outcome: Option<OutcomeArg>,
    },
}

/// The columns attempts are shown with.
const COLUMNS: [&str; 8] = [
    "started_at",
    "event_id",
    "subscription_id",
    "attempt",
    "result",
    "duration_ms",
    "outcome",
    "error",
];

/// Most attempts `get` reads for one event.
const MAX_EVENT_ATTEMPTS: usize = 10_000;

/// Which attempts.
#[derive(clap::Args)]
pub struct FilterArgs {
    /// Only this subscription's.
    #[arg(long)]
    subscription: Option<String>,
    /// Only this tenant's.
    #[arg(long)]
    tenant: Option<String>,
    /// Only this event's.
    #[arg(long)]
    event: Option<String>,
    /// Only this outcome.
    #[arg(long, value_enum)]
    outcome: Option<OutcomeArg>,
    /// Only attempts this recent (e.g. 1h) or since a time (RFC 3339).
    #[arg(long, value_parser = when)]
    since: Option<SystemTime>,
    /// Only attempts before this age (e.g. 10m) or time (RFC 3339).
    #[arg(long, value_parser = when)]
    until: Option<SystemTime>,
    /// Only events of this type or pattern: order.created, order.*.
    #[arg(long, value_name = "PATTERN", value_parser = parse_event_type)]
    event_type: Option<String>,
    /// Only attempts answered with this HTTP status (503) or class (5xx).
    #[arg(long, value_name = "CODE|CLASS", value_parser = parse_status)]
    status: Option<String>,
    /// Only attempts that failed this way: timeout, connect, tls, dns, status (an HTTP
    /// status that is not 2xx), proxy, proxy_auth, oauth2, request, render, policy, skipped,
    /// storage, internal.
    #[arg(long, value_name = "KIND", value_parser = parse_error_kind)]
    error_kind: Option<String>,
}

fn parse_event_type(text: &str) -> Result<String, String> {
    herald_core::event_type::EventPattern::parse(text)
        .map(|p| p.to_string())
        .map_err(|e| e.reason)
}

fn parse_status(text: &str) -> Result<String, String> {
    herald_core::error_kind::StatusFilter::parse(text)
        .map(|s| s.to_string())
        .map_err(|e| e.reason)
}

fn parse_error_kind(text: &str) -> Result<String, String> {
    herald_core::error_kind::ErrorKind::parse(text)
        .map(|k| k.as_str().to_owned())
        .map_err(|e| e.reason)
}

/// An attempt's outcome, as `--outcome` names it.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum OutcomeArg {
    /// The receiver accepted it (2xx).
    Delivered,
    /// It failed and will be tried again.
    Retrying,
    /// It failed for good.
    Failed,
    /// It was not sent (the subscription was disabled or removed).
    Skipped,
}

impl OutcomeArg {
    fn wire(outcome: Option<Self>) -> pb::Outcome {
        match outcome {
            None => pb::Outcome::Unspecified,
            Some(Self::Delivered) => pb::Outcome::Delivered,
            Some(Self::Retrying) => pb::Outcome::Retrying,
            Some(Self::Failed) => pb::Outcome::Failed,
            Some(Self::Skipped) => pb::Outcome::Skipped,
        }
    }
}

/// `1h` (that long ago) or an RFC 3339 time (`Z` or an offset such as `+01:00`; without
/// either, UTC) from 1970 to 9999 ([`herald_core::time_text`]).
pub(crate) fn when(text: &str) -> Result<SystemTime, String> {
    use herald_core::time_text::{self, TimeTextError};
    time_text::ago_or_time(text, SystemTime::now()).map_err(|err| match err {
        TimeTextError::Unreadable => {
            "neither a duration (1h) nor a time (2026-01-02T15:04:05Z or +01:00)".to_owned()
        }
        TimeTextError::OutOfRange => err.to_string(),
    })
}

impl FilterArgs {
    fn into_wire(self) -> pb::AttemptFilter {
        pb::AttemptFilter {
            subscription_id: self.subscription.unwrap_or_default(),
            tenant: self.tenant.unwrap_or_default(),
            event_id: self.event.unwrap_or_default(),
            outcome: OutcomeArg::wire(self.outcome) as i32,
            since: self.since.map(timestamp),
            until: self.until.map(timestamp),
            event_type: self.event_type.unwrap_or_default(),
            status: self.status.unwrap_or_default(),
            error_kind: self.error_kind.unwrap_or_default(),
        }
    }
}

pub async fn run(cmd: Command, server: &Server, format: Format) -> anyhow::Result<()> {
    let mut client = DeliveriesClient::new(server.channel().await?);
    match cmd {
        Command::List {
            filter,
            page_size,
            page_token,
        } => {
            let page = client
                .list_attempts(pb::ListAttemptsRequest {
                    filter: Some(filter.into_wire()),
                    page_size,
                    page_token,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            let items: Vec<_> = page
                .attempts
                .iter()
                .map(|a| output::attempt_row(format, a))
                .collect();
            output::list(format, "attempts", &items, &COLUMNS, &page.next_page_token)?;
        }
        Command::Get {
            event,
            show_body,
            subscription,
            tenant,
        } => {
            let filter = pb::AttemptFilter {
                event_id: event.clone(),
                subscription_id: subscription.clone().unwrap_or_default(),
                tenant: tenant.clone().unwrap_or_default(),
                ..Default::default()
            };
            let mut attempts = Vec::new();
            let mut page_token = String::new();
            loop {
                let page = client
                    .list_attempts(pb::ListAttemptsRequest {
                        filter: Some(filter.clone()),
                        page_size: 1000,
                        page_token,
                    })
                    .await
                    .map_err(status_error)?
                    .into_inner();
                attempts.extend(page.attempts);
                if page.next_page_token.is_empty() {
                    break;
                }
                if attempts.len() >= MAX_EVENT_ATTEMPTS {
                    output::note(&format!(
                        "event {event} has more than {MAX_EVENT_ATTEMPTS} attempts: the newest \
                         {MAX_EVENT_ATTEMPTS} are shown (narrow with --subscription, or use \
                         `deliveries list --event`)"
                    ));
                    break;
                }
                page_token = page.next_page_token;
            }
            if attempts.is_empty() {
                anyhow::bail!("no attempts logged for event {event:?}");
            }
            attempts.reverse();
            let items: Vec<_> = attempts
                .iter()
                .map(|a| output::attempt_row(format, a))
                .collect();
            if !show_body {
                output::list(format, "attempts", &items, &COLUMNS, "")?;
                return Ok(());
            }
            let mut requests = Vec::new();
            let mut page_token = String::new();
            loop {
                let first = page_token.is_empty();
                let page = match client
                    .get_sent_requests(pb::GetSentRequestsRequest {
                        event_id: event.clone(),
                        subscription_id: subscription.clone().unwrap_or_default(),
                        tenant: tenant.clone().unwrap_or_default(),
                        page_token,
                    })
                    .await
                {
                    Ok(page) => page.into_inner(),
                    // No request kept (expunged, past retention, bodies not kept): the
                    // attempts are still shown to people, then the call fails as asked.
                    Err(status)
                        if first
                            && status.code() == tonic::Code::NotFound
                            && format.style == output::Style::Table =>
                    {
                        output::list(format, "attempts", &items, &COLUMNS, "")?;
                        return Err(status_error(status));
                    }
                    Err(status) => return Err(status_error(status)),
                };
                requests.extend(page.requests);
                if page.next_page_token.is_empty() {
                    break;
                }
                if requests.len() >= MAX_EVENT_ATTEMPTS {
                    output::note(&format!(
                        "event {event} has more than {MAX_EVENT_ATTEMPTS} requests kept: the \
                         first {MAX_EVENT_ATTEMPTS} are shown (narrow with --subscription)"
                    ));
                    break;
                }
                page_token = page.next_page_token;
            }
            output::sent_requests(format, &items, &COLUMNS, &requests)?;
        }
        Command::Expunge { event, tenant } => {
            let removed = client
                .expunge_sent_requests(pb::ExpungeSentRequestsRequest {
                    event_id: event.clone(),
                    tenant: tenant.unwrap_or_default(),
                })
                .await
                .map_err(status_error)?
                .into_inner()
                .removed;
            output::object(
                format,
                &serde_json::json!({ "event_id": event, "removed": removed }),
            )?;
        }
        Command::Tail { filter } => {
            let ends = filter.until.is_some();
            let mut stream = client
                .tail_attempts(pb::TailAttemptsRequest {
                    filter: Some(filter.into_wire()),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            while let Some(attempt) = stream.message().await.map_err(status_error)? {
                output::line(format, &output::attempt_row(format, &attempt), &COLUMNS)?;
            }
            // A tail ends by itself only at --until; otherwise the server ended it.
            if !ends {
                anyhow::bail!("the control plane ended the tail: run it again");
            }
        }
        Command::Replay {
            event,
            subscription,
            since,
            until,
            outcome: wanted,
        } => {
            if event.is_none() && since.is_none() {
                return Err(usage(
                    "name what to replay: --event E, or --subscription S --since T (e.g. 2h)",
                ));
            }
            let request = pb::ReplayDeliveriesRequest {
                event_id: event.unwrap_or_default(),
                subscription_id: subscription.unwrap_or_default(),
                since: since.map(timestamp),
                until: until.map(timestamp),
                outcome: OutcomeArg::wire(wanted) as i32,
            };
            let result = client
                .replay_deliveries(request)
                .await
                .map_err(status_error)?
                .into_inner();
            output::object(format, &output::replay(&result))?;
            if result.parked > 0 {
                output::note(&format!(
                    "{} of the deliveries queued wait parked: their subscription is disabled \
                     (herald subscription enable --replay-parked sends them; without \
                     --replay-parked they are skipped)",
                    result.parked
                ));
            }
            if !result.not_replayable.is_empty() {
                // As an import that refused some entries: the rest is done, the user must act.
                anyhow::bail!(
                    "{} of the deliveries could not be replayed (see above); {} were queued",
                    result.not_replayable.len(),
                    result.queued
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_is_a_duration_ago_or_rfc_3339_with_any_offset() {
        let utc = when("2026-12-06T16:00:00Z").expect("UTC");
        assert_eq!(when("2026-12-06T17:00:00+01:00"), Ok(utc));
        assert_eq!(when("2026-12-06T11:30:00-04:30"), Ok(utc));
        assert_eq!(when("2026-12-06T16:00:00"), Ok(utc), "no offset: UTC");
        assert_eq!(
            when("2026-12-06T16:00:00.250Z"),
            Ok(utc + std::time::Duration::from_millis(250))
        );
        let ago = when("1h").expect("a duration");
        let expected = SystemTime::now() - std::time::Duration::from_secs(3600);
        assert!(
            expected.duration_since(ago).unwrap_or_default() < std::time::Duration::from_secs(5)
        );
        assert!(when("yesterday-ish").is_err());
    }
}
