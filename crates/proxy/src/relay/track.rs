//! What the relay learns from the traffic it passes: how far the server is
//! through its requests (`ServerProgress`), which replies are held back and
//! why (`Hold`), and the scans of each direction that keep both up to date.

use pgherd_wire::backend::{self, TxStatus};
use pgherd_wire::frontend::{self, Parse};
use pgherd_wire::sqlstate;
use pgherd_wire::{frame, FrameError};

use super::pipe::{Action, Pipe, Seen, Tags};
use super::{prepared, settings, Params, RelayEnd, Statements, Tracking};
use crate::clock::Micros;

use super::params::always_reported;
use super::prepared::Rewrite;
use super::session_state::{self, Effect, Kinds};

/// Whether replies are held back from the client, and why.
///
/// A transaction-mode request can run again elsewhere should its server
/// turn out to be leaving. A server that PostgreSQL stops (`pg_ctl stop -m
/// fast`, a switchover), terminates or times out answers with a FATAL 57P01
/// or 57P05 raised where the backend checks for interrupts. The backend
/// queues a statement's CommandComplete right after its commit and checks
/// next when it reads again (PostgreSQL's `postgres.c`, as read, not
/// traced; the drills agree: no acknowledged write twice, none missing).
/// So when that FATAL is the first thing the server says after a request,
/// the request did not run. Until then the replies that tell of no
/// execution (ParseComplete, BindComplete, RowDescription ...) are held
/// back, so the client has seen nothing, and what the client sends
/// meanwhile is kept with the request (up to [`MAX_HELD`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hold {
    /// Replies flow to the client.
    Off,
    /// Held: the request may still run elsewhere (see above).
    Request,
    /// Held, for a read unit on a standby ([`Until::ReadUnit`]): also run
    /// on the primary should the standby refuse it as a write (25006).
    ReadUnit,
    /// The standby refused with 25006: replies are dropped up to
    /// ReadyForQuery.
    Refused,
    /// The server said goodbye: the relay ends with [`RelayEnd::ServerGone`].
    Gone(Goodbye),
}

/// Why a server said goodbye before running a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Goodbye {
    /// 57P01: the server is shutting down, or someone terminated this
    /// backend (`pg_terminate_backend`): PostgreSQL says the same for both.
    Terminated,
    /// 57P05: `idle_session_timeout` ended it while it sat in the pool.
    IdleTimeout,
    /// The connection was reset before the request's end was read (see
    /// [`server_failed`]).
    Reset,
}

/// How far the server is through the requests relayed to it, as the
/// traffic shows (not the console's `ServerState`, which is its pool state).
#[derive(Debug)]
pub(crate) struct ServerProgress {
    /// Requests sent (Query, Sync, FunctionCall) not yet answered by ReadyForQuery.
    pub(crate) pending: usize,
    /// Extended-protocol messages sent since the last Sync.
    pub(crate) unsynced: bool,
    /// Transaction status from the last ReadyForQuery.
    pub(crate) tx: TxStatus,
    /// The last server message was a FATAL/PANIC ErrorResponse.
    pub(super) last_fatal: bool,
    /// What the client left on this server beyond its transaction (see
    /// [`session_state`]): in transaction mode the client keeps the server
    /// while this is not empty.
    pub(crate) session_state: Kinds,
    /// `session_state` became non-empty in this relay: it ends with
    /// [`RelayEnd::Pinned`] when the transaction does, so the session can
    /// count the pin, or refuse it.
    pub(crate) pin_new: bool,
    /// Read statements for session state (`pin_on_session_state`).
    pub(crate) detect_state: bool,
    /// Replies held back (see [`Hold`]).
    pub(crate) hold: Hold,
    /// ReadyForQuery replies, and those saying idle (transactions ended).
    pub(super) answered: u64,
    pub(super) idle_answers: u64,
    /// When the server began to owe an answer (for `query_timeout`), and
    /// the microseconds it has owed one in all (pgbouncer's `query_time`).
    pub(super) request_at: Micros,
    pub(super) busy_us: u64,
    /// When the transaction in progress began: its first request went to
    /// an idle server (session mode's `xact_time`; transaction mode times
    /// the server's checkout instead).
    pub(super) xact_at: Micros,
}

