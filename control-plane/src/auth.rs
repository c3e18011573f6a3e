//! Who may call what: bearer tokens with roles, checked on every request before it reaches a
//! service.
//!
//! Tokens come from `--auth-tokens FILE` (or `HERALD_AUTH_TOKENS`): one token a line,
//! `ROLE TOKEN [name=NAME] [tenants=T1,T2] [regions=R1,R2]`, `#` starts a comment (rules in
//! [`herald_core::token_file`]). `name=` is
//! what the caller is recorded as (default: the role and the start of the token's digest);
//! `tenants=` limits the token to those tenants ([`crate::access`]; without it, every tenant);
//! `regions=` limits an agent token to agents of those regions. Roles:
//! - `read`: the read-only operator API (get and list subscriptions, their health, delivery
//!   logs, the audit log, agents), without secret values;
//! - `admin`: everything `read` may, plus every change and secret values;
//! - `agent`: the agent streams (config down, attempt reports up) and nothing else, since the
//!   config stream carries signing secrets.
//!
//! Health checks and reflection stay open, so load balancers and probes need no token. With no
//! tokens configured the API is open (development), and the control plane says so at start.
//!
//! Tokens are kept only as SHA-256 digests and looked up by digest, so a lookup's timing does
//! not depend on how much of a guess matches.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context, Poll};

use herald_core::token_file::{self, MAX_TOKENS, TokenDigest};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

mod certificates;

pub use certificates::CertificateIdentities;

use crate::access::{Caller, Identity, Role, Scope};

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
    /// File mapping client certificates (their subject common name) to identities, one
    /// `ROLE COMMON_NAME [name=NAME] [tenants=T1,T2] [regions=R1,R2]` a line; needs
    /// --tls-client-ca-file. A call without a bearer token is then its certificate's holder.
    #[arg(
        long = "auth-identities",
        value_name = "FILE",
        env = "HERALD_AUTH_IDENTITIES_FILE"
    )]
    pub auth_identities_file: Option<PathBuf>,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("auth_tokens_file", &self.auth_tokens_file)
            .field(
                "auth_tokens",
                &self.auth_tokens.as_ref().map(|_| "<redacted>"),
            )
            .field("auth_identities_file", &self.auth_identities_file)
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
        // The file's lines, then the value's entries: each named where it was given.
        let file_lines = text.lines().count();
        if let Some(inline) = &self.auth_tokens {
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&inline.replace(';', "\n"));
        }
        if self.auth_tokens_file.is_none() && self.auth_tokens.is_none() {
            return Ok(None);
        }
        let place = |n: usize| match &self.auth_tokens_file {
            Some(path) if n <= file_lines => format!("{} line {n}", path.display()),
            _ => format!(
                "HERALD_AUTH_TOKENS (or --auth-tokens-value) entry {}",
                n - file_lines
            ),
        };
        Tokens::parse_placed(&text, &place).map(Some)
    }

    /// Loads the certificate identities; `None` when none are configured. No identity may
    /// share a name with a token's.
    pub fn load_identities(&self) -> Result<Option<CertificateIdentities>, AuthError> {
        let Some(path) = &self.auth_identities_file else {
            return Ok(None);
        };
        let identities = CertificateIdentities::parse(&read(path)?).map_err(|err| match err {
            AuthError::Invalid { place, reason } => AuthError::Invalid {
                place: format!("{} {place}", path.display()),
                reason,
            },
            other => other,
        })?;
        if let Some(tokens) = self.load()? {
            let names: BTreeSet<&str> = identities.names().collect();
            if let Some(shared) = tokens.names().find(|name| names.contains(name)) {
                return Err(AuthError::NameTwice(shared.to_owned()));
            }
        }
        Ok(Some(identities))
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
    /// A token and a certificate identity share a name: the audit log could not tell them
    /// apart.
    #[error("the name {0:?} is given to a token and to a certificate identity")]
    NameTwice(String),
    /// Certificate identities without mutual TLS: no certificate would ever be presented.
    #[error(
        "--auth-identities needs --tls-client-ca-file: clients present certificates only under mutual TLS"
    )]
    IdentitiesNeedClientCa,
    /// The file could not be read.
    #[error("auth tokens file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A line is malformed.
    #[error("{place}: {reason}")]
    Invalid {
        /// Where: the line (from 1), and the file or variable holding it when known.
        place: String,
        /// What is wrong.
        reason: String,
    },
    /// Only blank lines and comments were given.
    #[error(
        "no token given: the tokens file and HERALD_AUTH_TOKENS hold only blank lines and comments"
    )]
    NoTokens,
}

