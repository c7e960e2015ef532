//! Admission control for incoming rendezvous requests.
//!
//! Every rendezvous request a service accepts makes it build a circuit to a rendezvous point
//! the *client* chose. Without a limit, anyone who knows the address can make the daemon
//! build circuits as fast as they can send `INTRODUCE` cells. A token bucket caps the rate, and
//! a cap on handshakes in flight bounds the circuits being built at any moment.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Limits on accepting rendezvous requests (new circuits from peers).
///
/// Defaults: `burst` 16, `per_second` 1.0, `max_in_flight` 16. A daemon with a hundred
/// contacts coming online at once admits 16 at once and the rest at one a second; their
/// dials retry. Streams on an already-open circuit are not rendezvous requests and are not
/// limited here (see `ArtiConfig::max_streams_per_circuit`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdmissionConfig {
    /// Bucket size: how many requests can be admitted at once after a quiet period.
    pub burst: u32,
    /// Refill rate, tokens per second (may be fractional, must be positive).
    pub per_second: f64,
    /// Most rendezvous handshakes (circuit builds) in progress at once.
    pub max_in_flight: u32,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            burst: 16,
            per_second: 1.0,
            max_in_flight: 16,
        }
    }
}

impl AdmissionConfig {
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.burst == 0 {
            return Err("admission.burst must be at least 1".into());
        }
        if !(self.per_second.is_finite() && self.per_second > 0.0) {
            return Err("admission.per_second must be a positive number".into());
        }
        if self.max_in_flight == 0 {
            return Err("admission.max_in_flight must be at least 1".into());
        }
        Ok(())
    }
}

/// A token bucket with an explicit clock (`now` is passed in, so tests need no sleeping).
#[derive(Debug)]
pub(crate) struct TokenBucket {
    capacity: f64,
    per_second: f64,
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub(crate) fn new(config: &AdmissionConfig, now: Instant) -> TokenBucket {
        TokenBucket {
            capacity: f64::from(config.burst),
            per_second: config.per_second,
            tokens: f64::from(config.burst),
            updated: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        self.updated = now;
    }

    /// Take a token if there is one.
    pub(crate) fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// How long until a token will be available.
    pub(crate) fn wait_time(&mut self, now: Instant) -> Duration {
        self.refill(now);
        if self.tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - self.tokens) / self.per_second)
        }
    }
}

/// The admission decision for rendezvous requests: a token bucket and a cap on handshakes in
/// flight, in one of two modes.
///
/// - *Rejecting* (proof-of-work off): take each request as it comes; admit it if a token and a
///   handshake slot are free, reject it otherwise.
/// - *Waiting* (proof-of-work on): before taking the next request, wait for a slot and a
///   token; every request taken is admitted. Requests meanwhile wait in arti's queue.
#[derive(Debug)]
pub(crate) struct Gate {
    bucket: TokenBucket,
    in_flight: Arc<Semaphore>,
    waiting: bool,
    counters: Arc<Counters>,
}

impl Gate {
    pub(crate) fn new(config: &AdmissionConfig, waiting: bool, counters: Arc<Counters>) -> Gate {
        Gate {
            bucket: TokenBucket::new(config, Instant::now()),
            in_flight: Arc::new(Semaphore::new(
                usize::try_from(config.max_in_flight).unwrap_or(usize::MAX),
            )),
            waiting,
            counters,
        }
    }

    /// Call before taking the next request. In waiting mode, returns once a handshake slot
    /// and a token are available, holding the slot; in rejecting mode, at once with nothing.
    pub(crate) async fn ready(&mut self) -> Option<OwnedSemaphorePermit> {
        if !self.waiting {
            return None;
        }
        let permit = Arc::clone(&self.in_flight).acquire_owned().await.ok()?;
        let wait = self.bucket.wait_time(Instant::now());
        if !wait.is_zero() {
            let deferred = Counters::bump(&self.counters.deferred);
            tracing::debug!(
                deferred,
                ?wait,
                "admission: no token, leaving requests queued"
            );
            tokio::time::sleep(wait).await;
        }
        Some(permit)
    }

    /// Decide on the request just taken, given what [`ready`](Self::ready) returned: a slot
    /// to hold for the handshake (admit), or `None` (reject). Counts either way.
    pub(crate) fn admit(
        &mut self,
        held: Option<OwnedSemaphorePermit>,
    ) -> Option<OwnedSemaphorePermit> {
        let now = Instant::now();
        let admitted = match held {
            // Waiting mode: the token is there (we waited for it); take it.
            Some(permit) => {
                let _ = self.bucket.try_take(now);
                Some(permit)
            }
            None => match Arc::clone(&self.in_flight).try_acquire_owned() {
                Ok(permit) if self.bucket.try_take(now) => Some(permit),
                _ => None,
            },
        };
        let (accepted, rejected) = if admitted.is_some() {
            (
                Counters::bump(&self.counters.accepted),
                self.counters.rejected.load(Ordering::Relaxed),
            )
        } else {
            (
                self.counters.accepted.load(Ordering::Relaxed),
                Counters::bump(&self.counters.rejected),
            )
        };
        tracing::debug!(
            accepted,
            rejected,
            admitted = admitted.is_some(),
            "admission: rendezvous request"
        );
        admitted
    }
}

