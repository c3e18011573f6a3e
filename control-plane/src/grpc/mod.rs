//! The gRPC edge of the control plane: each service turns requests into calls on the
//! registry, the hub, the delivery log or the fleet, and their errors into statuses.

mod admin;
mod agent_control;
mod audit;
mod event_types;
mod portal;
mod streams;

pub use admin::{AgentsService, DeliveriesService, SubscriptionsService};
pub use agent_control::{AgentControlService, BATCH_ARRIVAL, BUDGETED_ROUTES, ConfigFeeds};
pub use audit::AuditService;
pub use event_types::EventTypesService;
pub use portal::{LinkRefusal, PortalService};
pub use streams::Streams;
