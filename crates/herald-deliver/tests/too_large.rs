//! A message too large to be written again as a retry. (It once took 10
//! to 180 s and failed beside the other worker tests: the dead letter was
//! written within a second, but `read_all` waited only 1 s from a fresh
//! consumer's start for the first record, which a busy machine often did
//! not fetch in time. `read_all` now waits longer for the first record
//! of a topic that has records.)

// Tests fail loudly on unexpected errors: that is their job.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{setup, start, stop};
use herald_kafka::settings::ProducerKind;
use herald_model::StatusKind;
use rdkafka::message::{Headers, Message};

/// A message that fails retryably but is too large to be written again as
/// a retry is dead-lettered (cut to fit), and the worker goes on; before,
/// the retry's produce failed and the worker stopped delivering.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_too_large_to_retry_is_dead_lettered_and_the_worker_goes_on() {
    let s = setup("deliver-big").await;
    let mut settings = s.broker.settings();
    settings
        .producer_overrides
        .insert("message.max.bytes".into(), "2000000".into());
    let producer = settings
        .producer("test", &ProducerKind::Idempotent)
        .unwrap();
    s.fail_every_request();
    let (stopper, task) = start(s.config());
    let mut big = s.message(1);
    big.content.body = format!(r#"{{"pad":"{}"}}"#, "p".repeat(998_500));
    s.produce(&producer, &big).await;
    let deadline = Instant::now() + common::WAIT;
    let dead = loop {
        let dead = s
            .broker
            .read_all(
                &s.topology.named("webhook.dead-letter"),
                2,
                Duration::from_secs(1),
            )
            .await;
        if !dead.is_empty() || Instant::now() > deadline {
            break dead;
        }
        assert!(!task.is_finished(), "the worker stopped");
    };
    assert_eq!(dead.len(), 1);
    let reason = dead[0]
        .headers()
        .unwrap()
        .iter()
        .find(|h| h.key == "herald.dlq.reason")
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned());
    assert_eq!(reason.as_deref(), Some("too_large_to_retry"));
    assert!(dead[0].payload().unwrap().len() <= 256 * 1024);

    s.sandbox.clear_fault("webhook");
    let next = s.message(2);
    s.produce(&producer, &next).await;
    let seen = s.wait_delivered(1).await;
    assert!(seen.contains_key(&next.notification_id));
    assert!(!task.is_finished(), "the worker goes on");
    stop(stopper, task).await;
    let statuses = s.statuses().await;
    assert!(statuses.iter().any(|x| x.notification_id.as_deref()
        == Some(big.notification_id.as_str())
        && x.status == StatusKind::DeadLettered
        && x.reason.as_deref() == Some("too_large_to_retry")));
}
