//! One client connection from accept to close.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use pgherd_config::{Balance, Config, Database, PoolMode, Target};
use pgherd_pool::{Guard, PoolError};
use pgherd_wire::backend::{self, ErrorFields, TxStatus};
use pgherd_wire::frontend;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::buffers;
use crate::cancel::{CancelKey, CancelTarget};
use crate::classify::{classify, Request};
use crate::client::{Authenticated, Client, Refused};
use crate::params::{self, ClientParams};
use crate::prepared::ClientStatements;
use crate::registry::{ClientInfo, DatabaseControl, InUse, NewClient, NewServer, ServerInfo};
use crate::relay::{self, RelayEnd, ServerState, Until};
use crate::route::{self, Attempt, Want};
use crate::server::{send_cancel, ServerConn, ServerCredential, ServerError};
use crate::{PoolEntry, PoolKey, PoolLimits, Shared};

/// Counts a client for `max_client_conn` while it is connected.
struct ClientSlot<'a>(&'a Shared);

impl Drop for ClientSlot<'_> {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A replication connection to a database with no entry: to the primary,
/// unpooled.
static REPLICATION_FALLBACK: std::sync::LazyLock<Database> =
    std::sync::LazyLock::new(|| Database {
        dbname: None,
        user: None,
        password: None,
        pool_size: 1,
        min_pool_size: 0,
        reserve_pool: 0,
        max_db_connections: 0,
        pool_mode: None,
        target: Some(Target::Primary),
    });

/// Serves one accepted connection.
/// `listener_target` is where this listener sends databases that set no target.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    listener_target: Target,
) {
    let connected = shared.clients.fetch_add(1, Ordering::Relaxed) + 1;
    let _slot = ClientSlot(&shared);
    let _ = stream.set_nodelay(true);
    let config = shared.config();
    let over_limit = connected > config.general.max_client_conn;
    // One deadline for encryption and login together.
    let deadline = tokio::time::Instant::now() + config.general.client_login_timeout;
    let tls = shared.tls();
    let mut client = match Box::pin(Client::accept(stream, peer, &tls.client, deadline)).await {
        Ok(client) => client,
        Err(refused) => return shared.login_failures.refused(&refused, peer),
    };
    drop(tls);
    // Matched where it is made: a named result would keep its bytes in the
    // task for the whole session.
    let auth = match Box::pin(client.login(&shared, over_limit, deadline)).await {
        Ok(auth) => auth,
        Err(Refused::Cancel { pid, secret }) => {
            return forward_cancel(&shared, pid, &secret).await;
        }
        Err(refused) => {
            shared.login_failures.refused(&refused, peer);
            if let Refused::Fatal(fields) | Refused::TlsRequired(fields) = &refused {
                client.send_error(fields).await;
            }
            return;
        }
    };
    tracing::debug!(%peer, user = %auth.user, database = %auth.database, "client logged in");
    if let Err(fields) = run(&shared, &mut client, auth, listener_target).await {
        client.send_error(&fields).await;
    }
}

async fn forward_cancel(shared: &Shared, pid: i32, secret: &Bytes) {
    match shared.cancels.lookup(pid, secret) {
        Some(t) => {
            if let Err(e) = send_cancel(t.addr, t.pid, t.secret).await {
                tracing::warn!("cancel request to {} failed: {e}", t.addr);
            }
        }
        None => tracing::debug!(pid, "cancel request with an unknown key ignored"),
    }
}

fn wants_replication(auth: &Authenticated) -> bool {
    match auth.startup.param("replication") {
        None => false,
        Some(v) => !matches!(
            v.to_ascii_lowercase().as_str(),
            "false" | "off" | "no" | "0"
        ),
    }
}

