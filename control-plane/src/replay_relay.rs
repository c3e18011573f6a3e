//! Replay orders for agents whose config stream another replica holds. With a shared delivery
//! log, any replica may be asked to replay a delivery, but only the replica holding the agent's
//! stream can hand the agent the order. The asking replica finds that replica in the agent's
//! presence record (`presence.rs`) and relays the order through the config store:
//!
//! 1. it writes a `RelayedReplay` at `/herald/v1/replay-orders/<replica>/<id>`, bound to a
//!    lease of [`RELAY_TTL`] (so an order nobody takes goes away by itself), and watches
//!    `/herald/v1/replay-results/<id>`;
//! 2. every replica watches its own orders ([`Relay::serve`]), hands each to the agent, and
//!    writes the agent's `ReplayResult` at the result key (under a lease of its own) in the
//!    same transaction that deletes the order;
//! 3. the asking replica reads the result, or gives up after [`RELAY_WAIT`].

use std::time::Duration;

use herald_proto::v1 as pb;
use prost::Message as _;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::fleet::Fleet;
use crate::keys;
use crate::store::{KeyValue, Op, Store, StoreError, Txn, TxnOutcome, WatchEvent};

/// How long an agent has to answer a replay order.
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the asking replica waits for a relayed order's result.
pub const RELAY_WAIT: Duration = Duration::from_secs(20);
/// How long relayed orders and their results live in the store at most.
const RELAY_TTL: Duration = Duration::from_secs(60);
/// Wait before watching the orders again after the store failed.
const RETRY_EVERY: Duration = Duration::from_secs(2);

/// What became of a relayed order.
#[derive(Debug)]
pub enum Relayed {
    /// No replica holds the agent's stream (it is not connected anywhere).
    NotHeld,
    /// The holding replica answered with the agent's result.
    Answered(pb::ReplayResult),
    /// The holding replica did not answer in time.
    NoAnswer,
}

/// Relays replay orders between replicas; cloning shares it.
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
        let id = herald_core::ids::new_replay_order_id();
        let order = pb::RelayedReplay {
            agent_id: agent_id.to_owned(),
            items,
        };
        let lease = self.store.grant_lease(RELAY_TTL).await?;
        let result_key = keys::replay_result(&id);
        let put = Txn::default().then(Op::PutLeased(
            format!("{}{id}", keys::replay_orders(&info.replica)),
            order.encode_to_vec(),
            lease,
        ));
        let TxnOutcome::Committed { revision } = self.store.txn(put).await? else {
            return Ok(Relayed::NoAnswer);
        };
        let mut watch = self.store.watch(&result_key, revision).await?;
        let answer = async {
            while let Some(batch) = watch.recv().await {
                for event in batch?.events {
                    if let WatchEvent::Put(kv) = event
                        && let Ok(result) = pb::ReplayResult::decode(kv.value.as_slice())
                    {
                        return Ok(Some(result));
                    }
                }
            }
            Ok::<_, StoreError>(None)
        };
        let outcome = match tokio::time::timeout(RELAY_WAIT, answer).await {
            Ok(Ok(Some(result))) => Relayed::Answered(result),
            Ok(Ok(None)) | Err(_) => Relayed::NoAnswer,
            Ok(Err(err)) => return Err(err),
        };
        // The order (if still there) goes with its lease; the result is read.
        let _ = self.store.revoke_lease(lease).await;
        let _ = self
            .store
            .txn(Txn::default().then(Op::Delete(result_key)))
            .await;
        Ok(outcome)
    }

    /// Hands the orders relayed to this replica to its agents until `stop`.
    pub async fn serve(self, stop: CancellationToken) {
        let mut answering = JoinSet::new();
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                result = self.serve_once(&mut answering) => {
                    if let Err(err) = result {
                        tracing::warn!(error = %err, "relayed replay orders: watching again");
                    }
                }
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(RETRY_EVERY) => {}
            }
        }
        // Orders being answered end within the agent's timeout.
        while answering.join_next().await.is_some() {}
    }

    /// Answers the orders waiting for this replica, then each new one, until the watch fails.
    async fn serve_once(&self, answering: &mut JoinSet<()>) -> Result<(), StoreError> {
        let prefix = keys::replay_orders(&self.replica);
        let (waiting, revision) = self.store.list(&prefix).await?;
        for kv in waiting {
            answering.spawn(answer(self.store.clone(), self.fleet.clone(), kv));
        }
        let mut watch = self.store.watch(&prefix, revision + 1).await?;
        while let Some(batch) = watch.recv().await {
            for event in batch?.events {
                if let WatchEvent::Put(kv) = event {
                    answering.spawn(answer(self.store.clone(), self.fleet.clone(), kv));
                }
            }
            // Reap what finished, so the set holds only orders in progress.
            while answering.try_join_next().is_some() {}
        }
        Ok(())
    }
}

/// Hands one relayed order to its agent and writes the result in place of the order.
async fn answer(store: Store, fleet: Fleet, order: KeyValue) {
    let Some(id) = order.key.rsplit('/').next().map(str::to_owned) else {
        return;
    };
    let Ok(relayed) = pb::RelayedReplay::decode(order.value.as_slice()) else {
        tracing::warn!(key = %order.key, "a relayed replay order that does not decode; dropped");
        let _ = store.txn(Txn::default().then(Op::Delete(order.key))).await;
        return;
    };
    let missed_all = |reason: &str| pb::ReplayResult {
        order_id: 0,
        queued: 0,
        missed: relayed
            .items
            .iter()
            .map(|item| pb::ReplayMiss {
                event_id: item.event_id.clone(),
                subscription_id: item.subscription_id.clone(),
                agent_id: relayed.agent_id.clone(),
                reason: reason.to_owned(),
            })
            .collect(),
    };
    let result = match fleet.send_replay(&relayed.agent_id, relayed.items.clone()) {
        None => missed_all("its agent is not connected to the replica holding it any more"),
        Some(answer) => match tokio::time::timeout(AGENT_TIMEOUT, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => missed_all("its agent disconnected before answering"),
            Err(_) => missed_all("its agent did not answer in time"),
        },
    };
    let written = async {
        let lease = store.grant_lease(RELAY_TTL).await?;
        store
            .txn(
                Txn::default()
                    .then(Op::PutLeased(
                        keys::replay_result(&id),
                        result.encode_to_vec(),
                        lease,
                    ))
                    .then(Op::Delete(order.key.clone())),
            )
            .await
    };
    if let Err(err) = written.await {
        tracing::warn!(order = %id, error = %err, "cannot write a relayed replay's result");
    }
}
