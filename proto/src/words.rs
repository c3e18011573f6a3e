//! The words people and JSON use for the API's enums (`json`, `standard`, `v1a`,
//! `delivered`, …): one spelling shared by the CLI's output and the HTTP API.

use crate::v1 as pb;

/// `json` or `xml` (unspecified reads as JSON, as deliveries treat it).
pub fn format(format: i32) -> &'static str {
    match pb::Format::try_from(format) {
        Ok(pb::Format::Xml) => "xml",
        _ => "json",
    }
}

/// `standard` or `raw` (unspecified reads as raw, what records from before envelopes get).
pub fn envelope(envelope: i32) -> &'static str {
    match pb::Envelope::try_from(envelope) {
        Ok(pb::Envelope::Standard) => "standard",
        _ => "raw",
    }
}

/// `v1` (HMAC-SHA256) or `v1a` (ed25519), the Standard Webhooks signature tags.
pub fn signature(scheme: i32) -> &'static str {
    match pb::SignatureScheme::try_from(scheme) {
        Ok(pb::SignatureScheme::Ed25519) => "v1a",
        _ => "v1",
    }
}

/// How a subscription's deliveries leave the agent: `agent` (through the agent's egress proxy,
/// if any), `direct`, or its own proxy's URL as the subscription holds it (masked on reads
/// without secrets).
pub fn egress(sub: &pb::Subscription) -> String {
    match pb::Egress::try_from(sub.egress) {
        Ok(pb::Egress::Direct) => "direct".into(),
        Ok(pb::Egress::Proxy) => sub.egress_proxy.clone(),
        _ => "agent".into(),
    }
}

/// What [`egress`] shows, read back: `agent`, `direct`, or a proxy URL.
pub fn parse_egress(
    word: &str,
) -> Result<herald_core::egress::Egress, herald_core::egress::ProxyUrlError> {
    use herald_core::egress::{Egress, ProxyUrl};
    match word.trim() {
        "agent" | "" => Ok(Egress::AgentDefault),
        "direct" => Ok(Egress::Direct),
        url => ProxyUrl::parse(url).map(Egress::Proxy),
    }
}

/// The scheme a signature tag names.
pub fn parse_signature(word: &str) -> Option<pb::SignatureScheme> {
    match word {
        "v1" => Some(pb::SignatureScheme::HmacSha256),
        "v1a" => Some(pb::SignatureScheme::Ed25519),
        _ => None,
    }
}

/// Every outcome with its word.
const OUTCOMES: [(pb::Outcome, &str); 4] = [
    (pb::Outcome::Delivered, "delivered"),
    (pb::Outcome::Retrying, "retrying"),
    (pb::Outcome::Failed, "failed"),
    (pb::Outcome::Skipped, "skipped"),
];

/// `delivered`, `retrying`, `failed`, `skipped`, or `unknown`.
pub fn outcome(outcome: i32) -> &'static str {
    OUTCOMES
        .iter()
        .find(|(o, _)| *o as i32 == outcome)
        .map_or("unknown", |(_, word)| word)
}

/// The outcome a word names.
pub fn parse_outcome(word: &str) -> Option<pb::Outcome> {
    OUTCOMES.iter().find(|(_, w)| *w == word).map(|(o, _)| *o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_read_back_as_what_they_name() {
        for (o, word) in OUTCOMES {
            assert_eq!(outcome(o as i32), word);
            assert_eq!(parse_outcome(word), Some(o));
        }
        assert_eq!(outcome(0), "unknown");
        assert_eq!(parse_outcome("unknown"), None);
        for scheme in [
            pb::SignatureScheme::HmacSha256,
            pb::SignatureScheme::Ed25519,
        ] {
            assert_eq!(parse_signature(signature(scheme as i32)), Some(scheme));
        }
        assert_eq!(format(pb::Format::Xml as i32), "xml");
        assert_eq!(format(0), "json");
        assert_eq!(envelope(pb::Envelope::Standard as i32), "standard");
        assert_eq!(envelope(0), "raw");
    }
}