impl ServerProgress {
    /// The server's last message was a FATAL error: it is closing.
    pub(crate) fn said_goodbye(&self) -> bool {
        self.last_fatal
    }

    pub(crate) fn new() -> Self {
        ServerProgress {
            pending: 0,
            unsynced: false,
            tx: TxStatus::Idle,
            last_fatal: false,
            session_state: Kinds::NONE,
            pin_new: false,
            detect_state: false,
            hold: Hold::Off,
            answered: 0,
            idle_answers: 0,
            request_at: Micros::ZERO,
            busy_us: 0,
            xact_at: Micros::ZERO,
        }
    }

    /// Applies what a request does to the session state.
    #[inline]
    fn session_effect(&mut self, effect: Effect) {
        let before = self.session_state;
        self.session_state = before.after(effect);
        self.pin_new |= before.is_empty() && !self.session_state.is_empty();
    }

    /// A request that ReadyForQuery will answer was sent.
    #[inline]
    pub(super) fn request_sent(&mut self) {
        if self.pending == 0 {
            self.request_at = Micros::recent();
            if self.tx == TxStatus::Idle {
                self.xact_at = self.request_at;
            }
        }
        self.pending += 1;
    }
}

pub(super) const CLIENT_WATCH: Tags = Tags::of(&[frontend::TERMINATE]);

/// Transaction mode without statement support reads Parse whole, for the
/// statement name, and Query, for session state.
pub(super) const CLIENT_WATCH_TRANSACTION: Tags =
    Tags::of(&[frontend::TERMINATE, frontend::PARSE, frontend::QUERY]);

/// Transaction mode with statement support reads whole what names
/// statements, and simple queries (for `DISCARD ALL`/`DEALLOCATE ALL`, and
/// session state).
pub(super) const CLIENT_WATCH_STATEMENTS: Tags = Tags::of(&[
    frontend::TERMINATE,
    frontend::PARSE,
    frontend::BIND,
    frontend::DESCRIBE,
    frontend::CLOSE,
    frontend::QUERY,
]);

pub(super) const SERVER_WATCH: Tags =
    Tags::of(&[backend::READY_FOR_QUERY, backend::ERROR_RESPONSE]);

/// Transaction mode also reads ParameterStatus, for the client's parameters.
pub(super) const SERVER_WATCH_TRANSACTION: Tags = Tags::of(&[
    backend::READY_FOR_QUERY,
    backend::ERROR_RESPONSE,
    backend::PARAMETER_STATUS,
]);

/// ... and with statement support ParseComplete and CloseComplete, which
/// it swallows when it asked for them itself.
pub(super) const SERVER_WATCH_STATEMENTS: Tags = Tags::of(&[
    backend::READY_FOR_QUERY,
    backend::ERROR_RESPONSE,
    backend::PARAMETER_STATUS,
    backend::PARSE_COMPLETE,
    backend::CLOSE_COMPLETE,
]);

/// Transaction mode: the transaction is over and nothing is in flight, so
/// the server can serve someone else. The client must have sent nothing
/// more either: the start of a message it is still sending (one read whole
/// before it is forwarded, a large `Query` or `Parse`) belongs to this
/// server's next request, and ending the relay there would leave nothing to
/// read the rest of it.
pub(super) fn server_idle(state: &ServerProgress, up: &Pipe) -> bool {
    between_transactions(state, up) && state.session_state.is_empty()
}

/// The transaction is over, nothing is in flight, and the client has sent
/// nothing more (see [`server_idle`]).
pub(super) fn between_transactions(state: &ServerProgress, up: &Pipe) -> bool {
    state.pending == 0 && !state.unsynced && state.tx == TxStatus::Idle && up.is_clean()
}

