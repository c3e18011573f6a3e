//! Subscriptions' client certificates (mutual TLS to receivers): checked when written (the
//! chain parses, the key parses and matches the leaf, the leaf's expiry is read), and watched:
//! operators get `herald.subscription.certificate_expiring` [`WARN_BEFORE`] before a leaf
//! expires, once per certificate (a marker in the config store makes one replica raise it).

use std::time::{Duration, SystemTime};

use herald_core::ValidationError;
use herald_proto::convert::system_time;
use herald_proto::v1 as pb;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;
use x509_cert::der::Decode as _;

use crate::keys;
use crate::operator_events::OperatorEvents;
use crate::store::{Compare, Op, Store, Txn, TxnOutcome};
use crate::subscriptions::Subscriptions;

/// How long before a client certificate expires operators are told.
pub const WARN_BEFORE: Duration = Duration::from_secs(14 * 24 * 60 * 60);
/// How often the watch looks at every subscription's certificate.
const WATCH_EVERY: Duration = Duration::from_secs(60 * 60);

/// Checks a client certificate chain and key (PEM) and returns when the leaf expires.
pub fn check(cert_pem: &str, key_pem: &str) -> Result<SystemTime, ValidationError> {
    let bad_cert = |reason: String| ValidationError::new("client_cert", reason);
    let bad_key = |reason: String| ValidationError::new("client_key", reason);
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| bad_cert(format!("not PEM certificates: {e}")))?;
    let leaf = chain
        .first()
        .ok_or_else(|| bad_cert("holds no certificate".into()))?;
    let parsed = x509_cert::Certificate::from_der(leaf.as_ref())
        .map_err(|e| bad_cert(format!("the first certificate does not parse: {e}")))?;
    let expires_at = parsed.tbs_certificate.validity.not_after.to_system_time();
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .map_err(|e| bad_key(format!("not a PEM private key: {e}")))?
        .ok_or_else(|| bad_key("holds no private key".into()))?;
    let provider = rustls::crypto::ring::default_provider();
    rustls::sign::CertifiedKey::from_der(chain, key, &provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            bad_key("does not belong to the client certificate".into())
        }
        other => bad_key(format!("unusable: {other}")),
    })?;
    Ok(expires_at)
}

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

    fn pair(days: u32) -> (String, String, String) {
        let mut params =
            rcgen::CertificateParams::new(vec!["herald-client".to_owned()]).expect("params");
        params.not_after = rcgen::date_time_ymd(2030, 1, days.max(1) as u8);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        let other = rcgen::KeyPair::generate().expect("key");
        (cert.pem(), key.serialize_pem(), other.serialize_pem())
    }

    #[test]
    fn a_client_certificate_is_checked_and_its_expiry_read() {
        let (cert, key, other_key) = pair(15);
        let expires_at = check(&cert, &key).expect("a good pair");
        let seconds = expires_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs();
        // 2030-01-15: 21,915 days after 1970-01-01 is 2030-01-01.
        assert_eq!(seconds, (21_915 + 14) * 86_400);
        let field = |r: Result<SystemTime, ValidationError>| r.expect_err("refused").field;
        assert_eq!(field(check(&cert, &other_key)), "client_key");
        assert_eq!(field(check("no pem", &key)), "client_cert");
        assert_eq!(field(check(&cert, "no pem")), "client_key");
    }

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