/// The accepted tokens and the identities they stand for.
#[derive(Clone)]
pub struct Tokens {
    by_digest: Arc<HashMap<TokenDigest, Arc<Identity>>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} tokens)", self.by_digest.len())
    }
}

/// The identity of `role` that a line's options (`name=`, `tenants=`, `regions=`) give,
/// named `default_name` without `name=`.
fn identity<'a>(
    role: Role,
    default_name: String,
    options: impl Iterator<Item = &'a str>,
) -> Result<Identity, String> {
    let mut identity = Identity {
        name: default_name,
        role,
        tenants: Scope::All,
        regions: Scope::All,
    };
    let mut seen = BTreeSet::new();
    for option in options {
        let Some((key, value)) = option.split_once('=') else {
            return Err(format!(
                "{}: use name=NAME, tenants=T1,T2 or regions=R1,R2",
                token_file::option_named(option)
            ));
        };
        if !seen.insert(key) {
            return Err(format!("{key}= is given twice"));
        }
        match key {
            "name" => {
                token_file::check_name(value)?;
                identity.name = value.to_owned();
            }
            "tenants" => {
                identity.tenants = scope(value, herald_core::validate::tenant)?;
            }
            "regions" if role == Role::Agent => {
                identity.regions = scope(value, herald_core::validate::region)?;
            }
            "regions" => return Err("regions= applies to agent tokens only".into()),
            _ => {
                return Err(format!(
                    "{}: use name=, tenants= or regions=",
                    token_file::option_named(option)
                ));
            }
        }
    }
    Ok(identity)
}

/// Parses the lines of a tokens or identities file, `ROLE KEY [name=NAME] [tenants=T1,T2]
/// [regions=R1,R2]` (a `#` at the start or after a blank starts a comment), into identities by the key `admit` makes of each
/// line's role and `KEY` (`key_name` in messages), with the name they have without `name=`.
/// `place` names line `n` (from 1) in errors.
fn parse_lines<K: std::hash::Hash + Eq>(
    text: &str,
    key_name: &str,
    place: &dyn Fn(usize) -> String,
    admit: impl Fn(Role, &str) -> Result<(K, String), String>,
) -> Result<HashMap<K, Arc<Identity>>, AuthError> {
    let mut by_key = HashMap::new();
    let mut names = BTreeSet::new();
    for (index, line) in text.lines().enumerate() {
        let invalid = |reason: String| AuthError::Invalid {
            place: place(index + 1),
            reason,
        };
        let Some(line) = token_file::content(line) else {
            continue;
        };
        let mut fields = line.split_whitespace();
        let (Some(role), Some(key)) = (fields.next(), fields.next()) else {
            return Err(invalid(format!(
                "expected `ROLE {key_name} [name=NAME] [tenants=T1,T2]`"
            )));
        };
        let role = parse_role(role).map_err(invalid)?;
        let (key, default_name) = admit(role, key).map_err(invalid)?;
        if by_key.contains_key(&key) {
            return Err(invalid(format!("the same {key_name} appears twice")));
        }
        let identity = identity(role, default_name, fields).map_err(invalid)?;
        if !names.insert(identity.name.clone()) {
            return Err(invalid(format!(
                "the name {:?} is given twice",
                identity.name
            )));
        }
        by_key.insert(key, Arc::new(identity));
        if by_key.len() > MAX_TOKENS {
            return Err(invalid(format!("more than {MAX_TOKENS} entries")));
        }
    }
    Ok(by_key)
}

