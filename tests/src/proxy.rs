//! A real HTTP egress proxy for end-to-end tests: Debian's `tinyproxy`, on a loopback port with
//! its configuration and log in a temporary directory, killed when dropped.
//!
//! The binary is `$HERALD_TEST_TINYPROXY`, else `/usr/bin/tinyproxy`. Its log (level
//! `Connect`) records every request line, so a test sees each `CONNECT` the agent asked for.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tempfile::TempDir;
use tokio::time::Instant;

/// Environment variable naming the tinyproxy binary to run.
pub const TINYPROXY_BINARY_ENV: &str = "HERALD_TEST_TINYPROXY";
/// Where Debian's `tinyproxy` package installs it.
const DEFAULT_TINYPROXY_BINARY: &str = "/usr/bin/tinyproxy";
/// How long a starting proxy may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a start is retried on a fresh port when another process took the first.
const PORT_ATTEMPTS: usize = 5;

/// A tinyproxy on a loopback port, killed when dropped.
pub struct EgressProxy {
    child: Child,
    port: u16,
    credentials: Option<(String, String)>,
    log: PathBuf,
    /// Holds the configuration and the log; declared last so it goes after the process.
    _dir: TempDir,
}

impl EgressProxy {
    /// Starts a proxy; with `credentials` (user, password) it asks for them (Basic auth).
    pub async fn start(credentials: Option<(&str, &str)>) -> anyhow::Result<EgressProxy> {
        let mut last = None;
        for _ in 0..PORT_ATTEMPTS {
            match Self::start_once(credentials).await {
                Ok(proxy) => return Ok(proxy),
                Err(err) => last = Some(err),
            }
        }
        Err(last.expect("at least one attempt"))
    }

    async fn start_once(credentials: Option<(&str, &str)>) -> anyhow::Result<EgressProxy> {
        let binary = std::env::var(TINYPROXY_BINARY_ENV)
            .unwrap_or_else(|_| DEFAULT_TINYPROXY_BINARY.to_owned());
        let dir = tempfile::tempdir().context("a dir for tinyproxy")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log = dir.path().join("tinyproxy.log");
        let mut config = format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 30\nLogFile \"{}\"\nLogLevel Connect\n\
             MaxClients 256\nAllow 127.0.0.1\n",
            log.display()
        );
        if let Some((user, password)) = credentials {
            config.push_str(&format!("BasicAuth {user} {password}\n"));
        }
        let config_path = dir.path().join("tinyproxy.conf");
        std::fs::write(&config_path, config)?;
        // tinyproxy running as root drops to the current user; its log must be writable then.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))?;
        }
        let child = Command::new(&binary)
            .arg("-d")
            .arg("-c")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {binary} (Debian's tinyproxy)"))?;
        let mut proxy = EgressProxy {
            child,
            port,
            credentials: credentials.map(|(u, p)| (u.to_owned(), p.to_owned())),
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = proxy.child.try_wait()? {
                bail!("tinyproxy exited with {status}: {}", proxy.log());
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok(proxy);
            }
            if Instant::now() > deadline {
                bail!("tinyproxy did not listen on {port}: {}", proxy.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Its URL, with the credentials it asks for.
    pub fn url(&self) -> String {
        match &self.credentials {
            Some((user, password)) => format!("http://{user}:{password}@127.0.0.1:{}", self.port),
            None => self.url_without_credentials(),
        }
    }

    /// Its URL without credentials.
    pub fn url_without_credentials(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The targets of the `CONNECT` requests it received, in order (`127.0.0.1:8443`).
    pub fn connects(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter_map(|line| line.split_once("): CONNECT ").map(|(_, rest)| rest))
            .filter_map(|rest| rest.split(' ').next())
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for EgressProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
