//! Where a client's servers come from, and how one is taken or opened.
//!
//! An [`Upstream`] is everything a session needs to get a server: the
//! database entry and target it resolved to, the startup parameters and
//! credential servers are opened with, the pool limits, and the pool on
//! each node. It is the same for every client of one application (same
//! database, user, parameters and login), so those clients share one:
//! [`Upstreams`] hands out the live one for a client instead of making a
//! copy per session: an idle client holds one pointer, not its own startup
//! parameters, pool handles and credential.
//!
//! Everything here works on [`Servers`] (pools, limits, routing, settings),
//! not on the whole proxy, and knows nothing of clients' sessions beyond
//! the [`ClientInfo`] a lease links a server to.

pub mod balance;
pub(crate) mod limits;
pub(crate) mod pools;
pub(crate) mod route;
pub(crate) mod server;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Instant;

use pgherd_config::{Config, Database, PoolMode, Target};
use pgherd_pool::{Guard, PoolError};
use pgherd_wire::backend::ErrorFields;
use pgherd_wire::sqlstate;

use crate::clock::Micros;
use crate::login::Authenticated;
use crate::registry::Registry;
use crate::registry::{ClientInfo, DatabaseControl, InUse, NewServer};
use crate::relay::params;
use crate::relay::params::TrackedParams;
use crate::settings::Settings;
use crate::upstream::server::{same_startup, ServerConn, ServerCredential, ServerError, Startup};
use limits::ConnectionLimits;
use pools::{NodePools, PoolEntry, PoolKey, PoolLimits, Pools};
use route::Routing;
use route::{Attempt, NodeSearch, Want};

/// Where servers come from: the pools, the caps over them, routing, and
/// what opening a connection reads. Sessions, the console and the pool
/// sweeper reach servers through this, never through the whole proxy.
#[derive(Debug)]
pub(crate) struct Servers {
    pub(crate) settings: Arc<Settings>,
    pub(crate) pools: Pools,
    /// `max_db_connections` / `max_user_connections`.
    pub(crate) limits: ConnectionLimits,
    pub(crate) routing: Routing,
    /// Parameters transaction-mode clients keep as their own.
    pub(crate) tracked: Arc<TrackedParams>,
    pub(crate) registry: Arc<Registry>,
    /// Where sessions get servers, shared by clients with the same.
    pub(crate) upstreams: Upstreams,
}

/// Where a client's servers come from: its database entry, target and
/// login. Shared by the clients it is the same for (see [`Upstreams`]).
#[derive(Debug)]
pub(crate) struct Upstream {
    /// The configuration the sessions started with.
    pub(crate) config: Arc<Config>,
    db: Database,
    pub(crate) target: Target,
    /// Startup parameters of the servers, sorted (`user` and `database`
    /// included).
    pub(crate) params: Startup,
    pub(crate) credential: ServerCredential,
    /// The server-side database and user.
    database: String,
    user: String,
    pub(crate) mode: PoolMode,
    limits: PoolLimits,
    /// The relay's idle and query limits, from this configuration.
    pub(crate) relay_limits: crate::relay::Limits,
    /// The pool on each node, looked up once.
    pools: NodePools,
    /// PAUSE / DISABLE of the database the client asked for.
    control: Arc<DatabaseControl>,
    /// Transaction mode: what a server of this upstream said at login, so
    /// a client can be welcomed while no server is free (see
    /// [`Upstream::cached_welcome`]).
    welcome: OnceLock<Arc<Welcome>>,
}

/// A server's login as a welcome repeats it: its ParameterStatus values
/// and its notices.
#[derive(Debug)]
pub(crate) struct Welcome {
    pub(crate) params: crate::relay::params::ServerParams,
    pub(crate) notices: Vec<bytes::Bytes>,
}

/// What makes two clients' upstreams the same, besides the configuration
/// snapshot: the database and user they asked for.
type UpstreamKey = (usize, String, String);

/// The live upstreams, so clients that would build equal ones share one.
#[derive(Debug, Default)]
pub(crate) struct Upstreams {
    live: Mutex<UpstreamMap>,
}

#[derive(Debug, Default)]
struct UpstreamMap {
    by_key: HashMap<UpstreamKey, Vec<Weak<Upstream>>>,
    /// Startup parameter sets still held (by an upstream or by the server
    /// connections it opened, which outlive it in the pool): a new upstream
    /// with equal parameters takes the same allocation, so the pool matches
    /// its connections by pointer.
    startups: HashMap<Vec<(String, String)>, WeakStartup>,
    /// Entries after the last sweep of dead ones: the next sweep is due at
    /// twice as many, so sweeping costs O(1) per insert.
    swept_at: usize,
}

