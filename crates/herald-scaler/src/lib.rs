//! The Herald scaler's arithmetic: per-partition lag, time lag, arrival and
//! service rates, the desired-replica signal, Burrow-style partition health,
//! and KEDA's Kafka scaler as it computes today (the baseline Herald is
//! measured against).
//!
//! Everything here is a pure function of offsets, timestamps and times, so
//! it is tested on synthetic histories without a broker. Reading offsets
//! from Kafka and exporting metrics belong to the scaler binary, not here.

pub mod health;
pub mod keda;
pub mod lag;
pub mod signal;
pub mod sim;
