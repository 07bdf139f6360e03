//! The checked configuration the rest of pgherd reads: typed values,
//! defaults applied, every mistake already reported.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use pgherd_auth::{ScramVerifier, Secret};

use crate::hba::HbaRules;
use crate::kinds::{AdminAuth, AuthType, Balance, PoolMode, SslMode, Target, TlsProtocols};
use crate::settings::RawGeneral;

/// The whole, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub general: General,
    /// Where cluster changes are announced (`[notify]`).
    pub notify: Notify,
    /// Listeners besides `general.listen_addr` (whose default target is `primary`).
    pub listeners: Vec<Listener>,
    pub nodes: Vec<Node>,
    pub databases: BTreeMap<String, Database>,
    pub users: BTreeMap<String, User>,
    /// The rules of `auth_hba_file`, read with the rest.
    pub hba: Option<HbaRules>,
}

/// pgbouncer's `tcp_keepalive`, `tcp_keepidle`, `tcp_keepintvl`,
/// `tcp_keepcnt` and `tcp_user_timeout`, for client and server connections:
/// how soon a peer whose host died (no FIN, no RST) is noticed. `None`: the
/// operating system's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpOptions {
    pub keepalive: bool,
    /// Idle time before the first keepalive probe (Linux: 2 hours).
    pub keepidle: Option<Duration>,
    /// Between probes (Linux: 75 s).
    pub keepintvl: Option<Duration>,
    /// Unanswered probes before the connection is dropped (Linux: 9).
    pub keepcnt: Option<u32>,
    /// How long sent data may stay unacknowledged before the connection is
    /// dropped (Linux: retransmissions up to `tcp_retries2`, ~15 minutes by
    /// the kernel's documentation); it also ends keepalive probing once
    /// that long has passed without an answer.
    pub user_timeout: Option<Duration>,
}

/// The `[notify]` section: who is told when the cluster changes.
#[derive(Debug, Clone, PartialEq)]
pub struct Notify {
    /// URLs (`http://` or `https://`) that get a JSON `POST` per event.
    pub webhook_urls: Vec<String>,
    /// A Telegram chat that gets a message per event.
    pub telegram: Option<Telegram>,
    /// The events announced ([`NOTIFY_EVENTS`]); empty: all of them.
    pub events: Vec<String>,
    /// Names this pgherd in messages (several may watch one cluster).
    pub instance: String,
    /// PEM roots trusted for `https://` URLs.
    pub ca_file: std::path::PathBuf,
    /// For one delivery attempt, connecting included.
    pub timeout: Duration,
}

/// A Telegram bot and the chat it writes to.
#[derive(Clone, PartialEq, Eq)]
pub struct Telegram {
    pub bot_token: String,
    pub chat_id: String,
    /// The Bot API's address (a local Bot API server, or a test's).
    pub api_url: String,
}

impl std::fmt::Debug for Telegram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is a credential: never in logs.
        f.debug_struct("Telegram")
            .field("chat_id", &self.chat_id)
            .field("api_url", &self.api_url)
            .finish_non_exhaustive()
    }
}

/// The cluster events `[notify] events` can name.
pub const NOTIFY_EVENTS: &[&str] = &[
    "node_up",
    "node_down",
    "role_changed",
    "primary_changed",
    "fenced",
    "unfenced",
    "split_brain",
    "split_brain_resolved",
    "lag_over_threshold",
    "lag_under_threshold",
    "orphaned",
    "orphan_ended",
    "failover",
    "no_primary",
    "switchover",
];

/// Parameters every transaction-mode client keeps as its own, whichever
/// server it lands on: the ones PostgreSQL reports in ParameterStatus that a
/// client may change (pgbouncer tracks the same set).
pub const TRACKED_PARAMETERS: &[&str] = &[
    "application_name",
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "standard_conforming_strings",
];

