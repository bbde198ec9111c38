//! The router's Kafka loop (`at_least_once`).
//!
//! Order of effects for each input record: the state record, the channel
//! messages, status events and dead letters are produced (idempotent
//! producer, acks=all); only when every one of them is acknowledged is the
//! input offset stored, in input order, for the next commit. After a crash,
//! records whose offsets were not stored are read again; their dedup entry
//! marks them as replays of themselves and their effects are emitted again,
//! so nothing is lost and repeats are confined to the crash window.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::stream::FuturesOrdered;
use futures::StreamExt;
use herald_codec::Codec;
use herald_kafka::settings::ProducerKind;
use herald_kafka::state::read_to_end;
use herald_kafka::Topology;
use herald_model::wire::DedupEntry;
use herald_model::DedupKey;
use herald_telemetry::events::{Rebalanced, StateRestored};
use herald_telemetry::{AdminState, Emit, Shutdown};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, DefaultConsumerContext, Rebalance,
    StreamConsumer,
};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::config::RouterConfig;
use crate::process::{Input, Out, PartitionState, Router};
use crate::templates::TemplateStore;

/// Revocations seen by the consumer, for the loop to drop their state.
#[derive(Default)]
struct RebalanceLog {
    revoked: Mutex<Vec<i32>>,
}

impl ClientContext for RebalanceLog {}

impl ConsumerContext for RebalanceLog {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            Rebalanced {
                kind: "revoke",
                partitions: parts.len(),
            }
            .emit();
            self.revoked
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(parts);
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            Rebalanced {
                kind: "assign",
                partitions: tpl.count(),
            }
            .emit();
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Loads the templates file, if configured.
fn load_templates(config: &RouterConfig) -> anyhow::Result<TemplateStore> {
    match &config.router.templates {
        None => Ok(TemplateStore::default()),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading templates {}", path.display()))?;
            toml::from_str(&text).with_context(|| format!("parsing templates {}", path.display()))
        }
    }
}

/// Restores one partition: dedup state and preferences, each read to its
/// end. Returns the state and the preferences offset to follow from.
async fn restore(
    config: &RouterConfig,
    router: &Router,
    partition: i32,
) -> anyhow::Result<(PartitionState, i64)> {
    let topology = router.topology();
    let mut st = PartitionState::default();
    let now = now_ms();
    let stall = Duration::from_secs(30);
    let codec = router.codec();
    let mut bad = 0u64;
    let stats = read_to_end(
        &config.kafka,
        "router",
        &topology.named("dedup-state"),
        partition,
        stall,
        |k, v| {
            let Some(key) = k.and_then(DedupKey::from_bytes) else {
                bad += 1;
                return;
            };
            match v {
                None => st.dedup.restore(key, None, now),
                Some(bytes) => match codec.decode_local::<DedupEntry>(bytes) {
                    Ok(entry) => st.dedup.restore(key, Some(&entry), now),
                    Err(_) => bad += 1,
                },
            }
        },
    )
    .await?;
    let mut raw_prefs: Vec<(String, Option<Vec<u8>>)> = Vec::new();
    let prefs_stats = read_to_end(
        &config.kafka,
        "router",
        &topology.named("preferences"),
        partition,
        stall,
        |k, v| {
            if let Some(user) = k.and_then(|k| std::str::from_utf8(k).ok()) {
                raw_prefs.push((user.to_string(), v.map(<[u8]>::to_vec)));
            }
        },
    )
    .await?;
    for (user, value) in raw_prefs {
        if st
            .apply_preferences(codec, &user, value.as_deref())
            .await
            .is_err()
        {
            bad += 1;
        }
    }
    if bad > 0 {
        tracing::warn!(
            partition,
            records = bad,
            "State records skipped: undecodable."
        );
    }
    StateRestored {
        partition,
        entries: st.dedup.len(),
        bytes: st.dedup.heap_bytes(),
        records: stats.records,
        elapsed: stats.elapsed,
    }
    .emit();
    Ok((st, prefs_stats.end_offset))
}

