//! Where the agent listens for `Emit`: a TCP address (`127.0.0.1:7701`) or a Unix socket
//! (`unix:/run/herald/agent.sock`).

use std::net::SocketAddr;
use std::path::PathBuf;

/// A parsed `--listen` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A Unix socket path.
    Unix(PathBuf),
}

impl std::str::FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.strip_prefix("unix:") {
            Some("") => Err("unix: needs a socket path".into()),
            Some(path) => Ok(ListenAddr::Unix(PathBuf::from(path))),
            None => s
                .parse()
                .map(ListenAddr::Tcp)
                .map_err(|_| format!("{s:?} is neither host:port nor unix:/path")),
        }
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Tcp(addr) => write!(f, "{addr}"),
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// A bound listener.
pub enum Listener {
    /// TCP.
    Tcp(tokio::net::TcpListener),
    /// Unix socket.
    #[cfg(unix)]
    Unix(tokio::net::UnixListener),
}

impl Listener {
    /// Binds `addr`; a stale Unix socket file left by a previous run is replaced, and a new
    /// socket gets file mode `socket_mode`.
    pub async fn bind(addr: &ListenAddr, socket_mode: u32) -> std::io::Result<Listener> {
        match addr {
            ListenAddr::Tcp(addr) => Ok(Listener::Tcp(tokio::net::TcpListener::bind(addr).await?)),
            #[cfg(unix)]
            ListenAddr::Unix(path) => {
                if path.exists() {
                    std::fs::remove_file(path)?;
                }
                let listener = tokio::net::UnixListener::bind(path)?;
                use std::os::unix::fs::PermissionsExt as _;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(socket_mode))?;
                Ok(Listener::Unix(listener))
            }
            #[cfg(not(unix))]
            ListenAddr::Unix(_) => Err(std::io::Error::other("unix sockets need a unix system")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_forms() {
        assert_eq!(
            "127.0.0.1:7701".parse::<ListenAddr>(),
            Ok(ListenAddr::Tcp("127.0.0.1:7701".parse().expect("addr")))
        );
        assert_eq!(
            "unix:/tmp/a.sock".parse::<ListenAddr>(),
            Ok(ListenAddr::Unix("/tmp/a.sock".into()))
        );
        assert!("unix:".parse::<ListenAddr>().is_err());
        assert!("localhost".parse::<ListenAddr>().is_err());
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_unix_socket_gets_the_configured_mode() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        // A stale socket file from an earlier run is replaced.
        std::fs::write(&path, b"").unwrap();
        let addr = ListenAddr::Unix(path.clone());
        let _listener = Listener::bind(&addr, 0o660).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o660);
    }
}
