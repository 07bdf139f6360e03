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
    secrets, Config, Database, Listener, Node, Notify, Peer, Telegram, Tls, User, NOTIFY_EVENTS,
};
use crate::settings::{seconds, zero_is_never};

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
        let mut exec = Vec::with_capacity(self.exec.len());
        for (i, line) in self.exec.iter().enumerate() {
            let argv: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
            if argv.is_empty() {
                return Err(invalid(format!("notify.exec[{i}]"), "an empty command"));
            }
            exec.push(argv);
        }
        Ok(Notify {
            webhook_urls: self.webhook_urls,
            exec,
            telegram,
            events: self.events,
            instance: self.instance,
            ca_file: self.ca_file.into(),
            timeout,
            pool_saturated_after: zero_is_never(
                "notify.pool_saturated_after",
                self.pool_saturated_after,
            )?,
            login_failure_burst: self.login_failure_burst,
        })
    }
}

/// One side's TLS settings, checked for what its mode needs.
fn tls_side(side: &str, tls: &Tls) -> Result<(), ConfigError> {
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
    Ok(())
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
    Ok(User::with_secrets((verifier, md5, plain)))
}

impl File {
    /// Checks everything and builds the model.
    pub(crate) fn validate(self) -> Result<Config, ConfigError> {
        let general = self.pgherd.check()?;
        tls_side("client", &general.client_tls())?;
        tls_side("server", &general.server_tls())?;
        if general.admin_tls_key_file.is_some() != general.admin_tls_cert_file.is_some() {
            return Err(invalid(
                "pgherd.admin_tls_key_file",
                "set both admin_tls_key_file and admin_tls_cert_file, or neither",
            ));
        }

        for (key, urls) in [
            ("pgherd.patroni_urls", &general.patroni_urls),
            ("pgherd.patroni_etcd_urls", &general.patroni_etcd_urls),
        ] {
            let web = |u: &&String| u.starts_with("http://") || u.starts_with("https://");
            if let Some(url) = urls.iter().find(|u| !web(u)) {
                return Err(invalid(
                    key,
                    format!("{url:?} is not an http:// or https:// URL"),
                ));
            }
        }
        if !general.patroni_etcd_urls.is_empty() && general.patroni_scope.is_empty() {
            return Err(invalid(
                "pgherd.patroni_scope",
                "set it to Patroni's scope (the cluster's name in the DCS) to read patroni_etcd_urls",
            ));
        }

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
                error: source,
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
                    error: source,
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
        let mut peers = BTreeMap::new();
        for (id, p) in self.peers {
            let key = format!("peers.{id}");
            let id: u16 = match id.parse() {
                Ok(n) if (1..=16_383).contains(&n) => n,
                _ => return Err(invalid(key, "a peer's id is a number from 1 to 16383")),
            };
            if p.host.is_empty() {
                return Err(invalid(format!("{key}.host"), "a peer needs a host"));
            }
            peers.insert(
                id,
                Peer {
                    host: p.host,
                    port: p.port,
                },
            );
        }
        if !peers.is_empty() && general.peer_id == 0 {
            return Err(invalid(
                "pgherd.peer_id",
                "[peers] needs this instance's own peer_id (1 to 16383)",
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
            peers,
        })
    }
}
