//! `exactly_once` on librdkafka's mock cluster, with router processes:
//!
//! 1. A commits a first transaction (phase 1), then is killed with SIGKILL
//!    while its second transaction is open (phase 2).
//! 2. B, the same instance restarted, redoes phase 2 only, commits, and
//!    opens a transaction for phase 3; then B is frozen (SIGSTOP): a zombie.
//! 3. C, the same instance again, takes over phase 3. The broker fences
//!    the zombie (on Kafka through the producer epoch; the mock cluster does
//!    not track epochs per transactional id, so the test injects the error a
//!    Kafka broker returns). B, thawed, exits naming the fencing and commits
//!    nothing.
//!
//! The mock cluster, like nisshi, hands aborted records to `read_committed`
//! consumers, so the test identifies the aborted attempts by the
//! `herald.txn` header (`{incarnation}.{sequence}`) of what was visible
//! when each instance died, and asserts on what a real broker would
//! expose: without them, each unique event reached its channel exactly
//! once, committed work was not redone, and the committed offsets and
//! state records agree with the committed output.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use herald_codec::{encode_single_object, Codec};
use herald_kafka::settings::ProducerKind;
use herald_kafka::Topology;
use herald_model::wire::ChannelMessage;
use herald_model::{sample, Channel, Priority};
use herald_router::run::TXN_HEADER;
use herald_testkit::{BrokerKind, TestBroker};
use rdkafka::consumer::{Consumer, DefaultConsumerContext, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::FutureRecord;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{Offset, TopicPartitionList};

use common::{sigkill, signal, spawn_router};

const PARTITIONS: i32 = 2;

/// One output record as the test sees it.
#[derive(Debug, Clone)]
struct Seen {
    /// `herald.txn`: `{incarnation}.{sequence}`.
    txn: String,
    /// Idempotency key (channel messages) or state key (hex).
    key: String,
}

impl Seen {
    fn incarnation(&self) -> &str {
        self.txn.split('.').next().unwrap_or("")
    }
}

/// Reads the push lane and the state topic continuously.
struct Collector {
    messages: Arc<Mutex<Vec<Seen>>>,
    states: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Collector {
    fn start(broker: &TestBroker, topology: &Topology) -> Self {
        let consumer: StreamConsumer<DefaultConsumerContext> = broker
            .settings()
            .consumer(
                "collector",
                &broker.group("collector"),
                DefaultConsumerContext,
            )
            .unwrap();
        let lane = topology.lane(Channel::Push, Priority::Normal);
        let state = topology.named("dedup-state");
        let mut tpl = TopicPartitionList::new();
        for p in 0..topology.settings().channel_partitions {
            tpl.add_partition_offset(&lane, p, Offset::Beginning)
                .unwrap();
        }
        for p in 0..PARTITIONS {
            tpl.add_partition_offset(&state, p, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let states = Arc::new(Mutex::new(Vec::new()));
        let (m, s) = (Arc::clone(&messages), Arc::clone(&states));
        let task = tokio::spawn(async move {
            let codec = Codec::single_object();
            let mut stream = consumer.stream();
            while let Some(Ok(r)) = stream.next().await {
                let txn = r
                    .headers()
                    .and_then(|h| h.iter().find(|h| h.key == TXN_HEADER))
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .expect("every exactly_once output names its transaction");
                if r.topic() == lane {
                    let msg: ChannelMessage = codec.decode_local(r.payload().unwrap()).unwrap();
                    m.lock().unwrap().push(Seen {
                        txn,
                        key: msg.idempotency_key,
                    });
                } else if let Some(k) = r.key() {
                    s.lock().unwrap().push(Seen {
                        txn,
                        key: k.iter().map(|b| format!("{b:02x}")).collect(),
                    });
                }
            }
        });
        Self {
            messages,
            states,
            task,
        }
    }

    fn messages(&self) -> Vec<Seen> {
        self.messages.lock().unwrap().clone()
    }

    fn states(&self) -> Vec<Seen> {
        self.states.lock().unwrap().clone()
    }

    /// Waits until the outputs of `keys` are visible (committed or not).
    async fn wait_for(&self, keys: &BTreeSet<String>, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let seen: BTreeSet<String> = self.messages().into_iter().map(|s| s.key).collect();
            if keys.is_subset(&seen) {
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until every one of `keys` has an output in a transaction not
    /// in `before`. A committed offset can be read before the collector
    /// has read the outputs committed with it.
    async fn wait_for_since(&self, keys: &BTreeSet<String>, before: &BTreeSet<String>, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let seen: BTreeSet<String> = self
                .messages()
                .into_iter()
                .filter(|s| !before.contains(&s.txn))
                .map(|s| s.key)
                .collect();
            if keys.is_subset(&seen) {
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits for outputs of a router incarnation not seen in `before`.
    async fn incarnation_since(&self, before: &BTreeSet<String>, who: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let txns = self.txns();
            if txns.difference(before).next().is_some() {
                return new_incarnation(before, &txns);
            }
            assert!(Instant::now() < deadline, "{who} produced nothing");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Transactions (`incarnation.sequence`) visible now.
    fn txns(&self) -> BTreeSet<String> {
        self.messages()
            .into_iter()
            .chain(self.states())
            .map(|s| s.txn)
            .collect()
    }
}

/// The router group's committed offsets, summed over partitions.
fn committed(broker: &TestBroker, topic: &str, group: &str) -> i64 {
    let consumer: StreamConsumer<DefaultConsumerContext> = broker
        .settings()
        .consumer("offsets", group, DefaultConsumerContext)
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(topic, p);
    }
    let got = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    got.elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        })
        .sum()
}

async fn wait_committed(broker: &TestBroker, topic: &str, group: &str, want: i64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let got = tokio::task::block_in_place(|| committed(broker, topic, group));
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: committed {got}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Produces events `ids` (push only) and returns the set of their keys.
async fn produce(broker: &TestBroker, topic: &str, ids: &[u64]) -> BTreeSet<String> {
    let producer = broker
        .settings()
        .producer("test", &ProducerKind::Idempotent)
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let mut keys = BTreeSet::new();
    for n in ids {
        let mut e = sample::notification(*n, now);
        e.channels = vec![Channel::Push];
        keys.insert(e.idempotency_key.clone());
        let bytes = encode_single_object(&e).unwrap();
        producer
            .send(
                FutureRecord::to(topic).key(&e.user_id).payload(&bytes),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    keys
}

/// The incarnation seen in `now` but not in `before`.
fn new_incarnation(before: &BTreeSet<String>, now: &BTreeSet<String>) -> String {
    let old: BTreeSet<&str> = before
        .iter()
        .map(|t| t.split('.').next().unwrap())
        .collect();
    let fresh: BTreeSet<&str> = now
        .iter()
        .map(|t| t.split('.').next().unwrap())
        .filter(|i| !old.contains(i))
        .collect();
    assert_eq!(
        fresh.len(),
        1,
        "expected one new router incarnation: {fresh:?}"
    );
    fresh.into_iter().next().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_survives_a_crash_mid_transaction_and_fences_a_zombie() {
    let started = Instant::now();
    let broker = TestBroker::start(BrokerKind::Transactional);
    let topology = broker.herald_topology("eos", PARTITIONS, 2).await;
    let settings = topology.settings().clone();
    let input = topology.notifications();
    let group = broker.group("eos-router");
    let collector = Collector::start(&broker, &topology);
    let eos = |interval: &'static str, max: &'static str| {
        vec![
            ("HERALD__ROUTER__GUARANTEE", "exactly_once"),
            ("HERALD__ROUTER__INSTANCE_ID", "router-0"),
            ("HERALD__ROUTER__TRANSACTION_INTERVAL", interval),
            ("HERALD__ROUTER__TRANSACTION_MAX_RECORDS", max),
        ]
    };

    // Phase 1: 400 events and 100 duplicates (same keys, later offsets).
    // A's transactions close at 500 records: exactly this phase.
    let phase1: Vec<u64> = (0..400).chain(0..100).collect();
    let keys1 = produce(&broker, &input, &phase1).await;
    let mut a = spawn_router(
        &broker,
        &settings,
        &group,
        &eos("60s", "500"),
        Stdio::inherit(),
    );
    wait_committed(&broker, &input, &group, 500, "A's first transaction").await;
    collector.wait_for(&keys1, "phase 1 outputs").await;
    let committed_a = collector.txns();

    // Phase 2: 200 new events, 50 duplicates; A's transaction stays open
    // (under 500 records, 60 s interval) and A is killed inside it.
    let phase2: Vec<u64> = (400..600).chain(550..600).collect();
    let keys2 = produce(&broker, &input, &phase2).await;
    collector.wait_for(&keys2, "A's open transaction").await;
    sigkill(&mut a);
    let incarnation_a = new_incarnation(&BTreeSet::new(), &collector.txns());
    let before_b = collector.txns();

    // B: the same instance restarted. It must redo phase 2, not phase 1.
    let b = spawn_router(
        &broker,
        &settings,
        &group,
        &eos("60s", "250"),
        Stdio::piped(),
    );
    wait_committed(&broker, &input, &group, 750, "B's first transaction").await;
    collector
        .wait_for_since(&keys2, &before_b, "the outputs of B's first transaction")
        .await;
    let committed_b_set = collector.txns();

    // Phase 3: 150 events; B's transaction stays open and B is frozen.
    let phase3: Vec<u64> = (600..750).collect();
    let keys3 = produce(&broker, &input, &phase3).await;
    let incarnation_b = collector.incarnation_since(&before_b, "B").await;
    collector.wait_for(&keys3, "B's open transaction").await;
    signal(&b, "STOP");
    let before_c = collector.txns();

    // C: the same instance again, while B is a zombie.
    let mut c = spawn_router(
        &broker,
        &settings,
        &group,
        &eos("200ms", "5000"),
        Stdio::inherit(),
    );
    wait_committed(&broker, &input, &group, 900, "C's takeover").await;
    let incarnation_c = collector.incarnation_since(&before_c, "C").await;

    // What a Kafka broker answers a fenced producer (the mock cluster keeps
    // one producer id per process and would not): the zombie's next
    // transactional request fails with it.
    let mock = broker
        .mock()
        .expect("the transactional broker is the mock cluster");
    // One error per call: the first transactional request the thawed
    // zombie makes fails with it (librdkafka does not retry a fencing).
    // More would wait in the mock's queue for C's next transaction.
    let fenced = [RDKafkaRespErr::RD_KAFKA_RESP_ERR_INVALID_PRODUCER_EPOCH; 1];
    mock.mock().request_errors(RDKafkaApiKey::EndTxn, &fenced);
    mock.mock()
        .request_errors(RDKafkaApiKey::AddPartitionsToTxn, &fenced);
    mock.mock()
        .request_errors(RDKafkaApiKey::TxnOffsetCommit, &fenced);
    signal(&b, "CONT");
    let exit = tokio::task::spawn_blocking(move || {
        let out = b.wait_with_output().unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    });
    let (status, stderr) = tokio::time::timeout(Duration::from_secs(60), exit)
        .await
        .expect("the zombie must stop by itself")
        .unwrap();
    for api in [
        RDKafkaApiKey::EndTxn,
        RDKafkaApiKey::AddPartitionsToTxn,
        RDKafkaApiKey::TxnOffsetCommit,
    ] {
        mock.mock().clear_request_errors(api);
    }
    assert!(!status.success(), "the zombie exited cleanly: {stderr}");
    assert!(
        stderr.contains("fenced"),
        "the zombie's exit names the fencing: {stderr}"
    );
    let zombie_said = stderr.lines().last().unwrap_or("").to_string();
    // The zombie committed nothing: the offsets are still C's.
    tokio::time::sleep(Duration::from_secs(2)).await;
    wait_committed(&broker, &input, &group, 900, "offsets after the zombie").await;

    // C drains and exits cleanly on SIGTERM.
    signal(&c, "TERM");
    let pid = c.id();
    let exit = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                sigkill(&mut c);
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .unwrap();
    let status = exit.unwrap_or_else(|| panic!("router {pid} did not exit within 60 s of SIGTERM"));
    assert!(status.success(), "router {pid} drained with {status}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    collector.task.abort();

    // Aborted: every transaction of A after its committed one, and every
    // transaction of B after its committed ones.
    let aborted: BTreeSet<String> = collector
        .txns()
        .into_iter()
        .filter(|t| {
            let inc = t.split('.').next().unwrap();
            (inc == incarnation_a && !committed_a.contains(t))
                || (inc == incarnation_b && !committed_b_set.contains(t))
        })
        .collect();
    assert!(
        !aborted.is_empty(),
        "the test did not catch an open transaction"
    );
    let messages = collector.messages();
    let aborted_records = messages.iter().filter(|s| aborted.contains(&s.txn)).count();
    let mut committed_out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for s in messages.iter().filter(|s| !aborted.contains(&s.txn)) {
        committed_out
            .entry(s.key.clone())
            .or_default()
            .push(s.incarnation().to_string());
    }
    let all_keys: BTreeSet<String> = keys1.iter().chain(&keys2).chain(&keys3).cloned().collect();
    assert_eq!(
        committed_out.keys().cloned().collect::<BTreeSet<_>>(),
        all_keys,
        "every unique event reached its channel"
    );
    for (key, by) in &committed_out {
        assert_eq!(by.len(), 1, "{key} committed more than once: {by:?}");
    }
    // Committed work was not redone: phase 1 is A's alone, phase 2 B's,
    // phase 3 C's.
    for (keys, who) in [
        (&keys1, &incarnation_a),
        (&keys2, &incarnation_b),
        (&keys3, &incarnation_c),
    ] {
        for k in keys {
            assert_eq!(
                &committed_out[k][0], who,
                "{k} committed by the wrong instance"
            );
        }
    }
    // State records agree with the output: one committed entry per event.
    let mut state_count: HashMap<String, usize> = HashMap::new();
    for s in collector
        .states()
        .iter()
        .filter(|s| !aborted.contains(&s.txn))
    {
        *state_count.entry(s.key.clone()).or_default() += 1;
    }
    assert_eq!(
        state_count.len(),
        all_keys.len(),
        "one state entry per event"
    );
    assert!(
        state_count.values().all(|n| *n == 1),
        "a state entry was committed twice"
    );
    println!(
        "exactly_once: {} events ({} duplicates), 1 SIGKILL mid-transaction, 1 zombie fenced; \
         {} aborted transactions holding {aborted_records} channel messages; \
         each of {} unique events committed once ({:.0}s). The zombie said: {zombie_said}",
        phase1.len() + phase2.len() + phase3.len(),
        phase1.len() + phase2.len() + phase3.len() - all_keys.len(),
        aborted.len(),
        all_keys.len(),
        started.elapsed().as_secs_f64()
    );
}
