//! The admin console: the virtual database `pgbouncer` (or `pgherd`), with
//! pgbouncer's commands and column names, so the scripts and exporters
//! operators already run against pgbouncer keep working.
//!
//! Users in `admin_users` may run everything; users in `stats_users` only
//! `SHOW`. They log in like any other client (same `auth_type`, `[users]`).
//! Like pgbouncer's, the console speaks the simple query protocol only, one
//! command per query (a trailing `;` is fine).
//!
//! Columns keep pgbouncer 1.18's names, order and types (text, int4,
//! numeric); pgherd's own columns are appended at the end. Where pgbouncer's
//! SQLSTATE for a console error is the catch-all 08P01, pgherd uses the
//! precise one: 42601 unknown command, 3D000 unknown database, 42501 a
//! stats user trying a control command.
//!
//! Not here: `SUSPEND` (for online restarts, which pgherd does not do) and
//! `SET` (settings change with `RELOAD`); they answer "unknown command".

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use pgherd_cluster::Role;
use pgherd_config::PoolMode;
use pgherd_wire::backend::{self, oid, ErrorFields, TxStatus};
use pgherd_wire::frame::next_frame;
use pgherd_wire::frontend;
use pgherd_wire::sqlstate;
use tokio::io::AsyncReadExt;

use crate::admin::control::ControlError;
use crate::login::{Authenticated, Client};
use crate::registry::{ClientState, ServerState};
use crate::shared::Shared;

/// What a console user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Admin,
    Stats,
}

/// One parsed console command.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Command {
    Empty,
    Show(String),
    Pause(Option<String>),
    Resume(Option<String>),
    Disable(String),
    Enable(String),
    Kill(String),
    KillClient(u64),
    Reconnect(Option<String>),
    WaitClose(Option<String>),
    Reload,
    Shutdown,
}

impl Command {
    fn parse(sql: &str) -> Result<Command, ErrorFields> {
        let text = sql.trim().trim_end_matches(';').trim();
        let invalid = || {
            ErrorFields::error(
                sqlstate::SYNTAX_ERROR,
                format!("invalid command '{text}', use SHOW HELP;"),
            )
        };
        let mut words = text.split_whitespace();
        let Some(verb) = words.next() else {
            return Ok(Command::Empty);
        };
        let arg = words.next().map(|w| w.trim_matches('"').to_owned());
        if words.next().is_some() {
            return Err(invalid());
        }
        let required = |arg: Option<String>| {
            arg.ok_or_else(|| ErrorFields::error(sqlstate::SYNTAX_ERROR, "a database is required"))
        };
        Ok(match verb.to_ascii_uppercase().as_str() {
            "SHOW" => Command::Show(required(arg).map_err(|_| invalid())?.to_ascii_uppercase()),
            "PAUSE" => Command::Pause(arg),
            "RESUME" => Command::Resume(arg),
            "RECONNECT" => Command::Reconnect(arg),
            "WAIT_CLOSE" => Command::WaitClose(arg),
            "DISABLE" => Command::Disable(required(arg)?),
            "ENABLE" => Command::Enable(required(arg)?),
            "KILL" => Command::Kill(required(arg)?),
            "KILL_CLIENT" => {
                // The `id` column of SHOW CLIENTS, or its `ptr` (hex).
                let arg = required(arg)?;
                let id = match arg.strip_prefix("0x") {
                    Some(hex) => u64::from_str_radix(hex, 16).ok(),
                    None => arg.parse().ok(),
                };
                Command::KillClient(id.ok_or_else(|| {
                    ErrorFields::error(
                        sqlstate::INVALID_PARAMETER_VALUE,
                        "KILL_CLIENT takes a client id (see SHOW CLIENTS)",
                    )
                })?)
            }
            "SHUTDOWN" if arg.is_none() => Command::Shutdown,
            "RELOAD" if arg.is_none() => Command::Reload,
            _ => return Err(invalid()),
        })
    }

    fn is_control(&self) -> bool {
        !matches!(self, Command::Empty | Command::Show(_))
    }
}

