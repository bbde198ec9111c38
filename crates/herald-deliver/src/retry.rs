//! What happens after a failed attempt: another attempt through a retry
//! tier, or the dead-letter topic.
//!
//! The delay doubles per attempt from `base_delay` up to `max_delay`, with
//! jitter (a deterministic share of the delay from the notification id and
//! attempt, so one message's schedule is reproducible while a burst of
//! failures spreads out), never shorter than the provider's `Retry-After`.
//! The message goes to the longest tier not longer than its delay
//! (`retry-10s`, `retry-1m`, `retry-10m`, `retry-1h`), which holds it until
//! `not_before`.

use std::time::Duration;

use herald_model::wire::ChannelMessage;
use serde::{Deserialize, Serialize};

use crate::providers::{Failure, SendError};

/// `[deliver.retry]`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySettings {
    /// Attempts in all, the first included.
    pub max_attempts: i32,
    /// Delay after the first failure.
    #[serde(with = "humantime_serde")]
    pub base_delay: Duration,
    /// Longest delay.
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    /// Share of the delay that is random (0 to 1).
    pub jitter: f64,
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            base_delay: Duration::from_secs(10),
            max_delay: Duration::from_secs(3600),
            jitter: 0.2,
        }
    }
}

/// One failed attempt, as kept in the `herald.attempts` header and the
/// dead letter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// Attempt number (1 is the first).
    pub attempt: i32,
    /// When, ms.
    pub at_ms: i64,
    /// Provider.
    pub provider: String,
    /// Classification.
    pub failure: String,
    /// The provider's reason code.
    pub reason: String,
    /// HTTP status or SMTP reply code.
    pub status: Option<u16>,
}

impl Attempt {
    /// The record of `error` on attempt `attempt`.
    pub fn of(error: &SendError, attempt: i32, at_ms: i64) -> Self {
        Self {
            attempt,
            at_ms,
            provider: error.provider.to_string(),
            failure: error.failure.as_str().to_string(),
            reason: error.reason.clone(),
            status: error.status,
        }
    }
}

/// The decision after a failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Try again from this tier at `not_before_ms`.
    Retry {
        /// Tier name (`10s`, `1m`, `10m`, `1h`).
        tier: &'static str,
        /// Not before, ms.
        not_before_ms: i64,
    },
    /// Attempts exhausted: dead-letter it.
    DeadLetter,
    /// Not retryable: record the failure.
    GiveUp,
}

/// The tiers, shortest first (`herald_kafka::topology::RETRY_TIERS`).
pub const TIERS: [(&str, Duration); 4] = [
    ("10s", Duration::from_secs(10)),
    ("1m", Duration::from_secs(60)),
    ("10m", Duration::from_secs(600)),
    ("1h", Duration::from_secs(3600)),
];

impl RetrySettings {
    /// The delay before attempt `attempt + 1` (attempt counts from 1).
    pub fn delay(
        &self,
        message: &ChannelMessage,
        attempt: i32,
        retry_after: Option<Duration>,
    ) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1u32 << (attempt - 1).clamp(0, 20))
            .min(self.max_delay);
        let share = jitter_share(&message.notification_id, attempt);
        let jitter = exp.mul_f64(self.jitter.clamp(0.0, 1.0) * share);
        (exp - exp.mul_f64(self.jitter.clamp(0.0, 1.0) / 2.0) + jitter)
            .max(retry_after.unwrap_or_default())
    }

    /// What to do after `error` on attempt `message.attempt`, at `now_ms`.
    pub fn next(&self, message: &ChannelMessage, error: &SendError, now_ms: i64) -> Next {
        if !error.failure.retry() {
            return Next::GiveUp;
        }
        if message.attempt >= self.max_attempts {
            return Next::DeadLetter;
        }
        let delay = self.delay(message, message.attempt.max(1), error.retry_after);
        let tier = TIERS
            .iter()
            .rev()
            .find(|(_, d)| *d <= delay)
            .map_or(TIERS[0].0, |(name, _)| *name);
        Next::Retry {
            tier,
            not_before_ms: now_ms + delay.as_millis() as i64,
        }
    }
}

/// A share in [0, 1) from the notification id and attempt.
fn jitter_share(id: &str, attempt: i32) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes().chain(attempt.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// Whether a failure counts against the provider's health.
pub const fn unhealthy(failure: Failure) -> bool {
    matches!(failure, Failure::Retryable | Failure::RateLimited)
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_model::sample;

    fn error(failure: Failure, retry_after: Option<Duration>) -> SendError {
        SendError {
            provider: "apns",
            failure,
            reason: "x".into(),
            status: Some(503),
            retry_after,
        }
    }

    #[test]
    fn backoff_doubles_with_bounded_jitter_and_picks_the_tier() {
        let s = RetrySettings::default();
        let mut m = sample::channel_message(1, 0);
        let mut last = Duration::ZERO;
        for attempt in 1..=4 {
            m.attempt = attempt;
            let d = s.delay(&m, attempt, None);
            let exp = Duration::from_secs(10 << (attempt - 1));
            assert!(
                d >= exp.mul_f64(0.9) && d <= exp.mul_f64(1.1),
                "{attempt}: {d:?}"
            );
            assert!(d > last);
            last = d;
        }
        m.attempt = 1;
        assert!(matches!(
            s.next(&m, &error(Failure::Retryable, None), 0),
            Next::Retry { tier: "10s", .. } | Next::Retry { tier: "1m", .. }
        ));
        m.attempt = 4; // ~80 s
        assert!(matches!(
            s.next(&m, &error(Failure::Retryable, None), 0),
            Next::Retry { tier: "1m", .. }
        ));
        let long = RetrySettings {
            max_attempts: 12,
            ..s
        };
        m.attempt = 10; // 10 s x 2^9, capped at an hour
        let Next::Retry {
            tier,
            not_before_ms,
        } = long.next(&m, &error(Failure::Retryable, None), 0)
        else {
            panic!("retried");
        };
        assert!(["10m", "1h"].contains(&tier), "{tier}");
        assert!(
            (3_240_000..=3_960_000).contains(&not_before_ms),
            "{not_before_ms}"
        );
    }

    #[test]
    fn retry_after_is_a_floor_and_attempts_are_bounded() {
        let s = RetrySettings::default();
        let mut m = sample::channel_message(2, 0);
        m.attempt = 1;
        let Next::Retry {
            not_before_ms,
            tier,
        } = s.next(
            &m,
            &error(Failure::RateLimited, Some(Duration::from_secs(120))),
            1_000,
        )
        else {
            panic!("rate limited is retried");
        };
        assert_eq!((not_before_ms, tier), (121_000, "1m"));
        m.attempt = s.max_attempts;
        assert_eq!(
            s.next(&m, &error(Failure::Retryable, None), 0),
            Next::DeadLetter
        );
        assert_eq!(
            s.next(&m, &error(Failure::TokenInvalid, None), 0),
            Next::GiveUp
        );
        assert_eq!(
            s.next(&m, &error(Failure::Permanent, None), 0),
            Next::GiveUp
        );
    }

    #[test]
    fn jitter_spreads_a_burst() {
        let s = RetrySettings::default();
        let delays: std::collections::BTreeSet<_> = (0..50)
            .map(|n| {
                let m = sample::channel_message(n, 0);
                s.delay(&m, 1, None)
            })
            .collect();
        assert!(delays.len() > 40);
    }
}
