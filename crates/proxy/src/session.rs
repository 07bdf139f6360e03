//! One client connection from accept to close.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use pgherd_config::{Balance, Config, Database, PoolMode, Target};
use pgherd_pool::Guard;
use pgherd_tls::Stream;
use pgherd_wire::backend::{self, ErrorFields, TxStatus};
use pgherd_wire::frontend;
use pgherd_wire::sqlstate;
use tokio::io::AsyncReadExt;

use crate::buffers;
use crate::cancel::{CancelKey, CancelRoute, CancelTarget};
use crate::classify::{classify, Request};
use crate::client::{Authenticated, Client, Refused};
use crate::clock::Micros;
use crate::params::ClientParams;
use crate::prepared::ClientStatements;
use crate::registry::{ClientInfo, NewClient, Registered};
use crate::relay::{self, RelayEnd, ServerState, Until};
use crate::route::{self, Want};
use crate::server::{send_cancel, ServerConn, ServerError, Startup};
use crate::upstream::{open, server_login, Lease, Upstream, Wanted};
use crate::{ClientAddr, Shared};

/// Counts a client for `max_client_conn` while it is connected.
struct ClientSlot(Arc<Shared>);

impl Drop for ClientSlot {
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
///
/// This future is the client's task, and a task is as large as its largest
/// state for its whole life: so everything an idle client does not wait in
/// (encryption, login, the session's setup, each transaction) is boxed,
/// and what is left while idle is [`Session`] and the wait for a request.
pub(crate) fn serve(
    shared: Arc<Shared>,
    stream: Stream,
    peer: ClientAddr,
    listener_target: Target,
) -> impl Future<Output = ()> + Send {
    let connected = shared.clients.fetch_add(1, Ordering::Relaxed) + 1;
    let begin = begin(
        Arc::clone(&shared),
        stream,
        peer,
        listener_target,
        connected,
    );
    // Not arguments of an async fn: those stay in the task all its life.
    run(ClientSlot(shared), Box::pin(begin))
}

/// An async block, not an async fn: an async fn keeps its arguments
/// beside what the body moves them into, and this future is every
/// client's task for its whole life.
#[allow(clippy::manual_async_fn)]
fn run(
    slot: ClientSlot,
    begin: Pin<Box<impl Future<Output = Option<Box<Session>>>>>,
) -> impl Future<Output = ()> {
    async move {
        let Some(mut session) = begin.await else {
            return;
        };
        let shared = &*slot.0;
        // The error boxed: a 120-byte result kept across the await below
        // would be in every client's task.
        let failed = session.serve(shared).await.err().map(Box::new);
        shared.cancels.unregister(&session.cancel);
        log_logout(shared, &session.me.info, failed.as_deref());
        if let Some(fields) = failed {
            Box::pin(session.client.send_error(&fields)).await;
        }
    }
}

/// pgbouncer's `log_disconnections`: who left, why, and after how long.
fn log_logout(shared: &Shared, me: &ClientInfo, failed: Option<&ErrorFields>) {
    let why = failed.map_or("client close request", |f| f.message.as_str());
    let age = me.connected.elapsed().map_or(0.0, |d| d.as_secs_f64());
    let (db, user, peer) = (&me.database, &me.user, me.addr);
    log_at_info(
        shared.config().general.log_disconnections,
        format_args!("closing: db={db} user={user} from {peer}: {why} (age={age:.0}s)"),
    );
}

/// `log_connections` / `log_disconnections`: at info when on, else debug.
fn log_at_info(on: bool, line: std::fmt::Arguments<'_>) {
    if on {
        tracing::info!("{line}");
    } else {
        tracing::debug!("{line}");
    }
}

/// Encryption, login and the session's setup. `None`: the client is
/// served already (refused, a cancel request, the console, replication).
/// `connected`: clients now, this one included.
async fn begin(
    shared: Arc<Shared>,
    stream: Stream,
    peer: ClientAddr,
    listener_target: Target,
    connected: usize,
) -> Option<Box<Session>> {
    let shared = &*shared;
    let config = shared.config();
    if let Stream::Plain(tcp) = &stream {
        if let Err(e) = crate::sockets::tune(tcp, &config.general.tcp) {
            tracing::debug!(%peer, "setting TCP options failed: {e}");
        }
    }
    let over_limit = connected > config.general.max_client_conn;
    // One deadline for encryption and login together.
    let deadline = tokio::time::Instant::now() + config.general.client_login_timeout;
    drop(config);
    let tls = shared.tls();
    let mut client = match Client::accept(stream, peer, &tls.client, deadline).await {
        Ok(client) => client,
        Err(refused) => {
            shared.login_failures.refused(&refused, peer);
            return None;
        }
    };
    // Channel binding data for the certificate this handshake used.
    let channel_binding = match client.stream.is_tls() {
        true => tls.client.channel_binding(),
        false => None,
    };
    drop(tls);
    let auth = match client
        .login(shared, over_limit, deadline, channel_binding)
        .await
    {
        Ok(auth) => auth,
        Err(Refused::Cancel { pid, secret }) => {
            forward_cancel(shared, pid, &secret).await;
            return None;
        }
        Err(refused) => {
            shared.login_failures.refused(&refused, peer);
            if let Refused::Fatal(fields) | Refused::TlsRequired(fields) = &refused {
                client.send_error(fields).await;
            }
            return None;
        }
    };
    // pgbouncer's `log_connections`.
    let (db, user) = (&auth.database, &auth.user);
    let tls = if client.stream.is_tls() { "yes" } else { "no" };
    log_at_info(
        shared.config().general.log_connections,
        format_args!("login: db={db} user={user} tls={tls} from {peer}"),
    );
    match start(shared, &mut client, auth, listener_target).await {
        Ok(Some(setup)) => Some(Box::new(Session {
            client,
            upstream: setup.upstream,
            me: setup.me,
            cancel: setup.cancel,
            params: setup.params,
            statements: ClientStatements::default(),
            wrote_at: None,
            refused_read: false,
            gone_retries: 0,
            held: setup.held,
        })),
        // The console, or a replication connection: served already.
        Ok(None) => None,
        Err(fields) => {
            client.send_error(&fields).await;
            None
        }
    }
}

async fn forward_cancel(shared: &Shared, pid: i32, secret: &Bytes) {
    match shared.cancels.lookup(&shared.registry, pid, secret) {
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

/// Sets up an authenticated client's session: its upstream, its welcome
/// (from a first server) and, in session mode, the server it keeps.
/// `None`: the client was the console's or a replication connection, and
/// is served already. An `Err` is sent to the client.
async fn start(
    shared: &Shared,
    client: &mut Client,
    auth: Box<Authenticated>,
    listener_target: Target,
) -> Result<Option<Setup>, ErrorFields> {
    if crate::console::is_console(&auth.database) {
        Box::pin(crate::console::serve(shared, client, &auth)).await?;
        return Ok(None);
    }
    let config = shared.config();
    let replication = wants_replication(&auth);
    let db = match config.database(&auth.database) {
        Some(db) => db,
        None if replication => &REPLICATION_FALLBACK,
        None => {
            return Err(ErrorFields::fatal(
                sqlstate::INVALID_CATALOG_NAME,
                format!("database \"{}\" does not exist", auth.database),
            )
            .with_hint("pgherd has no [databases] entry for it and no \"*\" entry"))
        }
    };
    let control = shared.registry.database(&auth.database);
    if control.disabled() {
        return Err(ErrorFields::fatal(
            sqlstate::CANNOT_CONNECT_NOW,
            format!("database \"{}\" is disabled", auth.database),
        )
        .with_hint("an administrator ran DISABLE on the admin console; ENABLE lifts it"));
    }
    let me = shared.registry.add_client(NewClient {
        user: &auth.user,
        database: &auth.database,
        addr: client.peer,
        local_addr: client.stream.local_addr(),
        application_name: auth.startup.param("application_name").unwrap_or(""),
    });
    let (server_user, credential) = server_login(&config, db, &auth);
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
    params.push(("user".into(), server_user));
    params.push(("database".into(), server_db));
    params.sort();

    if replication {
        drop(auth);
        let params: Startup = params.into();
        let (params, credential) = (&params, &credential);
        let server = Box::pin(route::connect(
            shared,
            &config,
            Want::Primary,
            |node, target| async move {
                open(shared, node, target, Arc::clone(params), credential).await
            },
        ))
        .await?;
        Box::pin(replicate(shared, client, server)).await?;
        return Ok(None);
    }

    let target = match db.target.unwrap_or(listener_target) {
        // Per transaction, so only in transaction mode.
        Target::Auto if mode == PoolMode::Session => Target::Primary,
        t => t,
    };
    let upstream = shared.upstreams.get(Wanted {
        config: &config,
        client: (&auth.database, &auth.user),
        db,
        target,
        params,
        credential,
        mode,
        control,
    });
    // Everything needed from the login is copied out: the startup packet
    // and the rest go now, not at the end of the session.
    drop(auth);
    // The welcome needs a server's ParameterStatus values, in both modes.
    let welcome_want = match (upstream.want(), mode) {
        (Want::Standby { fallback, .. }, PoolMode::Transaction) => Want::Standby {
            fallback,
            wrote_at: None,
            peek: true,
        },
        // While no primary is known (a failover), a transaction-mode client
        // is welcomed with a standby's values and its first transaction
        // waits for the primary: a driver's connect timeout is usually
        // shorter than a failover, and its first query's is not. (Not before
        // the first probes have answered: then the primary is moments away.)
        (Want::Primary, PoolMode::Transaction)
            if shared.cluster.primary_now().is_none()
                && shared
                    .cluster
                    .pick_now(|t| t.probed().then_some(()))
                    .is_some() =>
        {
            Want::Standby {
                fallback: true,
                wrote_at: None,
                peek: true,
            }
        }
        (want, _) => want,
    };
    let (mut first, _, first_lease) = upstream.checkout(shared, &me.info, welcome_want).await?;
    let Some(server) = first.conn() else {
        return Err(empty_slot());
    };
    // Welcomed by a standby for the primary: the client's transactions will
    // run on the primary, so it must not be told it reached a hot standby.
    let as_primary = upstream.want() == Want::Primary && server.is_standby();
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
    let cancel = shared.cancels.register(
        match mode {
            PoolMode::Session => Some(server.pid),
            PoolMode::Transaction => None,
        },
        CancelRoute::Client(Arc::clone(&me.info)),
    );
    if let Err(e) = welcome(client, server, (cancel.pid, cancel.secret), as_primary).await {
        shared.cancels.unregister(&cancel);
        return Err(e);
    }
    let held = match mode {
        PoolMode::Session => Some(Box::new((first, first_lease))),
        PoolMode::Transaction => {
            release(first, config.general.server_lifetime, Micros::now());
            drop(first_lease);
            None
        }
    };
    if held.is_none() && client.buf.is_empty() {
        // Transaction mode: the login buffer is not needed while idle.
        client.buf = BytesMut::new();
    }
    Ok(Some(Setup {
        upstream,
        me,
        cancel,
        params: tracking.then_some(client_params),
        held,
    }))
}

/// What [`start`] sets up for a session.
struct Setup {
    upstream: Arc<Upstream>,
    me: Registered<ClientInfo>,
    cancel: CancelKey,
    params: Option<ClientParams>,
    held: Option<Box<(Guard<ServerConn>, Lease)>>,
}

/// How often one request runs again after its server left: each try
/// discards that server, so a pool of dead idle connections (all killed by
/// one shutdown) is worked through, and then the request waits for a
/// primary; a server that kills every request is not tried forever.
const MAX_GONE_RETRIES: u8 = 64;

fn empty_slot() -> ErrorFields {
    ErrorFields::fatal("XX000", "pgherd: pool handed out an empty slot")
}

/// A logged-in client's session: what it keeps between transactions.
struct Session {
    client: Client,
    upstream: Arc<Upstream>,
    /// This client's entry in the console's list.
    me: Registered<ClientInfo>,
    cancel: CancelKey,
    /// Transaction mode: the client's own session parameters.
    params: Option<ClientParams>,
    /// Transaction mode: the statements the client prepared.
    statements: ClientStatements,
    /// `auto` with read-your-writes: when this client's last transaction on
    /// the primary ended.
    wrote_at: Option<Instant>,
    /// `auto`: a read unit a standby refused (25006) goes to the primary next.
    refused_read: bool,
    /// Requests of this transaction run again because their server left
    /// ([`RelayEnd::ServerGone`]), up to [`MAX_GONE_RETRIES`].
    gone_retries: u8,
    /// Session mode: the server kept since the welcome (boxed: a
    /// transaction-mode client, idle most of its life, keeps 8 bytes for it
    /// instead of 48).
    held: Option<Box<(Guard<ServerConn>, Lease)>>,
}

/// A server taken for a request, and what was asked of it.
struct Taken {
    guard: Guard<ServerConn>,
    /// Held until the server is given back.
    _lease: Lease,
    /// When it was handed over.
    assigned: Micros,
    /// It was asked for as the primary (read-your-writes notes when the
    /// transaction ended).
    to_primary: bool,
    /// `auto`: a read-only unit landed on a standby, to run again on the
    /// primary if the standby refuses it.
    read_unit_on_standby: bool,
}

impl Taken {
    /// A server taken for `want` (and whether the request is one read-only
    /// unit), counted for the routing metrics. What the relay needs of
    /// `want` is kept as two flags: the relay's state is allocated per
    /// transaction and kept small.
    fn new(
        shared: &Shared,
        (mut guard, lease, assigned): (Guard<ServerConn>, Lease, Micros),
        want: Want,
        read_unit: bool,
    ) -> Taken {
        // A server for the primary was checked not to be a standby.
        let on_standby = want != Want::Primary && guard.conn().is_some_and(|s| s.is_standby());
        shared.routing.count(want, on_standby);
        Taken {
            guard,
            _lease: lease,
            assigned,
            to_primary: want == Want::Primary,
            read_unit_on_standby: read_unit && on_standby,
        }
    }
}

/// After a transaction: wait for the next one, or the session is over.
enum Next {
    Request,
    Leave,
}

impl Session {
    /// Relays the client until it leaves. In session mode it keeps its
    /// server throughout; in transaction mode it takes a server when it
    /// sends something and gives it back when the transaction is over.
    async fn serve(&mut self, shared: &Shared) -> Result<(), ErrorFields> {
        let me = Arc::clone(&self.me.info);
        loop {
            if self.held.is_none() {
                let general = &self.upstream.config.general;
                let limits = (general.max_packet_size, general.client_idle_timeout);
                if !wait_for_request(&mut self.client, limits, (&me, &shared.going)).await? {
                    return Ok(());
                }
                // Killed while idle: not one more transaction.
                if me.is_killed() {
                    return Err(killed_by_admin());
                }
            }
            // A server is taken without waiting when it can be, else in a
            // boxed future; the relay step is boxed too: an idle client's
            // task holds none of their state. The relay step is kept under
            // 1,032 bytes (1,024 now, `-Zprint-type-sizes`): glibc's malloc
            // serves up to that from a per-thread cache, larger blocks
            // through its bins (callgrind: a 1,320-byte box cost ~380 more
            // instructions per transaction than boxes under the limit).
            // KILL / KILL_CLIENT end the wait for a server; the relay
            // itself watches for them (`retire`).
            //
            // The relay is boxed before anything is awaited: a server taken
            // now (64 bytes) never sits in this future's state, which every
            // idle client's task holds.
            let now = self.relay_now(shared);
            let next = match now {
                Some(relay) => relay.await?,
                None => {
                    // `None`, but its type borrows `self` until dropped.
                    drop(now);
                    // Boxed in a block of its own: the server taken ends
                    // there, not across the relay's await.
                    let relay = {
                        let taken = tokio::select! {
                            biased;
                            taken = Box::pin(self.take_server(shared)) => taken?,
                            () = me.killed() => return Err(killed_by_admin()),
                        };
                        match taken {
                            Some(taken) => Box::pin(self.relay_on(shared, taken)),
                            None => return Ok(()),
                        }
                    };
                    relay.await?
                }
            };
            if let Next::Leave = next {
                return Ok(());
            }
        }
    }

    /// The relay of the client's request on a server taken without waiting
    /// ([`Session::take_server_now`]), boxed.
    #[allow(clippy::type_complexity)]
    fn relay_now<'a>(
        &'a mut self,
        shared: &'a Shared,
    ) -> Option<Pin<Box<impl Future<Output = Result<Next, ErrorFields>> + 'a>>> {
        let taken = self.take_server_now(shared)?;
        // The box first, then the future written into it: `Box::pin(f)`
        // builds the 1 KiB future on the stack and copies it over (callgrind:
        // 6,648 → 6,489 instructions per transaction without that copy).
        let slot = Box::new_uninit();
        Some(Box::into_pin(Box::write(
            slot,
            self.relay_on(shared, taken),
        )))
    }

    /// [`Session::take_server`] when nothing has to wait: a transaction-mode
    /// request whose destination is known and a server ready for it (see
    /// [`Upstream::checkout_now`]). Nearly every transaction; without a
    /// future, so without an allocation.
    fn take_server_now(&mut self, shared: &Shared) -> Option<Taken> {
        if self.held.is_some() {
            return None;
        }
        let (want, read_unit) = self.wants_now()?;
        let (guard, assigned, lease) = self.upstream.checkout_now(shared, &self.me.info, want)?;
        self.refused_read = false;
        Some(Taken::new(
            shared,
            (guard, lease, assigned),
            want,
            read_unit,
        ))
    }

    /// A server for the client's next request. `None`: the client left.
    async fn take_server(&mut self, shared: &Shared) -> Result<Option<Taken>, ErrorFields> {
        let upstream = &*self.upstream;
        if let Some((guard, lease)) = self.held.take().map(|held| *held) {
            // Session mode's server, held since the welcome.
            let server = (guard, lease, Micros::now());
            return Ok(Some(Taken::new(shared, server, upstream.want(), false)));
        }
        let (want, read_unit) = match self.wants_now() {
            Some(wants) => wants,
            None => {
                // `auto`: read until the request can be classified.
                let stmts = self.tracks_statements().then_some(&self.statements);
                let Some(request) = read_request(&mut self.client, stmts).await else {
                    return Ok(None);
                };
                self.wants(request)
            }
        };
        self.refused_read = false;
        let (guard, assigned, lease) = upstream.checkout(shared, &self.me.info, want).await?;
        let server = (guard, lease, assigned);
        Ok(Some(Taken::new(shared, server, want, read_unit)))
    }

    /// Where the next request goes, and whether it is one read-only unit,
    /// when what the client sent tells: `None` while an `auto` client's
    /// request is not whole yet.
    fn wants_now(&self) -> Option<(Want, bool)> {
        let upstream = &*self.upstream;
        // `auto`: after a standby refused a read unit, it goes to the primary.
        if upstream.target != Target::Auto || self.refused_read {
            return Some((upstream.want(), false));
        }
        let stmts = self.tracks_statements().then_some(&self.statements);
        match classify(&self.client.buf, stmts) {
            Request::Incomplete => None,
            request => Some(self.wants(request)),
        }
    }

    /// `auto`: where a classified request goes.
    fn wants(&self, request: Request) -> (Want, bool) {
        let standby = Want::Standby {
            fallback: true,
            wrote_at: self.wrote_at,
            peek: false,
        };
        match request {
            Request::Read => (standby, true),
            Request::ReadOnlyTransaction => (standby, false),
            Request::Write | Request::Incomplete => (Want::Primary, false),
        }
    }

    /// Transaction mode with `max_prepared_statements`: the client's named
    /// statements are pgherd's to prepare on each server.
    fn tracks_statements(&self) -> bool {
        self.params.is_some() && self.upstream.config.general.max_prepared_statements > 0
    }

    /// Relays the client's transaction (session mode: the rest of the
    /// session) on the server it was given.
    #[allow(clippy::manual_async_fn)] // see the comment on the block
    fn relay_on<'a>(
        &'a mut self,
        shared: &'a Shared,
        mut taken: Taken,
    ) -> impl std::future::Future<Output = Result<Next, ErrorFields>> + 'a {
        // An async block, not an async fn: it keeps `taken` once, where an
        // async fn keeps its arguments and their moved copies.
        async move {
            // The block captures only the places it uses: naming the lease
            // keeps the database claim (PAUSE) and the console's link for
            // as long as the relay runs.
            let _lease = &taken._lease;
            let track_statements = self.tracks_statements();
            let client = &mut self.client;
            let upstream = &*self.upstream;
            let config = &*upstream.config;
            let me = &self.me.info;
            let mode = match self.params {
                Some(_) => PoolMode::Transaction,
                None => PoolMode::Session,
            };
            let auto = upstream.target == Target::Auto;
            // `taken` is used in place: a copy of its parts would grow this
            // state, allocated per transaction.
            let Some(server) = taken.guard.conn() else {
                return Err(empty_slot());
            };
            // Counted only where something reads the count.
            let leastconn = config.general.replica_balance == Balance::LeastConn;
            let _node_lease = leastconn.then(|| shared.lease(server.node));
            let stats = &upstream.entry(shared, server.node).stats;
            if let Some(params) = self.params.as_mut() {
                sync_params(shared, params, server).await?;
            }
            let until = match mode {
                PoolMode::Session => Until::ClientLeaves,
                PoolMode::Transaction if taken.read_unit_on_standby => Until::ReadUnit,
                PoolMode::Transaction => Until::Idle,
            };
            // The request as the client sent it, should it have to run
            // again: on the primary (a read unit a standby refused), or on
            // another server (this one turned out to be leaving). Boxed: this
            // state is allocated per transaction.
            let retry = until == Until::Idle && self.gone_retries < MAX_GONE_RETRIES;
            let unit = (retry || until == Until::ReadUnit).then(|| buffers::copy(&client.buf));
            let mut state = ServerState::new();
            if retry {
                state.hold = relay::Hold::Request;
            }
            // Fenced node or KILL: checked before anything more is relayed, so
            // the server is cancelled and closed by `finish`. (`serve`'s select
            // sees a kill wherever else the transaction waits.)
            let node = server.node;
            let retire = std::pin::pin!(me.until(move || {
                if shared.cluster.is_fenced(node) {
                    Some(
                        "was fenced: it claims to be primary but is not the cluster's one primary"
                            .to_owned(),
                    )
                } else if me.is_killed() {
                    Some("was left by a killed client".to_owned())
                } else {
                    None
                }
            }));
            let mut tracking = relay::Tracking {
                statements: track_statements.then_some(relay::Statements {
                    client: &mut self.statements,
                    server: &mut server.statements,
                    expected: &mut server.expected,
                    max: config.general.max_prepared_statements,
                }),
                params: self.params.as_mut().map(|client| relay::Params {
                    client,
                    server: &mut server.params,
                }),
                session_stats: (mode == PoolMode::Session).then_some(&**stats),
                // Held by the relay, so this state holds it once.
                replay: unit,
                ..Default::default()
            };
            let ends = relay::Ends {
                client: &mut client.stream,
                client_buf: &mut client.buf,
                server: &mut server.stream,
                server_buf: &mut server.read_buf,
            };
            let relayed = relay::relay(
                ends,
                (config.general.max_packet_size, until, upstream.relay_limits),
                &mut state,
                &mut tracking,
                retire,
            )
            .await;
            let unit = tracking.replay.take();
            stats.traffic(relayed.traffic);
            match relayed.end {
                RelayEnd::ServerIdle => {
                    self.gone_retries = 0;
                    let ended = Micros::recent();
                    stats.transaction(ended.since(taken.assigned));
                    if auto && config.general.read_your_writes && taken.to_primary {
                        // Compared with the probes' times: their clock.
                        self.wrote_at = Some(Instant::now());
                    }
                    if state.said_goodbye() {
                        // Its FATAL came after the last answer: closed, not reused.
                        drop(taken.guard.take());
                    } else {
                        if config.general.server_reset_query_always {
                            Box::pin(reset_after_transaction(&mut taken.guard, config)).await;
                        }
                        release(taken.guard, config.general.server_lifetime, ended);
                    }
                    if let Some(unit) = unit {
                        buffers::give_copy(unit);
                    }
                    if client.buf.is_empty() {
                        // An idle client holds no read buffer between transactions.
                        buffers::give(std::mem::take(&mut client.buf));
                    }
                    return Ok(Next::Request);
                }
                RelayEnd::ReadOnly => {
                    // The standby is idle and the client saw nothing: run the
                    // unit again on the primary.
                    release(taken.guard, config.general.server_lifetime, Micros::now());
                    if let Some(unit) = unit {
                        buffers::give(std::mem::replace(&mut client.buf, *unit));
                    }
                    shared.routing.read_only_retried();
                    self.refused_read = true;
                    return Ok(Next::Request);
                }
                RelayEnd::ServerGone(why) => {
                    // The server said goodbye before running the request.
                    // 57P01 is also what an administrator's
                    // pg_terminate_backend says: the request runs again
                    // only if the node is leaving (it refuses new logins),
                    // never to undo a kill.
                    let node = server.node;
                    Box::pin(finish(shared, taken.guard, &state, &relayed.end)).await;
                    let leaving = why != relay::Goodbye::Terminated
                        || Box::pin(refuses_logins(shared, upstream, node)).await;
                    if !leaving || self.gone_retries >= MAX_GONE_RETRIES {
                        return Err(match why {
                            relay::Goodbye::Terminated => killed_by_admin(),
                            _ => ErrorFields::fatal(
                                sqlstate::CONNECTION_FAILURE,
                                format!(
                                    "server connection to node \"{}\" was lost",
                                    config.nodes[node].name
                                ),
                            ),
                        });
                    }
                    tracing::info!(
                        node = %config.nodes[node].name,
                        "server left before running a request ({why:?}): running it on another server"
                    );
                    if let Some(unit) = unit {
                        buffers::give(std::mem::replace(&mut client.buf, *unit));
                    }
                    shared.cluster.request_probe();
                    shared.routing.gone_retried();
                    self.gone_retries += 1;
                    return Ok(Next::Request);
                }
                _ => {}
            }
            let node = &config.nodes[server.node];
            let end = relayed.end;
            tracing::debug!(
                node = %node.name,
                "relay ended: {end:?} (can tell the client: {}, hold {:?})",
                relayed.can_tell_client,
                state.hold
            );
            let outcome = match &end {
                RelayEnd::ClientLeft
                | RelayEnd::ServerIdle
                | RelayEnd::ReadOnly
                | RelayEnd::ServerGone(_) => Ok(Next::Leave),
                RelayEnd::ClientIo(e) => {
                    tracing::debug!(peer = %client.peer, "client connection failed: {e}");
                    Ok(Next::Leave)
                }
                RelayEnd::ClientProtocol(e) => Err(ErrorFields::fatal(sqlstate::PROTOCOL_VIOLATION, e.to_string())),
                RelayEnd::ServerClosed => Err(ErrorFields::fatal(
                    sqlstate::CONNECTION_FAILURE,
                    format!("server connection to node \"{}\" was lost", node.name),
                )
                .with_detail("the server closed the connection unexpectedly")),
                RelayEnd::ServerIo(e) => Err(ErrorFields::fatal(
                    sqlstate::CONNECTION_FAILURE,
                    format!("server connection to node \"{}\" was lost", node.name),
                )
                .with_detail(e.to_string())),
                RelayEnd::ServerProtocol(e) => Err(ErrorFields::fatal(
                    sqlstate::PROTOCOL_VIOLATION,
                    format!("node \"{}\" broke the protocol: {e}", node.name),
                )),
                RelayEnd::IdleTimeout(relay::IdleKind::InTransaction) => Err(ErrorFields::fatal(
                    sqlstate::IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
                    "terminating connection due to idle-in-transaction timeout (idle_transaction_timeout)",
                )),
                RelayEnd::IdleTimeout(relay::IdleKind::Session) => Err(ErrorFields::fatal(
                    sqlstate::IDLE_SESSION_TIMEOUT,
                    "terminating connection due to idle-session timeout (client_idle_timeout)",
                )),
                RelayEnd::QueryTimeout(limit) => Err(ErrorFields::fatal(
                    sqlstate::QUERY_CANCELED,
                    format!(
                        "terminating connection: no answer from node \"{}\" within query_timeout ({}s); the query was cancelled",
                        node.name,
                        limit.as_secs_f64()
                    ),
                )),
                RelayEnd::Retired(_) if me.is_killed() => Err(killed_by_admin()),
                RelayEnd::Retired(reason) => Err(ErrorFields::fatal(
                    sqlstate::ADMIN_SHUTDOWN,
                    format!("terminating connection: node \"{}\" {reason}", node.name),
                )),
            };
            if matches!(end, RelayEnd::ServerClosed | RelayEnd::ServerIo(_)) {
                // The node may be going away: look now rather than at the next interval.
                shared.cluster.request_probe();
                shared.cluster.count_failed();
            }
            Box::pin(finish(shared, taken.guard, &state, &end)).await;
            if relayed.can_tell_client {
                outcome
            } else {
                // The client is mid-message or already has the server's FATAL error.
                Ok(Next::Leave)
            }
        }
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
            sqlstate::CONNECTION_FAILURE,
            format!("setting session parameters on the server failed: {e}"),
        )),
    }
}

