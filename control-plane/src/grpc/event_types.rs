//! `herald.v1.EventTypes`: the event-type registry.

use herald_proto::v1 as pb;
use herald_proto::v1::event_types_server::EventTypes as EventTypesApi;
use tonic::{Request, Response, Status};

use crate::audit::{Action, Change, Recorder};
use crate::event_types::EventTypes;

/// `herald.v1.EventTypes`.
pub struct EventTypesService {
    registry: EventTypes,
    /// Where changes are recorded.
    audit: Recorder,
}

impl EventTypesService {
    /// The service over the registry, recording changes in `audit`.
    pub fn new(registry: EventTypes, audit: Recorder) -> Self {
        EventTypesService { registry, audit }
    }
}

#[tonic::async_trait]
impl EventTypesApi for EventTypesService {
    async fn create_event_type(
        &self,
        request: Request<pb::CreateEventTypeRequest>,
    ) -> Result<Response<pb::EventType>, Status> {
        // One catalogue serves every tenant.
        let who = crate::access::caller(&request);
        who.may_reach_shared("change the event-type catalogue")?;
        let event_type = request
            .into_inner()
            .event_type
            .ok_or_else(|| Status::invalid_argument("event_type: is required"))?;
        let created = self.registry.create(event_type).await?;
        tracing::info!(name = %created.name, "event type registered");
        let change = Change {
            action: Action::EventTypeCreate,
            tenant: "",
            object: &created.name,
            revision: 0,
            detail: created.description.clone(),
        };
        self.audit.record(&who, change).await;
        Ok(Response::new(created))
    }

    async fn get_event_type(
        &self,
        request: Request<pb::GetEventTypeRequest>,
    ) -> Result<Response<pb::EventType>, Status> {
        Ok(Response::new(
            self.registry.get(&request.into_inner().name).await?,
        ))
    }

    async fn list_event_types(
        &self,
        _request: Request<pb::ListEventTypesRequest>,
    ) -> Result<Response<pb::ListEventTypesResponse>, Status> {
        Ok(Response::new(pb::ListEventTypesResponse {
            event_types: self.registry.list().await?,
        }))
    }
}
