//! The desired-replica signal: enough replicas to absorb arrivals and drain
//! the backlog within the drain target, never more than the partitions.
//!
//! `N* = min(partitions, ceil((arrival + lag / T) / service_rate))`, with
//! `T` the drain target derived from the latency objective, and the load
//! ratio `N* / N` for an HPA `Value` target of 1. The controller smooths the
//! per-replica service rate, scales up at once, and scales down only to the
//! highest recommendation of its stabilisation window and only by a step
//! worth a rebalance.

use std::collections::VecDeque;

/// A consumer group's load at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load {
    /// Partitions of the group's topic(s).
    pub partitions: u32,
    /// Records per second arriving.
    pub arrival: f64,
    /// Records waiting.
    pub lag: f64,
    /// Records per second one replica processes (measured while busy).
    pub service_per_replica: f64,
}

/// `N*`: replicas needed to keep up and drain `lag` within `drain_target_s`.
/// At least 1, at most `partitions`. Without a measured service rate the
/// current count stands (`None`).
pub fn desired_replicas(load: &Load, drain_target_s: f64) -> Option<u32> {
    if load.service_per_replica <= 0.0 || drain_target_s <= 0.0 {
        return None;
    }
    let need = (load.arrival + load.lag / drain_target_s) / load.service_per_replica;
    let n = need.ceil().max(1.0);
    Some((n as u32).min(load.partitions.max(1)))
}

/// The ratio an HPA `Value` target of 1 scales on.
pub fn load_ratio(desired: u32, current: u32) -> f64 {
    f64::from(desired) / f64::from(current.max(1))
}

/// The signal's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// End-to-end latency objective, seconds.
    pub latency_objective_s: f64,
    /// Share of the objective the backlog may take to drain (T = objective x share).
    pub drain_share: f64,
    /// Weight of a new service-rate measurement (exponential smoothing).
    pub smoothing: f64,
    /// Scale-down stabilisation window, seconds.
    pub scale_down_window_s: f64,
    /// Smallest scale-down step, as a share of current replicas (at least
    /// one replica): a rebalance pauses every partition, so tiny steps
    /// down cost more than they save.
    pub min_step_down: f64,
    /// Scale down only to a count that would run at most this busy (a
    /// hysteresis band: up at 100%, down only with headroom), so a load
    /// right at a replica boundary does not flap.
    pub scale_down_utilisation: f64,
    /// Per-replica service rate to assume until one is measured (from the
    /// stage's benchmark); without it the controller holds the current
    /// count until the group has been busy between two polls.
    pub initial_service_rate: Option<f64>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            latency_objective_s: 30.0,
            drain_share: 0.5,
            smoothing: 0.3,
            scale_down_window_s: 120.0,
            min_step_down: 0.2,
            scale_down_utilisation: 0.85,
            initial_service_rate: None,
        }
    }
}

impl Settings {
    /// The drain target T, seconds.
    pub fn drain_target_s(&self) -> f64 {
        self.latency_objective_s * self.drain_share
    }
}

/// Turns load observations into replica recommendations.
#[derive(Debug, Clone)]
pub struct Controller {
    settings: Settings,
    service: Option<f64>,
    /// (time, raw N*) within the stabilisation window.
    history: VecDeque<(f64, u32)>,
}

impl Controller {
    /// A controller with no history.
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            service: settings.initial_service_rate.filter(|s| *s > 0.0),
            history: VecDeque::new(),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The smoothed per-replica service rate, if measured.
    pub fn service_rate(&self) -> Option<f64> {
        self.service
    }

