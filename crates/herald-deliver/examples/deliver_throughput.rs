//! `make bench`: one delivery worker process per channel (webhook, email
//! over SMTP) against the sandbox with 20 ms of provider latency, on the
//! local broker.
//!
//! Reports deliveries per second and the worker's peak RSS (VmHWM), with no
//! errors and with 10% transient errors (503; SMTP 421), next to a baseline
//! measured in the same run: the same sandbox driven directly through the
//! same adapter with the same concurrency and no Kafka (the ceiling the
//! provider latency allows; for email, `SMTP_CONNECTIONS` connections at
//! 20 ms each). Targets: 10,000 webhook deliveries/s, RSS at most 150 MB;
//! email at least 0.8 of its baseline.
//!
//! `HERALD_BENCH_DELIVERIES` (default 50000), `HERALD_BENCH_CHANNELS`
//! (default `webhook,email`); the worker binary is
//! `target/release/herald-deliver` (`HERALD_DELIVER_BIN`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use herald_codec::Codec;
use herald_deliver::providers::email::{Email, EmailSettings, Tls};
use herald_deliver::providers::webhook::{Webhook, WebhookSettings};
use herald_deliver::Provider;
use herald_kafka::settings::ProducerKind;
use herald_model::secret::Secret;
use herald_model::{sample, Channel, Priority};
use herald_sandbox::{Bound, Fault, Running, Sandbox, SandboxSettings};
use herald_testkit::{BrokerKind, TestBroker};
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;

const PARTITIONS: i32 = 12;
/// SMTP connections of the email worker and of its baseline.
const SMTP_CONNECTIONS: usize = 64;

/// A channel under test: how its messages are addressed, how the worker
/// and the baseline reach the sandbox.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Bench {
    Webhook,
    Email,
}

impl Bench {
    fn channel(self) -> Channel {
        match self {
            Self::Webhook => Channel::Webhook,
            Self::Email => Channel::Email,
        }
    }

    /// The sandbox's name for the provider.
    fn provider(self) -> &'static str {
        match self {
            Self::Webhook => "webhook",
            Self::Email => "smtp",
        }
    }

    fn address(self, bound: &Bound, i: u64) -> String {
        match self {
            Self::Webhook => format!("http://{}/hooks/bench", bound.http),
            Self::Email => format!("user{i}@example.test"),
        }
    }

    /// The worker's provider section.
    fn config(self, bound: &Bound) -> String {
        match self {
            Self::Webhook => format!(
                "[deliver.webhook]\nsecret = \"{}\"\nallow_private_networks = true\n",
                secret()
            ),
            Self::Email => format!(
                "[deliver.email]\nhost = \"{}\"\nport = {}\ntls = \"none\"\n\
                 from = \"Herald <noreply@example.test>\"\ntimeout = \"10s\"\n\
                 connections = {SMTP_CONNECTIONS}\n",
                bound.smtp.ip(),
                bound.smtp.port()
            ),
        }
    }

    fn adapter(self, bound: &Bound) -> Box<dyn Provider> {
        match self {
            Self::Webhook => Box::new(
                Webhook::new(WebhookSettings {
                    secret: Secret::new(secret()),
                    allowed_hosts: Vec::new(),
                    allow_private_networks: true,
                    timeout: Duration::from_secs(10),
                })
                .unwrap(),
            ),
            Self::Email => Box::new(
                Email::new(EmailSettings {
                    host: bound.smtp.ip().to_string(),
                    port: Some(bound.smtp.port()),
                    tls: Tls::None,
                    username: None,
                    password: None,
                    from: "Herald <noreply@example.test>".into(),
                    list_unsubscribe: None,
                    timeout: Duration::from_secs(10),
                    connections: SMTP_CONNECTIONS,
                    tracking: None,
                })
                .unwrap(),
            ),
        }
    }
}
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

async fn sandbox(bench: Bench, n: u64, fault: Fault) -> (Arc<Sandbox>, Bound, Running) {
    let running = herald_sandbox::serve(SandboxSettings {
        webhook_secret: secret(),
        max_records: n as usize * 2,
        ..SandboxSettings::loopback()
    })
    .await
    .unwrap();
    running.sandbox.set_fault(bench.provider(), fault);
    (Arc::clone(&running.sandbox), running.bound, running)
}

