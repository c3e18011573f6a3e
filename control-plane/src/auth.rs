//! Who may call what: bearer tokens with roles, checked on every request before it reaches a
//! service.
//!
//! Tokens come from `--auth-tokens FILE` (or `HERALD_AUTH_TOKENS`): one `ROLE TOKEN` pair a
//! line, `#` starts a comment. Roles:
//! - `read`: the read-only operator API (get and list subscriptions, their health, delivery
//!   logs, agents), without secret values;
//! - `admin`: everything `read` may, plus every change and secret values;
//! - `agent`: the agent streams (config down, attempt reports up) and nothing else, since the
//!   config stream carries signing secrets.
//!
//! Health checks and reflection stay open, so load balancers and probes need no token. With no
//! tokens configured the API is open (development), and the control plane says so at start.
//!
//! Tokens are kept only as SHA-256 digests and looked up by digest, so a lookup's timing does
//! not depend on how much of a guess matches.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context, Poll};

use sha2::{Digest, Sha256};

/// The longest token accepted.
const MAX_TOKEN_LEN: usize = 512;
/// The shortest token accepted (guessable tokens are refused at load).
const MIN_TOKEN_LEN: usize = 16;
/// The most tokens a file holds.
const MAX_TOKENS: usize = 10_000;

/// What a caller may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The read-only operator API.
    Read,
    /// The whole operator API.
    Admin,
    /// The agent streams.
    Agent,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Admin => "admin",
            Role::Agent => "agent",
        }
    }

    /// Whether this role may call a method that needs `needed`.
    fn covers(self, needed: Role) -> bool {
        self == needed || (self == Role::Admin && needed == Role::Read)
    }
}

