//! Internal events: each observable occurrence is a small struct whose
//! `emit()` writes one `tracing` event and updates its collectors, so logs
//! and metrics never disagree.

use crate::metrics::Metrics;

/// An observable occurrence.
pub trait Emit {
    /// Logs and counts it.
    fn emit(self);
}

/// A record could not be decoded.
#[derive(Debug, Clone, Copy)]
pub struct DecodeFailed<'a> {
    /// Stage that read it.
    pub stage: &'static str,
    /// Fixed reason label (from the codec error).
    pub reason: &'static str,
    /// Topic.
    pub topic: &'a str,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

impl Emit for DecodeFailed<'_> {
    fn emit(self) {
        // Debug, not warn: the dead letter that follows every decode failure
        // already logs the record at warn level.
        tracing::debug!(
            stage = self.stage,
            reason = self.reason,
            topic = self.topic,
            partition = self.partition,
            offset = self.offset,
            "Record could not be decoded."
        );
        Metrics::global()
            .decode_failures
            .with_label_values(&[self.stage, self.reason])
            .inc();
    }
}

/// A stage became ready or stopped being ready.
#[derive(Debug, Clone, Copy)]
pub struct ReadinessChanged {
    /// Stage.
    pub stage: &'static str,
    /// New readiness.
    pub ready: bool,
}

impl Emit for ReadinessChanged {
    fn emit(self) {
        tracing::info!(stage = self.stage, ready = self.ready, "Readiness changed.");
        Metrics::global()
            .ready
            .with_label_values(&[self.stage])
            .set(i64::from(self.ready));
    }
}

/// A stage drained on shutdown.
#[derive(Debug, Clone, Copy)]
pub struct Drained {
    /// Stage.
    pub stage: &'static str,
    /// Drain time.
    pub elapsed: std::time::Duration,
    /// Whether the deadline cut the drain short.
    pub timed_out: bool,
}

impl Emit for Drained {
    fn emit(self) {
        if self.timed_out {
            tracing::warn!(
                stage = self.stage,
                elapsed_ms = self.elapsed.as_millis() as u64,
                "Drain deadline reached; stopping."
            );
        } else {
            tracing::info!(
                stage = self.stage,
                elapsed_ms = self.elapsed.as_millis() as u64,
                "Drained."
            );
        }
        Metrics::global()
            .shutdown_drain_seconds
            .with_label_values(&[self.stage])
            .observe(self.elapsed.as_secs_f64());
    }
}

/// A stage's consumer reported an error and the stage goes on (a broker
/// restart, a lost connection: librdkafka reconnects and fetches again).
#[derive(Debug, Clone, Copy)]
pub struct ConsumerErrored<'a> {
    /// Stage.
    pub stage: &'static str,
    /// librdkafka's error code name (a fixed set), for the metric label.
    pub code: &'a str,
    /// The error as librdkafka words it.
    pub error: &'a str,
}

impl Emit for ConsumerErrored<'_> {
    fn emit(self) {
        tracing::warn!(
            stage = self.stage,
            code = self.code,
            error = self.error,
            "Consumer error; the client reconnects by itself and the stage goes on."
        );
        Metrics::global()
            .consumer_errors
            .with_label_values(&[self.stage, self.code])
            .inc();
    }
}

/// The router read an event.
#[derive(Debug, Clone, Copy)]
pub struct EventReceived {
    /// Priority label, or `unknown` when undecodable.
    pub priority: &'static str,
}

impl Emit for EventReceived {
    fn emit(self) {
        Metrics::global()
            .router_events_in
            .with_label_values(&[self.priority])
            .inc();
    }
}

/// The router queued a channel message.
#[derive(Debug, Clone, Copy)]
pub struct MessageQueued {
    /// Channel label.
    pub channel: &'static str,
    /// Priority label.
    pub priority: &'static str,
    /// Event time to now.
    pub latency: std::time::Duration,
}

