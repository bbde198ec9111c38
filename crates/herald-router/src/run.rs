//! The router's Kafka loops.
//!
//! `at_least_once` (the partitions are routed in parallel, one task each:
//! `partitioned`): for each input record the state record, the
//! channel messages, status events and dead letters are produced
//! (idempotent producer, acks=all); only when every one of them is
//! acknowledged is the input offset stored, in input order, for the next
//! commit. After a crash,
//! records whose offsets were not stored are read again; their dedup entry
//! marks them as replays of themselves and their effects are emitted again,
//! so nothing is lost and repeats are confined to the crash window.
//!
//! `exactly_once` (one loop routes every partition): one transactional
//! producer per instance
//! (`transactional.id = {group}-{instance_id}`). Outputs of up to
//! `transaction_max_records` input records, or `transaction_interval` of
//! work, go into one transaction together with the input offsets
//! (`send_offsets_to_transaction` with the consumer's group metadata), so
//! they commit or abort together. Before partitions are revoked the open
//! transaction is committed; when they are lost (the instance was presumed
//! dead) it is aborted. A fenced producer ends the process: another
//! instance owns the work. Every output carries a `herald.txn` header
//! (`{incarnation}.{sequence}`) naming its transaction, for audits on
//! brokers that hand aborted records to `read_committed` consumers.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use herald_codec::Codec;
use herald_kafka::settings::ProducerKind;
use herald_kafka::state::{owned, read_to_end, OwnedRecord};
use herald_kafka::Topology;
use herald_model::wire::DedupEntry;
use herald_model::DedupKey;
use herald_telemetry::events::{Rebalanced, StateRestored, TransactionEnded};
use herald_telemetry::{AdminState, Emit, Shutdown};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, ConsumerGroupMetadata,
    DefaultConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryFuture, FutureProducer, Producer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::config::{Guarantee, RouterConfig};
use crate::deferred::{Clock, Release};
use crate::partitioned;
use crate::process::{Input, Out, PartitionState, Router};
pub(crate) use herald_kafka::produce::{acked, send};

use crate::templates::TemplateStore;

/// How long a commit waits for its transaction's delivery reports before
/// leaving the rest to librdkafka's own flush.
const REPORTS_WAIT: Duration = Duration::from_secs(1);

/// Header naming the transaction an output was written in.
pub const TXN_HEADER: &str = "herald.txn";

/// Locks a mutex, recovering from poisoning (the data stays consistent:
/// every holder finishes its update before anything can panic).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The transaction of an `exactly_once` router, shared by the loop and
/// the rebalance callback (which ends it before partitions move).
struct Txn {
    producer: FutureProducer,
    input_topic: String,
    transactional_id: String,
    open: bool,
    /// Next input offset per partition, for records since `begin`.
    offsets: BTreeMap<i32, i64>,
    records: usize,
    began: Instant,
    seq: u64,
    incarnation: String,
    timeout: Duration,
    /// Why the callback could not end the transaction; the loop stops.
    failed: Option<String>,
    /// Delivery reports of the open transaction's outputs, awaited before
    /// the commit (see [`commit_txn`]).
    pending: Vec<DeliveryFuture>,
}

/// Whether a Kafka error says another producer took over this one's id.
fn is_fenced(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::Fenced
                | RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
        )
    ) || matches!(e, KafkaError::Transaction(t) if t.is_fatal())
}

/// Whether retrying the same transactional call may succeed.
fn is_retriable(e: &KafkaError) -> bool {
    matches!(e, KafkaError::Transaction(t) if t.is_retriable())
}

impl Txn {
    /// Begins a transaction unless one is open; returns its header value.
    fn begin(&mut self) -> anyhow::Result<Vec<u8>> {
        if let Some(why) = &self.failed {
            anyhow::bail!("{why}");
        }
        if !self.open {
            self.producer
                .begin_transaction()
                .map_err(|e| self.error("beginning a transaction", &e))?;
            self.open = true;
            self.began = Instant::now();
            self.records = 0;
            self.seq += 1;
        }
        Ok(format!("{}.{}", self.incarnation, self.seq).into_bytes())
    }