/// The `[pgherd]` section.
#[derive(Debug, Clone)]
pub struct General {
    pub listen_addr: SocketAddr,
    /// Where each listener also gets a Unix-domain socket, named as
    /// PostgreSQL names its own (`.s.PGSQL.PORT`); `None` (`""`, the
    /// default): TCP only.
    pub unix_socket_dir: Option<std::path::PathBuf>,
    /// The sockets' file mode (pgbouncer's `unix_socket_mode`).
    pub unix_socket_mode: u32,
    /// The group the sockets belong to; `None`: pgherd's own.
    pub unix_socket_group: Option<String>,
    /// pgbouncer's `so_reuseport`: other processes may listen on the same
    /// addresses (a new pgherd started before the old one is stopped), and
    /// a Unix socket in use is taken over.
    pub so_reuseport: bool,
    /// pgbouncer's `listen_backlog`: connections the kernel queues on each
    /// listening socket before pgherd accepts them.
    pub listen_backlog: u32,
    pub pool_mode: PoolMode,
    /// The admin HTTP listener (`/metrics`, health, JSON API); `None`: off.
    pub admin_listen_addr: Option<SocketAddr>,
    pub auth_type: AuthType,
    /// pgbouncer's userlist.txt: more users, after those in `[users]`.
    pub auth_file: Option<std::path::PathBuf>,
    /// Rules for `auth_type = "hba"`, in `pg_hba.conf` format.
    pub auth_hba_file: Option<std::path::PathBuf>,
    /// Users in neither `[users]` nor the auth_file are looked up on the
    /// primary with `auth_query`, logged in as this user (which needs a
    /// plaintext password in `[users]` or the auth_file).
    pub auth_user: Option<String>,
    pub auth_query: String,
    /// The database `auth_query` runs in.
    pub auth_dbname: String,
    pub max_client_conn: usize,
    pub default_pool_size: usize,
    /// Server connections each pool keeps open, idle or not (opened in the
    /// background, like the pool's last one); 0: none.
    pub min_pool_size: usize,
    /// Server connections to one (server) database over all pools; 0: no limit.
    pub max_db_connections: usize,
    /// Server connections as one (server) user over all pools; 0: no limit.
    pub max_user_connections: usize,
    /// Extra server connections per pool for clients that waited
    /// `reserve_pool_timeout` for one.
    pub reserve_pool_size: usize,
    pub reserve_pool_timeout: Duration,
    pub server_reset_query: String,
    /// Transaction mode: run `server_reset_query` after every transaction
    /// too, not only when a session ends (pgbouncer's name and default).
    pub server_reset_query_always: bool,
    /// Idle server connections older than this in the pool are closed;
    /// `None` (0 in the file): never.
    pub server_idle_timeout: Option<Duration>,
    /// A server connection older than this is closed when released (an
    /// idle one by the sweeper); `None`: never.
    pub server_lifetime: Option<Duration>,
    /// A connection idle in the pool at least this long runs
    /// `server_check_query` before it is handed out.
    pub server_check_delay: Duration,
    /// Empty: no check.
    pub server_check_query: String,
    /// Log each client login and logout at `info` (pgbouncer's
    /// `log_connections` / `log_disconnections`); otherwise at `debug`.
    pub log_connections: bool,
    pub log_disconnections: bool,
    /// Log the period's averages over all databases every `stats_period`
    /// (pgbouncer's `log_stats`).
    pub log_stats: bool,
    /// Clients sending nothing for this long (outside a transaction) are
    /// disconnected; `None`: never.
    pub client_idle_timeout: Option<Duration>,
    /// Clients sending nothing for this long inside a transaction are
    /// disconnected (their server rolled back or closed); `None`: never.
    pub idle_transaction_timeout: Option<Duration>,
    pub server_connect_timeout: Duration,
    /// TCP keepalive and user timeout of client and server connections.
    pub tcp: TcpOptions,
    /// After a server refused a pool's login, clients of that pool get the
    /// same error for this long instead of another attempt each.
    pub server_login_retry: Duration,
    pub query_wait_timeout: Duration,
    /// A request whose answer has not come this long after it was sent is
    /// cancelled and its client disconnected (pgbouncer's); `None`: never.
    pub query_timeout: Option<Duration>,
    pub client_login_timeout: Duration,
    pub max_packet_size: usize,
    /// Named prepared statements kept per server connection in transaction
    /// mode; 0 turns statement tracking off (clients that prepare keep
    /// their server instead).
    pub max_prepared_statements: usize,
    /// Transaction mode: parameters re-applied (with `SET`) when a client
    /// lands on a server whose value differs, on top of the ones PostgreSQL
    /// reports (see [`TRACKED_PARAMETERS`]).
    pub track_extra_parameters: Vec<String>,
    /// Startup parameters dropped instead of passed to the server.
    pub ignore_startup_parameters: Vec<String>,
    /// A client's `application_name` gets its address appended
    /// (" - 10.0.0.5:51234"), as pgbouncer's option of that name does.
    pub application_name_add_host: bool,
    /// On SIGTERM/SIGINT: how long to wait for clients to finish before exiting.
    pub shutdown_timeout: Duration,
    /// Threads that run sessions: 1 (the default) is one thread, as
    /// pgbouncer; 0 is one per CPU.
    pub worker_threads: usize,
    /// Period of the admin console's `SHOW STATS_AVERAGES` (pgbouncer's).
    pub stats_period: Duration,
    /// How long a client waits for a primary to appear (during a failover)
    /// before it gets 57P03.
    pub primary_wait_timeout: Duration,
    /// Send `replica` sessions to the primary when no standby is usable.
    pub replica_fallback: bool,
    /// How standbys are chosen for reads.
    pub replica_balance: Balance,
    /// `auto` target: after a client's transaction on the primary, its reads
    /// go to a standby only once that standby is known to have replayed it.
    pub read_your_writes: bool,
    /// Users who may run every admin console command (database `pgbouncer`
    /// or `pgherd`); they log in as any other user, with `[users]` entries.
    pub admin_users: Vec<String>,
    /// Users who may run the console's read-only commands (`SHOW ...`).
    pub stats_users: Vec<String>,
    /// What of the admin HTTP port asks for HTTP basic auth (an
    /// `admin_users` member for control, or a `stats_users` one for reads).
    pub admin_auth: AdminAuth,
    /// Where pgherd remembers the highest timeline it has seen, so a
    /// restarted pgherd still fences an old primary that comes back first.
    pub state_file: Option<std::path::PathBuf>,
    /// TLS towards clients (`client_tls_*`).
    pub client_tls: Tls,
    /// TLS towards PostgreSQL (`server_tls_*`), for sessions, probes and
    /// `auth_query` alike.
    pub server_tls: Tls,
    pub probe: Probe,
    /// The section as written (after RELOAD: with restart-only settings at
    /// their running values), for `SHOW CONFIG`.
    pub(crate) written: RawGeneral,
}

