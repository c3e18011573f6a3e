//! `herald.v1.EventTypes`: the event-type registry.

use herald_proto::v1 as pb;
use herald_proto::v1::event_types_server::EventTypes as EventTypesApi;
use tonic::{Request, Response, Status};

use crate::access::Identity;
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

    /// The whole catalogue, every page of it, for the web pages that show or offer all of it
    /// (reading the catalogue asks no permission of an authenticated caller).
    pub async fn catalogue(&self) -> Result<Vec<pb::EventType>, Status> {
        Ok(self.registry.list().await?)
    }

    /// Records a catalogue change by `who`.
    async fn audited(&self, who: &Identity, action: Action, name: &str, detail: String) {
        let change = Change {
            action,
            tenant: "",
            object: name,
            revision: 0,
            detail,
        };
        self.audit.record(who, change).await;
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
            .ok_or_else(|| herald_proto::convert::invalid_field("event_type", "is required"))?;
        let created = self.registry.create(event_type).await?;
        tracing::info!(name = %created.name, "event type registered");
        self.audited(
            &who,
            Action::EventTypeCreate,
            &created.name,
            created.description.clone(),
        )
        .await;
        Ok(Response::new(created))
    }

    async fn update_event_type(
        &self,
        request: Request<pb::UpdateEventTypeRequest>,
    ) -> Result<Response<pb::EventType>, Status> {
        let who = crate::access::caller(&request);
        who.may_reach_shared("change the event-type catalogue")?;
        let event_type = request
            .into_inner()
            .event_type
            .ok_or_else(|| herald_proto::convert::invalid_field("event_type", "is required"))?;
        let updated = self.registry.update(event_type).await?;
        tracing::info!(name = %updated.name, "event type updated");
        let detail = format!(
            "schema {}",
            if updated.schema.is_empty() {
                "none"
            } else {
                "set"
            }
        );
        self.audited(&who, Action::EventTypeUpdate, &updated.name, detail)
            .await;
        Ok(Response::new(updated))
    }

    async fn deprecate_event_type(
        &self,
        request: Request<pb::DeprecateEventTypeRequest>,
    ) -> Result<Response<pb::EventType>, Status> {
        let who = crate::access::caller(&request);
        who.may_reach_shared("change the event-type catalogue")?;
        let request = request.into_inner();
        let changed = self
            .registry
            .deprecate(&request.name, request.deprecated)
            .await?;
        tracing::info!(name = %changed.name, deprecated = changed.deprecated, "event type deprecation changed");
        let detail = if changed.deprecated {
            "deprecated"
        } else {
            "in use again"
        };
        self.audited(
            &who,
            Action::EventTypeDeprecate,
            &changed.name,
            detail.into(),
        )
        .await;
        Ok(Response::new(changed))
    }

    async fn delete_event_type(
        &self,
        request: Request<pb::DeleteEventTypeRequest>,
    ) -> Result<Response<pb::DeleteEventTypeResponse>, Status> {
        let who = crate::access::caller(&request);
        who.may_reach_shared("change the event-type catalogue")?;
        let name = request.into_inner().name;
        self.registry.delete(&name).await?;
        tracing::info!(name = %name, "event type deleted");
        self.audited(&who, Action::EventTypeDelete, &name, String::new())
            .await;
        Ok(Response::new(pb::DeleteEventTypeResponse {}))
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
        request: Request<pb::ListEventTypesRequest>,
    ) -> Result<Response<pb::ListEventTypesResponse>, Status> {
        let request = request.into_inner();
        let page = self
            .registry
            .list_page(request.page_size, &request.page_token)
            .await?;
        Ok(Response::new(pb::ListEventTypesResponse {
            event_types: page.event_types,
            next_page_token: page.next_page_token,
        }))
    }
}
