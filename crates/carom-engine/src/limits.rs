//! Token buckets for contact requests from strangers.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use carom_proto::OnionAddress;

/// A token bucket: `burst` tokens, refilled at `per` intervals of `interval`.
#[derive(Clone, Debug)]
pub(crate) struct Bucket {
    tokens: f64,
    burst: f64,
    per_second: f64,
    updated: Instant,
}

impl Bucket {
    pub(crate) fn new(burst: u32, refill: u32, interval: Duration, now: Instant) -> Bucket {
        Bucket {
            tokens: f64::from(burst),
            burst: f64::from(burst),
            per_second: f64::from(refill) / interval.as_secs_f64(),
            updated: now,
        }
    }

    /// Take a token if one is available.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn is_full(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens + elapsed * self.per_second >= self.burst
    }
}

/// Limits on strangers' contact requests: one bucket for all, one per source address.
pub(crate) struct RequestLimiter {
    global: Bucket,
    per_source: HashMap<OnionAddress, Bucket>,
    burst: u32,
    per_hour: u32,
}

/// Most sources tracked; full buckets are forgotten first.
const MAX_SOURCES: usize = 10_000;

impl RequestLimiter {
    pub(crate) fn new(
        global_burst: u32,
        global_per_minute: u32,
        source_burst: u32,
        source_per_hour: u32,
        now: Instant,
    ) -> RequestLimiter {
        RequestLimiter {
            global: Bucket::new(
                global_burst,
                global_per_minute,
                Duration::from_secs(60),
                now,
            ),
            per_source: HashMap::new(),
            burst: source_burst,
            per_hour: source_per_hour,
        }
    }

    /// Whether a request from `source` may be admitted now (takes tokens if so).
    pub(crate) fn admit(&mut self, source: OnionAddress, now: Instant) -> bool {
        if self.per_source.len() >= MAX_SOURCES {
            self.per_source.retain(|_, b| !b.is_full(now));
            if self.per_source.len() >= MAX_SOURCES {
                // Every tracked source is active: refuse newcomers rather than grow.
                return false;
            }
        }
        let (burst, per_hour) = (self.burst, self.per_hour);
        let source_bucket = self
            .per_source
            .entry(source)
            .or_insert_with(|| Bucket::new(burst, per_hour, Duration::from_secs(3600), now));
        if !source_bucket.take(now) {
            return false;
        }
        self.global.take(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(n: u8) -> OnionAddress {
        carom_proto::IdentityKey::from_seed(&[n; 32]).address()
    }

    #[test]
    fn one_source_is_limited_before_the_rest() {
        let t = Instant::now();
        let mut l = RequestLimiter::new(20, 10, 3, 6, t);
        assert!((0..3).all(|_| l.admit(addr(1), t)));
        assert!(!l.admit(addr(1), t), "fourth request from one source");
        assert!(l.admit(addr(2), t), "another source still gets in");
        // Ten minutes later one more token has come back for source 1.
        assert!(l.admit(addr(1), t + Duration::from_secs(600)));
    }

    #[test]
    fn the_global_bucket_caps_a_flood_of_sources() {
        let t = Instant::now();
        let mut l = RequestLimiter::new(20, 10, 3, 6, t);
        let admitted = (0..100u8).filter(|n| l.admit(addr(*n), t)).count();
        assert_eq!(admitted, 20);
        assert!(l.admit(addr(200), t + Duration::from_secs(6)));
    }
}
