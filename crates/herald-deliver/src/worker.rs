//! The delivery loop of one channel.
//!
//! One consumer group per channel reads the channel's three lanes and its
//! retry tiers. Each assigned partition gets its own task, so a slow
//! provider or an open breaker holds only the partitions whose messages
//! need it. Inside a partition up to `max_in_flight` messages are delivered
//! at once and offsets are stored in order, only after every effect of a
//! message (ledger entry, status, retry or dead letter) is acknowledged.
//!
//! Per message: decode (undecodable: dead letter); wait for `not_before`
//! (retries); drop if past `expires_at`; skip if the ledger already holds
//! its notification id (a replay, a redelivery after a crash, a duplicate
//! from an aborted transaction), or wait while a copy of it is being sent
//! and skip it once that copy is; hold normal and bulk while urgent messages
//! wait for a slot (not while they are in flight); send through the
//! message's routes (breaker permit, rate limit, failover to a secondary);
//! then record the success in the ledger,
//! or schedule a retry through a tier, or dead-letter it, or record a
//! permanent failure, each with a `DeliveryStatus`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use crate::ledger::Ledger;
use anyhow::Context as _;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use herald_codec::Codec;
use herald_kafka::produce::{acked, send, Out, MAX_RECORD_BYTES};
use herald_kafka::settings::ProducerKind;
use herald_kafka::Topology;
use herald_model::wire::{ChannelMessage, DeliveryStatus, LedgerEntry};
use herald_model::{Channel, ErrorClass, Priority, Stage, StatusKind};
use herald_telemetry::events::{
    BreakerChanged, DeadLettered, DeliveryAttempted, DeliveryOutcome, Rebalanced,
};
use herald_telemetry::shutdown::Shutdown;
use herald_telemetry::{AdminState, Emit, Metrics};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::producer::FutureProducer;
use rdkafka::{ClientContext, TopicPartitionList};
use tokio::sync::mpsc;

use crate::breaker::{Breaker, Permit};
use crate::config::DeliverConfig;
use crate::limiter::TokenBucket;
use crate::providers::{Accepted, Failure, SendError};
use crate::retry::{self, Attempt, Next, TIERS};
use crate::routes::Routes;

/// Header carrying the attempt history (JSON list of [`Attempt`]).
pub const ATTEMPTS_HEADER: &str = "herald.attempts";

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Consumer context: counts rebalances and tells the loop what was revoked.
#[derive(Default)]
pub struct DeliverContext {
    revoked: Mutex<Vec<(String, i32)>>,
}

impl ClientContext for DeliverContext {}

impl ConsumerContext for DeliverContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            Rebalanced {
                kind: "revoke",
                partitions: tpl.count(),
            }
            .emit();
            lock(&self.revoked).extend(
                tpl.elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition())),
            );
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

struct Shared {
    channel: Channel,
    consumer: Arc<StreamConsumer<DeliverContext>>,
    producer: FutureProducer,
    codec: Codec,
    topology: Topology,
    routes: Routes,
    breakers: Mutex<HashMap<String, Breaker>>,
    limiters: HashMap<String, TokenBucket>,
    config: DeliverConfig,
    ledgers: Mutex<HashMap<i32, Arc<tokio::sync::OnceCell<Arc<Ledger>>>>>,
    /// Urgent messages received and not yet started (waiting for a slot
    /// in their partition's window): normal and bulk sends wait while any
    /// are, so urgent ones take the capacity first when it is short.
    urgent_pending: AtomicUsize,
    fatal: Mutex<Option<String>>,
    /// Triggered with `fatal`.
    failed: Shutdown,
    /// Topic names, formatted once.
    ledger_topic: String,
    status_topic: String,
    /// Readiness, and the clock `/healthz` reads: a send and its effects
    /// are one unit of work.
    admin: AdminState,
}

