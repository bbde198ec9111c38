//! No event can stop the router. Run as its own process, it is sent, in
//! one partition: an event just under the producer's 1,000,000-byte limit
//! (over the router's 256 KiB maximum), an event whose template uses a
//! 250 KB variable four times (its output would be over what a record
//! holds), a 200 KB event (large but allowed) and an ordinary one. The
//! first two are dead-lettered with their reasons (the oversized body cut,
//! with its length and source in headers), the last two are routed, and
//! the router is still running. Before, the first one made the router exit
//! (`an output was not acknowledged`) and every restart exit again on it.

// Tests fail loudly on unexpected errors: that is their job.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use herald_codec::{encode_single_object, Codec};
use herald_kafka::produce::{DLQ_REASON, DLQ_TRUNCATED, MAX_RECORD_BYTES};
use herald_kafka::settings::ProducerKind;
use herald_model::wire::{ChannelMessage, NotificationRequested, TemplateRef};
use herald_model::{sample, Channel, Priority};
use herald_testkit::{BrokerKind, TestBroker};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::FutureRecord;

mod common;

fn event(n: u64) -> NotificationRequested {
    let mut e = sample::notification(n, 1_790_000_000_000);
    e.channels = vec![Channel::Push];
    // One user: one partition, so each record must be passed to reach the next.
    e.user_id = "user-poison".into();
    e.expires_at = None;
    e
}

/// An event whose encoded value is `size` bytes, give or take a few.
fn event_of_size(n: u64, size: usize) -> Vec<u8> {
    let mut e = event(n);
    let base = encode_single_object(&e).unwrap().len();
    e.content.as_mut().unwrap().push.as_mut().unwrap().body = "x".repeat(size - base - 8);
    encode_single_object(&e).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_events_and_outputs_are_dead_lettered_and_the_router_goes_on() {
    let broker = TestBroker::start(BrokerKind::Fast);
    let topology = broker.herald_topology("poison", 2, 2).await;
    let dir = tempfile::tempdir().unwrap();
    let templates = dir.path().join("templates.toml");
    std::fs::write(
        &templates,
        "[big]\ndefault_locale = \"en\"\n[big.locales.en]\nbody = \"{{ v }}{{ v }}{{ v }}{{ v }}\"\n",
    )
    .unwrap();
    let mut router = herald_testkit::Reaped(common::spawn_router(
        &broker,
        topology.settings(),
        &broker.group("poison-router"),
        &[("HERALD__ROUTER__TEMPLATES", templates.to_str().unwrap())],
        Stdio::inherit(),
    ));

    let mut settings = broker.settings();
    settings
        .producer_overrides
        .insert("message.max.bytes".into(), "2000000".into());
    let producer = settings
        .producer("test", &ProducerKind::Idempotent)
        .unwrap();
    let huge = event_of_size(1, 999_800);
    let mut templated = event(2);
    templated.content = None;
    templated.template = Some(TemplateRef {
        template_id: "big".into(),
        locale: None,
        variables: BTreeMap::from([("v".to_string(), "y".repeat(250_000))]),
    });
    let templated = encode_single_object(&templated).unwrap();
    let large = event_of_size(3, 200_000);
    let ordinary = encode_single_object(&event(4)).unwrap();
    for bytes in [&huge, &templated, &large, &ordinary] {
        producer
            .send(
                FutureRecord::to(&topology.notifications())
                    .key("user-poison")
                    .payload(bytes.as_slice()),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }

    // The last two are routed.
    let codec = Codec::single_object();
    let deadline = Instant::now() + Duration::from_secs(60);
    let routed = loop {
        let mut keys = Vec::new();
        for m in broker
            .read_all(
                &topology.lane(Channel::Push, Priority::Normal),
                2,
                Duration::from_secs(1),
            )
            .await
        {
            assert!(m.payload().unwrap().len() <= MAX_RECORD_BYTES);
            let msg: ChannelMessage = codec.decode_local(m.payload().unwrap()).unwrap();
            keys.push(msg.idempotency_key);
        }
        if keys.len() >= 2 || Instant::now() > deadline {
            break keys;
        }
        assert!(
            router.0.try_wait().unwrap().is_none(),
            "the router exited: {:?}",
            router.0.try_wait()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(routed, vec!["order-3".to_string(), "order-4".to_string()]);
    assert!(router.0.try_wait().unwrap().is_none(), "the router exited");

    // The first two are dead letters that fit, with their reasons.
    let dead: Vec<(String, Option<String>, usize)> = broker
        .read_all(&topology.named("dead-letter"), 2, Duration::from_secs(2))
        .await
        .iter()
        .map(|m| {
            let header = |name: &str| {
                m.headers().and_then(|h| {
                    h.iter()
                        .find(|x| x.key == name)
                        .and_then(|x| x.value)
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                })
            };
            (
                header(DLQ_REASON).unwrap_or_default(),
                header(DLQ_TRUNCATED),
                m.payload().map_or(0, <[u8]>::len),
            )
        })
        .collect();
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert_eq!(dead[0].0, "too_large");
    assert_eq!(dead[0].1.as_deref(), Some(huge.len().to_string().as_str()));
    assert!(dead[0].2 < huge.len());
    assert_eq!(dead[1].0, "output_too_large");
    assert_eq!(dead[1].2, templated.len(), "kept whole: it fits");

    common::signal(&router.0, "TERM");
    assert!(router.0.wait().unwrap().success(), "drains cleanly");
}
