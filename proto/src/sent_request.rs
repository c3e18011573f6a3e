//! The requests the delivery log keeps as sent ([`pb::SentRequest`]): the rules that the agent
//! reporting them and the control plane storing them share.

use crate::v1 as pb;

/// The value shown instead of a header's when the value is a credential: the signature, an
/// authorization, and the subscription's own headers.
pub const MASKED: &str = "(masked)";

/// Keeps at most `limit` bytes of the request's body (`body_size` still tells the whole size),
/// or drops the request when `limit` is 0 (the log keeps no bodies).
pub fn bound(request: &mut Option<pb::SentRequest>, limit: usize) {
    if limit == 0 {
        *request = None;
    } else if let Some(request) = request {
        let whole = request.body_size.max(request.body.len() as u64);
        request.body.truncate(limit);
        request.body_size = whole;
    }
}

/// Whether the request's body was cut to the log's limit.
pub fn is_cut(request: &pb::SentRequest) -> bool {
    request.body_size > request.body.len() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: &[u8]) -> Option<pb::SentRequest> {
        Some(pb::SentRequest {
            body: body.to_vec(),
            body_size: body.len() as u64,
            ..Default::default()
        })
    }

    #[test]
    fn bodies_are_cut_to_the_limit_and_keep_their_whole_size() {
        let mut small = request(b"{\"a\":1}");
        bound(&mut small, 64);
        let small = small.expect("kept");
        assert_eq!(small.body, b"{\"a\":1}");
        assert!(!is_cut(&small));

        let mut large = request(&[b'x'; 100]);
        bound(&mut large, 10);
        let large = large.expect("kept");
        assert_eq!(large.body.len(), 10);
        assert_eq!(large.body_size, 100);
        assert!(is_cut(&large));
        // Cutting again (the control plane after the agent) keeps the whole size.
        let mut again = Some(large);
        bound(&mut again, 5);
        assert_eq!(again.as_ref().map(|r| r.body_size), Some(100));

        let mut off = request(b"{}");
        bound(&mut off, 0);
        assert!(off.is_none());
    }
}
