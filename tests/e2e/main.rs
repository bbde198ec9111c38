//! End-to-end tests: Herald against a real broker and other-language clients.

// Tests fail loudly on unexpected errors: that is their job.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod apache_kafka;
mod chaos;
mod deploy;
mod partitioning;
mod python_producer;
mod stages;
