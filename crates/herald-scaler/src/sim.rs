//! A deterministic simulator: traffic traces through a queueing model of a
//! consumer group, scaled by a policy (Herald's signal, or KEDA's scaler
//! with the HPA), reporting what users and the bill would see.
//!
//! Model, one-second steps: `partitions` FIFO queues; arrivals spread evenly
//! over them; each ready replica serves `service_per_replica` records per
//! second (times the trace's service factor) over its partitions
//! (round-robin assignment), giving unused capacity to its partitions that
//! still have work; a new replica is ready `startup_s` after it is asked
//! for; every change of the ready count pauses all partitions for
//! `rebalance_pause_s`; a stuck partition is served nothing. The policy is
//! polled every `poll_s`. Latency is exact per record bucket: the age of the
//! oldest unprocessed record.

use std::collections::VecDeque;

use crate::keda::{Hpa, Keda};
use crate::lag::PartitionView;
use crate::signal::{Controller, Load, Settings};

/// The consumer group and its platform.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Model {
    /// Partitions.
    pub partitions: usize,
    /// Records per second one replica processes.
    pub service_per_replica: f64,
    /// Seconds from asking for a replica to its first record.
    pub startup_s: u64,
    /// Seconds every partition pauses when the group rebalances.
    pub rebalance_pause_s: u64,
    /// Seconds between policy polls.
    pub poll_s: u64,
    /// End-to-end latency objective, seconds.
    pub objective_s: f64,
}

impl Default for Model {
    fn default() -> Self {
        Self {
            partitions: 12,
            service_per_replica: 200.0,
            startup_s: 20,
            rebalance_pause_s: 3,
            poll_s: 30,
            objective_s: 30.0,
        }
    }
}

/// A traffic trace.
#[derive(Debug, Clone, Copy)]
pub struct Trace {
    /// Name in the results table.
    pub name: &'static str,
    /// Length, seconds.
    pub duration_s: u64,
    /// Records per second arriving at second `t`.
    pub arrival: fn(f64) -> f64,
    /// Multiplier of the service rate at second `t` (a slow provider < 1).
    pub service_factor: fn(f64) -> f64,
    /// A partition served nothing from one second to another.
    pub stuck: Option<(usize, u64, u64)>,
}

/// The five traces of the comparison.
pub fn traces() -> Vec<Trace> {
    vec![
        Trace {
            name: "steady",
            duration_s: 3_600,
            arrival: |_| 800.0,
            service_factor: |_| 1.0,
            stuck: None,
        },
        Trace {
            name: "diurnal",
            duration_s: 7_200,
            arrival: |t| {
                300.0 + 1_500.0 * (1.0 - (std::f64::consts::TAU * t / 7_200.0).cos()) / 2.0
            },
            service_factor: |_| 1.0,
            stuck: None,
        },
        Trace {
            name: "10x burst",
            duration_s: 3_600,
            arrival: |t| {
                if (900.0..1_500.0).contains(&t) {
                    2_000.0
                } else {
                    200.0
                }
            },
            service_factor: |_| 1.0,
            stuck: None,
        },
        Trace {
            name: "slow provider",
            duration_s: 3_600,
            arrival: |_| 600.0,
            service_factor: |t| {
                if (1_200.0..2_100.0).contains(&t) {
                    0.4
                } else {
                    1.0
                }
            },
            stuck: None,
        },
        Trace {
            name: "stuck partition",
            duration_s: 3_600,
            arrival: |_| 600.0,
            service_factor: |_| 1.0,
            stuck: Some((3, 1_200, 2_100)),
        },
    ]
}