/// Where the tokens come from (flags of the control plane).
#[derive(Clone, Default, clap::Args)]
pub struct TokenSource {
    /// File of API tokens, one `ROLE TOKEN` a line (roles: read, admin, agent). Without it
    /// (or HERALD_AUTH_TOKENS) the API is open.
    #[arg(
        long = "auth-tokens",
        visible_alias = "auth-tokens-file",
        value_name = "FILE",
        env = "HERALD_AUTH_TOKENS_FILE"
    )]
    pub auth_tokens_file: Option<PathBuf>,
    /// The tokens themselves, in the same format, lines or `;`-separated (prefer the
    /// environment variable HERALD_AUTH_TOKENS: flags show in process listings).
    #[arg(
        long = "auth-tokens-value",
        env = "HERALD_AUTH_TOKENS",
        hide_env_values = true
    )]
    pub auth_tokens: Option<String>,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("auth_tokens_file", &self.auth_tokens_file)
            .field(
                "auth_tokens",
                &self.auth_tokens.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl TokenSource {
    /// Loads the tokens; `None` when none are configured (the API is open).
    pub fn load(&self) -> Result<Option<Tokens>, AuthError> {
        let mut text = String::new();
        if let Some(path) = &self.auth_tokens_file {
            text = read(path)?;
        }
        if let Some(inline) = &self.auth_tokens {
            text.push('\n');
            text.push_str(&inline.replace(';', "\n"));
        }
        if self.auth_tokens_file.is_none() && self.auth_tokens.is_none() {
            return Ok(None);
        }
        Tokens::parse(&text).map(Some)
    }
}

fn read(path: &Path) -> Result<String, AuthError> {
    std::fs::read_to_string(path).map_err(|source| AuthError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Why the tokens could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The file could not be read.
    #[error("auth tokens file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A line is malformed.
    #[error("auth tokens line {line}: {reason}")]
    Invalid {
        /// The line number, from 1.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// The accepted tokens and their roles.
#[derive(Clone)]
pub struct Tokens {
    by_digest: Arc<HashMap<[u8; 32], Role>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} tokens)", self.by_digest.len())
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Tokens {
    /// Parses `ROLE TOKEN` lines.
    pub fn parse(text: &str) -> Result<Tokens, AuthError> {
        let mut by_digest = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            let invalid = |reason: String| AuthError::Invalid {
                line: index + 1,
                reason,
            };
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let mut fields = line.split_whitespace();
            let (Some(role), Some(token), None) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(invalid("expected `ROLE TOKEN`".into()));
            };
            let role = match role {
                "read" => Role::Read,
                "admin" => Role::Admin,
                "agent" => Role::Agent,
                other => {
                    return Err(invalid(format!(
                        "unknown role {other:?}: use read, admin or agent"
                    )));
                }
            };
            if !(MIN_TOKEN_LEN..=MAX_TOKEN_LEN).contains(&token.len()) {
                return Err(invalid(format!(
                    "a token must be {MIN_TOKEN_LEN} to {MAX_TOKEN_LEN} characters"
                )));
            }
            if !token.chars().all(|c| c.is_ascii_graphic()) {
                return Err(invalid("a token must be printable ASCII".into()));
            }
            if by_digest.insert(digest(token), role).is_some() {
                return Err(invalid("the token appears twice".into()));
            }
            if by_digest.len() > MAX_TOKENS {
                return Err(invalid(format!("more than {MAX_TOKENS} tokens")));
            }
        }
        if by_digest.is_empty() {
            return Err(AuthError::Invalid {
                line: 0,
                reason: "no token given".into(),
            });
        }
        Ok(Tokens {
            by_digest: Arc::new(by_digest),
        })
    }

    /// The role of the caller presenting `authorization` (an `authorization` header value).
    fn role(&self, authorization: Option<&[u8]>) -> Result<Role, tonic::Status> {
        let Some(value) = authorization else {
            return Err(tonic::Status::unauthenticated(
                "missing bearer token: pass --token or set HERALD_TOKEN",
            ));
        };
        let token = std::str::from_utf8(value)
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(|| {
                tonic::Status::unauthenticated("the authorization header is not `Bearer TOKEN`")
            })?;
        self.by_digest
            .get(&digest(token))
            .copied()
            .ok_or_else(|| tonic::Status::unauthenticated("the token is not recognised"))
    }
}

/// The role a method needs; `None` for the open services (health, reflection).
pub fn needed_role(path: &str) -> Option<Role> {
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or((path, ""));
    match service {
        "grpc.health.v1.Health"
        | "grpc.reflection.v1.ServerReflection"
        | "grpc.reflection.v1alpha.ServerReflection" => None,
        "herald.v1.AgentControl" => Some(Role::Agent),
        "herald.v1.Subscriptions" => match method {
            "GetSubscription" | "ListSubscriptions" | "GetSubscriptionHealth" => Some(Role::Read),
            _ => Some(Role::Admin),
        },
        "herald.v1.Deliveries" => match method {
            "ListAttempts" | "TailAttempts" => Some(Role::Read),
            _ => Some(Role::Admin),
        },
        "herald.v1.EventTypes" => match method {
            "GetEventType" | "ListEventTypes" => Some(Role::Read),
            _ => Some(Role::Admin),
        },
        "herald.v1.Agents" => match method {
            "ListAgents" => Some(Role::Read),
            _ => Some(Role::Admin),
        },
        // Anything not named here needs the most trusted role.
        _ => Some(Role::Admin),
    }
}

/// Whether the caller of a request may see secret values: with tokens configured only
/// `admin` may; with the API open, anyone. Services call this for `show_secrets`.
pub fn may_see_secrets<T>(request: &tonic::Request<T>) -> bool {
    match request.extensions().get::<Caller>() {
        Some(Caller(role)) => *role == Role::Admin,
        None => true,
    }
}

/// The authenticated caller's role, put into each request's extensions.
#[derive(Clone, Copy, Debug)]
pub struct Caller(pub Role);

/// The tower layer that checks every request (a no-op without tokens).
#[derive(Clone, Debug)]
pub struct AuthLayer {
    tokens: Option<Tokens>,
}

impl AuthLayer {
    /// Checks requests against `tokens`; `None` lets everything through.
    pub fn new(tokens: Option<Tokens>) -> Self {
        AuthLayer { tokens }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            tokens: self.tokens.clone(),
        }
    }
}

/// The checking service made by [`AuthLayer`].
#[derive(Clone, Debug)]
pub struct Auth<S> {
    inner: S,
    tokens: Option<Tokens>,
}

