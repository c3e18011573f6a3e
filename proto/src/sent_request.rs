//! The requests the delivery log keeps as sent ([`pb::SentRequest`]): the rules that the agent
//! reporting them and the control plane storing them share.

use crate::v1 as pb;

/// The value shown instead of a header's when the value is a credential: the signature, an
/// authorization, and the subscription's own headers.
pub const MASKED: &str = "(masked)";
/// The most headers of a request the log keeps.
pub const MAX_HEADERS: usize = 64;
/// The longest header name or value, and URL, the log keeps (longer ones are cut).
pub const MAX_FIELD_LEN: usize = 8 * 1024;

/// Headers whose values are credentials wherever they come from.
const CREDENTIALS: [&str; 3] = ["webhook-signature", "authorization", "proxy-authorization"];

/// Keeps at most `limit` bytes of the request's body (`body_size` still tells the whole size),
/// or drops the request when `limit` is 0 (the log keeps no bodies). Whoever reported it, the
/// rest is bounded too: at most [`MAX_HEADERS`] headers, names, values and the URL cut to
/// [`MAX_FIELD_LEN`] with no control character but tabs (which no HTTP header holds), and the
/// credentials' values masked.
pub fn bound(request: &mut Option<pb::SentRequest>, limit: usize) {
    if limit == 0 {
        *request = None;
        return;
    }
    let Some(request) = request else {
        return;
    };
    let whole = request.body_size.max(request.body.len() as u64);
    request.body.truncate(limit);
    request.body_size = whole;
    request.headers.truncate(MAX_HEADERS);
    for header in &mut request.headers {
        bound_text(&mut header.name);
        if CREDENTIALS
            .iter()
            .any(|c| header.name.eq_ignore_ascii_case(c))
        {
            MASKED.clone_into(&mut header.value);
        } else {
            bound_text(&mut header.value);
        }
    }
    bound_text(&mut request.url);
    bound_text(&mut request.method);
}

/// Cuts `text` to [`MAX_FIELD_LEN`] bytes at a character boundary, without control
/// characters but tabs: no request line or header an HTTP client sends holds one, and a
/// line break in a name or value would show as a header of its own.
fn bound_text(text: &mut String) {
    if text.chars().any(|c| c.is_control() && c != '\t') {
        text.retain(|c| !c.is_control() || c == '\t');
    }
    if text.len() > MAX_FIELD_LEN {
        let mut end = MAX_FIELD_LEN;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
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

    #[test]
    fn whatever_is_reported_the_rest_is_bounded_and_credentials_masked() {
        let header = |name: &str, value: &str| pb::Header {
            name: name.into(),
            value: value.into(),
        };
        let mut reported = Some(pb::SentRequest {
            url: "u".repeat(MAX_FIELD_LEN + 10),
            headers: [
                header("Authorization", "Bearer t0ken"),
                header("webhook-signature", "v1,abc"),
                header("x-note", "a\0b"),
                header("x-forged\nx-extra", "c\r\nd\te"),
            ]
            .into_iter()
            .chain((0..100).map(|i| header(&format!("x-{i}"), "v")))
            .collect(),
            method: "P\0OST".into(),
            ..Default::default()
        });
        bound(&mut reported, 1024);
        let kept = reported.expect("kept");
        assert_eq!(kept.url.len(), MAX_FIELD_LEN);
        assert_eq!(kept.headers.len(), MAX_HEADERS);
        assert_eq!(kept.headers[0].value, MASKED);
        assert_eq!(kept.headers[1].value, MASKED);
        assert_eq!(kept.headers[2].value, "ab");
        // No line break makes a header of its own when the request is shown.
        assert_eq!(kept.headers[3].name, "x-forgedx-extra");
        assert_eq!(kept.headers[3].value, "cd\te");
        assert_eq!(kept.method, "POST");
    }
}
