//! Ending a tenant's portal links before their time. A link is a sealed token that every
//! replica opens by itself, so ending one takes a shared record: `ExpirePortalLinks` writes,
//! per tenant, the time until which its links no longer open, and every portal request reads
//! it. A link that leaked, or one a departed user kept, stops working on every replica at
//! once; links made afterwards work.
//!
//! The record only ever moves forward (a replica whose clock runs behind cannot bring ended
//! links back), and a record that cannot be read ends every link of its tenant until an
//! expiry writes it again.

use std::time::SystemTime;

use herald_proto::convert::{system_time, timestamp};
use herald_proto::v1 as pb;
use prost::Message as _;

use crate::keys;
use crate::store::{Compare, Op, Store, StoreError, Txn, TxnOutcome};
use crate::web::portal_link::Link;

/// How often an expiry that raced another is tried again before it gives up.
const ATTEMPTS: usize = 5;

/// Why an expiry or a link's check could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PortalLinksError {
    /// The config store could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Other expiries of the same tenant's links kept writing first.
    #[error("other expiries of {tenant}'s portal links kept changing it; try again")]
    Contended {
        /// The tenant.
        tenant: String,
    },
}

impl PortalLinksError {
    /// The gRPC status a caller gets.
    pub fn status(&self) -> tonic::Status {
        match self {
            PortalLinksError::Store(err) => err.status(),
            PortalLinksError::Contended { .. } => tonic::Status::aborted(self.to_string()),
        }
    }
}

/// The tenants' records of expired portal links, in the config store.
#[derive(Clone)]
pub struct PortalLinks {
    store: Store,
}

/// A tenant's record as stored: `None` when it cannot be decoded.
fn decode(value: &[u8]) -> Option<SystemTime> {
    let record = pb::PortalLinksExpired::decode(value).ok()?;
    record.before.as_ref().map(system_time)
}

impl PortalLinks {
    /// The records in `store`.
    pub fn new(store: Store) -> Self {
        PortalLinks { store }
    }

    /// Ends every link of `tenant` made until `now` (or until a later time an earlier
    /// expiry already set), and says until when links are ended.
    pub async fn expire(
        &self,
        tenant: &str,
        now: SystemTime,
    ) -> Result<SystemTime, PortalLinksError> {
        let key = keys::portal_links_expired(tenant);
        for _ in 0..ATTEMPTS {
            let stored = self.store.get(&key).await?;
            let (compare, earlier) = match &stored {
                None => (Compare::Absent(key.clone()), None),
                Some(kv) => (
                    Compare::ModRevision(key.clone(), kv.mod_revision),
                    decode(&kv.value),
                ),
            };
            if let Some(earlier) = earlier
                && earlier >= now
            {
                return Ok(earlier);
            }
            let record = pb::PortalLinksExpired {
                tenant: tenant.to_owned(),
                before: Some(timestamp(now)),
            };
            let txn = Txn::default()
                .when(compare)
                .then(Op::Put(key.clone(), record.encode_to_vec()));
            if let TxnOutcome::Committed { .. } = self.store.txn(txn).await? {
                return Ok(now);
            }
        }
        Err(PortalLinksError::Contended {
            tenant: tenant.to_owned(),
        })
    }

    /// Whether `link` was ended by an expiry of its tenant's links.
    pub async fn ended(&self, link: &Link) -> Result<bool, PortalLinksError> {
        let key = keys::portal_links_expired(&link.grant.tenant);
        let Some(kv) = self.store.get(&key).await? else {
            return Ok(false);
        };
        match decode(&kv.value) {
            Some(before) => Ok(link.made <= before),
            None => {
                tracing::error!(
                    key = %key,
                    "the record of a tenant's expired portal links cannot be read: every link \
                     of the tenant is refused until its links are expired again"
                );
                Ok(true)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::web::portal_link::Grant;

    fn link(tenant: &str, made: SystemTime) -> Link {
        Link {
            grant: Grant {
                tenant: tenant.into(),
                read_only: false,
            },
            made,
        }
    }

    async fn links() -> (PortalLinks, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("a temp dir");
        let store = Store::embedded(dir.path()).await.expect("a store");
        (PortalLinks::new(store), dir)
    }

    #[tokio::test]
    async fn an_expiry_ends_the_tenants_links_made_until_then_and_no_others() {
        let (links, _dir) = links().await;
        let t0 = UNIX_EPOCH + Duration::from_secs(1_780_000_000);
        let second = Duration::from_secs(1);
        assert!(!links.ended(&link("shop-a", t0)).await.expect("read"));

        let before = links.expire("shop-a", t0 + second).await.expect("expired");
        assert_eq!(before, t0 + second);
        assert!(links.ended(&link("shop-a", t0)).await.expect("read"));
        assert!(
            links
                .ended(&link("shop-a", t0 + second))
                .await
                .expect("read")
        );
        assert!(
            !links
                .ended(&link("shop-a", t0 + 2 * second))
                .await
                .expect("read")
        );
        assert!(!links.ended(&link("shop-b", t0)).await.expect("read"));
    }

    #[tokio::test]
    async fn an_expiry_never_moves_back() {
        let (links, _dir) = links().await;
        let t0 = UNIX_EPOCH + Duration::from_secs(1_780_000_000);
        let later = t0 + Duration::from_secs(60);
        links.expire("shop-a", later).await.expect("expired");
        // A replica whose clock runs a minute behind.
        assert_eq!(links.expire("shop-a", t0).await.expect("expired"), later);
        assert!(links.ended(&link("shop-a", later)).await.expect("read"));
    }

    #[tokio::test]
    async fn a_record_that_cannot_be_read_ends_every_link_until_written_again() {
        let (links, _dir) = links().await;
        let key = keys::portal_links_expired("shop-a");
        let txn = Txn::default().then(Op::Put(key, b"\xff\xff".to_vec()));
        links.store.txn(txn).await.expect("written");
        let now = SystemTime::now();
        assert!(links.ended(&link("shop-a", now)).await.expect("read"));
        links.expire("shop-a", now).await.expect("expired");
        let later = now + Duration::from_secs(1);
        assert!(!links.ended(&link("shop-a", later)).await.expect("read"));
    }
}
