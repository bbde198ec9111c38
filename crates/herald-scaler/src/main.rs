//! `herald-scaler`: watches Herald's consumer groups and exports the
//! scaling signal.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use herald_scaler::{ScalerConfig, Signals};
use herald_telemetry::{load_stage_config, AdminState, Supervisor};

/// Herald scaler: lag, time lag and rates turned into a replica signal.
#[derive(Debug, Parser)]
#[command(name = "herald-scaler", version, about)]
struct Args {
    /// TOML config file (HERALD__SECTION__KEY overrides it).
    #[arg(long, short, env = "HERALD_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    start(Args::parse()).await.unwrap_or_else(|code| code)
}

async fn start(args: Args) -> Result<ExitCode, ExitCode> {
    let config: ScalerConfig = load_stage_config("scaler", args.config, |c: &mut ScalerConfig| {
        c.scaler.validate()
    })?;
    herald_telemetry::init_tracing(&config.log);
    let mut supervisor = Supervisor::new("scaler", std::time::Duration::from_secs(5));
    let admin = AdminState::new("scaler");
    let signals = Signals::default();
    let watched = config
        .scaler
        .groups
        .iter()
        .map(|g| g.group.clone())
        .collect();
    let app = admin
        .router()
        .merge(herald_scaler::routes(signals.clone(), watched));
    supervisor
        .serve_admin(config.admin.listen_for("scaler"), app)
        .await?;
    let shutdown = supervisor.shutdown();
    supervisor.spawn(
        "scaler",
        herald_scaler::run(config, signals, shutdown, admin),
    );
    Ok(supervisor.exit_code().await)
}
