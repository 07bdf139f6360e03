//! pgherd's configuration: one TOML file, validated into typed values.
//!
//! Option names and defaults follow pgbouncer's wherever pgbouncer has the same
//! option (`max_client_conn`, `default_pool_size`, `server_reset_query`, ...),
//! because the people who run pgherd already know them. Times are in seconds,
//! as in `pgbouncer.ini`, and may be fractional.
//!
//! The raw serde structs mirror the file; [`Config::parse`] turns them into the
//! checked [`Config`] the rest of pgherd uses, so every mistake in a file is
//! reported once, at load, with the key it concerns. Unknown keys are errors:
//! a misspelt option must not silently fall back to its default.
//!
//! `config/pgherd.toml` in the repository is the annotated reference.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use pgherd_auth::{ScramVerifier, Secret};
use serde::Deserialize;

mod hba;
pub use hba::{HbaConnection, HbaMethod, HbaRules};

/// A configuration error, with enough context to fix the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Toml(#[from] toml::de::Error),
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// How clients prove who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum AuthType {
    /// Any user listed or not, no password asked. For local testing only.
    #[serde(rename = "trust")]
    Trust,
    /// SCRAM-SHA-256 against the verifier in `[users]`.
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// md5 against the user's md5 secret (or plaintext password); a user
    /// with only a SCRAM verifier logs in with SCRAM instead (pgbouncer's
    /// rule).
    #[serde(rename = "md5")]
    Md5,
    /// The client sends its password in clear (use with TLS only); checked
    /// against whatever secret the user has.
    #[serde(rename = "plain")]
    Plain,
    /// Clients on a Unix-domain socket whose process runs as the operating
    /// system user of the same name (PostgreSQL's and pgbouncer's `peer`);
    /// refused over TCP. No password is asked, so pgherd logs in to
    /// PostgreSQL with the user's `server_password` (or the server trusts it).
    #[serde(rename = "peer")]
    Peer,
    /// By the first matching rule of `auth_hba_file` (PostgreSQL's
    /// `pg_hba.conf` format): one of the above, or rejected.
    #[serde(rename = "hba")]
    Hba,
}

impl AuthType {
    /// The name as written in the file.
    pub fn name(self) -> &'static str {
        match self {
            AuthType::Trust => "trust",
            AuthType::ScramSha256 => "scram-sha-256",
            AuthType::Md5 => "md5",
            AuthType::Plain => "plain",
            AuthType::Peer => "peer",
            AuthType::Hba => "hba",
        }
    }
}

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

/// When a client gives its server connection back (pgbouncer's `pool_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// At disconnect: the client keeps one server for its whole session.
    Session,
    /// At the end of each transaction (ReadyForQuery idle).
    Transaction,
}

/// Where a database's sessions go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// The one primary.
    Primary,
    /// A healthy standby (round robin), or the primary when none is usable
    /// and `replica_fallback` is on.
    Replica,
    /// Transaction mode: each transaction goes to a standby when pgherd can
    /// tell it only reads, to the primary otherwise (session mode: primary).
    Auto,
}

/// Which admin HTTP endpoints need basic auth. Health checks never do:
/// keepalived and load balancers must reach them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum AdminAuth {
    /// Control (`POST`) only; pages, metrics and JSON reads are open.
    #[serde(rename = "control")]
    Control,
    /// Everything but the health checks.
    #[serde(rename = "all")]
    All,
}

/// TLS on one side of pgherd: `client_tls_*` (pgherd is the TLS server,
/// clients connect to it) or `server_tls_*` (pgherd connects to PostgreSQL).
/// pgbouncer's names and modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Plain TCP. Towards clients, an SSLRequest is answered "no".
    Disable,
    /// Clients: TLS if the client asks. Servers: plain first, TLS when the
    /// server refuses a plain login (libpq's `allow`).
    Allow,
    /// Clients: as `allow`. Servers: TLS when the server offers it, no
    /// certificate check.
    Prefer,
    /// TLS or nothing; no certificate check.
    Require,
    /// TLS with a certificate signed by `*_tls_ca_file`.
    VerifyCa,
    /// Servers: `verify-ca` plus the node's host name (or IP) must match
    /// the certificate. Clients: as `verify-ca` (pgbouncer's rule).
    VerifyFull,
}

impl SslMode {
    /// The name as written in the config file.
    pub fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether the peer's certificate must chain to the CA file.
    pub fn verifies(self) -> bool {
        self >= SslMode::VerifyCa
    }
}

/// The TLS versions one side accepts. rustls implements 1.2 and 1.3 only,
/// so pgbouncer's `all` and `legacy` mean these two here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsProtocols {
    pub tls12: bool,
    pub tls13: bool,
}

impl TlsProtocols {
    fn parse(key: &str, value: &str) -> Result<TlsProtocols, ConfigError> {
        let mut p = TlsProtocols {
            tls12: false,
            tls13: false,
        };
        for word in value.split([',', ' ', ':']).filter(|w| !w.is_empty()) {
            match word.to_ascii_lowercase().as_str() {
                "secure" | "all" | "legacy" => {
                    p.tls12 = true;
                    p.tls13 = true;
                }
                "tlsv1.2" => p.tls12 = true,
                "tlsv1.3" => p.tls13 = true,
                "tlsv1.0" | "tlsv1.1" => {}
                other => {
                    return Err(invalid(
                        key,
                        format!("unknown TLS protocol {other:?} (secure, tlsv1.2, tlsv1.3)"),
                    ))
                }
            }
        }
        if !(p.tls12 || p.tls13) {
            return Err(invalid(
                key,
                "allow tlsv1.2 or tlsv1.3 (TLS 1.0 and 1.1 are not implemented: they are insecure)",
            ));
        }
        Ok(p)
    }

    fn name(self) -> String {
        match (self.tls12, self.tls13) {
            (true, true) => "secure".into(),
            (true, false) => "tlsv1.2".into(),
            _ => "tlsv1.3".into(),
        }
    }
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

/// How reads are spread over the usable standbys (haproxy's `balance`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Balance {
    /// In turn.
    #[serde(rename = "roundrobin")]
    RoundRobin,
    /// The standby with the fewest server connections in use by pgherd.
    #[serde(rename = "leastconn")]
    LeastConn,
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
        let (verifier, md5, plain) = raw::secrets(name, secret).ok()?;
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

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(&text)
    }

    /// Parses and validates a configuration from TOML text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw: raw::File = toml::from_str(text)?;
        raw.validate()
    }

    /// How `user` logs in: the user's own `auth_type`, else the global one.
    pub fn auth_type(&self, user: &str) -> AuthType {
        self.users
            .get(user)
            .and_then(|u| u.auth_type)
            .unwrap_or(self.general.auth_type)
    }

    /// `max_user_connections` for `user`: the user's own, else the global one.
    pub fn max_user_connections(&self, user: &str) -> usize {
        self.users
            .get(user)
            .and_then(|u| u.max_user_connections)
            .unwrap_or(self.general.max_user_connections)
    }

    /// The pool mode for `user` on `database`: the user's, else the
    /// database's, else the global one (pgbouncer's precedence).
    pub fn pool_mode(&self, database: &Database, user: &str) -> PoolMode {
        self.users
            .get(user)
            .and_then(|u| u.pool_mode)
            .or(database.pool_mode)
            .unwrap_or(self.general.pool_mode)
    }

    /// The `[databases]` entry for a client's database name: the exact entry,
    /// else the `*` fallback.
    pub fn database(&self, name: &str) -> Option<&Database> {
        self.databases.get(name).or_else(|| self.databases.get("*"))
    }
}