/// The server-side identity for a client: which user to log in as, with what.
fn server_login(
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

/// Runs an authenticated client's session. An `Err` is sent to the client.
async fn run(
    shared: &Shared,
    client: &mut Client,
    auth: Box<Authenticated>,
    listener_target: Target,
) -> Result<(), ErrorFields> {
    if crate::console::is_console(&auth.database) {
        // Boxed, as every await that an idle client is never parked in: a
        // task is as large as its largest state, for its whole life.
        return Box::pin(crate::console::serve(shared, client, &auth)).await;
    }
    let config = shared.config();
    let replication = wants_replication(&auth);
    let db = match config.database(&auth.database) {
        Some(db) => db,
        None if replication => &REPLICATION_FALLBACK,
        None => {
            return Err(ErrorFields::fatal(
                "3D000",
                format!("database \"{}\" does not exist", auth.database),
            )
            .with_hint("pgherd has no [databases] entry for it and no \"*\" entry"))
        }
    };
    let control = shared.registry.database(&auth.database);
    if control.disabled() {
        return Err(ErrorFields::fatal(
            "57P03",
            format!("database \"{}\" is disabled", auth.database),
        )
        .with_hint("an administrator ran DISABLE on the admin console; ENABLE lifts it"));
    }
    let me = shared.registry.add_client(NewClient {
        user: &auth.user,
        database: &auth.database,
        addr: client.peer,
        local_addr: client.stream.local_addr().ok(),
        application_name: auth.startup.param("application_name").unwrap_or(""),
    });
    let (server_user, credential) = server_login(&config, db, &auth);
    // Boxed: it lives as long as the session (an idle client's memory).
    let credential = Box::new(credential);
    let server_db = db.dbname.clone().unwrap_or_else(|| auth.database.clone());
    let mode = config.pool_mode(db, &auth.user);
    let tracking = mode == PoolMode::Transaction && !replication;
    let ignored = |name: &str| {
        config
            .general
            .ignore_startup_parameters
            .iter()
            .any(|i| i.eq_ignore_ascii_case(name))
    };
    // Untracked startup parameters go to the server (and decide which
    // servers this client may share); tracked ones are the client's own.
    let mut client_params = ClientParams::new(&shared.tracked);
    let mut params: Vec<(String, String)> = Vec::new();
    for (name, value) in &auth.startup.params {
        if name == "user" || name == "database" || ignored(name) {
            continue;
        }
        match shared.tracked.index(name) {
            Some(index) if tracking => client_params.set(index, value),
            _ => params.push((name.clone(), value.clone())),
        }
    }
    params.push(("user".into(), server_user.clone()));
    params.push(("database".into(), server_db.clone()));
    params.sort();
    params.shrink_to_fit();
    // Everything needed from the login is copied out: the startup packet
    // and the rest go now, not at the end of the session (an idle client
    // kept ~0.5 KiB of them, measured with valgrind's dhat).
    drop(auth);

    if replication {
        let (params, credential) = (&params, &credential);
        let server =
            Box::pin(route::connect(
                shared,
                &config,
                Want::Primary,
                |node, target| async move {
                    open(shared, node, target, params.clone(), credential).await
                },
            ))
            .await?;
        return Box::pin(replicate(shared, client, server)).await;
    }

    let target = match db.target.unwrap_or(listener_target) {
        // Per transaction, so only in transaction mode.
        Target::Auto if mode == PoolMode::Session => Target::Primary,
        t => t,
    };
    let upstream = Upstream {
        shared,
        config: &config,
        db,
        target,
        params: &params,
        credential: &credential,
        database: &server_db,
        user: &server_user,
        mode,
        limits: PoolLimits {
            min_size: db.min_pool_size,
            max_db: db.max_db_connections,
            max_user: config.max_user_connections(&server_user),
        },
        pools: config.nodes.iter().map(|_| OnceLock::new()).collect(),
        control,
        me: Arc::clone(&me.info),
    };
    // The welcome needs a server's ParameterStatus values, in both modes.
    let welcome_want = match (upstream.want(), mode) {
        (Want::Standby { fallback, .. }, PoolMode::Transaction) => Want::Standby {
            fallback,
            wrote_at: None,
            peek: true,
        },
        (want, _) => want,
    };
    let (mut first, _, first_lease) = Box::pin(upstream.checkout(welcome_want)).await?;
    let Some(server) = first.conn() else {
        return Err(ErrorFields::fatal(
            "XX000",
            "pgherd: pool handed out an empty slot",
        ));
    };
    if tracking {
        // What the client did not set, it gets the server's defaults of.
        for index in 0..shared.tracked.len() {
            if client_params.get(index).is_none() {
                if let Some(v) = server.initial_params.tracked.get(index) {
                    client_params.set(index, v);
                }
            }
        }
        // Usually equal to the server's: then this shares their values.
        sync_params(shared, &mut client_params, server).await?;
    }
    let cancel = shared.cancels.register(match mode {
        PoolMode::Session => Some(server.pid),
        PoolMode::Transaction => None,
    });
    // Not a `match` on the result: its 120 bytes would stay in the task,
    // an idle client's memory, for the whole session.
    if let Err(e) = welcome(client, server, cancel.pid, cancel.secret).await {
        shared.cancels.unregister(&cancel);
        return Err(e);
    }
    let held = match mode {
        PoolMode::Session => Some((first, first_lease)),
        PoolMode::Transaction => {
            release(first, config.general.server_lifetime, Instant::now());
            drop(first_lease);
            None
        }
    };
    let params = tracking.then_some(&mut client_params);
    // KILL / KILL_CLIENT end the session wherever it is; a server it held
    // is closed, never pooled, as when a client vanishes.
    let result = tokio::select! {
        biased;
        result = serve_client(&upstream, client, held, params, &cancel) => result,
        () = me.info.killed() => Err(killed_by_admin()),
    };
    shared.cancels.unregister(&cancel);
    result
}

/// Where a client's servers come from: its database entry, target and login.
struct Upstream<'a> {
    shared: &'a Shared,
    /// The configuration this session started with.
    config: &'a Config,
    db: &'a Database,
    target: Target,
    params: &'a [(String, String)],
    credential: &'a ServerCredential,
    database: &'a str,
    user: &'a str,
    mode: PoolMode,
    limits: PoolLimits,
    /// This client's pool on each node, looked up once.
    pools: Vec<OnceLock<PoolEntry>>,
    /// PAUSE / DISABLE of the database the client asked for.
    control: Arc<DatabaseControl>,
    /// This client's entry in the console's list.
    me: Arc<ClientInfo>,
}

