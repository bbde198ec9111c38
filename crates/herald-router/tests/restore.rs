//! Restore at scale: with 1M entries in the dedup state topic, a fresh
//! router restores the partition before processing it and rejects a
//! duplicate of the oldest live entry. Meanwhile its other partition,
//! with no state, is routed: a restore holds up only its own partition.
//!
//! Size: `HERALD_RESTORE_ENTRIES` (default 1000000).

// Tests fail loudly on unexpected errors: that is their job.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use herald_codec::{encode_single_object, Codec};
use herald_kafka::settings::ProducerKind;
use herald_model::wire::{DedupEntry, DeliveryStatus};
use herald_model::{sample, Channel, DedupKey, Priority, StatusKind};
use herald_router::RouterConfig;
use herald_telemetry::{AdminState, Shutdown};
use herald_testkit::{BrokerKind, TestBroker};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_router_restores_a_million_entries_and_rejects_the_oldest_duplicate() {
    let entries: i64 = std::env::var("HERALD_RESTORE_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let broker = TestBroker::start(BrokerKind::Fast);
    let topology = broker.herald_topology("restore", 2, 1).await;
    let state_topic = topology.named("dedup-state");

    // The state as an earlier router left it: entry i for event order-i,
    // first seen at input offset 10^9 + i (the duplicate below arrives at
    // offset 0 of a fresh input topic, so it cannot pass for a replay).
    let producer = broker
        .settings()
        .producer("test", &ProducerKind::Idempotent)
        .unwrap();
    let expires = now() + 86_400_000;
    let fill = Instant::now();
    let mut pending = Vec::with_capacity(20_000);
    for i in 0..entries {
        let key = DedupKey::new("acme", "receipt", &format!("order-{i}")).to_bytes();
        let value = encode_single_object(&DedupEntry {
            expires_at: expires,
            source_partition: 0,
            source_offset: 1_000_000_000 + i,
        })
        .unwrap();
        let record = FutureRecord::to(&state_topic)
            .partition(0)
            .key(&key[..])
            .payload(&value);
        pending.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
        if pending.len() == 20_000 {
            for f in pending.drain(..) {
                f.await.unwrap().map_err(|(e, _)| e).unwrap();
            }
        }
    }
    for f in pending.drain(..) {
        f.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
    let filled = fill.elapsed();

    let mut config = RouterConfig {
        kafka: broker.settings(),
        topics: topology.settings().clone(),
        ..Default::default()
    };
    config.router.group = broker.group("restore-router");
    let shutdown = Shutdown::new();
    let task = tokio::spawn(herald_router::run(
        config,
        shutdown.clone(),
        AdminState::new("restore-test"),
    ));

    // In partition 0 (the restored one), a duplicate of the oldest entry
    // (order-0) and a new event; then a new event in partition 1.
    let started = Instant::now();
    let (new, other) = (entries as u64, entries as u64 + 1);
    for (n, partition) in [(0u64, 0), (new, 0), (other, 1)] {
        let e = sample::notification(n, now());
        producer
            .send(
                FutureRecord::to(&topology.notifications())
                    .partition(partition)
                    .key(&e.user_id)
                    .payload(&encode_single_object(&e).unwrap()),
                Timeout::After(Duration::from_secs(10)),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    let codec = Codec::single_object();
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut pushed = Vec::new();
    while pushed.len() < 2 && Instant::now() < deadline {
        pushed = broker
            .read_all(
                &topology.lane(Channel::Push, Priority::Normal),
                1,
                Duration::from_secs(2),
            )
            .await;
    }
    let restored_and_routed = started.elapsed();
    let statuses: Vec<DeliveryStatus> = broker
        .read_all(&topology.named("status"), 2, Duration::from_secs(2))
        .await
        .iter()
        .map(|m| codec.decode_local(m.payload().unwrap()).unwrap())
        .collect();
    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    // Each new event's push, with the instant the router produced it.
    let sent_at: std::collections::BTreeMap<String, i64> = pushed
        .iter()
        .map(|m| {
            let key = codec
                .decode_local::<herald_model::wire::ChannelMessage>(m.payload().unwrap())
                .unwrap()
                .idempotency_key;
            (key, m.timestamp().to_millis().unwrap())
        })
        .collect();
    assert_eq!(
        sent_at.keys().collect::<Vec<_>>(),
        [&format!("order-{new}"), &format!("order-{other}")],
        "only the new events are sent"
    );
    let (restored_side, other_side) = (
        sent_at[&format!("order-{new}")],
        sent_at[&format!("order-{other}")],
    );
    assert!(
        other_side < restored_side,
        "partition 1 waited for partition 0's restore: its event was sent at {other_side}, \
         partition 0's (after its restore) at {restored_side}"
    );
    let dup = statuses
        .iter()
        .find(|s| s.status == StatusKind::Duplicate)
        .expect("a DUPLICATE status");
    assert_eq!(dup.idempotency_key.as_deref(), Some("order-0"));
    println!(
        "restore test: {entries} entries written in {:.1}s; restored and routed in {:.1}s (debug build); \
         partition 1 was routed {} ms before partition 0",
        filled.as_secs_f64(),
        restored_and_routed.as_secs_f64(),
        restored_side - other_side
    );
}
