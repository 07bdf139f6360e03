//! pgherd's proxy: the listener, client sessions and server connections.
//!
//! ```text
//! accept ─► client::login (startup, TLS, SCRAM/md5/trust, max_client_conn)
//!        ─► session: database entry, server credential → an `upstream`
//!             (shared by the clients it is the same for) → a server on the
//!             primary (from the pool of (database, user, node), or freshly
//!             opened with the client's own startup parameters)
//!        ─► relay (bytes both ways, no re-encoding) until the client leaves
//!        ─► reset (ROLLBACK if needed, server_reset_query) and back to the
//!             pool — or closed, if the session left it in an unknown state
//! ```
//!
//! In session mode a client keeps its server for its whole session, so it
//! cannot tell pgherd from a direct connection (its backend PID,
//! ParameterStatus values, prepared statements, temp tables and LISTENs are
//! its own). In transaction mode it holds a server from the first message of
//! a transaction to the ReadyForQuery that ends it; its named prepared
//! statements (`prepared`) and session parameters (`params`) follow it from
//! server to server. Where a session goes comes from the cluster topology
//! (`pgherd-cluster`'s probes): the one primary, or a fresh standby for
//! `target = "replica"`; each new server connection's `in_hot_standby` report
//! is checked as well, so a stale topology cannot send writes to a standby.
#![forbid(unsafe_code)]

mod addr;
mod auth_query;
pub mod balance;
mod buffers;
mod cancel;
mod classify;
mod client;
pub mod clock;
mod console;
mod control;
pub mod counters;
mod limits;
mod listen;
mod params;
mod prepared;
mod registry;
mod relay;
pub mod reload;
mod route;
mod server;
mod session;
mod sockets;
mod stats;
mod upstream;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
pub use listen::bind_tcp;
use listen::Listener;
use pgherd_cluster::{Cluster, ClusterEvent, Topology};
use pgherd_config::{Config, PoolMode, Target};
use pgherd_pool::Pool;
use pgherd_wire::sqlstate;
use rand::RngCore;

pub use addr::ClientAddr;
pub use control::{ControlError, DatabaseState};
pub use registry::{ClientInfo, ClientState, ServerInfo, ServerState};
pub use server::{ServerConn, ServerCredential, ServerError};
pub use stats::{Averages, PoolStats, StatsSnapshot, DURATION_BUCKETS};

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
    pub(crate) login_failure: Arc<upstream::LoginFailure>,
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
    pub(crate) params: server::Startup,
    pub(crate) credential: ServerCredential,
    pub(crate) target: Target,
    pub(crate) limits: PoolLimits,
}

/// State shared by every session of one proxy.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Swapped whole by RELOAD; see [`Shared::config`].
    config: ArcSwap<Config>,
    /// Where RELOAD reads the configuration from.
    config_file: Mutex<Option<std::path::PathBuf>>,
    pools: Mutex<HashMap<PoolKey, PoolEntry>>,
    cancels: cancel::CancelRegistry,
    /// Connected clients, for `max_client_conn`.
    clients: AtomicUsize,
    /// Probes and topology: where sessions may go.
    cluster: Cluster,
    /// Spreads `replica` sessions over the standbys.
    round_robin: AtomicUsize,
    /// Server connections in use (checked out) on each node, for `leastconn`.
    node_load: Vec<AtomicUsize>,
    /// Nodes an administrator drained: no new reads.
    node_drained: Vec<AtomicBool>,
    routing: RoutingCounters,
    login_failures: LoginFailures,
    /// Seeds the mock SCRAM exchange for unknown users.
    process_secret: [u8; 32],
    /// Set when pgherd stops: clients finish their transaction and go.
    going: AtomicBool,
    /// Parameters transaction-mode clients keep as their own.
    tracked: Arc<params::Tracked>,
    /// Where sessions get servers, shared by clients with the same.
    upstreams: upstream::Upstreams,
    /// Clients, server connections and database switches (admin console).
    registry: Arc<registry::Registry>,
    /// The console's SHUTDOWN: [`Proxy::run`] stops as if signalled.
    shutdown_requested: tokio::sync::Notify,
    /// `SHOW STATS_AVERAGES` per database, over the last `stats_period`.
    averages: Mutex<BTreeMap<String, Averages>>,
    /// The same over all databases (`SHOW TOTALS`, `log_stats`).
    all_averages: Mutex<Averages>,
    /// `auth_user` + `auth_query` lookups.
    auth_query: auth_query::AuthQuery,
    /// `max_db_connections` / `max_user_connections`.
    limits: limits::ConnectionLimits,
    /// TLS towards clients and servers, rebuilt by RELOAD.
    tls: ArcSwap<pgherd_tls::Contexts>,
}

