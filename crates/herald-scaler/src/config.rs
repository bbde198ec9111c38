//! The scaler's configuration (`herald-scaler --config scaler.toml`, then
//! `HERALD__SECTION__KEY`).

use std::time::Duration;

use herald_kafka::KafkaSettings;
use herald_telemetry::{AdminSettings, LogSettings};
use serde::Deserialize;

use crate::signal::Settings;

/// Everything the scaler binary reads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScalerConfig {
    /// Kafka connection.
    pub kafka: KafkaSettings,
    /// Logging.
    pub log: LogSettings,
    /// Admin HTTP server: `/metrics`, `/healthz`, `/readyz` and `/scale/{group}`.
    pub admin: AdminSettings,
    /// What to observe and how to turn it into a signal.
    pub scaler: ScalerSettings,
}

/// The `[scaler]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScalerSettings {
    /// How often every group is observed (KEDA polls every 30 s; observing
    /// more often gives the rates more points).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Time allowed for one broker request.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// End-to-end latency objective, for groups that set none.
    #[serde(with = "humantime_serde")]
    pub latency_objective: Duration,
    /// Share of the objective a backlog may take to drain (T = objective x share).
    pub drain_share: f64,
    /// Weight of a new service-rate measurement.
    pub smoothing: f64,
    /// Scale-down stabilisation window.
    #[serde(with = "humantime_serde")]
    pub scale_down_window: Duration,
    /// Smallest scale-down step, as a share of current replicas.
    pub min_step_down: f64,
    /// Scale down only to a count that would run at most this busy.
    pub scale_down_utilisation: f64,
    /// Commits per partition the health evaluation looks at (Burrow uses 10).
    pub health_window: usize,
    /// The consumer groups to observe.
    pub groups: Vec<GroupSettings>,
}

impl Default for ScalerSettings {
    fn default() -> Self {
        let s = Settings::default();
        Self {
            poll_interval: Duration::from_secs(15),
            request_timeout: Duration::from_secs(5),
            latency_objective: Duration::from_secs_f64(s.latency_objective_s),
            drain_share: s.drain_share,
            smoothing: s.smoothing,
            scale_down_window: Duration::from_secs_f64(s.scale_down_window_s),
            min_step_down: s.min_step_down,
            scale_down_utilisation: s.scale_down_utilisation,
            health_window: 10,
            groups: Vec::new(),
        }
    }
}

/// One `[[scaler.groups]]` entry: a Herald consumer group (the router,
/// a channel worker, a lane).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSettings {
    /// Consumer group id.
    pub group: String,
    /// Topics the group consumes.
    pub topics: Vec<String>,
    /// Latency objective of this group (else `scaler.latency_objective`).
    #[serde(default, with = "humantime_serde")]
    pub latency_objective: Option<Duration>,
    /// Records per second one replica processes, from the stage's
    /// benchmark: used until the group has been measured busy.
    #[serde(default)]
    pub initial_service_rate: Option<f64>,
    /// The stage's `/metrics` URLs (one per replica, or a Service).
    #[serde(default)]
    pub metrics_urls: Vec<String>,
    /// Name of the stage's latency histogram there, for example
    /// `herald_router_latency_seconds`.
    #[serde(default)]
    pub latency_histogram: Option<String>,
}

