//! The scaler loop: observe every configured group on each tick, turn the
//! observation into lag, time lag, rates, health and the signal, export
//! them as metrics and serve the signal at `/scale/{group}` (KEDA's
//! `metrics-api` trigger reads it).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, RwLock};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use herald_telemetry::events::{GroupObservationFailed, GroupObserved, PartitionObserved};
use herald_telemetry::shutdown::Shutdown;
use herald_telemetry::{AdminState, Emit};
use serde::Serialize;

use crate::config::{GroupSettings, ScalerConfig};
use crate::health::{self, Commit};
use crate::lag::time_lag_seconds;
use crate::latency::{self, Buckets, QUANTILES};
use crate::observe::{Observer, Snapshot};
use crate::signal::{load_ratio, Controller, Load, Settings};

/// A group's latest signal, as `/scale/{group}` serves it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Signal {
    /// Consumer group.
    pub group: String,
    /// When it was observed, ms since the epoch.
    pub observed_at_ms: i64,
    /// Partitions of its topics.
    pub partitions: u32,
    /// Members now (`None` when the broker cannot describe groups).
    pub replicas: Option<u32>,
    /// N*: the replicas it needs.
    pub desired_replicas: u32,
    /// N* / N (an HPA `Value` target of 1 scales on it).
    pub load_ratio: f64,
    /// Records waiting.
    pub lag: i64,
    /// Age of the oldest unprocessed record, seconds.
    pub time_lag_seconds: f64,
    /// Records per second arriving.
    pub arrival_rate: Option<f64>,
    /// Records per second one replica processes.
    pub service_rate_per_replica: Option<f64>,
}

/// The latest signal of every group, shared with the HTTP routes.
pub type Signals = Arc<RwLock<BTreeMap<String, Signal>>>;

/// `/scale/{group}`: the latest signal as JSON; 404 for a group the scaler
/// does not watch, 503 before its first observation.
pub fn routes(signals: Signals, watched: Vec<String>) -> Router {
    Router::new()
        .route("/scale/{group}", get(scale))
        .with_state((signals, Arc::new(watched)))
}

async fn scale(
    State((signals, watched)): State<(Signals, Arc<Vec<String>>)>,
    Path(group): Path<String>,
) -> Response {
    if !watched.contains(&group) {
        return (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": "this scaler does not watch that group"})),
        )
            .into_response();
    }
    let latest = signals.read().ok().and_then(|s| s.get(&group).cloned());
    match latest {
        Some(signal) => Json(signal).into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"error": "not observed yet"})),
        )
            .into_response(),
    }
}

/// What the scaler remembers of one group between observations.
pub struct GroupTracker {
    group: String,
    controller: Controller,
    health_window: usize,
    previous: Option<Snapshot>,
    commits: HashMap<(String, i32), VecDeque<Commit>>,
    latency: Option<Buckets>,
}

impl GroupTracker {
    /// A tracker with no history.
    pub fn new(group: &str, settings: Settings, health_window: usize) -> Self {
        Self {
            group: group.to_string(),
            controller: Controller::new(settings),
            health_window,
            previous: None,
            commits: HashMap::new(),
            latency: None,
        }
    }

