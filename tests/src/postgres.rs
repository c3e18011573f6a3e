//! A real PostgreSQL server for end-to-end tests.
//!
//! [`Postgres`] owns one `postgres` server process, the fresh cluster it serves (made by
//! `initdb` in a temporary directory that also holds the socket dir and the captured log) and
//! its loopback port. The cluster has one superuser, `herald`, trusted without a password, and
//! one database, `herald`: [`Postgres::url`] is `postgres://herald@127.0.0.1:<port>/herald`.
//! Invariants:
//!
//! - The port stays the same for the handle's whole life and is held while the server is down
//!   ([`HeldPort`]; PostgreSQL binds with `SO_REUSEADDR`, so it can listen on a held port), so
//!   [`Postgres::start_again`] brings back the same data at the same [`Postgres::url`].
//! - The child process is the postmaster itself (never `pg_ctl` nor a `runuser` wrapper), so
//!   the handle's signals reach the server. When the handle is dropped the server is shut down
//!   (immediate shutdown, then SIGKILL) and reaped, then the directory removed.
//! - Every startup failure carries the tail of the server's own log.
//!
//! The binaries come from `$HERALD_TEST_PG_BIN` (a directory holding `initdb`, `postgres` and
//! `createdb`), else the highest-numbered `/usr/lib/postgresql/<version>/bin` holding `initdb`
//! (Debian's `postgresql` package). PostgreSQL refuses to run as root: when the tests run as
//! root, `initdb` and `postgres` run as the `postgres` system user (which that package creates),
//! so the temporary directory must be reachable by that user (it is made world-traversable;
//! `$TMPDIR` must be too). [`available`] tells whether the binaries were found.
//!
//! The server is tuned for tests, not durability: `fsync`, `synchronous_commit` and
//! `full_page_writes` are off, so a machine crash may lose data, a killed server does not.
//! [`Postgres::start_durable`] keeps PostgreSQL's durable defaults, for benchmarks.

use std::fs::{self, OpenOptions};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tempfile::TempDir;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::port::{HeldPort, StartError};

/// Environment variable naming the directory that holds PostgreSQL's binaries.
pub const PG_BIN_ENV: &str = "HERALD_TEST_PG_BIN";

/// Where Debian's `postgresql` packages install each major version, as `<version>/bin`.
const DEBIAN_PG_ROOT: &str = "/usr/lib/postgresql";

/// The system user the server runs as when the tests run as root.
const SERVER_USER: &str = "postgres";

/// The cluster's superuser, trusted without a password.
const ROLE: &str = "herald";

/// The database created for the tests.
const DATABASE: &str = "herald";

/// What the postmaster logs once it accepts connections.
const READY_LINE: &str = "database system is ready to accept connections";

/// How long a starting server (including crash recovery) may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Pause between two readiness probes, and between two checks for a stopping server's exit.
const READY_POLL: Duration = Duration::from_millis(50);

/// Bound on one TCP connect, so a half-open socket cannot eat the whole ready timeout.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a fast shutdown (SIGINT) may take before the server is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long dropping the handle waits for an immediate shutdown (SIGQUIT) before SIGKILL.
const QUIT_TIMEOUT: Duration = Duration::from_secs(2);

/// Pause between two checks for an exit while dropping (a blocking sleep).
const QUIT_POLL: Duration = Duration::from_millis(10);

/// How often a start is retried with a fresh port when another process took it meanwhile.
const PORT_ATTEMPTS: usize = 5;

/// How many log lines a startup error shows.
const LOG_TAIL_LINES: usize = 40;

/// Whether PostgreSQL's binaries were found (`$HERALD_TEST_PG_BIN`, else Debian's
/// `/usr/lib/postgresql/<version>/bin`), so a test can fail with a clear message when not.
pub fn available() -> bool {
    bin_dir().is_ok()
}

