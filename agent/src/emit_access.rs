//! Who may call `Emit`. The agent is a local service: by default it listens on loopback or on
//! a Unix socket (mode 0660, so only the agent's user and group may connect). Listening on any
//! other address needs both `--allow-remote-emit` and an `--emit-token`, which every `Emit`
//! call must then present as `authorization: Bearer TOKEN`. A token can also be required on
//! a local listener. Health checks and reflection stay open.

use sha2::{Digest, Sha256};

use crate::listen::ListenAddr;

/// The default mode of the Unix socket: read and write for the agent's user and group.
pub const DEFAULT_SOCKET_MODE: u32 = 0o660;

/// Settings for who may reach `Emit`.
#[derive(Clone, clap::Args)]
pub struct EmitAccess {
    /// Allow --listen on an address other than loopback (also needs --emit-token).
    #[arg(long, env = "HERALD_ALLOW_REMOTE_EMIT")]
    pub allow_remote_emit: bool,
    /// Token every Emit call must present (`authorization: Bearer TOKEN`); required when
    /// listening beyond loopback.
    #[arg(long, env = "HERALD_EMIT_TOKEN", hide_env_values = true)]
    pub emit_token: Option<String>,
    /// File mode of the Unix socket, in octal.
    #[arg(long, env = "HERALD_SOCKET_MODE", default_value = "660", value_parser = parse_mode)]
    pub socket_mode: u32,
}

impl Default for EmitAccess {
    fn default() -> Self {
        EmitAccess {
            allow_remote_emit: false,
            emit_token: None,
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
        if let Some(token) = &self.emit_token
            && (!(MIN_TOKEN_LEN..=MAX_TOKEN_LEN).contains(&token.len())
                || !token.chars().all(|c| c.is_ascii_graphic()))
        {
            return Err(format!(
                "emit-token must be {MIN_TOKEN_LEN} to {MAX_TOKEN_LEN} printable ASCII characters"
            ));
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
                 --allow-remote-emit and --emit-token to accept events from the network"
            ));
        }
        if self.emit_token.is_none() {
            return Err(format!(
                "listen={listen} accepts events from the network: --emit-token is required"
            ));
        }
        Ok(())
    }

    /// The check for each `Emit` call.
    pub fn interceptor(&self) -> EmitGuard {
        EmitGuard {
            digest: self.emit_token.as_deref().map(digest),
        }
    }
}

/// The shortest token accepted.
const MIN_TOKEN_LEN: usize = 16;
/// The longest token accepted.
const MAX_TOKEN_LEN: usize = 512;

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Checks the bearer token of each call (compared as SHA-256 digests, so the comparison's
/// timing says nothing about the token); lets everything through without a token configured.
#[derive(Clone)]
pub struct EmitGuard {
    digest: Option<[u8; 32]>,
}

impl tonic::service::Interceptor for EmitGuard {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let Some(expected) = &self.digest else {
            return Ok(request);
        };
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        match presented {
            None => Err(tonic::Status::unauthenticated(
                "this agent requires a bearer token for Emit (authorization: Bearer TOKEN)",
            )),
            Some(token) if digest(token) == *expected => Ok(request),
            Some(_) => Err(tonic::Status::unauthenticated(
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
        let mut open = access(false, None).interceptor();
        assert!(open.call(tonic::Request::new(())).is_ok());

        let mut guard = access(true, Some(TOKEN)).interceptor();
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
    fn socket_modes_are_octal() {
        assert_eq!(parse_mode("660"), Ok(0o660));
        assert_eq!(parse_mode("0o600"), Ok(0o600));
        assert!(parse_mode("999").is_err());
        assert!(parse_mode("7777").is_err());
    }
}
