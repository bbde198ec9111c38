//! herald-kafka against real brokers: the harness scenario on every kind,
//! and topology reconciliation on nisshi and Apache Kafka.

// Tests fail loudly on unexpected errors: that is their job.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures::StreamExt;
use herald_kafka::settings::ProducerKind;
use herald_kafka::topology::{apply, describe};
use herald_kafka::{Topology, TopologySettings};
use herald_testkit::{BrokerKind, TestBroker};
use rdkafka::consumer::{CommitMode, Consumer, DefaultConsumerContext};
use rdkafka::message::Message;
use rdkafka::producer::{FutureRecord, Producer};
use rdkafka::util::Timeout;

const TIMEOUT: Duration = Duration::from_secs(30);

fn number(msg: &impl Message) -> u32 {
    String::from_utf8_lossy(msg.payload().expect("payload"))
        .trim_start_matches("event-")
        .parse()
        .expect("number")
}

/// Produce keyed records, consume them in a group storing offsets after
/// "processing", commit, and check a second member resumes where the first
/// stopped: the contract every Herald stage relies on.
async fn produce_consume_resume(kind: BrokerKind) {
    let broker = TestBroker::start(kind);
    let topic = broker.topic("scenario", 3).await;
    let group = broker.group("scenario");
    let settings = broker.settings();
    let producer = settings
        .producer("test", &ProducerKind::Idempotent)
        .expect("producer");
    for i in 0..60u32 {
        let key = format!("user-{}", i % 7);
        let payload = format!("event-{i}");
        producer
            .send(
                FutureRecord::to(&topic).key(&key).payload(&payload),
                Timeout::After(TIMEOUT),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("{kind:?}: produce: {e}"));
    }

    let consumer = settings
        .consumer("test", &group, DefaultConsumerContext)
        .expect("consumer");
    consumer.subscribe(&[&topic]).expect("subscribe");
    let mut seen: Vec<(String, u32)> = Vec::new();
    {
        let mut stream = consumer.stream();
        while seen.len() < 40 {
            let msg = tokio::time::timeout(TIMEOUT, stream.next())
                .await
                .unwrap_or_else(|_| panic!("{kind:?}: timed out after {} records", seen.len()))
                .expect("stream open")
                .expect("message");
            let key = String::from_utf8_lossy(msg.key().expect("key")).into_owned();
            seen.push((key, number(&msg)));
            consumer
                .store_offset_from_message(&msg)
                .expect("store offset");
        }
    }
    consumer
        .commit_consumer_state(CommitMode::Sync)
        .expect("commit");
    drop(consumer);

    // Per key, order is the production order.
    for k in 0..7 {
        let key = format!("user-{k}");
        let ns: Vec<u32> = seen
            .iter()
            .filter(|(kk, _)| *kk == key)
            .map(|(_, n)| *n)
            .collect();
        assert!(
            ns.windows(2).all(|w| w[0] < w[1]),
            "{kind:?}: {key} out of order: {ns:?}"
        );
    }

    // A new member of the group gets exactly the rest.
    let consumer = settings
        .consumer("test", &group, DefaultConsumerContext)
        .expect("consumer");
    consumer.subscribe(&[&topic]).expect("subscribe");
    let mut rest = Vec::new();
    let mut stream = consumer.stream();
    while rest.len() < 20 {
        let msg = tokio::time::timeout(TIMEOUT, stream.next())
            .await
            .unwrap_or_else(|_| panic!("{kind:?}: resumed consumer got only {}", rest.len()))
            .expect("stream open")
            .expect("message");
        rest.push(number(&msg));
    }
    let mut all: Vec<u32> = seen.iter().map(|(_, n)| *n).chain(rest).collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (0..60).collect::<Vec<_>>(),
        "{kind:?}: every record exactly once across the two members"
    );
    let extra = tokio::time::timeout(Duration::from_secs(2), stream.next()).await;
    assert!(extra.is_err(), "{kind:?}: unexpected extra record");
}

#[tokio::test]
async fn scenario_on_nisshi_memory() {
    produce_consume_resume(BrokerKind::Fast).await;
}

