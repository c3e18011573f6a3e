//! `herald.v1.Audit`: the changes made through the operator API, as the caller may see them.

use herald_proto::v1 as pb;
use herald_proto::v1::audit_server::Audit;
use tonic::{Request, Response, Status};

use crate::access::caller;
use crate::attempts::AttemptLog;
use crate::audit::query::AuditFilter;

/// `herald.v1.Audit`.
pub struct AuditService {
    log: AttemptLog,
}

impl AuditService {
    /// The service over the entries in `log`.
    pub fn new(log: AttemptLog) -> Self {
        AuditService { log }
    }
}

#[tonic::async_trait]
impl Audit for AuditService {
    async fn list_audit_entries(
        &self,
        request: Request<pb::ListAuditEntriesRequest>,
    ) -> Result<Response<pb::ListAuditEntriesResponse>, Status> {
        let who = caller(&request);
        let request = request.into_inner();
        let filter = AuditFilter::within(request.filter.unwrap_or_default(), &who.tenants)?;
        let page = self
            .log
            .changes(filter, request.page_size, &request.page_token)
            .await?;
        Ok(Response::new(pb::ListAuditEntriesResponse {
            entries: page.entries,
            next_page_token: page.next_page_token,
        }))
    }
}
