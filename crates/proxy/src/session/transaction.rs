//! The served session: wait for a request, take a server (in session mode
//! at the first request or, with `session_server_at = "login"`, at login;
//! per transaction in transaction mode), relay until the server is free
//! again, and turn how the relay ended into what the client is told (an
//! error, a retry on another server, or nothing).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use pgherd_config::{Balance, Config, PinLimitAction, PoolMode, Target};
use pgherd_pool::Guard;
use pgherd_wire::backend::{self, ErrorFields, TxStatus};
use pgherd_wire::frontend;
use pgherd_wire::sqlstate;
use tokio::io::AsyncReadExt;

use super::listening::Listening;
use super::release::{finish, release, reset_after_transaction};
use crate::clock::Micros;
use crate::fanout;
use crate::login::Client;
use crate::registry::cancel::CancelKey;
use crate::registry::{ClientInfo, Registered};
use crate::relay::buffers;
use crate::relay::classify::{classify, Request};
use crate::relay::params::ClientParams;
use crate::relay::prepared::ClientStatements;
use crate::relay::session_state::Kinds;
use crate::relay::{self, RelayEnd, ServerProgress, Until};
use crate::shared::Shared;
use crate::upstream::route::{self, Want};
use crate::upstream::server::{ServerConn, ServerError};
use crate::upstream::{open, Lease, Upstream};

/// How often one request runs again after its server left: each try
/// discards that server, so a pool of dead idle connections (all killed by
/// one shutdown) is worked through, and then the request waits for a
/// primary; a server that kills every request is not tried forever.
pub(super) const MAX_GONE_RETRIES: u8 = 64;

pub(super) fn empty_slot() -> ErrorFields {
    ErrorFields::fatal(
        sqlstate::INTERNAL_ERROR,
        "pgherd: pool handed out an empty slot",
    )
}

/// What `start` sets up for a session.
pub(super) struct Setup {
    pub(super) upstream: Arc<Upstream>,
    pub(super) me: Registered<ClientInfo>,
    pub(super) cancel: CancelKey,
    pub(super) params: Option<ClientParams>,
    pub(super) held: Option<Box<(Guard<ServerConn>, Lease)>>,
}

/// A logged-in client's session: what it keeps between transactions.
pub(super) struct Session {
    pub(super) client: Client,
    upstream: Arc<Upstream>,
    /// This client's entry in the console's list.
    pub(super) me: Registered<ClientInfo>,
    pub(super) cancel: CancelKey,
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
    /// Session mode: the server kept since the welcome (with
    /// `session_server_at = "login"`); transaction mode:
    /// the server the client is pinned to (boxed: a transaction-mode
    /// client, idle most of its life, keeps 8 bytes for it instead of 48).
    held: Option<Box<(Guard<ServerConn>, Lease)>>,
    /// Transaction mode: the session state left on the held server (see
    /// `relay::session_state`); empty when not pinned.
    pins: Kinds,
    /// Its first pin was logged.
    pin_logged: bool,
    /// `listen_fanout`: its LISTENs, served by pgherd.
    listening: Option<Box<Listening>>,
}

/// A server taken for a request, and what was asked of it.
pub(super) struct Taken {
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
        shared.servers.routing.counters.count(want, on_standby);
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
pub(super) enum Next {
    Request,
    Leave,
}

impl Session {
    pub(super) fn new(client: Client, setup: Setup) -> Session {
        Session {
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
            pins: Kinds::NONE,
            pin_logged: false,
            listening: None,
        }
    }

