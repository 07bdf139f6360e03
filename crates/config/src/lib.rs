//! pgherd's configuration: one TOML file, validated into typed values.
//!
//! Option names and defaults follow pgbouncer's wherever pgbouncer has the same
//! option (`max_client_conn`, `default_pool_size`, `server_reset_query`, ...),
//! because the people who run pgherd already know them. Times are in seconds,
//! as in `pgbouncer.ini`, and may be fractional.
//!
//! `load` reads the file as written, `validate` turns it into the checked
//! [`Config`] (`model`) the rest of pgherd uses, so every mistake in a file
//! is reported once, at load, with the key it concerns. Unknown keys are
//! errors: a misspelt option must not silently fall back to its default.
//! Each `[pgherd]` setting is declared once, in `settings`; its raw form,
//! default, check, reload class and `SHOW CONFIG` row (`show`) all come
//! from that one row.
//!
//! `config/pgherd.toml` in the repository is the annotated reference.
#![forbid(unsafe_code)]

mod error;
mod hba;
mod kinds;
mod load;
mod model;
mod settings;
mod show;
mod validate;

use std::path::Path;

pub use error::ConfigError;
pub use hba::{HbaConnection, HbaMethod, HbaRules};
pub use kinds::{
    AdminAuth, AuthType, Balance, Discovery, PinLimitAction, PoolMode, SessionServerAt, SslMode,
    Target, TlsProtocols,
};
pub use model::*;
pub use settings::{General, Reload, Setting, SETTINGS};

use load::File;
use settings::RawGeneral;