const HELP: &str = "\n\tSHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|USERS|VERSION\n\
                    \tSHOW LISTS|STATE|NODES|PEERS\n\
                    \tSHOW STATS|STATS_TOTALS|STATS_AVERAGES|TOTALS\n\
                    \tPAUSE [<db>]\n\tRESUME [<db>]\n\tDISABLE <db>\n\tENABLE <db>\n\
                    \tRECONNECT [<db>]\n\tWAIT_CLOSE [<db>]\n\
                    \tKILL <db>\n\tKILL_CLIENT <id>\n\tRELOAD\n\tSHUTDOWN";

/// Serves a console session after login. An `Err` is sent to the client.
pub(crate) async fn serve(
    shared: &Shared,
    client: &mut Client,
    auth: &Authenticated,
) -> Result<(), ErrorFields> {
    let general = &shared.config().general;
    let access = if auth.local_admin || general.admin_users.contains(&auth.user) {
        Access::Admin
    } else if general.stats_users.contains(&auth.user) {
        Access::Stats
    } else {
        return Err(ErrorFields::fatal(
            sqlstate::INSUFFICIENT_PRIVILEGE,
            format!(
                "user \"{}\" may not use the admin console (not in admin_users or stats_users)",
                auth.user
            ),
        ));
    };
    let registration = shared.registry.add_client(crate::registry::NewClient {
        user: &auth.user,
        database: &auth.database,
        addr: client.peer,
        local_addr: client.stream.local_addr(),
        application_name: auth.startup.param("application_name").unwrap_or(""),
    });
    let mut out = BytesMut::with_capacity(1024);
    for (k, v) in [
        ("server_version", "15.0 (pgherd)"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        (
            "application_name",
            auth.startup.param("application_name").unwrap_or(""),
        ),
    ] {
        backend::parameter_status(&mut out, k, v);
    }
    backend::backend_key_data(&mut out, 0, [0; 4]);
    backend::ready_for_query(&mut out, TxStatus::Idle);
    let io = |_| ErrorFields::fatal(sqlstate::CONNECTION_FAILURE, "client connection lost");
    client.stream.send(&out).await.map_err(io)?;
    let max = general.max_packet_size;
    loop {
        let frame = loop {
            match next_frame(&mut client.buf, max) {
                Ok(Some(f)) => break f,
                Ok(None) => {}
                Err(e) => {
                    return Err(ErrorFields::fatal(
                        sqlstate::PROTOCOL_VIOLATION,
                        e.to_string(),
                    ))
                }
            }
            tokio::select! {
                read = client.stream.read_buf(&mut client.buf) => match read {
                    Ok(0) | Err(_) => return Ok(()),
                    Ok(_) => {}
                },
                () = registration.info.killed() => return Err(killed()),
            }
        };
        out.clear();
        match frame.tag {
            frontend::TERMINATE => return Ok(()),
            frontend::QUERY => {
                let sql = pgherd_wire::cstr::split_cstr(&frame.body)
                    .map(|(s, _)| s)
                    .ok_or_else(|| {
                        ErrorFields::fatal(sqlstate::PROTOCOL_VIOLATION, "malformed Query message")
                    })?;
                let shutdown = run(shared, access, sql, &mut out).await;
                backend::ready_for_query(&mut out, TxStatus::Idle);
                client.stream.send(&out).await.map_err(io)?;
                if shutdown {
                    shared.request_shutdown();
                }
            }
            other => {
                return Err(ErrorFields::fatal(
                    sqlstate::PROTOCOL_VIOLATION,
                    format!(
                    "the admin console supports the simple query protocol only (got message {:?})",
                    char::from(other)
                ),
                ))
            }
        }
    }
}

fn killed() -> ErrorFields {
    ErrorFields::fatal(
        sqlstate::ADMIN_SHUTDOWN,
        "terminating connection due to administrator command",
    )
}

/// Runs one query's command, appending its reply to `out`. True for SHUTDOWN.
async fn run(shared: &Shared, access: Access, sql: &str, out: &mut BytesMut) -> bool {
    let command = match Command::parse(sql) {
        Ok(c) => c,
        Err(e) => {
            e.encode(out);
            return false;
        }
    };
    if command.is_control() && access != Access::Admin {
        ErrorFields::error(
            sqlstate::INSUFFICIENT_PRIVILEGE,
            "admin console: stats users may only run SHOW commands",
        )
        .encode(out);
        return false;
    }
    let result = match &command {
        Command::Empty => {
            backend::empty_query_response(out);
            Ok(())
        }
        Command::Show(what) => match show(shared, what, out) {
            Ok(()) => Ok(()),
            Err(e) => {
                e.encode(out);
                return false;
            }
        },
        Command::Pause(db) => shared
            .pause(db.as_deref())
            .await
            .map(|()| backend::command_complete(out, "PAUSE")),
        Command::Resume(db) => shared
            .resume(db.as_deref())
            .map(|()| backend::command_complete(out, "RESUME")),
        Command::Disable(db) => shared
            .set_disabled(db, true)
            .map(|()| backend::command_complete(out, "DISABLE")),
        Command::Enable(db) => shared
            .set_disabled(db, false)
            .map(|()| backend::command_complete(out, "ENABLE")),
        Command::Kill(db) => shared
            .kill_database(db)
            .map(|_| backend::command_complete(out, "KILL")),
        Command::KillClient(id) => shared
            .kill_client(*id)
            .map(|()| backend::command_complete(out, "KILL_CLIENT")),
        Command::Reconnect(db) => shared
            .reconnect(db.as_deref())
            .map(|_| backend::command_complete(out, "RECONNECT")),
        Command::WaitClose(db) => shared
            .wait_close(db.as_deref())
            .await
            .map(|()| backend::command_complete(out, "WAIT_CLOSE")),
        Command::Reload => {
            match shared.reload() {
                Ok(kept) => {
                    if !kept.is_empty() {
                        ErrorFields::notice(format!(
                            "not applied until pgherd restarts: {}",
                            kept.join(", ")
                        ))
                        .encode_notice(out);
                    }
                    backend::command_complete(out, "RELOAD");
                }
                Err(e) => {
                    ErrorFields::error(sqlstate::CONFIG_FILE_ERROR, format!("RELOAD failed: {e}"))
                        .encode(out)
                }
            }
            return false;
        }
        Command::Shutdown => {
            backend::command_complete(out, "SHUTDOWN");
            return true;
        }
    };
    if let Err(e) = result {
        let code = match e {
            ControlError::UnknownDatabase(_) => sqlstate::INVALID_CATALOG_NAME,
            ControlError::UnknownClient(_) | ControlError::UnknownNode(_) => {
                sqlstate::UNDEFINED_OBJECT
            }
        };
        ErrorFields::error(code, e.to_string()).encode(out);
    }
    false
}

/// A result set being built: columns first, then rows of text values.
struct Table<'a> {
    out: &'a mut BytesMut,
    rows: usize,
}

