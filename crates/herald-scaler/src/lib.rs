//! The Herald scaler: per-partition lag, time lag, arrival and service
//! rates, the desired-replica signal, Burrow-style partition health, and
//! KEDA's Kafka scaler as it computes today (the baseline Herald is
//! measured against).
//!
//! The arithmetic (`lag`, `signal`, `health`, `keda`, `sim`, `latency`) is
//! a pure function of offsets, timestamps and times, tested on synthetic
//! histories without a broker. `observe` reads a group from Kafka and
//! `run` is the binary's loop: metrics and the `/scale/{group}` endpoint.

pub mod config;
pub mod health;
pub mod keda;
pub mod lag;
pub mod latency;
pub mod observe;
pub mod run;
pub mod signal;
pub mod sim;

pub use config::{GroupSettings, ScalerConfig, ScalerSettings};
pub use run::{routes, run, Signal, Signals};
