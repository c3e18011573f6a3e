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

    /// The token itself, if one is set (for checks against the rules tokens follow; never to
    /// be shown).
    pub fn token(&self) -> Option<&str> {
        self.0
            .as_ref()
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
    }

    /// The token an `authorization` header's value presents: `Bearer TOKEN`, the scheme in
    /// any case (RFC 7235); `None` for any other.
    pub fn presented(value: &str) -> Option<&str> {
        let (scheme, token) = value.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim())
            .filter(|token| !token.is_empty())
    }

    /// A command-line parser for tokens ([`TokenParser`]): use it as the flag's
    /// `value_parser`, so that a refused token is never repeated in the error.
    pub fn parser() -> TokenParser {
        TokenParser
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

/// Parses a flag's token as [`Bearer::parse`] does. clap's own errors repeat the value they
/// refuse (`invalid value '<value>' for '--token'`), which would put a token with a stray
/// space on stderr and into CI logs; this one names the flag and the rule only.
#[derive(Clone, Copy, Debug)]
pub struct TokenParser;

impl clap::builder::TypedValueParser for TokenParser {
    type Value = Bearer;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Bearer, clap::Error> {
        value
            .to_str()
            .ok_or(InvalidToken)
            .and_then(Bearer::parse)
            .map_err(|err| {
                let flag = arg.map_or_else(|| "the token".to_owned(), ToString::to_string);
                clap::Error::raw(
                    clap::error::ErrorKind::ValueValidation,
                    format!("invalid value for {flag}: {err} (the value is not shown)\n"),
                )
                .with_cmd(cmd)
            })
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
    fn a_presented_token_is_read_whatever_the_schemes_case() {
        for header in ["Bearer t0k", "bearer t0k", "BEARER  t0k "] {
            assert_eq!(Bearer::presented(header), Some("t0k"), "{header:?}");
        }
        for header in ["Basic dXNlcg==", "Bearer", "Bearer ", "t0k", ""] {
            assert_eq!(Bearer::presented(header), None, "{header:?}");
        }
    }

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

    #[test]
    fn a_refused_token_is_never_repeated_in_the_error() {
        let cmd = clap::Command::new("herald").arg(
            clap::Arg::new("token")
                .long("token")
                .value_parser(Bearer::parser()),
        );
        let err = cmd
            .clone()
            .try_get_matches_from(["herald", "--token", "s3cret-value with-space"])
            .expect_err("refused");
        let text = err.to_string();
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains("--token"), "{text}");
        let ok = cmd
            .try_get_matches_from(["herald", "--token", "tok-1"])
            .expect("accepted");
        assert!(ok.get_one::<Bearer>("token").is_some());
    }
}
