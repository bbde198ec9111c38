//! Lag of one partition, in records and in seconds.

/// What the scaler knows about one partition of a consumer group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionView {
    /// Log start offset.
    pub low: i64,
    /// High watermark (the next offset to be written).
    pub high: i64,
    /// The group's committed offset (the next record it will read); `None`
    /// when the group has never committed on this partition.
    pub committed: Option<i64>,
    /// Offset of the newest data record below `high`, when known. On a
    /// transactional topic the last offsets may be commit markers, which no
    /// consumer ever receives or commits past by reading.
    pub last_record: Option<i64>,
}

impl PartitionView {
    /// The offset after which there is nothing left to read: one past the
    /// newest data record (markers after it are not work), else `high`.
    pub fn end(&self) -> i64 {
        self.last_record
            .map_or(self.high, |last| (last + 1).min(self.high))
    }

    /// The next offset the group will read. A group without a committed
    /// offset starts at the log start (Herald's consumers use
    /// `auto.offset.reset = earliest`), and a committed offset below the log
    /// start resumes there.
    pub fn position(&self) -> i64 {
        self.committed.unwrap_or(self.low).max(self.low)
    }

    /// Records not yet processed. Never negative, and no phantom lag of one
    /// when the last offset is a transaction marker.
    pub fn lag(&self) -> i64 {
        (self.end() - self.position()).max(0)
    }
}

/// Age in seconds of the oldest unprocessed record: now minus the timestamp
/// of the record at the group's position. Exact, not interpolated: the
/// caller reads that record's timestamp. Zero when there is no lag.
pub fn time_lag_seconds(
    view: &PartitionView,
    oldest_unread_ts_ms: Option<i64>,
    now_ms: i64,
) -> f64 {
    if view.lag() == 0 {
        return 0.0;
    }
    oldest_unread_ts_ms.map_or(0.0, |ts| ((now_ms - ts).max(0)) as f64 / 1000.0)
}

/// One observation of a partition at a time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// When, in milliseconds.
    pub at_ms: i64,
    /// The partition then.
    pub view: PartitionView,
}

/// Records per second written to the partition between two samples
/// (growth of the high watermark).
pub fn arrival_rate(earlier: &Sample, later: &Sample) -> Option<f64> {
    let dt = (later.at_ms - earlier.at_ms) as f64 / 1000.0;
    (dt > 0.0).then(|| (later.view.high - earlier.view.high).max(0) as f64 / dt)
}

/// Records per second the group processed between two samples (growth of
/// the committed position), counted only when the group was busy the whole
/// time: lag above zero at both ends. An idle group's rate says how much
/// work there was, not how fast it can go.
pub fn service_rate(earlier: &Sample, later: &Sample) -> Option<f64> {
    let dt = (later.at_ms - earlier.at_ms) as f64 / 1000.0;
    let busy = earlier.view.lag() > 0 && later.view.lag() > 0;
    (dt > 0.0 && busy).then(|| (later.view.position() - earlier.view.position()).max(0) as f64 / dt)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(low: i64, high: i64, committed: Option<i64>) -> PartitionView {
        PartitionView {
            low,
            high,
            committed,
            last_record: None,
        }
    }

    #[test]
    fn lag_is_high_watermark_minus_committed() {
        assert_eq!(view(0, 100, Some(40)).lag(), 60);
        assert_eq!(view(0, 100, Some(100)).lag(), 0);
    }

    #[test]
    fn a_partition_without_a_committed_offset_lags_from_the_log_start() {
        assert_eq!(view(0, 100, None).lag(), 100);
        assert_eq!(view(30, 100, None).lag(), 70);
        // A committed offset that retention has passed resumes at the start.
        assert_eq!(view(50, 100, Some(10)).lag(), 50);
    }

    #[test]
    fn a_trailing_transaction_marker_leaves_no_phantom_lag() {
        // Records 0..=9, commit marker at 10, high watermark 11; the group
        // read everything and committed 10.
        let v = PartitionView {
            low: 0,
            high: 11,
            committed: Some(10),
            last_record: Some(9),
        };
        assert_eq!(v.lag(), 0);
        // Without knowing the marker, the naive lag is one.
        assert_eq!(view(0, 11, Some(10)).lag(), 1);
        // Real work behind the marker still counts.
        let behind = PartitionView {
            committed: Some(4),
            ..v
        };
        assert_eq!(behind.lag(), 6);
    }

    #[test]
    fn time_lag_is_the_age_of_the_oldest_unread_record() {
        let v = view(0, 100, Some(40));
        assert_eq!(time_lag_seconds(&v, Some(1_000), 31_000), 30.0);
        assert_eq!(
            time_lag_seconds(&view(0, 100, Some(100)), Some(1_000), 31_000),
            0.0
        );
        // A timestamp from the future (clock skew) is not negative lag.
        assert_eq!(time_lag_seconds(&v, Some(40_000), 31_000), 0.0);
    }

    #[test]
    fn rates_from_watermark_and_commit_growth() {
        let a = Sample {
            at_ms: 0,
            view: view(0, 1_000, Some(200)),
        };
        let b = Sample {
            at_ms: 10_000,
            view: view(0, 3_000, Some(1_200)),
        };
        assert_eq!(arrival_rate(&a, &b), Some(200.0));
        assert_eq!(service_rate(&a, &b), Some(100.0));
        // No time passed: no rate.
        assert_eq!(arrival_rate(&a, &a), None);
    }

    #[test]
    fn service_rate_is_measured_only_while_busy() {
        let idle = Sample {
            at_ms: 0,
            view: view(0, 1_000, Some(1_000)),
        };
        let later = Sample {
            at_ms: 10_000,
            view: view(0, 1_050, Some(1_050)),
        };
        assert_eq!(service_rate(&idle, &later), None);
    }
}