/// Health probes: how pgherd checks each node's role and replication.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub user: String,
    pub password: Option<Secret>,
    pub database: String,
    pub interval: Duration,
    /// The interval while the cluster is unsettled — no primary, or the
    /// primary's last probe failed (haproxy's `fastinter`): a promotion is
    /// seen within this, not within `interval`.
    pub fast_interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes before a down node is up again (haproxy's `rise`).
    pub rise: u32,
    /// Consecutive failures before an up node is down (haproxy's `fall`).
    pub fall: u32,
    /// A standby further behind than this (in bytes of WAL) gets no reads.
    pub max_replica_lag_bytes: Option<u64>,
    /// A standby further behind than this gets no reads.
    pub max_replica_lag: Option<Duration>,
    /// How long a standby that stopped streaming (its primary died, or it
    /// is being re-pointed) keeps serving reads, counted from the last probe
    /// that saw it streaming, while no other standby streams. Zero: it
    /// stops at once.
    pub replica_orphan_timeout: Duration,
}

/// One side's TLS settings (`client_tls_*` or `server_tls_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    pub sslmode: SslMode,
    /// pgherd's private key and certificate chain: required towards
    /// clients; towards servers, a client certificate (optional).
    pub key_file: Option<std::path::PathBuf>,
    pub cert_file: Option<std::path::PathBuf>,
    /// The CA that signs the peer's certificates (`verify-ca`, `verify-full`).
    pub ca_file: Option<std::path::PathBuf>,
    pub protocols: TlsProtocols,
}

