//! Request signing by the Standard Webhooks specification (<https://www.standardwebhooks.com/>),
//! so receivers can verify Herald's requests with any Standard Webhooks library.
//!
//! Every request carries [`HEADER_ID`] (the event id, the same on every retry),
//! [`HEADER_TIMESTAMP`] (Unix seconds of this attempt) and [`HEADER_SIGNATURE`]: one
//! `v1,<base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))>` per active secret, separated by
//! spaces, so a secret can be rotated without a moment where receivers reject requests.
//!
//! Secrets are written `whsec_<base64 key>` and hold 24 to 64 key bytes. A [`SigningSecret`]
//! never shows its key by accident: `Debug` redacts it, errors never contain it, and only
//! [`SigningSecret::expose`] gives the text back.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Header carrying the event id.
pub const HEADER_ID: &str = "webhook-id";
/// Header carrying the attempt's Unix timestamp in seconds.
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
/// Header carrying the space-separated signatures.
pub const HEADER_SIGNATURE: &str = "webhook-signature";

/// The text every secret starts with.
const SECRET_PREFIX: &str = "whsec_";
/// The version tag of HMAC-SHA256 signatures.
const SIGNATURE_PREFIX: &str = "v1,";
/// Fewest key bytes a secret may hold: what the specification recommends as a minimum.
const MIN_KEY_LEN: usize = 24;
/// Most key bytes a secret may hold.
const MAX_KEY_LEN: usize = 64;
/// Key bytes in a secret made by [`SigningSecret::generate`].
const GENERATED_KEY_LEN: usize = 32;

/// Standard base64 that accepts input with or without `=` padding, as secrets are written both
/// ways in the wild.
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

type HmacSha256 = Hmac<Sha256>;

/// Why a secret's text was refused. Messages never contain the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigningError {
    /// The text does not start with `whsec_`.
    #[error("signing secret must start with {SECRET_PREFIX}")]
    MissingPrefix,
    /// The part after `whsec_` is not standard base64.
    #[error("signing secret is not valid base64")]
    InvalidBase64,
    /// The key is shorter or longer than allowed.
    #[error("signing secret holds {len} bytes, expected {MIN_KEY_LEN} to {MAX_KEY_LEN}")]
    KeyLength {
        /// The number of key bytes found.
        len: usize,
    },
}

/// The HMAC key of one subscription secret.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningSecret {
    /// The raw key bytes; 24 to 64 of them.
    key: Vec<u8>,
}

impl SigningSecret {
    /// A new secret of 32 random bytes from the operating system.
    ///
    /// # Panics
    ///
    /// When the operating system's random number generator fails, as Herald must not hand out a
    /// guessable secret.
    pub fn generate() -> SigningSecret {
        let mut key = vec![0; GENERATED_KEY_LEN];
        if let Err(e) = getrandom::fill(&mut key) {
            panic!("the operating system's random number generator failed: {e}");
        }
        SigningSecret { key }
    }

    /// Parses `whsec_<base64>`; padding is optional and the key must be 24 to 64 bytes.
    pub fn parse(text: &str) -> Result<SigningSecret, SigningError> {
        let encoded = text
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SigningError::MissingPrefix)?;
        // The decode error is dropped: it would quote a character of the secret.
        let key = LENIENT_BASE64
            .decode(encoded)
            .map_err(|_| SigningError::InvalidBase64)?;
        if !(MIN_KEY_LEN..=MAX_KEY_LEN).contains(&key.len()) {
            return Err(SigningError::KeyLength { len: key.len() });
        }
        Ok(SigningSecret { key })
    }

    /// The secret as `whsec_<base64>` text, to store or to show a user on purpose.
    pub fn expose(&self) -> String {
        format!("{SECRET_PREFIX}{}", STANDARD.encode(&self.key))
    }

    /// An HMAC-SHA256 already fed with `{msg_id}.{timestamp}.{body}`.
    fn mac(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
        let mut mac =
            HmacSha256::new_from_slice(&self.key).expect("HMAC accepts keys of any length");
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }
}

/// Prints `SigningSecret(whsec_…redacted)`, never the key.
impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningSecret(whsec_…redacted)")
    }
}

/// The `v1,<base64>` signature of one request under one secret.
pub fn sign(secret: &SigningSecret, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let tag = secret.mac(msg_id, timestamp, body).finalize().into_bytes();
    format!("{SIGNATURE_PREFIX}{}", STANDARD.encode(tag))
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

/// Whether any `v1` signature in `header_value` was made by any of `secrets` over this request.
///
/// Signatures of other versions and malformed entries are ignored; comparison is constant-time.
/// The timestamp's freshness is a separate check: [`verify_timestamp`].
pub fn verify(
    secrets: &[SigningSecret],
    header_value: &str,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> bool {
    let macs: Vec<HmacSha256> = secrets
        .iter()
        .map(|secret| secret.mac(msg_id, timestamp, body))
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
        assert_eq!(generated.key.len(), 32);
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
            Err(SigningError::KeyLength { len: 23 })
        );
        let long = format!("whsec_{}", STANDARD.encode([7u8; 65]));
        assert_eq!(
            SigningSecret::parse(&long),
            Err(SigningError::KeyLength { len: 65 })
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
}
