//! Request signing by the Standard Webhooks specification (<https://www.standardwebhooks.com/>),
//! so receivers can verify Herald's requests with any Standard Webhooks library.
//!
//! Every request carries [`HEADER_ID`] (the event id, the same on every retry),
//! [`HEADER_TIMESTAMP`] (Unix seconds of this attempt) and [`HEADER_SIGNATURE`]: one signature
//! per active secret over `"{id}.{timestamp}.{body}"`, separated by spaces, so a secret can be
//! rotated without a moment where receivers reject requests. Two schemes ([`Scheme`]):
//!
//! - `v1,<base64(HMAC-SHA256(key, content))>` with a shared secret written `whsec_<base64 key>`
//!   (24 to 64 key bytes);
//! - `v1a,<base64(ed25519 signature)>` with a signing key written `whsk_<base64 32-byte seed>`;
//!   receivers verify with its public key, written `whpk_<base64 32 bytes>` ([`PublicKey`]),
//!   which needs no secrecy.
//!
//! A [`SigningSecret`] never shows its key by accident: `Debug` redacts it, errors never
//! contain it, and only [`SigningSecret::expose`] gives the text back.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Header carrying the event id.
pub const HEADER_ID: &str = "webhook-id";
/// Header carrying the attempt's Unix timestamp in seconds.
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
/// Header carrying the space-separated signatures.
pub const HEADER_SIGNATURE: &str = "webhook-signature";

/// The text every HMAC secret starts with.
const SECRET_PREFIX: &str = "whsec_";
/// The text every ed25519 signing key starts with.
const SIGNING_KEY_PREFIX: &str = "whsk_";
/// The text every ed25519 public key starts with.
const PUBLIC_KEY_PREFIX: &str = "whpk_";
/// The version tag of HMAC-SHA256 signatures.
const SIGNATURE_PREFIX: &str = "v1,";
/// The version tag of ed25519 signatures.
const ASYMMETRIC_PREFIX: &str = "v1a,";
/// Fewest key bytes a secret may hold: what the specification recommends as a minimum.
const MIN_KEY_LEN: usize = 24;
/// Most key bytes a secret may hold.
const MAX_KEY_LEN: usize = 64;
/// Key bytes in a secret made by [`SigningSecret::generate`].
const GENERATED_KEY_LEN: usize = 32;
/// Bytes in an ed25519 seed or public key.
const ED25519_KEY_LEN: usize = 32;

/// Standard base64 that accepts input with or without `=` padding, as secrets are written both
/// ways in the wild.
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

type HmacSha256 = Hmac<Sha256>;

/// Why a secret's or key's text was refused. Messages never contain the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigningError {
    /// The text does not start with a known prefix.
    #[error("signing secret must start with {SECRET_PREFIX} or {SIGNING_KEY_PREFIX}")]
    MissingPrefix,
    /// The part after the prefix is not standard base64.
    #[error("signing secret is not valid base64")]
    InvalidBase64,
    /// The key is shorter or longer than allowed.
    #[error("signing secret holds {len} bytes, expected {expected}")]
    KeyLength {
        /// The number of key bytes found.
        len: usize,
        /// What the scheme needs, in words.
        expected: &'static str,
    },
    /// A public key that is not `whpk_` followed by 32 bytes of a valid ed25519 point.
    #[error("public key must be {PUBLIC_KEY_PREFIX} followed by a base64 ed25519 key")]
    InvalidPublicKey,
}

/// How a subscription's requests are signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scheme {
    /// `v1`: HMAC-SHA256 with a shared secret; the default.
    #[default]
    HmacSha256,
    /// `v1a`: ed25519; receivers need only the public key.
    Ed25519,
}

/// The key of one subscription secret.
#[derive(Clone)]
enum Key {
    /// 24 to 64 HMAC key bytes.
    Hmac(Vec<u8>),
    /// An ed25519 key pair from its 32-byte seed.
    Ed25519(SigningKey),
}

