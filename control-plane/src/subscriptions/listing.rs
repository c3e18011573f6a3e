//! Listing subscriptions a page at a time, within the tenants a caller may see.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use herald_core::ValidationError;
use herald_core::limits::PageBytes;
use herald_proto::v1 as pb;

use super::record::decode;
use super::{SubscriptionError, Subscriptions};
use crate::access::Scope;
use crate::keys;

/// The largest page a list call returns.
pub const MAX_PAGE_SIZE: usize = 1000;
/// The page size when the caller names none.
pub const DEFAULT_PAGE_SIZE: usize = 100;

/// A page of subscriptions.
pub struct Page {
    /// The subscriptions, in key order.
    pub subscriptions: Vec<pb::Subscription>,
    /// Where the next page starts; empty on the last.
    pub next_page_token: String,
}

impl Subscriptions {
    /// Lists subscriptions of one tenant (or all, for an empty tenant), a page at a time.
    pub async fn list(
        &self,
        tenant: &str,
        page_size: u32,
        page_token: &str,
    ) -> Result<Page, SubscriptionError> {
        self.list_within(&Scope::All, tenant, page_size, page_token)
            .await
    }

    /// Lists the subscriptions of `tenants` a page at a time: those of `tenant` when it is
    /// given (none when it lies outside `tenants`), else those of every tenant in `tenants`,
    /// in key order.
    pub async fn list_within(
        &self,
        tenants: &Scope,
        tenant: &str,
        page_size: u32,
        page_token: &str,
    ) -> Result<Page, SubscriptionError> {
        if !tenant.is_empty() {
            herald_core::validate::tenant(tenant)?;
        }
        let size = match page_size as usize {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        // The tenants' key ranges to read, in key order: one prefix, or each scoped tenant's.
        let prefixes: Vec<String> = match (tenant, tenants.names()) {
            ("", None) => vec![keys::SUBSCRIPTIONS.to_owned()],
            ("", Some(names)) => names
                .iter()
                .map(|t| keys::tenant_subscriptions(t))
                .collect(),
            (tenant, _) if tenants.allows(tenant) => vec![keys::tenant_subscriptions(tenant)],
            _ => vec![],
        };
        // A token holds the last key of the previous page: start in the range holding it.
        let last_key = page_token_key(page_token)?;
        let (start, after) = match &last_key {
            None => (0, None),
            Some(last_key) => {
                let index = prefixes
                    .iter()
                    .position(|p| last_key.starts_with(p.as_str()))
                    .ok_or_else(not_from_this_listing)?;
                (index, Some(last_key.as_str()))
            }
        };
        let mut kvs = Vec::new();
        for (i, prefix) in prefixes.iter().enumerate().skip(start) {
            let after = if i == start { after } else { None };
            kvs.extend(
                self.store
                    .list_page(prefix, after, size - kvs.len())
                    .await?,
            );
            if kvs.len() == size {
                break;
            }
        }
        // Within the page's bytes too: the rest comes on the next page.
        let mut bytes = PageBytes::default();
        let full = kvs.iter().position(|kv| !bytes.fits(kv.value.len()));
        if let Some(full) = full {
            kvs.truncate(full);
        }
        let next_page_token = match kvs.last() {
            Some(last) if kvs.len() == size || full.is_some() => {
                URL_SAFE_NO_PAD.encode(last.key.as_bytes())
            }
            _ => String::new(),
        };
        let subscriptions = kvs
            .iter()
            .map(|kv| decode(kv, &self.keyring))
            .collect::<Result<_, _>>()?;
        Ok(Page {
            subscriptions,
            next_page_token,
        })
    }
}

/// The refusal of a page token no listing of this kind handed out.
fn not_from_this_listing() -> ValidationError {
    ValidationError::new("page_token", "is not from this listing")
}

/// The last key of the page before the one `page_token` asks for (`None`: the first page).
/// Tokens are opaque to callers (the key, base64url-encoded), so the store's layout is no part
/// of the API.
fn page_token_key(page_token: &str) -> Result<Option<String>, ValidationError> {
    if page_token.is_empty() {
        return Ok(None);
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(page_token)
        .map_err(|_| not_from_this_listing())?;
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| not_from_this_listing())
}
