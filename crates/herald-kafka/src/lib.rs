//! The one place Herald builds Kafka clients.
//!
//! [`KafkaSettings`] holds the typed settings with house defaults, applies
//! authentication, and accepts raw librdkafka overrides only where they do
//! not contradict a typed setting. [`topology`] describes every Herald topic
//! and reconciles it with a live cluster (create missing, report drift, never
//! destroy). [`embedded`] hosts librdkafka's mock cluster in-process for
//! `herald dev`.
//!
//! Nothing outside this crate calls `ClientConfig::new()`. This crate knows no
//! Avro and no notification logic.

pub mod consume;
pub mod embedded;
pub mod produce;
pub mod settings;
pub mod state;
pub mod topology;

pub use consume::{on_consumer_error, ride_out, ConsumerVerdict};
pub use embedded::EmbeddedCluster;
pub use produce::{acked, send, Out};
pub use settings::{KafkaSettings, Security, SecurityProtocol, SettingsError};
pub use topology::{ApplyReport, Drift, LiveTopic, TopicSpec, Topology, TopologySettings};
