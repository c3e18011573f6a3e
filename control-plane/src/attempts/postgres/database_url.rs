//! Where the log's database is: a `postgres://` URL, and how connections to it are secured.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use tokio_postgres_rustls::MakeRustlsConnect;

use super::{CONNECT_TIMEOUT, LogError};

/// A `postgres://` URL, its password kept out of `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl {
    pub(super) config: tokio_postgres::Config,
    /// With `sslmode=verify-full`: the CA certificates (PEM) the server's certificate must
    /// chain to (`sslrootcert`); the server's name is checked too.
    root_cert: Option<PathBuf>,
    /// `host:port/db`, for messages and logs.
    shown: String,
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "postgres://{}", self.shown)?;
        if self.root_cert.is_some() {
            write!(f, " (TLS)")?;
        }
        Ok(())
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PostgreSQL at {}", self.shown)
    }
}

impl DatabaseUrl {
    /// Parses `postgres://USER[:PASS]@HOST[:PORT]/DB[?sslmode=verify-full&sslrootcert=FILE]`.
    /// `sslmode` is `disable` (the default) or `verify-full`: TLS with the server's certificate
    /// checked against `sslrootcert` and its name. Modes that encrypt without checking who
    /// answers (`require`, `prefer`, …) are refused.
    pub fn parse(text: &str) -> Result<Self, String> {
        // The parser's own words never quote the URL, so they cannot show the password.
        let mut url = url::Url::parse(text).map_err(|e| {
            format!(
                "is not a valid postgres:// URL: {e} (a password holding '/', ':', '?' or '#' \
                 must percent-encode them: %2F, %3A, %3F, %23)"
            )
        })?;
        // A password with `/` or `@` left as typed ends the host early: the rest of the
        // password would become the database's name, and be shown in messages.
        // A `%` that starts no escape would be taken as typed, and the login fail for it.
        if malformed_escape(url.username()) || url.password().is_some_and(malformed_escape) {
            return Err(
                "its user or password holds a '%' that starts no escape: write a \
                 '%' in them as %25"
                    .into(),
            );
        }
        let database = url.path().trim_start_matches('/');
        if database.contains('/') || database.contains('@') {
            return Err(
                "its database name holds '/' or '@': percent-encode those characters \
                 in the password (%2F, %40; also ':' as %3A, '?' as %3F and '#' as %23)"
                    .into(),
            );
        }
        let mut mode = None;
        let mut root_cert = None;
        let mut rest: Vec<(String, String)> = Vec::new();
        for (key, value) in url.query_pairs() {
            match key.as_ref() {
                "sslmode" => mode = Some(value.into_owned()),
                "sslrootcert" => root_cert = Some(PathBuf::from(value.as_ref())),
                _ => rest.push((key.into_owned(), value.into_owned())),
            }
        }
        let root_cert = match mode.as_deref() {
            None | Some("disable") if root_cert.is_none() => None,
            None | Some("disable") => {
                return Err("sslrootcert is given without sslmode=verify-full".into());
            }
            Some("verify-full") => Some(root_cert.ok_or_else(|| {
                "sslmode=verify-full needs sslrootcert=FILE (the CA of the server's certificate)"
                    .to_owned()
            })?),
            // Not quoted: with a '?' unescaped in the password, the "mode" is part of it.
            Some(_) => {
                return Err(
                    "sslmode is neither verify-full (TLS with the server checked) nor disable"
                        .into(),
                );
            }
        };
        url.set_query(None);
        if !rest.is_empty() {
            url.query_pairs_mut().extend_pairs(&rest);
        }
        // The options are not quoted: with a '?' unescaped in the password, they are the rest
        // of it.
        let has_options = !rest.is_empty();
        let mut config: tokio_postgres::Config = url.as_str().parse().map_err(|_| {
            if has_options {
                "is not a valid postgres:// URL (check its options after '?', and that a '?' \
                 in the password is written %3F)"
                    .to_owned()
            } else {
                "is not a valid postgres:// URL".to_owned()
            }
        })?;
        config.ssl_mode(if root_cert.is_some() {
            tokio_postgres::config::SslMode::Require
        } else {
            tokio_postgres::config::SslMode::Disable
        });
        if config.get_user().is_none_or(str::is_empty) {
            return Err("names no user (postgres://USER@HOST/DB)".into());
        }
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
            Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
            None => return Err("names no host".into()),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let db = config.get_dbname().unwrap_or("").to_owned();
        if db.is_empty() {
            return Err("names no database (postgres://USER@HOST/DB)".into());
        }
        config.application_name("herald-control-plane");
        config.connect_timeout(CONNECT_TIMEOUT);
        Ok(DatabaseUrl {
            shown: format!("{host}:{port}/{db}"),
            root_cert,
            config,
        })
    }

