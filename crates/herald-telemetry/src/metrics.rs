//! The one Prometheus registry and every metric Herald exports.
//!
//! Names live here and nowhere else. Labels come from small fixed sets
//! (stage, channel, priority, provider, reason, partition, topic); never a
//! user id, notification id, address or token.

use std::sync::LazyLock;

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Metric names (the documented, stable interface for dashboards and alerts).
pub mod names {
    /// Build information; value 1. Labels: version.
    pub const BUILD_INFO: &str = "herald_build_info";
    /// 1 when the stage is ready to serve. Labels: stage.
    pub const READY: &str = "herald_ready";
    /// Age of the oldest unit of work in progress, seconds (0 when idle);
    /// `/healthz` fails past `admin.stall_after`. Labels: stage.
    pub const OLDEST_WORK_SECONDS: &str = "herald_oldest_work_seconds";
    /// Records that could not be decoded. Labels: stage, reason.
    pub const DECODE_FAILURES: &str = "herald_decode_failures_total";
    /// Topic drift found by `topics apply`. Labels: setting.
    pub const TOPIC_DRIFT: &str = "herald_topic_drift";
    /// Time a stage took to drain on shutdown, seconds. Labels: stage.
    pub const SHUTDOWN_DRAIN_SECONDS: &str = "herald_shutdown_drain_seconds";
    /// Events the router read. Labels: priority (`unknown` when undecodable).
    pub const ROUTER_EVENTS_IN: &str = "herald_router_events_in_total";
    /// Channel messages the router produced. Labels: channel, priority.
    pub const ROUTER_MESSAGES_OUT: &str = "herald_router_messages_out_total";
    /// Decisions not to send now. Labels: reason.
    pub const ROUTER_SUPPRESSED: &str = "herald_router_suppressed_total";
    /// Records sent to the dead-letter topic. Labels: stage, reason.
    pub const DEAD_LETTERS: &str = "herald_dead_letters_total";
    /// Event time to fan-out, seconds. Labels: priority.
    pub const ROUTER_LATENCY_SECONDS: &str = "herald_router_latency_seconds";
    /// Live dedup entries held. Labels: partition.
    pub const ROUTER_STATE_ENTRIES: &str = "herald_router_state_entries";
    /// Bytes of the dedup index. Labels: partition.
    pub const ROUTER_STATE_BYTES: &str = "herald_router_state_bytes";
    /// Time to restore one partition's state, seconds.
    pub const ROUTER_RESTORE_SECONDS: &str = "herald_router_restore_seconds";
    /// Partition assignments and revocations. Labels: kind (assign, revoke).
    pub const REBALANCES: &str = "herald_rebalances_total";
    /// Errors a stage's consumer reported and the stage rode out (librdkafka
    /// reconnects by itself). Labels: stage, code (librdkafka's error code).
    pub const CONSUMER_ERRORS: &str = "herald_consumer_errors_total";
    /// Router transactions ended (`exactly_once`). Labels: outcome
    /// (committed, aborted, failed).
    pub const ROUTER_TRANSACTIONS: &str = "herald_router_transactions_total";
    /// Time from a transaction's begin to its commit.
    pub const ROUTER_TRANSACTION_SECONDS: &str = "herald_router_transaction_seconds";
    /// Messages held in the deferred topic until their quiet hours end.
    pub const ROUTER_DEFERRED_HELD: &str = "herald_router_deferred_held";
    /// Deferred messages released to their lanes. Labels: channel.
    pub const ROUTER_DEFERRED_RELEASED: &str = "herald_router_deferred_released_total";
    /// Records waiting per partition (high watermark, or one past the last
    /// data record, minus the committed offset). Labels: group, topic, partition.
    pub const SCALER_PARTITION_LAG: &str = "herald_scaler_partition_lag";
    /// Age of the oldest unprocessed record per partition, seconds (from
    /// its timestamp, exact). Labels: group, topic, partition.
    pub const SCALER_PARTITION_TIME_LAG: &str = "herald_scaler_partition_time_lag_seconds";
    /// Burrow-style partition health: 1 for the current status, 0 for the
    /// others. Labels: group, topic, partition, status (OK, WARN, STALL, STOP, REWIND).
    pub const SCALER_PARTITION_HEALTH: &str = "herald_scaler_partition_health";
    /// Records waiting in the group. Labels: group.
    pub const SCALER_LAG: &str = "herald_scaler_lag";
    /// The group's oldest unprocessed record, seconds. Labels: group.
    pub const SCALER_TIME_LAG: &str = "herald_scaler_time_lag_seconds";
    /// Records per second arriving (watermark growth). Labels: group.
    pub const SCALER_ARRIVAL_RATE: &str = "herald_scaler_arrival_rate";
    /// Records per second one replica processes, smoothed, measured only
    /// while the group is busy. Labels: group.
    pub const SCALER_SERVICE_RATE: &str = "herald_scaler_service_rate_per_replica";
    /// Partitions of the group's topics. Labels: group.
    pub const SCALER_PARTITIONS: &str = "herald_scaler_partitions";
    /// Members of the consumer group now (the running replicas). Labels: group.
    pub const SCALER_REPLICAS: &str = "herald_scaler_replicas";
    /// The signal N*: replicas the group needs. Labels: group.
    pub const SCALER_DESIRED_REPLICAS: &str = "herald_scaler_desired_replicas";
    /// N* / N, for an HPA `Value` target of 1. Labels: group.
    pub const SCALER_LOAD_RATIO: &str = "herald_scaler_load_ratio";
    /// The group's latency objective, seconds (alerts compare time lag to it). Labels: group.
    pub const SCALER_LATENCY_OBJECTIVE: &str = "herald_scaler_latency_objective_seconds";
    /// Stage latency percentiles read from the stage's own histogram,
    /// seconds. Labels: group, quantile (0.5, 0.95, 0.99).
    pub const SCALER_STAGE_LATENCY: &str = "herald_scaler_stage_latency_seconds";
    /// Observations of a group. Labels: group, outcome (ok, failed).
    pub const SCALER_POLLS: &str = "herald_scaler_polls_total";
    /// End-to-end latency: event time to the provider's acceptance,
    /// seconds; the delivery SLO and its burn-rate alerts read it.
    /// Labels: channel, priority.
    pub const DELIVERY_LATENCY_SECONDS: &str = "herald_delivery_latency_seconds";
    /// Circuit breaker per provider: 1 for the current state, 0 for the
    /// others. Labels: channel, provider, state (closed, open, half_open).
    pub const BREAKER_STATE: &str = "herald_breaker_state";
    /// Delivery attempts by outcome. Labels: channel, provider, result
    /// (sent, retryable, rate_limited, permanent, token_invalid).
    pub const DELIVER_ATTEMPTS: &str = "herald_deliver_attempts_total";
    /// Provider request time, seconds. Labels: channel, provider.
    pub const PROVIDER_LATENCY_SECONDS: &str = "herald_provider_latency_seconds";
    /// Messages being delivered now (taken, not yet finished). Labels: channel.
    pub const DELIVER_IN_FLIGHT: &str = "herald_deliver_in_flight";
    /// Retried messages waiting for their `not_before`. Labels: channel.
    pub const DELIVER_RETRY_WAITING: &str = "herald_deliver_retry_waiting";
    /// Outcomes after the last attempt. Labels: channel, outcome
    /// (retry_scheduled, dead_lettered, failed, token_invalid, duplicate, stale).
    pub const DELIVER_OUTCOMES: &str = "herald_deliver_outcomes_total";
}

