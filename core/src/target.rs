//! Which addresses webhooks may be sent to: the guard against server-side request forgery.
//!
//! A subscription's URL is chosen by whoever can create subscriptions, and the request is sent
//! from inside the operator's network, so by default Herald refuses every address that is not
//! a public unicast address: loopback, private (RFC 1918, IPv6 unique-local), link-local
//! (including the cloud metadata address 169.254.169.254), CGNAT (100.64.0.0/10), multicast,
//! documentation and benchmarking ranges, unspecified, broadcast and reserved ranges, the 6to4
//! relay range, local-use NAT64 and SRv6, and IPv6 forms that embed such an IPv4 address
//! (mapped, translated, NAT64, 6to4). An operator allowlist of CIDRs
//! (`--allow-targets`) admits chosen ranges; `http://` needs `--allow-http`.
//!
//! The check runs twice: when a subscription is written (on the URL's literal address or what
//! its host resolves to then) and at every delivery on the addresses actually connected to,
//! so a DNS answer that changes later (DNS rebinding) cannot slip through.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Why a target was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// `http://` without `--allow-http`.
    #[error("http:// targets are not allowed (see --allow-http)")]
    Http,
    /// The address is in a refused range.
    #[error("{host} is a {kind} address ({ip}), refused (see --allow-targets)")]
    Refused {
        /// The URL's host.
        host: String,
        /// The address.
        ip: IpAddr,
        /// Which range: `loopback`, `private`, `link-local`, …
        kind: &'static str,
    },
}

/// What may be delivered to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TargetPolicy {
    /// Admit `http://` URLs.
    pub allow_http: bool,
    /// Admit these ranges even when special.
    pub allowed: Vec<IpNet>,
}

impl TargetPolicy {
    /// A policy from the `--allow-http` and `--allow-targets` settings.
    pub fn new(allow_http: bool, allowed: Vec<IpNet>) -> Self {
        TargetPolicy {
            allow_http,
            allowed,
        }
    }

    /// Checks the URL's scheme and, when its host is a literal address, that address.
    pub fn check_url(&self, url: &url::Url) -> Result<(), TargetError> {
        if url.scheme() == "http" && !self.allow_http {
            return Err(TargetError::Http);
        }
        let literal = match url.host() {
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            _ => None,
        };
        match literal {
            Some(ip) => self.check_ip(url.host_str().unwrap_or_default(), ip),
            None => Ok(()),
        }
    }

    /// Checks one address `host` resolved to.
    pub fn check_ip(&self, host: &str, ip: IpAddr) -> Result<(), TargetError> {
        let Some(kind) = special_kind(ip) else {
            return Ok(());
        };
        let canonical = canonical(ip);
        if self
            .allowed
            .iter()
            .any(|net| net.contains(&ip) || net.contains(&canonical))
        {
            return Ok(());
        }
        Err(TargetError::Refused {
            host: host.to_owned(),
            ip,
            kind,
        })
    }
}

/// Parses one CIDR range or bare address (a /32 or /128), for `--allow-targets`.
pub fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{text:?} is not a CIDR range or an IP address"))
}

/// Parses a comma-separated CIDR list (`127.0.0.0/8,10.1.0.0/16`); a bare address is a /32 or
/// /128.
pub fn parse_allowlist(text: &str) -> Result<Vec<IpNet>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(parse_cidr)
        .collect()
}

/// The IPv4 address an IPv6 address stands for (mapped, translated, NAT64, 6to4, compatible),
/// else the address itself.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => embedded_v4(v6).map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let octets = v6.octets();
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    // IPv4-translated ::ffff:0:a.b.c.d (RFC 2765).
    if s[0..6] == [0, 0, 0, 0, 0xffff, 0] {
        return Some(Ipv4Addr::new(
            octets[12], octets[13], octets[14], octets[15],
        ));
    }
    // NAT64 well-known prefix 64:ff9b::/96.
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        return Some(Ipv4Addr::new(
            octets[12], octets[13], octets[14], octets[15],
        ));
    }
    // 6to4 2002::/16 carries the IPv4 address in bits 16..48.
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(octets[2], octets[3], octets[4], octets[5]));
    }
    // IPv4-compatible ::a.b.c.d (deprecated, still routable by some stacks).
    if s[0..6] == [0, 0, 0, 0, 0, 0] && (s[6] != 0 || s[7] > 1) {
        return Some(Ipv4Addr::new(
            octets[12], octets[13], octets[14], octets[15],
        ));
    }
    None
}

/// The kind of special-purpose range `ip` is in, or `None` for a public unicast address.
pub fn special_kind(ip: IpAddr) -> Option<&'static str> {
    match canonical(ip) {
        IpAddr::V4(v4) => v4_kind(v4),
        IpAddr::V6(v6) => v6_kind(v6),
    }
}

