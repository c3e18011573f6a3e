//! The config hub: one watch on the store per control-plane replica, feeding every agent
//! stream. It holds the current subscriptions in memory with the store revision they reflect,
//! and broadcasts each change; an agent stream takes a snapshot and subscribes under one lock,
//! so it misses nothing between the two. The store is never read per agent.
//!
//! The hub also keeps the latest [`CHANGE_BUFFER`] changes, so an agent that reconnects with
//! a revision it already holds gets only the changes since ([`ConfigHub::resume`]).
//!
//! When the watch fails (store unreachable, history compacted) the hub lists everything again
//! and broadcasts the difference from what it held as one change: deletions made during the
//! gap go out as removals, and when nothing changed nothing is sent.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use herald_proto::v1 as pb;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::follow::{self, FollowError, Run};
use crate::keys;
use crate::sealing::Keyring;
use crate::store::{Store, WatchEvent};
use crate::subscriptions::{SubscriptionError, decode};

/// Changes kept for streams that fall behind and for agents that resume from a revision; a
/// stream or agent further behind gets a fresh snapshot.
const CHANGE_BUFFER: usize = 4096;
/// How long a deleted subscription is remembered (agents report the attempts they skip for it
/// after it is gone).
const DEPARTED_KEEP: Duration = Duration::from_secs(24 * 60 * 60);
/// The most deleted subscriptions remembered.
const DEPARTED_MAX: usize = 100_000;

/// One store revision's subscription changes.
#[derive(Debug)]
pub struct Change {
    /// The store revision.
    pub revision: i64,
    /// Subscriptions created or updated.
    pub upserts: Vec<Arc<pb::Subscription>>,
    /// Ids of subscriptions deleted.
    pub removals: Vec<String>,
    /// The versions before this change of the subscriptions it changes or deletes (none for
    /// new ones): whether an agent held one decides whether it must hear of its removal.
    pub previous: BTreeMap<String, Arc<pb::Subscription>>,
    /// When the hub saw the change (the start of its convergence time).
    pub seen_at: tokio::time::Instant,
}

/// All subscriptions at one revision.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// The store revision.
    pub revision: i64,
    /// By id.
    pub subscriptions: BTreeMap<String, Arc<pb::Subscription>>,
}

/// The hub's state: the subscriptions, and the changes that led to them (for agents that
/// resume from a revision they already hold).
#[derive(Default)]
struct State {
    snapshot: Snapshot,
    /// The latest changes, oldest first: every change after `history_from`.
    history: VecDeque<Arc<Change>>,
    history_from: i64,
    /// The revision of the newest subscription change the hub holds (see
    /// [`ConfigHub::changed_revision`]).
    changed_revision: i64,
    /// Subscriptions deleted lately.
    departed: Departed,
    /// Subscriptions whose regions changed lately, as they were before, with every region
    /// they were in lately: an agent of a region they left may still report the attempts it
    /// made, or skipped, for them.
    moved: Departed,
    /// Stored subscriptions this replica cannot open, by id, with why: while any is, agents
    /// are refused a config that would silently lack it.
    unreadable: BTreeMap<String, Unopened>,
}

/// Why a stored subscription does not open.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Unopened {
    /// The record does not decode: no replica can open it, an operator must delete it.
    damaged: bool,
    /// The error, for the log.
    reason: String,
}

impl From<&SubscriptionError> for Unopened {
    fn from(err: &SubscriptionError) -> Self {
        Unopened {
            damaged: matches!(err, SubscriptionError::Corrupt { .. }),
            reason: err.to_string(),
        }
    }
}

/// Stored subscriptions the hub cannot open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unreadable {
    /// How many do not decode (no replica can open them).
    pub damaged: usize,
    /// How many are sealed with a key this replica's keyring lacks (another may open them).
    pub sealed: usize,
    /// One of them.
    pub example: String,
    /// Why that one does not open.
    pub reason: String,
}