/// Every `[pgherd]` setting as `(key, value, default)` text, for the admin
/// console's `SHOW CONFIG`. Secrets are never shown, only whether one is set.
pub fn settings(g: &General) -> Vec<(&'static str, String, String)> {
    // The defaults are valid (a unit test checks it); were they not, the
    // default column would be empty rather than the console failing.
    let theirs = raw::File::defaults()
        .map(|d| setting_values(&d))
        .unwrap_or_default();
    setting_values(g)
        .into_iter()
        .enumerate()
        .map(|(i, (key, value))| {
            let default = theirs.get(i).map(|(_, d)| d.clone()).unwrap_or_default();
            (key, value, default)
        })
        .collect()
}

fn setting_values(g: &General) -> Vec<(&'static str, String)> {
    let secs = |d: Duration| d.as_secs_f64().to_string();
    // Unset timeouts show as 0, as they are written.
    let opt_secs = |d: Option<Duration>| d.map(secs).unwrap_or_else(|| "0".into());
    let list = |v: &[String]| v.join(",");
    let file = |f: &Option<std::path::PathBuf>| {
        f.as_ref()
            .map(|f| f.display().to_string())
            .unwrap_or_default()
    };
    let p = &g.probe;
    vec![
        ("listen_addr", g.listen_addr.to_string()),
        ("unix_socket_dir", file(&g.unix_socket_dir)),
        ("unix_socket_mode", format!("{:04o}", g.unix_socket_mode)),
        (
            "unix_socket_group",
            g.unix_socket_group.clone().unwrap_or_default(),
        ),
        ("so_reuseport", u8::from(g.so_reuseport).to_string()),
        ("listen_backlog", g.listen_backlog.to_string()),
        ("pool_mode", format!("{:?}", g.pool_mode).to_lowercase()),
        (
            "admin_listen_addr",
            g.admin_listen_addr
                .map(|a| a.to_string())
                .unwrap_or_default(),
        ),
        ("auth_type", g.auth_type.name().into()),
        ("auth_user", g.auth_user.clone().unwrap_or_default()),
        ("auth_query", g.auth_query.clone()),
        ("auth_dbname", g.auth_dbname.clone()),
        ("auth_file", file(&g.auth_file)),
        ("auth_hba_file", file(&g.auth_hba_file)),
        ("max_client_conn", g.max_client_conn.to_string()),
        ("default_pool_size", g.default_pool_size.to_string()),
        ("reserve_pool_size", g.reserve_pool_size.to_string()),
        ("min_pool_size", g.min_pool_size.to_string()),
        ("max_db_connections", g.max_db_connections.to_string()),
        ("max_user_connections", g.max_user_connections.to_string()),
        ("reserve_pool_timeout", secs(g.reserve_pool_timeout)),
        ("server_reset_query", g.server_reset_query.clone()),
        (
            "server_reset_query_always",
            g.server_reset_query_always.to_string(),
        ),
        ("server_idle_timeout", opt_secs(g.server_idle_timeout)),
        ("server_lifetime", opt_secs(g.server_lifetime)),
        ("server_check_delay", secs(g.server_check_delay)),
        ("server_check_query", g.server_check_query.clone()),
        ("log_connections", u8::from(g.log_connections).to_string()),
        (
            "log_disconnections",
            u8::from(g.log_disconnections).to_string(),
        ),
        ("log_stats", u8::from(g.log_stats).to_string()),
        ("client_idle_timeout", opt_secs(g.client_idle_timeout)),
        (
            "idle_transaction_timeout",
            opt_secs(g.idle_transaction_timeout),
        ),
        ("server_connect_timeout", secs(g.server_connect_timeout)),
        ("tcp_keepalive", u8::from(g.tcp.keepalive).to_string()),
        ("tcp_keepidle", opt_secs(g.tcp.keepidle)),
        ("tcp_keepintvl", opt_secs(g.tcp.keepintvl)),
        ("tcp_keepcnt", g.tcp.keepcnt.unwrap_or(0).to_string()),
        ("tcp_user_timeout", opt_secs(g.tcp.user_timeout)),
        ("server_login_retry", secs(g.server_login_retry)),
        ("query_wait_timeout", secs(g.query_wait_timeout)),
        ("query_timeout", opt_secs(g.query_timeout)),
        ("client_login_timeout", secs(g.client_login_timeout)),
        ("max_packet_size", g.max_packet_size.to_string()),
        (
            "max_prepared_statements",
            g.max_prepared_statements.to_string(),
        ),
        ("track_extra_parameters", list(&g.track_extra_parameters)),
        (
            "ignore_startup_parameters",
            list(&g.ignore_startup_parameters),
        ),
        (
            "application_name_add_host",
            u8::from(g.application_name_add_host).to_string(),
        ),
        ("shutdown_timeout", secs(g.shutdown_timeout)),
        ("worker_threads", g.worker_threads.to_string()),
        ("stats_period", secs(g.stats_period)),
        ("primary_wait_timeout", secs(g.primary_wait_timeout)),
        ("replica_fallback", g.replica_fallback.to_string()),
        (
            "replica_balance",
            match g.replica_balance {
                Balance::RoundRobin => "roundrobin".into(),
                Balance::LeastConn => "leastconn".into(),
            },
        ),
        ("read_your_writes", g.read_your_writes.to_string()),
        ("admin_users", list(&g.admin_users)),
        ("stats_users", list(&g.stats_users)),
        (
            "admin_auth",
            match g.admin_auth {
                AdminAuth::Control => "control".into(),
                AdminAuth::All => "all".into(),
            },
        ),
        ("state_file", file(&g.state_file)),
        ("client_tls_sslmode", g.client_tls.sslmode.name().into()),
        ("client_tls_key_file", file(&g.client_tls.key_file)),
        ("client_tls_cert_file", file(&g.client_tls.cert_file)),
        ("client_tls_ca_file", file(&g.client_tls.ca_file)),
        ("client_tls_protocols", g.client_tls.protocols.name()),
        ("server_tls_sslmode", g.server_tls.sslmode.name().into()),
        ("server_tls_key_file", file(&g.server_tls.key_file)),
        ("server_tls_cert_file", file(&g.server_tls.cert_file)),
        ("server_tls_ca_file", file(&g.server_tls.ca_file)),
        ("server_tls_protocols", g.server_tls.protocols.name()),
        ("probe_user", p.user.clone()),
        (
            "probe_password",
            if p.password.is_some() { "(set)" } else { "" }.into(),
        ),
        ("probe_database", p.database.clone()),
        ("probe_interval", secs(p.interval)),
        ("probe_fast_interval", secs(p.fast_interval)),
        ("probe_timeout", secs(p.timeout)),
        ("probe_rise", p.rise.to_string()),
        ("probe_fall", p.fall.to_string()),
        (
            "max_replica_lag_bytes",
            p.max_replica_lag_bytes
                .map(|b| b.to_string())
                .unwrap_or_default(),
        ),
        (
            "max_replica_lag",
            p.max_replica_lag.map(secs).unwrap_or_default(),
        ),
        ("replica_orphan_timeout", secs(p.replica_orphan_timeout)),
    ]
}

