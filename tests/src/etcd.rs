//! A real etcd server for end-to-end tests.
//!
//! [`Etcd`] owns one `etcd` child process, its temporary directory (data dir and captured log)
//! and its two loopback ports. Invariants:
//!
//! - The ports stay the same for the handle's whole life, and are held while the process is
//!   down ([`HeldPort`]), so [`Etcd::restart`] brings back the same member at the same
//!   [`Etcd::endpoint`] with the same data.
//! - When the handle is dropped the process is killed and reaped, then the directory removed.
//! - Every startup failure carries the tail of etcd's own log.
//!
//! The binary is `$HERALD_TEST_ETCD`, else `etcd` on `PATH`, else `/usr/bin/etcd` (Debian's
//! `etcd-server` 3.4). A process is described by a private [`Member`]; [`EtcdCluster`] runs
//! several members sharing one `--initial-cluster`, each stoppable and restartable on its own.

use std::fs::{self, OpenOptions};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::port::{HeldPort, StartError};

/// Environment variable naming the etcd binary to run.
pub const ETCD_BINARY_ENV: &str = "HERALD_TEST_ETCD";

/// Where Debian's `etcd-server` package installs etcd.
const DEFAULT_ETCD_BINARY: &str = "/usr/bin/etcd";

/// How long a starting member may take to answer `/health`.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Pause between two `/health` probes.
const READY_POLL: Duration = Duration::from_millis(50);

/// Bound on one probe, so a half-open socket cannot eat the whole ready timeout.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How often a start is retried with fresh ports when another process took one meanwhile.
const PORT_ATTEMPTS: usize = 5;

/// How many log lines a startup error shows.
const LOG_TAIL_LINES: usize = 40;

/// A single-member etcd server on loopback ports, killed when dropped.
#[derive(Debug)]
pub struct Etcd {
    member: Member,
    /// Holds the data dir and the log; declared last so it is removed after the process died.
    _dir: TempDir,
}

// === impl Etcd ===

impl Etcd {
    /// Starts a fresh single-member etcd and waits until it answers `/health`.
    pub async fn start() -> anyhow::Result<Etcd> {
        Self::start_with(None, None).await
    }

    /// Starts one whose backend may hold at most `bytes` (`--quota-backend-bytes`): past it
    /// etcd raises its NOSPACE alarm and refuses writes, as a full etcd in production does.
    pub async fn start_with_quota(bytes: u64) -> anyhow::Result<Etcd> {
        Self::start_with(None, Some(bytes)).await
    }

    /// Starts one that speaks TLS to clients with a certificate from `ca` and requires client
    /// certificates from `ca` too (mutual TLS); its endpoint is `https://…`.
    pub async fn start_tls(ca: &crate::TestCa) -> anyhow::Result<Etcd> {
        let dir = tempfile::tempdir().context("a dir for etcd's certificates")?;
        let (cert, key) = ca.write_pair(dir.path(), "etcd", crate::tls::CertUse::Server)?;
        let tls = EtcdTls {
            cert,
            key,
            ca: ca.write_ca_pem(dir.path())?,
            _dir: Arc::new(dir),
        };
        Self::start_with(Some(tls), None).await
    }

    async fn start_with(tls: Option<EtcdTls>, quota: Option<u64>) -> anyhow::Result<Etcd> {
        let binary = etcd_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("herald-etcd-")
            .tempdir()
            .context("creating the etcd temp dir")?;

        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            let held = hold_ports::<3>()?;
            let [client_port, peer_port, metrics_port] = held.each_ref().map(HeldPort::port);
            let mut member = Member {
                binary: binary.clone(),
                name: "herald-etcd-0".to_owned(),
                client_port,
                peer_port,
                metrics_port,
                _held: held,
                tls: tls.clone(),
                quota,
                data_dir: dir.path().join("data"),
                log_path: dir.path().join("etcd.log"),
                initial_cluster: String::new(),
                child: None,
            };
            member.initial_cluster = format!("{}={}", member.name, member.peer_url());
            match member.start().await {
                Ok(()) => return Ok(Etcd { member, _dir: dir }),
                Err(StartError::PortTaken(error)) => {
                    tracing::debug!(%error, "etcd port taken; retrying with new ports");
                    last_error = Some(error);
                }
                Err(StartError::Failed(error)) => return Err(error),
            }
        }
        Err(last_error
            .unwrap_or_else(|| anyhow::anyhow!("no attempt made"))
            .context(format!(
                "etcd did not start after {PORT_ATTEMPTS} port choices"
            )))
    }

    /// The client URL, e.g. `http://127.0.0.1:41234`.
    pub fn endpoint(&self) -> String {
        self.member.client_url()
    }

    /// The member's data directory (kept across [`Etcd::restart`]).
    pub fn data_dir(&self) -> &Path {
        &self.member.data_dir
    }

    /// Whether the process is running (it may still be starting).
    pub fn is_running(&self) -> bool {
        self.member.child.is_some()
    }

    /// Kills the process (SIGKILL, like a crash) and reaps it. Data stays. Idempotent.
    pub async fn stop(&mut self) {
        self.member.kill();
    }

    /// Stops the process if needed and starts it again on the same ports and data dir, then
    /// waits until it answers `/health`.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.member.kill();
        self.member.start().await.map_err(StartError::into_inner)
    }
}

