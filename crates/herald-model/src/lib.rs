//! Herald's domain types and pure logic: channels, priorities, the wire
//! records of the Avro contract in `schemas/`, dedup keys and notification
//! ids, and event validation.
//!
//! This crate owns no I/O: no Kafka client, no HTTP, no clock reads (time is
//! passed in). Everything here is deterministic and unit-testable, and every
//! other Herald crate builds on it.

pub mod ids;
pub mod kinds;
pub mod validate;
pub mod wire;

pub use ids::{DedupKey, NotificationId};
pub use kinds::{Channel, DevicePlatform, Priority, Stage, StatusKind};
pub use validate::{InvalidEvent, MAX_FIELD_BYTES};
