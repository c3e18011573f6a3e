//! Callers known by their client certificate (mutual TLS): `--auth-identities FILE` maps a
//! certificate's subject common name to a name, a role and a scope, one line each:
//! `ROLE COMMON_NAME [name=NAME] [tenants=T1,T2] [regions=R1,R2]` (`#` starts a comment).
//! The name defaults to the common name.
//!
//! The certificate itself is checked by the TLS handshake against `--tls-client-ca-file`;
//! this only says who its holder is. A call with a bearer token is judged by the token.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use x509_cert::der::Decode as _;
use x509_cert::der::asn1::{ObjectIdentifier, PrintableStringRef, Utf8StringRef};

use super::{AuthError, parse_lines};
use crate::access::Identity;

/// The `commonName` attribute (2.5.4.3).
const COMMON_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
/// The longest common name accepted.
const MAX_COMMON_NAME: usize = 256;

/// The identities of certificate holders, by subject common name.
#[derive(Clone)]
pub struct CertificateIdentities {
    by_common_name: Arc<HashMap<String, Arc<Identity>>>,
}

impl std::fmt::Debug for CertificateIdentities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CertificateIdentities({})", self.by_common_name.len())
    }
}

impl CertificateIdentities {
    /// Parses `ROLE COMMON_NAME [options]` lines.
    pub fn parse(text: &str) -> Result<Self, AuthError> {
        let by_common_name = parse_lines(
            text,
            "COMMON_NAME",
            &|n| format!("line {n}"),
            |_, common_name| {
                if common_name.len() > MAX_COMMON_NAME || common_name.contains('=') {
                    return Err(format!(
                        "{common_name:?} is not a common name (at most {MAX_COMMON_NAME} bytes, no '=')"
                    ));
                }
                Ok((common_name.to_owned(), common_name.to_owned()))
            },
        )?;
        Ok(CertificateIdentities {
            by_common_name: Arc::new(by_common_name),
        })
    }

    /// The names of the identities.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_common_name
            .values()
            .map(|identity| identity.name.as_str())
    }

    /// The identity of the holder of `chain` (the peer's certificates, its own first), when
    /// its subject's common name is listed.
    pub fn identity(&self, chain: &[CertificateDer<'_>]) -> Option<Arc<Identity>> {
        let common_name = common_name(chain.first()?)?;
        self.by_common_name.get(&common_name).cloned()
    }
}

/// The subject common name of a DER certificate.
pub fn common_name(der: &CertificateDer<'_>) -> Option<String> {
    let certificate = x509_cert::Certificate::from_der(der.as_ref()).ok()?;
    certificate
        .tbs_certificate
        .subject
        .0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .find(|attribute| attribute.oid == COMMON_NAME)
        .and_then(|attribute| {
            let value = &attribute.value;
            value
                .decode_as::<Utf8StringRef<'_>>()
                .map(|s| s.as_str().to_owned())
                .or_else(|_| {
                    value
                        .decode_as::<PrintableStringRef<'_>>()
                        .map(|s| s.as_str().to_owned())
                })
                .ok()
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::Role;

    fn certificate(common_name: &str) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Herald tests");
        let key = rcgen::KeyPair::generate().expect("a key");
        params
            .self_signed(&key)
            .expect("a certificate")
            .der()
            .clone()
    }

    #[test]
    fn holders_are_known_by_their_common_name() {
        let identities = CertificateIdentities::parse(
            "# fleet\nagent agent-eu tenants=shop-a regions=eu\nadmin ops name=operators\n",
        )
        .expect("parsed");
        let agent = identities
            .identity(&[certificate("agent-eu")])
            .expect("known");
        assert_eq!((agent.name.as_str(), agent.role), ("agent-eu", Role::Agent));
        assert!(agent.sees("shop-a") && !agent.sees("shop-b"));
        assert!(agent.regions.allows("eu") && !agent.regions.allows("us"));
        let ops = identities.identity(&[certificate("ops")]).expect("known");
        assert_eq!((ops.name.as_str(), ops.role), ("operators", Role::Admin));
        assert!(identities.identity(&[certificate("stranger")]).is_none());
        assert!(identities.identity(&[]).is_none());
        assert_eq!(common_name(&certificate("ops")).as_deref(), Some("ops"));
    }

    #[test]
    fn a_name_is_either_a_tokens_or_a_certificates() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let identities = dir.path().join("identities");
        std::fs::write(&identities, "admin ops\n").expect("written");
        let source = |tokens: &str| crate::auth::TokenSource {
            auth_tokens_file: None,
            auth_tokens: Some(tokens.to_owned()),
            auth_identities_file: Some(identities.clone()),
        };
        let shared = source("admin admin-token-0123456789 name=ops")
            .load_identities()
            .unwrap_err();
        assert!(matches!(shared, AuthError::NameTwice(ref name) if name == "ops"));
        assert!(
            source("admin admin-token-0123456789 name=root")
                .load_identities()
                .expect("loaded")
                .is_some()
        );
    }

    #[test]
    fn malformed_lines_are_refused_with_the_line() {
        for (text, why) in [
            ("admin", "COMMON_NAME"),
            ("root ops", "unknown role"),
            ("admin ops\nread ops", "twice"),
            ("admin a=b", "not a common name"),
            ("read ops regions=eu", "agent"),
        ] {
            let err = CertificateIdentities::parse(text).unwrap_err().to_string();
            assert!(err.contains(why), "{text:?}: {err}");
        }
    }
}
