//! `herald.v1.Events`: where applications hand events to Herald. An event is validated (bad
//! input answers `INVALID_ARGUMENT` naming the field, and nothing is kept; a payload that does
//! not satisfy its type's schema names where it fails), given an id when it has none, matched
//! to subscriptions by tenant, type and payload filter, and written with one delivery task per
//! match to the durable queue; only then does the call answer. An event of a tenant the caller's
//! Emit token does not cover is refused with `PERMISSION_DENIED`. A full queue answers
//! `RESOURCE_EXHAUSTED`; nothing is dropped silently. The call's W3C `traceparent` metadata is
//! kept with events that do not carry their own.

use std::sync::Arc;
use std::time::SystemTime;

use herald_core::event_type::{HERALDS_OWN_PREFIX, is_heralds_own};
use herald_core::ids::new_event_id;
use herald_core::interest::Interest;
use herald_core::trace::{self, TraceParent};
use herald_proto::convert::{invalid_argument, timestamp, validate_event};
use herald_proto::v1 as pb;
use herald_proto::v1::events_server::Events;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use tracing::Instrument as _;

use crate::emit_access::EmitGrant;
use crate::metrics::Metrics;
use crate::queue::{NewEvent, Queue};
use crate::routes::Routes;

/// The most events one `EmitBatch` may carry.
pub const MAX_BATCH: usize = 1000;

/// `herald.v1.Events`.
pub struct EmitService {
    routes: watch::Receiver<Arc<Routes>>,
    queue: Queue,
    max_payload_bytes: usize,
    /// The tenants and event types this agent emits for; others are refused.
    interest: Interest,
    /// The tenant of Herald's operator events, which applications may not emit into.
    system_tenant: String,
    metrics: Metrics,
    /// Cancelled when the agent starts shutting down: events are refused from then on, while
    /// attempts in flight finish and health says `NOT_SERVING`.
    draining: CancellationToken,
}

impl EmitService {
    /// The service.
    pub fn new(
        routes: watch::Receiver<Arc<Routes>>,
        queue: Queue,
        max_payload_bytes: usize,
        interest: Interest,
        system_tenant: String,
        metrics: Metrics,
        draining: CancellationToken,
    ) -> Self {
        EmitService {
            routes,
            queue,
            max_payload_bytes,
            interest,
            system_tenant,
            metrics,
            draining,
        }
    }

    /// Whether `event` may be emitted by a caller holding `grant` (none: no tokens are set).
    fn check(&self, event: &pb::Event, grant: Option<&EmitGrant>) -> Result<(), Status> {
        validate_event(event, self.max_payload_bytes).map_err(invalid_argument)?;
        if let Some(why) = grant.and_then(|g| g.refusal(&event.tenant)) {
            return Err(Status::permission_denied(why));
        }
        if event.tenant == self.system_tenant {
            // Only the control plane raises operator events (through its emit orders).
            return Err(Status::permission_denied(format!(
                "tenant {:?} is reserved for Herald's operator events",
                event.tenant
            )));
        }
        if is_heralds_own(&event.r#type) {
            // Nor may an application pass its events off as Herald's to its own receivers.
            return Err(Status::permission_denied(format!(
                "type {:?}: {HERALDS_OWN_PREFIX}* types are Herald's operator events, which \
                 only the control plane raises: name your events otherwise",
                event.r#type
            )));
        }
        match self.interest.refusal(&event.tenant, &event.r#type) {
            Some(why) => Err(Status::failed_precondition(why)),
            None => Ok(()),
        }
    }