#[tokio::test]
async fn scenario_on_nisshi_sqlite() {
    produce_consume_resume(BrokerKind::Durable).await;
}

#[tokio::test]
async fn scenario_on_the_mock_cluster() {
    produce_consume_resume(BrokerKind::Transactional).await;
}

#[tokio::test]
async fn topics_apply_is_idempotent_and_reports_drift() {
    let broker = TestBroker::start(BrokerKind::Durable);
    let prefix = broker.unique("topo");
    let declared = TopologySettings {
        prefix: prefix.clone(),
        partitions: 2,
        channel_partitions: 1,
        replication_factor: 1,
        min_insync_replicas: 1,
    };
    let topology = Topology::new(declared.clone());
    for t in topology.topics() {
        broker.track(&t.name);
    }
    let admin = broker.settings().admin().expect("admin");

    let first = apply(&admin, &topology, TIMEOUT)
        .await
        .expect("first apply");
    assert_eq!(
        first.created.len(),
        topology.topics().len(),
        "everything created"
    );
    assert!(first.drift.is_empty());

    let second = apply(&admin, &topology, TIMEOUT)
        .await
        .expect("second apply");
    assert!(
        second.created.is_empty(),
        "nothing created twice: {:?}",
        second.created
    );
    assert_eq!(
        second.unchanged.len(),
        topology.topics().len(),
        "drift: {:?}",
        second.drift
    );

    // The live state matches the declaration, compaction included.
    let live = describe(&admin, &topology, TIMEOUT)
        .await
        .expect("describe");
    let state = live
        .iter()
        .find(|t| t.name == format!("{prefix}.dedup-state"))
        .expect("state topic");
    assert_eq!(state.partitions, Some(2));
    assert_eq!(
        state.configs.get("cleanup.policy").map(String::as_str),
        Some("compact")
    );
    assert_eq!(
        state.configs.get("max.message.bytes").map(String::as_str),
        Some("1048588")
    );

    // Declare something else: drift is reported, nothing is changed.
    let wider = Topology::new(TopologySettings {
        partitions: 4,
        ..declared
    });
    let third = apply(&admin, &wider, TIMEOUT)
        .await
        .expect("apply with drift");
    assert!(third.created.is_empty());
    let notifications = format!("{prefix}.notifications");
    let drifted: Vec<&str> = third
        .drift
        .iter()
        .filter(|d| d.setting == "partitions")
        .map(|d| d.topic.as_str())
        .collect();
    assert!(
        drifted.contains(&notifications.as_str()),
        "{:?}",
        third.drift
    );
    assert!(
        third
            .drift
            .iter()
            .all(|d| d.declared == "4" && d.live == "2"),
        "{:?}",
        third.drift
    );
    let after = describe(&admin, &topology, TIMEOUT)
        .await
        .expect("describe");
    assert!(
        after.iter().all(|t| t.partitions.is_some_and(|p| p <= 2)),
        "apply never alters a live topic"
    );
}

/// A topic someone created by hand with a lower `max.message.bytes` than
/// Herald's records need: `topics apply` names it, with both values, so the
/// operator learns it before a produce fails (and changes nothing).
async fn a_topic_that_refuses_large_records_is_reported(kind: BrokerKind) {
    let broker = TestBroker::start(kind);
    let prefix = broker.unique("size");
    let (replication_factor, min_insync_replicas) = match kind {
        BrokerKind::ApacheKafka3 => (3, 2),
        _ => (1, 1),
    };
    let topology = Topology::new(TopologySettings {
        prefix: prefix.clone(),
        partitions: 2,
        channel_partitions: 1,
        replication_factor,
        min_insync_replicas,
    });
    for t in topology.topics() {
        broker.track(&t.name);
    }
    let notifications = format!("{prefix}.notifications");
    // As declared, but for the one setting.
    let spec = topology
        .topics()
        .iter()
        .find(|t| t.name == notifications)
        .expect("declared");
    let configs: Vec<(&str, &str)> = spec
        .configs
        .iter()
        .map(|(k, v)| match *k {
            "max.message.bytes" => (*k, "500000"),
            _ => (*k, v.as_str()),
        })
        .collect();
    broker.create_topic(&notifications, 2, &configs).await;
    let admin = broker.settings().admin().expect("admin");
    let report = apply(&admin, &topology, TIMEOUT).await.expect("apply");
    let drift: Vec<String> = report.drift.iter().map(ToString::to_string).collect();
    assert_eq!(
        report
            .drift
            .iter()
            .map(|d| (
                d.topic.as_str(),
                d.setting.as_str(),
                d.declared.as_str(),
                d.live.as_str()
            ))
            .collect::<Vec<_>>(),
        vec![(
            notifications.as_str(),
            "max.message.bytes",
            "1048588",
            "500000"
        )],
        "{drift:?}"
    );
    assert_eq!(report.created.len(), topology.topics().len() - 1);
}

