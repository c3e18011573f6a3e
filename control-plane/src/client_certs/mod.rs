//! Subscriptions' client certificates (mutual TLS to receivers): checked when written (the
//! chain parses, the key parses and matches the leaf, the leaf's expiry is read), and watched:
//! operators get `herald.subscription.certificate_expiring` [`WARN_BEFORE`] before a leaf
//! expires, once per certificate (a marker in the config store makes one replica raise it).
//! The check made when a subscription is written is [`pem`].

use std::time::{Duration, SystemTime};

use herald_proto::convert::system_time;
use herald_proto::v1 as pb;
use tokio_util::sync::CancellationToken;

use crate::keys;
use crate::operator_events::OperatorEvents;
use crate::store::{Compare, Op, Store, Txn, TxnOutcome};
use crate::subscriptions::Subscriptions;

pub mod pem;

/// How long before a client certificate expires operators are told.
pub const WARN_BEFORE: Duration = Duration::from_secs(14 * 24 * 60 * 60);
/// How often the watch looks at every subscription's certificate.
const WATCH_EVERY: Duration = Duration::from_secs(60 * 60);

/// Raises `herald.subscription.certificate_expiring` for every subscription whose client
/// certificate expires within [`WARN_BEFORE`], once per certificate, every [`WATCH_EVERY`]
/// until `shutdown`.
pub async fn watch(
    subscriptions: Subscriptions,
    store: Store,
    events: OperatorEvents,
    shutdown: CancellationToken,
) {
    loop {
        if let Err(err) = warn_expiring(&subscriptions, &store, &events, SystemTime::now()).await {
            tracing::warn!(error = %err, "checking client certificates' expiry");
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(WATCH_EVERY) => {}
        }
    }
}

/// Why a look at the certificates stopped.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The subscriptions could not be listed.
    #[error(transparent)]
    Subscriptions(#[from] crate::subscriptions::SubscriptionError),
    /// The marker could not be written.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The event could not be raised.
    #[error(transparent)]
    Raise(#[from] crate::attempts::LogError),
}

/// One look at every subscription's certificate at `now`; how many warnings were raised.
pub async fn warn_expiring(
    subscriptions: &Subscriptions,
    store: &Store,
    events: &OperatorEvents,
    now: SystemTime,
) -> Result<usize, WatchError> {
    let mut raised = 0;
    let mut page_token = String::new();
    loop {
        let page = subscriptions.list("", 1000, &page_token).await?;
        for sub in &page.subscriptions {
            if warn_if_expiring(store, events, sub, now).await? {
                raised += 1;
            }
        }
        if page.next_page_token.is_empty() {
            return Ok(raised);
        }
        page_token = page.next_page_token;
    }
}

/// Raises the warning for `sub` now if its client certificate expires within
/// [`WARN_BEFORE`] (a certificate near its end was just installed); whether it was raised.
pub async fn warn_if_expiring(
    store: &Store,
    events: &OperatorEvents,
    sub: &pb::Subscription,
    now: SystemTime,
) -> Result<bool, WatchError> {
    match expiring(sub, now) {
        Some(expires_at) if claim(store, sub, expires_at).await? => {
            events.certificate_expiring(sub, expires_at).await?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// When `sub`'s client certificate expires, if that is within [`WARN_BEFORE`] of `now`.
fn expiring(sub: &pb::Subscription, now: SystemTime) -> Option<SystemTime> {
    if sub.client_cert.is_empty() {
        return None;
    }
    let expires_at = system_time(sub.client_cert_expires_at.as_ref()?);
    (expires_at <= now + WARN_BEFORE).then_some(expires_at)
}

/// Writes the marker that this certificate's warning is raised; whether this call wrote it
/// (another replica, or an earlier look, may have).
async fn claim(
    store: &Store,
    sub: &pb::Subscription,
    expires_at: SystemTime,
) -> Result<bool, crate::store::StoreError> {
    let key = keys::certificate_warning(&sub.id);
    let value = herald_proto::convert::timestamp(expires_at)
        .seconds
        .to_string()
        .into_bytes();
    let compare = match store.get(&key).await? {
        // Raised already for this certificate.
        Some(kv) if kv.value == value => return Ok(false),
        Some(kv) => Compare::ModRevision(key.clone(), kv.mod_revision),
        None => Compare::Absent(key.clone()),
    };
    let txn = Txn::default().when(compare).then(Op::Put(key, value));
    Ok(matches!(
        store.txn(txn).await?,
        TxnOutcome::Committed { .. }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_certificates_expiring_within_two_weeks_are_warned_of() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        let sub = |expires_in: Duration| pb::Subscription {
            client_cert: "-----BEGIN CERTIFICATE-----".into(),
            client_cert_expires_at: Some(herald_proto::convert::timestamp(now + expires_in)),
            ..Default::default()
        };
        let day = Duration::from_secs(86_400);
        assert!(expiring(&sub(13 * day), now).is_some());
        assert!(expiring(&sub(15 * day), now).is_none());
        assert!(expiring(&pb::Subscription::default(), now).is_none());
    }
}