/// A PostgreSQL server on a loopback port with a fresh cluster, shut down when dropped.
#[derive(Debug)]
pub struct Postgres {
    /// The directory holding `initdb`, `postgres` and `createdb`.
    bin: PathBuf,
    /// Who the server runs as, when that is not the current user (the tests run as root).
    owner: Option<Owner>,
    data_dir: PathBuf,
    /// The server's own Unix socket directory, so concurrent servers never share one.
    sock_dir: PathBuf,
    /// `initdb`'s and the server's stdout and stderr, appended to across restarts.
    log_path: PathBuf,
    /// Where the current server run's output starts in the log.
    log_offset: u64,
    /// The port, kept while the server is down.
    port: HeldPort,
    /// The server's certificate and key files, when it speaks TLS.
    tls: Option<(PathBuf, PathBuf)>,
    /// PostgreSQL's durable defaults rather than the tests' fast settings.
    durable: bool,
    /// The postmaster, while running.
    child: Option<Child>,
    /// Whether [`Postgres::freeze`] stopped its processes (thawed again before it is shut down).
    frozen: bool,
    /// Holds the data dir, socket dir and log. `Drop` shuts the server down before any field is
    /// dropped, so it is removed after the process died.
    dir: TempDir,
}

/// A system user's ids.
#[derive(Clone, Copy, Debug)]
struct Owner {
    uid: u32,
    gid: u32,
}

// === impl Postgres ===

impl Postgres {
    /// Creates a fresh cluster, starts a server on a free loopback port, waits until it accepts
    /// connections and creates the `herald` database.
    pub async fn start() -> anyhow::Result<Postgres> {
        Self::start_with(None, false).await
    }

    /// Starts one with PostgreSQL's durable defaults (`fsync`, `synchronous_commit` and
    /// `full_page_writes` on, 256 MB of shared buffers), for benchmarks whose numbers must
    /// hold for a production server.
    pub async fn start_durable() -> anyhow::Result<Postgres> {
        Self::start_with(None, true).await
    }

    /// Starts one that also speaks TLS, with a certificate from `ca` for `localhost` and
    /// `127.0.0.1` (clients may still connect without TLS).
    pub async fn start_tls(ca: &crate::TestCa) -> anyhow::Result<Postgres> {
        Self::start_with(Some(ca), false).await
    }

    async fn start_with(ca: Option<&crate::TestCa>, durable: bool) -> anyhow::Result<Postgres> {
        let bin = bin_dir()?;
        let owner = server_owner().await?;
        let dir = tempfile::Builder::new()
            .prefix("herald-pg-")
            .tempdir()
            .context("creating the PostgreSQL temp dir")?;
        // Temp dirs are 0700; the server user must be able to enter this one.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))
            .with_context(|| format!("making {} traversable", dir.path().display()))?;
        let data_dir = dir.path().join("data");
        let sock_dir = dir.path().join("sock");
        for path in [&data_dir, &sock_dir] {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(path)
                .with_context(|| format!("creating {}", path.display()))?;
            if let Some(owner) = owner {
                std::os::unix::fs::chown(path, Some(owner.uid), Some(owner.gid)).with_context(
                    || format!("giving {} to the {SERVER_USER} user", path.display()),
                )?;
            }
        }
        let tls = match ca {
            None => None,
            Some(ca) => {
                let tls_dir = dir.path().join("tls");
                fs::create_dir(&tls_dir)?;
                let (cert, key) =
                    ca.write_pair(&tls_dir, "postgres", crate::tls::CertUse::Server)?;
                // The server refuses a key file others may read.
                fs::set_permissions(&key, fs::Permissions::from_mode(0o600))?;
                if let Some(owner) = owner {
                    for path in [&cert, &key] {
                        std::os::unix::fs::chown(path, Some(owner.uid), Some(owner.gid))
                            .with_context(|| format!("giving {} away", path.display()))?;
                    }
                }
                Some((cert, key))
            }
        };
        let mut pg = Postgres {
            bin,
            owner,
            data_dir,
            sock_dir,
            log_path: dir.path().join("postgres.log"),
            log_offset: 0,
            port: HeldPort::new().context("reserving a free loopback port")?,
            tls,
            durable,
            child: None,
            frozen: false,
            dir,
        };
        pg.initdb().await?;

        let mut attempt = 1;
        loop {
            match pg.start_server().await {
                Ok(()) => break,
                Err(StartError::PortTaken(error)) if attempt < PORT_ATTEMPTS => {
                    tracing::debug!(%error, "PostgreSQL port taken; retrying with a new port");
                    pg.port = HeldPort::new().context("reserving a free loopback port")?;
                    attempt += 1;
                }
                Err(StartError::PortTaken(error)) => {
                    return Err(error.context(format!(
                        "PostgreSQL did not start after {PORT_ATTEMPTS} port choices"
                    )));
                }
                Err(StartError::Failed(error)) => return Err(error),
            }
        }
        pg.createdb().await?;
        Ok(pg)
    }

