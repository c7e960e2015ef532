//! Engine settings, with the defaults documented in one place.

use std::time::Duration;

/// How the engine retries, limits and keeps things. [`EngineConfig::default`] documents each
/// default.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// First wait before retrying an undelivered message after a failed dial (default 5 s).
    pub retry_initial: Duration,
    /// Longest wait between delivery attempts (default 10 minutes).
    pub retry_max: Duration,
    /// First wait before re-dialling an accepted contact who is offline, to show presence
    /// (default 30 s).
    pub presence_initial: Duration,
    /// Longest wait between presence dials (default 30 minutes).
    pub presence_max: Duration,
    /// Dial accepted contacts at start and while they are offline, so both sides see each
    /// other online (default true). Off, contacts are dialled only to deliver something, which
    /// reveals less about when you are online.
    pub presence: bool,
    /// A dial that has not produced a stream by then counts as failed (default 120 s).
    pub dial_timeout: Duration,
    /// Undelivered messages fail after this long in the queue (default 30 days): by the wall
    /// clock, and only once they have been past it for a day of the daemon's running time, so
    /// that a clock jumping forward does not fail the whole queue.
    pub message_expiry: Duration,
    /// Contact requests from strangers: bucket size across all sources (default 20).
    pub stranger_burst: u32,
    /// … refilled at this many per minute (default 10).
    pub stranger_per_minute: u32,
    /// Contact requests from one stranger: bucket size (default 3).
    pub per_source_burst: u32,
    /// … refilled at this many per hour (default 6).
    pub per_source_per_hour: u32,
    /// Most unanswered requests kept; one more makes room by dropping the oldest (default
    /// 1000), so the newest are always there to review.
    pub max_pending_requests: usize,
    /// Bytes of messages one accepted contact may make us store per day (each message counts
    /// at least 1 KiB); beyond, their messages are refused with a negative acknowledgement
    /// (`over_quota`) and fail at their end (default 64 MiB).
    pub incoming_bytes_per_day: u32,
    /// How long a rejected request is remembered, to answer the same person asking again with
    /// a rejection; then it is forgotten (default 30 days). Blocked addresses stay blocked.
    pub rejection_memory: Duration,
    /// Events kept in the durable log (default 100,000).
    pub event_retention: u64,
    /// Keepalive interval of sessions (default 60 s).
    pub keepalive: Duration,
    /// A session silent this long is dead (default 180 s).
    pub idle_timeout: Duration,
    /// Device certificates are issued for this long (default 365 days).
    pub certificate_lifetime: Duration,
    /// The device key is replaced this long before its certificate expires, at start or while
    /// running (default 30 days).
    pub certificate_renew_before: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            retry_initial: Duration::from_secs(5),
            retry_max: Duration::from_secs(600),
            presence_initial: Duration::from_secs(30),
            presence_max: Duration::from_secs(1800),
            presence: true,
            dial_timeout: Duration::from_secs(120),
            message_expiry: Duration::from_secs(30 * 24 * 3600),
            stranger_burst: 20,
            stranger_per_minute: 10,
            per_source_burst: 3,
            per_source_per_hour: 6,
            max_pending_requests: 1000,
            rejection_memory: Duration::from_secs(30 * 24 * 3600),
            incoming_bytes_per_day: 64 << 20,
            event_retention: 100_000,
            keepalive: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(180),
            certificate_lifetime: Duration::from_secs(365 * 24 * 3600),
            certificate_renew_before: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

impl EngineConfig {
    /// The wait before attempt `attempts + 1`: exponential from `initial`, capped at `max`,
    /// with ±25 % jitter so that many contacts do not retry in lockstep.
    pub(crate) fn backoff(
        initial: Duration,
        max: Duration,
        attempts: u32,
        jitter: f64,
    ) -> Duration {
        let factor = 2f64.powi(i32::try_from(attempts.min(30)).unwrap_or(30));
        let base = initial.as_secs_f64() * factor;
        let capped = base.min(max.as_secs_f64());
        Duration::from_secs_f64(capped * (0.75 + 0.5 * jitter.clamp(0.0, 1.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_caps_and_jitters_within_a_quarter() {
        let (i, m) = (Duration::from_secs(5), Duration::from_secs(600));
        assert_eq!(EngineConfig::backoff(i, m, 0, 0.5), Duration::from_secs(5));
        assert_eq!(EngineConfig::backoff(i, m, 3, 0.5), Duration::from_secs(40));
        assert_eq!(
            EngineConfig::backoff(i, m, 20, 0.5),
            Duration::from_secs(600)
        );
        assert_eq!(
            EngineConfig::backoff(i, m, 1, 0.0),
            Duration::from_secs_f64(7.5)
        );
        assert_eq!(
            EngineConfig::backoff(i, m, 1, 1.0),
            Duration::from_secs_f64(12.5)
        );
    }
}
