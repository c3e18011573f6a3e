//! Orders for agents whose config stream another replica holds. With a shared delivery log and
//! config store, any replica may be asked to replay a delivery or test a subscription, but only
//! the replica holding an agent's stream can hand the agent an order. The asking replica finds
//! that replica in the agents' presence records (`presence.rs`) and relays the order through
//! the config store ([`Errand`]: replays and test-sends alike):
//!
//! 1. it writes the order at `<errand's orders>/<replica>/<id>`, bound to a lease of
//!    [`RELAY_TTL`] (so an order nobody takes goes away by itself), and watches the answer key
//!    `<errand's results>/<id>`;
//! 2. every replica watches its own orders of each errand ([`Relay::serve`]), carries each out
//!    through its agents, and writes the answer at the answer key (under a lease of its own)
//!    in the same transaction that deletes the order;
//! 3. the asking replica reads the answer, or gives up after the errand's wait.

use std::future::Future;
use std::time::{Duration, SystemTime};

use herald_proto::convert::{duration, std_duration, system_time};
use herald_proto::v1 as pb;
use prost::Message;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::fleet::Fleet;
use crate::keys;
use crate::store::{KeyValue, Op, Store, StoreError, Txn, TxnOutcome, WatchEvent};

/// How long an agent has to answer a replay order.
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the asking replica waits for a relayed replay's result.
pub const RELAY_WAIT: Duration = Duration::from_secs(20);
/// How much longer than the agent's wait the asking replica waits for a relayed answer: the
/// store's round trips.
const RELAY_MARGIN: Duration = Duration::from_secs(5);
/// How long relayed orders and their results live in the store at most.
const RELAY_TTL: Duration = Duration::from_secs(120);
/// Wait before watching the orders again after the store failed.
const RETRY_EVERY: Duration = Duration::from_secs(2);

/// One kind of order replicas relay to each other: where its orders and answers are kept, and
/// how the replica holding the agent carries one out.
pub trait Errand: Send + Sync + 'static {
    /// The order, as written to the store.
    type Order: Message + Default + Send + 'static;
    /// The answer, as written back.
    type Answer: Message + Default + Send + 'static;
    /// What the errand is, for logs.
    const NAME: &'static str;
    /// The prefix of the orders relayed to `replica`.
    fn orders(replica: &str) -> String;
    /// The answer key of order `id`.
    fn answer_key(id: &str) -> String;
    /// Carries `order` out through this replica's agents in `fleet`.
    fn carry_out(fleet: Fleet, order: Self::Order) -> impl Future<Output = Self::Answer> + Send;
}

/// Replays ([`crate::replay`]): an agent queues deliveries again.
pub struct Replay;

impl Errand for Replay {
    type Order = pb::RelayedReplay;
    type Answer = pb::ReplayResult;
    const NAME: &'static str = "replay";

    fn orders(replica: &str) -> String {
        keys::replay_orders(replica)
    }

    fn answer_key(id: &str) -> String {
        keys::replay_result(id)
    }

    async fn carry_out(fleet: Fleet, order: pb::RelayedReplay) -> pb::ReplayResult {
        let missed_all = |reason: &str| pb::ReplayResult {
            order_id: 0,
            queued: 0,
            missed: order
                .items
                .iter()
                .map(|item| pb::ReplayMiss {
                    event_id: item.event_id.clone(),
                    subscription_id: item.subscription_id.clone(),
                    agent_id: order.agent_id.clone(),
                    reason: reason.to_owned(),
                })
                .collect(),
        };
        match fleet.send_replay(&order.agent_id, order.items.clone()) {
            None => missed_all("its agent is not connected to the replica holding it any more"),
            Some(answer) => match tokio::time::timeout(AGENT_TIMEOUT, answer).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => missed_all("its agent disconnected before answering"),
                Err(_) => missed_all("its agent did not answer in time"),
            },
        }
    }
}

/// Test-sends ([`crate::test_send`]): an agent that delivers the subscription makes one
/// attempt now.
pub struct Test;

/// The longest a relayed test order may ask its replica to wait for the agent.
const MAX_TEST_WAIT: Duration = Duration::from_secs(90);

impl Errand for Test {
    type Order = pb::RelayedTest;
    type Answer = pb::RelayedTestResult;
    const NAME: &'static str = "test";

    fn orders(replica: &str) -> String {
        keys::test_orders(replica)
    }

    fn answer_key(id: &str) -> String {
        keys::test_result(id)
    }

