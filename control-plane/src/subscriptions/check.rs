//! The checks a subscription a caller gives passes before it is written: its fields as given,
//! and every address a delivery may connect to, held to the target policy.

use std::time::Duration;

use herald_core::egress::{MASKED_PASSWORD, ProxyUrl};
use herald_core::limits::MAX_DESCRIPTION_LEN;
use herald_core::subscription::MAX_OAUTH2_FIELD_BYTES;
use herald_core::{ValidationError, validate};
use herald_proto::convert::{self, timestamp};
use herald_proto::v1 as pb;

use super::{SubscriptionError, Subscriptions, record};

/// How long the target check waits for DNS.
const DNS_TIMEOUT: Duration = Duration::from_secs(2);

impl Subscriptions {
    /// Checks what a caller gives, `stored` being the record it changes (none: a new one).
    /// The receiver's URL is held to the target policy every time; the OAuth2 token endpoint's
    /// DNS answer and the subscription's own proxy only when new or changed, so a record an
    /// earlier version admitted (an internal proxy the agents allow) still takes other changes.
    /// A host that does not resolve here is admitted: the agent checks the addresses it
    /// connects to at every delivery.
    pub(super) async fn check(
        &self,
        sub: &mut pb::Subscription,
        stored: Option<&pb::Subscription>,
    ) -> Result<(), SubscriptionError> {
        record::clear_storage_only(sub);
        // What a caller gives is held to more than a stored record is read with: a record
        // stored before these checks still delivers, and is refused only when sent again.
        if stored.is_none() {
            validate::tenant_as_given(&sub.tenant)?;
        }
        validate::url_as_given("url", &sub.url)?;
        if let Some(oauth2) = &sub.oauth2 {
            validate::url_as_given("oauth2.token_url", &oauth2.token_url)?;
            for (field, value) in [
                ("oauth2.client_id", &oauth2.client_id),
                ("oauth2.scope", &oauth2.scope),
                ("oauth2.audience", &oauth2.audience),
            ] {
                validate::label(field, value, MAX_OAUTH2_FIELD_BYTES)?;
            }
        }
        validate::shown_text("description", &sub.description, MAX_DESCRIPTION_LEN)?;
        validate::labels_as_given(sub.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
        validate::headers_as_given(sub.headers.keys().map(String::as_str))?;
        if sub.oauth2.is_some()
            && let Some(name) = sub
                .headers
                .keys()
                .find(|n| n.eq_ignore_ascii_case("authorization"))
        {
            return Err(ValidationError::new(
                "headers",
                format!(
                    "header {} is what the OAuth2 client (oauth2) sends its token in: give \
                     one or the other",
                    validate::quoted(name)
                ),
            )
            .into());
        }
        let mut regions = std::collections::BTreeSet::new();
        if let Some(twice) = sub.regions.iter().find(|r| !regions.insert(r.as_str())) {
            return Err(ValidationError::new(
                "regions",
                format!(
                    "region {} is listed more than once",
                    validate::quoted(twice)
                ),
            )
            .into());
        }
        convert::check_given_durations(sub)?;
        let domain = convert::subscription(sub, self.policy.allow_http)?;
        // A masked proxy URL that kept no stored password (another user, host or port, or a
        // new subscription) would make `****` the password.
        if ProxyUrl::parse(&sub.egress_proxy).is_ok_and(|proxy| proxy.has_masked_password()) {
            return Err(ValidationError::new(
                "egress_proxy",
                format!(
                    "carries the masked password {MASKED_PASSWORD}: send the proxy's password \
                     (a masked URL keeps the stored one only for the same user, host and port)"
                ),
            )
            .into());
        }
        // URLs are stored in the form requests go to (`validate::url`).
        sub.url = domain.url.to_string();
        if let (Some(checked), Some(wire)) = (&domain.oauth2, sub.oauth2.as_mut()) {
            wire.token_url = checked.token_url.to_string();
        }
        // Stored as checked: canonical JSON, so reads show one form whatever was written.
        sub.payload_filter = domain
            .payload_filter
            .as_ref()
            .map(|f| f.as_str().to_owned())
            .unwrap_or_default();
        // The client certificate parses, its key matches, and its expiry is recorded.
        sub.client_cert_expires_at = match &domain.client_identity {
            Some(identity) => Some(timestamp(crate::client_certs::pem::check(
                identity.cert_pem(),
                identity.key_pem(),
            )?)),
            None => None,
        };
        // Every address a delivery may connect to, as the agent's policy will check it: the
        // receiver, the OAuth2 token endpoint and the subscription's own proxy.
        let refuse = |field: &'static str| {
            move |err: herald_core::target::TargetError| {
                ValidationError::new(field, err.to_string())
            }
        };
        self.policy.check_url(&domain.url).map_err(refuse("url"))?;
        self.check_resolved("url", &domain.url).await?;
        if let Some(oauth2) = &domain.oauth2 {
            self.policy
                .check_url(&oauth2.token_url)
                .map_err(refuse("oauth2.token_url"))?;
            let same_endpoint = stored
                .and_then(|s| s.oauth2.as_ref())
                .zip(sub.oauth2.as_ref())
                .is_some_and(|(before, now)| before.token_url == now.token_url);
            if !same_endpoint {
                self.check_resolved("oauth2.token_url", &oauth2.token_url)
                    .await?;
            }
        }
        let same_proxy =
            stored.is_some_and(|s| s.egress == sub.egress && s.egress_proxy == sub.egress_proxy);
        if let herald_core::egress::Egress::Proxy(proxy) = &domain.egress
            && !same_proxy
        {
            // A proxy speaks http:// whatever the receivers do: its address alone is checked.
            self.check_host("egress_proxy", proxy.host(), proxy.port())
                .await?;
        }
        Ok(())
    }

    /// Checks what the host of `url` (`field`) resolves to now, when it is a name (the
    /// policy's `check_url` has checked a literal address).
    pub(super) async fn check_resolved(
        &self,
        field: &'static str,
        url: &url::Url,
    ) -> Result<(), ValidationError> {
        match url.host() {
            Some(url::Host::Domain(host)) => {
                let port = url.port_or_known_default().unwrap_or(443);
                self.check_host(field, host, port).await
            }
            _ => Ok(()),
        }
    }

    /// Checks every address `host` (`field`) stands for now: itself when it is an address,
    /// else what it resolves to.
    pub(super) async fn check_host(
        &self,
        field: &'static str,
        host: &str,
        port: u16,
    ) -> Result<(), ValidationError> {
        let addrs = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => resolve(host, port).await,
        };
        for ip in addrs {
            self.policy
                .check_ip(host, ip)
                .map_err(|err| ValidationError::new(field, err.to_string()))?;
        }
        Ok(())
    }
}

/// What `host` resolves to now (nothing when it does not resolve within [`DNS_TIMEOUT`]: a
/// name this replica cannot resolve may still be one the agents can, and they check every
/// address they connect to).
async fn resolve(host: &str, port: u16) -> Vec<std::net::IpAddr> {
    match tokio::time::timeout(DNS_TIMEOUT, tokio::net::lookup_host((host, port))).await {
        Ok(Ok(addrs)) => addrs.map(|addr| addr.ip()).collect(),
        _ => vec![],
    }
}