/// A role by its name in the files.
fn parse_role(text: &str) -> Result<Role, String> {
    match text {
        "read" => Ok(Role::Read),
        "admin" => Ok(Role::Admin),
        "agent" => Ok(Role::Agent),
        // A token written where the role goes must not be shown: only a word is quoted.
        other if token_file::is_word(other) => {
            Err(format!("unknown role {other:?}: use read, admin or agent"))
        }
        _ => Err("the line must start with its role: read, admin or agent".into()),
    }
}

/// A comma-separated list of names, each checked by `check`.
fn scope(
    value: &str,
    check: fn(&str) -> Result<(), herald_core::validate::ValidationError>,
) -> Result<Scope, String> {
    token_file::scope_names(value, check).map(Scope::Only)
}

impl Tokens {
    /// Parses `ROLE TOKEN [name=NAME] [tenants=T1,T2] [regions=R1,R2]` lines.
    pub fn parse(text: &str) -> Result<Tokens, AuthError> {
        Self::parse_placed(text, &|n| format!("line {n}"))
    }

    /// As [`Tokens::parse`], with `place` naming line `n` in errors.
    fn parse_placed(text: &str, place: &dyn Fn(usize) -> String) -> Result<Tokens, AuthError> {
        let by_digest = parse_lines(text, "TOKEN", place, |role, token| {
            token_file::check_token(token)?;
            let digest = token_file::digest(token);
            Ok((digest, token_file::default_name(role.name(), &digest)))
        })?;
        if by_digest.is_empty() {
            return Err(AuthError::NoTokens);
        }
        Ok(Tokens {
            by_digest: Arc::new(by_digest),
        })
    }

    /// The names of the tokens' identities.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_digest
            .values()
            .map(|identity| identity.name.as_str())
    }

    /// The identity of the caller presenting `authorization` (an `authorization` header
    /// value).
    fn identity(&self, authorization: Option<&[u8]>) -> Result<Arc<Identity>, tonic::Status> {
        let Some(value) = authorization else {
            return Err(tonic::Status::unauthenticated(
                "missing bearer token: send `authorization: Bearer TOKEN`",
            ));
        };
        let token = std::str::from_utf8(value)
            .ok()
            .and_then(herald_proto::bearer::Bearer::presented)
            .ok_or_else(|| {
                tonic::Status::unauthenticated("the authorization header is not `Bearer TOKEN`")
            })?;
        self.by_digest
            .get(&token_file::digest(token))
            .cloned()
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
            "ListAttempts" | "TailAttempts" | "GetSentRequests" => Some(Role::Read),
            _ => Some(Role::Admin),
        },
        "herald.v1.EventTypes" => match method {
            "GetEventType" | "ListEventTypes" => Some(Role::Read),
            _ => Some(Role::Admin),
        },
        "herald.v1.Audit" => Some(Role::Read),
        "herald.v1.Agents" => match method {
            "ListAgents" => Some(Role::Read),
            _ => Some(Role::Admin),
        },
        // Anything not named here needs the most trusted role.
        _ => Some(Role::Admin),
    }
}

/// Who may call: the tokens and the holders of client certificates the control plane knows;
/// shared by the gRPC layer and the HTTP API.
#[derive(Clone, Debug, Default)]
pub struct Authenticator {
    tokens: Option<Tokens>,
    certificates: Option<CertificateIdentities>,
}

impl Authenticator {
    /// Checks callers against `tokens` and the holders of client certificates in
    /// `certificates`; with neither, the API is open.
    pub fn new(tokens: Option<Tokens>, certificates: Option<CertificateIdentities>) -> Self {
        Authenticator {
            tokens,
            certificates,
        }
    }

