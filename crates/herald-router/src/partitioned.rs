//! `at_least_once` routing with one task per assigned partition.
//!
//! The consumer's loop only reads: it hands each record to its partition's
//! task, and stops reading while [`READ_HIGH`] records wait in the tasks'
//! queues (it reads again below half). A partition whose task is still
//! restoring stops fetching at [`RESTORE_HIGH`] queued records, so it does
//! not hold the others up; it fetches again once restored. (Pausing
//! partitions for ordinary backpressure would cost more than it saves:
//! librdkafka drops a paused partition's prefetched records and fetches
//! them again on resume.) A task restores its partition's state (dedup
//! entries, preferences) before its first record, then routes records in
//! order, produces their outputs, and stores an input offset once every
//! output of that record and of the records before it is acknowledged.
//! What is queued when a task takes a record is routed with it, up to
//! [`BATCH_MAX`] records: one acknowledgement to wait for and one offset
//! to store per batch. Tasks run on every worker thread of the runtime,
//! so partitions are routed in parallel.
//!
//! `max_in_flight` stays a bound for the whole instance: each input record
//! holds a permit of one semaphore until its outputs are acknowledged.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use futures::stream::FuturesOrdered;
use futures::StreamExt;
use herald_kafka::produce::{acked, send, Out};
use herald_telemetry::liveness::Busy;
use herald_telemetry::{AdminState, Shutdown};
use rdkafka::consumer::{CommitMode, Consumer, DefaultConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};

use crate::config::RouterConfig;
use crate::deferred::Clock;
use crate::process::{Input, PartitionState, Router};
use crate::run::{apply_preferences, lock, restore, RouterContext};

/// Records queued for all tasks before the loop stops reading (about
/// 4 MB of 300-byte events).
pub const READ_HIGH: usize = 8192;
/// Records queued for a restoring partition before it stops fetching.
pub const RESTORE_HIGH: usize = 2048;

/// What the tasks share.
pub(crate) struct Shared {
    pub config: RouterConfig,
    /// Readiness, and the clock `/healthz` reads.
    pub admin: AdminState,
    pub router: Arc<Router>,
    pub consumer: Arc<StreamConsumer<RouterContext>>,
    pub producer: FutureProducer,
    /// Follows the preferences partitions of the assigned input partitions
    /// (assigned by hand, from where each restore ended).
    pub prefs_follower: Arc<StreamConsumer<DefaultConsumerContext>>,
    pub clock: Clock,
    pub input_topic: String,
    pub prefs_topic: String,
    pub state_topic: String,
    /// Input records whose outputs are not acknowledged yet, instance-wide.
    pub permits: Arc<Semaphore>,
    /// Records in the tasks' queues, and the signal that they fell below
    /// half of [`READ_HIGH`].
    pub queued: AtomicUsize,
    pub room: Notify,
    /// Triggered when a task fails; `why` says how.
    pub failed: Shutdown,
    pub why: Mutex<Option<String>>,
}

impl Shared {
    fn fail(&self, why: String) {
        lock(&self.why).get_or_insert(why);
        self.failed.trigger();
    }
}

/// A record for a partition's task: an input, or a change of one of its
/// users' preferences.
enum Work {
    Event(OwnedMessage),
    Prefs(OwnedMessage),
}

/// A partition's task and its queue.
struct Lane {
    tx: mpsc::UnboundedSender<Work>,
    state: Arc<LaneState>,
    stop: Shutdown,
    task: tokio::task::JoinHandle<()>,
}

/// What the loop and a partition's task both see.
#[derive(Default)]
struct LaneState {
    /// Records in the queue.
    queued: AtomicUsize,
    /// Fetching stopped while restoring.
    paused: AtomicBool,
    restored: AtomicBool,
}

fn one(topic: &str, partition: i32) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    tpl
}

