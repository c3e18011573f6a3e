//! The agents this control-plane replica has seen: who is connected, which config revision
//! each applied, and the last change each refused. Kept in memory per replica; an agent's
//! entry lives on after it disconnects so operators can see it went away.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use herald_proto::convert::timestamp;
use herald_proto::v1 as pb;

/// Agents known to this replica; cloning shares it.
#[derive(Clone, Default)]
pub struct Fleet {
    agents: Arc<Mutex<BTreeMap<String, Entry>>>,
}

#[derive(Clone)]
struct Entry {
    info: pb::AgentInfo,
    /// Streams open for this agent id; it is connected while any is.
    streams: u32,
}

impl Fleet {
    /// Records an agent's hello.
    pub fn connected(&self, hello: &pb::AgentHello) {
        let now = Some(timestamp(SystemTime::now()));
        let mut agents = self.lock();
        let entry = agents
            .entry(hello.agent_id.clone())
            .or_insert_with(|| Entry {
                info: pb::AgentInfo::default(),
                streams: 0,
            });
        entry.streams += 1;
        entry.info = pb::AgentInfo {
            id: hello.agent_id.clone(),
            node: hello.node.clone(),
            region: hello.region.clone(),
            version: hello.version.clone(),
            applied_revision: hello.last_revision,
            current_revision: 0,
            connected_since: now,
            last_seen: now,
            last_nack: entry.info.last_nack.clone(),
            connected: true,
        };
    }

    /// Records an acknowledged revision.
    pub fn acked(&self, agent_id: &str, revision: i64) {
        self.update(agent_id, |info| info.applied_revision = revision);
    }

    /// Records a refused revision.
    pub fn nacked(&self, agent_id: &str, revision: i64, reason: &str) {
        self.update(agent_id, |info| {
            info.last_nack = format!("revision {revision}: {reason}");
        });
    }

    /// Records that an agent's stream ended.
    pub fn disconnected(&self, agent_id: &str) {
        let mut agents = self.lock();
        if let Some(entry) = agents.get_mut(agent_id) {
            entry.streams = entry.streams.saturating_sub(1);
            entry.info.connected = entry.streams > 0;
            entry.info.last_seen = Some(timestamp(SystemTime::now()));
        }
    }

    /// Config streams open on this replica.
    pub fn streams(&self) -> usize {
        self.lock()
            .values()
            .map(|entry| entry.streams as usize)
            .sum()
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
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.agents.lock().unwrap_or_else(|e| e.into_inner())
    }
}