/// One subscription secret: an HMAC key or an ed25519 signing key.
#[derive(Clone)]
pub struct SigningSecret {
    key: Key,
}

impl PartialEq for SigningSecret {
    fn eq(&self, other: &Self) -> bool {
        match (&self.key, &other.key) {
            (Key::Hmac(a), Key::Hmac(b)) => a == b,
            (Key::Ed25519(a), Key::Ed25519(b)) => a.to_bytes() == b.to_bytes(),
            _ => false,
        }
    }
}

impl Eq for SigningSecret {}

/// Fills `bytes` from the operating system's random number generator.
///
/// # Panics
///
/// When that generator fails, as Herald must not hand out a guessable key.
fn random(bytes: &mut [u8]) {
    if let Err(e) = getrandom::fill(bytes) {
        panic!("the operating system's random number generator failed: {e}");
    }
}

impl SigningSecret {
    /// A new HMAC secret of 32 random bytes from the operating system.
    ///
    /// # Panics
    ///
    /// When the operating system's random number generator fails.
    pub fn generate() -> SigningSecret {
        let mut key = vec![0; GENERATED_KEY_LEN];
        random(&mut key);
        SigningSecret {
            key: Key::Hmac(key),
        }
    }

    /// A new secret of `scheme`, from the operating system's randomness.
    ///
    /// # Panics
    ///
    /// When the operating system's random number generator fails.
    pub fn generate_for(scheme: Scheme) -> SigningSecret {
        match scheme {
            Scheme::HmacSha256 => Self::generate(),
            Scheme::Ed25519 => {
                let mut seed = [0; ED25519_KEY_LEN];
                random(&mut seed);
                SigningSecret {
                    key: Key::Ed25519(SigningKey::from_bytes(&seed)),
                }
            }
        }
    }

    /// Parses `whsec_<base64>` (24 to 64 key bytes) or `whsk_<base64>` (a 32-byte ed25519
    /// seed); padding is optional.
    pub fn parse(text: &str) -> Result<SigningSecret, SigningError> {
        if let Some(encoded) = text.strip_prefix(SECRET_PREFIX) {
            let key = decode(encoded)?;
            if !(MIN_KEY_LEN..=MAX_KEY_LEN).contains(&key.len()) {
                return Err(SigningError::KeyLength {
                    len: key.len(),
                    expected: "24 to 64",
                });
            }
            return Ok(SigningSecret {
                key: Key::Hmac(key),
            });
        }
        let encoded = text
            .strip_prefix(SIGNING_KEY_PREFIX)
            .ok_or(SigningError::MissingPrefix)?;
        let seed = decode(encoded)?;
        let seed: [u8; ED25519_KEY_LEN] =
            seed.as_slice()
                .try_into()
                .map_err(|_| SigningError::KeyLength {
                    len: seed.len(),
                    expected: "32",
                })?;
        Ok(SigningSecret {
            key: Key::Ed25519(SigningKey::from_bytes(&seed)),
        })
    }

    /// The secret as `whsec_<base64>` or `whsk_<base64>` text, to store or to show a user on
    /// purpose.
    pub fn expose(&self) -> String {
        match &self.key {
            Key::Hmac(key) => format!("{SECRET_PREFIX}{}", STANDARD.encode(key)),
            Key::Ed25519(key) => format!("{SIGNING_KEY_PREFIX}{}", STANDARD.encode(key.to_bytes())),
        }
    }

    /// Which scheme this secret signs with.
    pub fn scheme(&self) -> Scheme {
        match self.key {
            Key::Hmac(_) => Scheme::HmacSha256,
            Key::Ed25519(_) => Scheme::Ed25519,
        }
    }

