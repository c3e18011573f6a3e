//! Size and count limits on everything Herald accepts from callers.
//!
//! Every limit lives here so that the control plane, the agent and the CLI refuse exactly the same
//! inputs. Lengths are in bytes (UTF-8) unless a name says otherwise; for the ASCII-only fields
//! (tenants, ids, event types) bytes and characters are the same thing.

/// Longest tenant name. Tenants appear inside etcd keys, so they are kept short.
pub const MAX_TENANT_LEN: usize = 128;
/// Longest event type, such as `order.created`.
pub const MAX_EVENT_TYPE_LEN: usize = 128;
/// Longest event id; ids are idempotency keys and travel in the `webhook-id` header.
pub const MAX_EVENT_ID_LEN: usize = 128;
/// Longest subscription URL.
pub const MAX_URL_LEN: usize = 2048;
/// Most event-type patterns one subscription may list.
pub const MAX_EVENT_PATTERNS: usize = 64;
/// Longest subscription description.
pub const MAX_DESCRIPTION_LEN: usize = 1024;
/// Most custom headers one subscription may add to its requests.
pub const MAX_HEADERS: usize = 32;
/// Longest value of one custom header.
pub const MAX_HEADER_VALUE_LEN: usize = 1024;
/// Default largest event payload; operators may configure another limit.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 256 * 1024;
/// Most attributes one event may carry.
pub const MAX_ATTRIBUTES: usize = 32;
/// Longest attribute key.
pub const MAX_ATTRIBUTE_KEY_LEN: usize = 64;
/// Longest attribute value.
pub const MAX_ATTRIBUTE_VALUE_LEN: usize = 1024;
/// Longest ordering key.
pub const MAX_ORDERING_KEY_LEN: usize = 256;
/// Most labels one subscription may carry.
pub const MAX_LABELS: usize = 32;
