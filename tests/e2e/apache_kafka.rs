//! Herald on an Apache Kafka cluster when a broker dies: three combined
//! nodes (`scripts/kafka.sh start cluster`, replication factor 3,
//! `min.insync.replicas` 2), `herald-router` and a webhook `herald-deliver`
//! each its own process, events produced with `acks=all` at a steady rate.
//! A third of the way in, the node that leads the most of Herald's
//! partitions is SIGKILLed and a second router joins at once (a scale-out
//! during the failover: partitions move, and their state is restored while
//! its leaders are being elected); two thirds in the node is started
//! again. Verdict: every notification reached the provider, no stage
//! exited, and a notification sent twice is counted against the worker's
//! in-flight window (no stage crashed, so repeats can only come from a
//! rebalance). Before, a restore that timed out during the election made
//! the router exit.
//!
//! The same run with a rolling restart instead: each node in turn is
//! stopped with SIGTERM (a controlled shutdown, as an upgrade does), started
//! again, and the next one waits until every partition is back to three
//! in-sync replicas. Same verdict.
//!
//! Size: `HERALD_KAFKA_EVENTS` (default 1500, 4500 for the rolling restart,
//! which takes about 30 s) at `HERALD_KAFKA_RATE` events/s (default 150).
//! Bounded: gives up 120 s after the traffic.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use herald_codec::encode_single_object;
use herald_kafka::settings::ProducerKind;
use herald_model::ids::{DedupKey, NotificationId};
use herald_model::wire::{Content, WebhookContent};
use herald_model::{sample, Channel};
use herald_sandbox::credentials::Credentials;
use herald_sandbox::SandboxSettings;
use herald_testkit::measure::{env_or, now_ms};
use herald_testkit::{BrokerKind, TestBroker};
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;

use crate::stages::{common_config, statuses, write, Stage};

const PARTITIONS: i32 = 6;
const MAX_IN_FLIGHT: usize = 8;

/// The node that leads the most partitions of topics under `prefix`.
fn busiest_leader(broker: &TestBroker, prefix: &str) -> (i32, BTreeMap<i32, usize>) {
    use rdkafka::consumer::{Consumer, DefaultConsumerContext, StreamConsumer};
    let consumer: StreamConsumer = broker
        .settings()
        .consumer("leaders", &broker.group("leaders"), DefaultConsumerContext)
        .unwrap();
    let md = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .unwrap();
    let mut led: BTreeMap<i32, usize> = BTreeMap::new();
    for t in md.topics().iter().filter(|t| t.name().starts_with(prefix)) {
        for p in t.partitions() {
            *led.entry(p.leader()).or_default() += 1;
        }
    }
    let node = led
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(id, _)| *id)
        .unwrap();
    (node, led)
}

/// Waits until every partition of topics under `prefix` has all its
/// replicas in sync again (up to `limit`); false if it did not happen.
async fn wait_in_sync(broker: &TestBroker, prefix: &str, limit: Duration) -> bool {
    use rdkafka::consumer::{Consumer, DefaultConsumerContext, StreamConsumer};
    let consumer: StreamConsumer = broker
        .settings()
        .consumer("isr", &broker.group("isr"), DefaultConsumerContext)
        .unwrap();
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        // The metadata call blocks: off the async runtime.
        let metadata =
            tokio::task::block_in_place(|| consumer.fetch_metadata(None, Duration::from_secs(10)));
        let lagging = metadata
            .map(|md| {
                md.topics()
                    .iter()
                    .filter(|t| t.name().starts_with(prefix))
                    .flat_map(|t| t.partitions())
                    .filter(|p| p.isr().len() < p.replicas().len())
                    .count()
            })
            .unwrap_or(usize::MAX);
        if lagging == 0 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    false
}

