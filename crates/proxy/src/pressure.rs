//! Pressure on pgherd, announced: a pool whose clients keep waiting for a
//! server, `max_client_conn` reached, a burst of failed logins. A
//! background loop samples, once a second, counters the proxy keeps
//! anyway, so the data path pays nothing for this; [`Pressure`] turns the
//! samples into events, each said once per episode rather than per second.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use pgherd_cluster::ProxyEvent;

/// How far back failed logins are counted for a burst, and how long the
/// client limit must go unhit before hitting it again is news.
pub(crate) const WINDOW: Duration = Duration::from_secs(60);

/// One look at the counters.
#[derive(Debug, Default)]
pub(crate) struct Sample {
    /// Each pool (`database/user@node`) with clients waiting now and its size.
    pub pools: Vec<(String, usize, usize)>,
    /// Logins refused for a wrong password or unknown user, so far.
    pub auth_failures: u64,
    /// Logins refused for `max_client_conn`, so far.
    pub limit_refusals: u64,
}

/// When pressure is news (`[notify]` and `max_client_conn`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub saturated_after: Option<Duration>,
    /// 0: failed logins are never announced.
    pub failure_burst: u64,
    pub max_client_conn: usize,
}

/// What earlier samples showed.
#[derive(Debug, Default)]
pub(crate) struct Pressure {
    /// Pools with clients waiting: since when, and whether announced.
    waiting: HashMap<String, (Instant, bool)>,
    /// Failed-login totals within the last [`WINDOW`], oldest first.
    failures: VecDeque<(Instant, u64)>,
    burst_said: Option<Instant>,
    refusals: Option<u64>,
    /// The last sample that saw a refusal, while the episode lasts.
    limit_hit: Option<Instant>,
}

impl Pressure {
    /// The events `sample`, taken at `now`, makes.
    pub(crate) fn sample(
        &mut self,
        sample: Sample,
        limits: Limits,
        now: Instant,
    ) -> Vec<ProxyEvent> {
        let mut events = Vec::new();
        self.pools(sample.pools, limits.saturated_after, now, &mut events);
        self.logins(sample.auth_failures, limits.failure_burst, now, &mut events);
        self.client_limit(
            sample.limit_refusals,
            limits.max_client_conn,
            now,
            &mut events,
        );
        events
    }

    fn pools(
        &mut self,
        pools: Vec<(String, usize, usize)>,
        after: Option<Duration>,
        now: Instant,
        events: &mut Vec<ProxyEvent>,
    ) {
        let mut still = HashMap::with_capacity(self.waiting.len());
        for (pool, waiting, size) in pools.into_iter().filter(|p| p.1 > 0) {
            let (since, mut said) = self.waiting.remove(&pool).unwrap_or((now, false));
            let waited = now.duration_since(since);
            if !said && after.is_some_and(|after| waited >= after) {
                said = true;
                events.push(ProxyEvent::PoolSaturated {
                    pool: pool.clone(),
                    waiting,
                    size,
                    waited,
                });
            }
            still.insert(pool, (since, said));
        }
        let mut recovered: Vec<_> = self
            .waiting
            .drain()
            .filter(|(_, (_, said))| *said)
            .map(|(pool, (since, _))| ProxyEvent::PoolRecovered {
                pool,
                saturated: now.duration_since(since),
            })
            .collect();
        recovered.sort_by_key(|e| e.to_string());
        events.extend(recovered);
        self.waiting = still;
    }

    fn logins(&mut self, total: u64, burst: u64, now: Instant, events: &mut Vec<ProxyEvent>) {
        self.failures.push_back((now, total));
        while self
            .failures
            .front()
            .is_some_and(|&(t, _)| now.duration_since(t) > WINDOW)
        {
            self.failures.pop_front();
        }
        let first = self.failures.front().map_or(total, |&(_, n)| n);
        let failures = total - first.min(total);
        let quiet = self
            .burst_said
            .is_none_or(|t| now.duration_since(t) >= WINDOW);
        if burst > 0 && failures >= burst && quiet {
            self.burst_said = Some(now);
            events.push(ProxyEvent::LoginFailureBurst {
                failures,
                window: WINDOW,
            });
        }
    }