impl<'a> Table<'a> {
    fn new(out: &'a mut BytesMut, columns: &[(&str, u32)]) -> Self {
        backend::row_description(out, columns);
        Table { out, rows: 0 }
    }

    fn row(&mut self, values: &[Option<&str>]) {
        backend::data_row(self.out, values.iter().copied());
        self.rows += 1;
    }

    fn finish(self) {
        backend::command_complete(self.out, "SHOW");
    }
}

const T: u32 = oid::TEXT;
const I: u32 = oid::INT4;
const N: u32 = oid::NUMERIC;

fn show(shared: &Shared, what: &str, out: &mut BytesMut) -> Result<(), ErrorFields> {
    match what {
        "HELP" => {
            let mut notice = ErrorFields::notice("Console usage");
            notice.detail = Some(HELP.into());
            notice.encode_notice(out);
            backend::command_complete(out, "SHOW");
        }
        "VERSION" => {
            let mut t = Table::new(out, &[("version", T)]);
            t.row(&[Some(&format!("pgherd {}", env!("CARGO_PKG_VERSION")))]);
            t.finish();
        }
        "POOLS" => show_pools(shared, out),
        "STATS" | "STATS_TOTALS" | "STATS_AVERAGES" => show_stats(shared, what, out),
        "TOTALS" => show_totals(shared, out),
        "CLIENTS" => show_clients(shared, out),
        "SERVERS" => show_servers(shared, out),
        "DATABASES" => show_databases(shared, out),
        "USERS" => {
            let mut t = Table::new(out, &[("name", T), ("pool_mode", T)]);
            for (name, u) in &shared.config().users {
                t.row(&[Some(name), u.pool_mode.map(mode_name)]);
            }
            t.finish();
        }
        "CONFIG" => {
            let config = shared.config();
            let mut t = Table::new(
                out,
                &[("key", T), ("value", T), ("default", T), ("changeable", T)],
            );
            for (key, value, default) in pgherd_config::settings(&config.general) {
                t.row(&[Some(key), Some(&value), Some(&default), Some("no")]);
            }
            t.finish();
        }
        "LISTS" => show_lists(shared, out),
        "STATE" => {
            let paused = shared.registry.all_paused();
            let mut t = Table::new(out, &[("key", T), ("value", T)]);
            t.row(&[Some("active"), Some(yes_no(!paused))]);
            t.row(&[Some("paused"), Some(yes_no(paused))]);
            t.row(&[Some("suspended"), Some("no")]);
            t.finish();
        }
        "NODES" => show_nodes(shared, out),
        "PEERS" => {
            // pgbouncer's columns; pool_size is empty: each forwarded cancel
            // request opens a connection of its own.
            let mut t = Table::new(
                out,
                &[("peer_id", I), ("host", T), ("port", I), ("pool_size", I)],
            );
            for (id, p) in &shared.config().peers {
                t.row(&[
                    Some(&id.to_string()),
                    Some(&p.host),
                    Some(&p.port.to_string()),
                    None,
                ]);
            }
            t.finish();
        }
        _ => {
            return Err(ErrorFields::error(
                sqlstate::SYNTAX_ERROR,
                format!("invalid command 'SHOW {what}', use SHOW HELP;"),
            ))
        }
    }
    Ok(())
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn mode_name(m: PoolMode) -> &'static str {
    match m {
        PoolMode::Session => "session",
        PoolMode::Transaction => "transaction",
    }
}

