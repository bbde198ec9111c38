//! `herald topics apply` and `herald topics describe`.

use std::process::ExitCode;

use anyhow::Context;
use herald_kafka::topology::{self, drift_of};
use herald_kafka::Topology;

use crate::config::CliConfig;

/// Creates missing topics, reports drift.
pub async fn apply(config: &CliConfig, strict: bool) -> anyhow::Result<ExitCode> {
    let admin = config.kafka.admin().context("kafka settings")?;
    let topology = Topology::new(config.topics.clone());
    let report = topology::apply(&admin, &topology, config.kafka.request_timeout).await?;
    for name in &report.created {
        say!("created    {name}");
    }
    for drift in &report.drift {
        say!("drift      {drift}");
    }
    say!(
        "{} created, {} unchanged, {} drifted setting(s); nothing was altered or deleted",
        report.created.len(),
        report.unchanged.len(),
        report.drift.len()
    );
    Ok(if strict && !report.drift.is_empty() {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// Prints the live state of every declared topic.
pub async fn describe(config: &CliConfig) -> anyhow::Result<ExitCode> {
    let admin = config.kafka.admin().context("kafka settings")?;
    let topology = Topology::new(config.topics.clone());
    let live = topology::describe(&admin, &topology, config.kafka.request_timeout).await?;
    say!(
        "{:<40} {:>10} {:>4} {:<8} {:>12} {:>6} {:>9}  drift",
        "topic",
        "partitions",
        "rf",
        "cleanup",
        "retention.ms",
        "min.isr",
        "max.bytes"
    );
    for (spec, t) in topology.topics().iter().zip(&live) {
        let get = |k: &str| t.configs.get(k).cloned().unwrap_or_else(|| "-".into());
        let (partitions, rf, drift) = match (t.partitions, t.replication_factor) {
            (Some(p), Some(rf)) => {
                let d = drift_of(spec, t);
                let drift = if d.is_empty() {
                    "none".to_string()
                } else {
                    d.iter()
                        .map(|d| d.setting.clone())
                        .collect::<Vec<_>>()
                        .join(",")
                };
                (p.to_string(), rf.to_string(), drift)
            }
            _ => ("missing".into(), "-".into(), "missing".into()),
        };
        say!(
            "{:<40} {:>10} {:>4} {:<8} {:>12} {:>6} {:>9}  {}",
            t.name,
            partitions,
            rf,
            get("cleanup.policy"),
            get("retention.ms"),
            get("min.insync.replicas"),
            get("max.message.bytes"),
            drift
        );
    }
    Ok(ExitCode::SUCCESS)
}