/// What a client holds with its server: a claim on its paused-or-not
/// database, and the link the console shows. Dropped with the server.
pub(crate) struct Lease {
    _in_use: InUse,
    link: Option<(Arc<ClientInfo>, Arc<ServerInfo>)>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some((client, server)) = &self.link {
            client.set_server(None);
            server.set_client(None);
        }
    }
}

impl Upstream<'_> {
    /// What the database's target wants (for `auto`: the primary, unless a
    /// request says otherwise).
    fn want(&self) -> Want {
        Want::of(self.target, self.config.general.replica_fallback)
    }

    /// This client's pool on `node`.
    fn entry(&self, node: usize) -> &PoolEntry {
        self.pools[node].get_or_init(|| {
            let key = PoolKey {
                database: self.database.to_owned(),
                user: self.user.to_owned(),
                node,
            };
            let size = (self.db.pool_size, self.db.reserve_pool);
            self.shared.pool(key, size, self.mode)
        })
    }

    /// A server on a node fit for `want`, from that node's pool, and when it
    /// was handed over. The time the client waited for it (failed attempts
    /// on other nodes included) is added to that pool's counters.
    async fn checkout(
        &self,
        want: Want,
    ) -> Result<(Guard<ServerConn>, Instant, Lease), ErrorFields> {
        let asked = Instant::now();
        self.me.wants_server(asked);
        let in_use = self.control.enter().await;
        let result = self.connect(want, asked).await;
        self.me.served();
        let (mut guard, assigned) = result?;
        let server = guard
            .conn()
            .and_then(|c| c.registered.as_ref())
            .map(|r| Arc::clone(&r.info));
        let link = server.map(|server| {
            self.me.set_server(Some(server.id));
            server.set_client(Some(self.me.id));
            (Arc::clone(&self.me), server)
        });
        Ok((
            guard,
            assigned,
            Lease {
                _in_use: in_use,
                link,
            },
        ))
    }

    async fn connect(
        &self,
        want: Want,
        asked: Instant,
    ) -> Result<(Guard<ServerConn>, Instant), ErrorFields> {
        route::connect(self.shared, self.config, want, |node, target| async move {
            let entry = self.entry(node);
            let attempt = checkout(
                self.shared,
                (self.config, asked),
                (entry, self.limits),
                node,
                target,
                self.params,
                self.credential,
            )
            .await;
            match attempt {
                Attempt::Usable(guard) => {
                    let assigned = Instant::now();
                    entry.stats.waited(assigned - asked);
                    Attempt::Usable((guard, assigned))
                }
                Attempt::Unusable(why) => Attempt::Unusable(why),
                Attempt::Refused(fields) => Attempt::Refused(fields),
            }
        })
        .await
    }
}