    fn client_limit(
        &mut self,
        total: u64,
        limit: usize,
        now: Instant,
        events: &mut Vec<ProxyEvent>,
    ) {
        let refused = total > self.refusals.unwrap_or(total);
        self.refusals = Some(total);
        if refused {
            if self.limit_hit.is_none() {
                events.push(ProxyEvent::ClientLimitReached { limit });
            }
            self.limit_hit = Some(now);
        } else if self
            .limit_hit
            .is_some_and(|t| now.duration_since(t) >= WINDOW)
        {
            self.limit_hit = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        saturated_after: Some(Duration::from_secs(5)),
        failure_burst: 10,
        max_client_conn: 100,
    };

    fn pool(waiting: usize) -> Sample {
        Sample {
            pools: vec![("app/web@pg0".into(), waiting, 2)],
            ..Sample::default()
        }
    }

    fn seconds(t0: Instant, s: u64) -> Instant {
        t0 + Duration::from_secs(s)
    }

    #[test]
    fn a_pool_waiting_past_the_threshold_is_saturated_once_then_recovers() {
        let (mut p, t0) = (Pressure::default(), Instant::now());
        for s in 0..5 {
            assert!(p.sample(pool(3), LIMITS, seconds(t0, s)).is_empty(), "{s}");
        }
        let saturated = p.sample(pool(4), LIMITS, seconds(t0, 5));
        assert_eq!(
            saturated,
            [ProxyEvent::PoolSaturated {
                pool: "app/web@pg0".into(),
                waiting: 4,
                size: 2,
                waited: Duration::from_secs(5),
            }]
        );
        assert!(
            p.sample(pool(1), LIMITS, seconds(t0, 9)).is_empty(),
            "said once"
        );
        let recovered = p.sample(pool(0), LIMITS, seconds(t0, 12));
        assert_eq!(
            recovered,
            [ProxyEvent::PoolRecovered {
                pool: "app/web@pg0".into(),
                saturated: Duration::from_secs(12),
            }]
        );
        // A short wait is never news, nor its end.
        assert!(p.sample(pool(2), LIMITS, seconds(t0, 13)).is_empty());
        assert!(p.sample(pool(0), LIMITS, seconds(t0, 14)).is_empty());
        // Off: never said.
        let off = Limits {
            saturated_after: None,
            ..LIMITS
        };
        for s in 20..40 {
            assert!(p.sample(pool(3), off, seconds(t0, s)).is_empty());
        }
    }

    #[test]
    fn failed_logins_are_a_burst_when_enough_fall_within_a_minute() {
        let (mut p, t0) = (Pressure::default(), Instant::now());
        let failed = |n| Sample {
            auth_failures: n,
            ..Sample::default()
        };
        // 9 a minute, spread out: never a burst.
        for s in 0..180 {
            assert!(p
                .sample(failed(s * 9 / 61), LIMITS, seconds(t0, s))
                .is_empty());
        }
        // A quiet minute, then 10 at once.
        let base = 179 * 9 / 61;
        for s in 180..241 {
            assert!(p.sample(failed(base), LIMITS, seconds(t0, s)).is_empty());
        }
        let burst = p.sample(failed(base + 10), LIMITS, seconds(t0, 241));
        assert_eq!(
            burst,
            [ProxyEvent::LoginFailureBurst {
                failures: 10,
                window: WINDOW,
            }]
        );
        // Said at most once a minute while it goes on.
        assert!(p
            .sample(failed(base + 30), LIMITS, seconds(t0, 260))
            .is_empty());
        assert_eq!(
            p.sample(failed(base + 50), LIMITS, seconds(t0, 301)).len(),
            1
        );
    }

    #[test]
    fn the_client_limit_is_news_when_first_hit_and_after_a_quiet_minute() {
        let (mut p, t0) = (Pressure::default(), Instant::now());
        let refused = |n| Sample {
            limit_refusals: n,
            ..Sample::default()
        };
        // Refusals before pgherd's first look are history, not news.
        assert!(p.sample(refused(7), LIMITS, t0).is_empty());
        let hit = p.sample(refused(8), LIMITS, seconds(t0, 1));
        assert_eq!(hit, [ProxyEvent::ClientLimitReached { limit: 100 }]);
        assert!(p.sample(refused(20), LIMITS, seconds(t0, 2)).is_empty());
        assert!(p.sample(refused(20), LIMITS, seconds(t0, 61)).is_empty());
        assert!(
            p.sample(refused(21), LIMITS, seconds(t0, 62)).is_empty(),
            "not quiet long enough"
        );
        assert!(p.sample(refused(21), LIMITS, seconds(t0, 122)).is_empty());
        assert_eq!(p.sample(refused(22), LIMITS, seconds(t0, 123)).len(), 1);
    }
}
