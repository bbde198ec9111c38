//! A token bucket per provider: at most `rate` requests per second on
//! average, bursts of up to `burst`.

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

/// A shared token bucket.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// Full bucket of `burst` tokens refilled at `rate` per second.
    pub fn new(rate: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate: rate.max(f64::MIN_POSITIVE),
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Takes a token, waiting for one if the bucket is empty. Callers are
    /// served in turn: the lock is held while waiting.
    pub async fn acquire(&self) {
        let mut state = self.state.lock().await;
        let (tokens, at) = *state;
        let now = Instant::now();
        let available = (tokens + now.duration_since(at).as_secs_f64() * self.rate).min(self.burst);
        if available >= 1.0 {
            *state = (available - 1.0, now);
            return;
        }
        let wait = Duration::from_secs_f64((1.0 - available) / self.rate);
        tokio::time::sleep(wait).await;
        *state = (0.0, now + wait);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_then_the_rate() {
        let bucket = TokenBucket::new(10.0, 5);
        let start = Instant::now();
        for _ in 0..5 {
            bucket.acquire().await;
        }
        assert!(
            start.elapsed() < Duration::from_millis(1),
            "the burst is free"
        );
        for _ in 0..10 {
            bucket.acquire().await;
        }
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(999) && took < Duration::from_millis(1_100),
            "ten more at 10/s take a second: {took:?}"
        );
    }
}