/// A [`Startup`] set, while something holds it.
type WeakStartup = Weak<[(String, String)]>;

/// What a session asks [`Upstreams::get`] for.
pub(crate) struct UpstreamSpec<'a> {
    pub(crate) config: &'a Arc<Config>,
    /// The database and user the client logged in with.
    pub(crate) client: (&'a str, &'a str),
    pub(crate) db: &'a Database,
    pub(crate) target: Target,
    pub(crate) params: Vec<(String, String)>,
    pub(crate) credential: ServerCredential,
    pub(crate) mode: PoolMode,
    /// PAUSE / DISABLE of the client's database.
    pub(crate) control: Arc<DatabaseControl>,
    /// The cluster's node slots now.
    pub(crate) nodes: usize,
}

impl Upstreams {
    /// The live upstream equal to `wanted`, or a new one.
    pub(crate) fn get(&self, wanted: UpstreamSpec<'_>) -> Arc<Upstream> {
        let key = (
            Arc::as_ptr(wanted.config) as usize,
            wanted.client.0.to_owned(),
            wanted.client.1.to_owned(),
        );
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let live = &mut *live;
        let bucket = live.by_key.entry(key).or_default();
        let found = bucket.iter().filter_map(Weak::upgrade).find(|u| {
            u.target == wanted.target
                && u.mode == wanted.mode
                && *u.params == *wanted.params
                && u.credential == wanted.credential
                && u.db == *wanted.db
        });
        if let Some(upstream) = found {
            return upstream;
        }
        let held = live.startups.get(&wanted.params).and_then(Weak::upgrade);
        let startup = held.unwrap_or_else(|| {
            let startup: Startup = wanted.params.as_slice().into();
            let weak = Arc::downgrade(&startup);
            live.startups.insert(wanted.params.clone(), weak);
            startup
        });
        let upstream = Arc::new(Upstream::new(wanted, startup));
        bucket.retain(|w| w.strong_count() > 0);
        bucket.push(Arc::downgrade(&upstream));
        if live.by_key.len() + live.startups.len() >= live.swept_at.max(64) * 2 {
            live.by_key.retain(|_, bucket| {
                bucket.retain(|w| w.strong_count() > 0);
                !bucket.is_empty()
            });
            live.startups.retain(|_, w| w.strong_count() > 0);
            live.swept_at = live.by_key.len() + live.startups.len();
        }
        upstream
    }

    /// Upstreams alive (held by a session).
    #[cfg(test)]
    fn live(&self) -> usize {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.by_key
            .values()
            .flatten()
            .filter(|w| w.strong_count() > 0)
            .count()
    }
}

/// The server-side identity for a client: which user to log in as, with what.
pub(crate) fn server_login(
    config: &Config,
    db: &Database,
    auth: &Authenticated,
) -> (String, ServerCredential) {
    if let Some(user) = &db.user {
        let cred = db
            .password
            .clone()
            .map_or(ServerCredential::None, ServerCredential::Password);
        return (user.clone(), cred);
    }
    let user_cfg = config.users.get(&auth.user).or(auth.looked_up.as_ref());
    // Best first: a configured password; the keys the client proved with
    // SCRAM; the password it sent in clear; the md5 secret.
    let scram = user_cfg.and_then(|u| Some((auth.client_key?, u.verifier.clone()?)));
    let cred = if let Some(p) = user_cfg.and_then(|u| u.server_password.clone()) {
        ServerCredential::Password(p)
    } else if let Some((client_key, verifier)) = scram {
        ServerCredential::ScramKeys {
            client_key,
            verifier,
        }
    } else if let Some(p) = &auth.password {
        ServerCredential::Password(p.clone())
    } else if let Some(m) = user_cfg.and_then(|u| u.md5.clone()) {
        ServerCredential::Md5Secret(m)
    } else {
        ServerCredential::None
    };
    (auth.user.clone(), cred)
}

/// What a client holds with its server: a claim on its paused-or-not
/// database, and the client's end of the link the console shows. Dropped
/// with the server. The server's end is cleared when the server goes back
/// to its pool (`session::release`), before another client can take it: a
/// lease dropped after that would clear the next holder's link.
pub(crate) struct Lease {
    _in_use: InUse,
    client: Option<Arc<ClientInfo>>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(client) = &self.client {
            client.set_server(None);
        }
    }
}

