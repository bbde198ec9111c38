//! `herald dlq list|replay`: dead letters are listed without addresses, a
//! replayed dead letter is delivered once, and replaying it again does not
//! send it twice.

// Tests fail loudly on unexpected errors: that is their job.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use herald_codec::Codec;
use herald_deliver::providers::webhook::WebhookSettings;
use herald_deliver::retry::RetrySettings;
use herald_deliver::{DeliverConfig, DeliverSettings};
use herald_kafka::settings::ProducerKind;
use herald_model::secret::Secret;
use herald_model::{sample, Channel, Priority};
use herald_sandbox::{Fault, SandboxSettings};
use herald_telemetry::shutdown::Shutdown;
use herald_telemetry::AdminState;
use herald_testkit::{BrokerKind, TestBroker};
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;

const HERALD: &str = env!("CARGO_BIN_EXE_herald");
const WAIT: Duration = Duration::from_secs(60);

fn herald(broker: &TestBroker, prefix: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(HERALD)
        .args(args)
        .env("HERALD__KAFKA__BOOTSTRAP", broker.bootstrap())
        .env("HERALD__TOPICS__PREFIX", prefix)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_letters_are_listed_and_a_replay_is_delivered_once() {
    let broker = TestBroker::start(BrokerKind::Fast);
    let topology = broker.herald_topology("dlq", 2, 2).await;
    let prefix = topology.settings().prefix.clone();
    let secret = herald_sandbox::webhook_secret(&uuid_bytes());
    let running = herald_sandbox::serve(SandboxSettings {
        webhook_secret: secret.clone(),
        ..SandboxSettings::loopback()
    })
    .await
    .unwrap();
    let (sandbox, bound) = (&running.sandbox, running.bound);
    sandbox.set_fault(
        "webhook",
        Fault {
            error_rate: 1.0,
            ..Fault::default()
        },
    );
    let config = DeliverConfig {
        kafka: broker.settings(),
        topics: topology.settings().clone(),
        deliver: DeliverSettings {
            channel: Some(Channel::Webhook),
            group: Some(broker.group("dlq")),
            retry: RetrySettings {
                max_attempts: 2,
                base_delay: Duration::from_millis(100),
                max_delay: Duration::from_millis(200),
                jitter: 0.0,
            },
            webhook: Some(WebhookSettings {
                secret: Secret::new(secret),
                allowed_hosts: vec!["127.0.0.1".into()],
                allow_private_networks: true,
                timeout: Duration::from_secs(5),
            }),
            ..DeliverSettings::default()
        },
        ..DeliverConfig::default()
    };
    let stop = Shutdown::new();
    let worker = tokio::spawn(herald_deliver::run(
        config,
        stop.clone(),
        AdminState::new("deliver"),
    ));

    let producer = broker
        .settings()
        .producer("test", &ProducerKind::Idempotent)
        .unwrap();
    let lane = topology.lane(Channel::Webhook, Priority::Normal);
    let mut ids = Vec::new();
    for n in 0..2 {
        let mut m = sample::channel_message(n, now_ms());
        m.channel = Channel::Webhook;
        m.priority = Priority::Normal;
        m.not_before = None;
        m.recipient.address = format!("http://{}/hooks/orders", bound.http);
        ids.push(m.notification_id.clone());
        let bytes = Codec::single_object().encode(&lane, &m).await.unwrap();
        producer
            .send(
                FutureRecord::to(&lane).key(&m.user_id).payload(&bytes),
                Timeout::After(WAIT),
            )
            .await
            .unwrap();
    }
    producer
        .send(
            FutureRecord::to(&lane).key("user-x").payload(&b"junk"[..]),
            Timeout::After(WAIT),
        )
        .await
        .unwrap();

    // Both messages fail twice and are dead-lettered; so is the junk.
    let deadline = Instant::now() + WAIT;
    let listing = loop {
        let (code, out) = herald(&broker, &prefix, &["dlq", "list", "--channel", "webhook"]);
        assert_eq!(code, 0, "{out}");
        if out.contains("3 dead letter(s)") {
            break out;
        }
        assert!(Instant::now() < deadline, "{out}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    for id in &ids {
        let line = listing
            .lines()
            .find(|l| l.contains(id.as_str()))
            .expect(&listing);
        assert!(line.contains("attempts_exhausted"), "{line}");
        assert!(
            line.split_whitespace().any(|w| w == "2"),
            "two attempts: {line}"
        );
    }
    assert!(listing.contains("(undecodable)"), "{listing}");
    assert!(!listing.contains("127.0.0.1"), "no addresses: {listing}");
    let position = |id: &str| {
        let line = listing.lines().find(|l| l.contains(id)).unwrap();
        let mut w = line.split_whitespace();
        format!("{}:{}", w.next().unwrap(), w.next().unwrap())
    };

    // The provider recovers; the first dead letter is replayed: delivered once.
    sandbox.clear_fault("webhook");
    let first = position(&ids[0]);
    let (code, out) = herald(
        &broker,
        &prefix,
        &["dlq", "replay", "--channel", "webhook", "--record", &first],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("replayed 1 dead letter(s)"), "{out}");
    let delivered = || {
        let mut seen: HashMap<String, usize> = HashMap::new();
        for r in sandbox.records(Some("webhook"), None) {
            *seen.entry(r.notification_id.unwrap()).or_default() += 1;
        }
        seen
    };
    let deadline = Instant::now() + WAIT;
    while !delivered().contains_key(&ids[0]) {
        assert!(Instant::now() < deadline, "the replay was not delivered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Replaying everything: the second is delivered, the first is not sent
    // again (the ledger), the junk cannot be replayed (exit 2).
    let (code, out) = herald(
        &broker,
        &prefix,
        &["dlq", "replay", "--channel", "webhook", "--all"],
    );
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("replayed 2 dead letter(s)") && out.contains("1 undecodable skipped"),
        "{out}"
    );
    let deadline = Instant::now() + WAIT;
    while !delivered().contains_key(&ids[1]) {
        assert!(
            Instant::now() < deadline,
            "the second replay was not delivered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        delivered(),
        HashMap::from([(ids[0].clone(), 1), (ids[1].clone(), 1)])
    );

    let (code, out) = herald(
        &broker,
        &prefix,
        &["dlq", "replay", "--channel", "webhook", "--record", "9:9"],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("no dead letter at"), "{out}");

    stop.trigger();
    tokio::time::timeout(WAIT, worker)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

fn uuid_bytes() -> [u8; 32] {
    let mut b = [0u8; 32];
    b[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    b[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    b
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}
