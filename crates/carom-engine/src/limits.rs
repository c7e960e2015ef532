//! Token buckets: for contact requests from strangers, and for what each contact may make us
//! store.

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
        self.take_amount(1.0, now)
    }

    /// Add what has refilled since the last update.
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        self.updated = now;
    }

    /// Take `amount` tokens if that many are available.
    fn take_amount(&mut self, amount: f64, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= amount {
            self.tokens -= amount;
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

/// What one accepted contact may make us store: a bucket of bytes per contact, refilled over
/// a day. Without it one contact could fill the disk, after which every operation fails.
pub(crate) struct IncomingQuota {
    per_contact: HashMap<i64, Bucket>,
    bytes_per_day: u32,
}

/// Every message costs at least this much of the quota, so that tiny messages cannot add
/// rows without bound either (a day's quota of 64 MiB is then at most 65,536 messages).
pub(crate) const MIN_MESSAGE_COST: usize = 1024;

impl IncomingQuota {
    pub(crate) fn new(bytes_per_day: u32) -> IncomingQuota {
        IncomingQuota {
            per_contact: HashMap::new(),
            bytes_per_day,
        }
    }

    fn bucket(&mut self, contact: i64, now: Instant) -> &mut Bucket {
        let per_day = self.bytes_per_day;
        let bucket = self
            .per_contact
            .entry(contact)
            .or_insert_with(|| Bucket::new(per_day, per_day, Duration::from_secs(24 * 3600), now));
        bucket.refill(now);
        bucket
    }

    /// What `contact` may make us store now, to decide one transaction's messages against.
    /// Nothing is charged until [`IncomingQuota::charge`]: a transaction that rolls back (a
    /// full disk), or runs again, costs the contact nothing.
    pub(crate) fn allowance(&mut self, contact: i64, now: Instant) -> Allowance {
        Allowance {
            left: self.bucket(contact, now).tokens,
            charged: 0.0,
        }
    }

    /// Charge what a committed transaction stored (its [`Allowance::charged`]).
    pub(crate) fn charge(&mut self, contact: i64, charged: f64, now: Instant) {
        let bucket = self.bucket(contact, now);
        // Two sessions of one contact deciding at once may together exceed the allowance
        // by one batch; the bucket then starts below zero and refills from there.
        bucket.tokens -= charged;
    }
}

/// A contact's allowance for one transaction (see [`IncomingQuota::allowance`]).
pub(crate) struct Allowance {
    left: f64,
    charged: f64,
}

impl Allowance {
    /// Whether a message of `bytes` fits (it is then counted against the allowance).
    pub(crate) fn admit(&mut self, bytes: usize) -> bool {
        // Precision is irrelevant here: sizes are far below 2^52.
        #[allow(clippy::cast_precision_loss, reason = "sizes are far below 2^52")]
        let cost = bytes.max(MIN_MESSAGE_COST) as f64;
        if cost > self.left {
            return false;
        }
        self.left -= cost;
        self.charged += cost;
        true
    }

    /// What the admitted messages cost.
    pub(crate) fn charged(&self) -> f64 {
        self.charged
    }
}

#[cfg(test)]
mod quota_tests {
    use super::*;

    /// One message in its own committed transaction.
    fn store_one(quota: &mut IncomingQuota, contact: i64, bytes: usize, now: Instant) -> bool {
        let mut allowance = quota.allowance(contact, now);
        let admitted = allowance.admit(bytes);
        quota.charge(contact, allowance.charged(), now);
        admitted
    }

    #[test]
    fn a_contact_gets_its_daily_bytes_and_no_more_and_others_are_unaffected() {
        let start = Instant::now();
        let mut quota = IncomingQuota::new(10 * 1024);
        for _ in 0..10 {
            assert!(
                store_one(&mut quota, 1, 10, start),
                "tiny messages cost 1 KiB each"
            );
        }
        assert!(!store_one(&mut quota, 1, 10, start));
        assert!(
            store_one(&mut quota, 2, 10 * 1024, start),
            "another contact has its own"
        );
        // A tenth of a day later, a tenth of the quota is back.
        let later = start + Duration::from_secs(24 * 3600 / 10);
        assert!(store_one(&mut quota, 1, 1024, later));
        assert!(!store_one(&mut quota, 1, 1024, later));
    }

    #[test]
    fn only_a_committed_transaction_is_charged() {
        let now = Instant::now();
        let mut quota = IncomingQuota::new(4 * 1024);
        // A batch decided, then rolled back (or run again): nothing charged.
        let mut first_try = quota.allowance(1, now);
        assert!(first_try.admit(1024) && first_try.admit(1024) && first_try.admit(2048));
        assert!(!first_try.admit(1), "the batch used the whole allowance");
        let _ = first_try.charged(); // never charged: the transaction did not commit
        let mut second_try = quota.allowance(1, now);
        assert!(second_try.admit(4096), "the rolled-back batch cost nothing");
        quota.charge(1, second_try.charged(), now);
        assert!(!quota.allowance(1, now).admit(1));
    }
}
