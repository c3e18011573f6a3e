//! Herald's daemons as real child processes, for what only a separate process can show:
//! `kill -9`. The handle keeps the address and data directory, so a daemon can be killed and
//! started again on the same queue or log ([`AgentProcess`], [`ControlPlaneProcess`]).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use tempfile::TempDir;
use tokio::process::{Child, Command};

use crate::port::HeldPort;

/// A daemon child process (an agent or a control plane).
pub struct DaemonProcess {
    /// `agent` or `control plane`: for its log file and messages.
    name: &'static str,
    binary: PathBuf,
    args: Vec<String>,
    /// Environment variables added to the inherited ones.
    envs: Vec<(String, String)>,
    /// The agent's port, kept while it is down so a restart finds it free.
    port: HeldPort,
    /// Its log, and its data unless given a directory elsewhere.
    dir: TempDir,
    data_dir: PathBuf,
    child: Option<Child>,
}

/// Starts `herald-agent` child processes.
pub struct AgentProcess;

impl AgentProcess {
    /// Starts `binary` (the `herald-agent` executable) against `control_plane`, trusting
    /// `ca_file`, with `extra` flags; returns once it accepts connections.
    pub async fn start(
        binary: &Path,
        control_plane: &str,
        ca_file: &Path,
        extra: &[&str],
    ) -> anyhow::Result<DaemonProcess> {
        Self::start_with_env(binary, control_plane, ca_file, extra, &[]).await
    }

    /// Like [`AgentProcess::start`], with its data in `data_dir` (on a disk of the test's own)
    /// instead of a temp dir.
    pub async fn start_in(
        binary: &Path,
        control_plane: &str,
        ca_file: &Path,
        data_dir: &Path,
        extra: &[&str],
    ) -> anyhow::Result<DaemonProcess> {
        let args = Self::args(control_plane, ca_file, extra);
        DaemonProcess::start_in("agent", binary, Some(data_dir), args, &[]).await
    }

    /// Like [`AgentProcess::start`], with `envs` added to the environment.
    pub async fn start_with_env(
        binary: &Path,
        control_plane: &str,
        ca_file: &Path,
        extra: &[&str],
        envs: &[(&str, &str)],
    ) -> anyhow::Result<DaemonProcess> {
        let args = Self::args(control_plane, ca_file, extra);
        DaemonProcess::start("agent", binary, args, envs).await
    }

    /// The flags every test agent gets, then `extra`.
    fn args(control_plane: &str, ca_file: &Path, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "--control-plane".into(),
            control_plane.into(),
            "--ca-file".into(),
            ca_file.display().to_string(),
            "--shutdown-grace".into(),
            "5s".into(),
            "--allow-targets".into(),
            "127.0.0.0/8".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }
}

/// Starts `herald-control-plane` child processes.
pub struct ControlPlaneProcess;

impl ControlPlaneProcess {
    /// Starts `binary` (the `herald-control-plane` executable) on the etcd at `etcd`, its
    /// delivery log in `log_store`, with the keyring every test replica shares and `extra`
    /// flags; returns once it accepts connections.
    pub async fn start(
        binary: &Path,
        etcd: &str,
        log_store: &str,
        extra: &[&str],
    ) -> anyhow::Result<DaemonProcess> {
        let mut args: Vec<String> = vec![
            "--etcd".into(),
            etcd.into(),
            "--shutdown-grace".into(),
            "5s".into(),
            "--allow-targets".into(),
            "127.0.0.0/8".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let envs = [
            ("HERALD_LOG_STORE", log_store),
            ("HERALD_SECRETS_KEY", crate::herald::shared_keyring()),
        ];
        DaemonProcess::start("control plane", binary, args, &envs).await
    }
}

impl DaemonProcess {
    /// Starts `binary` with `--listen` and `--data-dir` of its own, then `args`, with `envs`
    /// added to the environment; returns once it accepts connections.
    async fn start(
        name: &'static str,
        binary: &Path,
        args: Vec<String>,
        envs: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        Self::start_in(name, binary, None, args, envs).await
    }

    /// Like [`DaemonProcess::start`], with `--data-dir` `data_dir` when given.
    async fn start_in(
        name: &'static str,
        binary: &Path,
        data_dir: Option<&Path>,
        args: Vec<String>,
        envs: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let data_dir = data_dir.unwrap_or(dir.path()).to_owned();
        let port = HeldPort::new()?;
        let mut all: Vec<String> = vec![
            "--listen".into(),
            port.addr().to_string(),
            "--data-dir".into(),
            data_dir.display().to_string(),
        ];
        all.extend(args);
        let mut process = DaemonProcess {
            name,
            binary: binary.to_owned(),
            args: all,
            envs: envs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            port,
            dir,
            data_dir,
            child: None,
        };
        process.spawn().await?;
        Ok(process)
    }

    /// The gRPC URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.port.addr())
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// SIGKILL: no shutdown code runs.
    pub async fn kill9(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child
                .kill()
                .await
                .with_context(|| format!("kill -9 the {}", self.name))?;
        }
        Ok(())
    }

    /// SIGTERM, without waiting: the process drains meanwhile ([`Self::terminate`] waits).
    pub async fn send_term(&self) -> anyhow::Result<()> {
        let pid = self
            .child
            .as_ref()
            .and_then(tokio::process::Child::id)
            .with_context(|| format!("the {} is not running", self.name))?;
        let sent = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await?;
        anyhow::ensure!(sent.success(), "kill -TERM {pid} failed");
        Ok(())
    }

