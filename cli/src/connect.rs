//! gRPC channels to the control plane and the agent, over TCP (`http://host:port`) or a Unix
//! socket (`unix:/path`).

use std::time::Duration;

use anyhow::Context;
use herald_proto::bearer::{AuthedChannel, Bearer};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint, Uri};

/// How long the CLI waits for a TCP connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the CLI pings the server while a call is open; a server that does not answer a
/// ping within [`PING_TIMEOUT`] (a host gone, a port that accepts and never speaks gRPC) ends
/// the command with an error instead of holding it forever. A slow call on a live server
/// (a test send, a replay, `deliveries tail`) is not cut short: the server answers pings.
const PING_EVERY: Duration = Duration::from_secs(5);
/// How long the CLI waits for the answer to a ping.
const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// `url` with the CLI's connection settings.
fn endpoint(url: &str) -> anyhow::Result<Endpoint> {
    Ok(Endpoint::from_shared(url.to_owned())
        .with_context(|| format!("{url} is not a valid URL"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(PING_EVERY)
        .keep_alive_timeout(PING_TIMEOUT)
        .keep_alive_while_idle(true))
}

/// Checks the address given for a server (`flag` names where it came from): an `http://`,
/// `https://` or `unix:` URL, and `https://` when TLS settings are given, which is what they
/// are for; a usage error otherwise.
pub fn check_address(url: &str, flag: &str, tls: bool) -> anyhow::Result<()> {
    let scheme = url
        .split_once(':')
        .map(|(scheme, _)| scheme.to_ascii_lowercase());
    match scheme.as_deref() {
        Some("https") | Some("unix") => Ok(()),
        Some("http") if tls => Err(crate::usage::usage(format!(
            "{flag} {url}: TLS settings are given (--tls-ca-file or --tls-cert-file), so use \
             https://"
        ))),
        Some("http") => Ok(()),
        _ => Err(crate::usage::usage(format!(
            "{flag} {url}: use http://host:port, https://host:port or unix:/path"
        ))),
    }
}

/// A server the CLI calls, with the caller's token and TLS settings.
pub struct Server {
    /// `http://host:port`, `https://host:port` or `unix:/path`.
    pub url: String,
    /// The token sent on every call (none when not given).
    pub bearer: Bearer,
    /// TLS (and a client certificate for mutual TLS), when configured.
    pub tls: Option<ClientTlsConfig>,
}

impl Server {
    /// Connects; every call on the channel carries the token.
    pub async fn channel(&self) -> anyhow::Result<AuthedChannel> {
        let tls = herald_proto::client_tls::for_url(&self.url, self.tls.clone());
        let channel = match tls {
            Some(tls) if !self.url.starts_with("unix:") => endpoint(&self.url)?
                .tls_config(tls)
                .with_context(|| format!("TLS settings for {}", self.url))?
                .connect()
                .await
                .map_err(|err| {
                    let hint = tls_hint(&err)
                        .map(|h| format!(" ({h})"))
                        .unwrap_or_default();
                    anyhow::Error::new(err).context(format!("cannot connect to {}{hint}", self.url))
                })?,
            _ => channel(&self.url).await?,
        };
        Ok(self.bearer.wrap(channel))
    }
}

/// What to do about a TLS handshake that failed the way `err` (or one of its causes) says,
/// for the mistakes a `https://` address commonly hides: a server that speaks plain HTTP,
/// and a certificate from a CA the CLI was not given.
fn tls_hint(err: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let mut next = Some(err);
    while let Some(err) = next {
        // An I/O error leaves the error it wraps out of its sources: look inside.
        let inner = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn std::error::Error + 'static));
        for candidate in [Some(err), inner].into_iter().flatten() {
            match candidate.downcast_ref::<rustls::Error>() {
                Some(rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)) => {
                    return Some("the server does not speak TLS at this address: use http://");
                }
                Some(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::UnknownIssuer,
                )) => {
                    return Some(
                        "the server's certificate is from a CA this system does not trust: \
                         give that CA's certificate with --tls-ca-file",
                    );
                }
                Some(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForName
                    | rustls::CertificateError::NotValidForNameContext { .. },
                )) => {
                    return Some(
                        "the server's certificate does not name the host in this address: use \
                         a name it was issued for",
                    );
                }
                _ => {}
            }
        }
        next = err.source();
    }
    None
}