impl Shared {
    fn ch(&self) -> &'static str {
        self.channel.as_str()
    }

    fn fail(&self, why: String) {
        lock(&self.fatal).get_or_insert(why);
        // The consumer's loop stops at once, not at its next record.
        self.failed.trigger();
    }

    fn ledger_topic(&self) -> String {
        self.ledger_topic.clone()
    }

    /// The ledger of `partition`, restored from the ledger topic on first
    /// use (partitions restore concurrently; a second caller waits for the
    /// first's restore).
    async fn ledger(&self, partition: i32) -> anyhow::Result<Arc<Ledger>> {
        let cell = Arc::clone(lock(&self.ledgers).entry(partition).or_default());
        cell.get_or_try_init(|| self.restore_ledger(partition))
            .await
            .map(Arc::clone)
    }

    async fn restore_ledger(&self, partition: i32) -> anyhow::Result<Arc<Ledger>> {
        let ledger = Arc::new(Ledger::default());
        let topic = self.ledger_topic();
        let now = now_ms();
        let mut undecodable = 0_u64;
        let stats = herald_kafka::state::read_to_end(
            &self.config.kafka,
            "deliver-ledger",
            &topic,
            partition,
            self.config.deliver.restore_stall_timeout,
            herald_kafka::state::owned,
            |(key, value)| {
                let Some(id) = key.as_deref().and_then(|k| std::str::from_utf8(k).ok()) else {
                    return;
                };
                match value {
                    None => {
                        ledger.remove(id);
                    }
                    Some(v) => match self.codec.decode_local::<LedgerEntry>(&v) {
                        Ok(e) if e.expires_at > now => ledger.insert(id, e.expires_at),
                        Ok(_) => {}
                        Err(_) => undecodable += 1,
                    },
                }
            },
        )
        .await
        .with_context(|| format!("restoring the ledger {topic}/{partition}"))?;
        tracing::info!(
            partition,
            records = stats.records,
            entries = ledger.len(),
            undecodable,
            "Ledger restored."
        );
        Ok(ledger)
    }

    /// Tombstones expired ledger entries.
    async fn evict(&self) {
        let now = now_ms();
        let topic = self.ledger_topic();
        let ledgers: Vec<(i32, Arc<Ledger>)> = lock(&self.ledgers)
            .iter()
            .filter_map(|(p, cell)| cell.get().map(|l| (*p, Arc::clone(l))))
            .collect();
        for (p, ledger) in ledgers {
            for id in ledger.take_expired(now) {
                let tomb = Out::tombstone(topic.clone(), p, id.into_bytes());
                drop(send(&self.producer, tomb, None));
            }
        }
    }

    /// Whether breakers are per endpoint (a webhook's host) rather than
    /// per provider.
    fn breaker_per_endpoint(&self) -> bool {
        self.channel == Channel::Webhook
    }

    /// The breaker a send through `label` answers to: the provider's, and
    /// for webhooks the endpoint's own (`host:port`), so one failing or
    /// throttling endpoint stops only itself.
    fn breaker_key(&self, label: &str, m: &ChannelMessage) -> String {
        if !self.breaker_per_endpoint() {
            return label.to_string();
        }
        let authority = reqwest::Url::parse(&m.recipient.address)
            .ok()
            .map(|u| {
                format!(
                    "{}:{}",
                    u.host_str().unwrap_or_default(),
                    u.port_or_known_default().unwrap_or_default()
                )
            })
            .unwrap_or_default();
        format!("{label} {authority}")
    }

    fn permit(&self, label: &str, key: &str) -> Permit {
        let mut breakers = lock(&self.breakers);
        let b = breakers
            .entry(key.to_string())
            .or_insert_with(|| Breaker::new(self.config.deliver.breaker));
        let (permit, change) = b.permit(now_ms());
        if let Some(state) = change {
            BreakerChanged {
                channel: self.ch(),
                provider: label,
                state: state.as_str(),
            }
            .emit();
        }
        permit
    }

    fn record(&self, label: &str, key: &str, healthy: bool, retry_after: Option<Duration>) {
        let mut breakers = lock(&self.breakers);
        let b = breakers
            .entry(key.to_string())
            .or_insert_with(|| Breaker::new(self.config.deliver.breaker));
        if let Some(state) = b.record(now_ms(), healthy, retry_after) {
            BreakerChanged {
                channel: self.ch(),
                provider: label,
                state: state.as_str(),
            }
            .emit();
        }
    }

    /// Sends `m` through its routes: breaker permit (waiting while the
    /// last usable route is open), rate limit, failover on a retryable
    /// failure when another route is left.
    /// Returns the route label that accepted it and the provider's answer.
    async fn attempt(&self, m: &ChannelMessage) -> Result<(String, Accepted), SendError> {
        let routes = self.routes.for_message(m);
        let Some(last) = routes.len().checked_sub(1) else {
            return Err(SendError::permanent("none", "no_provider_for_recipient"));
        };
        let mut failed: Option<SendError> = None;
        'routes: for (i, route) in routes.iter().enumerate() {
            let key = self.breaker_key(&route.label, m);
            loop {
                match self.permit(&route.label, &key) {
                    Permit::Go | Permit::Probe => break,
                    Permit::WaitUntil(_) if i < last => continue 'routes,
                    // One endpoint's open breaker (webhooks have one per
                    // host) must not hold a slot of the partition's window
                    // that other tenants' messages need: the message goes
                    // to a retry tier until the breaker lets a probe
                    // through. It counts as an attempt, as the failure the
                    // breaker spares the endpoint would have.
                    Permit::WaitUntil(t) if self.breaker_per_endpoint() => {
                        return Err(SendError {
                            provider: route.provider.name(),
                            failure: Failure::Retryable,
                            reason: "endpoint_breaker_open".into(),
                            status: None,
                            retry_after: Some(Duration::from_millis((t - now_ms()).max(0) as u64)),
                        });
                    }
                    Permit::WaitUntil(t) => {
                        let wait = (t - now_ms()).clamp(10, 1_000) as u64;
                        tokio::time::sleep(Duration::from_millis(wait)).await;
                    }
                }
            }
            if let Some(bucket) = self.limiters.get(&route.label) {
                bucket.acquire().await;
            }
            let started = Instant::now();
            // The provider call is watched by `/healthz`; waiting for an
            // open breaker or the rate limit above is not (a provider
            // outage is not the worker's fault, and a restart would not
            // end it).
            let busy = self.admin.busy();
            let result = route.provider.send(m).await;
            drop(busy);
            let healthy = match &result {
                Ok(_) => true,
                Err(e) => !retry::unhealthy(e.failure),
            };
            self.record(
                &route.label,
                &key,
                healthy,
                result.as_ref().err().and_then(|e| e.retry_after),
            );
            DeliveryAttempted {
                channel: self.ch(),
                provider: &route.label,
                result: result
                    .as_ref()
                    .map_or_else(|e| e.failure.as_str(), |_| "sent"),
                elapsed: started.elapsed(),
                end_to_end: result.is_ok().then(|| {
                    (
                        m.priority.as_str(),
                        Duration::from_millis((now_ms() - m.created_at).max(0) as u64),
                    )
                }),
            }
            .emit();
            match result {
                Ok(a) => return Ok((route.label.clone(), a)),
                Err(e) if e.failure.retry() && i < last => failed = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(failed.unwrap_or_else(|| SendError::permanent("none", "no_provider_for_recipient")))
    }

    fn status(
        &self,
        m: &ChannelMessage,
        status: StatusKind,
        reason: Option<String>,
        provider: Option<&str>,
        provider_message_id: Option<String>,
    ) -> DeliveryStatus {
        DeliveryStatus {
            notification_id: Some(m.notification_id.clone()),
            idempotency_key: Some(m.idempotency_key.clone()),
            tenant: Some(m.tenant.clone()),
            user_id: Some(m.user_id.clone()),
            category: Some(m.category.clone()),
            channel: Some(m.channel),
            stage: Stage::Deliver,
            status,
            reason,
            detail: None,
            provider: provider.map(str::to_string),
            provider_message_id,
            attempt: m.attempt,
            occurred_at: now_ms(),
            trace: m.trace.clone(),
        }
    }

    async fn status_out(&self, s: &DeliveryStatus) -> Result<Out, String> {
        let topic = self.status_topic.clone();
        let payload = self
            .codec
            .encode(&topic, s)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Out {
            topic,
            partition: None,
            key: s.user_id.clone().map(String::into_bytes),
            payload: Some(payload),
            headers: Vec::new(),
        })
    }

    /// Produces `outs` and waits for every acknowledgement.
    /// The dead letter of a message too large to be written again.
    fn too_large(&self, source: (&str, i32, i64), msg: &OwnedMessage, size: usize) -> Out {
        DeadLettered {
            stage: "deliver",
            reason: "too_large_to_retry",
            topic: source.0,
            partition: source.1,
            offset: source.2,
        }
        .emit();
        DeliveryOutcome {
            channel: self.ch(),
            outcome: "dead_lettered",
        }
        .emit();
        Out::dead_letter(
            self.topology
                .named(&format!("{}.dead-letter", self.channel)),
            source,
            msg.key(),
            msg.payload(),
            "too_large_to_retry",
            &format!("its retry would be {size} bytes; a record holds at most {MAX_RECORD_BYTES}"),
        )
    }

    async fn emit_all(&self, outs: Vec<Out>) -> Result<(), String> {
        let sent: Vec<_> = outs
            .into_iter()
            .map(|o| send(&self.producer, o, None))
            .collect();
        for s in sent {
            acked(s).await?;
        }
        Ok(())
    }

    /// Delivers one record; `Err` only when an effect could not be
    /// produced (the offset is then not stored and the worker stops).
    /// A retry still waiting for its time when `stop` comes is left for
    /// the partition's next owner ([`Handled::Left`]).
    async fn deliver(
        &self,
        ledger: &Ledger,
        msg: &OwnedMessage,
        stop: &Shutdown,
    ) -> Result<Handled, String> {
        match self.deliver_one(ledger, msg, stop).await {
            Ok(()) => Ok(Handled::Done),
            Err(Abandon::Left) => Ok(Handled::Left),
            Err(Abandon::Failed(e)) => Err(e),
        }
    }

    async fn deliver_one(
        &self,
        ledger: &Ledger,
        msg: &OwnedMessage,
        stop: &Shutdown,
    ) -> Result<(), Abandon> {
        let source = (msg.topic(), msg.partition(), msg.offset());
        let bytes = msg.payload().unwrap_or_default();
        let mut m: ChannelMessage = match self.codec.decode(bytes).await {
            Ok(m) => m,
            Err(e) if e.class() == ErrorClass::Retryable => return Err(e.to_string().into()),
            Err(e) => {
                DeadLettered {
                    stage: "deliver",
                    reason: e.reason(),
                    topic: source.0,
                    partition: source.1,
                    offset: source.2,
                }
                .emit();
                let dlq = Out::dead_letter(
                    self.topology
                        .named(&format!("{}.dead-letter", self.channel)),
                    source,
                    msg.key(),
                    msg.payload(),
                    e.reason(),
                    &e.to_string(),
                );
                return Ok(self.emit_all(vec![dlq]).await?);
            }
        };
        if let Some(nb) = m.not_before {
            let wait = nb - now_ms();
            if wait > 0 {
                let gauge = Metrics::global()
                    .deliver_retry_waiting
                    .with_label_values(&[self.ch()]);
                gauge.inc();
                let stopped = tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(wait as u64)) => false,
                    () = stop.cancelled() => true,
                };
                gauge.dec();
                if stopped {
                    return Err(Abandon::Left);
                }
            }
        }
        let now = now_ms();
        if m.expires_at.is_some_and(|e| e <= now) {
            DeliveryOutcome {
                channel: self.ch(),
                outcome: "stale",
            }
            .emit();
            let s = self.status(&m, StatusKind::Stale, Some("expired".into()), None, None);
            return Ok(self.emit_all(vec![self.status_out(&s).await?]).await?);
        }
        // Held until this copy's outcome is recorded: a copy of the same id
        // in flight alongside waits for it, then finds it in the ledger.
        let Some(_claim) = ledger.claim(&m.notification_id, now).await else {
            DeliveryOutcome {
                channel: self.ch(),
                outcome: "duplicate",
            }
            .emit();
            return Ok(());
        };
        if m.priority != Priority::Urgent {
            while self.urgent_pending.load(Ordering::SeqCst) > 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let gauge = Metrics::global()
            .deliver_in_flight
            .with_label_values(&[self.ch()]);
        gauge.inc();
        let result = self.attempt(&m).await;
        gauge.dec();
        // Writing the outcome's records: watched by `/healthz`.
        let _busy = self.admin.busy();
        match result {
            Ok((route, accepted)) => {
                let now = now_ms();
                let expires_at = now + self.config.deliver.ledger_retention.as_millis() as i64;
                let entry = LedgerEntry {
                    delivered_at: now,
                    provider: route.clone(),
                    provider_message_id: accepted.provider_message_id.clone(),
                    expires_at,
                };
                let ledger_topic = self.ledger_topic();
                let payload = self
                    .codec
                    .encode(&ledger_topic, &entry)
                    .await
                    .map_err(|e| e.to_string())?;
                let record = Out {
                    topic: ledger_topic,
                    partition: Some(msg.partition()),
                    key: Some(m.notification_id.clone().into_bytes()),
                    payload: Some(payload),
                    headers: Vec::new(),
                };
                let s = self.status(
                    &m,
                    StatusKind::Sent,
                    None,
                    Some(route.as_str()),
                    Some(accepted.provider_message_id),
                );
                self.emit_all(vec![record, self.status_out(&s).await?])
                    .await?;
                ledger.insert(&m.notification_id, expires_at);
                Ok(())
            }
            Err(e) => {
                let mut history: Vec<Attempt> = msg
                    .headers()
                    .and_then(|h| h.iter().find(|h| h.key == ATTEMPTS_HEADER))
                    .and_then(|h| h.value)
                    .and_then(|v| serde_json::from_slice(v).ok())
                    .unwrap_or_default();
                history.push(Attempt::of(&e, m.attempt, now_ms()));
                let history = serde_json::to_vec(&history).unwrap_or_default();
                let mut outs = Vec::new();
                let reason = Some(e.reason.clone());
                let status = match self.config.deliver.retry.next(&m, &e, now_ms()) {
                    Next::Retry {
                        tier,
                        not_before_ms,
                    } => {
                        let s = self.status(
                            &m,
                            StatusKind::RetryScheduled,
                            reason,
                            Some(e.provider),
                            None,
                        );
                        m.attempt += 1;
                        m.not_before = Some(not_before_ms);
                        let topic = self
                            .topology
                            .named(&format!("{}.retry-{tier}", self.channel));
                        let payload = self
                            .codec
                            .encode(&topic, &m)
                            .await
                            .map_err(|e| e.to_string())?;
                        let retry = Out {
                            topic,
                            partition: Some(msg.partition()),
                            key: msg.key().map(<[u8]>::to_vec),
                            payload: Some(payload),
                            headers: vec![(ATTEMPTS_HEADER, history)],
                        };
                        if retry.size() > MAX_RECORD_BYTES {
                            // Too large to write again: it ends here, as a
                            // dead letter that fits, not a failed produce.
                            let status = self.status(
                                &m,
                                StatusKind::DeadLettered,
                                Some("too_large_to_retry".into()),
                                Some(e.provider),
                                None,
                            );
                            let outs = vec![
                                self.too_large(source, msg, retry.size()),
                                self.status_out(&status).await?,
                            ];
                            return Ok(self.emit_all(outs).await?);
                        }
                        outs.push(retry);
                        DeliveryOutcome {
                            channel: self.ch(),
                            outcome: "retry_scheduled",
                        }
                        .emit();
                        s
                    }
                    Next::DeadLetter => {
                        DeadLettered {
                            stage: "deliver",
                            reason: "attempts_exhausted",
                            topic: source.0,
                            partition: source.1,
                            offset: source.2,
                        }
                        .emit();
                        let mut dlq = Out::dead_letter(
                            self.topology
                                .named(&format!("{}.dead-letter", self.channel)),
                            source,
                            msg.key(),
                            msg.payload(),
                            "attempts_exhausted",
                            &e.to_string(),
                        );
                        dlq.headers.push((ATTEMPTS_HEADER, history));
                        outs.push(dlq);
                        DeliveryOutcome {
                            channel: self.ch(),
                            outcome: "dead_lettered",
                        }
                        .emit();
                        self.status(&m, StatusKind::DeadLettered, reason, Some(e.provider), None)
                    }
                    Next::GiveUp => {
                        let (kind, outcome) = if e.failure == Failure::TokenInvalid {
                            (StatusKind::TokenInvalid, "token_invalid")
                        } else {
                            (StatusKind::Failed, "failed")
                        };
                        DeliveryOutcome {
                            channel: self.ch(),
                            outcome,
                        }
                        .emit();
                        self.status(&m, kind, reason, Some(e.provider), None)
                    }
                };
                outs.push(self.status_out(&status).await?);
                Ok(self.emit_all(outs).await?)
            }
        }
    }
}