struct Run {
    rate: f64,
    steady: f64,
    rss_mb: f64,
    requests: u64,
}

async fn worker_run(bench: Bench, error_rate: f64, n: u64) -> Run {
    let broker = TestBroker::start(BrokerKind::Fast);
    let topology = broker.herald_topology("bench-deliver", 2, PARTITIONS).await;
    let (sandbox, bound, stop) = sandbox(
        bench,
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
    let topic = topology.lane(bench.channel(), Priority::Normal);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let codec = Codec::single_object();
    let mut acks = futures::stream::FuturesUnordered::new();
    for i in 0..n {
        let mut m = sample::channel_message(i, now);
        m.channel = bench.channel();
        m.priority = Priority::Normal;
        m.not_before = None;
        m.recipient.address = bench.address(&bound, i);
        m.recipient.platform = None;
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
             [deliver.breaker]\nfailure_threshold = 1000\n{}",
            broker.bootstrap(),
            topology.settings().prefix,
            broker.group("bench-deliver"),
            in_flight(),
            bench.config(&bound),
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
        .args(["--channel", bench.channel().as_str(), "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{bin}: {e} (cargo build --release -p herald-deliver)"));
    let mut rss = 0;
    loop {
        rss = rss.max(vm_hwm_kb(child.id()).unwrap_or(0));
        let accepted = sandbox
            .counts()
            .get(bench.provider())
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
    let requests: u64 = sandbox.counts()[bench.provider()].values().sum();
    // From the first acceptance to the last: without start-up (group join,
    // ledger restore).
    let records = sandbox.records(Some(bench.provider()), None);
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
async fn baseline(bench: Bench, n: u64) -> f64 {
    let (_sandbox, bound, stop) = sandbox(
        bench,
        n,
        Fault {
            latency_ms: 20,
            ..Fault::default()
        },
    )
    .await;
    let adapter = bench.adapter(&bound);
    let messages: Vec<_> = (0..n)
        .map(|i| {
            let mut m = sample::channel_message(i, 0);
            m.channel = bench.channel();
            m.recipient.address = bench.address(&bound, i);
            m.recipient.platform = None;
            m
        })
        .collect();
    let started = Instant::now();
    futures::stream::iter(messages.iter())
        .map(|m| adapter.send(m))
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
    let channels =
        std::env::var("HERALD_BENCH_CHANNELS").unwrap_or_else(|_| "webhook,email".into());
    for name in channels.split(',') {
        let bench = match name.trim() {
            "webhook" => Bench::Webhook,
            "email" => Bench::Email,
            other => panic!("HERALD_BENCH_CHANNELS: no bench for {other:?} (webhook, email)"),
        };
        println!(
            "\nDelivery worker: {name} channel, {PARTITIONS} partitions x {} in flight{}, \
             sandbox latency 20 ms, {n} deliveries",
            in_flight(),
            if bench == Bench::Email {
                format!(", {SMTP_CONNECTIONS} SMTP connections")
            } else {
                String::new()
            }
        );
        let base = baseline(bench, n).await;
        println!("| run | deliveries/s (from start) | deliveries/s (first to last) | ratio to direct | peak RSS | requests |");
        println!("|---|---:|---:|---:|---:|---:|");
        println!("| direct, no Kafka (baseline) | {base:.0} | {base:.0} | 1.00 | - | {n} |");
        for (label, rate) in [
            ("worker, no errors", 0.0),
            ("worker, 10% transient errors", 0.1),
        ] {
            let r = worker_run(bench, rate, n).await;
            println!(
                "| {label} | {:.0} | {:.0} | {:.2} | {:.0} MB | {} |",
                r.rate,
                r.steady,
                r.steady / base,
                r.rss_mb,
                r.requests
            );
        }
    }
    println!("targets: webhook 10000 deliveries/s; email 0.8 of its baseline; peak RSS <= 150 MB");
}
