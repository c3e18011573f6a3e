//! `herald.v1.Portal`: links into a tenant's portal.

use std::sync::Arc;
use std::time::SystemTime;

use herald_proto::convert::{timestamp, valid_duration};
use herald_proto::v1 as pb;
use herald_proto::v1::portal_server::Portal;
use tonic::{Request, Response, Status};

use crate::access::caller;
use crate::audit::{Action, Change, Recorder};
use crate::sealing::Keyring;
use crate::web::portal_link::{self, DEFAULT_TTL, Grant, MAX_TTL, MIN_TTL};

/// `herald.v1.Portal`.
pub struct PortalService {
    keyring: Arc<Keyring>,
    /// Where the web pages are reached; `None` when the control plane serves none.
    public_url: Option<String>,
    audit: Recorder,
}

impl PortalService {
    /// Links under `public_url` (none: no web pages are served), sealed with `keyring`,
    /// each recorded in `audit`.
    pub fn new(keyring: Arc<Keyring>, public_url: Option<String>, audit: Recorder) -> Self {
        PortalService {
            keyring,
            public_url,
            audit,
        }
    }
}

#[tonic::async_trait]
impl Portal for PortalService {
    async fn create_portal_link(
        &self,
        request: Request<pb::CreatePortalLinkRequest>,
    ) -> Result<Response<pb::PortalLink>, Status> {
        let who = caller(&request);
        let request = request.into_inner();
        herald_core::validate::tenant(&request.tenant)
            .map_err(herald_proto::convert::invalid_argument)?;
        who.may_act_for(&request.tenant)?;
        let ttl = match &request.ttl {
            None => DEFAULT_TTL,
            Some(ttl) => valid_duration(ttl)
                .filter(|ttl| (MIN_TTL..=MAX_TTL).contains(ttl))
                .ok_or_else(|| {
                    herald_proto::convert::invalid_field("ttl", "must be 1 minute to 7 days")
                })?,
        };
        let Some(public_url) = &self.public_url else {
            return Err(Status::failed_precondition(
                "this control plane serves no web pages: start it with --http-listen",
            ));
        };
        let grant = Grant {
            tenant: request.tenant.clone(),
            read_only: request.read_only,
        };
        let now = SystemTime::now();
        let path = portal_link::mint(&self.keyring, &grant, now, ttl)
            .map_err(|e| Status::internal(e.to_string()))?;
        let change = Change {
            action: Action::PortalLink,
            tenant: &request.tenant,
            object: &request.tenant,
            revision: 0,
            detail: format!(
                "{} for {}",
                if request.read_only {
                    "read-only"
                } else {
                    "full"
                },
                humantime::format_duration(ttl)
            ),
        };
        self.audit.record(&who, change).await;
        Ok(Response::new(pb::PortalLink {
            url: format!("{public_url}{path}"),
            expires_at: Some(timestamp(now + ttl)),
            tenant: request.tenant,
            read_only: request.read_only,
        }))
    }
}
