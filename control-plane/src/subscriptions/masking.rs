//! What callers see of a subscription's secret values, and how an update keeps the ones it
//! sends back masked: reads without `show_secrets` blank or mask them, so a read sent back
//! as an update must not erase them.

use std::collections::HashMap;

use herald_core::ValidationError;
use herald_core::egress::ProxyUrl;
use herald_proto::v1 as pb;

/// The subscription with its secret values blanked (times kept) and its header values blank
/// (names kept, `header_values_hidden` set), for answers that must not reveal them.
pub fn redact(mut sub: pb::Subscription) -> pb::Subscription {
    for secret in &mut sub.secrets {
        secret.secret.clear();
    }
    if !sub.headers.is_empty() {
        sub.headers.values_mut().for_each(String::clear);
        sub.header_values_hidden = true;
    }
    if let Ok(proxy) = ProxyUrl::parse(&sub.egress_proxy) {
        sub.egress_proxy = proxy.masked();
    }
    if let Some(oauth2) = &mut sub.oauth2 {
        oauth2.client_secret.clear();
    }
    without_write_only(sub)
}

/// The subscription as a rotation answers it: with its signing secrets (the new one is what
/// the caller asked for), and every other secret value hidden as reads without
/// `show_secrets` hide it (header values, the proxy's password, the OAuth2 client secret, the
/// client key).
pub fn with_signing_secrets_only(mut sub: pb::Subscription) -> pb::Subscription {
    let secrets = std::mem::take(&mut sub.secrets);
    pb::Subscription {
        secrets,
        ..redact(sub)
    }
}

/// The subscription without what no read returns, even with `show_secrets`: the client
/// certificate's private key.
pub fn without_write_only(mut sub: pb::Subscription) -> pb::Subscription {
    sub.client_key.clear();
    sub
}

/// The proxy URL an update writes: the one it sends, except that the masked form of the
/// stored URL (as reads without `show_secrets` give it) keeps the stored URL.
pub(super) fn merged_egress_proxy(sent: String, stored: &str) -> String {
    match ProxyUrl::parse(stored) {
        Ok(proxy) if proxy.is_masked_form(&sent) => stored.to_owned(),
        _ => sent,
    }
}

/// The OAuth2 settings an update writes: those it sends, where a blank client secret keeps the
/// stored one, but only for the same token endpoint and client id: a secret is never sent to
/// an endpoint its owner did not give it for. Nor is the token it gets: for a subscription
/// moving to another origin (`to_same_origin` false), a blank secret is refused, as a blank
/// header value is.
pub(super) fn merged_oauth2(
    sent: Option<pb::OAuth2>,
    stored: Option<&pb::OAuth2>,
    to_same_origin: bool,
) -> Result<Option<pb::OAuth2>, ValidationError> {
    let Some(mut sent) = sent else {
        return Ok(None);
    };
    if sent.client_secret.is_empty()
        && let Some(stored) = stored
        && sent.client_id == stored.client_id
        && same_url(&sent.token_url, &stored.token_url)
    {
        if !to_same_origin {
            return Err(ValidationError::new(
                "oauth2.client_secret",
                "is sent blank for a new address: send it again (the access tokens it gets go \
                 only to the origin it was given for)",
            ));
        }
        sent.client_secret.clone_from(&stored.client_secret);
    }
    Ok(Some(sent))
}

/// Whether two URLs are the same address (as parsed, so `HTTPS://Host:443/t` is
/// `https://host/t`).
fn same_url(a: &str, b: &str) -> bool {
    match (url::Url::parse(a), url::Url::parse(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// The headers an update writes: those it sends, where one sent with a blank value keeps its
/// stored value (names compared without case). Reads without `show_secrets` blank the values,
/// so any read-modify-write, by a client that knows `header_values_hidden` or not, keeps them;
/// a header is removed by leaving it out. A stored value goes only where it was given for: to
/// another origin (`to_same_origin` false), a header sent blank is refused, not filled in.
pub(super) fn merged_headers(
    sent: HashMap<String, String>,
    stored: &HashMap<String, String>,
    to_same_origin: bool,
) -> Result<HashMap<String, String>, ValidationError> {
    sent.into_iter()
        .map(|(name, value)| {
            let kept = stored
                .iter()
                .find(|(stored_name, _)| stored_name.eq_ignore_ascii_case(&name))
                .map(|(_, kept)| kept);
            match kept {
                Some(kept) if value.is_empty() && !kept.is_empty() && !to_same_origin => {
                    Err(ValidationError::new(
                        "headers",
                        format!(
                            "{name} is sent without its value for a new address: send the value \
                             again (a stored value goes only to the origin it was given for)"
                        ),
                    ))
                }
                Some(kept) if value.is_empty() => Ok((name, kept.clone())),
                _ => Ok((name, value)),
            }
        })
        .collect()
}

/// Whether two URLs have the same origin (scheme, host and port), as parsed.
pub fn same_origin(a: &str, b: &str) -> bool {
    match (url::Url::parse(a), url::Url::parse(b)) {
        (Ok(a), Ok(b)) => a.origin() == b.origin(),
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use herald_core::signing::SigningSecret;
    use herald_proto::convert::wire_secret;

    use super::*;

    #[test]
    fn a_rotation_answers_its_signing_secrets_and_hides_the_rest() {
        let sub = pb::Subscription {
            secrets: vec![wire_secret(&SigningSecret::generate(), SystemTime::now())],
            headers: [("X-Api-Key".to_owned(), "key-123".to_owned())].into(),
            egress_proxy: "http://user:pw-456@proxy.example:3128".into(),
            oauth2: Some(pb::OAuth2 {
                client_secret: "oauth-789".into(),
                ..Default::default()
            }),
            client_key: "-----BEGIN PRIVATE KEY-----".into(),
            ..Default::default()
        };
        let answer = with_signing_secrets_only(sub.clone());
        assert_eq!(answer.secrets, sub.secrets);
        assert!(answer.secrets[0].secret.starts_with("whsec_"));
        let text = format!("{answer:?}");
        for hidden in ["key-123", "pw-456", "oauth-789", "PRIVATE KEY"] {
            assert!(!text.contains(hidden), "{hidden} in {text}");
        }
        assert!(answer.header_values_hidden);
    }
}
