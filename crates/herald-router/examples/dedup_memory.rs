//! `make bench`: memory per key of the dedup index at 1M and 10M keys.
//!
//! Measures the process's resident set before and after filling a
//! `DedupStore`, so the number includes allocator overhead, and compares it
//! with the 64-bytes-per-key target. Prints one Markdown table row per size.

use herald_model::DedupKey;
use herald_router::dedup::{DedupStore, Verdict};

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() {
    println!("| keys | RSS growth | bytes/key (RSS) | bytes/key (table) | target | insert rate |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for n in [1_000_000u64, 10_000_000] {
        let before = rss_bytes();
        let mut store = DedupStore::new();
        let started = std::time::Instant::now();
        for i in 0..n {
            let key = DedupKey::new("bench", "receipt", &i.to_string());
            let verdict = store.check(key, i as i64, 1_790_000_000_000, 86_400_000);
            debug_assert_eq!(verdict, Verdict::New);
        }
        let elapsed = started.elapsed();
        let grown = rss_bytes().saturating_sub(before);
        println!(
            "| {n} | {:.1} MiB | {:.1} | {:.1} | 64 | {:.2} M keys/s |",
            grown as f64 / 1048576.0,
            grown as f64 / n as f64,
            store.heap_bytes() as f64 / n as f64,
            n as f64 / elapsed.as_secs_f64() / 1e6
        );
        assert_eq!(store.len() as u64, n);
        drop(store);
    }
}
