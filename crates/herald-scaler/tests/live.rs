//! The scaler against live consumer groups: its metrics and its
//! `/scale/{group}` answer follow the load a test drives.

// Tests fail loudly on unexpected errors: that is their job.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_kafka::settings::ProducerKind;
use herald_kafka::KafkaSettings;
use herald_scaler::{GroupSettings, ScalerConfig, ScalerSettings, Signals};
use herald_telemetry::shutdown::Shutdown;
use herald_telemetry::{serve_routes, AdminState};
use herald_testkit::{BrokerKind, TestBroker};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureRecord, Producer};
use rdkafka::util::Timeout;

const WAIT: Duration = Duration::from_secs(30);

/// A scaler running in this process, observing `group` on `topic`.
struct Scaler {
    addr: SocketAddr,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    http: reqwest::Client,
}

impl Scaler {
    async fn start(settings: KafkaSettings, group: &str, topic: &str) -> Self {
        let shutdown = Shutdown::new();
        let admin = AdminState::new("scaler");
        let signals = Signals::default();
        let app = admin
            .router()
            .merge(herald_scaler::routes(signals.clone(), vec![group.into()]));
        let (addr, _server) = serve_routes("127.0.0.1:0".parse().unwrap(), app, shutdown.clone())
            .await
            .unwrap();
        let config = ScalerConfig {
            kafka: settings,
            scaler: ScalerSettings {
                poll_interval: Duration::from_millis(300),
                // T = 2 s x 0.5 = 1 s: a backlog of 400 at 50/s per
                // replica needs 8 replicas, capped at the 4 partitions.
                latency_objective: Duration::from_secs(2),
                groups: vec![GroupSettings {
                    group: group.into(),
                    topics: vec![topic.into()],
                    initial_service_rate: Some(50.0),
                    // The stage's histogram, scraped over HTTP: this
                    // process's own /metrics stands in for the stage's.
                    metrics_urls: vec![format!("http://{addr}/metrics")],
                    latency_histogram: Some("herald_router_latency_seconds".into()),
                    ..GroupSettings::default()
                }],
                ..ScalerSettings::default()
            },
            ..ScalerConfig::default()
        };
        let task = tokio::spawn(herald_scaler::run(config, signals, shutdown.clone(), admin));
        Self {
            addr,
            shutdown,
            task,
            http: reqwest::Client::new(),
        }
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let resp = self
            .http
            .get(format!("http://{}{path}", self.addr))
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    /// Values of `name` whose labels include `labels`, from `/metrics`.
    async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        let (_, text) = self.get("/metrics").await;
        text.lines()
            .filter_map(|line| {
                let rest = line.strip_prefix(name)?.strip_prefix('{')?;
                let (label_text, value) = rest.split_once("} ")?;
                let have: BTreeMap<&str, &str> = label_text
                    .split(',')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k, v.trim_matches('"')))
                    .collect();
                labels
                    .iter()
                    .all(|(k, v)| have.get(k) == Some(v))
                    .then(|| value.parse().unwrap())
            })
            .collect()
    }

    /// Waits until `check` holds for the metric's values; panics with them
    /// after [`WAIT`].
    async fn wait_for(
        &self,
        what: &str,
        name: &str,
        labels: &[(&str, &str)],
        check: impl Fn(&[f64]) -> bool,
    ) -> Vec<f64> {
        let deadline = Instant::now() + WAIT;
        loop {
            let values = self.metric(name, labels).await;
            if !values.is_empty() && check(&values) {
                return values;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {name}{labels:?} is {values:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn stop(self) {
        self.shutdown.trigger();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("scaler stops")
            .unwrap()
            .unwrap();
    }
}

async fn produce(broker: &TestBroker, topic: &str, partitions: i32, per_partition: u32) {
    let producer = broker
        .settings()
        .producer("test", &ProducerKind::Idempotent)
        .unwrap();
    for p in 0..partitions {
        for i in 0..per_partition {
            let payload = format!("record-{i}");
            producer
                .send(
                    FutureRecord::<(), _>::to(topic)
                        .partition(p)
                        .payload(&payload),
                    Timeout::After(WAIT),
                )
                .await
                .unwrap();
        }
    }
}

/// Phases of the test's consumer.
const CONSUME_AND_COMMIT: u8 = 0;
const CONSUME_WITHOUT_COMMITTING: u8 = 1;

/// A member of `group` in its own thread: reads everything, commits while
/// the phase says so, stays in the group until `stop`.
fn spawn_consumer(
    settings: &KafkaSettings,
    group: &str,
    topic: &str,
    phase: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    let mut config = settings.consumer_config("test", group).unwrap();
    config
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "true");
    let consumer: BaseConsumer = config.create().unwrap();
    consumer.subscribe(&[topic]).unwrap();
    std::thread::spawn(move || {
        let mut read = 0;
        while !stop.load(Ordering::SeqCst) {
            if let Some(Ok(_)) = consumer.poll(Duration::from_millis(100)) {
                read += 1;
            }
            if phase.load(Ordering::SeqCst) == CONSUME_AND_COMMIT {
                // Nothing stored since the last commit is not an error.
                let _ = consumer.commit_consumer_state(CommitMode::Sync);
            }
        }
        read
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaler_metrics_follow_a_live_group() {
    let broker = TestBroker::start(BrokerKind::Fast);
    let topic = broker.topic("scaled", 4).await;
    let group = broker.group("scaled");
    produce(&broker, &topic, 4, 100).await;
    let scaler = Scaler::start(broker.settings(), &group, &topic).await;
    let g = [("group", group.as_str())];

    // Nobody has read anything: all 400 records wait, their age is known,
    // and the signal asks for every partition's worth of replicas.
    scaler
        .wait_for("backlog", "herald_scaler_lag", &g, |v| v == [400.0])
        .await;
    scaler
        .wait_for("age", "herald_scaler_time_lag_seconds", &g, |v| v[0] > 0.0)
        .await;
    scaler
        .wait_for("N*", "herald_scaler_desired_replicas", &g, |v| v == [4.0])
        .await;
    assert_eq!(scaler.metric("herald_scaler_replicas", &g).await, vec![0.0]);
    assert_eq!(
        scaler.metric("herald_scaler_partitions", &g).await,
        vec![4.0]
    );
    let (status, body) = scaler.get(&format!("/scale/{group}")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"desiredReplicas\":4"), "{body}");
    assert_eq!(scaler.get("/scale/not-watched").await.0, 404);
    assert_eq!(scaler.get("/readyz").await.0, 200);

    // A member joins and drains the backlog: lag and age fall to zero, the
    // member is counted, every partition is healthy.
    let phase = Arc::new(AtomicU8::new(CONSUME_AND_COMMIT));
    let stop = Arc::new(AtomicBool::new(false));
    let member = spawn_consumer(
        &broker.settings(),
        &group,
        &topic,
        phase.clone(),
        stop.clone(),
    );
    scaler
        .wait_for("drained", "herald_scaler_lag", &g, |v| v == [0.0])
        .await;
    scaler
        .wait_for("member", "herald_scaler_replicas", &g, |v| v == [1.0])
        .await;
    assert_eq!(
        scaler.metric("herald_scaler_time_lag_seconds", &g).await,
        vec![0.0]
    );
    let ok = [("group", group.as_str()), ("status", "OK")];
    scaler
        .wait_for("healthy", "herald_scaler_partition_health", &ok, |v| {
            v == [1.0; 4]
        })
        .await;
    // With nothing waiting, one replica is enough.
    scaler
        .wait_for("idle N*", "herald_scaler_desired_replicas", &g, |v| {
            v == [1.0]
        })
        .await;

    // The stage's latency histogram is read from its /metrics: 100
    // fan-outs at 0.3 s show up as the percentiles of the last interval.
    for _ in 0..100 {
        herald_telemetry::Metrics::global()
            .router_latency_seconds
            .with_label_values(&["normal"])
            .observe(0.3);
    }
    let p50 = [("group", group.as_str()), ("quantile", "0.5")];
    scaler
        .wait_for(
            "stage p50",
            "herald_scaler_stage_latency_seconds",
            &p50,
            |v| v[0] > 0.25 && v[0] <= 0.5,
        )
        .await;

    // The member stays but stops committing while records arrive: lag
    // grows, arrivals are measured, and the partitions are STALLed.
    phase.store(CONSUME_WITHOUT_COMMITTING, Ordering::SeqCst);
    produce(&broker, &topic, 4, 50).await;
    scaler
        .wait_for("new backlog", "herald_scaler_lag", &g, |v| v == [200.0])
        .await;
    let stall = [("group", group.as_str()), ("status", "STALL")];
    scaler
        .wait_for("stalled", "herald_scaler_partition_health", &stall, |v| {
            v.iter().sum::<f64>() == 4.0
        })
        .await;
    let partition0 = [
        ("group", group.as_str()),
        ("topic", topic.as_str()),
        ("partition", "0"),
    ];
    assert_eq!(
        scaler
            .metric("herald_scaler_partition_lag", &partition0)
            .await,
        vec![50.0]
    );
    let arrivals = scaler.metric("herald_scaler_arrival_rate", &g).await;
    assert_eq!(arrivals.len(), 1);
    let polls = [("group", group.as_str()), ("outcome", "ok")];
    assert!(scaler.metric("herald_scaler_polls_total", &polls).await[0] >= 3.0);

    stop.store(true, Ordering::SeqCst);
    assert!(member.join().unwrap() >= 400);
    scaler.stop().await;
}

/// A group reading a transactional topic on the mock cluster, which
/// cannot describe groups: lag is still observed, the member count is
/// left out rather than reported wrong. (The mock writes no commit markers
/// into the log, so the marker case itself is a unit test of the peek.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transactional_group_on_the_mock_cluster() {
    let broker = TestBroker::start(BrokerKind::Transactional);
    let topic = broker.topic("marked", 1).await;
    let group = broker.group("marked");
    let producer = broker
        .settings()
        .producer("test", &ProducerKind::Transactional(broker.unique("txn")))
        .unwrap();
    producer.init_transactions(WAIT).unwrap();
    producer.begin_transaction().unwrap();
    for i in 0..10 {
        let payload = format!("record-{i}");
        producer
            .send(
                FutureRecord::<(), _>::to(&topic)
                    .partition(0)
                    .payload(&payload),
                Timeout::After(WAIT),
            )
            .await
            .unwrap();
    }
    producer.commit_transaction(WAIT).unwrap();
    let probe: BaseConsumer = broker
        .settings()
        .consumer_config("test", &broker.group("probe"))
        .unwrap()
        .create()
        .unwrap();
    assert_eq!(
        probe.fetch_watermarks(&topic, 0, WAIT).unwrap(),
        (0, 10),
        "the mock cluster keeps no commit marker in the log"
    );

    let phase = Arc::new(AtomicU8::new(CONSUME_AND_COMMIT));
    let stop = Arc::new(AtomicBool::new(false));
    let member = spawn_consumer(&broker.settings(), &group, &topic, phase, stop.clone());
    let scaler = Scaler::start(broker.settings(), &group, &topic).await;
    let g = [("group", group.as_str())];
    scaler
        .wait_for("read everything", "herald_scaler_lag", &g, |v| v == [0.0])
        .await;
    // The mock cluster cannot describe groups: the member count is not
    // exported rather than wrong.
    assert!(scaler.metric("herald_scaler_replicas", &g).await.is_empty());
    stop.store(true, Ordering::SeqCst);
    assert_eq!(member.join().unwrap(), 10);
    // Still none after the member left.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(scaler.metric("herald_scaler_lag", &g).await, vec![0.0]);
    scaler.stop().await;
}

/// The binary refuses a config it cannot use, naming what is wrong, with
/// the configuration exit code.
#[test]
fn the_binary_names_bad_settings_and_exits_78() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald-scaler"))
        .env("HERALD__SCALER__DRAIN_SHARE", "2.0")
        .env("HERALD__ADMIN__LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(
        err.contains("scaler.drain_share must be in (0, 1], not 2"),
        "{err}"
    );
    assert!(err.contains("[[scaler.groups]]"), "{err}");
}
