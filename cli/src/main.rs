//! `herald`: the operator CLI. Manages subscriptions, reads the delivery log, lists agents,
//! emits test events, and runs `herald dev` (everything in one process, for trying Herald).
//!
//! Exit codes: 0 success, 1 the operation failed (the message says why), 2 bad usage (found by
//! the parser or after it, [`usage::UsageError`]). A reader that closes the output early
//! (`herald … | head -1`) ends the command quietly with 0.

/// mimalloc instead of the system allocator: every delivery allocates for its request, its
/// response and its queue records. glibc's malloc took 13% of the CPU samples of `bench
/// deliver`; with mimalloc the CPU per delivery is about a quarter lower (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod agents;
mod audit;
mod connect;
mod context;
mod deliveries;
mod dev;
mod emit;
mod event_types;
mod input;
mod output;
mod portal;
mod subscription;
mod usage;
mod watch;

use clap::{Parser, Subcommand};

use herald_proto::bearer::Bearer;

use crate::connect::Server;
use crate::output::{Format, OutputError, Style};

/// Herald: signed webhook delivery with retries and central logs.
#[derive(Parser)]
#[command(name = "herald", version, about, next_help_heading = "Global options")]
struct Cli {
    /// The control plane's gRPC URL [default: the context's, else http://127.0.0.1:7700].
    #[arg(long, global = true, env = "HERALD_CONTROL_PLANE")]
    control_plane: Option<String>,
    /// The agent's gRPC URL (http://host:port or unix:/path), for `emit` [default: the
    /// context's, else http://127.0.0.1:7701].
    #[arg(long, global = true, env = "HERALD_AGENT")]
    agent: Option<String>,
    /// CA (PEM) of the control plane's certificate; turns on TLS (https:// URLs).
    #[arg(long, global = true, env = "HERALD_TLS_CA_FILE")]
    tls_ca_file: Option<std::path::PathBuf>,
    /// Client certificate (PEM), for a control plane that requires mutual TLS.
    #[arg(long, global = true, env = "HERALD_TLS_CERT_FILE")]
    tls_cert_file: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, global = true, env = "HERALD_TLS_KEY_FILE")]
    tls_key_file: Option<std::path::PathBuf>,
    /// The context to use instead of the current one (see `herald context`).
    #[arg(long, global = true, env = "HERALD_CONTEXT")]
    context: Option<String>,
    /// API token for the control plane (roles: read, admin).
    #[arg(long, global = true, env = "HERALD_TOKEN", hide_env_values = true, value_parser = Bearer::parser())]
    token: Option<Bearer>,
    /// Token for the agent's Emit, when the agent requires one.
    #[arg(long, global = true, env = "HERALD_AGENT_TOKEN", hide_env_values = true, value_parser = herald_proto::bearer::Bearer::parser())]
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
    Subscription(Box<subscription::Command>),
    /// Read the central delivery log.
    #[command(subcommand, alias = "delivery")]
    Deliveries(deliveries::Command),
    /// The catalogue of event types subscribers choose from.
    #[command(subcommand, name = "event-types", alias = "event-type")]
    EventTypes(event_types::Command),
    /// See the agents connected to the control plane.
    #[command(subcommand, alias = "agent")]
    Agents(agents::Command),
    /// The changes made through the operator API, and who made them.
    #[command(subcommand)]
    Audit(audit::Command),
    /// Links into a tenant's portal (its own webhook pages).
    #[command(subcommand)]
    Portal(portal::Command),
    /// Emit an event through an agent.
    Emit(emit::Args),
    /// Run Herald in one process: control plane, agent and a receiver that prints webhooks.
    Dev(dev::Args),
    /// Named control planes with their tokens, in the CLI's config file.
    #[command(subcommand)]
    Context(context::Command),
    /// Print a shell completion script: `source <(herald completion bash)`.
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// The control plane's URL when neither a flag, the environment nor a context names one.
pub(crate) const DEFAULT_CONTROL_PLANE: &str = "http://127.0.0.1:7700";
/// The agent's URL when neither a flag, the environment nor a context names one.
pub(crate) const DEFAULT_AGENT: &str = "http://127.0.0.1:7701";

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = run(cli).await;
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => exit_code(&err),
    }
}

/// An error and its causes, as `{:#}` joins them, but without a cause that only repeats what
/// the one before it says (transport errors nest the same words several times over).
fn error_text(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if parts
            .last()
            .is_some_and(|last| last.ends_with(text.as_str()))
        {
            continue;
        }
        parts.push(text);
    }
    parts.join(": ")
}