/// Subscriptions as they were before a change the hub saw in the last [`DEPARTED_KEEP`] (at
/// most [`DEPARTED_MAX`]): deleted ones, or ones moved out of regions, whose agents' reports of
/// attempts made for them are still theirs.
#[derive(Default)]
struct Departed {
    by_id: HashMap<String, Arc<pb::Subscription>>,
    /// Oldest first.
    order: VecDeque<Departure>,
}

/// When the hub saw a subscription's change (its deletion, or its move).
struct Departure {
    at: tokio::time::Instant,
    id: String,
}

impl Departed {
    fn remember(&mut self, sub: Arc<pb::Subscription>) {
        let now = tokio::time::Instant::now();
        if self.by_id.contains_key(&sub.id) {
            // Remembered again: its earlier entry must not take this one away when it ages.
            self.order.retain(|d| d.id != sub.id);
        }
        while let Some(oldest) = self.order.front()
            && (self.order.len() >= DEPARTED_MAX || now.duration_since(oldest.at) > DEPARTED_KEEP)
        {
            if let Some(oldest) = self.order.pop_front() {
                self.by_id.remove(&oldest.id);
            }
        }
        self.order.push_back(Departure {
            at: now,
            id: sub.id.clone(),
        });
        self.by_id.insert(sub.id.clone(), sub);
    }
}

impl State {
    fn record(&mut self, change: Arc<Change>) {
        for id in &change.removals {
            if let Some(last) = change.previous.get(id) {
                self.departed.remember(last.clone());
            }
        }
        for sub in &change.upserts {
            if let Some(before) = change.previous.get(&sub.id)
                && before.regions != sub.regions
            {
                // Every region it was in lately (none listed: every region).
                let mut held = (**before).clone();
                if let Some(earlier) = self.moved.by_id.get(&sub.id) {
                    if earlier.regions.is_empty() {
                        held.regions.clear();
                    } else if !held.regions.is_empty() {
                        for region in &earlier.regions {
                            if !held.regions.contains(region) {
                                held.regions.push(region.clone());
                            }
                        }
                    }
                }
                self.moved.remember(Arc::new(held));
            }
        }
        if self.history.len() == CHANGE_BUFFER
            && let Some(oldest) = self.history.pop_front()
        {
            self.history_from = oldest.revision;
        }
        self.history.push_back(change);
    }
}

/// Where a resuming agent starts: the changes since its revision, merged.
pub struct Resume {
    /// The hub's revision: what the agent holds once it applied `changes`.
    pub revision: i64,
    /// The changes after the agent's revision, oldest first.
    pub changes: Vec<Arc<Change>>,
}

/// The hub; cloning shares it.
#[derive(Clone)]
pub struct ConfigHub {
    state: Arc<RwLock<State>>,
    changes: broadcast::Sender<Arc<Change>>,
    /// The revision the hub has caught up to (0 before the first listing).
    revision: watch::Receiver<i64>,
    /// Opens the sealed signing secrets of stored records.
    keyring: Arc<Keyring>,
}

impl ConfigHub {
    /// Starts following the store, until `shutdown`, as one of `tasks`. The hub is usable at
    /// once; [`ConfigHub::ready`] waits for the first listing. Records are opened with
    /// `keyring`.
    pub fn start(
        store: Store,
        keyring: Arc<Keyring>,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) -> Self {
        let state = Arc::new(RwLock::new(State::default()));
        let (changes, _) = broadcast::channel(CHANGE_BUFFER);
        let (revision_tx, revision) = watch::channel(0);
        let hub = ConfigHub {
            state,
            changes,
            revision,
            keyring,
        };
        let follower = hub.clone();
        tasks.spawn(async move {
            tokio::select! {
                () = follower.follow(store, revision_tx) => {}
                () = shutdown.cancelled() => {}
            }
        });
        hub
    }

    /// Waits until the hub has loaded the store once.
    pub async fn ready(&self) {
        let mut revision = self.revision.clone();
        let _ = revision.wait_for(|r| *r > 0).await;
    }

    /// The revision the hub reflects.
    pub fn revision(&self) -> i64 {
        *self.revision.borrow()
    }