fn show_pools(shared: &Shared, out: &mut BytesMut) {
    let mut t = Table::new(
        out,
        &[
            ("database", T),
            ("user", T),
            ("cl_active", I),
            ("cl_waiting", I),
            ("cl_active_cancel_req", I),
            ("cl_waiting_cancel_req", I),
            ("sv_active", I),
            ("sv_active_cancel", I),
            ("sv_being_canceled", I),
            ("sv_idle", I),
            ("sv_used", I),
            ("sv_tested", I),
            ("sv_login", I),
            ("maxwait", I),
            ("maxwait_us", I),
            ("pool_mode", T),
            ("node", T),
        ],
    );
    for p in shared.pool_rows() {
        let s = p.status;
        let login = s.total.saturating_sub(s.idle + s.checked_out);
        let n = |v: usize| v.to_string();
        t.row(&[
            Some(&p.database),
            Some(&p.user),
            Some(&n(s.checked_out)),
            Some(&n(s.waiting)),
            Some("0"),
            Some("0"),
            Some(&n(s.checked_out)),
            Some("0"),
            Some("0"),
            Some(&n(s.idle)),
            Some("0"),
            Some("0"),
            Some(&n(login)),
            Some("0"),
            Some("0"),
            Some(mode_name(p.mode)),
            Some(&p.node),
        ]);
    }
    t.finish();
}

fn show_stats(shared: &Shared, what: &str, out: &mut BytesMut) {
    let totals = shared.database_totals();
    let averages = shared.averages();
    let names = [
        "xact_count",
        "query_count",
        "bytes_received",
        "bytes_sent",
        "xact_time",
        "query_time",
        "wait_time",
    ];
    let mut columns: Vec<(String, u32)> = vec![("database".into(), T)];
    match what {
        "STATS" => {
            for c in [
                "total_xact_count",
                "total_query_count",
                "total_received",
                "total_sent",
                "total_xact_time",
                "total_query_time",
                "total_wait_time",
                "avg_xact_count",
                "avg_query_count",
                "avg_recv",
                "avg_sent",
                "avg_xact_time",
                "avg_query_time",
                "avg_wait_time",
            ] {
                columns.push((c.into(), N));
            }
        }
        _ => columns.extend(names.iter().map(|c| ((*c).to_owned(), N))),
    }
    let columns: Vec<(&str, u32)> = columns.iter().map(|(c, t)| (c.as_str(), *t)).collect();
    let mut t = Table::new(out, &columns);
    for (db, total) in &totals {
        let avg = averages.get(db).copied().unwrap_or_default();
        let total_values = [
            total.transactions,
            total.queries,
            total.received_bytes,
            total.sent_bytes,
            crate::stats::micros(total.xact_time),
            crate::stats::micros(total.query_time),
            crate::stats::micros(total.wait_time),
        ];
        let avg_values = [
            avg.transactions,
            avg.queries,
            avg.received_bytes,
            avg.sent_bytes,
            avg.xact_time_us,
            avg.query_time_us,
            avg.wait_time_us,
        ];
        let values: Vec<u64> = match what {
            "STATS" => total_values.iter().chain(&avg_values).copied().collect(),
            "STATS_TOTALS" => total_values.to_vec(),
            _ => avg_values.to_vec(),
        };
        let text: Vec<String> = values.iter().map(u64::to_string).collect();
        let mut row: Vec<Option<&str>> = vec![Some(db)];
        row.extend(text.iter().map(|v| Some(v.as_str())));
        t.row(&row);
    }
    t.finish();
}