/// Every collector, registered once in one registry.
pub struct Metrics {
    /// The registry `/metrics` serves.
    pub registry: Registry,
    /// See [`names::BUILD_INFO`].
    pub build_info: IntGaugeVec,
    /// See [`names::READY`].
    pub ready: IntGaugeVec,
    /// See [`names::OLDEST_WORK_SECONDS`].
    pub oldest_work_seconds: GaugeVec,
    /// See [`names::DECODE_FAILURES`].
    pub decode_failures: IntCounterVec,
    /// See [`names::TOPIC_DRIFT`].
    pub topic_drift: IntGaugeVec,
    /// See [`names::SHUTDOWN_DRAIN_SECONDS`].
    pub shutdown_drain_seconds: HistogramVec,
    /// See [`names::ROUTER_EVENTS_IN`].
    pub router_events_in: IntCounterVec,
    /// See [`names::ROUTER_MESSAGES_OUT`].
    pub router_messages_out: IntCounterVec,
    /// See [`names::ROUTER_SUPPRESSED`].
    pub router_suppressed: IntCounterVec,
    /// See [`names::DEAD_LETTERS`].
    pub dead_letters: IntCounterVec,
    /// See [`names::ROUTER_LATENCY_SECONDS`].
    pub router_latency_seconds: HistogramVec,
    /// See [`names::ROUTER_STATE_ENTRIES`].
    pub router_state_entries: IntGaugeVec,
    /// See [`names::ROUTER_STATE_BYTES`].
    pub router_state_bytes: IntGaugeVec,
    /// See [`names::ROUTER_RESTORE_SECONDS`].
    pub router_restore_seconds: HistogramVec,
    /// See [`names::REBALANCES`].
    pub rebalances: IntCounterVec,
    /// See [`names::CONSUMER_ERRORS`].
    pub consumer_errors: IntCounterVec,
    /// See [`names::ROUTER_TRANSACTIONS`].
    pub router_transactions: IntCounterVec,
    /// See [`names::ROUTER_TRANSACTION_SECONDS`].
    pub router_transaction_seconds: HistogramVec,
    /// See [`names::ROUTER_DEFERRED_HELD`].
    pub router_deferred_held: IntGaugeVec,
    /// See [`names::ROUTER_DEFERRED_RELEASED`].
    pub router_deferred_released: IntCounterVec,
    /// See [`names::SCALER_PARTITION_LAG`].
    pub scaler_partition_lag: IntGaugeVec,
    /// See [`names::SCALER_PARTITION_TIME_LAG`].
    pub scaler_partition_time_lag: GaugeVec,
    /// See [`names::SCALER_PARTITION_HEALTH`].
    pub scaler_partition_health: IntGaugeVec,
    /// See [`names::SCALER_LAG`].
    pub scaler_lag: IntGaugeVec,
    /// See [`names::SCALER_TIME_LAG`].
    pub scaler_time_lag: GaugeVec,
    /// See [`names::SCALER_ARRIVAL_RATE`].
    pub scaler_arrival_rate: GaugeVec,
    /// See [`names::SCALER_SERVICE_RATE`].
    pub scaler_service_rate: GaugeVec,
    /// See [`names::SCALER_PARTITIONS`].
    pub scaler_partitions: IntGaugeVec,
    /// See [`names::SCALER_REPLICAS`].
    pub scaler_replicas: IntGaugeVec,
    /// See [`names::SCALER_DESIRED_REPLICAS`].
    pub scaler_desired_replicas: IntGaugeVec,
    /// See [`names::SCALER_LOAD_RATIO`].
    pub scaler_load_ratio: GaugeVec,
    /// See [`names::SCALER_LATENCY_OBJECTIVE`].
    pub scaler_latency_objective: GaugeVec,
    /// See [`names::SCALER_STAGE_LATENCY`].
    pub scaler_stage_latency: GaugeVec,
    /// See [`names::SCALER_POLLS`].
    pub scaler_polls: IntCounterVec,
    /// See [`names::DELIVERY_LATENCY_SECONDS`].
    pub delivery_latency_seconds: HistogramVec,
    /// See [`names::BREAKER_STATE`].
    pub breaker_state: IntGaugeVec,
    /// See [`names::DELIVER_ATTEMPTS`].
    pub deliver_attempts: IntCounterVec,
    /// See [`names::PROVIDER_LATENCY_SECONDS`].
    pub provider_latency_seconds: HistogramVec,
    /// See [`names::DELIVER_IN_FLIGHT`].
    pub deliver_in_flight: IntGaugeVec,
    /// See [`names::DELIVER_RETRY_WAITING`].
    pub deliver_retry_waiting: IntGaugeVec,
    /// See [`names::DELIVER_OUTCOMES`].
    pub deliver_outcomes: IntCounterVec,
}

