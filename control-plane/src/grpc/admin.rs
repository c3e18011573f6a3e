//! The operator-facing services: Subscriptions, Deliveries and Agents.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use futures_util::Stream;
use herald_core::event_type::is_heralds_own;
use herald_core::validate::ValidationError;
use herald_proto::convert::{required, valid_duration};
use herald_proto::v1 as pb;
use herald_proto::v1::agents_server::Agents;
use herald_proto::v1::deliveries_server::Deliveries;
use herald_proto::v1::subscriptions_server::Subscriptions as SubscriptionsApi;
use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status};

use super::Streams;
use crate::access::{Identity, caller};
use crate::attempts::{AttemptLog, Filter, SentQuery};
use crate::audit::{Action, Change, Recorder};
use crate::event_types::EventTypes;
use crate::fleet::Fleet;
use crate::health::Health;
use crate::hub::ConfigHub;
use crate::metrics::Metrics;
use crate::page_tokens::{Asked, Listing, PageTokens};
use crate::presence;
use crate::relay::Relay;
use crate::store::Store;
use crate::subscriptions::create_key::CreateKey;
use crate::subscriptions::{
    Created, Subscriptions, redact, with_signing_secrets_only, without_write_only,
};
use crate::test_send::Testers;

/// `herald.v1.Subscriptions`.
pub struct SubscriptionsService {
    registry: Subscriptions,
    health: Health,
    /// For the recent record of an endpoint's health.
    log: AttemptLog,
    /// What subscriptions may name.
    event_types: EventTypes,
    /// The agents that make test-sends.
    testers: Testers,
    /// Where changes are recorded.
    audit: Recorder,
}

impl SubscriptionsService {
    /// The service over a registry and the endpoints' health, testing endpoints through
    /// `testers`, recording changes in `audit`.
    pub fn new(
        registry: Subscriptions,
        health: Health,
        log: AttemptLog,
        event_types: EventTypes,
        testers: Testers,
        audit: Recorder,
    ) -> Self {
        SubscriptionsService {
            registry,
            health,
            log,
            event_types,
            testers,
            audit,
        }
    }

    /// Tells operators at once when `sub` was just given a client certificate that expires
    /// within two weeks (a failure to tell is logged: the hourly watch tries again).
    async fn warn_if_expiring(&self, sub: &pb::Subscription) {
        let store = self.registry.store();
        let events = self.health.events();
        if let Err(err) =
            crate::client_certs::warn_if_expiring(store, events, sub, SystemTime::now()).await
        {
            tracing::warn!(subscription = %sub.id, error = %err, "cannot warn of the client certificate's expiry");
        }
    }

    /// Refuses a pattern naming Herald's own `herald.*` operator events that `patterns` adds to
    /// a subscription of `tenant` (beside the `kept` ones it already had) unless `tenant` is the
    /// system tenant: no other tenant's endpoint is ever sent them, so such a pattern could
    /// only look like a subscription that never fires.
    fn receives_own_types_only_if_system(
        &self,
        tenant: &str,
        patterns: &[String],
        kept: &[String],
    ) -> Result<(), Status> {
        if tenant == self.testers.system_tenant {
            return Ok(());
        }
        match patterns
            .iter()
            .find(|p| !kept.contains(p) && is_heralds_own(p))
        {
            Some(own) => Err(herald_proto::convert::invalid_argument(
                ValidationError::new(
                    "event_types",
                    format!(
                        "{own:?} names Herald's own operator events, which only subscriptions of \
                     the system tenant {:?} receive",
                        self.testers.system_tenant
                    ),
                ),
            )),
            None => Ok(()),
        }
    }

    /// Records a change `who` made to `sub`.
    async fn audited(
        &self,
        who: &Identity,
        action: Action,
        sub: &pb::Subscription,
        detail: String,
    ) {
        let change = Change {
            action,
            tenant: &sub.tenant,
            object: &sub.id,
            revision: sub.revision,
            detail,
        };
        self.audit.record(who, change).await;
    }
}

impl SubscriptionsService {
    /// The subscription `id` as `who` may see it: another tenant's is `NOT_FOUND`, as an id
    /// nobody has.
    async fn visible(&self, who: &Identity, id: &str) -> Result<pb::Subscription, Status> {
        Ok(self.registry.get_within(&who.tenants, id).await?)
    }
}