    fn error(&self, doing: &str, e: &KafkaError) -> anyhow::Error {
        if is_fenced(e) {
            anyhow::anyhow!(
                "this router was fenced while {doing}: another instance with transactional id \
                 {} took over its work ({e})",
                self.transactional_id
            )
        } else {
            anyhow::anyhow!("{doing}: {e}")
        }
    }

    /// Commits the open transaction with the input offsets; returns them
    /// (empty when nothing was open). A transaction that cannot commit is
    /// aborted and reported as an error.
    fn commit(&mut self, cgm: &ConsumerGroupMetadata) -> anyhow::Result<TopicPartitionList> {
        let mut tpl = TopicPartitionList::new();
        if !self.open {
            return Ok(tpl);
        }
        for (p, next) in &self.offsets {
            tpl.add_partition_offset(&self.input_topic, *p, Offset::Offset(*next))?;
        }
        let mut result = Ok(());
        for attempt in 1..=3 {
            result = if tpl.count() > 0 {
                self.producer
                    .send_offsets_to_transaction(&tpl, cgm, self.timeout)
            } else {
                Ok(())
            }
            .and_then(|()| self.producer.commit_transaction(self.timeout));
            match &result {
                Err(e) if is_retriable(e) && attempt < 3 => continue,
                _ => break,
            }
        }
        let records = self.records;
        let elapsed = self.began.elapsed();
        self.open = false;
        self.offsets.clear();
        self.pending.clear();
        match result {
            Ok(()) => {
                TransactionEnded {
                    outcome: "committed",
                    records,
                    elapsed,
                }
                .emit();
                Ok(tpl)
            }
            Err(e) => {
                let err = self.error("committing a transaction", &e);
                if !is_fenced(&e) {
                    let _ = self.producer.abort_transaction(self.timeout);
                }
                TransactionEnded {
                    outcome: "failed",
                    records,
                    elapsed,
                }
                .emit();
                Err(err)
            }
        }
    }

    /// Aborts the open transaction: its input will be read again by
    /// whichever instance owns the partitions now.
    fn abort(&mut self) -> anyhow::Result<()> {
        if !self.open {
            return Ok(());
        }
        self.open = false;
        self.offsets.clear();
        self.pending.clear();
        TransactionEnded {
            outcome: "aborted",
            records: self.records,
            elapsed: self.began.elapsed(),
        }
        .emit();
        self.producer
            .abort_transaction(self.timeout)
            .map_err(|e| self.error("aborting a transaction", &e))
    }
}

/// The consumer's context: logs rebalances, ends the open transaction
/// before partitions move, and tells the loop which partitions to drop.
#[derive(Default)]
pub struct RouterContext {
    pub(crate) revoked: Mutex<Vec<i32>>,
    txn: Option<Arc<Mutex<Txn>>>,
}

impl ClientContext for RouterContext {}

impl ConsumerContext for RouterContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            Rebalanced {
                kind: "revoke",
                partitions: parts.len(),
            }
            .emit();
            // Only an open transaction is touched: the drain commits before
            // the consumer closes, and asking a closing consumer for its
            // group metadata never returns.
            let mut txn = self.txn.as_ref().map(|t| lock(t));
            if let Some(t) = txn.as_mut().filter(|t| t.open) {
                // Lost partitions may already be another instance's: abort.
                // Revoked ones are handed over cleanly: commit first.
                let ended = if consumer.assignment_lost() {
                    t.abort()
                } else {
                    match consumer.group_metadata() {
                        Some(cgm) => t.commit(&cgm).map(|tpl| {
                            if tpl.count() > 0 {
                                let _ = consumer.commit(&tpl, CommitMode::Sync);
                            }
                        }),
                        None => t.abort(),
                    }
                };
                if let Err(e) = ended {
                    t.failed = Some(format!("{e:#}"));
                }
            }
            lock(&self.revoked).extend(parts);
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            Rebalanced {
                kind: "assign",
                partitions: tpl.count(),
            }
            .emit();
        }
    }
}

/// Loads the templates file, if configured.
fn load_templates(config: &RouterConfig) -> anyhow::Result<TemplateStore> {
    match &config.router.templates {
        None => Ok(TemplateStore::default()),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading templates {}", path.display()))?;
            toml::from_str(&text).with_context(|| format!("parsing templates {}", path.display()))
        }
    }
}

