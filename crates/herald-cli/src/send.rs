//! `herald send`: sample notifications, as a product team would produce them.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use herald_kafka::settings::ProducerKind;
use herald_kafka::Topology;
use herald_model::sample;
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;

use crate::config::CliConfig;

/// Produces `count` events numbered from `start`, plus `duplicates` percent
/// of them again with the same idempotency key.
pub async fn run(
    config: &CliConfig,
    start: u64,
    count: u64,
    duplicates: u64,
) -> anyhow::Result<ExitCode> {
    let codec = config.codec.build().map_err(anyhow::Error::msg)?;
    let producer = config
        .kafka
        .producer("send", &ProducerKind::Idempotent)
        .context("kafka settings")?;
    let topic = Topology::new(config.topics.clone()).notifications();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let dup_every = if duplicates == 0 {
        0
    } else {
        (100 / duplicates.min(100)).max(1)
    };
    let mut sent = 0;
    let mut dups = 0;
    for n in start..start + count {
        let event = sample::notification(n, now);
        let bytes = codec.encode(&topic, &event).await?;
        let copies = if dup_every > 0 && n % dup_every == 0 {
            2
        } else {
            1
        };
        for _ in 0..copies {
            producer
                .send(
                    FutureRecord::to(&topic).key(&event.user_id).payload(&bytes),
                    Timeout::After(Duration::from_secs(30)),
                )
                .await
                .map_err(|(e, _)| e)
                .with_context(|| format!("producing to {topic}"))?;
        }
        sent += copies;
        dups += copies - 1;
    }
    say!("sent {sent} events to {topic} ({dups} duplicates)");
    Ok(ExitCode::SUCCESS)
}
