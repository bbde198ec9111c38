//! A circuit breaker per provider: closed, open, half-open with probes.
//!
//! Only failures that say the provider is unwell count: retryable errors
//! (5xx, timeouts, connection) and rate limiting. A bad token or a bad
//! request is the message's fault and counts as a healthy answer.
//!
//! Closed: `failure_threshold` consecutive unhealthy answers open it (and a
//! `Retry-After` longer than `open_for` is honoured, up to `max_open_for`).
//! Open: nothing is sent until the open period ends; then half-open:
//! `probes` requests go through.
//! A healthy probe closes it; an unhealthy one opens it again for twice as
//! long (up to `max_open_for`).

use std::time::Duration;

use serde::Deserialize;

/// Breaker settings (`[deliver.breaker]`).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerSettings {
    /// Consecutive unhealthy answers that open the breaker.
    pub failure_threshold: u32,
    /// First open period.
    #[serde(with = "humantime_serde")]
    pub open_for: Duration,
    /// Longest open period after repeated failed probes.
    #[serde(with = "humantime_serde")]
    pub max_open_for: Duration,
    /// Requests let through while half-open.
    pub probes: u32,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open_for: Duration::from_secs(10),
            max_open_for: Duration::from_secs(300),
            probes: 1,
        }
    }
}

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Sending normally.
    Closed,
    /// Not sending until the instant (ms).
    Open {
        /// When probing may start, ms.
        until_ms: i64,
    },
    /// Letting probes through.
    HalfOpen,
}

impl State {
    /// Fixed label for metrics (`closed`, `open`, `half_open`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open { .. } => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

/// May a request go now?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Yes.
    Go,
    /// Yes, as a probe of a half-open breaker.
    Probe,
    /// No: wait until this instant (ms).
    WaitUntil(i64),
}

/// One provider's breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    settings: BreakerSettings,
    state: State,
    consecutive: u32,
    probes_out: u32,
    open_for: Duration,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(settings: BreakerSettings) -> Self {
        Self {
            settings,
            state: State::Closed,
            consecutive: 0,
            probes_out: 0,
            open_for: settings.open_for,
        }
    }

    /// The state now (an elapsed open period reads as half-open).
    pub fn state(&self, now_ms: i64) -> State {
        match self.state {
            State::Open { until_ms } if now_ms >= until_ms => State::HalfOpen,
            s => s,
        }
    }

    /// Asks to send one request at `now_ms`; returns the permit and the
    /// state change it caused, if any.
    pub fn permit(&mut self, now_ms: i64) -> (Permit, Option<State>) {
        let before = self.state;
        if let State::Open { until_ms } = self.state {
            if now_ms < until_ms {
                return (Permit::WaitUntil(until_ms), None);
            }
            self.state = State::HalfOpen;
            self.probes_out = 0;
        }
        let permit = match self.state {
            State::Closed => Permit::Go,
            State::HalfOpen if self.probes_out < self.settings.probes.max(1) => {
                self.probes_out += 1;
                Permit::Probe
            }
            // Probes are out: wait for their answers.
            _ => Permit::WaitUntil(now_ms + 100),
        };
        (permit, (self.state != before).then_some(self.state))
    }

    /// Records an answer: `healthy` unless retryable or rate-limited.
    /// Returns the state change, if any.
    pub fn record(
        &mut self,
        now_ms: i64,
        healthy: bool,
        retry_after: Option<Duration>,
    ) -> Option<State> {
        let before = self.state;
        if healthy {
            self.consecutive = 0;
            if self.state == State::HalfOpen {
                self.state = State::Closed;
                self.open_for = self.settings.open_for;
            }
        } else {
            self.consecutive += 1;
            let reopen = self.state == State::HalfOpen;
            if reopen
                || (self.state == State::Closed
                    && self.consecutive >= self.settings.failure_threshold)
            {
                if reopen {
                    self.open_for = (self.open_for * 2).min(self.settings.max_open_for);
                }
                // A provider's Retry-After is honoured up to the longest
                // open period: an endpoint cannot close itself for a year.
                let wait = self
                    .open_for
                    .max(retry_after.unwrap_or_default())
                    .min(self.settings.max_open_for);
                self.state = State::Open {
                    until_ms: now_ms + wait.as_millis() as i64,
                };
            }
        }
        (self.state != before).then_some(self.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerSettings {
            failure_threshold: 3,
            open_for: Duration::from_secs(10),
            max_open_for: Duration::from_secs(30),
            probes: 1,
        })
    }

    #[test]
    fn opens_after_consecutive_failures_and_recovers_through_a_probe() {
        let mut b = breaker();
        assert_eq!(b.record(0, false, None), None);
        assert_eq!(b.record(1, true, None), None, "a success resets the count");
        b.record(2, false, None);
        b.record(3, false, None);
        assert_eq!(
            b.record(4, false, None),
            Some(State::Open { until_ms: 10_004 })
        );
        assert_eq!(b.permit(5_000), (Permit::WaitUntil(10_004), None));
        // The open period ends: one probe, then the rest wait for it.
        assert_eq!(b.permit(10_004), (Permit::Probe, Some(State::HalfOpen)));
        assert!(matches!(b.permit(10_005).0, Permit::WaitUntil(_)));
        assert_eq!(b.record(10_100, true, None), Some(State::Closed));
        assert_eq!(b.permit(10_101), (Permit::Go, None));
    }

    #[test]
    fn a_failed_probe_doubles_the_open_period_up_to_the_max() {
        let mut b = breaker();
        for t in 0..3 {
            b.record(t, false, None);
        }
        b.permit(10_002);
        assert_eq!(
            b.record(10_002, false, None),
            Some(State::Open { until_ms: 30_002 })
        );
        b.permit(30_002);
        assert_eq!(
            b.record(30_002, false, None),
            Some(State::Open { until_ms: 60_002 })
        );
        b.permit(60_002);
        // Capped at 30 s.
        assert_eq!(
            b.record(60_002, false, None),
            Some(State::Open { until_ms: 90_002 })
        );
    }

    #[test]
    fn retry_after_keeps_it_open_longer() {
        let mut b = breaker();
        b.record(0, false, None);
        b.record(0, false, None);
        assert_eq!(
            b.record(0, false, Some(Duration::from_secs(25))),
            Some(State::Open { until_ms: 25_000 })
        );
        assert_eq!(b.state(24_999).as_str(), "open");
        assert_eq!(b.state(25_000).as_str(), "half_open");
    }

    #[test]
    fn retry_after_is_capped_at_the_longest_open_period() {
        let mut b = breaker();
        b.record(0, false, None);
        b.record(0, false, None);
        // A year, asked by one endpoint: 30 s (max_open_for), no more.
        assert_eq!(
            b.record(0, false, Some(Duration::from_secs(31_536_000))),
            Some(State::Open { until_ms: 30_000 })
        );
    }
}