impl Shared {
    /// The configuration new sessions start with. A session keeps the one
    /// it started with until it ends (so a `RELOAD` never changes the rules
    /// under a running transaction); per-transaction code reads that one.
    pub(crate) fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// TLS as configured now: new connections use it.
    pub(crate) fn tls(&self) -> Arc<pgherd_tls::Contexts> {
        self.tls.load_full()
    }

    /// The pool for `key` and its counters, created on first use with
    /// `size` connections plus `reserve`.
    pub(crate) fn pool(
        &self,
        key: PoolKey,
        (size, reserve): (usize, usize),
        mode: PoolMode,
    ) -> PoolEntry {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools
            .entry(key)
            .or_insert_with(|| PoolEntry {
                pool: Pool::with_reserve(size, reserve),
                stats: Arc::default(),
                mode,
                template: Arc::default(),
                login_failure: Arc::default(),
            })
            .clone()
    }

    /// Every pool with its counters, sorted by database, user, node.
    pub(crate) fn pool_rows(&self) -> Vec<PoolSnapshot> {
        let pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let config = self.config.load();
        let nodes = &config.nodes;
        let mut out: Vec<PoolSnapshot> = pools
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
            })
            .collect();
        out.sort_by(|a, b| (&a.database, &a.user, &a.node).cmp(&(&b.database, &b.user, &b.node)));
        out
    }

    /// Traffic totals per (server) database, over users and nodes.
    pub(crate) fn database_totals(&self) -> BTreeMap<String, StatsSnapshot> {
        let mut totals: BTreeMap<String, StatsSnapshot> = BTreeMap::new();
        for p in self.pool_rows() {
            totals.entry(p.database).or_default().add(&p.stats);
        }
        totals
    }

    /// The averages of the last complete `stats_period`.
    pub(crate) fn averages(&self) -> BTreeMap<String, Averages> {
        self.averages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The averages of the last complete `stats_period` over all databases.
    pub(crate) fn all_averages(&self) -> Averages {
        *self.all_averages.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn request_shutdown(&self) {
        self.shutdown_requested.notify_one();
    }

    /// Handles to the pools whose key `keep` accepts (taken out of the
    /// lock, so connections can be closed without holding it).
    pub(crate) fn pools_where(&self, keep: impl Fn(&PoolKey) -> bool) -> Vec<Pool<ServerConn>> {
        let pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools
            .iter()
            .filter(|(k, _)| keep(k))
            .map(|(_, p)| p.pool.clone())
            .collect()
    }

    fn pools_on(&self, node: usize) -> Vec<Pool<ServerConn>> {
        self.pools_where(|k| k.node == node)
    }

    /// Closes the idle server connections to node `node` (its role changed,
    /// or it went down): the next client gets a fresh one, or another node.
    fn drain_node(&self, node: usize) {
        for pool in self.pools_on(node) {
            for conn in pool.drain_idle() {
                conn.close_in_background();
            }
        }
    }

    /// Closes the idle connections to node `node` that `RECONNECT` marked.
    pub(crate) fn close_idle_marked(&self, node: usize) {
        for pool in self.pools_on(node) {
            let marked =
                |c: &ServerConn| c.registered.as_ref().is_some_and(|r| r.info.close_needed());
            for conn in pool.drain_idle_where(marked) {
                conn.close_in_background();
            }
        }
    }

    fn node_load(&self, node: usize) -> usize {
        self.node_load[node].load(Ordering::Relaxed)
    }

    /// Counts a server connection on `node` as in use until the lease drops.
    pub(crate) fn lease(&self, node: usize) -> NodeLease<'_> {
        self.node_load[node].fetch_add(1, Ordering::Relaxed);
        NodeLease(&self.node_load[node])
    }

    fn node_index(&self, name: &str) -> Option<usize> {
        self.config.load().nodes.iter().position(|n| n.name == name)
    }
}