impl Upstream {
    fn new(wanted: UpstreamSpec<'_>, params: Startup) -> Upstream {
        let config = wanted.config;
        let param = |name: &str| params::find(&wanted.params, name).unwrap_or("").to_owned();
        let (database, user) = (param("database"), param("user"));
        Upstream {
            limits: PoolLimits {
                min_size: wanted.db.min_pool_size,
                max_db: wanted.db.max_db_connections,
                max_user: config.max_user_connections(&user),
            },
            relay_limits: crate::relay::Limits::new(
                config.general.client_idle_timeout,
                config.general.idle_transaction_timeout,
                config.general.query_timeout,
            ),
            pools: NodePools::new(wanted.nodes),
            control: wanted.control,
            config: Arc::clone(config),
            db: wanted.db.clone(),
            target: wanted.target,
            params,
            credential: wanted.credential,
            database,
            user,
            mode: wanted.mode,
            welcome: OnceLock::new(),
        }
    }

    /// What a server of this upstream said at login, once one has, while
    /// a pool of it is full, every server in use. Otherwise a login goes
    /// through taking or opening a server, so a server that refuses pgherd
    /// is heard at login.
    pub(crate) fn cached_welcome(&self) -> Option<Arc<Welcome>> {
        let full = self.pools.iter().any(|p| {
            let status = p.pool.status();
            status.max_size > 0 && status.checked_out >= status.max_size
        });
        self.welcome.get().filter(|_| full).cloned()
    }

    /// Keeps `server`'s login for [`Upstream::cached_welcome`] (the first
    /// one only: every server of an upstream logs in with the same
    /// parameters).
    pub(crate) fn remember_welcome(&self, server: &ServerConn) {
        if self.welcome.get().is_none() {
            let _ = self.welcome.set(Arc::new(Welcome {
                params: server.initial_params.clone(),
                notices: server.login_notices.clone(),
            }));
        }
    }

    /// What the database's target wants (for `auto`: the primary, unless a
    /// request says otherwise).
    pub(crate) fn want(&self) -> Want {
        Want::of(self.target, self.config.general.replica_fallback)
    }

    /// The pool on `node`.
    pub(crate) fn entry(&self, servers: &Servers, node: usize) -> &PoolEntry {
        self.pools.cell(node).get_or_init(|| {
            let key = PoolKey {
                database: self.database.clone(),
                user: self.user.clone(),
                node,
            };
            let size = (self.db.pool_size, self.db.reserve_pool);
            servers.pools.get(key, size, self.mode)
        })
    }

    /// [`Upstream::checkout`] when it needs no waiting, no new connection
    /// and no check: the database is not paused, the node for `want` is
    /// known, and its pool has a free slot with an idle connection ready as
    /// it is. This is nearly every transaction, done without a future;
    /// `None` changes nothing.
    pub(crate) fn checkout_now(
        &self,
        servers: &Servers,
        me: &Arc<ClientInfo>,
        want: Want,
    ) -> Option<(Guard<ServerConn>, Micros, Lease)> {
        let in_use = self.control.try_enter()?;
        let pick = servers.routing.pick_now(&self.config, want)?;
        let (node, target) = (pick.node, pick.target);
        let entry = self.entry(servers, node);
        let general = &self.config.general;
        // The loop's time: this runs for every transaction.
        let asked = Micros::recent();
        let guard = entry.pool.try_checkout_idle(
            |c| same_startup(&c.startup, &self.params),
            |c| fit(c, general, target, asked) && !needs_check(c, general, asked),
        )?;
        pick.taken(&servers.routing);
        // Asked and served at once: it never waited.
        me.asked_for_server(asked);
        Some(self.lease(guard, asked, in_use, me))
    }

    /// A server on a node fit for `want`, from that node's pool, for the
    /// client `me`, and when it was handed over. The time the client waited
    /// for it (failed attempts on other nodes included) is added to that
    /// pool's counters.
    pub(crate) async fn checkout(
        &self,
        servers: &Servers,
        me: &Arc<ClientInfo>,
        want: Want,
    ) -> Result<(Guard<ServerConn>, Micros, Lease), ErrorFields> {
        let asked = Micros::now();
        me.wants_server(asked);
        let in_use = self.control.enter().await;
        let result = self.take_or_open(servers, want, asked).await;
        me.served();
        let (guard, assigned) = result?;
        Ok(self.lease(guard, assigned, in_use, me))
    }

