//! at_least_once under SIGKILL: the router process is killed several times
//! while events with 10% duplicates flow. Afterwards every unique event has
//! reached its channel topic, and every repeated output is the same input
//! record processed again (a crash window), never a duplicate input let
//! through. The test prints how many repeats the crashes caused.
//!
//! On nisshi (memory) and on the three-node Apache Kafka cluster.
//!
//! Size: `HERALD_CRASH_EVENTS` (default 100000; a third of it on Apache
//! Kafka).

// Tests fail loudly on unexpected errors: that is their job.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use herald_codec::{encode_single_object, Codec};
use herald_kafka::settings::ProducerKind;
use herald_kafka::TopologySettings;
use herald_model::wire::ChannelMessage;
use herald_model::{sample, Channel, Priority};
use herald_testkit::{BrokerKind, TestBroker};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;

mod common;

use common::{sigkill, spawn_router};

const PARTITIONS: i32 = 4;

fn start(broker: &TestBroker, settings: &TopologySettings, group: &str) -> Child {
    spawn_router(
        broker,
        settings,
        group,
        &[("HERALD__ROUTER__MAX_IN_FLIGHT", "2000")],
        Stdio::inherit(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_event_is_lost_when_the_router_is_killed_repeatedly() {
    let total: u64 = std::env::var("HERALD_CRASH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    killed_repeatedly(BrokerKind::Fast, total).await;
}

/// The same on Apache Kafka, three nodes (replication factor 3,
/// `min.insync.replicas` 2, acks from the in-sync replicas): a third of the
/// events, the cluster being slower per record than nisshi in memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_event_is_lost_when_the_router_is_killed_repeatedly_on_apache_kafka() {
    let total: u64 = std::env::var("HERALD_CRASH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(30_000, |n: u64| n / 3);
    killed_repeatedly(BrokerKind::ApacheKafka3, total).await;
}

async fn killed_repeatedly(kind: BrokerKind, total: u64) {
    let unique = total - total / 10;
    let broker = TestBroker::start(kind);
    let topology = broker.herald_topology("crash", PARTITIONS, 2).await;
    let settings = topology.settings().clone();
    let group = broker.group("crash-router");

    // The producer: `unique` events, then every tenth re-sent, interleaved.
    let producer = broker
        .settings()
        .producer("test", &ProducerKind::Idempotent)
        .unwrap();
    let topic = topology.notifications();
    let feeder = tokio::spawn(async move {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let mut pending = Vec::new();
        for n in 0..unique {
            let mut e = sample::notification(n, now);
            e.channels = vec![Channel::Push];
            let bytes = encode_single_object(&e).unwrap();
            let key = e.user_id.clone();
            let copies = if n % 9 == 0 { 2 } else { 1 };
            for _ in 0..copies {
                let f = producer
                    .send_result(FutureRecord::to(&topic).key(&key).payload(&bytes))
                    .map_err(|(e, _)| e)
                    .unwrap();
                pending.push(f);
            }
            if pending.len() >= 5000 {
                for f in pending.drain(..) {
                    f.await.unwrap().map_err(|(e, _)| e).unwrap();
                }
            }
        }
        for f in pending {
            f.await.unwrap().map_err(|(e, _)| e).unwrap();
        }
    });

    let started = Instant::now();
    let mut router = start(&broker, &settings, &group);
    let mut kills = 0;
    for pause in [4, 5, 6] {
        tokio::time::sleep(Duration::from_secs(pause)).await;
        sigkill(&mut router);
        kills += 1;
        router = start(&broker, &settings, &group);
    }
    feeder.await.unwrap();

    // Let the last instance finish, then read every push lane.
    let codec = Codec::single_object();
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut outputs: HashMap<String, Vec<(i32, i64)>> = HashMap::new();
    loop {
        outputs.clear();
        for lane in Priority::ALL {
            for m in broker
                .read_all(
                    &topology.lane(Channel::Push, *lane),
                    2,
                    Duration::from_secs(2),
                )
                .await
            {
                let msg: ChannelMessage = codec.decode_local(m.payload().unwrap()).unwrap();
                outputs
                    .entry(msg.idempotency_key)
                    .or_default()
                    .push((msg.source.partition, msg.source.offset));
            }
        }
        if outputs.len() as u64 >= unique || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    common::signal(&router, "TERM");
    let _ = router.wait();

    let missing: Vec<u64> = (0..unique)
        .filter(|n| !outputs.contains_key(&format!("order-{n}")))
        .take(10)
        .collect();
    assert!(
        missing.is_empty(),
        "lost events (first 10): {missing:?}; {} of {unique} arrived",
        outputs.len()
    );
    let mut repeats = 0;
    for (key, sources) in &outputs {
        let first = sources[0];
        assert!(
            sources.iter().all(|s| *s == first),
            "{key} was emitted for two different input records {sources:?}: a duplicate got through"
        );
        repeats += sources.len() - 1;
    }
    println!(
        "crash test ({kind:?}): {total} events ({} duplicates), {kills} SIGKILLs, {unique} unique all delivered, \
         {repeats} outputs repeated by crash windows, {:.1}s",
        total - unique,
        started.elapsed().as_secs_f64()
    );
}
