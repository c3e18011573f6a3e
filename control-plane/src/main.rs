//! `herald-control-plane`: parses the configuration and runs the control plane.

use clap::Parser;
use herald_control_plane::{Config, run};
use herald_core::shutdown::signal;

/// Herald's control plane: subscriptions, config streams to agents, the delivery log.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    config: Config,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(err) => {
            let code = if err.use_stderr() { 64 } else { 0 };
            let _ = err.print();
            return std::process::ExitCode::from(code);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let listener = match tokio::net::TcpListener::bind(args.config.listen).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("listen={} is not usable: {err}", args.config.listen);
            return std::process::ExitCode::from(64);
        }
    };
    match run(args.config, listener, signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "control plane stopped");
            std::process::ExitCode::FAILURE
        }
    }
}