#[tokio::test]
async fn a_topic_that_refuses_large_records_is_reported_on_nisshi() {
    a_topic_that_refuses_large_records_is_reported(BrokerKind::Durable).await;
}

#[tokio::test]
async fn a_topic_that_refuses_large_records_is_reported_on_apache_kafka() {
    a_topic_that_refuses_large_records_is_reported(BrokerKind::ApacheKafka3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_state_partition_is_read_in_ranges_and_applied_in_offset_order() {
    let broker = TestBroker::start(BrokerKind::Fast);
    let topic = broker.unique("state-ranges");
    broker.create_topic(&topic, 1, &[]).await;
    let producer = broker
        .settings()
        .producer("test", &ProducerKind::Idempotent)
        .unwrap();
    // 250k records over 1000 keys: later values must win, as in compaction;
    // every 7th is a tombstone.
    let total: u32 = 250_000;
    // A fatal producer error says only "Fatal error"; the cause is asked
    // for separately (seen once in CI, not reproduced since).
    let failed = |doing: &str, e: rdkafka::error::KafkaError| -> ! {
        panic!(
            "{doing}: {e}; fatal error: {:?}",
            producer.client().fatal_error()
        )
    };
    let mut pending = Vec::new();
    for i in 0..total {
        let key = (i % 1000).to_be_bytes();
        let value = i.to_be_bytes();
        let mut r = FutureRecord::to(&topic).key(&key[..]).partition(0);
        if i % 7 != 0 {
            r = r.payload(&value[..]);
        }
        match producer.send_result(r) {
            Ok(f) => pending.push(f),
            Err((e, _)) => failed("enqueueing", e),
        }
        if pending.len() >= 20_000 {
            for f in pending.drain(..) {
                if let Err((e, _)) = f.await.unwrap() {
                    failed("delivery", e);
                }
            }
        }
    }
    for f in pending {
        if let Err((e, _)) = f.await.unwrap() {
            failed("delivery", e);
        }
    }

    let mut seen: Vec<u32> = Vec::new();
    let mut last: std::collections::HashMap<u32, Option<u32>> = Default::default();
    let stats = herald_kafka::state::read_to_end(
        &broker.settings(),
        "test",
        &topic,
        0,
        Duration::from_secs(30),
        |k, v| {
            let key = u32::from_be_bytes(k.unwrap().try_into().unwrap());
            let value = v.map(|v| u32::from_be_bytes(v.try_into().unwrap()));
            (key, value)
        },
        |(key, value)| {
            seen.push(value.unwrap_or(key + 1_000_000_000));
            last.insert(key, value);
        },
    )
    .await
    .unwrap();
    assert_eq!(stats.records, u64::from(total));
    assert_eq!(stats.end_offset, i64::from(total));
    // Exactly the produced sequence, in order (tombstones stand in as key + 1e9).
    let expected: Vec<u32> = (0..total)
        .map(|i| {
            if i % 7 == 0 {
                i % 1000 + 1_000_000_000
            } else {
                i
            }
        })
        .collect();
    assert!(seen == expected, "records were applied out of offset order");
    for key in 0..1000u32 {
        let newest = (0..total).rev().find(|i| i % 1000 == key).unwrap();
        let want = (newest % 7 != 0).then_some(newest);
        assert_eq!(last[&key], want, "key {key}: the newest record wins");
    }
}
