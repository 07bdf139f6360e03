//! The data path of a session: bytes from client to server and back.
//!
//! Both directions run in one task, each as a small state machine over its
//! own buffer: read what the socket has, scan it, write it on, and only read
//! again once everything scanned was written. That gives
//!
//! * **no copy, no re-encoding, no allocation per message**: bytes are read
//!   into a buffer and written out of the same buffer; the [`Scanner`] only
//!   looks at message headers;
//! * **batching**: everything a read returned (many messages) goes out in one
//!   `write`;
//! * **bounded memory and backpressure**: a client that reads a 1 GB result
//!   slowly makes pgherd stop reading from the server, which makes the server
//!   wait; a huge message is forwarded in pieces, never buffered whole;
//! * **full duplex**: a client that writes a lot without reading (COPY, a
//!   pipeline) cannot deadlock against a server that is writing.
//!
//! The scanner watches only what the proxy must act on: client `Terminate`
//! (the server stays open for the pool) and server `ReadyForQuery` (is the
//! server idle and in which transaction state?). Requests are counted from
//! message headers alone so that, when the client leaves, pgherd knows whether
//! the server still owes replies — a server is only reused when it owes none.
//!
//! What may not live here: routing, pools, or anything that waits on
//! another task. The relay sees two sockets and the state it is handed
//! (`Tracking`, `ServerProgress`); the session decides what an end means.

pub(crate) mod buffers;
pub(crate) mod classify;
pub(crate) mod params;
mod pipe;
pub(crate) mod prepared;
pub(crate) mod session_state;
pub(crate) mod settings;
mod track;

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use pgherd_tls::Stream;
use pgherd_wire::backend::{self, TxStatus};
use pgherd_wire::{frame, FrameError};
use tokio::time::Sleep;

use crate::clock::Micros;

use crate::relay::params::{ClientParams, ServerParams};
use crate::stats::{PoolStats, Traffic};
use pipe::{Pipe, Step, StepError};
use prepared::{ClientStatements, Expected, ServerStatements};
use track::{
    between_transactions, scan_client, scan_server, server_idle, CLIENT_WATCH,
    CLIENT_WATCH_STATEMENTS, CLIENT_WATCH_TRANSACTION, SERVER_WATCH, SERVER_WATCH_STATEMENTS,
    SERVER_WATCH_TRANSACTION,
};
pub(crate) use track::{reusable, Goodbye, Hold, ServerProgress};

/// What transaction mode keeps track of while relaying.
#[derive(Default)]
pub(crate) struct Tracking<'a> {
    pub(crate) statements: Option<Statements<'a>>,
    pub(crate) params: Option<Params<'a>>,
    /// Session mode: counters updated at the end of each transaction (a
    /// relay lasts the whole session), rather than once at the end.
    pub(crate) session_stats: Option<&'a PoolStats>,
    /// What was added to `session_stats` so far.
    pub(crate) flushed: Traffic,
    /// The client's request as sent, should it have to run again (a read
    /// unit on the primary, or a request elsewhere: see [`Hold`]); while
    /// [`Hold::Request`], what the client sends meanwhile is added.
    pub(crate) replay: Option<Box<BytesMut>>,
}

/// Transaction mode's parameter tracking: ParameterStatus from the server
/// updates the server's known values and, for tracked ones, the client's.
pub(crate) struct Params<'a> {
    pub(crate) client: &'a mut ClientParams,
    pub(crate) server: &'a mut ServerParams,
}

impl Params<'_> {
    fn reported(&mut self, msg: &[u8]) {
        let Some((name, value)) = backend::parameter_status_view(frame::body(msg)) else {
            return;
        };
        if let Some(index) = self.server.record(name, value) {
            self.client.set(index, value);
        }
    }
}

/// Transaction mode's statement tracking, for one relay.
pub(crate) struct Statements<'a> {
    pub(crate) client: &'a mut ClientStatements,
    pub(crate) server: &'a mut ServerStatements,
    /// Replies the server owes for requests pgherd added. Kept with the
    /// server connection so its queues are reused, not reallocated.
    pub(crate) expected: &'a mut Expected,
    /// `max_prepared_statements`.
    pub(crate) max: usize,
}