impl ScalerSettings {
    /// Checks what serde cannot: every bad value, named by its path.
    pub fn validate(&self) -> Result<(), String> {
        let mut bad = Vec::new();
        if self.poll_interval.is_zero() {
            bad.push("scaler.poll_interval must be above zero".to_string());
        }
        if self.request_timeout.is_zero() {
            bad.push("scaler.request_timeout must be above zero".to_string());
        }
        let share = |name: &str, v: f64, bad: &mut Vec<String>| {
            if v.is_nan() || v <= 0.0 || v > 1.0 {
                bad.push(format!("scaler.{name} must be in (0, 1], not {v}"));
            }
        };
        share("drain_share", self.drain_share, &mut bad);
        share("smoothing", self.smoothing, &mut bad);
        share("min_step_down", self.min_step_down, &mut bad);
        share(
            "scale_down_utilisation",
            self.scale_down_utilisation,
            &mut bad,
        );
        if self.health_window < 2 {
            bad.push("scaler.health_window must be at least 2".to_string());
        }
        if self.groups.is_empty() {
            bad.push(
                "scaler.groups is empty: add a [[scaler.groups]] entry per consumer group".into(),
            );
        }
        for (i, g) in self.groups.iter().enumerate() {
            let at = format!("scaler.groups[{i}]");
            if g.group.trim().is_empty() {
                bad.push(format!("{at}.group is empty"));
            }
            if g.topics.is_empty() {
                bad.push(format!("{at}.topics is empty"));
            }
            if g.latency_objective.is_some_and(|d| d.is_zero()) {
                bad.push(format!("{at}.latency_objective must be above zero"));
            }
            if g.initial_service_rate
                .is_some_and(|r| r.is_nan() || r <= 0.0)
            {
                bad.push(format!("{at}.initial_service_rate must be above zero"));
            }
            if !g.metrics_urls.is_empty() && g.latency_histogram.is_none() {
                bad.push(format!(
                    "{at}.metrics_urls is set without latency_histogram (the histogram to read there)"
                ));
            }
            if self.groups[..i].iter().any(|o| o.group == g.group) {
                bad.push(format!("{at}.group {:?} is listed twice", g.group));
            }
        }
        if bad.is_empty() {
            Ok(())
        } else {
            Err(bad.join("; "))
        }
    }

    /// The controller settings for one group.
    pub fn signal(&self, group: &GroupSettings) -> Settings {
        Settings {
            latency_objective_s: group
                .latency_objective
                .unwrap_or(self.latency_objective)
                .as_secs_f64(),
            drain_share: self.drain_share,
            smoothing: self.smoothing,
            scale_down_window_s: self.scale_down_window.as_secs_f64(),
            min_step_down: self.min_step_down,
            scale_down_utilisation: self.scale_down_utilisation,
            initial_service_rate: group.initial_service_rate,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn a_group_file_parses_and_every_bad_value_is_named() {
        let config: ScalerConfig = toml::from_str(
            r#"
            [scaler]
            poll_interval = "10s"
            latency_objective = "1m"

            [[scaler.groups]]
            group = "herald-router"
            topics = ["herald.notifications"]
            initial_service_rate = 2000.0
            metrics_urls = ["http://router:9600/metrics"]
            latency_histogram = "herald_router_latency_seconds"

            [[scaler.groups]]
            group = "herald-deliver-push"
            topics = ["herald.push.urgent", "herald.push.normal"]
            latency_objective = "10s"
            "#,
        )
        .unwrap();
        let s = &config.scaler;
        assert!(s.validate().is_ok());
        assert_eq!(s.signal(&s.groups[0]).latency_objective_s, 60.0);
        assert_eq!(s.signal(&s.groups[1]).latency_objective_s, 10.0);
        assert_eq!(s.signal(&s.groups[0]).initial_service_rate, Some(2000.0));

        let mut broken = s.clone();
        broken.drain_share = 0.0;
        broken.groups[1].topics.clear();
        broken.groups[1].group = "herald-router".into();
        broken.groups[1].metrics_urls = vec!["http://x/metrics".into()];
        let err = broken.validate().unwrap_err();
        for part in [
            "scaler.drain_share",
            "scaler.groups[1].topics is empty",
            "listed twice",
            "scaler.groups[1].metrics_urls",
        ] {
            assert!(err.contains(part), "{part} not in {err}");
        }
        assert!(ScalerSettings::default()
            .validate()
            .unwrap_err()
            .contains("[[scaler.groups]]"));
    }
}
