//! `make bench`: one webhook delivery worker process against the sandbox
//! with 20 ms of provider latency, on the local broker.
//!
//! Reports deliveries per second and the worker's peak RSS (VmHWM), with no
//! errors and with 10% 503s, next to a baseline measured in the same run:
//! the same sandbox driven directly over HTTP with the same concurrency and
//! no Kafka (the ceiling the provider latency allows). Targets: 10,000
//! deliveries/s, RSS at most 150 MB.
//!
//! `HERALD_BENCH_DELIVERIES` (default 50000); the worker binary is
//! `target/release/herald-deliver` (`HERALD_DELIVER_BIN`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use herald_codec::Codec;
use herald_deliver::providers::webhook::{Webhook, WebhookSettings};
use herald_deliver::Provider as _;
use herald_kafka::settings::ProducerKind;
use herald_model::secret::Secret;
use herald_model::{sample, Channel, Priority};
use herald_sandbox::{Bound, Fault, Running, Sandbox, SandboxSettings};
use herald_testkit::{BrokerKind, TestBroker};
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;

const PARTITIONS: i32 = 12;
/// Requests in flight per partition (`HERALD_BENCH_IN_FLIGHT`, default 64).
fn in_flight() -> usize {
    std::env::var("HERALD_BENCH_IN_FLIGHT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

fn vm_hwm_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn secret() -> String {
    herald_sandbox::webhook_secret(&[42u8; 32])
}

async fn sandbox(n: u64, fault: Fault) -> (Arc<Sandbox>, Bound, Running) {
    let running = herald_sandbox::serve(SandboxSettings {
        webhook_secret: secret(),
        max_records: n as usize * 2,
        ..SandboxSettings::loopback()
    })
    .await
    .unwrap();
    running.sandbox.set_fault("webhook", fault);
    (Arc::clone(&running.sandbox), running.bound, running)
}

struct Run {
    rate: f64,
    steady: f64,
    rss_mb: f64,
    requests: u64,
}

async fn worker_run(error_rate: f64, n: u64) -> Run {
    let broker = TestBroker::start(BrokerKind::Fast);
    let topology = broker.herald_topology("bench-deliver", 2, PARTITIONS).await;
    let (sandbox, bound, stop) = sandbox(
        n,
        Fault {
            latency_ms: 20,
            error_rate,
            error_status: Some(503),
            ..Fault::default()
        },
    )
    .await;
    let producer = broker
        .settings()
        .producer("bench", &ProducerKind::Idempotent)
        .unwrap();
    let topic = topology.lane(Channel::Webhook, Priority::Normal);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let codec = Codec::single_object();
    let mut acks = futures::stream::FuturesUnordered::new();
    for i in 0..n {
        let mut m = sample::channel_message(i, now);
        m.channel = Channel::Webhook;
        m.priority = Priority::Normal;
        m.not_before = None;
        m.recipient.address = format!("http://{}/hooks/bench", bound.http);
        let bytes = codec.encode(&topic, &m).await.unwrap();
        let key = m.user_id.clone();
        let p = producer.clone();
        let t = topic.clone();
        acks.push(async move {
            p.send(
                FutureRecord::to(&t).key(&key).payload(&bytes),
                Timeout::After(Duration::from_secs(60)),
            )
            .await
            .map(|_| ())
        });
        if acks.len() >= 5_000 {
            acks.next().await.unwrap().unwrap();
        }
    }
    while let Some(r) = acks.next().await {
        r.unwrap();
    }

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("deliver.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbootstrap = \"{}\"\n\
             [topics]\nprefix = \"{}\"\npartitions = 2\nchannel_partitions = {PARTITIONS}\nreplication_factor = 1\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n[log]\nfilter = \"warn\"\n\
             [deliver]\ngroup = \"{}\"\nmax_in_flight = {}\n\
             [deliver.retry]\nbase_delay = \"50ms\"\nmax_delay = \"500ms\"\nmax_attempts = 8\njitter = 0.2\n\
             [deliver.breaker]\nfailure_threshold = 1000\n\
             [deliver.webhook]\nsecret = \"{}\"\nallow_private_networks = true\n",
            broker.bootstrap(),
            topology.settings().prefix,
            broker.group("bench-deliver"),
            in_flight(),
            secret(),
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
    let started = Instant::now();
    let mut child = Command::new(&bin)
        .args(["--channel", "webhook", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{bin}: {e} (cargo build --release -p herald-deliver)"));
    let mut rss = 0;
    loop {
        rss = rss.max(vm_hwm_kb(child.id()).unwrap_or(0));
        let accepted = sandbox
            .counts()
            .get("webhook")
            .and_then(|c| c.get("accepted").copied())
            .unwrap_or(0);
        if accepted >= n {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "the worker exited");
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "{accepted} of {n} after 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = started.elapsed();
    rss = rss.max(vm_hwm_kb(child.id()).unwrap_or(0));
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let requests: u64 = sandbox.counts()["webhook"].values().sum();
    // From the first acceptance to the last: without start-up (group join,
    // ledger restore).
    let records = sandbox.records(Some("webhook"), None);
    let span = records.last().unwrap().at_ms - records.first().unwrap().at_ms;
    let steady = n as f64 / (span.max(1) as f64 / 1000.0);
    drop(stop);
    Run {
        rate: n as f64 / took.as_secs_f64(),
        steady,
        rss_mb: rss as f64 / 1024.0,
        requests,
    }
}

/// The same sandbox and concurrency driven directly: the provider ceiling.
async fn baseline(n: u64) -> f64 {
    let (_sandbox, bound, stop) = sandbox(
        n,
        Fault {
            latency_ms: 20,
            ..Fault::default()
        },
    )
    .await;
    let hook = Webhook::new(WebhookSettings {
        secret: Secret::new(secret()),
        allowed_hosts: Vec::new(),
        allow_private_networks: true,
        timeout: Duration::from_secs(10),
    })
    .unwrap();
    let messages: Vec<_> = (0..n)
        .map(|i| {
            let mut m = sample::channel_message(i, 0);
            m.channel = Channel::Webhook;
            m.recipient.address = format!("http://{}/hooks/bench", bound.http);
            m
        })
        .collect();
    let started = Instant::now();
    futures::stream::iter(messages.iter())
        .map(|m| hook.send(m))
        .buffer_unordered(PARTITIONS as usize * in_flight())
        .for_each(|r| async move {
            r.unwrap();
        })
        .await;
    let rate = n as f64 / started.elapsed().as_secs_f64();
    drop(stop);
    rate
}

#[tokio::main]
async fn main() {
    let n: u64 = std::env::var("HERALD_BENCH_DELIVERIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    println!(
        "Delivery worker: webhook channel, {PARTITIONS} partitions x {} in flight, \
         sandbox latency 20 ms, {n} deliveries",
        in_flight()
    );
    let base = baseline(n).await;
    println!("| run | deliveries/s (from start) | deliveries/s (first to last) | ratio to direct | peak RSS | requests |");
    println!("|---|---:|---:|---:|---:|---:|");
    println!("| direct HTTP, no Kafka (baseline) | {base:.0} | {base:.0} | 1.00 | - | {n} |");
    for (label, rate) in [("worker, no errors", 0.0), ("worker, 10% 503s", 0.1)] {
        let r = worker_run(rate, n).await;
        println!(
            "| {label} | {:.0} | {:.0} | {:.2} | {:.0} MB | {} |",
            r.rate,
            r.steady,
            r.steady / base,
            r.rss_mb,
            r.requests
        );
    }
    println!("targets: 10000 deliveries/s, peak RSS <= 150 MB");
}