    async fn carry_out(fleet: Fleet, order: pb::RelayedTest) -> pb::RelayedTestResult {
        let wait = order
            .wait
            .as_ref()
            .and_then(std_duration)
            .unwrap_or(AGENT_TIMEOUT)
            .min(MAX_TEST_WAIT);
        let Some(event) = order.event else {
            return pb::RelayedTestResult {
                no_agent: true,
                ..Default::default()
            };
        };
        // An order found late (this replica restarted while it waited): its asker has given
        // up, and the endpoint gets no test nobody waits for.
        let asked_at = event.occurred_at.as_ref().map(system_time);
        if asked_at.is_some_and(|at| at + wait + RELAY_MARGIN < SystemTime::now()) {
            return pb::RelayedTestResult::default();
        }
        let Some((agent_id, order_id, answer)) =
            fleet.send_test(&order.subscription_id, &order.regions, event)
        else {
            return pb::RelayedTestResult {
                no_agent: true,
                ..Default::default()
            };
        };
        let result = tokio::time::timeout(wait, answer)
            .await
            .ok()
            .and_then(Result::ok);
        fleet.test_abandoned(order_id);
        pb::RelayedTestResult {
            no_agent: false,
            agent_id,
            result,
        }
    }
}

/// What became of a relayed replay.
#[derive(Debug)]
pub enum Relayed {
    /// No replica holds the agent's stream (it is not connected anywhere).
    NotHeld,
    /// The holding replica answered with the agent's result.
    Answered(pb::ReplayResult),
    /// The holding replica did not answer in time.
    NoAnswer,
}

/// What became of a relayed test.
#[derive(Debug)]
pub enum RelayedTest {
    /// No other replica holds an agent that delivers the subscription.
    NoAgent,
    /// An agent was asked: its id, and its answer (none when it did not answer in time).
    Asked {
        /// The agent asked.
        agent_id: String,
        /// What it did.
        result: Option<Box<pb::TestResult>>,
    },
    /// A replica that may hold such an agent did not answer in time.
    NoAnswer,
}

/// Relays orders between replicas; cloning shares it.
#[derive(Clone)]
pub struct Relay {
    store: Store,
    fleet: Fleet,
    /// This replica's name, as its agents' presence records carry it.
    replica: String,
}

impl Relay {
    /// The relay of the replica named `replica`, whose agents are in `fleet`.
    pub fn new(store: Store, fleet: Fleet, replica: &str) -> Self {
        Relay {
            store,
            fleet,
            replica: replica.to_owned(),
        }
    }

    /// Has the replica holding `agent_id`'s stream give it `items`; what came of it.
    pub async fn send(
        &self,
        agent_id: &str,
        items: Vec<pb::ReplayItem>,
    ) -> Result<Relayed, StoreError> {
        let Some(record) = self.store.get(&keys::agent(agent_id)).await? else {
            return Ok(Relayed::NotHeld);
        };
        let Ok(info) = pb::AgentInfo::decode(record.value.as_slice()) else {
            return Ok(Relayed::NotHeld);
        };
        if !info.connected || info.replica.is_empty() || info.replica == self.replica {
            return Ok(Relayed::NotHeld);
        }
        let order = pb::RelayedReplay {
            agent_id: agent_id.to_owned(),
            items,
        };
        Ok(
            match self
                .relay::<Replay>(&info.replica, order, RELAY_WAIT)
                .await?
            {
                Some(result) => Relayed::Answered(result),
                None => Relayed::NoAnswer,
            },
        )
    }

    /// Has another replica with a connected agent in one of `regions` (any, when empty) make
    /// the test attempt of `event` to subscription `subscription_id`, waiting at most `wait`
    /// for the agent; the replicas are asked one at a time until one has such an agent.
    pub async fn test(
        &self,
        subscription_id: &str,
        regions: &[String],
        event: pb::Event,
        wait: Duration,
    ) -> Result<RelayedTest, StoreError> {
        let (agents, _) = self.store.list(keys::AGENTS).await?;
        let mut replicas: Vec<String> = agents
            .iter()
            .filter_map(|kv| pb::AgentInfo::decode(kv.value.as_slice()).ok())
            .filter(|info| {
                info.connected
                    && !info.replica.is_empty()
                    && info.replica != self.replica
                    && (regions.is_empty() || regions.contains(&info.region))
            })
            .map(|info| info.replica)
            .collect();
        replicas.sort();
        replicas.dedup();
        let mut unanswered = false;
        for replica in replicas {
            let order = pb::RelayedTest {
                subscription_id: subscription_id.to_owned(),
                regions: regions.to_vec(),
                event: Some(event.clone()),
                wait: Some(duration(wait)),
            };
            match self.relay::<Test>(&replica, order, wait).await? {
                Some(answer) if answer.no_agent => {}
                Some(answer) => {
                    return Ok(RelayedTest::Asked {
                        agent_id: answer.agent_id,
                        result: answer.result.map(Box::new),
                    });
                }
                None => unanswered = true,
            }
        }
        Ok(if unanswered {
            RelayedTest::NoAnswer
        } else {
            RelayedTest::NoAgent
        })
    }

