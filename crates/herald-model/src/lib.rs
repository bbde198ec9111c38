//! Herald's domain types and pure logic: channels, priorities, the wire
//! records of the Avro contract in `schemas/`, dedup keys and notification
//! ids, and event validation.
//!
//! This crate owns no I/O: no Kafka client, no HTTP, no clock reads (time is
//! passed in). Everything here is deterministic and unit-testable, and every
//! other Herald crate builds on it.

pub mod error_class;
pub mod ids;
pub mod kinds;
pub mod sample;
pub mod secret;
pub mod tracking;
pub mod validate;
pub mod wire;

pub use error_class::ErrorClass;
pub use ids::{DedupKey, NotificationId};
pub use kinds::{Channel, DevicePlatform, Priority, Stage, StatusKind};
pub use secret::Secret;
pub use validate::{InvalidEvent, MAX_FIELD_BYTES};
