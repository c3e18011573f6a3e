//! `herald.v1.AgentControl`: the agents' two streams.
//!
//! Config: the agent says hello; it gets the catalogue's schemas, when it says it checks
//! payloads against them (then each change to them); then a snapshot of the subscriptions it
//! may deliver (its interest: tenants, event-type prefixes, region) — or, when it names a
//! revision it holds that the hub's history still covers, only the changes since — then each
//! change as it happens, and a fresh snapshot whenever it fell so far behind that the hub's
//! buffer no longer holds the changes it missed. Acks and nacks are recorded in the fleet
//! registry.
//!
//! Reports: each batch of attempts is stored durably in the delivery log, with the health
//! counts and operator events it derives, then acked by id. The commit's follow-ups are acted
//! on next ([`crate::health`]): a receiver that answered 410 Gone has its subscription disabled
//! (reason `gone (410)`), and so has an endpoint that keeps failing; either reaches every agent
//! through the config stream.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use herald_proto::message_shares::MessageShares;
use herald_proto::sent_request;
use herald_proto::v1 as pb;
use herald_proto::v1::agent_control_server::AgentControl;
use herald_proto::v1::config_request::Kind;
use prost::Message as _;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::Streams;
use crate::access::{Identity, caller};
use crate::agent_trust::{self, Refusal};
use crate::attempts::{AttemptLog, LogError, PendingFollowup};
use crate::fleet::{Fleet, HelloError, Order};
use crate::health::Health;
use crate::hub::{Change, ConfigHub, Resume, Snapshot, Unreadable};
use crate::metrics::Metrics;
use crate::schema_feed::{SchemaChange, SchemaFeed, whole_set};
use crate::store::Store;
use crate::subscriptions::{SubscriptionError, Subscriptions};

/// How long an agent has to say hello after opening its config stream.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// The calls whose every message is counted against the budget of reports in flight
/// (`--max-report-bytes-in-flight`): the attempt reports agents stream.
pub const BUDGETED_ROUTES: &[&str] = &["/herald.v1.AgentControl/ReportAttempts"];
/// How long a report batch let into that budget has to arrive whole: a stream stalled
/// mid-batch is ended rather than keep its share. (A batch is at most 512 KiB: 9 KB/s.)
pub const BATCH_ARRIVAL: Duration = Duration::from_secs(60);
use herald_core::disk_fault::DiskFault;
use herald_core::limits::MAX_REPORT_BATCH;
/// The most unacknowledged changes per stream whose convergence time is measured.
const MAX_UNACKED_TIMED: usize = 1024;
/// Streams that send a snapshot at the same time (the others wait their turn).
const SNAPSHOTS_AT_ONCE: usize = 32;
/// The longest an agent may take to read its whole snapshot.
const SNAPSHOT_SEND_LIMIT: Duration = Duration::from_secs(120);
/// The size a snapshot part is cut at: well under gRPC's usual 4 MiB message limit, so
/// clients in any language read a snapshot of any size.
const SNAPSHOT_PART_BYTES: usize = 1024 * 1024;

/// `herald.v1.AgentControl`.
pub struct AgentControlService {
    hub: ConfigHub,
    /// The catalogue's schemas, for agents that check payloads against them.
    schemas: SchemaFeed,
    /// Where subscriptions the hub does not hold yet are looked up (reports).
    registry: Subscriptions,
    fleet: Fleet,
    log: AttemptLog,
    health: Health,
    metrics: Metrics,
    /// Where the config and report streams run; they end at shutdown.
    streams: Streams,
    /// Turns to send a snapshot (see [`send_snapshot`]).
    snapshot_turns: Arc<Semaphore>,
    /// The most body bytes the log keeps of a request as sent (`--log-body-limit`).
    log_body_limit: u32,
}

/// What config streams send: the subscriptions, the catalogue's schemas, and how much of the
/// requests they send the agents are to report.
pub struct ConfigFeeds {
    /// The subscriptions.
    pub hub: ConfigHub,
    /// The catalogue's schemas.
    pub schemas: SchemaFeed,
    /// The most body bytes the log keeps of a request as sent (0: none), which agents report
    /// no more than, and reports are cut to.
    pub log_body_limit: u32,
}

impl AgentControlService {
    /// The service; its streams run in `streams`.
    pub fn new(
        ConfigFeeds {
            hub,
            schemas,
            log_body_limit,
        }: ConfigFeeds,
        registry: Subscriptions,
        fleet: Fleet,
        log: AttemptLog,
        health: Health,
        metrics: Metrics,
        streams: Streams,
    ) -> Self {
        AgentControlService {
            hub,
            schemas,
            registry,
            fleet,
            log,
            health,
            metrics,
            streams,
            snapshot_turns: Arc::new(Semaphore::new(SNAPSHOTS_AT_ONCE)),
            log_body_limit,
        }
    }
}