#[tonic::async_trait]
impl SubscriptionsApi for SubscriptionsService {
    async fn create_subscription(
        &self,
        request: Request<pb::CreateSubscriptionRequest>,
    ) -> Result<Response<pb::Subscription>, Status> {
        let who = caller(&request);
        let request = request.into_inner();
        let key = CreateKey::of(&request).map_err(herald_proto::convert::invalid_argument)?;
        let sub = required(request.subscription, "subscription")?;
        if !sub.tenant.is_empty() {
            who.may_act_for(&sub.tenant)?;
        }
        // Sent again: answered as the first was, whatever changed since in the catalogue.
        let first = match &key {
            Some(key) => self.registry.created_with(&sub.tenant, key).await?,
            None => None,
        };
        let made = match first {
            Some(first) => Created::Replayed(first),
            None => {
                self.receives_own_types_only_if_system(&sub.tenant, &sub.event_types, &[])?;
                self.event_types
                    .check(&sub.event_types, &[], request.allow_unregistered)
                    .await?;
                self.registry.create_keyed(sub, key.as_ref()).await?
            }
        };
        let created = match made {
            Created::New(created) => created,
            Created::Replayed(first) => {
                tracing::info!(
                    id = %first.id,
                    tenant = %first.tenant,
                    "subscription create sent again with its idempotency key: answered with \
                     the subscription it made"
                );
                let mut response = Response::new(with_signing_secrets_only(first));
                herald_proto::idempotency::mark_replayed(&mut response);
                return Ok(response);
            }
        };
        tracing::info!(id = %created.id, tenant = %created.tenant, "subscription created");
        self.audited(
            &who,
            Action::SubscriptionCreate,
            &created,
            created.url.clone(),
        )
        .await;
        self.warn_if_expiring(&created).await;
        Ok(Response::new(with_signing_secrets_only(created)))
    }

    async fn get_subscription(
        &self,
        request: Request<pb::GetSubscriptionRequest>,
    ) -> Result<Response<pb::Subscription>, Status> {
        let who = caller(&request);
        let request = request.into_inner();
        let sub = self.visible(&who, &request.id).await?;
        if request.show_secrets && !who.sees_secrets_of(&sub.tenant) {
            return Err(Status::permission_denied(
                "only the admin role may see secret values (show_secrets)",
            ));
        }
        Ok(Response::new(if request.show_secrets {
            without_write_only(sub)
        } else {
            redact(sub)
        }))
    }