    /// Whether the API is open (no tokens, no certificate identities).
    pub fn is_open(&self) -> bool {
        self.tokens.is_none() && self.certificates.is_none()
    }

    /// The identity of the caller of `path` (with the request's `headers` and `extensions`)
    /// if it may do what needs `needed`; `None` while the API is open.
    pub fn authorize(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        extensions: &http::Extensions,
        needed: Role,
    ) -> Result<Option<Arc<Identity>>, tonic::Status> {
        if self.is_open() {
            return Ok(None);
        }
        let identity = self.caller(headers, extensions)?;
        if !identity.role.covers(needed) {
            return Err(tonic::Status::permission_denied(format!(
                "role {} may not call {path}; it needs {}",
                identity.role.name(),
                needed.name()
            )));
        }
        Ok(Some(identity))
    }

    /// Who calls: the token's identity when the request carries one (or no certificate
    /// identity is configured), else the client certificate's holder.
    fn caller(
        &self,
        headers: &http::HeaderMap,
        extensions: &http::Extensions,
    ) -> Result<Arc<Identity>, tonic::Status> {
        let authorization = headers
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        match (&self.tokens, &self.certificates, authorization) {
            (Some(tokens), _, Some(_)) | (Some(tokens), None, None) => {
                tokens.identity(authorization)
            }
            (None, _, Some(_)) => Err(tonic::Status::unauthenticated(
                "this control plane takes no tokens: present a client certificate listed in \
                 its --auth-identities",
            )),
            (_, Some(certificates), None) => extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|tls| tls.peer_certs())
                .and_then(|chain| certificates.identity(&chain))
                .ok_or_else(|| {
                    tonic::Status::unauthenticated(
                        "no bearer token, and no client certificate whose subject is listed \
                         in --auth-identities",
                    )
                }),
            (None, None, None) => Err(tonic::Status::unauthenticated("no identity")),
        }
    }
}

/// The tower layer that checks every gRPC request (a no-op while the API is open).
#[derive(Clone, Debug)]
pub struct AuthLayer {
    authenticator: Authenticator,
}

impl AuthLayer {
    /// Checks requests with `authenticator`.
    pub fn new(authenticator: Authenticator) -> Self {
        AuthLayer { authenticator }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            authenticator: self.authenticator.clone(),
        }
    }
}