/// Relays a logged-in client until it leaves. In session mode it keeps
/// `held` throughout; in transaction mode it takes a server when it sends
/// something and gives it back when the transaction is over.
async fn serve_client(
    upstream: &Upstream<'_>,
    client: &mut Client,
    mut held: Option<(Guard<ServerConn>, Lease)>,
    mut params: Option<&mut ClientParams>,
    cancel: &CancelKey,
) -> Result<(), ErrorFields> {
    // Transaction mode is when the client's parameters are tracked.
    let mode = match params {
        Some(_) => PoolMode::Transaction,
        None => PoolMode::Session,
    };
    let shared = upstream.shared;
    let config = upstream.config;
    let mut statements = ClientStatements::default();
    let track_statements =
        mode == PoolMode::Transaction && config.general.max_prepared_statements > 0;
    if held.is_none() && client.buf.is_empty() {
        // Transaction mode: the login buffer is not needed while idle.
        client.buf = BytesMut::new();
    }
    let auto = upstream.target == Target::Auto;
    let read_your_writes = auto && config.general.read_your_writes;
    let leastconn = config.general.replica_balance == Balance::LeastConn;
    // `auto` with read-your-writes: when this client's last transaction on
    // the primary ended.
    let mut wrote_at: Option<Instant> = None;
    // `auto`: a read unit a standby refused (25006) goes to the primary next.
    let mut refused_read = false;
    loop {
        let (mut guard, assigned, want, read_unit, _lease) = match held.take() {
            // Session mode's server, held since the welcome.
            Some((g, lease)) => (g, Instant::now(), upstream.want(), false, lease),
            None => {
                let limits = (
                    config.general.max_packet_size,
                    config.general.client_idle_timeout,
                );
                if !wait_for_request(client, limits, (&upstream.me, &shared.going)).await? {
                    return Ok(());
                }
                // Killed while idle: not one more transaction.
                if upstream.me.is_killed() {
                    return Err(killed_by_admin());
                }
                let (want, read_unit) = if !auto || std::mem::take(&mut refused_read) {
                    (upstream.want(), false)
                } else {
                    let stmts = track_statements.then_some(&statements);
                    let Some(request) = read_request(client, stmts).await else {
                        return Ok(());
                    };
                    let standby = Want::Standby {
                        fallback: true,
                        wrote_at,
                        peek: false,
                    };
                    match request {
                        Request::Read => (standby, true),
                        Request::ReadOnlyTransaction => (standby, false),
                        Request::Write | Request::Incomplete => (Want::Primary, false),
                    }
                };
                let (guard, assigned, lease) = Box::pin(upstream.checkout(want)).await?;
                (guard, assigned, want, read_unit, lease)
            }
        };
        let Some(server) = guard.conn() else {
            return Err(ErrorFields::fatal(
                "XX000",
                "pgherd: pool handed out an empty slot",
            ));
        };
        // Counted only where something reads the count.
        let _lease = leastconn.then(|| shared.lease(server.node));
        let stats = &upstream.entry(server.node).stats;
        // A server for the primary was checked not to be a standby.
        let on_standby = want != Want::Primary && server.is_standby();
        shared.routing.count(want, on_standby);
        if let Some(params) = params.as_deref_mut() {
            sync_params(shared, params, server).await?;
        }
        cancel.slot.set(Some(CancelTarget {
            addr: server.addr,
            pid: server.pid,
            secret: server.secret,
        }));
        let until = match mode {
            PoolMode::Session => Until::ClientLeaves,
            PoolMode::Transaction if read_unit && on_standby => Until::ReadUnit,
            PoolMode::Transaction => Until::Idle,
        };
        // The unit as the client sent it, should the primary have to run it.
        let unit = (until == Until::ReadUnit).then(|| client.buf.clone());
        let mut state = ServerState::new();
        // Fenced node or KILL: checked before anything more is relayed. In
        // transaction mode a kill is seen between transactions (above) and
        // by the session's own select, so the relay of each transaction
        // does not register a waiter for it.
        let me = &upstream.me;
        let session_long = until == Until::ClientLeaves;
        let node = server.node;
        let retire = me.until(move || {
            if shared.cluster.is_fenced(node) {
                Some(
                    "was fenced: it claims to be primary but is not the cluster's one primary"
                        .to_owned(),
                )
            } else if session_long && me.is_killed() {
                Some("was left by a killed client".to_owned())
            } else {
                None
            }
        });
        let tracking = relay::Tracking {
            statements: track_statements.then_some(relay::Statements {
                client: &mut statements,
                server: &mut server.statements,
                expected: &mut server.expected,
                max: config.general.max_prepared_statements,
            }),
            params: params.as_deref_mut().map(|client| relay::Params {
                client,
                server: &mut server.params,
            }),
            session_stats: (mode == PoolMode::Session).then_some(&**stats),
            ..Default::default()
        };
        let ends = relay::Ends {
            client: &mut client.stream,
            client_buf: &mut client.buf,
            server: &mut server.stream,
            server_buf: &mut server.read_buf,
        };
        // Boxed: an idle client's task then holds only the small state of
        // waiting for its next request, not the relay's.
        let relayed = Box::pin(relay::relay(
            ends,
            (
                config.general.max_packet_size,
                until,
                relay::IdleLimits {
                    session: config.general.client_idle_timeout,
                    transaction: config.general.idle_transaction_timeout,
                },
            ),
            &mut state,
            tracking,
            retire,
        ))
        .await;
        cancel.slot.set(None);
        stats.traffic(relayed.traffic);
        match relayed.end {
            RelayEnd::ServerIdle => {
                let ended = Instant::now();
                stats.transaction(ended - assigned);
                if read_your_writes && want == Want::Primary {
                    wrote_at = Some(ended);
                }
                if config.general.server_reset_query_always {
                    Box::pin(reset_after_transaction(&mut guard, config)).await;
                }
                release(guard, config.general.server_lifetime, ended);
                if client.buf.is_empty() {
                    // An idle client holds no read buffer between transactions.
                    buffers::give(std::mem::take(&mut client.buf));
                }
                continue;
            }
            RelayEnd::ReadOnly => {
                // The standby is idle and the client saw nothing: run the
                // unit again on the primary.
                release(guard, config.general.server_lifetime, Instant::now());
                if let Some(unit) = unit {
                    buffers::give(std::mem::replace(&mut client.buf, unit));
                }
                shared.routing.read_only_retried();
                refused_read = true;
                continue;
            }
            _ => {}
        }
        let node = &config.nodes[server.node];
        let end = relayed.end;
        let outcome = match &end {
            RelayEnd::ClientLeft | RelayEnd::ServerIdle | RelayEnd::ReadOnly => Ok(()),
            RelayEnd::ClientIo(e) => {
                tracing::debug!(peer = %client.peer, "client connection failed: {e}");
                Ok(())
            }
            RelayEnd::ClientProtocol(e) => Err(ErrorFields::fatal("08P01", e.to_string())),
            RelayEnd::ServerClosed => Err(ErrorFields::fatal(
                "08006",
                format!("server connection to node \"{}\" was lost", node.name),
            )
            .with_detail("the server closed the connection unexpectedly")),
            RelayEnd::ServerIo(e) => Err(ErrorFields::fatal(
                "08006",
                format!("server connection to node \"{}\" was lost", node.name),
            )
            .with_detail(e.to_string())),
            RelayEnd::ServerProtocol(e) => Err(ErrorFields::fatal(
                "08P01",
                format!("node \"{}\" broke the protocol: {e}", node.name),
            )),
            RelayEnd::IdleTimeout(relay::IdleKind::InTransaction) => Err(ErrorFields::fatal(
                "25P03",
                "terminating connection due to idle-in-transaction timeout (idle_transaction_timeout)",
            )),
            RelayEnd::IdleTimeout(relay::IdleKind::Session) => Err(ErrorFields::fatal(
                "57P05",
                "terminating connection due to idle-session timeout (client_idle_timeout)",
            )),
            RelayEnd::Retired(_) if upstream.me.is_killed() => Err(killed_by_admin()),
            RelayEnd::Retired(reason) => Err(ErrorFields::fatal(
                "57P01",
                format!("terminating connection: node \"{}\" {reason}", node.name),
            )),
        };
        if matches!(end, RelayEnd::ServerClosed | RelayEnd::ServerIo(_)) {
            // The node may be going away: look now rather than at the next interval.
            shared.cluster.request_probe();
        }
        Box::pin(finish(shared, guard, &state, &end)).await;
        return if relayed.can_tell_client {
            outcome
        } else {
            // The client is mid-message or already has the server's FATAL error.
            Ok(())
        };
    }
}