/// Transaction mode, between transactions: waits until the client sends
/// the start of a message. False when it left (closed, or sent Terminate).
/// Ends the session when pgherd shuts down (`going`), when the client is
/// killed, or at `client_idle_timeout`; the session is nudged for the
/// first two.
///
/// Written as one poll function, and not an async fn (which would keep its
/// arguments beside the poll function's captures): this is the state an
/// idle client waits in, and its size is every idle client's (a `select!`
/// of the same was 344 bytes, the async fn 120, this 48).
fn wait_for_request<'a>(
    client: &'a mut Client,
    (max_packet_size, idle_limit): (usize, Option<std::time::Duration>),
    (me, going): (&'a ClientInfo, &'a std::sync::atomic::AtomicBool),
) -> impl Future<Output = Result<bool, ErrorFields>> + 'a {
    // Allocated only with client_idle_timeout set: a timer inline would
    // grow every idle client.
    let mut idle_for = idle_limit.map(|d| Box::pin(tokio::time::sleep(d)));
    if client.buf.is_empty() && client.buf.capacity() > 0 {
        // The buffer the login was read into: an idle client keeps none.
        buffers::give(std::mem::take(&mut client.buf));
    }
    std::future::poll_fn(move |cx| loop {
        match pgherd_wire::frame::parse_header(&client.buf, max_packet_size) {
            Ok(Some((frontend::TERMINATE, _))) => return Poll::Ready(Ok(false)),
            Ok(Some(_)) => return Poll::Ready(Ok(true)),
            Ok(None) => {}
            Err(e) => {
                return Poll::Ready(Err(ErrorFields::fatal(
                    sqlstate::PROTOCOL_VIOLATION,
                    e.to_string(),
                )))
            }
        }
        // Registered before the flags are read, so a nudge in between is
        // not lost.
        me.register(cx.waker());
        if me.is_killed() {
            return Poll::Ready(Err(killed_by_admin()));
        }
        if client.buf.is_empty() && going.load(Ordering::SeqCst) {
            return Poll::Ready(Err(ErrorFields::fatal(
                sqlstate::ADMIN_SHUTDOWN,
                "terminating connection: pgherd is shutting down",
            )));
        }
        if let Some(timer) = idle_for.as_mut() {
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(ErrorFields::fatal(
                    sqlstate::IDLE_SESSION_TIMEOUT,
                    "terminating connection due to idle-session timeout (client_idle_timeout)",
                )));
            }
        }
        if client.buf.capacity() == 0 {
            // Wait without a buffer; take one only when there is data.
            match client.stream.poll_read_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(false)),
                Poll::Ready(Ok(())) => client.buf = buffers::take(),
            }
        }
        match std::pin::pin!(client.stream.read_buf(&mut client.buf)).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(Ok(false)),
            Poll::Ready(Ok(_)) => {}
        }
    })
}