/// Connects to `url`.
pub async fn channel(url: &str) -> anyhow::Result<Channel> {
    if let Some(path) = url.strip_prefix("unix:") {
        let path = path.to_owned();
        // The URI is required by the API but unused: the connector dials the socket.
        return endpoint("http://[::1]:0")?
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }))
            .await
            .with_context(|| format!("cannot connect to {url}"));
    }
    endpoint(url)?
        .connect()
        .await
        .with_context(|| format!("cannot connect to {url}"))
}

/// A readable error for a failed call: the status code in words and the server's message.
pub fn status_error(status: tonic::Status) -> anyhow::Error {
    let code = match status.code() {
        tonic::Code::InvalidArgument => "invalid argument",
        tonic::Code::NotFound => "not found",
        tonic::Code::AlreadyExists => "already exists",
        tonic::Code::FailedPrecondition => "failed precondition",
        tonic::Code::Aborted => "aborted",
        tonic::Code::Unavailable => "unavailable",
        // The server says what was refused and why (a role, a tenant scope, a reserved
        // tenant): no hint here could be right for all of them.
        tonic::Code::PermissionDenied => "permission denied",
        tonic::Code::Unauthenticated => {
            return anyhow::anyhow!(
                "unauthenticated: {} (pass --token or HERALD_TOKEN for the control plane, \
                 --agent-token or HERALD_AGENT_TOKEN for the agent)",
                status.message()
            );
        }
        tonic::Code::Unimplemented => {
            return anyhow::anyhow!(
                "not served at this address: {} (operator commands call the control plane's \
                 gRPC address, --control-plane, 7700 by default; emit calls the agent's, --agent, \
                 7701 by default)",
                or_nothing_said(status.message())
            );
        }
        // A connection that broke mid-call (the server killed or restarted) surfaces as
        // UNKNOWN with the transport's error as its cause, not as an answer.
        tonic::Code::Unknown if std::error::Error::source(&status).is_some() => {
            let cause = std::error::Error::source(&status).map(herald_core::error_text::chain);
            return anyhow::anyhow!(
                "the connection broke during the call: {}: {} (the server may have stopped or \
                 restarted, or it speaks TLS: then use https://; check, then try again: if \
                 the call made a change, it may or may not have been made, so read it back \
                 first)",
                or_nothing_said(status.message()),
                cause.unwrap_or_default()
            );
        }
        tonic::Code::Unknown => {
            return anyhow::anyhow!(
                "unexpected answer: {} (is the address that of Herald's gRPC API?)",
                or_nothing_said(status.message())
            );
        }
        tonic::Code::ResourceExhausted => "resource exhausted",
        tonic::Code::DeadlineExceeded => "deadline exceeded",
        tonic::Code::DataLoss => "damaged data",
        tonic::Code::Internal => "internal error",
        _ => "server error",
    };
    // A transport failure says what broke only in its causes ("http2 error" alone does not).
    match std::error::Error::source(&status) {
        Some(cause) if status.code() == tonic::Code::Unavailable => anyhow::anyhow!(
            "{code}: {}: {} (is the server up, and speaking gRPC on that address?)",
            status.message(),
            herald_core::error_text::chain(cause)
        ),
        // The connection itself failed inside HTTP/2, before any answer: most often plain
        // http:// to a server that speaks TLS.
        Some(cause) if status.code() == tonic::Code::Internal => anyhow::anyhow!(
            "the connection failed: {}: {} (if the server speaks TLS, use https://, with \
             --tls-ca-file unless its certificate is from a CA this system trusts)",
            status.message(),
            herald_core::error_text::chain(cause)
        ),
        _ => anyhow::anyhow!("{code}: {}", status.message()),
    }
}

/// A server's message, or words saying it gave none.
fn or_nothing_said(message: &str) -> &str {
    if message.is_empty() {
        "the server gave no reason"
    } else {
        message
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_connection_is_not_blamed_on_the_address() {
        let broken =
            tonic::Status::from_error(Box::new(std::io::Error::other("connection reset by peer")));
        assert_eq!(broken.code(), tonic::Code::Unknown);
        let text = status_error(broken).to_string();
        assert!(
            text.starts_with("the connection broke during the call")
                && text.contains("connection reset by peer")
                && !text.contains("is the address"),
            "{text}"
        );
        // An UNKNOWN the server itself answered still asks about the address.
        let answered = tonic::Status::unknown("");
        let text = status_error(answered).to_string();
        assert!(
            text.contains("is the address that of Herald's gRPC API"),
            "{text}"
        );
    }
}
