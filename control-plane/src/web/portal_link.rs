//! Tenant portal links: a tenant's name and whether the link may change anything, sealed
//! with the keyring into the link's path ([`sealed_token`](crate::sealed_token)). Any
//! replica with the keyring opens them; nobody can forge one or stretch its time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::sealed_token::{self, Purpose, TokenError};
use crate::sealing::Keyring;

/// The shortest and longest a link may last.
pub const MIN_TTL: Duration = Duration::from_secs(60);
/// See [`MIN_TTL`].
pub const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// How long a link lasts when the request does not say.
pub const DEFAULT_TTL: Duration = Duration::from_secs(60 * 60);

/// What a link grants.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The one tenant it shows.
    pub tenant: String,
    /// Shows, changes nothing, reveals no secret.
    pub read_only: bool,
}

/// What a link's token holds: the grant, and when the link was made (Unix milliseconds; 0
/// in links made before tokens said), so that expiring a tenant's links ends the ones made
/// until then ([`crate::portal_links`]).
#[derive(Serialize, Deserialize)]
struct Claims {
    #[serde(flatten)]
    grant: Grant,
    #[serde(default)]
    made_ms: u64,
}

/// An opened link: what it grants and when it was made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// What it grants.
    pub grant: Grant,
    /// When it was made (the Unix epoch for links made before tokens said).
    pub made: SystemTime,
}

/// The path of the portal for `grant`, good for `ttl` from `now` (under the public URL).
pub fn mint(
    keyring: &Keyring,
    grant: &Grant,
    now: SystemTime,
    ttl: Duration,
) -> Result<String, TokenError> {
    let claims = Claims {
        grant: grant.clone(),
        made_ms: now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    };
    let token = sealed_token::seal(keyring, Purpose::PortalLink, claims, now, ttl)?;
    Ok(format!("/portal/{token}/"))
}

/// The link of a token, if it is one and has not expired.
pub fn open(keyring: &Keyring, token: &str, now: SystemTime) -> Result<Link, TokenError> {
    let claims: Claims = sealed_token::open(keyring, Purpose::PortalLink, token, now)?;
    Ok(Link {
        grant: claims.grant,
        made: UNIX_EPOCH + Duration::from_millis(claims.made_ms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_says_what_it_grants_and_when_it_was_made() {
        let keyring =
            Keyring::parse(&Keyring::generate_entry("k1").expect("a key")).expect("a keyring");
        let grant = Grant {
            tenant: "shop-a".into(),
            read_only: true,
        };
        let now = UNIX_EPOCH + Duration::from_millis(1_780_000_000_123);
        let path = mint(&keyring, &grant, now, DEFAULT_TTL).expect("minted");
        let token = path
            .strip_prefix("/portal/")
            .and_then(|rest| rest.strip_suffix('/'))
            .expect("a portal path");
        let link = open(&keyring, token, now).expect("opens");
        assert_eq!(link, Link { grant, made: now });
        assert_eq!(
            open(&keyring, token, now + DEFAULT_TTL),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn a_link_made_before_links_said_when_was_made_at_the_epoch() {
        let keyring =
            Keyring::parse(&Keyring::generate_entry("k1").expect("a key")).expect("a keyring");
        let now = SystemTime::now();
        // The claims of earlier versions: the grant alone.
        let grant = Grant {
            tenant: "shop-a".into(),
            read_only: false,
        };
        let token = sealed_token::seal(&keyring, Purpose::PortalLink, &grant, now, DEFAULT_TTL)
            .expect("sealed");
        let link = open(&keyring, &token, now).expect("opens");
        assert_eq!(link.made, UNIX_EPOCH);
        assert_eq!(link.grant, grant);
    }
}
