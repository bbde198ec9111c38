//! A worker whose send does not finish says so, and one that waits for a
//! provider to come back does not. Run as its own process with
//! `admin.stall_after = "1s"`:
//!
//! - against a provider that takes 4 s to answer (inside the 10 s request
//!   timeout), its `/healthz` answers 503 ("stalled") while the send hangs,
//!   its `herald_oldest_work_seconds` shows the age, and once the provider
//!   answers, the message is delivered once and `/healthz` is 200 again.
//!   Before, `/healthz` was a constant "ok": a worker wedged for minutes
//!   looked healthy to Kubernetes;
//! - against a provider that fails every request, with its breaker open for
//!   3 s, messages wait for the breaker (a webhook's in a retry tier) and
//!   `/healthz` stays 200: a provider outage is not the worker's fault, and
//!   restarting it would not end the outage.

// Tests fail loudly on unexpected errors: that is their job.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::setup;
use herald_sandbox::Fault;

const DELIVER: &str = env!("CARGO_BIN_EXE_herald-deliver");

async fn get(url: &str) -> (u16, String) {
    match reqwest::get(url).await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(_) => (0, String::new()),
    }
}

/// Starts the worker as a process with `extra` in its configuration;
/// returns it and its admin URL once it is ready.
async fn worker(
    s: &common::Setup,
    extra: &str,
) -> (herald_testkit::Reaped, String, tempfile::TempDir) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("deliver.toml");
    let t = s.topology.settings();
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbootstrap = \"{}\"\n\
             [topics]\nprefix = \"{}\"\npartitions = 2\nchannel_partitions = 2\nreplication_factor = 1\n\
             [admin]\nlisten = \"127.0.0.1:{port}\"\nstall_after = \"1s\"\n\
             [deliver]\ngroup = \"{}\"\n\
             [deliver.webhook]\nsecret = \"{}\"\nallow_private_networks = true\ntimeout = \"10s\"\n{extra}",
            s.broker.bootstrap(),
            t.prefix,
            s.broker.group("deliver-liveness"),
            s.secret
        ),
    )
    .unwrap();
    let worker = herald_testkit::Reaped(
        Command::new(DELIVER)
            .args(["--channel", "webhook", "--config"])
            .arg(&config)
            .env("HERALD__LOG__FILTER", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + common::WAIT;
    while get(&format!("{base}/readyz")).await.0 != 200 {
        assert!(Instant::now() < deadline, "the worker never got ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get(&format!("{base}/healthz")).await.0, 200);
    (worker, base, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_that_does_not_finish_makes_healthz_fail_until_it_does() {
    let s = setup("deliver-stall").await;
    s.sandbox.set_fault(
        "webhook",
        Fault {
            latency_ms: 4_000,
            ..Fault::default()
        },
    );
    let (mut worker, base, _dir) = worker(&s, "").await;
    let deadline = Instant::now() + common::WAIT;
    let producer = s.producer();
    let m = s.message(1);
    s.produce(&producer, &m).await;

    // While the send hangs: unhealthy, with the age in the metrics.
    let stalled = loop {
        let (status, body) = get(&format!("{base}/healthz")).await;
        if status == 503 {
            break body;
        }
        assert!(
            Instant::now() < deadline && s.delivered().is_empty(),
            "healthz stayed {status} while the send hung"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(stalled.starts_with("stalled:"), "{stalled}");
    let (_, metrics) = get(&format!("{base}/metrics")).await;
    let age: f64 = metrics
        .lines()
        .find(|l| l.starts_with("herald_oldest_work_seconds{stage=\"deliver\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no herald_oldest_work_seconds in\n{metrics}"));
    assert!(age > 1.0, "{age}");

    // Once the provider answers: delivered once, healthy again.
    let seen = s.wait_delivered(1).await;
    assert_eq!(seen.get(&m.notification_id), Some(&1));
    while get(&format!("{base}/healthz")).await.0 != 200 {
        assert!(Instant::now() < deadline, "healthz did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(worker.0.try_wait().unwrap().is_none(), "the worker exited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_an_open_breaker_is_not_a_stall() {
    let s = setup("deliver-outage-live").await;
    s.fail_every_request();
    let (mut worker, base, _dir) = worker(
        &s,
        "[deliver.breaker]\nfailure_threshold = 1\nopen_for = \"3s\"\nmax_open_for = \"3s\"\n\
         [deliver.retry]\nbase_delay = \"200ms\"\nmax_delay = \"1s\"\nmax_attempts = 30\n",
    )
    .await;
    let producer = s.producer();
    for n in 0..6 {
        s.produce(&producer, &s.message(n)).await;
    }
    // The outage goes on for 5 s: every answer a 503, the breaker open 3 s
    // at a time, messages waiting for it. Healthy all along.
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        let (status, body) = get(&format!("{base}/healthz")).await;
        assert_eq!(status, 200, "unhealthy during a provider outage: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let failed = s.sandbox.counts()["webhook"]["503 injected"];
    assert!(failed >= 2, "the outage was not reached: {failed} failures");
    s.sandbox.clear_fault("webhook");
    s.wait_delivered(6).await;
    assert!(worker.0.try_wait().unwrap().is_none(), "the worker exited");
}