/// Restores one partition: dedup state and preferences, each read to its
/// end (both at once). Returns the state and the preferences offset to
/// follow from.
pub async fn restore(
    config: &RouterConfig,
    router: &Arc<Router>,
    partition: i32,
    now: i64,
) -> anyhow::Result<(PartitionState, i64)> {
    let topology = router.topology();
    let mut st = PartitionState::default();
    let stall = Duration::from_secs(30);
    let codec = router.codec();
    let mut bad = 0u64;
    // Entries are decoded where they are fetched; only the index insert
    // runs in offset order.
    let decoder = Arc::clone(router);
    let decode = move |k: Option<&[u8]>, v: Option<&[u8]>| {
        let key = k.and_then(DedupKey::from_bytes)?;
        match v {
            None => Some((key, None)),
            Some(bytes) => decoder
                .codec()
                .decode_local::<DedupEntry>(bytes)
                .ok()
                .map(|e| (key, Some(e))),
        }
    };
    let (state_topic, prefs_topic) = (topology.named("dedup-state"), topology.named("preferences"));
    let dedup = &mut st.dedup;
    let dedup_read = read_to_end(
        &config.kafka,
        "router",
        &state_topic,
        partition,
        stall,
        decode,
        |entry| match entry {
            Some((key, e)) => dedup.restore(key, e.as_ref(), now),
            None => bad += 1,
        },
    );
    let mut raw_prefs: Vec<OwnedRecord> = Vec::new();
    let prefs_read = read_to_end(
        &config.kafka,
        "router",
        &prefs_topic,
        partition,
        stall,
        owned,
        |record| raw_prefs.push(record),
    );
    let (stats, prefs_stats) = tokio::try_join!(dedup_read, prefs_read)?;
    let raw_prefs = raw_prefs.into_iter().filter_map(|(k, v)| {
        let user = String::from_utf8(k?).ok()?;
        Some((user, v))
    });
    for (user, value) in raw_prefs {
        if st
            .apply_preferences(codec, &user, value.as_deref())
            .await
            .is_err()
        {
            bad += 1;
        }
    }
    if bad > 0 {
        tracing::warn!(
            partition,
            records = bad,
            "State records skipped: undecodable."
        );
    }
    StateRestored {
        partition,
        entries: st.dedup.len(),
        bytes: st.dedup.heap_bytes(),
        records: stats.records,
        elapsed: stats.elapsed,
    }
    .emit();
    Ok((st, prefs_stats.end_offset))
}

/// Applies one record of the preferences topic (a tombstone deletes) to
/// its partition's state.
pub(crate) async fn apply_preferences(
    st: &mut PartitionState,
    router: &Router,
    msg: &impl Message,
) {
    let Some(user) = msg.key().and_then(|k| std::str::from_utf8(k).ok()) else {
        return;
    };
    if let Err(e) = st
        .apply_preferences(router.codec(), user, msg.payload())
        .await
    {
        tracing::warn!(
            partition = msg.partition(),
            offset = msg.offset(),
            reason = e.reason(),
            "Preferences record skipped: undecodable."
        );
    }
}

/// Builds the transactional producer and registers its id with the
/// broker (fencing any earlier instance with the same id). A broker
/// without transactions fails here, naming the setting.
async fn transactional(config: &RouterConfig, input_topic: &str) -> anyhow::Result<Txn> {
    let refused = |why: String| {
        anyhow::anyhow!(
            "router.guarantee = \"exactly_once\" needs a broker with transactions, and this one \
             refused them ({why}). Use router.guarantee = \"at_least_once\" with this broker."
        )
    };
    let transactional_id = config
        .router
        .transactional_id()
        .map_err(anyhow::Error::msg)?;
    let producer = config.kafka.producer(
        "router",
        &ProducerKind::Transactional(transactional_id.clone()),
    )?;
    let timeout = config.kafka.request_timeout.max(Duration::from_secs(10));
    let p = producer.clone();
    tokio::task::spawn_blocking(move || p.init_transactions(timeout))
        .await?
        .map_err(|e| refused(e.to_string()))?;
    // Names this run of the process in every output's `herald.txn` header.
    let incarnation = uuid::Uuid::new_v4().simple().to_string();
    tracing::info!(%transactional_id, %incarnation, "Transactional producer ready.");
    Ok(Txn {
        producer,
        input_topic: input_topic.to_string(),
        transactional_id,
        open: false,
        offsets: BTreeMap::new(),
        records: 0,
        began: Instant::now(),
        seq: 0,
        incarnation,
        timeout,
        failed: None,
        pending: Vec::new(),
    })
}

