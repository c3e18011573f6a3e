//! `herald-control-plane`: parses the configuration and runs the control plane.

/// mimalloc instead of the system allocator: every delivery allocates for its request, its
/// response and its queue records. glibc's malloc took 13% of the CPU samples of `bench
/// deliver`; with mimalloc the CPU per delivery is about a quarter lower (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use herald_control_plane::{Config, run};
use herald_core::daemon::{self, Failure};
use herald_core::shutdown::signal;

/// Herald's control plane: subscriptions, config streams to agents, the delivery log.
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
    daemon::main("control plane", |args: Args| async move {
        // Unusable tokens or keys are configuration errors (exit 64): restarting will not help.
        args.config
            .etcd_auth
            .check(&args.config.etcd_endpoints())
            .map_err(|err| Failure::Usage(format!("etcd settings are not usable: {err}")))?;
        args.config
            .auth
            .load()
            .map_err(|err| Failure::Usage(format!("auth tokens are not usable: {err}")))?;
        args.config
            .auth
            .load_identities()
            .map_err(|err| Failure::Usage(format!("auth identities are not usable: {err}")))?;
        args.config
            .secrets
            .load(&args.config.data_dir)
            .map_err(|err| Failure::Usage(format!("secrets keyring is not usable: {err}")))?;
        args.config
            .log_store
            .parse()
            .map_err(|err| Failure::Usage(format!("log-store is not usable: {err}")))?;
        let listen = args.config.listen;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|err| Failure::Usage(format!("listen={listen} is not usable: {err}")))?;
        run(args.config, listener, signal()).await.map_err(|err| {
            // Restarting with the same settings will not help.
            if err.is_setting() {
                Failure::Usage(err.to_string())
            } else {
                Failure::Run(err)
            }
        })
    })
    .await
}
