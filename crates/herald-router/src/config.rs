//! The router's configuration (`herald-router --config router.toml`, then
//! `HERALD__SECTION__KEY`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use herald_codec::CodecSettings;
use herald_kafka::{KafkaSettings, TopologySettings};
use herald_telemetry::{AdminSettings, LogSettings};
use serde::Deserialize;

/// Longest dedup window a category may have.
pub const MAX_DEDUP_WINDOW: Duration = Duration::from_secs(90 * 86_400);

/// Everything the router binary reads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterConfig {
    /// Kafka connection.
    pub kafka: KafkaSettings,
    /// Topic names and sizes.
    pub topics: TopologySettings,
    /// Avro framing and registry.
    pub codec: CodecSettings,
    /// Logging.
    pub log: LogSettings,
    /// Admin HTTP server.
    pub admin: AdminSettings,
    /// Routing behaviour.
    pub router: RouterSettings,
}

/// How the router consumes and commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Guarantee {
    /// Idempotent producer; fan-out and state acknowledged before the input
    /// offset is stored. After a crash some records may be emitted twice,
    /// never lost. Works on brokers without transactions.
    #[default]
    AtLeastOnce,
    /// One transactional producer per instance: fan-out, state records and
    /// input offsets commit atomically; a zombie instance is fenced. Needs
    /// a broker with transactions.
    ExactlyOnce,
}

impl Guarantee {
    /// The config value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::AtLeastOnce => "at_least_once",
            Self::ExactlyOnce => "exactly_once",
        }
    }
}

/// The `[router]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterSettings {
    /// Consumer group of the router.
    pub group: String,
    /// Processing guarantee.
    pub guarantee: Guarantee,
    /// Dedup window for categories not listed in `category_windows`.
    #[serde(with = "humantime_serde")]
    pub dedup_window: Duration,
    /// Dedup window per category (at most 90 days).
    #[serde(with = "humantime_serde_map")]
    pub category_windows: BTreeMap<String, Duration>,
    /// Categories that override opt-outs and quiet hours.
    pub critical_categories: Vec<String>,
    /// Templates file (TOML: `[template_id] default_locale = ..., [template_id.locales.<tag>] ...`).
    pub templates: Option<PathBuf>,
    /// Records in flight (sent, not yet acknowledged) before reading pauses.
    pub max_in_flight: usize,
    /// How often expired dedup entries are evicted and tombstoned.
    #[serde(with = "humantime_serde")]
    pub evict_interval: Duration,
    /// `exactly_once`: this instance's stable name (a pod name or ordinal).
    /// The transactional id is `{group}-{instance_id}`; a new process with
    /// the same name fences the old one. Defaults to `$HOSTNAME`.
    pub instance_id: Option<String>,
    /// `exactly_once`: longest time a transaction stays open.
    #[serde(with = "humantime_serde")]
    pub transaction_interval: Duration,
    /// `exactly_once`: input records per transaction at most.
    pub transaction_max_records: usize,
    /// Longest wait between checks for deferred messages that are due.
    #[serde(with = "humantime_serde")]
    pub deferred_tick: Duration,
    /// Deferred messages held in memory at most; past it the deferred
    /// topic is read no further until releases make room.
    pub deferred_max_held: usize,
}

impl Default for RouterSettings {
    fn default() -> Self {
        Self {
            group: "herald-router".into(),
            guarantee: Guarantee::AtLeastOnce,
            dedup_window: Duration::from_secs(86_400),
            category_windows: BTreeMap::new(),
            critical_categories: vec!["password_reset".into(), "security".into()],
            templates: None,
            max_in_flight: 10_000,
            evict_interval: Duration::from_secs(60),
            instance_id: None,
            transaction_interval: Duration::from_millis(100),
            transaction_max_records: 5_000,
            deferred_tick: Duration::from_secs(1),
            deferred_max_held: 1_000_000,
        }
    }
}

