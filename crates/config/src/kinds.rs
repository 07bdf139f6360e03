//! The words settings take: pool modes, targets, authentication and TLS
//! modes, balance methods, as written in the file and used once checked.

use serde::Deserialize;

use crate::error::{invalid, ConfigError};

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

/// When a client gives its server connection back (pgbouncer's `pool_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// At disconnect: the client keeps one server for its whole session.
    Session,
    /// At the end of each transaction (ReadyForQuery idle).
    Transaction,
}

/// Session mode: when a client gets the server it keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionServerAt {
    /// At its first request, as pgbouncer does: idle clients hold no
    /// server, and the BackendKeyData PID is pgherd's.
    FirstQuery,
    /// At login: the BackendKeyData PID is the server's own
    /// (`pg_backend_pid()` agrees), and every connected client holds a
    /// server.
    Login,
}

/// Where nodes come from besides `[[nodes]]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Discovery {
    /// Only `[[nodes]]`.
    None,
    /// `repmgr.nodes`, read from any reachable node.
    Repmgr,
    /// Patroni's member list, from its REST API (`/cluster`).
    Patroni,
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

impl Target {
    /// As written in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Target::Primary => "primary",
            Target::Replica => "replica",
            Target::Auto => "auto",
        }
    }
}

/// What happens to a client whose session state would pin a server past
/// `max_pinned_percent` of its pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PinLimitAction {
    /// The server is reset and given back, and the client is told why
    /// (FATAL 53400): its state could not be kept.
    Close,
    /// The server is reset and given back, and the client goes on without
    /// its state (pgbouncer with `server_reset_query_always`), logged.
    Reset,
}

/// Which admin HTTP endpoints need basic auth. Health checks never do:
/// keepalived and load balancers must reach them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum AdminAuth {
    /// Control (`POST`) only; pages, metrics and JSON reads are open.
    #[serde(rename = "control")]
    Control,
    /// Control, and the reads that say who connects from where and how
    /// pgherd is configured (client and server lists, the settings); the
    /// stats page, metrics and node states stay open.
    #[serde(rename = "private")]
    Private,
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
    pub(crate) fn parse(key: &str, value: &str) -> Result<TlsProtocols, ConfigError> {
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

/// A secret written in the file (a password): never printed.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub(crate) struct Hidden(pub(crate) String);

impl std::fmt::Debug for Hidden {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("(hidden)")
    }
}