    /// Folds in one observation (and the stage's latency histogram, when
    /// scraped), exports the metrics and returns the signal.
    ///
    /// The per-replica service rate is the growth of the committed
    /// positions of the partitions busy at both observations, divided by
    /// the replicas that can be working on them (at most one per
    /// partition).
    pub fn update(&mut self, snap: Snapshot, latency: Option<Buckets>) -> Signal {
        let now = snap.at_ms;
        let mut lag = 0;
        let mut time_lag = 0.0_f64;
        for p in &snap.partitions {
            let part_lag = p.view.lag();
            let part_time_lag = time_lag_seconds(&p.view, p.oldest_unread_ts_ms, now);
            lag += part_lag;
            time_lag = time_lag.max(part_time_lag);
            let window = self
                .commits
                .entry((p.topic.clone(), p.partition))
                .or_default();
            // A group with members commits; one without has stopped. When
            // membership is unknown, the group is taken to be running.
            if snap.members != Some(0) {
                window.push_back(Commit {
                    at_ms: now,
                    offset: p.view.position(),
                    lag: part_lag,
                });
                while window.len() > self.health_window {
                    window.pop_front();
                }
            }
            let status = health::evaluate(window.make_contiguous(), now, part_lag);
            PartitionObserved {
                group: &self.group,
                topic: &p.topic,
                partition: p.partition,
                lag: part_lag,
                time_lag_s: part_time_lag,
                status: status.as_str(),
            }
            .emit();
        }
        let (arrival, service_sample) = match &self.previous {
            Some(prev) if snap.at_ms > prev.at_ms => rates(prev, &snap),
            _ => (None, None),
        };
        let current = snap.members.unwrap_or(1).max(1);
        let partitions = snap.partitions.len() as u32;
        let desired = self.controller.observe(
            now as f64 / 1000.0,
            Load {
                partitions,
                arrival: arrival.unwrap_or(0.0),
                lag: lag as f64,
                service_per_replica: 0.0,
            },
            service_sample,
            current,
        );
        let ratio = load_ratio(desired, current);
        let mut quantiles = Vec::new();
        if let Some(b) = latency {
            let recent = self
                .latency
                .as_ref()
                .map_or(b.clone(), |prev| b.since(prev));
            for (label, q) in QUANTILES {
                if let Some(v) = recent.quantile(q) {
                    quantiles.push((label, v));
                }
            }
            self.latency = Some(b);
        }
        GroupObserved {
            group: &self.group,
            partitions,
            lag,
            time_lag_s: time_lag,
            arrival,
            service_per_replica: self.controller.service_rate(),
            replicas: snap.members,
            desired,
            load_ratio: ratio,
            objective_s: self.controller.settings().latency_objective_s,
            latency: &quantiles,
        }
        .emit();
        let signal = Signal {
            group: self.group.clone(),
            observed_at_ms: now,
            partitions,
            replicas: snap.members,
            desired_replicas: desired,
            load_ratio: ratio,
            lag,
            time_lag_seconds: time_lag,
            arrival_rate: arrival,
            service_rate_per_replica: self.controller.service_rate(),
        };
        self.previous = Some(snap);
        signal
    }
}

/// Arrival rate (watermark growth) and a per-replica service sample (only
/// from partitions busy at both ends) between two snapshots.
fn rates(prev: &Snapshot, now: &Snapshot) -> (Option<f64>, Option<f64>) {
    let dt = (now.at_ms - prev.at_ms) as f64 / 1000.0;
    let mut arrived = 0;
    let mut served = 0;
    let mut busy = 0_u32;
    for p in &now.partitions {
        let Some(before) = prev
            .partitions
            .iter()
            .find(|q| q.topic == p.topic && q.partition == p.partition)
        else {
            continue;
        };
        arrived += (p.view.high - before.view.high).max(0);
        if before.view.lag() > 0 && p.view.lag() > 0 {
            busy += 1;
            served += (p.view.position() - before.view.position()).max(0);
        }
    }
    let workers = busy.min(now.members.unwrap_or(busy));
    let service = (workers > 0).then(|| served as f64 / dt / f64::from(workers));
    (Some(arrived as f64 / dt), service)
}

