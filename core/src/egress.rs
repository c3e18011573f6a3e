//! Egress: how an agent's deliveries leave the network. Receivers that accept traffic only from
//! known addresses are reached through an HTTP proxy with a fixed address (the agent's
//! `--egress-proxy`, or a subscription's own); the agent still resolves and checks each target
//! itself and asks the proxy to `CONNECT` to the checked address, so a proxy is never a way
//! around the target policy.

use std::fmt;

use base64::Engine as _;

/// The longest proxy URL accepted.
pub const MAX_PROXY_URL_BYTES: usize = 2048;
/// What stands for a proxy password where it is not shown.
pub const MASKED_PASSWORD: &str = "****";

/// Why a proxy URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyUrlError {
    /// Not a URL.
    #[error("not a URL: {0}")]
    Syntax(String),
    /// Longer than [`MAX_PROXY_URL_BYTES`].
    #[error("longer than {MAX_PROXY_URL_BYTES} bytes")]
    TooLong,
    /// Only `http://` proxies are supported (the tunnel carries TLS to the receiver).
    #[error("scheme {0}: the proxy must be http://host:port")]
    Scheme(String),
    /// No host.
    #[error("no host")]
    NoHost,
    /// A path, query or fragment: a proxy URL names a host and port only.
    #[error("a proxy URL names host and port only, without a path or query")]
    Path,
}

/// An HTTP proxy, `http://[user:password@]host[:port]` (port 80 when omitted). Its password is
/// never shown by `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl {
    host: String,
    port: u16,
    credentials: Option<Credentials>,
}

#[derive(Clone, PartialEq, Eq)]
struct Credentials {
    user: String,
    password: String,
}

impl ProxyUrl {
    /// Parses and checks a proxy URL.
    pub fn parse(text: &str) -> Result<Self, ProxyUrlError> {
        if text.len() > MAX_PROXY_URL_BYTES {
            return Err(ProxyUrlError::TooLong);
        }
        let url = url::Url::parse(text).map_err(|e| ProxyUrlError::Syntax(e.to_string()))?;
        if url.scheme() != "http" {
            return Err(ProxyUrlError::Scheme(url.scheme().to_owned()));
        }
        let host = match url.host() {
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            Some(host) => host.to_string(),
            None => return Err(ProxyUrlError::NoHost),
        };
        if host.is_empty() {
            return Err(ProxyUrlError::NoHost);
        }
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            return Err(ProxyUrlError::Path);
        }
        let decode = |part: &str| {
            percent_decode(part).ok_or_else(|| ProxyUrlError::Syntax("bad %-escape".into()))
        };
        let credentials = if url.username().is_empty() && url.password().is_none() {
            None
        } else {
            Some(Credentials {
                user: decode(url.username())?,
                password: decode(url.password().unwrap_or_default())?,
            })
        };
        Ok(ProxyUrl {
            host,
            port: url.port_or_known_default().unwrap_or(80),
            credentials,
        })
    }

    /// The proxy's host name or address (an IPv6 address without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The `Proxy-Authorization` value (Basic) when the URL carries credentials.
    pub fn authorization(&self) -> Option<String> {
        self.credentials.as_ref().map(|c| {
            let pair = format!("{}:{}", c.user, c.password);
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            )
        })
    }

    /// The URL with the password in full, for sealing at rest and nothing else.
    pub fn expose(&self) -> String {
        self.render(true)
    }

    /// The URL with its password replaced by [`MASKED_PASSWORD`]: what reads without secrets,
    /// logs and errors show.
    pub fn masked(&self) -> String {
        self.render(false)
    }

    /// Whether its password is [`MASKED_PASSWORD`]: a masked URL sent where no stored one
    /// stands behind it, which would otherwise become the password.
    pub fn has_masked_password(&self) -> bool {
        self.credentials
            .as_ref()
            .is_some_and(|c| c.password == MASKED_PASSWORD)
    }

    /// Whether `text` is this URL as [`ProxyUrl::masked`] shows it: an update that sends the
    /// masked form back keeps the stored password.
    pub fn is_masked_form(&self, text: &str) -> bool {
        let Ok(sent) = ProxyUrl::parse(text) else {
            return false;
        };
        match (&self.credentials, &sent.credentials) {
            (Some(mine), Some(theirs)) => {
                theirs.password == MASKED_PASSWORD
                    && theirs.user == mine.user
                    && sent.host == self.host
                    && sent.port == self.port
            }
            _ => false,
        }
    }

    fn render(&self, with_password: bool) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match &self.credentials {
            None => format!("http://{host}:{}", self.port),
            Some(c) => format!(
                "http://{}:{}@{host}:{}",
                percent_encode(&c.user),
                if with_password {
                    percent_encode(&c.password)
                } else {
                    MASKED_PASSWORD.to_owned()
                },
                self.port
            ),
        }
    }
}