    /// The public key receivers verify `v1a` signatures with; `None` for HMAC secrets.
    pub fn public_key(&self) -> Option<PublicKey> {
        match &self.key {
            Key::Hmac(_) => None,
            Key::Ed25519(key) => Some(PublicKey(key.verifying_key())),
        }
    }
}

/// Prints `SigningSecret(whsec_…redacted)` or `SigningSecret(whsk_…redacted)`, never the key.
impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.key {
            Key::Hmac(_) => f.write_str("SigningSecret(whsec_…redacted)"),
            Key::Ed25519(_) => f.write_str("SigningSecret(whsk_…redacted)"),
        }
    }
}

/// An ed25519 public key, written `whpk_<base64>`: what a receiver of `v1a` signatures holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// Parses `whpk_<base64 32 bytes>`.
    pub fn parse(text: &str) -> Result<PublicKey, SigningError> {
        let bytes = text
            .strip_prefix(PUBLIC_KEY_PREFIX)
            .and_then(|encoded| LENIENT_BASE64.decode(encoded).ok())
            .ok_or(SigningError::InvalidPublicKey)?;
        let bytes: [u8; ED25519_KEY_LEN] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| SigningError::InvalidPublicKey)?;
        VerifyingKey::from_bytes(&bytes)
            .map(PublicKey)
            .map_err(|_| SigningError::InvalidPublicKey)
    }
}

/// Writes `whpk_<base64>`.
impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PUBLIC_KEY_PREFIX}{}",
            STANDARD.encode(self.0.as_bytes())
        )
    }
}

/// Base64 of a secret; the decode error is dropped, as it would quote a character of it.
fn decode(encoded: &str) -> Result<Vec<u8>, SigningError> {
    LENIENT_BASE64
        .decode(encoded)
        .map_err(|_| SigningError::InvalidBase64)
}

/// The signed content: `{msg_id}.{timestamp}.{body}`.
fn content(msg_id: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
    let timestamp = timestamp.to_string();
    let mut content = Vec::with_capacity(msg_id.len() + timestamp.len() + body.len() + 2);
    content.extend_from_slice(msg_id.as_bytes());
    content.push(b'.');
    content.extend_from_slice(timestamp.as_bytes());
    content.push(b'.');
    content.extend_from_slice(body);
    content
}

