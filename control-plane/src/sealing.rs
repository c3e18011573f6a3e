//! Signing secrets sealed at rest. Every secret the control plane writes to the config store is
//! encrypted with AES-256-GCM under the *sealing key* of its keyring; the record keeps the key
//! id, a random 96-bit nonce and the ciphertext, never the secret. The subscription id is the
//! associated data, so a sealed secret copied into another record does not open.
//!
//! A keyring is a list of `ID:BASE64` entries (32-byte keys), separated by newlines, commas or
//! spaces; `#` starts a comment. The first entry seals; every entry opens. To rotate, put a new
//! key first and keep the old one listed: records are resealed with the new key as the control
//! plane starts (and whenever they are written), after which the old key can go.
//!
//! Where the keyring comes from: `--secrets-key-file` or `HERALD_SECRETS_KEY`; without either,
//! a key is made once in the data directory (`secrets.key`, mode 0600). Replicas sharing one
//! etcd must share one keyring, so production deployments name it explicitly.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use herald_proto::v1 as pb;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

/// The length of a sealing key in bytes.
pub const KEY_LEN: usize = 32;
/// The most keys a keyring holds.
const MAX_KEYS: usize = 16;
/// The longest key id.
const MAX_KEY_ID_LEN: usize = 32;

/// Where the keyring comes from (flags of the control plane).
#[derive(Clone, Default, clap::Args)]
pub struct KeyringSource {
    /// File with the keyring that seals signing secrets at rest: `ID:BASE64` entries of 32-byte
    /// keys, the first seals. Without it (or HERALD_SECRETS_KEY) a key is made in --data-dir.
    #[arg(long, env = "HERALD_SECRETS_KEY_FILE")]
    pub secrets_key_file: Option<PathBuf>,
    /// The keyring itself, in the same format (prefer the environment variable: flags show in
    /// process listings).
    #[arg(
        long,
        env = "HERALD_SECRETS_KEY",
        hide_env_values = true,
        conflicts_with = "secrets_key_file"
    )]
    pub secrets_key: Option<String>,
}

impl std::fmt::Debug for KeyringSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyringSource")
            .field("secrets_key_file", &self.secrets_key_file)
            .field(
                "secrets_key",
                &self.secrets_key.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl KeyringSource {
    /// Loads the keyring; with no source given, the one in `data_dir`, made on first use.
    pub fn load(&self, data_dir: &Path) -> Result<Keyring, SealingError> {
        if let Some(text) = &self.secrets_key {
            return Keyring::parse(text);
        }
        if let Some(path) = &self.secrets_key_file {
            return Keyring::parse(&read(path)?);
        }
        let path = data_dir.join("secrets.key");
        match std::fs::read_to_string(&path) {
            Ok(text) => Keyring::parse(&text),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                let text = Keyring::generate_entry("k1")?;
                write_private(&path, &text)?;
                tracing::info!(path = %path.display(), "made a key to seal signing secrets");
                Keyring::parse(&text)
            }
            Err(source) => Err(SealingError::Io { path, source }),
        }
    }
}

/// Why sealing or opening a secret failed.
#[derive(Debug, thiserror::Error)]
pub enum SealingError {
    /// The keyring file could not be read or written.
    #[error("secrets key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The keyring text is malformed.
    #[error("secrets keyring is not valid: {0}")]
    Keyring(String),
    /// A record was sealed with a key this control plane does not have.
    #[error(
        "sealed with key {0:?}, which is not in this control plane's keyring \
         (every replica needs the same --secrets-key-file)"
    )]
    UnknownKey(String),
    /// The ciphertext does not open: altered, moved from another record, or a wrong key.
    #[error("sealed secret does not open with key {0:?}")]
    Corrupt(String),
    /// The system random source failed.
    #[error("no randomness for a nonce")]
    Random,
}

/// One key of a keyring.
struct Key {
    id: String,
    aead: LessSafeKey,
}