/// `auto` target: reads until the client's buffer holds a whole request
/// unit (or enough to tell it is not one) and classifies it. `None`: the
/// client left.
async fn read_request(
    client: &mut Client,
    statements: Option<&ClientStatements>,
) -> Option<Request> {
    loop {
        match classify(&client.buf, statements) {
            Request::Incomplete => {}
            request => return Some(request),
        }
        match client.stream.read_buf(&mut client.buf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// Transaction mode: gives `server` the client's session parameters where
/// its own differ (nothing to do, and no allocation, in the steady state).
async fn sync_params(
    shared: &Shared,
    params: &mut ClientParams,
    server: &mut ServerConn,
) -> Result<(), ErrorFields> {
    let Some(query) = params.differences(&mut server.params.tracked, &shared.tracked) else {
        return Ok(());
    };
    // Only now (a parameter differs) is the exchange's state allocated.
    Box::pin(apply_params(shared, params, server, query)).await
}

async fn apply_params(
    shared: &Shared,
    params: &mut ClientParams,
    server: &mut ServerConn,
    query: String,
) -> Result<(), ErrorFields> {
    let timeout = shared.config().general.server_connect_timeout;
    match server.apply(&query, params, timeout).await {
        Ok(()) => {
            params.adopt(&mut server.params.tracked);
            Ok(())
        }
        // A value the server refuses (a bad TimeZone in the startup packet):
        // as a direct connection would, the server says why and ends it.
        Err(ServerError::Rejected(fields)) => {
            let mut fatal = ErrorFields::fatal(&fields.code, fields.message);
            fatal.detail = fields.detail;
            Err(fatal)
        }
        Err(e) => Err(ErrorFields::fatal(
            "08006",
            format!("setting session parameters on the server failed: {e}"),
        )),
    }
}

/// Transaction mode, between transactions: waits until the client sends
/// the start of a message. False when it left (closed, or sent Terminate).
/// `going` is pgherd shutting down (the session is nudged when it is set).
async fn wait_for_request(
    client: &mut Client,
    (max_packet_size, idle_limit): (usize, Option<std::time::Duration>),
    (me, going): (&ClientInfo, &std::sync::atomic::AtomicBool),
) -> Result<bool, ErrorFields> {
    let is_going = || going.load(Ordering::SeqCst);
    let going = || ErrorFields::fatal("57P01", "terminating connection: pgherd is shutting down");
    // Allocated only with client_idle_timeout set: this is the state an
    // idle client waits in, and a timer inline would grow every one.
    let mut idle_for = idle_limit.map(|d| Box::pin(tokio::time::sleep(d)));
    if client.buf.is_empty() && client.buf.capacity() > 0 {
        // The buffer the login was read into: an idle client keeps none.
        buffers::give(std::mem::take(&mut client.buf));
    }
    loop {
        if client.buf.is_empty() && is_going() {
            return Err(going());
        }
        match pgherd_wire::frame::parse_header(&client.buf, max_packet_size) {
            Ok(Some((frontend::TERMINATE, _))) => return Ok(false),
            Ok(Some(_)) => return Ok(true),
            Ok(None) => {}
            Err(e) => return Err(ErrorFields::fatal("08P01", e.to_string())),
        }
        let read = tokio::select! {
            read = async {
                if client.buf.capacity() == 0 {
                    // Wait without a buffer; take one only when there is data.
                    client.stream.wait_readable().await?;
                    client.buf = buffers::take();
                }
                client.stream.read_buf(&mut client.buf).await
            } => read,
            () = me.until(|| is_going().then_some(())) => return Err(going()),
            () = async { match idle_for.as_mut() {
                Some(t) => t.as_mut().await,
                None => std::future::pending().await,
            } } => return Err(ErrorFields::fatal(
                "57P05",
                "terminating connection due to idle-session timeout (client_idle_timeout)",
            )),
        };
        match read {
            Ok(0) | Err(_) => return Ok(false),
            Ok(_) => {}
        }
    }
}

/// Gives a clean server back to its pool, or closes it when `RECONNECT`
/// asked for that.
/// Also closes one older than `server_lifetime`. `now` is when the
/// transaction ended (read once for stats and for this).
fn release(mut guard: Guard<ServerConn>, lifetime: Option<std::time::Duration>, now: Instant) {
    let Some(server) = guard.conn() else {
        return;
    };
    let close = server.expired(lifetime, now)
        || server
            .registered
            .as_ref()
            .is_some_and(|r| r.info.close_needed());
    if !close {
        server.idle_since = now;
        guard.release();
        return;
    }
    if let Some(server) = guard.take() {
        server.close_in_background();
    }
}

/// `server_reset_query_always`: resets the server a transaction just left
/// (idle, in sync); one that fails the reset is closed, not pooled.
async fn reset_after_transaction(guard: &mut Guard<ServerConn>, config: &Config) {
    let general = &config.general;
    let Some(server) = guard.conn() else { return };
    let reset = server.reset(
        TxStatus::Idle,
        &general.server_reset_query,
        general.server_connect_timeout,
    );
    if let Err(e) = reset.await {
        tracing::info!("server reset failed, closing the connection: {e}");
        if let Some(server) = guard.take() {
            server.close_in_background();
        }
    }
}

/// Returns the server to the pool when the session left it clean and the
/// reset succeeds; closes it otherwise (cancelling whatever it still runs).
async fn finish(
    shared: &Shared,
    mut guard: Guard<ServerConn>,
    state: &ServerState,
    end: &RelayEnd,
) {
    let config = shared.config();
    let Some(server) = guard.conn() else { return };
    if relay::reusable(state, end) {
        match server
            .reset(
                state.tx,
                &config.general.server_reset_query,
                config.general.server_connect_timeout,
            )
            .await
        {
            Ok(()) => {
                release(guard, config.general.server_lifetime, Instant::now());
                return;
            }
            Err(e) => tracing::info!("server reset failed, closing the connection: {e}"),
        }
    }
    let Some(server) = guard.take() else { return };
    drop(guard);
    let busy = state.pending > 0 || state.tx != TxStatus::Idle;
    let server_alive = !matches!(
        end,
        RelayEnd::ServerClosed | RelayEnd::ServerIo(_) | RelayEnd::ServerProtocol(_)
    );
    if server_alive {
        tokio::spawn(async move {
            if busy {
                let _ = send_cancel(server.addr, server.pid, server.secret).await;
            }
            server.close().await;
        });
    }
}

/// Sends the client what a server sends after AuthenticationOk: every
/// ParameterStatus (the server's own values), BackendKeyData with the
/// client's cancel key, and ReadyForQuery.
async fn welcome(
    client: &mut Client,
    server: &ServerConn,
    pid: i32,
    secret: [u8; 4],
) -> Result<(), ErrorFields> {
    let mut out = BytesMut::with_capacity(512);
    for (k, v) in server.params.reported() {
        backend::parameter_status(&mut out, k, v);
    }
    backend::backend_key_data(&mut out, pid, secret);
    backend::ready_for_query(&mut out, TxStatus::Idle);
    client.stream.send(&out).await.map_err(|e| {
        tracing::debug!("client left during welcome: {e}");
        // The client is gone; an error to it would go nowhere.
        ErrorFields::fatal("08006", "client connection lost")
    })
}

/// Opens an unpooled server connection on `node`.
async fn open(
    shared: &Shared,
    node: usize,
    target: Target,
    params: Vec<(String, String)>,
    credential: &ServerCredential,
) -> Attempt<ServerConn> {
    let config = shared.config();
    let n = &config.nodes[node];
    let connected = ServerConn::connect(
        (node, &n.host, n.port),
        (params, &shared.tracked),
        credential,
        &shared.tls().server,
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
            conn.registered = Some(shared.registry.add_server(NewServer {
                node,
                user: &user,
                database: &database,
                addr: conn.addr,
                local_addr: conn.stream.local_addr().ok(),
                pid: conn.pid,
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
            "28000",
            format!("pgherd cannot log in to node \"{}\": {why}", n.name),
        )),
        // A TLS setting that does not fit the server: every node will say
        // the same, so the client hears why instead of waiting.
        Err(ServerError::Tls(why)) => Attempt::Refused(
            ErrorFields::fatal(
                "08001",
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
async fn checkout(
    shared: &Shared,
    (config, asked): (&Config, Instant),
    (entry, limits): (&PoolEntry, PoolLimits),
    node: usize,
    target: Target,
    params: &[(String, String)],
    credential: &ServerCredential,
) -> Attempt<Guard<ServerConn>> {
    let general = &config.general;
    let wait = general.query_wait_timeout;
    let checkout = entry
        .pool
        .checkout_with_reserve(wait, general.reserve_pool_timeout, |c| c.startup == params);
    let mut guard = match checkout.await {
        Ok(g) => g,
        Err(PoolError::Timeout(t)) => {
            return Attempt::Refused(
                ErrorFields::fatal(
                    "53300",
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
        let fit = conn.is_alive()
            && !conn.expired(general.server_lifetime, asked)
            && !(target == Target::Primary && conn.is_standby());
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
        match Box::pin(shared.connection_permits(caps, database, user, wait)).await {
            Some(p) => p,
            None => {
                return Attempt::Refused(ErrorFields::fatal(
                    "53300",
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
    match open_for_pool(shared, entry, (node, target), params, credential).await {
        Attempt::Usable(mut conn) => {
            conn.permits = permits;
            guard.set(conn);
            if limits.min_size > 0 {
                *entry.template.lock().unwrap_or_else(|e| e.into_inner()) = Some(crate::Template {
                    params: params.to_vec(),
                    credential: credential.clone(),
                    target,
                    limits,
                });
            }
            Attempt::Usable(guard)
        }
        Attempt::Unusable(why) => Attempt::Unusable(why),
        Attempt::Refused(f) => Attempt::Refused(f),
    }
}

/// Opens a connection for `entry`'s pool, unless a server refused this
/// pool's login less than `server_login_retry` ago: then that error again,
/// saying it was not retried. Clients (checkout) and `min_pool_size`
/// (the sweeper) both open through here, so neither hammers a server that
/// refuses the login.
async fn open_for_pool(
    shared: &Shared,
    entry: &PoolEntry,
    (node, target): (usize, Target),
    params: &[(String, String)],
    credential: &ServerCredential,
) -> Attempt<ServerConn> {
    let retry = shared.config().general.server_login_retry;
    if let Some(refused) = entry.login_failure.recent(retry, Instant::now()) {
        return Attempt::Refused(refused);
    }
    // Boxed: opening a connection (TCP, TLS, login) is a large future, and
    // checkout runs for every transaction while opening is rare.
    let attempt = Box::pin(open(shared, node, target, params.to_vec(), credential)).await;
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
                if f.code.starts_with("28") || f.code == "3D000" || f.code == "08001" =>
            {
                *self.last() = Some((Instant::now(), f.clone()));
            }
            _ => {}
        }
    }
}

fn killed_by_admin() -> ErrorFields {
    ErrorFields::fatal(
        "57P01",
        "terminating connection due to administrator command",
    )
}

/// `min_pool_size`: opens connections in pools below it, as their last
/// one was opened, on nodes that still fit the pool's target. Stops at a
/// pool's size and at `max_db_connections`/`max_user_connections`.
pub(crate) async fn fill_pools(shared: &Shared) {
    let entries: Vec<(PoolKey, PoolEntry)> = {
        let pools = shared.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools.iter().map(|(k, e)| (k.clone(), e.clone())).collect()
    };
    let topology = shared.cluster.topology();
    for (key, entry) in entries {
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
                match shared
                    .connection_permits(caps, &key.database, &key.user, std::time::Duration::ZERO)
                    .await
                {
                    Some(p) => p,
                    None => break,
                }
            };
            match open_for_pool(
                shared,
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

/// `server_check_query` is due: the connection sat idle at least
/// `server_check_delay`.
fn needs_check(conn: &ServerConn, general: &pgherd_config::General, now: Instant) -> bool {
    !general.server_check_query.is_empty()
        && now.saturating_duration_since(conn.idle_since) >= general.server_check_delay
}

/// A replication connection: no pooling, bytes relayed as they are until
/// either side closes (streaming replication is one long COPY).
async fn replicate(
    shared: &Shared,
    client: &mut Client,
    mut server: ServerConn,
) -> Result<(), ErrorFields> {
    let cancel = shared.cancels.register(Some(server.pid));
    cancel.slot.set(Some(CancelTarget {
        addr: server.addr,
        pid: server.pid,
        secret: server.secret,
    }));
    if let Err(e) = welcome(client, &server, cancel.pid, cancel.secret).await {
        shared.cancels.unregister(&cancel);
        return Err(e);
    }
    let result = async {
        server.stream.send(&client.buf).await?;
        tokio::io::copy_bidirectional(&mut client.stream, &mut server.stream).await
    }
    .await;
    shared.cancels.unregister(&cancel);
    if let Err(e) = result {
        tracing::debug!("replication connection ended: {e}");
    }
    Ok(())
}