/// Gives a clean server back to its pool, or closes it when `RECONNECT`
/// asked for that.
/// Also closes one older than `server_lifetime`. `now` is when the
/// transaction ended (read once for stats and for this).
fn release(mut guard: Guard<ServerConn>, lifetime: Option<std::time::Duration>, now: Micros) {
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
        // Unlinked before it is in the pool, where another client can
        // take (and link) it at once on another thread.
        if let Some(r) = &server.registered {
            r.info.set_client(None);
        }
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
                release(guard, config.general.server_lifetime, Micros::now());
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
        RelayEnd::ServerClosed
            | RelayEnd::ServerIo(_)
            | RelayEnd::ServerProtocol(_)
            | RelayEnd::ServerGone(_)
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
/// ParameterStatus (the server's own values; `in_hot_standby` off when a
/// standby welcomes a client `as_primary`), BackendKeyData with the
/// client's cancel key, and ReadyForQuery.
async fn welcome(
    client: &mut Client,
    server: &ServerConn,
    (pid, secret): (i32, [u8; 4]),
    as_primary: bool,
) -> Result<(), ErrorFields> {
    let mut out = BytesMut::with_capacity(512);
    for (k, v) in server.params.reported() {
        let v = if as_primary && k == "in_hot_standby" {
            "off"
        } else {
            v
        };
        backend::parameter_status(&mut out, k, v);
    }
    backend::backend_key_data(&mut out, pid, secret);
    backend::ready_for_query(&mut out, TxStatus::Idle);
    client.stream.send(&out).await.map_err(|e| {
        tracing::debug!("client left during welcome: {e}");
        // The client is gone; an error to it would go nowhere.
        ErrorFields::fatal(sqlstate::CONNECTION_FAILURE, "client connection lost")
    })
}

/// Whether `node` refuses new logins (shutting down, or gone): what tells
/// a shutdown's goodbye from an administrator terminating one backend.
async fn refuses_logins(shared: &Shared, upstream: &Upstream, node: usize) -> bool {
    let params = Arc::clone(&upstream.params);
    // Replica: any role will do, only the login is in question.
    match open(shared, node, Target::Replica, params, &upstream.credential).await {
        route::Attempt::Usable(conn) => {
            conn.close_in_background();
            false
        }
        route::Attempt::Unusable(_) => true,
        route::Attempt::Refused(_) => false,
    }
}

fn killed_by_admin() -> ErrorFields {
    ErrorFields::fatal(
        sqlstate::ADMIN_SHUTDOWN,
        "terminating connection due to administrator command",
    )
}

/// A replication connection: no pooling, bytes relayed as they are until
/// either side closes (streaming replication is one long COPY).
async fn replicate(
    shared: &Shared,
    client: &mut Client,
    mut server: ServerConn,
) -> Result<(), ErrorFields> {
    let cancel = shared.cancels.register(
        Some(server.pid),
        CancelRoute::Fixed(CancelTarget {
            addr: server.addr,
            pid: server.pid,
            secret: server.secret,
        }),
    );
    if let Err(e) = welcome(client, &server, (cancel.pid, cancel.secret), false).await {
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
