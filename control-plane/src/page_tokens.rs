//! The page tokens the API hands out for the delivery log's listings (attempts, audit
//! entries, requests as sent). The log's own position in a listing is a store-wide sequence
//! number and a time, which would let a caller scoped to one tenant count every other tenant's
//! deliveries and changes between two pages, and would let a caller make up positions. So the
//! API seals the position with the keyring ([`crate::sealed_token`]): callers see an opaque
//! token that every replica with the same keyring reads, that opens only for the listing that
//! made it and a caller who sees the same tenants (a token copied from another tenant's
//! listing would say where that tenant's page ended), and that lasts [`PAGE_TOKEN_TTL`].

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use herald_core::ValidationError;
use sha2::{Digest as _, Sha256};
use tonic::Status;

use crate::access::Scope;
use crate::sealed_token::{self, Purpose, TokenError};
use crate::sealing::Keyring;

/// How long a page token leads on: long enough for any walk through a listing, short enough
/// that a token kept in a bookmark does not outlive the rows it points between.
pub const PAGE_TOKEN_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// The listings whose positions are sealed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listing {
    /// `Deliveries.ListAttempts`.
    Attempts,
    /// `Audit.ListAuditEntries`.
    AuditEntries,
    /// `Deliveries.GetSentRequests`.
    SentRequests,
}

/// Who asks for a page of a listing, and with what filter: a token opens only for the same.
pub struct Asked<'a> {
    tenants: &'a Scope,
    /// The filter's wire form (what the caller leaves out of it, such as its times, may change
    /// from page to page).
    filter: Vec<u8>,
}

impl<'a> Asked<'a> {
    /// A caller who sees `tenants` asking with `filter`.
    pub fn new(tenants: &'a Scope, filter: &impl prost::Message) -> Self {
        Asked {
            tenants,
            filter: filter.encode_to_vec(),
        }
    }
}

/// Seals and opens page tokens with the control plane's keyring; cloning shares it.
#[derive(Clone)]
pub struct PageTokens {
    keyring: Arc<Keyring>,
}

impl PageTokens {
    /// Page tokens sealed with `keyring` (the one that seals signing secrets).
    pub fn new(keyring: Arc<Keyring>) -> Self {
        PageTokens { keyring }
    }

    /// The log's position that `token` holds for `listing` as `asked`: empty for an empty
    /// token (the first page); refused when the token is not one of this listing's asked the
    /// same way (a caller seeing the same tenants, the same filter), or has expired.
    pub fn open(
        &self,
        listing: Listing,
        asked: &Asked<'_>,
        token: &str,
    ) -> Result<String, ValidationError> {
        self.open_at(listing, asked, token, SystemTime::now())
    }

    fn open_at(
        &self,
        listing: Listing,
        asked: &Asked<'_>,
        token: &str,
        now: SystemTime,
    ) -> Result<String, ValidationError> {
        if token.is_empty() {
            return Ok(String::new());
        }
        let sealed: String = sealed_token::open(&self.keyring, Purpose::Page(listing), token, now)
            .map_err(|err| match err {
                TokenError::Expired => ValidationError::new(
                    "page_token",
                    "has expired (a page token lasts a day): list again from the first page",
                ),
                TokenError::Invalid | TokenError::Seal(_) => {
                    crate::attempts::not_from_this_listing()
                }
            })?;
        match sealed.split_once(':') {
            Some((seen_by, position)) if seen_by == digest(asked) => Ok(position.to_owned()),
            _ => Err(crate::attempts::not_from_this_listing()),
        }
    }

    /// The token a caller gets for the log's `position` in `listing` as `asked`: empty for an
    /// empty position (the last page).
    pub fn seal(
        &self,
        listing: Listing,
        asked: &Asked<'_>,
        position: &str,
    ) -> Result<String, Status> {
        self.seal_at(listing, asked, position, SystemTime::now())
    }

    fn seal_at(
        &self,
        listing: Listing,
        asked: &Asked<'_>,
        position: &str,
        now: SystemTime,
    ) -> Result<String, Status> {
        if position.is_empty() {
            return Ok(String::new());
        }
        sealed_token::seal(
            &self.keyring,
            Purpose::Page(listing),
            format!("{}:{position}", digest(asked)),
            now,
            PAGE_TOKEN_TTL,
        )
        .map_err(|err| Status::internal(err.to_string()))
    }
}

