//! The data path's clock: monotonic microseconds in one `u64`.
//!
//! Why not `std::time::Instant`: a transaction reads the clock a few times
//! (when the client asked for a server, when it got one, when it gave it
//! back) and compares with several of them (`server_lifetime`,
//! `server_check_delay`, wait and transaction times). `Instant` keeps
//! seconds and nanoseconds apart, and each subtraction normalizes them with
//! overflow checks, dozens of instructions each; here a reading is one
//! `clock_gettime` and a subtraction is one instruction.
//!
//! Stamps taken on every transaction use `Micros::recent`: like
//! pgbouncer's cached loop time, the time the event loop woke up, read
//! once per wake-up (the runtime calls [`loop_woke`]) instead of twice per
//! transaction. A loop that stays busy without sleeping re-reads the clock
//! every `REREAD` stamps, so a stamp is late by at most the time the loop
//! took to hand out that many (a few transactions' work), not by how long
//! the loop has been busy.

use std::cell::Cell;
use std::time::Duration;

/// A point in time: microseconds on the monotonic clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Micros(u64);

impl Micros {
    /// The clock's start: "long ago".
    pub(crate) const ZERO: Micros = Micros(0);

    pub(crate) fn now() -> Micros {
        read_clock()
    }

    /// About now: this thread's event-loop time (see the module docs), or
    /// the clock itself on a thread whose runtime does not call
    /// [`loop_woke`].
    pub(crate) fn recent() -> Micros {
        LOOP_TIME.with(|cached| {
            let (at, stamps) = cached.get();
            if at == 0 {
                return Micros::now();
            }
            if stamps >= REREAD {
                let now = Micros::now();
                cached.set((now.0, 1));
                return now;
            }
            cached.set((at, stamps + 1));
            Micros(at)
        })
    }

    /// Time from `earlier` to this (zero if `earlier` is later).
    pub(crate) fn since(self, earlier: Micros) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }

    /// The microseconds themselves (for counters and the console).
    pub(crate) fn as_u64(self) -> u64 {
        self.0
    }
}

#[cfg(not(test))]
fn read_clock() -> Micros {
    use nix::time::{clock_gettime, ClockId};
    // CLOCK_MONOTONIC cannot fail on Linux; 0 would only make every time
    // "long ago".
    clock_gettime(ClockId::CLOCK_MONOTONIC).map_or(Micros(0), |t| {
        let secs = u64::try_from(t.tv_sec()).unwrap_or(0);
        let micros = u64::try_from(t.tv_nsec()).unwrap_or(0) / 1_000;
        Micros(secs.saturating_mul(1_000_000).saturating_add(micros))
    })
}

#[cfg(test)]
use test_clock::now as read_clock;

/// The seam that lets unit tests run the data path's timing under tokio's
/// paused time (`#[tokio::test(start_paused = true)]`): in test builds the
/// clock is tokio's, which follows the monotonic clock unless paused.
#[cfg(test)]
mod test_clock {
    use std::sync::OnceLock;

    use super::Micros;

    pub(super) fn now() -> Micros {
        static ORIGIN: OnceLock<std::time::Instant> = OnceLock::new();
        let origin = *ORIGIN.get_or_init(std::time::Instant::now);
        let now = tokio::time::Instant::now().into_std();
        let since = now.saturating_duration_since(origin);
        // Never 0, which reads as "long ago".
        Micros(u64::try_from(since.as_micros()).unwrap_or(u64::MAX).max(1))
    }
}

/// Stamps a busy loop hands out from one reading.
const REREAD: u32 = 8;

thread_local! {
    /// The loop's last reading (0: none, this thread's runtime does not
    /// report wake-ups) and the stamps handed out from it.
    static LOOP_TIME: Cell<(u64, u32)> = const { Cell::new((0, 0)) };
}

/// The runtime's event loop on this thread woke up (tokio's
/// `on_thread_unpark`): reads the clock for `Micros::recent`.
pub fn loop_woke() {
    LOOP_TIME.with(|cached| cached.set((Micros::now().0, 0)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_monotonic_clock() {
        let before = std::time::Instant::now();
        let a = Micros::now();
        std::thread::sleep(Duration::from_millis(20));
        let b = Micros::now();
        let after = std::time::Instant::now();
        // Within what std's clock saw around both readings (+1 µs for
        // rounding each down to a microsecond).
        assert!(b.since(a) >= Duration::from_millis(20), "{:?}", b.since(a));
        assert!(b.since(a) <= after - before + Duration::from_micros(1));
        assert_eq!(a.since(b), Duration::ZERO);
        assert!(a < b);
    }

    #[test]
    fn recent_is_the_clock_without_a_loop_and_the_loop_time_with_one() {
        // No wake-up reported on this thread: every stamp reads the clock.
        let a = Micros::recent();
        std::thread::sleep(Duration::from_millis(2));
        assert!(Micros::recent().since(a) >= Duration::from_millis(2));

        loop_woke();
        let woke = Micros::recent();
        std::thread::sleep(Duration::from_millis(2));
        // Within one wake-up, stamps are the loop's time...
        for _ in 1..REREAD {
            assert_eq!(Micros::recent(), woke);
        }
        // ...until a busy loop has handed out REREAD of them.
        assert!(Micros::recent().since(woke) >= Duration::from_millis(2));
        std::thread::sleep(Duration::from_millis(2));
        loop_woke();
        assert!(Micros::recent().since(woke) >= Duration::from_millis(4));
    }
}