/// What the SQL of a Query or Parse message leaves on the server. Out of
/// line: the scan's per-message loop stays as small as without it.
///
/// A `SET`/`RESET` the client sends on its own between transactions is
/// replayed rather than pinned (see `relay::settings`): its change is kept
/// once the server has answered it.
#[inline(never)]
fn read_session_state(state: &mut ServerProgress, msg: &[u8], params: &mut Params<'_>) {
    let query = msg[0] == frontend::QUERY;
    let sql = match query {
        true => Some(frame::body(msg)),
        false => Parse::from_body(frame::body(msg)).map(|p| p.definition),
    };
    let Some(sql) = sql else { return };
    let effect = session_state::effect(sql, always_reported);
    let alone = || state.pending == 0 && !state.unsynced && state.tx == TxStatus::Idle;
    if effect.involves(Kinds::SETTING) && query && alone() {
        return state.session_effect(replayed(effect, sql, params));
    }
    state.session_effect(effect);
}

/// `effect`, without its setting's pin when `sql` is a replayable `SET`
/// (see `relay::settings`), whose change the client then expects.
#[cold]
#[inline(never)]
fn replayed(mut effect: Effect, sql: &[u8], params: &mut Params<'_>) -> Effect {
    if let Some(change) = settings::parse(sql, always_reported) {
        params.client.expect(change);
        effect.pins = effect.pins.without(Kinds::SETTING);
    }
    effect
}

pub(super) fn scan_client(
    up: &mut Pipe,
    watch: Tags,
    state: &mut ServerProgress,
    (statements, mut params): (&mut Option<Statements<'_>>, Option<&mut Params<'_>>),
) -> Result<(), FrameError> {
    up.scan(watch, |seen| {
        if let (Some(params), Seen::Whole(msg @ [frontend::QUERY | frontend::PARSE, ..])) =
            (params.as_deref_mut(), &seen)
        {
            // Most queries are told apart inline, without the call.
            if msg[0] != frontend::QUERY || !session_state::surely_none(frame::body(msg)) {
                read_session_state(state, msg, params);
            }
        }
        let (tag, action) = match seen {
            // Terminate: keep the server, end the relay.
            Seen::Whole([frontend::TERMINATE, ..]) => return Action::Stop,
            Seen::Whole(msg) => match statements {
                Some(st) if msg[0] == frontend::QUERY => {
                    if prepared::drops_all_statements(msg) {
                        st.client.clear();
                        st.server.clear();
                    }
                    (frontend::QUERY, Action::Forward)
                }
                Some(st) => {
                    let action =
                        match prepared::rewrite(msg, st.client, st.server, st.expected, st.max) {
                            Rewrite::Keep => Action::Forward,
                            Rewrite::Replace(with) => Action::Replace(with),
                        };
                    (msg[0], action)
                }
                None => {
                    // Parse: a named statement outlives the transaction.
                    if msg[0] == frontend::PARSE
                        && Parse::from_body(frame::body(msg)).is_some_and(|p| !p.name.is_empty())
                    {
                        state.session_effect(Effect {
                            pins: Kinds::NAMED_STATEMENT,
                            drops: Kinds::NONE,
                        });
                    }
                    (msg[0], Action::Forward)
                }
            },
            Seen::Starts(tag) => (tag, Action::Forward),
        };
        match tag {
            frontend::QUERY | frontend::FUNCTION_CALL => {
                state.request_sent();
                if let Some(st) = statements {
                    st.expected.batch_sent();
                }
            }
            frontend::SYNC => {
                state.request_sent();
                state.unsynced = false;
                if let Some(st) = statements {
                    st.expected.batch_sent();
                }
            }
            frontend::PARSE
            | frontend::BIND
            | frontend::EXECUTE
            | frontend::DESCRIBE
            | frontend::CLOSE
            | frontend::FLUSH => state.unsynced = true,
            _ => {}
        }
        action
    })
}

