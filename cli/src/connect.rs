//! gRPC channels to the control plane and the agent, over TCP (`http://host:port`) or a Unix
//! socket (`unix:/path`).

use anyhow::Context;
use herald_proto::bearer::{AuthedChannel, Bearer};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint, Uri};

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
        let channel = match &self.tls {
            Some(tls) if !self.url.starts_with("unix:") => Endpoint::from_shared(self.url.clone())
                .with_context(|| format!("{} is not a valid URL", self.url))?
                .tls_config(tls.clone())
                .with_context(|| format!("TLS settings for {}", self.url))?
                .connect_timeout(std::time::Duration::from_secs(5))
                .connect()
                .await
                .with_context(|| format!("cannot connect to {}", self.url))?,
            _ => channel(&self.url).await?,
        };
        Ok(self.bearer.wrap(channel))
    }
}

/// Connects to `url`.
pub async fn channel(url: &str) -> anyhow::Result<Channel> {
    if let Some(path) = url.strip_prefix("unix:") {
        let path = path.to_owned();
        // The URI is required by the API but unused: the connector dials the socket.
        let endpoint = Endpoint::try_from("http://[::1]:0")?;
        return endpoint
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
    Endpoint::from_shared(url.to_owned())
        .with_context(|| format!("{url} is not a valid URL"))?
        .connect_timeout(std::time::Duration::from_secs(5))
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
        tonic::Code::PermissionDenied => {
            return anyhow::anyhow!(
                "permission denied: {} (ask for a token with a role that may do this)",
                status.message()
            );
        }
        tonic::Code::Unauthenticated => {
            return anyhow::anyhow!(
                "unauthenticated: {} (pass --token or HERALD_TOKEN for the control plane, \
                 --agent-token or HERALD_AGENT_TOKEN for the agent)",
                status.message()
            );
        }
        tonic::Code::ResourceExhausted => "resource exhausted",
        tonic::Code::DeadlineExceeded => "deadline exceeded",
        _ => "error",
    };
    anyhow::anyhow!("{code}: {}", status.message())
}