impl Emit for MessageQueued {
    fn emit(self) {
        let m = Metrics::global();
        m.router_messages_out
            .with_label_values(&[self.channel, self.priority])
            .inc();
        m.router_latency_seconds
            .with_label_values(&[self.priority])
            .observe(self.latency.as_secs_f64());
    }
}

/// The router decided not to send now (duplicate, opted out, deferred, capped, stale, invalid).
#[derive(Debug, Clone, Copy)]
pub struct Suppressed {
    /// Fixed reason label.
    pub reason: &'static str,
}

impl Emit for Suppressed {
    fn emit(self) {
        tracing::debug!(reason = self.reason, "Notification not sent now.");
        Metrics::global()
            .router_suppressed
            .with_label_values(&[self.reason])
            .inc();
    }
}

/// A record went to a dead-letter topic.
#[derive(Debug, Clone, Copy)]
pub struct DeadLettered<'a> {
    /// Stage.
    pub stage: &'static str,
    /// Fixed reason label.
    pub reason: &'static str,
    /// Source topic.
    pub topic: &'a str,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
}

impl Emit for DeadLettered<'_> {
    fn emit(self) {
        tracing::warn!(
            stage = self.stage,
            reason = self.reason,
            topic = self.topic,
            partition = self.partition,
            offset = self.offset,
            "Record dead-lettered."
        );
        Metrics::global()
            .dead_letters
            .with_label_values(&[self.stage, self.reason])
            .inc();
    }
}

/// A partition's state was restored from its state topic.
#[derive(Debug, Clone, Copy)]
pub struct StateRestored {
    /// Partition.
    pub partition: i32,
    /// Live entries after the restore.
    pub entries: usize,
    /// Bytes of the index.
    pub bytes: usize,
    /// State records read.
    pub records: u64,
    /// Time taken.
    pub elapsed: std::time::Duration,
}

impl Emit for StateRestored {
    fn emit(self) {
        tracing::info!(
            partition = self.partition,
            entries = self.entries,
            records = self.records,
            elapsed_ms = self.elapsed.as_millis() as u64,
            "State restored."
        );
        let m = Metrics::global();
        let p = self.partition.to_string();
        m.router_state_entries
            .with_label_values(&[&p])
            .set(self.entries as i64);
        m.router_state_bytes
            .with_label_values(&[&p])
            .set(self.bytes as i64);
        m.router_restore_seconds
            .with_label_values::<&str>(&[])
            .observe(self.elapsed.as_secs_f64());
    }
}

/// Partitions were assigned or revoked.
#[derive(Debug, Clone, Copy)]
pub struct Rebalanced {
    /// `assign` or `revoke`.
    pub kind: &'static str,
    /// Number of partitions.
    pub partitions: usize,
}

impl Emit for Rebalanced {
    fn emit(self) {
        tracing::info!(kind = self.kind, partitions = self.partitions, "Rebalance.");
        Metrics::global()
            .rebalances
            .with_label_values(&[self.kind])
            .inc();
    }
}

/// A router transaction ended (`exactly_once`).
#[derive(Debug, Clone, Copy)]
pub struct TransactionEnded {
    /// `committed`, `aborted` or `failed`.
    pub outcome: &'static str,
    /// Input records it covered.
    pub records: usize,
    /// Time since its begin.
    pub elapsed: std::time::Duration,
}

impl Emit for TransactionEnded {
    fn emit(self) {
        let m = Metrics::global();
        m.router_transactions
            .with_label_values(&[self.outcome])
            .inc();
        if self.outcome == "committed" {
            tracing::debug!(records = self.records, "Transaction committed.");
            m.router_transaction_seconds
                .with_label_values::<&str>(&[])
                .observe(self.elapsed.as_secs_f64());
        } else {
            tracing::warn!(
                outcome = self.outcome,
                records = self.records,
                "Transaction not committed; its input is read again."
            );
        }
    }
}

/// A deferred message was released to its lane.
#[derive(Debug, Clone, Copy)]
pub struct DeferredReleased {
    /// Channel.
    pub channel: &'static str,
    /// How late after its release time it went out.
    pub late: std::time::Duration,
}