/// Applies one preferences record (a tombstone deletes) to its partition.
async fn apply_preferences(
    states: &mut HashMap<i32, PartitionState>,
    router: &Router,
    msg: &impl Message,
) {
    let Some(st) = states.get_mut(&msg.partition()) else {
        return;
    };
    let Some(user) = msg.key().and_then(|k| std::str::from_utf8(k).ok()) else {
        return;
    };
    if let Err(e) = st
        .apply_preferences(router.codec(), user, msg.payload())
        .await
    {
        tracing::warn!(
            partition = msg.partition(),
            offset = msg.offset(),
            reason = e.reason(),
            "Preferences record skipped: undecodable."
        );
    }
}

fn send(producer: &FutureProducer, out: Out) -> Result<rdkafka::producer::DeliveryFuture, String> {
    let mut headers = OwnedHeaders::new();
    for (k, v) in &out.headers {
        headers = headers.insert(Header {
            key: k,
            value: Some(v.as_slice()),
        });
    }
    let mut record: FutureRecord<'_, Vec<u8>, Vec<u8>> =
        FutureRecord::to(&out.topic).headers(headers);
    if let Some(k) = &out.key {
        record = record.key(k);
    }
    if let Some(p) = out.partition {
        record = record.partition(p);
    }
    if let Some(p) = &out.payload {
        record = record.payload(p);
    }
    // A refused enqueue (queue full, unknown topic) fails this record's
    // acknowledgement, so its offset is never stored.
    producer
        .send_result(record)
        .map_err(|(e, _)| format!("{}: {e}", out.topic))
}

