//! Replay: deliver events again, on request (`herald deliveries replay`). The delivery log says
//! which agent attempted each delivery and how many attempts it made; each such agent is sent
//! a replay order over its config stream and queues the deliveries anew (new attempts, same
//! `webhook-id`, numbered after the logged ones). An agent connected to another replica gets
//! its order through that replica ([`crate::relay`]). A delivery whose agent is not
//! connected to any replica, does not answer, or no longer holds the event is reported as not
//! replayable, never skipped silently.

use std::collections::BTreeMap;

use herald_core::limits::MAX_ATTEMPT_NUMBER;
use herald_core::validate::{self, ValidationError};
use herald_proto::v1 as pb;

use crate::access::Scope;
use crate::attempts::{AttemptLog, Filter, LogError, check_outcome};
use crate::fleet::Fleet;
use crate::relay::{AGENT_TIMEOUT, Relay, Relayed};

/// The most deliveries one replay request may cover.
pub const MAX_REPLAY: usize = 10_000;
/// The most attempts read from the log for one request.
const MAX_ATTEMPTS_READ: usize = 200_000;

/// Why a replay request was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// A field of the request is wrong, or missing.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The request names more deliveries than one replay covers.
    #[error("{0}")]
    TooMany(String),
    /// The event named has no delivery in the log (that the caller may see).
    #[error(
        "no delivery of event {0} is logged: check the id (herald deliveries list --event), \
         or it is past the log's retention"
    )]
    EventNotFound(String),
    /// The log could not be read.
    #[error(transparent)]
    Log(#[from] LogError),
}

impl From<ReplayError> for tonic::Status {
    fn from(err: ReplayError) -> Self {
        match err {
            ReplayError::Invalid(invalid) => herald_proto::convert::invalid_argument(invalid),
            ReplayError::TooMany(_) => tonic::Status::invalid_argument(err.to_string()),
            ReplayError::EventNotFound(_) => tonic::Status::not_found(err.to_string()),
            ReplayError::Log(log) => log.into(),
        }
    }
}

/// The last logged attempt of one delivery.
#[derive(Clone, Debug)]
struct Latest {
    attempt: u32,
    agent_id: String,
    outcome: i32,
    tenant: String,
}

/// What a replay did.
#[derive(Debug)]
pub struct Replayed {
    /// The answer to the caller.
    pub response: pb::ReplayDeliveriesResponse,
    /// Per tenant whose deliveries it named, what came of them: an audit entry of one tenant
    /// tells nothing of another's.
    pub tenants: BTreeMap<String, TenantCount>,
    /// The subscription of each delivery queued, once per delivery.
    pub queued_to: Vec<String>,
}

/// What a replay did with one tenant's deliveries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TenantCount {
    /// Deliveries queued again.
    pub queued: u32,
    /// Deliveries that could not be queued.
    pub not_replayable: u32,
}

