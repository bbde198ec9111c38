//! Fault injection: what a provider does to the requests it receives.
//!
//! Rates are applied evenly and deterministically (with a rate of 0.3,
//! exactly 3 of every 10 requests fail), so a test run is reproducible.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A provider's behaviour, set with `PUT /sandbox/faults/{provider}`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Fault {
    /// Added to every request, ms.
    pub latency_ms: u64,
    /// Share of requests answered with `error_status` (0 to 1).
    pub error_rate: f64,
    /// Status of those errors (HTTP; SMTP answers as a mail provider
    /// would: see `smtp::fault_reply`).
    pub error_status: Option<u16>,
    /// `Retry-After` on those errors, seconds.
    pub retry_after_s: Option<u64>,
    /// Share of requests never answered (the client times out).
    pub timeout_rate: f64,
    /// An outage starting now: every request gets 503 (SMTP: 421 and the
    /// connection closes) for this long, s.
    pub outage_s: Option<u64>,
    /// Share of requests whose connection is dropped before any answer
    /// (HTTP: the connection closes mid-request; SMTP: at MAIL).
    pub reset_rate: f64,
}

impl Fault {
    /// Checks the rates and status.
    pub fn validate(&self) -> Result<(), String> {
        for (name, rate) in [
            ("error_rate", self.error_rate),
            ("timeout_rate", self.timeout_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{name} must be between 0 and 1, not {rate}"));
            }
        }
        if let Some(s) = self.error_status {
            if !(400..=599).contains(&s) {
                return Err(format!("error_status must be 4xx or 5xx, not {s}"));
            }
        }
        Ok(())
    }
}

/// What happens to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Delay before answering.
    pub latency: Duration,
    /// Then.
    pub outcome: Outcome,
}

impl Decision {
    /// No fault.
    pub const fn pass() -> Self {
        Self {
            latency: Duration::ZERO,
            outcome: Outcome::Pass,
        }
    }
}

/// The answer after the latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Handled normally.
    Pass,
    /// Answered with this status (and Retry-After, seconds).
    Error {
        /// Status.
        status: u16,
        /// Retry-After, seconds.
        retry_after_s: Option<u64>,
    },
    /// Never answered.
    Hang,
}

/// A fault in force, with its request counter.
#[derive(Debug, Clone)]
pub struct Active {
    fault: Fault,
    seen: u64,
    resets_seen: u64,
    outage_until_ms: Option<i64>,
}

impl Active {
    /// Starts `fault` now.
    pub fn new(fault: Fault) -> Self {
        let outage_until_ms = fault.outage_s.map(|s| crate::now_ms() + (s as i64) * 1000);
        Self {
            fault,
            seen: 0,
            resets_seen: 0,
            outage_until_ms,
        }
    }

    /// Whether the next request's connection is dropped (counted apart
    /// from the other faults: it is decided before the request is read).
    pub fn reset(&mut self) -> bool {
        let n = self.resets_seen;
        self.resets_seen += 1;
        let rate = self.fault.reset_rate;
        ((n + 1) as f64 * rate).floor() > (n as f64 * rate).floor()
    }

    /// The next request's fate.
    pub fn decide(&mut self) -> Decision {
        let n = self.seen;
        self.seen += 1;
        let latency = Duration::from_millis(self.fault.latency_ms);
        let hits = |rate: f64| ((n + 1) as f64 * rate).floor() > (n as f64 * rate).floor();
        let outcome = if self.outage_until_ms.is_some_and(|t| crate::now_ms() < t) {
            Outcome::Error {
                status: 503,
                retry_after_s: self.fault.retry_after_s,
            }
        } else if hits(self.fault.timeout_rate) {
            Outcome::Hang
        } else if hits(self.fault.error_rate) {
            Outcome::Error {
                status: self.fault.error_status.unwrap_or(503),
                retry_after_s: self.fault.retry_after_s,
            }
        } else {
            Outcome::Pass
        };
        Decision { latency, outcome }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_exact_and_even() {
        let mut a = Active::new(Fault {
            error_rate: 0.3,
            ..Fault::default()
        });
        let errors: Vec<bool> = (0..10)
            .map(|_| matches!(a.decide().outcome, Outcome::Error { status: 503, .. }))
            .collect();
        assert_eq!(errors.iter().filter(|e| **e).count(), 3);
        // Spread out, not bunched.
        assert!(!errors.windows(2).any(|w| w[0] && w[1]));
    }

    #[test]
    fn an_outage_answers_503_until_it_ends() {
        let mut a = Active::new(Fault {
            outage_s: Some(60),
            retry_after_s: Some(5),
            ..Fault::default()
        });
        assert_eq!(
            a.decide().outcome,
            Outcome::Error {
                status: 503,
                retry_after_s: Some(5)
            }
        );
        let mut over = Active::new(Fault {
            outage_s: Some(0),
            ..Fault::default()
        });
        assert_eq!(over.decide().outcome, Outcome::Pass);
    }

    #[test]
    fn bad_faults_are_refused() {
        let bad = Fault {
            error_rate: 1.5,
            ..Fault::default()
        };
        assert!(bad.validate().unwrap_err().contains("error_rate"));
        let bad = Fault {
            error_status: Some(200),
            ..Fault::default()
        };
        assert!(bad.validate().is_err());
    }
}
