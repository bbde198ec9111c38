//! `herald-sandbox`: the provider stand-in as its own process.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use herald_sandbox::{Sandbox, SandboxConfig};
use herald_telemetry::{load_stage_config, Supervisor};

/// Herald provider sandbox: APNs, FCM, Twilio, webhooks and SMTP on loopback.
#[derive(Debug, Parser)]
#[command(name = "herald-sandbox", version, about)]
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
    let config: SandboxConfig = load_stage_config("sandbox", args.config, |_| Ok(()))?;
    herald_telemetry::init_tracing(&config.log);
    let mut supervisor = Supervisor::new("sandbox", std::time::Duration::from_secs(5));
    let sandbox = Sandbox::new(config.sandbox);
    match herald_sandbox::start(sandbox, supervisor.shutdown()).await {
        Ok((bound, tasks)) => {
            println!(
                "http       http://{}  (APNs h2c, FCM, Twilio, /hooks, /sandbox)",
                bound.http
            );
            println!("smtp       {}", bound.smtp);
            for (i, task) in tasks.into_iter().enumerate() {
                supervisor.spawn(format!("listener-{i}"), async move { Ok(task.await??) });
            }
        }
        Err(e) => {
            eprintln!("herald-sandbox: binding its listeners: {e}");
            return Err(ExitCode::FAILURE);
        }
    }
    Ok(supervisor.exit_code().await)
}