/// Commits the open transaction (off the async runtime: the calls block),
/// then commits the same offsets through the group. On Kafka the second
/// commit repeats what the transaction stored; librdkafka's mock cluster
/// accepts transactional offset commits without storing them, and this
/// keeps a restarted router from redoing committed work there.
async fn commit_txn(
    consumer: &StreamConsumer<RouterContext>,
    txn: &Arc<Mutex<Txn>>,
) -> anyhow::Result<()> {
    let cgm = consumer
        .group_metadata()
        .context("the consumer has no group metadata")?;
    // librdkafka flushes before it commits, and rust-rdkafka's flush
    // competes with the producer's polling thread for the delivery reports:
    // it then sleeps its 100 ms poll interval. Awaiting the reports here
    // first leaves it nothing to wait for (100 ms -> about 1 ms per commit
    // on the mock cluster). A failed delivery makes the commit fail. The
    // wait is bounded: a producer in an abortable state holds its messages
    // until the transaction is aborted, which only the commit's failure
    // leads to.
    let pending = std::mem::take(&mut lock(txn).pending);
    let waiting = pending.len();
    if tokio::time::timeout(REPORTS_WAIT, futures::future::join_all(pending))
        .await
        .is_err()
    {
        tracing::warn!(
            records = waiting,
            "Delivery reports of the transaction not all in after {REPORTS_WAIT:?}; committing anyway."
        );
    }
    let shared = Arc::clone(txn);
    let offsets = tokio::task::spawn_blocking(move || lock(&shared).commit(&cgm)).await??;
    if offsets.count() > 0 {
        let _ = consumer.commit(&offsets, CommitMode::Async);
    }
    Ok(())
}

/// Runs the router until `shutdown`, then drains: finishes in-flight work
/// (`at_least_once`: waits for every output, stores and commits the
/// offsets; `exactly_once`: commits the open transaction) and leaves the
/// group.
pub async fn run(
    config: RouterConfig,
    shutdown: Shutdown,
    admin: AdminState,
) -> anyhow::Result<()> {
    run_with_clock(config, shutdown, admin, Clock::system()).await
}