    /// Links `me` and its server for the console, and wraps what the
    /// client holds while it uses the server.
    fn lease(
        &self,
        mut guard: Guard<ServerConn>,
        assigned: Micros,
        in_use: InUse,
        me: &Arc<ClientInfo>,
    ) -> (Guard<ServerConn>, Micros, Lease) {
        let server = guard.conn().and_then(|c| c.registered.as_ref());
        let client = server.map(|server| {
            me.set_server(Some(server.info.id));
            server.info.set_client(Some(me.id));
            Arc::clone(me)
        });
        let lease = Lease {
            _in_use: in_use,
            client,
        };
        (guard, assigned, lease)
    }

    /// A server from the pool of the first node routing offers that can
    /// give one (or a new connection there), trying the next node when one
    /// cannot be used.
    async fn take_or_open(
        &self,
        servers: &Servers,
        want: Want,
        asked: Micros,
    ) -> Result<(Guard<ServerConn>, Micros), ErrorFields> {
        let mut search = NodeSearch::new(&servers.routing, &self.config, want);
        loop {
            let (node, target) = search.next().await?;
            let entry = self.entry(servers, node);
            let attempt = take_from_pool(
                servers,
                (&self.config, asked),
                (entry, self.limits),
                node,
                target,
                &self.params,
                &self.credential,
            )
            .await;
            if let Some(taken) = search.settle(node, attempt) {
                let guard = taken?;
                let assigned = Micros::now();
                entry.stats.waited(assigned.since(asked));
                return Ok((guard, assigned));
            }
        }
    }
}

/// An unpooled server connection on the primary (replication), trying
/// again as routing allows.
pub(crate) async fn open_on_primary(
    servers: &Servers,
    config: &Config,
    params: &Startup,
    credential: &ServerCredential,
) -> Result<ServerConn, ErrorFields> {
    let mut search = NodeSearch::new(&servers.routing, config, Want::Primary);
    loop {
        let (node, target) = search.next().await?;
        let attempt = Box::pin(open(servers, node, target, Arc::clone(params), credential)).await;
        if let Some(opened) = search.settle(node, attempt) {
            return opened;
        }
    }
}

/// Opens an unpooled server connection on `node`.
pub(crate) async fn open(
    servers: &Servers,
    node: usize,
    target: Target,
    params: Startup,
    credential: &ServerCredential,
) -> Attempt<ServerConn> {
    let config = servers.settings.config();
    let Some(n) = servers.routing.cluster.node(node) else {
        return Attempt::Unusable("is not a node of the cluster".into());
    };
    let connected = ServerConn::connect(
        (node, &n.host, n.port),
        (params, &servers.tracked),
        credential,
        (&servers.settings.tls().server, &config.general.tcp()),
        config.general.server_connect_timeout,
    )
    .await;
    match connected {
        Ok(conn) if target == Target::Primary && conn.is_standby() => {
            conn.close_in_background();
            Attempt::Unusable("is a standby".into())
        }
        Ok(mut conn) => {
            let param = |name: &str| params::find(&conn.startup, name).unwrap_or("").to_owned();
            let (user, database) = (param("user"), param("database"));
            conn.registered = Some(servers.registry.add_server(NewServer {
                node,
                user: &user,
                database: &database,
                addr: conn.addr,
                local_addr: conn.stream.local_addr(),
                pid: conn.pid,
                secret: conn.secret,
            }));
            Attempt::Usable(conn)
        }
        Err(ServerError::Rejected(fields)) if fields.code.starts_with("57P") => {
            // Starting up, shutting down, in recovery: try another node.
            Attempt::Unusable(fields.message)
        }
        Err(ServerError::Rejected(mut fields)) => {
            fields.detail = Some(format!(
                "reported by node \"{}\" ({}:{}){}",
                n.name,
                n.host,
                n.port,
                fields.detail.map(|d| format!(": {d}")).unwrap_or_default()
            ));
            Attempt::Refused(fields)
        }
        Err(ServerError::Auth(why)) => Attempt::Refused(ErrorFields::fatal(
            sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
            format!("pgherd cannot log in to node \"{}\": {why}", n.name),
        )),
        // A TLS setting that does not fit the server: every node will say
        // the same, so the client hears why instead of waiting.
        Err(ServerError::Tls(why)) => Attempt::Refused(
            ErrorFields::fatal(
                sqlstate::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
                format!(
                    "pgherd cannot connect to node \"{}\" with TLS: {why}",
                    n.name
                ),
            )
            .with_hint("check server_tls_sslmode and server_tls_ca_file"),
        ),
        Err(e) => Attempt::Unusable(e.to_string()),
    }
}

