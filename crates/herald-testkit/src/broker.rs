//! Brokers for tests, by kind:
//!
//! - `Durable`: nisshi with sqlite storage (persists, compacts).
//! - `Fast`: nisshi with memory storage.
//! - `Transactional`: librdkafka's mock cluster, in-process (transactions,
//!   fault injection), a fresh one per test.
//!
//! `make test` starts the two nisshi brokers once and exports
//! `HERALD_TEST_DURABLE_BOOTSTRAP` / `HERALD_TEST_FAST_BOOTSTRAP`; without
//! them the harness starts its own nisshi (from `HERALD_NISSHI_BIN` or the
//! cache that `scripts/ensure-nisshi.sh` fills), which exits with the test
//! process. When `HERALD_TEST_KAFKA` names a real cluster, every kind runs
//! there instead, transactional tests included.

use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use herald_kafka::{EmbeddedCluster, KafkaSettings};
use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::error::RDKafkaErrorCode;

/// How long [`TestBroker::read_all`] waits for the first record of a topic
/// that has records.
pub const FIRST_RECORD_WAIT: Duration = Duration::from_secs(15);

/// What a test needs from its broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    /// Persistent storage and compaction (nisshi + sqlite).
    Durable,
    /// Volatile and quick (nisshi + memory).
    Fast,
    /// Kafka transactions and fault injection (mock cluster).
    Transactional,
    /// Apache Kafka, one combined broker/controller (`scripts/kafka.sh
    /// start single`, which `make test` runs).
    ApacheKafka,
    /// Apache Kafka, three combined nodes with replication factor 3 and
    /// `min.insync.replicas` 2 (`scripts/kafka.sh start cluster`); its nodes
    /// can be stopped and started ([`TestBroker::kafka_node`]).
    ApacheKafka3,
}

/// A broker handed to one test, with unique names and teardown.
pub struct TestBroker {
    kind: BrokerKind,
    bootstrap: String,
    mock: Option<EmbeddedCluster>,
    real_cluster: bool,
    created: Mutex<Vec<String>>,
}

impl TestBroker {
    /// A broker of `kind`. Panics with a clear message when none can be had
    /// (tests only).
    pub fn start(kind: BrokerKind) -> Self {
        if let Ok(bootstrap) = std::env::var("HERALD_TEST_KAFKA") {
            if !bootstrap.is_empty() {
                return Self {
                    kind,
                    bootstrap,
                    mock: None,
                    real_cluster: true,
                    created: Mutex::new(Vec::new()),
                };
            }
        }
        let (bootstrap, mock) = match kind {
            BrokerKind::Transactional => {
                let cluster =
                    EmbeddedCluster::start(3).unwrap_or_else(|e| panic!("mock cluster: {e}"));
                (cluster.bootstrap(), Some(cluster))
            }
            BrokerKind::Durable => (nisshi("HERALD_TEST_DURABLE_BOOTSTRAP", true), None),
            BrokerKind::Fast => (nisshi("HERALD_TEST_FAST_BOOTSTRAP", false), None),
            BrokerKind::ApacheKafka => (apache_kafka("HERALD_TEST_KAFKA_BOOTSTRAP"), None),
            BrokerKind::ApacheKafka3 => (apache_kafka("HERALD_TEST_KAFKA3_BOOTSTRAP"), None),
        };
        Self {
            kind,
            bootstrap,
            mock,
            real_cluster: matches!(kind, BrokerKind::ApacheKafka | BrokerKind::ApacheKafka3),
            created: Mutex::new(Vec::new()),
        }
    }

    /// The kind asked for.
    pub fn kind(&self) -> BrokerKind {
        self.kind
    }

    /// Whether this is a real Kafka cluster (`HERALD_TEST_KAFKA`).
    pub fn is_real_kafka(&self) -> bool {
        self.real_cluster
    }

    /// The bootstrap address.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// Client settings for this broker. Group timeouts are short so a test
    /// that replaces a member does not wait out a production session timeout.
    pub fn settings(&self) -> KafkaSettings {
        let mut s = KafkaSettings::with_bootstrap(self.bootstrap.clone());
        s.consumer_overrides
            .insert("session.timeout.ms".into(), "6000".into());
        s.consumer_overrides
            .insert("heartbeat.interval.ms".into(), "500".into());
        s
    }

    /// The mock cluster, for fault injection (transactional kind only).
    pub fn mock(&self) -> Option<&EmbeddedCluster> {
        self.mock.as_ref()
    }

    /// A name no other test uses.
    pub fn unique(&self, base: &str) -> String {
        let id = uuid::Uuid::new_v4().simple().to_string();
        format!("t-{base}-{}", &id[..12])
    }