/// How a relay ended.
#[derive(Debug)]
pub(crate) enum RelayEnd {
    /// The client sent Terminate or closed its connection.
    ClientLeft,
    /// The client broke the protocol.
    ClientProtocol(FrameError),
    /// The client connection failed.
    ClientIo(std::io::Error),
    /// The server closed the connection.
    ServerClosed,
    ServerIo(std::io::Error),
    ServerProtocol(FrameError),
    /// The node may no longer serve this session (fenced): why.
    Retired(String),
    /// Transaction mode: the transaction is over and the server owes nothing;
    /// it can go back to the pool.
    ServerIdle,
    /// Transaction mode: the transaction is over and left session state on
    /// the server (see [`session_state`]): the client should keep it.
    Pinned,
    /// A read unit the standby refused as a write (25006): the server is
    /// idle, the client got nothing, and the unit must go to the primary.
    ReadOnly,
    /// The server's first reply was its FATAL goodbye (shutting down,
    /// terminated, idle-session timeout): the request never ran, the client
    /// got nothing, and it can run on another server (see [`Hold`]).
    ServerGone(Goodbye),
    /// Nothing moved for `idle_transaction_timeout` inside a transaction,
    /// or for `client_idle_timeout` outside one (session mode).
    IdleTimeout(IdleKind),
    /// The server still owed the answer to a request `query_timeout` after
    /// it was sent.
    QueryTimeout(Duration),
}

/// Which idle limit ended a relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IdleKind {
    InTransaction,
    Session,
}

/// pgbouncer's `client_idle_timeout`, `idle_transaction_timeout` and
/// `query_timeout`, as a relay applies them: idle means no bytes either way
/// and no request waiting for its answer (a long query is not idle); a
/// request's answer is overdue `query` after the request was sent.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Limits {
    session: Option<Millis>,
    transaction: Option<Millis>,
    query: Option<Millis>,
}

/// A limit in whole milliseconds (rounded up): 4 bytes where a `Duration`
/// takes 16, in a state allocated per transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Millis(std::num::NonZeroU32);

impl Millis {
    fn new(d: Option<Duration>) -> Option<Millis> {
        let ms = d?.as_nanos().div_ceil(1_000_000);
        let ms = u32::try_from(ms).unwrap_or(u32::MAX);
        std::num::NonZeroU32::new(ms).map(Millis)
    }

    fn duration(self) -> Duration {
        Duration::from_millis(self.0.get().into())
    }
}

impl Limits {
    pub(crate) fn new(
        session: Option<Duration>,
        transaction: Option<Duration>,
        query: Option<Duration>,
    ) -> Limits {
        Limits {
            session: Millis::new(session),
            transaction: Millis::new(transaction),
            query: Millis::new(query),
        }
    }

    fn idle(&self, tx: TxStatus) -> Option<(Duration, IdleKind)> {
        match tx {
            TxStatus::Idle => self.session.map(|d| (d.duration(), IdleKind::Session)),
            _ => self
                .transaction
                .map(|d| (d.duration(), IdleKind::InTransaction)),
        }
    }

    fn query(&self) -> Option<Duration> {
        self.query.map(Millis::duration)
    }

    /// How often to look when the current state has no limit.
    fn shortest(&self) -> Option<Duration> {
        let min = |a: Option<Millis>, b: Option<Millis>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        min(min(self.session, self.transaction), self.query).map(Millis::duration)
    }
}

/// The limits' timer went off: the relay's end if a limit is reached, or
/// when to look again. Out of line: it runs once per limit, not per step.
#[cold]
fn limit_reached(
    limits: &Limits,
    state: &ServerProgress,
    last_activity: Option<tokio::time::Instant>,
) -> Result<tokio::time::Instant, RelayEnd> {
    let now = tokio::time::Instant::now();
    let since = last_activity.unwrap_or(now);
    Ok(match (limits.idle(state.tx), limits.query()) {
        (_, Some(limit)) if state.pending > 0 => {
            let waited = Micros::recent().since(state.request_at);
            if waited >= limit {
                return Err(RelayEnd::QueryTimeout(limit));
            }
            now + (limit - waited)
        }
        // Waiting for an answer is not idle.
        (Some((limit, kind)), _) if state.pending == 0 => {
            if now.duration_since(since) >= limit {
                return Err(RelayEnd::IdleTimeout(kind));
            }
            since + limit
        }
        (Some((limit, _)), None) => now + limit,
        _ => now + limits.shortest().unwrap_or(Duration::from_secs(60)),
    })
}

