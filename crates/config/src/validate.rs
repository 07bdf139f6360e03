//! From the file as written to the model: each setting's own check comes
//! from the settings table; what spans several (TLS files for a mode,
//! users against `auth_type`, unique node names, hba rules) is checked here.

use std::collections::BTreeMap;

use pgherd_auth::Secret;

use crate::error::{invalid, ConfigError};
use crate::hba::HbaRules;
use crate::kinds::{AuthType, SslMode};
use crate::load::{self, File};
use crate::model::{
    secrets, Config, Database, General, Listener, Node, Notify, Probe, TcpOptions, Telegram, Tls,
    User, NOTIFY_EVENTS,
};
use crate::settings::seconds;

impl load::Notify {
    fn validate(self) -> Result<Notify, ConfigError> {
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
            (false, false) => Some(Telegram {
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
        Ok(Notify {
            webhook_urls: self.webhook_urls,
            telegram,
            events: self.events,
            instance: self.instance,
            ca_file: self.ca_file.into(),
            timeout,
        })
    }
}

/// One side's TLS settings, checked for what its mode needs.
fn tls_side(side: &str, tls: Tls) -> Result<Tls, ConfigError> {
    let key = |k: &str| format!("pgherd.{side}_tls_{k}");
    if tls.key_file.is_some() != tls.cert_file.is_some() {
        return Err(invalid(
            key("key_file"),
            "set both key_file and cert_file, or neither",
        ));
    }
    if side == "client" && tls.sslmode != SslMode::Disable && tls.key_file.is_none() {
        return Err(invalid(
            key("sslmode"),
            format!(
                "{} needs client_tls_key_file and client_tls_cert_file (pgherd's certificate)",
                tls.sslmode.name()
            ),
        ));
    }
    if tls.sslmode.verifies() && tls.ca_file.is_none() {
        return Err(invalid(
            key("sslmode"),
            format!("{} needs {side}_tls_ca_file", tls.sslmode.name()),
        ));
    }
    Ok(tls)
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
) -> Result<User, ConfigError> {
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
    Ok(User {
        verifier,
        md5,
        server_password: plain,
        pool_mode: None,
        max_user_connections: None,
        auth_type: None,
    })
}

impl File {
    /// Checks everything and builds the model.
    pub(crate) fn validate(self) -> Result<Config, ConfigError> {
        let c = self.pgherd.check()?;
        let general = General {
            listen_addr: c.listen_addr,
            unix_socket_dir: c.unix_socket_dir,
            unix_socket_mode: c.unix_socket_mode,
            unix_socket_group: c.unix_socket_group,
            so_reuseport: c.so_reuseport,
            listen_backlog: c.listen_backlog,
            pool_mode: c.pool_mode,
            admin_listen_addr: c.admin_listen_addr,
            auth_type: c.auth_type,
            auth_file: c.auth_file,
            auth_hba_file: c.auth_hba_file,
            auth_user: c.auth_user,
            auth_query: c.auth_query,
            auth_dbname: c.auth_dbname,
            max_client_conn: c.max_client_conn,
            default_pool_size: c.default_pool_size,
            reserve_pool_size: c.reserve_pool_size,
            max_db_connections: c.max_db_connections,
            min_pool_size: c.min_pool_size,
            max_user_connections: c.max_user_connections,
            reserve_pool_timeout: c.reserve_pool_timeout,
            server_reset_query: c.server_reset_query,
            server_reset_query_always: c.server_reset_query_always,
            server_idle_timeout: c.server_idle_timeout,
            server_lifetime: c.server_lifetime,
            server_check_delay: c.server_check_delay,
            server_check_query: c.server_check_query,
            log_connections: c.log_connections,
            log_disconnections: c.log_disconnections,
            log_stats: c.log_stats,
            client_idle_timeout: c.client_idle_timeout,
            idle_transaction_timeout: c.idle_transaction_timeout,
            server_connect_timeout: c.server_connect_timeout,
            tcp: TcpOptions {
                keepalive: c.tcp_keepalive,
                keepidle: c.tcp_keepidle,
                keepintvl: c.tcp_keepintvl,
                keepcnt: c.tcp_keepcnt,
                user_timeout: c.tcp_user_timeout,
            },
            server_login_retry: c.server_login_retry,
            query_wait_timeout: c.query_wait_timeout,
            query_timeout: c.query_timeout,
            client_login_timeout: c.client_login_timeout,
            max_packet_size: c.max_packet_size,
            primary_wait_timeout: c.primary_wait_timeout,
            max_prepared_statements: c.max_prepared_statements,
            track_extra_parameters: c.track_extra_parameters,
            ignore_startup_parameters: c.ignore_startup_parameters,
            application_name_add_host: c.application_name_add_host,
            shutdown_timeout: c.shutdown_timeout,
            worker_threads: c.worker_threads,
            stats_period: c.stats_period,
            replica_fallback: c.replica_fallback,
            replica_balance: c.replica_balance,
            read_your_writes: c.read_your_writes,
            admin_users: c.admin_users,
            stats_users: c.stats_users,
            admin_auth: c.admin_auth,
            state_file: c.state_file,
            client_tls: tls_side(
                "client",
                Tls {
                    sslmode: c.client_tls_sslmode,
                    key_file: c.client_tls_key_file,
                    cert_file: c.client_tls_cert_file,
                    ca_file: c.client_tls_ca_file,
                    protocols: c.client_tls_protocols,
                },
            )?,
            server_tls: tls_side(
                "server",
                Tls {
                    sslmode: c.server_tls_sslmode,
                    key_file: c.server_tls_key_file,
                    cert_file: c.server_tls_cert_file,
                    ca_file: c.server_tls_ca_file,
                    protocols: c.server_tls_protocols,
                },
            )?,
            probe: Probe {
                user: c.probe_user,
                password: c.probe_password,
                database: c.probe_database,
                interval: c.probe_interval,
                // Never slower than the usual interval.
                fast_interval: c.probe_fast_interval.min(c.probe_interval),
                timeout: c.probe_timeout,
                rise: c.probe_rise,
                fall: c.probe_fall,
                max_replica_lag_bytes: c.max_replica_lag_bytes,
                max_replica_lag: c.max_replica_lag,
                replica_orphan_timeout: c.replica_orphan_timeout,
            },
            written: self.pgherd,
        };

        if self.nodes.is_empty() {
            return Err(invalid(
                "nodes",
                "list at least one PostgreSQL node ([[nodes]] with name, host, port)",
            ));
        }
        let mut nodes: Vec<Node> = Vec::with_capacity(self.nodes.len());
        for n in self.nodes {
            if nodes.iter().any(|o| o.name == n.name) {
                return Err(invalid(
                    "nodes",
                    format!("node name {:?} is used twice", n.name),
                ));
            }
            nodes.push(Node {
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
                Database {
                    dbname: d.dbname,
                    user: d.user,
                    password: d.password.map(Secret::new),
                    pool_size: d.pool_size.unwrap_or(general.default_pool_size),
                    min_pool_size: d.min_pool_size.unwrap_or(general.min_pool_size),
                    reserve_pool: d.reserve_pool.unwrap_or(general.reserve_pool_size),
                    max_db_connections: d.max_db_connections.unwrap_or(general.max_db_connections),
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
                User {
                    server_password: u.server_password.map(Secret::new).or(user.server_password),
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
            listeners.push(Listener {
                addr,
                target: l.target,
            });
        }

        let hba = match &general.auth_hba_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
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
        Ok(Config {
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
