//! The `herald` binary as a user runs it: `herald dev` starts the local
//! stack and stops cleanly on Ctrl-C; `herald topics apply` is idempotent and
//! reports drift.

// Tests fail loudly on unexpected errors: that is their job.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use herald_codec::Codec;
use herald_kafka::KafkaSettings;
use herald_model::wire::ChannelMessage;
use herald_testkit::{BrokerKind, TestBroker};
use rdkafka::consumer::{Consumer, DefaultConsumerContext};
use rdkafka::message::Message;

const HERALD: &str = env!("CARGO_BIN_EXE_herald");

fn http_get(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect admin");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

fn field<'a>(lines: &'a [String], prefix: &str) -> &'a str {
    lines
        .iter()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l[prefix.len()..].split_whitespace().next())
        .unwrap_or_else(|| panic!("no `{prefix}` line in {lines:#?}"))
}

#[tokio::test]
async fn herald_dev_serves_the_stack_and_stops_cleanly_on_ctrl_c() {
    let mut child = Command::new(HERALD)
        .arg("dev")
        .env("HERALD__ADMIN__LISTEN", "127.0.0.1:0")
        .env("HERALD__TOPICS__PARTITIONS", "3")
        .env("HERALD__TOPICS__CHANNEL_PARTITIONS", "2")
        .env("HERALD__DEV__SCALER_POLL_INTERVAL", "500ms")
        .env("HERALD__DEV__SANDBOX_HTTP", "127.0.0.1:0")
        .env("HERALD__DEV__SANDBOX_SMTP", "127.0.0.1:0")
        .env_remove("HERALD__KAFKA__BOOTSTRAP")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn herald dev");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !lines.iter().any(|l: &String| l.starts_with("ready")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => lines.push(l),
            Err(_) => {
                let _ = child.kill();
                panic!("herald dev did not become ready: {lines:#?}");
            }
        }
    }
    let bootstrap = field(&lines, "kafka").to_string();
    let admin = field(&lines, "admin")
        .trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .to_string();
    assert!(
        bootstrap.starts_with("127.0.0.1:"),
        "embedded cluster on loopback: {bootstrap}"
    );

    assert!(http_get(&admin, "/readyz").starts_with("HTTP/1.1 200"));
    assert!(http_get(&admin, "/metrics").contains("herald_ready{stage=\"dev\"} 1"));

    // A product team's event goes in; the router fans it out to the lanes.
    let send = Command::new(HERALD)
        .args(["send", "--count", "3", "--duplicates", "100"])
        .env("HERALD__KAFKA__BOOTSTRAP", &bootstrap)
        .env("HERALD__TOPICS__PARTITIONS", "3")
        .output()
        .expect("herald send");
    let said = String::from_utf8_lossy(&send.stdout);
    assert!(
        send.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&send.stderr)
    );
    assert!(
        said.contains("sent 6 events to herald.notifications (3 duplicates)"),
        "{said}"
    );
    let settings = KafkaSettings::with_bootstrap(bootstrap.clone());
    let consumer = settings
        .consumer("test", "dev-test", DefaultConsumerContext)
        .expect("consumer");
    // Assigned, not subscribed: no group rebalance to wait for.
    let mut assignment = rdkafka::TopicPartitionList::new();
    for p in 0..2 {
        assignment
            .add_partition_offset("herald.push.normal", p, rdkafka::Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&assignment).expect("assign");
    let mut keys = Vec::new();
    {
        let mut stream = consumer.stream();
        while let Ok(Some(Ok(msg))) = tokio::time::timeout(
            Duration::from_secs(if keys.len() < 3 { 30 } else { 3 }),
            stream.next(),
        )
        .await
        {
            let m: ChannelMessage = Codec::single_object()
                .decode(msg.payload().expect("payload"))
                .await
                .expect("decode");
            keys.push(m.idempotency_key);
        }
    }
    drop(consumer);
    keys.sort();
    assert_eq!(
        keys,
        vec!["order-0", "order-1", "order-2"],
        "each event once, duplicates suppressed"
    );

    // The delivery workers took them to the sandbox: three APNs pushes and
    // three emails, one per unique event.
    let sandbox = field(&lines, "sandbox")
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let body = http_get(&sandbox, "/sandbox/counts");
        if body.contains(r#""apns":{"accepted":3}"#) && body.contains(r#""smtp":{"accepted":3}"#) {
            break;
        }
        assert!(Instant::now() < deadline, "not delivered: {body}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // The in-process scaler watches the router's group: it has read the
    // group's committed offsets and serves its signal.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let scale = http_get(&admin, "/scale/herald-router");
        if scale.starts_with("HTTP/1.1 200") {
            assert!(scale.contains("\"desiredReplicas\":"), "{scale}");
            break;
        }
        assert!(Instant::now() < deadline, "no signal: {scale}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let metrics = http_get(&admin, "/metrics");
    assert!(
        metrics.contains("herald_scaler_partitions{group=\"herald-router\"} 3"),
        "{metrics}"
    );

    // Ctrl-C: drains and exits 0.
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let started = Instant::now();
    let exit = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("herald dev did not stop within 20s of Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    while let Ok(l) = rx.recv_timeout(Duration::from_secs(1)) {
        lines.push(l);
    }
    assert!(exit.success(), "exit {exit:?}: {lines:#?}");
    assert!(
        lines.iter().any(|l| l.starts_with("stopped    cleanly")),
        "{lines:#?}"
    );
}

fn topics_apply(bootstrap: &str, prefix: &str, partitions: &str, strict: bool) -> (i32, String) {
    let mut cmd = Command::new(HERALD);
    cmd.args(["topics", "apply"])
        .env("HERALD__KAFKA__BOOTSTRAP", bootstrap)
        .env("HERALD__TOPICS__PREFIX", prefix)
        .env("HERALD__TOPICS__PARTITIONS", partitions)
        .env("HERALD__TOPICS__CHANNEL_PARTITIONS", "1")
        .env("HERALD__TOPICS__REPLICATION_FACTOR", "1")
        // One environment for every stage: the workers' keys are not the CLI's.
        .env("HERALD__DELIVER__MAX_IN_FLIGHT", "4");
    if strict {
        cmd.arg("--strict");
    }
    let out = cmd.output().expect("run herald topics apply");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test]
async fn herald_topics_apply_is_idempotent_and_reports_drift() {
    let broker = TestBroker::start(BrokerKind::Durable);
    let prefix = broker.unique("cli");
    let topology = herald_kafka::Topology::new(herald_kafka::TopologySettings {
        prefix: prefix.clone(),
        ..Default::default()
    });
    for t in topology.topics() {
        broker.track(&t.name);
    }
    let total = topology.topics().len();

    // The defaults (3 replicas) on a one-broker cluster: refused, by name,
    // before anything is created.
    let out = Command::new(HERALD)
        .args(["topics", "apply"])
        .env("HERALD__KAFKA__BOOTSTRAP", broker.bootstrap())
        .env("HERALD__TOPICS__PREFIX", &prefix)
        .output()
        .expect("run herald topics apply");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("topics.replication_factor is 3 but the cluster has 1 broker"),
        "{err}"
    );

    let (code, out) = topics_apply(broker.bootstrap(), &prefix, "2", false);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("{total} created, 0 unchanged, 0 drifted")),
        "{out}"
    );

    let (code, out) = topics_apply(broker.bootstrap(), &prefix, "2", true);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("0 created, {total} unchanged, 0 drifted")),
        "{out}"
    );

    let (code, out) = topics_apply(broker.bootstrap(), &prefix, "5", true);
    assert_eq!(code, 2, "--strict fails on drift: {out}");
    assert!(
        out.contains(&format!(
            "drift      {prefix}.notifications: partitions is 2 (declared 5)"
        )),
        "{out}"
    );

    let out = Command::new(HERALD)
        .args(["topics", "describe"])
        .env("HERALD__KAFKA__BOOTSTRAP", broker.bootstrap())
        .env("HERALD__TOPICS__PREFIX", &prefix)
        .env("HERALD__TOPICS__PARTITIONS", "2")
        .env("HERALD__TOPICS__CHANNEL_PARTITIONS", "1")
        .env("HERALD__TOPICS__REPLICATION_FACTOR", "1")
        .output()
        .expect("describe");
    let text = String::from_utf8_lossy(&out.stdout);
    let state = text
        .lines()
        .find(|l| l.starts_with(&format!("{prefix}.dedup-state ")))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        state.contains("compact") && state.trim_end().ends_with("none"),
        "{state}"
    );

    // Read by a pipe that closes before the output comes (`| head -0`):
    // a quiet exit 0, no panic.
    let mut child = Command::new(HERALD)
        .args(["topics", "describe"])
        .env("HERALD__KAFKA__BOOTSTRAP", broker.bootstrap())
        .env("HERALD__TOPICS__PREFIX", &prefix)
        .env("HERALD__TOPICS__REPLICATION_FACTOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("describe");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("describe ends");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_configuration_is_reported_with_every_path_and_exit_78() {
    let out = Command::new(HERALD)
        .args(["topics", "describe"])
        .env("HERALD__KAFKA__LINGER", "soon")
        .env("HERALD__TOPICS__PARTITIONS", "many")
        .env("HERALD__KAFKA__BOOTSTRP", "typo:9092")
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    for path in ["kafka.linger", "topics.partitions", "kafka.bootstrp"] {
        assert!(err.contains(path), "{path} missing: {err}");
    }
}