    /// Whether the event may be emitted with the agent's config: the control plane admitted
    /// the agent for its tenant, and its payload satisfies its type's schema, if it has one.
    fn check_with(event: &pb::Event, routes: &Routes) -> Result<(), Status> {
        if let Some(why) = routes.emit_refusal(&event.tenant) {
            return Err(Status::failed_precondition(why));
        }
        routes
            .schemas()
            .check(&event.r#type, &event.payload)
            .map_err(invalid_argument)
    }

    /// The event with its id, time and trace context filled in, and the subscriptions it goes
    /// to. `trace` is the call's `traceparent`, if it carried a valid one.
    pub(crate) fn prepare(
        mut event: pb::Event,
        routes: &Routes,
        trace: Option<&TraceParent>,
    ) -> NewEvent {
        if event.id.is_empty() {
            event.id = new_event_id();
        }
        if event.traceparent.is_empty()
            && let Some(trace) = trace
        {
            event.traceparent = trace.to_string();
        }
        if event.occurred_at.is_none() {
            event.occurred_at = Some(timestamp(SystemTime::now()));
        }
        let mut matching = routes.matching(&event.tenant, &event.r#type);
        if matching.iter().any(|s| s.payload_filter.is_some()) {
            // Parsed once for every filter; the payload was checked to be JSON already.
            let payload: serde_json::Value =
                serde_json::from_slice(&event.payload).unwrap_or(serde_json::Value::Null);
            matching.retain(|s| {
                s.payload_filter
                    .as_ref()
                    .is_none_or(|f| f.matches(&payload, &event.attributes))
            });
        }
        let subscriptions = matching.iter().map(|s| s.id.clone()).collect();
        let parked = matching
            .iter()
            .filter(|s| !s.enabled)
            .map(|s| s.id.clone())
            .collect();
        NewEvent {
            event,
            subscriptions,
            parked,
        }
    }

    /// Stores the events and answers for each.
    async fn store(
        &self,
        routes: &Routes,
        events: Vec<pb::Event>,
        trace: Option<TraceParent>,
    ) -> Result<Vec<pb::EmitResponse>, Status> {
        let responses = accept(&self.queue, routes, events, trace.as_ref()).await?;
        let duplicates = responses.iter().filter(|r| r.duplicate).count() as u64;
        self.metrics
            .emitted(responses.len() as u64 - duplicates, duplicates);
        Ok(responses)
    }

    /// The routes events are matched with, once the agent has a config and while it is not
    /// shutting down.
    fn loaded_routes(&self) -> Result<Arc<Routes>, Status> {
        if self.draining.is_cancelled() {
            return Err(Status::unavailable(
                "the agent is shutting down: emit to another agent, or again once it is back",
            ));
        }
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
        let trace = call_trace(&request);
        let span = emit_span(1, trace.as_ref());
        let grant = request.extensions().get::<Arc<EmitGrant>>().cloned();
        let event = request
            .into_inner()
            .event
            .ok_or_else(|| herald_proto::convert::invalid_field("event", "is required"))?;
        self.check(&event, grant.as_deref())?;
        let routes = self.loaded_routes()?;
        Self::check_with(&event, &routes)?;
        let mut results = self
            .store(&routes, vec![event], trace)
            .instrument(span)
            .await?;
        let result = results
            .pop()
            .ok_or_else(|| Status::internal("the queue answered nothing"))?;
        Ok(Response::new(result))
    }

    async fn emit_batch(
        &self,
        request: Request<pb::EmitBatchRequest>,
    ) -> Result<Response<pb::EmitBatchResponse>, Status> {
        let trace = call_trace(&request);
        let grant = request.extensions().get::<Arc<EmitGrant>>().cloned();
        let events = request.into_inner().events;
        if events.len() > MAX_BATCH {
            return Err(herald_proto::convert::invalid_field(
                "events",
                format!("at most {MAX_BATCH} events per batch, got {}", events.len()),
            ));
        }
        for (index, event) in events.iter().enumerate() {
            self.check(event, grant.as_deref())
                .map_err(|s| of_event(index, s))?;
        }
        let routes = self.loaded_routes()?;
        for (index, event) in events.iter().enumerate() {
            Self::check_with(event, &routes).map_err(|s| of_event(index, s))?;
        }
        let span = emit_span(events.len(), trace.as_ref());
        let results = self.store(&routes, events, trace).instrument(span).await?;
        Ok(Response::new(pb::EmitBatchResponse { results }))
    }
}

/// Stores `events` (ids, times and trace context filled in, routed by `routes`) in one commit
/// and answers for each: what Emit does, and what an emit order from the control plane does.
pub(crate) async fn accept(
    queue: &Queue,
    routes: &Routes,
    events: Vec<pb::Event>,
    trace: Option<&TraceParent>,
) -> Result<Vec<pb::EmitResponse>, crate::queue::QueueError> {
    let prepared: Vec<NewEvent> = events
        .into_iter()
        .map(|e| EmitService::prepare(e, routes, trace))
        .collect();
    let ids: Vec<String> = prepared.iter().map(|e| e.event.id.clone()).collect();
    let accepted = queue.accept(prepared).await?;
    Ok(ids
        .into_iter()
        .zip(accepted)
        .map(|(event_id, a)| pb::EmitResponse {
            event_id,
            matched: a.matched,
            duplicate: a.duplicate,
        })
        .collect())
}

/// A refusal of the batch's event at `index`, saying which.
fn of_event(index: usize, status: Status) -> Status {
    // A field named in the details gets the event's place too: events[3].type.
    if let Some(invalid) = herald_proto::convert::refused_field(&status) {
        return herald_proto::convert::invalid_argument(herald_core::ValidationError::new(
            format!("events[{index}].{}", invalid.field),
            invalid.reason,
        ));
    }
    match status.code() {
        // Validation errors start with the field: events[3].type: …
        tonic::Code::InvalidArgument => {
            Status::invalid_argument(format!("events[{index}].{}", status.message()))
        }
        code => Status::new(code, format!("events[{index}]: {}", status.message())),
    }
}

/// The server span of an Emit call of `events` events, in the caller's trace when it sent one.
fn emit_span(events: usize, trace: Option<&TraceParent>) -> tracing::Span {
    let span = tracing::debug_span!("emit", otel.kind = "server", events);
    if let Some(trace) = trace {
        herald_core::telemetry::continue_trace(&span, trace);
    }
    span
}

/// The call's `traceparent` metadata, when present and valid (an invalid one is ignored, as
/// W3C Trace Context asks).
fn call_trace<T>(request: &Request<T>) -> Option<TraceParent> {
    let value = request.metadata().get(trace::HEADER)?.to_str().ok()?;
    TraceParent::parse(value).ok()
}
