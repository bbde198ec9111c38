//! A delivery worker process killed with SIGKILL mid-stream loses nothing:
//! after restarts every message has reached the sandbox, and the sends that
//! reached it twice are at most the in-flight window per partition for
//! each kill (the sends whose ledger entry was not yet written). The test
//! prints how many.

// Tests fail loudly on unexpected errors: that is their job.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use herald_codec::Codec;
use herald_kafka::settings::ProducerKind;
use herald_model::{sample, Channel, Priority};
use herald_sandbox::{Fault, Sandbox, SandboxSettings};
use herald_testkit::{BrokerKind, TestBroker};
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;

const DELIVER: &str = env!("CARGO_BIN_EXE_herald-deliver");
const MESSAGES: u64 = 3_000;
const IN_FLIGHT: usize = 16;
const PARTITIONS: i32 = 2;

fn spawn(config: &std::path::Path) -> Child {
    Command::new(DELIVER)
        .args(["--channel", "webhook", "--config"])
        .arg(config)
        .env(
            "HERALD__LOG__FILTER",
            std::env::var("HERALD_TEST_DELIVER_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn herald-deliver")
}

fn delivered(sandbox: &Sandbox) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for r in sandbox.records(Some("webhook"), None) {
        *seen.entry(r.notification_id.unwrap()).or_default() += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_stream_loses_nothing_and_repeats_at_most_the_in_flight_window() {
    let broker = TestBroker::start(BrokerKind::Fast);
    let topology = broker
        .herald_topology("deliver-crash", PARTITIONS, PARTITIONS)
        .await;
    let mut key = [0u8; 32];
    openssl::rand::rand_bytes(&mut key).unwrap();
    let secret = herald_sandbox::webhook_secret(&key);
    let running = herald_sandbox::serve(SandboxSettings {
        webhook_secret: secret.clone(),
        ..SandboxSettings::loopback()
    })
    .await
    .unwrap();
    let (sandbox, bound) = (&running.sandbox, running.bound);
    // Slow enough that the kills land mid-stream.
    sandbox.set_fault(
        "webhook",
        Fault {
            latency_ms: 5,
            ..Fault::default()
        },
    );

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("deliver.toml");
    let s = topology.settings();
    std::fs::write(
        &config,
        format!(
            r#"
[kafka]
bootstrap = "{bootstrap}"
consumer_overrides = {{ "session.timeout.ms" = "6000", "heartbeat.interval.ms" = "500" }}

[topics]
prefix = "{prefix}"
partitions = {partitions}
channel_partitions = {partitions}
replication_factor = 1

[admin]
listen = "127.0.0.1:0"

[deliver]
group = "{group}"
max_in_flight = {IN_FLIGHT}

[deliver.webhook]
secret = "{secret}"
allowed_hosts = ["127.0.0.1"]
allow_private_networks = true
"#,
            bootstrap = broker.bootstrap(),
            prefix = s.prefix,
            partitions = PARTITIONS,
            group = broker.group("deliver-crash"),
        ),
    )
    .unwrap();

    let producer = broker
        .settings()
        .producer("test", &ProducerKind::Idempotent)
        .unwrap();
    let topic = topology.lane(Channel::Webhook, Priority::Normal);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    for n in 0..MESSAGES {
        let mut m = sample::channel_message(n, now);
        m.channel = Channel::Webhook;
        m.priority = Priority::Normal;
        m.not_before = None;
        m.recipient.address = format!("http://{}/hooks/orders", bound.http);
        let bytes = Codec::single_object().encode(&topic, &m).await.unwrap();
        producer
            .send(
                FutureRecord::to(&topic).key(&m.user_id).payload(&bytes),
                Timeout::After(Duration::from_secs(30)),
            )
            .await
            .unwrap();
    }

    let deadline = Instant::now() + Duration::from_secs(180);
    let mut kills = 0;
    for at in [MESSAGES / 4, MESSAGES / 2] {
        let mut worker = spawn(&config);
        while (delivered(sandbox).len() as u64) < at {
            assert!(
                Instant::now() < deadline,
                "stuck at {} delivered",
                delivered(sandbox).len()
            );
            assert!(
                worker.try_wait().unwrap().is_none(),
                "the worker exited by itself"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        worker.kill().unwrap();
        worker.wait().unwrap();
        kills += 1;
    }
    let mut worker = spawn(&config);
    while (delivered(sandbox).len() as u64) < MESSAGES {
        assert!(
            Instant::now() < deadline,
            "only {} of {MESSAGES} delivered",
            delivered(sandbox).len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let it commit, then stop it cleanly.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let term = Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let exit = worker.wait().unwrap();
    assert!(exit.success(), "{exit:?}");

    let seen = delivered(sandbox);
    assert_eq!(seen.len() as u64, MESSAGES, "nothing lost");
    let repeats: usize = seen.values().map(|n| n - 1).sum();
    let bound = kills * IN_FLIGHT * PARTITIONS as usize;
    println!("{MESSAGES} messages, {kills} SIGKILLs: {repeats} sent twice (bound {bound})");
    assert!(repeats <= bound, "{repeats} repeats > {bound}");
}