type Outbound<T> = std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl AgentControl for AgentControlService {
    type StreamConfigStream = Outbound<pb::ConfigUpdate>;

    async fn stream_config(
        &self,
        request: Request<Streaming<pb::ConfigRequest>>,
    ) -> Result<Response<Self::StreamConfigStream>, Status> {
        let who = caller(&request);
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello within 10 s"))??;
        let Some(pb::ConfigRequest {
            kind: Some(Kind::Hello(hello)),
        }) = first
        else {
            return Err(Status::invalid_argument(
                "the first message must be a hello",
            ));
        };
        let mut hello = agent_trust::admit_hello(&who, hello)?;
        let interest = Interest::new(&hello);
        let shared = Shared {
            hub: self.hub.clone(),
            schemas: self.schemas.clone(),
            fleet: self.fleet.clone(),
            metrics: self.metrics.clone(),
            shutdown: self.streams.shutdown().clone(),
            snapshot_turns: self.snapshot_turns.clone(),
            log_body_limit: self.log_body_limit,
        };
        let schemas_ready = async {
            if hello.checks_schemas {
                shared.schemas.ready().await;
            }
        };
        tokio::select! {
            _ = futures_util::future::join(shared.hub.ready(), schemas_ready) => {}
            () = shared.shutdown.cancelled() => return Err(Status::unavailable("shutting down")),
        }
        if let Some(unreadable) = shared.hub.unreadable() {
            return Err(cannot_serve(&unreadable));
        }
        // A revision ahead of what this replica's hub reflects (another replica's newer
        // change, a store restored from an older backup, an agent's mistake) cannot be
        // resumed from here: the agent gets a snapshot, and is listed as holding nothing until
        // it acks one.
        if !(0..=shared.hub.revision()).contains(&hello.last_revision) {
            hello.last_revision = 0;
        }
        // Held by another identity on another replica (or on this one before a restart)?
        holder_elsewhere(self.registry.store(), &hello.agent_id, &who.name).await?;
        let joined = shared
            .fleet
            .connected(&hello, &who.name)
            .map_err(|err| match err {
                HelloError::IdTaken { .. } => Status::permission_denied(err.to_string()),
                HelloError::TooManyAgents { .. } | HelloError::TooManyStreams { .. } => {
                    Status::resource_exhausted(err.to_string())
                }
            })?;
        tracing::info!(agent = %hello.agent_id, region = %hello.region, "agent connected");
        let agent = hello.agent_id;
        let resume_from = hello.last_revision;
        let checks_schemas = hello.checks_schemas;
        let stream_id = joined.stream;
        let mut orders = joined.orders;
        let stream = self.streams.stream(move |tx| async move {
            let session = Session {
                agent: &agent,
                resume_from,
                checks_schemas,
                interest: &interest,
                inbound: &mut inbound,
                orders: &mut orders,
                tx: &tx,
            };
            follow(&shared, session).await;
            shared.fleet.disconnected(&agent, stream_id);
            tracing::info!(agent = %agent, "agent disconnected");
        });
        Ok(Response::new(stream))
    }

    type ReportAttemptsStream = Outbound<pb::ReportAck>;

    async fn report_attempts(
        &self,
        request: Request<Streaming<pb::ReportBatch>>,
    ) -> Result<Response<Self::ReportAttemptsStream>, Status> {
        let who = caller(&request);
        let shares = MessageShares::of(&request);
        let mut inbound = request.into_inner();
        let (log, health, streams) = (self.log.clone(), self.health.clone(), self.streams.clone());
        let (hub, registry, fleet) = (self.hub.clone(), self.registry.clone(), self.fleet.clone());
        // Reports are checked against the hub's subscriptions: before it has loaded them (a
        // replica just started) every report would look unknown, and be refused and acked.
        tokio::select! {
            () = hub.ready() => {}
            () = streams.shutdown().cancelled() => return Err(Status::unavailable("shutting down")),
        }
        let reactions = health.reactions();
        let metrics = self.metrics.clone();
        let body_limit = self.log_body_limit as usize;
        let stream = self.streams.stream(move |tx| async move {
            let _open = metrics.report_stream();
            // The agent id this stream's batches were found to be the caller's (checked once,
            // then again only if a batch names another).
            let mut own_id: Option<String> = None;
            // The follow-ups of stored batches (disabling, recovery events) are acted on by a
            // task of their own, in order, while the next batch is stored; a short queue keeps
            // it close behind. A follow-up not acted on stays in the log for the sweep.
            let (to_act, mut acting) = mpsc::channel::<Vec<PendingFollowup>>(FOLLOWUP_QUEUE);
            // When the stream ends the queue closes, and the task finishes what it holds.
            let events = health.events().clone();
            streams.spawn(async move {
                while let Some(followups) = acting.recv().await {
                    health.act(followups).await;
                }
            });
            loop {
                let batch = tokio::select! {
                    () = streams.shutdown().cancelled() => return,
                    batch = inbound.message() => batch,
                };
                let batch = match batch {
                    Ok(Some(batch)) => batch,
                    Ok(None) => return,
                    Err(status) => {
                        // The agent is told why (a batch too large or too slow to arrive), if
                        // it is still there.
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                // The batch's share of the replica's budget of reports in flight, given back
                // once it is stored: then the next waiting batch is read.
                let share = shares.next();
                if batch.attempts.len() > MAX_REPORT_BATCH {
                    let status = Status::invalid_argument(format!(
                        "a report batch carries at most {MAX_REPORT_BATCH} attempts"
                    ));
                    let _ = tx.send(Err(status)).await;
                    return;
                }
                // An attempt is the batch's agent's, whatever it says: replays of it are sent
                // to that agent, which must serve its tenant (`Fleet::send_replay`).
                let mut attempts = batch.attempts;
                if !batch.agent_id.is_empty() {
                    if let Err(invalid) = herald_core::validate::agent_id(&batch.agent_id) {
                        let _ = tx
                            .send(Err(herald_proto::convert::invalid_argument(invalid)))
                            .await;
                        return;
                    }
                    // Attempts are stored as the agent's: an identity may not report them
                    // under an id another identity holds, as it may not say hello with it.
                    if own_id.as_deref() != Some(batch.agent_id.as_str()) {
                        if let Err(status) =
                            held_by(&fleet, registry.store(), &batch.agent_id, &who.name).await
                        {
                            let _ = tx.send(Err(status)).await;
                            return;
                        }
                        own_id = Some(batch.agent_id.clone());
                    }
                    for attempt in &mut attempts {
                        if attempt.agent_id != batch.agent_id {
                            attempt.agent_id.clone_from(&batch.agent_id);
                        }
                    }
                }
                let attempts = match admitted(&who, &hub, &registry, attempts).await {
                    Ok(mut admitted) => {
                        for attempt in &mut admitted.attempts {
                            sent_request::bound(&mut attempt.request, body_limit);
                        }
                        if !admitted.refused.is_empty() {
                            for refusal in &admitted.refused {
                                metrics.report_refused(*refusal);
                            }
                            tracing::warn!(
                                agent = %agent_trust::cut(&batch.agent_id, agent_trust::MAX_HELLO_FIELD),
                                token = %who.name,
                                refused = admitted.refused.len(),
                                first_reason = ?admitted.refused[0],
                                "attempt reports refused: their subscriptions are unknown or \
                                 outside the agent token's scope, or they are malformed \
                                 (first_reason)"
                            );
                        }
                        admitted.attempts
                    }
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                // Health counts and operator events are written in the commit that stores
                // the attempts, so an ack means all of it is durable.
                let stored = match log.store(attempts, reactions.clone()).await {
                    Ok(stored) => stored,
                    Err(err) => {
                        tracing::error!(error = %err, "cannot store attempt reports");
                        // UNAVAILABLE, or RESOURCE_EXHAUSTED for a full disk: either way the
                        // agent keeps the batch and sends it again.
                        let message = format!("cannot store reports: {err}");
                        let status = match err {
                            LogError::Disk(DiskFault::Full(_)) => {
                                herald_proto::refusal::disk_full(message)
                            }
                            _ => Status::unavailable(message),
                        };
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                // Stored: the next waiting batch may be read (and the gauge says so before the
                // count of stored attempts does).
                drop(share);
                metrics.stored(&stored.attempts);
                if stored
                    .attempts
                    .iter()
                    .any(|a| a.outcome() == pb::Outcome::Failed)
                {
                    events.wake();
                }
                // The batch goes before the ack, which waits on the agent.
                let followups = stored.followups;
                drop(stored.attempts);
                let ack = pb::ReportAck {
                    batch_id: batch.batch_id,
                };
                if tx.send(Ok(ack)).await.is_err() {
                    return;
                }
                if !followups.is_empty() && to_act.send(followups).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(stream))
    }
}

/// Refuses reports under `agent_id` from `identity` when another identity holds the id, on
/// this replica ([`Fleet::holder`]) or, by its presence record, on another.
async fn held_by(
    fleet: &Fleet,
    store: &Store,
    agent_id: &str,
    identity: &str,
) -> Result<(), Status> {
    if fleet
        .holder(agent_id)
        .is_some_and(|holder| holder != identity)
    {
        return Err(id_taken(agent_id));
    }
    holder_elsewhere(store, agent_id, identity).await
}

/// The refusal of an agent id another identity holds.
fn id_taken(agent_id: &str) -> Status {
    Status::permission_denied(
        HelloError::IdTaken {
            agent_id: agent_id.to_owned(),
        }
        .to_string(),
    )
}

/// Refuses a hello with `agent_id` from `identity` when the agent's presence record says
/// another identity holds the id: replicas share the binding of ids to identities through
/// those records, so an identity cannot take over another's agent id (and with it the
/// agent's place in the list and the orders sent to it) on a replica the agent is not on.
async fn holder_elsewhere(store: &Store, agent_id: &str, identity: &str) -> Result<(), Status> {
    let record = match store.get(&crate::keys::agent(agent_id)).await {
        Ok(record) => record,
        Err(err) => {
            // The config may still be served from memory: this replica's own binding of ids
            // to identities (`Fleet::connected`) is checked next.
            tracing::warn!(agent = %agent_id, error = %err, "cannot read the agent's presence record; its id is checked against this replica's agents only");
            None
        }
    };
    let holder = record
        .and_then(|kv| pb::AgentInfo::decode(kv.value.as_slice()).ok())
        .map(|info| info.identity)
        .unwrap_or_default();
    // A record of an older replica names no identity: nothing to compare.
    if !holder.is_empty() && holder != identity {
        return Err(id_taken(agent_id));
    }
    Ok(())
}

/// The refusal of a config stream while this replica cannot open some stored subscriptions:
/// a config without them would have the agent acknowledge their events and never deliver.
fn cannot_serve(unreadable: &Unreadable) -> Status {
    // The answer names no subscription (it may be another tenant's); this log does.
    tracing::warn!(
        damaged = unreadable.damaged,
        sealed = unreadable.sealed,
        example = %unreadable.example,
        reason = %unreadable.reason,
        "an agent's config stream refused: stored subscriptions do not open here"
    );
    let mut why = vec![];
    if unreadable.damaged > 0 {
        why.push(format!(
            "{} stored subscription(s) are damaged and open nowhere: an operator must delete \
             them (the control plane's log names them)",
            unreadable.damaged
        ));
    }
    if unreadable.sealed > 0 {
        why.push(format!(
            "{} stored subscription(s) are sealed with a key this control plane's keyring \
             lacks: connect to another replica",
            unreadable.sealed
        ));
    }
    Status::unavailable(format!(
        "this control plane cannot serve a complete config: {}",
        why.join("; ")
    ))
}

/// Stored batches' follow-ups of one report stream waiting to be acted on.
const FOLLOWUP_QUEUE: usize = 4;
/// Subscriptions of one report batch looked up in the config store when the hub does not hold
/// them (yet): the rest are refused as unknown.
const STORE_LOOKUPS_PER_BATCH: usize = 16;

/// A report batch's attempts sorted into those to store and why the others were refused.
struct Admitted {
    attempts: Vec<pb::Attempt>,
    refused: Vec<Refusal>,
}

/// Sorts `attempts` reported by an agent calling as `who` ([`agent_trust::check_report`]). A
/// subscription the hub does not hold, now or lately deleted, may be one it has not seen yet:
/// the store is asked, for a few per batch.
async fn admitted(
    who: &Identity,
    hub: &ConfigHub,
    registry: &Subscriptions,
    attempts: Vec<pb::Attempt>,
) -> Result<Admitted, Status> {
    let mut admitted = Admitted {
        attempts: Vec::with_capacity(attempts.len()),
        refused: Vec::new(),
    };
    let mut looked_up: BTreeMap<String, Option<Arc<pb::Subscription>>> = BTreeMap::new();
    for attempt in attempts {
        let mut sub = hub.get_or_departed(&attempt.subscription_id);
        if sub.is_none() {
            if let Some(found) = looked_up.get(&attempt.subscription_id) {
                sub = found.clone();
            } else if looked_up.len() < STORE_LOOKUPS_PER_BATCH {
                let found = match registry.get(&attempt.subscription_id).await {
                    Ok(found) => Some(Arc::new(found)),
                    Err(SubscriptionError::NotFound(_) | SubscriptionError::Invalid(_)) => None,
                    Err(err) => return Err(err.into()),
                };
                looked_up.insert(attempt.subscription_id.clone(), found.clone());
                sub = found;
            }
        }
        let checked = match agent_trust::check_report(who, sub.as_deref(), &attempt) {
            // Moved out of the agent's regions lately: the attempts it made, or skipped, while
            // the subscription was its own are still its to report.
            Err(Refusal::foreign_subscription) => match hub.before_move(&attempt.subscription_id) {
                Some(before) => agent_trust::check_report(who, Some(&before), &attempt),
                None => Err(Refusal::foreign_subscription),
            },
            checked => checked,
        };
        match checked {
            Ok(()) => admitted.attempts.push(attempt),
            Err(refusal) => admitted.refused.push(refusal),
        }
    }
    Ok(admitted)
}

/// What every config stream of this replica shares.
struct Shared {
    hub: ConfigHub,
    schemas: SchemaFeed,
    fleet: Fleet,
    metrics: Metrics,
    shutdown: CancellationToken,
    snapshot_turns: Arc<Semaphore>,
    log_body_limit: u32,
}

/// One agent's config stream.
struct Session<'a> {
    agent: &'a str,
    /// The revision the agent said it holds (0: none).
    resume_from: i64,
    /// Whether the agent checks payloads against the catalogue's schemas (and wants them).
    checks_schemas: bool,
    interest: &'a Interest,
    inbound: &'a mut Streaming<pb::ConfigRequest>,
    /// Orders for this agent.
    orders: &'a mut mpsc::Receiver<Order>,
    tx: &'a mpsc::Sender<Result<pb::ConfigUpdate, Status>>,
}

/// Sends the snapshot, then changes (and replay orders), until the agent or the server goes
/// away.
async fn follow(shared: &Shared, session: Session<'_>) {
    let Shared {
        hub,
        schemas,
        fleet,
        metrics,
        shutdown,
        snapshot_turns,
        log_body_limit,
    } = shared;
    let Session {
        agent,
        resume_from,
        checks_schemas,
        interest,
        inbound,
        orders,
        tx,
    } = session;
    // The schemas first: an agent checks the payloads it accepts from the moment its
    // subscriptions arrive.
    let mut schema_changes = None;
    if checks_schemas {
        let Ok(changes) = send_schemas(snapshot_turns, schemas, tx, interest).await else {
            return;
        };
        schema_changes = Some(changes);
    }
    // An agent that already holds a recent revision gets the changes since; any other a
    // snapshot.
    let resumed = (resume_from > 0).then(|| hub.resume(resume_from)).flatten();
    // The newest revision sent to the agent, the newest it acked, and the newest the hub
    // announced: once it has acked all it was sent, changes that concern nothing it may see
    // leave it up to date with the newest.
    let (mut sent, mut acked, mut newest) = (resume_from, resume_from, resume_from);
    let mut changes = match resumed {
        Some((resume, changes)) => {
            // Sent even when nothing changed (an empty delta at the agent's own revision):
            // it brings the log's body limit, which this replica may not share with the last.
            if resume.revision >= resume_from {
                let update = pb::ConfigUpdate {
                    log_body_limit: Some(*log_body_limit),
                    admitted_tenants: Some(interest.admitted_tenants()),
                    ..interest.merged(&resume)
                };
                if tx.send(Ok(update)).await.is_err() {
                    return;
                }
                sent = resume.revision;
            }
            changes
        }
        None => {
            let Ok((revision, changes)) =
                send_snapshot(snapshot_turns, hub, tx, interest, *log_body_limit).await
            else {
                return;
            };
            sent = revision;
            changes
        }
    };
    newest = newest.max(sent);
    // Changes sent and not yet acknowledged, oldest first, with when the hub saw them.
    let mut unacked: std::collections::VecDeque<(i64, tokio::time::Instant)> = Default::default();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            message = inbound.message() => match message {
                Ok(Some(pb::ConfigRequest { kind: Some(Kind::Ack(ack)) })) => {
                    // An agent cannot have applied more than it was sent.
                    let revision = ack.revision.min(sent);
                    acked = acked.max(revision);
                    // Changes filtered out while this ack was on its way count as applied.
                    let current = if acked >= sent { newest.max(acked) } else { revision };
                    fleet.acked(agent, current);
                    while let Some((pending, seen_at)) = unacked.front().copied() {
                        if pending > revision {
                            break;
                        }
                        metrics.converged(seen_at.elapsed());
                        unacked.pop_front();
                    }
                }
                Ok(Some(pb::ConfigRequest { kind: Some(Kind::ReplayResult(result)) })) => {
                    fleet.replay_answered(agent, result);
                }
                Ok(Some(pb::ConfigRequest { kind: Some(Kind::EmitResult(result)) })) => {
                    fleet.emit_answered(agent, result);
                }
                Ok(Some(pb::ConfigRequest { kind: Some(Kind::TestResult(result)) })) => {
                    fleet.test_answered(agent, result);
                }
                Ok(Some(pb::ConfigRequest { kind: Some(Kind::Nack(nack)) })) => {
                    let reason = agent_trust::bounded_reason(&nack.reason);
                    tracing::warn!(agent, revision = nack.revision, reason, "agent refused config");
                    fleet.nacked(agent, nack.revision, &reason);
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return,
            },
            change = next_schema_change(&mut schema_changes) => {
                let sent = match change {
                    Ok(change) => {
                        let wanted = |name: &str| interest.emits.covers_type(name);
                        let mut sent = Ok(());
                        for update in change.to_updates(wanted, SNAPSHOT_PART_BYTES) {
                            let update = pb::ConfigUpdate {
                                schemas: Some(update),
                                ..Default::default()
                            };
                            sent = tx.send(Ok(update)).await.map_err(|_| ());
                            if sent.is_err() {
                                break;
                            }
                        }
                        sent
                    }
                    Err(RecvError::Lagged(_)) => {
                        // Fell behind the feed's buffer: the whole set again.
                        send_schemas(snapshot_turns, schemas, tx, interest)
                            .await
                            .map(|fresh| schema_changes = Some(fresh))
                    }
                    Err(RecvError::Closed) => {
                        schema_changes = None;
                        Ok(())
                    }
                };
                if sent.is_err() {
                    return;
                }
            }
            Some(order) = orders.recv() => {
                let update = match order {
                    Order::Replay(replay) => pb::ConfigUpdate {
                        replay: Some(replay),
                        ..Default::default()
                    },
                    Order::Emit(emit) => pb::ConfigUpdate {
                        emit: Some(emit),
                        ..Default::default()
                    },
                    Order::Test(test) => pb::ConfigUpdate {
                        test: Some(*test),
                        ..Default::default()
                    },
                };
                if tx.send(Ok(update)).await.is_err() {
                    return;
                }
            }
            change = changes.recv() => {
                if let Some(unreadable) = hub.unreadable() {
                    // The agent keeps its last good config and tries another replica.
                    let _ = tx.send(Err(cannot_serve(&unreadable))).await;
                    return;
                }
                let update = match change {
                    Ok(change) => {
                        newest = newest.max(change.revision);
                        let delta = interest.delta(&change);
                        if delta.is_some() {
                            sent = change.revision;
                            if unacked.len() < MAX_UNACKED_TIMED {
                                unacked.push_back((change.revision, change.seen_at));
                            }
                        } else if acked >= sent {
                            // Nothing to send, nothing outstanding: the agent is current.
                            fleet.acked(agent, change.revision);
                        }
                        delta
                    }
                    Err(RecvError::Lagged(_)) => {
                        // Fell behind the hub's buffer: start over from a fresh snapshot.
                        let Ok((revision, fresh)) =
                            send_snapshot(snapshot_turns, hub, tx, interest, *log_body_limit).await
                        else {
                            return;
                        };
                        changes = fresh;
                        unacked.clear();
                        sent = revision;
                        newest = newest.max(revision);
                        None
                    }
                    Err(RecvError::Closed) => return,
                };
                if let Some(update) = update
                    && tx.send(Ok(update)).await.is_err()
                {
                    return;
                }
            }
        }
    }
}

/// Sends the catalogue's schemas of the types the agent emits, in parts built one at a time,
/// taking a snapshot turn and giving up after [`SNAPSHOT_SEND_LIMIT`] as snapshots do;
/// answers the receiver of every change after them.
async fn send_schemas(
    turns: &Semaphore,
    feed: &SchemaFeed,
    tx: &mpsc::Sender<Result<pb::ConfigUpdate, Status>>,
    interest: &Interest,
) -> Result<broadcast::Receiver<Arc<SchemaChange>>, ()> {
    let _turn = turns.acquire().await.map_err(|_| ())?;
    let (set, changes) = feed.subscribe();
    let wanted = |name: &str| interest.emits.covers_type(name);
    let send = async {
        for part in whole_set(&set, wanted, SNAPSHOT_PART_BYTES) {
            let update = pb::ConfigUpdate {
                schemas: Some(part),
                ..Default::default()
            };
            tx.send(Ok(update)).await.map_err(|_| ())?;
        }
        Ok(())
    };
    tokio::time::timeout(SNAPSHOT_SEND_LIMIT, send)
        .await
        .map_err(|_| {
            tracing::warn!("an agent took too long to read the schemas; closing its stream")
        })??;
    Ok(changes)
}

/// The next change to the schemas, for a stream that follows them; never, for one that
/// does not.
async fn next_schema_change(
    changes: &mut Option<broadcast::Receiver<Arc<SchemaChange>>>,
) -> Result<Arc<SchemaChange>, RecvError> {
    match changes {
        Some(changes) => changes.recv().await,
        None => std::future::pending().await,
    }
}

/// Sends the agent its part of the hub's current state; its revision and a receiver of every
/// change after it, or `Err` when the stream is gone.
///
/// At most [`SNAPSHOTS_AT_ONCE`] streams of a replica send a snapshot at a time, so a fleet
/// reconnecting at once (after a replica restart) is served in turns instead of every
/// snapshot being copied and built in memory together (a stream waiting its turn holds
/// nothing); one that cannot send its snapshot within [`SNAPSHOT_SEND_LIMIT`] ends its
/// stream and reconnects later.
async fn send_snapshot(
    turns: &Semaphore,
    hub: &ConfigHub,
    tx: &mpsc::Sender<Result<pb::ConfigUpdate, Status>>,
    interest: &Interest,
    log_body_limit: u32,
) -> Result<(i64, broadcast::Receiver<Arc<Change>>), ()> {
    let _turn = turns.acquire().await.map_err(|_| ())?;
    let (snapshot, changes) = hub.subscribe();
    let send = async {
        for part in interest.snapshot(&snapshot) {
            let part = pb::ConfigUpdate {
                log_body_limit: Some(log_body_limit),
                admitted_tenants: Some(interest.admitted_tenants()),
                ..part
            };
            tx.send(Ok(part)).await.map_err(|_| ())?;
        }
        Ok(())
    };
    tokio::time::timeout(SNAPSHOT_SEND_LIMIT, send)
        .await
        .map_err(|_| {
            tracing::warn!("an agent took too long to read its snapshot; closing its stream")
        })??;
    Ok((snapshot.revision, changes))
}

/// What an agent may deliver: the subscriptions it is sent.
struct Interest {
    emits: herald_core::interest::Interest,
    region: String,
}

impl Interest {
    /// The interest of an admitted hello ([`agent_trust::admit_hello`]).
    fn new(hello: &pb::AgentHello) -> Self {
        Interest {
            emits: herald_core::interest::Interest {
                tenants: hello.tenants.clone(),
                event_type_prefixes: hello.event_type_prefixes.clone(),
            },
            region: hello.region.clone(),
        }
    }

    /// The tenants the agent was admitted for, as it is told ([`pb::AdmittedTenants`]).
    fn admitted_tenants(&self) -> pb::AdmittedTenants {
        pb::AdmittedTenants {
            tenants: self.emits.tenants.clone(),
        }
    }

    fn sees(&self, sub: &pb::Subscription) -> bool {
        let region = sub.regions.is_empty() || sub.regions.contains(&self.region);
        region
            && self
                .emits
                .reaches(&sub.tenant, sub.event_types.iter().map(String::as_str))
    }

    /// The agent's whole config at the snapshot's revision, in parts of about
    /// [`SNAPSHOT_PART_BYTES`] (one part when it is small; an empty config is one empty part),
    /// each built only when the previous one has been taken.
    fn snapshot<'a>(
        &'a self,
        snapshot: &'a Snapshot,
    ) -> impl Iterator<Item = pb::ConfigUpdate> + 'a {
        let mut visible = snapshot
            .subscriptions
            .values()
            .filter(|s| self.sees(s))
            .peekable();
        let mut done = false;
        std::iter::from_fn(move || {
            if done {
                return None;
            }
            let mut upserts = Vec::new();
            let mut bytes = 0;
            while let Some(sub) = visible.peek() {
                // The field's tag and length prefix, then the message.
                let len = prost::Message::encoded_len(&***sub);
                let size = 1 + prost::length_delimiter_len(len) + len;
                if bytes + size > SNAPSHOT_PART_BYTES && !upserts.is_empty() {
                    break;
                }
                bytes += size;
                upserts.push((***sub).clone());
                visible.next();
            }
            let more = visible.peek().is_some();
            done = !more;
            Some(pb::ConfigUpdate {
                revision: snapshot.revision,
                snapshot: true,
                upserts,
                more,
                ..Default::default()
            })
        })
    }

    /// The changes of `resume`, merged into one delta as this agent sees them: the latest
    /// version of each subscription changed (or its removal), at the resume revision.
    fn merged(&self, resume: &Resume) -> pb::ConfigUpdate {
        let mut latest: BTreeMap<&str, Option<&Arc<pb::Subscription>>> = BTreeMap::new();
        for change in &resume.changes {
            for sub in &change.upserts {
                latest.insert(&sub.id, Some(sub));
            }
            for id in &change.removals {
                latest.insert(id, None);
            }
        }
        let mut update = pb::ConfigUpdate {
            revision: resume.revision,
            ..Default::default()
        };
        for (id, sub) in latest {
            match sub {
                Some(sub) if self.sees(sub) => update.upserts.push((**sub).clone()),
                _ => update.removals.push(id.to_owned()),
            }
        }
        update
    }

    /// The change as this agent sees it; `None` when it concerns nothing the agent holds or
    /// may see: a subscription that is not visible goes out as a removal only if its previous
    /// version was (its tenant, types or regions moved away from the agent).
    fn delta(&self, change: &Arc<Change>) -> Option<pb::ConfigUpdate> {
        let held = |id: &str| change.previous.get(id).is_some_and(|old| self.sees(old));
        let mut update = pb::ConfigUpdate {
            revision: change.revision,
            removals: change
                .removals
                .iter()
                .filter(|id| held(id))
                .cloned()
                .collect(),
            ..Default::default()
        };
        for sub in &change.upserts {
            if self.sees(sub) {
                update.upserts.push((**sub).clone());
            } else if held(&sub.id) {
                update.removals.push(sub.id.clone());
            }
        }
        (!update.upserts.is_empty() || !update.removals.is_empty()).then_some(update)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_snapshots_go_in_parts_under_the_limit() {
        let interest = Interest::new(&pb::AgentHello {
            agent_id: "agt_1".into(),
            ..Default::default()
        });
        let mut snapshot = Snapshot {
            revision: 42,
            ..Default::default()
        };
        for n in 0..5000 {
            let sub = pb::Subscription {
                id: format!("sub_{n:05}"),
                tenant: "shop".into(),
                event_types: vec!["*".into()],
                description: "x".repeat(500),
                ..Default::default()
            };
            snapshot.subscriptions.insert(sub.id.clone(), Arc::new(sub));
        }
        let parts: Vec<_> = interest.snapshot(&snapshot).collect();
        assert!(parts.len() >= 2, "{} parts", parts.len());
        for (i, part) in parts.iter().enumerate() {
            assert!(part.snapshot && part.revision == 42);
            assert_eq!(part.more, i + 1 < parts.len());
            let size = prost::Message::encoded_len(part);
            assert!(size <= SNAPSHOT_PART_BYTES + 64, "part {i}: {size} bytes");
        }
        let ids: Vec<&str> = parts
            .iter()
            .flat_map(|p| p.upserts.iter().map(|s| s.id.as_str()))
            .collect();
        assert_eq!(ids.len(), 5000);
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "each once, in order");

        // An empty config is one empty, final part.
        let empty_snapshot = Snapshot::default();
        let empty: Vec<_> = interest.snapshot(&empty_snapshot).collect();
        assert_eq!(empty.len(), 1);
        assert!(empty[0].snapshot && !empty[0].more && empty[0].upserts.is_empty());
    }

    #[test]
    fn deltas_carry_only_what_the_agent_may_see_or_held() {
        let interest = Interest::new(&pb::AgentHello {
            agent_id: "agt_1".into(),
            tenants: vec!["a".into()],
            event_type_prefixes: vec!["order.".into()],
            ..Default::default()
        });
        let sub = |id: &str, tenant: &str, types: &str| {
            Arc::new(pb::Subscription {
                id: id.into(),
                tenant: tenant.into(),
                event_types: vec![types.into()],
                ..Default::default()
            })
        };
        let change = |upserts: Vec<Arc<pb::Subscription>>,
                      removals: &[&str],
                      previous: Vec<Arc<pb::Subscription>>| {
            Arc::new(Change {
                revision: 7,
                upserts,
                removals: removals.iter().map(|r| r.to_string()).collect(),
                previous: previous.into_iter().map(|s| (s.id.clone(), s)).collect(),
                seen_at: tokio::time::Instant::now(),
            })
        };
        // Another tenant's subscription, created and deleted: nothing to say.
        assert_eq!(
            interest.delta(&change(vec![sub("b1", "b", "*")], &[], vec![])),
            None
        );
        assert_eq!(
            interest.delta(&change(vec![], &["b1"], vec![sub("b1", "b", "*")])),
            None
        );
        // Its own: sent; deleted: removed.
        let created = interest
            .delta(&change(vec![sub("a1", "a", "order.*")], &[], vec![]))
            .expect("sent");
        assert_eq!(created.upserts.len(), 1);
        let deleted = interest
            .delta(&change(vec![], &["a1"], vec![sub("a1", "a", "order.*")]))
            .expect("sent");
        assert_eq!(deleted.removals, ["a1"]);
        // Moved out of its view (types no longer reach order.): removed.
        let moved = interest
            .delta(&change(
                vec![sub("a1", "a", "invoice.*")],
                &[],
                vec![sub("a1", "a", "order.*")],
            ))
            .expect("sent");
        assert!(moved.upserts.is_empty());
        assert_eq!(moved.removals, ["a1"]);
    }

    #[test]
    fn interest_filters_tenants_and_regions() {
        let interest = Interest::new(&pb::AgentHello {
            agent_id: "agt_1".into(),
            region: "eu".into(),
            tenants: vec!["a".into()],
            ..Default::default()
        });
        let sub = |tenant: &str, regions: &[&str]| pb::Subscription {
            tenant: tenant.into(),
            regions: regions.iter().map(|r| r.to_string()).collect(),
            event_types: vec!["*".into()],
            ..Default::default()
        };
        assert!(interest.sees(&sub("a", &[])));
        assert!(interest.sees(&sub("a", &["eu"])));
        assert!(!interest.sees(&sub("a", &["us"])));
        assert!(!interest.sees(&sub("b", &[])));
    }
}
