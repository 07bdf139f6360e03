//! The pools of server connections, one per (server database, server
//! user, node), with their traffic counters and how their connections are
//! opened.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use pgherd_cluster::{NodeStatus, NODE_SLOTS};
use pgherd_config::{PoolMode, Target};
use pgherd_pool::Pool;

use crate::stats::{PoolStats, StatsSnapshot};
use crate::upstream::server::{ServerConn, ServerCredential, Startup};
use crate::upstream::LoginFailure;

/// Pools are per (server database, server user, node).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PoolKey {
    pub(crate) database: String,
    pub(crate) user: String,
    pub(crate) node: usize,
}

/// A pool of server connections with its traffic counters.
#[derive(Debug, Clone)]
pub(crate) struct PoolEntry {
    pub(crate) pool: Pool<ServerConn>,
    pub(crate) stats: Arc<PoolStats>,
    /// The pool mode of the client that created it.
    pub(crate) mode: PoolMode,
    /// How its last connection was opened: `min_pool_size` opens more the
    /// same way.
    pub(crate) template: Arc<Mutex<Option<Template>>>,
    /// `server_login_retry`: when a server last refused this pool's login.
    pub(crate) login_failure: Arc<LoginFailure>,
    /// Servers held by clients pinned to them (session state in
    /// transaction mode).
    pub(crate) pinned: Arc<AtomicUsize>,
}

/// An upstream's pool on each node, looked up once. Sized for the nodes
/// the cluster had when the upstream was made; a node that joins while it
/// lives is served from a table of every slot, allocated only then (most
/// upstreams never need it, and an idle one stays small).
#[derive(Debug)]
pub(crate) struct NodePools {
    first: Box<[OnceLock<PoolEntry>]>,
    later: OnceLock<Box<[OnceLock<PoolEntry>]>>,
}

impl NodePools {
    pub(crate) fn new(nodes: usize) -> NodePools {
        NodePools {
            first: (0..nodes).map(|_| OnceLock::new()).collect(),
            later: OnceLock::new(),
        }
    }

    /// Where the pool on `node` is kept. Slots are below `NODE_SLOTS`
    /// (`pgherd_cluster::members`), so the second table has every one.
    pub(crate) fn cell(&self, node: usize) -> &OnceLock<PoolEntry> {
        match self.first.get(node) {
            Some(cell) => cell,
            None => {
                let later = self
                    .later
                    .get_or_init(|| (0..NODE_SLOTS).map(|_| OnceLock::new()).collect());
                &later[node]
            }
        }
    }

    /// The pools looked up so far.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &PoolEntry> {
        let later = self.later.get().map_or(&[][..], |l| &l[..]);
        self.first.iter().chain(later).filter_map(OnceLock::get)
    }
}

/// What a pool's database and user entries (or the global settings) allow
/// it: connections kept open, and caps over all pools (0: none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PoolLimits {
    /// `min_pool_size`.
    pub(crate) min_size: usize,
    /// `max_db_connections`.
    pub(crate) max_db: usize,
    /// `max_user_connections`.
    pub(crate) max_user: usize,
}

/// Startup parameters, credential and target of a pool's connections.
#[derive(Debug, Clone)]
pub(crate) struct Template {
    pub(crate) params: Startup,
    pub(crate) credential: ServerCredential,
    pub(crate) target: Target,
    pub(crate) limits: PoolLimits,
}

/// Every pool by its key.
#[derive(Debug, Default)]
pub(crate) struct Pools(Mutex<HashMap<PoolKey, PoolEntry>>);

impl Pools {
    fn map(&self) -> MutexGuard<'_, HashMap<PoolKey, PoolEntry>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The pool for `key` and its counters, created on first use with
    /// `size` connections plus `reserve`.
    pub(crate) fn get(
        &self,
        key: PoolKey,
        (size, reserve): (usize, usize),
        mode: PoolMode,
    ) -> PoolEntry {
        self.map()
            .entry(key)
            .or_insert_with(|| PoolEntry {
                pool: Pool::with_reserve(size, reserve),
                stats: Arc::default(),
                mode,
                template: Arc::default(),
                login_failure: Arc::default(),
                pinned: Arc::default(),
            })
            .clone()
    }

    /// Every pool with its key (taken out of the lock).
    pub(crate) fn entries(&self) -> Vec<(PoolKey, PoolEntry)> {
        self.map()
            .iter()
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect()
    }

    /// Every pool with its counters, sorted by database, user, node;
    /// `nodes` names them.
    pub(crate) fn rows(&self, nodes: &[NodeStatus]) -> Vec<PoolSnapshot> {
        let mut out: Vec<PoolSnapshot> = self
            .map()
            .iter()
            .map(|(k, p)| PoolSnapshot {
                database: k.database.clone(),
                user: k.user.clone(),
                node: nodes
                    .get(k.node)
                    .map(|n| n.name.clone())
                    .unwrap_or_default(),
                mode: p.mode,
                status: p.pool.status(),
                stats: p.stats.snapshot(),
                pinned: p.pinned.load(Ordering::Relaxed),
            })
            .collect();
        out.sort_by(|a, b| (&a.database, &a.user, &a.node).cmp(&(&b.database, &b.user, &b.node)));
        out
    }

    /// Traffic totals per (server) database, over users and nodes.
    pub(crate) fn database_totals(&self) -> BTreeMap<String, StatsSnapshot> {
        let mut totals: BTreeMap<String, StatsSnapshot> = BTreeMap::new();
        for (k, p) in self.map().iter() {
            totals
                .entry(k.database.clone())
                .or_default()
                .add(&p.stats.snapshot());
        }
        totals
    }

    /// Handles to the pools whose key `keep` accepts (taken out of the
    /// lock, so connections can be closed without holding it).
    pub(crate) fn handles_where(&self, keep: impl Fn(&PoolKey) -> bool) -> Vec<Pool<ServerConn>> {
        self.map()
            .iter()
            .filter(|(k, _)| keep(k))
            .map(|(_, p)| p.pool.clone())
            .collect()
    }

    /// Closes the idle server connections to node `node` (its role changed,
    /// or it went down): the next client gets a fresh one, or another node.
    pub(crate) fn drain_node(&self, node: usize) {
        for pool in self.handles_where(|k| k.node == node) {
            for conn in pool.drain_idle() {
                conn.close_in_background();
            }
        }
    }

    /// Closes the idle connections marked to be closed (`RECONNECT`, a
    /// node that left).
    pub(crate) fn close_idle_marked(&self) {
        for pool in self.handles_where(|_| true) {
            let marked =
                |c: &ServerConn| c.registered.as_ref().is_some_and(|r| r.info.close_needed());
            for conn in pool.drain_idle_where(marked) {
                conn.close_in_background();
            }
        }
    }
}

/// Counters of one pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSnapshot {
    pub database: String,
    pub user: String,
    pub node: String,
    pub mode: PoolMode,
    pub status: pgherd_pool::PoolStatus,
    pub stats: StatsSnapshot,
    /// Servers held by pinned clients.
    pub pinned: usize,
}
