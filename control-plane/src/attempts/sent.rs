//! The requests as sent ([`pb::SentRequest`]) that the log keeps beside the attempts: one per
//! delivery (event and subscription), since every attempt of a delivery sends the same body
//! (only `webhook-timestamp` and the signature change, and the signature is masked).
//!
//! Agents report a request with each attempt that made one; the log stores the attempt
//! without it and keeps the request under its delivery: the first attempt's, replaced only by
//! a later attempt that sent a different body (the subscription's format changed between
//! retries). A request is kept no longer than the last attempt that sent it: retention that
//! removes that attempt removes it too. `ExpungeSentRequests` removes them at once.

use std::collections::{BTreeSet, HashMap};
use std::time::SystemTime;

use herald_proto::convert::system_time;
use herald_proto::v1 as pb;

use super::{Filter, LogError};
use crate::access::Scope;

/// Which stored requests: one event's, optionally one subscription's, among the tenants the
/// caller may see.
#[derive(Clone, Debug)]
pub struct SentQuery {
    filter: Filter,
}

impl SentQuery {
    /// The requests of `event_id` (to `subscription_id`, of `tenant`, when not empty) that a
    /// caller who sees `tenants` may read.
    pub fn new(
        event_id: &str,
        subscription_id: &str,
        tenant: &str,
        tenants: &Scope,
    ) -> Result<Self, LogError> {
        herald_core::validate::event_id(event_id)
            .map_err(|e| LogError::InvalidQuery(e.to_string()))?;
        if subscription_id.len() > herald_core::limits::MAX_EVENT_ID_LEN
            || tenant.len() > herald_core::limits::MAX_TENANT_LEN
        {
            return Err(LogError::InvalidQuery(
                "subscription_id or tenant: too long".into(),
            ));
        }
        let wire = pb::AttemptFilter {
            event_id: event_id.to_owned(),
            subscription_id: subscription_id.to_owned(),
            tenant: tenant.to_owned(),
            ..Default::default()
        };
        Ok(SentQuery {
            filter: Filter::within(wire, tenants)?,
        })
    }

    /// The event asked for.
    pub fn event_id(&self) -> &str {
        &self.filter.wire().event_id
    }

    /// Whether a stored request is one asked for.
    pub fn matches(&self, request: &pb::SentRequest) -> bool {
        let wire = self.filter.wire();
        request.event_id == wire.event_id
            && (wire.subscription_id.is_empty() || wire.subscription_id == request.subscription_id)
            && (wire.tenant.is_empty() || wire.tenant == request.tenant)
            && self.filter.tenants.allows(&request.tenant)
    }
}

/// What expunging removed.
#[derive(Debug, Default)]
pub struct Expunged {
    /// How many stored requests went.
    pub removed: u32,
    /// Whose they were (for the audit log).
    pub tenants: BTreeSet<String>,
}

/// Takes the reported requests off a batch's attempts (attempts are stored without them),
/// each named after its attempt whatever the report said; `None` where an attempt carries none.
pub fn take_requests<'a>(
    attempts: impl IntoIterator<Item = &'a mut pb::Attempt>,
) -> Vec<Option<pb::SentRequest>> {
    attempts
        .into_iter()
        .map(|attempt| {
            let mut request = attempt.request.take()?;
            request.event_id.clone_from(&attempt.event_id);
            request.subscription_id.clone_from(&attempt.subscription_id);
            request.tenant.clone_from(&attempt.tenant);
            request.attempt = attempt.attempt;
            request.sent_at = attempt.started_at;
            Some(request)
        })
        .collect()
}

/// A stored request's key: its delivery.
pub fn delivery_key(request: &pb::SentRequest) -> (&str, &str, &str) {
    (&request.event_id, &request.subscription_id, &request.tenant)
}

/// What a batch keeps of one delivery's requests: the one to store ([`replaces`] decides
/// among them, in attempt order), and when the newest of them was sent.
#[derive(Debug)]
pub struct DeliveryRequest {
    /// The request to keep.
    pub request: pb::SentRequest,
    /// When the newest attempt of the batch that sent a request of this delivery started.
    pub last_sent_at: SystemTime,
}

