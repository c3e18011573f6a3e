//! `herald.v1.Portal`: links into a tenant's portal.

use std::sync::Arc;
use std::time::SystemTime;

use herald_proto::convert::{timestamp, valid_duration};
use herald_proto::v1 as pb;
use herald_proto::v1::portal_server::Portal;
use tonic::{Request, Response, Status};

use crate::access::caller;
use crate::audit::{Action, Change, Recorder};
use crate::portal_links::{PortalLinks, PortalLinksError};
use crate::sealed_token::TokenError;
use crate::sealing::Keyring;
use crate::web::portal_link::{self, DEFAULT_TTL, Grant, Link, MAX_TTL, MIN_TTL};

/// `herald.v1.Portal`.
pub struct PortalService {
    keyring: Arc<Keyring>,
    /// Where the web pages are reached; `None` when the control plane serves none.
    public_url: Option<String>,
    /// The tenants' expiries of links.
    expiries: PortalLinks,
    audit: Recorder,
}

/// Why a portal link does not open.
#[derive(Debug, thiserror::Error)]
pub enum LinkRefusal {
    /// Not a link, or no longer good: its token says so.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// Its tenant's links were expired after it was made.
    #[error("the tenant's links made until this one were expired")]
    Ended,
    /// Whether it was ended cannot be told now.
    #[error(transparent)]
    Unchecked(#[from] PortalLinksError),
}

impl PortalService {
    /// Links under `public_url` (none: no web pages are served), sealed with `keyring`,
    /// ended by the `expiries` in the config store, each minted or ended recorded in `audit`.
    pub fn new(
        keyring: Arc<Keyring>,
        public_url: Option<String>,
        expiries: PortalLinks,
        audit: Recorder,
    ) -> Self {
        PortalService {
            keyring,
            public_url,
            expiries,
            audit,
        }
    }

    /// The link of a portal token, if it is one that still opens: not forged, not past
    /// its time, and not ended by an expiry of its tenant's links.
    pub async fn open_link(&self, token: &str) -> Result<Link, LinkRefusal> {
        let link = portal_link::open(&self.keyring, token, SystemTime::now())?;
        if self.expiries.ended(&link).await? {
            return Err(LinkRefusal::Ended);
        }
        Ok(link)
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

    async fn expire_portal_links(
        &self,
        request: Request<pb::ExpirePortalLinksRequest>,
    ) -> Result<Response<pb::PortalLinksExpired>, Status> {
        let who = caller(&request);
        let request = request.into_inner();
        herald_core::validate::tenant(&request.tenant)
            .map_err(herald_proto::convert::invalid_argument)?;
        who.may_act_for(&request.tenant)?;
        let before = self
            .expiries
            .expire(&request.tenant, SystemTime::now())
            .await
            .map_err(|err| err.status())?;
        let change = Change {
            action: Action::PortalLinksExpire,
            tenant: &request.tenant,
            object: &request.tenant,
            revision: 0,
            detail: format!(
                "links made until {}",
                humantime::format_rfc3339_millis(before)
            ),
        };
        self.audit.record(&who, change).await;
        Ok(Response::new(pb::PortalLinksExpired {
            tenant: request.tenant,
            before: Some(timestamp(before)),
        }))
    }
}
