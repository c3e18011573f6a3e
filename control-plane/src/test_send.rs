//! Test-sends (`TestSubscription`, `herald subscription test`): one event to one subscription,
//! now, so a platform can check an endpoint before going live or before enabling it again.
//!
//! The control plane picks the event type (the one asked for, which the subscription must
//! select; else its first exact type, or the first catalogued type, by name, of the first of its
//! patterns that selects one, not built in nor deprecated) and the payload (the one given, checked against the type's schema
//! when it has one; else the type's catalogue example, else `{}`), hands a test order
//! to a connected agent that delivers the subscription, and waits for the attempt, at most the
//! subscription's timeout and [`ANSWER_MARGIN`]. When no such agent is connected to this
//! replica, the order goes through the config store to another replica that holds one
//! ([`crate::relay`]). The agent makes it as it makes deliveries
//! (target policy, signing, the same HTTP client), outside its queue and without retries. The
//! attempt is logged with `test` set; it counts toward no health and disables nothing.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use herald_core::ValidationError;
use herald_core::event_schema::EventSchema;
use herald_core::event_type::{EventFilter, is_heralds_own, validate_event_type};
use herald_core::ids::new_event_id;
use herald_core::limits::DEFAULT_MAX_PAYLOAD_BYTES;
use herald_core::subscription::DEFAULT_TIMEOUT;
use herald_core::validate;
use herald_proto::convert::{std_duration, timestamp};
use herald_proto::sent_request;
use herald_proto::v1 as pb;

use crate::attempts::{AttemptLog, LogError, NoReactions};
use crate::event_types::{EventTypeError, EventTypes};
use crate::fleet::Fleet;
use crate::relay::{Relay, RelayedTest};
use crate::store::StoreError;

/// How much longer than the subscription's timeout a test-send waits for the agent's answer.
pub const ANSWER_MARGIN: Duration = Duration::from_secs(10);

/// Why no test attempt was made, or none answered.
#[derive(Debug, thiserror::Error)]
pub enum TestError {
    /// The event type or payload asked for cannot be sent to this subscription.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// No agent that delivers the subscription is connected to any replica.
    #[error(
        "no agent that delivers subscription {0} (its regions, its tenant and type) is connected to the control plane"
    )]
    NoAgent(String),
    /// A replica that may hold an agent that delivers the subscription did not answer.
    #[error(
        "no control-plane replica with an agent that delivers subscription {subscription} answered within {}s",
        .waited.as_secs()
    )]
    NoReplicaAnswer {
        /// The subscription.
        subscription: String,
        /// How long the control plane waited.
        waited: Duration,
    },
    /// The config store, through which other replicas are asked, failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The agent could not make the attempt.
    #[error("agent {agent} made no attempt: {reason}")]
    NotMade {
        /// The agent asked.
        agent: String,
        /// What it said.
        reason: String,
    },
    /// The agent runs as many test attempts as it makes at once.
    #[error("agent {agent} made no attempt: {reason}; try again in a moment")]
    Busy {
        /// The agent asked.
        agent: String,
        /// What it said.
        reason: String,
    },
    /// The agent answered with an attempt no agent makes (a field past the limits agents
    /// keep, or holding a control character): neither logged nor shown.
    #[error("agent {agent} answered with an attempt no agent of this version makes")]
    Malformed {
        /// The agent asked.
        agent: String,
    },
    /// The agent did not answer in time.
    #[error("agent {agent} did not answer within {}s", .waited.as_secs())]
    NoAnswer {
        /// The agent asked.
        agent: String,
        /// How long the control plane waited.
        waited: Duration,
    },
    /// The catalogue could not be read.
    #[error(transparent)]
    Catalogue(#[from] EventTypeError),
}