pub(super) fn scan_server(
    down: &mut Pipe,
    watch: Tags,
    state: &mut ServerProgress,
    tracking: &mut Tracking<'_>,
) -> Result<(), FrameError> {
    let Tracking {
        statements,
        params,
        session_stats,
        ..
    } = tracking;
    let transaction_mode = session_stats.is_none();
    // A local the scan can keep in a register: nearly every message is
    // scanned with replies flowing.
    let mut holding = matches!(state.hold, Hold::Request | Hold::ReadUnit);
    down.scan(watch, |seen| {
        if holding {
            state.hold = held_after(state.hold, &seen, state.pending > 1);
            holding = matches!(state.hold, Hold::Request | Hold::ReadUnit);
            if let Hold::Gone(_) = state.hold {
                // Not for the client: the request runs elsewhere.
                return Action::Stop;
            }
        }
        match seen {
            Seen::Whole(msg) if msg[0] == backend::PARAMETER_STATUS => {
                if let Some(p) = params {
                    p.reported(msg);
                }
                state.last_fatal = false;
            }
            Seen::Whole(msg) if msg[0] == backend::READY_FOR_QUERY => {
                if state.pending == 1 {
                    let owed = Micros::recent().since(state.request_at);
                    state.busy_us += crate::stats::micros(owed);
                }
                state.pending = state.pending.saturating_sub(1);
                if let Some(tx) = backend::ready_for_query_status(msg) {
                    state.tx = tx;
                }
                state.answered += 1;
                if state.tx == TxStatus::Idle {
                    state.idle_answers += 1;
                }
                if let Some(p) = params {
                    // A replayed setting's statement answered (see
                    // `read_session_state`).
                    p.client.settle(state.tx == TxStatus::Idle, p.server);
                }
                state.last_fatal = false;
                if let Some(st) = statements {
                    st.expected.batch_answered();
                }
            }
            Seen::Whole(msg) if msg[0] == backend::ERROR_RESPONSE => {
                state.last_fatal = backend::ErrorFields::parse(frame::body(msg))
                    .is_some_and(|e| e.severity == "FATAL" || e.severity == "PANIC");
                if transaction_mode && state.pending == 0 && state.last_fatal {
                    // Transaction mode, nothing owed: the server's goodbye
                    // (a shutdown after the transaction's last answer) is
                    // not the client's business. The server is not reused.
                    return Action::Drop;
                }
                if let Some(st) = statements {
                    st.expected.error();
                }
                if let Some(p) = params {
                    p.client.forget();
                }
            }
            // ParseComplete / CloseComplete: swallowed if pgherd asked.
            Seen::Whole(msg) => {
                if statements
                    .as_mut()
                    .is_some_and(|st| st.expected.swallow(msg[0]))
                {
                    return Action::Drop;
                }
                state.last_fatal = false;
            }
            Seen::Starts(_) => state.last_fatal = false,
        }
        Action::Forward
    })
}