/// What a token remembers of how it was asked for: a digest of the names of the tenants its
/// caller sees (`*` for every tenant) and of the filter, so that the token stays short however
/// many there are.
fn digest(asked: &Asked<'_>) -> String {
    let mut digest = Sha256::new();
    match asked.tenants.names() {
        None => digest.update(b"*"),
        Some(names) => {
            for name in names {
                // Tenant names hold no NUL: it separates them.
                digest.update(name.as_bytes());
                digest.update([0]);
            }
        }
    }
    // Nor 0xFF (no UTF-8 text holds it): it separates the names from the filter.
    digest.update([0xFF]);
    digest.update(&asked.filter);
    digest.finalize()[..16]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_proto::v1 as pb;

    fn all() -> Asked<'static> {
        Asked::new(&Scope::All, &())
    }

    #[test]
    fn a_position_comes_back_only_to_the_filter_it_was_asked_with() {
        let tokens = tokens();
        let now = SystemTime::now();
        let of = |tenant: &str| pb::AttemptFilter {
            tenant: tenant.into(),
            ..Default::default()
        };
        let token = tokens
            .seal_at(
                Listing::Attempts,
                &Asked::new(&Scope::All, &of("shop-a")),
                "17:42",
                now,
            )
            .expect("sealed");
        assert_eq!(
            tokens
                .open_at(
                    Listing::Attempts,
                    &Asked::new(&Scope::All, &of("shop-a")),
                    &token,
                    now
                )
                .expect("the same filter"),
            "17:42"
        );
        for other in [of("shop-b"), of("")] {
            let refused = tokens
                .open_at(
                    Listing::Attempts,
                    &Asked::new(&Scope::All, &other),
                    &token,
                    now,
                )
                .expect_err("another filter");
            assert_eq!(refused.reason, "is not from this listing", "{other:?}");
        }
    }

    fn tokens() -> PageTokens {
        let entry = Keyring::generate_entry("k1").expect("a key");
        PageTokens::new(Arc::new(Keyring::parse(&entry).expect("a keyring")))
    }

    #[test]
    fn a_position_comes_back_from_its_own_listing_only_and_never_shows() {
        let tokens = tokens();
        let now = SystemTime::now();
        let token = tokens
            .seal_at(Listing::Attempts, &all(), "1764892800000000:4711", now)
            .expect("sealed");
        assert!(!token.contains("4711"), "the position is not readable");
        assert_eq!(
            tokens
                .open_at(Listing::Attempts, &all(), &token, now)
                .expect("opens"),
            "1764892800000000:4711"
        );
        let other = tokens
            .open_at(Listing::AuditEntries, &all(), &token, now)
            .expect_err("another listing's token");
        assert_eq!(other.field, "page_token");
        assert_eq!(other.reason, "is not from this listing");
        assert!(
            tokens
                .open_at(Listing::Attempts, &all(), "4711", now)
                .is_err(),
            "a made-up position"
        );
        assert!(
            self::tokens()
                .open_at(Listing::Attempts, &all(), &token, now)
                .is_err(),
            "another keyring"
        );
        let late = tokens
            .open_at(Listing::Attempts, &all(), &token, now + PAGE_TOKEN_TTL)
            .expect_err("expired");
        assert!(late.reason.contains("expired"), "{late:?}");
    }

    #[test]
    fn a_position_comes_back_only_to_a_caller_seeing_the_same_tenants() {
        let tokens = tokens();
        let now = SystemTime::now();
        let only = |names: &[&str]| Scope::Only(names.iter().map(|n| n.to_string()).collect());
        let shop_b = tokens
            .seal_at(
                Listing::Attempts,
                &Asked::new(&only(&["shop-b"]), &()),
                "17:42",
                now,
            )
            .expect("sealed");
        assert_eq!(
            tokens
                .open_at(
                    Listing::Attempts,
                    &Asked::new(&only(&["shop-b"]), &()),
                    &shop_b,
                    now
                )
                .expect("the same tenants"),
            "17:42"
        );
        for other in [only(&["shop-a"]), only(&["shop-a", "shop-b"]), Scope::All] {
            let refused = tokens
                .open_at(Listing::Attempts, &Asked::new(&other, &()), &shop_b, now)
                .expect_err("another caller's token");
            assert_eq!(refused.reason, "is not from this listing", "{other:?}");
        }
        // Names are told apart however they would run together.
        assert_ne!(
            digest(&Asked::new(&only(&["ab", "c"]), &())),
            digest(&Asked::new(&only(&["a", "bc"]), &()))
        );
    }

    #[test]
    fn the_first_and_last_pages_have_empty_tokens() {
        let tokens = tokens();
        assert_eq!(
            tokens
                .seal(Listing::SentRequests, &all(), "")
                .expect("sealed"),
            ""
        );
        assert_eq!(
            tokens
                .open(Listing::SentRequests, &all(), "")
                .expect("opened"),
            ""
        );
    }
}