impl Lane {
    fn spawn(shared: &Arc<Shared>, partition: i32) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let state = Arc::new(LaneState::default());
        let stop = Shutdown::new();
        let task = {
            let (shared, state, stop) = (Arc::clone(shared), Arc::clone(&state), stop.clone());
            tokio::spawn(async move {
                let lane = LaneTask {
                    shared: &shared,
                    partition,
                    state: &state,
                    stop: &stop,
                };
                let mut rx = rx;
                let served = lane.serve(&mut rx).await;
                // What was not started is read again by the partition's next owner.
                rx.close();
                while let Ok(work) = rx.try_recv() {
                    if let Work::Event(_) = work {
                        lane.dequeued();
                    }
                }
                if let Err(e) = served {
                    shared.fail(format!("partition {partition}: {e:#}"));
                }
            })
        };
        Self {
            tx,
            state,
            stop,
            task,
        }
    }
}

/// Resolves with the offset of a batch's last record once every output of
/// the batch is acknowledged.
type Ack = futures::future::BoxFuture<'static, (i64, Result<(), String>)>;
type Sent = Result<rdkafka::producer::DeliveryFuture, String>;

/// Records a partition's task routes in one go, at most.
pub const BATCH_MAX: usize = 64;

/// Consecutive records of one partition whose outputs are in flight.
#[derive(Default)]
struct Batch {
    records: usize,
    last: i64,
    sent: Vec<Sent>,
    permits: Vec<OwnedSemaphorePermit>,
    /// From routing the first record to the last acknowledgement: one
    /// unit of work for `/healthz`.
    busy: Option<Busy>,
}

impl Batch {
    fn add(&mut self, offset: i64, sent: Vec<Sent>, permit: Option<OwnedSemaphorePermit>) {
        self.records += 1;
        self.last = offset;
        self.sent.extend(sent);
        self.permits.extend(permit);
    }

    /// The batch's acknowledgement; None if it has no record.
    fn acknowledged(self) -> Option<Ack> {
        if self.records == 0 {
            return None;
        }
        // `store_offset` takes the record's own offset (it stores the next).
        let Self {
            last,
            sent,
            permits,
            busy,
            ..
        } = self;
        Some(Box::pin(async move {
            let _permits = permits;
            let _busy = busy;
            for f in sent {
                if let Err(e) = acked(f).await {
                    return (last, Err(e));
                }
            }
            (last, Ok(()))
        }))
    }
}

struct LaneTask<'a> {
    shared: &'a Shared,
    partition: i32,
    state: &'a LaneState,
    stop: &'a Shutdown,
}

