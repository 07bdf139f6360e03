//! The checked configuration the rest of pgherd reads: typed values,
//! defaults applied, every mistake already reported.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use pgherd_auth::{ScramVerifier, Secret};

use crate::hba::HbaRules;
use crate::kinds::{AuthType, PoolMode, SslMode, Target, TlsProtocols};
use crate::settings::General;

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
    /// Other pgherd instances by `peer_id` (`[peers]`): where a cancel
    /// request whose key names one of them is sent on.
    pub peers: BTreeMap<u16, Peer>,
}

impl Config {
    /// What differs from `old`, by name: `[pgherd]` settings, and
    /// `[databases]` and `[users]` entries added, removed or changed. No
    /// values: some are secrets.
    pub fn changes_since(&self, old: &Config) -> Vec<String> {
        let (now, before) = (self.general.written.values(), old.general.written.values());
        let mut changes: Vec<String> = (now.iter().zip(&before))
            .filter(|(a, b)| a != b)
            .map(|((key, _), _)| (*key).to_owned())
            .collect();
        changes.extend(entries(
            "databases",
            &old.databases,
            &self.databases,
            |a, b| a == b,
        ));
        changes.extend(entries("users", &old.users, &self.users, User::same_as));
        if self.hba != old.hba {
            changes.push("auth_hba_file rules".into());
        }
        if self.peers != old.peers {
            changes.push("peers".into());
        }
        let by_name = |nodes: &[Node]| -> BTreeMap<String, Node> {
            nodes.iter().map(|n| (n.name.clone(), n.clone())).collect()
        };
        changes.extend(entries(
            "nodes",
            &by_name(&old.nodes),
            &by_name(&self.nodes),
            |a, b| a == b,
        ));
        changes
    }
}

