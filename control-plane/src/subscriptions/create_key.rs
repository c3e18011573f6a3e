//! Idempotency keys of creates: a create that names a key and is sent again (after a timeout,
//! a lost answer, an import run twice) makes no second subscription. The first create keeps,
//! in the same transaction as the subscription, which subscription it made and a digest of
//! what it asked for (sealed, as the request holds secrets), kept for [`KEPT_FOR`] (then
//! taken for none, and swept); a create of the same tenant with the same key finds it and
//! answers that subscription, or refuses when it asks for something else. The record is a
//! plain key with its time inside, not one bound to a lease: the embedded store's leases end
//! with its process, and a create sent again after a restart is the case keys are for.

use std::time::{Duration, SystemTime};

use herald_core::ValidationError;
use herald_proto::v1 as pb;
use prost::Message;
use sha2::{Digest, Sha256};

use crate::keys;
use crate::sealing::{Keyring, SealingError};

/// How long a create's key is kept: a create sent again within it makes nothing new.
pub const KEPT_FOR: Duration = Duration::from_secs(24 * 60 * 60);

/// The longest idempotency key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 255;

/// An idempotency key of a create, with the digest of the request it came with.
#[derive(Clone, Debug)]
pub struct CreateKey {
    /// The key as given.
    text: String,
    /// The key's SHA-256 in hex: where its record is kept.
    key_sha256: String,
    /// The request's digest ([`request_digest`]), in hex.
    request_sha256: String,
}

impl CreateKey {
    /// The key `request` names, if any, checked: up to [`MAX_KEY_LEN`] printable ASCII
    /// characters.
    pub fn of(
        request: &pb::CreateSubscriptionRequest,
    ) -> Result<Option<CreateKey>, ValidationError> {
        let key = request.idempotency_key.as_str();
        if key.is_empty() {
            return Ok(None);
        }
        if key.len() > MAX_KEY_LEN {
            return Err(ValidationError::new(
                "idempotency_key",
                format!("is {} bytes, longer than {MAX_KEY_LEN}", key.len()),
            ));
        }
        if !key.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
            return Err(ValidationError::new(
                "idempotency_key",
                "may hold only printable ASCII characters",
            ));
        }
        Ok(Some(CreateKey {
            text: key.to_owned(),
            key_sha256: hex(&Sha256::digest(key.as_bytes())),
            request_sha256: hex(&request_digest(request)),
        }))
    }

    /// The key as given.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Where this key's record is kept for `tenant`.
    pub fn store_key(&self, tenant: &str) -> String {
        keys::create_key(tenant, &self.key_sha256)
    }

    /// The record to keep once the create made `subscription_id` at `now`, its digest sealed
    /// with `keyring`.
    pub fn record(
        &self,
        subscription_id: &str,
        now: SystemTime,
        keyring: &Keyring,
    ) -> Result<Vec<u8>, SealingError> {
        Ok(pb::CreateKeyRecord {
            subscription_id: subscription_id.to_owned(),
            request_sha256: Some(keyring.seal(subscription_id, &self.request_sha256)?),
            kept_until: Some(herald_proto::convert::timestamp(now + KEPT_FOR)),
        }
        .encode_to_vec())
    }

    /// What a kept record says of a create with this key: the subscription to answer with, or
    /// that the key came with another request.
    pub fn judge(
        &self,
        record: &pb::CreateKeyRecord,
        keyring: &Keyring,
    ) -> Result<KeptCreate, SealingError> {
        let sealed = record.request_sha256.clone().unwrap_or_default();
        let kept = keyring.open(&record.subscription_id, &sealed)?;
        Ok(if kept == self.request_sha256 {
            KeptCreate::Same(record.subscription_id.clone())
        } else {
            KeptCreate::OtherRequest
        })
    }
}

/// Whether `record` still answers creates with its key at `now`.
pub fn kept(record: &pb::CreateKeyRecord, now: SystemTime) -> bool {
    record
        .kept_until
        .as_ref()
        .is_some_and(|until| now < herald_proto::convert::system_time(until))
}

/// What an earlier create with the same key says of this one.
#[derive(Debug, PartialEq, Eq)]
pub enum KeptCreate {
    /// The same request: it made this subscription.
    Same(String),
    /// Another request used the key.
    OtherRequest,
}

