//! Tenant portal links: a tenant's name and whether the link may change anything, sealed
//! with the keyring into the link's path ([`sealed_token`](super::sealed_token)). Any
//! replica with the keyring opens them; nobody can forge one or stretch its time.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::sealed_token::{self, Purpose, TokenError};
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

/// The path of the portal for `grant`, good for `ttl` from `now` (under the public URL).
pub fn mint(
    keyring: &Keyring,
    grant: &Grant,
    now: SystemTime,
    ttl: Duration,
) -> Result<String, TokenError> {
    let token = sealed_token::seal(keyring, Purpose::PortalLink, grant, now, ttl)?;
    Ok(format!("/portal/{token}/"))
}

/// The grant of a link's token, if it is one and has not expired.
pub fn open(keyring: &Keyring, token: &str, now: SystemTime) -> Result<Grant, TokenError> {
    sealed_token::open(keyring, Purpose::PortalLink, token, now)
}
