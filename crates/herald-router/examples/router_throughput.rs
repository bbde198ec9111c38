//! `make bench`: router throughput against a pipelined raw copy, and the
//! restore rate of the dedup state.
//!
//! Throughput: the same preloaded input (300-byte events, 10% duplicates,
//! push and email on every event) is read once by a raw copy (consume and
//! re-produce the same bytes with the router's client settings, offsets
//! stored from delivery reports in input order, no flush per batch) and
//! once by the router; each is timed from its first record to its last
//! acknowledgement (the router: to the end of its drain). On nisshi's
//! memory engine in `at_least_once`, and on librdkafka's mock cluster in
//! `exactly_once`. Target: router at least 0.8 of the raw copy.
//!
//! Between the two, a raw copy that writes every input record three times
//! (to three topics): about the 2.8 records the router writes per event,
//! with no logic. With this process's CPU time per event for each run, it
//! separates the cost of the router's output volume from its own work.
//!
//! Restore: entries per second read back from one state partition into a
//! fresh dedup index. Target: at least 500k entries per second.
//!
//! Sizes: `HERALD_BENCH_EVENTS` (default 200000), `HERALD_BENCH_ENTRIES`
//! (default 1000000). `HERALD_BENCH_ONLY=throughput|logic|restore` runs one
//! table; `HERALD_BENCH_SKIP=raw1,raw3,router` leaves throughput phases out
//! (to profile one of them).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::FuturesOrdered;
use futures::StreamExt;
use herald_codec::{encode_single_object, Codec};
use herald_kafka::settings::ProducerKind;
use herald_kafka::Topology;
use herald_model::{sample, DedupKey};
use herald_router::config::Guarantee;
use herald_router::process::Router;
use herald_router::RouterConfig;
use herald_telemetry::{AdminState, Metrics, Shutdown};
use herald_testkit::{BrokerKind, TestBroker};
use rdkafka::consumer::{Consumer, DefaultConsumerContext, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};

const PARTITIONS: i32 = 4;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Produces `records` pipelined, waiting for every acknowledgement.
async fn produce_all(
    producer: &FutureProducer,
    records: impl Iterator<Item = (String, Option<i32>, Vec<u8>, Vec<u8>)>,
) {
    let mut pending = FuturesOrdered::new();
    for (topic, partition, key, value) in records {
        loop {
            let mut r = FutureRecord::to(&topic).key(&key).payload(&value);
            if let Some(p) = partition {
                r = r.partition(p);
            }
            match producer.send_result(r) {
                Ok(f) => {
                    pending.push_back(f);
                    break;
                }
                // Queue full: wait for the oldest acknowledgement, retry.
                Err(_) => {
                    let done: rdkafka::producer::future_producer::OwnedDeliveryResult = pending
                        .next()
                        .await
                        .expect("queue full with nothing pending")
                        .unwrap();
                    done.map_err(|(e, _)| e).unwrap();
                }
            }
        }
        while pending.len() > 50_000 {
            pending
                .next()
                .await
                .unwrap()
                .unwrap()
                .map_err(|(e, _)| e)
                .unwrap();
        }
    }
    while let Some(r) = pending.next().await {
        r.unwrap().map_err(|(e, _)| e).unwrap();
    }
}

/// `n` events of about 300 bytes, every tenth a repeat of an earlier one.
fn events(n: u64) -> Vec<(String, Vec<u8>)> {
    let now = now_ms();
    (0..n)
        .map(|i| {
            let id = if i % 10 == 9 { i / 2 } else { i };
            let mut e = sample::notification(id, now);
            if let Some(c) = e.content.as_mut() {
                if let Some(email) = c.email.as_mut() {
                    email.html = None;
                }
            }
            e.recipients.phone = None;
            (e.user_id.clone(), encode_single_object(&e).unwrap())
        })
        .collect()
}

