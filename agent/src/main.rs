//! `herald-agent`: parses the configuration and runs the agent.

use clap::Parser;
use herald_agent::listen::Listener;
use herald_agent::{Config, run};
use herald_core::shutdown::signal;

/// Herald's agent: accepts events over gRPC and delivers them as signed webhooks.
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
    let listener = match Listener::bind(&args.config.listen).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("listen={} is not usable: {err}", args.config.listen);
            return std::process::ExitCode::from(64);
        }
    };
    match run(args.config, listener, signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "agent stopped");
            std::process::ExitCode::FAILURE
        }
    }
}