impl<S, B, R> tower::Service<http::Request<B>> for Auth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    R: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures_util::future::Either<
        S::Future,
        std::future::Ready<Result<http::Response<R>, S::Error>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        use futures_util::future::Either;
        let Some(tokens) = &self.tokens else {
            return Either::Left(self.inner.call(request));
        };
        let Some(needed) = needed_role(request.uri().path()) else {
            return Either::Left(self.inner.call(request));
        };
        let authorization = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        let refusal = match tokens.role(authorization) {
            Ok(role) if role.covers(needed) => {
                request.extensions_mut().insert(Caller(role));
                return Either::Left(self.inner.call(request));
            }
            Ok(role) => tonic::Status::permission_denied(format!(
                "role {} may not call {}; it needs {}",
                role.name(),
                request.uri().path(),
                needed.name()
            )),
            Err(status) => status,
        };
        Either::Right(std::future::ready(Ok(refusal.into_http())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADMIN: &str = "admin-token-0123456789";
    const READER: &str = "read-token-0123456789";

    fn tokens() -> Tokens {
        Tokens::parse(&format!(
            "# operators\nadmin {ADMIN}\nread {READER}  # dashboards\n\nagent agent-token-0123456789\n"
        ))
        .unwrap()
    }

    fn bearer(token: &str) -> Vec<u8> {
        format!("Bearer {token}").into_bytes()
    }

    #[test]
    fn tokens_map_to_their_roles() {
        let tokens = tokens();
        assert_eq!(tokens.role(Some(&bearer(ADMIN))).unwrap(), Role::Admin);
        assert_eq!(tokens.role(Some(&bearer(READER))).unwrap(), Role::Read);
        let missing = tokens.role(None).unwrap_err();
        assert_eq!(missing.code(), tonic::Code::Unauthenticated);
        assert!(missing.message().contains("--token"));
        let wrong = tokens
            .role(Some(&bearer("nope-0123456789abcdef")))
            .unwrap_err();
        assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
        let not_bearer = tokens.role(Some(ADMIN.as_bytes())).unwrap_err();
        assert_eq!(not_bearer.code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn methods_need_the_documented_roles() {
        assert_eq!(needed_role("/grpc.health.v1.Health/Check"), None);
        assert_eq!(
            needed_role("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
            None
        );
        assert_eq!(
            needed_role("/herald.v1.Subscriptions/ListSubscriptions"),
            Some(Role::Read)
        );
        assert_eq!(
            needed_role("/herald.v1.Subscriptions/CreateSubscription"),
            Some(Role::Admin)
        );
        assert_eq!(
            needed_role("/herald.v1.Deliveries/TailAttempts"),
            Some(Role::Read)
        );
        assert_eq!(
            needed_role("/herald.v1.AgentControl/StreamConfig"),
            Some(Role::Agent)
        );
        assert_eq!(needed_role("/herald.v1.Unknown/Thing"), Some(Role::Admin));
        assert_eq!(needed_role("garbage"), Some(Role::Admin));
        assert!(Role::Admin.covers(Role::Read));
        assert!(!Role::Read.covers(Role::Admin));
        assert!(!Role::Admin.covers(Role::Agent));
        assert!(!Role::Agent.covers(Role::Read));
    }

    #[test]
    fn malformed_token_files_are_refused_with_the_line() {
        for (text, why) in [
            ("", "no token"),
            ("admin", "ROLE TOKEN"),
            ("root abcdefghijklmnopqrstuvwxyz", "unknown role"),
            ("admin short", "16 to"),
            ("admin abcdefghijklmnop extra", "ROLE TOKEN"),
        ] {
            let err = Tokens::parse(text).unwrap_err().to_string();
            assert!(err.contains(why), "{text:?}: {err}");
        }
        let twice = format!("admin {ADMIN}\nread {ADMIN}");
        let err = Tokens::parse(&twice).unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("twice"), "{err}");
    }

    #[test]
    fn the_source_reads_a_file_and_the_environment_form() {
        assert!(TokenSource::default().load().unwrap().is_none());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens");
        std::fs::write(&file, format!("admin {ADMIN}\n")).unwrap();
        let source = TokenSource {
            auth_tokens_file: Some(file),
            auth_tokens: Some(format!("read {READER};agent agent-token-0123456789")),
        };
        let tokens = source.load().unwrap().unwrap();
        assert_eq!(tokens.by_digest.len(), 3);
    }
}