    /// The revision of the newest change to the subscriptions the hub holds: the last write
    /// or deletion it followed, or at its first listing the newest record's last write (a
    /// deletion made before this replica started is not seen). The store's other writes
    /// (agents' presence, guards) raise [`ConfigHub::revision`] and not this, so an agent
    /// that applied this revision holds every subscription as the hub does.
    pub fn changed_revision(&self) -> i64 {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        state.changed_revision
    }

    /// The subscription `id` as the hub holds it now.
    pub fn get(&self, id: &str) -> Option<Arc<pb::Subscription>> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        state.snapshot.subscriptions.get(id).cloned()
    }

    /// The subscription `id` as the hub holds it now, or as it was when it was deleted (within
    /// the last day): whose it is, for reports of attempts made for it.
    pub fn get_or_departed(&self, id: &str) -> Option<Arc<pb::Subscription>> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        state
            .snapshot
            .subscriptions
            .get(id)
            .or_else(|| state.departed.by_id.get(id))
            .cloned()
    }

    /// Subscription `id` as it was before its regions last changed, within the last day, with
    /// every region it was in over that time: whose agents may still report attempts for it.
    pub fn before_move(&self, id: &str) -> Option<Arc<pb::Subscription>> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        state.moved.by_id.get(id).cloned()
    }

    /// The stored subscriptions this replica cannot open, if any.
    pub fn unreadable(&self) -> Option<Unreadable> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let (example, why) = state.unreadable.iter().next()?;
        let damaged = state.unreadable.values().filter(|u| u.damaged).count();
        Some(Unreadable {
            damaged,
            sealed: state.unreadable.len() - damaged,
            example: example.clone(),
            reason: why.reason.clone(),
        })
    }

    /// The current state and a receiver of every change after it.
    pub fn subscribe(&self) -> (Snapshot, broadcast::Receiver<Arc<Change>>) {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        (state.snapshot.clone(), self.changes.subscribe())
    }

    /// For an agent that holds the config at `revision`: the changes since, and a receiver of
    /// every change after them. `None` when the hub no longer holds every change since then
    /// (or never saw that revision), and the agent needs a snapshot.
    pub fn resume(&self, revision: i64) -> Option<(Resume, broadcast::Receiver<Arc<Change>>)> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let current = state.snapshot.revision;
        if revision < state.history_from || revision > current || current == 0 {
            return None;
        }
        let changes = state
            .history
            .iter()
            .filter(|change| change.revision > revision)
            .cloned()
            .collect();
        let resume = Resume {
            revision: current,
            changes,
        };
        Some((resume, self.changes.subscribe()))
    }

    /// Lists, then watches, forever; re-lists after any watch failure.
    async fn follow(&self, store: Store, revision_tx: watch::Sender<i64>) {
        follow::forever("config", || async {
            let loaded_before = self.revision();
            // Until a listing loads, history starts at the next one.
            let first = loaded_before == 0;
            let result = self.follow_once(&store, &revision_tx, first).await;
            Run {
                progressed: self.revision() != loaded_before,
                result,
            }
        })
        .await;
    }

    async fn follow_once(
        &self,
        store: &Store,
        revision_tx: &watch::Sender<i64>,
        first: bool,
    ) -> Result<(), FollowError> {
        let (kvs, revision) = store.list(keys::SUBSCRIPTIONS).await?;
        let mut subscriptions = BTreeMap::new();
        let mut unreadable = BTreeMap::new();
        for kv in &kvs {
            match decode(kv, &self.keyring) {
                Ok(sub) => {
                    subscriptions.insert(sub.id.clone(), Arc::new(sub));
                }
                Err(err) => {
                    tracing::error!(error = %err, "cannot open a stored subscription");
                    let id = keys::id_of_subscription_key(&kv.key).unwrap_or(&kv.key);
                    unreadable.insert(id.to_owned(), Unopened::from(&err));
                }
            }
        }
        let mut watch = store.watch(keys::SUBSCRIPTIONS, revision + 1).await?;
        {
            let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
            let change = difference(&state.snapshot.subscriptions, &subscriptions, revision);
            state.snapshot = Snapshot {
                revision,
                subscriptions,
            };
            state.unreadable = unreadable;
            let changed = !change.upserts.is_empty() || !change.removals.is_empty();
            let newest_write = kvs.iter().map(|kv| kv.mod_revision).max().unwrap_or(0);
            state.changed_revision = if changed && !first {
                revision
            } else {
                state.changed_revision.max(newest_write)
            };
            if first {
                // History starts here.
                state.history.clear();
                state.history_from = revision;
            } else if changed {
                // The difference is a change like any other: agents resuming from before the
                // gap get it too.
                let change = Arc::new(change);
                state.record(change.clone());
                let _ = self.changes.send(change);
            }
        }
        revision_tx.send_replace(revision.max(1));
        tracing::info!(revision, subscriptions = kvs.len(), "config loaded");
        while let Some(batch) = watch.recv().await {
            let batch = batch?;
            let mut change = Change {
                revision: batch.revision,
                upserts: vec![],
                removals: vec![],
                previous: BTreeMap::new(),
                seen_at: tokio::time::Instant::now(),
            };
            // Each record the batch wrote or deleted, by id: why it does not open, or `None`.
            let mut unopened: BTreeMap<String, Option<Unopened>> = BTreeMap::new();
            for event in batch.events {
                match event {
                    WatchEvent::Put(kv) => match decode(&kv, &self.keyring) {
                        Ok(sub) => {
                            unopened.insert(sub.id.clone(), None);
                            change.upserts.push(Arc::new(sub));
                        }
                        Err(err) => {
                            tracing::error!(error = %err, "cannot open a stored subscription");
                            let id = keys::id_of_subscription_key(&kv.key).unwrap_or(&kv.key);
                            unopened.insert(id.to_owned(), Some(Unopened::from(&err)));
                        }
                    },
                    WatchEvent::Delete { key } => {
                        if let Some(id) = keys::id_of_subscription_key(&key) {
                            unopened.insert(id.to_owned(), None);
                            change.removals.push(id.to_owned());
                        }
                    }
                }
            }
            let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
            for (id, why) in unopened {
                match why {
                    Some(why) => state.unreadable.insert(id, why),
                    None => state.unreadable.remove(&id),
                };
            }
            let ids = change.upserts.iter().map(|s| &s.id).chain(&change.removals);
            for id in ids {
                if let Some(old) = state.snapshot.subscriptions.get(id) {
                    change.previous.insert(id.clone(), old.clone());
                }
            }
            state.snapshot.revision = change.revision;
            state.changed_revision = change.revision;
            for sub in &change.upserts {
                state
                    .snapshot
                    .subscriptions
                    .insert(sub.id.clone(), sub.clone());
            }
            for id in &change.removals {
                state.snapshot.subscriptions.remove(id);
            }
            // Recorded and sent under the lock, so a subscriber's snapshot (or resumed
            // history) and its first change line up.
            let change = Arc::new(change);
            state.record(change.clone());
            let _ = self.changes.send(change);
            drop(state);
            revision_tx.send_replace(batch.revision);
        }
        Err("the store ended the watch".into())
    }
}