/// [`run`] with a clock of the caller's (tests move time by hand).
pub async fn run_with_clock(
    config: RouterConfig,
    shutdown: Shutdown,
    admin: AdminState,
    clock: Clock,
) -> anyhow::Result<()> {
    config.router.validate().map_err(anyhow::Error::msg)?;
    let templates = load_templates(&config)?;
    let codec: Codec = config.codec.build().map_err(anyhow::Error::msg)?;
    let topology = Topology::new(config.topics.clone());
    let router = Arc::new(Router::new(
        config.router.clone(),
        topology.clone(),
        templates,
        codec,
    ));
    let input_topic = topology.notifications();

    let (producer, txn, consumer): (_, _, StreamConsumer<RouterContext>) =
        match config.router.guarantee {
            Guarantee::AtLeastOnce => (
                config.kafka.producer("router", &ProducerKind::Idempotent)?,
                None,
                config
                    .kafka
                    .consumer("router", &config.router.group, RouterContext::default())?,
            ),
            Guarantee::ExactlyOnce => {
                let t = transactional(&config, &input_topic).await?;
                let producer = t.producer.clone();
                let txn = Arc::new(Mutex::new(t));
                let context = RouterContext {
                    revoked: Mutex::default(),
                    txn: Some(Arc::clone(&txn)),
                };
                let consumer =
                    config
                        .kafka
                        .transactional_consumer("router", &config.router.group, context)?;
                (producer, Some(txn), consumer)
            }
        };
    consumer
        .subscribe(&[&input_topic])
        .context("subscribing to the notifications topic")?;
    // Deferred messages are released with an idempotent producer in either
    // guarantee: a release repeated after a crash has the same
    // notification id, which the delivery ledger sends once.
    let release = Release {
        consumer: config.kafka.consumer(
            "router-deferred",
            &format!("{}-deferred", config.router.group),
            RouterContext::default(),
        )?,
        producer: match &txn {
            None => producer.clone(),
            Some(_) => config
                .kafka
                .producer("router-deferred", &ProducerKind::Idempotent)?,
        },
        router: Arc::clone(&router),
        clock: clock.clone(),
        tick: config.router.deferred_tick,
        max_held: config.router.deferred_max_held,
    }
    .run(shutdown.clone());
    tracing::info!(
        topic = %input_topic,
        group = %config.router.group,
        guarantee = config.router.guarantee.as_str(),
        "Router started."
    );
    admin.set_ready(true);

    let prefs_topic = topology.named("preferences");
    let prefs_follower: StreamConsumer<DefaultConsumerContext> = config.kafka.consumer(
        "router-prefs",
        &format!("{}-prefs", config.router.group),
        DefaultConsumerContext,
    )?;
    let route = async {
        match txn {
            None => {
                let shared = Arc::new(partitioned::Shared {
                    permits: Arc::new(tokio::sync::Semaphore::new(config.router.max_in_flight)),
                    queued: Default::default(),
                    room: Default::default(),
                    router: Arc::clone(&router),
                    consumer: Arc::new(consumer),
                    producer,
                    prefs_follower: Arc::new(prefs_follower),
                    clock: clock.clone(),
                    input_topic,
                    prefs_topic,
                    state_topic: topology.named("dedup-state"),
                    failed: Shutdown::new(),
                    why: Mutex::default(),
                    config: config.clone(),
                    admin: admin.clone(),
                });
                partitioned::route(shared, shutdown.clone(), &admin).await
            }
            Some(txn) => {
                let loop_ = TransactionalLoop {
                    config: &config,
                    router: &router,
                    consumer: &consumer,
                    producer: &producer,
                    txn: &txn,
                    prefs_follower: &prefs_follower,
                    prefs_topic: &prefs_topic,
                    clock: &clock,
                };
                loop_.run(&shutdown, &admin).await
            }
        }
    };
    tokio::try_join!(route, release)?;
    // The consumers leave their groups as they are dropped: a consumer's
    // close serves a rebalance in progress, where `unsubscribe` after the
    // last poll could wait on that rebalance past the drain deadline.
    tracing::info!("Router drained.");
    Ok(())
}

/// The `exactly_once` loop: one task routes every assigned partition, so
/// that a transaction's outputs and offsets are exactly the records it
/// routed (a commit never sees a record half sent).
struct TransactionalLoop<'a> {
    config: &'a RouterConfig,
    router: &'a Arc<Router>,
    consumer: &'a StreamConsumer<RouterContext>,
    producer: &'a FutureProducer,
    txn: &'a Arc<Mutex<Txn>>,
    prefs_follower: &'a StreamConsumer<DefaultConsumerContext>,
    prefs_topic: &'a str,
    clock: &'a Clock,
}

