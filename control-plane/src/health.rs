//! Endpoint health and auto-disable. The delivery log counts each subscription's run of
//! consecutive failed attempts in the commit that stores them, and keeps a follow-up for what
//! the config store has to hear ([`crate::attempts::derived`]); this module acts on those
//! follow-ups:
//!
//! - a run that reached the subscription's `disable_after` (default 10), and has gone on for
//!   `disable_min_failing` when set, disables it with reason `auto: N consecutive failures`;
//! - a receiver that answered 410 Gone disables it with reason [`GONE_REASON`];
//! - a run of [`RECOVERY_MIN_FAILURES`] or more that ended with a delivery is told to operators
//!   (`herald.subscription.recovered`).
//!
//! The config stream tells every agent of a disabling, and the audit log records it as
//! Herald's (actor `herald`). A follow-up is settled (removed from
//! the log) once acted on; one left behind by a replica that was killed first, or that met an
//! unreachable config store, is picked up by [`Health::run`] on any replica. Acting twice on
//! one follow-up changes nothing: a subscription is disabled once, and an operator event's id
//! comes from what happened, so raising it again is the same event.

use std::sync::Arc;
use std::time::Duration;

use herald_proto::convert::{disable_policy, system_time};
use herald_proto::v1 as pb;
use tokio_util::sync::CancellationToken;

use crate::access::HERALD;
use crate::attempts::derived::RECOVERY_MIN_FAILURES;
use crate::attempts::{AttemptLog, Followup, LogError, PendingFollowup, Reactions};
use crate::audit::{Action, Change, Recorder};
use crate::hub::ConfigHub;
use crate::metrics::{DisableReason, Metrics};
use crate::operator_events::OperatorEvents;
use crate::subscriptions::{SubscriptionError, Subscriptions};

/// The reason recorded on a subscription whose receiver answered 410 Gone.
pub const GONE_REASON: &str = "gone (410)";
/// How often each replica looks for follow-ups left behind.
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// How old a follow-up is before the sweep takes it (younger ones are being acted on by the
/// replica that stored them).
const LEFT_BEHIND_AFTER: Duration = Duration::from_secs(10);
/// Follow-ups taken by one sweep round.
const SWEEP_BATCH: usize = 100;