    /// A unique consumer group name.
    pub fn group(&self, base: &str) -> String {
        self.unique(&format!("{base}-group"))
    }

    /// Creates a unique topic and returns its name; deleted at teardown.
    pub async fn topic(&self, base: &str, partitions: i32) -> String {
        self.topic_with(base, partitions, &[]).await
    }

    /// Creates a unique topic with configs (ignored by the mock cluster,
    /// which has no CreateTopics API).
    pub async fn topic_with(
        &self,
        base: &str,
        partitions: i32,
        configs: &[(&str, &str)],
    ) -> String {
        let name = self.unique(base);
        self.create_topic(&name, partitions, configs).await;
        name
    }

    /// Creates a topic with an exact name.
    pub async fn create_topic(&self, name: &str, partitions: i32, configs: &[(&str, &str)]) {
        if let Some(mock) = &self.mock {
            mock.create_topic(name, partitions, 1)
                .unwrap_or_else(|e| panic!("create {name}: {e}"));
        } else {
            let admin = self
                .settings()
                .admin()
                .unwrap_or_else(|e| panic!("admin: {e}"));
            let mut t = NewTopic::new(
                name,
                partitions,
                TopicReplication::Fixed(if self.real_cluster { -1 } else { 1 }),
            );
            for (k, v) in configs {
                t = t.set(k, v);
            }
            let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
            let res = admin
                .create_topics([&t], &opts)
                .await
                .unwrap_or_else(|e| panic!("create {name}: {e}"));
            for r in res {
                match r {
                    Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((t, code)) => panic!("create {t}: {code}"),
                }
            }
        }
        self.created
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(name.to_string());
    }

    /// Every record of `topic` (all partitions, from the beginning), read
    /// until no record arrives for `idle` (the first one is waited for up to
    /// [`FIRST_RECORD_WAIT`] when the topic already has records).
    pub async fn read_all(
        &self,
        topic: &str,
        partitions: i32,
        idle: Duration,
    ) -> Vec<rdkafka::message::OwnedMessage> {
        use futures::StreamExt;
        use rdkafka::consumer::{Consumer, DefaultConsumerContext, StreamConsumer};
        use rdkafka::message::Message;
        let consumer: std::sync::Arc<StreamConsumer<DefaultConsumerContext>> = std::sync::Arc::new(
            self.settings()
                .consumer("test-reader", &self.group("reader"), DefaultConsumerContext)
                .unwrap_or_else(|e| panic!("reader: {e}")),
        );
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        // When the topic has records, the first is waited for as long as a
        // fresh consumer may take to connect and fetch (over a second on a
        // busy machine: a 1 s wait from the start once read nothing for
        // minutes while the records were there); otherwise `idle`, for
        // records still on their way. Then `idle` between records.
        // The watermark calls block: off the runtime, whose thread may be
        // running the stage under test.
        let has_records = self.record_count(topic, partitions).await != 0;
        let first_wait = if has_records {
            idle.max(FIRST_RECORD_WAIT)
        } else {
            idle
        };
        consumer
            .assign(&tpl)
            .unwrap_or_else(|e| panic!("assign {topic}: {e}"));
        let mut out = Vec::new();
        {
            let mut stream = consumer.stream();
            loop {
                let wait = if out.is_empty() { first_wait } else { idle };
                match tokio::time::timeout(wait, stream.next()).await {
                    Ok(Some(Ok(m))) => out.push(m.detach()),
                    _ => break,
                }
            }
        }
        drop(consumer);
        out.sort_by_key(|m| (m.partition(), m.offset()));
        out
    }

