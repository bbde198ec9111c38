//! `herald dlq list|replay --channel C`: the dead letters of a channel, and
//! re-driving chosen ones through the normal path.
//!
//! A replay produces the original message again to its lane with the
//! attempt count reset and no `not_before`. Its notification id is
//! unchanged, so the delivery ledger still stops a second send of anything
//! that was in fact delivered.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use herald_codec::Codec;
use herald_kafka::produce::{acked, send, Out, DLQ_REASON, DLQ_SOURCE};
use herald_kafka::settings::ProducerKind;
use herald_kafka::{KafkaSettings, Topology};
use herald_model::wire::ChannelMessage;
use herald_model::Channel;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::CliConfig;

/// Header naming the dead letter a replayed message came from.
pub const REPLAYED_FROM: &str = "herald.replayed-from";
const ATTEMPTS: &str = "herald.attempts";

/// Every record of `topic`, read to the end offsets found at the start.
fn read_topic(
    kafka: &KafkaSettings,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<Vec<OwnedMessage>> {
    let mut c = kafka.consumer_config("dlq", "herald-cli-dlq")?;
    c.set("enable.auto.commit", "false")
        .set("isolation.level", "read_uncommitted");
    let consumer: BaseConsumer = c.create()?;
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .with_context(|| format!("reading the metadata of {topic}"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .first()
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    anyhow::ensure!(!partitions.is_empty(), "topic {topic} does not exist");
    let mut tpl = TopicPartitionList::new();
    let mut ends = std::collections::HashMap::new();
    for p in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, timeout)?;
        if high > low {
            tpl.add_partition_offset(topic, p, Offset::Offset(low))?;
            ends.insert(p, high);
        }
    }
    let mut out = Vec::new();
    if ends.is_empty() {
        return Ok(out);
    }
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + timeout.max(Duration::from_secs(30));
    while !ends.is_empty() {
        anyhow::ensure!(Instant::now() < deadline, "timed out reading {topic}");
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m?.detach();
            let (p, o) = (m.partition(), m.offset());
            out.push(m);
            if ends.get(&p).is_some_and(|h| o + 1 >= *h) {
                ends.remove(&p);
            }
        }
        // Trailing transaction markers are never delivered: check positions.
        if let Ok(pos) = consumer.position() {
            for e in pos.elements() {
                if let Offset::Offset(o) = e.offset() {
                    if ends.get(&e.partition()).is_some_and(|h| o >= *h) {
                        ends.remove(&e.partition());
                    }
                }
            }
        }
    }
    out.sort_by_key(|m| (m.partition(), m.offset()));
    Ok(out)
}

fn header(m: &OwnedMessage, name: &str) -> Option<String> {
    m.headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

fn dead_letters(
    config: &CliConfig,
    channel: Channel,
) -> anyhow::Result<(String, Vec<OwnedMessage>)> {
    let topic = Topology::new(config.topics.clone()).named(&format!("{channel}.dead-letter"));
    let records = read_topic(&config.kafka, &topic, config.kafka.request_timeout)?;
    Ok((topic, records))
}

/// `herald dlq list`.
pub async fn list(config: &CliConfig, channel: Channel) -> anyhow::Result<ExitCode> {
    let codec = config.codec.build().map_err(anyhow::Error::msg)?;
    let c = config.clone();
    let (topic, records) = tokio::task::spawn_blocking(move || dead_letters(&c, channel)).await??;
    say!("{topic}: {} dead letter(s)", records.len());
    if records.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    say!(
        "{:<9} {:<8} {:<34} {:<22} {:<8} source",
        "partition",
        "offset",
        "notification_id",
        "reason",
        "attempts"
    );
    for m in &records {
        let id = match m.payload() {
            Some(b) => codec
                .decode::<ChannelMessage>(b)
                .await
                .map_or_else(|_| "(undecodable)".to_string(), |x| x.notification_id),
            None => "(empty)".into(),
        };
        let attempts = header(m, ATTEMPTS)
            .and_then(|a| serde_json::from_str::<Vec<serde_json::Value>>(&a).ok())
            .map_or_else(|| "-".into(), |a| a.len().to_string());
        say!(
            "{:<9} {:<8} {:<34} {:<22} {:<8} {}",
            m.partition(),
            m.offset(),
            id,
            header(m, DLQ_REASON).unwrap_or_default(),
            attempts,
            header(m, DLQ_SOURCE).unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Which dead letters to replay: `partition:offset` each, or all.
#[derive(Debug, Clone)]
pub enum Selection {
    /// These.
    Some(Vec<(i32, i64)>),
    /// Every one.
    All,
}

/// Parses `partition:offset`.
pub fn parse_position(s: &str) -> Result<(i32, i64), String> {
    let (p, o) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: expected partition:offset"))?;
    Ok((
        p.parse().map_err(|_| format!("{s:?}: bad partition"))?,
        o.parse().map_err(|_| format!("{s:?}: bad offset"))?,
    ))
}

/// `herald dlq replay`.
pub async fn replay(
    config: &CliConfig,
    channel: Channel,
    selection: Selection,
) -> anyhow::Result<ExitCode> {
    let codec: Codec = config.codec.build().map_err(anyhow::Error::msg)?;
    let topology = Topology::new(config.topics.clone());
    let c = config.clone();
    let (topic, records) = tokio::task::spawn_blocking(move || dead_letters(&c, channel)).await??;
    let chosen: Vec<&OwnedMessage> = match &selection {
        Selection::All => records.iter().collect(),
        Selection::Some(positions) => {
            let mut chosen = Vec::new();
            for (p, o) in positions {
                let m = records
                    .iter()
                    .find(|m| m.partition() == *p && m.offset() == *o)
                    .ok_or_else(|| anyhow::anyhow!("no dead letter at {topic} {p}:{o}"))?;
                chosen.push(m);
            }
            chosen
        }
    };
    let producer = config.kafka.producer("dlq", &ProducerKind::Idempotent)?;
    let mut replayed = 0;
    let mut skipped = 0;
    for m in chosen {
        let Some(mut message) = (match m.payload() {
            Some(b) => codec.decode::<ChannelMessage>(b).await.ok(),
            None => None,
        }) else {
            eprintln!(
                "{}:{}: undecodable, not replayed",
                m.partition(),
                m.offset()
            );
            skipped += 1;
            continue;
        };
        message.attempt = 1;
        message.not_before = None;
        let lane = topology.lane(channel, message.priority);
        let payload = codec.encode(&lane, &message).await?;
        let out = Out {
            topic: lane,
            partition: None,
            key: m.key().map(<[u8]>::to_vec),
            payload: Some(payload),
            headers: vec![(
                REPLAYED_FROM,
                format!("{topic}/{}/{}", m.partition(), m.offset()).into_bytes(),
            )],
        };
        acked(send(&producer, out, None))
            .await
            .map_err(anyhow::Error::msg)?;
        replayed += 1;
    }
    say!("replayed {replayed} dead letter(s) from {topic}; {skipped} undecodable skipped");
    Ok(if skipped > 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}
