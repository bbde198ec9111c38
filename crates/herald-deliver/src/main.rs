//! `herald-deliver --channel push|sms|email|webhook`: one channel's
//! delivery worker as its own process.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use herald_deliver::DeliverConfig;
use herald_model::Channel;
use herald_telemetry::{load_stage_config, AdminState, Supervisor};

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
    start(Args::parse()).await.unwrap_or_else(|code| code)
}

async fn start(args: Args) -> Result<ExitCode, ExitCode> {
    let config: DeliverConfig =
        load_stage_config("deliver", args.config, |c: &mut DeliverConfig| {
            c.deliver.channel = Some(args.channel);
            c.deliver.validate()
        })?;
    herald_telemetry::init_tracing(&config.log);
    let mut supervisor = Supervisor::new("deliver", args.drain);
    let admin = AdminState::new("deliver").with_stall_after(config.admin.stall_after);
    supervisor
        .serve_admin(
            config
                .admin
                .listen_for(&format!("deliver-{}", args.channel.as_str())),
            admin.router(),
        )
        .await?;
    let shutdown = supervisor.shutdown();
    supervisor.spawn("deliver", herald_deliver::run(config, shutdown, admin));
    Ok(supervisor.exit_code().await)
}
