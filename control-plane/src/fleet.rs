//! The agents this control-plane replica has seen: who is connected, which config revision
//! each applied, and the last change each refused. Kept in memory per replica and written to
//! the store by [`crate::presence`] (entries that changed are marked for it), so every replica
//! can list every agent. An agent's entry lives on for a day after it disconnects so operators
//! can see it went away. It also routes orders (replay, emit, test) to a connected agent's
//! stream and their results back to the caller.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot};

use herald_core::interest::Interest;
use herald_core::limits::MAX_EVENT_ID_LEN;
use herald_proto::convert::timestamp;
use herald_proto::v1 as pb;

/// The most agent ids one identity (an agent token or certificate name) may have known to a
/// replica, connected or departed. A new id past it takes the place of the identity's agent
/// that departed longest ago; when all are connected it is refused. So one identity (one
/// tenant's agents, or a fleet that makes a new id at every restart) cannot grow the
/// registry, and the presence records in the config store, without bound.
pub const MAX_AGENTS_PER_IDENTITY: usize = 10_000;

/// The most config streams one agent id may have open at a replica. An agent needs one; a
/// few more cover reconnects while the old stream has not yet been seen to end (at most two
/// keepalive intervals, see `--keepalive-interval`).
pub const MAX_STREAMS_PER_AGENT: u32 = 4;

/// Agents known to this replica; cloning shares it.
#[derive(Clone, Default)]
pub struct Fleet {
    /// This replica's name, stamped on its agents' entries.
    replica: Arc<str>,
    /// [`MAX_AGENTS_PER_IDENTITY`], or a test's smaller bound.
    max_per_identity: usize,
    agents: Arc<Mutex<BTreeMap<String, Entry>>>,
    /// Departed agents forgotten to make room (see [`MAX_AGENTS_PER_IDENTITY`]) whose
    /// presence records are still to be deleted.
    evicted: Arc<Mutex<Vec<String>>>,
    /// Agents whose entry changed since [`Fleet::take_changed`] last ran.
    changed: Arc<Mutex<BTreeSet<String>>>,
    /// Replay orders sent and not yet answered, by order id.
    pending: Arc<Mutex<HashMap<u64, Pending<pb::ReplayResult>>>>,
    /// Emit orders sent and not yet answered, by order id.
    pending_emits: Arc<Mutex<HashMap<u64, Pending<pb::EmitResult>>>>,
    /// Test orders sent and not yet answered, by order id.
    pending_tests: Arc<Mutex<HashMap<u64, Pending<pb::TestResult>>>>,
    next_order: Arc<AtomicU64>,
    /// Turns for choosing an agent to emit through.
    next_emitter: Arc<AtomicU64>,
    /// The next config stream's [`StreamId`].
    next_stream: Arc<AtomicU64>,
}

/// Work the control plane hands an agent over its config stream.
#[derive(Debug)]
pub enum Order {
    /// Deliver events again.
    Replay(pb::ReplayOrder),
    /// Emit events (operator events).
    Emit(pb::EmitOrder),
    /// Make one test attempt now (boxed: it carries a whole event).
    Test(Box<pb::TestOrder>),
}

/// An order sent and not yet answered: only the agent it went to may answer it.
struct Pending<T> {
    agent: String,
    answer: oneshot::Sender<T>,
}

/// Why an agent's hello is refused.
#[derive(Debug, thiserror::Error)]
pub enum HelloError {
    /// Another identity holds this agent id.
    #[error("agent id {agent_id} is held by another identity; give this agent an id of its own")]
    IdTaken {
        /// The id.
        agent_id: String,
    },
    /// The identity has as many agents connected as it may have.
    #[error(
        "this identity already has {limit} agents connected, the most it may have; \
         give some of them another token"
    )]
    TooManyAgents {
        /// [`MAX_AGENTS_PER_IDENTITY`].
        limit: usize,
    },
    /// The agent id has as many config streams open as it may.
    #[error(
        "agent id {agent_id} already has {MAX_STREAMS_PER_AGENT} config streams open; \
         is another agent using this id?"
    )]
    TooManyStreams {
        /// The id.
        agent_id: String,
    },
}

