//! A broker restart, as a rolling upgrade of the cluster does it: the router
//! runs as its own process against a durable nisshi (sqlite) of this test's
//! own; events are routed; the broker is killed, stays down for a few
//! seconds and starts again on the same address and storage. The router
//! keeps running through it (the consumer errors are reported, not fatal)
//! and routes the events produced after the restart, and it still drains
//! cleanly on SIGTERM.

// Tests fail loudly on unexpected errors: that is their job.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::{Duration, Instant};

use herald_codec::{encode_single_object, Codec};
use herald_kafka::settings::ProducerKind;
use herald_kafka::Topology;
use herald_model::wire::ChannelMessage;
use herald_model::{sample, Channel, Priority};
use herald_testkit::{RestartableBroker, TestBroker};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;

mod common;

use common::spawn_router;

const PARTITIONS: i32 = 2;

async fn produce(broker: &TestBroker, topology: &Topology, range: std::ops::Range<u64>) {
    let producer = broker
        .settings()
        .producer("test", &ProducerKind::Idempotent)
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    for n in range {
        let mut e = sample::notification(n, now);
        e.channels = vec![Channel::Push];
        let bytes = encode_single_object(&e).unwrap();
        producer
            .send(
                FutureRecord::to(&topology.notifications())
                    .key(&e.user_id)
                    .payload(&bytes),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
}

/// Waits until the push lanes hold an output for each of `want` events.
async fn routed(broker: &TestBroker, topology: &Topology, want: usize) -> BTreeSet<String> {
    let codec = Codec::single_object();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mut keys = BTreeSet::new();
        for lane in Priority::ALL {
            for m in broker
                .read_all(
                    &topology.lane(Channel::Push, *lane),
                    PARTITIONS,
                    Duration::from_secs(2),
                )
                .await
            {
                let msg: ChannelMessage = codec.decode_local(m.payload().unwrap()).unwrap();
                keys.insert(msg.idempotency_key);
            }
        }
        if keys.len() >= want || Instant::now() > deadline {
            return keys;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_rides_out_a_broker_restart_and_routes_what_comes_after() {
    let mut nisshi = RestartableBroker::start();
    let broker = nisshi.test_broker();
    let topology = broker
        .herald_topology("restart", PARTITIONS, PARTITIONS)
        .await;
    let settings = topology.settings().clone();
    let group = broker.group("restart-router");
    // Ended by pid if an assertion below fails, so no router outlives the test.
    let mut router = herald_testkit::Reaped(spawn_router(
        &broker,
        &settings,
        &group,
        &[],
        Stdio::inherit(),
    ));

    produce(&broker, &topology, 0..40).await;
    assert_eq!(
        routed(&broker, &topology, 40).await.len(),
        40,
        "before the restart"
    );

    // Down long enough for the consumer to see its connection fail.
    nisshi.stop("KILL");
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        router.0.try_wait().unwrap().is_none(),
        "the router exited while the broker was down: {:?}",
        router.0.try_wait()
    );
    nisshi.restart();

    produce(&broker, &topology, 40..80).await;
    let keys = routed(&broker, &topology, 80).await;
    let missing: Vec<u64> = (0..80)
        .filter(|n| !keys.contains(&format!("order-{n}")))
        .collect();
    assert!(
        missing.is_empty(),
        "not routed after the restart: {missing:?}"
    );
    assert!(
        router.0.try_wait().unwrap().is_none(),
        "the router exited after the broker restart: {:?}",
        router.0.try_wait()
    );

    common::signal(&router.0, "TERM");
    let status = router.0.wait().unwrap();
    assert!(status.success(), "drain after the restart: {status}");
}