/// The change that turns `old` into `new` (listed at `revision`): what is new or different,
/// and what is gone.
fn difference(
    old: &BTreeMap<String, Arc<pb::Subscription>>,
    new: &BTreeMap<String, Arc<pb::Subscription>>,
    revision: i64,
) -> Change {
    Change {
        revision,
        upserts: new
            .iter()
            .filter(|(id, sub)| old.get(*id) != Some(*sub))
            .map(|(_, sub)| sub.clone())
            .collect(),
        removals: old
            .keys()
            .filter(|id| !new.contains_key(*id))
            .cloned()
            .collect(),
        previous: old
            .iter()
            .filter(|(id, sub)| new.get(*id) != Some(*sub))
            .map(|(id, sub)| (id.clone(), sub.clone()))
            .collect(),
        seen_at: tokio::time::Instant::now(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subs(entries: &[(&str, i64)]) -> BTreeMap<String, Arc<pb::Subscription>> {
        entries
            .iter()
            .map(|(id, revision)| {
                let sub = pb::Subscription {
                    id: (*id).into(),
                    revision: *revision,
                    ..Default::default()
                };
                ((*id).to_owned(), Arc::new(sub))
            })
            .collect()
    }

    #[test]
    fn deleted_subscriptions_are_remembered_for_their_reports() {
        let mut state = State::default();
        let gone = subs(&[("gone", 3)]);
        state.record(Arc::new(Change {
            revision: 4,
            upserts: vec![],
            removals: vec!["gone".into()],
            previous: gone.clone(),
            seen_at: tokio::time::Instant::now(),
        }));
        assert_eq!(state.departed.by_id.get("gone"), gone.get("gone"));
        for n in 0..DEPARTED_MAX {
            state.departed.remember(Arc::new(pb::Subscription {
                id: format!("sub_{n}"),
                ..Default::default()
            }));
        }
        assert!(
            !state.departed.by_id.contains_key("gone"),
            "the oldest go first"
        );
        assert_eq!(state.departed.by_id.len(), DEPARTED_MAX);
        assert_eq!(state.departed.order.len(), DEPARTED_MAX);
    }

    #[test]
    fn a_subscription_moved_to_other_regions_is_remembered_as_it_was() {
        let mut state = State::default();
        let before = Arc::new(pb::Subscription {
            id: "moving".into(),
            regions: vec!["eu".into()],
            ..Default::default()
        });
        let after = Arc::new(pb::Subscription {
            regions: vec!["us".into()],
            ..(*before).clone()
        });
        let described = Arc::new(pb::Subscription {
            description: "only words".into(),
            ..(*after).clone()
        });
        state.record(Arc::new(Change {
            revision: 5,
            upserts: vec![after.clone()],
            removals: vec![],
            previous: [("moving".to_owned(), before.clone())].into(),
            seen_at: tokio::time::Instant::now(),
        }));
        // A change that moves nothing forgets nothing, and remembers nothing new.
        state.record(Arc::new(Change {
            revision: 6,
            upserts: vec![described],
            removals: vec![],
            previous: [("moving".to_owned(), after)].into(),
            seen_at: tokio::time::Instant::now(),
        }));
        assert_eq!(state.moved.by_id.get("moving"), Some(&before));
        assert_eq!(state.moved.order.len(), 1);
        // Moved again: the regions it was in before either move still count.
        let again = Arc::new(pb::Subscription {
            regions: vec!["ap".into()],
            ..(*before).clone()
        });
        let at_us = Arc::new(pb::Subscription {
            regions: vec!["us".into()],
            ..(*before).clone()
        });
        state.record(Arc::new(Change {
            revision: 7,
            upserts: vec![again],
            removals: vec![],
            previous: [("moving".to_owned(), at_us)].into(),
            seen_at: tokio::time::Instant::now(),
        }));
        let held = &state.moved.by_id["moving"].regions;
        assert_eq!(held, &["us".to_owned(), "eu".to_owned()]);
        assert_eq!(state.moved.order.len(), 1);
    }

    #[test]
    fn a_relisting_yields_only_what_changed() {
        let old = subs(&[("kept", 1), ("changed", 2), ("gone", 3)]);
        let new = subs(&[("kept", 1), ("changed", 9), ("added", 10)]);
        let change = difference(&old, &new, 10);
        let upserts: Vec<&str> = change.upserts.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(upserts, ["added", "changed"]);
        assert_eq!(change.removals, ["gone"]);
        assert_eq!(change.revision, 10);
        let previous: Vec<&str> = change.previous.keys().map(String::as_str).collect();
        assert_eq!(previous, ["changed", "gone"]);

        let same = difference(&new, &new, 11);
        assert!(same.upserts.is_empty() && same.removals.is_empty());
    }
}
