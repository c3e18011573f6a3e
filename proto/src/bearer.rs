//! The client side of API tokens: every call on a channel carries `authorization: Bearer
//! TOKEN` (the CLI's `--token`, the agent's `--control-plane-token`). Without a token calls go
//! out unchanged, for servers that do not check.

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// A channel whose calls carry the caller's token.
pub type AuthedChannel = InterceptedService<Channel, Bearer>;

/// The token was not usable in a header.
#[derive(Debug, thiserror::Error)]
#[error("the token must be printable ASCII without spaces")]
pub struct InvalidToken;

/// Adds the bearer token to every call.
#[derive(Clone, Debug, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    /// Calls with `token`, or unchanged calls for `None` (or an empty token).
    pub fn new(token: Option<&str>) -> Result<Self, InvalidToken> {
        match token.map(str::trim).filter(|t| !t.is_empty()) {
            None => Ok(Bearer(None)),
            Some(token) if token.chars().all(|c| c.is_ascii_graphic()) => {
                let mut value: MetadataValue<Ascii> = format!("Bearer {token}")
                    .parse()
                    .map_err(|_| InvalidToken)?;
                value.set_sensitive(true);
                Ok(Bearer(Some(value)))
            }
            Some(_) => Err(InvalidToken),
        }
    }

    /// Parses a token given on the command line or in the environment.
    pub fn parse(token: &str) -> Result<Self, InvalidToken> {
        Bearer::new(Some(token))
    }

    /// `channel` with this token on every call.
    pub fn wrap(&self, channel: Channel) -> AuthedChannel {
        InterceptedService::new(channel, self.clone())
    }
}

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_goes_into_the_authorization_header() {
        let mut bearer = Bearer::new(Some("tok-0123456789abcdef")).unwrap();
        let request = bearer.call(tonic::Request::new(())).unwrap();
        assert_eq!(
            request.metadata().get("authorization").unwrap(),
            "Bearer tok-0123456789abcdef"
        );
        let mut none = Bearer::new(Some("  ")).unwrap();
        let request = none.call(tonic::Request::new(())).unwrap();
        assert!(request.metadata().get("authorization").is_none());
        assert!(Bearer::new(Some("with space")).is_err());
        assert!(Bearer::new(Some("line\nbreak")).is_err());
    }
}