fn v4_kind(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        _ if ip.is_unspecified() => "unspecified",
        _ if ip.is_loopback() => "loopback",
        _ if ip.is_private() => "private",
        (169, 254, _) => "link-local (cloud metadata)",
        (100, 64..=127, _) => "shared (CGNAT)",
        (0, _, _) => "\"this network\"",
        (192, 0, 0) => "IETF protocol",
        (192, 88, 99) => "6to4 relay (deprecated)",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
        (198, 18..=19, _) => "benchmarking",
        (224..=239, _, _) => "multicast",
        (240..=255, _, _) => "reserved",
        _ => return None,
    })
}

fn v6_kind(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    Some(match s[0] {
        _ if ip.is_unspecified() => "unspecified",
        _ if ip.is_loopback() => "loopback",
        0xfc00..=0xfdff => "private (unique local)",
        0xfe80..=0xfebf => "link-local",
        0xfec0..=0xfeff => "site-local",
        0xff00..=0xffff => "multicast",
        0x2001 if s[1] == 0x0db8 => "documentation",
        0x3fff if s[1] < 0x1000 => "documentation",
        // Local-use NAT64 (RFC 8215): a gateway of this network may map it to any IPv4 address.
        0x0064 if s[1] == 0xff9b && s[2] == 1 => "local NAT64",
        0x5f00 => "segment routing (SRv6)",
        0x2001 if s[1] < 0x0200 => "IETF protocol",
        0x0100 if s[1..4] == [0, 0, 0] => "discard",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(policy: &TargetPolicy, url: &str) -> Option<String> {
        policy
            .check_url(&url::Url::parse(url).expect("url"))
            .err()
            .map(|e| e.to_string())
    }

    #[test]
    fn special_addresses_are_refused_by_default() {
        let policy = TargetPolicy::new(true, vec![]);
        for (url, kind) in [
            ("https://127.0.0.1/", "loopback"),
            ("https://10.1.2.3/", "private"),
            ("https://172.16.0.1/", "private"),
            ("https://192.168.1.1/", "private"),
            ("https://169.254.169.254/latest/meta-data", "metadata"),
            ("https://100.64.0.1/", "CGNAT"),
            ("https://0.0.0.0/", "unspecified"),
            ("https://224.0.0.1/", "multicast"),
            ("https://192.0.2.10/", "documentation"),
            ("https://255.255.255.255/", "reserved"),
            ("https://[::1]/", "loopback"),
            ("https://[fd00:ec2::254]/", "unique local"),
            ("https://[fe80::1]/", "link-local"),
            ("https://[2001:db8::1]/", "documentation"),
            // Literal-IP side doors: decimal, hex, mapped, NAT64 and 6to4 forms.
            ("http://2130706433/", "loopback"),
            ("http://0x7f000001/", "loopback"),
            ("http://[::ffff:127.0.0.1]/", "loopback"),
            ("http://[::ffff:a9fe:a9fe]/", "metadata"),
            ("https://[64:ff9b::a00:1]/", "private"),
            ("https://[2002:c0a8:101::1]/", "private"),
            ("https://[::ffff:0:7f00:1]/", "loopback"),
            ("https://[64:ff9b:1::7f00:1]/", "local NAT64"),
            ("https://[3fff::1]/", "documentation"),
            ("https://[5f00::1]/", "segment routing"),
            ("https://192.88.99.1/", "6to4 relay"),
        ] {
            let err = refused(&policy, url).unwrap_or_else(|| panic!("{url} must be refused"));
            assert!(err.contains(kind), "{url}: {err}");
        }
        for url in [
            "https://93.184.215.14/",
            "https://[2606:4700::1111]/",
            "https://shop.example/",
        ] {
            assert_eq!(refused(&policy, url), None, "{url}");
        }
    }

    #[test]
    fn the_allowlist_admits_chosen_ranges_and_http_needs_its_flag() {
        let allowed = parse_allowlist("127.0.0.0/8, 10.1.0.0/16,::1").expect("cidrs");
        let policy = TargetPolicy::new(false, allowed);
        assert_eq!(refused(&policy, "https://127.0.0.1:8443/"), None);
        assert_eq!(
            refused(&policy, "https://[::ffff:127.0.0.1]/"),
            None,
            "mapped forms too"
        );
        assert_eq!(refused(&policy, "https://10.1.200.3/"), None);
        assert!(refused(&policy, "https://10.2.0.1/").is_some());
        assert_eq!(refused(&policy, "https://[::1]/"), None);
        assert!(
            refused(&policy, "http://example.com/")
                .expect("http")
                .contains("--allow-http")
        );
        assert!(parse_allowlist("10.0.0.0/33").is_err());
        assert!(parse_allowlist("nonsense").is_err());
        assert_eq!(parse_allowlist("").expect("empty"), vec![]);
    }
}
