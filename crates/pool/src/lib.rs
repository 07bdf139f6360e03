//! A bounded pool of server connections, generic over the connection type.
//!
//! # Why not deadpool
//!
//! The design card names `deadpool`, and its shape is close, but three things a
//! PostgreSQL pooler needs go against its grain:
//!
//! * a new server connection is opened with the *client's* startup packet
//!   (user, database, `options`, `application_name`...), so creating one takes
//!   arguments; deadpool's `Manager::create` takes none;
//! * a connection must be reset (`DISCARD ALL`) when it is *returned*, and only
//!   returned at all when the session left it in a known state; deadpool
//!   recycles at checkout and returns every dropped object;
//! * checkout should prefer an idle connection opened with the same startup
//!   parameters, and evict a mismatched idle one rather than exceed the limit.
//!
//! So the pool is small and ours, and knows nothing of sockets or SQL.
//!
//! # Model
//!
//! * At most `max_size` connections exist (idle + checked out + connecting),
//!   plus `reserve` more for callers that waited `reserve_after` already
//!   (pgbouncer's `reserve_pool_size` / `reserve_pool_timeout`: a burst gets
//!   a few extra connections instead of queueing behind a slow transaction).
//! * A [`Guard`] is a claim on one slot: it holds a semaphore permit and
//!   possibly a connection. Waiters queue fairly on the semaphore, with a
//!   timeout (pgbouncer's `query_wait_timeout`).
//! * A guard is returned with [`Guard::release`], which puts its connection back
//!   on the idle list. A guard dropped any other way *closes* its connection:
//!   the safe default is never to hand a connection in an unknown state to
//!   someone else.
//! * Connections are kept boxed, so a [`Guard`] is a few words: a session's
//!   future holds guards in several of its states, and guards holding their
//!   connections inline would make every idle client's task that much
//!   larger. The box is made once, when a connection is opened.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};

/// Errors of [`Pool::checkout`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("no server connection became free within {0:?}")]
    Timeout(Duration),
    #[error("the pool is closed")]
    Closed,
}

/// Counters of a pool at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolStatus {
    pub max_size: usize,
    /// Connections that exist or are being opened.
    pub total: usize,
    pub idle: usize,
    /// Guards handed out (each with or without a connection yet).
    pub checked_out: usize,
    /// Callers waiting for a slot.
    pub waiting: usize,
}

#[derive(Debug)]
struct State<C> {
    idle: Vec<Box<C>>,
    /// Idle connections plus the slots held by guards.
    total: usize,
}

#[derive(Debug)]
struct Inner<C> {
    max_size: usize,
    reserve: usize,
    waiting: std::sync::atomic::AtomicUsize,
    permits: Semaphore,
    reserve_permits: Semaphore,
    state: Mutex<State<C>>,
}