    /// Relays the client until it leaves. In session mode it keeps its
    /// server from its first request (or login) on; in transaction mode it takes a server when it
    /// sends something and gives it back when the transaction is over.
    ///
    /// Every idle client's task holds this future, so what a transaction
    /// needs lives in boxes made when a request arrives: the server taken
    /// (without waiting when it can be) and the relay step, which must stay
    /// at or under 1,032 bytes (`-Zprint-type-sizes`): glibc serves up to
    /// that from a per-thread cache, larger blocks through its slower bins.
    pub(super) async fn serve(&mut self, shared: &Arc<Shared>) -> Result<(), ErrorFields> {
        let me = Arc::clone(&self.me.info);
        loop {
            // A pinned client that listens through pgherd waits here too,
            // for its notifications.
            if self.held.is_none() || self.listening.is_some() {
                let general = &self.upstream.config.general;
                let limits = (general.max_packet_size, general.client_idle_timeout);
                let waited =
                    wait_for_request(&mut self.client, limits, (&me, &shared.going)).await?;
                // Killed while idle: not one more transaction.
                if waited == Wait::Request && me.is_killed() {
                    return Err(killed_by_admin());
                }
                // One await for the rarer cases, boxed: each await point is
                // a state of this future, resumed every transaction.
                if waited != Wait::Request || self.upstream.config.general.listen_fanout {
                    match Box::pin(self.between_requests(shared, waited)).await? {
                        Between::Request => {}
                        Between::Served => continue,
                        Between::Left => return Ok(()),
                    }
                }
            }
            // KILL / KILL_CLIENT end the wait for a server; the relay
            // watches for them itself (`retire`). The relay is boxed before
            // anything is awaited, so a taken server never sits in this
            // future's state.
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

    /// After a wait that did not simply end with a request (or under
    /// `listen_fanout`): the client left, its notifications are written, or
    /// its LISTEN/UNLISTEN is served without a server.
    async fn between_requests(
        &mut self,
        shared: &Arc<Shared>,
        waited: Wait,
    ) -> Result<Between, ErrorFields> {
        match waited {
            Wait::Left => return Ok(Between::Left),
            Wait::Notified => {
                let Some(listening) = &self.listening else {
                    return Ok(Between::Served);
                };
                let out = listening.inbox.take();
                if !out.is_empty() && self.client.stream.send(&out).await.is_err() {
                    return Ok(Between::Left);
                }
                return Ok(Between::Served);
            }
            Wait::Request => {}
        }
        if self.held.is_some() || self.params.is_none() {
            return Ok(Between::Request);
        }
        let Some((request, len)) = fanout::request(&self.client.buf) else {
            return Ok(Between::Request);
        };
        match self.serve_listen(shared, request, len).await? {
            true => Ok(Between::Served),
            false => Ok(Between::Request),
        }
    }

    /// `listen_fanout`: serves a LISTEN/UNLISTEN from the hub (see
    /// `crate::fanout`) and answers it as the server would. False when the
    /// request still goes to a server (`DISCARD ALL`, which ends the
    /// client's listening too).
    async fn serve_listen(
        &mut self,
        shared: &Arc<Shared>,
        request: fanout::Request,
        len: usize,
    ) -> Result<bool, ErrorFields> {
        let mut out = BytesMut::new();
        match request {
            fanout::Request::DiscardAll => {
                self.listening = None;
                return Ok(false);
            }
            fanout::Request::UnlistenAll => {
                self.listening = None;
                backend::command_complete(&mut out, "UNLISTEN");
            }
            fanout::Request::Unlisten(channel) => {
                if let Some(l) = &self.listening {
                    l.hub.unlisten(channel, &l.inbox);
                }
                backend::command_complete(&mut out, "UNLISTEN");
            }
            fanout::Request::Listen(channel) => {
                let listening = match &mut self.listening {
                    Some(l) => l,
                    None => self.listening.insert(Box::new(Listening::new(
                        shared,
                        &self.upstream,
                        &self.me.info,
                    ))),
                };
                match listening.hub.listen(channel, &listening.inbox).await {
                    Ok(()) => backend::command_complete(&mut out, "LISTEN"),
                    Err(e) => ErrorFields::error(
                        sqlstate::CONNECTION_FAILURE,
                        format!("LISTEN failed: pgherd's listening connection to the primary: {e}"),
                    )
                    .encode(&mut out),
                }
            }
        }
        backend::ready_for_query(&mut out, TxStatus::Idle);
        let _ = self.client.buf.split_to(len);
        if self.client.stream.send(&out).await.is_err() {
            // Gone: the next wait sees it.
            self.client.buf.clear();
        }
        Ok(true)
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
        // would build the 1 KiB future on the stack and copy it over.
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
        let (guard, assigned, lease) =
            self.upstream
                .checkout_now(&shared.servers, &self.me.info, want)?;
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
            // Session mode's server held since the welcome, or a pinned one.
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
        let (guard, assigned, lease) = upstream
            .checkout(&shared.servers, &self.me.info, want)
            .await?;
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
            let _node_lease = leastconn.then(|| shared.servers.routing.lease(server.node));
            let stats = &upstream.entry(&shared.servers, server.node).stats;
            if let Some(params) = self.params.as_mut() {
                // What the server says of them now is not news: the
                // client heard it when it set them.
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
            // Not for a pinned client: its state stays with its server.
            let retry = until == Until::Idle
                && self.gone_retries < MAX_GONE_RETRIES
                && self.pins.is_empty();
            let unit = (retry || until == Until::ReadUnit).then(|| buffers::copy(&client.buf));
            let mut state = ServerProgress::new();
            if retry {
                state.hold = relay::Hold::Request;
            }
            state.session_state = self.pins;
            // With server_reset_query_always every transaction's state is
            // reset anyway: nothing to pin for.
            state.detect_state = mode == PoolMode::Transaction
                && config.general.pin_on_session_state
                && !config.general.server_reset_query_always;
            // Fenced node or KILL: checked before anything more is relayed, so
            // the server is cancelled and closed by `finish`. (`serve`'s select
            // sees a kill wherever else the transaction waits.)
            let node = server.node;
            let retire = std::pin::pin!(me.until(move || {
                if shared.cluster().is_fenced(node) {
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
            // The pool is looked up only when a pin begins or ends.
            if !self.pins.is_empty() && !matches!(relayed.end, RelayEnd::Pinned) {
                // The state is gone (ServerIdle), or the client or the
                // server is: the server no longer counts as pinned.
                let pool = upstream.entry(&shared.servers, server.node);
                pool.pinned.fetch_sub(1, Ordering::Relaxed);
                self.pins = Kinds::NONE;
                me.set_pinned(Kinds::NONE);
            }
            match relayed.end {
                RelayEnd::Pinned if !self.pins.is_empty() => {
                    // Dropped and made again in one request: still pinned.
                    self.pins = state.session_state;
                    me.set_pinned(self.pins);
                    self.held = Some(Box::new((taken.guard, taken._lease)));
                    return Ok(Next::Request);
                }
                RelayEnd::Pinned => {
                    let kinds = state.session_state;
                    let node = server.node;
                    let pool = upstream.entry(&shared.servers, server.node);
                    let taken_pin = take_pin(&pool.pinned, pool.pool.status().max_size, config);
                    if let Err(limit) = taken_pin {
                        // The state cannot be kept: the server is reset
                        // (DISCARD ALL) and pooled, and the client is told
                        // or goes on without it.
                        let what = kinds.names().collect::<Vec<_>>().join(", ");
                        Box::pin(finish(shared, taken.guard, &state, &RelayEnd::ClientLeft)).await;
                        let pool_name = format!("{}/{}", me.database, me.user);
                        return match config.general.pin_limit_action {
                            PinLimitAction::Close => Err(ErrorFields::fatal(
                                sqlstate::CONFIGURATION_LIMIT_EXCEEDED,
                                format!(
                                    "session state ({what}) needs a server of its own, and pool \
                                     {pool_name} has {limit} pinned already (max_pinned_percent)"
                                ),
                            )
                            .with_hint(
                                "the server was reset; drop such state in the same transaction \
                                 (ON COMMIT DROP, SET LOCAL, pg_advisory_xact_lock), use \
                                 session mode for this client, or raise max_pinned_percent",
                            )),
                            PinLimitAction::Reset => {
                                tracing::warn!(
                                    client = me.id,
                                    "session state ({what}) reset: pool {pool_name} has {limit} \
                                     pinned servers (max_pinned_percent)"
                                );
                                Ok(Next::Request)
                            }
                        };
                    }
                    if !self.pin_logged {
                        self.pin_logged = true;
                        tracing::info!(
                            client = me.id,
                            node = %shared.cluster().node_name(node),
                            "pinned to its server by session state: {}",
                            kinds.names().collect::<Vec<_>>().join(", ")
                        );
                    }
                    self.pins = kinds;
                    me.set_pinned(kinds);
                    self.held = Some(Box::new((taken.guard, taken._lease)));
                    return Ok(Next::Request);
                }
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
                    shared.servers.routing.counters.read_only_retried();
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
                                    shared.cluster().node_name(node)
                                ),
                            ),
                        });
                    }
                    tracing::info!(
                        node = %shared.cluster().node_name(node),
                        "server left before running a request ({why:?}): running it on another server"
                    );
                    if let Some(unit) = unit {
                        buffers::give(std::mem::replace(&mut client.buf, *unit));
                    }
                    shared.cluster().request_probe();
                    shared.servers.routing.counters.gone_retried();
                    self.gone_retries += 1;
                    return Ok(Next::Request);
                }
                _ => {}
            }
            let node = || shared.cluster().node_name(server.node);
            let end = relayed.end;
            tracing::debug!(
                node = %node(),
                "relay ended: {end:?} (can tell the client: {}, hold {:?})",
                relayed.can_tell_client,
                state.hold
            );
            let outcome = match &end {
                RelayEnd::ClientLeft
                | RelayEnd::Pinned
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
                    format!("server connection to node \"{}\" was lost", node()),
                )
                .with_detail("the server closed the connection unexpectedly")),
                RelayEnd::ServerIo(e) => Err(ErrorFields::fatal(
                    sqlstate::CONNECTION_FAILURE,
                    format!("server connection to node \"{}\" was lost", node()),
                )
                .with_detail(e.to_string())),
                RelayEnd::ServerProtocol(e) => Err(ErrorFields::fatal(
                    sqlstate::PROTOCOL_VIOLATION,
                    format!("node \"{}\" broke the protocol: {e}", node()),
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
                        node(),
                        limit.as_secs_f64()
                    ),
                )),
                RelayEnd::Retired(_) if me.is_killed() => Err(killed_by_admin()),
                RelayEnd::Retired(reason) => Err(ErrorFields::fatal(
                    sqlstate::ADMIN_SHUTDOWN,
                    format!("terminating connection: node \"{}\" {reason}", node()),
                )),
            };
            if matches!(end, RelayEnd::ServerClosed | RelayEnd::ServerIo(_)) {
                // The node may be going away: look now rather than at the next interval.
                shared.cluster().request_probe();
                shared.cluster().count_failed();
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
pub(super) async fn read_request(
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
/// Returns the notices the server sent about them.
pub(super) async fn sync_params(
    shared: &Shared,
    params: &mut ClientParams,
    server: &mut ServerConn,
) -> Result<Vec<Bytes>, ErrorFields> {
    let Some(query) = params.differences(&mut server.params, &shared.tracked) else {
        return Ok(Vec::new());
    };
    // Only now (a parameter differs) is the exchange's state allocated.
    Box::pin(apply_params(shared, params, server, query)).await
}

pub(super) async fn apply_params(
    shared: &Shared,
    params: &mut ClientParams,
    server: &mut ServerConn,
    query: String,
) -> Result<Vec<Bytes>, ErrorFields> {
    let timeout = shared.config().general.server_connect_timeout;
    match server.apply(&query, params, timeout).await {
        Ok(notices) => {
            params.adopt(&mut server.params);
            Ok(notices)
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

/// What happened between two requests ([`Session::between_requests`]).
enum Between {
    /// A request for a server is in the client's buffer.
    Request,
    /// Something was served without a server: wait again.
    Served,
    Left,
}

/// What ended a wait for a request.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Wait {
    /// The start of a message is in the client's buffer.
    Request,
    /// The client left (closed, or sent Terminate).
    Left,
    /// A notification waits for it (`listen_fanout`).
    Notified,
}

/// Transaction mode, between transactions: waits until the client sends
/// the start of a message ([`Wait`]).
/// Ends the session when pgherd shuts down (`going`), when the client is
/// killed, or at `client_idle_timeout`; the session is nudged for the
/// first two.
///
/// Written as one poll function, and not an async fn (which would keep its
/// arguments beside the poll function's captures): this is the state an
/// idle client waits in, and its size is every idle client's (a `select!`
/// of the same was 344 bytes, the async fn 120, this 48).
pub(super) fn wait_for_request<'a>(
    client: &'a mut Client,
    (max_packet_size, idle_limit): (usize, Option<std::time::Duration>),
    (me, going): (&'a ClientInfo, &'a std::sync::atomic::AtomicBool),
) -> impl Future<Output = Result<Wait, ErrorFields>> + 'a {
    // Allocated only with client_idle_timeout set: a timer inline would
    // grow every idle client.
    let mut idle_for = idle_limit.map(|d| Box::pin(tokio::time::sleep(d)));
    if client.buf.is_empty() && client.buf.capacity() > 0 {
        // The buffer the login was read into: an idle client keeps none.
        buffers::give(std::mem::take(&mut client.buf));
    }
    std::future::poll_fn(move |cx| loop {
        match pgherd_wire::frame::parse_header(&client.buf, max_packet_size) {
            Ok(Some((frontend::TERMINATE, _))) => return Poll::Ready(Ok(Wait::Left)),
            Ok(Some((tag, _))) if frontend::is_session_message(tag) => {
                return Poll::Ready(Ok(Wait::Request))
            }
            // What PostgreSQL answers (no server is taken for it).
            Ok(Some((tag, _))) => {
                return Poll::Ready(Err(ErrorFields::fatal(
                    sqlstate::PROTOCOL_VIOLATION,
                    format!("invalid frontend message type {tag}"),
                )))
            }
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
        // (Checked only before waiting: a request already sent goes first.)
        if me.take_notified() {
            return Poll::Ready(Ok(Wait::Notified));
        }
        if client.buf.capacity() == 0 {
            // Wait without a buffer; take one only when there is data.
            match client.stream.poll_read_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(Wait::Left)),
                Poll::Ready(Ok(())) => client.buf = buffers::take(),
            }
        }
        match std::pin::pin!(client.stream.read_buf(&mut client.buf)).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(Ok(Wait::Left)),
            Poll::Ready(Ok(_)) => {}
        }
    })
}

/// Whether `node` refuses new logins (shutting down, or gone): what tells
/// a shutdown's goodbye from an administrator terminating one backend.
pub(super) async fn refuses_logins(shared: &Shared, upstream: &Upstream, node: usize) -> bool {
    let params = Arc::clone(&upstream.params);
    // Replica: any role will do, only the login is in question.
    match open(
        &shared.servers,
        node,
        Target::Replica,
        params,
        &upstream.credential,
    )
    .await
    {
        route::Attempt::Usable(conn) => {
            conn.close_in_background();
            false
        }
        route::Attempt::Unusable(_) => true,
        route::Attempt::Refused(_) => false,
    }
}

/// Counts one more pinned server in a pool of `pool_size`, unless that
/// would pass `max_pinned_percent` of it (at least one): then the cap.
fn take_pin(pinned: &AtomicUsize, pool_size: usize, config: &Config) -> Result<(), usize> {
    let percent = config.general.max_pinned_percent as usize;
    let cap = (pool_size * percent / 100).max(1);
    pinned
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (n < cap).then_some(n + 1)
        })
        .map(|_| ())
        .map_err(|_| cap)
}