impl LaneTask<'_> {
    /// Restores the partition, then routes its records until stopped;
    /// then waits for what is in flight and stores its offsets.
    async fn serve(&self, rx: &mut mpsc::UnboundedReceiver<Work>) -> anyhow::Result<()> {
        let s = self.shared;
        let what = format!("{}/{}", s.input_topic, self.partition);
        let (mut st, prefs_end) =
            herald_kafka::consume::restore_patiently(&what, self.stop, || {
                restore(&s.config, &s.router, self.partition, s.clock.now_ms())
            })
            .await?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&s.prefs_topic, self.partition, Offset::Offset(prefs_end))?;
        s.prefs_follower
            .incremental_assign(&tpl)
            .context("following preferences")?;
        self.state.restored.store(true, Ordering::SeqCst);
        if self.state.paused.swap(false, Ordering::SeqCst) {
            let _ = s.consumer.resume(&one(&s.input_topic, self.partition));
        }
        let mut in_flight: FuturesOrdered<Ack> = FuturesOrdered::new();
        let mut permit: Option<OwnedSemaphorePermit> = None;
        let mut evict = tokio::time::interval(s.config.router.evict_interval);
        evict.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        evict.tick().await;
        let outcome = loop {
            let taking = !self.stop.is_triggered();
            tokio::select! {
                biased;
                Some((offset, result)) = in_flight.next(), if !in_flight.is_empty() => {
                    if let Err(e) = result {
                        break Err(anyhow::anyhow!("an output was not acknowledged: {e}"));
                    }
                    // Fails harmlessly when the partition was revoked meanwhile.
                    let _ = s.consumer.store_offset(&s.input_topic, self.partition, offset);
                }
                _ = evict.tick() => self.evict(&mut st),
                // A permit first, so a record is only taken when it may be sent.
                p = Arc::clone(&s.permits).acquire_owned(), if taking && permit.is_none() => {
                    permit = Some(p.context("the in-flight semaphore closed")?);
                }
                work = rx.recv(), if taking && permit.is_some() => {
                    let Some(work) = work else { break Ok(()) };
                    // Whatever else is queued, and may be sent, goes with
                    // it: one acknowledgement and one stored offset per batch.
                    let mut batch = Batch {
                        busy: Some(s.admin.busy()),
                        ..Batch::default()
                    };
                    let mut next = Some(work);
                    let mut failed = None;
                    while let Some(work) = next.take() {
                        match work {
                            Work::Prefs(update) => apply_preferences(&mut st, &s.router, &update).await,
                            Work::Event(msg) => {
                                self.dequeued();
                                match self.route(&mut st, &msg).await {
                                    Ok(sent) => batch.add(msg.offset(), sent, permit.take()),
                                    Err(e) => {
                                        failed = Some(e);
                                        break;
                                    }
                                }
                            }
                        }
                        if batch.records >= BATCH_MAX || self.stop.is_triggered() {
                            break;
                        }
                        if permit.is_none() {
                            match Arc::clone(&s.permits).try_acquire_owned() {
                                Ok(p) => permit = Some(p),
                                Err(_) => break,
                            }
                        }
                        next = rx.try_recv().ok();
                    }
                    if let Some(ack) = batch.acknowledged() {
                        in_flight.push_back(ack);
                    }
                    if let Some(e) = failed {
                        break Err(e);
                    }
                }
                () = self.stop.cancelled(), if in_flight.is_empty() => break Ok(()),
            }
        };
        // Stopped (or failed): what was sent is waited for.
        drop(permit);
        while let Some((offset, result)) = in_flight.next().await {
            if result.is_ok() {
                let _ = s
                    .consumer
                    .store_offset(&s.input_topic, self.partition, offset);
            }
        }
        outcome
    }

    /// Counts a record off the queues; wakes the loop when they fall
    /// below half of [`READ_HIGH`].
    fn dequeued(&self) {
        self.state.queued.fetch_sub(1, Ordering::SeqCst);
        if self.shared.queued.fetch_sub(1, Ordering::SeqCst) == READ_HIGH / 2 {
            self.shared.room.notify_one();
        }
    }

    /// Routes one input record and sends its outputs.
    async fn route(
        &self,
        st: &mut PartitionState,
        msg: &OwnedMessage,
    ) -> anyhow::Result<Vec<Sent>> {
        let s = self.shared;
        let input = Input {
            topic: msg.topic(),
            partition: self.partition,
            offset: msg.offset(),
            key: msg.key(),
            payload: msg.payload(),
        };
        let outs = s.router.process(st, input, s.clock.now_ms()).await?;
        Ok(outs
            .into_iter()
            .map(|o| send(&s.producer, o, None))
            .collect())
    }

    /// Evicts expired dedup entries and tombstones them, so compaction
    /// keeps the state topic bounded. A lost tombstone only leaves an
    /// expired entry for the next restore to skip.
    fn evict(&self, st: &mut PartitionState) {
        let s = self.shared;
        for key in st.dedup.evict_expired(s.clock.now_ms()) {
            let tomb = Out::tombstone(
                s.state_topic.clone(),
                self.partition,
                key.to_bytes().to_vec(),
            );
            drop(send(&s.producer, tomb, None));
        }
    }
}

/// Stops the lanes of the partitions revoked since the last call; their
/// tasks finish what they started (kept in `stopping`), and what they had
/// not started is read again by the partition's next owner.
fn stop_revoked(
    shared: &Shared,
    lanes: &mut HashMap<i32, Lane>,
    stopping: &mut HashMap<i32, tokio::task::JoinHandle<()>>,
) {
    for p in lock(&shared.consumer.context().revoked).drain(..) {
        if let Some(lane) = lanes.remove(&p) {
            lane.stop.trigger();
            let _ = shared
                .prefs_follower
                .incremental_unassign(&one(&shared.prefs_topic, p));
            stopping.insert(p, lane.task);
        }
    }
}