impl<C> Inner<C> {
    fn state(&self) -> MutexGuard<'_, State<C>> {
        // A panic while holding this lock cannot leave the state half-updated
        // (every critical section is a few field updates), so a poisoned lock
        // is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A pool of connections of type `C`. Cloning gives another handle to the same pool.
#[derive(Debug)]
pub struct Pool<C> {
    inner: Arc<Inner<C>>,
}

impl<C> Clone for Pool<C> {
    fn clone(&self) -> Self {
        Pool {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<C> Pool<C> {
    pub fn new(max_size: usize) -> Self {
        Pool::with_reserve(max_size, 0)
    }

    /// A pool of `max_size` plus `reserve` slots for long waiters.
    pub fn with_reserve(max_size: usize, reserve: usize) -> Self {
        Pool {
            inner: Arc::new(Inner {
                max_size,
                reserve,
                waiting: std::sync::atomic::AtomicUsize::new(0),
                permits: Semaphore::new(max_size),
                reserve_permits: Semaphore::new(reserve),
                state: Mutex::new(State {
                    idle: Vec::new(),
                    total: 0,
                }),
            }),
        }
    }

    /// Waits up to `timeout` for a slot, then takes the most recently used idle
    /// connection for which `matches` is true. When none matches, the guard is
    /// empty and the caller opens a connection; if the pool is full, one idle
    /// connection that does not match is evicted to make room and handed over
    /// in [`Guard::take_evicted`] so the caller can close it politely.
    pub async fn checkout(
        &self,
        timeout: Duration,
        matches: impl Fn(&C) -> bool,
    ) -> Result<Guard<C>, PoolError> {
        self.checkout_with_reserve(timeout, Duration::MAX, matches)
            .await
    }

    /// [`Pool::checkout`], taking a reserve slot if none frees up within
    /// `reserve_after` (and the pool has a reserve).
    /// Waits up to `timeout` for a slot, taking a reserve one after
    /// `reserve_after`.
    async fn wait_for_permit(
        &self,
        timeout: Duration,
        reserve_after: Duration,
    ) -> Result<(SemaphorePermit<'_>, Slot), PoolError> {
        let main = self.inner.permits.acquire();
        let reserve = &self.inner.reserve_permits;
        let has_reserve = self.inner.reserve > 0;
        let acquire = async move {
            if !has_reserve {
                return main.await.map(|p| (p, Slot::Main));
            }
            tokio::pin!(main);
            tokio::select! {
                p = &mut main => p.map(|p| (p, Slot::Main)),
                p = async {
                    tokio::time::sleep(reserve_after).await;
                    reserve.acquire().await
                } => p.map(|p| (p, Slot::Reserve)),
            }
        };
        let waiting = WaitingCount::new(&self.inner.waiting);
        let acquired = tokio::time::timeout(timeout, acquire).await;
        drop(waiting);
        match acquired {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(_)) => Err(PoolError::Closed),
            Err(_) => Err(PoolError::Timeout(timeout)),
        }
    }

    /// Without waiting: a free slot with the most recently released idle
    /// connection that `matches`, if `ready` says it can be used as it is.
    /// `None` leaves the pool as it was (the caller then takes the
    /// waiting path, [`Pool::checkout_with_reserve`]). This is the common
    /// case of every transaction, and costs no future.
    pub fn try_checkout_idle(
        &self,
        matches: impl Fn(&C) -> bool,
        ready: impl FnOnce(&mut C) -> bool,
    ) -> Option<Guard<C>> {
        let permit = self.inner.permits.try_acquire().ok()?;
        let mut state = self.inner.state();
        let i = state.idle.iter().rposition(|c| matches(c))?;
        if !ready(&mut state.idle[i]) {
            return None;
        }
        let conn = state.idle.remove(i);
        drop(state);
        Some(Guard::new(&self.inner, permit, Slot::Main, Some(conn)))
    }

    pub async fn checkout_with_reserve(
        &self,
        timeout: Duration,
        reserve_after: Duration,
        matches: impl Fn(&C) -> bool,
    ) -> Result<Guard<C>, PoolError> {
        // A free slot is the common case: taken without a timer (no clock
        // read, no timer entry).
        let (permit, slot) = match self.inner.permits.try_acquire() {
            Ok(p) => (p, Slot::Main),
            Err(tokio::sync::TryAcquireError::Closed) => return Err(PoolError::Closed),
            // Boxed: the waiting machinery (timers, a select) is most of
            // this future's size, and it is rarely needed.
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                Box::pin(self.wait_for_permit(timeout, reserve_after)).await?
            }
        };
        let mut state = self.inner.state();
        let mut guard = Guard::new(&self.inner, permit, slot, None);
        if let Some(i) = state.idle.iter().rposition(|c| matches(c)) {
            guard.conn = Some(state.idle.remove(i));
        } else if state.total < self.inner.max_size + self.inner.reserve {
            state.total += 1;
        } else {
            // Full: every slot is idle or checked out, and we hold a permit, so
            // at least one is idle. Reuse its slot.
            guard.evicted = state.idle.pop();
        }
        Ok(guard)
    }

    pub fn status(&self) -> PoolStatus {
        let state = self.inner.state();
        PoolStatus {
            max_size: self.inner.max_size,
            total: state.total,
            idle: state.idle.len(),
            checked_out: self.inner.max_size - self.inner.permits.available_permits()
                + (self.inner.reserve - self.inner.reserve_permits.available_permits()),
            waiting: self
                .inner
                .waiting
                .load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Removes and returns the idle connections for which `which` is true.
    pub fn drain_idle_where(&self, which: impl Fn(&C) -> bool) -> Vec<C> {
        let mut state = self.inner.state();
        let (taken, kept): (Vec<Box<C>>, Vec<Box<C>>) = std::mem::take(&mut state.idle)
            .into_iter()
            .partition(|c| which(c));
        state.idle = kept;
        state.total -= taken.len();
        taken.into_iter().map(|c| *c).collect()
    }

    /// Removes and returns every idle connection (for closing them).
    pub fn drain_idle(&self) -> Vec<C> {
        let mut state = self.inner.state();
        let idle = std::mem::take(&mut state.idle);
        state.total -= idle.len();
        idle.into_iter().map(|c| *c).collect()
    }
}

/// Counts a caller as waiting while it lives (also when the wait is cancelled).
struct WaitingCount<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> WaitingCount<'a> {
    fn new(count: &'a std::sync::atomic::AtomicUsize) -> Self {
        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        WaitingCount(count)
    }
}

impl Drop for WaitingCount<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A claim on one pool slot; see the crate docs.
#[derive(Debug)]
pub struct Guard<C> {
    pool: Arc<Inner<C>>,
    conn: Option<Box<C>>,
    evicted: Option<Box<C>>,
    /// Its connection went back to the idle list, which keeps the slot.
    released: bool,
    /// The semaphore whose permit this guard holds (forgotten when taken,
    /// given back when the guard drops: no `Arc` to the semaphore per
    /// checkout, as an owned permit would clone).
    slot: Slot,
}

/// Which of a pool's semaphores a guard's permit came from.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Main,
    Reserve,
}

impl<C> Guard<C> {
    /// Takes `permit` over: it is given back when the guard drops.
    fn new(
        pool: &Arc<Inner<C>>,
        permit: SemaphorePermit<'_>,
        slot: Slot,
        conn: Option<Box<C>>,
    ) -> Guard<C> {
        permit.forget();
        Guard {
            pool: Arc::clone(pool),
            conn,
            evicted: None,
            released: false,
            slot,
        }
    }

