//! Stage latency percentiles from the stages' own histograms: the scaler
//! scrapes each replica's `/metrics`, sums the named histogram's buckets
//! over replicas and label sets, and estimates percentiles from the growth
//! since the previous scrape (what happened lately, not since start-up),
//! interpolating within a bucket as Prometheus' `histogram_quantile` does.

use std::time::Duration;

use prometheus_parse::{Scrape, Value};

/// Quantiles reported, with their metric label.
pub const QUANTILES: [(&str, f64); 3] = [("0.5", 0.5), ("0.95", 0.95), ("0.99", 0.99)];

/// Cumulative bucket counts by upper bound (ascending, ending at +Inf).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Buckets(pub Vec<(f64, f64)>);

impl Buckets {
    /// The histogram `name` in a text exposition, summed over label sets;
    /// `None` when it is not there.
    pub fn from_text(text: &str, name: &str) -> Option<Self> {
        let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).ok()?;
        let mut sum = Buckets::default();
        let mut found = false;
        for sample in scrape.samples.iter().filter(|s| s.metric == name) {
            if let Value::Histogram(counts) = &sample.value {
                found = true;
                sum.add(&Buckets(
                    counts.iter().map(|c| (c.less_than, c.count)).collect(),
                ));
            }
        }
        found.then_some(sum)
    }

    /// Adds another histogram's counts bucket by bucket.
    pub fn add(&mut self, other: &Buckets) {
        for &(le, count) in &other.0 {
            match self.0.iter_mut().find(|(l, _)| *l == le) {
                Some((_, c)) => *c += count,
                None => self.0.push((le, count)),
            }
        }
        self.0.sort_by(|a, b| a.0.total_cmp(&b.0));
    }

    /// Observations since `earlier`; the whole of `self` when a count went
    /// down (a replica restarted) or the buckets changed.
    pub fn since(&self, earlier: &Buckets) -> Buckets {
        let same_bounds = self.0.len() == earlier.0.len()
            && self.0.iter().zip(&earlier.0).all(|(a, b)| a.0 == b.0);
        if !same_bounds || self.0.iter().zip(&earlier.0).any(|(a, b)| a.1 < b.1) {
            return self.clone();
        }
        Buckets(
            self.0
                .iter()
                .zip(&earlier.0)
                .map(|(a, b)| (a.0, a.1 - b.1))
                .collect(),
        )
    }

    /// Observations counted.
    pub fn total(&self) -> f64 {
        self.0.last().map_or(0.0, |(_, c)| *c)
    }

    /// The `q` quantile, interpolated linearly within its bucket; the
    /// highest finite bound when it falls in the +Inf bucket; `None`
    /// without observations.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.total();
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut lower = (0.0, 0.0);
        for &(le, count) in &self.0 {
            if count >= rank {
                if le.is_infinite() {
                    return Some(lower.0);
                }
                let in_bucket = count - lower.1;
                if in_bucket <= 0.0 {
                    return Some(le);
                }
                return Some(lower.0 + (le - lower.0) * (rank - lower.1) / in_bucket);
            }
            lower = (le, count);
        }
        Some(lower.0)
    }
}

/// Scrapes every URL and sums the histogram `name`; URLs that fail are
/// skipped (logged), `None` when none answered with it.
pub async fn scrape(
    client: &reqwest::Client,
    urls: &[String],
    name: &str,
    timeout: Duration,
) -> Option<Buckets> {
    let mut sum: Option<Buckets> = None;
    for url in urls {
        let text = match client.get(url).timeout(timeout).send().await {
            Ok(resp) if resp.status().is_success() => resp.text().await.ok(),
            Ok(resp) => {
                tracing::debug!(%url, status = %resp.status(), "Stage metrics not available.");
                None
            }
            Err(e) => {
                tracing::debug!(%url, error = %e, "Stage metrics not reachable.");
                None
            }
        };
        if let Some(b) = text.and_then(|t| Buckets::from_text(&t, name)) {
            sum.get_or_insert_with(Buckets::default).add(&b);
        }
    }
    sum
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    const TEXT: &str = r#"# HELP herald_router_latency_seconds Event time to fan-out.
# TYPE herald_router_latency_seconds histogram
herald_router_latency_seconds_bucket{priority="urgent",le="0.1"} 50
herald_router_latency_seconds_bucket{priority="urgent",le="1"} 90
herald_router_latency_seconds_bucket{priority="urgent",le="+Inf"} 100
herald_router_latency_seconds_sum{priority="urgent"} 20
herald_router_latency_seconds_count{priority="urgent"} 100
herald_router_latency_seconds_bucket{priority="bulk",le="0.1"} 0
herald_router_latency_seconds_bucket{priority="bulk",le="1"} 0
herald_router_latency_seconds_bucket{priority="bulk",le="+Inf"} 100
herald_router_latency_seconds_sum{priority="bulk"} 900
herald_router_latency_seconds_count{priority="bulk"} 100
# TYPE herald_ready gauge
herald_ready{stage="router"} 1
"#;

    #[test]
    fn buckets_are_summed_over_label_sets() {
        let b = Buckets::from_text(TEXT, "herald_router_latency_seconds").unwrap();
        assert_eq!(b.0, vec![(0.1, 50.0), (1.0, 90.0), (f64::INFINITY, 200.0)]);
        assert!(Buckets::from_text(TEXT, "herald_missing_seconds").is_none());
        assert!(Buckets::from_text("not { prometheus", "x").is_none());
    }

    #[test]
    fn quantiles_interpolate_like_histogram_quantile() {
        let b = Buckets(vec![(0.1, 50.0), (1.0, 90.0), (f64::INFINITY, 100.0)]);
        // Rank 50 ends the first bucket exactly.
        assert!((b.quantile(0.5).unwrap() - 0.1).abs() < 1e-9);
        // Rank 70: halfway through (0.1, 1].
        assert!((b.quantile(0.7).unwrap() - 0.55).abs() < 1e-9);
        // Past the last finite bound: that bound.
        assert_eq!(b.quantile(0.99), Some(1.0));
        assert_eq!(Buckets::default().quantile(0.5), None);
    }

    #[test]
    fn percentiles_describe_the_last_interval() {
        let before = Buckets(vec![(0.1, 100.0), (1.0, 100.0), (f64::INFINITY, 100.0)]);
        // Since then, 100 slow observations.
        let after = Buckets(vec![(0.1, 100.0), (1.0, 200.0), (f64::INFINITY, 200.0)]);
        let recent = after.since(&before);
        assert_eq!(recent.total(), 100.0);
        assert!(recent.quantile(0.5).unwrap() > 0.1);
        // A restarted replica (counts fell): the whole current histogram.
        assert_eq!(before.since(&after), before);
    }
}
