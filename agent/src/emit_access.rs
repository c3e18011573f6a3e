//! Who may call `Emit`. The agent is a local service: by default it listens on loopback or on
//! a Unix socket (mode 0660, so only the agent's user and group may connect). Listening on any
//! other address needs both `--allow-remote-emit` and an Emit token, which every `Emit` call
//! must then present as `authorization: Bearer TOKEN`. A token can also be required on a local
//! listener. Health checks and reflection stay open.
//!
//! Tokens come from `--emit-token` (one token, every tenant the agent serves) and from
//! `--emit-tokens FILE`, one token a line, `TOKEN [name=NAME] [tenants=T1,T2]` (`#` starts a
//! comment): an agent on a shared node gives each application a token of its own tenants, so
//! one application cannot emit as another's. An event of a tenant its token does not name is
//! refused with `PERMISSION_DENIED`.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use herald_core::token_file::{self, MAX_TOKENS, TokenDigest};

use crate::listen::ListenAddr;

/// The default mode of the Unix socket: read and write for the agent's user and group.
pub const DEFAULT_SOCKET_MODE: u32 = 0o660;

/// Settings for who may reach `Emit`.
#[derive(Clone, clap::Args)]
pub struct EmitAccess {
    /// Allow --listen on an address other than loopback (also needs --emit-token).
    #[arg(long, env = "HERALD_ALLOW_REMOTE_EMIT")]
    pub allow_remote_emit: bool,
    /// Token every Emit call must present (`authorization: Bearer TOKEN`), for every tenant;
    /// a token (or --emit-tokens) is required when listening beyond loopback.
    #[arg(long, env = "HERALD_EMIT_TOKEN", hide_env_values = true)]
    pub emit_token: Option<String>,
    /// File of Emit tokens, one `TOKEN [name=NAME] [tenants=T1,T2]` a line: each token may emit
    /// only for its tenants (all without tenants=). Calls must present one of them.
    #[arg(
        long = "emit-tokens",
        value_name = "FILE",
        env = "HERALD_EMIT_TOKENS_FILE"
    )]
    pub emit_tokens_file: Option<PathBuf>,
    /// File mode of the Unix socket, in octal.
    #[arg(long, env = "HERALD_SOCKET_MODE", default_value = "660", value_parser = parse_mode)]
    pub socket_mode: u32,
}

impl Default for EmitAccess {
    fn default() -> Self {
        EmitAccess {
            allow_remote_emit: false,
            emit_token: None,
            emit_tokens_file: None,
            socket_mode: DEFAULT_SOCKET_MODE,
        }
    }
}

impl std::fmt::Debug for EmitAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmitAccess")
            .field("allow_remote_emit", &self.allow_remote_emit)
            .field(
                "emit_token",
                &self.emit_token.as_ref().map(|_| "<redacted>"),
            )
            .field("emit_tokens_file", &self.emit_tokens_file)
            .field("socket_mode", &format_args!("{:o}", self.socket_mode))
            .finish()
    }
}

fn parse_mode(text: &str) -> Result<u32, String> {
    let mode = u32::from_str_radix(text.trim_start_matches("0o"), 8)
        .map_err(|_| format!("{text:?} is not an octal file mode such as 660"))?;
    if mode > 0o777 {
        return Err(format!("{text:?} is not a file mode (at most 777)"));
    }
    Ok(mode)
}

impl EmitAccess {
    /// Refuses a listen address beyond loopback unless remote emit is allowed and protected by
    /// a token; refuses a token that cannot be sent in a header.
    pub fn check(&self, listen: &ListenAddr) -> Result<(), String> {
        if let Some(token) = &self.emit_token {
            token_file::check_token(token).map_err(|reason| format!("emit-token: {reason}"))?;
        }
        let ListenAddr::Tcp(addr) = listen else {
            return Ok(());
        };
        if addr.ip().is_loopback() {
            return Ok(());
        }
        if !self.allow_remote_emit {
            return Err(format!(
                "listen={listen} is not a loopback address: Emit is local by default; pass \
                 --allow-remote-emit and --emit-token (or --emit-tokens) to accept events from \
                 the network"
            ));
        }
        if self.emit_token.is_none() && self.emit_tokens_file.is_none() {
            return Err(format!(
                "listen={listen} accepts events from the network: --emit-token or \
                 --emit-tokens is required"
            ));
        }
        Ok(())
    }

