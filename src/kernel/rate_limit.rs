//! Sliding-window rate limits for management requests that cost something (reloads,
//! installs) or end the daemon.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Limits `key`s to `max` events per sliding `window`; each key has its own bucket.
#[derive(Debug)]
pub struct SlidingWindow {
    window: Duration,
    buckets: HashMap<&'static str, VecDeque<Instant>>,
}

impl SlidingWindow {
    /// A limiter with the given window.
    pub fn new(window: Duration) -> Self {
        Self { window, buckets: HashMap::new() }
    }

    /// Records an event for `key` at `now` unless `max` events already happened in the
    /// window; returns whether the event is allowed.
    pub fn allow(&mut self, key: &'static str, max: usize, now: Instant) -> bool {
        let bucket = self.buckets.entry(key).or_default();
        while bucket.front().is_some_and(|t| now.duration_since(*t) >= self.window) {
            bucket.pop_front();
        }
        if bucket.len() >= max {
            return false;
        }
        bucket.push_back(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_key_and_frees_only_expired_slots() {
        let mut limiter = SlidingWindow::new(Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..5 {
            assert!(limiter.allow("ReloadCapsules", 5, t0 + Duration::from_secs(i * 10)));
        }
        assert!(!limiter.allow("ReloadCapsules", 5, t0 + Duration::from_secs(50)));
        assert!(limiter.allow("InstallCapsule", 5, t0 + Duration::from_secs(50)), "buckets are independent");
        // At 60 s only the first slot (t0) has expired.
        assert!(limiter.allow("ReloadCapsules", 5, t0 + Duration::from_secs(60)));
        assert!(!limiter.allow("ReloadCapsules", 5, t0 + Duration::from_secs(61)));
    }
}