/// One PostgreSQL server of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub host: String,
    pub port: u16,
    /// Share of reads among standbys of the same priority (haproxy's
    /// `weight`); 0 sends it no reads.
    pub weight: u32,
    /// Reads go to the usable standbys with the highest priority; lower
    /// ones serve only when none of those can (haproxy's `backup` servers,
    /// in as many tiers as needed).
    pub priority: u32,
}

/// A `[databases]` entry: what a client's database name maps to upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Database {
    /// Database name on the server; `None` keeps the client's name.
    pub dbname: Option<String>,
    /// Log in to the server as this user instead of the client's.
    pub user: Option<String>,
    /// Password for `user`.
    pub password: Option<Secret>,
    pub pool_size: usize,
    /// Connections kept open per pool (`min_pool_size` unless set here).
    pub min_pool_size: usize,
    /// Extra connections per pool for clients that waited
    /// `reserve_pool_timeout` (pgbouncer's per-database `reserve_pool`;
    /// `reserve_pool_size` unless set here).
    pub reserve_pool: usize,
    /// Server connections to this database over all pools; 0: no limit
    /// (`max_db_connections` unless set here).
    pub max_db_connections: usize,
    /// Overrides the global `pool_mode`.
    pub pool_mode: Option<PoolMode>,
    /// Where sessions go; `None` takes the listener's default target.
    pub target: Option<Target>,
}

/// An extra listener, typically the read-only port of the classic
/// "5432 read-write, 5433 read-only" haproxy layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub addr: SocketAddr,
    /// Target of databases that do not set their own.
    pub target: Target,
}

/// A `[users]` entry.
#[derive(Debug, Clone)]
pub struct User {
    /// What the client must prove; `None` only makes sense with `trust`.
    pub verifier: Option<ScramVerifier>,
    /// The md5 secret (`md5` + hex), from an md5 entry or derived from a
    /// plaintext password: md5 logins of clients, and of pgherd to servers.
    pub md5: Option<Secret>,
    /// A password pgherd can use to log in to PostgreSQL as this user.
    pub server_password: Option<Secret>,
    /// Overrides the database's and the global `pool_mode`.
    pub pool_mode: Option<PoolMode>,
    /// Overrides the global `max_user_connections`.
    pub max_user_connections: Option<usize>,
    /// Overrides the global `auth_type` for this user.
    pub auth_type: Option<AuthType>,
}

impl User {
    /// A user from a secret found at login (`auth_query`): a SCRAM
    /// verifier, an md5 secret or a plaintext password. `None` when the
    /// secret is none of those.
    pub fn from_secret(name: &str, secret: &str) -> Option<User> {
        let (verifier, md5, plain) = secrets(name, secret).ok()?;
        Some(User {
            verifier,
            md5,
            server_password: plain,
            pool_mode: None,
            max_user_connections: None,
            auth_type: None,
        })
    }
}

type Secrets = (Option<ScramVerifier>, Option<Secret>, Option<Secret>);

/// What a secret gives: a SCRAM verifier, an md5 secret, and (for a
/// plaintext password, from which both are derived) the password.
pub(crate) fn secrets(name: &str, p: &str) -> Result<Secrets, &'static str> {
    if p.starts_with("SCRAM-SHA-256$") {
        let v = ScramVerifier::parse(p).ok_or("malformed SCRAM-SHA-256 verifier")?;
        return Ok((Some(v), None, None));
    }
    if pgherd_auth::md5::is_md5_secret(p) {
        return Ok((None, Some(Secret::new(p)), None));
    }
    let v = ScramVerifier::parse(&pgherd_auth::make_scram_verifier(p))
        .ok_or("cannot derive a verifier")?;
    let md5 = pgherd_auth::md5::md5_secret(name, p);
    Ok((Some(v), Some(Secret::new(md5)), Some(Secret::new(p))))
}
