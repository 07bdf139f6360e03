//! pgbouncer's `max_db_connections` and `max_user_connections`: caps on the
//! server connections to one database, or as one user, over all pools
//! (users, nodes, startup parameters).
//!
//! Each new server connection takes a permit for its database and one for
//! its user and keeps them until it is closed. When none is free, an idle
//! connection of the same database (or user) in another pool is closed to
//! make room — as pgbouncer does — and the client waits (within
//! `query_wait_timeout`) for a permit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::upstream::pools::{PoolKey, Pools};
use crate::upstream::server::Permits;

/// What a limit counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Scope {
    Database(String),
    User(String),
}

/// The semaphores, one per database or user that has a limit.
#[derive(Debug, Default)]
pub(crate) struct ConnectionLimits {
    semaphores: Mutex<HashMap<Scope, (usize, Arc<Semaphore>)>>,
}

impl ConnectionLimits {
    /// The semaphore for `scope` with `limit` permits (made anew when the
    /// limit changed with a RELOAD).
    fn semaphore(&self, scope: &Scope, limit: usize) -> Arc<Semaphore> {
        let mut map = self.semaphores.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(scope) {
            Some((l, s)) if *l == limit => Arc::clone(s),
            _ => {
                let s = Arc::new(Semaphore::new(limit));
                map.insert(scope.clone(), (limit, Arc::clone(&s)));
                s
            }
        }
    }
}

impl ConnectionLimits {
    /// Permits for a new server connection to `database` as `user`, waiting
    /// up to `wait`; `None` when none came free in time.
    pub(crate) async fn permits(
        &self,
        pools: &Pools,
        (max_db, max_user): (usize, usize),
        database: &str,
        user: &str,
        wait: Duration,
    ) -> Option<Permits> {
        let mut permits = Vec::new();
        let deadline = tokio::time::Instant::now() + wait;
        for (limit, scope) in [
            (max_db, Scope::Database(database.to_owned())),
            (max_user, Scope::User(user.to_owned())),
        ] {
            if limit == 0 {
                continue;
            }
            let semaphore = self.semaphore(&scope, limit);
            // Connections hold their permits while idle in a pool: make room
            // by closing one, and again while waiting, as servers are
            // released by other clients.
            let permit = loop {
                if let Ok(p) = Arc::clone(&semaphore).try_acquire_owned() {
                    break p;
                }
                close_one_idle(pools, &scope);
                let now = tokio::time::Instant::now();
                if now >= deadline {
                    return None;
                }
                let step = (now + Duration::from_millis(100)).min(deadline);
                if let Ok(Ok(p)) =
                    tokio::time::timeout_at(step, Arc::clone(&semaphore).acquire_owned()).await
                {
                    break p;
                }
            };
            permits.push(permit);
        }
        Some(permits)
    }
}

/// Closes one idle server connection in `scope` (its permits go back).
fn close_one_idle(pools: &Pools, scope: &Scope) {
    let in_scope = |k: &PoolKey| match scope {
        Scope::Database(d) => &k.database == d,
        Scope::User(u) => &k.user == u,
    };
    let pools = pools.handles_where(in_scope);
    for pool in pools {
        let taken = std::cell::Cell::new(false);
        let one = pool.drain_idle_where(|_| !taken.replace(true));
        if let Some(conn) = one.into_iter().next() {
            conn.close_in_background();
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(5);

    #[tokio::test(start_paused = true)]
    async fn a_database_at_its_cap_waits_then_gives_up() {
        let limits = ConnectionLimits::default();
        let pools = Pools::default();
        let first = limits.permits(&pools, (1, 0), "app", "u1", WAIT).await;
        assert_eq!(first.as_ref().map(Vec::len), Some(1));
        // Another user of the same database: the database's cap counts.
        let start = tokio::time::Instant::now();
        let none = limits.permits(&pools, (1, 0), "app", "u2", WAIT).await;
        assert!(none.is_none());
        assert!(start.elapsed() >= WAIT, "waited the whole time");
        // Another database is not held back.
        assert!(limits
            .permits(&pools, (1, 0), "other", "u1", WAIT)
            .await
            .is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_permit_given_back_wakes_a_waiter() {
        let limits = Arc::new(ConnectionLimits::default());
        let pools = Arc::new(Pools::default());
        let held = limits.permits(&pools, (0, 1), "app", "u", WAIT).await;
        let waiter = {
            let (limits, pools) = (Arc::clone(&limits), Arc::clone(&pools));
            tokio::spawn(async move { limits.permits(&pools, (0, 1), "db2", "u", WAIT).await })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(held);
        let got = waiter.await.unwrap_or_default();
        assert_eq!(got.map(|p| p.len()), Some(1), "the user's permit, freed");
    }

    #[tokio::test(start_paused = true)]
    async fn no_caps_no_permits_no_wait() {
        let limits = ConnectionLimits::default();
        let permits = limits
            .permits(&Pools::default(), (0, 0), "app", "u", WAIT)
            .await;
        assert_eq!(permits.map(|p| p.len()), Some(0));
    }
}