/// How one record ended in its partition's task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handled {
    /// Every effect acknowledged: its offset may be stored.
    Done,
    /// Left unfinished at a stop (a retry waiting for its time): neither
    /// its offset nor any later one is stored, the next owner reads it.
    Left,
}

/// Why [`Shared::deliver_one`] did not finish a record.
enum Abandon {
    Left,
    Failed(String),
}

impl From<String> for Abandon {
    fn from(e: String) -> Self {
        Self::Failed(e)
    }
}

/// Messages queued for a partition before it stops fetching; it fetches
/// again below half. Pausing purges librdkafka's prefetched messages and
/// resuming waits for a new fetch, so the band is wide; it is capped so a
/// backlog does not become memory (12 partitions x 2,048 queued messages
/// is about 15 MB).
fn queue_high(max_in_flight: usize) -> usize {
    (max_in_flight * 64).clamp(256, 1024)
}

/// A partition's task and its queue.
struct PartitionHandle {
    tx: mpsc::UnboundedSender<OwnedMessage>,
    queued: Arc<AtomicUsize>,
    paused: Arc<AtomicBool>,
    stop: Shutdown,
    task: tokio::task::JoinHandle<()>,
}

/// Stops the tasks of the partitions revoked since the last call. What a
/// task has not started is read again by the partition's next owner.
fn stop_revoked(
    consumer: &StreamConsumer<DeliverContext>,
    workers: &mut HashMap<(String, i32), PartitionHandle>,
) {
    for key in lock(&consumer.context().revoked).drain(..) {
        if let Some(h) = workers.remove(&key) {
            h.stop.trigger();
        }
    }
}