    /// The check for each `Emit` call, with the tokens of `--emit-token` or `--emit-tokens`
    /// (not both: a shared token beside scoped ones would still emit for every tenant).
    pub fn guard(&self) -> Result<EmitGuard, EmitTokensError> {
        if self.emit_token.is_some() && self.emit_tokens_file.is_some() {
            return Err(EmitTokensError::Both);
        }
        let mut grants = HashMap::new();
        if let Some(token) = &self.emit_token {
            token_file::check_token(token).map_err(|reason| EmitTokensError::Flag { reason })?;
            let digest = token_file::digest(token);
            grants.insert(
                digest,
                Arc::new(EmitGrant {
                    name: "emit-token".into(),
                    tenants: None,
                }),
            );
        }
        if let Some(path) = &self.emit_tokens_file {
            let bytes = std::fs::read(path).map_err(|source| EmitTokensError::Io {
                path: path.clone(),
                source,
            })?;
            let invalid = |line: usize, reason: String| EmitTokensError::Invalid {
                path: path.clone(),
                line,
                reason,
            };
            let text = String::from_utf8(bytes).map_err(|err| {
                let line = 1 + err.as_bytes()[..err.utf8_error().valid_up_to()]
                    .iter()
                    .filter(|b| **b == b'\n')
                    .count();
                invalid(line, "is not UTF-8 text".into())
            })?;
            let from_file = parse_tokens(&text).map_err(|err| invalid(err.line, err.reason))?;
            if from_file.is_empty() {
                return Err(invalid(0, "no token given".into()));
            }
            grants.extend(from_file);
        }
        Ok(EmitGuard {
            grants: (!grants.is_empty()).then(|| Arc::new(grants)),
        })
    }
}

/// Why the Emit tokens could not be used.
#[derive(Debug, thiserror::Error)]
pub enum EmitTokensError {
    /// `--emit-token` beside `--emit-tokens`: the one token would emit for every tenant, so
    /// the scoped ones would isolate nothing.
    #[error(
        "--emit-token and --emit-tokens are given together: the --emit-token would still emit for \
         every tenant. Give the applications tokens of their own tenants in the file (a line \
         without tenants= is a token for every tenant) and drop --emit-token"
    )]
    Both,
    /// `--emit-token` is not a usable token.
    #[error("emit-token: {reason}")]
    Flag {
        /// What is wrong.
        reason: String,
    },
    /// The file could not be read.
    #[error("emit-tokens {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A line is malformed.
    #[error("emit-tokens {path} line {line}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The line number, from 1 (0: the file as a whole).
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// What a token lets its holder do: emit for `tenants` (every tenant the agent serves when
/// `None`), known in logs as `name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmitGrant {
    /// What the token is recorded as (`name=`, else `emit-` and the start of its digest).
    pub name: String,
    /// The tenants it may emit for; `None`: all.
    pub tenants: Option<BTreeSet<String>>,
}

impl EmitGrant {
    /// Why an event of `tenant` is refused to this token's holder, if it is.
    pub fn refusal(&self, tenant: &str) -> Option<String> {
        let tenants = self.tenants.as_ref()?;
        if tenants.contains(tenant) {
            return None;
        }
        let named: Vec<&str> = tenants.iter().map(String::as_str).take(10).collect();
        let more = if tenants.len() > named.len() {
            ", …"
        } else {
            ""
        };
        Some(format!(
            "the Emit token {:?} may emit for tenants {}{more}, not for {tenant:?}",
            self.name,
            named.join(", ")
        ))
    }
}

/// Why a line of the file is refused.
struct LineError {
    line: usize,
    reason: String,
}