    async fn list_subscriptions(
        &self,
        request: Request<pb::ListSubscriptionsRequest>,
    ) -> Result<Response<pb::ListSubscriptionsResponse>, Status> {
        let who = caller(&request);
        let request = request.into_inner();
        let page = self
            .registry
            .list_within(
                &who.tenants,
                &request.tenant,
                request.page_size,
                &request.page_token,
            )
            .await?;
        Ok(Response::new(pb::ListSubscriptionsResponse {
            subscriptions: page.subscriptions.into_iter().map(redact).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn update_subscription(
        &self,
        request: Request<pb::UpdateSubscriptionRequest>,
    ) -> Result<Response<pb::Subscription>, Status> {
        let who = caller(&request);
        let request = request.into_inner();
        let sub = required(request.subscription, "subscription")?;
        // Only patterns the subscription does not have yet are checked: a stored pattern never
        // blocks a change to something else.
        let current = self.visible(&who, &sub.id).await?;
        self.receives_own_types_only_if_system(
            &current.tenant,
            &sub.event_types,
            &current.event_types,
        )?;
        self.event_types
            .check(
                &sub.event_types,
                &current.event_types,
                request.allow_unregistered,
            )
            .await?;
        let updated = self.registry.update(sub, request.expected_revision).await?;
        tracing::info!(id = %updated.id, revision = updated.revision, "subscription updated");
        self.audited(&who, Action::SubscriptionUpdate, &updated, String::new())
            .await;
        self.warn_if_expiring(&updated).await;
        Ok(Response::new(redact(updated)))
    }

    async fn delete_subscription(
        &self,
        request: Request<pb::DeleteSubscriptionRequest>,
    ) -> Result<Response<pb::DeleteSubscriptionResponse>, Status> {
        let who = caller(&request);
        let request = request.into_inner();
        // Not opened first: a damaged record can be deleted too.
        let deleted = self
            .registry
            .delete_within(&who.tenants, &request.id, request.expected_revision)
            .await?;
        self.audited(&who, Action::SubscriptionDelete, &deleted, String::new())
            .await;
        if let Err(err) = self.health.reset(&request.id).await {
            // Harmless: a record nobody reads, and a new subscription never has this id.
            tracing::warn!(id = %request.id, error = %err, "cannot forget a deleted subscription's health");
        }
        tracing::info!(id = %request.id, "subscription deleted");
        Ok(Response::new(pb::DeleteSubscriptionResponse {}))
    }

    async fn enable_subscription(
        &self,
        request: Request<pb::EnableSubscriptionRequest>,
    ) -> Result<Response<pb::Subscription>, Status> {
        let who = caller(&request);
        let request = request.into_inner();
        let was_disabled = !self.visible(&who, &request.id).await?.enabled;
        // A fresh start: earlier failures no longer count towards disabling it again. Reset
        // before it is enabled, so an enable the log cannot reset (its database down) changes
        // nothing, rather than enable an endpoint the next failure disables again.
        self.health.reset(&request.id).await.map_err(|err| {
            let status = Status::from(err);
            Status::new(
                status.code(),
                format!(
                    "not enabled: its failure count could not be reset: {}",
                    status.message()
                ),
            )
        })?;
        let sub = self
            .registry
            .enable(&request.id, request.replay_parked)
            .await?;
        if was_disabled
            && let Err(err) = self
                .health
                .events()
                .subscription_recovered(&sub, "enabled", 0, &sub.revision.to_string())
                .await
        {
            tracing::error!(id = %sub.id, error = %err, "cannot raise the recovered event");
        }
        tracing::info!(id = %sub.id, "subscription enabled");
        let detail = if request.replay_parked {
            "replay parked deliveries"
        } else {
            "skip parked deliveries"
        };
        self.audited(&who, Action::SubscriptionEnable, &sub, detail.into())
            .await;
        Ok(Response::new(redact(sub)))
    }

    async fn get_subscription_health(
        &self,
        request: Request<pb::GetSubscriptionHealthRequest>,
    ) -> Result<Response<pb::SubscriptionHealth>, Status> {
        let who = caller(&request);
        let id = request.into_inner().id;
        self.visible(&who, &id).await?;
        let mut health = self.health.get(&id).await?;
        crate::recent::fill(&self.log, &mut health).await?;
        Ok(Response::new(health))
    }

    async fn test_subscription(
        &self,
        request: Request<pb::TestSubscriptionRequest>,
    ) -> Result<Response<pb::TestSubscriptionResponse>, Status> {
        let who = caller(&request);
        let request = request.into_inner();
        let sub = self.visible(&who, &request.id).await?;
        who.may_act_for(&sub.tenant)?;
        let attempt = crate::test_send::test_send(
            &sub,
            &request,
            &self.event_types,
            &self.testers,
            &self.log,
        )
        .await?;
        let detail = format!(
            "{} to {}: {}",
            attempt.event_type,
            attempt.url,
            if attempt.status_code == 0 {
                attempt.error_kind.clone()
            } else {
                attempt.status_code.to_string()
            }
        );
        self.audited(&who, Action::SubscriptionTest, &sub, detail)
            .await;
        Ok(Response::new(pb::TestSubscriptionResponse {
            attempt: Some(attempt),
        }))
    }

    async fn disable_subscription(
        &self,
        request: Request<pb::DisableSubscriptionRequest>,
    ) -> Result<Response<pb::Subscription>, Status> {
        let who = caller(&request);
        let request = request.into_inner();
        let was_enabled = self.visible(&who, &request.id).await?.enabled;
        let sub = self.registry.disable(&request.id, &request.reason).await?;
        tracing::info!(id = %sub.id, reason = %sub.disabled_reason, "subscription disabled");
        self.audited(
            &who,
            Action::SubscriptionDisable,
            &sub,
            sub.disabled_reason.clone(),
        )
        .await;
        if was_enabled && let Err(err) = self.health.events().subscription_disabled(&sub).await {
            tracing::error!(id = %sub.id, error = %err, "cannot raise the disabled event");
        }
        Ok(Response::new(redact(sub)))
    }

    async fn rotate_secret(
        &self,
        request: Request<pb::RotateSecretRequest>,
    ) -> Result<Response<pb::Subscription>, Status> {
        let who = caller(&request);
        let request = request.into_inner();
        self.visible(&who, &request.id).await?;
        let grace = match &request.grace {
            None => None,
            Some(d) => Some(valid_duration(d).ok_or_else(|| {
                herald_proto::convert::invalid_field(
                    "grace",
                    "must be a valid duration of 0 or more",
                )
            })?),
        };
        let sub = self.registry.rotate_secret(&request.id, grace).await?;
        tracing::info!(id = %sub.id, "subscription secret rotated");
        self.audited(&who, Action::SubscriptionRotateSecret, &sub, String::new())
            .await;
        Ok(Response::new(with_signing_secrets_only(sub)))
    }
}

/// `herald.v1.Deliveries`.
pub struct DeliveriesService {
    log: AttemptLog,
    /// Whose subscriptions are whose, for scoped listings.
    hub: ConfigHub,
    /// Where replays are recorded.
    audit: Recorder,
    fleet: Fleet,
    /// For replays of agents another replica holds.
    relay: Relay,
    /// Where tails run; they end at shutdown.
    streams: Streams,
    /// Counts open tails.
    metrics: Metrics,
    /// Seals the log's positions into the page tokens callers see.
    pages: PageTokens,
}

/// The most delivery-log tails one replica serves at once.
const MAX_TAILS: usize = 1000;

impl DeliveriesService {
    /// The service over the delivery log, replaying through the agents in `fleet` (and those
    /// of other replicas through `relay`); tails run in `streams`; page tokens are sealed by
    /// `pages`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        log: AttemptLog,
        hub: ConfigHub,
        fleet: Fleet,
        relay: Relay,
        audit: Recorder,
        streams: Streams,
        metrics: Metrics,
        pages: PageTokens,
    ) -> Self {
        DeliveriesService {
            log,
            hub,
            audit,
            fleet,
            relay,
            streams,
            metrics,
            pages,
        }
    }
}

type AttemptStream = Pin<Box<dyn Stream<Item = Result<pb::Attempt, Status>> + Send>>;

#[tonic::async_trait]
impl Deliveries for DeliveriesService {
    async fn list_attempts(
        &self,
        request: Request<pb::ListAttemptsRequest>,
    ) -> Result<Response<pb::ListAttemptsResponse>, Status> {
        let who = caller(&request);
        let request = request.into_inner();
        let wire = request.filter.unwrap_or_default();
        if !who.tenants.is_all()
            && !wire.subscription_id.is_empty()
            && let Some(sub) = self.hub.get_or_departed(&wire.subscription_id)
            && !who.sees(&sub.tenant)
        {
            // Another tenant's subscription has no attempts for this caller: not even a page
            // token that would tell it from an unknown id.
            return Ok(Response::new(pb::ListAttemptsResponse::default()));
        }
        // Its times left out: a relative `--since 1h` is another time on the next page.
        let asked = Asked::new(
            &who.tenants,
            &pb::AttemptFilter {
                since: None,
                until: None,
                ..wire.clone()
            },
        );
        let filter = Filter::within(wire, &who.tenants)?;
        let after = self
            .pages
            .open(Listing::Attempts, &asked, &request.page_token)
            .map_err(herald_proto::convert::invalid_argument)?;
        let page = self.log.list(filter, request.page_size, &after).await?;
        Ok(Response::new(pb::ListAttemptsResponse {
            attempts: page.attempts,
            next_page_token: self
                .pages
                .seal(Listing::Attempts, &asked, &page.next_page_token)?,
        }))
    }

    async fn replay_deliveries(
        &self,
        request: Request<pb::ReplayDeliveriesRequest>,
    ) -> Result<Response<pb::ReplayDeliveriesResponse>, Status> {
        let who = caller(&request);
        let request = request.into_inner();
        if request.event_id.is_empty() && !request.subscription_id.is_empty() {
            herald_core::validate::subscription_id(&request.subscription_id)
                .map_err(herald_proto::convert::invalid_argument)?;
        }
        if request.event_id.is_empty()
            && !request.subscription_id.is_empty()
            && request.since.is_some()
            && !self
                .hub
                .get_or_departed(&request.subscription_id)
                .is_some_and(|sub| who.sees(&sub.tenant))
        {
            // As an event nobody emitted is: a subscription that is not there (for this
            // caller) has nothing to replay, and the answer says so rather than "none queued".
            return Err(Status::not_found(format!(
                "subscription {} not found",
                herald_core::validate::quoted(&request.subscription_id)
            )));
        }
        let named = if request.event_id.is_empty() {
            request.subscription_id.clone()
        } else {
            request.event_id.clone()
        };
        let replayed =
            crate::replay::replay(&self.log, &self.fleet, &self.relay, request, &who.tenants)
                .await?;
        let mut response = replayed.response;
        // A disabled subscription's deliveries wait parked until it is enabled.
        let parked = replayed
            .queued_to
            .iter()
            .filter(|sub| self.hub.get(sub).is_some_and(|s| !s.enabled))
            .count();
        response.parked = u32::try_from(parked).unwrap_or(u32::MAX);
        // One entry per tenant whose deliveries it named (one, but for an event id that
        // several tenants use), with that tenant's counts alone; none named: one entry of no
        // tenant.
        let mut tenants = replayed.tenants;
        if tenants.is_empty() {
            tenants.insert(String::new(), Default::default());
        }
        for (tenant, count) in &tenants {
            let change = Change {
                action: Action::DeliveriesReplay,
                tenant,
                object: &named,
                revision: 0,
                detail: format!(
                    "{} queued, {} not replayable",
                    count.queued, count.not_replayable
                ),
            };
            self.audit.record(&who, change).await;
        }
        tracing::info!(
            queued = response.queued,
            not_replayable = response.not_replayable.len(),
            "replay requested"
        );
        Ok(Response::new(response))
    }

    async fn get_sent_requests(
        &self,
        request: Request<pb::GetSentRequestsRequest>,
    ) -> Result<Response<pb::GetSentRequestsResponse>, Status> {
        let who = caller(&request);
        let request = request.into_inner();
        let asked = Asked::new(
            &who.tenants,
            &pb::GetSentRequestsRequest {
                page_token: String::new(),
                ..request.clone()
            },
        );
        let after = self
            .pages
            .open(Listing::SentRequests, &asked, &request.page_token)
            .map_err(herald_proto::convert::invalid_argument)?;
        let query = SentQuery::page(
            &request.event_id,
            &request.subscription_id,
            &request.tenant,
            &who.tenants,
            &after,
        )?;
        let page = self.log.sent_requests(query).await?;
        if page.requests.is_empty() && request.page_token.is_empty() {
            let to = if request.subscription_id.is_empty() {
                String::new()
            } else {
                format!(" to subscription {:?}", request.subscription_id)
            };
            return Err(Status::not_found(format!(
                "no request is stored for event {:?}{to}: the log keeps none while \
                 --log-body-limit is 0, none past retention, none expunged",
                request.event_id
            )));
        }
        Ok(Response::new(pb::GetSentRequestsResponse {
            requests: page.requests,
            next_page_token: self.pages.seal(
                Listing::SentRequests,
                &asked,
                &page.next_page_token,
            )?,
        }))
    }

    async fn expunge_sent_requests(
        &self,
        request: Request<pb::ExpungeSentRequestsRequest>,
    ) -> Result<Response<pb::ExpungeSentRequestsResponse>, Status> {
        let who = caller(&request);
        let request = request.into_inner();
        let query = SentQuery::new(&request.event_id, "", &request.tenant, &who.tenants)?;
        let expunged = self.log.expunge(query).await?;
        for tenant in &expunged.tenants {
            let change = Change {
                action: Action::DeliveriesExpunge,
                tenant,
                object: &request.event_id,
                revision: 0,
                detail: "stored requests removed".to_owned(),
            };
            self.audit.record(&who, change).await;
        }
        tracing::info!(event = %request.event_id, removed = expunged.removed, "stored requests expunged");
        Ok(Response::new(pb::ExpungeSentRequestsResponse {
            removed: expunged.removed,
        }))
    }

    type TailAttemptsStream = AttemptStream;

    async fn tail_attempts(
        &self,
        request: Request<pb::TailAttemptsRequest>,
    ) -> Result<Response<Self::TailAttemptsStream>, Status> {
        let who = caller(&request);
        let filter = Filter::within(
            request.into_inner().filter.unwrap_or_default(),
            &who.tenants,
        )?;
        let open = self.metrics.open_tail(MAX_TAILS).ok_or_else(|| {
            Status::resource_exhausted(format!(
                "{MAX_TAILS} tails of the delivery log are open on this replica, its limit: \
                 close one, or list attempts with ListAttempts"
            ))
        })?;
        let mut attempts = self.log.follow();
        let shutdown = self.streams.shutdown().clone();
        // A tail with `until` ends (OK) once every attempt started before it has had time to
        // be reported: TAIL_REPORT_LAG after it (at once when that has passed).
        let ends_at = filter.until().map(|until| until + TAIL_REPORT_LAG);
        let past = move || ends_at.is_some_and(|end| SystemTime::now() >= end);
        let stream = self.streams.stream(move |tx| async move {
            let _open = open;
            let ended = async move {
                match ends_at {
                    Some(end) => {
                        let left = end.duration_since(SystemTime::now()).unwrap_or_default();
                        tokio::time::sleep(left).await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::pin!(ended);
            loop {
                let attempt = tokio::select! {
                    // What is stored is sent before the end is noticed.
                    biased;
                    () = shutdown.cancelled() => {
                        // Not the end of what was asked for: the client should tail again. A
                        // client that stopped reading does not hold the shutdown up.
                        let status = Status::unavailable(
                            "this control plane is shutting down: tail again (every replica \
                             tails the same log)",
                        );
                        let _ = tx.try_send(Err(status));
                        return;
                    }
                    // The client went away: nothing is left to wait for, even while no
                    // attempt matches its filter.
                    () = tx.closed() => return,
                    next = attempts.recv() => next,
                    () = &mut ended => return,
                };
                if past() {
                    return;
                }
                match attempt {
                    Ok(attempt) if filter.matches(&attempt) => {
                        if tx.send(Ok((*attempt).clone())).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(missed)) => {
                        let status = Status::data_loss(format!(
                            "the tail fell behind and skipped {missed} attempts; list them with ListAttempts"
                        ));
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(stream))
    }
}

/// How long after a tail's `until` attempts started before it may still be reported: the
/// longest attempt, and the agents' report batching and retries after it.
const TAIL_REPORT_LAG: Duration =
    Duration::from_secs(herald_core::subscription::MAX_TIMEOUT.as_secs() + 30);

/// `herald.v1.Agents`.
pub struct AgentsService {
    fleet: Fleet,
    hub: ConfigHub,
    store: Store,
}

impl AgentsService {
    /// The service over this replica's fleet registry and every replica's presence records in
    /// `store`.
    pub fn new(fleet: Fleet, hub: ConfigHub, store: Store) -> Self {
        AgentsService { fleet, hub, store }
    }
}

#[tonic::async_trait]
impl Agents for AgentsService {
    async fn list_agents(
        &self,
        request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        // Agents serve several tenants at once: the fleet is for operators of every tenant.
        caller(&request).may_reach_shared("list the agents")?;
        let current = self.hub.revision();
        // Every replica's records, then this replica's own entries over them where they are
        // fresher: agents connected here (the record trails by up to a second), and agents the
        // store has no record of yet.
        // Without them the list would be this replica's agents alone, which reads as the
        // fleet: say so instead.
        let mut agents: BTreeMap<String, pb::AgentInfo> =
            match presence::read_all(&self.store).await {
                Ok(records) => records.into_iter().map(|a| (a.id.clone(), a)).collect(),
                Err(err) => {
                    let here = self.fleet.list(current).len();
                    return Err(Status::unavailable(format!(
                        "the agents' presence records cannot be read ({err}): only this replica's \
                     {here} agents are known here; retry once the config store answers"
                    )));
                }
            };
        for local in self.fleet.list(current) {
            if local.connected || !agents.contains_key(&local.id) {
                agents.insert(local.id.clone(), local);
            }
        }
        // An agent that holds every subscription change this replica knows of is current,
        // however far the store's other writes (presence records, guards) or a listing again
        // after an outage moved this replica's revision past it: as a replica counts its own
        // agents current at revisions that changed nothing they may see.
        let changed = self.hub.changed_revision();
        for agent in agents.values_mut() {
            if agent.applied_revision >= changed && agent.last_nack.is_empty() {
                agent.applied_revision = agent.applied_revision.max(current);
            }
        }
        // A connected agent is seen now: its stream is open and answers the replica's pings
        // (a host gone is cut off within the keepalive interval). A disconnected one was last
        // seen when it went.
        let now = herald_proto::convert::timestamp(SystemTime::now());
        Ok(Response::new(pb::ListAgentsResponse {
            agents: agents
                .into_values()
                .map(|agent| pb::AgentInfo {
                    current_revision: current,
                    last_seen: if agent.connected {
                        Some(now)
                    } else {
                        agent.last_seen
                    },
                    ..agent
                })
                .collect(),
        }))
    }
}