/// An etcd cluster of several members on loopback ports, each killed when dropped.
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<Member>,
    _dir: TempDir,
}

// === impl EtcdCluster ===

impl EtcdCluster {
    /// Starts a fresh cluster of `size` members and waits until every one answers `/health`
    /// (which needs an elected leader).
    pub async fn start(size: usize) -> anyhow::Result<EtcdCluster> {
        let binary = etcd_binary()?;
        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            let dir = tempfile::Builder::new()
                .prefix("herald-etcd-cluster-")
                .tempdir()
                .context("creating the etcd cluster's temp dir")?;
            let mut members = Vec::with_capacity(size);
            for n in 0..size {
                let held = hold_ports::<3>()?;
                let [client_port, peer_port, metrics_port] = held.each_ref().map(HeldPort::port);
                members.push(Member {
                    binary: binary.clone(),
                    name: format!("herald-etcd-{n}"),
                    client_port,
                    peer_port,
                    metrics_port,
                    _held: held,
                    tls: None,
                    quota: None,
                    data_dir: dir.path().join(format!("data-{n}")),
                    log_path: dir.path().join(format!("etcd-{n}.log")),
                    initial_cluster: String::new(),
                    child: None,
                });
            }
            let initial_cluster = members
                .iter()
                .map(|m| format!("{}={}", m.name, m.peer_url()))
                .collect::<Vec<_>>()
                .join(",");
            for member in &mut members {
                member.initial_cluster = initial_cluster.clone();
                member.spawn()?;
            }
            let mut outcome = Ok(());
            for member in &mut members {
                outcome = member.wait_ready().await;
                if outcome.is_err() {
                    break;
                }
            }
            match outcome {
                Ok(()) => return Ok(EtcdCluster { members, _dir: dir }),
                Err(StartError::PortTaken(error)) => {
                    tracing::debug!(%error, "etcd cluster port taken; retrying with new ports");
                    last_error = Some(error);
                }
                Err(StartError::Failed(error)) => return Err(error),
            }
        }
        Err(last_error
            .unwrap_or_else(|| anyhow::anyhow!("no attempt made"))
            .context(format!(
                "the etcd cluster did not start after {PORT_ATTEMPTS} port choices"
            )))
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::client_url).collect()
    }

    /// Kills member `n` (SIGKILL, like a crash). Its data stays.
    pub fn stop(&mut self, n: usize) {
        self.members[n].kill();
    }

    /// Starts member `n` again on its ports and data, and waits until it answers `/health`
    /// (so the cluster has a leader again).
    pub async fn restart(&mut self, n: usize) -> anyhow::Result<()> {
        let member = &mut self.members[n];
        member.kill();
        member.spawn()?;
        member.wait_ready().await.map_err(StartError::into_inner)
    }

    /// Starts members `ns` again together (a cluster without quorum needs several back before
    /// any is healthy), and waits until each answers `/health`.
    pub async fn restart_all(&mut self, ns: &[usize]) -> anyhow::Result<()> {
        for &n in ns {
            self.members[n].kill();
            self.members[n].spawn()?;
        }
        for &n in ns {
            self.members[n]
                .wait_ready()
                .await
                .map_err(StartError::into_inner)?;
        }
        Ok(())
    }
}

// === impl Member ===

