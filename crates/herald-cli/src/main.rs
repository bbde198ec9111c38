//! `herald`: the admin and developer CLI.
//!
//! - `herald dev` runs the local stack: an embedded Kafka-protocol cluster
//!   (unless `kafka.bootstrap` is set), the topics, and every Herald stage.
//! - `herald send` produces sample notifications to watch them flow.
//! - `herald topics apply|describe` reconciles and shows the topic topology.
//! - `herald dlq list|replay` shows a channel's dead letters and re-drives them.

/// `println!` for the CLI's output: when the reader has gone (`herald
/// topics describe | head -5`) the command ends quietly with status 0, as
/// Unix tools do, instead of panicking on the broken pipe.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            $crate::output_failed(e)
        }
    }};
}

mod config;
mod dev;
mod dlq;
mod send;
mod stack;
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
    /// A channel's dead letters.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
}

#[derive(Debug, Subcommand)]
enum DlqAction {
    /// List the dead letters (no addresses or tokens are printed).
    List {
        /// push, sms, email or webhook.
        #[arg(long, value_parser = parse_channel)]
        channel: herald_model::Channel,
    },
    /// Re-drive dead letters through the normal path (the ledger still
    /// prevents a second send of anything delivered).
    Replay {
        /// push, sms, email or webhook.
        #[arg(long, value_parser = parse_channel)]
        channel: herald_model::Channel,
        /// `partition:offset` of a dead letter (repeatable).
        #[arg(long = "record", value_parser = dlq::parse_position, required_unless_present = "all")]
        records: Vec<(i32, i64)>,
        /// Every dead letter of the channel.
        #[arg(long, conflicts_with = "records")]
        all: bool,
    },
}

fn parse_channel(s: &str) -> Result<herald_model::Channel, String> {
    herald_model::Channel::parse(s)
        .ok_or_else(|| format!("unknown channel {s:?}: push, sms, email or webhook"))
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

/// Stdout could not be written: a closed pipe ends the command quietly;
/// anything else is reported (exit 74, EX_IOERR).
fn output_failed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("herald: writing the output: {e}");
    std::process::exit(74)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let config: CliConfig = match load_config(&ConfigSource::from_process(cli.config.clone())) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("herald: {e}");
            return ExitCode::from(herald_telemetry::EXIT_CONFIG);
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
        Command::Dlq {
            action: DlqAction::List { channel },
        } => dlq::list(&config, channel).await,
        Command::Dlq {
            action:
                DlqAction::Replay {
                    channel,
                    records,
                    all,
                },
        } => {
            let selection = if all {
                dlq::Selection::All
            } else {
                dlq::Selection::Some(records)
            };
            dlq::replay(&config, channel, selection).await
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("herald: {e:#}");
            ExitCode::FAILURE
        }
    }
}
