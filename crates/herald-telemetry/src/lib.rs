//! Runtime shared by every Herald binary: layered configuration, `tracing`
//! set-up, the one Prometheus registry with every metric name, the
//! internal-event structs that update it, the admin HTTP server
//! (`/metrics`, `/healthz`, `/readyz`) and the shutdown supervisor.
//!
//! This crate knows nothing of Kafka or Avro; stage crates report through the
//! events defined here and never register metrics of their own.

pub mod admin;
pub mod config;
pub mod events;
pub mod liveness;
pub mod logging;
pub mod metrics;
pub mod shutdown;

pub use admin::{serve_admin, serve_routes, AdminSettings, AdminState, ADMIN_PORTS};
pub use config::{
    load_config, load_config_noting, load_stage_config, ConfigError, ConfigSource, EXIT_CONFIG,
    SECTIONS,
};
pub use events::Emit;
pub use logging::{init_tracing, LogFormat, LogSettings};
pub use metrics::Metrics;
pub use shutdown::{Outcome, Shutdown, Supervisor};

/// Every Herald binary links this crate, so the allocator is chosen here
/// once: stages allocate small buffers per record, where mimalloc is
/// markedly cheaper than the system allocator.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