impl TransactionalLoop<'_> {
    async fn run(&self, shutdown: &Shutdown, admin: &AdminState) -> anyhow::Result<()> {
        let (config, consumer, txn) = (self.config, self.consumer, self.txn);
        let mut states: HashMap<i32, PartitionState> = HashMap::new();
        let mut last_evict = Instant::now();
        let txn_interval = config.router.transaction_interval;
        let txn_max = config.router.transaction_max_records;
        let mut stream = consumer.stream();
        let mut prefs_stream = self.prefs_follower.stream();
        // One timer, moved only when its deadline changes (a new timer per
        // record costs more than the record's routing logic).
        let timer = tokio::time::sleep_until(last_evict.into());
        tokio::pin!(timer);
        loop {
            // Drop state of revoked partitions.
            for p in lock(&consumer.context().revoked).drain(..) {
                if states.remove(&p).is_some() {
                    let mut tpl = TopicPartitionList::new();
                    tpl.add_partition(self.prefs_topic, p);
                    let _ = self.prefs_follower.incremental_unassign(&tpl);
                }
            }
            // The next timed duty: eviction, or ending the open transaction.
            let mut wake = last_evict + config.router.evict_interval;
            {
                let t = lock(txn);
                if let Some(why) = &t.failed {
                    anyhow::bail!("{why}");
                }
                if t.open {
                    wake = wake.min(t.began + txn_interval);
                }
            }
            let wake = tokio::time::Instant::from_std(wake);
            if timer.deadline() != wake {
                timer.as_mut().reset(wake);
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = &mut timer => {}
                Some(Ok(update)) = prefs_stream.next() => {
                    if let Some(st) = states.get_mut(&update.partition()) {
                        apply_preferences(st, self.router, &update).await;
                    }
                }
                msg = stream.next() => {
                    let Some(msg) = msg else { break };
                    let msg = match msg {
                        Ok(msg) => msg,
                        Err(e) => {
                            herald_kafka::ride_out("router", e).context("consumer error")?;
                            continue;
                        }
                    };
                    let partition = msg.partition();
                    // A partition's state is restored before its first record is processed.
                    if let std::collections::hash_map::Entry::Vacant(slot) = states.entry(partition) {
                        let what = format!("{}/{partition}", self.router.topology().notifications());
                        let (st, prefs_end) = herald_kafka::consume::restore_patiently(&what, shutdown, || {
                            restore(config, self.router, partition, self.clock.now_ms())
                        })
                        .await?;
                        slot.insert(st);
                        let mut tpl = TopicPartitionList::new();
                        tpl.add_partition_offset(self.prefs_topic, partition, Offset::Offset(prefs_end))?;
                        self.prefs_follower.incremental_assign(&tpl).context("following preferences")?;
                    }
                    let Some(st) = states.get_mut(&partition) else { continue };
                    // Routing, sending and a commit it fills: watched by `/healthz`.
                    let _busy = admin.busy();
                    let marker = lock(txn).begin()?;
                    let input = Input {
                        topic: msg.topic(),
                        partition,
                        offset: msg.offset(),
                        key: msg.key(),
                        payload: msg.payload(),
                    };
                    let outs = self.router.process(st, input, self.clock.now_ms()).await?;
                    let offset = msg.offset();
                    drop(msg);
                    // Delivery of each output is confirmed by the commit.
                    let mut sent = Vec::with_capacity(outs.len());
                    for o in outs {
                        sent.push(send(self.producer, o, Some((TXN_HEADER, &marker))).map_err(anyhow::Error::msg)?);
                    }
                    let full = {
                        let mut t = lock(txn);
                        t.pending.append(&mut sent);
                        t.offsets.insert(partition, offset + 1);
                        t.records += 1;
                        t.records >= txn_max
                    };
                    if full {
                        commit_txn(consumer, txn).await?;
                    }
                }
            }
            let due = {
                let t = lock(txn);
                t.open && t.began.elapsed() >= txn_interval
            };
            if due {
                let _busy = admin.busy();
                commit_txn(consumer, txn).await?;
            }
            if last_evict.elapsed() >= config.router.evict_interval {
                last_evict = Instant::now();
                self.evict(&mut states)?;
            }
        }
        // Drain: commit the open transaction, leave.
        admin.set_ready(false);
        drop(stream);
        drop(prefs_stream);
        let open = lock(txn).open;
        let started = Instant::now();
        commit_txn(consumer, txn).await?;
        tracing::info!(
            open,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "Drain: the open transaction is committed."
        );
        herald_kafka::produce::flush(self.producer, Duration::from_secs(10)).await;
        // The group is left when the consumer is dropped (see `run_with_clock`).
        Ok(())
    }

    /// Evicts expired dedup entries and tombstones them in the open
    /// transaction, so compaction keeps the state topic bounded.
    fn evict(&self, states: &mut HashMap<i32, PartitionState>) -> anyhow::Result<()> {
        let now = self.clock.now_ms();
        let expired: Vec<(i32, DedupKey)> = states
            .iter_mut()
            .flat_map(|(p, st)| st.dedup.evict_expired(now).into_iter().map(|k| (*p, k)))
            .collect();
        if expired.is_empty() {
            return Ok(());
        }
        let marker = lock(self.txn).begin()?;
        let state_topic = self.router.topology().named("dedup-state");
        let sent: Vec<_> = expired
            .into_iter()
            .filter_map(|(partition, key)| {
                let tomb = Out::tombstone(state_topic.clone(), partition, key.to_bytes().to_vec());
                send(self.producer, tomb, Some((TXN_HEADER, &marker))).ok()
            })
            .collect();
        lock(self.txn).pending.extend(sent);
        Ok(())
    }
}