/// Takes a server for this client from `node`'s pool: an idle one opened
/// with the same startup parameters, or a new one.
/// `asked` is when the client asked (the clock for `server_lifetime` and
/// `server_check_delay`, so checkout reads none of its own).
async fn take_from_pool(
    servers: &Servers,
    (config, asked): (&Config, Micros),
    (entry, limits): (&PoolEntry, PoolLimits),
    node: usize,
    target: Target,
    params: &Startup,
    credential: &ServerCredential,
) -> Attempt<Guard<ServerConn>> {
    let general = &config.general;
    let wait = general.query_wait_timeout;
    let checkout = entry
        .pool
        .checkout_with_reserve(wait, general.reserve_pool_timeout, |c| {
            same_startup(&c.startup, params)
        });
    let mut guard = match checkout.await {
        Ok(g) => g,
        Err(PoolError::Timeout(t)) => {
            return Attempt::Refused(
                ErrorFields::fatal(
                    sqlstate::TOO_MANY_CONNECTIONS,
                    format!(
                        "query_wait_timeout: no server connection became free within {}s",
                        t.as_secs_f64()
                    ),
                )
                .with_hint("raise pool_size for this database, or look for long sessions"),
            )
        }
        Err(PoolError::Closed) => return Attempt::Unusable("pool closed".into()),
    };
    if let Some(evicted) = guard.take_evicted() {
        evicted.close_in_background();
    }
    if let Some(conn) = guard.conn() {
        let fit = fit(conn, general, target, asked);
        if fit && !needs_check(conn, general, asked) {
            return Attempt::Usable(guard);
        }
        if fit {
            // Idle a while: prove it still answers before a client uses it.
            let checked =
                Box::pin(conn.check(&general.server_check_query, general.server_connect_timeout))
                    .await;
            match checked {
                Ok(()) => return Attempt::Usable(guard),
                Err(e) => tracing::info!("server_check_query failed, reconnecting: {e}"),
            }
        }
        // Closed by the server while idle (restart, failover, idle timeout),
        // too old, or failed its check.
        if let Some(conn) = guard.take() {
            conn.close_in_background();
        }
    }
    let caps = (limits.max_db, limits.max_user);
    let permits = if caps == (0, 0) {
        Vec::new()
    } else {
        let database = params::find(params, "database").unwrap_or("");
        let user = params::find(params, "user").unwrap_or("");
        // Boxed, like `open` below: only with a limit configured.
        match Box::pin(
            servers
                .limits
                .permits(&servers.pools, caps, database, user, wait),
        )
        .await
        {
            Some(p) => p,
            None => {
                return Attempt::Refused(ErrorFields::fatal(
                    sqlstate::TOO_MANY_CONNECTIONS,
                    format!(
                        "query_wait_timeout: no server connection could be opened within {}s \
                         (max_db_connections {}, max_user_connections {})",
                        wait.as_secs_f64(),
                        caps.0,
                        caps.1
                    ),
                ))
            }
        }
    };
    let opened = open_for_pool(servers, entry, (node, target), params, credential).await;
    opened.map(|mut conn| {
        conn.permits = permits;
        guard.set(conn);
        if limits.min_size > 0 {
            *entry.template.lock().unwrap_or_else(|e| e.into_inner()) = Some(pools::Template {
                params: Arc::clone(params),
                credential: credential.clone(),
                target,
                limits,
            });
        }
        guard
    })
}

/// Opens a connection for `entry`'s pool, unless a server refused this
/// pool's login less than `server_login_retry` ago: then that error again,
/// saying it was not retried. Clients (checkout) and `min_pool_size`
/// (the sweeper) both open through here, so neither hammers a server that
/// refuses the login.
async fn open_for_pool(
    servers: &Servers,
    entry: &PoolEntry,
    (node, target): (usize, Target),
    params: &Startup,
    credential: &ServerCredential,
) -> Attempt<ServerConn> {
    let retry = servers.settings.config().general.server_login_retry;
    if let Some(refused) = entry.login_failure.recent(retry, Instant::now()) {
        return Attempt::Refused(refused);
    }
    // Boxed: opening a connection (TCP, TLS, login) is a large future, and
    // checkout runs for every transaction while opening is rare.
    let attempt = Box::pin(open(servers, node, target, Arc::clone(params), credential)).await;
    entry.login_failure.record(&attempt);
    attempt
}