impl Emit for DeferredReleased {
    fn emit(self) {
        tracing::debug!(
            channel = self.channel,
            late_ms = self.late.as_millis() as u64,
            "Deferred message released."
        );
        Metrics::global()
            .router_deferred_released
            .with_label_values(&[self.channel])
            .inc();
    }
}

/// The status labels of [`crate::metrics::names::SCALER_PARTITION_HEALTH`].
pub const HEALTH_STATUSES: [&str; 5] = ["OK", "WARN", "STALL", "STOP", "REWIND"];

/// The scaler observed one partition of a consumer group.
#[derive(Debug, Clone, Copy)]
pub struct PartitionObserved<'a> {
    /// Consumer group.
    pub group: &'a str,
    /// Topic.
    pub topic: &'a str,
    /// Partition.
    pub partition: i32,
    /// Records waiting.
    pub lag: i64,
    /// Age of the oldest unprocessed record, seconds.
    pub time_lag_s: f64,
    /// Health, one of [`HEALTH_STATUSES`].
    pub status: &'static str,
}

impl Emit for PartitionObserved<'_> {
    fn emit(self) {
        let m = Metrics::global();
        let partition = self.partition.to_string();
        let labels = [self.group, self.topic, partition.as_str()];
        m.scaler_partition_lag
            .with_label_values(&labels)
            .set(self.lag);
        m.scaler_partition_time_lag
            .with_label_values(&labels)
            .set(self.time_lag_s);
        for status in HEALTH_STATUSES {
            m.scaler_partition_health
                .with_label_values(&[self.group, self.topic, partition.as_str(), status])
                .set(i64::from(status == self.status));
        }
        if self.status != "OK" {
            tracing::debug!(
                group = self.group,
                topic = self.topic,
                partition = self.partition,
                status = self.status,
                lag = self.lag,
                "Partition not OK."
            );
        }
    }
}

/// The scaler observed a consumer group and computed its signal.
#[derive(Debug, Clone, Copy)]
pub struct GroupObserved<'a> {
    /// Consumer group.
    pub group: &'a str,
    /// Partitions of its topics.
    pub partitions: u32,
    /// Records waiting.
    pub lag: i64,
    /// Age of the oldest unprocessed record, seconds.
    pub time_lag_s: f64,
    /// Records per second arriving, once two observations exist.
    pub arrival: Option<f64>,
    /// Smoothed per-replica service rate, once measured.
    pub service_per_replica: Option<f64>,
    /// Members of the group now, when the broker can tell.
    pub replicas: Option<u32>,
    /// The signal N*.
    pub desired: u32,
    /// N* / N.
    pub load_ratio: f64,
    /// Latency objective, seconds.
    pub objective_s: f64,
    /// Stage latency percentiles (quantile label, seconds), when scraped.
    pub latency: &'a [(&'static str, f64)],
}

impl Emit for GroupObserved<'_> {
    fn emit(self) {
        tracing::debug!(
            group = self.group,
            lag = self.lag,
            time_lag_s = self.time_lag_s,
            replicas = ?self.replicas,
            desired = self.desired,
            "Group observed."
        );
        let m = Metrics::global();
        let g = &[self.group][..];
        m.scaler_partitions
            .with_label_values(g)
            .set(i64::from(self.partitions));
        m.scaler_lag.with_label_values(g).set(self.lag);
        m.scaler_time_lag.with_label_values(g).set(self.time_lag_s);
        if let Some(a) = self.arrival {
            m.scaler_arrival_rate.with_label_values(g).set(a);
        }
        if let Some(s) = self.service_per_replica {
            m.scaler_service_rate.with_label_values(g).set(s);
        }
        if let Some(r) = self.replicas {
            m.scaler_replicas.with_label_values(g).set(i64::from(r));
        }
        m.scaler_desired_replicas
            .with_label_values(g)
            .set(i64::from(self.desired));
        m.scaler_load_ratio
            .with_label_values(g)
            .set(self.load_ratio);
        m.scaler_latency_objective
            .with_label_values(g)
            .set(self.objective_s);
        for (q, v) in self.latency {
            m.scaler_stage_latency
                .with_label_values(&[self.group, q])
                .set(*v);
        }
        m.scaler_polls.with_label_values(&[self.group, "ok"]).inc();
    }
}