/// What a policy sees at a poll.
#[derive(Debug, Clone)]
pub struct Observation {
    /// Every partition's offsets.
    pub partitions: Vec<PartitionView>,
    /// Records per second arriving since the last poll.
    pub arrival: f64,
    /// Records per second per ready replica since the last poll, when the
    /// group had work throughout and did not rebalance (the scaler sees the
    /// group generation change).
    pub service_sample: Option<f64>,
    /// Records per second one replica can process now, as the stage's own
    /// metrics imply it (records in flight over processing latency). Known
    /// when the group is idle too, unlike the measured service rate.
    pub stage_capacity: f64,
    /// Partitions whose committed offset did not move since the last poll
    /// although they had lag (Burrow's STALL): scaling cannot help them.
    pub stalled: Vec<bool>,
}

/// A scaling policy.
pub trait Policy {
    /// Name in the results table.
    fn name(&self) -> &'static str;
    /// The replica count to run, given the observation and the current count.
    fn poll(&mut self, at_s: f64, obs: &Observation, current: u32) -> u32;
}

/// Herald's signal.
pub struct Herald {
    controller: Controller,
    partitions: u32,
}

impl Herald {
    /// Herald's controller for `model`.
    pub fn new(model: &Model) -> Self {
        let settings = Settings {
            latency_objective_s: model.objective_s,
            initial_service_rate: Some(model.service_per_replica),
            ..Settings::default()
        };
        Self {
            controller: Controller::new(settings),
            partitions: model.partitions as u32,
        }
    }
}

impl Policy for Herald {
    fn name(&self) -> &'static str {
        "Herald"
    }

    fn poll(&mut self, at_s: f64, obs: &Observation, current: u32) -> u32 {
        // Lag on stalled partitions is an alert, not a reason to scale; and
        // one partition is read by one member, so more replicas drain at
        // most what one replica can on it within the drain target.
        let drain_s = self.controller.settings().drain_target_s();
        let per_partition_arrival = obs.arrival / obs.partitions.len().max(1) as f64;
        let one_replica = self.controller.service_rate().unwrap_or(0.0);
        let drainable = ((one_replica - per_partition_arrival) * drain_s).max(0.0);
        let lag: f64 = obs
            .partitions
            .iter()
            .zip(&obs.stalled)
            .filter(|(_, stalled)| !**stalled)
            .map(|(p, _)| (p.lag() as f64).min(drainable))
            .sum();
        let load = Load {
            partitions: self.partitions,
            arrival: obs.arrival,
            lag,
            service_per_replica: 0.0,
        };
        // Measured throughput while busy; the stage's own latency-derived
        // capacity otherwise (so recovery is seen while idle).
        let sample = obs.service_sample.or(Some(obs.stage_capacity));
        self.controller.observe(at_s, load, sample, current)
    }
}

/// KEDA's Kafka scaler with the HPA.
pub struct KedaPolicy(pub Hpa);

impl Policy for KedaPolicy {
    fn name(&self) -> &'static str {
        "KEDA"
    }

    fn poll(&mut self, at_s: f64, obs: &Observation, current: u32) -> u32 {
        self.0.poll(at_s, &obs.partitions, current)
    }
}

/// KEDA as commonly configured for `model`: `lagThreshold` = what one
/// replica drains in half the objective, replicas up to the partitions.
pub fn keda_for(model: &Model) -> KedaPolicy {
    KedaPolicy(Hpa::new(Keda {
        lag_threshold: model.service_per_replica * model.objective_s / 2.0,
        max_replicas: model.partitions as u32,
        ..Keda::default()
    }))
}

/// What a run produced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    /// Seconds in which the oldest waiting record was older than the objective.
    pub seconds_over: u64,
    /// Replicas asked for, summed over seconds (what the bill counts).
    pub replica_seconds: u64,
    /// Changes of the replica count asked for.
    pub actions: u32,
    /// Changes in the opposite direction of the previous one.
    pub reversals: u32,
    /// Polls from the first that saw the trace's peak arrival rate to the
    /// first that asked for at least the replicas that rate needs.
    pub polls_to_need: Option<u32>,
}