/// `server_login_retry` for one pool: when a server last refused its
/// login, and what it said.
#[derive(Debug, Default)]
pub(crate) struct LoginFailure(std::sync::Mutex<Option<(Instant, ErrorFields)>>);

impl LoginFailure {
    fn last(&self) -> std::sync::MutexGuard<'_, Option<(Instant, ErrorFields)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The refusal again when it was less than `retry` before `now`.
    fn recent(&self, retry: std::time::Duration, now: Instant) -> Option<ErrorFields> {
        let last = self.last();
        let (at, fields) = last.as_ref()?;
        let ago = now.saturating_duration_since(*at);
        if ago >= retry {
            return None;
        }
        let mut fields = fields.clone();
        fields.hint = Some(format!(
            "the server refused this login {:.1}s ago; pgherd tries again after \
             server_login_retry ({}s)",
            ago.as_secs_f64(),
            retry.as_secs_f64()
        ));
        Some(fields)
    }

    /// Remembers a refusal that holds for every client of the pool (who
    /// logs in, to which database, over what — a bad startup parameter is
    /// one client's own problem); a login that worked forgets it.
    fn record(&self, attempt: &Attempt<ServerConn>) {
        match attempt {
            Attempt::Usable(_) => *self.last() = None,
            Attempt::Refused(f)
                if f.code.starts_with("28")
                    || f.code == sqlstate::INVALID_CATALOG_NAME
                    || f.code == sqlstate::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION =>
            {
                *self.last() = Some((Instant::now(), f.clone()));
            }
            _ => {}
        }
    }
}

/// `min_pool_size`: opens connections in pools below it, as their last
/// one was opened, on nodes that still fit the pool's target. Stops at a
/// pool's size and at `max_db_connections`/`max_user_connections`.
pub(crate) async fn fill_pools(servers: &Servers) {
    let topology = servers.routing.cluster.topology();
    for (key, entry) in servers.pools.entries() {
        let template = entry
            .template
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(t) = template else { continue };
        let fits = match t.target {
            Target::Primary | Target::Auto => topology.primary == Some(key.node),
            Target::Replica => topology
                .nodes
                .get(key.node)
                .is_some_and(|n| n.serves_reads()),
        };
        if !fits {
            continue;
        }
        while entry.pool.status().total < t.limits.min_size {
            let Ok(mut guard) = entry
                .pool
                .checkout(std::time::Duration::ZERO, |_| false)
                .await
            else {
                break;
            };
            if let Some(evicted) = guard.take_evicted() {
                // Full of other connections: nothing to add.
                guard.set(evicted);
                guard.release();
                break;
            }
            let caps = (t.limits.max_db, t.limits.max_user);
            let permits = if caps == (0, 0) {
                Vec::new()
            } else {
                match servers
                    .limits
                    .permits(
                        &servers.pools,
                        caps,
                        &key.database,
                        &key.user,
                        std::time::Duration::ZERO,
                    )
                    .await
                {
                    Some(p) => p,
                    None => break,
                }
            };
            match open_for_pool(
                servers,
                &entry,
                (key.node, t.target),
                &t.params,
                &t.credential,
            )
            .await
            {
                Attempt::Usable(mut conn) => {
                    conn.permits = permits;
                    guard.set(conn);
                    guard.release();
                }
                _ => break,
            }
        }
    }
}

/// An idle connection can serve `target` at `now`: the server has not
/// closed it, it is younger than `server_lifetime`, and a primary's is not
/// a standby's.
fn fit(
    conn: &mut ServerConn,
    general: &pgherd_config::General,
    target: Target,
    now: Micros,
) -> bool {
    conn.is_alive()
        && !conn.expired(general.server_lifetime, now)
        && !(target == Target::Primary && conn.is_standby())
}

