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

/// The options a token line may carry after its token.
const OPTION_KEYS: [&str; 3] = ["name", "tenants", "regions"];

/// Refuses a token too short to be unguessable, too long, holding characters a header cannot
/// carry or `#` (which starts a comment in the files), or that is an option (`name=…` where
/// the token should be: the token itself would then be read as an option). No message quotes
/// the token.
pub fn check_token(token: &str) -> Result<(), String> {
    if !(MIN_TOKEN_LEN..=MAX_TOKEN_LEN).contains(&token.len()) {
        return Err(format!(
            "a token must be {MIN_TOKEN_LEN} to {MAX_TOKEN_LEN} characters"
        ));
    }
    if !token.chars().all(|c| c.is_ascii_graphic()) {
        return Err("a token must be printable ASCII".into());
    }
    if token.contains('#') {
        return Err("a token must not hold '#' (it starts a comment)".into());
    }
    if OPTION_KEYS.iter().any(|key| {
        token
            .strip_prefix(key)
            .is_some_and(|rest| rest.starts_with('='))
    }) {
        return Err("the token must come before the options (name=, tenants=, regions=)".into());
    }
    Ok(())
}

/// How an option that is not one is named in an error: its key when it is one of the
/// options' shape (a misspelt `tenant=`), else not at all, since a token misplaced among the
/// options must not be shown in an error or a log.
pub fn option_named(option: &str) -> String {
    let key = option.split_once('=').map_or(option, |(key, _)| key);
    if is_word(key) && option.contains('=') {
        format!("unknown option {key}=")
    } else {
        "a field after the token is not an option (a token, or a word without =?)".to_owned()
    }
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

/// Whether `field` is a short lowercase word (a role, an option's key, misspelt or not), which
/// an error may quote: anything else may be a token.
pub fn is_word(field: &str) -> bool {
    !field.is_empty()
        && field.len() <= 16
        && field.chars().all(|c| c.is_ascii_lowercase() || c == '_')
}

/// The meaningful part of a line: without its comment (from a `#` that starts the line or
/// follows a blank) and surrounding blanks; `None` when nothing is left. A `#` inside a field
/// is kept, for the field's own check to refuse.
pub fn content(line: &str) -> Option<&str> {
    let mut end = line.len();
    let mut after_blank = true;
    for (at, c) in line.char_indices() {
        if c == '#' && after_blank {
            end = at;
            break;
        }
        after_blank = c.is_whitespace();
    }
    let line = line[..end].trim();
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
        let hash = check_token("abcdefghijklmnop#qrsTUV").unwrap_err();
        assert!(hash.contains('#') && !hash.contains("abcdef"), "{hash}");
        let misplaced = check_token("name=shop-a-application").unwrap_err();
        assert!(!misplaced.contains("shop-a"), "{misplaced}");
        assert!(check_token("tenantsx=0123456789abcdef").is_ok());
    }

    #[test]
    fn misplaced_options_are_named_without_what_may_be_a_token() {
        assert_eq!(option_named("tenant=shop-a"), "unknown option tenant=");
        assert!(!option_named("SECRET-0123456789abcdefXYZ").contains("SECRET"));
        assert!(!option_named("Sq9=0123456789abcdef").contains("Sq9"));
        assert!(
            !option_named("tenants").contains("tenants"),
            "a word without ="
        );
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
        assert_eq!(content("#note"), None);
        assert_eq!(
            content("abcdefghijklmnop#qrsTUV tenants=shop-a"),
            Some("abcdefghijklmnop#qrsTUV tenants=shop-a"),
            "a # inside the token is the token's, refused by check_token"
        );
    }
}
