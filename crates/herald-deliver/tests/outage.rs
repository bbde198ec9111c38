//! A 60 s provider outage: the breaker opens (its own test binary, so the
//! process-wide breaker metric is this worker's alone), requests become
//! probes, and every message is delivered once after the outage.

// Tests fail loudly on unexpected errors: that is their job.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{setup, start, stop};
use herald_model::StatusKind;
use herald_sandbox::Fault;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_60_second_outage_opens_the_breaker_and_loses_nothing() {
    let s = setup("deliver-outage").await;
    let producer = s.producer();
    let mut config = s.config();
    config.deliver.breaker.open_for = Duration::from_secs(2);
    config.deliver.breaker.max_open_for = Duration::from_secs(8);
    // A half-open probe is a real attempt and counts against its message's
    // budget. With the shared test config (6 attempts, retries after 0.1 to
    // 0.8 s) one message caught 6 of the outage's probes once and was
    // dead-lettered. Here the budget outlasts the outage (about 15 probes),
    // so the test checks what it is about: no flood, nothing lost.
    config.deliver.retry.max_attempts = 20;
    s.sandbox.set_fault(
        "webhook",
        Fault {
            outage_s: Some(60),
            ..Fault::default()
        },
    );
    let started = Instant::now();
    let (stopper, task) = start(config);
    for n in 0..40 {
        s.produce(&producer, &s.message(n)).await;
    }
    // During the outage the breaker opens: requests are probes, not a flood.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let open = herald_telemetry::Metrics::global()
        .breaker_state
        .with_label_values(&["webhook", "webhook", "open"])
        .get()
        + herald_telemetry::Metrics::global()
            .breaker_state
            .with_label_values(&["webhook", "webhook", "half_open"])
            .get();
    assert_eq!(open, 1, "the breaker is not closed during the outage");
    let during = s.sandbox.counts()["webhook"]["503 injected"];
    assert!(during <= 20, "{during} requests in 30 s of outage");
    assert!(s.delivered().is_empty());

    let seen = s.wait_delivered(40).await;
    let took = started.elapsed();
    assert!(seen.values().all(|n| *n == 1), "each once: {seen:?}");
    assert!(took >= Duration::from_secs(60), "{took:?}");
    stop(stopper, task).await;
    let injected = s.sandbox.counts()["webhook"]["503 injected"];
    println!("60 s outage: {injected} requests refused, 40 delivered after {took:?}");
    let statuses = s.statuses().await;
    assert!(statuses
        .iter()
        .all(|x| x.status != StatusKind::DeadLettered));
    assert_eq!(
        statuses
            .iter()
            .filter(|x| x.status == StatusKind::Sent)
            .count(),
        40
    );
}
