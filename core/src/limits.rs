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
/// The highest number an attempt of one delivery may carry: far past any retry schedule (51
/// attempts at most) and the replays that may follow it, and far from where counting on
/// would overflow.
pub const MAX_ATTEMPT_NUMBER: u32 = 1_000_000;
/// Most event-type patterns one subscription may list.
pub const MAX_EVENT_PATTERNS: usize = 64;
/// Longest subscription description.
pub const MAX_DESCRIPTION_LEN: usize = 1024;
/// Most custom headers one subscription may add to its requests.
pub const MAX_HEADERS: usize = 32;
/// Longest value of one custom header.
pub const MAX_HEADER_VALUE_LEN: usize = 1024;
/// Longest name of a subscription's custom header, in bytes.
pub const MAX_HEADER_NAME_LEN: usize = 256;
/// Default largest event payload; operators may configure another limit.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 256 * 1024;
/// The largest payload limit an operator may configure: webhooks far beyond this belong in a
/// link to the data, not in the request.
pub const MAX_PAYLOAD_LIMIT: usize = 16 * 1024 * 1024;

/// The bytes of items one page of a list answer holds, about: a page ends before the first
/// item that would go past it (its first item always fits). So an answer stays well under the
/// 4 MiB message that gRPC clients accept by default, whatever page size was asked for; the
/// rest comes on the next page.
pub const MAX_PAGE_BYTES: usize = 2 * 1024 * 1024;

/// The bytes of a page's items so far, against [`MAX_PAGE_BYTES`].
#[derive(Debug, Default)]
pub struct PageBytes {
    used: usize,
    items: usize,
}

impl PageBytes {
    /// Counts an item of `len` bytes into the page if it fits (the first item always does);
    /// false when the page is full and the item belongs on the next one.
    pub fn fits(&mut self, len: usize) -> bool {
        if self.items > 0 && self.used.saturating_add(len) > MAX_PAGE_BYTES {
            return false;
        }
        self.used = self.used.saturating_add(len);
        self.items += 1;
        true
    }
}

/// Parses a configured payload limit (1 byte to [`MAX_PAYLOAD_LIMIT`]).
pub fn parse_payload_limit(text: &str) -> Result<usize, String> {
    parse_bytes_in(text, 1..=MAX_PAYLOAD_LIMIT)
}

/// Parses a configured number of bytes that must lie in `range` (a flag's value).
pub fn parse_bytes_in(text: &str, range: std::ops::RangeInclusive<usize>) -> Result<usize, String> {
    let bytes: usize = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of bytes"))?;
    if range.contains(&bytes) {
        Ok(bytes)
    } else {
        Err(format!(
            "must be {} to {} bytes",
            range.start(),
            range.end()
        ))
    }
}

/// The request body bytes the delivery log keeps of each delivery by default
/// (`--log-body-limit`).
pub const DEFAULT_LOG_BODY_LIMIT: usize = 64 * 1024;
/// The largest `--log-body-limit`: a report carrying a request this large goes in a report
/// batch of its own, well under the 4 MiB a gRPC server reads in one message.
pub const MAX_LOG_BODY_LIMIT: usize = 1024 * 1024;

/// Parses a configured log body limit (0, which keeps no bodies, to [`MAX_LOG_BODY_LIMIT`]).
pub fn parse_log_body_limit(text: &str) -> Result<usize, String> {
    let bytes: usize = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of bytes"))?;
    if bytes <= MAX_LOG_BODY_LIMIT {
        Ok(bytes)
    } else {
        Err(format!(
            "must be 0 (keep no bodies) to {MAX_LOG_BODY_LIMIT} bytes"
        ))
    }
}
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