/// Why a follow-up could not be acted on now (it stays, and is tried again).
#[derive(Debug, thiserror::Error)]
pub enum FollowupError {
    /// The subscription registry (config store) failed.
    #[error(transparent)]
    Registry(#[from] SubscriptionError),
    /// The delivery log failed.
    #[error(transparent)]
    Log(#[from] LogError),
}

/// Acts on the delivery log's health follow-ups; cloning shares it.
#[derive(Clone)]
pub struct Health {
    log: AttemptLog,
    registry: Subscriptions,
    hub: ConfigHub,
    metrics: Metrics,
    events: OperatorEvents,
    audit: Recorder,
}

impl Health {
    /// Health over the records in `log`, disabling through `registry` (counted in `metrics`,
    /// told as operator `events`, recorded in `audit` as Herald's); `hub` holds the
    /// subscriptions' policies.
    pub fn new(
        log: AttemptLog,
        registry: Subscriptions,
        hub: ConfigHub,
        metrics: Metrics,
        events: OperatorEvents,
        audit: Recorder,
    ) -> Self {
        Health {
            audit,
            log,
            registry,
            hub,
            metrics,
            events,
        }
    }

    /// Where operator events are raised.
    pub fn events(&self) -> &OperatorEvents {
        &self.events
    }

    /// What the attempts the log stores set off: exhausted events, and runs of failures that
    /// disable their subscriptions (by the policies the hub holds).
    pub fn reactions(&self) -> Arc<dyn Reactions> {
        Arc::new(ControlPlaneReactions {
            hub: self.hub.clone(),
            events: self.events.clone(),
        })
    }

    /// The health record of `id` (an empty one for a subscription that never failed).
    pub async fn get(&self, id: &str) -> Result<pb::SubscriptionHealth, tonic::Status> {
        self.registry.get(id).await?;
        Ok(self
            .log
            .health(id)
            .await?
            .unwrap_or_else(|| pb::SubscriptionHealth {
                subscription_id: id.to_owned(),
                ..Default::default()
            }))
    }

    /// Forgets a subscription's failures (re-enabled: it gets a fresh run; deleted).
    pub async fn reset(&self, id: &str) -> Result<(), LogError> {
        self.log.forget_health(id).await
    }

    /// Acts on `followups` and settles those done; those that failed stay for the sweep.
    pub async fn act(&self, followups: Vec<PendingFollowup>) {
        let mut done = Vec::with_capacity(followups.len());
        for pending in followups {
            match self.act_on(&pending.followup).await {
                Ok(()) => done.push(pending.id),
                Err(err) => tracing::warn!(
                    subscription = %pending.followup.subscription_id,
                    error = %err,
                    "endpoint health follow-up waits; tried again shortly"
                ),
            }
        }
        if done.is_empty() {
            return;
        }
        if let Err(err) = self.log.settle(&done).await {
            // Acted on, not settled: the sweep acts again, which changes nothing.
            tracing::warn!(error = %err, "cannot settle endpoint health follow-ups");
        }
    }

    /// Acts on the follow-ups that replicas left behind, every few seconds until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(SWEEP_EVERY) => {}
            }
            match self.log.followups(LEFT_BEHIND_AFTER, SWEEP_BATCH).await {
                Ok(left) if left.is_empty() => {}
                Ok(left) => {
                    tracing::info!(
                        count = left.len(),
                        "acting on endpoint health follow-ups left behind"
                    );
                    self.act(left).await;
                }
                Err(err) => {
                    tracing::debug!(error = %err, "cannot look for health follow-ups")
                }
            }
        }
    }

    async fn act_on(&self, followup: &Followup) -> Result<(), FollowupError> {
        let id = followup.subscription_id.as_str();
        if id.is_empty() {
            return Ok(());
        }
        let sub = match self.registry.get(id).await {
            Ok(sub) => sub,
            // Deleted since: nothing left to act on.
            Err(SubscriptionError::NotFound(_)) => return Ok(()),
            Err(err) => return Err(err.into()),
        };
        if followup.gone {
            return self.disable(&sub, GONE_REASON, DisableReason::gone).await;
        }
        if let Some(peak) = &followup.longest_run
            && limit_reached(&sub, peak)
        {
            let reason = format!("auto: {} consecutive failures", peak.consecutive_failures);
            return self.disable(&sub, &reason, DisableReason::failures).await;
        }
        if followup.ended_run >= RECOVERY_MIN_FAILURES && sub.enabled {
            let how = format!("delivered after {} failures", followup.ended_run);
            let at = followup.ended_at.unwrap_or_default();
            let occurrence = format!("{}.{}", at.seconds, at.nanos);
            self.events
                .subscription_recovered(&sub, &how, followup.ended_run, &occurrence)
                .await?;
        }
        Ok(())
    }

    /// Disables `sub` for `reason`, and tells operators. A subscription found disabled for
    /// that very reason (by an earlier try at this follow-up that stopped before telling) is
    /// told about again: the same disabling is the same event.
    async fn disable(
        &self,
        sub: &pb::Subscription,
        reason: &str,
        why: DisableReason,
    ) -> Result<(), FollowupError> {
        match self.registry.disable_if_enabled(&sub.id, reason).await? {
            Some(disabled) => {
                self.metrics.disabled(why);
                tracing::warn!(subscription = %sub.id, reason, "subscription disabled");
                let change = Change {
                    action: Action::SubscriptionDisable,
                    tenant: &disabled.tenant,
                    object: &disabled.id,
                    revision: disabled.revision,
                    detail: reason.to_owned(),
                };
                self.audit.record(&HERALD, change).await;
                self.events.subscription_disabled(&disabled).await?;
            }
            None if !sub.enabled && sub.disabled_reason == reason => {
                self.events.subscription_disabled(sub).await?;
            }
            None => {}
        }
        Ok(())
    }
}

/// [`Health::reactions`].
struct ControlPlaneReactions {
    hub: ConfigHub,
    events: OperatorEvents,
}

impl Reactions for ControlPlaneReactions {
    fn raise(&self, attempt: &pb::Attempt) -> Option<pb::Event> {
        self.events.exhausted(attempt)
    }

    fn disables(&self, run: &pb::SubscriptionHealth) -> Option<bool> {
        // Before the hub has loaded the subscriptions, the follow-up decides.
        if self.hub.revision() == 0 {
            return None;
        }
        // A subscription the hub does not hold was deleted (agents deliver only what a hub
        // sent them): nothing to disable. Should it be one created a moment ago that this
        // replica has not seen yet, the run's next failure is checked again.
        let Some(sub) = self.hub.get(&run.subscription_id) else {
            return Some(false);
        };
        Some(sub.enabled && limit_reached(&sub, run))
    }
}

/// Whether a run of failures (the record at its longest) reached the subscription's limit.
fn limit_reached(sub: &pb::Subscription, run: &pb::SubscriptionHealth) -> bool {
    let Ok((after, min_failing)) = disable_policy(sub) else {
        return false;
    };
    if run.consecutive_failures < after {
        return false;
    }
    let Some(min) = min_failing else {
        return true;
    };
    match (&run.failing_since, &run.last_failure_at) {
        (Some(since), Some(last)) => {
            system_time(last)
                .duration_since(system_time(since))
                .unwrap_or_default()
                >= min
        }
        _ => false,
    }
}