/// The client's parameters, when its statements are read for session
/// state (transaction mode, `pin_on_session_state`).
fn detecting<'p, 'a>(
    detect_state: bool,
    params: &'p mut Option<Params<'a>>,
) -> Option<&'p mut Params<'a>> {
    params.as_mut().filter(|_| detect_state)
}

/// The idle timer's branch: pending forever when no limit is set.
async fn idle_tick(timer: &mut Option<Pin<Box<Sleep>>>) {
    match timer {
        Some(t) => t.as_mut().await,
        None => std::future::pending().await,
    }
}

/// How long a relay lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Until {
    /// Until the client leaves (session pooling).
    ClientLeaves,
    /// Until the server is idle between transactions (transaction pooling)
    /// with no session state left on it ([`RelayEnd::Pinned`] first, when
    /// the transaction left some).
    Idle,
    /// `auto` target, a read on a standby: the client's buffer holds one
    /// request unit and nothing more is read from the client; the server's
    /// replies are held back until the first row, result or error. Should
    /// the standby refuse the unit as a write (25006) before that, its
    /// replies are dropped and the relay ends with [`RelayEnd::ReadOnly`]
    /// so the session can run the unit on the primary.
    ReadUnit,
}

/// Past this many bytes of held-back replies, the request is committed to
/// its server (no more retry).
const MAX_HELD: usize = 64 * 1024;

/// How a relay ended, and whether pgherd may still write an ErrorResponse to
/// the client: only when what the client received ends on a message boundary,
/// and the server has not already said why it is leaving (a FATAL error).
#[derive(Debug)]
pub(crate) struct Relayed {
    pub(crate) end: RelayEnd,
    pub(crate) can_tell_client: bool,
    pub(crate) traffic: Traffic,
}

/// The two connections of a relay with their read buffers.
pub(crate) struct Ends<'a> {
    pub(crate) client: &'a mut Stream,
    pub(crate) client_buf: &'a mut BytesMut,
    pub(crate) server: &'a mut Stream,
    pub(crate) server_buf: &'a mut BytesMut,
}

