//! `herald`: the operator CLI. Manages subscriptions, reads the delivery log, lists agents,
//! emits test events, and runs `herald dev` (everything in one process, for trying Herald).
//!
//! Exit codes: 0 success, 1 the operation failed (the message says why), 2 bad usage.

mod agents;
mod connect;
mod deliveries;
mod dev;
mod emit;
mod output;
mod subscription;

use clap::{Parser, Subcommand};

use crate::connect::Server;
use crate::output::{Format, Style};

/// Herald: signed webhook delivery with retries and central logs.
#[derive(Parser)]
#[command(name = "herald", version, about)]
struct Cli {
    /// The control plane's gRPC URL.
    #[arg(
        long,
        global = true,
        env = "HERALD_CONTROL_PLANE",
        default_value = "http://127.0.0.1:7700"
    )]
    control_plane: String,
    /// The agent's gRPC URL (http://host:port or unix:/path), for `emit`.
    #[arg(
        long,
        global = true,
        env = "HERALD_AGENT",
        default_value = "http://127.0.0.1:7701"
    )]
    agent: String,
    /// API token for the control plane (roles: read, admin).
    #[arg(long, global = true, env = "HERALD_TOKEN", hide_env_values = true, value_parser = herald_proto::bearer::Bearer::parse)]
    token: Option<herald_proto::bearer::Bearer>,
    /// Token for the agent's Emit, when the agent requires one.
    #[arg(long, global = true, env = "HERALD_AGENT_TOKEN", hide_env_values = true, value_parser = herald_proto::bearer::Bearer::parse)]
    agent_token: Option<herald_proto::bearer::Bearer>,
    /// Output format.
    #[arg(short = 'o', long, global = true, env = "HERALD_OUTPUT", value_enum, default_value_t = Style::Table)]
    output: Style,
    /// Tables without their header line (for scripts).
    #[arg(long, global = true, env = "HERALD_NO_HEADERS")]
    no_headers: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Manage subscriptions (webhook endpoints).
    #[command(subcommand, alias = "subscriptions", alias = "sub")]
    Subscription(subscription::Command),
    /// Read the central delivery log.
    #[command(subcommand, alias = "delivery")]
    Deliveries(deliveries::Command),
    /// See the agents connected to the control plane.
    #[command(subcommand, alias = "agent")]
    Agents(agents::Command),
    /// Emit an event through an agent.
    Emit(emit::Args),
    /// Run Herald in one process: control plane, agent and a receiver that prints webhooks.
    Dev(dev::Args),
    /// Print a shell completion script: `source <(herald completion bash)`.
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let control_plane = Server {
        url: cli.control_plane,
        bearer: cli.token.unwrap_or_default(),
    };
    let format = Format {
        style: cli.output,
        headers: !cli.no_headers,
    };
    let result = match cli.command {
        Command::Subscription(cmd) => subscription::run(cmd, &control_plane, format).await,
        Command::Deliveries(cmd) => deliveries::run(cmd, &control_plane, format).await,
        Command::Agents(cmd) => agents::run(cmd, &control_plane, format).await,
        Command::Emit(args) => {
            let agent = Server {
                url: cli.agent,
                bearer: cli.agent_token.unwrap_or_default(),
            };
            emit::run(args, &agent, format).await
        }
        Command::Dev(args) => dev::run(args).await,
        Command::Completion { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "herald", &mut std::io::stdout());
            Ok(())
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