/// `section.name (added|removed|changed)` for each entry that differs.
fn entries<T>(
    section: &str,
    old: &BTreeMap<String, T>,
    new: &BTreeMap<String, T>,
    same: impl Fn(&T, &T) -> bool,
) -> Vec<String> {
    let mut changes = Vec::new();
    for (name, entry) in new {
        match old.get(name) {
            None => changes.push(format!("{section}.{name} (added)")),
            Some(before) if !same(before, entry) => {
                changes.push(format!("{section}.{name} (changed)"))
            }
            Some(_) => {}
        }
    }
    let removed = old.keys().filter(|name| !new.contains_key(*name));
    changes.extend(removed.map(|name| format!("{section}.{name} (removed)")));
    changes
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
    /// Programs run for each event, as `argv` lists: the program, then its
    /// arguments with repmgr's placeholders (`%n` node, `%e` event, `%s`
    /// success, `%t` time, `%d` details, `%%` a percent sign) not yet
    /// replaced. The event also comes as JSON on standard input and in
    /// `PGHERD_*` environment variables.
    pub exec: Vec<Vec<String>>,
    /// The events announced ([`NOTIFY_EVENTS`]); empty: all of them.
    pub events: Vec<String>,
    /// Names this pgherd in messages (several may watch one cluster).
    pub instance: String,
    /// PEM roots trusted for `https://` URLs.
    pub ca_file: std::path::PathBuf,
    /// For one delivery attempt, connecting included.
    pub timeout: Duration,
    /// How long a pool has clients waiting before `pool_saturated` is
    /// announced; `None`: never.
    pub pool_saturated_after: Option<Duration>,
    /// Failed logins within a minute that make a `login_failures`
    /// announcement; 0: never.
    pub login_failure_burst: u64,
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
/// Where Debian keeps the system's trusted CA certificates: what https
/// towards webhooks and cluster managers trusts unless told otherwise.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

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
    "node_added",
    "node_removed",
    "manager_disagrees",
    "manager_agrees",
    "discovery_failed",
    "discovery_recovered",
    "started",
    "draining",
    "stopped",
    "config_reloaded",
    "pool_saturated",
    "pool_recovered",
    "max_client_conn",
    "login_failures",
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

impl General {
    /// The health probes' settings (`probe_*`, `max_replica_lag*`,
    /// `replica_orphan_timeout`).
    pub fn probe(&self) -> Probe {
        Probe {
            user: self.probe_user.clone(),
            password: self.probe_password.clone(),
            database: self.probe_database.clone(),
            interval: self.probe_interval,
            // Never slower than the usual interval.
            fast_interval: self.probe_fast_interval.min(self.probe_interval),
            timeout: self.probe_timeout,
            rise: self.probe_rise,
            fall: self.probe_fall,
            max_replica_lag_bytes: self.max_replica_lag_bytes,
            max_replica_lag: self.max_replica_lag,
            replica_orphan_timeout: self.replica_orphan_timeout,
        }
    }

    /// TCP options of client and server connections (`tcp_*`).
    pub fn tcp(&self) -> TcpOptions {
        TcpOptions {
            keepalive: self.tcp_keepalive,
            keepidle: self.tcp_keepidle,
            keepintvl: self.tcp_keepintvl,
            keepcnt: self.tcp_keepcnt,
            user_timeout: self.tcp_user_timeout,
        }
    }

    /// TLS towards clients (`client_tls_*`).
    pub fn client_tls(&self) -> Tls {
        Tls {
            sslmode: self.client_tls_sslmode,
            key_file: self.client_tls_key_file.clone(),
            cert_file: self.client_tls_cert_file.clone(),
            ca_file: self.client_tls_ca_file.clone(),
            protocols: self.client_tls_protocols,
        }
    }

    /// HTTPS on the admin port, when its key and certificate are set: the
    /// client side's TLS versions, no client certificates (basic auth
    /// says who is asking).
    pub fn admin_tls(&self) -> Option<Tls> {
        Some(Tls {
            sslmode: SslMode::Require,
            key_file: Some(self.admin_tls_key_file.clone()?),
            cert_file: Some(self.admin_tls_cert_file.clone()?),
            ca_file: None,
            protocols: self.client_tls_protocols,
        })
    }

    /// TLS towards PostgreSQL (`server_tls_*`): sessions, probes, auth_query.
    pub fn server_tls(&self) -> Tls {
        Tls {
            sslmode: self.server_tls_sslmode,
            key_file: self.server_tls_key_file.clone(),
            cert_file: self.server_tls_cert_file.clone(),
            ca_file: self.server_tls_ca_file.clone(),
            protocols: self.server_tls_protocols,
        }
    }
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

impl Node {
    /// `weight` when a node does not set one.
    pub const DEFAULT_WEIGHT: u32 = 1;
    /// `priority` when a node does not set one (repmgr's default node
    /// priority: higher is preferred there too).
    pub const DEFAULT_PRIORITY: u32 = 100;

    /// A node with the default weight and priority (one a cluster manager
    /// listed).
    pub fn at(name: String, host: String, port: u16) -> Node {
        Node {
            name,
            host,
            port,
            weight: Node::DEFAULT_WEIGHT,
            priority: Node::DEFAULT_PRIORITY,
        }
    }
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

/// A `[peers]` entry: another pgherd instance's client address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub host: String,
    pub port: u16,
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
        secrets(name, secret).ok().map(User::with_secrets)
    }

    /// Whether `other` lets the same clients in with the same settings. A
    /// verifier derived from a plaintext password has a salt of its own
    /// each time the file is read, so then the password is compared.
    fn same_as(&self, other: &User) -> bool {
        let secrets = match (&self.server_password, &other.server_password) {
            (Some(a), Some(b)) => a == b,
            (None, None) => self.verifier == other.verifier,
            _ => false,
        };
        secrets
            && self.md5 == other.md5
            && self.pool_mode == other.pool_mode
            && self.max_user_connections == other.max_user_connections
            && self.auth_type == other.auth_type
    }

    /// A user with these secrets and no settings of its own.
    pub(crate) fn with_secrets((verifier, md5, plain): Secrets) -> User {
        User {
            verifier,
            md5,
            server_password: plain,
            pool_mode: None,
            max_user_connections: None,
            auth_type: None,
        }
    }
}

pub(crate) type Secrets = (Option<ScramVerifier>, Option<Secret>, Option<Secret>);

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