/// Where sessions (session mode) and transactions (transaction mode) went.
/// Counted per runtime thread ([`counters`]): one is added per transaction.
#[derive(Debug, Default)]
struct RoutingCounters(counters::Sharded<RoutingCounts>);

#[derive(Debug, Default)]
struct RoutingCounts {
    primary: AtomicU64,
    standby: AtomicU64,
    fallback: AtomicU64,
    read_only_retries: AtomicU64,
    gone_retries: AtomicU64,
}

/// Routing decisions so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoutingTotals {
    /// Sent to the primary because they wanted it.
    pub primary: u64,
    /// Sent to a standby.
    pub standby: u64,
    /// Wanted a standby, got the primary (none usable, or read-your-writes).
    pub fallback: u64,
    /// Reads a standby refused as writes (25006), run again on the primary.
    pub read_only_retries: u64,
    /// Requests whose server left before running them (a shutdown, a
    /// switchover), run again on another server.
    pub gone_retries: u64,
}

impl RoutingCounters {
    fn count(&self, want: route::Want, on_standby: bool) {
        let local = self.0.local();
        let c = local.counters;
        let counter = match (want, on_standby) {
            (_, true) => &c.standby,
            (route::Want::Primary, false) => &c.primary,
            (route::Want::Standby { .. }, false) => &c.fallback,
        };
        local.add(counter, 1);
    }

    fn read_only_retried(&self) {
        let local = self.0.local();
        local.add(&local.counters.read_only_retries, 1);
    }

    fn gone_retried(&self) {
        let local = self.0.local();
        local.add(&local.counters.gone_retries, 1);
    }

    fn totals(&self) -> RoutingTotals {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        self.0
            .copies()
            .fold(RoutingTotals::default(), |t, c| RoutingTotals {
                primary: t.primary + get(&c.primary),
                standby: t.standby + get(&c.standby),
                fallback: t.fallback + get(&c.fallback),
                read_only_retries: t.read_only_retries + get(&c.read_only_retries),
                gone_retries: t.gone_retries + get(&c.gone_retries),
            })
    }
}

/// Logins pgherd refused, by why (`pgherd_login_failures_total`).
#[derive(Debug, Default)]
pub struct LoginFailures {
    /// Wrong password or unknown user (28P01), or no user name (28000).
    pub auth: AtomicU64,
    /// `max_client_conn` reached (53300).
    pub limit: AtomicU64,
    /// Not the PostgreSQL protocol, or broken messages (08P01).
    pub protocol: AtomicU64,
    /// Not done within `client_login_timeout`.
    pub timeout: AtomicU64,
    /// The TLS handshake failed (untrusted or missing certificates, no
    /// common protocol version), or TLS was required and not used.
    pub tls: AtomicU64,
}

