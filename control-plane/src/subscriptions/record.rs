//! How a subscription is kept in the config store: a `herald.v1.Subscription` record whose
//! secret values (signing secrets, header values, the OAuth2 client secret, the client key,
//! the proxy URL) are sealed with the keyring, each bound to what it belongs to, so a sealed
//! value copied elsewhere does not open.

use herald_proto::v1 as pb;
use prost::Message;

use super::SubscriptionError;
use crate::sealing::Keyring;
use crate::store::KeyValue;

/// The envelope a record stored before envelopes existed keeps: its receivers got the bare
/// payload, except the system tenant's, whose operator events were already shaped
/// `{"type", "timestamp", "data"}`.
pub(super) fn legacy_envelope(tenant: &str, system_tenant: &str) -> pb::Envelope {
    if tenant == system_tenant {
        pb::Envelope::Standard
    } else {
        pb::Envelope::Raw
    }
}

/// Decodes a stored record, opening its secrets and setting its revision from the store.
pub fn decode(kv: &KeyValue, keyring: &Keyring) -> Result<pb::Subscription, SubscriptionError> {
    Ok(open_record(kv, keyring)?.0)
}

/// Leaves out the secrets whose grace ended by `now`: they sign nothing (agents drop them at
/// their time), so reads do not show them, and the next write of the record does not keep them.
fn drop_expired_secrets(sub: &mut pb::Subscription, now: std::time::SystemTime) {
    sub.secrets.retain(|secret| {
        secret
            .expires_at
            .as_ref()
            .is_none_or(|at| herald_proto::convert::system_time(at) > now)
    });
}

/// Decodes a stored record and says whether it should be resealed: a secret stored in the
/// clear (written before sealing) or sealed with a key that no longer seals.
pub(super) fn open_record(
    kv: &KeyValue,
    keyring: &Keyring,
) -> Result<(pb::Subscription, bool), SubscriptionError> {
    let mut sub =
        pb::Subscription::decode(kv.value.as_slice()).map_err(|e| SubscriptionError::Corrupt {
            key: kv.key.clone(),
            reason: e.to_string(),
        })?;
    // A record under another subscription's key (copied there by hand, or a restore gone
    // wrong) would stand in for that subscription while its own key's deletion removed the
    // other: damaged, as a record that does not decode is.
    if kv.key != crate::keys::subscription(&sub.tenant, &sub.id) {
        return Err(SubscriptionError::Corrupt {
            key: kv.key.clone(),
            reason: format!(
                "it holds subscription {:?} of tenant {:?}, which is stored under another key",
                sub.id, sub.tenant
            ),
        });
    }
    sub.revision = kv.mod_revision;
    let mut stale = false;
    let sealing_failed = |id: &str| {
        let id = id.to_owned();
        move |source| SubscriptionError::Sealing { id, source }
    };
    for secret in &mut sub.secrets {
        match secret.sealed.take() {
            Some(sealed) => {
                stale |= sealed.key_id != keyring.sealing_key_id();
                secret.secret = keyring
                    .open(&sub.id, &sealed)
                    .map_err(sealing_failed(&sub.id))?;
            }
            None => stale |= !secret.secret.is_empty(),
        }
    }
    drop_expired_secrets(&mut sub, std::time::SystemTime::now());
    // Header values in the clear were written before they were sealed.
    stale |= !sub.headers.is_empty();
    for (name, sealed) in std::mem::take(&mut sub.sealed_headers) {
        stale |= sealed.key_id != keyring.sealing_key_id();
        let value = keyring
            .open(&header_record(&sub.id, &name), &sealed)
            .map_err(sealing_failed(&sub.id))?;
        sub.headers.insert(name, value);
    }
    // A proxy URL or client key in the clear was written before they were sealed.
    stale |= !sub.egress_proxy.is_empty() || !sub.client_key.is_empty();
    if let Some(oauth2) = &sub.oauth2 {
        stale |= !oauth2.client_secret.is_empty();
    }
    if let Some(sealed) = sub.sealed_oauth2_client_secret.take() {
        stale |= sealed.key_id != keyring.sealing_key_id();
        let secret = keyring
            .open(&oauth2_secret_record(&sub.id), &sealed)
            .map_err(sealing_failed(&sub.id))?;
        if let Some(oauth2) = &mut sub.oauth2 {
            oauth2.client_secret = secret;
        }
    }
    if let Some(sealed) = sub.sealed_client_key.take() {
        stale |= sealed.key_id != keyring.sealing_key_id();
        sub.client_key = keyring
            .open(&client_key_record(&sub.id), &sealed)
            .map_err(sealing_failed(&sub.id))?;
    }
    if let Some(sealed) = sub.sealed_egress_proxy.take() {
        stale |= sealed.key_id != keyring.sealing_key_id();
        sub.egress_proxy = keyring
            .open(&egress_proxy_record(&sub.id), &sealed)
            .map_err(sealing_failed(&sub.id))?;
    }
    sub.header_values_hidden = false;
    Ok((sub, stale))
}