/// Counters of what admission control and the service did, for tests and diagnostics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AdmissionStats {
    /// Rendezvous requests admitted (a circuit build was started).
    pub accepted: u64,
    /// Rendezvous requests turned away: bucket empty or too many handshakes in flight.
    pub rejected: u64,
    /// Times admission waited for a token instead of rejecting (proof-of-work mode).
    pub deferred: u64,
    /// Admitted requests whose rendezvous handshake then failed.
    pub handshake_failed: u64,
    /// Streams handed to `accept()`.
    pub streams_accepted: u64,
    /// Streams refused: wrong port or not a `BEGIN`.
    pub streams_refused: u64,
}

/// Shared atomic counters behind [`AdmissionStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) accepted: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) deferred: AtomicU64,
    pub(crate) handshake_failed: AtomicU64,
    pub(crate) streams_accepted: AtomicU64,
    pub(crate) streams_refused: AtomicU64,
}

impl Counters {
    pub(crate) fn new() -> Arc<Counters> {
        Arc::new(Counters::default())
    }

    pub(crate) fn bump(counter: &AtomicU64) -> u64 {
        counter.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub(crate) fn snapshot(&self) -> AdmissionStats {
        AdmissionStats {
            accepted: self.accepted.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            deferred: self.deferred.load(Ordering::Relaxed),
            handshake_failed: self.handshake_failed.load(Ordering::Relaxed),
            streams_accepted: self.streams_accepted.load(Ordering::Relaxed),
            streams_refused: self.streams_refused.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(burst: u32, per_second: f64) -> AdmissionConfig {
        AdmissionConfig {
            burst,
            per_second,
            max_in_flight: 4,
        }
    }

    #[test]
    fn a_full_bucket_admits_a_burst_then_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(&config(3, 2.0), t0);
        assert!((0..3).all(|_| bucket.try_take(t0)));
        assert!(!bucket.try_take(t0), "empty after the burst");
        assert_eq!(bucket.wait_time(t0), Duration::from_millis(500));
        assert!(!bucket.try_take(t0 + Duration::from_millis(400)));
        assert!(bucket.try_take(t0 + Duration::from_millis(500)));
        // A long quiet period refills only up to the burst.
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| bucket.try_take(later)).count(), 3);
    }

    #[test]
    fn a_flood_is_held_to_burst_plus_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(&config(5, 1.0), t0);
        // 1000 requests a second for 10 seconds.
        let admitted = (0..10_000u64)
            .filter(|i| bucket.try_take(t0 + Duration::from_millis(*i)))
            .count();
        assert_eq!(admitted, 5 + 9, "burst plus one per elapsed second");
    }

    #[tokio::test]
    async fn rejecting_mode_turns_away_what_finds_no_token_or_no_slot() {
        let counters = Counters::new();
        let mut gate = Gate::new(
            &AdmissionConfig {
                burst: 2,
                per_second: 0.001,
                max_in_flight: 10,
            },
            false,
            Arc::clone(&counters),
        );
        assert!(gate.ready().await.is_none(), "rejecting mode never waits");
        let first = gate.admit(None);
        let second = gate.admit(None);
        assert!(first.is_some() && second.is_some());
        assert!(gate.admit(None).is_none(), "bucket empty");
        assert_eq!(counters.snapshot().accepted, 2);
        assert_eq!(counters.snapshot().rejected, 1);

        // Plenty of tokens, two slots: a third concurrent handshake is refused until one ends.
        let mut gate = Gate::new(
            &AdmissionConfig {
                burst: 10,
                per_second: 1.0,
                max_in_flight: 2,
            },
            false,
            Counters::new(),
        );
        let a = gate.admit(None).expect("slot 1");
        let _b = gate.admit(None).expect("slot 2");
        assert!(gate.admit(None).is_none(), "no slot");
        drop(a);
        assert!(gate.admit(None).is_some(), "slot freed");
    }

    #[tokio::test]
    async fn waiting_mode_waits_for_a_token_instead_of_rejecting() {
        let counters = Counters::new();
        let mut gate = Gate::new(
            &AdmissionConfig {
                burst: 1,
                per_second: 20.0,
                max_in_flight: 4,
            },
            true,
            Arc::clone(&counters),
        );
        let started = std::time::Instant::now();
        let held = gate.ready().await;
        assert!(held.is_some());
        assert!(gate.admit(held).is_some());
        let held = gate.ready().await;
        assert!(
            gate.admit(held).is_some(),
            "waiting mode admits what it takes"
        );
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(40),
            "waited {waited:?} for a token"
        );
        let stats = counters.snapshot();
        assert_eq!((stats.accepted, stats.rejected, stats.deferred), (2, 0, 1));
    }

    #[test]
    fn bad_configurations_are_refused() {
        assert!(config(0, 1.0).validate().is_err());
        assert!(config(1, 0.0).validate().is_err());
        assert!(config(1, f64::NAN).validate().is_err());
        assert!(
            AdmissionConfig {
                max_in_flight: 0,
                ..Default::default()
            }
            .validate()
            .is_err()
        );
        assert!(AdmissionConfig::default().validate().is_ok());
    }
}
