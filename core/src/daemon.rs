//! What every Herald daemon does around its real work, written once: parse flags (a bad value
//! exits with code 64, `EX_USAGE`, after clap's message), log to stderr filtered by `RUST_LOG`,
//! and turn the outcome of `run` into an exit code.

use std::fmt::Display;
use std::future::Future;
use std::process::ExitCode;

/// The exit code for bad configuration.
pub const EXIT_USAGE: u8 = 64;

/// Parses `T` from the command line and environment, sets up logs, and runs `body`; a failure
/// is logged and exits 1, bad flags exit 64.
pub async fn main<T, F, Fut, E>(name: &str, body: F) -> ExitCode
where
    T: clap::Parser,
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
    init_logs("info");
    match body(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => {
            eprintln!("{message}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(Failure::Run(err)) => {
            tracing::error!(error = %err, "{name} stopped");
            ExitCode::FAILURE
        }
    }
}

/// Why a daemon stopped.
pub enum Failure<E> {
    /// A setting is unusable (`name=value is not usable: why`): exit 64.
    Usage(String),
    /// The daemon failed while running: exit 1.
    Run(E),
}

/// Logs to stderr, filtered by `RUST_LOG` (else `default`).
pub fn init_logs(default: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default.into()),
        )
        .init();
}
