//! `make bench`: one delivery worker process per channel (push over
//! HTTP/2 to APNs and to FCM, SMS to Twilio's API, email over SMTP,
//! webhook) against the sandbox with 20 ms of provider latency, on the
//! local broker.
//!
//! Reports deliveries per second and the worker's peak RSS (VmHWM), with no
//! errors and with 10% transient errors (503; SMTP 421), next to a baseline
//! measured in the same run: the same sandbox driven directly through the
//! worker's own adapters (built from the same provider sections) with the
//! same concurrency and no Kafka, the ceiling the provider latency allows
//! (for email, `SMTP_CONNECTIONS` connections at 20 ms each). Targets:
//! 10,000 webhook deliveries/s, RSS at most 150 MB; email at least 0.8 of
//! its baseline (the SMTP connections bound both). Push and SMS are
//! reported against their baselines.
//!
//! `HERALD_BENCH_DELIVERIES` (default 50000), `HERALD_BENCH_CHANNELS`
//! (default `push,sms,email,webhook`); the worker binary is
//! `target/release/herald-deliver` (`HERALD_DELIVER_BIN`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use herald_codec::Codec;
use herald_deliver::routes::Routes;
use herald_deliver::DeliverSettings;
use herald_kafka::settings::ProducerKind;
use herald_model::wire::ChannelMessage;
use herald_model::{sample, Channel, DevicePlatform, Priority};
use herald_sandbox::credentials::Credentials;
use herald_sandbox::{Bound, Fault, Running, Sandbox, SandboxSettings};
use herald_testkit::{BrokerKind, TestBroker};
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;

const PARTITIONS: i32 = 12;
/// SMTP connections of the email worker and of its baseline.
const SMTP_CONNECTIONS: usize = 64;

/// A channel under test: how its messages are addressed, which of the
/// sandbox's providers serve it.
#[derive(Clone, Copy)]
struct Bench(Channel);

