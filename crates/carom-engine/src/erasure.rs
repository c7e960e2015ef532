//! When to erase expired messages and when to checkpoint: the one home of those rules, with
//! no I/O (the machine carries out what it decides).
//!
//! Messages carry the wall-clock time they are erased at (the store computes it when it
//! stores them). Erasure reads its own clock: the wall clock, but never behind what it read
//! before, advanced by the monotonic clock in between. So a wall clock set **back** does not
//! bring an erasure back into the future: it goes ahead when the real time has passed. A wall
//! clock set **forward** erases early — on the side of erasure, which is what a disappearing
//! timer promises; the user can see the jump. The floor survives restarts (the store keeps the
//! latest time erasure ran at), so a clock set back while the daemon was stopped cannot keep
//! anything past the time erasure had already reached.
//!
//! Erasure runs in batches of [`BATCH`] messages, each its own short transaction, so that it
//! never holds the store for long: deliveries and API calls get in between. When a run has
//! nothing more due, one checkpoint moves the WAL into the database and truncates it, which is
//! what removes the older copies of the erased pages. Bodies erased elsewhere (a delete, a
//! withdrawal) ask for a checkpoint too; requests made while one runs are folded into one more.
//!
//! What it is not: the erasure itself (`carom_store::WriteTx::erase_expired`).

use std::time::{Duration, Instant};

use crate::machine::Now;

/// Most messages erased in one transaction.
pub(crate) const BATCH: u32 = 500;
/// After a failed erasure, try again this much later.
const RETRY: Duration = Duration::from_secs(60);
/// The wall clock is looked at again at least this often, so that a clock set forward is
/// noticed (the timer itself runs on the monotonic clock).
const RECHECK: Duration = Duration::from_secs(60);

/// What to do now.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Erase what is due by this time (wall clock, ms), at most [`BATCH`] messages.
    Erase { up_to: u64 },
    /// Move the WAL into the database and truncate it.
    Checkpoint,
}

/// The erasure clock: see the module documentation. The machine reads one to decide what is
/// due; the engine's writers read another, started from the same floor, to stamp what they
/// store with the time it is erased at. Both follow the same line (the wall clock as it was,
/// advanced by the monotonic clock) however the wall clock moves between their readings, so
/// they agree.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    wall_ms: u64,
    at: Instant,
}

impl Clock {
    /// A clock at `now`, never behind `floor` (the latest time erasure ran at).
    pub(crate) fn new(now: Now, floor: u64) -> Clock {
        Clock {
            wall_ms: now.wall_ms.max(floor),
            at: now.at,
        }
    }

    fn peek(&self, now: Now) -> u64 {
        let elapsed = now.at.saturating_duration_since(self.at).as_millis();
        let advanced = self
            .wall_ms
            .saturating_add(u64::try_from(elapsed).unwrap_or(u64::MAX));
        now.wall_ms.max(advanced)
    }

    /// The time now, on this clock.
    pub(crate) fn read(&mut self, now: Now) -> u64 {
        let t = self.peek(now);
        self.wall_ms = t;
        self.at = now.at;
        t
    }
}

/// The erasure schedule.
#[derive(Debug)]
pub(crate) struct Erasure {
    clock: Clock,
    /// The earliest time a stored message is erased at, as far as we know.
    next: Option<u64>,
    /// An erasure batch is under way.
    erasing: bool,
    /// Erased since the last checkpoint.
    dirty: bool,
    checkpointing: bool,
    /// Asked for while one was under way: one more when it ends.
    checkpoint_again: bool,
    /// After a failure, nothing before this (monotonic).
    retry_at: Option<Instant>,
}

impl Erasure {
    /// The schedule at start: the latest time erasure ever ran at (`high_water`, from the
    /// store) is the clock's floor; `next` is the earliest expiry stored.
    pub(crate) fn new(now: Now, high_water: u64, next: Option<u64>) -> Erasure {
        Erasure {
            clock: Clock::new(now, high_water),
            next,
            erasing: false,
            dirty: false,
            checkpointing: false,
            checkpoint_again: false,
            retry_at: None,
        }
    }

    /// A message that is erased at `at` was stored.
    pub(crate) fn expiring(&mut self, at: u64) {
        self.next = Some(self.next.map_or(at, |n| n.min(at)));
    }

    /// When [`Erasure::poll`] is next due, if ever.
    pub(crate) fn poll_timeout(&self, now: Now) -> Option<Instant> {
        if self.erasing {
            return None;
        }
        let next = self.next?;
        if let Some(retry) = self.retry_at {
            return Some(retry);
        }
        let wait = Duration::from_millis(next.saturating_sub(self.clock.peek(now)));
        Some(now.at + wait.min(RECHECK))
    }