    /// SIGTERM, then waits for the process to exit; returns its exit code.
    pub async fn terminate(&mut self, timeout: Duration) -> anyhow::Result<Option<i32>> {
        self.send_term().await?;
        self.wait_exit(timeout).await
    }

    /// Waits for the process to exit (after [`Self::send_term`]); returns its exit code.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<Option<i32>> {
        let Some(mut child) = self.child.take() else {
            anyhow::bail!("the {} is not running", self.name);
        };
        let status = tokio::time::timeout(timeout, child.wait())
            .await
            .with_context(|| {
                format!(
                    "the {} did not exit within {timeout:?} of SIGTERM",
                    self.name
                )
            })??;
        Ok(status.code())
    }

    /// How the process ended, if it has (`None` while it runs).
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// What the process wrote to stdout and stderr so far, over all its starts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir
            .path()
            .join(format!("{}.log", self.name.replace(' ', "-")))
    }

    /// Sets the environment variable `key` to `value` for the next starts.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.envs.retain(|(k, _)| k != key);
        self.envs.push((key.to_owned(), value.to_owned()));
    }

    /// Adds `extra` flags for the next starts.
    pub fn add_flags(&mut self, extra: &[&str]) {
        self.args.extend(extra.iter().map(|s| s.to_string()));
    }

    /// Starts the process again on the same address and data, expecting it to exit by itself
    /// within `timeout` (it refuses to start): its exit code, and what it wrote this time.
    pub async fn run_expecting_exit(
        &mut self,
        timeout: Duration,
    ) -> anyhow::Result<(Option<i32>, String)> {
        self.kill9().await?;
        let before = self.log().len();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut child = Command::new(&self.binary)
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        let status = tokio::time::timeout(timeout, child.wait())
            .await
            .with_context(|| format!("the {} did not exit within {timeout:?}", self.name))??;
        Ok((status.code(), self.log()[before..].to_owned()))
    }

    /// Starts the process again on the same address and data.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9().await?;
        self.spawn().await
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let child = Command::new(&self.binary)
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        self.child = Some(child);
        let addr = self.port.addr();
        crate::eventually(
            Duration::from_secs(20),
            &format!("the {} to listen", self.name),
            || async move { Ok(tokio::net::TcpStream::connect(addr).await.ok().map(|_| ())) },
        )
        .await
    }
}

/// What a daemon did when run the way systemd runs a `Type=notify` service.
#[derive(Debug)]
pub struct ServiceRun {
    /// The messages it sent to `NOTIFY_SOCKET`, in order (`READY=1`, `STOPPING=1`, …).
    pub notifications: Vec<String>,
    /// Everything it wrote to stderr (its logs).
    pub stderr: String,
    /// Its exit code after SIGTERM.
    pub exit: Option<i32>,
}

impl ServiceRun {
    /// Its stderr as JSON log lines (`--log-format json`); an error names a line that is not
    /// one (a JSON object with `level` and `fields`).
    pub fn json_log_lines(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        self.stderr
            .lines()
            .filter(|line| !line.is_empty())
            .map(|line| {
                let entry: serde_json::Value = serde_json::from_str(line)
                    .with_context(|| format!("not a JSON log line: {line}"))?;
                anyhow::ensure!(
                    entry["level"].is_string() && entry["fields"].is_object(),
                    "a log line without level and fields: {line}"
                );
                Ok(entry)
            })
            .collect()
    }
}

/// Runs `binary` with `args` (and `RUST_LOG=info`) as a `Type=notify` service: waits for
/// `READY=1` on a notify socket, sends SIGTERM, and collects what it said until it exits.
#[cfg(unix)]
pub async fn run_as_service(binary: &Path, args: &[&str]) -> anyhow::Result<ServiceRun> {
    use tokio::io::AsyncReadExt as _;
    let dir = tempfile::tempdir()?;
    let socket_path = dir.path().join("notify.sock");
    let socket = tokio::net::UnixDatagram::bind(&socket_path)?;
    let mut child = Command::new(binary)
        .args(args)
        .env("NOTIFY_SOCKET", &socket_path)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let mut stderr = child.stderr.take().context("stderr is piped")?;
    let reading = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let mut notifications = Vec::new();
    let mut buffer = vec![0u8; 4096];
    let receive = |notifications: &mut Vec<String>, n: usize, buffer: &[u8]| {
        notifications.extend(
            String::from_utf8_lossy(&buffer[..n])
                .lines()
                .map(str::to_owned),
        );
    };
    while !notifications.iter().any(|n| n == "READY=1") {
        let n = tokio::time::timeout(Duration::from_secs(30), socket.recv(&mut buffer))
            .await
            .context("no READY=1 within 30 s")??;
        receive(&mut notifications, n, &buffer);
    }
    let pid = child.id().context("the daemon has a pid")?;
    let sent = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await?;
    anyhow::ensure!(sent.success(), "kill -TERM {pid} failed");
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .context("the daemon did not exit within 30 s of SIGTERM")??;
    while let Ok(n) = socket.try_recv(&mut buffer) {
        receive(&mut notifications, n, &buffer);
    }
    Ok(ServiceRun {
        notifications,
        stderr: reading.await?,
        exit: status.code(),
    })
}