    /// The connection URL, e.g. `postgres://herald@127.0.0.1:41234/herald`.
    pub fn url(&self) -> String {
        format!("postgres://{ROLE}@127.0.0.1:{}/{DATABASE}", self.port())
    }

    /// The server's loopback port (the same across [`Postgres::start_again`]).
    pub fn port(&self) -> u16 {
        self.port.port()
    }

    /// The server's loopback address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port()))
    }

    /// The cluster's data directory (kept across [`Postgres::stop`]).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Whether the server process is running (it may still be starting, or have just exited on
    /// its own).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Shuts the server down: a fast shutdown (SIGINT: open transactions are rolled back and
    /// clients disconnected), or SIGKILL if it has not exited within 10 s. The data and the
    /// port stay. Idempotent.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        let Some(pid) = self.child.as_ref().map(Child::id) else {
            return Ok(());
        };
        if self.frozen {
            self.thaw().await?;
        }
        // The child stays in `self.child` across every await, so a cancelled stop still leaves
        // it to `Drop`.
        let signalled = send_signal(pid, "INT").await;
        if let Err(error) = &signalled {
            tracing::warn!(error = %format!("{error:#}"), pid, "asking PostgreSQL to shut down");
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            let Some(child) = self.child.as_mut() else {
                return Ok(());
            };
            match child.try_wait() {
                Ok(Some(status)) => {
                    tracing::debug!(%status, pid, "PostgreSQL stopped");
                    self.child = None;
                    return Ok(());
                }
                Ok(None) if signalled.is_ok() && Instant::now() < deadline => {}
                Ok(None) => {
                    tracing::warn!(
                        pid,
                        "PostgreSQL did not shut down in {STOP_TIMEOUT:?}; killing it"
                    );
                    self.kill();
                    return Ok(());
                }
                Err(error) => {
                    self.kill();
                    return Err(error).context("waiting for PostgreSQL to shut down");
                }
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    /// Freezes the server as a host that hangs would: the postmaster and every backend stop
    /// (SIGSTOP) with their connections open, so clients wait for answers that do not come.
    /// [`Postgres::thaw`] resumes them; a frozen server is thawed before it is shut down.
    pub async fn freeze(&mut self) -> anyhow::Result<()> {
        let pid = self
            .child
            .as_ref()
            .map(Child::id)
            .context("PostgreSQL is not running")?;
        // The postmaster first, so it starts no backend the loop would miss.
        send_signal(pid, "STOP").await?;
        self.frozen = true;
        for child in children_of(pid) {
            send_signal(child, "STOP").await?;
        }
        Ok(())
    }

    /// Resumes a server [`Postgres::freeze`] stopped.
    pub async fn thaw(&mut self) -> anyhow::Result<()> {
        let Some(pid) = self.child.as_ref().map(Child::id) else {
            return Ok(());
        };
        for child in children_of(pid) {
            send_signal(child, "CONT").await?;
        }
        send_signal(pid, "CONT").await?;
        self.frozen = false;
        Ok(())
    }

    /// Starts the server again on the same data dir and port, and waits until it accepts
    /// connections (after crash recovery, if it was killed). A running server is stopped first.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        self.stop().await?;
        self.start_server().await.map_err(StartError::into_inner)
    }

    /// The last `lines` lines of the log (`initdb`'s output, then every server run's).
    pub fn log_tail(&self, lines: usize) -> String {
        match fs::read_to_string(&self.log_path) {
            Ok(log) => {
                let all: Vec<&str> = log.lines().collect();
                all[all.len().saturating_sub(lines)..].join("\n")
            }
            Err(error) => format!("<cannot read {}: {error}>", self.log_path.display()),
        }
    }

    /// `program` run as the server's user (when the tests run as root) in the temp dir, in the
    /// C locale, its output appended to the log. The ids are set in the child between fork and
    /// exec, so the child *is* the program: a `runuser` wrapper would turn SIGINT into a slow
    /// smart shutdown, and would leave the server running when SIGKILLed itself.
    fn server_user_command(&self, program: &Path) -> anyhow::Result<Command> {
        let (log, log_err) = self.open_log()?;
        let mut command = Command::new(program);
        command
            .current_dir(self.dir.path())
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        if let Some(owner) = self.owner {
            command.uid(owner.uid).gid(owner.gid);
        }
        Ok(command)
    }

    /// Creates the cluster in the (empty) data dir.
    async fn initdb(&self) -> anyhow::Result<()> {
        let initdb = self.bin.join("initdb");
        let mut command = tokio::process::Command::from(self.server_user_command(&initdb)?);
        command.arg("-D").arg(&self.data_dir).args([
            "-U",
            ROLE,
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        ]);
        let status = command
            .status()
            .await
            .with_context(|| format!("running {}", initdb.display()))?;
        if !status.success() {
            bail!(
                "{} failed with {status}; log tail:\n{}",
                initdb.display(),
                self.log_tail(LOG_TAIL_LINES)
            );
        }
        Ok(())
    }

    /// Creates the `herald` database through the running server.
    async fn createdb(&self) -> anyhow::Result<()> {
        let createdb = self.bin.join("createdb");
        let output = tokio::process::Command::new(&createdb)
            .args(["-h", "127.0.0.1", "-p", &self.port().to_string()])
            .args(["-U", ROLE, "--no-password", DATABASE])
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null())
            .output()
            .await
            .with_context(|| format!("running {}", createdb.display()))?;
        if !output.status.success() {
            bail!(
                "{} {DATABASE} on port {} failed with {}: {}{}; server log tail:\n{}",
                createdb.display(),
                self.port(),
                output.status,
                String::from_utf8_lossy(&output.stdout).trim(),
                String::from_utf8_lossy(&output.stderr).trim(),
                self.log_tail(LOG_TAIL_LINES)
            );
        }
        Ok(())
    }

    /// Spawns the server and waits until it is ready; on failure the process is killed.
    async fn start_server(&mut self) -> Result<(), StartError> {
        self.spawn().map_err(StartError::Failed)?;
        let result = self.wait_ready().await;
        if result.is_err() {
            self.kill();
        }
        result
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        self.log_offset = fs::metadata(&self.log_path).map_or(0, |meta| meta.len());
        let postgres = self.bin.join("postgres");
        let mut command = self.server_user_command(&postgres)?;
        command
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-p")
            .arg(self.port().to_string())
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.sock_dir.display()
            ))
            .args(["-c", "max_connections=200"]);
        let settings: &[&str] = if self.durable {
            &[
                "shared_buffers=256MB",
                "work_mem=16MB",
                "max_wal_size=4GB",
                "checkpoint_timeout=15min",
            ]
        } else {
            &[
                "shared_buffers=64MB",
                "fsync=off",
                "synchronous_commit=off",
                "full_page_writes=off",
            ]
        };
        for setting in settings {
            command.args(["-c", setting]);
        }
        if let Some((cert, key)) = &self.tls {
            command.args(["-c", "ssl=on", "-c"]);
            command.arg(format!("ssl_cert_file={}", cert.display()));
            command.arg("-c");
            command.arg(format!("ssl_key_file={}", key.display()));
        }
        let child = command
            .spawn()
            .with_context(|| format!("spawning {}", postgres.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until the server accepts TCP connections and has logged that it is ready.
    async fn wait_ready(&mut self) -> Result<(), StartError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                // Give the process's last words a moment to reach the log file.
                tokio::time::sleep(Duration::from_millis(100)).await;
                let run_log = self.run_log();
                let error = anyhow::anyhow!(
                    "PostgreSQL on port {} exited during startup with {status}; log tail:\n{}",
                    self.port(),
                    self.log_tail(LOG_TAIL_LINES)
                );
                // A port taken between choosing it and the server binding it: new port, again.
                return Err(
                    if run_log.contains("could not bind")
                        || run_log.contains("Address already in use")
                    {
                        StartError::PortTaken(error)
                    } else {
                        StartError::Failed(error)
                    },
                );
            }
            let Err(probe) = self.probe().await else {
                return Ok(());
            };
            if Instant::now() >= deadline {
                return Err(StartError::Failed(anyhow::anyhow!(
                    "PostgreSQL on port {} not ready after {READY_TIMEOUT:?} (last probe: \
                     {probe:#}); log tail:\n{}",
                    self.port(),
                    self.log_tail(LOG_TAIL_LINES)
                )));
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    /// One readiness check: a TCP connection is accepted and this run logged [`READY_LINE`].
    async fn probe(&self) -> anyhow::Result<()> {
        tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect(self.addr()))
            .await
            .with_context(|| format!("connecting to {} timed out", self.addr()))?
            .with_context(|| format!("connecting to {}", self.addr()))?;
        if !self.run_log().contains(READY_LINE) {
            bail!("accepts connections but has not logged {READY_LINE:?} yet");
        }
        Ok(())
    }

    /// What the current server run has logged so far.
    fn run_log(&self) -> String {
        let log = fs::read(&self.log_path).unwrap_or_default();
        let start = usize::try_from(self.log_offset)
            .unwrap_or(usize::MAX)
            .min(log.len());
        String::from_utf8_lossy(&log[start..]).into_owned()
    }

    /// Opens the log for appending, twice (stdout and stderr).
    fn open_log(&self) -> anyhow::Result<(fs::File, fs::File)> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("opening {}", self.log_path.display()))?;
        let log_err = log
            .try_clone()
            .context("duplicating the PostgreSQL log handle")?;
        Ok((log, log_err))
    }

    /// Shuts the server down at once and reaps it, if running: an immediate shutdown
    /// (SIGQUIT, which also ends the backends and frees the shared memory), then SIGKILL if it
    /// has not exited within [`QUIT_TIMEOUT`]. Blocks (briefly), as it also runs in `Drop`.
    fn kill(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id();
        if std::mem::take(&mut self.frozen) {
            // Stopped processes do not act on signals, and backends left stopped would outlive
            // their postmaster.
            for process in children_of(pid).into_iter().chain([pid]) {
                let _ = Command::new("kill")
                    .args(["-s", "CONT", "--", &process.to_string()])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        let quit = Command::new("kill")
            .args(["-s", "QUIT", "--", &pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if matches!(quit, Ok(status) if status.success()) {
            for _ in 0..QUIT_TIMEOUT.as_millis() / QUIT_POLL.as_millis() {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(QUIT_POLL);
            }
        }
        if let Err(error) = child.kill() {
            tracing::warn!(%error, pid, "killing PostgreSQL");
        }
        if let Err(error) = child.wait() {
            tracing::warn!(%error, pid, "reaping PostgreSQL");
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.kill();
    }
}

// === helpers ===

/// Finds the directory holding PostgreSQL's binaries, or explains how to install them.
fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os(PG_BIN_ENV) {
        let dir = PathBuf::from(dir);
        if dir.join("initdb").is_file() && dir.join("postgres").is_file() {
            return Ok(dir);
        }
        bail!(
            "{PG_BIN_ENV}={} holds no `initdb` and `postgres`",
            dir.display()
        );
    }
    let newest = fs::read_dir(DEBIAN_PG_ROOT)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = entry
                .file_name()
                .to_str()?
                .split('.')
                .map(|part| part.parse::<u32>().ok())
                .collect::<Option<Vec<u32>>>()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .max();
    if let Some((_, bin)) = newest {
        return Ok(bin);
    }
    bail!(
        "PostgreSQL not found: set {PG_BIN_ENV} to the directory holding `initdb`, `postgres` \
         and `createdb`, or install it with `apt-get install -y postgresql`"
    )
}

/// Who must run `initdb` and the server: the `postgres` user when we are root (PostgreSQL
/// refuses to run as root), else the current user (`None`).
async fn server_owner() -> anyhow::Result<Option<Owner>> {
    if id(&["-u"]).await? != 0 {
        return Ok(None);
    }
    let owner = async {
        anyhow::Ok(Owner {
            uid: id(&["-u", SERVER_USER]).await?,
            gid: id(&["-g", SERVER_USER]).await?,
        })
    }
    .await
    .with_context(|| {
        format!(
            "PostgreSQL refuses to run as root, and the tests run as root: looking up the \
             `{SERVER_USER}` user to run it as (installing the `postgresql` package creates it)"
        )
    })?;
    Ok(Some(owner))
}

/// Runs `id <args>` and parses the number it prints.
async fn id(args: &[&str]) -> anyhow::Result<u32> {
    let shown = format!("`id {}`", args.join(" "));
    let output = tokio::process::Command::new("id")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {shown}"))?;
    if !output.status.success() {
        bail!(
            "{shown} failed with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let printed = String::from_utf8_lossy(&output.stdout);
    printed
        .trim()
        .parse()
        .with_context(|| format!("{shown} printed {printed:?}"))
}

/// The processes whose parent is `pid` (from `/proc`).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return vec![];
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|candidate| {
            // `/proc/<pid>/stat`: "pid (comm) state ppid …"; comm may hold spaces and parens.
            fs::read_to_string(format!("/proc/{candidate}/stat"))
                .ok()
                .and_then(|stat| {
                    let after = &stat[stat.rfind(')')? + 1..];
                    after.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// Sends signal `name` (e.g. `INT`) to process `pid` with the `kill` command.
async fn send_signal(pid: u32, name: &str) -> anyhow::Result<()> {
    let output = tokio::process::Command::new("kill")
        .args(["-s", name, "--", &pid.to_string()])
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running `kill -s {name} -- {pid}`"))?;
    if !output.status.success() {
        bail!(
            "`kill -s {name} -- {pid}` failed with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The name of the database `url` connects to, asked of the server.
    async fn current_database(url: &str) -> anyhow::Result<String> {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        Ok(client
            .query_one("SELECT current_database()", &[])
            .await?
            .get(0))
    }

    #[tokio::test]
    async fn starts_with_the_herald_database() -> anyhow::Result<()> {
        let pg = Postgres::start().await?;
        assert!(pg.is_running());
        assert_eq!(
            pg.url(),
            format!("postgres://herald@127.0.0.1:{}/herald", pg.port())
        );
        assert_eq!(pg.addr().port(), pg.port());
        TcpStream::connect(pg.addr()).await?;
        assert_eq!(current_database(&pg.url()).await?, DATABASE);
        assert!(pg.log_tail(LOG_TAIL_LINES).contains(READY_LINE));
        Ok(())
    }

    #[tokio::test]
    async fn stops_and_starts_again_on_the_same_port() -> anyhow::Result<()> {
        let mut pg = Postgres::start().await?;
        let url = pg.url();

        pg.stop().await?;
        assert!(!pg.is_running());
        assert!(
            TcpStream::connect(pg.addr()).await.is_err(),
            "a stopped PostgreSQL still accepts connections"
        );
        pg.stop().await?;

        pg.start_again().await?;
        assert_eq!(pg.url(), url, "starting again must keep the URL");
        TcpStream::connect(pg.addr()).await?;
        assert_eq!(
            current_database(&pg.url()).await?,
            DATABASE,
            "the herald database must survive the restart"
        );
        Ok(())
    }

    #[tokio::test]
    async fn drop_shuts_down_and_removes_the_dir() -> anyhow::Result<()> {
        let pg = Postgres::start().await?;
        let addr = pg.addr();
        let dir = pg.dir.path().to_owned();
        drop(pg);
        assert!(!dir.exists(), "{} still exists", dir.display());
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "PostgreSQL still listens"
        );
        Ok(())
    }
}