/// Parses `TOKEN [name=NAME] [tenants=T1,T2]` lines; an error names its line.
fn parse_tokens(text: &str) -> Result<HashMap<TokenDigest, Arc<EmitGrant>>, LineError> {
    let mut grants = HashMap::new();
    let mut names = BTreeSet::new();
    for (index, line) in text.lines().enumerate() {
        let Some(line) = token_file::content(line) else {
            continue;
        };
        let invalid = |reason: String| LineError {
            line: index + 1,
            reason,
        };
        let mut fields = line.split_whitespace();
        let token = fields.next().unwrap_or_default();
        token_file::check_token(token).map_err(invalid)?;
        let digest = token_file::digest(token);
        let mut grant = EmitGrant {
            name: token_file::default_name("emit", &digest),
            tenants: None,
        };
        let mut seen = BTreeSet::new();
        for option in fields {
            let Some((key, value)) = option.split_once('=') else {
                return Err(invalid(format!(
                    "{}: use name=NAME or tenants=T1,T2 (format: TOKEN [name=NAME] \
                     [tenants=T1,T2])",
                    token_file::option_named(option)
                )));
            };
            if !seen.insert(key) {
                return Err(invalid(format!("{key}= is given twice")));
            }
            match key {
                "name" => {
                    token_file::check_name(value).map_err(invalid)?;
                    grant.name = value.to_owned();
                }
                "tenants" => {
                    grant.tenants = Some(
                        token_file::scope_names(value, herald_core::validate::tenant)
                            .map_err(invalid)?,
                    );
                }
                _ => {
                    return Err(invalid(format!(
                        "{}: use name= or tenants=",
                        token_file::option_named(option)
                    )));
                }
            }
        }
        if grants.contains_key(&digest) {
            return Err(invalid("the same token appears twice".into()));
        }
        if !names.insert(grant.name.clone()) {
            return Err(invalid(format!("the name {:?} is given twice", grant.name)));
        }
        grants.insert(digest, Arc::new(grant));
        if grants.len() > MAX_TOKENS {
            return Err(invalid(format!("more than {MAX_TOKENS} tokens")));
        }
    }
    Ok(grants)
}

/// Checks the bearer token of each call (looked up by SHA-256 digest, so the lookup's timing
/// says nothing about the token) and hands the call the token's [`EmitGrant`]; lets everything
/// through, with no grant, when no token is configured.
#[derive(Clone)]
pub struct EmitGuard {
    grants: Option<Arc<HashMap<TokenDigest, Arc<EmitGrant>>>>,
}