fn tpl_of(topic: &str, partition: i32) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    tpl
}

/// Which partition a task serves.
struct Assigned {
    topic: String,
    partition: i32,
    urgent_lane: bool,
}

async fn partition_task(
    shared: Arc<Shared>,
    assigned: Assigned,
    mut rx: mpsc::UnboundedReceiver<OwnedMessage>,
    queued: Arc<AtomicUsize>,
    paused: Arc<AtomicBool>,
    stop: Shutdown,
) {
    let Assigned {
        topic,
        partition,
        urgent_lane,
    } = assigned;
    let what = format!("{}/{partition}", shared.ledger_topic);
    let restored =
        herald_kafka::consume::restore_patiently(&what, &stop, || shared.ledger(partition)).await;
    let ledger = match restored {
        Ok(l) => l,
        Err(e) => {
            shared.fail(format!("{e:#}"));
            return;
        }
    };
    let max = shared.config.deliver.max_in_flight;
    let mut in_flight = FuturesOrdered::new();
    // Offsets are stored in order: once a record is left for the next
    // owner, no later offset of the partition is stored.
    let mut left_one = false;
    loop {
        let taking = in_flight.len() < max && !stop.is_triggered();
        tokio::select! {
            biased;
            Some((offset, done)) = in_flight.next(), if !in_flight.is_empty() => {
                match done {
                    Err(why) => {
                        shared.fail(format!("{topic}/{partition}@{offset}: {why}"));
                        return;
                    }
                    Ok(Handled::Left) => left_one = true,
                    // Fails harmlessly when the partition was revoked meanwhile.
                    Ok(Handled::Done) if !left_one => {
                        let _ = shared.consumer.store_offset(&topic, partition, offset);
                    }
                    Ok(Handled::Done) => {}
                }
            }
            next = rx.recv(), if taking => {
                let Some(msg) = next else { break };
                // Started: an urgent message in flight holds no lower lane
                // back, only one still waiting for a slot does.
                if urgent_lane {
                    shared.urgent_pending.fetch_sub(1, Ordering::SeqCst);
                }
                let left = queued.fetch_sub(1, Ordering::SeqCst).saturating_sub(1);
                if left < queue_high(max) / 2 && paused.swap(false, Ordering::SeqCst) {
                    let _ = shared.consumer.resume(&tpl_of(&topic, partition));
                }
                let s = Arc::clone(&shared);
                let l = Arc::clone(&ledger);
                let stop = stop.clone();
                in_flight.push_back(
                    async move {
                        let done = s.deliver(&l, &msg, &stop).await;
                        (msg.offset(), done)
                    }
                    .boxed(),
                );
            }
            () = stop.cancelled(), if in_flight.is_empty() => break,
        }
    }
    // Stopped: what was not started is read again by the next owner.
    while let Ok(_unstarted) = rx.try_recv() {
        if urgent_lane {
            shared.urgent_pending.fetch_sub(1, Ordering::SeqCst);
        }
    }
    // What is in flight finishes (a send is not cut off mid-request), and
    // a retry waiting for its time is left; offsets stay in order.
    while let Some((offset, done)) = in_flight.next().await {
        left_one |= !matches!(done, Ok(Handled::Done));
        if !left_one {
            let _ = shared.consumer.store_offset(&topic, partition, offset);
        }
    }
}

