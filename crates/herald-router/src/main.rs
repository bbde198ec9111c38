//! `herald-router`: the router stage as its own process.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use herald_router::RouterConfig;
use herald_telemetry::{load_config, serve_admin, AdminState, ConfigSource, Supervisor};

/// Herald router: dedup, preferences, fan-out.
#[derive(Debug, Parser)]
#[command(name = "herald-router", version, about)]
struct Args {
    /// TOML config file (HERALD__SECTION__KEY overrides it).
    #[arg(long, short, env = "HERALD_CONFIG")]
    config: Option<PathBuf>,
    /// Time given to drain on SIGTERM (keep below the pod's grace period).
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    drain: std::time::Duration,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let config: RouterConfig = match load_config(&ConfigSource::from_process(args.config)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("herald-router: {e}");
            return ExitCode::from(78);
        }
    };
    herald_telemetry::init_tracing(&config.log);
    let mut supervisor = Supervisor::new("router", args.drain);
    let admin = AdminState::new("router");
    match serve_admin(config.admin.listen, admin.clone(), supervisor.shutdown()).await {
        Ok((addr, task)) => {
            tracing::info!(%addr, "Admin server listening.");
            supervisor.spawn("admin", async move { Ok(task.await??) });
        }
        Err(e) => {
            eprintln!(
                "herald-router: binding the admin server to {}: {e}",
                config.admin.listen
            );
            return ExitCode::FAILURE;
        }
    }
    let shutdown = supervisor.shutdown();
    supervisor.spawn("router", herald_router::run(config, shutdown, admin));
    match supervisor.run(true).await {
        Ok(herald_telemetry::Outcome::Clean) => ExitCode::SUCCESS,
        Ok(herald_telemetry::Outcome::Abandoned { running }) => {
            herald_telemetry::shutdown::exit_abandoned("router", running)
        }
        Err(e) => {
            eprintln!("herald-router: {e:#}");
            ExitCode::FAILURE
        }
    }
}