/// The scaler could not observe a consumer group; its gauges keep their
/// last values and the failure is counted.
#[derive(Debug, Clone, Copy)]
pub struct GroupObservationFailed<'a> {
    /// Consumer group.
    pub group: &'a str,
    /// What went wrong.
    pub error: &'a str,
}

impl Emit for GroupObservationFailed<'_> {
    fn emit(self) {
        tracing::warn!(
            group = self.group,
            error = self.error,
            "Could not observe the group."
        );
        Metrics::global()
            .scaler_polls
            .with_label_values(&[self.group, "failed"])
            .inc();
    }
}

/// One request to a provider ended.
#[derive(Debug, Clone, Copy)]
pub struct DeliveryAttempted<'a> {
    /// Channel.
    pub channel: &'static str,
    /// Provider (route label).
    pub provider: &'a str,
    /// `sent` or the failure class.
    pub result: &'static str,
    /// Request time.
    pub elapsed: std::time::Duration,
    /// On success: event time to acceptance, with the priority label.
    pub end_to_end: Option<(&'static str, std::time::Duration)>,
}

impl Emit for DeliveryAttempted<'_> {
    fn emit(self) {
        tracing::debug!(
            channel = self.channel,
            provider = self.provider,
            result = self.result,
            elapsed_ms = self.elapsed.as_millis() as u64,
            "Delivery attempted."
        );
        let m = Metrics::global();
        m.deliver_attempts
            .with_label_values(&[self.channel, self.provider, self.result])
            .inc();
        m.provider_latency_seconds
            .with_label_values(&[self.channel, self.provider])
            .observe(self.elapsed.as_secs_f64());
        if let Some((priority, e2e)) = self.end_to_end {
            m.delivery_latency_seconds
                .with_label_values(&[self.channel, priority])
                .observe(e2e.as_secs_f64());
        }
    }
}

/// What became of a message that was not sent (or not sent again).
#[derive(Debug, Clone, Copy)]
pub struct DeliveryOutcome {
    /// Channel.
    pub channel: &'static str,
    /// retry_scheduled, dead_lettered, failed, token_invalid, duplicate, stale.
    pub outcome: &'static str,
}

impl Emit for DeliveryOutcome {
    fn emit(self) {
        tracing::debug!(
            channel = self.channel,
            outcome = self.outcome,
            "Delivery outcome."
        );
        Metrics::global()
            .deliver_outcomes
            .with_label_values(&[self.channel, self.outcome])
            .inc();
    }
}

/// A provider's circuit breaker changed state.
#[derive(Debug, Clone, Copy)]
pub struct BreakerChanged<'a> {
    /// Channel.
    pub channel: &'static str,
    /// Provider (route label).
    pub provider: &'a str,
    /// New state: closed, open, half_open.
    pub state: &'static str,
}

/// The state labels of [`crate::metrics::names::BREAKER_STATE`].
pub const BREAKER_STATES: [&str; 3] = ["closed", "open", "half_open"];

impl Emit for BreakerChanged<'_> {
    fn emit(self) {
        if self.state == "open" {
            tracing::warn!(
                channel = self.channel,
                provider = self.provider,
                "Circuit breaker opened."
            );
        } else {
            tracing::info!(
                channel = self.channel,
                provider = self.provider,
                state = self.state,
                "Circuit breaker changed."
            );
        }
        let m = Metrics::global();
        for state in BREAKER_STATES {
            m.breaker_state
                .with_label_values(&[self.channel, self.provider, state])
                .set(i64::from(state == self.state));
        }
    }
}