impl From<TestError> for tonic::Status {
    fn from(err: TestError) -> Self {
        match err {
            TestError::Invalid(invalid) => herald_proto::convert::invalid_argument(invalid),
            TestError::NoAgent(_) | TestError::NotMade { .. } => {
                tonic::Status::failed_precondition(err.to_string())
            }
            TestError::Malformed { .. } => tonic::Status::internal(err.to_string()),
            TestError::Busy { .. } => tonic::Status::resource_exhausted(err.to_string()),
            TestError::NoAnswer { .. } | TestError::NoReplicaAnswer { .. } => {
                tonic::Status::deadline_exceeded(err.to_string())
            }
            TestError::Store(err) => err.status(),
            TestError::Catalogue(err) => err.into(),
        }
    }
}

/// What test-sends go through.
#[derive(Clone)]
pub struct Testers {
    /// This replica's agents.
    pub fleet: Fleet,
    /// The agents of other replicas, when none of this replica's delivers the subscription.
    pub relay: Relay,
    /// The most body bytes the log keeps of a request as sent (`--log-body-limit`).
    pub log_body_limit: usize,
    /// The tenant Herald's own operator events (`herald.…`) go to (`--system-tenant`): only
    /// its subscriptions are sent those types.
    pub system_tenant: String,
}

/// Makes one test attempt to `sub` as `request` asks, and logs it.
pub async fn test_send(
    sub: &pb::Subscription,
    request: &pb::TestSubscriptionRequest,
    event_types: &EventTypes,
    testers: &Testers,
    log: &AttemptLog,
) -> Result<pb::Attempt, TestError> {
    let Testers {
        fleet,
        relay,
        log_body_limit,
        system_tenant,
    } = testers;
    let receives_heralds_own = sub.tenant == *system_tenant;
    let event_type =
        chosen_type(sub, &request.event_type, event_types, receives_heralds_own).await?;
    let known = match event_types.get(&event_type).await {
        Ok(known) => Some(known),
        Err(EventTypeError::NotFound(_)) => None,
        Err(err) => return Err(err.into()),
    };
    let payload = if request.payload.is_empty() {
        let example = known
            .as_ref()
            .map(|t| t.example.clone())
            .filter(|example| !example.is_empty())
            .unwrap_or_else(|| b"{}".to_vec());
        // An example stored before examples were held to a payload's limits is held to them
        // here.
        validate::json_payload(&example, DEFAULT_MAX_PAYLOAD_BYTES).map_err(|e| {
            ValidationError::new(
                "payload",
                format!(
                    "the type's example {}: send a payload of your own",
                    e.reason
                ),
            )
        })?;
        example
    } else {
        validate::json_payload(&request.payload, DEFAULT_MAX_PAYLOAD_BYTES)?;
        // A payload its type's schema refuses is refused here, before anything is sent.
        if let Some(schema) = known
            .as_ref()
            .map(|t| EventSchema::parse(&t.schema))
            .transpose()?
            .flatten()
        {
            let value: serde_json::Value = serde_json::from_slice(&request.payload)
                .map_err(|e| ValidationError::new("payload", e.to_string()))?;
            schema.check(&value)?;
        }
        request.payload.clone()
    };
    let event = pb::Event {
        id: new_event_id(),
        tenant: sub.tenant.clone(),
        r#type: event_type,
        payload,
        occurred_at: Some(timestamp(SystemTime::now())),
        ..Default::default()
    };
    // What the log records of the attempt is the event sent, whatever the agent says.
    let (event_id, event_type) = (event.id.clone(), event.r#type.clone());
    let waited = sub
        .timeout
        .as_ref()
        .and_then(std_duration)
        .unwrap_or(DEFAULT_TIMEOUT)
        + ANSWER_MARGIN;
    let (agent, result) = match fleet.send_test(&sub.id, &sub.regions, event.clone()) {
        Some((agent, order_id, answer)) => {
            // However this call ends (answered, timed out, its caller gone), the order is
            // forgotten.
            let _forget = Forget { fleet, order_id };
            // Timed out, or the agent's stream ended before it answered: no result.
            let result = tokio::time::timeout(waited, answer)
                .await
                .ok()
                .and_then(Result::ok);
            (agent, result)
        }
        // No such agent here: one on another replica makes it.
        None => match relay.test(&sub.id, &sub.regions, event, waited).await? {
            RelayedTest::Asked { agent_id, result } => (agent_id, result.map(|r| *r)),
            RelayedTest::NoAgent => return Err(TestError::NoAgent(sub.id.clone())),
            RelayedTest::NoAnswer => {
                return Err(TestError::NoReplicaAnswer {
                    subscription: sub.id.clone(),
                    waited,
                });
            }
        },
    };
    let Some(result) = result else {
        return Err(TestError::NoAnswer { agent, waited });
    };
    let Some(mut attempt) = result.attempt else {
        let reason = result.error;
        return Err(if result.busy {
            TestError::Busy { agent, reason }
        } else {
            TestError::NotMade { agent, reason }
        });
    };
    // Whatever the agent says, this record is a test of this subscription, to its URL, of the
    // event sent; the rest is held to what any agent's report is held to.
    attempt.test = true;
    attempt.subscription_id.clone_from(&sub.id);
    attempt.tenant.clone_from(&sub.tenant);
    // As requests go to it (a record stored before URLs were kept so may differ).
    attempt.url = url::Url::parse(&sub.url).map_or_else(|_| sub.url.clone(), String::from);
    attempt.event_id = event_id;
    attempt.event_type = event_type;
    if !crate::agent_trust::well_formed(&attempt, SystemTime::now()) {
        tracing::warn!(subscription = %sub.id, %agent, "a test attempt's answer is malformed; not logged");
        return Err(TestError::Malformed { agent });
    }
    herald_core::limits::bound_attempt_text(&mut attempt.error);
    herald_core::limits::bound_attempt_text(&mut attempt.response_excerpt);
    // The request as sent is kept by the log alone (as much as it keeps); the answer carries
    // the attempt.
    let mut request = attempt.request.take();
    sent_request::bound(&mut request, *log_body_limit);
    let logged = pb::Attempt {
        request,
        ..attempt.clone()
    };
    if let Err(err) = store(log, logged).await {
        // The answer still stands; only its log entry is missing.
        tracing::warn!(subscription = %sub.id, error = %err, "cannot log a test attempt");
    }
    Ok(attempt)
}

/// Forgets a test order when dropped.
struct Forget<'a> {
    fleet: &'a Fleet,
    order_id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.fleet.test_abandoned(self.order_id);
    }
}