impl RouterSettings {
    /// Checks values serde cannot: window bounds.
    pub fn validate(&self) -> Result<(), String> {
        for (category, w) in std::iter::once((&"(default)".to_string(), &self.dedup_window))
            .chain(&self.category_windows)
        {
            if *w > MAX_DEDUP_WINDOW {
                return Err(format!(
                    "router dedup window for {category} is {w:?}, over the 90-day maximum"
                ));
            }
            if w.is_zero() {
                return Err(format!("router dedup window for {category} is zero"));
            }
        }
        if self.max_in_flight == 0 {
            return Err("router.max_in_flight must be at least 1".into());
        }
        if self.transaction_max_records == 0 {
            return Err("router.transaction_max_records must be at least 1".into());
        }
        if self.deferred_max_held == 0 || self.deferred_tick.is_zero() {
            return Err(
                "router.deferred_max_held and router.deferred_tick must be above zero".into(),
            );
        }
        if self.transaction_interval.is_zero() {
            return Err("router.transaction_interval must be above zero".into());
        }
        Ok(())
    }

    /// The dedup window of `category`, in milliseconds.
    pub fn window_ms(&self, category: &str) -> i64 {
        let w = self
            .category_windows
            .get(category)
            .unwrap_or(&self.dedup_window);
        i64::try_from(w.as_millis()).unwrap_or(i64::MAX)
    }

    /// The transactional id for `exactly_once`: `{group}-{instance_id}`,
    /// the instance defaulting to `$HOSTNAME`.
    pub fn transactional_id(&self) -> Result<String, String> {
        let instance = match &self.instance_id {
            Some(i) if !i.trim().is_empty() => i.clone(),
            _ => std::env::var("HOSTNAME")
                .ok()
                .filter(|h| !h.trim().is_empty())
                .ok_or("router.guarantee = \"exactly_once\" needs router.instance_id (or $HOSTNAME): a stable name per instance, so a restarted instance fences its predecessor")?,
        };
        Ok(format!("{}-{instance}", self.group))
    }

    /// Whether `category` overrides opt-outs and quiet hours.
    pub fn is_critical(&self, category: &str) -> bool {
        self.critical_categories.iter().any(|c| c == category)
    }
}

/// `BTreeMap<String, Duration>` with human-readable durations.
mod humantime_serde_map {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, Duration>, D::Error> {
        let raw = BTreeMap::<String, String>::deserialize(d)?;
        raw.into_iter()
            .map(|(k, v)| {
                humantime::parse_duration(&v)
                    .map(|d| (k.clone(), d))
                    .map_err(|e| serde::de::Error::custom(format!("{k}: {e}")))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_configuration_example_is_a_valid_router_config() {
        let readme = include_str!("../../../README.md");
        let section = readme
            .split("## Configuration")
            .nth(1)
            .expect("README has a Configuration section");
        let example = section
            .split("```toml")
            .nth(1)
            .and_then(|s| s.split("```").next())
            .expect("the section has a toml example");
        let config: RouterConfig = toml::from_str(example).expect("the example parses");
        assert_eq!(config.router.guarantee, Guarantee::AtLeastOnce);
        assert_eq!(config.router.transaction_max_records, 5000);
        assert!(config.router.validate().is_ok());
    }

    #[test]
    fn windows_default_override_and_bounds() {
        let mut s = RouterSettings::default();
        assert_eq!(s.window_ms("receipt"), 86_400_000);
        s.category_windows
            .insert("digest".into(), Duration::from_secs(7 * 86_400));
        assert_eq!(s.window_ms("digest"), 7 * 86_400_000);
        assert!(s.validate().is_ok());
        s.category_windows
            .insert("archive".into(), Duration::from_secs(91 * 86_400));
        assert!(s.validate().unwrap_err().contains("archive"));
        assert!(s.is_critical("password_reset"));
    }
}
