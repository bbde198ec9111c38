//! A user's records land in the same partition whatever the producer's
//! language: a Java-client producer (kafka-python, whose default is the Java
//! client's murmur2 partitioner), a librdkafka producer configured as the
//! producer contract says (confluent-kafka with `partitioner=murmur2_random`)
//! and Herald's own producer write the same 200 user ids to three topics of
//! 12 partitions; each user id is in the same partition in all three. The
//! keys are ones for which librdkafka's default (CRC32) would disagree, so a
//! Herald producer left on that default fails this test.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use herald_kafka::settings::ProducerKind;
use herald_testkit::{BrokerKind, TestBroker};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/python/partition_keys.py");
const PARTITIONS: i32 = 12;
const COUNT: usize = 200;

fn python() -> String {
    std::env::var("HERALD_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Key to partition, as read back from `topic`.
async fn partitions_of(broker: &TestBroker, topic: &str) -> BTreeMap<String, i32> {
    broker
        .read_all(topic, PARTITIONS, Duration::from_secs(3))
        .await
        .iter()
        .map(|m| {
            (
                String::from_utf8_lossy(m.key().expect("keyed")).into_owned(),
                m.partition(),
            )
        })
        .collect()
}

#[tokio::test]
async fn java_python_and_herald_producers_agree_on_every_users_partition() {
    let broker = TestBroker::start(BrokerKind::Durable);
    let java_topic = broker.topic("part-java", PARTITIONS).await;
    let rdkafka_topic = broker.topic("part-rdkafka", PARTITIONS).await;
    let herald_topic = broker.topic("part-herald", PARTITIONS).await;

    let out = Command::new(python())
        .args([
            SCRIPT,
            broker.bootstrap(),
            &java_topic,
            &rdkafka_topic,
            &PARTITIONS.to_string(),
            &COUNT.to_string(),
        ])
        .output()
        .expect("run python3 (install: pip install confluent-kafka kafka-python)");
    assert!(
        out.status.success(),
        "python producers failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("the script prints its CRC32 partitions");

    let producer = broker
        .settings()
        .producer("test", &ProducerKind::Idempotent)
        .unwrap();
    for n in 0..COUNT {
        let key = format!("user-{n}");
        producer
            .send(
                FutureRecord::to(&herald_topic).key(&key).payload("herald"),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }

    let java = partitions_of(&broker, &java_topic).await;
    let rdkafka = partitions_of(&broker, &rdkafka_topic).await;
    let herald = partitions_of(&broker, &herald_topic).await;
    assert_eq!(java.len(), COUNT, "every Java-client record read back");
    assert_eq!(
        rdkafka, java,
        "librdkafka with murmur2_random = Java client"
    );
    assert_eq!(herald, java, "Herald's producer = Java client");

    let crc32_differs = java
        .iter()
        .filter(|(k, p)| printed["crc32"][k.as_str()].as_i64() != Some(i64::from(**p)))
        .count();
    assert!(
        crc32_differs > COUNT / 2,
        "CRC32 would agree on most keys ({crc32_differs} of {COUNT} differ): the test would not see a wrong partitioner"
    );
}