async fn store(log: &AttemptLog, attempt: pb::Attempt) -> Result<(), LogError> {
    log.store(vec![attempt], Arc::new(NoReactions)).await?;
    Ok(())
}

/// The types a test to a subscription of `patterns` (parsed as `filter`) may send, in the order
/// a test that names none picks from: the exact types the patterns name, then for each
/// pattern in turn the `catalogued` types it selects, by name; each once. The web pages offer
/// them in this order, so their first choice is the control plane's.
pub fn test_types(filter: &EventFilter, patterns: &[String], catalogued: &[String]) -> Vec<String> {
    let exact = patterns.iter().filter(|p| !p.contains('*'));
    let selected = filter
        .patterns()
        .iter()
        .flat_map(|pattern| catalogued.iter().filter(move |name| pattern.matches(name)));
    let mut types: Vec<String> = Vec::new();
    for name in exact.chain(selected) {
        if !types.contains(name) {
            types.push(name.clone());
        }
    }
    types
}

/// The event type a test sends: `requested` when the subscription receives it; else the first
/// of [`test_types`] (its first exact type, read without the catalogue, or the first catalogued
/// type of its first pattern that selects one). Herald's own types (`herald.…`) are sent only
/// to a subscription that `receives_heralds_own` (the system tenant's): no other receives them,
/// whatever its patterns select.
async fn chosen_type(
    sub: &pb::Subscription,
    requested: &str,
    event_types: &EventTypes,
    receives_heralds_own: bool,
) -> Result<String, TestError> {
    let filter = EventFilter::parse(&sub.event_types)?;
    if !requested.is_empty() {
        validate_event_type(requested).map_err(|e| ValidationError::new("event_type", e.reason))?;
        if is_heralds_own(requested) && !receives_heralds_own {
            return Err(ValidationError::new(
                "event_type",
                format!(
                    "{requested} is one of Herald's own operator events, which only the system \
                     tenant's subscriptions receive: subscription {} never gets it",
                    sub.id
                ),
            )
            .into());
        }
        if !filter.matches(requested) {
            return Err(ValidationError::new(
                "event_type",
                format!(
                    "subscription {} does not receive {requested} (it selects {})",
                    sub.id,
                    sub.event_types.join(", ")
                ),
            )
            .into());
        }
        return Ok(requested.to_owned());
    }
    if let Some(exact) = sub
        .event_types
        .iter()
        .find(|p| !p.contains('*') && (receives_heralds_own || !is_heralds_own(p)))
    {
        return Ok(exact.clone());
    }
    // The platform's own types first; Herald's built-in ones for `herald.*` subscriptions.
    let (mut catalogued, built_in): (Vec<_>, Vec<_>) = event_types
        .list()
        .await?
        .into_iter()
        .filter(|t| !t.deprecated)
        .partition(|t| !t.built_in);
    if receives_heralds_own {
        catalogued.extend(built_in);
    }
    let catalogued: Vec<String> = catalogued.into_iter().map(|t| t.name).collect();
    test_types(&filter, &sub.event_types, &catalogued)
        .into_iter()
        .find(|t| receives_heralds_own || !is_heralds_own(t))
        .ok_or_else(|| {
            ValidationError::new(
                "event_type",
                format!(
                    "name the type to send (herald subscription test --type): subscription {} \
                     selects patterns only ({}), and no catalogued type matches them",
                    sub.id,
                    sub.event_types.join(", ")
                ),
            )
            .into()
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event_types::RegistryMode;
    use crate::store::Store;

    fn selecting(patterns: &[&str]) -> pb::Subscription {
        pb::Subscription {
            id: "sub_test".into(),
            event_types: patterns.iter().map(|p| (*p).to_owned()).collect(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_test_takes_the_platforms_types_first_and_herald_s_own_for_herald_patterns() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let store = Store::embedded(dir.path()).await.expect("a store");
        let registry = EventTypes::new(store, RegistryMode::On);
        registry
            .create(pb::EventType {
                name: "order.created".into(),
                ..Default::default()
            })
            .await
            .expect("registered");
        let chosen = |patterns: &'static [&'static str]| {
            let registry = &registry;
            async move { chosen_type(&selecting(patterns), "", registry, true).await }
        };
        assert_eq!(chosen(&["*"]).await.expect("a type"), "order.created");
        assert_eq!(chosen(&["order.*"]).await.expect("a type"), "order.created");
        let own = chosen(&["herald.*"]).await.expect("a built-in type");
        assert!(own.starts_with("herald."), "{own}");
        assert!(chosen(&["invoice.*"]).await.is_err(), "nothing catalogued");

        // Another tenant's subscription never gets Herald's own types, whatever it selects.
        let shop = |patterns: &'static [&'static str], requested: &'static str| {
            let registry = &registry;
            async move { chosen_type(&selecting(patterns), requested, registry, false).await }
        };
        let refused = shop(&["*"], "herald.subscription.disabled")
            .await
            .expect_err("not the system tenant's");
        assert!(
            matches!(&refused, TestError::Invalid(e) if e.field == "event_type"),
            "{refused:?}"
        );
        assert!(shop(&["herald.*"], "").await.is_err(), "none offered");
        assert_eq!(
            shop(&["herald.subscription.disabled", "*"], "")
                .await
                .expect("a type"),
            "order.created",
            "an exact herald.* pattern is passed over"
        );
        assert_eq!(shop(&["*"], "").await.expect("a type"), "order.created");
    }
}
