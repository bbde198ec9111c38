//! `make bench`: the delivery hop's latency. One webhook worker process on
//! the durable broker (nisshi) delivering to the sandbox (20 ms provider
//! latency), fed channel messages at a steady rate in all three lanes.
//!
//! Reports, per lane, the time from a message's `created_at` (set when it
//! is produced) to the sandbox accepting it: p50, p95, p99 and max. Bounded:
//! `HERALD_BENCH_RATE` messages/s (default 250) for `HERALD_BENCH_SECONDS`
//! (default 20), then it waits at most 60 s for the last deliveries.
//! `HERALD_BENCH_CONSUMER` adds consumer overrides (`key=value,...`), for
//! comparing settings; the worker binary is `target/release/herald-deliver`
//! (`HERALD_DELIVER_BIN`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use herald_codec::Codec;
use herald_kafka::settings::ProducerKind;
use herald_model::{sample, Channel, Priority};
use herald_sandbox::{Fault, SandboxSettings};
use herald_testkit::measure::{env_or, now_ms, percentile};
use herald_testkit::{BrokerKind, TestBroker};
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;

const PARTITIONS: i32 = 4;

#[tokio::main]
async fn main() {
    let rate: u64 = env_or("HERALD_BENCH_RATE", 250);
    let seconds: u64 = env_or("HERALD_BENCH_SECONDS", 20);
    let consumer = std::env::var("HERALD_BENCH_CONSUMER").unwrap_or_default();
    let n = rate * seconds;

    let broker = TestBroker::start(BrokerKind::Durable);
    let topology = broker.herald_topology("bench-latency", 2, PARTITIONS).await;
    let secret = herald_sandbox::webhook_secret(&[7u8; 32]);
    let running = herald_sandbox::serve(SandboxSettings {
        webhook_secret: secret.clone(),
        max_records: n as usize * 2,
        ..SandboxSettings::loopback()
    })
    .await
    .unwrap();
    let sandbox = std::sync::Arc::clone(&running.sandbox);
    sandbox.set_fault(
        "webhook",
        Fault {
            latency_ms: 20,
            ..Fault::default()
        },
    );

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("deliver.toml");
    let overrides: String = consumer
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| format!("\"{k}\" = \"{v}\"\n"))
        .collect();
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbootstrap = \"{}\"\n[kafka.consumer_overrides]\n{overrides}\
             [topics]\nprefix = \"{}\"\npartitions = 2\nchannel_partitions = {PARTITIONS}\nreplication_factor = 1\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n[log]\nfilter = \"warn\"\n\
             [deliver]\ngroup = \"{}\"\n\
             [deliver.webhook]\nsecret = \"{secret}\"\nallow_private_networks = true\n",
            broker.bootstrap(),
            topology.settings().prefix,
            broker.group("bench-latency"),
        ),
    )
    .unwrap();
    let bin = std::env::var("HERALD_DELIVER_BIN").unwrap_or_else(|_| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../target/release/herald-deliver"
        )
        .into()
    });
    let mut child = Command::new(&bin)
        .args(["--channel", "webhook", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{bin}: {e} (cargo build --release -p herald-deliver)"));

    let producer = broker
        .settings()
        .producer("bench", &ProducerKind::Idempotent)
        .unwrap();
    let codec = Codec::single_object();
    // Warm-up: one message per partition, until the worker has delivered
    // them (group joined, ledgers restored), so start-up is not measured.
    let warm_topic = topology.lane(Channel::Webhook, Priority::Normal);
    for i in 0..16u64 {
        let mut m = sample::channel_message(1_000_000 + i, now_ms());
        m.channel = Channel::Webhook;
        m.not_before = None;
        m.recipient.address = format!("http://{}/hooks/warm", running.bound.http);
        m.recipient.platform = None;
        let bytes = codec.encode(&warm_topic, &m).await.unwrap();
        producer
            .send(
                FutureRecord::to(&warm_topic)
                    .key(&format!("warm-{i}"))
                    .payload(&bytes),
                Timeout::After(Duration::from_secs(30)),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while sandbox.records(Some("webhook"), None).len() < 16 {
        assert!(Instant::now() < deadline, "the worker did not warm up");
        assert!(child.try_wait().unwrap().is_none(), "the worker exited");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let warm = sandbox.records(Some("webhook"), None).len();

    // Steady load: one message every 1/rate s, lanes in turn.
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    let mut sent: BTreeMap<String, (Priority, i64)> = BTreeMap::new();
    let mut acks = Vec::with_capacity(n as usize);
    for i in 0..n {
        tick.tick().await;
        let priority = Priority::ALL[(i % 3) as usize];
        let topic = topology.lane(Channel::Webhook, priority);
        let mut m = sample::channel_message(i, now_ms());
        m.channel = Channel::Webhook;
        m.priority = priority;
        m.not_before = None;
        m.recipient.address = format!("http://{}/hooks/latency", running.bound.http);
        m.recipient.platform = None;
        let bytes = codec.encode(&topic, &m).await.unwrap();
        sent.insert(m.notification_id.clone(), (priority, m.created_at));
        let p = producer.clone();
        let key = m.user_id.clone();
        acks.push(tokio::spawn(async move {
            p.send(
                FutureRecord::to(&topic).key(&key).payload(&bytes),
                Timeout::After(Duration::from_secs(30)),
            )
            .await
            .map(|_| ())
            .map_err(|(e, _)| e)
        }));
    }
    for a in acks {
        a.await.unwrap().unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while sandbox.records(Some("webhook"), None).len() < warm + n as usize
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();

    // Latency per lane, from the message's created_at to the acceptance.
    let mut by_lane: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    let mut all = Vec::new();
    for r in sandbox.records(Some("webhook"), None) {
        let Some(id) = r.notification_id.as_deref() else {
            continue;
        };
        let Some((priority, created)) = sent.get(id) else {
            continue;
        };
        let latency = r.at_ms - created;
        by_lane.entry(priority.as_str()).or_default().push(latency);
        all.push(latency);
    }
    println!(
        "Delivery hop: one webhook worker on nisshi, {rate} messages/s for {seconds} s \
         ({PARTITIONS} partitions, 3 lanes in turn, 20 ms provider latency){}",
        if consumer.is_empty() {
            String::new()
        } else {
            format!(", consumer {consumer}")
        }
    );
    println!("| lane | delivered | p50 | p95 | p99 | max |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (lane, mut v) in by_lane.into_iter().chain([("all", all)]) {
        v.sort_unstable();
        println!(
            "| {lane} | {} | {} ms | {} ms | {} ms | {} ms |",
            v.len(),
            percentile(&v, 0.5),
            percentile(&v, 0.95),
            percentile(&v, 0.99),
            v.last().copied().unwrap_or(0)
        );
    }
    drop(running);
}