pub(super) fn killed_by_admin() -> ErrorFields {
    ErrorFields::fatal(
        sqlstate::ADMIN_SHUTDOWN,
        "terminating connection due to administrator command",
    )
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    use bytes::BytesMut;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::listen::addr::ClientAddr;
    use crate::registry::{NewClient, Registry};

    /// An idle logged-in client as a session holds it, and the far end
    /// (the application's socket).
    async fn idle_client() -> (Client, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (tcp, peer) = listener.accept().await.unwrap();
        let client = Client {
            stream: pgherd_tls::Stream::Plain(tcp),
            buf: BytesMut::new(),
            peer: ClientAddr::Tcp(peer),
        };
        (client, app)
    }

    fn registered(registry: &Arc<Registry>) -> Registered<ClientInfo> {
        registry.add_client(NewClient {
            user: "u",
            database: "d",
            addr: ClientAddr::Tcp("127.0.0.1:1".parse().unwrap()),
            local_addr: None,
            application_name: "",
        })
    }

    const IDLE: Option<Duration> = Some(Duration::from_secs(30));

    #[tokio::test(start_paused = true)]
    async fn an_idle_client_is_told_at_client_idle_timeout() {
        let (mut client, _app) = idle_client().await;
        let (registry, going) = (Arc::new(Registry::default()), AtomicBool::new(false));
        let me = registered(&registry);
        let start = tokio::time::Instant::now();
        let waited = wait_for_request(&mut client, (1 << 20, IDLE), (&me.info, &going));
        let err = ends(waited).await.unwrap_err();
        assert_eq!(err.code, sqlstate::IDLE_SESSION_TIMEOUT);
        assert!(start.elapsed() >= Duration::from_secs(30));
    }

    #[tokio::test]
    async fn a_request_or_a_goodbye_ends_the_wait() {
        let (registry, going) = (Arc::new(Registry::default()), AtomicBool::new(false));
        let me = registered(&registry);
        let (mut client, mut app) = idle_client().await;
        let mut query = BytesMut::new();
        frontend::query(&mut query, "SELECT 1");
        app.write_all(&query[..3]).await.unwrap();
        app.write_all(&query[3..]).await.unwrap();
        let limits = (1 << 20, None);
        assert_eq!(
            wait_for_request(&mut client, limits, (&me.info, &going)).await,
            Ok(Wait::Request)
        );
        assert_eq!(
            &client.buf[..],
            &query[..],
            "the request stays for the relay"
        );

        let (mut client, mut app) = idle_client().await;
        let mut bye = BytesMut::new();
        frontend::terminate(&mut bye);
        app.write_all(&bye).await.unwrap();
        assert_eq!(
            wait_for_request(&mut client, limits, (&me.info, &going)).await,
            Ok(Wait::Left)
        );

        let (mut client, app) = idle_client().await;
        drop(app);
        assert_eq!(
            wait_for_request(&mut client, limits, (&me.info, &going)).await,
            Ok(Wait::Left)
        );

        // A type no client may send once logged in: PostgreSQL's answer.
        let (mut client, mut app) = idle_client().await;
        app.write_all(&[b'Y', 0, 0, 0, 4]).await.unwrap();
        let refused = wait_for_request(&mut client, limits, (&me.info, &going)).await;
        let fatal = refused.unwrap_err();
        assert_eq!(fatal.code, sqlstate::PROTOCOL_VIOLATION);
        assert_eq!(fatal.message, "invalid frontend message type 89");
    }

    /// `wait` or a failed test: under paused time a wait that never ends
    /// fails at once instead of hanging.
    async fn ends<T>(wait: impl Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(3600), wait)
            .await
            .unwrap_or_else(|_| panic!("the wait never ended"))
    }

    #[tokio::test(start_paused = true)]
    async fn a_notification_ends_the_wait_once() {
        let (registry, going) = (Arc::new(Registry::default()), AtomicBool::new(false));
        let me = registered(&registry);
        let (mut client, _app) = idle_client().await;
        let limits = (1 << 20, None);
        let waiting = wait_for_request(&mut client, limits, (&me.info, &going));
        let (waited, ()) = tokio::join!(ends(waiting), async { me.info.notify() });
        assert_eq!(waited, Ok(Wait::Notified));
        let again = wait_for_request(&mut client, limits, (&me.info, &going));
        let quiet = tokio::time::timeout(Duration::from_secs(60), again).await;
        assert!(quiet.is_err(), "told once: {quiet:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn kill_and_shutdown_reach_an_idle_client_at_once() {
        let (registry, going) = (Arc::new(Registry::default()), AtomicBool::new(false));
        let me = registered(&registry);
        let (mut client, _app) = idle_client().await;
        let limits = (1 << 20, None);
        let waiting = wait_for_request(&mut client, limits, (&me.info, &going));
        let (waited, ()) = tokio::join!(ends(waiting), async { me.info.kill() });
        assert_eq!(waited.unwrap_err().code, sqlstate::ADMIN_SHUTDOWN);

        let other = registered(&registry);
        let (mut client, _app) = idle_client().await;
        let waiting = wait_for_request(&mut client, limits, (&other.info, &going));
        let shut_down = async {
            going.store(true, Ordering::SeqCst);
            registry.nudge_all();
        };
        let (waited, ()) = tokio::join!(ends(waiting), shut_down);
        let err = waited.unwrap_err();
        assert_eq!(err.code, sqlstate::ADMIN_SHUTDOWN);
        assert!(err.message.contains("shutting down"), "{err}");
    }
}