impl LoginFailures {
    /// Counts (and logs) a login that ended without a session.
    pub(crate) fn refused(&self, refused: &client::Refused, peer: ClientAddr) {
        use client::Refused;
        let counter = match refused {
            Refused::Fatal(fields) => {
                tracing::info!(%peer, "login refused: {fields}");
                match fields.code.as_str() {
                    sqlstate::INVALID_PASSWORD | sqlstate::INVALID_AUTHORIZATION_SPECIFICATION => {
                        &self.auth
                    }
                    sqlstate::TOO_MANY_CONNECTIONS => &self.limit,
                    _ => &self.protocol,
                }
            }
            Refused::TlsRequired(fields) => {
                tracing::info!(%peer, "login refused: {fields}");
                &self.tls
            }
            Refused::Handshake(e) => {
                tracing::info!(%peer, "TLS handshake failed: {e}");
                &self.tls
            }
            Refused::TimedOut => &self.timeout,
            Refused::Gone | Refused::Cancel { .. } => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A server connection in use on a node (see [`Shared::lease`]).
pub(crate) struct NodeLease<'a>(&'a AtomicUsize);

impl Drop for NodeLease<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Every `stats_period`, turns the totals into pgbouncer's averages.
async fn average_stats(shared: std::sync::Weak<Shared>, period: std::time::Duration) {
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
        let all = Averages::between(&sum(earlier.values()), &sum(now.values()), period);
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

/// Totals added up (over databases).
pub(crate) fn sum<'a>(totals: impl Iterator<Item = &'a StatsSnapshot>) -> StatsSnapshot {
    totals.fold(StatsSnapshot::default(), |mut sum, s| {
        sum.add(s);
        sum
    })
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
async fn sweep_idle_servers(shared: std::sync::Weak<Shared>) {
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
        let now = clock::Micros::now();
        for pool in shared.pools_where(|_| true) {
            let stale = |c: &ServerConn| {
                idle.is_some_and(|t| now.since(c.idle_since) >= t) || c.expired(lifetime, now)
            };
            for conn in pool.drain_idle_where(stale) {
                conn.close_in_background();
            }
        }
        upstream::fill_pools(&shared).await;
    }
}

/// Wakes every session when a node becomes fenced, so one relaying to it
/// stops at once (see `Cluster::is_fenced`). One watch for the process,
/// instead of one per transaction.
async fn nudge_on_fence(shared: std::sync::Weak<Shared>) {
    let Some(mut topology) = shared.upgrade().map(|s| s.cluster.watch()) else {
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

/// Drains idle connections of nodes whose role or health changed.
async fn drain_on_changes(shared: Arc<Shared>) {
    let mut events = shared.cluster.subscribe();
    loop {
        let node = match events.recv().await {
            Ok(ClusterEvent::RoleChanged { node, .. })
            | Ok(ClusterEvent::NodeDown { node, .. })
            | Ok(ClusterEvent::Fenced { node, .. }) => node,
            Ok(_) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        if let Some(i) = shared.node_index(&node) {
            shared.drain_node(i);
        }
    }
}

/// pgherd's bound listeners with their shared state.
#[derive(Debug)]
pub struct Proxy {
    shared: Arc<Shared>,
    /// The main listener first, then `[[listeners]]`, each with its default
    /// target; then their Unix-domain sockets, if any.
    listeners: Vec<(Listener, Target)>,
}

impl Proxy {
    /// Binds `listen_addr` and every `[[listeners]]` address (and their
    /// Unix-domain sockets with `unix_socket_dir`), and starts probing the
    /// nodes.
    pub async fn bind(config: Config) -> std::io::Result<Proxy> {
        let g = &config.general;
        let backlog = g.listen_backlog;
        let mut tcp = vec![(
            bind_tcp(g.listen_addr, g.so_reuseport, backlog)?,
            Target::Primary,
        )];
        for l in &config.listeners {
            let bound = bind_tcp(l.addr, g.so_reuseport, backlog)
                .map_err(|e| std::io::Error::new(e.kind(), format!("binding {}: {e}", l.addr)))?;
            tcp.push((bound, l.target));
        }
        let mut unix = Vec::new();
        if let Some(dir) = &g.unix_socket_dir {
            let file = (g.unix_socket_mode, g.unix_socket_group.as_deref());
            for (l, target) in &tcp {
                let port = l.local_addr()?.port();
                let socket = listen::bind_unix(dir, port, file, g.so_reuseport, backlog)?;
                unix.push((Listener::Unix(socket), *target));
            }
        }
        let tcp = tcp.into_iter().map(|(l, t)| (Listener::Tcp(l), t));
        let listeners = tcp.chain(unix).collect();
        let mut process_secret = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut process_secret);
        let tls = pgherd_tls::Contexts::new(&config.general)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        let cluster = Cluster::start(&config, &tls.server)?;
        let shared = Arc::new(Shared {
            tracked: Arc::new(params::Tracked::new(&config.general)),
            upstreams: upstream::Upstreams::default(),
            node_load: config.nodes.iter().map(|_| AtomicUsize::new(0)).collect(),
            node_drained: config
                .nodes
                .iter()
                .map(|_| AtomicBool::new(false))
                .collect(),
            routing: RoutingCounters::default(),
            login_failures: LoginFailures::default(),
            config: ArcSwap::from_pointee(config),
            config_file: Mutex::new(None),
            pools: Mutex::new(HashMap::new()),
            cancels: cancel::CancelRegistry::default(),
            clients: AtomicUsize::new(0),
            cluster,
            round_robin: AtomicUsize::new(0),
            process_secret,
            going: AtomicBool::new(false),
            registry: Arc::default(),
            shutdown_requested: tokio::sync::Notify::new(),
            averages: Mutex::default(),
            all_averages: Mutex::default(),
            auth_query: auth_query::AuthQuery::default(),
            limits: limits::ConnectionLimits::default(),
            tls: ArcSwap::from_pointee(tls),
        });
        tokio::spawn(drain_on_changes(Arc::clone(&shared)));
        tokio::spawn(nudge_on_fence(Arc::downgrade(&shared)));
        tokio::spawn(sweep_idle_servers(Arc::downgrade(&shared)));
        tokio::spawn(average_stats(
            Arc::downgrade(&shared),
            shared.config.load().general.stats_period,
        ));
        Ok(Proxy { shared, listeners })
    }

    /// The address the main listener actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listen_addrs()?
            .first()
            .map(|(a, _)| *a)
            .ok_or_else(|| std::io::Error::other("no TCP listener"))
    }

    /// Every bound TCP address with its default target, main listener first.
    pub fn listen_addrs(&self) -> std::io::Result<Vec<(SocketAddr, Target)>> {
        let tcp = self.listeners.iter().filter_map(|(l, t)| match l {
            Listener::Tcp(l) => Some((l, *t)),
            Listener::Unix(_) => None,
        });
        tcp.map(|(l, t)| Ok((l.local_addr()?, t))).collect()
    }

    /// Every Unix-domain socket's file with its default target.
    pub fn unix_sockets(&self) -> Vec<(std::path::PathBuf, Target)> {
        let unix = self.listeners.iter().filter_map(|(l, t)| match l {
            Listener::Unix(s) => Some((s.path.clone(), *t)),
            Listener::Tcp(_) => None,
        });
        unix.collect()
    }

    /// A handle to read the proxy's counters while it runs.
    pub fn handle(&self) -> ProxyHandle {
        ProxyHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Accepts clients on every listener until `shutdown` completes, then
    /// drains: the listeners close, transaction-mode clients finish their
    /// transaction and are told pgherd is going (57P01), session-mode clients
    /// may finish their session; after `shutdown_timeout` whoever is left is
    /// cut off when the runtime stops.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let mut accepting = tokio::task::JoinSet::new();
        for (listener, target) in self.listeners {
            accepting.spawn(accept(listener, target, Arc::clone(&self.shared)));
        }
        tokio::select! {
            () = shutdown => {}
            () = self.shared.shutdown_requested.notified() => {
                tracing::info!("SHUTDOWN from the admin console");
            }
        }
        // Sessions hear it first: a client between transactions is told at
        // once, not after the listeners have wound down.
        self.shared.going.store(true, Ordering::SeqCst);
        self.shared.registry.nudge_all();
        accepting.abort_all();
        while accepting.join_next().await.is_some() {}
        let left = self.shared.clients.load(Ordering::Relaxed);
        if left > 0 {
            tracing::info!("shutting down: waiting for {left} clients to finish");
        }
        let deadline =
            tokio::time::Instant::now() + self.shared.config.load().general.shutdown_timeout;
        while self.shared.clients.load(Ordering::Relaxed) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

/// Serves a listener's clients (until aborted at shutdown, which drops
/// the listener: a Unix socket's file goes with it).
async fn accept(listener: Listener, target: Target, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                tokio::spawn(session::serve(Arc::clone(&shared), stream, peer, target));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off a little
                // instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// A read-only view of a running proxy, for tests and (later) the admin side.
#[derive(Debug, Clone)]
pub struct ProxyHandle {
    shared: Arc<Shared>,
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
}

impl ProxyHandle {
    /// The configuration the proxy runs with (the latest reloaded one).
    pub fn config(&self) -> Arc<Config> {
        self.shared.config()
    }

    /// The file [`ProxyHandle::reload`] reads.
    pub fn set_config_file(&self, path: std::path::PathBuf) {
        *self
            .shared
            .config_file
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(path);
    }

    /// Reads the config file again and applies it to new sessions (see
    /// [`reload`]). Returns the settings that differ but need a restart.
    pub fn reload(&self) -> Result<Vec<&'static str>, reload::ReloadError> {
        self.shared.reload()
    }

    /// Shutting down: listeners closed or closing, clients finishing.
    pub fn is_draining(&self) -> bool {
        self.shared.going.load(Ordering::Relaxed)
    }

    /// Clients connected right now (including ones still logging in).
    pub fn client_count(&self) -> usize {
        self.shared.clients.load(Ordering::Relaxed)
    }

    /// Routing decisions so far.
    pub fn routing(&self) -> RoutingTotals {
        self.shared.routing.totals()
    }

    /// Refused logins so far.
    pub fn login_failures(&self) -> &LoginFailures {
        &self.shared.login_failures
    }

    /// The cluster as the probes see it.
    pub fn topology(&self) -> Arc<Topology> {
        self.shared.cluster.topology()
    }

    /// The cluster handle (events, probes).
    pub fn cluster(&self) -> &Cluster {
        &self.shared.cluster
    }

    /// Every pool with its counters.
    pub fn pools(&self) -> Vec<PoolSnapshot> {
        self.shared.pool_rows()
    }

    /// Connected clients (logged in).
    pub fn clients(&self) -> Vec<Arc<ClientInfo>> {
        self.shared.registry.clients()
    }

    /// Open server connections.
    pub fn servers(&self) -> Vec<Arc<ServerInfo>> {
        self.shared.registry.servers()
    }

    /// Per server database: rates and means over the last `stats_period`.
    pub fn averages(&self) -> BTreeMap<String, Averages> {
        self.shared.averages()
    }

    /// Database names clients use, with their pause and disable switches.
    pub fn databases(&self) -> Vec<DatabaseState> {
        self.shared.database_states()
    }

    /// Pauses a database (all when `None`); completes once no client of it
    /// holds a server. New transactions wait for [`ProxyHandle::resume`].
    pub async fn pause(&self, db: Option<&str>) -> Result<(), ControlError> {
        self.shared.pause(db).await
    }

    pub fn resume(&self, db: Option<&str>) -> Result<(), ControlError> {
        self.shared.resume(db)
    }

    /// Refuses (or again accepts) new logins to a database.
    pub fn set_database_disabled(&self, db: &str, disabled: bool) -> Result<(), ControlError> {
        self.shared.set_disabled(db, disabled)
    }

    /// Ends every client of a database (which stays paused); returns how many.
    pub fn kill_database(&self, db: &str) -> Result<usize, ControlError> {
        self.shared.kill_database(db)
    }

    pub fn kill_client(&self, id: u64) -> Result<(), ControlError> {
        self.shared.kill_client(id)
    }

    /// Closes every server connection of a database (all when `None`) as
    /// soon as it is idle; returns how many were marked.
    pub fn reconnect(&self, db: Option<&str>) -> Result<usize, ControlError> {
        self.shared.reconnect(db)
    }

    /// Completes once the connections [`ProxyHandle::reconnect`] marked are closed.
    pub async fn wait_close(&self, db: Option<&str>) -> Result<(), ControlError> {
        self.shared.wait_close(db).await
    }

    /// Stops (or resumes) sending reads to a node.
    pub fn set_node_drained(&self, node: &str, drained: bool) -> Result<(), ControlError> {
        self.shared.set_node_drained(node, drained)
    }

    /// Whether node `i` (config order) is drained.
    pub fn node_drained(&self, i: usize) -> bool {
        self.shared.node_is_drained(i)
    }
}
