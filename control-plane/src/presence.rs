//! Agent presence in the config store, so every replica lists every agent.
//!
//! Each replica holds one lease (TTL [`LEASE_TTL`], renewed every [`RENEW_EVERY`]) and writes
//! the entries of its agents that changed ([`Fleet::take_changed`]) as `AgentInfo` records
//! under `/herald/v1/agents/`, bound to that lease, at most every [`FLUSH_EVERY`]. When the
//! replica dies its lease runs out and its records go with it; on a graceful stop it revokes
//! the lease so they go at once. Either way its agents reconnect to another replica, which
//! writes them again.
//!
//! A record says where an agent's stream is, so a replica only overwrites another replica's
//! record for an agent it holds a live stream for: records of agents that disconnected (and
//! their deletion a day later) are written only if the record is still the one this replica
//! wrote last (compared by revision).

use std::collections::HashMap;
use std::time::Duration;

use herald_proto::v1 as pb;
use prost::Message as _;
use tokio_util::sync::CancellationToken;

use crate::fleet::Fleet;
use crate::keys;
use crate::store::{Compare, LeaseId, Op, Store, StoreError, Txn, TxnOutcome};

/// How long records outlive a replica that stopped renewing its lease.
const LEASE_TTL: Duration = Duration::from_secs(15);
/// How often the lease is renewed.
const RENEW_EVERY: Duration = Duration::from_secs(5);
/// How often changed entries are written.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How long an agent that went away stays listed.
const DEPARTED_KEEP: Duration = Duration::from_secs(24 * 60 * 60);
/// Wait before trying again to get a lease from a store that refused.
const GRANT_RETRY: Duration = Duration::from_secs(2);
/// Records written per transaction (etcd takes 128 operations by default).
const WRITES_PER_TXN: usize = 100;

/// Writes this replica's agents to the store until `stop`, then revokes its lease.
pub async fn run(store: Store, fleet: Fleet, stop: CancellationToken) {
    loop {
        let lease = tokio::select! {
            () = stop.cancelled() => return,
            lease = store.grant_lease(LEASE_TTL) => lease,
        };
        let lease = match lease {
            Ok(lease) => lease,
            Err(err) => {
                tracing::warn!(error = %err, "cannot get a lease for agent presence; retrying");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(GRANT_RETRY) => continue,
                }
            }
        };
        // A new lease: every record is written again under it.
        fleet.mark_all_changed();
        let mut writer = Writer {
            store: &store,
            lease,
            written: HashMap::new(),
        };
        let ended = writer.follow(&fleet, &stop).await;
        if ended == Ended::Stopped {
            // Graceful: the records go now rather than after the TTL.
            let revoke = store.revoke_lease(lease);
            if let Ok(Err(err)) = tokio::time::timeout(Duration::from_secs(2), revoke).await {
                tracing::warn!(error = %err, "cannot revoke the presence lease; it will expire");
            }
            return;
        }
        tracing::warn!("the presence lease expired; writing the fleet again under a new one");
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Ended {
    Stopped,
    LeaseLost,
}

/// Writes records under one lease.
struct Writer<'a> {
    store: &'a Store,
    lease: LeaseId,
    /// The revision this replica last wrote each agent's record at.
    written: HashMap<String, i64>,
}

impl Writer<'_> {
    async fn follow(&mut self, fleet: &Fleet, stop: &CancellationToken) -> Ended {
        let mut renewed = tokio::time::Instant::now();
        loop {
            tokio::select! {
                () = stop.cancelled() => return Ended::Stopped,
                () = tokio::time::sleep(FLUSH_EVERY) => {}
            }
            if renewed.elapsed() >= RENEW_EVERY {
                match self.store.keep_lease_alive(self.lease).await {
                    Ok(true) => renewed = tokio::time::Instant::now(),
                    Ok(false) => return Ended::LeaseLost,
                    Err(err) => tracing::warn!(error = %err, "cannot renew the presence lease"),
                }
            }
            let changed = fleet.take_changed();
            if let Err(err) = self.write(&changed).await {
                tracing::warn!(error = %err, agents = changed.len(), "cannot write agent presence; will retry");
                fleet.mark_changed(changed.iter().map(|info| info.id.as_str()));
            }
            for id in fleet.forget_departed(DEPARTED_KEEP) {
                if let Err(err) = self.delete(&id).await {
                    tracing::debug!(agent = %id, error = %err, "cannot delete a departed agent's record");
                }
            }
        }
    }

    /// Writes the records of connected agents in batches, and those of disconnected ones only
    /// over this replica's own record.
    async fn write(&mut self, infos: &[pb::AgentInfo]) -> Result<(), StoreError> {
        let (live, gone): (Vec<&pb::AgentInfo>, Vec<&pb::AgentInfo>) =
            infos.iter().partition(|info| info.connected);
        for chunk in live.chunks(WRITES_PER_TXN) {
            let mut txn = Txn::default();
            for info in chunk {
                txn = txn.then(self.put(info));
            }
            if let TxnOutcome::Committed { revision } = self.store.txn(txn).await? {
                for info in chunk {
                    self.written.insert(info.id.clone(), revision);
                }
            }
        }
        for info in gone {
            let key = keys::agent(&info.id);
            let txn = Txn::default()
                .when(self.still_ours(&info.id, &key))
                .then(self.put(info));
            match self.store.txn(txn).await? {
                TxnOutcome::Committed { revision } => {
                    self.written.insert(info.id.clone(), revision);
                }
                // Another replica holds the agent now; its record stands.
                TxnOutcome::Conflict => {
                    self.written.remove(&info.id);
                }
            }
        }
        Ok(())
    }

    async fn delete(&mut self, id: &str) -> Result<(), StoreError> {
        let key = keys::agent(id);
        let txn = Txn::default()
            .when(self.still_ours(id, &key))
            .then(Op::Delete(key));
        self.written.remove(id);
        self.store.txn(txn).await.map(|_| ())
    }

    fn put(&self, info: &pb::AgentInfo) -> Op {
        Op::PutLeased(keys::agent(&info.id), info.encode_to_vec(), self.lease)
    }

    /// The record is the one this replica wrote last (or absent, when it wrote none).
    fn still_ours(&self, id: &str, key: &str) -> Compare {
        match self.written.get(id) {
            Some(revision) => Compare::ModRevision(key.to_owned(), *revision),
            None => Compare::Absent(key.to_owned()),
        }
    }
}

/// Every agent's presence record, by agent id; records that do not decode are skipped.
pub async fn read_all(store: &Store) -> Result<Vec<pb::AgentInfo>, StoreError> {
    let (kvs, _) = store.list(keys::AGENTS).await?;
    Ok(kvs
        .iter()
        .filter_map(|kv| match pb::AgentInfo::decode(kv.value.as_slice()) {
            Ok(info) => Some(info),
            Err(err) => {
                tracing::warn!(key = %kv.key, error = %err, "skipping an unreadable agent record");
                None
            }
        })
        .collect())
}