/// An HMAC-SHA256 already fed with `{msg_id}.{timestamp}.{body}`.
fn mac(key: &[u8], msg_id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `v1,<base64>` or `v1a,<base64>` signature of one request under one secret.
pub fn sign(secret: &SigningSecret, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    match &secret.key {
        Key::Hmac(key) => {
            let tag = mac(key, msg_id, timestamp, body).finalize().into_bytes();
            format!("{SIGNATURE_PREFIX}{}", STANDARD.encode(tag))
        }
        Key::Ed25519(key) => {
            let signature = key.sign(&content(msg_id, timestamp, body));
            format!(
                "{ASYMMETRIC_PREFIX}{}",
                STANDARD.encode(signature.to_bytes())
            )
        }
    }
}

/// The `webhook-signature` value: one signature per secret, separated by spaces.
pub fn signature_header(
    secrets: &[SigningSecret],
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    secrets
        .iter()
        .map(|secret| sign(secret, msg_id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether any `v1` signature in `header_value` was made by any of the HMAC `secrets` over this
/// request.
///
/// Signatures of other versions, ed25519 secrets and malformed entries are ignored; comparison
/// is constant-time. The timestamp's freshness is a separate check: [`verify_timestamp`].
pub fn verify(
    secrets: &[SigningSecret],
    header_value: &str,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> bool {
    let macs: Vec<HmacSha256> = secrets
        .iter()
        .filter_map(|secret| match &secret.key {
            Key::Hmac(key) => Some(mac(key, msg_id, timestamp, body)),
            Key::Ed25519(_) => None,
        })
        .collect();
    header_value
        .split_ascii_whitespace()
        .filter_map(|entry| entry.strip_prefix(SIGNATURE_PREFIX))
        .filter_map(|encoded| LENIENT_BASE64.decode(encoded).ok())
        .any(|tag| {
            macs.iter()
                .any(|mac| mac.clone().verify_slice(&tag).is_ok())
        })
}

/// Whether any `v1a` signature in `header_value` was made over this request by the key of any
/// of `public_keys` (strict ed25519 verification). Other versions and malformed entries are
/// ignored.
pub fn verify_asymmetric(
    public_keys: &[PublicKey],
    header_value: &str,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> bool {
    let content = content(msg_id, timestamp, body);
    header_value
        .split_ascii_whitespace()
        .filter_map(|entry| entry.strip_prefix(ASYMMETRIC_PREFIX))
        .filter_map(|encoded| LENIENT_BASE64.decode(encoded).ok())
        .filter_map(|bytes| ed25519_dalek::Signature::from_slice(&bytes).ok())
        .any(|signature| {
            public_keys
                .iter()
                .any(|key| key.0.verify_strict(&content, &signature).is_ok())
        })
}

/// Whether `timestamp` is within `tolerance_secs` of `now` (both Unix seconds), in either
/// direction, so that an old request cannot be replayed. A negative tolerance accepts nothing.
pub fn verify_timestamp(timestamp: i64, now: i64, tolerance_secs: i64) -> bool {
    u64::try_from(tolerance_secs).is_ok_and(|tolerance| timestamp.abs_diff(now) <= tolerance)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The test vector from the Standard Webhooks specification.
    const SPEC_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const SPEC_ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
    const SPEC_TIMESTAMP: i64 = 1649367553;
    const SPEC_BODY: &[u8] = br#"{"email":"test@example.com","username":"test_user"}"#;
    const SPEC_SIGNATURE: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";

    fn spec_secret() -> SigningSecret {
        SigningSecret::parse(SPEC_SECRET).unwrap()
    }

    #[test]
    fn signs_the_specification_vector() {
        assert_eq!(
            sign(&spec_secret(), SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY),
            SPEC_SIGNATURE
        );
        assert!(verify(
            &[spec_secret()],
            SPEC_SIGNATURE,
            SPEC_ID,
            SPEC_TIMESTAMP,
            SPEC_BODY
        ));
    }

    #[test]
    fn verify_fails_when_anything_changes() {
        let secrets = [spec_secret()];
        let other = SigningSecret::generate();
        assert!(!verify(
            &secrets,
            SPEC_SIGNATURE,
            SPEC_ID,
            SPEC_TIMESTAMP,
            b"{}"
        ));
        assert!(!verify(
            &secrets,
            SPEC_SIGNATURE,
            "msg_other",
            SPEC_TIMESTAMP,
            SPEC_BODY
        ));
        assert!(!verify(
            &secrets,
            SPEC_SIGNATURE,
            SPEC_ID,
            SPEC_TIMESTAMP + 1,
            SPEC_BODY
        ));
        assert!(!verify(
            &[other],
            SPEC_SIGNATURE,
            SPEC_ID,
            SPEC_TIMESTAMP,
            SPEC_BODY
        ));
        assert!(!verify(
            &[],
            SPEC_SIGNATURE,
            SPEC_ID,
            SPEC_TIMESTAMP,
            SPEC_BODY
        ));
    }

    #[test]
    fn verify_ignores_other_versions_and_garbage() {
        let secrets = [spec_secret()];
        let tag = SPEC_SIGNATURE.strip_prefix("v1,").unwrap();
        let v2 = format!("v2,{tag}");
        assert!(!verify(&secrets, &v2, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY));
        assert!(!verify(&secrets, tag, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY));
        assert!(!verify(&secrets, "", SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY));
        let mixed = format!("v1a,xyz v1,!!!notbase64 {v2} {SPEC_SIGNATURE}");
        assert!(verify(&secrets, &mixed, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY));
    }

    #[test]
    fn several_secrets_sign_and_verify_during_rotation() {
        let old = spec_secret();
        let new = SigningSecret::generate();
        let header = signature_header(
            &[old.clone(), new.clone()],
            SPEC_ID,
            SPEC_TIMESTAMP,
            SPEC_BODY,
        );
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], SPEC_SIGNATURE);
        assert!(parts[1].starts_with("v1,"));
        // A receiver that knows either secret accepts the request.
        assert!(verify(&[old], &header, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY));
        assert!(verify(
            std::slice::from_ref(&new),
            &header,
            SPEC_ID,
            SPEC_TIMESTAMP,
            SPEC_BODY
        ));
        assert!(verify(
            &[SigningSecret::generate(), new],
            &header,
            SPEC_ID,
            SPEC_TIMESTAMP,
            SPEC_BODY
        ));
        assert_eq!(
            signature_header(&[], SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY),
            ""
        );
    }

    #[test]
    fn parse_and_expose_round_trip() {
        assert_eq!(spec_secret().expose(), SPEC_SECRET);
        let generated = SigningSecret::generate();
        assert!(matches!(&generated.key, Key::Hmac(key) if key.len() == 32));
        assert_eq!(
            SigningSecret::parse(&generated.expose()),
            Ok(generated.clone())
        );
        assert_ne!(generated, SigningSecret::generate());
    }

    #[test]
    fn parse_accepts_missing_padding() {
        // 32 key bytes encode to 44 characters ending in one '='.
        let padded = SigningSecret::generate().expose();
        assert!(padded.ends_with('='));
        let unpadded = padded.trim_end_matches('=');
        assert_eq!(
            SigningSecret::parse(unpadded),
            SigningSecret::parse(&padded)
        );
    }

    #[test]
    fn parse_refusals() {
        assert_eq!(
            SigningSecret::parse("C2FVsBQIhrscChlQIMV+b5sSYspob7oD"),
            Err(SigningError::MissingPrefix)
        );
        assert_eq!(
            SigningSecret::parse("whsec_C2FVsBQIhrscChlQIMV-b5sSYspob7oD"),
            Err(SigningError::InvalidBase64)
        );
        let short = format!("whsec_{}", STANDARD.encode([7u8; 23]));
        assert_eq!(
            SigningSecret::parse(&short),
            Err(SigningError::KeyLength {
                len: 23,
                expected: "24 to 64"
            })
        );
        let long = format!("whsec_{}", STANDARD.encode([7u8; 65]));
        assert_eq!(
            SigningSecret::parse(&long),
            Err(SigningError::KeyLength {
                len: 65,
                expected: "24 to 64"
            })
        );
        let longest = format!("whsec_{}", STANDARD.encode([7u8; 64]));
        assert!(SigningSecret::parse(&longest).is_ok());
        assert!(SigningSecret::parse("whsec_").is_err());
        assert!(SigningSecret::parse("").is_err());
    }

    #[test]
    fn secrets_never_show_in_debug_or_errors() {
        let secret = spec_secret();
        let key_text = SPEC_SECRET.strip_prefix("whsec_").unwrap();
        let debug = format!("{secret:?} {:?}", std::slice::from_ref(&secret));
        assert!(!debug.contains(key_text), "{debug}");
        assert!(debug.contains("SigningSecret(whsec_…redacted)"));
        let bad = "whsec_C2FVsBQIhrscChlQIMV-b5sSYspob7oD";
        let err = SigningSecret::parse(bad).unwrap_err();
        assert!(!format!("{err} {err:?}").contains('-'));
    }

    #[test]
    fn timestamp_tolerance() {
        assert!(verify_timestamp(1000, 1000, 0));
        assert!(verify_timestamp(700, 1000, 300));
        assert!(verify_timestamp(1300, 1000, 300));
        assert!(!verify_timestamp(699, 1000, 300));
        assert!(!verify_timestamp(1301, 1000, 300));
        assert!(!verify_timestamp(1000, 1000, -1));
        assert!(!verify_timestamp(i64::MIN, i64::MAX, i64::MAX));
        assert!(verify_timestamp(i64::MAX, i64::MAX, 0));
    }

    #[test]
    fn ed25519_keys_sign_v1a_and_verify_with_the_public_key() {
        let key = SigningSecret::generate_for(Scheme::Ed25519);
        assert_eq!(key.scheme(), Scheme::Ed25519);
        let text = key.expose();
        assert!(text.starts_with("whsk_"), "{text}");
        assert_eq!(SigningSecret::parse(&text), Ok(key.clone()));
        let public = key.public_key().expect("ed25519 keys have a public key");
        assert!(public.to_string().starts_with("whpk_"));
        assert_eq!(PublicKey::parse(&public.to_string()), Ok(public));

        let header = signature_header(
            &[key.clone(), spec_secret()],
            SPEC_ID,
            SPEC_TIMESTAMP,
            SPEC_BODY,
        );
        let parts: Vec<&str> = header.split(' ').collect();
        assert!(parts[0].starts_with("v1a,"), "{header}");
        assert_eq!(parts[1], SPEC_SIGNATURE);
        assert!(verify_asymmetric(
            &[public],
            &header,
            SPEC_ID,
            SPEC_TIMESTAMP,
            SPEC_BODY
        ));
        assert!(!verify_asymmetric(
            &[public],
            &header,
            SPEC_ID,
            SPEC_TIMESTAMP,
            b"{}"
        ));
        assert!(!verify_asymmetric(
            &[public],
            &header,
            SPEC_ID,
            SPEC_TIMESTAMP + 1,
            SPEC_BODY
        ));
        let other = SigningSecret::generate_for(Scheme::Ed25519)
            .public_key()
            .expect("public key");
        assert!(!verify_asymmetric(
            &[other],
            &header,
            SPEC_ID,
            SPEC_TIMESTAMP,
            SPEC_BODY
        ));
        // HMAC verification is not fooled by the v1a entry, and still finds its own.
        assert!(verify(
            &[spec_secret(), key.clone()],
            &header,
            SPEC_ID,
            SPEC_TIMESTAMP,
            SPEC_BODY
        ));
        assert!(!verify(&[key], &header, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY));
    }

    #[test]
    fn ed25519_signatures_match_rfc_8032() {
        // RFC 8032, section 7.1, TEST 2: the seed signs the one-byte message 0x72. Here the
        // message is the signed content "{id}.{timestamp}.{body}", so the vector checks the
        // key handling (seed → key pair) and the signature encoding.
        let seed = "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb";
        let public = "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c";
        let hex = |s: &str| -> Vec<u8> {
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
                .collect()
        };
        let key = SigningSecret::parse(&format!("whsk_{}", STANDARD.encode(hex(seed))))
            .expect("a 32-byte seed");
        let expected = format!("whpk_{}", STANDARD.encode(hex(public)));
        assert_eq!(key.public_key().expect("public").to_string(), expected);
    }

    #[test]
    fn ed25519_refusals() {
        let short = format!("whsk_{}", STANDARD.encode([7u8; 31]));
        assert_eq!(
            SigningSecret::parse(&short),
            Err(SigningError::KeyLength {
                len: 31,
                expected: "32"
            })
        );
        assert_eq!(
            SigningSecret::parse("whsk_***"),
            Err(SigningError::InvalidBase64)
        );
        assert!(PublicKey::parse("whpk_").is_err());
        assert!(PublicKey::parse(&format!("whsk_{}", STANDARD.encode([7u8; 32]))).is_err());
        let debug = format!("{:?}", SigningSecret::generate_for(Scheme::Ed25519));
        assert_eq!(debug, "SigningSecret(whsk_…redacted)");
    }
}
