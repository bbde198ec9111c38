//! The one Prometheus registry and every metric Herald exports.
//!
//! Names live here and nowhere else. Labels come from small fixed sets
//! (stage, channel, priority, provider, reason, partition, topic); never a
//! user id, notification id, address or token.

use std::sync::LazyLock;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Metric names (the documented, stable interface for dashboards and alerts).
pub mod names {
    /// Build information; value 1. Labels: version.
    pub const BUILD_INFO: &str = "herald_build_info";
    /// 1 when the stage is ready to serve. Labels: stage.
    pub const READY: &str = "herald_ready";
    /// Records that could not be decoded. Labels: stage, reason.
    pub const DECODE_FAILURES: &str = "herald_decode_failures_total";
    /// Topic drift found by `topics apply`. Labels: setting.
    pub const TOPIC_DRIFT: &str = "herald_topic_drift";
    /// Time a stage took to drain on shutdown, seconds. Labels: stage.
    pub const SHUTDOWN_DRAIN_SECONDS: &str = "herald_shutdown_drain_seconds";
}

/// Every collector, registered once in one registry.
pub struct Metrics {
    /// The registry `/metrics` serves.
    pub registry: Registry,
    /// See [`names::BUILD_INFO`].
    pub build_info: IntGaugeVec,
    /// See [`names::READY`].
    pub ready: IntGaugeVec,
    /// See [`names::DECODE_FAILURES`].
    pub decode_failures: IntCounterVec,
    /// See [`names::TOPIC_DRIFT`].
    pub topic_drift: IntGaugeVec,
    /// See [`names::SHUTDOWN_DRAIN_SECONDS`].
    pub shutdown_drain_seconds: HistogramVec,
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
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        Self {
            registry,
            build_info,
            ready,
            decode_failures,
            topic_drift,
            shutdown_drain_seconds,
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