/// Hands `result` to the caller of order `order_id` if `agent` is the one it went to.
fn answer<T>(pending: &mut HashMap<u64, Pending<T>>, agent: &str, order_id: u64, result: T) {
    if pending.get(&order_id).is_some_and(|p| p.agent == agent)
        && let Some(order) = pending.remove(&order_id)
    {
        let _ = order.answer.send(result);
    }
}

/// The longest reason an agent may give for a delivery it could not replay.
const MAX_MISS_REASON: usize = 256;

/// Keeps an agent's answer to a replay order within what an order can ask (at most
/// [`crate::replay::MAX_REPLAY`] deliveries) and its texts short: the answer goes back to the
/// caller and, relayed between replicas, into the config store.
fn bound_replay_result(result: &mut pb::ReplayResult) {
    result.missed.truncate(crate::replay::MAX_REPLAY);
    let bound = |text: &mut String, max: usize| {
        if text.len() > max {
            *text = crate::agent_trust::cut(text, max).to_owned();
        }
    };
    for miss in &mut result.missed {
        bound(&mut miss.event_id, MAX_EVENT_ID_LEN);
        bound(&mut miss.subscription_id, MAX_EVENT_ID_LEN);
        bound(&mut miss.agent_id, crate::agent_trust::MAX_HELLO_FIELD);
        bound(&mut miss.reason, MAX_MISS_REASON);
    }
}

/// Keeps an agent's answer to a test order as short as an attempt it reports is kept (its
/// error and the response's start), and its reason for making none: the answer goes back to
/// the caller, into the log and, relayed between replicas, into the config store.
fn bound_test_result(result: &mut pb::TestResult) {
    let bound = |text: &mut String, max: usize| {
        if text.len() > max {
            *text = crate::agent_trust::cut(text, max).to_owned();
        }
    };
    bound(&mut result.error, MAX_MISS_REASON);
    if let Some(attempt) = &mut result.attempt {
        herald_core::limits::bound_attempt_text(&mut attempt.error);
        herald_core::limits::bound_attempt_text(&mut attempt.response_excerpt);
    }
}

/// Replay orders a config stream may hold before the sender is told the agent is busy.
const ORDER_BUFFER: usize = 16;

/// One config stream of an agent id open at this replica, as its hello described it.
#[derive(Clone)]
struct OpenStream {
    id: StreamId,
    /// Where orders sent through this stream go.
    orders: mpsc::Sender<Order>,
    /// What its hello said of the agent, restored to the entry when a newer stream ends first.
    said: Said,
}

/// What a hello says of the agent behind a stream.
#[derive(Clone)]
struct Said {
    node: String,
    region: String,
    version: String,
    interest: Interest,
    connected_since: Option<prost_types::Timestamp>,
}

/// Names one config stream of an agent at this replica, so that its end is told apart from
/// the end of another stream of the same agent id (a reconnect that overlaps the old stream,
/// or two processes given the same id).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamId(u64);

/// A config stream taken in by [`Fleet::connected`].
#[derive(Debug)]
pub struct Joined {
    /// What [`Fleet::disconnected`] is told when the stream ends.
    pub stream: StreamId,
    /// The orders (replay, emit, test) routed to the agent through this stream.
    pub orders: mpsc::Receiver<Order>,
}

#[derive(Clone)]
struct Entry {
    info: pb::AgentInfo,
    /// Streams open for this agent id, oldest first; it is connected while any is, and orders
    /// go to the newest.
    streams: Vec<OpenStream>,
    /// The tenants and event types it emits for (from its newest open stream's hello): emit
    /// orders go only to an agent that admits their events.
    interest: Interest,
    /// The identity (token or certificate name) that said hello with this id: another may not
    /// take it over (and with it the orders for this agent).
    owner: String,
}

impl Entry {
    /// Where orders for this agent go: its newest open stream.
    fn orders(&self) -> Option<mpsc::Sender<Order>> {
        self.streams.last().map(|open| open.orders.clone())
    }

    /// Lists the agent as the hello of the stream that now receives its orders described it.
    fn take_on(&mut self, said: Said) {
        self.info.node = said.node;
        self.info.region = said.region;
        self.info.version = said.version;
        self.info.connected_since = said.connected_since;
        self.interest = said.interest;
    }
}

impl Fleet {
    /// An empty registry of the replica named `replica`.
    pub fn new(replica: &str) -> Self {
        Self::with_limit(replica, MAX_AGENTS_PER_IDENTITY)
    }