impl Bench {
    /// The sandbox's names for the channel's providers.
    fn providers(self) -> &'static [&'static str] {
        match self.0 {
            Channel::Push => &["apns", "fcm"],
            Channel::Sms => &["twilio"],
            Channel::Email => &["smtp"],
            Channel::Webhook => &["webhook"],
        }
    }

    /// Message `i` of the run: push alternates APNs and FCM tokens.
    fn message(self, bound: &Bound, i: u64, now: i64) -> ChannelMessage {
        let mut m = sample::channel_message(i, now);
        m.channel = self.0;
        m.priority = Priority::Normal;
        m.not_before = None;
        m.recipient.platform = None;
        m.recipient.address = match self.0 {
            Channel::Push => {
                m.recipient.platform = Some(if i.is_multiple_of(2) {
                    DevicePlatform::Apns
                } else {
                    DevicePlatform::Fcm
                });
                format!("{i:064x}")
            }
            Channel::Sms => format!("+1415555{:04}", i % 10_000),
            Channel::Email => format!("user{i}@example.test"),
            Channel::Webhook => format!("http://{}/hooks/bench", bound.http),
        };
        m
    }

    /// Accepted messages across the channel's providers.
    fn accepted(self, sandbox: &Sandbox) -> u64 {
        let counts = sandbox.counts();
        self.providers()
            .iter()
            .filter_map(|p| counts.get(*p)?.get("accepted").copied())
            .sum()
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

async fn sandbox(
    keys: &Credentials,
    bench: Bench,
    n: u64,
    fault: Fault,
) -> (Arc<Sandbox>, Bound, Running) {
    let running = herald_sandbox::serve(keys.sandbox(SandboxSettings {
        max_records: n as usize * 2,
        ..SandboxSettings::loopback()
    }))
    .await
    .unwrap();
    for p in bench.providers() {
        running.sandbox.set_fault(p, fault.clone());
    }
    (Arc::clone(&running.sandbox), running.bound, running)
}

struct Run {
    rate: f64,
    steady: f64,
    rss_mb: f64,
    requests: u64,
}

async fn worker_run(keys: &Credentials, bench: Bench, error_rate: f64, n: u64) -> Run {
    let broker = TestBroker::start(BrokerKind::Fast);
    let topology = broker.herald_topology("bench-deliver", 2, PARTITIONS).await;
    let (sandbox, bound, stop) = sandbox(
        keys,
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
    let topic = topology.lane(bench.0, Priority::Normal);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let codec = Codec::single_object();
    let mut acks = futures::stream::FuturesUnordered::new();
    for i in 0..n {
        let m = bench.message(&bound, i, now);
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
            keys.worker_toml(bench.0.as_str(), &bound),
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
    let mut command = Command::new(&bin);
    command
        .args(["--channel", bench.0.as_str(), "--config"])
        .arg(&config)
        .stdout(Stdio::null());
    if bench.0 == Channel::Email {
        command.env(
            "HERALD__DELIVER__EMAIL__CONNECTIONS",
            SMTP_CONNECTIONS.to_string(),
        );
    }
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("{bin}: {e} (cargo build --release -p herald-deliver)"));
    let mut rss = 0;
    loop {
        rss = rss.max(vm_hwm_kb(child.id()).unwrap_or(0));
        let accepted = bench.accepted(&sandbox);
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
    let requests: u64 = sandbox
        .counts()
        .iter()
        .filter(|(p, _)| bench.providers().contains(p))
        .flat_map(|(_, c)| c.values())
        .sum();
    // From the first acceptance to the last: without start-up (group join,
    // ledger restore).
    let records = sandbox.records(None, None);
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
async fn baseline(keys: &Credentials, bench: Bench, n: u64) -> f64 {
    let (_sandbox, bound, stop) = sandbox(
        keys,
        bench,
        n,
        Fault {
            latency_ms: 20,
            ..Fault::default()
        },
    )
    .await;
    // The worker's own adapters, from the provider sections it is given.
    #[derive(serde::Deserialize)]
    struct Sections {
        deliver: DeliverSettings,
    }
    let mut settings = toml::from_str::<Sections>(&keys.worker_toml(bench.0.as_str(), &bound))
        .unwrap()
        .deliver;
    if let Some(e) = settings.email.as_mut() {
        e.connections = SMTP_CONNECTIONS;
    }
    let routes = Routes::build(bench.0, &settings).unwrap();
    let messages: Vec<_> = (0..n).map(|i| bench.message(&bound, i, 0)).collect();
    let started = Instant::now();
    futures::stream::iter(messages.iter())
        .map(|m| routes.for_message(m)[0].provider.send(m))
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
        std::env::var("HERALD_BENCH_CHANNELS").unwrap_or_else(|_| "push,sms,email,webhook".into());
    let keys = Credentials::generate().unwrap();
    for name in channels.split(',') {
        let bench = Bench(Channel::parse(name.trim()).unwrap_or_else(|| {
            panic!("HERALD_BENCH_CHANNELS: no channel {name:?} (push, sms, email, webhook)")
        }));
        println!(
            "\nDelivery worker: {name} channel ({}), {PARTITIONS} partitions x {} in flight{}, \
             sandbox latency 20 ms, {n} deliveries",
            bench.providers().join(" and "),
            in_flight(),
            if bench.0 == Channel::Email {
                format!(", {SMTP_CONNECTIONS} SMTP connections")
            } else {
                String::new()
            }
        );
        let base = baseline(&keys, bench, n).await;
        println!("| run | deliveries/s (from start) | deliveries/s (first to last) | ratio to direct | peak RSS | requests |");
        println!("|---|---:|---:|---:|---:|---:|");
        println!("| direct, no Kafka (baseline) | {base:.0} | {base:.0} | 1.00 | - | {n} |");
        for (label, rate) in [
            ("worker, no errors", 0.0),
            ("worker, 10% transient errors", 0.1),
        ] {
            let r = worker_run(&keys, bench, rate, n).await;
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
