//! The proxy's background loops: the statistics period, the idle-server
//! sweep (`server_idle_timeout`, `server_lifetime`, `min_pool_size`), the
//! pressure announcements, and the reactions to the cluster changing
//! under the pools (fencing, role changes, nodes going down).

use std::collections::BTreeMap;
use std::sync::Arc;

use pgherd_cluster::{ClusterEvent, Event};

use crate::clock::Micros;
use crate::pressure::{Limits, Pressure, Sample};
use crate::shared::Shared;
use crate::stats::{self, Averages, StatsSnapshot};
use crate::upstream;
use crate::upstream::server::ServerConn;

/// Every `stats_period`, turns the totals into pgbouncer's averages.
pub(crate) async fn average_stats(shared: std::sync::Weak<Shared>, period: std::time::Duration) {
    let mut earlier: BTreeMap<String, StatsSnapshot> = BTreeMap::new();
    // Kernel-timed: see pgherd_timerfd for why. First at once, as
    // tokio's interval did, then `period` after each.
    let mut ticks = pgherd_timerfd::Sleeper::new();
    let mut wait = std::time::Duration::ZERO;
    loop {
        ticks.sleep(wait).await;
        wait = period;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let now = shared.database_totals();
        let averages = now
            .iter()
            .map(|(db, later)| {
                let before = earlier.get(db).cloned().unwrap_or_default();
                (db.clone(), Averages::between(&before, later, period))
            })
            .collect();
        *shared.averages.lock().unwrap_or_else(|e| e.into_inner()) = averages;
        let all = Averages::between(
            &stats::sum(earlier.values()),
            &stats::sum(now.values()),
            period,
        );
        *shared
            .all_averages
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = all;
        if shared.config().general.log_stats {
            log_stats(&all);
        }
        earlier = now;
    }
}

/// pgbouncer's `log_stats` line, in its wording.
fn log_stats(a: &Averages) {
    tracing::info!(
        "stats: {} xacts/s, {} queries/s, in {} B/s, out {} B/s, xact {} us, query {} us, wait {} us",
        a.transactions,
        a.queries,
        a.received_bytes,
        a.sent_bytes,
        a.xact_time_us,
        a.query_time_us,
        a.wait_time_us
    );
}

/// Every second (settings as reloaded): closes idle server connections
/// past `server_idle_timeout` or `server_lifetime`, and tops pools up to
/// `min_pool_size`.
pub(crate) async fn sweep_idle_servers(shared: std::sync::Weak<Shared>) {
    let mut ticks = pgherd_timerfd::Sleeper::new();
    let mut wait = std::time::Duration::ZERO;
    loop {
        ticks.sleep(wait).await;
        wait = std::time::Duration::from_secs(1);
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let config = shared.config();
        let (idle, lifetime) = (
            config.general.server_idle_timeout,
            config.general.server_lifetime,
        );
        let now = Micros::now();
        for pool in shared.servers.pools.handles_where(|_| true) {
            let stale = |c: &ServerConn| {
                idle.is_some_and(|t| now.since(c.idle_since) >= t) || c.expired(lifetime, now)
            };
            for conn in pool.drain_idle_where(stale) {
                conn.close_in_background();
            }
        }
        upstream::fill_pools(&shared.servers).await;
    }
}

/// Every second, announces pressure on pools and logins (see
/// [`crate::pressure`]).
pub(crate) async fn announce_pressure(shared: std::sync::Weak<Shared>) {
    let mut pressure = Pressure::default();
    let mut ticks = pgherd_timerfd::Sleeper::new();
    loop {
        ticks.sleep(std::time::Duration::from_secs(1)).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let config = shared.config();
        let limits = Limits {
            saturated_after: config.notify.pool_saturated_after,
            failure_burst: config.notify.login_failure_burst,
            max_client_conn: config.general.max_client_conn,
        };
        let failures = &shared.logins.failures;
        let sample = Sample {
            pools: (shared.pool_rows().into_iter())
                .map(|p| {
                    let name = format!("{}/{}@{}", p.database, p.user, p.node);
                    (name, p.status.waiting, p.status.max_size)
                })
                .collect(),
            auth_failures: failures.auth.load(std::sync::atomic::Ordering::Relaxed),
            limit_refusals: failures.limit.load(std::sync::atomic::Ordering::Relaxed),
        };
        for event in pressure.sample(sample, limits, std::time::Instant::now()) {
            shared.cluster().publish(event);
        }
    }
}

/// Wakes every session when a node becomes fenced, so one relaying to it
/// stops at once (see `Cluster::is_fenced`). One watch for the process,
/// instead of one per transaction.
pub(crate) async fn nudge_on_fence(shared: std::sync::Weak<Shared>) {
    let Some(mut topology) = shared.upgrade().map(|s| s.cluster().watch()) else {
        return;
    };
    let mut fenced: Vec<bool> = Vec::new();
    loop {
        let now: Vec<bool> = topology
            .borrow_and_update()
            .nodes
            .iter()
            .map(|n| n.fenced)
            .collect();
        let newly = now
            .iter()
            .enumerate()
            .any(|(i, &f)| f && !fenced.get(i).copied().unwrap_or(false));
        fenced = now;
        if newly {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            shared.registry.nudge_all();
        }
        if topology.changed().await.is_err() {
            return;
        }
    }
}

/// Drains idle connections of nodes whose role or health changed, and
/// every connection of nodes that left (see [`drain_removed`]).
pub(crate) async fn drain_on_changes(shared: Arc<Shared>) {
    let mut events = shared.cluster().subscribe();
    loop {
        let node = match events.recv().await {
            Ok(Event::Cluster(ClusterEvent::NodeRemoved { node, .. })) => {
                drain_removed(&shared, &node);
                continue;
            }
            Ok(Event::Cluster(
                ClusterEvent::RoleChanged { node, .. }
                | ClusterEvent::NodeDown { node, .. }
                | ClusterEvent::Fenced { node, .. },
            )) => node,
            Ok(_) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        if let Some(i) = shared.node_index(&node) {
            shared.servers.pools.drain_node(i);
        }
    }
}

/// A node left the cluster (RELOAD, discovery): routing already sends
/// nobody new to it. Its idle servers close now, busy ones when their
/// client releases them (at the end of its transaction, in transaction
/// mode); clients that still hold one after `shutdown_timeout` (sessions,
/// pinned clients) are terminated with 57P01, as a shutdown would.
fn drain_removed(shared: &Arc<Shared>, name: &str) {
    let topology = shared.cluster().topology();
    let slots: Vec<usize> = (topology.nodes.iter().enumerate())
        .filter(|(_, n)| n.removed && n.name == name)
        .map(|(i, _)| i)
        .collect();
    shared.close_servers_where(|s| slots.contains(&s.node));
    let grace = shared.config().general.shutdown_timeout;
    let shared = Arc::downgrade(shared);
    tokio::spawn(async move {
        tokio::time::sleep(grace).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let topology = shared.cluster().topology();
        for slot in slots {
            let Some(node) = topology.nodes.get(slot).filter(|n| n.removed) else {
                continue; // It came back.
            };
            let holders = shared.registry.servers().into_iter();
            let holders = holders
                .filter(|s| s.node == slot)
                .filter_map(|s| s.client());
            for client in holders.filter_map(|id| shared.registry.client(id)) {
                tracing::warn!(
                    client = client.id,
                    node = %node.name,
                    "terminating a client still on a removed node after shutdown_timeout"
                );
                client.kill();
            }
            shared.servers.pools.drain_node(slot);
        }
    });
}