    /// [`Fleet::new`] with at most `max_per_identity` agents per identity.
    pub fn with_limit(replica: &str, max_per_identity: usize) -> Self {
        Fleet {
            replica: replica.into(),
            max_per_identity,
            ..Default::default()
        }
    }

    /// Makes room for a new agent id of `owner`: when it has as many ids known as it may,
    /// the one departed longest ago is forgotten (and queued for its record's deletion);
    /// refused when all of them are connected.
    fn make_room(
        &self,
        agents: &mut BTreeMap<String, Entry>,
        owner: &str,
    ) -> Result<(), HelloError> {
        let mut known = 0;
        let mut oldest_departed: Option<(SystemTime, &String)> = None;
        for (id, entry) in agents.iter().filter(|(_, entry)| entry.owner == owner) {
            known += 1;
            if entry.streams.is_empty() {
                let seen = entry
                    .info
                    .last_seen
                    .as_ref()
                    .map_or(SystemTime::UNIX_EPOCH, herald_proto::convert::system_time);
                if oldest_departed.is_none_or(|(oldest, _)| seen < oldest) {
                    oldest_departed = Some((seen, id));
                }
            }
        }
        if known < self.max_per_identity {
            return Ok(());
        }
        let Some((_, id)) = oldest_departed else {
            return Err(HelloError::TooManyAgents {
                limit: self.max_per_identity,
            });
        };
        let id = id.clone();
        agents.remove(&id);
        tracing::info!(agent = %id, "a departed agent forgotten to make room for a new one of its identity");
        self.evicted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(id);
        Ok(())
    }

    /// Records the hello of an agent calling as `owner` on a new config stream; orders for the
    /// agent arrive on the returned receiver while it is the agent's newest open stream. An id
    /// another identity holds is refused.
    pub fn connected(&self, hello: &pb::AgentHello, owner: &str) -> Result<Joined, HelloError> {
        let now = Some(timestamp(SystemTime::now()));
        let (orders, receiver) = mpsc::channel(ORDER_BUFFER);
        let stream = StreamId(self.next_stream.fetch_add(1, Ordering::Relaxed));
        let mut agents = self.lock();
        if !agents.contains_key(&hello.agent_id) {
            self.make_room(&mut agents, owner)?;
        }
        let entry = agents
            .entry(hello.agent_id.clone())
            .or_insert_with(|| Entry {
                info: pb::AgentInfo::default(),
                streams: Vec::new(),
                interest: Interest::default(),
                owner: owner.to_owned(),
            });
        if entry.owner != owner {
            return Err(HelloError::IdTaken {
                agent_id: hello.agent_id.clone(),
            });
        }
        if entry.streams.len() >= MAX_STREAMS_PER_AGENT as usize {
            return Err(HelloError::TooManyStreams {
                agent_id: hello.agent_id.clone(),
            });
        }
        let said = Said {
            node: hello.node.clone(),
            region: hello.region.clone(),
            version: hello.version.clone(),
            interest: Interest {
                tenants: hello.tenants.clone(),
                event_type_prefixes: hello.event_type_prefixes.clone(),
            },
            connected_since: now,
        };
        entry.streams.push(OpenStream {
            id: stream,
            orders,
            said: said.clone(),
        });
        entry.info = pb::AgentInfo {
            id: hello.agent_id.clone(),
            applied_revision: hello.last_revision,
            current_revision: 0,
            last_seen: now,
            last_nack: entry.info.last_nack.clone(),
            connected: true,
            replica: self.replica.to_string(),
            identity: owner.to_owned(),
            ..Default::default()
        };
        entry.take_on(said);
        drop(agents);
        self.mark_changed([hello.agent_id.as_str()]);
        Ok(Joined {
            stream,
            orders: receiver,
        })
    }