    /// Records one observation at `at_s` (seconds) with `current` replicas;
    /// `service_sample` is a fresh per-replica rate when the group was busy.
    /// Returns the recommended replica count.
    pub fn observe(
        &mut self,
        at_s: f64,
        load: Load,
        service_sample: Option<f64>,
        current: u32,
    ) -> u32 {
        if let Some(s) = service_sample.filter(|s| *s > 0.0) {
            // Slower replicas are believed at once (a slow provider must
            // not be met with too few replicas), faster ones gradually.
            let a = self.settings.smoothing;
            self.service =
                Some(self.service.map_or(
                    s,
                    |old| {
                        if s < old {
                            s
                        } else {
                            a * s + (1.0 - a) * old
                        }
                    },
                ));
        }
        let Some(service) = self.service else {
            return current;
        };
        let load = Load {
            service_per_replica: service,
            ..load
        };
        let Some(raw) = desired_replicas(&load, self.settings.drain_target_s()) else {
            return current;
        };
        // What a scale-down may go to: the same need at the down utilisation.
        let roomy = Load {
            service_per_replica: service * self.settings.scale_down_utilisation,
            ..load
        };
        let down_to = desired_replicas(&roomy, self.settings.drain_target_s()).unwrap_or(raw);
        self.history.push_back((at_s, down_to));
        while self
            .history
            .front()
            .is_some_and(|(t, _)| *t < at_s - self.settings.scale_down_window_s)
        {
            self.history.pop_front();
        }
        if raw >= current {
            return raw;
        }
        // Down: to the highest recommendation of the window, and only by a
        // step worth a rebalance.
        let stable = self
            .history
            .iter()
            .map(|(_, n)| *n)
            .max()
            .unwrap_or(down_to);
        let step = ((f64::from(current) * self.settings.min_step_down).ceil() as u32).max(1);
        if stable < current && current - stable >= step {
            stable
        } else {
            current
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(arrival: f64, lag: f64) -> Load {
        Load {
            partitions: 12,
            arrival,
            lag,
            service_per_replica: 100.0,
        }
    }

    #[test]
    fn desired_covers_arrivals_and_drains_the_backlog() {
        // 250/s arriving, 1500 waiting, 15 s to drain: (250 + 100) / 100.
        assert_eq!(desired_replicas(&load(250.0, 1_500.0), 15.0), Some(4));
        // Never more than the partitions.
        assert_eq!(desired_replicas(&load(10_000.0, 0.0), 15.0), Some(12));
        // At least one.
        assert_eq!(desired_replicas(&load(0.0, 0.0), 15.0), Some(1));
        // No service rate yet: no opinion.
        let unknown = Load {
            service_per_replica: 0.0,
            ..load(1.0, 1.0)
        };
        assert_eq!(desired_replicas(&unknown, 15.0), None);
        assert_eq!(load_ratio(6, 4), 1.5);
    }

    #[test]
    fn a_burst_is_met_at_once_and_left_slowly() {
        let mut c = Controller::new(Settings::default());
        assert_eq!(c.observe(0.0, load(200.0, 0.0), Some(100.0), 2), 2);
        // 10x burst: straight to what it needs.
        assert_eq!(c.observe(30.0, load(1_000.0, 3_000.0), Some(100.0), 2), 12);
        // The burst ends: the window still remembers it.
        assert_eq!(c.observe(60.0, load(200.0, 0.0), Some(100.0), 12), 12);
        // After the window, down in one step, to a count with headroom
        // (200/s at 85% of 100/s per replica: 3).
        assert_eq!(c.observe(200.0, load(200.0, 0.0), Some(100.0), 12), 3);
    }

    #[test]
    fn small_steps_down_are_not_worth_a_rebalance() {
        let mut c = Controller::new(Settings::default());
        // Needs 9 of 10 for long enough: a one-replica step (10%) is below
        // the 20% minimum.
        for t in 0..10 {
            assert_eq!(
                c.observe(f64::from(t) * 30.0, load(850.0, 0.0), Some(100.0), 10),
                10
            );
        }
    }

    #[test]
    fn the_service_rate_is_smoothed() {
        let mut c = Controller::new(Settings::default());
        c.observe(0.0, load(0.0, 0.0), Some(100.0), 1);
        c.observe(30.0, load(0.0, 0.0), Some(200.0), 1);
        assert!((c.service_rate().unwrap() - 130.0).abs() < 1e-9);
        // An idle interval brings no sample and changes nothing.
        c.observe(60.0, load(0.0, 0.0), None, 1);
        assert!((c.service_rate().unwrap() - 130.0).abs() < 1e-9);
    }
}
