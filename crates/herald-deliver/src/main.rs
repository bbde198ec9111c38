//! `herald-deliver --channel push|sms|email|webhook`: one channel's
//! delivery worker as its own process.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use herald_deliver::DeliverConfig;
use herald_model::Channel;
use herald_telemetry::{load_config, serve_admin, AdminState, ConfigSource, Supervisor};

/// Herald delivery worker for one channel.
#[derive(Debug, Parser)]
#[command(name = "herald-deliver", version, about)]
struct Args {
    /// The channel: push, sms, email or webhook.
    #[arg(long, value_parser = parse_channel)]
    channel: Channel,
    /// TOML config file (HERALD__SECTION__KEY overrides it).
    #[arg(long, short, env = "HERALD_CONFIG")]
    config: Option<PathBuf>,
    /// Time given to finish in-flight deliveries on SIGTERM.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    drain: std::time::Duration,
}

fn parse_channel(s: &str) -> Result<Channel, String> {
    Channel::parse(s).ok_or_else(|| format!("unknown channel {s:?}: push, sms, email or webhook"))
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let mut config: DeliverConfig = match load_config(&ConfigSource::from_process(args.config)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("herald-deliver: {e}");
            return ExitCode::from(78);
        }
    };
    config.deliver.channel = Some(args.channel);
    if let Err(e) = config.deliver.validate() {
        eprintln!("herald-deliver: {e}");
        return ExitCode::from(78);
    }
    herald_telemetry::init_tracing(&config.log);
    let mut supervisor = Supervisor::new("deliver", args.drain);
    let admin = AdminState::new("deliver");
    match serve_admin(config.admin.listen, admin.clone(), supervisor.shutdown()).await {
        Ok((addr, task)) => {
            tracing::info!(%addr, "Admin server listening.");
            supervisor.spawn("admin", async move { Ok(task.await??) });
        }
        Err(e) => {
            eprintln!(
                "herald-deliver: binding the admin server to {}: {e}",
                config.admin.listen
            );
            return ExitCode::FAILURE;
        }
    }
    let shutdown = supervisor.shutdown();
    supervisor.spawn("deliver", herald_deliver::run(config, shutdown, admin));
    match supervisor.run(true).await {
        Ok(herald_telemetry::Outcome::Clean) => ExitCode::SUCCESS,
        Ok(herald_telemetry::Outcome::Abandoned { running }) => {
            herald_telemetry::shutdown::exit_abandoned("deliver", running)
        }
        Err(e) => {
            eprintln!("herald-deliver: {e:#}");
            ExitCode::FAILURE
        }
    }
}