impl tonic::service::Interceptor for EmitGuard {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let Some(grants) = &self.grants else {
            return Ok(request);
        };
        let Some(header) = request.metadata().get("authorization") else {
            return Err(tonic::Status::unauthenticated(
                "this agent requires a bearer token for Emit (authorization: Bearer TOKEN)",
            ));
        };
        let Some(token) = header
            .to_str()
            .ok()
            .and_then(herald_proto::bearer::Bearer::presented)
        else {
            return Err(tonic::Status::unauthenticated(
                "the authorization header is not `Bearer TOKEN`",
            ));
        };
        match grants.get(&token_file::digest(token)) {
            Some(grant) => {
                request.extensions_mut().insert(Arc::clone(grant));
                Ok(request)
            }
            None => Err(tonic::Status::unauthenticated(
                "the Emit token is not recognised",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic::service::Interceptor as _;

    use super::*;

    const TOKEN: &str = "emit-token-0123456789";

    fn access(allow: bool, token: Option<&str>) -> EmitAccess {
        EmitAccess {
            allow_remote_emit: allow,
            emit_token: token.map(str::to_owned),
            ..EmitAccess::default()
        }
    }

    #[test]
    fn beyond_loopback_needs_the_flag_and_a_token() {
        let remote: ListenAddr = "0.0.0.0:7701".parse().unwrap();
        let local: ListenAddr = "127.0.0.1:7701".parse().unwrap();
        let socket: ListenAddr = "unix:/run/herald/agent.sock".parse().unwrap();
        assert!(access(false, None).check(&local).is_ok());
        assert!(access(false, None).check(&socket).is_ok());
        let err = access(false, None).check(&remote).unwrap_err();
        assert!(err.contains("--allow-remote-emit"), "{err}");
        let err = access(true, None).check(&remote).unwrap_err();
        assert!(err.contains("--emit-token"), "{err}");
        assert!(access(true, Some(TOKEN)).check(&remote).is_ok());
        assert!(access(true, Some("short")).check(&remote).is_err());
    }

    #[test]
    fn calls_must_present_the_token_when_one_is_set() {
        let mut open = access(false, None).guard().unwrap();
        assert!(open.call(tonic::Request::new(())).is_ok());

        let mut guard = access(true, Some(TOKEN)).guard().unwrap();
        let missing = guard.call(tonic::Request::new(())).unwrap_err();
        assert_eq!(missing.code(), tonic::Code::Unauthenticated);
        let with = |token: &str| {
            let mut request = tonic::Request::new(());
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
            request
        };
        assert!(guard.call(with(TOKEN)).is_ok());
        let wrong = guard.call(with("emit-token-9876543210")).unwrap_err();
        assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn a_tokens_file_scopes_each_token_to_its_tenants() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("emit-tokens");
        std::fs::write(
            &path,
            "# one token per application\n\
             shop-a-token-0123456789 name=shop-a-app tenants=shop-a\n\
             \n\
             erp-token-0123456789ab tenants=shop-a,shop-b   # the ERP\n\
             all-token-0123456789ab\n",
        )
        .unwrap();
        let files = EmitAccess {
            emit_tokens_file: Some(path.clone()),
            ..access(true, None)
        };
        let remote: ListenAddr = "0.0.0.0:7701".parse().unwrap();
        assert!(
            files.check(&remote).is_ok(),
            "a tokens file protects a remote listener as --emit-token does"
        );
        let mut guard = files.guard().unwrap();
        let grant = |guard: &mut EmitGuard, token: &str| {
            let mut request = tonic::Request::new(());
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
            guard
                .call(request)
                .map(|r| r.extensions().get::<Arc<EmitGrant>>().cloned().unwrap())
        };
        let shop_a = grant(&mut guard, "shop-a-token-0123456789").unwrap();
        assert_eq!(shop_a.name, "shop-a-app");
        assert_eq!(shop_a.refusal("shop-a"), None);
        let refusal = shop_a.refusal("shop-b").unwrap();
        assert!(refusal.contains("\"shop-a-app\""), "{refusal}");
        assert!(refusal.contains("not for \"shop-b\""), "{refusal}");
        let erp = grant(&mut guard, "erp-token-0123456789ab").unwrap();
        assert!(erp.name.starts_with("emit-"), "{}", erp.name);
        assert_eq!(erp.refusal("shop-b"), None);
        assert!(erp.refusal("shop-c").is_some());
        assert_eq!(
            grant(&mut guard, "all-token-0123456789ab")
                .unwrap()
                .refusal("any"),
            None
        );
        let unknown = grant(&mut guard, "nobody-0123456789abcdef").unwrap_err();
        assert_eq!(unknown.code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn a_bad_tokens_file_names_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("emit-tokens");
        let load = |text: &str| {
            std::fs::write(&path, text).unwrap();
            EmitAccess {
                emit_tokens_file: Some(path.clone()),
                ..EmitAccess::default()
            }
            .guard()
            .err()
            .map(|e| e.to_string())
        };
        assert_eq!(load("a-token-0123456789abc tenants=shop-a"), None);
        for (text, says) in [
            ("short tenants=a", "line 1: a token must be"),
            (
                "\na-token-0123456789abc tenant=shop-a",
                "line 2: unknown option tenant=",
            ),
            ("a-token-0123456789abc tenants=", "line 1: tenant"),
            (
                "a-token-0123456789abc shop-a",
                "line 1: a field after the token is not an option",
            ),
            (
                "a-token-0123456789abc SECRET-0123456789abcdefXYZ",
                "line 1: a field after the token is not an option",
            ),
            (
                "abcdefghijklmnop#qrsTUV tenants=shop-a",
                "line 1: a token must not hold '#'",
            ),
            (
                "name=app-0123456789abc a-token-0123456789abc",
                "line 1: the token must come before the options",
            ),
            (
                "a-token-0123456789abc\na-token-0123456789abc",
                "line 2: the same token appears twice",
            ),
            (
                "a-token-0123456789abc name=x\nb-token-0123456789abc name=x",
                "line 2: the name \"x\" is given twice",
            ),
            ("# nothing\n", "no token given"),
        ] {
            let err = load(text).unwrap_or_else(|| panic!("{text:?} was accepted"));
            assert!(err.contains(says), "{text:?}: {err}");
            assert!(!err.contains("SECRET") && !err.contains("qrsTUV"), "{err}");
        }
        std::fs::write(
            &path,
            b"ok-token-0123456789abc\nbad-\xff-token-0123456789\n",
        )
        .unwrap();
        let not_text = EmitAccess {
            emit_tokens_file: Some(path.clone()),
            ..EmitAccess::default()
        }
        .guard()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(not_text.contains("line 2: is not UTF-8 text"), "{not_text}");
        std::fs::write(&path, "# apps\nshared-token-0123456789\n").unwrap();
        let both = EmitAccess {
            emit_tokens_file: Some(path.clone()),
            emit_token: Some("other-token-0123456789".into()),
            ..EmitAccess::default()
        }
        .guard()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(both.contains("given together"), "{both}");
        let missing = EmitAccess {
            emit_tokens_file: Some(dir.path().join("absent")),
            ..EmitAccess::default()
        }
        .guard()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(missing.contains("absent"), "{missing}");
    }

    #[test]
    fn socket_modes_are_octal() {
        assert_eq!(parse_mode("660"), Ok(0o660));
        assert_eq!(parse_mode("0o600"), Ok(0o600));
        assert!(parse_mode("999").is_err());
        assert!(parse_mode("7777").is_err());
    }
}