/// Finds the deliveries `request` names in `log` among those of `tenants` (the caller's
/// scope) and has their agents queue them again.
pub async fn replay(
    log: &AttemptLog,
    fleet: &Fleet,
    relay: &Relay,
    request: pb::ReplayDeliveriesRequest,
    tenants: &Scope,
) -> Result<Replayed, ReplayError> {
    if !request.event_id.is_empty() {
        validate::event_id(&request.event_id)
            .map_err(|e| ValidationError::new("event_id", e.reason))?;
    }
    if !request.subscription_id.is_empty() {
        validate::subscription_id(&request.subscription_id)?;
    }
    let by_range = request.event_id.is_empty();
    if by_range && request.subscription_id.is_empty() {
        return Err(ValidationError::new(
            "event_id",
            "is required: name an event (event_id), or a subscription and a start time \
             (subscription_id, since)",
        )
        .into());
    }
    if by_range && request.since.is_none() {
        return Err(ValidationError::new(
            "since",
            "is required with subscription_id (the start of the time range to replay)",
        )
        .into());
    }
    // The outcome is applied to each delivery's latest attempt, not through the filter.
    check_outcome(request.outcome)?;
    let filter = Filter::within(
        pb::AttemptFilter {
            event_id: request.event_id.clone(),
            subscription_id: request.subscription_id.clone(),
            since: request.since,
            until: request.until,
            ..Default::default()
        },
        tenants,
    )?;
    let deliveries = latest_attempts(log, filter).await?;
    // A named event with nothing logged is a wrong id (or one past retention), which
    // "nothing queued" would hide; a time range may well hold nothing.
    if !by_range && deliveries.is_empty() {
        return Err(ReplayError::EventNotFound(request.event_id));
    }
    let deliveries: BTreeMap<(String, String), Latest> = deliveries
        .into_iter()
        .filter(|(_, latest)| request.outcome == 0 || latest.outcome == request.outcome)
        .collect();
    // Whose each delivery is, to count per tenant what came of it.
    let tenant_of: BTreeMap<(String, String), String> = deliveries
        .iter()
        .map(|(key, latest)| (key.clone(), latest.tenant.clone()))
        .collect();
    if deliveries.len() > MAX_REPLAY {
        return Err(ReplayError::TooMany(format!(
            "{} deliveries match; one replay covers at most {MAX_REPLAY}: narrow the time range",
            deliveries.len()
        )));
    }
    let mut by_agent: BTreeMap<String, Vec<pb::ReplayItem>> = BTreeMap::new();
    let mut response = pb::ReplayDeliveriesResponse::default();
    for ((event_id, subscription_id), latest) in deliveries {
        if latest.attempt >= MAX_ATTEMPT_NUMBER {
            response.not_replayable.push(pb::ReplayMiss {
                event_id,
                subscription_id,
                agent_id: latest.agent_id,
                reason: format!(
                    "it has made {} attempts, the most a delivery may",
                    latest.attempt
                ),
            });
            continue;
        }
        by_agent
            .entry(latest.agent_id)
            .or_default()
            .push(pb::ReplayItem {
                event_id,
                subscription_id,
                next_attempt: latest.attempt + 1,
                tenant: latest.tenant,
            });
    }
    for (agent_id, items) in by_agent {
        let missed_all = |items: &[pb::ReplayItem], reason: &str| -> Vec<pb::ReplayMiss> {
            items
                .iter()
                .map(|item| pb::ReplayMiss {
                    event_id: item.event_id.clone(),
                    subscription_id: item.subscription_id.clone(),
                    agent_id: agent_id.clone(),
                    reason: reason.to_owned(),
                })
                .collect()
        };
        let Some(answer) = fleet.send_replay(&agent_id, items.clone()) else {
            // Not on this replica: through the one holding it, if any.
            let result = match relay.send(&agent_id, items.clone()).await {
                Ok(Relayed::Answered(result)) => result,
                Ok(Relayed::NotHeld) => {
                    response.not_replayable.extend(missed_all(
                        &items,
                        "its agent is not connected to any control plane",
                    ));
                    continue;
                }
                Ok(Relayed::NoAnswer) => {
                    response.not_replayable.extend(missed_all(
                        &items,
                        "the control plane holding its agent did not answer in time",
                    ));
                    continue;
                }
                Err(err) => {
                    response.not_replayable.extend(missed_all(
                        &items,
                        &format!("cannot reach the replica holding its agent: {err}"),
                    ));
                    continue;
                }
            };
            add_result(&mut response, &agent_id, result);
            continue;
        };
        match tokio::time::timeout(AGENT_TIMEOUT, answer).await {
            Ok(Ok(result)) => add_result(&mut response, &agent_id, result),
            Ok(Err(_)) => response.not_replayable.extend(missed_all(
                &items,
                "its agent disconnected before answering",
            )),
            Err(_) => response
                .not_replayable
                .extend(missed_all(&items, "its agent did not answer in time")),
        }
    }
    let tenants = count_by_tenant(&tenant_of, &response.not_replayable);
    let missed: std::collections::BTreeSet<(&str, &str)> = response
        .not_replayable
        .iter()
        .map(|m| (m.event_id.as_str(), m.subscription_id.as_str()))
        .collect();
    let queued_to = tenant_of
        .keys()
        .filter(|(event, sub)| !missed.contains(&(event.as_str(), sub.as_str())))
        .map(|(_, sub)| sub.clone())
        .collect();
    Ok(Replayed {
        response,
        tenants,
        queued_to,
    })
}