/// Runs the router until `shutdown`, then drains: waits for every in-flight
/// output, stores and commits the offsets, and leaves the group.
pub async fn run(
    config: RouterConfig,
    shutdown: Shutdown,
    admin: AdminState,
) -> anyhow::Result<()> {
    config.router.validate().map_err(anyhow::Error::msg)?;
    let templates = load_templates(&config)?;
    let codec: Codec = config.codec.build().map_err(anyhow::Error::msg)?;
    let topology = Topology::new(config.topics.clone());
    let router = Arc::new(Router::new(
        config.router.clone(),
        topology.clone(),
        templates,
        codec,
    ));
    let input_topic = topology.notifications();

    let producer = config.kafka.producer("router", &ProducerKind::Idempotent)?;
    let log = RebalanceLog::default();
    let consumer: StreamConsumer<RebalanceLog> =
        config.kafka.consumer("router", &config.router.group, log)?;
    consumer
        .subscribe(&[&input_topic])
        .context("subscribing to the notifications topic")?;
    tracing::info!(topic = %input_topic, group = %config.router.group, "Router started.");
    admin.set_ready(true);

    let mut states: HashMap<i32, PartitionState> = HashMap::new();
    type Ack = futures::future::BoxFuture<'static, (i32, i64, Result<(), String>)>;
    let mut in_flight: FuturesOrdered<Ack> = FuturesOrdered::new();
    let mut revoked_now: HashSet<i32> = HashSet::new();
    let mut last_evict = Instant::now();
    let max_in_flight = config.router.max_in_flight;
    let mut stream = consumer.stream();
    // Follows the preferences partitions of the assigned input partitions
    // (assigned by hand, never committed) so changes apply while running.
    let prefs_topic = topology.named("preferences");
    let prefs_follower: StreamConsumer<DefaultConsumerContext> = config.kafka.consumer(
        "router-prefs",
        &format!("{}-prefs", config.router.group),
        DefaultConsumerContext,
    )?;
    let mut prefs_stream = prefs_follower.stream();

    loop {
        // Drop state of revoked partitions (their in-flight acks are ignored).
        {
            let mut rev = consumer
                .context()
                .revoked
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            for p in rev.drain(..) {
                if states.remove(&p).is_some() {
                    let mut tpl = TopicPartitionList::new();
                    tpl.add_partition(&prefs_topic, p);
                    let _ = prefs_follower.incremental_unassign(&tpl);
                }
                revoked_now.insert(p);
            }
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            // Wakes an idle router so eviction runs without traffic.
            _ = tokio::time::sleep_until((last_evict + config.router.evict_interval).into()) => {}
            Some((partition, offset, result)) = in_flight.next(), if !in_flight.is_empty() => {
                result.map_err(anyhow::Error::msg).context("an output was not acknowledged")?;
                if !revoked_now.contains(&partition) {
                    let _ = consumer.store_offset(&input_topic, partition, offset);
                }
            }
            Some(Ok(update)) = prefs_stream.next() => {
                apply_preferences(&mut states, &router, &update).await;
            }
            msg = stream.next(), if in_flight.len() < max_in_flight => {
                let Some(msg) = msg else { break };
                let msg = msg.context("consumer error")?;
                let partition = msg.partition();
                revoked_now.remove(&partition);
                // A partition's state is restored before its first record is processed.
                if let std::collections::hash_map::Entry::Vacant(slot) = states.entry(partition) {
                    let (st, prefs_end) = restore(&config, &router, partition).await?;
                    slot.insert(st);
                    let mut tpl = TopicPartitionList::new();
                    tpl.add_partition_offset(&prefs_topic, partition, Offset::Offset(prefs_end))?;
                    prefs_follower.incremental_assign(&tpl).context("following preferences")?;
                }
                let Some(st) = states.get_mut(&partition) else { continue };
                let input = Input {
                    topic: msg.topic(),
                    partition,
                    offset: msg.offset(),
                    key: msg.key(),
                    payload: msg.payload(),
                };
                let outs = router.process(st, input, now_ms()).await?;
                let offset = msg.offset();
                let futures: Vec<_> = outs.into_iter().map(|o| send(&producer, o)).collect();
                in_flight.push_back(Box::pin(async move {
                    for f in futures {
                        let f = match f {
                            Ok(f) => f,
                            Err(e) => return (partition, offset, Err(e)),
                        };
                        match f.await {
                            Ok(Ok(_)) => {}
                            Ok(Err((e, _))) => return (partition, offset, Err(e.to_string())),
                            Err(_) => return (partition, offset, Err("producer dropped".into())),
                        }
                    }
                    (partition, offset, Ok(()))
                }));
            }
        }
        if last_evict.elapsed() >= config.router.evict_interval {
            last_evict = Instant::now();
            let now = now_ms();
            for (partition, st) in states.iter_mut() {
                for key in st.dedup.evict_expired(now) {
                    // Tombstones keep the compacted state topic bounded.
                    let tomb = Out {
                        topic: topology.named("dedup-state"),
                        partition: Some(*partition),
                        key: Some(key.to_bytes().to_vec()),
                        payload: None,
                        headers: Vec::new(),
                    };
                    drop(send(&producer, tomb));
                }
            }
        }
    }

    // Drain: finish in-flight work, store, commit, leave.
    admin.set_ready(false);
    drop(stream);
    drop(prefs_stream);
    while let Some((partition, offset, result)) = in_flight.next().await {
        if result.is_ok() && !revoked_now.contains(&partition) {
            let _ = consumer.store_offset(&input_topic, partition, offset);
        }
    }
    let _ = producer.flush(Timeout::After(Duration::from_secs(10)));
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => {}
        // Nothing new since the last commit.
        Err(rdkafka::error::KafkaError::ConsumerCommit(
            rdkafka::types::RDKafkaErrorCode::NoOffset,
        )) => {}
        Err(e) => {
            tracing::warn!(error = %e, "Final commit failed; uncommitted records will be re-read.")
        }
    }
    consumer.unsubscribe();
    tracing::info!("Router drained.");
    Ok(())
}