/// Every `[pgherd]` setting as `(key, value, default)` text, for the admin
/// console's `SHOW CONFIG` and the JSON API.
pub fn settings(g: &General) -> Vec<(&'static str, String, String)> {
    let defaults = RawGeneral::default().values();
    g.written
        .values()
        .into_iter()
        .zip(defaults)
        .map(|((key, value), (_, default))| (key, value, default))
        .collect()
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            error: source,
        })?;
        Config::parse(&text)
    }

    /// Parses and validates a configuration from TOML text. Mistakes are
    /// reported all at once where that can be: every unknown key, or every
    /// setting with a bad value, each with its line.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        read_file(text)?.validate().map_err(|e| with_lines(e, text))
    }

    /// The file at `path` as a RELOAD applies it on top of this running
    /// configuration: what only a restart can change (the settings the
    /// table marks so, `[[listeners]]`, `[notify]`) keeps its running
    /// value. Also returns the names of those that differed.
    pub fn reloaded(&self, path: &Path) -> Result<(Config, Vec<&'static str>), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            error: source,
        })?;
        self.reloaded_from(&text)
    }

    fn reloaded_from(&self, text: &str) -> Result<(Config, Vec<&'static str>), ConfigError> {
        let mut file = read_file(text)?;
        let mut kept = self.general.written.keep_restart_only(&mut file.pgherd);
        let mut new = file.validate()?;
        if self.listeners != new.listeners {
            new.listeners = self.listeners.clone();
            kept.push("listeners");
        }
        if self.notify != new.notify {
            new.notify = self.notify.clone();
            kept.push("notify");
        }
        Ok((new, kept))
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

/// The file as serde reads it. A file with unknown keys is read again
/// without each (its line blanked, so the others keep their numbers) to
/// find them all: a misspelt option is reported with every other one.
fn read_file(text: &str) -> Result<File, ConfigError> {
    let first = match toml::from_str(text) {
        Ok(file) => return Ok(file),
        Err(e) => e,
    };
    let mut unknown = Vec::new();
    let mut rest = text.to_owned();
    let mut error = first.clone();
    while error.message().starts_with("unknown field") && unknown.len() < 100 {
        let Some(span) = error.span() else { break };
        let line = rest[..span.start].matches('\n').count();
        let message = error
            .message()
            .split(", expected")
            .next()
            .unwrap_or_default();
        unknown.push(ConfigError::Unknown {
            line: line + 1,
            message: message.to_owned(),
        });
        rest = rest
            .lines()
            .enumerate()
            .map(|(i, l)| if i == line { "" } else { l })
            .collect::<Vec<_>>()
            .join("\n");
        match toml::from_str::<File>(&rest) {
            Ok(_) => break,
            Err(e) => error = e,
        }
    }
    Err(match unknown.len() {
        0 | 1 => ConfigError::Toml(first),
        _ => ConfigError::Several(unknown),
    })
}

/// Adds to each bad setting the line it is on, where the file names it
/// once (`key = ...` at the start of a line).
fn with_lines(e: ConfigError, text: &str) -> ConfigError {
    let line_of = |key: &str| {
        let name = key.rsplit('.').next().unwrap_or(key);
        let mut lines = text.lines().enumerate().filter(|(_, l)| {
            let l = l.trim_start();
            l.strip_prefix(name)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        });
        match (lines.next(), lines.next()) {
            (Some((i, _)), None) => Some(i + 1),
            _ => None,
        }
    };
    let located = |e: ConfigError| match e {
        ConfigError::Invalid { key, message, .. } => ConfigError::Invalid {
            line: line_of(&key),
            key,
            message,
        },
        other => other,
    };
    match e {
        ConfigError::Several(all) => ConfigError::Several(all.into_iter().map(located).collect()),
        one => located(one),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use pgherd_auth::Secret;

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
        assert_eq!(c.general.client_tls().sslmode, SslMode::Disable);
        assert_eq!(c.general.server_tls().sslmode, SslMode::Disable);

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
        let tls13 = p.general.client_tls().protocols;
        assert!(tls13.tls13 && !tls13.tls12);
        let all = parse("server_tls_protocols = \"all\"").unwrap();
        assert!(all.general.server_tls().protocols.tls12);
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
        // Loopback only until opened on purpose.
        assert_eq!(g.admin_listen_addr, Some("127.0.0.1:9930".parse().unwrap()));
        assert_eq!(g.admin_auth, AdminAuth::Private);
        assert_eq!(g.auth_type, AuthType::ScramSha256);
        assert_eq!(g.max_client_conn, 100);
        assert_eq!(g.default_pool_size, 20);
        assert_eq!(g.server_reset_query, "DISCARD ALL");
        assert_eq!(g.query_wait_timeout, Duration::from_secs(120));
        assert_eq!(c.nodes[0].port, 5432);
        assert_eq!(g.probe().interval, Duration::from_secs(1));
        assert_eq!((g.probe().rise, g.probe().fall), (2, 3));
        assert_eq!(g.probe().database, "postgres");
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
    fn discovery_urls_are_web_urls_and_etcd_needs_the_scope() {
        let with = |lines: &str| {
            Config::parse(&MINIMAL.replace("[pgherd]", &format!("[pgherd]\n{lines}")))
        };
        let ok = with(
            "discovery = \"patroni\"\npatroni_urls = [\"https://10.0.0.1:8008\"]\n\
             patroni_etcd_urls = [\"http://10.0.0.9:2379\"]\npatroni_scope = \"demo\"",
        )
        .unwrap();
        assert_eq!(ok.general.discovery, Discovery::Patroni);
        let err = with("patroni_urls = [\"ftp://10.0.0.1\"]")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("patroni_urls") && err.contains("https://"),
            "{err}"
        );
        let err = with("patroni_etcd_urls = [\"http://10.0.0.9:2379\"]")
            .unwrap_err()
            .to_string();
        assert!(err.contains("patroni_scope"), "{err}");
    }

    #[test]
    fn peers_need_an_own_peer_id_and_valid_ids() {
        let peers = "\n[peers]\n1 = { host = \"10.0.0.1\" }\n2 = { host = \"h2\", port = 6432 }\n";
        let with_id = MINIMAL.replace("[pgherd]", "[pgherd]\npeer_id = 1");
        let c = Config::parse(&format!("{with_id}{peers}")).unwrap();
        assert_eq!(c.peers.len(), 2);
        assert_eq!(c.peers[&1].port, 5432);
        assert_eq!(c.peers[&2].host, "h2");
        let err = Config::parse(&format!("{MINIMAL}{peers}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("peer_id"), "{err}");
        let bad = "\n[peers]\n0 = { host = \"h\" }\n";
        let err = Config::parse(&format!("{with_id}{bad}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("peers.0"), "{err}");
        let too_big = MINIMAL.replace("[pgherd]", "[pgherd]\npeer_id = 16384");
        assert!(Config::parse(&too_big).is_err());
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

    fn reload_base(extra: &str, port: u16, sections: &str) -> String {
        format!(
            "[pgherd]\nprobe_user = \"p\"\nlisten_addr = \"127.0.0.1:{port}\"\n{extra}\n\
             [[nodes]]\nname = \"a\"\nhost = \"h\"\n{sections}"
        )
    }

    #[test]
    fn reload_keeps_restart_only_settings_at_their_running_values() {
        let running = Config::parse(&reload_base("default_pool_size = 5", 6432, "")).unwrap();
        let text = reload_base("default_pool_size = 9\nprobe_interval = 3", 7000, "");
        let (new, kept) = running.reloaded_from(&text).unwrap();
        assert_eq!(kept, ["listen_addr", "probe_interval"]);
        assert_eq!(new.general.listen_addr, running.general.listen_addr);
        assert_eq!(
            new.general.probe().interval,
            running.general.probe().interval
        );
        assert_eq!(new.general.default_pool_size, 9, "reloadable: applied");
        let shown = settings(&new.general);
        let row = |k: &str| shown.iter().find(|r| r.0 == k).cloned().unwrap();
        assert_eq!(
            row("probe_interval").1,
            "1",
            "SHOW CONFIG: the running value"
        );
        assert_eq!(row("default_pool_size").1, "9");
        let same = reload_base("default_pool_size = 9", 6432, "");
        assert!(running.reloaded_from(&same).unwrap().1.is_empty());

        // The notifier started with the running [notify].
        let notified = reload_base(
            "",
            6432,
            "[notify]\nwebhook_urls = [\"http://127.0.0.1:9/\"]\n",
        );
        let (new, kept) = running.reloaded_from(&notified).unwrap();
        assert_eq!(kept, ["notify"]);
        assert_eq!(new.notify, running.notify);

        // Nodes apply: weights, priorities, addresses, the list itself.
        let weighted = reload_base("", 6432, "weight = 3\npriority = 200\n");
        let (new, kept) = running.reloaded_from(&weighted).unwrap();
        assert!(kept.is_empty(), "{kept:?}");
        assert_eq!((new.nodes[0].weight, new.nodes[0].priority), (3, 200));
        let changed = new.changes_since(&running);
        assert!(
            changed.contains(&"nodes.a (changed)".to_owned()),
            "{changed:?}"
        );
        let moved = reload_base("", 6432, "port = 5999\n");
        let (new, kept) = running.reloaded_from(&moved).unwrap();
        assert!(kept.is_empty(), "{kept:?}");
        assert_eq!(new.nodes[0].port, 5999);
        let more = reload_base("", 6432, "[[nodes]]\nname = \"b\"\nhost = \"h2\"\n");
        let (new, _) = running.reloaded_from(&more).unwrap();
        let changed = new.changes_since(&running);
        assert!(
            changed.contains(&"nodes.b (added)".to_owned()),
            "{changed:?}"
        );
    }

    #[test]
    fn a_reload_names_what_it_changed_and_never_a_secret() {
        let users =
            "[users]\nalice = { password = \"secret-a\" }\nbob = { password = \"secret-b\" }\n\
                     [databases]\napp = { dbname = \"app\" }\n";
        let running = Config::parse(&reload_base("default_pool_size = 5", 6432, users)).unwrap();
        let same = Config::parse(&reload_base("default_pool_size = 5", 6432, users)).unwrap();
        assert!(
            same.changes_since(&running).is_empty(),
            "a plaintext password read again (a new salt) is no change"
        );
        let edited =
            "[users]\nalice = { password = \"new-secret\" }\ncarol = { password = \"c\" }\n\
                      [databases]\napp = { dbname = \"app2\" }\nreports = {}\n";
        let new = Config::parse(&reload_base("default_pool_size = 9", 6432, edited)).unwrap();
        let changes = new.changes_since(&running);
        assert_eq!(
            changes,
            [
                "default_pool_size",
                "databases.app (changed)",
                "databases.reports (added)",
                "users.alice (changed)",
                "users.carol (added)",
                "users.bob (removed)",
            ]
        );
        assert!(!changes.iter().any(|c| c.contains("secret")));
    }

    #[test]
    fn admin_https_needs_both_files_and_uses_the_client_sides_versions() {
        let c = Config::parse(MINIMAL).unwrap();
        assert!(c.general.admin_tls().is_none(), "plain HTTP by default");
        let both = MINIMAL.replace(
            "probe_user = \"pgherd\"",
            "probe_user = \"pgherd\"\nadmin_tls_key_file = \"k.pem\"\n\
             admin_tls_cert_file = \"c.pem\"\nclient_tls_protocols = \"tlsv1.3\"",
        );
        let tls = Config::parse(&both).unwrap().general.admin_tls().unwrap();
        assert_eq!(tls.key_file.unwrap(), std::path::PathBuf::from("k.pem"));
        assert!(tls.protocols.tls13 && !tls.protocols.tls12);
        let one = MINIMAL.replace(
            "probe_user = \"pgherd\"",
            "probe_user = \"pgherd\"\nadmin_tls_cert_file = \"c.pem\"",
        );
        let e = Config::parse(&one).unwrap_err().to_string();
        assert!(e.contains("admin_tls_key_file"), "{e}");
    }

    #[test]
    fn pressure_announcements_have_thresholds_that_zero_turns_off() {
        let c = Config::parse(MINIMAL).unwrap();
        assert_eq!(c.notify.pool_saturated_after, Some(Duration::from_secs(10)));
        assert_eq!(c.notify.login_failure_burst, 20);
        let off =
            format!("{MINIMAL}\n[notify]\npool_saturated_after = 0\nlogin_failure_burst = 0\n");
        let c = Config::parse(&off).unwrap();
        assert_eq!(c.notify.pool_saturated_after, None);
        assert_eq!(c.notify.login_failure_burst, 0);
        let bad = format!("{MINIMAL}\n[notify]\npool_saturated_after = -1\n");
        let e = Config::parse(&bad).unwrap_err().to_string();
        assert!(e.contains("notify.pool_saturated_after"), "{e}");
    }

    #[test]
    fn every_setting_has_a_default_that_passes_its_own_check() {
        let defaults = settings::RawGeneral {
            probe_user: Some("p".into()),
            ..Default::default()
        };
        assert!(defaults.clone().check().is_ok());
        let keys: Vec<&str> = SETTINGS.iter().map(|s| s.key).collect();
        let shown: Vec<&str> = defaults.values().iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, shown, "SHOW CONFIG lists the table, in order");
        assert!(SETTINGS.iter().all(|s| !s.doc.trim().is_empty()));
    }
}