/// Preloads the input topic; returns the average event size.
async fn preload(broker: &TestBroker, topology: &Topology, n: u64) -> usize {
    let producer = broker
        .settings()
        .producer("bench-load", &ProducerKind::Idempotent)
        .unwrap();
    let evs = events(n);
    let avg = evs.iter().map(|(_, v)| v.len()).sum::<usize>() / evs.len().max(1);
    let topic = topology.notifications();
    produce_all(
        &producer,
        evs.into_iter()
            .map(|(k, v)| (topic.clone(), None, k.into_bytes(), v)),
    )
    .await;
    avg
}

/// Consumes the input and re-produces the same bytes; offsets stored from
/// delivery reports in input order. Returns records per second.
async fn raw_copy(
    broker: &TestBroker,
    topology: &Topology,
    n: u64,
    max_in_flight: usize,
    copies: usize,
) -> f64 {
    let settings = broker.settings();
    let mut targets = Vec::new();
    for i in 0..copies {
        let copy = format!("{}.raw-copy-{copies}-{i}", topology.settings().prefix);
        broker.create_topic(&copy, PARTITIONS, &[]).await;
        targets.push(copy);
    }
    let consumer: StreamConsumer<DefaultConsumerContext> = settings
        .consumer("router", &broker.group("raw-copy"), DefaultConsumerContext)
        .unwrap();
    let producer = settings
        .producer("router", &ProducerKind::Idempotent)
        .unwrap();
    consumer.subscribe(&[&topology.notifications()]).unwrap();
    let mut acks = FuturesOrdered::new();
    let mut done = 0u64;
    let mut first: Option<Instant> = None;
    {
        let mut stream = consumer.stream();
        while done < n {
            tokio::select! {
                Some((p, o, r)) = acks.next(), if !acks.is_empty() => {
                    let r: Result<_, _> = r;
                    r.unwrap();
                    consumer.store_offset(&topology.notifications(), p, o).unwrap();
                    done += 1;
                }
                Some(m) = stream.next(), if acks.len() < max_in_flight => {
                    let m = m.unwrap();
                    first.get_or_insert_with(Instant::now);
                    let sent: Vec<_> = targets
                        .iter()
                        .map(|copy| {
                            let mut r = FutureRecord::to(copy);
                            if let Some(k) = m.key() {
                                r = r.key(k);
                            }
                            if let Some(v) = m.payload() {
                                r = r.payload(v);
                            }
                            producer.send_result(r).map_err(|(e, _)| e).unwrap()
                        })
                        .collect();
                    let (p, o) = (m.partition(), m.offset());
                    acks.push_back(async move {
                        let mut result = Ok(());
                        for f in sent {
                            result = result.and(f.await.unwrap().map(|_| ()).map_err(|(e, _)| e));
                        }
                        (p, o, result)
                    });
                }
            }
        }
    }
    let elapsed = first.unwrap().elapsed();
    n as f64 / elapsed.as_secs_f64()
}

fn events_in() -> u64 {
    Metrics::global()
        .router_events_in
        .with_label_values(&["normal"])
        .get()
}