/// Per tenant, of the deliveries `tenant_of` names (by event and subscription), how many were
/// queued and how many `missed`.
fn count_by_tenant(
    tenant_of: &BTreeMap<(String, String), String>,
    missed: &[pb::ReplayMiss],
) -> BTreeMap<String, TenantCount> {
    let mut tenants: BTreeMap<String, TenantCount> = BTreeMap::new();
    for tenant in tenant_of.values() {
        tenants.entry(tenant.clone()).or_default().queued += 1;
    }
    for miss in missed {
        let key = (miss.event_id.clone(), miss.subscription_id.clone());
        if let Some(count) = tenant_of.get(&key).and_then(|t| tenants.get_mut(t)) {
            count.queued = count.queued.saturating_sub(1);
            count.not_replayable += 1;
        }
    }
    tenants
}

/// Adds what `agent_id` did with its order to `response`.
fn add_result(
    response: &mut pb::ReplayDeliveriesResponse,
    agent_id: &str,
    result: pb::ReplayResult,
) {
    response.queued += result.queued;
    if result.queued > 0 {
        response.agents.push(pb::AgentReplayCount {
            agent_id: agent_id.to_owned(),
            queued: result.queued,
        });
    }
    response
        .not_replayable
        .extend(result.missed.into_iter().map(|miss| pb::ReplayMiss {
            agent_id: agent_id.to_owned(),
            ..miss
        }));
}

/// The latest logged attempt of every delivery (event, subscription) matching `filter`.
async fn latest_attempts(
    log: &AttemptLog,
    filter: Filter,
) -> Result<BTreeMap<(String, String), Latest>, ReplayError> {
    let mut latest: BTreeMap<(String, String), Latest> = BTreeMap::new();
    let mut token = String::new();
    let mut read = 0;
    loop {
        let page = log.list(filter.clone(), 1000, &token).await?;
        read += page.attempts.len();
        // Test-sends were never queued: there is nothing to deliver again.
        for attempt in page.attempts.into_iter().filter(|a| !a.test) {
            let key = (attempt.event_id.clone(), attempt.subscription_id.clone());
            let newer = latest.get(&key).is_none_or(|l| attempt.attempt > l.attempt);
            if newer {
                latest.insert(
                    key,
                    Latest {
                        attempt: attempt.attempt,
                        agent_id: attempt.agent_id,
                        outcome: attempt.outcome,
                        tenant: attempt.tenant,
                    },
                );
            }
        }
        if page.next_page_token.is_empty() {
            return Ok(latest);
        }
        if read > MAX_ATTEMPTS_READ {
            return Err(ReplayError::TooMany(format!(
                "more than {MAX_ATTEMPTS_READ} attempts match: narrow the time range"
            )));
        }
        token = page.next_page_token;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_tenant_is_told_its_own_counts() {
        let key = |event: &str, sub: &str| (event.to_owned(), sub.to_owned());
        let tenant_of = BTreeMap::from([
            (key("evt_1", "sub_a1"), "shop-a".to_owned()),
            (key("evt_1", "sub_a2"), "shop-a".to_owned()),
            (key("evt_1", "sub_b1"), "shop-b".to_owned()),
        ]);
        let missed = [pb::ReplayMiss {
            event_id: "evt_1".into(),
            subscription_id: "sub_a2".into(),
            ..Default::default()
        }];
        let counts = count_by_tenant(&tenant_of, &missed);
        assert_eq!(
            counts,
            BTreeMap::from([
                (
                    "shop-a".to_owned(),
                    TenantCount {
                        queued: 1,
                        not_replayable: 1
                    }
                ),
                (
                    "shop-b".to_owned(),
                    TenantCount {
                        queued: 1,
                        not_replayable: 0
                    }
                ),
            ])
        );
    }
}