    /// What is due now, if anything.
    pub(crate) fn poll(&mut self, now: Now) -> Option<Action> {
        if self.erasing || self.retry_at.is_some_and(|t| now.at < t) {
            return None;
        }
        self.retry_at = None;
        let up_to = self.clock.read(now);
        match self.next {
            Some(next) if next <= up_to => {
                self.erasing = true;
                // What the batch leaves is reported back in `erased`; until then, whatever is
                // stored meanwhile comes in through `expiring`.
                self.next = None;
                Some(Action::Erase { up_to })
            }
            _ => None,
        }
    }

    /// A batch up to `up_to` finished: it erased `count` messages, and `next` is the earliest
    /// expiry left in the store. A checkpoint follows once nothing more is due.
    pub(crate) fn erased(
        &mut self,
        up_to: u64,
        count: usize,
        next: Option<u64>,
        now: Now,
    ) -> Option<Action> {
        if count == 0 && next.is_some_and(|n| n <= up_to) {
            // Something is due that the batch did not erase: asking again at once would only
            // spin. A bug; handled as a failure, tried again later.
            tracing::warn!("an erasure batch erased nothing of what is due; retrying later");
            self.failed(up_to, now);
            return None;
        }
        self.erasing = false;
        self.dirty |= count > 0;
        if let Some(next) = next {
            self.expiring(next);
        }
        if let Some(action) = self.poll(now) {
            return Some(action);
        }
        if std::mem::take(&mut self.dirty) {
            return self.checkpoint();
        }
        None
    }

    /// A batch failed: the store is in trouble; try again later.
    pub(crate) fn failed(&mut self, up_to: u64, now: Now) {
        self.erasing = false;
        self.expiring(up_to);
        self.retry_at = Some(now.at + RETRY);
    }

    /// A body was erased elsewhere: a checkpoint is wanted.
    pub(crate) fn checkpoint(&mut self) -> Option<Action> {
        if self.checkpointing {
            self.checkpoint_again = true;
            return None;
        }
        self.checkpointing = true;
        Some(Action::Checkpoint)
    }