impl fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProxyUrl({})", self.masked())
    }
}

/// How one subscription's deliveries leave the agent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Egress {
    /// Through the agent's `--egress-proxy` when it has one, directly otherwise.
    #[default]
    AgentDefault,
    /// Directly, even when the agent has a proxy.
    Direct,
    /// Through this proxy.
    Proxy(ProxyUrl),
}

impl Egress {
    /// The proxy a delivery goes through, given the agent's own.
    pub fn proxy<'a>(&'a self, agent: Option<&'a ProxyUrl>) -> Option<&'a ProxyUrl> {
        match self {
            Egress::AgentDefault => agent,
            Egress::Direct => None,
            Egress::Proxy(proxy) => Some(proxy),
        }
    }
}

fn percent_decode(text: &str) -> Option<String> {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .ok()
        .map(|decoded| decoded.into_owned())
}

fn percent_encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proxy_url_is_parsed_and_its_password_never_shown() {
        let proxy = ProxyUrl::parse("http://egress:s%40cret@proxy.internal:3128").unwrap();
        assert_eq!(proxy.host(), "proxy.internal");
        assert_eq!(proxy.port(), 3128);
        assert_eq!(
            proxy.authorization().as_deref(),
            Some("Basic ZWdyZXNzOnNAY3JldA==")
        );
        assert_eq!(proxy.masked(), "http://egress:****@proxy.internal:3128");
        assert_eq!(format!("{proxy} {proxy:?}").matches("cret").count(), 0);
        assert_eq!(ProxyUrl::parse(&proxy.expose()).unwrap(), proxy);
        assert!(proxy.is_masked_form("http://egress:****@proxy.internal:3128"));
        assert!(proxy.is_masked_form("http://egress:%2A%2A%2A%2A@proxy.internal:3128"));
        assert!(!proxy.is_masked_form("http://other:****@proxy.internal:3128"));
        assert!(!proxy.is_masked_form("http://egress:other@proxy.internal:3128"));
        assert!(!proxy.has_masked_password());
        assert!(
            ProxyUrl::parse(&proxy.masked())
                .unwrap()
                .has_masked_password()
        );

        let plain = ProxyUrl::parse("http://[::1]").unwrap();
        assert_eq!((plain.host(), plain.port()), ("::1", 80));
        assert_eq!(plain.authorization(), None);
        assert_eq!(plain.masked(), "http://[::1]:80");
        assert!(!plain.is_masked_form(&plain.masked()));
    }

    #[test]
    fn proxy_urls_other_than_http_host_port_are_refused() {
        for (text, error) in [
            ("https://proxy:3128", ProxyUrlError::Scheme("https".into())),
            (
                "socks5://proxy:1080",
                ProxyUrlError::Scheme("socks5".into()),
            ),
            ("http://proxy:3128/path", ProxyUrlError::Path),
            ("http://proxy:3128/?q=1", ProxyUrlError::Path),
        ] {
            assert_eq!(ProxyUrl::parse(text), Err(error), "{text}");
        }
        assert!(matches!(
            ProxyUrl::parse("proxy:3128"),
            Err(ProxyUrlError::Scheme(_) | ProxyUrlError::Syntax(_))
        ));
        assert_eq!(
            ProxyUrl::parse(&format!("http://{}", "a".repeat(MAX_PROXY_URL_BYTES))),
            Err(ProxyUrlError::TooLong)
        );
    }

    #[test]
    fn a_subscription_picks_its_proxy_over_the_agents() {
        let agent = ProxyUrl::parse("http://agent-proxy:3128").unwrap();
        let own = ProxyUrl::parse("http://own-proxy:3128").unwrap();
        assert_eq!(Egress::AgentDefault.proxy(Some(&agent)), Some(&agent));
        assert_eq!(Egress::AgentDefault.proxy(None), None);
        assert_eq!(Egress::Direct.proxy(Some(&agent)), None);
        assert_eq!(Egress::Proxy(own.clone()).proxy(Some(&agent)), Some(&own));
    }
}