    /// Joins consumer group `group` for `topic` until this member has an
    /// assignment, then leaves: two rebalances for the group's other
    /// members (with the eager protocol, each revokes and assigns again
    /// every partition they hold).
    pub async fn join_and_leave(&self, group: &str, topic: &str) {
        use futures::StreamExt;
        use rdkafka::consumer::{Consumer, DefaultConsumerContext, StreamConsumer};
        let member: StreamConsumer<DefaultConsumerContext> = self
            .settings()
            .consumer("test-member", group, DefaultConsumerContext)
            .unwrap_or_else(|e| panic!("member: {e}"));
        member
            .subscribe(&[topic])
            .unwrap_or_else(|e| panic!("subscribe {topic}: {e}"));
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut stream = member.stream();
        while member.assignment().map_or(0, |a| a.count()) == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the member never joined {group}"
            );
            let _ = tokio::time::timeout(Duration::from_millis(200), stream.next()).await;
        }
    }

    /// How many records `topic` holds (high minus low watermark, summed
    /// over its partitions); -1 when a partition's watermarks could not be
    /// read. The watermark calls block, so they run off the runtime, whose
    /// thread may be running the stage under test.
    pub async fn record_count(&self, topic: &str, partitions: i32) -> i64 {
        use rdkafka::consumer::{Consumer, DefaultConsumerContext, StreamConsumer};
        let consumer: StreamConsumer<DefaultConsumerContext> = self
            .settings()
            .consumer(
                "test-counter",
                &self.group("counter"),
                DefaultConsumerContext,
            )
            .unwrap_or_else(|e| panic!("counter: {e}"));
        let topic = topic.to_string();
        tokio::task::spawn_blocking(move || {
            (0..partitions)
                .map(|p| consumer.fetch_watermarks(&topic, p, Duration::from_secs(10)))
                .try_fold(0, |sum, w| w.map(|(low, high)| sum + high - low))
                .unwrap_or(-1)
        })
        .await
        .unwrap_or(-1)
    }

    /// Creates every Herald topic under a unique prefix (single replica;
    /// on the three-node cluster replication factor 3 and
    /// `min.insync.replicas` 2), tracked for teardown, and returns the
    /// topology.
    pub async fn herald_topology(
        &self,
        base: &str,
        partitions: i32,
        channel_partitions: i32,
    ) -> herald_kafka::Topology {
        let (replication_factor, min_insync_replicas) = match self.kind {
            BrokerKind::ApacheKafka3 if self.real_cluster => (3, 2),
            _ => (1, 1),
        };
        let topology = herald_kafka::Topology::new(herald_kafka::TopologySettings {
            prefix: self.unique(base),
            partitions,
            channel_partitions,
            replication_factor,
            min_insync_replicas,
        });
        for t in topology.topics() {
            self.track(&t.name);
        }
        if let Some(mock) = &self.mock {
            // The mock cluster has no CreateTopics: create them directly.
            mock.create_topology(&topology, 1)
                .unwrap_or_else(|e| panic!("mock topics: {e}"));
            return topology;
        }
        let admin = self
            .settings()
            .admin()
            .unwrap_or_else(|e| panic!("admin: {e}"));
        herald_kafka::topology::apply(&admin, &topology, Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("topics apply: {e}"));
        topology
    }

    /// Stops (`"stop"`: SIGTERM, a controlled shutdown), kills (`"kill"`:
    /// SIGKILL) or starts (`"start"`) node `id` (1 to 3) of the Apache
    /// Kafka cluster, by its pid, through `scripts/kafka.sh`.
    pub fn kafka_node(&self, id: i32, action: &str) {
        let set = match self.kind {
            BrokerKind::ApacheKafka => "single",
            BrokerKind::ApacheKafka3 => "cluster",
            other => panic!("kafka_node: the {other:?} broker is not Apache Kafka"),
        };
        let script = std::env::var("HERALD_KAFKA_SCRIPT")
            .unwrap_or_else(|_| panic!("HERALD_KAFKA_SCRIPT is not set: run `make test`"));
        let status = Command::new(&script)
            .args(["node", set, &id.to_string(), action])
            .status()
            .unwrap_or_else(|e| panic!("{script}: {e}"));
        assert!(
            status.success(),
            "{script} node {set} {id} {action}: {status}"
        );
    }

    /// Records a topic created by the code under test, for teardown.
    pub fn track(&self, name: &str) {
        self.created
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(name.to_string());
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if self.mock.is_some() {
            return; // the cluster goes away with its handle
        }
        let topics = std::mem::take(&mut *self.created.lock().unwrap_or_else(|p| p.into_inner()));
        if topics.is_empty() {
            return;
        }
        let Ok(admin) = self.settings().admin() else {
            return;
        };
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(5)));
        // rdkafka's futures are driven by its own threads: block_on is safe here.
        let _ = futures::executor::block_on(admin.delete_topics(&names, &opts));
    }
}

/// The bootstrap of the Apache Kafka that `make test` started
/// (`scripts/kafka.sh`), from `var`.
fn apache_kafka(var: &str) -> String {
    match std::env::var(var) {
        Ok(addr) if !addr.is_empty() => addr,
        _ => panic!(
            "{var} is not set: run `make test`, which starts Apache Kafka \
             (scripts/kafka.sh start single|cluster)"
        ),
    }
}

/// The address of a nisshi broker: from `var` when `make test` started one,
/// else one this process starts (once) and that exits with it.
fn nisshi(var: &str, durable: bool) -> String {
    if let Ok(addr) = std::env::var(var) {
        if !addr.is_empty() {
            return addr;
        }
    }
    static DURABLE: OnceLock<String> = OnceLock::new();
    static FAST: OnceLock<String> = OnceLock::new();
    let cell = if durable { &DURABLE } else { &FAST };
    cell.get_or_init(|| spawn_nisshi(durable)).clone()
}

