//! `herald-scaler`: watches Herald's consumer groups and exports the
//! scaling signal.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use herald_scaler::{ScalerConfig, Signals};
use herald_telemetry::{load_config, serve_routes, AdminState, ConfigSource, Supervisor};

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
    let args = Args::parse();
    let config: ScalerConfig = match load_config(&ConfigSource::from_process(args.config)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("herald-scaler: {e}");
            return ExitCode::from(78);
        }
    };
    if let Err(e) = config.scaler.validate() {
        eprintln!("herald-scaler: {e}");
        return ExitCode::from(78);
    }
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
    match serve_routes(config.admin.listen, app, supervisor.shutdown()).await {
        Ok((addr, task)) => {
            tracing::info!(%addr, "Admin server listening.");
            supervisor.spawn("admin", async move { Ok(task.await??) });
        }
        Err(e) => {
            eprintln!(
                "herald-scaler: binding the admin server to {}: {e}",
                config.admin.listen
            );
            return ExitCode::FAILURE;
        }
    }
    let shutdown = supervisor.shutdown();
    supervisor.spawn(
        "scaler",
        herald_scaler::run(config, signals, shutdown, admin),
    );
    match supervisor.run(true).await {
        Ok(herald_telemetry::Outcome::Clean) => ExitCode::SUCCESS,
        Ok(herald_telemetry::Outcome::Abandoned { running }) => {
            herald_telemetry::shutdown::exit_abandoned("scaler", running)
        }
        Err(e) => {
            eprintln!("herald-scaler: {e:#}");
            ExitCode::FAILURE
        }
    }
}