/// `server_check_query` is due: the connection sat idle at least
/// `server_check_delay`.
fn needs_check(conn: &ServerConn, general: &pgherd_config::General, now: Micros) -> bool {
    !general.server_check_query.is_empty()
        && now.since(conn.idle_since) >= general.server_check_delay
}
#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Arc<Config> {
        Arc::new(
            Config::parse(
                "[pgherd]\nprobe_user = \"p\"\n[[nodes]]\nname = \"a\"\nhost = \"h\"\n\
                 [databases]\n\"*\" = {}\n",
            )
            .unwrap(),
        )
    }

    fn wanted<'a>(config: &'a Arc<Config>, user: &'a str, app: &str) -> UpstreamSpec<'a> {
        let db = config.database("app").unwrap();
        UpstreamSpec {
            config,
            client: ("app", user),
            db,
            target: Target::Primary,
            params: vec![
                ("application_name".into(), app.into()),
                ("database".into(), "app".into()),
                ("user".into(), user.into()),
            ],
            credential: ServerCredential::None,
            mode: PoolMode::Transaction,
            control: Arc::default(),
            nodes: 2,
        }
    }

    #[test]
    fn equal_clients_share_one_upstream_while_it_lives() {
        let upstreams = Upstreams::default();
        let config = config();
        let a = upstreams.get(wanted(&config, "app", "web"));
        let b = upstreams.get(wanted(&config, "app", "web"));
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.user, "app");
        assert_eq!(a.database, "app");
        // Other parameters, user, or configuration: another upstream.
        let other_app = upstreams.get(wanted(&config, "app", "batch"));
        let other_user = upstreams.get(wanted(&config, "bob", "web"));
        let reloaded = config.as_ref().clone();
        let reloaded = Arc::new(reloaded);
        let after_reload = upstreams.get(wanted(&reloaded, "app", "web"));
        for other in [&other_app, &other_user, &after_reload] {
            assert!(!Arc::ptr_eq(&a, other));
        }
        let mut other_credential = wanted(&config, "app", "web");
        other_credential.credential = ServerCredential::Password(pgherd_auth::Secret::new("x"));
        assert!(!Arc::ptr_eq(&a, &upstreams.get(other_credential)));
        assert_eq!(upstreams.live(), 4);
        drop((a, b));
        assert_eq!(upstreams.live(), 3);
    }

    #[test]
    fn a_new_upstream_takes_the_startup_parameters_its_servers_still_hold() {
        let upstreams = Upstreams::default();
        let config = config();
        let first = upstreams.get(wanted(&config, "app", "web"));
        // A pooled server connection keeps the parameters it was opened with.
        let server_startup = Arc::clone(&first.params);
        drop(first);
        let second = upstreams.get(wanted(&config, "app", "web"));
        assert!(Arc::ptr_eq(&second.params, &server_startup));
        drop((second, server_startup));
        let third = upstreams.get(wanted(&config, "app", "web"));
        assert_eq!(third.params.len(), 3);
    }

    #[test]
    fn dead_upstreams_are_swept() {
        let upstreams = Upstreams::default();
        let config = config();
        for i in 0..1000 {
            let user = format!("user{i}");
            drop(upstreams.get(wanted(&config, &user, "web")));
        }
        let live = upstreams.live.lock().unwrap();
        let kept = live.by_key.len() + live.startups.len();
        assert!(kept <= 128, "{kept} entries kept");
    }

    #[test]
    fn a_refused_login_is_repeated_to_the_pool_until_server_login_retry() {
        let failure = LoginFailure::default();
        let retry = std::time::Duration::from_secs(15);
        let refused =
            ErrorFields::fatal(sqlstate::INVALID_PASSWORD, "password authentication failed");
        failure.record(&Attempt::Refused(refused));
        let now = Instant::now();
        let again = failure.recent(retry, now).map(|f| f.code);
        assert_eq!(again.as_deref(), Some(sqlstate::INVALID_PASSWORD));
        let later = now + std::time::Duration::from_secs(14);
        assert!(
            failure.recent(retry, later).is_some(),
            "still within the retry"
        );
        let after = now + std::time::Duration::from_secs(16);
        assert!(
            failure.recent(retry, after).is_none(),
            "tried again after it"
        );

        // One client's own problem (a bad startup parameter) is not the pool's.
        let own = LoginFailure::default();
        own.record(&Attempt::Refused(ErrorFields::fatal(
            sqlstate::UNDEFINED_OBJECT,
            "unrecognized parameter",
        )));
        assert!(own.recent(retry, Instant::now()).is_none());
    }
}