/// Relays between `client` and `server` until one side ends, or `retire`
/// completes (the node was fenced or the client killed). `client_buf`
/// holds bytes the client already sent (its request, or what it pipelined
/// after login).
#[allow(clippy::manual_async_fn)] // see the comment on the block
pub(crate) fn relay<'a, 't, R: std::future::Future<Output = String>>(
    ends: Ends<'a>,
    (max_packet_size, until, limits): (usize, Until, Limits),
    state: &'a mut ServerProgress,
    tracking: &'a mut Tracking<'t>,
    retire: Pin<&'a mut R>,
) -> impl std::future::Future<Output = Relayed> + use<'a, 't, R> {
    // An async block, not an async fn: it holds what it uses once (an
    // async fn keeps its arguments and their moved copies), which keeps a
    // transaction's relay step and this in one allocation of ≤ 1 KiB.
    async move {
        let Ends {
            client,
            client_buf,
            server,
            server_buf,
        } = ends;
        let mut down_at_boundary = true;
        let mut up = Pipe::new(std::mem::take(client_buf), max_packet_size);
        // Bytes the client sent before (read while waiting for its request)
        // count here; those left over for its next transaction count there.
        up.bytes = up.buf.len() as u64;
        let mut down = Pipe::new(std::mem::take(server_buf), max_packet_size);
        let end = relay_inner(
            client,
            &mut up,
            server,
            &mut down,
            (until, limits),
            state,
            tracking,
            &mut down_at_boundary,
            retire,
        )
        .await;
        // Bytes the client sent that were not forwarded (the start of its next
        // transaction) stay with the client.
        let keeps_buffers = matches!(
            end,
            RelayEnd::ServerIdle | RelayEnd::ReadOnly | RelayEnd::Pinned
        );
        if keeps_buffers {
            up.bytes = up.bytes.saturating_sub(up.buf.len() as u64);
        }
        let traffic = traffic(&up, &down, state).minus(tracking.flushed);
        if keeps_buffers {
            *client_buf = up.buf;
            // Nothing is left in it: the server is idle and all was delivered.
            down.buf.clear();
            *server_buf = down.buf;
        }
        Relayed {
            can_tell_client: down_at_boundary && !state.last_fatal,
            end,
            traffic,
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn relay_inner(
    client: &mut Stream,
    up: &mut Pipe,
    server: &mut Stream,
    down: &mut Pipe,
    (until, limits): (Until, Limits),
    state: &mut ServerProgress,
    tracking: &mut Tracking<'_>,
    down_at_boundary: &mut bool,
    mut retire: Pin<&mut impl std::future::Future<Output = String>>,
) -> RelayEnd {
    // Only with a limit configured: a timer and a clock read per read
    // step; without, nothing.
    let mut idle_timer = limits.shortest().map(|d| Box::pin(tokio::time::sleep(d)));
    let mut last_activity = idle_timer.as_ref().map(|_| tokio::time::Instant::now());
    let (client_watch, server_watch) = match (until, tracking.statements.is_some()) {
        (Until::ClientLeaves, _) => (CLIENT_WATCH, SERVER_WATCH),
        (Until::Idle | Until::ReadUnit, false) => {
            (CLIENT_WATCH_TRANSACTION, SERVER_WATCH_TRANSACTION)
        }
        (Until::Idle | Until::ReadUnit, true) => (CLIENT_WATCH_STATEMENTS, SERVER_WATCH_STATEMENTS),
    };
    if until == Until::ReadUnit {
        up.no_read = true;
        state.hold = Hold::ReadUnit;
    }
    // Which direction reads first, alternating after each read so neither
    // starves. (A direction with bytes to write goes first regardless:
    // see `poll_directions`.)
    let mut up_first = false;
    let params = detecting(state.detect_state, &mut tracking.params);
    if let Err(e) = scan_client(up, client_watch, state, (&mut tracking.statements, params)) {
        return RelayEnd::ClientProtocol(e);
    }
    if let Err(e) = up.write_now(server, false) {
        return server_failed(e, state);
    }
    loop {
        if up.closing && up.delivered() {
            return RelayEnd::ClientLeft;
        }
        match state.hold {
            Hold::Request | Hold::ReadUnit if down.ready >= MAX_HELD => state.hold = Hold::Off,
            Hold::Refused if state.pending == 0 => return RelayEnd::ReadOnly,
            _ => {}
        }
        let holding = state.hold != Hold::Off;
        if until != Until::ClientLeaves && down.delivered() {
            if server_idle(state, up) {
                return RelayEnd::ServerIdle;
            }
            if state.pin_new && between_transactions(state, up) {
                state.pin_new = false;
                return RelayEnd::Pinned;
            }
        }
        // While replies are held back, the client has received none of them.
        *down_at_boundary = (down.ready == 0 || holding) && down.scanner.at_boundary();
        let step = tokio::select! {
            // Checked first: once the node is fenced, nothing more goes through.
            biased;
            reason = retire.as_mut() => return RelayEnd::Retired(reason),
            () = idle_tick(&mut idle_timer) => {
                match limit_reached(&limits, state, last_activity) {
                    Ok(next) => {
                        if let Some(t) = idle_timer.as_mut() {
                            t.as_mut().reset(next);
                        }
                        continue;
                    }
                    Err(end) => return end,
                }
            }
            step = std::future::poll_fn(|cx| {
                poll_directions(cx, (&mut *up, &mut *down), (&mut *client, &mut *server), holding, up_first)
            }) => step,
        };
        if matches!(
            step,
            Direction::Up(Ok(Step::Read)) | Direction::Down(Ok(Step::Read))
        ) {
            up_first = !up_first;
        }
        if let (Some(at), Direction::Up(Ok(Step::Read)) | Direction::Down(Ok(Step::Read))) =
            (last_activity.as_mut(), &step)
        {
            *at = tokio::time::Instant::now();
        }
        match step {
            Direction::Up(r) => match r {
                Ok(Step::Read) => {
                    if state.hold == Hold::Request {
                        keep_for_replay(up, state, &mut tracking.replay);
                    }
                    let params = detecting(state.detect_state, &mut tracking.params);
                    let statements = &mut tracking.statements;
                    if let Err(e) = scan_client(up, client_watch, state, (statements, params)) {
                        return RelayEnd::ClientProtocol(e);
                    }
                    if let Err(e) = up.write_now(server, false) {
                        return server_failed(e, state);
                    }
                }
                Ok(Step::Wrote) => {}
                Ok(Step::Eof) => {
                    // The client left in the middle of a message: the server
                    // may have seen part of it and must not be reused.
                    if !up.is_clean() {
                        state.unsynced = true;
                    }
                    return RelayEnd::ClientLeft;
                }
                Err(StepError::Write(e)) => return server_failed(e, state),
                Err(StepError::Read(e)) => return RelayEnd::ClientIo(e),
            },
            Direction::Down(r) => match r {
                Ok(Step::Read) => {
                    if let Err(e) = scan_server(down, server_watch, state, tracking) {
                        return RelayEnd::ServerProtocol(e);
                    }
                    if let Hold::Gone(why) = state.hold {
                        return RelayEnd::ServerGone(why);
                    }
                    if let Err(e) = down.write_now(client, state.hold != Hold::Off) {
                        return RelayEnd::ClientIo(e);
                    }
                    if let Some(stats) = tracking.session_stats {
                        if state.idle_answers > tracking.flushed.transactions {
                            stats.transaction(Micros::recent().since(state.xact_at));
                            let now = traffic(up, down, state);
                            stats.traffic(now.minus(tracking.flushed));
                            tracking.flushed = now;
                        }
                    }
                }
                Ok(Step::Wrote) => {}
                Ok(Step::Eof) => {
                    // Deliver what was scanned, then the session tells the client.
                    // Boxed: rare, and it would grow every relay's state.
                    let delivered = Box::pin(client.send(&down.buf[..down.ready])).await.is_ok();
                    *down_at_boundary = delivered && down.scanner.at_boundary();
                    return RelayEnd::ServerClosed;
                }
                Err(StepError::Write(e)) => return RelayEnd::ClientIo(e),
                Err(StepError::Read(e)) => return server_failed(e, state),
            },
        }
    }
}

/// How a relay ends when the server connection fails. Reset (or a broken
/// pipe) while the one request outstanding is held back (see [`Hold`]):
/// the backend closed its socket with some of the request unread, so it
/// never reached the request's end, where it would commit: the request
/// runs elsewhere ([`Goodbye::Reset`]). (The FATAL the backend sent before
/// closing may have been dropped by the kernel with the reset.)
fn server_failed(e: std::io::Error, state: &ServerProgress) -> RelayEnd {
    use std::io::ErrorKind::{BrokenPipe, ConnectionReset};
    if state.hold == Hold::Request
        && state.pending == 1
        && matches!(e.kind(), ConnectionReset | BrokenPipe)
    {
        return RelayEnd::ServerGone(Goodbye::Reset);
    }
    RelayEnd::ServerIo(e)
}

/// The client sent more while its request may still run elsewhere: that
/// is kept too (the replay is all it sent since the relay began), up to
/// [`MAX_HELD`] bytes; past that, or with nothing to keep it in, the
/// request is committed to this server.
fn keep_for_replay(up: &Pipe, state: &mut ServerProgress, replay: &mut Option<Box<BytesMut>>) {
    match replay {
        // It holds all the client sent before this read, which added the
        // buffer's last bytes.
        Some(r) if up.bytes as usize <= MAX_HELD => {
            let new = up.bytes as usize - r.len();
            r.extend_from_slice(&up.buf[up.buf.len() - new..]);
        }
        _ => state.hold = Hold::Off,
    }
}

/// Polls both directions once, `up_first` or the other way round: the
/// first that completes a step wins. Sequential polls on the same two
/// streams need no split halves, so a TLS stream relays like a plain one.
///
/// A direction with bytes to write is polled first whatever `up_first`
/// says: a request is sent before the server is asked for its reply, and
/// a reply delivered before the client is asked for more: a poll that
/// finds nothing to read costs a readiness check and a waker registration,
/// and this order saves two of those per transaction.
fn poll_directions(
    cx: &mut Context<'_>,
    (up, down): (&mut Pipe, &mut Pipe),
    (client, server): (&mut Stream, &mut Stream),
    holding: bool,
    up_first: bool,
) -> Poll<Direction> {
    let (up_writes, down_writes) = (up.has_output(false), down.has_output(holding));
    let up_first = if up_writes != down_writes {
        up_writes
    } else {
        up_first
    };
    if up_first {
        if let Poll::Ready(r) = up.poll_step(cx, client, server, false) {
            return Poll::Ready(Direction::Up(r));
        }
    }
    if let Poll::Ready(r) = down.poll_step(cx, server, client, holding) {
        return Poll::Ready(Direction::Down(r));
    }
    if !up_first {
        if let Poll::Ready(r) = up.poll_step(cx, client, server, false) {
            return Poll::Ready(Direction::Up(r));
        }
    }
    Poll::Pending
}

/// The traffic of a relay so far.
fn traffic(up: &Pipe, down: &Pipe, state: &ServerProgress) -> Traffic {
    Traffic {
        queries: state.answered,
        transactions: state.idle_answers,
        query_us: state.busy_us,
        received: up.bytes,
        sent: down.bytes,
    }
}

/// Which direction made progress.
enum Direction {
    Up(Result<Step, StepError>),
    Down(Result<Step, StepError>),
}

/// A whole message for the relay's tests.
#[cfg(test)]
fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::new();
    frame::put_message(&mut b, tag, &[body]);
    b.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgherd_wire::frontend;

    #[test]
    fn limits_in_whole_milliseconds() {
        let ms = |d: f64| Millis::new(Some(Duration::from_secs_f64(d))).map(Millis::duration);
        assert_eq!(ms(0.0), None, "0 is off");
        assert_eq!(ms(0.0001), Some(Duration::from_millis(1)), "rounded up");
        assert_eq!(ms(1.5), Some(Duration::from_millis(1500)));
        assert_eq!(
            ms(1e9),
            Some(Duration::from_millis(u32::MAX.into())),
            "capped"
        );
        let limits = Limits::new(
            Some(Duration::from_secs(60)),
            None,
            Some(Duration::from_secs(5)),
        );
        assert_eq!(limits.shortest(), Some(Duration::from_secs(5)));
        assert_eq!(limits.query(), Some(Duration::from_secs(5)));
        assert!(limits.idle(TxStatus::InTransaction).is_none());
        assert_eq!(Limits::default().shortest(), None);
    }

    #[test]
    fn a_reset_before_the_request_ended_runs_it_elsewhere() {
        use std::io::{Error, ErrorKind};
        let mut state = ServerProgress::new();
        state.pending = 1;
        state.hold = Hold::Request;
        let reset = || Error::from(ErrorKind::ConnectionReset);
        assert!(matches!(
            server_failed(reset(), &state),
            RelayEnd::ServerGone(Goodbye::Reset)
        ));
        assert!(matches!(
            server_failed(Error::from(ErrorKind::BrokenPipe), &state),
            RelayEnd::ServerGone(Goodbye::Reset)
        ));
        // Another error, two requests owed (the first may have committed),
        // or a result already seen: the client is told.
        assert!(matches!(
            server_failed(Error::from(ErrorKind::TimedOut), &state),
            RelayEnd::ServerIo(_)
        ));
        state.pending = 2;
        assert!(matches!(
            server_failed(reset(), &state),
            RelayEnd::ServerIo(_)
        ));
        state.pending = 1;
        state.hold = Hold::Off;
        assert!(matches!(
            server_failed(reset(), &state),
            RelayEnd::ServerIo(_)
        ));
    }

    /// A relay between two loopback socket pairs, as a session starts one:
    /// the application's request already read into the client's buffer.
    /// The server answers it `answer_after` it read it, then says nothing.
    /// Returns how the relay ended and how much (tokio) time it took.
    async fn relay_with(
        (until, limits): (Until, Limits),
        app_sends: Vec<u8>,
        (server_answers, answer_after): (Vec<u8>, Duration),
    ) -> (RelayEnd, Duration) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio::net::{TcpListener, TcpStream};

        async fn pair() -> (TcpStream, TcpStream) {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (near, far) = tokio::join!(TcpStream::connect(addr), listener.accept());
            (near.unwrap(), far.unwrap().0)
        }
        let (app, client) = pair().await;
        let (server, mut postgres) = pair().await;
        let (mut client, mut server) = (Stream::Plain(client), Stream::Plain(server));
        let mut client_buf = BytesMut::from(&app_sends[..]);
        let postgres = tokio::spawn(async move {
            let mut request = vec![0u8; app_sends.len()];
            postgres.read_exact(&mut request).await.unwrap();
            tokio::time::sleep(answer_after).await;
            postgres.write_all(&server_answers).await.unwrap();
            // Hold the connection open, silent, until the relay is done.
            let _ = postgres.read(&mut [0u8; 1]).await;
        });
        let mut server_buf = BytesMut::new();
        let mut state = ServerProgress::new();
        let mut tracking = Tracking::default();
        let retire = std::pin::pin!(std::future::pending::<String>());
        let start = tokio::time::Instant::now();
        let relayed = relay(
            Ends {
                client: &mut client,
                client_buf: &mut client_buf,
                server: &mut server,
                server_buf: &mut server_buf,
            },
            (1 << 20, until, limits),
            &mut state,
            &mut tracking,
            retire,
        );
        // A relay that never ends fails the test (in paused time: at once).
        let relayed = tokio::time::timeout(Duration::from_secs(3600), relayed)
            .await
            .expect("the relay ends");
        let took = start.elapsed();
        drop((client, server, app));
        postgres.abort();
        (relayed.end, took)
    }

    fn query(text: &str) -> Vec<u8> {
        let mut b = BytesMut::new();
        frontend::query(&mut b, text);
        b.to_vec()
    }

    const SECS: fn(u64) -> Option<Duration> = |s| Some(Duration::from_secs(s));

    #[tokio::test(start_paused = true)]
    async fn query_timeout_ends_a_request_the_server_does_not_answer() {
        let limits = Limits::new(None, SECS(600), SECS(5));
        let (end, took) = relay_with(
            (Until::Idle, limits),
            query("SELECT pg_sleep(60)"),
            (vec![], Duration::ZERO),
        )
        .await;
        assert!(
            matches!(end, RelayEnd::QueryTimeout(d) if d == Duration::from_secs(5)),
            "{end:?}"
        );
        assert!(
            took >= Duration::from_secs(5),
            "not before the limit: {took:?}"
        );
        assert!(took < Duration::from_secs(6), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_transaction_left_open_ends_after_idle_transaction_timeout() {
        let limits = Limits::new(None, SECS(3), None);
        let mut answer = msg(backend::COMMAND_COMPLETE, b"BEGIN\0");
        answer.extend(msg(backend::READY_FOR_QUERY, b"T"));
        let (end, took) = relay_with(
            (Until::Idle, limits),
            query("BEGIN"),
            (answer, Duration::ZERO),
        )
        .await;
        assert!(
            matches!(end, RelayEnd::IdleTimeout(IdleKind::InTransaction)),
            "{end:?}"
        );
        assert!(took >= Duration::from_secs(3), "{took:?}");
        assert!(took < Duration::from_secs(4), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_for_an_answer_is_not_idle() {
        // An answer after 10 s: the 3 s idle limit must not fire meanwhile.
        let limits = Limits::new(SECS(3), SECS(3), None);
        let mut answer = msg(backend::COMMAND_COMPLETE, b"SELECT 1\0");
        answer.extend(msg(backend::READY_FOR_QUERY, b"I"));
        let (end, took) = relay_with(
            (Until::Idle, limits),
            query("SELECT 1"),
            (answer, Duration::from_secs(10)),
        )
        .await;
        assert!(matches!(end, RelayEnd::ServerIdle), "{end:?}");
        assert!(took >= Duration::from_secs(10), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_session_ends_after_client_idle_timeout() {
        let limits = Limits::new(SECS(7), None, None);
        let mut answer = msg(backend::COMMAND_COMPLETE, b"SELECT 1\0");
        answer.extend(msg(backend::READY_FOR_QUERY, b"I"));
        let (end, took) = relay_with(
            (Until::ClientLeaves, limits),
            query("SELECT 1"),
            (answer, Duration::ZERO),
        )
        .await;
        assert!(
            matches!(end, RelayEnd::IdleTimeout(IdleKind::Session)),
            "{end:?}"
        );
        assert!(took >= Duration::from_secs(7), "{took:?}");
        assert!(took < Duration::from_secs(8), "{took:?}");
    }
}