/// What a held reply means for `hold`: the server's goodbye before
/// running anything (see [`Hold`]); a read unit refused as a write (25006);
/// nothing yet (descriptions, notices, and a ReadyForQuery after only those
/// while `more_pending` requests are owed an answer: a driver's Close + Sync
/// sent ahead of its next statement); or the first result, which commits
/// the request to this server.
///
/// Goodbyes are the FATALs raised only where no commit can be between
/// them and the request: shutdown or termination (57P01), idle session
/// timeout (57P05). An immediate shutdown's message (57P01 too) is a
/// WARNING sent from a signal handler, at any point: not one of these.
pub(super) fn held_after(hold: Hold, seen: &Seen<'_>, more_pending: bool) -> Hold {
    let tag = match seen {
        Seen::Whole(msg) if msg[0] == backend::ERROR_RESPONSE => {
            return match backend::ErrorFields::parse(frame::body(msg)) {
                Some(e) if e.severity == "FATAL" && e.code == sqlstate::ADMIN_SHUTDOWN => {
                    Hold::Gone(Goodbye::Terminated)
                }
                Some(e) if e.severity == "FATAL" && e.code == sqlstate::IDLE_SESSION_TIMEOUT => {
                    Hold::Gone(Goodbye::IdleTimeout)
                }
                Some(e)
                    if hold == Hold::ReadUnit && e.code == sqlstate::READ_ONLY_SQL_TRANSACTION =>
                {
                    Hold::Refused
                }
                _ => Hold::Off,
            };
        }
        Seen::Whole(msg) => msg[0],
        Seen::Starts(tag) => *tag,
    };
    match tag {
        backend::PARSE_COMPLETE
        | backend::BIND_COMPLETE
        | backend::CLOSE_COMPLETE
        | backend::PARAMETER_DESCRIPTION
        | backend::ROW_DESCRIPTION
        | backend::NO_DATA
        | backend::NOTICE_RESPONSE
        | backend::PARAMETER_STATUS => hold,
        backend::READY_FOR_QUERY if hold == Hold::Request && more_pending => hold,
        _ => Hold::Off,
    }
}

