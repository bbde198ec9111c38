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
        tracing::warn!(
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
