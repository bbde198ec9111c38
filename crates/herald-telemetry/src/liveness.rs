//! Liveness that means something: a stage is alive while every unit of
//! work it has started (a record being routed, a message being sent and
//! its effects produced) finishes within `admin.stall_after`. Waiting on
//! purpose (a retry sleeping until its time, an idle consumer) is not work.
//! A unit that outlives the limit makes `/healthz` answer 503, so the
//! supervisor restarts the stage, and shows as the age of the oldest unit
//! in `herald_oldest_work_seconds`, which the `HeraldStageStalled` alert
//! reads.
//!
//! The limit must exceed the longest wait that is bounded anyway: a
//! produce may wait `message.timeout.ms` (5 min) for a broker that is down,
//! and a restart would not bring it back sooner. So the default is 6 min;
//! what it catches is work nothing bounds (a library that hangs, a lost
//! wake-up), which once wedged the email worker for good.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `admin.stall_after` when unset.
pub const DEFAULT_STALL_AFTER: Duration = Duration::from_secs(6 * 60);

/// The start times of the units of work in progress.
#[derive(Debug, Clone)]
pub struct WorkClock {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    started: Mutex<BTreeSet<(Instant, u64)>>,
    next: AtomicU64,
    stall_after: Duration,
}

impl WorkClock {
    /// A clock that calls a unit older than `stall_after` stalled.
    pub fn new(stall_after: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                started: Mutex::new(BTreeSet::new()),
                next: AtomicU64::new(0),
                stall_after,
            }),
        }
    }

    /// Starts a unit of work; it ends when the guard is dropped.
    pub fn busy(&self) -> Busy {
        let key = (
            Instant::now(),
            self.inner.next.fetch_add(1, Ordering::Relaxed),
        );
        self.started().insert(key);
        Busy {
            clock: self.clone(),
            key,
        }
    }

    /// How long the oldest unit in progress has been running.
    pub fn oldest(&self) -> Option<Duration> {
        self.started().first().map(|(at, _)| at.elapsed())
    }

    /// The oldest unit's age, when it is over the limit.
    pub fn stalled(&self) -> Option<Duration> {
        self.oldest().filter(|age| *age > self.inner.stall_after)
    }

    /// The limit.
    pub fn stall_after(&self) -> Duration {
        self.inner.stall_after
    }

    fn started(&self) -> std::sync::MutexGuard<'_, BTreeSet<(Instant, u64)>> {
        self.inner
            .started
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Default for WorkClock {
    fn default() -> Self {
        Self::new(DEFAULT_STALL_AFTER)
    }
}

/// A unit of work in progress (see [`WorkClock::busy`]).
#[derive(Debug)]
pub struct Busy {
    clock: WorkClock,
    key: (Instant, u64),
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.clock.started().remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_work_older_than_the_limit_is_a_stall() {
        let clock = WorkClock::new(Duration::from_millis(50));
        assert_eq!(clock.oldest(), None);
        let old = clock.busy();
        std::thread::sleep(Duration::from_millis(80));
        let young = clock.busy();
        assert!(clock
            .stalled()
            .is_some_and(|a| a >= Duration::from_millis(80)));
        drop(old);
        assert_eq!(clock.stalled(), None, "the young unit is within the limit");
        assert!(clock.oldest().is_some());
        drop(young);
        assert_eq!(clock.oldest(), None);
    }
}
