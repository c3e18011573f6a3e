//! `herald-agent`: parses the configuration and runs the agent.

/// mimalloc instead of the system allocator: every delivery allocates for its request, its
/// response and its queue records. glibc's malloc took 13% of the CPU samples of `bench
/// deliver`; with mimalloc the CPU per delivery is about a quarter lower (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use herald_agent::listen::Listener;
use herald_agent::queue::QueueError;
use herald_agent::{Config, run};
use herald_core::daemon::{self, Failure};
use herald_core::shutdown::signal;

/// Herald's agent: accepts events over gRPC and delivers them as signed webhooks.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    config: Config,
    #[command(flatten)]
    logging: daemon::Logging,
}

impl daemon::DaemonArgs for Args {
    fn logging(&self) -> &daemon::Logging {
        &self.logging
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    daemon::main("agent", |args: Args| async move {
        let listen = &args.config.listen;
        args.config
            .emit_access
            .check(listen)
            .map_err(Failure::Usage)?;
        args.config
            .check_control_plane_transport()
            .map_err(|err| Failure::Usage(err.to_string()))?;
        let listener = Listener::bind(listen, args.config.emit_access.socket_mode)
            .await
            .map_err(|err| Failure::Usage(format!("listen={listen} is not usable: {err}")))?;
        let data_dir = args.config.data_dir.clone();
        run(args.config, listener, signal())
            .await
            .map_err(|err| match err {
                herald_agent::Error::Queue(
                    damaged @ (QueueError::DamagedLog { .. } | QueueError::CutLog { .. }),
                ) => Failure::Data(format!("{}: {damaged}", data_dir.display())),
                herald_agent::Error::Queue(damaged @ QueueError::DamagedFile(_)) => {
                    Failure::Data(damaged.to_string())
                }
                setting if setting.is_setting() => Failure::Usage(setting.to_string()),
                other => Failure::Run(other),
            })
    })
    .await
}