/// The exit code for a failed command, after telling the user why.
fn exit_code(err: &anyhow::Error) -> std::process::ExitCode {
    if let Some(OutputError::Closed) = err.downcast_ref::<OutputError>() {
        return std::process::ExitCode::SUCCESS;
    }
    output::note(&format!("error: {}", error_text(err)));
    if err.downcast_ref::<usage::UsageError>().is_some() {
        std::process::ExitCode::from(2)
    } else {
        std::process::ExitCode::FAILURE
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let format = Format {
        style: cli.output,
        headers: !cli.no_headers,
    };
    // Commands that need no server, and must work whatever the config file says.
    let command = match cli.command {
        Command::Context(cmd) => return context::run(cmd, format),
        Command::Completion { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command, "herald", &mut script);
            output::write(&String::from_utf8_lossy(&script))?;
            return Ok(());
        }
        Command::Dev(args) => return dev::run(args).await,
        command => command,
    };
    let context = context::load()?.pick(cli.context.as_deref())?;
    let bearer = |flag: Option<Bearer>, stored: Option<&str>| -> anyhow::Result<Bearer> {
        match (flag, stored) {
            (Some(bearer), _) => Ok(bearer),
            (None, Some(token)) => {
                Bearer::parse(token).map_err(|e| anyhow::anyhow!("the context's token: {e}"))
            }
            (None, None) => Ok(Bearer::default()),
        }
    };
    let file = |flag: Option<std::path::PathBuf>, stored: &Option<String>| {
        flag.or_else(|| stored.as_ref().map(std::path::PathBuf::from))
    };
    let ca_file = file(cli.tls_ca_file, &context.tls_ca_file);
    let cert_file = file(cli.tls_cert_file, &context.tls_cert_file);
    let (control_plane_url, given_by) = match (cli.control_plane, &context.control_plane) {
        (Some(url), _) => (url, "--control-plane"),
        (None, Some(url)) => (url.clone(), "the context's --url"),
        (None, None) => (DEFAULT_CONTROL_PLANE.into(), "--control-plane"),
    };
    // The address first: TLS files for an http:// address are refused as such, whatever
    // they hold.
    if !matches!(command, Command::Emit(_)) {
        connect::check_address(
            &control_plane_url,
            given_by,
            ca_file.is_some() || cert_file.is_some(),
        )?;
    }
    let tls = herald_proto::client_tls::config(
        ca_file.as_deref(),
        cert_file.as_deref(),
        file(cli.tls_key_file, &context.tls_key_file).as_deref(),
    )
    .map_err(|err| match err {
        // Half a setting is the caller's mistake (exit 2); an unreadable file is not.
        herald_proto::client_tls::ClientTlsError::File(_) => anyhow::Error::new(err),
        half => usage::usage(format!(
            "{half} (--tls-ca-file, --tls-cert-file, --tls-key-file)"
        )),
    })?;
    let control_plane = Server {
        url: control_plane_url,
        bearer: bearer(cli.token, context.token.as_deref())?,
        tls,
    };
    match command {
        Command::Subscription(cmd) => subscription::run(*cmd, &control_plane, format).await,
        Command::Deliveries(cmd) => deliveries::run(cmd, &control_plane, format).await,
        Command::Agents(cmd) => agents::run(cmd, &control_plane, format).await,
        Command::Audit(cmd) => audit::run(cmd, &control_plane, format).await,
        Command::Portal(cmd) => portal::run(cmd, &control_plane, format).await,
        Command::EventTypes(cmd) => event_types::run(cmd, &control_plane, format).await,
        Command::Emit(args) => {
            let agent = Server {
                url: cli
                    .agent
                    .or(context.agent.clone())
                    .unwrap_or_else(|| DEFAULT_AGENT.into()),
                bearer: bearer(cli.agent_token, context.agent_token.as_deref())?,
                tls: None,
            };
            connect::check_address(&agent.url, "--agent", false)?;
            emit::run(args, &agent, format).await
        }
        Command::Context(_) | Command::Completion { .. } | Command::Dev(_) => {
            unreachable!("handled above")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_that_repeats_the_one_before_is_said_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("{0}")]
        struct Said(&'static str, #[source] Option<Box<Said>>);
        let nested = Said(
            "tcp connect error",
            Some(Box::new(Said(
                "tcp connect error",
                Some(Box::new(Said("Connection refused (os error 111)", None))),
            ))),
        );
        let err = anyhow::Error::new(nested).context("cannot connect to http://127.0.0.1:1");
        assert_eq!(
            error_text(&err),
            "cannot connect to http://127.0.0.1:1: tcp connect error: Connection refused (os error 111)"
        );
    }
}