fn nisshi_binary() -> String {
    if let Ok(bin) = std::env::var("HERALD_NISSHI_BIN") {
        return bin;
    }
    let cache = std::env::var("HERALD_CACHE").unwrap_or_else(|_| {
        let home = std::env::var("XDG_CACHE_HOME").unwrap_or_else(|_| {
            format!(
                "{}/.cache",
                std::env::var("HOME").unwrap_or_else(|_| "/root".into())
            )
        });
        format!("{home}/herald")
    });
    format!("{cache}/nisshi-0.8.1/bin/nisshi")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// Starts nisshi on `port` with its storage in `dir`, behind a shell wrapper
/// that ends the broker (by its pid, written to `dir/nisshi.pid`) once this
/// test process is gone. Returns the wrapper once the broker listens.
fn launch_nisshi(port: u16, dir: &std::path::Path, durable: bool) -> std::process::Child {
    let bin = nisshi_binary();
    assert!(
        std::path::Path::new(&bin).exists(),
        "no nisshi broker at {bin}: run scripts/ensure-nisshi.sh, or use `make test`, which starts the brokers"
    );
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let engine = if durable {
        "sqlite://herald.db?maintenance_interval=10s"
    } else {
        "memory://herald/"
    };
    let script = format!(
        "{bin} broker --listener-url tcp://127.0.0.1:{port} --advertised-listener-url tcp://127.0.0.1:{port} \
         --storage-engine '{engine}' --group-initial-rebalance-delay 100ms --silent & b=$!; echo $b > nisshi.pid; \
         while kill -0 {parent} 2>/dev/null && kill -0 $b 2>/dev/null; do sleep 1; done; kill $b 2>/dev/null",
        parent = std::process::id()
    );
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start nisshi: {e}"));
    let addr = format!("127.0.0.1:{port}");
    for _ in 0..200 {
        if std::net::TcpStream::connect(&addr).is_ok() {
            return child;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if let Ok(pid) = std::fs::read_to_string(dir.join("nisshi.pid")) {
        let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("nisshi did not listen on {addr}");
}

fn spawn_nisshi(durable: bool) -> String {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("herald-nisshi-{}-{port}", std::process::id()));
    let child = launch_nisshi(port, &dir, durable);
    // Kept for the life of the process; the wrapper script ends the broker.
    static CHILDREN: Mutex<Vec<std::process::Child>> = Mutex::new(Vec::new());
    CHILDREN
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(child);
    format!("127.0.0.1:{port}")
}

/// A durable nisshi (sqlite) of one test's own, which the test can stop and
/// start again on the same address with the same storage: a broker restart
/// as a rolling upgrade does it. Ended when dropped.
pub struct RestartableBroker {
    port: u16,
    dir: std::path::PathBuf,
    wrapper: Option<std::process::Child>,
}

impl RestartableBroker {
    /// Starts the broker (tests only: panics when it cannot).
    pub fn start() -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!(
            "herald-nisshi-restartable-{}-{port}",
            std::process::id()
        ));
        let wrapper = Some(launch_nisshi(port, &dir, true));
        Self { port, dir, wrapper }
    }

    /// `host:port`, the same across restarts.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A [`TestBroker`] on this broker (unique names, topic teardown).
    pub fn test_broker(&self) -> TestBroker {
        TestBroker {
            kind: BrokerKind::Durable,
            bootstrap: self.bootstrap(),
            mock: None,
            real_cluster: false,
            created: Mutex::new(Vec::new()),
        }
    }

    /// Stops the broker with `signal` (`TERM` or `KILL`), by the pid it was
    /// started with, and waits until it is gone.
    pub fn stop(&mut self, signal: &str) {
        assert!(
            self.halt(signal),
            "nisshi still listens on {} after kill -{signal}",
            self.bootstrap()
        );
    }

    /// Stops the broker; false when it still listens afterwards.
    fn halt(&mut self, signal: &str) -> bool {
        let Some(mut wrapper) = self.wrapper.take() else {
            return true;
        };
        let pid = std::fs::read_to_string(self.dir.join("nisshi.pid")).unwrap_or_default();
        let pid = pid.trim();
        if !pid.is_empty() {
            let _ = Command::new("kill")
                .args([&format!("-{signal}"), pid])
                .status();
        }
        // The wrapper exits within a second of the broker.
        let _ = wrapper.wait();
        let addr = self.bootstrap();
        for _ in 0..100 {
            if std::net::TcpStream::connect(&addr).is_err() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Starts the broker again on the same address and storage.
    pub fn restart(&mut self) {
        assert!(
            self.wrapper.is_none(),
            "restart of a running broker: stop it first"
        );
        self.wrapper = Some(launch_nisshi(self.port, &self.dir, true));
    }
}

impl Drop for RestartableBroker {
    fn drop(&mut self) {
        self.halt("KILL");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
