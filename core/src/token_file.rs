//! The rules every token file shares: the control plane's API tokens (`--auth-tokens`) and the
//! agent's Emit tokens (`--emit-tokens`). One token a line, `#` starts a comment, options as
//! `key=value`; tokens are kept only as SHA-256 digests and looked up by digest, so a lookup's
//! timing does not depend on how much of a guess matches.

use std::collections::BTreeSet;

use sha2::{Digest as _, Sha256};

use crate::validate::ValidationError;

/// The shortest token accepted (guessable tokens are refused at load).
pub const MIN_TOKEN_LEN: usize = 16;
/// The longest token accepted.
pub const MAX_TOKEN_LEN: usize = 512;
/// The most tokens a file holds.
pub const MAX_TOKENS: usize = 10_000;
/// The most names (tenants, regions) one token may be scoped to.
pub const MAX_SCOPE_NAMES: usize = 1000;
/// The longest name a token is recorded as.
pub const MAX_NAME_LEN: usize = 64;

/// A token's SHA-256 digest: what is kept of it.
pub type TokenDigest = [u8; 32];

/// The digest `token` is kept and looked up as.
pub fn digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

/// Refuses a token too short to be unguessable, too long, or holding characters a header
/// cannot carry.
pub fn check_token(token: &str) -> Result<(), String> {
    if !(MIN_TOKEN_LEN..=MAX_TOKEN_LEN).contains(&token.len()) {
        return Err(format!(
            "a token must be {MIN_TOKEN_LEN} to {MAX_TOKEN_LEN} characters"
        ));
    }
    if !token.chars().all(|c| c.is_ascii_graphic()) {
        return Err("a token must be printable ASCII".into());
    }
    Ok(())
}

/// Refuses a `name=` no log line or audit entry could show plainly.
pub fn check_name(name: &str) -> Result<(), String> {
    let fits = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@' | ':');
    if name.is_empty() || name.len() > MAX_NAME_LEN || !name.chars().all(fits) {
        return Err(format!(
            "name= takes 1 to {MAX_NAME_LEN} letters, digits, '.', '_', '-', '@' or ':'"
        ));
    }
    Ok(())
}

/// The name of a token given none: `prefix` and the start of its digest, stable and telling
/// nothing of the token.
pub fn default_name(prefix: &str, digest: &TokenDigest) -> String {
    let start: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}-{start}")
}

/// A comma-separated list of names (`tenants=a,b`), each checked by `check`, at most
/// [`MAX_SCOPE_NAMES`].
pub fn scope_names(
    value: &str,
    check: fn(&str) -> Result<(), ValidationError>,
) -> Result<BTreeSet<String>, String> {
    let mut names = BTreeSet::new();
    for name in value.split(',') {
        check(name).map_err(|e| e.to_string())?;
        names.insert(name.to_owned());
    }
    if names.len() > MAX_SCOPE_NAMES {
        return Err(format!("at most {MAX_SCOPE_NAMES} names in a scope"));
    }
    Ok(names)
}

/// The meaningful part of a line: without its comment and surrounding blanks; `None` when
/// nothing is left.
pub fn content(line: &str) -> Option<&str> {
    let line = line.split('#').next().unwrap_or_default().trim();
    (!line.is_empty()).then_some(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_must_be_long_printable_ascii() {
        assert!(check_token("0123456789abcdef").is_ok());
        assert!(check_token("short").is_err());
        assert!(check_token(&"x".repeat(MAX_TOKEN_LEN + 1)).is_err());
        assert!(check_token("0123456789abcdef ghi").is_err());
        assert!(check_token("0123456789abcdéf").is_err());
    }

    #[test]
    fn names_scopes_and_comments() {
        assert!(check_name("shop-a.orders@eu:1").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a b").is_err());
        assert_eq!(
            default_name("emit", &digest("0123456789abcdef")),
            default_name("emit", &digest("0123456789abcdef"))
        );
        assert_ne!(
            default_name("emit", &digest("0123456789abcdef")),
            default_name("emit", &digest("0123456789abcdeg"))
        );
        let names = scope_names("shop-b,shop-a,shop-b", crate::validate::tenant).unwrap();
        assert_eq!(names.into_iter().collect::<Vec<_>>(), ["shop-a", "shop-b"]);
        assert!(scope_names("shop a", crate::validate::tenant).is_err());
        assert!(scope_names("", crate::validate::tenant).is_err());
        assert_eq!(content("  admin tok # note"), Some("admin tok"));
        assert_eq!(content("   # only a note"), None);
    }
}