/// The requests to store from a batch, one per delivery (a batch may hold several attempts
/// of one delivery), in the order the deliveries first appear.
pub fn per_delivery(requests: Vec<pb::SentRequest>) -> Vec<DeliveryRequest> {
    let mut groups: HashMap<(String, String, String), Vec<pb::SentRequest>> = HashMap::new();
    let mut order = Vec::new();
    for request in requests {
        let key = {
            let (e, s, t) = delivery_key(&request);
            (e.to_owned(), s.to_owned(), t.to_owned())
        };
        let group = groups.entry(key.clone()).or_default();
        if group.is_empty() {
            order.push(key);
        }
        group.push(request);
    }
    order
        .into_iter()
        .filter_map(|key| {
            let mut group = groups.remove(&key)?;
            group.sort_by_key(|r| r.attempt);
            let sent_at = |r: &pb::SentRequest| {
                r.sent_at
                    .as_ref()
                    .map_or(SystemTime::UNIX_EPOCH, system_time)
            };
            let last_sent_at = group.iter().map(sent_at).max()?;
            let mut group = group.into_iter();
            let first = group.next()?;
            let request = group.fold(
                first,
                |kept, next| {
                    if replaces(&kept, &next) { next } else { kept }
                },
            );
            Some(DeliveryRequest {
                request,
                last_sent_at,
            })
        })
        .collect()
}

/// Which of two requests of one delivery the log keeps: the one stored unless `reported`
/// sent another body in a later attempt.
pub fn replaces(stored: &pb::SentRequest, reported: &pb::SentRequest) -> bool {
    reported.body != stored.body && reported.attempt > stored.attempt
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(event: &str, sub: &str, attempt: u32, body: &[u8]) -> pb::SentRequest {
        pb::SentRequest {
            event_id: event.into(),
            subscription_id: sub.into(),
            tenant: "shop-a".into(),
            attempt,
            body: body.to_vec(),
            body_size: body.len() as u64,
            ..Default::default()
        }
    }

    #[test]
    fn requests_are_named_after_their_attempts() {
        let mut attempts = vec![
            pb::Attempt {
                event_id: "evt_1".into(),
                subscription_id: "sub_1".into(),
                tenant: "shop-a".into(),
                attempt: 2,
                request: Some(request("forged", "sub_x", 9, b"{}")),
                ..Default::default()
            },
            pb::Attempt::default(),
        ];
        let taken = take_requests(&mut attempts);
        assert!(attempts.iter().all(|a| a.request.is_none()));
        let first = taken[0].as_ref().expect("a request");
        assert_eq!(delivery_key(first), ("evt_1", "sub_1", "shop-a"));
        assert_eq!(first.attempt, 2);
        assert!(taken[1].is_none());
    }

    #[test]
    fn a_batch_keeps_one_request_per_delivery() {
        let at = |secs: u64| {
            Some(herald_proto::convert::timestamp(
                SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs),
            ))
        };
        let sent = |sub: &str, attempt: u32, body: &[u8], secs: u64| pb::SentRequest {
            sent_at: at(secs),
            ..request("evt_1", sub, attempt, body)
        };
        let kept = per_delivery(vec![
            sent("sub_1", 2, b"a", 20),
            sent("sub_2", 1, b"a", 5),
            sent("sub_1", 1, b"a", 10),
            sent("sub_1", 3, b"a", 30),
        ]);
        let got: Vec<(&str, u32, SystemTime)> = kept
            .iter()
            .map(|k| {
                (
                    k.request.subscription_id.as_str(),
                    k.request.attempt,
                    k.last_sent_at,
                )
            })
            .collect();
        let time = |secs| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        // The first attempt that sent the body, lasting as long as the newest.
        assert_eq!(got, vec![("sub_1", 1, time(30)), ("sub_2", 1, time(5))]);

        let changed = per_delivery(vec![sent("sub_1", 1, b"a", 10), sent("sub_1", 2, b"b", 20)]);
        assert_eq!(changed[0].request.attempt, 2);
    }

    #[test]
    fn only_a_later_attempt_with_another_body_replaces_the_stored_request() {
        let stored = request("evt_1", "sub_1", 2, b"{\"a\":1}");
        assert!(!replaces(
            &stored,
            &request("evt_1", "sub_1", 3, b"{\"a\":1}")
        ));
        assert!(!replaces(
            &stored,
            &request("evt_1", "sub_1", 1, b"<a>1</a>")
        ));
        assert!(replaces(
            &stored,
            &request("evt_1", "sub_1", 3, b"<a>1</a>")
        ));
    }

    #[test]
    fn queries_see_only_the_event_subscription_and_tenants_asked_for() {
        let shop_a = Scope::Only(["shop-a".to_owned()].into());
        let query = SentQuery::new("evt_1", "", "", &shop_a).expect("valid");
        assert!(query.matches(&request("evt_1", "sub_1", 1, b"")));
        assert!(!query.matches(&request("evt_2", "sub_1", 1, b"")));
        let other = pb::SentRequest {
            tenant: "shop-b".into(),
            ..request("evt_1", "sub_1", 1, b"")
        };
        assert!(!query.matches(&other));
        let one = SentQuery::new("evt_1", "sub_2", "", &Scope::All).expect("valid");
        assert!(!one.matches(&request("evt_1", "sub_1", 1, b"")));
        assert!(SentQuery::new("", "", "", &Scope::All).is_err());
    }
}
