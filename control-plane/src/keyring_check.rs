//! The keyring check: every replica on one config store must hold the same keys, or the
//! records one replica seals are unreadable to the others (and a config stream from those
//! would silently lack them).
//!
//! The first time a key seals, a known text sealed with it is written beside the records
//! ([`crate::keys::keyring_check`]). At start, a replica opens the check value of every key id
//! it holds: one that does not open means this replica's key of that id is another key, and
//! the replica stops with [`KeyringCheckError::Mismatch`] (exit 64) before it serves anything.
//! Check values of key ids the replica does not hold are logged: a rotation that has not
//! reached every replica, or a keyring missing a key that records still need (which the start's
//! resealing pass then finds, naming the record).

use herald_proto::v1 as pb;
use prost::Message as _;

use crate::keys;
use crate::sealing::{Keyring, SealingError};
use crate::store::{Compare, Op, Store, StoreError, Txn, TxnOutcome};

/// What a check value holds, sealed.
const CHECK_TEXT: &str = "herald keyring check v1";

/// Why the keyring does not fit the store.
#[derive(Debug, thiserror::Error)]
pub enum KeyringCheckError {
    /// The store's check value for a key id does not open with this replica's key of that id.
    #[error(
        "key {key_id:?} of this control plane's keyring is not the key {key_id:?} that sealed the \
         config store's records: give every replica on this store the same keyring \
         (--secrets-key-file or HERALD_SECRETS_KEY, copied from a running replica)"
    )]
    Mismatch {
        /// The key id.
        key_id: String,
    },
    /// A stored record is sealed with a key this replica does not hold, or a key of the same
    /// id that is not the same key.
    #[error(
        "{record} cannot be opened: {source}; give this control plane the keyring the other \
         replicas use (--secrets-key-file or HERALD_SECRETS_KEY)"
    )]
    Unreadable {
        /// Which record (`subscription sub_…`).
        record: String,
        /// Why it does not open.
        source: SealingError,
    },
    /// A check value could not be sealed.
    #[error("cannot seal the keyring check value: {0}")]
    Sealing(SealingError),
    /// A check value is not a sealed secret.
    #[error("the keyring check value {key} is corrupt: {reason}")]
    Corrupt {
        /// The store key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The associated data a check value is sealed with: its key id, so a check value copied to
/// another id does not open.
fn associated(key_id: &str) -> String {
    format!("keyring-check:{key_id}")
}

/// What the check found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Checked {
    /// Key ids whose check values opened.
    pub verified: Vec<String>,
    /// Key ids the store has check values for and this keyring lacks.
    pub foreign: Vec<String>,
    /// Whether this replica wrote the check value of its sealing key.
    pub wrote: bool,
}

/// Checks `keyring` against the check values in `store`, and writes the sealing key's when the
/// store has none yet.
pub async fn verify(store: &Store, keyring: &Keyring) -> Result<Checked, KeyringCheckError> {
    let mut checked = Checked::default();
    let (kvs, _) = store.list(keys::KEYRING_CHECKS).await?;
    for kv in &kvs {
        let key_id = kv.key.trim_start_matches(keys::KEYRING_CHECKS).to_owned();
        if !keyring.has_key(&key_id) {
            checked.foreign.push(key_id);
            continue;
        }
        open(keyring, &key_id, &kv.key, &kv.value)?;
        checked.verified.push(key_id);
    }
    let sealing = keyring.sealing_key_id().to_owned();
    if !checked.verified.contains(&sealing) {
        let sealed = keyring
            .seal(&associated(&sealing), CHECK_TEXT)
            .map_err(KeyringCheckError::Sealing)?;
        let key = keys::keyring_check(&sealing);
        let txn = Txn::default()
            .when(Compare::Absent(key.clone()))
            .then(Op::Put(key.clone(), sealed.encode_to_vec()));
        match store.txn(txn).await? {
            TxnOutcome::Committed { .. } => checked.wrote = true,
            // Another replica wrote it first: it must open with this key too.
            TxnOutcome::Conflict => {
                let written = store
                    .get(&key)
                    .await?
                    .ok_or_else(|| KeyringCheckError::Corrupt {
                        key: key.clone(),
                        reason: "written and gone at once".into(),
                    })?;
                open(keyring, &sealing, &key, &written.value)?;
            }
        }
        checked.verified.push(sealing);
    }
    Ok(checked)
}

/// Opens one check value, which must hold [`CHECK_TEXT`].
fn open(keyring: &Keyring, key_id: &str, key: &str, value: &[u8]) -> Result<(), KeyringCheckError> {
    let sealed = pb::SealedSecret::decode(value).map_err(|e| KeyringCheckError::Corrupt {
        key: key.to_owned(),
        reason: e.to_string(),
    })?;
    if sealed.key_id != key_id {
        return Err(KeyringCheckError::Corrupt {
            key: key.to_owned(),
            reason: format!("sealed with key {:?}", sealed.key_id),
        });
    }
    match keyring.open(&associated(key_id), &sealed) {
        Ok(text) if text == CHECK_TEXT => Ok(()),
        Ok(_) | Err(SealingError::Corrupt(_)) => Err(KeyringCheckError::Mismatch {
            key_id: key_id.to_owned(),
        }),
        Err(err) => Err(KeyringCheckError::Sealing(err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyring(text: &str) -> Keyring {
        Keyring::parse(text).expect("a keyring")
    }

    #[tokio::test]
    async fn the_first_key_writes_its_check_and_a_different_key_of_that_id_is_refused() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let store = Store::embedded(dir.path()).await.expect("a store");
        let k1 = Keyring::generate_entry("k1").expect("a key");
        let first = verify(&store, &keyring(&k1)).await.expect("checked");
        assert!(first.wrote && first.verified == ["k1"]);
        let again = verify(&store, &keyring(&k1)).await.expect("checked");
        assert!(!again.wrote && again.verified == ["k1"]);

        // Another key that is also called k1: refused, naming it.
        let other = Keyring::generate_entry("k1").expect("a key");
        let refused = verify(&store, &keyring(&other)).await.unwrap_err();
        assert!(
            matches!(&refused, KeyringCheckError::Mismatch { key_id } if key_id == "k1"),
            "{refused:?}"
        );
        assert!(refused.to_string().contains("--secrets-key-file"));

        // A rotation: the new key seals and writes its check; the old one is still verified.
        let k2 = Keyring::generate_entry("k2").expect("a key");
        let rotated = verify(&store, &keyring(&format!("{k2}{k1}")))
            .await
            .expect("ok");
        assert!(rotated.wrote);
        assert_eq!(rotated.verified, ["k1", "k2"]);
        // A replica holding only the new key hears of the old one's check value.
        let only_new = verify(&store, &keyring(&k2)).await.expect("ok");
        assert_eq!(only_new.foreign, ["k1"]);
    }
}