/// Runs `trace` through `model` under `policy`.
pub fn simulate(model: &Model, trace: &Trace, policy: &mut dyn Policy) -> Outcome {
    let p = model.partitions;
    let mut queues: Vec<VecDeque<(u64, f64)>> = vec![VecDeque::new(); p];
    let mut high = vec![0.0f64; p];
    let mut done = vec![0.0f64; p];
    let need = |rate: f64| ((rate / model.service_per_replica).ceil() as u32).clamp(1, p as u32);
    // Provisioned for the starting load with 15% headroom, for every policy.
    let mut target = (((trace.arrival)(0.0) / (model.service_per_replica * 0.85)).ceil() as u32)
        .clamp(1, p as u32);
    // Replicas ready, and those starting (ready at the given second).
    let mut ready = target;
    let mut starting: Vec<u64> = Vec::new();
    let mut paused_until = 0u64;
    let mut out = Outcome {
        seconds_over: 0,
        replica_seconds: 0,
        actions: 0,
        reversals: 0,
        polls_to_need: None,
    };
    let mut last_direction = 0i32;
    let mut last_poll = (0u64, high.clone(), done.clone(), false);
    // Whether membership changed since the last poll (a rebalance pause
    // makes the interval's service rate meaningless).
    let mut rebalanced = false;
    let peak = (0..trace.duration_s)
        .map(|t| (trace.arrival)(t as f64))
        .fold(0.0, f64::max);
    let mut peak_seen_at: Option<u32> = None;
    let mut poll_no = 0u32;
    for t in 0..trace.duration_s {
        let tf = t as f64;
        // Replicas becoming ready; any change of membership rebalances.
        let before = ready;
        ready += starting.iter().filter(|s| **s == t).count() as u32;
        starting.retain(|s| *s > t);
        if ready > target {
            ready = target;
        }
        if ready != before {
            paused_until = t + model.rebalance_pause_s;
            rebalanced = true;
        }
        // Arrivals.
        let per = (trace.arrival)(tf) / p as f64;
        for (q, h) in queues.iter_mut().zip(high.iter_mut()) {
            q.push_back((t, per));
            *h += per;
        }
        // Service.
        if t >= paused_until && ready > 0 {
            let capacity = model.service_per_replica * (trace.service_factor)(tf);
            for r in 0..ready as usize {
                let mine: Vec<usize> = (r..p).step_by(ready as usize).collect();
                let mut budget = capacity;
                // Equal shares, then what is left to those still waiting.
                for _round in 0..2 {
                    let waiting: Vec<usize> = mine
                        .iter()
                        .copied()
                        .filter(|i| !queues[*i].is_empty())
                        .filter(|i| {
                            trace
                                .stuck
                                .is_none_or(|(s, a, b)| *i != s || t < a || t >= b)
                        })
                        .collect();
                    if waiting.is_empty() || budget <= 1e-9 {
                        break;
                    }
                    let share = budget / waiting.len() as f64;
                    for i in waiting {
                        let mut left = share;
                        while left > 1e-9 {
                            let Some(front) = queues[i].front_mut() else {
                                break;
                            };
                            let take = front.1.min(left);
                            front.1 -= take;
                            left -= take;
                            done[i] += take;
                            budget -= take;
                            if front.1 <= 1e-9 {
                                queues[i].pop_front();
                            }
                        }
                    }
                }
            }
        }
        // Latency: the oldest waiting record anywhere.
        let oldest = queues
            .iter()
            .filter_map(|q| q.front().map(|(at, _)| t - at))
            .max()
            .unwrap_or(0);
        if oldest as f64 > model.objective_s {
            out.seconds_over += 1;
        }
        out.replica_seconds += u64::from(target);
        // Poll.
        if t > 0 && t % model.poll_s == 0 {
            poll_no += 1;
            let views: Vec<PartitionView> = (0..p)
                .map(|i| PartitionView {
                    low: 0,
                    high: high[i] as i64,
                    committed: Some(done[i] as i64),
                    last_record: None,
                })
                .collect();
            let dt = (t - last_poll.0) as f64;
            let arrival = (high.iter().sum::<f64>() - last_poll.1.iter().sum::<f64>()) / dt;
            let busy_now = views.iter().any(|v| v.lag() > 0);
            let served = done.iter().sum::<f64>() - last_poll.2.iter().sum::<f64>();
            let service_sample = (busy_now && last_poll.3 && !rebalanced && ready > 0)
                .then(|| served / dt / f64::from(ready));
            // A rebalance this poll causes belongs to the next interval.
            rebalanced = false;
            let stalled = (0..p)
                .map(|i| views[i].lag() > 0 && (done[i] - last_poll.2[i]).abs() < 1e-9)
                .collect();
            let obs = Observation {
                partitions: views,
                arrival,
                service_sample,
                stage_capacity: model.service_per_replica * (trace.service_factor)(tf),
                stalled,
            };
            if arrival >= peak * 0.99 && peak_seen_at.is_none() {
                peak_seen_at = Some(poll_no);
            }
            let new = policy.poll(tf, &obs, target).clamp(1, p as u32);
            if let Some(seen) = peak_seen_at {
                if out.polls_to_need.is_none() && new >= need(peak) {
                    out.polls_to_need = Some(poll_no - seen);
                }
            }
            if new != target {
                let direction = if new > target { 1 } else { -1 };
                if last_direction != 0 && direction != last_direction {
                    out.reversals += 1;
                }
                last_direction = direction;
                out.actions += 1;
                if new > target {
                    let add = new - ready - starting.len() as u32;
                    starting.extend(std::iter::repeat_n(t + model.startup_s, add as usize));
                } else {
                    starting.clear();
                    if ready > new {
                        ready = new;
                        paused_until = t + model.rebalance_pause_s;
                        rebalanced = true;
                    }
                }
                target = new;
            }
            last_poll = (t, high.clone(), done.clone(), busy_now);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(trace: &Trace) -> (Outcome, Outcome) {
        let model = Model::default();
        let herald = simulate(&model, trace, &mut Herald::new(&model));
        let keda = simulate(&model, trace, &mut keda_for(&model));
        (herald, keda)
    }

    #[test]
    fn the_simulation_is_deterministic() {
        let t = traces()[2];
        assert_eq!(run(&t), run(&t));
    }

    #[test]
    fn steady_traffic_needs_no_scaling() {
        let (herald, _) = run(&traces()[0]);
        assert_eq!(herald.seconds_over, 0);
        assert_eq!(herald.actions, 0);
    }

    #[test]
    fn across_traces_herald_is_over_the_objective_half_as_long_for_no_more_replicas() {
        let (mut over_h, mut over_k, mut rs_h, mut rs_k) = (0, 0, 0, 0);
        for t in traces() {
            let (h, k) = run(&t);
            over_h += h.seconds_over;
            over_k += k.seconds_over;
            rs_h += h.replica_seconds;
            rs_k += k.replica_seconds;
        }
        assert!(
            over_h * 2 <= over_k,
            "seconds over: Herald {over_h}, KEDA {over_k}"
        );
        assert!(rs_h <= rs_k, "replica-seconds: Herald {rs_h}, KEDA {rs_k}");
    }

    #[test]
    fn a_stuck_partition_is_not_a_reason_to_scale_out() {
        let (herald, keda) = run(&traces()[4]);
        assert!(herald.replica_seconds < keda.replica_seconds);
    }

    #[test]
    fn the_burst_is_met_within_two_polls_with_at_most_one_reversal() {
        let (herald, _) = run(&traces()[2]);
        let polls = herald
            .polls_to_need
            .expect("Herald reached the burst's need");
        assert!(polls <= 2, "{polls} polls");
        assert!(herald.reversals <= 1, "{} reversals", herald.reversals);
    }
}