/// Reads the notifications topic and hands records to their partitions'
/// tasks until `shutdown` or a task fails; then stops the tasks, waits for
/// their in-flight work, commits the stored offsets and leaves the group.
pub(crate) async fn route(
    shared: Arc<Shared>,
    shutdown: Shutdown,
    admin: &AdminState,
) -> anyhow::Result<()> {
    let mut lanes: HashMap<i32, Lane> = HashMap::new();
    // Tasks of revoked partitions, still finishing their in-flight work.
    let mut stopping: HashMap<i32, tokio::task::JoinHandle<()>> = HashMap::new();
    let consumer = &shared.consumer;
    let outcome: anyhow::Result<()> = async {
        let mut stream = consumer.stream();
        let mut prefs_stream = shared.prefs_follower.stream();
        loop {
            stop_revoked(&shared, &mut lanes, &mut stopping);
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                () = shared.failed.cancelled() => return Ok(()),
                () = shared.room.notified(), if shared.queued.load(Ordering::SeqCst) >= READ_HIGH => {}
                Some(Ok(update)) = prefs_stream.next() => {
                    if let Some(lane) = lanes.get(&update.partition()) {
                        let _ = lane.tx.send(Work::Prefs(update.detach()));
                    }
                }
                msg = stream.next(), if shared.queued.load(Ordering::SeqCst) < READ_HIGH => {
                    let Some(msg) = msg else { return Ok(()) };
                    let msg = match msg {
                        Ok(msg) => msg,
                        Err(e) => {
                            herald_kafka::ride_out("router", e).context("consumer error")?;
                            continue;
                        }
                    };
                    // The revoke, the new assignment and this record may
                    // all have come while it was awaited: the revoked
                    // partitions' lanes stop first, so a record of the new
                    // assignment goes to a new lane and is not dropped with
                    // the old lane's unstarted ones.
                    stop_revoked(&shared, &mut lanes, &mut stopping);
                    let partition = msg.partition();
                    let lane = match lanes.entry(partition) {
                        Entry::Occupied(lane) => lane.into_mut(),
                        Entry::Vacant(slot) => {
                            // Back after a revoke: the old task finishes first,
                            // so the restore sees everything it acknowledged.
                            if let Some(old) = stopping.remove(&partition) {
                                let _ = old.await;
                            }
                            slot.insert(Lane::spawn(&shared, partition))
                        }
                    };
                    let st = &lane.state;
                    // Counted before it is sent: the task counts it off.
                    let queued = st.queued.fetch_add(1, Ordering::SeqCst) + 1;
                    shared.queued.fetch_add(1, Ordering::SeqCst);
                    if lane.tx.send(Work::Event(msg.detach())).is_err() {
                        // The task ended (it failed; the loop stops next turn).
                        st.queued.fetch_sub(1, Ordering::SeqCst);
                        shared.queued.fetch_sub(1, Ordering::SeqCst);
                        continue;
                    }
                    if queued > RESTORE_HIGH
                        && !st.restored.load(Ordering::SeqCst)
                        && !st.paused.swap(true, Ordering::SeqCst)
                    {
                        let _ = consumer.pause(&one(&shared.input_topic, partition));
                    }
                }
            }
        }
    }
    .await;
    // Drain: every task finishes what it sent and stores its offsets.
    admin.set_ready(false);
    for lane in lanes.values() {
        lane.stop.trigger();
    }
    for (_, lane) in lanes.drain() {
        drop(lane.tx);
        let _ = lane.task.await;
    }
    for (_, task) in stopping.drain() {
        let _ = task.await;
    }
    herald_kafka::produce::flush(&shared.producer, std::time::Duration::from_secs(10)).await;
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => {}
        // Nothing new since the last commit.
        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(e) => {
            tracing::warn!(error = %e, "Final commit failed; uncommitted records will be re-read.")
        }
    }
    // The group is left when the consumer is dropped (see `run_with_clock`).
    outcome?;
    match lock(&shared.why).take() {
        Some(why) => Err(anyhow::anyhow!("{why}")),
        None => Ok(()),
    }
}