    /// How connections are secured: not at all, or TLS checked against the root certificates.
    pub(super) fn tls(&self) -> Result<Tls, LogError> {
        let Some(path) = &self.root_cert else {
            return Ok(Tls::Off);
        };
        let invalid = |reason: String| {
            LogError::Storage(format!("{self}: sslrootcert {}: {reason}", path.display()))
        };
        let pem =
            herald_core::tls_files::read_pem(path).map_err(|e| invalid(e.source.to_string()))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| invalid(e.to_string()))?;
            roots.add(cert).map_err(|e| invalid(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(invalid("no PEM certificate in the file".into()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Tls::Verified(MakeRustlsConnect::new(config)))
    }
}

/// Whether `text` (a URL's user or password as written) holds a `%` not followed by two hex
/// digits.
fn malformed_escape(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.iter().enumerate().any(|(at, byte)| {
        *byte == b'%'
            && !(bytes.get(at + 1).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(at + 2).is_some_and(u8::is_ascii_hexdigit))
    })
}

/// How connections to the database are secured.
#[derive(Clone)]
pub(super) enum Tls {
    /// In the clear (`sslmode=disable`).
    Off,
    /// TLS, the server's certificate and name checked (`sslmode=verify-full`).
    Verified(MakeRustlsConnect),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_the_password_out_of_sight() {
        let url = DatabaseUrl::parse("postgres://herald:s3cret@db.internal:5433/log")
            .expect("a valid URL");
        assert_eq!(format!("{url:?}"), "postgres://db.internal:5433/log");
        assert!(!url.to_string().contains("s3cret"));
        let tls = DatabaseUrl::parse(
            "postgres://herald@db.internal/log?sslmode=verify-full&sslrootcert=/etc/ca.pem",
        )
        .expect("TLS");
        assert_eq!(
            tls.root_cert.as_deref(),
            Some(std::path::Path::new("/etc/ca.pem"))
        );
        assert_eq!(format!("{tls:?}"), "postgres://db.internal:5432/log (TLS)");
        for bad in [
            "postgres://db.internal/log",
            "postgres://herald@db.internal/",
            "postgres://herald@db.internal/log?sslmode=verify-full",
            "postgres://herald@db.internal/log?sslmode=require",
            "postgres://herald@db.internal/log?sslrootcert=/ca.pem",
            "postgres://[oops",
        ] {
            assert!(DatabaseUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_password_typed_without_its_escapes_is_refused_unshown() {
        // The password `a@b/TOPSECRET` as typed: the host ends at the first '@'.
        let refused = DatabaseUrl::parse("postgres://herald:a@b/TOPSECRET@db.internal:5432/log")
            .expect_err("refused");
        assert!(refused.contains("percent-encode"), "{refused}");
        assert!(!refused.contains("TOPSECRET"), "{refused}");
        // Escaped, the same password is taken.
        let url = DatabaseUrl::parse("postgres://herald:a%40b%2FTOPSECRET@db.internal:5432/log")
            .expect("escaped");
        assert_eq!(url.to_string(), "PostgreSQL at db.internal:5432/log");
        let port = DatabaseUrl::parse("postgres://herald@db.internal:99999/log")
            .expect_err("no such port");
        assert!(port.contains("port"), "{port}");
        let escape = DatabaseUrl::parse("postgres://herald:SEK%ZZRIT@db.internal/log")
            .expect_err("not an escape");
        assert!(
            escape.contains("%25") && !escape.contains("SEK"),
            "{escape}"
        );
        assert!(DatabaseUrl::parse("postgres://herald:50%25off@db.internal/log").is_ok());
        // A '?' unescaped ends the host: what follows is the password's rest, never shown.
        for leaky in [
            "postgres://herald:?hunter2@db.internal/log",
            "postgres://herald:12?sslmode=hunter2@db.internal/log",
        ] {
            let refused = DatabaseUrl::parse(leaky).expect_err("refused");
            assert!(!refused.contains("hunter2"), "{leaky}: {refused}");
        }
    }
}
