//! Test harness shared by every Herald test: brokers on request (durable,
//! fast, transactional) with unique topic and group names and teardown, and
//! a Confluent-compatible registry served on loopback.
//!
//! Test-only: no production crate depends on it.

pub mod registry;

pub use registry::TestRegistry;
pub mod broker;
pub mod measure;
pub mod process;

pub use broker::{BrokerKind, RestartableBroker, TestBroker};
pub use process::Reaped;