/// The topics a channel's worker reads: its lanes and retry tiers.
pub fn input_topics(topology: &Topology, channel: Channel) -> Vec<String> {
    Priority::ALL
        .iter()
        .map(|p| topology.lane(channel, *p))
        .chain(
            TIERS
                .iter()
                .map(|(tier, _)| topology.named(&format!("{channel}.retry-{tier}"))),
        )
        .collect()
}

/// Runs the worker of `config.deliver.channel` until `shutdown`, then
/// finishes what is in flight, stores and commits its offsets.
pub async fn run(
    config: DeliverConfig,
    shutdown: Shutdown,
    admin: AdminState,
) -> anyhow::Result<()> {
    config.deliver.validate().map_err(anyhow::Error::msg)?;
    let channel = config.deliver.channel().map_err(anyhow::Error::msg)?;
    let group = config.deliver.group();
    let topology = Topology::new(config.topics.clone());
    let ledger_topic = topology.named(&format!("{channel}.ledger"));
    let status_topic = topology.named("status");
    let codec = config.codec.build().map_err(anyhow::Error::msg)?;
    let routes = Routes::build(channel, &config.deliver).map_err(anyhow::Error::msg)?;
    let limiters = config
        .deliver
        .rate_limits
        .iter()
        .map(|(label, l)| (label.clone(), TokenBucket::new(l.rate, l.burst)))
        .collect();
    for route in routes.all() {
        BreakerChanged {
            channel: channel.as_str(),
            provider: &route.label,
            state: "closed",
        }
        .emit();
    }
    // 16 MB of prefetch is seconds of work for a worker.
    let consumer = Arc::new(config.kafka.bounded_consumer(
        "deliver",
        &group,
        16 * 1024,
        DeliverContext::default(),
    )?);
    let topics = input_topics(&topology, channel);
    let urgent_topic = topology.lane(channel, Priority::Urgent);
    consumer
        .subscribe(&topics.iter().map(String::as_str).collect::<Vec<_>>())
        .context("subscribing to the channel's lanes and retry tiers")?;
    let producer = config
        .kafka
        .producer("deliver", &ProducerKind::Idempotent)?;
    let evict_every = config.deliver.ledger_evict_interval;
    let shared = Arc::new(Shared {
        channel,
        consumer: Arc::clone(&consumer),
        producer,
        codec,
        topology,
        routes,
        breakers: Mutex::new(HashMap::new()),
        limiters,
        config,
        ledgers: Mutex::new(HashMap::new()),
        urgent_pending: AtomicUsize::new(0),
        fatal: Mutex::new(None),
        failed: Shutdown::new(),
        ledger_topic,
        status_topic,
        admin: admin.clone(),
    });
    tracing::info!(%channel, %group, "Delivery worker started.");
    admin.set_ready(true);
    let high = queue_high(shared.config.deliver.max_in_flight);
    let mut workers: HashMap<(String, i32), PartitionHandle> = HashMap::new();
    let mut evict = tokio::time::interval(evict_every);
    evict.tick().await;
    let outcome: anyhow::Result<()> = async {
        let mut stream = consumer.stream();
        loop {
            stop_revoked(&consumer, &mut workers);
            if let Some(why) = lock(&shared.fatal).clone() {
                anyhow::bail!("delivery stopped: {why}");
            }
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = shared.failed.cancelled() => continue,
                _ = evict.tick() => shared.evict().await,
                next = stream.next() => {
                    let msg = match next {
                        None => return Ok(()),
                        Some(Err(e)) => {
                            herald_kafka::ride_out("deliver", e)
                            .context("consumer error")?;
                            continue;
                        }
                        Some(Ok(m)) => m.detach(),
                    };
                    // The revoke, the new assignment and this record may
                    // all have come while it was awaited: the revoked
                    // partitions' tasks stop first, so a record of the new
                    // assignment goes to a new task and is not dropped
                    // with the old task's unstarted ones.
                    stop_revoked(&consumer, &mut workers);
                    let key = (msg.topic().to_string(), msg.partition());
                    let urgent_lane = key.0 == urgent_topic;
                    let h = workers.entry(key.clone()).or_insert_with(|| {
                        let (tx, rx) = mpsc::unbounded_channel();
                        let queued = Arc::new(AtomicUsize::new(0));
                        let paused = Arc::new(AtomicBool::new(false));
                        let stop = Shutdown::new();
                        let task = tokio::spawn(partition_task(
                            Arc::clone(&shared),
                            Assigned {
                                topic: key.0.clone(),
                                partition: key.1,
                                urgent_lane,
                            },
                            rx,
                            Arc::clone(&queued),
                            Arc::clone(&paused),
                            stop.clone(),
                        ));
                        PartitionHandle { tx, queued, paused, stop, task }
                    });
                    if urgent_lane {
                        shared.urgent_pending.fetch_add(1, Ordering::SeqCst);
                    }
                    let queued = h.queued.fetch_add(1, Ordering::SeqCst) + 1;
                    if h.tx.send(msg).is_err() && urgent_lane {
                        shared.urgent_pending.fetch_sub(1, Ordering::SeqCst);
                    }
                    // A partition that cannot keep up (slow provider, open
                    // breaker) stops fetching; the others go on.
                    if queued > high && !h.paused.swap(true, Ordering::SeqCst) {
                        let _ = consumer.pause(&tpl_of(&key.0, key.1));
                    }
                }
            }
        }
    }
    .await;
    admin.set_ready(false);
    for h in workers.values() {
        h.stop.trigger();
    }
    for (_, h) in workers.drain() {
        drop(h.tx);
        let _ = h.task.await;
    }
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
        tracing::debug!(error = %e, "Final commit.");
    }
    drop(shared);
    outcome
}