/// The checking service made by [`AuthLayer`].
#[derive(Clone, Debug)]
pub struct Auth<S> {
    inner: S,
    authenticator: Authenticator,
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
        let Some(needed) = needed_role(request.uri().path()) else {
            return Either::Left(self.inner.call(request));
        };
        let authorized = self.authenticator.authorize(
            request.uri().path(),
            request.headers(),
            request.extensions(),
            needed,
        );
        match authorized {
            Ok(identity) => {
                if let Some(identity) = identity {
                    request.extensions_mut().insert(Caller(identity));
                }
                Either::Left(self.inner.call(request))
            }
            Err(refusal) => Either::Right(std::future::ready(Ok(refusal.into_http()))),
        }
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
        assert_eq!(
            tokens.identity(Some(&bearer(ADMIN))).unwrap().role,
            Role::Admin
        );
        assert_eq!(
            tokens.identity(Some(&bearer(READER))).unwrap().role,
            Role::Read
        );
        let missing = tokens.identity(None).unwrap_err();
        assert_eq!(missing.code(), tonic::Code::Unauthenticated);
        assert!(missing.message().contains("authorization: Bearer"));
        let wrong = tokens
            .identity(Some(&bearer("nope-0123456789abcdef")))
            .unwrap_err();
        assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
        let not_bearer = tokens.identity(Some(ADMIN.as_bytes())).unwrap_err();
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
            ("SECRET-0123456789abcdef admin", "must start with its role"),
            ("admin short", "16 to"),
            ("admin abcdefghijklmnop extra", "not an option"),
            (
                "admin abcdefghijklmnop colour=red",
                "unknown option colour=",
            ),
            ("admin abcdefghijklmnop tenants=", "tenant"),
            ("admin abcdefghijklmnop tenants=a/b", "'/'"),
            ("admin abcdefghijklmnop tenants=a tenants=b", "twice"),
            ("admin abcdefghijklmnop regions=eu", "agent tokens only"),
            ("admin abcdefghijklmnop name=", "name="),
            ("admin abcdefghijklmnop name=has/slash", "name="),
            // A token holding '#' was cut there, leaving an all-tenant token of its start.
            ("read abcdefghijklmnop#qrsTUV tenants=shop-a", "'#'"),
            // Options before the token: the token would have been read as an option.
            (
                "admin name=operator-console-admin SECRET-0123456789abcdef",
                "the token must come before the options",
            ),
            (
                "admin abcdefghijklmnop SECRET-0123456789abcdef",
                "not an option",
            ),
        ] {
            let err = Tokens::parse(text).unwrap_err().to_string();
            assert!(err.contains(why), "{text:?}: {err}");
            assert!(!err.contains("SECRET") && !err.contains("qrsTUV"), "{err}");
        }
        let twice = format!("admin {ADMIN}\nread {ADMIN}");
        let err = Tokens::parse(&twice).unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("twice"), "{err}");
        let same_name = format!("admin {ADMIN} name=ops\nread {READER} name=ops");
        let err = Tokens::parse(&same_name).unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("\"ops\""), "{err}");
    }

    #[test]
    fn tokens_carry_a_name_and_a_scope() {
        let tokens = Tokens::parse(&format!(
            "admin {ADMIN} name=shop-a-ops tenants=shop-a,shop-c\n\
             agent agent-token-0123456789 tenants=shop-a regions=eu,us\n\
             read {READER}\n"
        ))
        .unwrap();
        let admin = tokens.identity(Some(&bearer(ADMIN))).unwrap();
        assert_eq!(admin.name, "shop-a-ops");
        assert!(admin.sees("shop-a") && admin.sees("shop-c") && !admin.sees("shop-b"));
        assert!(admin.regions.is_all());
        let agent = tokens
            .identity(Some(&bearer("agent-token-0123456789")))
            .unwrap();
        assert!(agent.regions.allows("eu") && !agent.regions.allows("ap"));
        assert!(agent.sees("shop-a") && !agent.sees("shop-c"));
        // Without name= the name tells the role and not the token.
        let reader = tokens.identity(Some(&bearer(READER))).unwrap();
        assert!(reader.name.starts_with("read-") && reader.name.len() == 13);
        assert!(!reader.name.contains(READER));
        assert!(reader.tenants.is_all());
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
            auth_identities_file: None,
        };
        let tokens = source.load().unwrap().unwrap();
        assert_eq!(tokens.by_digest.len(), 3);

        // A mistake is named where it was made: the file's line, or the value's entry.
        let bad_value = TokenSource {
            auth_tokens: Some(format!("read {READER};admin short")),
            ..source.clone()
        };
        let err = bad_value.load().unwrap_err().to_string();
        assert!(
            err.starts_with("HERALD_AUTH_TOKENS (or --auth-tokens-value) entry 2:"),
            "{err}"
        );
        let alone = TokenSource {
            auth_tokens_file: None,
            auth_tokens: Some("admin short".into()),
            auth_identities_file: None,
        };
        let err = alone.load().unwrap_err().to_string();
        assert!(err.contains("entry 1:"), "{err}");
        let bad_file = dir.path().join("bad");
        std::fs::write(&bad_file, format!("# ops\nadmin {ADMIN}\nadmin short")).unwrap();
        let in_file = TokenSource {
            auth_tokens_file: Some(bad_file.clone()),
            ..source
        };
        let err = in_file.load().unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "{} line 3: a token must be 16 to 512 characters",
                bad_file.display()
            )
        );
    }
}
