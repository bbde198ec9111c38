//! Releases messages deferred by quiet hours when their window ends.
//!
//! The router writes a deferred `ChannelMessage` (with `not_before`) to the
//! `deferred` topic instead of its lane. This loop reads that topic, holds
//! each message until `not_before`, then produces the same bytes to the
//! message's lane. The group's committed offset never passes a message
//! still held, so a restart reads every unreleased message again: nothing
//! deferred is lost. A restart may release a message a second time (one
//! released but not yet committed); its notification id is deterministic,
//! so the delivery ledger sends it once.
//!
//! Held messages live in memory, at most `deferred_max_held`; past that
//! the loop stops reading until releases make room (late, never lost).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use herald_codec::Codec;
use herald_kafka::Topology;
use herald_model::wire::ChannelMessage;
use herald_telemetry::events::{DeadLettered, DeferredReleased};
use herald_telemetry::{Emit, Metrics, Shutdown};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};

use crate::process::{dead_letter_out, Input, Out, Router};
use crate::run::{acked, send};

/// Wall-clock time in milliseconds, or a clock a test moves by hand.
#[derive(Debug, Clone, Default)]
pub struct Clock(Option<Arc<AtomicI64>>);

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self(None)
    }

    /// A clock that stays at `start_ms` until set.
    pub fn manual(start_ms: i64) -> Self {
        Self(Some(Arc::new(AtomicI64::new(start_ms))))
    }

    /// Moves a manual clock (no effect on the system clock).
    pub fn set(&self, ms: i64) {
        if let Some(t) = &self.0 {
            t.store(ms, Ordering::SeqCst);
        }
    }

    /// Now, in milliseconds since the epoch.
    pub fn now_ms(&self) -> i64 {
        match &self.0 {
            Some(t) => t.load(Ordering::SeqCst),
            None => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                .unwrap_or(0),
        }
    }
}

/// A message waiting for its window to end.
struct Held {
    lane: String,
    channel: &'static str,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
}

/// Offsets of one deferred partition not yet done (held or being released),
/// and the next offset to read.
#[derive(Default)]
struct PartitionOffsets {
    pending: BTreeSet<i64>,
    next: i64,
}

impl PartitionOffsets {
    /// The offset a restart must resume from.
    fn committable(&self) -> i64 {
        self.pending.first().copied().unwrap_or(self.next)
    }
}

/// Sets the held-messages gauge of partition `p` (held or being released).
fn report_held(p: i32, po: &PartitionOffsets) {
    Metrics::global()
        .router_deferred_held
        .with_label_values(&[&p.to_string()])
        .set(i64::try_from(po.pending.len()).unwrap_or(i64::MAX));
}

/// The release loop and what it needs.
pub struct Release {
    /// Consumer of the deferred topic (its own group).
    pub consumer: StreamConsumer<crate::run::RouterContext>,
    /// Idempotent producer.
    pub producer: FutureProducer,
    /// The router (its topology, and the codec it wrote the messages with).
    pub router: Arc<Router>,
    /// Time source.
    pub clock: Clock,
    /// Longest wait between checks for due messages.
    pub tick: Duration,
    /// Messages held in memory at most.
    pub max_held: usize,
}

type Ack = futures::future::BoxFuture<'static, ((i32, i64), Result<(), String>)>;

impl Release {
    /// Drops what is held for the partitions revoked since the last call:
    /// their next owner reads it again from the committed offset.
    fn forget_revoked(
        &self,
        due: &mut BTreeMap<(i64, i32, i64), Held>,
        parts: &mut HashMap<i32, PartitionOffsets>,
    ) {
        for p in crate::run::lock(&self.consumer.context().revoked).drain(..) {
            parts.remove(&p);
            due.retain(|(_, part, _), _| *part != p);
            report_held(p, &PartitionOffsets::default());
        }
    }

