//! The data path's clock: monotonic microseconds in one `u64`.
//!
//! Why not `std::time::Instant`: a transaction reads the clock a few times
//! (when the client asked for a server, when it got one, when it gave it
//! back) and compares with several of them (`server_lifetime`,
//! `server_check_delay`, wait and transaction times). `Instant` keeps
//! seconds and nanoseconds apart, and each subtraction normalizes them with
//! overflow checks: callgrind counted ~37 instructions per subtraction and
//! ~26 per reading (plus the vDSO's), ~460 per transaction in `Instant`'s
//! functions in all (tokio's own readings included). Here a reading is one
//! `clock_gettime` and a subtraction is one instruction; the change saved
//! 452 instructions per transaction.

use std::time::Duration;

use nix::time::{clock_gettime, ClockId};

/// A point in time: microseconds on the monotonic clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Micros(u64);

impl Micros {
    pub(crate) fn now() -> Micros {
        // CLOCK_MONOTONIC cannot fail on Linux; 0 would only make every
        // time "long ago".
        clock_gettime(ClockId::CLOCK_MONOTONIC).map_or(Micros(0), |t| {
            let secs = u64::try_from(t.tv_sec()).unwrap_or(0);
            let micros = u64::try_from(t.tv_nsec()).unwrap_or(0) / 1_000;
            Micros(secs.saturating_mul(1_000_000).saturating_add(micros))
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
}
