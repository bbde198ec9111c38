//! The Herald router: consumes the notifications topic, deduplicates against
//! a compacted state topic, applies preferences, quiet hours and caps, and
//! fans out one `ChannelMessage` per channel and recipient to per-channel,
//! per-priority lane topics.
//!
//! The decision logic is pure (`dedup`, `policy`, `fanout`, `templates`) and
//! tested without a broker. This crate builds no Kafka client of its own
//! (herald-kafka does) and registers no metric (herald-telemetry does); it
//! never depends on another stage crate.

pub mod config;
pub mod dedup;
pub mod deferred;
pub mod fanout;
mod partitioned;
pub mod policy;
pub mod process;
pub mod run;
pub mod templates;

pub use config::RouterConfig;
pub use deferred::Clock;
pub use run::{run, run_with_clock};
