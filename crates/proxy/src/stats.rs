//! Traffic counters per pool, pgbouncer's `SHOW STATS` figures.
//!
//! Sessions add to them once per transaction (transaction mode) or once per
//! relay (session mode) on counters they hold an `Arc` to — no lock, no map
//! lookup, no allocation and, on the runtime's own threads, no locked
//! instruction: each adds to a copy of its own ([`crate::counters`]). The
//! admin port sums the copies at scrape time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::counters::Sharded;

/// Upper bounds (seconds) of the transaction duration histogram's buckets.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// One pool's counters since pgherd started.
#[derive(Debug, Default)]
pub struct PoolStats {
    counters: Sharded<Counters>,
}

/// One thread's copy of a pool's counters.
#[derive(Debug, Default)]
struct Counters {
    /// Requests answered (ReadyForQuery): pgbouncer's `total_query_count`.
    queries: AtomicU64,
    /// ReadyForQuery replies saying idle, each ending a transaction
    /// (explicit or implicit): `total_xact_count`.
    transactions: AtomicU64,
    /// Bytes from clients / to clients: `total_received`, `total_sent`.
    received: AtomicU64,
    sent: AtomicU64,
    /// Microseconds clients waited for a server: `total_wait_time`.
    wait_us: AtomicU64,
    /// Microseconds servers owed an answer (from a request sent to an idle
    /// server to the ReadyForQuery that left none owed): `total_query_time`.
    query_us: AtomicU64,
    /// Microseconds servers were held by a transaction: `total_xact_time`.
    xact_us: AtomicU64,
    /// Transactions by duration (cumulative buckets are
    /// computed when read), plus one bucket past the last bound.
    buckets: [AtomicU64; DURATION_BUCKETS.len() + 1],
}

/// What one relay did, added to its pool's [`PoolStats`].
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Traffic {
    pub(crate) queries: u64,
    pub(crate) transactions: u64,
    pub(crate) received: u64,
    pub(crate) sent: u64,
    pub(crate) query_us: u64,
}

impl Traffic {
    /// What happened since `earlier` (a snapshot of the same relay).
    pub(crate) fn minus(self, earlier: Traffic) -> Traffic {
        Traffic {
            queries: self.queries.saturating_sub(earlier.queries),
            transactions: self.transactions.saturating_sub(earlier.transactions),
            received: self.received.saturating_sub(earlier.received),
            sent: self.sent.saturating_sub(earlier.sent),
            query_us: self.query_us.saturating_sub(earlier.query_us),
        }
    }
}

/// A copy of a pool's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub queries: u64,
    pub transactions: u64,
    pub received_bytes: u64,
    pub sent_bytes: u64,
    pub wait_time: Duration,
    pub xact_time: Duration,
    pub query_time: Duration,
    /// Transactions per duration bucket (not cumulative); the last entry
    /// counts those longer than the last bound.
    pub duration_buckets: [u64; DURATION_BUCKETS.len() + 1],
}

impl StatsSnapshot {
    /// Adds `other` (to total pools over nodes and users).
    pub fn add(&mut self, other: &StatsSnapshot) {
        self.queries += other.queries;
        self.transactions += other.transactions;
        self.received_bytes += other.received_bytes;
        self.sent_bytes += other.sent_bytes;
        self.wait_time += other.wait_time;
        self.xact_time += other.xact_time;
        self.query_time += other.query_time;
        for (a, b) in self.duration_buckets.iter_mut().zip(other.duration_buckets) {
            *a += b;
        }
    }
}

/// Per-second rates and per-transaction means over one `stats_period`:
/// pgbouncer's `SHOW STATS_AVERAGES` figures.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Averages {
    pub transactions: u64,
    pub queries: u64,
    pub received_bytes: u64,
    pub sent_bytes: u64,
    /// Mean transaction time, µs.
    pub xact_time_us: u64,
    /// Mean query time (a request until its answer), µs.
    pub query_time_us: u64,
    /// Mean wait for a server per transaction, µs.
    pub wait_time_us: u64,
}

impl Averages {
    /// The averages between two totals taken `period` apart.
    pub fn between(earlier: &StatsSnapshot, later: &StatsSnapshot, period: Duration) -> Averages {
        let secs = period.as_secs_f64().max(1e-3);
        let rate = |a: u64, b: u64| (b.saturating_sub(a) as f64 / secs).round() as u64;
        let xacts = later.transactions.saturating_sub(earlier.transactions);
        let per_xact = |a: Duration, b: Duration| match xacts {
            0 => 0,
            n => micros(b.saturating_sub(a)) / n,
        };
        Averages {
            transactions: rate(earlier.transactions, later.transactions),
            queries: rate(earlier.queries, later.queries),
            received_bytes: rate(earlier.received_bytes, later.received_bytes),
            sent_bytes: rate(earlier.sent_bytes, later.sent_bytes),
            xact_time_us: per_xact(earlier.xact_time, later.xact_time),
            query_time_us: match later.queries.saturating_sub(earlier.queries) {
                0 => 0,
                n => micros(later.query_time.saturating_sub(earlier.query_time)) / n,
            },
            wait_time_us: per_xact(earlier.wait_time, later.wait_time),
        }
    }
}

pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl PoolStats {
    pub(crate) fn traffic(&self, t: Traffic) {
        let local = self.counters.local();
        let c = local.counters;
        for (counter, v) in [
            (&c.queries, t.queries),
            (&c.transactions, t.transactions),
            (&c.received, t.received),
            (&c.sent, t.sent),
            (&c.query_us, t.query_us),
        ] {
            if v > 0 {
                local.add(counter, v);
            }
        }
    }

    /// A client waited `d` for a server.
    pub(crate) fn waited(&self, d: Duration) {
        let local = self.counters.local();
        local.add(&local.counters.wait_us, micros(d));
    }

    /// A transaction held its server for `d` (transaction mode: from
    /// checkout to release; session mode: from its first request to the
    /// ReadyForQuery that ended it).
    pub(crate) fn transaction(&self, d: Duration) {
        let local = self.counters.local();
        local.add(&local.counters.xact_us, micros(d));
        let secs = d.as_secs_f64();
        let i = DURATION_BUCKETS
            .iter()
            .position(|&bound| secs <= bound)
            .unwrap_or(DURATION_BUCKETS.len());
        local.add(&local.counters.buckets[i], 1);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let mut total = StatsSnapshot::default();
        for c in self.counters.copies() {
            let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
            total.add(&StatsSnapshot {
                queries: get(&c.queries),
                transactions: get(&c.transactions),
                received_bytes: get(&c.received),
                sent_bytes: get(&c.sent),
                wait_time: Duration::from_micros(get(&c.wait_us)),
                xact_time: Duration::from_micros(get(&c.xact_us)),
                query_time: Duration::from_micros(get(&c.query_us)),
                duration_buckets: c.buckets.each_ref().map(get),
            });
        }
        total
    }
}

/// Totals added up (over databases).
pub(crate) fn sum<'a>(totals: impl Iterator<Item = &'a StatsSnapshot>) -> StatsSnapshot {
    totals.fold(StatsSnapshot::default(), |mut sum, s| {
        sum.add(s);
        sum
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_buckets_add_up() {
        let s = PoolStats::default();
        s.traffic(Traffic {
            queries: 3,
            transactions: 2,
            received: 100,
            sent: 1000,
            query_us: 700,
        });
        s.waited(Duration::from_millis(2));
        s.transaction(Duration::from_micros(50));
        s.transaction(Duration::from_millis(3));
        s.transaction(Duration::from_secs(60));
        let snap = s.snapshot();
        assert_eq!((snap.queries, snap.transactions), (3, 2));
        assert_eq!((snap.received_bytes, snap.sent_bytes), (100, 1000));
        assert_eq!(snap.wait_time, Duration::from_millis(2));
        assert_eq!(snap.query_time, Duration::from_micros(700));
        assert_eq!(snap.duration_buckets[0], 1);
        assert_eq!(snap.duration_buckets[5], 1, "3 ms is under 5 ms");
        assert_eq!(snap.duration_buckets[DURATION_BUCKETS.len()], 1);
        assert_eq!(snap.duration_buckets.iter().sum::<u64>(), 3);
        let mut total = StatsSnapshot::default();
        total.add(&snap);
        total.add(&snap);
        assert_eq!(total.queries, 6);
        assert_eq!(total.duration_buckets[0], 2);
    }

    #[test]
    fn averages_are_rates_and_means_over_the_period() {
        let earlier = StatsSnapshot {
            transactions: 100,
            queries: 200,
            xact_time: Duration::from_millis(100),
            ..Default::default()
        };
        let later = StatsSnapshot {
            transactions: 400,
            queries: 800,
            received_bytes: 6000,
            xact_time: Duration::from_millis(400),
            wait_time: Duration::from_millis(3),
            query_time: Duration::from_millis(120),
            ..Default::default()
        };
        let a = Averages::between(&earlier, &later, Duration::from_secs(3));
        assert_eq!(
            (a.transactions, a.queries, a.received_bytes),
            (100, 200, 2000)
        );
        assert_eq!(a.xact_time_us, 1000, "300 ms over 300 transactions");
        assert_eq!(a.wait_time_us, 10);
        assert_eq!(a.query_time_us, 200, "120 ms over 600 queries");
        let idle = Averages::between(&later, &later, Duration::from_secs(3));
        assert_eq!(idle, Averages::default());
    }
}
