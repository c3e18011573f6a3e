//! `herald.v1.Events`: where applications hand events to Herald. An event is validated (bad
//! input answers `INVALID_ARGUMENT` naming the field, and nothing is kept), given an id when it
//! has none, matched to subscriptions by tenant and type, and handed to the dispatcher; the
//! answer says how many subscriptions matched and whether the id was seen before.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_core::ids::new_event_id;
use herald_proto::convert::{invalid_argument, validate_event};
use herald_proto::v1 as pb;
use herald_proto::v1::events_server::Events;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use crate::delivery::{Dispatcher, QueuedEvent};
use crate::routes::Routes;

/// The most events one `EmitBatch` may carry.
pub const MAX_BATCH: usize = 1000;
/// Event ids remembered for duplicate detection, at most.
const MAX_REMEMBERED: usize = 1_000_000;

/// `herald.v1.Events`.
pub struct EmitService {
    routes: watch::Receiver<Arc<Routes>>,
    dispatcher: Dispatcher,
    max_payload_bytes: usize,
    seen: Mutex<SeenIds>,
}

impl EmitService {
    /// The service; ids are remembered for `dedup_window`.
    pub fn new(
        routes: watch::Receiver<Arc<Routes>>,
        dispatcher: Dispatcher,
        max_payload_bytes: usize,
        dedup_window: Duration,
    ) -> Self {
        EmitService {
            routes,
            dispatcher,
            max_payload_bytes,
            seen: Mutex::new(SeenIds::new(dedup_window)),
        }
    }

    fn check(&self, event: &pb::Event) -> Result<(), Status> {
        validate_event(event, self.max_payload_bytes).map_err(invalid_argument)
    }

    /// Accepts one validated event.
    fn accept(&self, event: pb::Event, routes: &Routes) -> pb::EmitResponse {
        let id = if event.id.is_empty() {
            new_event_id()
        } else {
            event.id
        };
        let matches = routes.matching(&event.tenant, &event.r#type);
        let matched = u32::try_from(matches.len()).unwrap_or(u32::MAX);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(first) = seen.get(&id) {
            return pb::EmitResponse {
                event_id: id,
                matched: first,
                duplicate: true,
            };
        }
        seen.insert(id.clone(), matched);
        drop(seen);
        let queued = Arc::new(QueuedEvent {
            id: id.clone(),
            tenant: event.tenant,
            event_type: event.r#type,
            payload: event.payload,
        });
        for sub in matches {
            self.dispatcher.dispatch(queued.clone(), sub.id.clone());
        }
        tracing::debug!(event = %id, matched, "event accepted");
        pb::EmitResponse {
            event_id: id,
            matched,
            duplicate: false,
        }
    }

    fn loaded_routes(&self) -> Result<Arc<Routes>, Status> {
        let routes = self.routes.borrow().clone();
        if !routes.loaded {
            return Err(Status::unavailable(
                "the agent has no configuration yet: it has not reached the control plane",
            ));
        }
        Ok(routes)
    }
}

#[tonic::async_trait]
impl Events for EmitService {
    async fn emit(
        &self,
        request: Request<pb::EmitRequest>,
    ) -> Result<Response<pb::EmitResponse>, Status> {
        let event = request
            .into_inner()
            .event
            .ok_or_else(|| Status::invalid_argument("event: is required"))?;
        self.check(&event)?;
        let routes = self.loaded_routes()?;
        Ok(Response::new(self.accept(event, &routes)))
    }

    async fn emit_batch(
        &self,
        request: Request<pb::EmitBatchRequest>,
    ) -> Result<Response<pb::EmitBatchResponse>, Status> {
        let events = request.into_inner().events;
        if events.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!(
                "events: at most {MAX_BATCH} events per batch, got {}",
                events.len()
            )));
        }
        for (index, event) in events.iter().enumerate() {
            self.check(event).map_err(|s| {
                Status::invalid_argument(format!("events[{index}].{}", s.message()))
            })?;
        }
        let routes = self.loaded_routes()?;
        let results = events
            .into_iter()
            .map(|e| self.accept(e, &routes))
            .collect();
        Ok(Response::new(pb::EmitBatchResponse { results }))
    }
}

/// Event ids accepted within the dedup window, with their match counts.
struct SeenIds {
    window: Duration,
    ids: HashMap<String, u32>,
    order: VecDeque<(Instant, String)>,
}

impl SeenIds {
    fn new(window: Duration) -> Self {
        SeenIds {
            window,
            ids: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn get(&mut self, id: &str) -> Option<u32> {
        self.expire();
        self.ids.get(id).copied()
    }

    fn insert(&mut self, id: String, matched: u32) {
        if self.order.len() >= MAX_REMEMBERED
            && let Some((_, oldest)) = self.order.pop_front()
        {
            self.ids.remove(&oldest);
        }
        self.order.push_back((Instant::now(), id.clone()));
        self.ids.insert(id, matched);
    }

    fn expire(&mut self) {
        let now = Instant::now();
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) < self.window {
                break;
            }
            if let Some((_, id)) = self.order.pop_front() {
                self.ids.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ids_are_remembered_for_the_window() {
        let mut seen = SeenIds::new(Duration::from_secs(60));
        seen.insert("evt_1".into(), 2);
        assert_eq!(seen.get("evt_1"), Some(2));
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(seen.get("evt_1"), Some(2));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(seen.get("evt_1"), None);
    }
}