/// Longest response excerpt, and longest error text, kept with an attempt in the delivery log.
pub const MAX_ATTEMPT_TEXT_LEN: usize = 4096;
/// Most attempts one report batch (agent → control plane) carries.
pub const MAX_REPORT_BATCH: usize = 1000;
/// Most encoded bytes of attempts one report batch carries (a report larger than that goes in
/// a batch of its own). The control plane's decoder keeps, for each report stream, a buffer the
/// size of the largest batch the stream has sent until the stream ends (tonic's decoder never
/// gives capacity back), so this bounds what each connected agent costs a replica; 512 KiB is
/// still hundreds of attempts a commit.
pub const MAX_REPORT_BATCH_BYTES: usize = 512 * 1024;

/// Makes an attempt's excerpt or error text one every delivery log keeps: NUL characters (a
/// receiver's or token endpoint's answer may hold them; PostgreSQL's text refuses them) shown
/// as U+FFFD, then cut to [`MAX_ATTEMPT_TEXT_LEN`] bytes at a character boundary.
pub fn bound_attempt_text(text: &mut String) {
    if text.contains('\0') {
        *text = text.replace('\0', "\u{FFFD}");
    }
    if text.len() > MAX_ATTEMPT_TEXT_LEN {
        let mut end = MAX_ATTEMPT_TEXT_LEN;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_takes_items_until_its_bytes_are_spent_and_always_its_first() {
        let mut page = PageBytes::default();
        assert!(
            page.fits(MAX_PAGE_BYTES * 3),
            "the first item, however large"
        );
        assert!(!page.fits(1));
        let mut page = PageBytes::default();
        assert!(page.fits(0), "an empty first item");
        assert!(page.fits(MAX_PAGE_BYTES));
        assert!(!page.fits(1), "one byte past the page");
        let mut page = PageBytes::default();
        assert!(page.fits(MAX_PAGE_BYTES / 2));
        assert!(page.fits(MAX_PAGE_BYTES / 2));
        assert!(!page.fits(1));
    }

    #[test]
    fn payload_limits_are_bounded() {
        assert_eq!(parse_payload_limit("262144"), Ok(262_144));
        assert_eq!(parse_payload_limit("16777216"), Ok(MAX_PAYLOAD_LIMIT));
        assert!(parse_payload_limit("0").is_err());
        assert!(parse_payload_limit("16777217").is_err());
        assert!(parse_payload_limit("1MiB").is_err());
        assert_eq!(parse_log_body_limit("0"), Ok(0));
        assert_eq!(parse_log_body_limit("1048576"), Ok(MAX_LOG_BODY_LIMIT));
        assert!(parse_log_body_limit("1048577").is_err());
        assert!(parse_log_body_limit("-1").is_err());
    }

    #[test]
    fn attempt_texts_are_cut_at_a_character_boundary() {
        let mut ascii = "a".repeat(MAX_ATTEMPT_TEXT_LEN + 10);
        bound_attempt_text(&mut ascii);
        assert_eq!(ascii.len(), MAX_ATTEMPT_TEXT_LEN);
        // 'é' is two bytes: the cut falls inside one and backs off to its start.
        let mut accented = format!("a{}", "é".repeat(MAX_ATTEMPT_TEXT_LEN));
        bound_attempt_text(&mut accented);
        assert_eq!(accented.len(), MAX_ATTEMPT_TEXT_LEN - 1);
        let mut short = String::from("fine");
        bound_attempt_text(&mut short);
        assert_eq!(short, "fine");
    }

    #[test]
    fn attempt_texts_keep_no_nul() {
        let mut answer = String::from("bad\0\u{FFFD}\u{FFFD} nul body\0");
        bound_attempt_text(&mut answer);
        assert_eq!(answer, "bad\u{FFFD}\u{FFFD}\u{FFFD} nul body\u{FFFD}");
        // Shown as three bytes each, and still cut to the limit.
        let mut nuls = "\0".repeat(MAX_ATTEMPT_TEXT_LEN);
        bound_attempt_text(&mut nuls);
        assert!(nuls.len() <= MAX_ATTEMPT_TEXT_LEN && !nuls.contains('\0'));
    }
}
