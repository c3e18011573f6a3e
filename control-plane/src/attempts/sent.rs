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

use herald_core::limits::PageBytes;
use herald_proto::convert::system_time;
use herald_proto::v1 as pb;

use super::{Filter, LogError};
use crate::access::Scope;

/// The body bytes a page of requests holds, about: a page stops at the first request that
/// goes past it, and a request holds at most [`herald_core::limits::MAX_LOG_BODY_LIMIT`], so
/// a page stays well under gRPC's usual 4 MiB message limit.
pub const PAGE_BYTES: usize = herald_core::limits::MAX_PAGE_BYTES;
/// What a request's fields but its body take in a page, at most (its headers are bounded:
/// [`herald_proto::sent_request`]).
pub const REQUEST_OVERHEAD: usize = 512;

/// Which stored requests: one event's, optionally one subscription's, among the tenants the
/// caller may see, after a page token.
#[derive(Clone, Debug)]
pub struct SentQuery {
    filter: Filter,
    /// The last subscription of the previous page; empty for the first.
    after: String,
}

/// A page of requests, ordered by subscription.
#[derive(Debug, Default)]
pub struct SentPage {
    /// The requests.
    pub requests: Vec<pb::SentRequest>,
    /// Where the next page starts; empty on the last.
    pub next_page_token: String,
}

/// Fills pages of requests in order until [`PAGE_BYTES`].
#[derive(Debug, Default)]
pub struct PageFill {
    page: SentPage,
    bytes: PageBytes,
}

impl PageFill {
    /// Adds `request` unless the page is full (the first request always fits); false when
    /// full, and the page then says where the next one starts.
    pub fn add(&mut self, request: pb::SentRequest) -> bool {
        if !self.bytes.fits(request.body.len() + REQUEST_OVERHEAD) {
            self.page.next_page_token = self
                .page
                .requests
                .last()
                .map(|r| r.subscription_id.clone())
                .unwrap_or_default();
            return false;
        }
        self.page.requests.push(request);
        true
    }

    /// The page.
    pub fn finish(self) -> SentPage {
        self.page
    }
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
        Self::page(event_id, subscription_id, tenant, tenants, "")
    }

    /// The page after `page_token` of what [`Self::new`] asks for.
    pub fn page(
        event_id: &str,
        subscription_id: &str,
        tenant: &str,
        tenants: &Scope,
        page_token: &str,
    ) -> Result<Self, LogError> {
        // A page token is the last subscription id of the page before.
        if !page_token.is_empty() && herald_core::validate::subscription_id(page_token).is_err() {
            return Err(LogError::InvalidQuery(herald_core::ValidationError::new(
                "page_token",
                "is not from this listing",
            )));
        }
        herald_core::validate::event_id(event_id).map_err(|e| {
            LogError::InvalidQuery(herald_core::ValidationError::new("event_id", e.reason))
        })?;
        // The filter checks the subscription id and the tenant.
        let wire = pb::AttemptFilter {
            event_id: event_id.to_owned(),
            subscription_id: subscription_id.to_owned(),
            tenant: tenant.to_owned(),
            ..Default::default()
        };
        Ok(SentQuery {
            filter: Filter::within(wire, tenants)?,
            after: page_token.to_owned(),
        })
    }

    /// The last subscription of the previous page; empty for the first.
    pub fn after(&self) -> &str {
        &self.after
    }

    /// The subscription asked for; empty for all.
    pub fn subscription_id(&self) -> &str {
        &self.filter.wire().subscription_id
    }

    /// The tenants a request may belong to: `None` for any.
    pub fn tenants(&self) -> Option<Vec<&str>> {
        self.filter.tenants()
    }

    /// The event asked for.
    pub fn event_id(&self) -> &str {
        &self.filter.wire().event_id
    }

    /// Whether a stored request is one asked for.
    pub fn matches(&self, request: &pb::SentRequest) -> bool {
        let wire = self.filter.wire();
        request.event_id == wire.event_id
            && request.subscription_id.as_str() > self.after.as_str()
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
/// each named after its attempt whatever the report said (agents leave those fields, and the
/// URL, to the attempt); `None` where an attempt carries none.
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
            if request.url.is_empty() {
                request.url.clone_from(&attempt.url);
            }
            // An attempt without a start time is stored as of now: so is its request.
            request.sent_at = attempt
                .started_at
                .or_else(|| Some(herald_proto::convert::timestamp(SystemTime::now())));
            Some(request)
        })
        .collect()
}

/// A stored request's key: its delivery.
pub fn delivery_key(request: &pb::SentRequest) -> (&str, &str, &str) {
    (&request.event_id, &request.subscription_id, &request.tenant)
}

/// What a batch keeps of one delivery's requests: the one to store ([`replaces`] decides
/// among them, in attempt order), and when the newest that sent its body was sent.
#[derive(Debug)]
pub struct DeliveryRequest {
    /// The request to keep.
    pub request: pb::SentRequest,
    /// When the newest attempt of the batch that sent a request of this delivery started.
    pub last_sent_at: SystemTime,
}

/// The requests to store from a batch, one per delivery (a batch may hold several attempts
/// of one delivery), ordered by delivery (event, subscription, tenant).
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
    order.sort();
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
            let mut group = group.into_iter();
            let first = group.next()?;
            let mut last_sent_at = sent_at(&first);
            let mut request = first;
            for next in group {
                if replaces(&request, &next) {
                    last_sent_at = last_sent_at.max(sent_at(&next));
                    request = next;
                } else if next.body == request.body {
                    last_sent_at = last_sent_at.max(sent_at(&next));
                }
            }
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
