//! KEDA's Kafka scaler and the Kubernetes HPA as they compute today: the
//! baseline Herald's signal is compared with.
//!
//! Per partition, lag is the latest offset minus the committed one; a
//! partition without a committed offset counts as the whole partition
//! (`offsetResetPolicy: earliest`) or as 1 (`latest`, 0 with
//! `scaleToZeroOnInvalidOffset`). Unless `allowIdleConsumers` is set, the
//! total is capped at partitions x `lagThreshold`. The HPA then targets an
//! average of `lagThreshold` per replica: it leaves the replica count alone
//! while the usage ratio is within its tolerance (10%), else asks for
//! `ceil(total / lagThreshold)`, and scales down only to the highest
//! recommendation of the stabilisation window (300 s).

use crate::lag::PartitionView;

/// A KEDA Kafka trigger plus the HPA behaviour around it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Keda {
    /// `lagThreshold` (default 10).
    pub lag_threshold: f64,
    /// `offsetResetPolicy: latest` (else earliest).
    pub reset_latest: bool,
    /// `scaleToZeroOnInvalidOffset`.
    pub scale_to_zero_on_invalid_offset: bool,
    /// `allowIdleConsumers`.
    pub allow_idle_consumers: bool,
    /// HPA tolerance (0.1).
    pub tolerance: f64,
    /// `minReplicaCount`.
    pub min_replicas: u32,
    /// `maxReplicaCount`.
    pub max_replicas: u32,
}

impl Default for Keda {
    fn default() -> Self {
        Self {
            lag_threshold: 10.0,
            reset_latest: true,
            scale_to_zero_on_invalid_offset: false,
            allow_idle_consumers: false,
            tolerance: 0.1,
            min_replicas: 1,
            max_replicas: 100,
        }
    }
}

impl Keda {
    /// KEDA's lag for one partition (no marker awareness: a trailing commit
    /// marker counts as one record of lag).
    pub fn partition_lag(&self, p: &PartitionView) -> i64 {
        match p.committed {
            None if self.reset_latest => i64::from(!self.scale_to_zero_on_invalid_offset),
            None => p.high,
            Some(c) => (p.high - c).max(0),
        }
    }

    /// The metric KEDA reports: total lag, capped unless idle consumers
    /// are allowed.
    pub fn metric(&self, partitions: &[PartitionView]) -> f64 {
        let total: i64 = partitions.iter().map(|p| self.partition_lag(p)).sum();
        let total = total as f64;
        let cap = partitions.len() as f64 * self.lag_threshold;
        if !self.allow_idle_consumers && total > cap {
            cap
        } else {
            total
        }
    }

    /// The HPA's recommendation for `metric` with `current` replicas
    /// (before stabilisation).
    pub fn recommend(&self, metric: f64, current: u32) -> u32 {
        let current = current.max(1);
        let usage = metric / f64::from(current) / self.lag_threshold;
        let desired = if (usage - 1.0).abs() <= self.tolerance {
            current
        } else {
            (metric / self.lag_threshold).ceil() as u32
        };
        desired.clamp(self.min_replicas, self.max_replicas)
    }
}

/// The HPA loop around a KEDA trigger: a recommendation every poll, and
/// scale-down only to the highest recommendation of the stabilisation
/// window (Kubernetes' default 300 s; scale-up is immediate).
#[derive(Debug, Clone)]
pub struct Hpa {
    /// The trigger.
    pub keda: Keda,
    /// Scale-down stabilisation window, seconds.
    pub stabilization_s: f64,
    recommendations: std::collections::VecDeque<(f64, u32)>,
}

impl Hpa {
    /// An HPA with `keda` and the default 300 s window.
    pub fn new(keda: Keda) -> Self {
        Self {
            keda,
            stabilization_s: 300.0,
            recommendations: std::collections::VecDeque::new(),
        }
    }

