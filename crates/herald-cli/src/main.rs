//! `herald`: the admin and developer CLI.
//!
//! - `herald dev` runs the local stack: an embedded Kafka-protocol cluster
//!   (unless `kafka.bootstrap` is set), the topics, and every Herald stage.
//! - `herald send` produces sample notifications to watch them flow.
//! - `herald topics apply|describe` reconciles and shows the topic topology.

mod config;
mod dev;
mod send;
mod topics;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use herald_telemetry::{load_config, ConfigSource};

use crate::config::CliConfig;

/// Herald: a Kafka-native notification pipeline.
#[derive(Debug, Parser)]
#[command(name = "herald", version, about)]
struct Cli {
    /// TOML config file (environment: HERALD__SECTION__KEY overrides it).
    #[arg(long, short, global = true, env = "HERALD_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the local stack until Ctrl-C.
    Dev,
    /// Produce sample notifications to the notifications topic.
    Send {
        /// Events to produce.
        #[arg(long, default_value_t = 10)]
        count: u64,
        /// Percentage of them re-sent with the same idempotency key.
        #[arg(long, default_value_t = 0)]
        duplicates: u64,
        /// First event number (events are `order-<n>`).
        #[arg(long, default_value_t = 0)]
        start: u64,
    },
    /// Manage Herald's topics.
    Topics {
        #[command(subcommand)]
        action: TopicsAction,
    },
}

#[derive(Debug, Subcommand)]
enum TopicsAction {
    /// Create missing topics and report drift on existing ones (never destructive).
    Apply {
        /// Exit with status 2 when any drift is found.
        #[arg(long)]
        strict: bool,
    },
    /// Show the live state of every Herald topic.
    Describe,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let config: CliConfig = match load_config(&ConfigSource::from_process(cli.config.clone())) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("herald: {e}");
            return ExitCode::from(78); // EX_CONFIG
        }
    };
    herald_telemetry::init_tracing(&config.log);
    let result = match cli.command {
        Command::Dev => dev::run(config).await,
        Command::Send {
            count,
            duplicates,
            start,
        } => send::run(&config, start, count, duplicates).await,
        Command::Topics {
            action: TopicsAction::Apply { strict },
        } => topics::apply(&config, strict).await,
        Command::Topics {
            action: TopicsAction::Describe,
        } => topics::describe(&config).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("herald: {e:#}");
            ExitCode::FAILURE
        }
    }
}
