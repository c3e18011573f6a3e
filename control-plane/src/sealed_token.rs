//! Short tokens the web pages hand out and read back: claims sealed with the control plane's
//! keyring (AES-256-GCM), so every replica with the same keyring reads them, nobody else can
//! read or forge them, and one made for one purpose (a console session) is refused for
//! another (a portal link). The API's page tokens are made the same way ([`crate::page_tokens`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use prost::Message as _;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::page_tokens::Listing;
use crate::sealing::Keyring;

/// What a token is for; part of what it is sealed with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// A console sign-in.
    ConsoleSession,
    /// A tenant portal link.
    PortalLink,
    /// Where a page of one of the API's listings goes on.
    Page(Listing),
}

impl Purpose {
    fn associated_data(self) -> &'static str {
        match self {
            Purpose::ConsoleSession => "herald:console-session",
            Purpose::PortalLink => "herald:portal-link",
            Purpose::Page(Listing::Attempts) => "herald:page:attempts",
            Purpose::Page(Listing::AuditEntries) => "herald:page:audit-entries",
            Purpose::Page(Listing::SentRequests) => "herald:page:sent-requests",
        }
    }
}

/// Why a token was not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// Not a token this control plane made for this purpose (or made with a key it lacks).
    #[error("not a valid token")]
    Invalid,
    /// A real token whose time is up.
    #[error("the token has expired")]
    Expired,
    /// The claims could not be sealed (no randomness).
    #[error("cannot make a token: {0}")]
    Seal(String),
}

/// Longest token read: a sealed claim set is a few hundred bytes.
const MAX_TOKEN_LEN: usize = 2048;

/// The envelope sealed: the claims and when they stop counting.
#[derive(Serialize, serde::Deserialize)]
struct Sealed<T> {
    claims: T,
    /// Unix seconds.
    expires: u64,
}

fn unix(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A token holding `claims` for `purpose`, good for `ttl` from `now`.
pub fn seal<T: Serialize>(
    keyring: &Keyring,
    purpose: Purpose,
    claims: T,
    now: SystemTime,
    ttl: Duration,
) -> Result<String, TokenError> {
    let envelope = Sealed {
        claims,
        expires: unix(now + ttl),
    };
    let plain = serde_json::to_string(&envelope).map_err(|e| TokenError::Seal(e.to_string()))?;
    let sealed = keyring
        .seal(purpose.associated_data(), &plain)
        .map_err(|e| TokenError::Seal(e.to_string()))?;
    Ok(URL_SAFE_NO_PAD.encode(sealed.encode_to_vec()))
}

/// The claims of `token` if it was made for `purpose` and has not expired at `now`.
pub fn open<T: DeserializeOwned>(
    keyring: &Keyring,
    purpose: Purpose,
    token: &str,
    now: SystemTime,
) -> Result<T, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Invalid);
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| TokenError::Invalid)?;
    let sealed = herald_proto::v1::SealedSecret::decode(bytes.as_slice())
        .map_err(|_| TokenError::Invalid)?;
    let plain = keyring
        .open(purpose.associated_data(), &sealed)
        .map_err(|_| TokenError::Invalid)?;
    let envelope: Sealed<T> = serde_json::from_str(&plain).map_err(|_| TokenError::Invalid)?;
    if unix(now) >= envelope.expires {
        return Err(TokenError::Expired);
    }
    Ok(envelope.claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyring() -> Keyring {
        Keyring::parse(&Keyring::generate_entry("k1").expect("a key")).expect("a keyring")
    }

    #[test]
    fn a_token_opens_for_its_purpose_until_it_expires() {
        let keyring = keyring();
        let now = SystemTime::now();
        let hour = Duration::from_secs(3600);
        let token = seal(&keyring, Purpose::PortalLink, "shop-a", now, hour).expect("sealed");
        let opened: String = open(&keyring, Purpose::PortalLink, &token, now).expect("opens");
        assert_eq!(opened, "shop-a");
        assert_eq!(
            open::<String>(&keyring, Purpose::PortalLink, &token, now + hour),
            Err(TokenError::Expired)
        );
        assert_eq!(
            open::<String>(&keyring, Purpose::ConsoleSession, &token, now),
            Err(TokenError::Invalid)
        );
        assert_eq!(
            open::<String>(&self::keyring(), Purpose::PortalLink, &token, now),
            Err(TokenError::Invalid),
            "another keyring"
        );
        let mut forged = token.clone();
        forged.replace_range(10..11, if &token[10..11] == "A" { "B" } else { "A" });
        assert_eq!(
            open::<String>(&keyring, Purpose::PortalLink, &forged, now),
            Err(TokenError::Invalid)
        );
    }
}