/// Runs the router over the input until all of it is processed and
/// drained. Returns input records per second.
async fn router(broker: &TestBroker, topology: &Topology, n: u64, guarantee: Guarantee) -> f64 {
    let mut config = RouterConfig {
        kafka: broker.settings(),
        topics: topology.settings().clone(),
        ..Default::default()
    };
    config.router.group = broker.group("bench-router");
    config.router.guarantee = guarantee;
    config.router.instance_id = Some("bench-0".into());
    if let Ok(extra) = std::env::var("HERALD_BENCH_PRODUCER") {
        for kv in extra.split(',') {
            if let Some((k, v)) = kv.split_once('=') {
                config.kafka.producer_overrides.insert(k.into(), v.into());
            }
        }
    }
    config.log.filter = "warn".into();
    let base = events_in();
    let shutdown = Shutdown::new();
    let task = tokio::spawn(herald_router::run(
        config,
        shutdown.clone(),
        AdminState::new("bench"),
    ));
    // A router that stops early (a refused setting) ends the bench.
    let alive = |task: &tokio::task::JoinHandle<_>| {
        assert!(
            !task.is_finished(),
            "the router stopped before the input was processed"
        );
    };
    while events_in() == base {
        alive(&task);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let started = Instant::now();
    while events_in() - base < n {
        alive(&task);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let processed = started.elapsed();
    shutdown.trigger();
    task.await.unwrap().unwrap();
    if std::env::var("HERALD_BENCH_VERBOSE").is_ok() {
        eprintln!(
            "router: processed in {:.2} s, drained {:.2} s later",
            processed.as_secs_f64(),
            (started.elapsed() - processed).as_secs_f64()
        );
    }
    n as f64 / started.elapsed().as_secs_f64()
}

async fn throughput_row(broker: &TestBroker, name: &str, guarantee: Guarantee, n: u64) {
    let topology = broker
        .herald_topology("bench", PARTITIONS, PARTITIONS)
        .await;
    let size = preload(broker, &topology, n).await;
    let raw = measured("raw1", n, raw_copy(broker, &topology, n, 10_000, 1)).await;
    let raw3 = measured("raw3", n, raw_copy(broker, &topology, n, 10_000, 3)).await;
    let routed = measured("router", n, router(broker, &topology, n, guarantee)).await;
    println!(
        "| {name} | {} | {n} | {size} B | {:.0}/s | {:.0}/s | {:.2} | 0.8 | {:.0}/s | {:.2} | {:.1} / {:.1} / {:.1} µs |",
        guarantee.as_str(),
        raw.rate,
        routed.rate,
        routed.rate / raw.rate,
        raw3.rate,
        routed.rate / raw3.rate,
        raw.cpu_us,
        raw3.cpu_us,
        routed.cpu_us,
    );
}

/// A rate and this process's CPU time per event while it was measured.
struct Measured {
    rate: f64,
    cpu_us: f64,
}

/// Measures `run`, unless `HERALD_BENCH_SKIP` names the phase (`raw1`,
/// `raw3`, `router`): for profiling one phase, which
/// `HERALD_BENCH_VERBOSE` announces as it starts.
async fn measured(phase: &str, n: u64, run: impl std::future::Future<Output = f64>) -> Measured {
    let skip = std::env::var("HERALD_BENCH_SKIP").unwrap_or_default();
    if skip.split(',').any(|s| s == phase) {
        return Measured {
            rate: f64::NAN,
            cpu_us: f64::NAN,
        };
    }
    if std::env::var("HERALD_BENCH_VERBOSE").is_ok() {
        eprintln!("phase: {phase}");
    }
    let before = cpu_seconds();
    let rate = run.await;
    Measured {
        rate,
        cpu_us: (cpu_seconds() - before) * 1e6 / n as f64,
    }
}

/// User and system CPU time of this process so far (`/proc/self/stat`,
/// in the kernel's 100 Hz ticks).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the parenthesised command name; utime and stime are
    // the 14th and 15th fields of the line.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

async fn restore_row(name: &str, kind: BrokerKind, entries: u64) {
    let broker = TestBroker::start(kind);
    let topology = broker.herald_topology("bench-restore", 1, 1).await;
    let producer = broker
        .settings()
        .producer("bench-load", &ProducerKind::Idempotent)
        .unwrap();
    let now = now_ms();
    let state = topology.named("dedup-state");
    produce_all(
        &producer,
        (0..entries).map(|i| {
            let key = DedupKey::new("acme", "receipt", &format!("order-{i}"));
            (
                state.clone(),
                Some(0),
                key.to_bytes().to_vec(),
                encode_single_object(&sample::dedup_entry(i, now)).unwrap(),
            )
        }),
    )
    .await;
    let config = RouterConfig {
        kafka: broker.settings(),
        topics: topology.settings().clone(),
        ..Default::default()
    };
    let router = Arc::new(Router::new(
        config.router.clone(),
        topology.clone(),
        Default::default(),
        Codec::single_object(),
    ));
    let started = Instant::now();
    let (st, _) = herald_router::run::restore(&config, &router, 0, now)
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(st.dedup.len() as u64, entries);
    println!(
        "| {name} | {entries} | {:.2} s | {:.0}/s | 500000/s |",
        elapsed.as_secs_f64(),
        entries as f64 / elapsed.as_secs_f64()
    );
}

/// The router's own work per event, without Kafka: decode, dedup,
/// policy, fan-out and encoding of every output.
async fn logic_row(n: u64) {
    let router = Router::new(
        Default::default(),
        Topology::new(Default::default()),
        Default::default(),
        Codec::single_object(),
    );
    let evs = events(n);
    // The fastest of five passes, each from an empty state: the machine
    // is shared, and a pass can only be slowed down by its neighbours.
    let mut best = Duration::MAX;
    let mut outs = 0;
    for _ in 0..5 {
        let mut st = herald_router::process::PartitionState::default();
        let started = Instant::now();
        outs = 0;
        for (i, (k, v)) in evs.iter().enumerate() {
            let input = herald_router::process::Input {
                topic: "in",
                partition: 0,
                offset: i as i64,
                key: Some(k.as_bytes()),
                payload: Some(v),
            };
            outs += router
                .process(&mut st, input, now_ms())
                .await
                .unwrap()
                .len();
        }
        best = best.min(started.elapsed());
    }
    println!(
        "| {n} | {outs} | {:.1} µs | {:.0}/s |",
        best.as_secs_f64() * 1e6 / n as f64,
        n as f64 / best.as_secs_f64()
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if let Ok(filter) = std::env::var("HERALD_BENCH_LOG") {
        herald_telemetry::init_tracing(&herald_telemetry::LogSettings {
            filter,
            format: herald_telemetry::LogFormat::Human,
        });
    }
    let n = env_u64("HERALD_BENCH_EVENTS", 200_000);
    let entries = env_u64("HERALD_BENCH_ENTRIES", 1_000_000);
    let only = std::env::var("HERALD_BENCH_ONLY").unwrap_or_default();
    let run = |table: &str| only.is_empty() || only == table;
    if run("throughput") {
        println!(
            "Router throughput (input records per second, first record to last acknowledgement)"
        );
        println!();
        println!(
            "| broker | guarantee | events | event size | raw copy | router | ratio | target | raw copy x3 | router / x3 | CPU per event: raw, x3, router |"
        );
        println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        let nisshi = TestBroker::start(BrokerKind::Fast);
        throughput_row(&nisshi, "nisshi (memory)", Guarantee::AtLeastOnce, n).await;
        drop(nisshi);
        // Mock partitions keep only their last 5 MB: stay well under it.
        let mock = TestBroker::start(BrokerKind::Transactional);
        throughput_row(&mock, "mock cluster", Guarantee::ExactlyOnce, n.min(40_000)).await;
        drop(mock);
    }
    if run("logic") {
        println!();
        println!("Router logic alone (no Kafka; one core)");
        println!();
        println!("| events | outputs | per event | rate |");
        println!("|---:|---:|---:|---:|");
        logic_row(n.min(100_000)).await;
    }
    if run("restore") {
        println!();
        println!("Restore rate (one state partition into a fresh dedup index)");
        println!();
        println!("| broker | entries | time | rate | target |");
        println!("|---|---:|---:|---:|---:|");
        restore_row("nisshi (memory)", BrokerKind::Fast, entries).await;
        // The mock keeps 5 MB per partition: about 60k state records.
        restore_row(
            "mock cluster",
            BrokerKind::Transactional,
            entries.min(60_000),
        )
        .await;
    }
}