/// One etcd process: its identity, ports, files and, while running, its child process.
#[derive(Debug)]
struct Member {
    binary: PathBuf,
    name: String,
    client_port: u16,
    peer_port: u16,
    /// Serves `/health` over plain HTTP, whatever the client port speaks.
    metrics_port: u16,
    /// The three ports, kept while the member is down.
    _held: [HeldPort; 3],
    /// Client TLS, when the member speaks it.
    tls: Option<EtcdTls>,
    /// `--quota-backend-bytes`, when not etcd's default.
    quota: Option<u64>,
    data_dir: PathBuf,
    /// etcd's stdout and stderr, appended to across restarts.
    log_path: PathBuf,
    /// `name=peer_url,...` for every member of the cluster this member belongs to.
    initial_cluster: String,
    child: Option<Child>,
}

/// A member's client TLS files.
#[derive(Clone, Debug)]
struct EtcdTls {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
    /// Where the files are; kept as long as a member may read them.
    _dir: Arc<TempDir>,
}

impl Member {
    fn client_url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    #[cfg_attr(not(test), allow(dead_code))]
    fn client_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.client_port))
    }

    fn health_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.metrics_port))
    }

    /// Spawns the process and waits for `/health`; on failure the process is killed.
    async fn start(&mut self) -> Result<(), StartError> {
        self.spawn().map_err(StartError::Failed)?;
        let result = self.wait_ready().await;
        if result.is_err() {
            self.kill();
        }
        result
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("opening {}", self.log_path.display()))?;
        let log_err = log.try_clone().context("duplicating the etcd log handle")?;
        let client_url = self.client_url();
        let peer_url = self.peer_url();
        let metrics_url = format!("http://127.0.0.1:{}", self.metrics_port);
        let mut command = Command::new(&self.binary);
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        if let Some(quota) = self.quota {
            command.arg(format!("--quota-backend-bytes={quota}"));
        }
        let child = command
            .arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--listen-metrics-urls", &metrics_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args([
                "--logger",
                "zap",
                "--log-outputs",
                "stderr",
                "--log-level",
                "error",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .spawn()
            .with_context(|| format!("spawning {}", self.binary.display()))?;
        self.child = Some(child);
        Ok(())
    }

    async fn wait_ready(&mut self) -> Result<(), StartError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                // Give the process's last words a moment to reach the log file.
                tokio::time::sleep(Duration::from_millis(100)).await;
                let tail = self.log_tail();
                let error = anyhow::anyhow!(
                    "etcd at {} exited during startup with {status}; log tail:\n{tail}",
                    self.client_url()
                );
                // A port taken between choosing it and etcd binding it is the usual reason; an
                // early exit that left no words at all is treated the same (new ports, again).
                return Err(
                    if tail.contains("address already in use") || tail.trim().is_empty() {
                        StartError::PortTaken(error)
                    } else {
                        StartError::Failed(error)
                    },
                );
            }
            let Err(probe) = probe_health(self.health_addr()).await else {
                return Ok(());
            };
            if Instant::now() >= deadline {
                return Err(StartError::Failed(anyhow::anyhow!(
                    "etcd at {} not healthy after {READY_TIMEOUT:?} (last probe: {probe:#}); \
                     log tail:\n{}",
                    self.client_url(),
                    self.log_tail()
                )));
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    /// Kills and reaps the process, if any. SIGKILL is delivered at once, so the wait is short.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Err(error) = child.kill() {
                tracing::warn!(%error, pid = child.id(), "killing etcd");
            }
            if let Err(error) = child.wait() {
                tracing::warn!(%error, pid = child.id(), "reaping etcd");
            }
        }
    }

    fn log_tail(&self) -> String {
        match fs::read_to_string(&self.log_path) {
            Ok(log) => {
                let lines: Vec<&str> = log.lines().collect();
                lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
            }
            Err(error) => format!("<cannot read {}: {error}>", self.log_path.display()),
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

// === helpers ===

/// Finds the etcd binary, or explains how to install it.
fn etcd_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(ETCD_BINARY_ENV) {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        bail!("{ETCD_BINARY_ENV}={} is not a file", path.display());
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("etcd"))
        .find(|candidate| candidate.is_file());
    if let Some(path) = on_path {
        return Ok(path);
    }
    let default = PathBuf::from(DEFAULT_ETCD_BINARY);
    if default.is_file() {
        return Ok(default);
    }
    bail!(
        "etcd not found: set {ETCD_BINARY_ENV}, put `etcd` on PATH, or install it with \
         `apt-get install -y etcd-server`"
    )
}

/// Reserves distinct free loopback ports, held for as long as the member lives so that its
/// restarts find them free ([`HeldPort`]).
fn hold_ports<const N: usize>() -> anyhow::Result<[HeldPort; N]> {
    let held = (0..N)
        .map(|_| HeldPort::new())
        .collect::<Result<Vec<_>, _>>()
        .context("reserving a free loopback port")?;
    held.try_into()
        .map_err(|_| anyhow::anyhow!("reserved the wrong number of ports"))
}

/// One `GET /health` that must answer 200 with `"health":"true"`.
async fn probe_health(addr: SocketAddr) -> anyhow::Result<()> {
    let (status, body) = http_request(addr, "GET", "/health", None).await?;
    if status == 200 && body.contains(r#""health":"true""#) {
        Ok(())
    } else {
        bail!("/health answered {status}: {body}")
    }
}

/// A minimal plain-HTTP client for etcd's health endpoint and JSON gateway.
///
/// It speaks HTTP/1.0 so the server closes the connection after an unchunked response, which
/// makes "read to end" the whole response. Returns the status code and body.
async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    json_body: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let body = json_body.unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        anyhow::Ok(response)
    };
    let response = tokio::time::timeout(PROBE_TIMEOUT, exchange)
        .await
        .with_context(|| format!("{method} {path} on {addr} timed out"))?
        .with_context(|| format!("{method} {path} on {addr}"))?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("malformed HTTP response from {addr}: {response:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("no status code in {head:?}"))?;
    Ok((status, body.to_owned()))
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as B64;
    use serde_json::{Value, json};

    use super::*;

    /// Puts `key = value` through etcd's HTTP/JSON gateway.
    async fn put(etcd: &Etcd, key: &str, value: &str) -> anyhow::Result<()> {
        let body = json!({ "key": B64.encode(key), "value": B64.encode(value) }).to_string();
        let (status, reply) =
            http_request(etcd.member.client_addr(), "POST", "/v3/kv/put", Some(&body)).await?;
        anyhow::ensure!(status == 200, "put answered {status}: {reply}");
        Ok(())
    }

    /// Gets `key` through etcd's HTTP/JSON gateway.
    async fn get(etcd: &Etcd, key: &str) -> anyhow::Result<Option<String>> {
        let body = json!({ "key": B64.encode(key) }).to_string();
        let (status, reply) = http_request(
            etcd.member.client_addr(),
            "POST",
            "/v3/kv/range",
            Some(&body),
        )
        .await?;
        anyhow::ensure!(status == 200, "range answered {status}: {reply}");
        let reply: Value = serde_json::from_str(&reply)?;
        let Some(value) = reply["kvs"][0]["value"].as_str() else {
            return Ok(None);
        };
        Ok(Some(String::from_utf8(B64.decode(value)?)?))
    }

    #[tokio::test]
    async fn starts_and_answers_health() -> anyhow::Result<()> {
        let etcd = Etcd::start().await?;
        assert!(etcd.endpoint().starts_with("http://127.0.0.1:"));
        probe_health(etcd.member.client_addr()).await?;
        assert!(
            etcd.data_dir().join("member").is_dir(),
            "etcd wrote no data"
        );
        Ok(())
    }

    #[tokio::test]
    async fn is_a_real_kv_store_that_survives_restart() -> anyhow::Result<()> {
        let mut etcd = Etcd::start().await?;
        let endpoint = etcd.endpoint();
        put(&etcd, "/herald/v1/test", "kept").await?;
        assert_eq!(
            get(&etcd, "/herald/v1/test").await?.as_deref(),
            Some("kept")
        );
        assert_eq!(get(&etcd, "/herald/v1/missing").await?, None);

        etcd.stop().await;
        assert!(!etcd.is_running());
        assert!(
            probe_health(etcd.member.client_addr()).await.is_err(),
            "a stopped etcd still answers"
        );

        etcd.restart().await?;
        assert_eq!(etcd.endpoint(), endpoint, "restart must keep the endpoint");
        assert_eq!(
            get(&etcd, "/herald/v1/test").await?.as_deref(),
            Some("kept")
        );
        Ok(())
    }

    #[tokio::test]
    async fn drop_kills_the_process_and_removes_the_dir() -> anyhow::Result<()> {
        let etcd = Etcd::start().await?;
        let addr = etcd.member.client_addr();
        let dir = etcd._dir.path().to_owned();
        drop(etcd);
        assert!(!dir.exists(), "{} still exists", dir.display());
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "etcd still listens"
        );
        Ok(())
    }
}