/// The control plane's keys for signing secrets: the first seals, all open.
pub struct Keyring {
    keys: Vec<Key>,
    random: SystemRandom,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|key| key.id.as_str()).collect();
        f.debug_struct("Keyring").field("key_ids", &ids).finish()
    }
}

impl Keyring {
    /// Parses `ID:BASE64` entries; the first seals.
    pub fn parse(text: &str) -> Result<Keyring, SealingError> {
        let bad = |why: String| SealingError::Keyring(why);
        let mut keys: Vec<Key> = Vec::new();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or_default();
            for entry in line
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|e| !e.is_empty())
            {
                let (id, key) = entry
                    .split_once(':')
                    .ok_or_else(|| bad("an entry is not ID:BASE64".into()))?;
                let id_ok = !id.is_empty()
                    && id.len() <= MAX_KEY_ID_LEN
                    && id
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
                if !id_ok {
                    return Err(bad(format!(
                        "key id {id:?} must be 1-{MAX_KEY_ID_LEN} letters, digits, '-' or '_'"
                    )));
                }
                if keys.iter().any(|k| k.id == id) {
                    return Err(bad(format!("key id {id:?} appears twice")));
                }
                let bytes = STANDARD
                    .decode(key)
                    .map_err(|_| bad(format!("key {id:?} is not base64")))?;
                if bytes.len() != KEY_LEN {
                    return Err(bad(format!(
                        "key {id:?} is {} bytes, not {KEY_LEN}",
                        bytes.len()
                    )));
                }
                let unbound = UnboundKey::new(&AES_256_GCM, &bytes)
                    .map_err(|_| bad(format!("key {id:?} is not usable")))?;
                keys.push(Key {
                    id: id.to_owned(),
                    aead: LessSafeKey::new(unbound),
                });
            }
        }
        if keys.is_empty() {
            return Err(bad("it holds no key".into()));
        }
        if keys.len() > MAX_KEYS {
            return Err(bad(format!("more than {MAX_KEYS} keys")));
        }
        Ok(Keyring {
            keys,
            random: SystemRandom::new(),
        })
    }

    /// A new random key as a keyring entry `ID:BASE64`.
    pub fn generate_entry(id: &str) -> Result<String, SealingError> {
        let mut key = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| SealingError::Random)?;
        Ok(format!("{id}:{}\n", STANDARD.encode(key)))
    }

    /// The id of the key that seals.
    pub fn sealing_key_id(&self) -> &str {
        &self.keys[0].id
    }

    /// Whether the keyring holds a key of this id.
    pub fn has_key(&self, id: &str) -> bool {
        self.keys.iter().any(|key| key.id == id)
    }

    /// Encrypts `secret` for the record of subscription `subscription_id`.
    pub fn seal(
        &self,
        subscription_id: &str,
        secret: &str,
    ) -> Result<pb::SealedSecret, SealingError> {
        let key = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        self.random
            .fill(&mut nonce)
            .map_err(|_| SealingError::Random)?;
        let mut ciphertext = secret.as_bytes().to_vec();
        key.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(subscription_id.as_bytes()),
                &mut ciphertext,
            )
            .map_err(|_| SealingError::Corrupt(key.id.clone()))?;
        Ok(pb::SealedSecret {
            key_id: key.id.clone(),
            nonce: nonce.to_vec(),
            ciphertext,
        })
    }

    /// Decrypts a secret sealed for subscription `subscription_id`.
    pub fn open(
        &self,
        subscription_id: &str,
        sealed: &pb::SealedSecret,
    ) -> Result<String, SealingError> {
        let key = self
            .keys
            .iter()
            .find(|key| key.id == sealed.key_id)
            .ok_or_else(|| SealingError::UnknownKey(sealed.key_id.clone()))?;
        let corrupt = || SealingError::Corrupt(key.id.clone());
        let nonce = Nonce::try_assume_unique_for_key(&sealed.nonce).map_err(|_| corrupt())?;
        let mut buffer = sealed.ciphertext.clone();
        let plain = key
            .aead
            .open_in_place(nonce, Aad::from(subscription_id.as_bytes()), &mut buffer)
            .map_err(|_| corrupt())?;
        String::from_utf8(plain.to_vec()).map_err(|_| corrupt())
    }
}

