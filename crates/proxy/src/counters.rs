//! Counters the data path adds to without a locked instruction.
//!
//! Every transaction adds to its pool's counters (queries, transactions,
//! bytes, times, a histogram bucket). As plain `fetch_add`s those are six
//! locked instructions per transaction, each one a pipeline stall on the
//! hot path. Here each of the runtime's threads gets a copy of the
//! counters of its own, which only it writes (a load and a store, no
//! lock), and a reader sums the copies.
//!
//! The runtime says how many threads write ([`set_writer_threads`]); each
//! of the first that many threads to add to any counter gets a copy. Any
//! other thread (a test's runtime, a thread started later) adds to one
//! shared copy with atomic adds, as before: always correct, only slower.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Threads that get a copy of their own (set once, before they start).
static WRITER_THREADS: AtomicUsize = AtomicUsize::new(0);
/// Copies handed out so far.
static CLAIMED: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's copy: its index, or `usize::MAX` before its first add.
    static COPY: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// The runtime runs `n` threads that add to counters: the first `n` to do
/// so get copies of their own. Call before they start.
pub fn set_writer_threads(n: usize) {
    WRITER_THREADS.store(n, Ordering::Relaxed);
}

fn this_thread() -> usize {
    COPY.with(|copy| {
        let mut i = copy.get();
        if i == usize::MAX {
            i = CLAIMED.fetch_add(1, Ordering::Relaxed);
            copy.set(i);
        }
        i
    })
}

/// A set of counters `T`, one copy per writing thread plus a shared one.
#[derive(Debug)]
pub(crate) struct Sharded<T> {
    /// The writers' copies, then the shared one (last).
    copies: Box<[Aligned<T>]>,
}

/// A copy on cache lines of its own, so two writers never share one.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Aligned<T>(T);

impl<T: Default> Default for Sharded<T> {
    fn default() -> Self {
        let n = WRITER_THREADS.load(Ordering::Relaxed) + 1;
        Sharded {
            copies: (0..n).map(|_| Aligned::default()).collect(),
        }
    }
}

impl<T> Sharded<T> {
    /// The copy this thread adds to.
    pub(crate) fn local(&self) -> Local<'_, T> {
        let shared = self.copies.len() - 1;
        let i = this_thread().min(shared);
        Local {
            counters: &self.copies[i].0,
            only_writer: i < shared,
        }
    }

    /// Every copy, to sum.
    pub(crate) fn copies(&self) -> impl Iterator<Item = &T> {
        self.copies.iter().map(|c| &c.0)
    }
}

/// One thread's view of a [`Sharded`] set.
pub(crate) struct Local<'a, T> {
    pub(crate) counters: &'a T,
    /// No other thread writes these counters.
    only_writer: bool,
}

impl<T> Local<'_, T> {
    /// Adds `v` to `counter` (one of `self.counters`).
    pub(crate) fn add(&self, counter: &AtomicU64, v: u64) {
        if self.only_writer {
            // Readers may see the old value for a moment, never a torn one.
            counter.store(
                counter.load(Ordering::Relaxed).wrapping_add(v),
                Ordering::Relaxed,
            );
        } else {
            counter.fetch_add(v, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default)]
    struct Two {
        a: AtomicU64,
        b: AtomicU64,
    }

    fn total(s: &Sharded<Two>) -> (u64, u64) {
        s.copies().fold((0, 0), |(a, b), c| {
            (
                a + c.a.load(Ordering::Relaxed),
                b + c.b.load(Ordering::Relaxed),
            )
        })
    }

    #[test]
    fn threads_add_to_their_own_copies_or_the_shared_one_and_none_is_lost() {
        // The only test in this binary that sets the number (it is global).
        set_writer_threads(2);
        let s = Sharded::<Two>::default();
        assert_eq!(s.copies.len(), 3);
        std::thread::scope(|scope| {
            for _ in 0..6 {
                scope.spawn(|| {
                    for _ in 0..200_000 {
                        let local = s.local();
                        local.add(&local.counters.a, 1);
                        local.add(&local.counters.b, 2);
                    }
                });
            }
        });
        assert_eq!(total(&s), (1_200_000, 2_400_000));
        // At most two threads had copies of their own; the rest shared one.
        let own = s
            .copies()
            .take(2)
            .filter(|c| c.a.load(Ordering::Relaxed) > 0);
        assert!(own.count() <= 2);
        assert!(s.copies[2].0.a.load(Ordering::Relaxed) >= 800_000);
    }
}