    /// Marks agents' entries as changed, for the next presence write.
    pub fn mark_changed<'a>(&self, agent_ids: impl IntoIterator<Item = &'a str>) {
        let mut changed = self.changed.lock().unwrap_or_else(|e| e.into_inner());
        changed.extend(agent_ids.into_iter().map(str::to_owned));
    }

    /// Marks every entry as changed (the presence records must all be written again).
    pub fn mark_all_changed(&self) {
        let ids: Vec<String> = self.lock().keys().cloned().collect();
        let mut changed = self.changed.lock().unwrap_or_else(|e| e.into_inner());
        changed.extend(ids);
    }

    /// The entries changed since the last call, as they are now.
    pub fn take_changed(&self) -> Vec<pb::AgentInfo> {
        let ids = std::mem::take(&mut *self.changed.lock().unwrap_or_else(|e| e.into_inner()));
        let agents = self.lock();
        ids.iter()
            .filter_map(|id| agents.get(id).map(|entry| entry.info.clone()))
            .collect()
    }

    /// Forgets agents disconnected for longer than `keep`; their ids, with those of agents
    /// forgotten since the last call to make room for new ones (their records go too).
    pub fn forget_departed(&self, keep: Duration) -> Vec<String> {
        let mut departed =
            std::mem::take(&mut *self.evicted.lock().unwrap_or_else(|e| e.into_inner()));
        departed.extend(self.forget_departed_before(keep));
        departed
    }

    /// The agents disconnected for longer than `keep`, forgotten.
    fn forget_departed_before(&self, keep: Duration) -> Vec<String> {
        let Some(cutoff) = SystemTime::now().checked_sub(keep) else {
            return vec![];
        };
        let mut agents = self.lock();
        let departed: Vec<String> = agents
            .iter()
            .filter(|(_, entry)| {
                entry.streams.is_empty()
                    && entry
                        .info
                        .last_seen
                        .as_ref()
                        .is_some_and(|seen| herald_proto::convert::system_time(seen) < cutoff)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in &departed {
            agents.remove(id);
        }
        departed
    }

    /// Sends a replay order to a connected agent; the future gives its result. `None` when
    /// the agent is not connected to this replica (or its stream cannot take more orders).
    ///
    /// Only the items of tenants the agent delivers for are sent (every tenant when its hello
    /// named none): an agent id says nothing of whose deliveries it may hear of, since whoever
    /// says hello with it first on a replica holds it there. The others are answered as
    /// missed.
    pub fn send_replay(
        &self,
        agent_id: &str,
        items: Vec<pb::ReplayItem>,
    ) -> Option<impl Future<Output = Result<pb::ReplayResult, oneshot::error::RecvError>> + use<>>
    {
        let (tenants, orders) = {
            let agents = self.lock();
            let entry = agents.get(agent_id)?;
            (entry.interest.tenants.clone(), entry.orders()?)
        };
        // An item of no tenant was relayed by a replica of an older version: the agent's own
        // config decides (it replays only subscriptions it holds).
        let (items, refused): (Vec<_>, Vec<_>) = items.into_iter().partition(|item| {
            item.tenant.is_empty() || tenants.is_empty() || tenants.contains(&item.tenant)
        });
        let answer = if items.is_empty() {
            None
        } else {
            let (_, answer) = self.send_order(&self.pending, agent_id, &orders, |order_id| {
                Order::Replay(pb::ReplayOrder { order_id, items })
            })?;
            Some(answer)
        };
        let missed: Vec<pb::ReplayMiss> = refused
            .into_iter()
            .map(|item| pb::ReplayMiss {
                reason: format!(
                    "the agent that made its last attempt does not deliver for tenant {:?}",
                    item.tenant
                ),
                event_id: item.event_id,
                subscription_id: item.subscription_id,
                agent_id: agent_id.to_owned(),
            })
            .collect();
        Some(async move {
            let mut result = match answer {
                Some(answer) => answer.await?,
                None => pb::ReplayResult::default(),
            };
            result.missed.extend(missed);
            Ok(result)
        })
    }

    /// One of the connected agents `eligible` admits, taking turns: its id and order stream.
    fn take_turn(
        &self,
        eligible: impl Fn(&Entry) -> bool,
    ) -> Option<(String, mpsc::Sender<Order>)> {
        let senders: Vec<(String, mpsc::Sender<Order>)> = self
            .lock()
            .iter()
            .filter(|(_, entry)| eligible(entry))
            .filter_map(|(id, entry)| Some((id.clone(), entry.orders()?)))
            .collect();
        if senders.is_empty() {
            return None;
        }
        let turn = self.next_emitter.fetch_add(1, Ordering::Relaxed) as usize;
        let chosen = turn % senders.len();
        senders.into_iter().nth(chosen)
    }

    /// Sends the order `make` builds (given its id) to `orders`, waiting for an answer in
    /// `pending` as `agent`'s; `None` when the stream cannot take it.
    fn send_order<T>(
        &self,
        pending: &Mutex<HashMap<u64, Pending<T>>>,
        agent: &str,
        orders: &mpsc::Sender<Order>,
        make: impl FnOnce(u64) -> Order,
    ) -> Option<(u64, oneshot::Receiver<T>)> {
        let order_id = self.next_order.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = oneshot::channel();
        let lock = || pending.lock().unwrap_or_else(|e| e.into_inner());
        let mut waiting = lock();
        // Orders whose askers stopped waiting (timed out, or went) get no answer: forget
        // them, so an agent that never answers cannot grow this map.
        waiting.retain(|_, order| !order.answer.is_closed());
        waiting.insert(
            order_id,
            Pending {
                agent: agent.to_owned(),
                answer: tx,
            },
        );
        drop(waiting);
        if orders.try_send(make(order_id)).is_err() {
            lock().remove(&order_id);
            return None;
        }
        Some((order_id, rx))
    }

    /// Sends `events` to be emitted by one of the connected agents whose interest admits them
    /// all, taking turns; `None` when no such agent is connected to this replica.
    pub fn send_emit(&self, events: Vec<pb::Event>) -> Option<oneshot::Receiver<pb::EmitResult>> {
        let (agent, orders) = self.take_turn(|entry| {
            events
                .iter()
                .all(|e| entry.interest.admits(&e.tenant, &e.r#type))
        })?;
        let (_, answer) = self.send_order(&self.pending_emits, &agent, &orders, |order_id| {
            Order::Emit(pb::EmitOrder { order_id, events })
        })?;
        Some(answer)
    }

    /// Sends a test order for subscription `subscription_id` to a connected agent that
    /// delivers it: in one of `regions` (any, when empty) and with an interest that admits
    /// `event`, taking turns. The agent chosen, the order's id and the receiver of its
    /// result; `None` when no such agent is connected to this replica (or its stream is full).
    pub fn send_test(
        &self,
        subscription_id: &str,
        regions: &[String],
        event: pb::Event,
    ) -> Option<(String, u64, oneshot::Receiver<pb::TestResult>)> {
        let (agent, orders) = self.take_turn(|entry| {
            (regions.is_empty() || regions.contains(&entry.info.region))
                && entry.interest.admits(&event.tenant, &event.r#type)
        })?;
        let subscription_id = subscription_id.to_owned();
        let (order_id, answer) =
            self.send_order(&self.pending_tests, &agent, &orders, |order_id| {
                Order::Test(Box::new(pb::TestOrder {
                    order_id,
                    subscription_id,
                    event: Some(event),
                }))
            })?;
        Some((agent, order_id, answer))
    }

    /// Hands the answer of `agent` to a test order's caller; an answer to an order sent to
    /// another agent is ignored.
    pub fn test_answered(&self, agent: &str, mut result: pb::TestResult) {
        bound_test_result(&mut result);
        answer(&mut self.pending_tests(), agent, result.order_id, result);
    }

    /// Forgets a test order whose caller stopped waiting.
    pub fn test_abandoned(&self, order_id: u64) {
        self.pending_tests().remove(&order_id);
    }

    fn pending_tests(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Pending<pb::TestResult>>> {
        self.pending_tests.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands the answer of `agent` to an emit order's caller; an answer to an order sent to
    /// another agent is ignored.
    pub fn emit_answered(&self, agent: &str, result: pb::EmitResult) {
        answer(&mut self.pending_emits(), agent, result.order_id, result);
    }

    fn pending_emits(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Pending<pb::EmitResult>>> {
        self.pending_emits.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands the answer of `agent` to the replay order's caller; an answer to an order sent to
    /// another agent is ignored.
    pub fn replay_answered(&self, agent: &str, mut result: pb::ReplayResult) {
        bound_replay_result(&mut result);
        answer(&mut self.pending(), agent, result.order_id, result);
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Pending<pb::ReplayResult>>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records an acknowledged revision.
    pub fn acked(&self, agent_id: &str, revision: i64) {
        self.update(agent_id, |info| {
            info.applied_revision = revision;
            // An ack says the agent holds the whole config: what it refused before is
            // resolved (an agent holding a refusal nacks every update instead).
            info.last_nack.clear();
        });
    }

    /// Records a refused revision.
    pub fn nacked(&self, agent_id: &str, revision: i64, reason: &str) {
        self.update(agent_id, |info| {
            info.last_nack = format!("revision {revision}: {reason}");
        });
    }

    /// Records that the agent's config stream `stream` ended. Its other open streams (if any)
    /// carry on: orders go to the newest of them, which the agent is listed as again.
    pub fn disconnected(&self, agent_id: &str, stream: StreamId) {
        let mut agents = self.lock();
        if let Some(entry) = agents.get_mut(agent_id) {
            entry.streams.retain(|open| open.id != stream);
            entry.info.connected = !entry.streams.is_empty();
            match entry.streams.last() {
                Some(newest) => {
                    let said = newest.said.clone();
                    entry.take_on(said);
                }
                None => {
                    // Its test orders will not be answered: their callers learn it now.
                    self.pending_tests()
                        .retain(|_, pending| pending.agent != agent_id);
                }
            }
            entry.info.last_seen = Some(timestamp(SystemTime::now()));
        }
        drop(agents);
        self.mark_changed([agent_id]);
    }

    /// The identity that holds `agent_id` on this replica (the one whose hello it was), if
    /// an agent of that id has said hello here.
    pub fn holder(&self, agent_id: &str) -> Option<String> {
        self.lock().get(agent_id).map(|entry| entry.owner.clone())
    }

    /// Config streams open on this replica.
    pub fn streams(&self) -> usize {
        self.lock().values().map(|entry| entry.streams.len()).sum()
    }

    /// Every known agent, with the current revision filled in.
    pub fn list(&self, current_revision: i64) -> Vec<pb::AgentInfo> {
        self.lock()
            .values()
            .map(|entry| pb::AgentInfo {
                current_revision,
                ..entry.info.clone()
            })
            .collect()
    }

    fn update(&self, agent_id: &str, change: impl FnOnce(&mut pb::AgentInfo)) {
        if let Some(entry) = self.lock().get_mut(agent_id) {
            change(&mut entry.info);
            entry.info.last_seen = Some(timestamp(SystemTime::now()));
        }
        self.mark_changed([agent_id]);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.agents.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agents_test_answer_is_kept_as_short_as_its_reports() {
        let long = "x".repeat(100_000);
        let mut result = pb::TestResult {
            order_id: 1,
            attempt: Some(pb::Attempt {
                error: long.clone(),
                response_excerpt: long.clone(),
                ..Default::default()
            }),
            error: long,
            busy: false,
        };
        bound_test_result(&mut result);
        let attempt = result.attempt.expect("the attempt");
        assert_eq!(
            attempt.error.len(),
            herald_core::limits::MAX_ATTEMPT_TEXT_LEN
        );
        assert_eq!(
            attempt.response_excerpt.len(),
            herald_core::limits::MAX_ATTEMPT_TEXT_LEN
        );
        assert_eq!(result.error.len(), MAX_MISS_REASON);
    }

    #[test]
    fn a_busy_agent_is_resource_exhausted_for_the_caller() {
        let busy = crate::test_send::TestError::Busy {
            agent: "agt_1".into(),
            reason: "the agent is running 16 test attempts already".into(),
        };
        assert_eq!(
            tonic::Status::from(busy).code(),
            tonic::Code::ResourceExhausted
        );
    }

    fn hello(agent_id: &str) -> pb::AgentHello {
        pb::AgentHello {
            agent_id: agent_id.into(),
            ..Default::default()
        }
    }

    #[test]
    fn an_identity_has_a_bounded_number_of_agents_and_new_ones_replace_the_longest_departed() {
        let fleet = Fleet::with_limit("replica-a", 3);
        let first = fleet.connected(&hello("agt_1"), "eu-agents").expect("room");
        let second = fleet.connected(&hello("agt_2"), "eu-agents").expect("room");
        let _third = fleet.connected(&hello("agt_3"), "eu-agents").expect("room");
        // All three connected: a fourth id is refused, whatever its name.
        let refused = fleet.connected(&hello("agt_4"), "eu-agents").unwrap_err();
        assert!(
            matches!(refused, HelloError::TooManyAgents { limit: 3 }),
            "{refused}"
        );
        // Another identity has room of its own, and a known id may always reconnect.
        let _other = fleet
            .connected(&hello("agt_9"), "shop-a-agents")
            .expect("its own room");
        let _again = fleet
            .connected(&hello("agt_3"), "eu-agents")
            .expect("a reconnect");

        // Two depart, agt_2 first: the next new id takes agt_2's place, the one after agt_1's.
        fleet.disconnected("agt_2", second.stream);
        std::thread::sleep(Duration::from_millis(5));
        fleet.disconnected("agt_1", first.stream);
        let _fourth = fleet
            .connected(&hello("agt_4"), "eu-agents")
            .expect("room made");
        let ids = |fleet: &Fleet| -> Vec<String> {
            fleet.list(0).into_iter().map(|info| info.id).collect()
        };
        assert_eq!(ids(&fleet), ["agt_1", "agt_3", "agt_4", "agt_9"]);
        let _fifth = fleet
            .connected(&hello("agt_5"), "eu-agents")
            .expect("room made");
        assert_eq!(ids(&fleet), ["agt_3", "agt_4", "agt_5", "agt_9"]);
        // Their presence records are deleted with the departed ones'.
        assert_eq!(
            fleet.forget_departed(Duration::from_secs(3600)),
            ["agt_2", "agt_1"]
        );
        assert!(fleet.forget_departed(Duration::from_secs(3600)).is_empty());
    }

    #[test]
    fn an_agent_id_has_a_bounded_number_of_config_streams() {
        let fleet = Fleet::new("replica-a");
        let mut open: Vec<_> = (0..MAX_STREAMS_PER_AGENT)
            .map(|_| fleet.connected(&hello("agt_1"), "eu-agents").expect("room"))
            .collect();
        let refused = fleet.connected(&hello("agt_1"), "eu-agents").unwrap_err();
        assert!(
            matches!(refused, HelloError::TooManyStreams { .. }),
            "{refused}"
        );
        // One ends: room for one more.
        let ended = open.pop().expect("open");
        fleet.disconnected("agt_1", ended.stream);
        let _reconnected = fleet
            .connected(&hello("agt_1"), "eu-agents")
            .expect("room again");
    }

    #[tokio::test]
    async fn when_the_newest_of_an_agents_streams_ends_first_orders_go_to_the_one_still_open() {
        let fleet = Fleet::new("replica-a");
        let live_hello = pb::AgentHello {
            node: "node-1".into(),
            last_revision: 7,
            ..hello("agt_1")
        };
        let mut live = fleet.connected(&live_hello, "eu-agents").expect("taken");
        // A second stream of the same id (a reconnect that overlaps the old stream, or a
        // process given the same id) says hello and ends at once.
        let brief = fleet
            .connected(&hello("agt_1"), "eu-agents")
            .expect("its own");
        drop(brief.orders);
        fleet.disconnected("agt_1", brief.stream);

        let listed = fleet.list(0);
        assert!(listed[0].connected);
        assert_eq!(listed[0].node, "node-1", "listed as the stream still open");
        let answer = fleet.send_replay("agt_1", vec![pb::ReplayItem::default()]);
        assert!(answer.is_some(), "an order reaches the agent");
        assert!(matches!(
            live.orders.recv().await.expect("an order"),
            Order::Replay(_)
        ));
        // Once the last one ends, the agent is gone.
        fleet.disconnected("agt_1", live.stream);
        assert!(!fleet.list(0)[0].connected);
        assert!(
            fleet
                .send_replay("agt_1", vec![pb::ReplayItem::default()])
                .is_none()
        );
    }

    #[tokio::test]
    async fn an_agent_id_stays_with_the_identity_that_took_it() {
        let fleet = Fleet::new("replica-a");
        let mut orders = fleet
            .connected(&hello("agt_1"), "eu-agents")
            .expect("taken")
            .orders;
        let taken = fleet
            .connected(&hello("agt_1"), "shop-a-agents")
            .unwrap_err();
        assert!(taken.to_string().contains("agt_1"), "{taken}");
        // The same identity may open another stream (a reconnect).
        let _again = fleet
            .connected(&hello("agt_1"), "eu-agents")
            .expect("its own");
        drop(orders);
        orders = fleet
            .connected(&hello("agt_1"), "eu-agents")
            .expect("its own")
            .orders;

        // Only the agent an order went to answers it.
        let answer = fleet
            .send_replay("agt_1", vec![pb::ReplayItem::default()])
            .expect("sent");
        let order_id = match orders.recv().await.expect("an order") {
            Order::Replay(order) => order.order_id,
            Order::Emit(_) | Order::Test(_) => panic!("a replay order"),
        };
        let forged = pb::ReplayResult {
            order_id,
            queued: 99,
            ..Default::default()
        };
        fleet.replay_answered("agt_2", forged);
        let real = pb::ReplayResult {
            order_id,
            queued: 1,
            ..Default::default()
        };
        fleet.replay_answered("agt_1", real);
        assert_eq!(answer.await.expect("answered").queued, 1);
    }

    #[tokio::test]
    async fn orders_nobody_waits_for_are_forgotten_and_answers_are_bounded() {
        let fleet = Fleet::new("replica-a");
        let mut orders = fleet
            .connected(&hello("agt_1"), "eu-agents")
            .expect("taken")
            .orders;
        // Askers that gave up (their receivers dropped) leave nothing behind once the next
        // order is sent.
        for _ in 0..5 {
            let gave_up = fleet
                .send_replay("agt_1", vec![pb::ReplayItem::default()])
                .expect("sent");
            drop(gave_up);
            orders.recv().await.expect("an order");
        }
        let answer = fleet
            .send_replay("agt_1", vec![pb::ReplayItem::default()])
            .expect("sent");
        assert_eq!(fleet.pending().len(), 1);
        let order_id = match orders.recv().await.expect("an order") {
            Order::Replay(order) => order.order_id,
            Order::Emit(_) | Order::Test(_) => panic!("a replay order"),
        };
        // An answer cannot carry more than an order can ask, nor long texts.
        let miss = pb::ReplayMiss {
            event_id: "e".repeat(10_000),
            reason: "r".repeat(10_000),
            ..Default::default()
        };
        fleet.replay_answered(
            "agt_1",
            pb::ReplayResult {
                order_id,
                queued: 0,
                missed: vec![miss; crate::replay::MAX_REPLAY + 5],
            },
        );
        let answered = answer.await.expect("answered");
        assert_eq!(answered.missed.len(), crate::replay::MAX_REPLAY);
        assert_eq!(answered.missed[0].event_id.len(), MAX_EVENT_ID_LEN);
        assert_eq!(answered.missed[0].reason.len(), MAX_MISS_REASON);
        assert!(fleet.pending().is_empty());
    }

    #[tokio::test]
    async fn an_agent_hears_of_the_deliveries_of_its_own_tenants_alone() {
        let fleet = Fleet::new("replica-a");
        let shop_a = pb::AgentHello {
            tenants: vec!["shop-a".into()],
            ..hello("agt_1")
        };
        let mut orders = fleet
            .connected(&shop_a, "shop-a-agents")
            .expect("taken")
            .orders;
        let item = |tenant: &str| pb::ReplayItem {
            event_id: format!("evt_{tenant}"),
            subscription_id: format!("sub_{tenant}"),
            next_attempt: 2,
            tenant: tenant.into(),
        };
        let answer = fleet
            .send_replay("agt_1", vec![item("shop-a"), item("shop-b")])
            .expect("sent");
        let order = match orders.recv().await.expect("an order") {
            Order::Replay(order) => order,
            Order::Emit(_) | Order::Test(_) => panic!("a replay order"),
        };
        assert_eq!(order.items, [item("shop-a")], "nothing of shop-b's is sent");
        fleet.replay_answered(
            "agt_1",
            pb::ReplayResult {
                order_id: order.order_id,
                queued: 1,
                ..Default::default()
            },
        );
        let answered = answer.await.expect("answered");
        assert_eq!(answered.queued, 1);
        let [missed] = answered.missed.as_slice() else {
            panic!("shop-b's item missed: {answered:?}");
        };
        assert_eq!(missed.event_id, "evt_shop-b");
        assert!(missed.reason.contains("shop-b"), "{}", missed.reason);

        // Only another tenant's: no order at all.
        let answer = fleet
            .send_replay("agt_1", vec![item("shop-b")])
            .expect("answered here");
        assert_eq!(answer.await.expect("answered").missed.len(), 1);
        assert!(orders.try_recv().is_err(), "no order sent");
    }
}