    /// Runs until `shutdown`; then waits for releases in flight and commits.
    pub async fn run(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let topology: &Topology = self.router.topology();
        let codec: &Codec = self.router.codec();
        let topic = topology.named("deferred");
        self.consumer
            .subscribe(&[&topic])
            .context("subscribing to the deferred topic")?;
        let mut due: BTreeMap<(i64, i32, i64), Held> = BTreeMap::new();
        let mut parts: HashMap<i32, PartitionOffsets> = HashMap::new();
        let mut releasing: FuturesUnordered<Ack> = FuturesUnordered::new();
        let mut stream = self.consumer.stream();
        loop {
            self.forget_revoked(&mut due, &mut parts);
            let now = self.clock.now_ms();
            let wait = due
                .keys()
                .next()
                .map(|(t, _, _)| Duration::from_millis(u64::try_from(t - now).unwrap_or(0)))
                .unwrap_or(self.tick)
                .min(self.tick);
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(((p, offset), result)) = releasing.next(), if !releasing.is_empty() => {
                    result.map_err(anyhow::Error::msg).context("a released message was not acknowledged")?;
                    if let Some(po) = parts.get_mut(&p) {
                        po.pending.remove(&offset);
                        report_held(p, po);
                    }
                    self.store(&topic, &parts)?;
                }
                _ = tokio::time::sleep(wait) => {}
                msg = stream.next(), if due.len() < self.max_held => {
                    let Some(msg) = msg else { break };
                    let msg = match msg {
                        Ok(msg) => msg,
                        Err(e) => {
                            herald_kafka::ride_out("router", e).context("consumer error")?;
                            continue;
                        }
                    };
                    // The revoke, the new assignment and this record may
                    // all have come while it was awaited: what was held for
                    // the revoked partitions goes first, not this record.
                    self.forget_revoked(&mut due, &mut parts);
                    let (p, offset) = (msg.partition(), msg.offset());
                    let po = parts.entry(p).or_default();
                    po.next = offset + 1;
                    let payload = msg.payload().unwrap_or_default().to_vec();
                    match codec.decode::<ChannelMessage>(&payload).await {
                        Ok(m) => {
                            po.pending.insert(offset);
                            let at = m.not_before.unwrap_or(0);
                            due.insert((at, p, offset), Held {
                                lane: topology.lane(m.channel, m.priority),
                                channel: m.channel.as_str(),
                                key: msg.key().map(<[u8]>::to_vec),
                                payload,
                            });
                        }
                        Err(e) => {
                            // Written by a router, so a contract bug: set it
                            // aside rather than hold the partition.
                            DeadLettered {
                                stage: "router-deferred",
                                reason: e.reason(),
                                topic: &topic,
                                partition: p,
                                offset,
                            }
                            .emit();
                            let input = Input {
                                topic: &topic,
                                partition: p,
                                offset,
                                key: msg.key(),
                                payload: msg.payload(),
                            };
                            let dlq = dead_letter_out(topology, &input, e.reason(), &e.to_string());
                            acked(send(&self.producer, dlq, None))
                                .await
                                .map_err(anyhow::Error::msg)
                                .context("dead-lettering an undecodable deferred record")?;
                        }
                    }
                    report_held(p, po);
                }
            }
            // Release everything due.
            let now = self.clock.now_ms();
            while let Some(entry) = due.first_entry() {
                let (at, p, offset) = *entry.key();
                if at > now {
                    break;
                }
                let held = entry.remove();
                DeferredReleased {
                    channel: held.channel,
                    late: Duration::from_millis(u64::try_from(now - at).unwrap_or(0)),
                }
                .emit();
                let out = Out {
                    topic: held.lane,
                    partition: None,
                    key: held.key,
                    payload: Some(held.payload),
                    headers: Vec::new(),
                };
                let sent = send(&self.producer, out, None);
                releasing.push(Box::pin(async move { ((p, offset), acked(sent).await) }));
            }
        }
        drop(stream);
        while let Some(((p, offset), result)) = releasing.next().await {
            if result.is_ok() {
                if let Some(po) = parts.get_mut(&p) {
                    po.pending.remove(&offset);
                }
            }
        }
        self.store(&topic, &parts)?;
        let started = std::time::Instant::now();
        let _ = self.consumer.commit_consumer_state(CommitMode::Sync);
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "Drain: deferred releases are committed."
        );
        // The group is left when the consumer is dropped (see `run::run_with_clock`).
        Ok(())
    }

    /// Stores, per partition, the first offset a restart must read again.
    fn store(&self, topic: &str, parts: &HashMap<i32, PartitionOffsets>) -> anyhow::Result<()> {
        let mut tpl = TopicPartitionList::new();
        for (p, po) in parts {
            tpl.add_partition_offset(topic, *p, Offset::Offset(po.committable()))?;
        }
        if tpl.count() > 0 {
            // A partition revoked a moment ago refuses the store; harmless.
            let _ = self.consumer.store_offsets(&tpl);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_offset_never_passes_a_held_message() {
        let mut po = PartitionOffsets {
            next: 10,
            ..Default::default()
        };
        assert_eq!(po.committable(), 10);
        po.pending.insert(4);
        po.pending.insert(7);
        assert_eq!(po.committable(), 4);
        po.pending.remove(&4);
        assert_eq!(po.committable(), 7);
        po.pending.remove(&7);
        assert_eq!(po.committable(), 10);
    }

    #[test]
    fn a_manual_clock_moves_only_when_set() {
        let c = Clock::manual(1_000);
        assert_eq!(c.now_ms(), 1_000);
        c.set(5_000);
        assert_eq!(c.now_ms(), 5_000);
        assert!(Clock::system().now_ms() > 1_700_000_000_000);
    }
}