static GLOBAL: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    /// The process-wide metrics.
    pub fn global() -> &'static Metrics {
        &GLOBAL
    }

    fn new() -> Self {
        let registry = Registry::new();
        let build_info = register(
            &registry,
            IntGaugeVec::new(
                opts(names::BUILD_INFO, "Herald build; value 1."),
                &["version"],
            ),
        );
        let ready = register(
            &registry,
            IntGaugeVec::new(opts(names::READY, "1 when the stage is ready."), &["stage"]),
        );
        let oldest_work_seconds = register(
            &registry,
            GaugeVec::new(
                opts(
                    names::OLDEST_WORK_SECONDS,
                    "Age of the oldest unit of work in progress, seconds.",
                ),
                &["stage"],
            ),
        );
        let decode_failures = register(
            &registry,
            IntCounterVec::new(
                opts(names::DECODE_FAILURES, "Records that could not be decoded."),
                &["stage", "reason"],
            ),
        );
        let topic_drift = register(
            &registry,
            IntGaugeVec::new(
                opts(
                    names::TOPIC_DRIFT,
                    "Topics whose live setting differs from the topology.",
                ),
                &["setting"],
            ),
        );
        let shutdown_drain_seconds = register(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    names::SHUTDOWN_DRAIN_SECONDS,
                    "Time taken to drain on shutdown.",
                )
                .buckets(vec![0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
                &["stage"],
            ),
        );
        let counter = |name: &str, help: &str, labels: &[&str]| {
            register(&registry, IntCounterVec::new(opts(name, help), labels))
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            register(&registry, IntGaugeVec::new(opts(name, help), labels))
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            register(
                &registry,
                HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels),
            )
        };
        let latency_buckets = vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        ];
        let router_events_in = counter(
            names::ROUTER_EVENTS_IN,
            "Events read by the router.",
            &["priority"],
        );
        let router_messages_out = counter(
            names::ROUTER_MESSAGES_OUT,
            "Channel messages produced by the router.",
            &["channel", "priority"],
        );
        let router_suppressed = counter(
            names::ROUTER_SUPPRESSED,
            "Decisions not to send now.",
            &["reason"],
        );
        let dead_letters = counter(
            names::DEAD_LETTERS,
            "Records sent to a dead-letter topic.",
            &["stage", "reason"],
        );
        let router_latency_seconds = histogram(
            names::ROUTER_LATENCY_SECONDS,
            "Event time to fan-out.",
            &["priority"],
            latency_buckets.clone(),
        );
        let router_state_entries = gauge(
            names::ROUTER_STATE_ENTRIES,
            "Live dedup entries.",
            &["partition"],
        );
        let router_state_bytes = gauge(
            names::ROUTER_STATE_BYTES,
            "Bytes of the dedup index.",
            &["partition"],
        );
        let router_restore_seconds = histogram(
            names::ROUTER_RESTORE_SECONDS,
            "Time to restore one partition's state.",
            &[],
            vec![0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0],
        );
        let rebalances = counter(
            names::REBALANCES,
            "Partition assignments and revocations.",
            &["kind"],
        );
        let consumer_errors = counter(
            names::CONSUMER_ERRORS,
            "Consumer errors a stage rode out, by librdkafka error code.",
            &["stage", "code"],
        );
        let router_transactions = counter(
            names::ROUTER_TRANSACTIONS,
            "Router transactions ended, by outcome.",
            &["outcome"],
        );
        let router_transaction_seconds = histogram(
            names::ROUTER_TRANSACTION_SECONDS,
            "Time from a router transaction's begin to its commit.",
            &[],
            vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
        );
        let router_deferred_held = gauge(
            names::ROUTER_DEFERRED_HELD,
            "Deferred messages held until their quiet hours end.",
            &["partition"],
        );
        let router_deferred_released = counter(
            names::ROUTER_DEFERRED_RELEASED,
            "Deferred messages released to their lanes.",
            &["channel"],
        );
        let fgauge = |name: &str, help: &str, labels: &[&str]| {
            register(&registry, GaugeVec::new(opts(name, help), labels))
        };
        let per_partition = &["group", "topic", "partition"][..];
        let scaler_partition_lag = gauge(
            names::SCALER_PARTITION_LAG,
            "Records waiting per partition.",
            per_partition,
        );
        let scaler_partition_time_lag = fgauge(
            names::SCALER_PARTITION_TIME_LAG,
            "Age of the oldest unprocessed record per partition.",
            per_partition,
        );
        let scaler_partition_health = gauge(
            names::SCALER_PARTITION_HEALTH,
            "Partition health: 1 for the current status.",
            &["group", "topic", "partition", "status"],
        );
        let scaler_lag = gauge(
            names::SCALER_LAG,
            "Records waiting in the group.",
            &["group"],
        );
        let scaler_time_lag = fgauge(
            names::SCALER_TIME_LAG,
            "Age of the group's oldest unprocessed record.",
            &["group"],
        );
        let scaler_arrival_rate = fgauge(
            names::SCALER_ARRIVAL_RATE,
            "Records per second arriving.",
            &["group"],
        );
        let scaler_service_rate = fgauge(
            names::SCALER_SERVICE_RATE,
            "Records per second one replica processes (measured while busy).",
            &["group"],
        );
        let scaler_partitions = gauge(
            names::SCALER_PARTITIONS,
            "Partitions of the group's topics.",
            &["group"],
        );
        let scaler_replicas = gauge(
            names::SCALER_REPLICAS,
            "Members of the consumer group.",
            &["group"],
        );
        let scaler_desired_replicas = gauge(
            names::SCALER_DESIRED_REPLICAS,
            "Replicas the group needs (N*).",
            &["group"],
        );
        let scaler_load_ratio = fgauge(
            names::SCALER_LOAD_RATIO,
            "Desired over current replicas.",
            &["group"],
        );
        let scaler_latency_objective = fgauge(
            names::SCALER_LATENCY_OBJECTIVE,
            "The group's latency objective.",
            &["group"],
        );
        let scaler_stage_latency = fgauge(
            names::SCALER_STAGE_LATENCY,
            "Stage latency percentiles from the stage's histogram.",
            &["group", "quantile"],
        );
        let scaler_polls = counter(
            names::SCALER_POLLS,
            "Observations of a consumer group, by outcome.",
            &["group", "outcome"],
        );
        let delivery_latency_seconds = histogram(
            names::DELIVERY_LATENCY_SECONDS,
            "Event time to the provider's acceptance.",
            &["channel", "priority"],
            latency_buckets.clone(),
        );
        let breaker_state = gauge(
            names::BREAKER_STATE,
            "Circuit breaker per provider: 1 for the current state.",
            &["channel", "provider", "state"],
        );
        let deliver_attempts = counter(
            names::DELIVER_ATTEMPTS,
            "Delivery attempts by outcome.",
            &["channel", "provider", "result"],
        );
        let provider_latency_seconds = histogram(
            names::PROVIDER_LATENCY_SECONDS,
            "Provider request time.",
            &["channel", "provider"],
            vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ],
        );
        let deliver_in_flight = gauge(
            names::DELIVER_IN_FLIGHT,
            "Messages being delivered now.",
            &["channel"],
        );
        let deliver_retry_waiting = gauge(
            names::DELIVER_RETRY_WAITING,
            "Retried messages waiting for their time.",
            &["channel"],
        );
        let deliver_outcomes = counter(
            names::DELIVER_OUTCOMES,
            "Outcomes other than sent.",
            &["channel", "outcome"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        Self {
            registry,
            build_info,
            ready,
            oldest_work_seconds,
            decode_failures,
            topic_drift,
            shutdown_drain_seconds,
            router_events_in,
            router_messages_out,
            router_suppressed,
            dead_letters,
            router_latency_seconds,
            router_state_entries,
            router_state_bytes,
            router_restore_seconds,
            rebalances,
            consumer_errors,
            router_transactions,
            router_transaction_seconds,
            router_deferred_held,
            router_deferred_released,
            scaler_partition_lag,
            scaler_partition_time_lag,
            scaler_partition_health,
            scaler_lag,
            scaler_time_lag,
            scaler_arrival_rate,
            scaler_service_rate,
            scaler_partitions,
            scaler_replicas,
            scaler_desired_replicas,
            scaler_load_ratio,
            scaler_latency_objective,
            scaler_stage_latency,
            scaler_polls,
            delivery_latency_seconds,
            breaker_state,
            deliver_attempts,
            provider_latency_seconds,
            deliver_in_flight,
            deliver_retry_waiting,
            deliver_outcomes,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help)
}

/// Registers a collector whose definition is fixed at compile time. Both
/// steps can only fail on a programming error (bad name, duplicate), which
/// the unit test below catches; a failure leaves the metric unregistered
/// rather than aborting a running stage.
fn register<C: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    made: prometheus::Result<C>,
) -> C {
    match made {
        Ok(c) => {
            if let Err(e) = registry.register(Box::new(c.clone())) {
                tracing::error!(error = %e, "Metric registration failed.");
            }
            c
        }
        Err(e) => panic!("invalid metric definition: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_registers_and_renders() {
        let m = Metrics::global();
        m.decode_failures
            .with_label_values(&["router", "malformed"])
            .inc();
        m.shutdown_drain_seconds
            .with_label_values(&["router"])
            .observe(0.2);
        m.ready.with_label_values(&["router"]).set(1);
        m.topic_drift.with_label_values(&["partitions"]).set(0);
        let text = m.render();
        for name in [
            names::BUILD_INFO,
            names::READY,
            names::DECODE_FAILURES,
            names::TOPIC_DRIFT,
            names::SHUTDOWN_DRAIN_SECONDS,
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }
}
