//! Sleeps timed by the kernel (a Linux `timerfd`), for pgherd's periodic
//! background work: the health probes' pauses, the idle-server sweep, the
//! stats period.
//!
//! Why not `tokio::time::sleep`: while any tokio timer is pending, every
//! time the runtime waits for I/O it asks the timer wheel for its next
//! deadline, waits in `epoll_wait` with that timeout, and reads the clock
//! and scans the wheel around each wait; a timed wait also costs the
//! kernel more than an untimed one. pgherd's periodic loops run for the
//! process's whole life, so a timer
//! was always pending, and at one client the proxy sleeps and wakes twice
//! per transaction. With those loops on timerfds — file descriptors in the
//! same epoll set, costing nothing until they fire — no tokio timer is
//! pending in steady state (the data path sets one only while a client
//! waits for a server, or when a client or query limit is configured): the
//! runtime waits with no timeout and its wheel is empty.
//!
//! Timeouts that guard one request (logins, pool waits, a probe's own
//! timeout) stay tokio's: they are pending only while that request is.
//!
//! If a timerfd cannot be had (no file descriptor left), a [`Sleeper`]
//! falls back to tokio's timer: slower, never wrong.

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::Duration;

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// One timerfd, re-armed for each sleep. Owned by one loop: a sleep takes
/// `&mut self`, so two sleeps cannot share (and re-arm) one timer.
#[derive(Debug)]
pub struct Sleeper {
    timer: Option<AsyncFd<Timer>>,
}

/// `AsyncFd` needs `AsRawFd`; nix's `TimerFd` offers `AsFd`.
#[derive(Debug)]
struct Timer(TimerFd);

impl AsRawFd for Timer {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl Sleeper {
    /// A sleeper on a new timerfd (monotonic clock), registered with the
    /// current tokio runtime's I/O driver; one on tokio's timer if that
    /// fails. Must be called within a tokio runtime.
    pub fn new() -> Sleeper {
        let timer = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )
        .map_err(io::Error::from)
        .and_then(register);
        Sleeper { timer: timer.ok() }
    }

    /// A sleeper on tokio's timer (the fallback), for tests.
    #[cfg(test)]
    fn on_tokio_timer() -> Sleeper {
        Sleeper { timer: None }
    }

    /// Returns after `duration`. Dropping the future before then is fine:
    /// the next sleep re-arms the timer, which also clears an expiry that
    /// nobody waited for.
    pub async fn sleep(&mut self, duration: Duration) {
        if duration.is_zero() {
            // A zero expiry would disarm the timer instead of firing it.
            return;
        }
        let Some(timer) = &self.timer else {
            return tokio::time::sleep(duration).await;
        };
        if let Err(e) = arm(timer, duration) {
            return fall_back(e, duration).await;
        }
        loop {
            let mut ready = match timer.readable().await {
                Ok(ready) => ready,
                Err(e) => return fall_back(e, duration).await,
            };
            // An earlier expiry's readiness can still be recorded: only a
            // read that finds an expiry ends the sleep.
            match ready.try_io(|t| expiries(t.get_ref())) {
                Ok(Ok(())) => return,
                Ok(Err(e)) => return fall_back(e, duration).await,
                Err(_would_block) => continue,
            }
        }
    }
}

impl Default for Sleeper {
    fn default() -> Sleeper {
        Sleeper::new()
    }
}

/// Registers `fd` with the current runtime's I/O driver, for reading.
// The workspace denies unsafe code; this is its one use, the registration
// tokio asks callers to vouch for (its safe `AsyncFd::new` is deprecated
// for that reason).
#[allow(unsafe_code)]
fn register(fd: TimerFd) -> io::Result<AsyncFd<Timer>> {
    // SAFETY: `Timer` owns the timerfd (nix's `TimerFd` holds an `OwnedFd`)
    // and never replaces it, so the descriptor stays open, and the same,
    // for as long as the `AsyncFd` that owns the `Timer` lives.
    unsafe { AsyncFd::register_with_interest(Timer(fd), Interest::READABLE) }
        .map_err(io::Error::from)
}

/// Sets `timer` to expire once, `duration` from now.
fn arm(timer: &AsyncFd<Timer>, duration: Duration) -> io::Result<()> {
    timer
        .get_ref()
        .0
        .set(
            Expiration::OneShot(TimeSpec::from_duration(duration)),
            TimerSetTimeFlags::empty(),
        )
        .map_err(io::Error::from)
}

/// Reads the timer's expiry count (`WouldBlock` when it has not expired).
fn expiries(timer: &Timer) -> io::Result<()> {
    let mut count = [0u8; 8];
    nix::unistd::read(timer.as_raw_fd(), &mut count)
        .map(drop)
        .map_err(io::Error::from)
}

/// A timerfd failed mid-sleep (not seen in practice): sleep on tokio's
/// timer instead, the full duration (late rather than early).
async fn fall_back(error: io::Error, duration: Duration) {
    tracing::warn!("timerfd failed ({error}); sleeping on tokio's timer");
    tokio::time::sleep(duration).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[tokio::test]
    async fn sleeps_at_least_as_long_as_asked() {
        let mut s = Sleeper::new();
        assert!(s.timer.is_some());
        for ms in [30, 1, 20] {
            let started = Instant::now();
            s.sleep(Duration::from_millis(ms)).await;
            assert!(started.elapsed() >= Duration::from_millis(ms), "{ms} ms");
        }
    }

    #[tokio::test]
    async fn an_abandoned_sleep_does_not_cut_the_next_one_short() {
        let mut s = Sleeper::new();
        // Armed for 5 ms, abandoned; the runtime sees it expire (and
        // records the timerfd as readable) while nobody reads it.
        let abandoned =
            tokio::time::timeout(Duration::from_millis(1), s.sleep(Duration::from_millis(5))).await;
        assert!(abandoned.is_err());
        tokio::time::sleep(Duration::from_millis(20)).await;
        let started = Instant::now();
        s.sleep(Duration::from_millis(50)).await;
        assert!(started.elapsed() >= Duration::from_millis(50));
    }

    #[tokio::test]
    async fn zero_returns_at_once() {
        let mut s = Sleeper::new();
        tokio::time::timeout(Duration::from_secs(5), s.sleep(Duration::ZERO))
            .await
            .expect("a zero sleep does not disarm the timer and wait forever");
    }

    #[tokio::test]
    async fn the_fallback_sleeps_on_tokio_timer() {
        let mut s = Sleeper::on_tokio_timer();
        assert!(s.timer.is_none());
        let started = Instant::now();
        s.sleep(Duration::from_millis(20)).await;
        assert!(started.elapsed() >= Duration::from_millis(20));
    }

    #[tokio::test]
    async fn many_loops_each_with_its_own_timer() {
        let loops = (0..8u64).map(|i| {
            tokio::spawn(async move {
                let mut s = Sleeper::new();
                let started = Instant::now();
                for _ in 0..3 {
                    s.sleep(Duration::from_millis(5 + i)).await;
                }
                started.elapsed() >= Duration::from_millis(3 * (5 + i))
            })
        });
        for l in loops {
            assert!(l.await.expect("loop ran"));
        }
    }
}