    /// A checkpoint finished (or failed, which the driver logs: the next one will try again).
    pub(crate) fn checkpointed(&mut self) -> Option<Action> {
        self.checkpointing = false;
        if std::mem::take(&mut self.checkpoint_again) {
            return self.checkpoint();
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR_MS: u64 = 3_600_000;

    struct Time {
        start: Instant,
        wall: u64,
        elapsed: Duration,
    }

    impl Time {
        fn new() -> Time {
            Time {
                start: Instant::now(),
                wall: 1_800_000_000_000,
                elapsed: Duration::ZERO,
            }
        }
        fn now(&self) -> Now {
            Now {
                at: self.start + self.elapsed,
                wall_ms: self.wall,
            }
        }
        /// Real time passes: both clocks move.
        fn pass(&mut self, d: Duration) {
            self.elapsed += d;
            self.wall += u64::try_from(d.as_millis()).unwrap();
        }
        /// Someone sets the wall clock.
        fn set_wall(&mut self, delta_ms: i64) {
            self.wall = self.wall.checked_add_signed(delta_ms).unwrap();
        }
    }

    #[test]
    fn an_expiry_is_erased_when_due_then_checkpointed_once() {
        let mut t = Time::new();
        let mut e = Erasure::new(t.now(), 0, None);
        assert_eq!(e.poll_timeout(t.now()), None, "nothing to erase, no timer");
        e.expiring(t.wall + 5_000);
        e.expiring(t.wall + 9_000);
        assert_eq!(
            e.poll_timeout(t.now()),
            Some(t.now().at + Duration::from_secs(5))
        );
        t.pass(Duration::from_millis(4_999));
        assert_eq!(e.poll(t.now()), None);
        t.pass(Duration::from_millis(1));
        let Some(Action::Erase { up_to }) = e.poll(t.now()) else {
            panic!("due")
        };
        assert_eq!(up_to, t.wall);
        // While the batch runs, nothing else starts.
        assert_eq!(e.poll(t.now()), None);
        assert_eq!(e.poll_timeout(t.now()), None);
        // The batch erased one; the store says the next is at +9 s: not due, so checkpoint.
        let next = t.wall + 4_000;
        assert_eq!(
            e.erased(t.wall, 1, Some(next), t.now()),
            Some(Action::Checkpoint)
        );
        assert_eq!(e.checkpointed(), None);
        // Nothing erased: no checkpoint.
        t.pass(Duration::from_secs(4));
        assert!(matches!(e.poll(t.now()), Some(Action::Erase { .. })));
        assert_eq!(e.erased(t.wall, 0, None, t.now()), None);
        assert_eq!(e.poll_timeout(t.now()), None);
    }

    #[test]
    fn a_full_batch_goes_straight_on_to_the_next() {
        let t = Time::new();
        let mut e = Erasure::new(t.now(), 0, Some(t.wall));
        assert!(matches!(e.poll(t.now()), Some(Action::Erase { .. })));
        // More are due already: erase again before any checkpoint.
        let again = e.erased(t.wall, BATCH as usize, Some(t.wall), t.now());
        assert!(matches!(again, Some(Action::Erase { .. })));
        assert_eq!(e.erased(t.wall, 3, None, t.now()), Some(Action::Checkpoint));
    }

    #[test]
    fn a_batch_that_erases_nothing_of_what_is_due_is_retried_later_not_at_once() {
        let mut t = Time::new();
        let mut e = Erasure::new(t.now(), 0, Some(t.wall));
        let Some(Action::Erase { up_to }) = e.poll(t.now()) else {
            panic!("due")
        };
        // The store still reports something due by `up_to`, yet erased nothing.
        assert_eq!(e.erased(up_to, 0, Some(up_to), t.now()), None);
        assert_eq!(e.poll(t.now()), None, "not asked again at once");
        t.pass(RETRY);
        assert!(matches!(e.poll(t.now()), Some(Action::Erase { .. })));
    }

    #[test]
    fn a_clock_set_back_delays_nothing() {
        let mut t = Time::new();
        let mut e = Erasure::new(t.now(), 0, None);
        e.expiring(t.wall + HOUR_MS);
        t.pass(Duration::from_secs(1800));
        // Someone sets the clock back a day: the hour still ends half an hour from now.
        t.set_wall(-24 * i64::try_from(HOUR_MS).unwrap());
        t.pass(Duration::from_secs(1799));
        assert_eq!(e.poll(t.now()), None);
        t.pass(Duration::from_secs(1));
        assert!(matches!(e.poll(t.now()), Some(Action::Erase { .. })));
    }

    #[test]
    fn a_clock_set_back_while_stopped_is_floored_by_the_last_erasure() {
        let t = Time::new();
        // The last run reached `t.wall`; the clock now reads a day earlier.
        let mut earlier = Time::new();
        earlier.set_wall(-24 * i64::try_from(HOUR_MS).unwrap());
        let mut e = Erasure::new(earlier.now(), t.wall, Some(t.wall - 1));
        let Some(Action::Erase { up_to }) = e.poll(earlier.now()) else {
            panic!("what was due before the clock went back is due now")
        };
        assert_eq!(up_to, t.wall);
    }

    #[test]
    fn a_clock_set_forward_erases_early_within_a_recheck() {
        let mut t = Time::new();
        let mut e = Erasure::new(t.now(), 0, None);
        e.expiring(t.wall + 24 * HOUR_MS);
        // The timer is at most a minute away, whatever the expiry: the wall clock is read
        // again by then.
        let timeout = e.poll_timeout(t.now()).unwrap();
        assert_eq!(timeout, t.now().at + RECHECK);
        t.pass(Duration::from_secs(10));
        t.set_wall(2 * 24 * i64::try_from(HOUR_MS).unwrap());
        t.pass(Duration::from_secs(50));
        assert!(matches!(e.poll(t.now()), Some(Action::Erase { .. })));
    }

    #[test]
    fn checkpoints_asked_for_while_one_runs_are_folded_into_one_more() {
        let mut e = Erasure::new(Time::new().now(), 0, None);
        assert_eq!(e.checkpoint(), Some(Action::Checkpoint));
        assert_eq!(e.checkpoint(), None);
        assert_eq!(e.checkpoint(), None);
        assert_eq!(e.checkpointed(), Some(Action::Checkpoint));
        assert_eq!(e.checkpointed(), None);
    }

    #[test]
    fn a_failed_batch_is_tried_again_later_not_in_a_loop() {
        let mut t = Time::new();
        let mut e = Erasure::new(t.now(), 0, Some(t.wall));
        let Some(Action::Erase { up_to }) = e.poll(t.now()) else {
            panic!("due")
        };
        e.failed(up_to, t.now());
        assert_eq!(e.poll(t.now()), None);
        assert_eq!(e.poll_timeout(t.now()), Some(t.now().at + RETRY));
        t.pass(RETRY);
        assert!(matches!(e.poll(t.now()), Some(Action::Erase { .. })));
    }
}
