//! Burrow-style partition health: judged from the shape of the group's
//! commits over a window, with no lag thresholds.
//!
//! In order: offsets going backwards is REWIND; no commit for longer than
//! the window spans, with lag, is STOP; commits that do not move while lag
//! stays is STALL; any moment without lag is OK; commits that move while
//! lag never falls is WARN (falling behind); anything else is OK.

/// A partition's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Keeping up.
    Ok,
    /// Committing, but lag does not fall.
    Warn,
    /// Committing the same offset while lag waits.
    Stall,
    /// Stopped committing, with lag.
    Stop,
    /// The committed offset went backwards.
    Rewind,
}

impl Status {
    /// Fixed label for metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "OK",
            Self::Warn => "WARN",
            Self::Stall => "STALL",
            Self::Stop => "STOP",
            Self::Rewind => "REWIND",
        }
    }
}

/// One commit of the group on the partition, with the lag at that time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commit {
    /// When, in milliseconds.
    pub at_ms: i64,
    /// Committed offset.
    pub offset: i64,
    /// Lag at that moment.
    pub lag: i64,
}

/// Evaluates a window of commits (oldest first) at `now_ms`; `lag_now` is
/// the partition's current lag.
pub fn evaluate(window: &[Commit], now_ms: i64, lag_now: i64) -> Status {
    let (Some(first), Some(last)) = (window.first(), window.last()) else {
        return Status::Ok;
    };
    if window.windows(2).any(|w| w[1].offset < w[0].offset) {
        return Status::Rewind;
    }
    if lag_now > 0 && now_ms - last.at_ms > last.at_ms - first.at_ms {
        return Status::Stop;
    }
    if window.len() > 1 && first.offset == last.offset && window.iter().all(|c| c.lag > 0) {
        return Status::Stall;
    }
    if window.iter().any(|c| c.lag == 0) {
        return Status::Ok;
    }
    if window.len() > 1 && window.windows(2).all(|w| w[1].lag >= w[0].lag) {
        return Status::Warn;
    }
    Status::Ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commits(points: &[(i64, i64, i64)]) -> Vec<Commit> {
        points
            .iter()
            .map(|&(at_ms, offset, lag)| Commit { at_ms, offset, lag })
            .collect()
    }

    #[test]
    fn burrow_rules() {
        let keeping_up = commits(&[(0, 10, 5), (1_000, 20, 3), (2_000, 30, 0)]);
        assert_eq!(evaluate(&keeping_up, 2_500, 0), Status::Ok);

        let behind = commits(&[(0, 10, 5), (1_000, 20, 8), (2_000, 30, 12)]);
        assert_eq!(evaluate(&behind, 2_500, 12), Status::Warn);

        let stalled = commits(&[(0, 10, 5), (1_000, 10, 6), (2_000, 10, 9)]);
        assert_eq!(evaluate(&stalled, 2_500, 9), Status::Stall);

        // Last commit 10 s ago, the window spans 2 s, lag waiting.
        assert_eq!(evaluate(&behind, 12_000, 12), Status::Stop);
        // Nothing waiting: a quiet group is not stopped.
        assert_eq!(evaluate(&keeping_up, 60_000, 0), Status::Ok);

        let rewound = commits(&[(0, 50, 5), (1_000, 20, 40), (2_000, 30, 30)]);
        assert_eq!(evaluate(&rewound, 2_500, 30), Status::Rewind);

        // Lag going down with commits moving: fine.
        let catching_up = commits(&[(0, 10, 50), (1_000, 40, 30), (2_000, 70, 10)]);
        assert_eq!(evaluate(&catching_up, 2_500, 10), Status::Ok);
        assert_eq!(evaluate(&[], 0, 100), Status::Ok);
        assert_eq!(Status::Stall.as_str(), "STALL");
    }
}
