//! `herald.v1.Audit`: the changes made through the operator API, as the caller may see them.

use herald_proto::v1 as pb;
use herald_proto::v1::audit_server::Audit;
use tonic::{Request, Response, Status};

use crate::access::caller;
use crate::attempts::AttemptLog;
use crate::audit::query::AuditFilter;
use crate::page_tokens::{Asked, Listing, PageTokens};

/// `herald.v1.Audit`.
pub struct AuditService {
    log: AttemptLog,
    /// Seals the log's positions into the page tokens callers see.
    pages: PageTokens,
}

impl AuditService {
    /// The service over the entries in `log`, its page tokens sealed by `pages`.
    pub fn new(log: AttemptLog, pages: PageTokens) -> Self {
        AuditService { log, pages }
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
        let wire = request.filter.unwrap_or_default();
        // Its times left out: a relative `--since 1h` is another time on the next page.
        let asked = Asked::new(
            &who.tenants,
            &pb::AuditFilter {
                since: None,
                until: None,
                ..wire.clone()
            },
        );
        let filter = AuditFilter::within(wire, &who.tenants)?;
        let after = self
            .pages
            .open(Listing::AuditEntries, &asked, &request.page_token)
            .map_err(herald_proto::convert::invalid_argument)?;
        let page = self.log.changes(filter, request.page_size, &after).await?;
        Ok(Response::new(pb::ListAuditEntriesResponse {
            entries: page.entries,
            next_page_token: self.pages.seal(
                Listing::AuditEntries,
                &asked,
                &page.next_page_token,
            )?,
        }))
    }
}