/// `sub` as a caller may give it: without the fields only the store holds (sealed values),
/// which the API neither takes nor answers with.
pub(super) fn clear_storage_only(sub: &mut pb::Subscription) {
    sub.sealed_headers.clear();
    sub.sealed_egress_proxy = None;
    sub.sealed_client_key = None;
    sub.sealed_oauth2_client_secret = None;
    for secret in &mut sub.secrets {
        secret.sealed = None;
    }
}

/// The stored form of a record: its secrets sealed, never in the clear.
pub(super) fn encode(
    sub: &pb::Subscription,
    keyring: &Keyring,
) -> Result<Vec<u8>, SubscriptionError> {
    let mut stored = sub.clone();
    stored.revision = 0;
    stored.header_values_hidden = false;
    let sealing_failed = |source| SubscriptionError::Sealing {
        id: sub.id.clone(),
        source,
    };
    for secret in &mut stored.secrets {
        if !secret.secret.is_empty() {
            secret.sealed = Some(
                keyring
                    .seal(&sub.id, &secret.secret)
                    .map_err(sealing_failed)?,
            );
            secret.secret.clear();
        }
    }
    stored.sealed_headers = std::mem::take(&mut stored.headers)
        .into_iter()
        .map(|(name, value)| {
            let sealed = keyring
                .seal(&header_record(&sub.id, &name), &value)
                .map_err(sealing_failed)?;
            Ok((name, sealed))
        })
        .collect::<Result<_, SubscriptionError>>()?;
    // The other secret values, each sealed when set.
    let seal = |record: String, value: String| -> Result<_, SubscriptionError> {
        if value.is_empty() {
            return Ok(None);
        }
        Ok(Some(keyring.seal(&record, &value).map_err(sealing_failed)?))
    };
    let oauth2_secret = stored
        .oauth2
        .as_mut()
        .map(|o| std::mem::take(&mut o.client_secret))
        .unwrap_or_default();
    stored.sealed_oauth2_client_secret = seal(oauth2_secret_record(&sub.id), oauth2_secret)?;
    let client_key = std::mem::take(&mut stored.client_key);
    stored.sealed_client_key = seal(client_key_record(&sub.id), client_key)?;
    let proxy = std::mem::take(&mut stored.egress_proxy);
    stored.sealed_egress_proxy = seal(egress_proxy_record(&sub.id), proxy)?;
    Ok(stored.encode_to_vec())
}

/// What a subscription's sealed OAuth2 client secret is bound to.
fn oauth2_secret_record(subscription_id: &str) -> String {
    format!("{subscription_id}\0oauth2_client_secret")
}

/// What a subscription's sealed client key is bound to.
fn client_key_record(subscription_id: &str) -> String {
    format!("{subscription_id}\0client_key")
}

/// What a subscription's sealed proxy URL is bound to.
fn egress_proxy_record(subscription_id: &str) -> String {
    format!("{subscription_id}\0egress_proxy")
}

/// What a header's sealed value is bound to: its subscription and name, so a sealed value
/// copied to another header, subscription or secret does not open.
fn header_record(subscription_id: &str, name: &str) -> String {
    format!("{subscription_id}\0header\0{name}")
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use herald_proto::convert::timestamp;

    use super::*;

    #[test]
    fn a_secret_is_read_until_its_grace_ends_and_not_after() {
        let rotated = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let secret = |name: &str, expires: Option<SystemTime>| pb::SigningSecret {
            secret: name.into(),
            expires_at: expires.map(timestamp),
            ..Default::default()
        };
        let stored = pb::Subscription {
            secrets: vec![
                secret("new", None),
                secret("old", Some(rotated + Duration::from_secs(5))),
            ],
            ..Default::default()
        };
        let names = |at: SystemTime| {
            let mut sub = stored.clone();
            drop_expired_secrets(&mut sub, at);
            sub.secrets
                .into_iter()
                .map(|s| s.secret)
                .collect::<Vec<_>>()
        };
        assert_eq!(names(rotated), ["new", "old"], "within the grace");
        assert_eq!(
            names(rotated + Duration::from_secs(5)),
            ["new"],
            "at its end"
        );
        assert_eq!(names(rotated + Duration::from_secs(540)), ["new"]);
    }
}
