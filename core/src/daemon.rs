//! What every Herald daemon does around its real work, written once: parse flags (a bad value
//! exits with code 64, `EX_USAGE`, after clap's message), log to stderr filtered by `RUST_LOG`
//! (human-readable, or JSON lines with `--log-format json`) and export traces over OTLP when
//! the OpenTelemetry variables ask for it ([`crate::telemetry`]), tell systemd when the service is
//! ready and when it is stopping (`Type=notify`), and turn the outcome of `run` into an exit
//! code.

use std::fmt::Display;
use std::future::Future;
use std::process::ExitCode;

use crate::telemetry::LogFormat;

/// The exit code for bad configuration.
pub const EXIT_USAGE: u8 = 64;
/// The exit code for data the daemon will not use as it is (`EX_DATAERR`).
pub const EXIT_DATA: u8 = 65;

/// The logging flags every daemon takes.
#[derive(Clone, Debug, clap::Args)]
pub struct Logging {
    /// Log format: text for people, json for collectors. Levels come from RUST_LOG.
    #[arg(long, env = "HERALD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// A daemon's command line: its flags include [`Logging`].
pub trait DaemonArgs: clap::Parser {
    /// The logging flags.
    fn logging(&self) -> &Logging;
}

/// Parses `T` from the command line and environment, sets up logs, and runs `body`; a failure
/// is logged and exits 1, bad flags exit 64.
pub async fn main<T, F, Fut, E>(name: &str, body: F) -> ExitCode
where
    T: DaemonArgs,
    F: FnOnce(T) -> Fut,
    Fut: Future<Output = Result<(), Failure<E>>>,
    E: Display,
{
    let args = match T::try_parse() {
        Ok(args) => args,
        Err(err) => {
            let code = if err.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = err.print();
            return ExitCode::from(code);
        }
    };
    let service = format!("herald-{}", name.replace(' ', "-"));
    let telemetry = match crate::telemetry::init("info", args.logging().log_format, &service) {
        Ok(telemetry) => telemetry,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if telemetry.exporting() {
        tracing::info!(service, "exporting traces over OTLP");
    }
    let code = match body(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => {
            eprintln!("{message}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(Failure::Data(message)) => {
            tracing::error!(error = %message, "{name} will not start");
            ExitCode::from(EXIT_DATA)
        }
        Err(Failure::Run(err)) => {
            tracing::error!(error = %err, "{name} stopped");
            ExitCode::FAILURE
        }
    };
    telemetry.shutdown().await;
    code
}

/// Why a daemon stopped.
pub enum Failure<E> {
    /// A setting is unusable (`name=value is not usable: why`): exit 64.
    Usage(String),
    /// Stored data is damaged and the daemon will not guess: exit 65.
    Data(String),
    /// The daemon failed while running: exit 1.
    Run(E),
}

/// Logs human-readable lines to stderr, filtered by `RUST_LOG` (else `default`).
pub fn init_logs(default: &str) {
    init_logs_as(default, LogFormat::Text);
}

/// Logs to stderr in `format`, filtered by `RUST_LOG` (else `default`); no trace export.
pub fn init_logs_as(default: &str, format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default.into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colours());
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().with_current_span(false).init(),
    }
}

/// Whether text logs are coloured: only when stderr is a terminal (log files and the journal
/// get plain text) and `NO_COLOR` is not set.
pub fn colours() -> bool {
    use std::io::IsTerminal as _;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Tells the service manager the daemon serves (systemd `Type=notify`; nothing happens when
/// the daemon was not started by one).
pub fn notify_ready() {
    notify(&[sd_notify::NotifyState::Ready]);
}

/// Tells the service manager the daemon is draining.
pub fn notify_stopping() {
    notify(&[sd_notify::NotifyState::Stopping]);
}

fn notify(state: &[sd_notify::NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(err) = sd_notify::notify(false, state) {
        tracing::warn!(error = %err, "cannot notify the service manager");
    }
}
