//! Helpers shared by the router's process-level tests.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};

use herald_kafka::TopologySettings;
use herald_testkit::TestBroker;

/// The router binary Cargo built for these tests.
pub const ROUTER: &str = env!("CARGO_BIN_EXE_herald-router");

/// Starts `herald-router` against `broker` with the test topology, short
/// session timeouts (a replacement takes over within seconds) and `extra`
/// settings (`HERALD__...` variables).
pub fn spawn_router(
    broker: &TestBroker,
    settings: &TopologySettings,
    group: &str,
    extra: &[(&str, &str)],
    stderr: Stdio,
) -> Child {
    let mut cmd = Command::new(ROUTER);
    cmd.env("HERALD__KAFKA__BOOTSTRAP", broker.bootstrap())
        .env(
            "HERALD__KAFKA__CONSUMER_OVERRIDES__session.timeout.ms",
            "6000",
        )
        .env(
            "HERALD__KAFKA__CONSUMER_OVERRIDES__heartbeat.interval.ms",
            "500",
        )
        .env("HERALD__TOPICS__PREFIX", &settings.prefix)
        .env(
            "HERALD__TOPICS__PARTITIONS",
            settings.partitions.to_string(),
        )
        .env(
            "HERALD__TOPICS__CHANNEL_PARTITIONS",
            settings.channel_partitions.to_string(),
        )
        .env("HERALD__TOPICS__REPLICATION_FACTOR", "1")
        .env("HERALD__ROUTER__GROUP", group)
        .env("HERALD__ADMIN__LISTEN", "127.0.0.1:0")
        .env(
            "HERALD__LOG__FILTER",
            std::env::var("HERALD_TEST_ROUTER_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(stderr);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn herald-router")
}

/// Sends `signal` (TERM, STOP, CONT) to a process this test started, by pid.
pub fn signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{signal} {}", child.id());
}

/// Ends a router this test started with SIGKILL, by its pid.
pub fn sigkill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}