/// What happens to the cluster while the traffic flows.
#[derive(Debug, Clone, Copy)]
enum Disruption {
    /// SIGKILL of the busiest leader, a second router at once, the node
    /// back two thirds in.
    DeadLeaderAndScaleOut,
    /// Every node stopped and started in turn, each after the previous one
    /// is back in sync.
    RollingRestart,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_leader_loses_nothing_and_stops_no_stage() {
    survives(Disruption::DeadLeaderAndScaleOut).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_every_broker_loses_nothing_and_stops_no_stage() {
    survives(Disruption::RollingRestart).await;
}

/// The disruptions take turns: two at once on the one cluster (a node
/// killed while another is stopped) would leave it without its KRaft
/// quorum and judge neither.
static CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn survives(disruption: Disruption) {
    let _turn = CLUSTER.lock().await;
    // A rolling restart takes about 30 s here: the traffic lasts as long.
    let default_count = match disruption {
        Disruption::DeadLeaderAndScaleOut => 1500,
        Disruption::RollingRestart => 4500,
    };
    let count: u64 = env_or("HERALD_KAFKA_EVENTS", default_count);
    let rate: f64 = env_or("HERALD_KAFKA_RATE", 150.0);
    let traffic = Duration::from_secs_f64(count as f64 / rate);
    let dir = tempfile::tempdir().unwrap();

    let broker = TestBroker::start(BrokerKind::ApacheKafka3);
    let topology = broker
        .herald_topology("kafka3", PARTITIONS, PARTITIONS)
        .await;
    let prefix = topology.settings().prefix.clone();
    let keys = Credentials::generate().unwrap();
    let sandbox = herald_sandbox::serve(keys.sandbox(SandboxSettings {
        max_records: 1_000_000,
        ..SandboxSettings::loopback()
    }))
    .await
    .unwrap();
    let url = format!("http://{}/hooks/kafka", sandbox.bound.http);

    let common = common_config(&broker, &topology);
    let router_toml = write(
        dir.path(),
        "router.toml",
        &format!(
            "{common}[router]\ngroup = \"{}\"\n",
            broker.group("k3-router")
        ),
    );
    let webhook_toml = write(
        dir.path(),
        "webhook.toml",
        &format!(
            "{common}[deliver]\ngroup = \"{}\"\nmax_in_flight = {MAX_IN_FLIGHT}\n\
             [deliver.retry]\nbase_delay = \"200ms\"\nmax_delay = \"2s\"\nmax_attempts = 30\n{}",
            broker.group("k3-webhook"),
            keys.worker_toml("webhook", &sandbox.bound)
        ),
    );
    let stage = |name, bin: &str, args: &[&str]| Stage::of(name, dir.path(), bin, args);
    let mut router = stage("router", "herald-router", &["--config", &router_toml]);
    let mut webhook = stage(
        "webhook",
        "herald-deliver",
        &["--channel", "webhook", "--config", &webhook_toml],
    );

    // The traffic, from a task of its own, and the node's death beside it.
    let producer = broker
        .settings()
        .producer("k3-test", &ProducerKind::Idempotent)
        .unwrap();
    let input = topology.notifications();
    let hook = url.clone();
    let traffic_task = tokio::spawn(async move {
        let started = Instant::now();
        let mut acks = futures::stream::FuturesUnordered::new();
        for n in 0..count {
            tokio::time::sleep_until((started + Duration::from_secs_f64(n as f64 / rate)).into())
                .await;
            let mut e = sample::notification(n, now_ms());
            e.idempotency_key = format!("k3-{n}");
            e.user_id = format!("user-{}", n % 40);
            e.channels = vec![Channel::Webhook];
            e.expires_at = None;
            e.recipients.webhook_url = Some(hook.clone());
            e.content = Some(Content {
                webhook: Some(WebhookContent {
                    event_type: "order.shipped".into(),
                    payload_json: format!("{{\"order\":{n}}}"),
                }),
                ..Content::default()
            });
            let bytes = encode_single_object(&e).unwrap();
            let (p, t, k) = (producer.clone(), input.clone(), e.user_id.clone());
            acks.push(async move {
                p.send(
                    FutureRecord::to(&t).key(&k).payload(&bytes),
                    Timeout::After(Duration::from_secs(120)),
                )
                .await
                .map(|_| ())
                .map_err(|(e, _)| e.to_string())
            });
            while let Some(Some(r)) = futures::FutureExt::now_or_never(acks.next()) {
                r.unwrap();
            }
        }
        while let Some(r) = acks.next().await {
            r.unwrap();
        }
    });
    let started = Instant::now();
    let mut router2 = None;
    match disruption {
        Disruption::DeadLeaderAndScaleOut => {
            tokio::time::sleep_until((started + traffic / 3).into()).await;
            // Metadata and the script block: off the async runtime.
            let (node, led) = tokio::task::block_in_place(|| busiest_leader(&broker, &prefix));
            println!("kafka3: partitions led per node {led:?}; killing node {node}");
            tokio::task::block_in_place(|| broker.kafka_node(node, "kill"));
            router2 = Some(stage(
                "router2",
                "herald-router",
                &["--config", &router_toml],
            ));
            tokio::time::sleep_until((started + traffic * 2 / 3).into()).await;
            tokio::task::block_in_place(|| broker.kafka_node(node, "start"));
        }
        Disruption::RollingRestart => {
            tokio::time::sleep_until((started + traffic / 5).into()).await;
            for node in 1..=3 {
                let stopping = Instant::now();
                // The script waits for the node to exit: off the runtime.
                tokio::task::block_in_place(|| {
                    broker.kafka_node(node, "stop");
                    broker.kafka_node(node, "start");
                });
                let in_sync = wait_in_sync(&broker, &prefix, Duration::from_secs(90)).await;
                println!(
                    "kafka3: node {node} restarted, all in sync again after {:?}",
                    stopping.elapsed()
                );
                assert!(in_sync, "node {node}'s replicas did not catch up in 90 s");
            }
        }
    }
    tokio::time::timeout(traffic + Duration::from_secs(120), traffic_task)
        .await
        .expect("the producer did not finish")
        .unwrap();

    // Every notification at the provider.
    let expected: Vec<String> = (0..count)
        .map(|n| {
            let key = DedupKey::new("acme", "receipt", &format!("k3-{n}"));
            NotificationId::new(key, Channel::Webhook, &url).to_string()
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    let sends = loop {
        let mut sends: BTreeMap<String, usize> = BTreeMap::new();
        for r in sandbox.sandbox.records(Some("webhook"), None) {
            *sends
                .entry(r.notification_id.unwrap_or_default())
                .or_default() += 1;
        }
        if expected.iter().all(|id| sends.contains_key(id)) || Instant::now() > deadline {
            break sends;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let logs = format!(
        "\n--- router ---\n{}\n--- router2 ---\n{}\n--- webhook ---\n{}",
        router.tail(),
        router2.as_ref().map(Stage::tail).unwrap_or_default(),
        webhook.tail()
    );
    let missing: Vec<&String> = expected
        .iter()
        .filter(|id| !sends.contains_key(*id))
        .collect();
    let extra: usize = sends.values().map(|n| n - 1).sum();
    println!(
        "kafka3 ({disruption:?}): {count} events, {} sent, {} missing, {extra} extra sends",
        sends.len(),
        missing.len()
    );
    if !missing.is_empty() {
        // What the stages said about each.
        let said: Vec<String> = statuses(&broker, &topology, PARTITIONS)
            .await
            .into_iter()
            .filter(|s| {
                s.notification_id
                    .as_ref()
                    .is_some_and(|id| missing.contains(&id))
            })
            .map(|s| {
                format!(
                    "{:?} {:?} {:?} {:?}",
                    s.notification_id, s.stage, s.status, s.reason
                )
            })
            .collect();
        panic!(
            "lost {}: {missing:?}; their statuses {said:?}{logs}",
            missing.len()
        );
    }
    assert!(router.running(), "the router exited{logs}");
    if let Some(r) = router2.as_mut() {
        assert!(r.running(), "the second router exited{logs}");
    }
    assert!(webhook.running(), "the worker exited{logs}");
    let window = PARTITIONS as usize * 7 * MAX_IN_FLIGHT;
    assert!(extra <= window, "{extra} extra sends, bound {window}{logs}");
}