    /// Writes `order` for `replica` and waits for its answer, at most `wait` and
    /// [`RELAY_MARGIN`]; `None` when none came.
    async fn relay<E: Errand>(
        &self,
        replica: &str,
        order: E::Order,
        wait: Duration,
    ) -> Result<Option<E::Answer>, StoreError> {
        let id = herald_core::ids::new_replay_order_id();
        let lease = self.store.grant_lease(RELAY_TTL).await?;
        let answer_key = E::answer_key(&id);
        let put = Txn::default().then(Op::PutLeased(
            format!("{}{id}", E::orders(replica)),
            order.encode_to_vec(),
            lease,
        ));
        let TxnOutcome::Committed { revision } = self.store.txn(put).await? else {
            return Ok(None);
        };
        let mut watch = self.store.watch(&answer_key, revision).await?;
        let answer = async {
            while let Some(batch) = watch.recv().await {
                for event in batch?.events {
                    if let WatchEvent::Put(kv) = event
                        && let Ok(answer) = E::Answer::decode(kv.value.as_slice())
                    {
                        return Ok(Some(answer));
                    }
                }
            }
            Ok::<_, StoreError>(None)
        };
        let outcome = match tokio::time::timeout(wait + RELAY_MARGIN, answer).await {
            Ok(Ok(answer)) => answer,
            Err(_) => None,
            Ok(Err(err)) => return Err(err),
        };
        // The order (if still there) goes with its lease; the answer is read.
        let _ = self.store.revoke_lease(lease).await;
        let _ = self
            .store
            .txn(Txn::default().then(Op::Delete(answer_key)))
            .await;
        Ok(outcome)
    }

    /// Carries out the orders relayed to this replica until `stop`.
    pub async fn serve(self, stop: CancellationToken) {
        tokio::join!(
            self.serve_errand::<Replay>(stop.clone()),
            self.serve_errand::<Test>(stop),
        );
    }

    /// Carries out this replica's orders of one errand until `stop`.
    async fn serve_errand<E: Errand>(&self, stop: CancellationToken) {
        let mut answering = JoinSet::new();
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                result = self.serve_once::<E>(&mut answering) => {
                    if let Err(err) = result {
                        tracing::warn!(error = %err, errand = E::NAME, "relayed orders: watching again");
                    }
                }
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(RETRY_EVERY) => {}
            }
        }
        // Orders being carried out end within the agent's timeout.
        while answering.join_next().await.is_some() {}
    }

    /// Carries out the orders waiting for this replica, then each new one, until the watch
    /// fails.
    async fn serve_once<E: Errand>(&self, answering: &mut JoinSet<()>) -> Result<(), StoreError> {
        let prefix = E::orders(&self.replica);
        let (waiting, revision) = self.store.list(&prefix).await?;
        for kv in waiting {
            answering.spawn(answer::<E>(self.store.clone(), self.fleet.clone(), kv));
        }
        let mut watch = self.store.watch(&prefix, revision + 1).await?;
        while let Some(batch) = watch.recv().await {
            for event in batch?.events {
                if let WatchEvent::Put(kv) = event {
                    answering.spawn(answer::<E>(self.store.clone(), self.fleet.clone(), kv));
                }
            }
            // Reap what finished, so the set holds only orders in progress.
            while answering.try_join_next().is_some() {}
        }
        Ok(())
    }
}

/// Carries out one relayed order and writes the answer in place of the order.
async fn answer<E: Errand>(store: Store, fleet: Fleet, order: KeyValue) {
    let Some(id) = order.key.rsplit('/').next().map(str::to_owned) else {
        return;
    };
    let Ok(relayed) = E::Order::decode(order.value.as_slice()) else {
        tracing::warn!(key = %order.key, errand = E::NAME, "a relayed order that does not decode; dropped");
        let _ = store.txn(Txn::default().then(Op::Delete(order.key))).await;
        return;
    };
    let answer = E::carry_out(fleet, relayed).await;
    let written = async {
        let lease = store.grant_lease(RELAY_TTL).await?;
        store
            .txn(
                Txn::default()
                    .then(Op::PutLeased(
                        E::answer_key(&id),
                        answer.encode_to_vec(),
                        lease,
                    ))
                    .then(Op::Delete(order.key.clone())),
            )
            .await
    };
    if let Err(err) = written.await {
        tracing::warn!(order = %id, errand = E::NAME, error = %err, "cannot write a relayed order's answer");
    }
}
