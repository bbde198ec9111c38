//! The contract holds for producers in other languages: a Python product
//! team using confluent-kafka and fastavro produces `NotificationRequested`
//! in each framing to the durable broker, and Herald's consumer side decodes
//! every record.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use futures::StreamExt;
use herald_codec::{Codec, Framing, RegistrySettings, SchemaSet};
use herald_model::wire::NotificationRequested;
use herald_model::{Channel, Priority};
use herald_testkit::{BrokerKind, TestBroker, TestRegistry};
use rdkafka::consumer::{Consumer, DefaultConsumerContext};
use rdkafka::message::Message;

const SCHEMA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../schemas/NotificationRequested.avsc"
);
const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/python/produce_notification.py"
);
const COUNT: usize = 25;

fn python() -> String {
    std::env::var("HERALD_PYTHON").unwrap_or_else(|_| "python3".into())
}

async fn python_produces_and_herald_decodes(framing: &str) {
    let broker = TestBroker::start(BrokerKind::Durable);
    let registry = TestRegistry::start().await.expect("registry");
    let topic = broker.topic(&format!("py-{framing}"), 3).await;

    let mut cmd = Command::new(python());
    cmd.args([
        SCRIPT,
        broker.bootstrap(),
        &topic,
        framing,
        SCHEMA,
        &COUNT.to_string(),
    ]);
    if framing == "confluent" {
        let schema = std::fs::read_to_string(SCHEMA).expect("schema");
        let id = registry.register(&format!("{topic}-value"), &schema);
        cmd.arg(id.to_string());
    }
    let out = cmd
        .output()
        .expect("run python3 (install: pip install confluent-kafka fastavro)");
    assert!(
        out.status.success(),
        "python producer failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let codec = Codec::new(
        Framing::SingleObject,
        Some(&RegistrySettings::new(registry.url())),
        SchemaSet::current(),
    )
    .expect("codec");
    let consumer = broker
        .settings()
        .consumer("e2e", &broker.group("py"), DefaultConsumerContext)
        .expect("consumer");
    consumer.subscribe(&[&topic]).expect("subscribe");
    let mut keys = BTreeSet::new();
    {
        let mut stream = consumer.stream();
        while keys.len() < COUNT {
            let msg = tokio::time::timeout(Duration::from_secs(30), stream.next())
                .await
                .unwrap_or_else(|_| {
                    panic!("{framing}: only {} of {COUNT} records arrived", keys.len())
                })
                .expect("stream")
                .expect("message");
            let bytes = msg.payload().expect("payload");
            let event: NotificationRequested = codec
                .decode(bytes)
                .await
                .unwrap_or_else(|e| panic!("{framing}: Herald cannot decode: {e}"));
            let n: u64 = event
                .idempotency_key
                .trim_start_matches("py-")
                .parse()
                .expect("key");
            assert_eq!(event.tenant, "python-team");
            assert_eq!(event.priority, Priority::Urgent);
            assert_eq!(event.channels, vec![Channel::Sms, Channel::Email]);
            assert_eq!(
                msg.key(),
                Some(event.user_id.as_bytes()),
                "keyed by user id"
            );
            assert_eq!(event.recipients.phone.as_deref(), Some("+15555550199"));
            let sms = event
                .content
                .as_ref()
                .and_then(|c| c.sms.as_ref())
                .expect("sms content");
            assert_eq!(sms.body, format!("Your code is {n:06}"));
            assert_eq!(event.created_at, 1_790_000_000_000 + n as i64);
            assert!(event.validate().is_ok(), "{:?}", event.validate());
            keys.insert(event.idempotency_key);
        }
    }
    assert_eq!(keys.len(), COUNT);
    if framing == "confluent" {
        assert_eq!(
            registry.fetches(),
            1,
            "writer schema fetched once and cached"
        );
    }
}

#[tokio::test]
async fn python_confluent_framing_decodes() {
    python_produces_and_herald_decodes("confluent").await;
}

#[tokio::test]
async fn python_single_object_framing_decodes() {
    python_produces_and_herald_decodes("single_object").await;
}
