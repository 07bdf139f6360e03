//! Every `[pgherd]` setting, declared once: its name, the type it is
//! written as, its default, how it is checked and converted, whether a
//! RELOAD applies it, and its one-line description.
//!
//! From this table come the raw section serde reads, its defaults, the
//! checked [`General`] the rest of pgherd reads, `SHOW CONFIG`'s rows,
//! which settings a RELOAD leaves at their running value, and the list
//! the reference's completeness test walks. A new setting is one row here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use pgherd_auth::Secret;
use serde::Deserialize;

use crate::error::{invalid, ConfigError};
use crate::kinds::{
    AdminAuth, AuthType, Balance, Discovery, Hidden, PinLimitAction, PoolMode, SessionServerAt,
    SslMode, TlsProtocols,
};
use crate::show::Show;

/// Whether a RELOAD applies a setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// New sessions and connections use the new value.
    Applies,
    /// The running value stays until pgherd restarts (sockets, probes,
    /// the state file...); RELOAD says which of these differed.
    NeedsRestart,
}

/// One `[pgherd]` setting, as the table declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    pub key: &'static str,
    pub reload: Reload,
    pub doc: &'static str,
}

macro_rules! settings {
    ($(
        $(#[doc = $doc:literal])+
        $key:ident: $raw:ty => $typed:ty = $default:expr, $reload:ident, $check:expr;
    )*) => {
        /// The `[pgherd]` section as written (serde's view of it).
        #[derive(Debug, Clone, PartialEq, Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub(crate) struct RawGeneral {
            $( $(#[doc = $doc])+ pub(crate) $key: $raw, )*
        }

        impl Default for RawGeneral {
            fn default() -> Self {
                RawGeneral { $( $key: Into::into($default), )* }
            }
        }

        /// The `[pgherd]` section, checked: every setting as the rest of
        /// pgherd reads it. Grouped views: [`General::probe`],
        /// [`General::tcp`], [`General::client_tls`], [`General::server_tls`].
        #[derive(Debug, Clone)]
        pub struct General {
            $( $(#[doc = $doc])+ pub $key: $typed, )*
            /// The section as written (after RELOAD: with restart-only
            /// settings at their running values), for `SHOW CONFIG`.
            pub(crate) written: RawGeneral,
        }

        impl RawGeneral {
            /// Checks and converts every setting (rules that span several
            /// are `validate`'s).
            pub(crate) fn check(self) -> Result<General, ConfigError> {
                // Every setting is checked, so one reading reports every
                // mistake, not the first.
                let mut errors = Vec::new();
                $( let $key = match ($check)(
                    concat!("pgherd.", stringify!($key)),
                    self.$key.clone(),
                ) {
                    Ok(value) => Some(value),
                    Err(e) => {
                        errors.push(e);
                        None
                    }
                }; )*
                match ( $( $key, )* ) {
                    ( $( Some($key), )* ) => Ok(General { $( $key, )* written: self }),
                    _ if errors.len() == 1 => Err(errors.remove(0)),
                    _ => Err(ConfigError::Several(errors)),
                }
            }

            /// Every setting's value as `SHOW CONFIG` prints it.
            pub(crate) fn values(&self) -> Vec<(&'static str, String)> {
                vec![ $( (stringify!($key), Show::show(&self.$key)), )* ]
            }

            /// Puts back into `new` the running value of every setting a
            /// RELOAD cannot apply, and names those that differed.
            pub(crate) fn keep_restart_only(&self, new: &mut RawGeneral) -> Vec<&'static str> {
                let mut kept = Vec::new();
                $(
                    if Reload::$reload == Reload::NeedsRestart && self.$key != new.$key {
                        new.$key = self.$key.clone();
                        kept.push(stringify!($key));
                    }
                )*
                kept
            }
        }

        /// Every `[pgherd]` setting, in the table's order.
        pub const SETTINGS: &[Setting] = &[ $( Setting {
            key: stringify!($key),
            reload: Reload::$reload,
            doc: concat!($($doc),+),
        }, )* ];
    };
}

// The checks and conversions rows use: (key, value as written) in, the
// model's value or an error naming the key out.

fn as_is<T>(_: &str, v: T) -> Result<T, ConfigError> {
    Ok(v)
}

fn address(key: &str, v: String) -> Result<SocketAddr, ConfigError> {
    v.parse()
        .map_err(|_| invalid(key, format!("{v:?} is not an address:port")))
}

/// An address, or `""` for off.
fn address_or_off(key: &str, v: String) -> Result<Option<SocketAddr>, ConfigError> {
    match v.as_str() {
        "" => Ok(None),
        a => a.parse().map(Some).map_err(|_| {
            invalid(
                key,
                format!("{a:?} is not an address:port (\"\" turns it off)"),
            )
        }),
    }
}

/// Text where `""` means unset.
fn text_or_unset(_: &str, v: String) -> Result<Option<String>, ConfigError> {
    Ok((!v.is_empty()).then_some(v))
}

/// A path where `""` (or leaving it out) means none.
fn path(_: &str, v: impl Into<Option<String>>) -> Result<Option<PathBuf>, ConfigError> {
    Ok(v.into().filter(|p| !p.is_empty()).map(PathBuf::from))
}

fn octal_mode(key: &str, v: String) -> Result<u32, ConfigError> {
    u32::from_str_radix(&v, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| {
            invalid(
                key,
                format!("{v:?} is not an octal file mode such as \"0777\""),
            )
        })
}

fn at_least<T: PartialOrd + std::fmt::Display>(
    min: T,
) -> impl Fn(&str, T) -> Result<T, ConfigError> {
    move |key, v| {
        if v < min {
            return Err(invalid(key, format!("must be at least {min}")));
        }
        Ok(v)
    }
}

fn between(min: u32, max: u32) -> impl Fn(&str, u32) -> Result<u32, ConfigError> {
    move |key, v| {
        if !(min..=max).contains(&v) {
            return Err(invalid(key, format!("{v} is not between {min} and {max}")));
        }
        Ok(v)
    }
}

pub(crate) fn seconds(key: &str, v: f64) -> Result<Duration, ConfigError> {
    Duration::try_from_secs_f64(v)
        .map_err(|_| invalid(key, format!("{v} is not a valid number of seconds")))
}

/// A timeout where 0 means "never" (pgbouncer's convention).
pub(crate) fn zero_is_never(key: &str, v: f64) -> Result<Option<Duration>, ConfigError> {
    let d = seconds(key, v)?;
    Ok((!d.is_zero()).then_some(d))
}

/// A duration that must be more than 0.
pub(crate) fn positive(key: &str, v: f64) -> Result<Duration, ConfigError> {
    let d = seconds(key, v)?;
    if d.is_zero() {
        return Err(invalid(key, "must be more than 0"));
    }
    Ok(d)
}

fn optional_seconds(key: &str, v: Option<f64>) -> Result<Option<Duration>, ConfigError> {
    v.map(|s| seconds(key, s)).transpose()
}

/// A count where 0 means the operating system's value.
fn zero_is_unset(_: &str, v: u32) -> Result<Option<u32>, ConfigError> {
    Ok((v > 0).then_some(v))
}

fn protocols(key: &str, v: String) -> Result<TlsProtocols, ConfigError> {
    TlsProtocols::parse(key, &v)
}

fn secret(_: &str, v: Option<Hidden>) -> Result<Option<Secret>, ConfigError> {
    Ok(v.map(|h| Secret::new(h.0)))
}

fn probe_user(key: &str, v: Option<String>) -> Result<String, ConfigError> {
    v.ok_or_else(|| {
        invalid(
            key,
            "set the user pgherd's health probes log in as (a superuser or a member of \
             pg_monitor), like haproxy's pgsqlchk user",
        )
    })
}

/// pgbouncer's range for `peer_id`: 0 (none) to 16,383.
fn peer_id(key: &str, v: u32) -> Result<u16, ConfigError> {
    match u16::try_from(v) {
        Ok(id) if id <= 16_383 => Ok(id),
        _ => Err(invalid(key, format!("{v} is not between 0 and 16383"))),
    }
}

fn at_least_one_try(_: &str, v: u32) -> Result<u32, ConfigError> {
    Ok(v.max(1))
}

settings! {
    /// Address and port clients connect to (read-write; `[[listeners]]` add more).
    listen_addr: String => SocketAddr = "0.0.0.0:5432", NeedsRestart, address;
    /// Directory for a Unix-domain socket beside each listener; "" for TCP only.
    unix_socket_dir: String => Option<PathBuf> = "", NeedsRestart, path;
    /// The Unix sockets' file mode (octal).
    unix_socket_mode: String => u32 = "0777", NeedsRestart, octal_mode;
    /// The group the Unix sockets belong to; "" for pgherd's own.
    unix_socket_group: String => Option<String> = "", NeedsRestart, text_or_unset;
    /// Let a new pgherd listen on the same addresses while the old one drains.
    so_reuseport: bool => bool = false, NeedsRestart, as_is;
    /// This instance's id among several (pgbouncer's `peer_id`): cancel keys carry it; 0 for none.
    peer_id: u32 => u16 = 0u32, NeedsRestart, peer_id;
    /// Connections the kernel queues per listening socket.
    listen_backlog: u32 => u32 = 1024u32, NeedsRestart, between(1, 65_535);
    /// When a client gives its server back: `session` or `transaction`.
    pool_mode: PoolMode => PoolMode = PoolMode::Session, Applies, as_is;
    /// Session mode: a client gets its server at its `first_query` (pgbouncer) or at `login`.
    session_server_at: SessionServerAt => SessionServerAt = SessionServerAt::FirstQuery, Applies, as_is;
    /// The admin HTTP listener (metrics, health, JSON API, stats page); "" turns it off.
    admin_listen_addr: String => Option<SocketAddr> = "127.0.0.1:9930", NeedsRestart, address_or_off;
    /// How clients prove who they are.
    auth_type: AuthType => AuthType = AuthType::ScramSha256, Applies, as_is;
    /// pgbouncer's userlist.txt: more users after `[users]`.
    auth_file: Option<String> => Option<PathBuf> = None::<String>, Applies, path;
    /// Rules for `auth_type = "hba"`, in pg_hba.conf format.
    auth_hba_file: Option<String> => Option<PathBuf> = None::<String>, Applies, path;
    /// The user unknown users are looked up as, with `auth_query`.
    auth_user: Option<String> => Option<String> = None::<String>, Applies, as_is;
    /// The query that returns an unknown user's secret (pgbouncer's default).
    auth_query: String => String = "SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL \
        ELSE rolpassword END FROM pg_authid WHERE rolname=$1 AND rolcanlogin", Applies, as_is;
    /// The database `auth_query` runs in.
    auth_dbname: String => String = "postgres", Applies, as_is;
    /// Clients connected at once, beyond which logins get 53300.
    max_client_conn: usize => usize = 100usize, Applies, as_is;
    /// Server connections per pool (database, user, node).
    default_pool_size: usize => usize = 20usize, Applies, at_least(1usize);
    /// Extra server connections per pool for clients that waited `reserve_pool_timeout`.
    reserve_pool_size: usize => usize = 0usize, Applies, as_is;
    /// Server connections each pool keeps open; 0 for none.
    min_pool_size: usize => usize = 0usize, Applies, as_is;
    /// Server connections to one database over all pools; 0 for no limit.
    max_db_connections: usize => usize = 0usize, Applies, as_is;
    /// Server connections as one user over all pools; 0 for no limit.
    max_user_connections: usize => usize = 0usize, Applies, as_is;
    /// Seconds a client waits before the reserve pool opens for it.
    reserve_pool_timeout: f64 => Duration = 5.0, Applies, seconds;
    /// What resets a server a session leaves.
    server_reset_query: String => String = "DISCARD ALL", Applies, as_is;
    /// Transaction mode: run `server_reset_query` after every transaction too.
    server_reset_query_always: bool => bool = false, Applies, as_is;
    /// Transaction mode: a client that leaves session state keeps its server until it drops it.
    pin_on_session_state: bool => bool = true, Applies, as_is;
    /// Transaction mode: serve LISTEN from one pgherd-owned connection per database and user.
    listen_fanout: bool => bool = false, Applies, as_is;
    /// Pinned servers allowed per pool, in percent of its pool_size (at least one).
    max_pinned_percent: u32 => u32 = 100u32, Applies, between(1, 100);
    /// Past max_pinned_percent: `close` the client (FATAL 53400) or `reset` its state.
    pin_limit_action: PinLimitAction => PinLimitAction = PinLimitAction::Close, Applies, as_is;
    /// Seconds an idle server connection stays pooled; 0 for ever.
    server_idle_timeout: f64 => Option<Duration> = 600.0, Applies, zero_is_never;
    /// Seconds after which a server connection is closed when released; 0 for never.
    server_lifetime: f64 => Option<Duration> = 3600.0, Applies, zero_is_never;
    /// Seconds idle in the pool after which a connection is checked before use.
    server_check_delay: f64 => Duration = 30.0, Applies, seconds;
    /// The check; "" for none.
    server_check_query: String => String = "select 1", Applies, as_is;
    /// Log logins at info (else debug).
    log_connections: bool => bool = true, Applies, as_is;
    /// Log logouts at info (else debug).
    log_disconnections: bool => bool = true, Applies, as_is;
    /// Log the averages every `stats_period`.
    log_stats: bool => bool = true, Applies, as_is;
    /// Seconds a client may send nothing between transactions; 0 for ever.
    client_idle_timeout: f64 => Option<Duration> = 0.0, Applies, zero_is_never;
    /// Seconds a client may send nothing inside a transaction; 0 for ever.
    idle_transaction_timeout: f64 => Option<Duration> = 0.0, Applies, zero_is_never;
    /// Seconds to open and log in a server connection.
    server_connect_timeout: f64 => Duration = 15.0, Applies, seconds;
    /// TCP keepalive on client and server connections.
    tcp_keepalive: bool => bool = true, Applies, as_is;
    /// Seconds idle before the first keepalive probe; 0 for the system's.
    tcp_keepidle: f64 => Option<Duration> = 0.0, Applies, zero_is_never;
    /// Seconds between keepalive probes; 0 for the system's.
    tcp_keepintvl: f64 => Option<Duration> = 0.0, Applies, zero_is_never;
    /// Unanswered keepalive probes before a connection is dropped; 0 for the system's.
    tcp_keepcnt: u32 => Option<u32> = 0u32, Applies, zero_is_unset;
    /// Seconds sent data may stay unacknowledged; 0 for the system's.
    tcp_user_timeout: f64 => Option<Duration> = 0.0, Applies, zero_is_never;
    /// Seconds a pool's clients get a server's login refusal instead of a new try.
    server_login_retry: f64 => Duration = 15.0, Applies, seconds;
    /// Seconds a client waits for a server before it gets 57014.
    query_wait_timeout: f64 => Duration = 120.0, Applies, seconds;
    /// Seconds a request may wait for its answer before it is cancelled; 0 for ever.
    query_timeout: f64 => Option<Duration> = 0.0, Applies, zero_is_never;
    /// Seconds a client has to log in.
    client_login_timeout: f64 => Duration = 60.0, Applies, seconds;
    /// The largest message pgherd accepts (PostgreSQL's own limit by default).
    max_packet_size: usize => usize = 0x3fff_ffffusize, Applies, at_least(1024usize);
    /// Seconds a writer waits for a primary during a failover before 57P03.
    primary_wait_timeout: f64 => Duration = 15.0, Applies, seconds;
    /// Transaction mode: named statements kept per server connection; 0 turns tracking off.
    max_prepared_statements: usize => usize = 200usize, Applies, as_is;
    /// Transaction mode: parameters re-applied beyond those PostgreSQL reports.
    track_extra_parameters: Vec<String> => Vec<String> = vec!["IntervalStyle".to_owned()], NeedsRestart, as_is;
    /// Startup parameters dropped instead of passed to servers.
    ignore_startup_parameters: Vec<String> => Vec<String> = Vec::<String>::new(), Applies, as_is;
    /// Append the client's address to its application_name.
    application_name_add_host: bool => bool = false, Applies, as_is;
    /// Seconds clients get to finish when pgherd stops.
    shutdown_timeout: f64 => Duration = 30.0, Applies, seconds;
    /// Threads that run sessions; 0 for one per CPU.
    worker_threads: usize => usize = 1usize, NeedsRestart, as_is;
    /// Seconds per `SHOW STATS_AVERAGES` period.
    stats_period: f64 => Duration = 60.0, NeedsRestart, positive;
    /// Send reads to the primary when no standby is usable.
    replica_fallback: bool => bool = true, Applies, as_is;
    /// How reads are spread over standbys: `roundrobin` or `leastconn`.
    replica_balance: Balance => Balance = Balance::RoundRobin, Applies, as_is;
    /// `auto`: a client's reads after its write wait for a standby that replayed it.
    read_your_writes: bool => bool = true, Applies, as_is;
    /// Users who may run every console command.
    admin_users: Vec<String> => Vec<String> = Vec::<String>::new(), Applies, as_is;
    /// Users who may run the console's SHOW commands.
    stats_users: Vec<String> => Vec<String> = Vec::<String>::new(), Applies, as_is;
    /// What of the admin HTTP port asks for basic auth: `control`, `private` or `all`.
    admin_auth: AdminAuth => AdminAuth = AdminAuth::Private, Applies, as_is;
    /// HTTPS on the admin port: its private key (with admin_tls_cert_file).
    admin_tls_key_file: Option<String> => Option<PathBuf> = None::<String>, NeedsRestart, path;
    /// HTTPS on the admin port: its certificate chain.
    admin_tls_cert_file: Option<String> => Option<PathBuf> = None::<String>, NeedsRestart, path;
    /// Where pgherd remembers the highest timeline it has seen (fencing across restarts).
    state_file: Option<String> => Option<PathBuf> = None::<String>, NeedsRestart, path;
    /// TLS towards clients: disable, allow, prefer, require, verify-ca, verify-full.
    client_tls_sslmode: SslMode => SslMode = SslMode::Disable, Applies, as_is;
    /// pgherd's private key towards clients.
    client_tls_key_file: Option<String> => Option<PathBuf> = None::<String>, Applies, path;
    /// pgherd's certificate chain towards clients.
    client_tls_cert_file: Option<String> => Option<PathBuf> = None::<String>, Applies, path;
    /// The CA client certificates must chain to.
    client_tls_ca_file: Option<String> => Option<PathBuf> = None::<String>, Applies, path;
    /// TLS versions towards clients: secure, tlsv1.2, tlsv1.3.
    client_tls_protocols: String => TlsProtocols = "secure", Applies, protocols;
    /// TLS towards PostgreSQL, for sessions, probes and auth_query alike.
    server_tls_sslmode: SslMode => SslMode = SslMode::Disable, Applies, as_is;
    /// pgherd's client key towards PostgreSQL.
    server_tls_key_file: Option<String> => Option<PathBuf> = None::<String>, Applies, path;
    /// pgherd's client certificate towards PostgreSQL.
    server_tls_cert_file: Option<String> => Option<PathBuf> = None::<String>, Applies, path;
    /// The CA the servers' certificates must chain to.
    server_tls_ca_file: Option<String> => Option<PathBuf> = None::<String>, Applies, path;
    /// TLS versions towards PostgreSQL.
    server_tls_protocols: String => TlsProtocols = "secure", Applies, protocols;
    /// The user the health probes log in as (no default).
    probe_user: Option<String> => String = None::<String>, NeedsRestart, probe_user;
    /// Its password.
    probe_password: Option<Hidden> => Option<Secret> = None::<Hidden>, NeedsRestart, secret;
    /// The database the probes log in to.
    probe_database: String => String = "postgres", NeedsRestart, as_is;
    /// Seconds between probes of each node.
    probe_interval: f64 => Duration = 1.0, NeedsRestart, positive;
    /// Seconds between probes while the cluster is unsettled (haproxy's fastinter).
    probe_fast_interval: f64 => Duration = 0.1, NeedsRestart, positive;
    /// Seconds a probe may take.
    probe_timeout: f64 => Duration = 1.0, NeedsRestart, positive;
    /// Successes before a down node is up (haproxy's rise).
    probe_rise: u32 => u32 = 2u32, NeedsRestart, at_least_one_try;
    /// Failures before an up node is down (haproxy's fall).
    probe_fall: u32 => u32 = 3u32, NeedsRestart, at_least_one_try;
    /// Bytes of WAL a standby may be behind and still serve reads.
    max_replica_lag_bytes: Option<u64> => Option<u64> = Some(16u64 * 1024 * 1024), NeedsRestart, as_is;
    /// Seconds a standby may be behind and still serve reads.
    max_replica_lag: Option<f64> => Option<Duration> = None::<f64>, NeedsRestart, optional_seconds;
    /// Seconds a standby that stopped streaming keeps serving reads while no other streams.
    replica_orphan_timeout: f64 => Duration = 60.0, NeedsRestart, seconds;
    /// Where nodes come from besides `[[nodes]]`: `none`, `repmgr` or `patroni`.
    discovery: Discovery => Discovery = Discovery::None, NeedsRestart, as_is;
    /// Seconds between two readings of the cluster manager's node list.
    discovery_interval: f64 => Duration = 5.0, NeedsRestart, positive;
    /// The database holding repmgr's metadata (`repmgr.nodes`), read as `probe_user`.
    repmgr_database: String => String = "repmgr", NeedsRestart, as_is;
    /// Patroni REST API addresses; empty: port 8008 of every `[[nodes]]` host.
    patroni_urls: Vec<String> => Vec<String> = Vec::<String>::new(), NeedsRestart, as_is;
    /// Read Patroni's DCS (etcd v3) at these addresses instead of its REST API.
    patroni_etcd_urls: Vec<String> => Vec<String> = Vec::<String>::new(), NeedsRestart, as_is;
    /// Patroni's `scope` (the cluster's name in the DCS), for `patroni_etcd_urls`.
    patroni_scope: String => String = "", NeedsRestart, as_is;
    /// Patroni's `namespace` in the DCS, for `patroni_etcd_urls`.
    patroni_namespace: String => String = "/service/", NeedsRestart, as_is;
    /// CA certificates (PEM) for https:// `patroni_urls` and `patroni_etcd_urls`; unset: the system's bundle.
    discovery_ca_file: Option<String> => Option<PathBuf> = None::<String>, NeedsRestart, path;
}
