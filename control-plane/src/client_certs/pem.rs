//! A subscription's client certificate and key, as written (PEM): the chain parses, the key
//! parses and matches the leaf, and the leaf's expiry is read.

use std::time::SystemTime;

use herald_core::ValidationError;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use x509_cert::der::Decode as _;

/// Checks a client certificate chain and key (PEM) and returns when the leaf expires.
pub fn check(cert_pem: &str, key_pem: &str) -> Result<SystemTime, ValidationError> {
    let bad_cert = |reason: String| ValidationError::new("client_cert", reason);
    let bad_key = |reason: String| ValidationError::new("client_key", reason);
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| bad_cert(format!("not PEM certificates: {e}")))?;
    let leaf = chain
        .first()
        .ok_or_else(|| bad_cert("holds no certificate".into()))?;
    let parsed = x509_cert::Certificate::from_der(leaf.as_ref())
        .map_err(|e| bad_cert(format!("the first certificate does not parse: {e}")))?;
    let expires_at = parsed.tbs_certificate.validity.not_after.to_system_time();
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .map_err(|e| bad_key(format!("not a PEM private key: {e}")))?
        .ok_or_else(|| bad_key("holds no private key".into()))?;
    let provider = rustls::crypto::ring::default_provider();
    rustls::sign::CertifiedKey::from_der(chain, key, &provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            bad_key("does not belong to the client certificate".into())
        }
        other => bad_key(format!("unusable: {other}")),
    })?;
    Ok(expires_at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(days: u32) -> (String, String, String) {
        let mut params =
            rcgen::CertificateParams::new(vec!["herald-client".to_owned()]).expect("params");
        params.not_after = rcgen::date_time_ymd(2030, 1, days.max(1) as u8);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        let other = rcgen::KeyPair::generate().expect("key");
        (cert.pem(), key.serialize_pem(), other.serialize_pem())
    }

    #[test]
    fn a_client_certificate_is_checked_and_its_expiry_read() {
        let (cert, key, other_key) = pair(15);
        let expires_at = check(&cert, &key).expect("a good pair");
        let seconds = expires_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs();
        // 2030-01-15: 21,915 days after 1970-01-01 is 2030-01-01.
        assert_eq!(seconds, (21_915 + 14) * 86_400);
        let field = |r: Result<SystemTime, ValidationError>| r.expect_err("refused").field;
        assert_eq!(field(check(&cert, &other_key)), "client_key");
        assert_eq!(field(check("no pem", &key)), "client_cert");
        assert_eq!(field(check(&cert, "no pem")), "client_key");
    }
}
