//! Why a delivery attempt failed: the `error_kind` the agent reports and the delivery log
//! stores, shows and filters by. One list, so the agent's classifier, the log's filters and the
//! CLI agree on every name.

/// Why an attempt got no usable answer, or was not made; the central log's `error_kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The receiver did not answer in time.
    Timeout,
    /// No connection could be made.
    Connect,
    /// The TLS handshake failed.
    Tls,
    /// The receiver's name could not be resolved.
    Dns,
    /// The egress proxy could not be reached, or refused the tunnel.
    Proxy,
    /// The egress proxy refused its credentials (407).
    ProxyAuth,
    /// No OAuth2 token could be had from the subscription's token endpoint.
    OAuth2,
    /// The request failed otherwise.
    Request,
    /// The body could not be rendered in the subscription's format.
    Render,
    /// The target policy (the SSRF guard) or a tenant check refused the delivery.
    Policy,
    /// The receiver answered with a status that is not 2xx.
    HttpStatus,
    /// No attempt was made (the subscription is gone, disabled, or the event past retention).
    Skipped,
    /// The agent could not read the event from its queue.
    Storage,
    /// The agent failed while making the attempt (a fault in Herald, not in the receiver):
    /// the delivery is retried on its schedule, never at once.
    Internal,
}

impl ErrorKind {
    /// The name the central log and its filters use.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Timeout => "timeout",
            ErrorKind::Connect => "connect",
            ErrorKind::Tls => "tls",
            ErrorKind::Dns => "dns",
            ErrorKind::Proxy => "proxy",
            ErrorKind::ProxyAuth => "proxy_auth",
            ErrorKind::OAuth2 => "oauth2",
            ErrorKind::Request => "request",
            ErrorKind::Render => "render",
            ErrorKind::Policy => "policy",
            ErrorKind::HttpStatus => "http_status",
            ErrorKind::Skipped => "skipped",
            ErrorKind::Storage => "storage",
            ErrorKind::Internal => "internal",
        }
    }
}

impl ErrorKind {
    /// Whether a failure of this kind was the agent's own (it could not read the event, or
    /// failed while making the attempt) or no attempt at all: it says nothing about the
    /// endpoint, so it never counts toward disabling a subscription.
    pub fn is_agent_side(self) -> bool {
        matches!(
            self,
            ErrorKind::Skipped | ErrorKind::Storage | ErrorKind::Internal
        )
    }

    /// Every kind, in the order the help texts list them.
    pub const ALL: [ErrorKind; 14] = [
        ErrorKind::Timeout,
        ErrorKind::Connect,
        ErrorKind::Tls,
        ErrorKind::Dns,
        ErrorKind::HttpStatus,
        ErrorKind::Proxy,
        ErrorKind::ProxyAuth,
        ErrorKind::OAuth2,
        ErrorKind::Request,
        ErrorKind::Render,
        ErrorKind::Policy,
        ErrorKind::Skipped,
        ErrorKind::Storage,
        ErrorKind::Internal,
    ];

    /// The kind a filter names: its log name, or `status` for `http_status`.
    pub fn parse(name: &str) -> Result<ErrorKind, crate::ValidationError> {
        if name == "status" {
            return Ok(ErrorKind::HttpStatus);
        }
        ErrorKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == name)
            .ok_or_else(|| {
                crate::ValidationError::new(
                    "error_kind",
                    format!(
                        "{} is not an error kind (one of {})",
                        crate::validate::quoted(name),
                        ErrorKind::ALL.map(ErrorKind::as_str).join(", ")
                    ),
                )
            })
    }
}

/// A filter on the HTTP status of attempts: one code (`503`) or a class (`5xx`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    /// Exactly this status.
    Code(u16),
    /// Any status of this class: 2 for `2xx`, … 5 for `5xx`.
    Class(u16),
}

impl StatusFilter {
    /// Parses `503` (100 to 599) or `5xx` (`1xx` to `5xx`, any case).
    pub fn parse(text: &str) -> Result<StatusFilter, crate::ValidationError> {
        let bad = || {
            crate::ValidationError::new(
                "status",
                format!(
                    "{} is neither an HTTP status (100 to 599) nor a class such as 5xx",
                    crate::validate::quoted(text)
                ),
            )
        };
        let text = text.trim();
        if let Some(digit) = text.strip_suffix("xx").or_else(|| text.strip_suffix("XX")) {
            return match digit.as_bytes() {
                [d @ b'1'..=b'5'] => Ok(StatusFilter::Class(u16::from(d - b'0'))),
                _ => Err(bad()),
            };
        }
        match text.parse::<u16>() {
            Ok(code) if (100..=599).contains(&code) && text.len() == 3 => {
                Ok(StatusFilter::Code(code))
            }
            _ => Err(bad()),
        }
    }

    /// The lowest and highest status the filter admits.
    pub fn range(self) -> (u16, u16) {
        match self {
            StatusFilter::Code(code) => (code, code),
            StatusFilter::Class(class) => (class * 100, class * 100 + 99),
        }
    }

    /// Whether an attempt with `status` (0: no response) passes.
    pub fn matches(self, status: u32) -> bool {
        let (low, high) = self.range();
        (u32::from(low)..=u32::from(high)).contains(&status)
    }
}

/// Writes the canonical text: `503` or `5xx`.
impl std::fmt::Display for StatusFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StatusFilter::Code(code) => write!(f, "{code}"),
            StatusFilter::Class(class) => write!(f, "{class}xx"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_by_their_log_names() {
        for kind in ErrorKind::ALL {
            assert_eq!(ErrorKind::parse(kind.as_str()), Ok(kind));
        }
        assert_eq!(ErrorKind::parse("status"), Ok(ErrorKind::HttpStatus));
        let err = ErrorKind::parse("timeouts").expect_err("unknown");
        assert!(
            err.reason
                .contains("timeout, connect, tls, dns, http_status"),
            "{err}"
        );
    }

    #[test]
    fn statuses_are_codes_or_classes() {
        assert_eq!(StatusFilter::parse("503"), Ok(StatusFilter::Code(503)));
        assert_eq!(StatusFilter::parse("5xx"), Ok(StatusFilter::Class(5)));
        assert_eq!(StatusFilter::parse("2XX"), Ok(StatusFilter::Class(2)));
        for bad in [
            "", "6xx", "0xx", "05xx", "xx", "99", "600", "5000", "+503", "abc", "5x",
        ] {
            assert!(StatusFilter::parse(bad).is_err(), "{bad}");
        }
        assert!(StatusFilter::Class(5).matches(503));
        assert!(!StatusFilter::Class(5).matches(404));
        assert!(!StatusFilter::Class(5).matches(0));
        assert!(StatusFilter::Code(404).matches(404));
        assert_eq!(StatusFilter::Class(4).to_string(), "4xx");
        assert_eq!(StatusFilter::Class(4).range(), (400, 499));
    }
}