    /// One poll at `at_s`: the replica count the HPA sets.
    pub fn poll(&mut self, at_s: f64, partitions: &[PartitionView], current: u32) -> u32 {
        let raw = self.keda.recommend(self.keda.metric(partitions), current);
        self.recommendations.push_back((at_s, raw));
        while self
            .recommendations
            .front()
            .is_some_and(|(t, _)| *t < at_s - self.stabilization_s)
        {
            self.recommendations.pop_front();
        }
        if raw >= current {
            raw
        } else {
            let highest = self
                .recommendations
                .iter()
                .map(|(_, n)| *n)
                .max()
                .unwrap_or(raw);
            highest.min(current)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hpa_scales_down_only_after_the_stabilisation_window() {
        let mut hpa = Hpa::new(Keda::default());
        let busy = lagging(10, 50);
        let idle = lagging(10, 0);
        assert_eq!(hpa.poll(0.0, &busy, 1), 10);
        // Lag gone: the 10 recommended at t=0 holds for 300 s.
        assert_eq!(hpa.poll(30.0, &idle, 10), 10);
        assert_eq!(hpa.poll(270.0, &idle, 10), 10);
        assert_eq!(hpa.poll(330.0, &idle, 10), 1);
    }

    fn lagging(n: usize, lag: i64) -> Vec<PartitionView> {
        (0..n)
            .map(|_| PartitionView {
                low: 0,
                high: 1_000 + lag,
                committed: Some(1_000),
                last_record: None,
            })
            .collect()
    }

    #[test]
    fn a_ten_partition_group() {
        let k = Keda::default();
        // Heavy lag: capped at 10 x 10, so at most one replica per partition.
        let heavy = lagging(10, 50);
        assert_eq!(k.metric(&heavy), 100.0);
        assert_eq!(k.recommend(k.metric(&heavy), 1), 10);
        // Light lag: 5 per partition is 50 in total, 25 per replica at 2.
        let light = lagging(10, 5);
        assert_eq!(k.metric(&light), 50.0);
        assert_eq!(k.recommend(50.0, 2), 5);
        // Within the 10% tolerance nothing changes: 52 over 5 replicas.
        assert_eq!(k.recommend(52.0, 5), 5);
        // Idle consumers allowed: the cap goes, replicas follow the lag.
        let idle = Keda {
            allow_idle_consumers: true,
            ..k
        };
        assert_eq!(idle.recommend(idle.metric(&heavy), 1), 50);
    }

    #[test]
    fn sixty_four_partitions_stay_on_sixty_three_pods() {
        // The capped metric is 640; at 63 pods the usage ratio is
        // 640 / 63 / 10 = 1.016, inside the tolerance: the HPA never adds the
        // 64th pod, and one pod keeps two partitions however large the lag.
        let k = Keda {
            max_replicas: 64,
            ..Keda::default()
        };
        let parts = lagging(64, 100_000);
        assert_eq!(k.metric(&parts), 640.0);
        assert_eq!(k.recommend(640.0, 63), 63);
        assert_eq!(k.recommend(640.0, 50), 64);
    }

    #[test]
    fn missing_offsets_and_transaction_markers() {
        let k = Keda::default();
        let never = PartitionView {
            low: 0,
            high: 500,
            committed: None,
            last_record: None,
        };
        assert_eq!(k.partition_lag(&never), 1);
        let zero = Keda {
            scale_to_zero_on_invalid_offset: true,
            ..k
        };
        assert_eq!(zero.partition_lag(&never), 0);
        let earliest = Keda {
            reset_latest: false,
            ..k
        };
        assert_eq!(earliest.partition_lag(&never), 500);
        // A trailing commit marker: KEDA sees one record of lag forever.
        let marker = PartitionView {
            low: 0,
            high: 11,
            committed: Some(10),
            last_record: Some(9),
        };
        assert_eq!(k.partition_lag(&marker), 1);
        assert_eq!(marker.lag(), 0);
    }
}