/// Observes every configured group until `shutdown`; ready once every
/// group has been observed.
pub async fn run(
    config: ScalerConfig,
    signals: Signals,
    shutdown: Shutdown,
    admin: AdminState,
) -> anyhow::Result<()> {
    let s = &config.scaler;
    s.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    let client = reqwest::Client::new();
    let mut groups = Vec::new();
    for g in &s.groups {
        let observer = Arc::new(Observer::new(
            &config.kafka,
            &g.group,
            &g.topics,
            s.request_timeout,
        )?);
        let tracker = GroupTracker::new(&g.group, s.signal(g), s.health_window);
        groups.push((g.clone(), observer, tracker));
    }
    tracing::info!(groups = groups.len(), interval = ?s.poll_interval, "Scaler observing.");
    let mut ticker = tokio::time::interval(s.poll_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        for (settings, observer, tracker) in &mut groups {
            let o = Arc::clone(observer);
            let observed = tokio::task::spawn_blocking(move || o.observe()).await;
            match observed {
                Ok(Ok(snap)) => {
                    let latency = scrape_latency(&client, settings, s.request_timeout).await;
                    let signal = tracker.update(snap, latency);
                    if let Ok(mut map) = signals.write() {
                        map.insert(settings.group.clone(), signal);
                    }
                }
                Ok(Err(e)) => GroupObservationFailed {
                    group: &settings.group,
                    error: &format!("{e:#}"),
                }
                .emit(),
                Err(e) => GroupObservationFailed {
                    group: &settings.group,
                    error: &e.to_string(),
                }
                .emit(),
            }
        }
        let observed = signals.read().map_or(0, |m| m.len());
        admin.set_ready(observed == groups.len());
    }
    admin.set_ready(false);
    Ok(())
}

async fn scrape_latency(
    client: &reqwest::Client,
    group: &GroupSettings,
    timeout: std::time::Duration,
) -> Option<Buckets> {
    let name = group.latency_histogram.as_deref()?;
    latency::scrape(client, &group.metrics_urls, name, timeout).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lag::PartitionView;
    use crate::observe::PartitionObs;

    fn snap(at_ms: i64, members: Option<u32>, parts: &[(i64, i64)]) -> Snapshot {
        Snapshot {
            at_ms,
            members,
            partitions: parts
                .iter()
                .enumerate()
                .map(|(i, &(high, committed))| PartitionObs {
                    topic: "t".into(),
                    partition: i as i32,
                    view: PartitionView {
                        low: 0,
                        high,
                        committed: Some(committed),
                        last_record: None,
                    },
                    oldest_unread_ts_ms: Some(at_ms - 4_000),
                })
                .collect(),
        }
    }

    #[test]
    fn rates_come_from_busy_partitions_and_their_replicas() {
        // Two partitions busy at both ends, one idle; three members, of
        // which at most two can be working.
        let a = snap(0, Some(3), &[(1_000, 0), (1_000, 0), (10, 10)]);
        let b = snap(10_000, Some(3), &[(2_000, 500), (2_000, 500), (20, 20)]);
        let (arrival, service) = rates(&a, &b);
        assert_eq!(arrival, Some(201.0));
        assert_eq!(service, Some(50.0));
        // Nobody busy: no service sample.
        let idle = snap(20_000, Some(3), &[(2_000, 2_000), (2_000, 2_000), (20, 20)]);
        assert_eq!(rates(&b, &idle).1, None);
    }

    #[test]
    fn the_tracker_signals_and_a_group_without_members_is_stopped() {
        let settings = Settings {
            initial_service_rate: Some(100.0),
            ..Settings::default()
        };
        let mut t = GroupTracker::new("g-tracker", settings, 10);
        // 3000 waiting, T = 15 s, 100/s per replica: 2, one replica now.
        let s = t.update(snap(0, Some(1), &[(1_500, 0), (1_500, 0)]), None);
        assert_eq!((s.lag, s.desired_replicas, s.load_ratio), (3_000, 2, 2.0));
        assert_eq!(s.time_lag_seconds, 4.0);
        // The member leaves; lag stays; after longer than the window spans,
        // the partitions are STOPped.
        t.update(snap(1_000, Some(1), &[(1_500, 10), (1_500, 10)]), None);
        t.update(snap(2_000, Some(0), &[(1_500, 10), (1_500, 10)]), None);
        t.update(snap(4_000, Some(0), &[(1_500, 10), (1_500, 10)]), None);
        let stop = herald_telemetry::Metrics::global()
            .scaler_partition_health
            .with_label_values(&["g-tracker", "t", "0", "STOP"])
            .get();
        assert_eq!(stop, 1);
    }
}