fn read(path: &Path) -> Result<String, SealingError> {
    std::fs::read_to_string(path).map_err(|source| SealingError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Writes `text` to a new file only its owner can read.
fn write_private(path: &Path, text: &str) -> Result<(), SealingError> {
    use std::io::Write as _;
    let fail = |source| SealingError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(fail)?;
    file.write_all(text.as_bytes()).map_err(fail)?;
    file.sync_all().map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(text: &str) -> Keyring {
        Keyring::parse(text).expect("a valid keyring")
    }

    #[test]
    fn a_sealed_secret_opens_only_for_its_subscription() {
        let keys = ring(&Keyring::generate_entry("k1").unwrap());
        let sealed = keys.seal("sub_1", "whsec_abc").unwrap();
        assert_eq!(sealed.key_id, "k1");
        assert!(
            !sealed
                .ciphertext
                .windows(9)
                .any(|w| w == b"whsec_abc".as_slice())
        );
        assert_eq!(keys.open("sub_1", &sealed).unwrap(), "whsec_abc");
        assert!(matches!(
            keys.open("sub_2", &sealed),
            Err(SealingError::Corrupt(_))
        ));
        let mut altered = sealed.clone();
        altered.ciphertext[0] ^= 1;
        assert!(matches!(
            keys.open("sub_1", &altered),
            Err(SealingError::Corrupt(_))
        ));
    }

    #[test]
    fn nonces_differ_between_seals() {
        let keys = ring(&Keyring::generate_entry("k1").unwrap());
        let a = keys.seal("sub_1", "whsec_abc").unwrap();
        let b = keys.seal("sub_1", "whsec_abc").unwrap();
        assert_ne!(a.nonce, b.nonce);
        assert_ne!(a.ciphertext, b.ciphertext);
    }

    #[test]
    fn a_rotated_keyring_opens_old_seals_and_seals_with_the_new_key() {
        let old = Keyring::generate_entry("old").unwrap();
        let new = Keyring::generate_entry("new").unwrap();
        let sealed = ring(&old).seal("sub_1", "whsec_abc").unwrap();
        let rotated = ring(&format!("{new}{old}"));
        assert_eq!(rotated.sealing_key_id(), "new");
        assert_eq!(rotated.open("sub_1", &sealed).unwrap(), "whsec_abc");
        assert_eq!(rotated.seal("sub_1", "x").unwrap().key_id, "new");
        assert!(matches!(
            ring(&new).open("sub_1", &sealed),
            Err(SealingError::UnknownKey(id)) if id == "old"
        ));
    }

    #[test]
    fn malformed_keyrings_are_refused_with_the_reason() {
        for (text, why) in [
            ("", "no key"),
            ("# only a comment", "no key"),
            ("k1", "ID:BASE64"),
            ("k1:notbase64!", "not base64"),
            ("k1:AAAA", "3 bytes"),
            ("bad id:AAAA", "ID:BASE64"),
            ("k.1:AAAA", "key id"),
        ] {
            let err = Keyring::parse(text).unwrap_err().to_string();
            assert!(err.contains(why), "{text:?}: {err}");
        }
        let entry = Keyring::generate_entry("k1").unwrap();
        let twice = format!("{entry},{entry}");
        assert!(
            Keyring::parse(&twice)
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
    }

    #[test]
    fn the_default_key_is_made_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let source = KeyringSource::default();
        let first = source.load(dir.path()).unwrap();
        let sealed = first.seal("sub_1", "whsec_abc").unwrap();
        let again = source.load(dir.path()).unwrap();
        assert_eq!(again.open("sub_1", &sealed).unwrap(), "whsec_abc");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join("secrets.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