    /// The connection, if the guard holds one.
    pub fn conn(&mut self) -> Option<&mut C> {
        self.conn.as_deref_mut()
    }

    /// Puts a freshly opened connection in this slot.
    pub fn set(&mut self, conn: C) {
        self.conn = Some(Box::new(conn));
    }

    /// Takes the connection out; the slot stays claimed (e.g. to reconnect).
    pub fn take(&mut self) -> Option<C> {
        self.conn.take().map(|c| *c)
    }

    /// An idle connection that was evicted to make room for this checkout.
    pub fn take_evicted(&mut self) -> Option<C> {
        self.evicted.take().map(|c| *c)
    }

    /// Returns the connection to the idle list. The caller vouches that it is
    /// clean (in sync, outside any transaction, reset). An empty guard just
    /// frees its slot.
    pub fn release(mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.state().idle.push(conn);
            // The slot now belongs to the idle connection (one lock per
            // release: this runs for every transaction).
            self.released = true;
        }
    }
}

impl<C> Drop for Guard<C> {
    fn drop(&mut self) {
        // The slot this guard claimed is gone, unless its connection went
        // back idle (otherwise the connection is dropped with the guard).
        if !self.released {
            self.pool.state().total -= 1;
        }
        match self.slot {
            Slot::Main => self.pool.permits.add_permits(1),
            Slot::Reserve => self.pool.reserve_permits.add_permits(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn try_checkout_idle_takes_a_ready_idle_connection_or_changes_nothing() {
        let pool = Pool::new(2);
        // Empty pool: nothing idle, nothing taken.
        assert!(pool.try_checkout_idle(|_| true, |_| true).is_none());
        let mut a = pool.checkout(T, |_| true).await.unwrap();
        a.set("a");
        a.release();
        // Not ready (say, due for a check): left idle, slot not taken.
        assert!(pool.try_checkout_idle(|_| true, |c| *c != "a").is_none());
        assert!(pool.try_checkout_idle(|&c| c == "b", |_| true).is_none());
        assert_eq!(pool.status().idle, 1);
        assert_eq!(pool.status().checked_out, 0);
        let mut g = pool
            .try_checkout_idle(|_| true, |_| true)
            .expect("idle and ready");
        assert_eq!(g.conn().copied(), Some("a"));
        assert_eq!(pool.status().checked_out, 1);
        assert_eq!(pool.status().idle, 0);
        g.release();
        assert_eq!(pool.status().total, 1);
        // Every slot checked out: none.
        let _x = pool.checkout(T, |_| true).await.unwrap();
        let _y = pool.checkout(T, |_| true).await.unwrap();
        assert!(pool.try_checkout_idle(|_| true, |_| true).is_none());
    }

    #[tokio::test]
    async fn reuses_released_connections_lifo() {
        let pool = Pool::new(2);
        let mut a = pool.checkout(T, |_| true).await.unwrap();
        assert!(a.conn().is_none());
        a.set("a");
        let mut b = pool.checkout(T, |_| true).await.unwrap();
        b.set("b");
        a.release();
        b.release();
        assert_eq!(
            pool.status(),
            PoolStatus {
                max_size: 2,
                total: 2,
                idle: 2,
                checked_out: 0,
                waiting: 0
            }
        );
        let mut c = pool.checkout(T, |_| true).await.unwrap();
        assert_eq!(c.conn().copied(), Some("b"));
    }

    #[tokio::test]
    async fn dropped_guard_closes_its_connection() {
        let pool = Pool::new(1);
        let mut g = pool.checkout(T, |_| true).await.unwrap();
        g.set(String::from("dirty"));
        drop(g);
        assert_eq!(pool.status().total, 0);
        let mut g = pool.checkout(T, |_| true).await.unwrap();
        assert!(g.conn().is_none(), "a dirty connection is never handed out");
    }

    #[tokio::test]
    async fn prefers_matching_and_evicts_when_full() {
        let pool = Pool::new(2);
        let mut x = pool.checkout(T, |_| true).await.unwrap();
        x.set("x");
        let mut y = pool.checkout(T, |_| true).await.unwrap();
        y.set("y");
        x.release();
        y.release();
        let mut g = pool.checkout(T, |c| *c == "x").await.unwrap();
        assert_eq!(g.conn().copied(), Some("x"));
        g.release();
        // Nothing matches and the pool is full: an idle one makes room.
        let mut g = pool.checkout(T, |c| *c == "z").await.unwrap();
        assert!(g.conn().is_none());
        assert!(g.take_evicted().is_some());
        g.set("z");
        g.release();
        let s = pool.status();
        assert_eq!((s.total, s.idle), (2, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_time_out_then_get_freed_slots() {
        let pool = Pool::<u32>::new(1);
        let held = pool.checkout(T, |_| true).await.unwrap();
        let err = pool
            .checkout(Duration::from_secs(3), |_| true)
            .await
            .unwrap_err();
        assert_eq!(err, PoolError::Timeout(Duration::from_secs(3)));

        let p2 = pool.clone();
        let waiter = tokio::spawn(async move { p2.checkout(T, |_| true).await.is_ok() });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(pool.status().checked_out, 1);
        assert_eq!(pool.status().waiting, 1);
        drop(held);
        assert!(waiter.await.unwrap());
        assert_eq!(pool.status().total, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn long_waiters_get_a_reserve_slot() {
        let pool = Pool::<u32>::with_reserve(1, 1);
        let _held = pool.checkout(T, |_| true).await.unwrap();
        let started = tokio::time::Instant::now();
        let mut extra = pool
            .checkout_with_reserve(T, Duration::from_secs(2), |_| true)
            .await
            .unwrap();
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(2),
            "after reserve_after"
        );
        extra.set(7);
        assert_eq!(pool.status().checked_out, 2);
        // The reserve is used up: the next one times out.
        let err = pool
            .checkout_with_reserve(Duration::from_secs(5), Duration::from_secs(1), |_| true)
            .await
            .unwrap_err();
        assert_eq!(err, PoolError::Timeout(Duration::from_secs(5)));
        // A reserve slot goes back to the reserve, not to the main pool.
        drop(extra);
        assert!(pool
            .checkout(Duration::from_secs(1), |_| true)
            .await
            .is_err());
        assert!(pool
            .checkout_with_reserve(T, Duration::from_secs(1), |_| true)
            .await
            .is_ok());
        // A pool without a reserve never gives more than its size.
        let small = Pool::<u32>::new(1);
        let _one = small.checkout(T, |_| true).await.unwrap();
        assert!(small
            .checkout_with_reserve(Duration::from_secs(3), Duration::ZERO, |_| true)
            .await
            .is_err());
    }

    #[tokio::test]
    async fn drain_idle_where_takes_only_the_chosen() {
        let pool = Pool::new(3);
        for v in [1, 2, 3] {
            let mut g = pool.checkout(T, |_| false).await.unwrap();
            g.set(v);
            g.release();
        }
        assert_eq!(pool.drain_idle_where(|v| v % 2 == 1), vec![1, 3]);
        let s = pool.status();
        assert_eq!((s.total, s.idle), (1, 1));
    }

    #[tokio::test]
    async fn drain_idle_empties_the_pool() {
        let pool = Pool::new(3);
        let mut g = pool.checkout(T, |_| true).await.unwrap();
        g.set(1);
        g.release();
        assert_eq!(pool.drain_idle(), vec![1]);
        assert_eq!(pool.status().total, 0);
    }
}