/// A digest of what a create asks for, the same for the same request however its maps
/// (headers, labels) happen to be ordered on the wire.
fn request_digest(request: &pb::CreateSubscriptionRequest) -> [u8; 32] {
    let mut sub = request.subscription.clone().unwrap_or_default();
    // Read as a create reads them: no scheme is HMAC-SHA256, no envelope the standard one.
    if sub.signature_scheme == pb::SignatureScheme::Unspecified as i32 {
        sub.signature_scheme = pb::SignatureScheme::HmacSha256 as i32;
    }
    if sub.envelope == pb::Envelope::Unspecified as i32 {
        sub.envelope = pb::Envelope::Standard as i32;
    }
    let mut hash = Sha256::new();
    let entry = |hash: &mut Sha256, key: &str, value: &[u8]| {
        for part in [key.as_bytes(), value] {
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part);
        }
    };
    let mut headers: Vec<_> = std::mem::take(&mut sub.headers).into_iter().collect();
    headers.sort();
    let mut labels: Vec<_> = std::mem::take(&mut sub.labels).into_iter().collect();
    labels.sort();
    let mut sealed: Vec<_> = std::mem::take(&mut sub.sealed_headers)
        .into_iter()
        .map(|(name, value)| (name, value.encode_to_vec()))
        .collect();
    sealed.sort();
    entry(&mut hash, "subscription", &sub.encode_to_vec());
    entry(
        &mut hash,
        "allow_unregistered",
        &[u8::from(request.allow_unregistered)],
    );
    for (map, entries) in [("headers", headers), ("labels", labels)] {
        entry(&mut hash, map, &(entries.len() as u64).to_be_bytes());
        for (name, value) in entries {
            entry(&mut hash, &name, value.as_bytes());
        }
    }
    entry(
        &mut hash,
        "sealed_headers",
        &(sealed.len() as u64).to_be_bytes(),
    );
    for (name, value) in sealed {
        entry(&mut hash, &name, &value);
    }
    hash.finalize().into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(key: &str, headers: &[(&str, &str)]) -> pb::CreateSubscriptionRequest {
        pb::CreateSubscriptionRequest {
            subscription: Some(pb::Subscription {
                tenant: "shop-1".into(),
                url: "https://shop.example/hooks".into(),
                event_types: vec!["order.*".into()],
                headers: headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Default::default()
            }),
            allow_unregistered: false,
            idempotency_key: key.into(),
        }
    }

    fn keyring() -> Keyring {
        Keyring::parse(&Keyring::generate_entry("test").expect("a key")).expect("a keyring")
    }

    #[test]
    fn the_same_request_is_told_from_another_whatever_its_maps_order() {
        let many: Vec<(String, String)> = (0..50)
            .map(|i| (format!("x-h{i}"), format!("{i}")))
            .collect();
        let forward: Vec<(&str, &str)> =
            many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let backward: Vec<(&str, &str)> = forward.iter().rev().copied().collect();
        let first = CreateKey::of(&request("k1", &forward))
            .unwrap()
            .expect("a key");
        let again = CreateKey::of(&request("k1", &backward))
            .unwrap()
            .expect("a key");
        let keyring = keyring();
        let now = SystemTime::now();
        let bytes = first.record("sub_1", now, &keyring).expect("sealed");
        let record = pb::CreateKeyRecord::decode(bytes.as_slice()).expect("decodes");
        let judged = |key: &CreateKey| key.judge(&record, &keyring).expect("opens");
        assert_eq!(judged(&again), KeptCreate::Same("sub_1".into()));
        assert!(kept(&record, now));
        assert!(kept(&record, now + KEPT_FOR - Duration::from_secs(1)));
        assert!(!kept(&record, now + KEPT_FOR), "24 hours, no more");
        assert!(!kept(&pb::CreateKeyRecord::default(), now), "no time: none");
        // Sealed: the digest is not in the record as it is.
        let digest = first.request_sha256.as_bytes();
        assert!(!bytes.windows(digest.len()).any(|w| w == digest));
        let raw = request_digest(&request("k1", &forward));
        assert!(!bytes.windows(raw.len()).any(|w| w == raw));
        assert_eq!(first.store_key("shop-1"), again.store_key("shop-1"));

        let other = CreateKey::of(&request("k1", &[("x-h0", "changed")]))
            .unwrap()
            .expect("a key");
        assert_eq!(judged(&other), KeptCreate::OtherRequest);
        let mut unregistered = request("k1", &forward);
        unregistered.allow_unregistered = true;
        let unregistered = CreateKey::of(&unregistered).unwrap().expect("a key");
        assert_eq!(judged(&unregistered), KeptCreate::OtherRequest);
        // A header's name and value are not run together.
        let a = CreateKey::of(&request("k", &[("ab", "c")]))
            .unwrap()
            .expect("a key");
        let b = CreateKey::of(&request("k", &[("a", "bc")]))
            .unwrap()
            .expect("a key");
        assert_ne!(a.request_sha256, b.request_sha256);
    }

    #[test]
    fn keys_are_bounded_printable_and_kept_per_tenant() {
        assert!(
            CreateKey::of(&request("", &[])).unwrap().is_none(),
            "no key"
        );
        assert!(
            CreateKey::of(&request(&"k".repeat(MAX_KEY_LEN), &[]))
                .unwrap()
                .is_some()
        );
        assert!(CreateKey::of(&request(&"k".repeat(MAX_KEY_LEN + 1), &[])).is_err());
        assert!(CreateKey::of(&request("import 1/ü", &[])).is_err());
        assert!(CreateKey::of(&request("tab\there", &[])).is_err());
        let key = CreateKey::of(&request("order-sync/42", &[]))
            .unwrap()
            .expect("a key");
        let (a, b) = (key.store_key("shop-a"), key.store_key("shop-b"));
        assert_ne!(a, b);
        assert!(a.starts_with("/herald/v1/create-keys/shop-a/"), "{a}");
        assert_eq!(a.rsplit('/').next().map(str::len), Some(64), "{a}");
    }
}
