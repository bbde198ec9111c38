//! `herald-router`: the router stage as its own process.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use herald_router::RouterConfig;
use herald_telemetry::{load_stage_config, AdminState, Supervisor};

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
    start(Args::parse()).await.unwrap_or_else(|code| code)
}

async fn start(args: Args) -> Result<ExitCode, ExitCode> {
    let config: RouterConfig = load_stage_config("router", args.config, |_| Ok(()))?;
    herald_telemetry::init_tracing(&config.log);
    let mut supervisor = Supervisor::new("router", args.drain);
    let admin = AdminState::new("router").with_stall_after(config.admin.stall_after);
    supervisor
        .serve_admin(config.admin.listen_for("router"), admin.router())
        .await?;
    let shutdown = supervisor.shutdown();
    supervisor.spawn("router", herald_router::run(config, shutdown, admin));
    Ok(supervisor.exit_code().await)
}
