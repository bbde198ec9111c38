//! The CLI's configuration: the sections every Herald binary shares.

use std::time::Duration;

use herald_codec::CodecSettings;
use herald_kafka::{KafkaSettings, TopologySettings};
use herald_telemetry::{AdminSettings, LogSettings};
use serde::Deserialize;

/// `herald` configuration (file given by `--config`, then `HERALD__...`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CliConfig {
    /// Kafka connection; leave `bootstrap` empty for the embedded cluster.
    pub kafka: KafkaSettings,
    /// Topic names and sizes.
    pub topics: TopologySettings,
    /// Avro framing and registry.
    pub codec: CodecSettings,
    /// Logging.
    pub log: LogSettings,
    /// Admin HTTP server.
    pub admin: AdminSettings,
    /// Router behaviour (`herald dev` runs the router in-process).
    pub router: herald_router::config::RouterSettings,
    /// Local stack options.
    pub dev: DevSettings,
}

impl CliConfig {
    /// The router's configuration: the shared sections plus `[router]`.
    pub fn router_config(&self) -> herald_router::RouterConfig {
        herald_router::RouterConfig {
            kafka: self.kafka.clone(),
            topics: self.topics.clone(),
            codec: self.codec.clone(),
            log: self.log.clone(),
            admin: self.admin.clone(),
            router: self.router.clone(),
        }
    }
}

/// The `[dev]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DevSettings {
    /// Brokers in the embedded cluster (when `kafka.bootstrap` is empty).
    pub embedded_brokers: i32,
    /// Time given to stages to drain on Ctrl-C.
    #[serde(with = "humantime_serde")]
    pub drain: Duration,
    /// How often the in-process scaler observes the router's group.
    #[serde(with = "humantime_serde")]
    pub scaler_poll_interval: Duration,
    /// The provider sandbox's HTTP listener (port 0: any free port).
    pub sandbox_http: std::net::SocketAddr,
    /// The provider sandbox's SMTP listener.
    pub sandbox_smtp: std::net::SocketAddr,
}

impl Default for DevSettings {
    fn default() -> Self {
        Self {
            embedded_brokers: 1,
            drain: Duration::from_secs(10),
            scaler_poll_interval: Duration::from_secs(5),
            sandbox_http: std::net::SocketAddr::from(([127, 0, 0, 1], 9700)),
            sandbox_smtp: std::net::SocketAddr::from(([127, 0, 0, 1], 2525)),
        }
    }
}