mod raw {
    //! The file as written, before validation.
    use super::*;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct File {
        #[serde(default)]
        pub pgherd: General,
        #[serde(default)]
        pub listeners: Vec<Listener>,
        #[serde(default)]
        pub nodes: Vec<Node>,
        #[serde(default)]
        pub databases: BTreeMap<String, Database>,
        #[serde(default)]
        pub users: BTreeMap<String, User>,
        #[serde(default)]
        pub notify: Notify,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct Notify {
        pub webhook_urls: Vec<String>,
        pub telegram_bot_token: String,
        pub telegram_chat_id: String,
        pub telegram_api_url: String,
        pub events: Vec<String>,
        pub instance: String,
        pub ca_file: String,
        pub timeout: f64,
    }

    impl Default for Notify {
        fn default() -> Self {
            Notify {
                webhook_urls: Vec::new(),
                telegram_bot_token: String::new(),
                telegram_chat_id: String::new(),
                telegram_api_url: "https://api.telegram.org".into(),
                events: Vec::new(),
                instance: String::new(),
                ca_file: "/etc/ssl/certs/ca-certificates.crt".into(),
                timeout: 10.0,
            }
        }
    }

    impl Notify {
        fn validate(self) -> Result<super::Notify, ConfigError> {
            for url in self.webhook_urls.iter().chain([&self.telegram_api_url]) {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(invalid(
                        "notify",
                        format!("{url:?} is not an http:// or https:// URL"),
                    ));
                }
            }
            if let Some(e) = self
                .events
                .iter()
                .find(|e| !NOTIFY_EVENTS.contains(&e.as_str()))
            {
                return Err(invalid(
                    "notify.events",
                    format!("unknown event {e:?} (known: {})", NOTIFY_EVENTS.join(", ")),
                ));
            }
            let telegram = match (
                self.telegram_bot_token.is_empty(),
                self.telegram_chat_id.is_empty(),
            ) {
                (true, true) => None,
                (false, false) => Some(super::Telegram {
                    bot_token: self.telegram_bot_token,
                    chat_id: self.telegram_chat_id,
                    api_url: self.telegram_api_url.trim_end_matches('/').to_owned(),
                }),
                _ => {
                    return Err(invalid(
                        "notify",
                        "telegram_bot_token and telegram_chat_id go together",
                    ))
                }
            };
            let timeout = seconds("notify.timeout", self.timeout)?;
            if timeout.is_zero() {
                return Err(invalid("notify.timeout", "must be more than 0"));
            }
            Ok(super::Notify {
                webhook_urls: self.webhook_urls,
                telegram,
                events: self.events,
                instance: self.instance,
                ca_file: self.ca_file.into(),
                timeout,
            })
        }
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct General {
        pub listen_addr: String,
        pub unix_socket_dir: String,
        pub unix_socket_mode: String,
        pub unix_socket_group: String,
        pub so_reuseport: bool,
        pub listen_backlog: u32,
        pub pool_mode: PoolMode,
        pub admin_listen_addr: String,
        pub auth_type: AuthType,
        pub auth_file: Option<String>,
        pub auth_hba_file: Option<String>,
        pub auth_user: Option<String>,
        pub auth_query: String,
        pub auth_dbname: String,
        pub max_client_conn: usize,
        pub default_pool_size: usize,
        pub reserve_pool_size: usize,
        pub reserve_pool_timeout: f64,
        pub max_db_connections: usize,
        pub max_user_connections: usize,
        pub min_pool_size: usize,
        pub server_reset_query: String,
        pub server_reset_query_always: bool,
        pub server_idle_timeout: f64,
        pub server_lifetime: f64,
        pub server_check_delay: f64,
        pub server_check_query: String,
        pub log_connections: bool,
        pub log_disconnections: bool,
        pub log_stats: bool,
        pub client_idle_timeout: f64,
        pub idle_transaction_timeout: f64,
        pub server_connect_timeout: f64,
        pub tcp_keepalive: bool,
        pub tcp_keepidle: f64,
        pub tcp_keepintvl: f64,
        pub tcp_keepcnt: u32,
        pub tcp_user_timeout: f64,
        pub server_login_retry: f64,
        pub query_wait_timeout: f64,
        pub query_timeout: f64,
        pub client_login_timeout: f64,
        pub max_packet_size: usize,
        pub primary_wait_timeout: f64,
        pub max_prepared_statements: usize,
        pub track_extra_parameters: Vec<String>,
        pub ignore_startup_parameters: Vec<String>,
        pub application_name_add_host: bool,
        pub shutdown_timeout: f64,
        pub worker_threads: usize,
        pub stats_period: f64,
        pub replica_fallback: bool,
        pub replica_balance: Balance,
        pub read_your_writes: bool,
        pub admin_users: Vec<String>,
        pub stats_users: Vec<String>,
        pub admin_auth: AdminAuth,
        pub state_file: Option<String>,
        pub client_tls_sslmode: SslMode,
        pub client_tls_key_file: Option<String>,
        pub client_tls_cert_file: Option<String>,
        pub client_tls_ca_file: Option<String>,
        pub client_tls_protocols: String,
        pub server_tls_sslmode: SslMode,
        pub server_tls_key_file: Option<String>,
        pub server_tls_cert_file: Option<String>,
        pub server_tls_ca_file: Option<String>,
        pub server_tls_protocols: String,
        pub probe_user: Option<String>,
        pub probe_password: Option<String>,
        pub probe_database: String,
        pub probe_interval: f64,
        pub probe_fast_interval: f64,
        pub probe_timeout: f64,
        pub probe_rise: u32,
        pub probe_fall: u32,
        pub max_replica_lag_bytes: Option<u64>,
        pub max_replica_lag: Option<f64>,
        pub replica_orphan_timeout: f64,
    }

    impl Default for General {
        fn default() -> Self {
            General {
                listen_addr: "0.0.0.0:5432".into(),
                // pgbouncer's is /tmp: pgherd's usual port is PostgreSQL's,
                // and so would its socket's name be.
                unix_socket_dir: String::new(),
                unix_socket_mode: "0777".into(),
                unix_socket_group: String::new(),
                so_reuseport: false,
                // pgbouncer's is 128; a failover brings every application's
                // reconnections at once (net.core.somaxconn caps it).
                listen_backlog: 1024,
                pool_mode: PoolMode::Session,
                // Clear of PostgreSQL, pgbouncer, haproxy stats, Patroni and
                // the usual Prometheus exporters.
                admin_listen_addr: "0.0.0.0:9930".into(),
                auth_type: AuthType::ScramSha256,
                auth_file: None,
                auth_hba_file: None,
                auth_user: None,
                // pgbouncer's default: expired roles have no password.
                auth_query: "SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL \
                             ELSE rolpassword END FROM pg_authid WHERE rolname=$1 AND rolcanlogin"
                    .into(),
                auth_dbname: "postgres".into(),
                max_client_conn: 100,
                default_pool_size: 20,
                // pgbouncer's defaults.
                reserve_pool_size: 0,
                reserve_pool_timeout: 5.0,
                max_db_connections: 0,
                max_user_connections: 0,
                min_pool_size: 0,
                server_reset_query: "DISCARD ALL".into(),
                server_reset_query_always: false,
                // pgbouncer's defaults.
                server_idle_timeout: 600.0,
                server_lifetime: 3600.0,
                server_check_delay: 30.0,
                server_check_query: "select 1".into(),
                log_connections: true,
                log_disconnections: true,
                log_stats: true,
                client_idle_timeout: 0.0,
                idle_transaction_timeout: 0.0,
                server_connect_timeout: 15.0,
                tcp_keepalive: true,
                tcp_keepidle: 0.0,
                tcp_keepintvl: 0.0,
                tcp_keepcnt: 0,
                tcp_user_timeout: 0.0,
                server_login_retry: 15.0,
                query_wait_timeout: 120.0,
                query_timeout: 0.0,
                client_login_timeout: 60.0,
                // PostgreSQL's own limit for a message (PQ_LARGE_MESSAGE_LIMIT).
                max_packet_size: 0x3fff_ffff,
                primary_wait_timeout: 15.0,
                max_prepared_statements: 200,
                // pgbouncer's default.
                track_extra_parameters: vec!["IntervalStyle".into()],
                ignore_startup_parameters: Vec::new(),
                application_name_add_host: false,
                shutdown_timeout: 30.0,
                worker_threads: 1,
                stats_period: 60.0,
                replica_fallback: true,
                replica_balance: Balance::RoundRobin,
                read_your_writes: true,
                admin_users: Vec::new(),
                stats_users: Vec::new(),
                admin_auth: AdminAuth::Control,
                state_file: None,
                // pgbouncer's defaults.
                client_tls_sslmode: SslMode::Disable,
                client_tls_key_file: None,
                client_tls_cert_file: None,
                client_tls_ca_file: None,
                client_tls_protocols: "secure".into(),
                server_tls_sslmode: SslMode::Disable,
                server_tls_key_file: None,
                server_tls_cert_file: None,
                server_tls_ca_file: None,
                server_tls_protocols: "secure".into(),
                probe_user: None,
                probe_password: None,
                probe_database: "postgres".into(),
                probe_interval: 1.0,
                probe_fast_interval: 0.1,
                probe_timeout: 1.0,
                probe_rise: 2,
                probe_fall: 3,
                max_replica_lag_bytes: Some(16 * 1024 * 1024),
                max_replica_lag: None,
                replica_orphan_timeout: 60.0,
            }
        }
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Listener {
        pub addr: String,
        pub target: Target,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Node {
        pub name: String,
        pub host: String,
        #[serde(default = "default_port")]
        pub port: u16,
        #[serde(default = "default_weight")]
        pub weight: u32,
        #[serde(default = "default_priority")]
        pub priority: u32,
    }

    fn default_weight() -> u32 {
        1
    }

    // repmgr's default node priority: higher is preferred there too.
    fn default_priority() -> u32 {
        100
    }

    fn default_port() -> u16 {
        5432
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Database {
        pub dbname: Option<String>,
        pub user: Option<String>,
        pub password: Option<String>,
        pub pool_size: Option<usize>,
        pub min_pool_size: Option<usize>,
        pub reserve_pool: Option<usize>,
        pub max_db_connections: Option<usize>,
        pub pool_mode: Option<PoolMode>,
        pub target: Option<Target>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct User {
        pub password: Option<String>,
        pub server_password: Option<String>,
        pub pool_mode: Option<PoolMode>,
        pub max_user_connections: Option<usize>,
        pub auth_type: Option<AuthType>,
    }

    fn seconds(key: &str, v: f64) -> Result<Duration, ConfigError> {
        Duration::try_from_secs_f64(v)
            .map_err(|_| invalid(key, format!("{v} is not a valid number of seconds")))
    }

    /// A timeout where 0 means "never" (pgbouncer's convention).
    fn optional(key: &str, v: f64) -> Result<Option<Duration>, ConfigError> {
        let d = seconds(key, v)?;
        Ok((!d.is_zero()).then_some(d))
    }

    /// One side's TLS settings, checked for what its mode needs.
    fn tls_side(
        side: &str,
        sslmode: SslMode,
        [key_file, cert_file, ca_file]: [Option<String>; 3],
        protocols: &str,
    ) -> Result<super::Tls, ConfigError> {
        let key = |k: &str| format!("pgherd.{side}_tls_{k}");
        let path = |v: Option<String>| v.filter(|p| !p.is_empty()).map(std::path::PathBuf::from);
        let tls = super::Tls {
            sslmode,
            key_file: path(key_file),
            cert_file: path(cert_file),
            ca_file: path(ca_file),
            protocols: TlsProtocols::parse(&key("protocols"), protocols)?,
        };
        if tls.key_file.is_some() != tls.cert_file.is_some() {
            return Err(invalid(
                key("key_file"),
                "set both key_file and cert_file, or neither",
            ));
        }
        if side == "client" && sslmode != SslMode::Disable && tls.key_file.is_none() {
            return Err(invalid(
                key("sslmode"),
                format!(
                    "{} needs client_tls_key_file and client_tls_cert_file (pgherd's certificate)",
                    sslmode.name()
                ),
            ));
        }
        if sslmode.verifies() && tls.ca_file.is_none() {
            return Err(invalid(
                key("sslmode"),
                format!("{} needs {side}_tls_ca_file", sslmode.name()),
            ));
        }
        Ok(tls)
    }

    fn positive(key: &str, v: f64) -> Result<Duration, ConfigError> {
        let d = seconds(key, v)?;
        if d.is_zero() {
            return Err(invalid(key, "must be more than 0"));
        }
        Ok(d)
    }

    type Secrets = (Option<ScramVerifier>, Option<Secret>, Option<Secret>);

    /// What a secret gives: a SCRAM verifier, an md5 secret, and (for a
    /// plaintext password, from which both are derived) the password.
    pub(super) fn secrets(name: &str, p: &str) -> Result<Secrets, &'static str> {
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

    /// A user from its secret: a SCRAM verifier, an md5 secret, or a
    /// plaintext password (from which both are derived, and which pgherd
    /// may also use to log in to servers).
    /// A user's secrets, checked against how the user logs in (`auth_type`).
    fn user_entry(
        auth_type: AuthType,
        name: &str,
        secret: Option<String>,
        key: &str,
    ) -> Result<super::User, ConfigError> {
        let (verifier, md5, plain) = match secret {
            None => (None, None, None),
            Some(p) => secrets(name, &p).map_err(|message| invalid(key, message))?,
        };
        let missing = match auth_type {
            AuthType::Trust => None,
            AuthType::ScramSha256 if verifier.is_none() => Some(
                "auth_type is scram-sha-256, so every user needs a SCRAM verifier or a \
                 plaintext password (an md5 secret is not enough)",
            ),
            AuthType::Md5 | AuthType::Plain if verifier.is_none() && md5.is_none() => {
                Some("every user needs a password")
            }
            _ => None,
        };
        if let Some(message) = missing {
            return Err(invalid(key, message));
        }
        Ok(super::User {
            verifier,
            md5,
            server_password: plain,
            pool_mode: None,
            max_user_connections: None,
            auth_type: None,
        })
    }

    impl File {
        /// The `[pgherd]` section as it is when the file sets nothing
        /// (the probe user, which has no default, left empty).
        pub fn defaults() -> Result<super::General, ConfigError> {
            let file = File {
                pgherd: General {
                    probe_user: Some(String::new()),
                    ..General::default()
                },
                listeners: Vec::new(),
                nodes: vec![Node {
                    name: "default".into(),
                    host: "localhost".into(),
                    port: default_port(),
                    weight: default_weight(),
                    priority: default_priority(),
                }],
                databases: BTreeMap::new(),
                users: BTreeMap::new(),
                notify: Notify::default(),
            };
            file.validate().map(|c| c.general)
        }

        pub fn validate(self) -> Result<super::Config, ConfigError> {
            let g = self.pgherd;
            let listen_addr = g.listen_addr.parse().map_err(|_| {
                invalid(
                    "pgherd.listen_addr",
                    format!("{:?} is not an address:port", g.listen_addr),
                )
            })?;
            if g.default_pool_size == 0 {
                return Err(invalid("pgherd.default_pool_size", "must be at least 1"));
            }
            if g.max_packet_size < 1024 {
                return Err(invalid("pgherd.max_packet_size", "must be at least 1024"));
            }
            let admin_listen_addr = match g.admin_listen_addr.as_str() {
                "" => None,
                a => Some(a.parse().map_err(|_| {
                    invalid(
                        "pgherd.admin_listen_addr",
                        format!("{a:?} is not an address:port (\"\" turns it off)"),
                    )
                })?),
            };
            let listen_backlog = Some(g.listen_backlog)
                .filter(|b| (1..=65_535).contains(b))
                .ok_or_else(|| {
                    invalid(
                        "pgherd.listen_backlog",
                        format!("{} is not between 1 and 65535", g.listen_backlog),
                    )
                })?;
            let unix_socket_mode = u32::from_str_radix(&g.unix_socket_mode, 8)
                .ok()
                .filter(|m| *m <= 0o777)
                .ok_or_else(|| {
                    invalid(
                        "pgherd.unix_socket_mode",
                        format!(
                            "{:?} is not an octal file mode such as \"0777\"",
                            g.unix_socket_mode
                        ),
                    )
                })?;
            let general = super::General {
                listen_addr,
                unix_socket_dir: (!g.unix_socket_dir.is_empty())
                    .then(|| std::path::PathBuf::from(&g.unix_socket_dir)),
                unix_socket_mode,
                unix_socket_group: (!g.unix_socket_group.is_empty())
                    .then(|| g.unix_socket_group.clone()),
                so_reuseport: g.so_reuseport,
                listen_backlog,
                pool_mode: g.pool_mode,
                admin_listen_addr,
                auth_type: g.auth_type,
                auth_file: g.auth_file.clone().map(std::path::PathBuf::from),
                auth_hba_file: g.auth_hba_file.clone().map(std::path::PathBuf::from),
                auth_user: g.auth_user.clone(),
                auth_query: g.auth_query.clone(),
                auth_dbname: g.auth_dbname.clone(),
                max_client_conn: g.max_client_conn,
                default_pool_size: g.default_pool_size,
                reserve_pool_size: g.reserve_pool_size,
                max_db_connections: g.max_db_connections,
                min_pool_size: g.min_pool_size,
                max_user_connections: g.max_user_connections,
                reserve_pool_timeout: seconds(
                    "pgherd.reserve_pool_timeout",
                    g.reserve_pool_timeout,
                )?,
                server_reset_query: g.server_reset_query,
                server_reset_query_always: g.server_reset_query_always,
                server_idle_timeout: optional("pgherd.server_idle_timeout", g.server_idle_timeout)?,
                server_lifetime: optional("pgherd.server_lifetime", g.server_lifetime)?,
                server_check_delay: seconds("pgherd.server_check_delay", g.server_check_delay)?,
                server_check_query: g.server_check_query,
                log_connections: g.log_connections,
                log_disconnections: g.log_disconnections,
                log_stats: g.log_stats,
                client_idle_timeout: optional("pgherd.client_idle_timeout", g.client_idle_timeout)?,
                idle_transaction_timeout: optional(
                    "pgherd.idle_transaction_timeout",
                    g.idle_transaction_timeout,
                )?,
                server_connect_timeout: seconds(
                    "pgherd.server_connect_timeout",
                    g.server_connect_timeout,
                )?,
                tcp: TcpOptions {
                    keepalive: g.tcp_keepalive,
                    keepidle: optional("pgherd.tcp_keepidle", g.tcp_keepidle)?,
                    keepintvl: optional("pgherd.tcp_keepintvl", g.tcp_keepintvl)?,
                    keepcnt: (g.tcp_keepcnt > 0).then_some(g.tcp_keepcnt),
                    user_timeout: optional("pgherd.tcp_user_timeout", g.tcp_user_timeout)?,
                },
                server_login_retry: seconds("pgherd.server_login_retry", g.server_login_retry)?,
                query_wait_timeout: seconds("pgherd.query_wait_timeout", g.query_wait_timeout)?,
                query_timeout: optional("pgherd.query_timeout", g.query_timeout)?,
                client_login_timeout: seconds(
                    "pgherd.client_login_timeout",
                    g.client_login_timeout,
                )?,
                max_packet_size: g.max_packet_size,
                primary_wait_timeout: seconds(
                    "pgherd.primary_wait_timeout",
                    g.primary_wait_timeout,
                )?,
                max_prepared_statements: g.max_prepared_statements,
                track_extra_parameters: g.track_extra_parameters,
                ignore_startup_parameters: g.ignore_startup_parameters,
                application_name_add_host: g.application_name_add_host,
                shutdown_timeout: seconds("pgherd.shutdown_timeout", g.shutdown_timeout)?,
                worker_threads: g.worker_threads,
                stats_period: positive("pgherd.stats_period", g.stats_period)?,
                replica_fallback: g.replica_fallback,
                replica_balance: g.replica_balance,
                read_your_writes: g.read_your_writes,
                admin_users: g.admin_users,
                stats_users: g.stats_users,
                admin_auth: g.admin_auth,
                state_file: g.state_file.map(std::path::PathBuf::from),
                client_tls: tls_side(
                    "client",
                    g.client_tls_sslmode,
                    [
                        g.client_tls_key_file,
                        g.client_tls_cert_file,
                        g.client_tls_ca_file,
                    ],
                    &g.client_tls_protocols,
                )?,
                server_tls: tls_side(
                    "server",
                    g.server_tls_sslmode,
                    [
                        g.server_tls_key_file,
                        g.server_tls_cert_file,
                        g.server_tls_ca_file,
                    ],
                    &g.server_tls_protocols,
                )?,
                probe: Probe {
                    user: g.probe_user.ok_or_else(|| {
                        invalid(
                            "pgherd.probe_user",
                            "set the user pgherd's health probes log in as (a superuser \
                             or a member of pg_monitor), like haproxy's pgsqlchk user",
                        )
                    })?,
                    password: g.probe_password.map(Secret::new),
                    database: g.probe_database,
                    interval: positive("pgherd.probe_interval", g.probe_interval)?,
                    fast_interval: positive("pgherd.probe_fast_interval", g.probe_fast_interval)?
                        .min(positive("pgherd.probe_interval", g.probe_interval)?),
                    timeout: positive("pgherd.probe_timeout", g.probe_timeout)?,
                    rise: g.probe_rise.max(1),
                    fall: g.probe_fall.max(1),
                    max_replica_lag_bytes: g.max_replica_lag_bytes,
                    max_replica_lag: g
                        .max_replica_lag
                        .map(|s| seconds("pgherd.max_replica_lag", s))
                        .transpose()?,
                    replica_orphan_timeout: seconds(
                        "pgherd.replica_orphan_timeout",
                        g.replica_orphan_timeout,
                    )?,
                },
            };

            if self.nodes.is_empty() {
                return Err(invalid(
                    "nodes",
                    "list at least one PostgreSQL node ([[nodes]] with name, host, port)",
                ));
            }
            let mut nodes: Vec<super::Node> = Vec::with_capacity(self.nodes.len());
            for n in self.nodes {
                if nodes.iter().any(|o| o.name == n.name) {
                    return Err(invalid(
                        "nodes",
                        format!("node name {:?} is used twice", n.name),
                    ));
                }
                nodes.push(super::Node {
                    name: n.name,
                    host: n.host,
                    port: n.port,
                    weight: n.weight,
                    priority: n.priority,
                });
            }

            let mut databases = BTreeMap::new();
            for (name, d) in self.databases {
                let key = format!("databases.{name}");
                if d.password.is_some() && d.user.is_none() {
                    return Err(invalid(key, "password is set but user is not"));
                }
                if d.pool_size == Some(0) {
                    return Err(invalid(key, "pool_size must be at least 1"));
                }
                databases.insert(
                    name,
                    super::Database {
                        dbname: d.dbname,
                        user: d.user,
                        password: d.password.map(Secret::new),
                        pool_size: d.pool_size.unwrap_or(general.default_pool_size),
                        min_pool_size: d.min_pool_size.unwrap_or(general.min_pool_size),
                        reserve_pool: d.reserve_pool.unwrap_or(general.reserve_pool_size),
                        max_db_connections: d
                            .max_db_connections
                            .unwrap_or(general.max_db_connections),
                        pool_mode: d.pool_mode,
                        target: d.target,
                    },
                );
            }

            let mut users = BTreeMap::new();
            for (name, u) in self.users {
                let key = format!("users.{name}.password");
                let auth_type = u.auth_type.unwrap_or(general.auth_type);
                let user = user_entry(auth_type, &name, u.password, &key)?;
                users.insert(
                    name,
                    super::User {
                        server_password: u
                            .server_password
                            .map(Secret::new)
                            .or(user.server_password),
                        pool_mode: u.pool_mode,
                        max_user_connections: u.max_user_connections,
                        auth_type: u.auth_type,
                        ..user
                    },
                );
            }
            if let Some(path) = &general.auth_file {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                let entries = pgherd_auth::md5::parse_userlist(&text)
                    .map_err(|e| invalid("pgherd.auth_file", format!("{}: {e}", path.display())))?;
                for e in entries {
                    // [users] entries win: they may carry more settings.
                    if users.contains_key(&e.user) {
                        continue;
                    }
                    let key = format!("auth_file user {:?}", e.user);
                    let user = user_entry(general.auth_type, &e.user, Some(e.secret), &key)?;
                    users.insert(e.user, user);
                }
            }

            let mut listeners = Vec::new();
            for (i, l) in self.listeners.into_iter().enumerate() {
                let addr = l.addr.parse().map_err(|_| {
                    invalid(
                        format!("listeners[{i}].addr"),
                        format!("{:?} is not an address:port", l.addr),
                    )
                })?;
                listeners.push(super::Listener {
                    addr,
                    target: l.target,
                });
            }

            let hba = match &general.auth_hba_file {
                Some(path) => {
                    let text =
                        std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                            path: path.display().to_string(),
                            source,
                        })?;
                    let rules = HbaRules::parse(&text).map_err(|e| {
                        invalid("pgherd.auth_hba_file", format!("{}: {e}", path.display()))
                    })?;
                    Some(rules)
                }
                None => None,
            };
            let wants_hba = general.auth_type == AuthType::Hba
                || users.values().any(|u| u.auth_type == Some(AuthType::Hba));
            if wants_hba && hba.is_none() {
                return Err(invalid(
                    "pgherd.auth_hba_file",
                    "auth_type \"hba\" needs an auth_hba_file",
                ));
            }
            Ok(super::Config {
                general,
                notify: self.notify.validate()?,
                listeners,
                nodes,
                databases,
                users,
                hba,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_show_values_defaults_and_no_secrets() {
        let c = Config::parse(
            "[pgherd]\nprobe_user = \"p\"\nprobe_password = \"hunter2\"\nprobe_interval = 2\n\
             [[nodes]]\nname = \"a\"\nhost = \"h\"",
        )
        .unwrap();
        let s = settings(&c.general);
        let get = |k: &str| s.iter().find(|(key, _, _)| *key == k).cloned().unwrap();
        assert_eq!(
            get("probe_interval"),
            ("probe_interval", "2".into(), "1".into())
        );
        assert_eq!(get("default_pool_size").2, "20");
        assert_eq!(get("probe_password").1, "(set)");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(raw::File::defaults().is_ok());
    }

    const MINIMAL: &str = r#"
        [pgherd]
        probe_user = "pgherd"

        [[nodes]]
        name = "pg1"
        host = "127.0.0.1"
    "#;

    #[test]
    fn notify_defaults_to_nobody_and_reads_its_section() {
        let c = Config::parse(MINIMAL).unwrap();
        assert!(c.notify.webhook_urls.is_empty() && c.notify.telegram.is_none());
        assert_eq!(c.notify.timeout, Duration::from_secs(10));
        let c = Config::parse(&format!(
            "{MINIMAL}\n[notify]\nwebhook_urls = [\"https://h.example/x\"]\n\
             telegram_bot_token = \"1:T\"\ntelegram_chat_id = \"-5\"\n\
             telegram_api_url = \"http://127.0.0.1:8081/\"\nevents = [\"primary_changed\"]\n\
             instance = \"edge\"\ntimeout = 2.5\nca_file = \"/etc/ca.pem\"\n"
        ))
        .unwrap();
        let n = c.notify;
        assert_eq!(n.webhook_urls, ["https://h.example/x"]);
        let t = n.telegram.unwrap();
        assert_eq!((t.bot_token.as_str(), t.chat_id.as_str()), ("1:T", "-5"));
        assert_eq!(t.api_url, "http://127.0.0.1:8081");
        assert_eq!(n.events, ["primary_changed"]);
        assert_eq!(n.instance, "edge");
        assert_eq!(n.timeout, Duration::from_millis(2500));
        assert_eq!(n.ca_file, std::path::Path::new("/etc/ca.pem"));
    }

    #[test]
    fn notify_mistakes_are_refused_with_the_reason() {
        let err = |section: &str| {
            Config::parse(&format!("{MINIMAL}\n[notify]\n{section}\n"))
                .unwrap_err()
                .to_string()
        };
        let e = err("events = [\"primary_change\"]");
        assert!(
            e.contains("\"primary_change\"") && e.contains("primary_changed"),
            "{e}"
        );
        let e = err("webhook_urls = [\"hooks.example/x\"]");
        assert!(e.contains("not an http:// or https:// URL"), "{e}");
        let e = err("telegram_bot_token = \"1:T\"");
        assert!(e.contains("go together"), "{e}");
        let e = err("timeout = 0");
        assert!(e.contains("notify.timeout"), "{e}");
        let e = err("webhook = \"http://x/\"");
        assert!(e.contains("webhook"), "{e}");
    }

    #[test]
    fn database_and_user_limits_default_to_the_global_ones() {
        let c = Config::parse(
            "[pgherd]\nprobe_user = \"p\"\nmin_pool_size = 1\nreserve_pool_size = 2\n\
             max_db_connections = 3\nmax_user_connections = 4\n\
             [[nodes]]\nname = \"a\"\nhost = \"h\"\n\
             [databases]\nown = { min_pool_size = 5, reserve_pool = 6, max_db_connections = 7 }\n\
             \"*\" = {}\n\
             [users]\nu = { password = \"x\", max_user_connections = 8 }\nv = { password = \"y\" }",
        )
        .unwrap();
        let own = c.database("own").unwrap();
        assert_eq!(
            (own.min_pool_size, own.reserve_pool, own.max_db_connections),
            (5, 6, 7)
        );
        let other = c.database("other").unwrap();
        assert_eq!(
            (
                other.min_pool_size,
                other.reserve_pool,
                other.max_db_connections
            ),
            (1, 2, 3)
        );
        assert_eq!(c.max_user_connections("u"), 8);
        assert_eq!(c.max_user_connections("v"), 4);
        assert_eq!(c.max_user_connections("unknown"), 4);
    }

    #[test]
    fn tls_settings_are_checked_for_what_their_mode_needs() {
        let parse = |lines: &str| {
            Config::parse(&format!(
                "[pgherd]\nprobe_user = \"p\"\n{lines}\n[[nodes]]\nname = \"a\"\nhost = \"h\""
            ))
        };
        let c = parse("").unwrap();
        assert_eq!(c.general.client_tls.sslmode, SslMode::Disable);
        assert_eq!(c.general.server_tls.sslmode, SslMode::Disable);

        let e = parse("client_tls_sslmode = \"require\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("client_tls_key_file"), "{e}");
        let e = parse(
            "client_tls_sslmode = \"verify-ca\"\nclient_tls_key_file = \"k\"\n\
             client_tls_cert_file = \"c\"",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("client_tls_ca_file"), "{e}");
        let e = parse("server_tls_sslmode = \"verify-full\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("server_tls_ca_file"), "{e}");
        let e = parse("server_tls_key_file = \"k\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("both"), "{e}");
        assert!(parse("server_tls_sslmode = \"prefer\"").is_ok());
        assert!(parse("server_tls_sslmode = \"sometimes\"").is_err());

        let p = parse("client_tls_protocols = \"tlsv1.3\"").unwrap();
        let tls13 = p.general.client_tls.protocols;
        assert!(tls13.tls13 && !tls13.tls12);
        let all = parse("server_tls_protocols = \"all\"").unwrap();
        assert!(all.general.server_tls.protocols.tls12);
        let e = parse("client_tls_protocols = \"tlsv1.0,tlsv1.1\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not implemented"), "{e}");
    }

    #[test]
    fn defaults_follow_pgbouncer() {
        let c = Config::parse(MINIMAL).unwrap();
        let g = &c.general;
        assert_eq!(g.listen_addr, "0.0.0.0:5432".parse().unwrap());
        assert_eq!(g.admin_listen_addr, Some("0.0.0.0:9930".parse().unwrap()));
        assert_eq!(g.auth_type, AuthType::ScramSha256);
        assert_eq!(g.max_client_conn, 100);
        assert_eq!(g.default_pool_size, 20);
        assert_eq!(g.server_reset_query, "DISCARD ALL");
        assert_eq!(g.query_wait_timeout, Duration::from_secs(120));
        assert_eq!(c.nodes[0].port, 5432);
        assert_eq!(g.probe.interval, Duration::from_secs(1));
        assert_eq!((g.probe.rise, g.probe.fall), (2, 3));
        assert_eq!(g.probe.database, "postgres");
        assert!(g.replica_fallback);
        assert!(c.database("app").is_none(), "no * entry, no fallback");
    }

    #[test]
    fn databases_and_fallback() {
        let c = Config::parse(&format!(
            "{MINIMAL}\n[databases]\napp = {{ dbname = \"appdb\", pool_size = 3, target = \"replica\" }}\n\"*\" = {{}}\n"
        ))
        .unwrap();
        assert_eq!(c.database("app").unwrap().dbname.as_deref(), Some("appdb"));
        assert_eq!(c.database("app").unwrap().pool_size, 3);
        assert_eq!(c.database("app").unwrap().target, Some(Target::Replica));
        let other = c.database("other").unwrap();
        assert_eq!(other.dbname, None);
        assert_eq!(other.pool_size, 20);
        assert_eq!(other.target, None);
    }

    #[test]
    fn pool_mode_precedence_is_user_then_database_then_global() {
        let c = Config::parse(&format!(
            "{}\n[databases]\ntx = {{ pool_mode = \"transaction\" }}\nplain = {{}}\n\
             [users]\nsess = {{ password = \"p\", pool_mode = \"session\" }}\nother = {{ password = \"p\" }}\n",
            MINIMAL.replace("[pgherd]", "[pgherd]\npool_mode = \"session\"")
        ))
        .unwrap();
        let tx = &c.databases["tx"];
        let plain = &c.databases["plain"];
        assert_eq!(c.pool_mode(tx, "other"), PoolMode::Transaction);
        assert_eq!(c.pool_mode(tx, "sess"), PoolMode::Session);
        assert_eq!(c.pool_mode(plain, "other"), PoolMode::Session);
        assert_eq!(c.general.pool_mode, PoolMode::Session);
    }

    #[test]
    fn extra_listeners_with_a_default_target() {
        let c = Config::parse(&format!(
            "{MINIMAL}\n[[listeners]]\naddr = \"127.0.0.1:5433\"\ntarget = \"replica\"\n"
        ))
        .unwrap();
        assert_eq!(
            c.listeners,
            vec![Listener {
                addr: "127.0.0.1:5433".parse().unwrap(),
                target: Target::Replica
            }]
        );
        let err = Config::parse(&format!(
            "{MINIMAL}\n[[listeners]]\naddr = \"x\"\ntarget = \"replica\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("listeners[0].addr"), "{err}");
    }

    #[test]
    fn users_with_verifier_or_plaintext() {
        let verifier = pgherd_auth::make_scram_verifier("pw");
        let c = Config::parse(&format!(
            "{MINIMAL}\n[users]\nalice = {{ password = \"{verifier}\" }}\nbob = {{ password = \"plain\" }}\n"
        ))
        .unwrap();
        assert!(c.users["alice"].verifier.is_some());
        assert!(c.users["alice"].server_password.is_none());
        assert_eq!(
            c.users["bob"].server_password.as_ref().map(Secret::expose),
            Some("plain")
        );
        assert!(
            !format!("{c:?}").contains("plain"),
            "secrets stay out of Debug"
        );
    }

    #[test]
    fn clear_errors() {
        let cases = [
            ("[pgherd]\nprobe_user = \"p\"", "nodes"),
            (
                "[pgherd]\nprobe_user=\"p\"\nlisten_addr = \"nope\"\n[[nodes]]\nname=\"a\"\nhost=\"h\"",
                "pgherd.listen_addr",
            ),
            ("[[nodes]]\nname=\"a\"\nhost=\"h\"", "pgherd.probe_user"),
            (&format!("{MINIMAL}\n[users]\nu = {{}}"), "users.u.password"),
            (
                &format!("{MINIMAL}\n[databases]\nd = {{ password = \"x\" }}"),
                "databases.d",
            ),
            (
                &format!("{MINIMAL}\n[[nodes]]\nname = \"pg1\"\nhost = \"h\""),
                "used twice",
            ),
        ];
        for (text, expect) in cases {
            let err = Config::parse(text).unwrap_err().to_string();
            assert!(err.contains(expect), "{err:?} should mention {expect}");
        }
        let err = Config::parse(&MINIMAL.replace("[pgherd]", "[pgherd]\nmax_clent_conn = 5"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_clent_conn"), "{err}");
    }

    #[test]
    fn unix_sockets_and_peer_users() {
        let c = Config::parse(MINIMAL).unwrap();
        assert_eq!(c.general.unix_socket_dir, None, "TCP only by default");
        assert_eq!(c.general.unix_socket_mode, 0o777);
        let text = MINIMAL.replace(
            "[pgherd]",
            "[pgherd]\nunix_socket_dir = \"/run/pgherd\"\nunix_socket_mode = \"0660\"\n\
             unix_socket_group = \"postgres\"",
        );
        let c = Config::parse(&format!(
            "{text}\n[users]\nbackup = {{ auth_type = \"peer\" }}"
        ))
        .unwrap();
        let g = &c.general;
        assert_eq!(
            g.unix_socket_dir,
            Some(std::path::PathBuf::from("/run/pgherd"))
        );
        assert_eq!(g.unix_socket_mode, 0o660);
        assert_eq!(g.unix_socket_group.as_deref(), Some("postgres"));
        // A peer user needs no password.
        assert_eq!(c.auth_type("backup"), AuthType::Peer);
        for bad in ["\"rw\"", "\"0999\"", "\"1777\""] {
            let text = MINIMAL.replace("[pgherd]", &format!("[pgherd]\nunix_socket_mode = {bad}"));
            let err = Config::parse(&text).unwrap_err().to_string();
            assert!(err.contains("pgherd.unix_socket_mode"), "{err}");
        }
    }

    #[test]
    fn listen_backlog_defaults_to_1024_within_1_to_65535() {
        assert_eq!(Config::parse(MINIMAL).unwrap().general.listen_backlog, 1024);
        let with =
            |v: &str| MINIMAL.replace("[pgherd]", &format!("[pgherd]\nlisten_backlog = {v}"));
        assert_eq!(
            Config::parse(&with("4096")).unwrap().general.listen_backlog,
            4096
        );
        for bad in ["0", "65536"] {
            let err = Config::parse(&with(bad)).unwrap_err().to_string();
            assert!(err.contains("pgherd.listen_backlog"), "{err}");
        }
    }
}