/// The server can be handed to another client: it owes no replies, is
/// between messages in both directions, and nothing is left unsynced.
pub(crate) fn reusable(state: &ServerProgress, end: &RelayEnd) -> bool {
    matches!(end, RelayEnd::ClientLeft)
        && state.pending == 0
        && !state.unsynced
        && !state.session_state.contains(Kinds::LOAD)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use pgherd_wire::sqlstate;

    use crate::relay::msg;

    #[test]
    fn tag_sets_hold_exactly_their_tags() {
        let members = |set: Tags| (0..=255u8).filter(|&t| set.has(t)).collect::<Vec<_>>();
        assert_eq!(members(CLIENT_WATCH), b"X");
        assert_eq!(members(CLIENT_WATCH_STATEMENTS), b"BCDPQX");
        assert_eq!(members(SERVER_WATCH_STATEMENTS), b"13ESZ");
        assert_eq!(members(Tags::of(&[0, 63, 64, 255])), [0, 63, 64, 255]);
    }

    #[test]
    fn client_scan_counts_requests_and_stops_at_terminate() {
        let mut bytes = msg(frontend::QUERY, b"select 1\0");
        bytes.extend(msg(frontend::PARSE, b"\0select 2\0\0\0"));
        bytes.extend(msg(frontend::SYNC, b""));
        bytes.extend(msg(frontend::TERMINATE, b""));
        let mut pipe = Pipe::new(BytesMut::from(&bytes[..]), 1 << 20);
        let mut state = ServerProgress::new();
        scan_client(&mut pipe, CLIENT_WATCH, &mut state, (&mut None, None)).unwrap();
        assert_eq!(state.pending, 2);
        assert!(!state.unsynced);
        assert!(pipe.closing);
        assert_eq!(pipe.ready, bytes.len() - 5, "Terminate is not forwarded");
    }

    /// The server's `bytes` scanned in session mode with `pending`
    /// requests owed: the state after, and the bytes ready for the client.
    fn scanned_session(bytes: &[u8], pending: usize) -> (ServerProgress, usize) {
        let mut pipe = Pipe::new(BytesMut::from(bytes), 1 << 20);
        let mut state = ServerProgress::new();
        state.pending = pending;
        let mut tracking = Tracking::default();
        scan_server(&mut pipe, SERVER_WATCH, &mut state, &mut tracking).unwrap();
        (state, pipe.ready)
    }

    #[test]
    fn server_scan_tracks_ready_for_query() {
        let mut bytes = msg(backend::COMMAND_COMPLETE, b"BEGIN\0");
        bytes.extend(msg(backend::READY_FOR_QUERY, b"T"));
        let (state, ready) = scanned_session(&bytes, 1);
        assert_eq!(state.pending, 0);
        assert_eq!(state.tx, TxStatus::InTransaction);
        assert_eq!(ready, bytes.len());
        assert!(reusable(&state, &RelayEnd::ClientLeft));
    }

    #[test]
    fn unsynced_extended_messages_make_a_server_unusable() {
        let bytes = msg(frontend::PARSE, b"\0select 1\0\0\0");
        let mut pipe = Pipe::new(BytesMut::from(&bytes[..]), 1 << 20);
        let mut state = ServerProgress::new();
        scan_client(&mut pipe, CLIENT_WATCH, &mut state, (&mut None, None)).unwrap();
        assert!(!reusable(&state, &RelayEnd::ClientLeft));
    }

    #[test]
    fn named_statements_pin_the_server_in_transaction_mode() {
        let mut bytes = msg(frontend::PARSE, b"\0select 1\0\0\0");
        bytes.extend(msg(frontend::SYNC, b""));
        let mut pipe = Pipe::new(BytesMut::from(&bytes[..]), 1 << 20);
        let mut state = ServerProgress::new();
        scan_client(
            &mut pipe,
            CLIENT_WATCH_TRANSACTION,
            &mut state,
            (&mut None, None),
        )
        .unwrap();
        assert!(
            state.session_state.is_empty(),
            "the unnamed statement dies with the transaction"
        );
        let mut bytes = msg(frontend::PARSE, b"s1\0select 1\0\0\0");
        bytes.extend(msg(frontend::SYNC, b""));
        let mut pipe = Pipe::new(BytesMut::from(&bytes[..]), 1 << 20);
        scan_client(
            &mut pipe,
            CLIENT_WATCH_TRANSACTION,
            &mut state,
            (&mut None, None),
        )
        .unwrap();
        assert_eq!(state.session_state, Kinds::NAMED_STATEMENT);
        assert!(state.pin_new);
        assert_eq!(state.pending, 2);
        assert!(!state.unsynced);
    }

    fn error(severity: &str, code: &str) -> Vec<u8> {
        let mut out = BytesMut::new();
        backend::ErrorFields {
            severity: severity.into(),
            ..backend::ErrorFields::error(code, "no")
        }
        .encode(&mut out);
        out.to_vec()
    }

    /// The server's `bytes` scanned in transaction mode with `pending`
    /// requests owed and replies held as `hold`: the state after, and how
    /// many bytes are ready for the client.
    fn scanned(bytes: &[u8], pending: usize, hold: Hold) -> (ServerProgress, usize) {
        let mut pipe = Pipe::new(BytesMut::from(bytes), 1 << 20);
        let mut state = ServerProgress::new();
        state.pending = pending;
        state.hold = hold;
        scan_server(
            &mut pipe,
            SERVER_WATCH_TRANSACTION,
            &mut state,
            &mut Tracking::default(),
        )
        .unwrap();
        (state, pipe.ready)
    }

    #[test]
    fn a_read_unit_is_held_until_a_result_and_refused_on_25006() {
        let held = |bytes: &[u8]| scanned(bytes, 1, Hold::ReadUnit).0;
        // Descriptions say nothing yet: still held.
        let mut bytes = msg(backend::PARSE_COMPLETE, b"");
        bytes.extend(msg(backend::ROW_DESCRIPTION, b"\0\0"));
        assert_eq!(held(&bytes).hold, Hold::ReadUnit);
        // The first row commits the unit to this server.
        bytes.extend(msg(backend::DATA_ROW, b"\0\0"));
        bytes.extend(error("ERROR", sqlstate::READ_ONLY_SQL_TRANSACTION));
        assert_eq!(held(&bytes).hold, Hold::Off);
        // Refused as a write before any row: retry, once the server is idle.
        let mut bytes = msg(backend::ROW_DESCRIPTION, b"\0\0");
        bytes.extend(error("ERROR", sqlstate::READ_ONLY_SQL_TRANSACTION));
        assert_eq!(held(&bytes).hold, Hold::Refused);
        bytes.extend(msg(backend::READY_FOR_QUERY, b"I"));
        let state = held(&bytes);
        assert_eq!((state.hold, state.pending), (Hold::Refused, 0));
        // Any other error is the client's answer.
        assert_eq!(held(&error("ERROR", "22012")).hold, Hold::Off);
    }

    #[test]
    fn a_request_runs_elsewhere_only_on_a_goodbye_before_any_result() {
        let after = |bytes: &[u8], pending: usize| {
            let (state, ready) = scanned(bytes, pending, Hold::Request);
            (state.hold, ready)
        };
        let gone = Hold::Gone(Goodbye::Terminated);
        // The goodbye first, or after replies that tell of no execution.
        assert_eq!(
            after(&error("FATAL", sqlstate::ADMIN_SHUTDOWN), 1),
            (gone, 0)
        );
        let mut described = msg(backend::PARSE_COMPLETE, b"");
        described.extend(msg(backend::BIND_COMPLETE, b""));
        described.extend(msg(backend::ROW_DESCRIPTION, b"\0\0"));
        let mut bytes = described.clone();
        bytes.extend(error("FATAL", sqlstate::ADMIN_SHUTDOWN));
        assert_eq!(
            after(&bytes, 1).0,
            gone,
            "the FATAL itself is not forwarded"
        );
        assert_eq!(
            after(&error("FATAL", sqlstate::IDLE_SESSION_TIMEOUT), 1).0,
            Hold::Gone(Goodbye::IdleTimeout)
        );
        // A driver's Close + Sync answered before its statement: still
        // nothing ran.
        let mut bytes = msg(backend::CLOSE_COMPLETE, b"");
        bytes.extend(msg(backend::READY_FOR_QUERY, b"I"));
        bytes.extend(error("FATAL", sqlstate::ADMIN_SHUTDOWN));
        assert_eq!(after(&bytes, 2).0, gone);
        // ... but the last ReadyForQuery is the answer, delivered.
        let mut bytes = described.clone();
        bytes.extend(msg(backend::READY_FOR_QUERY, b"I"));
        assert_eq!(after(&bytes, 1).0, Hold::Off);
        // After a result, or a row, it is the client's: forwarded as is.
        let mut bytes = msg(backend::COMMAND_COMPLETE, b"INSERT 0 1\0");
        bytes.extend(error("FATAL", sqlstate::ADMIN_SHUTDOWN));
        assert_eq!(after(&bytes, 1).0, Hold::Off);
        // An immediate shutdown's WARNING can come after a commit.
        assert_eq!(
            after(&error("WARNING", sqlstate::ADMIN_SHUTDOWN), 1).0,
            Hold::Off
        );
        // A request that is not a read unit is not refused on 25006.
        assert_eq!(
            after(&error("ERROR", sqlstate::READ_ONLY_SQL_TRANSACTION), 1).0,
            Hold::Off
        );
    }

    #[test]
    fn a_goodbye_after_the_last_answer_is_not_the_clients() {
        let mut bytes = msg(backend::COMMAND_COMPLETE, b"SELECT 1\0");
        bytes.extend(msg(backend::READY_FOR_QUERY, b"I"));
        bytes.extend(error("FATAL", sqlstate::ADMIN_SHUTDOWN));
        let (state, ready) = scanned(&bytes, 1, Hold::Off);
        assert_eq!(state.pending, 0);
        assert!(state.said_goodbye(), "the server is not reused");
        assert_eq!(
            ready,
            bytes.len() - error("FATAL", sqlstate::ADMIN_SHUTDOWN).len(),
            "not forwarded"
        );
    }

    #[test]
    fn fatal_errors_are_noticed() {
        let (state, _) = scanned_session(&error("FATAL", sqlstate::ADMIN_SHUTDOWN), 0);
        assert!(state.last_fatal);
    }
}