/// pgbouncer's `SHOW TOTALS`: `SHOW STATS` over all databases, one
/// `name | value` row per figure, in pgbouncer's order and names (which
/// here say `client_bytes`/`server_bytes` where SHOW STATS says
/// received/sent: the bytes received from clients, and sent to them).
fn show_totals(shared: &Shared, out: &mut BytesMut) {
    let total = crate::stats::sum(shared.database_totals().values());
    let avg = shared.all_averages();
    let micros = crate::stats::micros;
    let mut t = Table::new(out, &[("name", T), ("value", N)]);
    for (name, value) in [
        ("total_xact_count", total.transactions),
        ("total_query_count", total.queries),
        ("total_client_bytes", total.received_bytes),
        ("total_server_bytes", total.sent_bytes),
        ("total_xact_time", micros(total.xact_time)),
        ("total_query_time", micros(total.query_time)),
        ("total_wait_time", micros(total.wait_time)),
        ("avg_xact_count", avg.transactions),
        ("avg_query_count", avg.queries),
        ("avg_client_bytes", avg.received_bytes),
        ("avg_server_bytes", avg.sent_bytes),
        ("avg_xact_time", avg.xact_time_us),
        ("avg_query_time", avg.query_time_us),
        ("avg_wait_time", avg.wait_time_us),
    ] {
        t.row(&[Some(name), Some(&value.to_string())]);
    }
    t.finish();
}

/// pgbouncer's time format in SHOW CLIENTS/SERVERS: `2024-05-01 12:00:00 UTC`.
fn timestamp(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a (year, month, day) in the proleptic Gregorian
/// calendar (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

const SOCKET_COLUMNS: [(&str, u32); 18] = [
    ("type", T),
    ("user", T),
    ("database", T),
    ("state", T),
    ("addr", T),
    ("port", I),
    ("local_addr", T),
    ("local_port", I),
    ("connect_time", T),
    ("request_time", T),
    ("wait", I),
    ("wait_us", I),
    ("close_needed", I),
    ("ptr", T),
    ("link", T),
    ("remote_pid", I),
    ("tls", T),
    ("application_name", T),
];

fn ptr(id: Option<u64>) -> String {
    id.map(|id| format!("{id:#x}")).unwrap_or_default()
}

fn show_clients(shared: &Shared, out: &mut BytesMut) {
    let mut columns = SOCKET_COLUMNS.to_vec();
    columns.push(("id", oid::INT8));
    // pgherd's: the session state that pins it to its server, if any.
    columns.push(("pinned", T));
    let mut t = Table::new(out, &columns);
    for c in shared.registry.clients() {
        let state = match c.state() {
            ClientState::Active => "active",
            ClientState::Waiting => "waiting",
        };
        let (waited, request) = c.waiting_since();
        let wait = waited.unwrap_or(Duration::ZERO);
        // A Unix-socket client: `unix` and the socket's port on both ends,
        // as pgbouncer shows it.
        let (local_host, local_port) = match c.local_addr {
            Some(a) => (Some(a.ip().to_string()), Some(a.port().to_string())),
            None if c.addr.is_unix() => (Some(c.addr.host()), Some(c.addr.port().to_string())),
            None => (None, None),
        };
        t.row(&[
            Some("C"),
            Some(&c.user),
            Some(&c.database),
            Some(state),
            Some(&c.addr.host()),
            Some(&c.addr.port().to_string()),
            local_host.as_deref(),
            local_port.as_deref(),
            Some(&timestamp(c.connected)),
            Some(&timestamp(request.unwrap_or(c.connected))),
            Some(&wait.as_secs().to_string()),
            Some(&wait.subsec_micros().to_string()),
            Some("0"),
            Some(&ptr(Some(c.id))),
            Some(&ptr(c.server())),
            Some("0"),
            Some(""),
            Some(&c.application_name),
            Some(&c.id.to_string()),
            Some(&c.pinned_by().join(", ")),
        ]);
    }
    t.finish();
}

fn show_servers(shared: &Shared, out: &mut BytesMut) {
    let mut columns = SOCKET_COLUMNS.to_vec();
    columns.push(("id", oid::INT8));
    columns.push(("node", T));
    let mut t = Table::new(out, &columns);
    let nodes = &shared.cluster().topology().nodes;
    for s in shared.registry.servers() {
        let state = match s.state() {
            ServerState::Active => "active",
            ServerState::Idle => "idle",
        };
        let local = s.local_addr;
        t.row(&[
            Some("S"),
            Some(&s.user),
            Some(&s.database),
            Some(state),
            Some(&s.addr.ip().to_string()),
            Some(&s.addr.port().to_string()),
            local.map(|a| a.ip().to_string()).as_deref(),
            local.map(|a| a.port().to_string()).as_deref(),
            Some(&timestamp(s.connected)),
            Some(&timestamp(s.connected)),
            Some("0"),
            Some("0"),
            Some(if s.close_needed() { "1" } else { "0" }),
            Some(&ptr(Some(s.id))),
            Some(&ptr(s.client())),
            Some(&s.pid.to_string()),
            Some(""),
            Some(""),
            Some(&s.id.to_string()),
            nodes.get(s.node).map(|n| n.name.as_str()),
        ]);
    }
    t.finish();
}

fn show_databases(shared: &Shared, out: &mut BytesMut) {
    let config = shared.config();
    let mut t = Table::new(
        out,
        &[
            ("name", T),
            ("host", T),
            ("port", I),
            ("database", T),
            ("force_user", T),
            ("pool_size", I),
            ("min_pool_size", I),
            ("reserve_pool", I),
            ("pool_mode", T),
            ("max_connections", I),
            ("current_connections", I),
            ("paused", I),
            ("disabled", I),
            ("target", T),
        ],
    );
    let topology = shared.cluster().topology();
    let primary = topology
        .primary
        .and_then(|p| topology.nodes.get(p))
        .map(|n| &n.node);
    let servers = shared.registry.servers();
    for state in shared.database_states() {
        let name = state.name;
        let Some(db) = config.database(&name) else {
            continue;
        };
        let server_db = db.dbname.clone().unwrap_or_else(|| name.clone());
        let current = servers.iter().filter(|s| s.database == server_db).count();
        let target = match db.target {
            Some(pgherd_config::Target::Primary) | None => "primary",
            Some(pgherd_config::Target::Replica) => "replica",
            Some(pgherd_config::Target::Auto) => "auto",
        };
        t.row(&[
            Some(&name),
            primary.map(|n| n.host.as_str()),
            primary.map(|n| n.port.to_string()).as_deref(),
            Some(&server_db),
            db.user.as_deref(),
            Some(&db.pool_size.to_string()),
            Some(&db.min_pool_size.to_string()),
            Some(&db.reserve_pool.to_string()),
            db.pool_mode.map(mode_name),
            Some(&db.max_db_connections.to_string()),
            Some(&current.to_string()),
            Some(if state.paused { "1" } else { "0" }),
            Some(if state.disabled { "1" } else { "0" }),
            Some(target),
        ]);
    }
    t.finish();
}

fn show_lists(shared: &Shared, out: &mut BytesMut) {
    let config = shared.config();
    let clients = shared.registry.clients().len();
    let connected = shared.clients.load(std::sync::atomic::Ordering::Relaxed);
    let servers = shared.registry.servers().len();
    let mut t = Table::new(out, &[("list", T), ("items", I)]);
    for (list, items) in [
        ("databases", config.databases.len()),
        ("users", config.users.len()),
        ("pools", shared.pool_rows().len()),
        ("free_clients", 0),
        ("used_clients", clients),
        ("login_clients", connected.saturating_sub(clients)),
        ("free_servers", 0),
        ("used_servers", servers),
        ("dns_names", 0),
        ("dns_zones", 0),
        ("dns_queries", 0),
        ("dns_pending", 0),
    ] {
        t.row(&[Some(list), Some(&items.to_string())]);
    }
    t.finish();
}

fn show_nodes(shared: &Shared, out: &mut BytesMut) {
    let topology = shared.cluster().topology();
    let mut t = Table::new(
        out,
        &[
            ("name", T),
            ("host", T),
            ("port", I),
            ("up", T),
            ("role", T),
            ("fenced", T),
            ("timeline", oid::INT8),
            ("lag_bytes", oid::INT8),
            ("lag_seconds", N),
            ("serves_reads", T),
            ("weight", oid::INT8),
            ("priority", oid::INT8),
            ("last_error", T),
            ("drained", T),
            ("source", T),
        ],
    );
    for (i, n) in topology.members() {
        let cfg = &n.node;
        let role = match (n.role, n.fenced) {
            (_, true) => "fenced",
            (Role::Primary, false) => "primary",
            (Role::Standby, false) => "standby",
            (Role::Unknown, false) => "unknown",
        };
        let mut lag_seconds = String::new();
        if let Some(s) = n.lag_seconds {
            let _ = write!(lag_seconds, "{s:.3}");
        }
        t.row(&[
            Some(&n.name),
            Some(&cfg.host),
            Some(&cfg.port.to_string()),
            Some(yes_no(n.up)),
            Some(role),
            Some(yes_no(n.fenced)),
            n.timeline.map(|v| v.to_string()).as_deref(),
            n.lag_bytes.map(|v| v.to_string()).as_deref(),
            n.lag_seconds.map(|_| lag_seconds.as_str()),
            Some(yes_no(n.serves_reads())),
            Some(&cfg.weight.to_string()),
            Some(&cfg.priority.to_string()),
            n.last_error.as_deref(),
            Some(yes_no(shared.servers.routing.node_is_drained(i))),
            Some(n.source.as_str()),
        ]);
    }
    t.finish();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_like_pgbouncer() {
        assert_eq!(
            Command::parse("show pools;"),
            Ok(Command::Show("POOLS".into()))
        );
        assert_eq!(
            Command::parse("  SHOW   STATS ; "),
            Ok(Command::Show("STATS".into()))
        );
        assert_eq!(Command::parse("PAUSE"), Ok(Command::Pause(None)));
        assert_eq!(
            Command::parse("pause app"),
            Ok(Command::Pause(Some("app".into())))
        );
        assert_eq!(
            Command::parse("RESUME \"app\""),
            Ok(Command::Resume(Some("app".into())))
        );
        assert_eq!(
            Command::parse("KILL_CLIENT 0x1f"),
            Ok(Command::KillClient(31))
        );
        assert_eq!(
            Command::parse("kill_client 31"),
            Ok(Command::KillClient(31))
        );
        assert_eq!(Command::parse(";"), Ok(Command::Empty));
        assert_eq!(Command::parse("shutdown"), Ok(Command::Shutdown));
        assert_eq!(Command::parse("reload;"), Ok(Command::Reload));
        assert_eq!(Command::parse("RECONNECT"), Ok(Command::Reconnect(None)));
        assert_eq!(
            Command::parse("wait_close app"),
            Ok(Command::WaitClose(Some("app".into())))
        );
        for bad in [
            "select 1",
            "SHOW",
            "PAUSE a b",
            "DISABLE",
            "KILL_CLIENT x",
            "SHUTDOWN now",
        ] {
            let e = Command::parse(bad).unwrap_err();
            assert_eq!(e.severity, "ERROR", "{bad}");
        }
        assert_eq!(
            Command::parse("select 1").unwrap_err().message,
            "invalid command 'select 1', use SHOW HELP;"
        );
        assert!(Command::Pause(None).is_control());
        assert!(!Command::Show("POOLS".into()).is_control());
    }

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        assert_eq!(timestamp(SystemTime::UNIX_EPOCH), "1970-01-01 00:00:00 UTC");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_699_478);
        assert_eq!(timestamp(t), "2026-11-26 13:24:38 UTC");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(timestamp(leap), "2000-02-29 00:00:00 UTC");
    }
}
