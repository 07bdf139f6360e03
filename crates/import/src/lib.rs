//! `pgherd import`: a pgbouncer.ini (with its `%include`s and auth_file)
//! and the haproxy.cfg files in front of it become one commented pgherd
//! configuration, so a DBA moving from the classic stack starts from what
//! runs today. Every pgbouncer setting is either written in pgherd's terms
//! or listed in the notes with the reason it is not.
//!
//! The classic layout puts haproxy in front of a pgbouncer on each host
//! (haproxy's servers are `host:6432`) and pgbouncer in front of the
//! PostgreSQL on that host (`host=localhost port=5433`). pgherd talks to
//! PostgreSQL itself, so its nodes are haproxy's hosts with PostgreSQL's
//! port from pgbouncer; the notes say when that was done.

pub mod haproxy;
pub mod ini;

use std::fmt::Write as _;

use ini::Entry;

/// The sources, as read by the caller.
pub struct Sources<'a> {
    /// pgbouncer.ini's name (for the notes) and text.
    pub pgbouncer: (&'a str, &'a str),
    /// The text of a `%include`d file or of the auth_file, by path.
    pub read: &'a dyn Fn(&str) -> Result<String, String>,
    /// Each haproxy.cfg: name and text.
    pub haproxy: Vec<(&'a str, &'a str)>,
}

impl std::fmt::Debug for Sources<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let haproxy: Vec<&str> = self.haproxy.iter().map(|(n, _)| *n).collect();
        f.debug_struct("Sources")
            .field("pgbouncer", &self.pgbouncer.0)
            .field("haproxy", &haproxy)
            .finish_non_exhaustive()
    }
}

/// The configuration and what the reader should know about it.
#[derive(Debug)]
pub struct Imported {
    pub toml: String,
    pub notes: Vec<String>,
}

/// How a pgbouncer setting pgherd shares is written.
#[derive(Clone, Copy)]
enum Kind {
    Int,
    Seconds,
    Millis,
    Bool,
    Text,
    List,
}

/// pgbouncer settings pgherd has under the same name and meaning.
const SAME: &[(&str, Kind)] = &[
    ("max_client_conn", Kind::Int),
    ("default_pool_size", Kind::Int),
    ("min_pool_size", Kind::Int),
    ("reserve_pool_size", Kind::Int),
    ("reserve_pool_timeout", Kind::Seconds),
    ("max_db_connections", Kind::Int),
    ("max_user_connections", Kind::Int),
    ("server_reset_query", Kind::Text),
    ("server_reset_query_always", Kind::Bool),
    ("server_check_delay", Kind::Seconds),
    ("server_check_query", Kind::Text),
    ("server_lifetime", Kind::Seconds),
    ("server_idle_timeout", Kind::Seconds),
    ("server_connect_timeout", Kind::Seconds),
    ("server_login_retry", Kind::Seconds),
    ("client_login_timeout", Kind::Seconds),
    ("query_timeout", Kind::Seconds),
    ("query_wait_timeout", Kind::Seconds),
    ("client_idle_timeout", Kind::Seconds),
    ("idle_transaction_timeout", Kind::Seconds),
    ("log_connections", Kind::Bool),
    ("log_disconnections", Kind::Bool),
    ("log_stats", Kind::Bool),
    ("stats_period", Kind::Seconds),
    ("auth_user", Kind::Text),
    ("auth_query", Kind::Text),
    ("auth_dbname", Kind::Text),
    ("auth_hba_file", Kind::Text),
    ("admin_users", Kind::List),
    ("stats_users", Kind::List),
    ("ignore_startup_parameters", Kind::List),
    ("track_extra_parameters", Kind::List),
    ("application_name_add_host", Kind::Bool),
    ("max_packet_size", Kind::Int),
    ("listen_backlog", Kind::Int),
    ("unix_socket_dir", Kind::Text),
    ("unix_socket_mode", Kind::Text),
    ("unix_socket_group", Kind::Text),
    ("so_reuseport", Kind::Bool),
    ("peer_id", Kind::Int),
    ("tcp_keepalive", Kind::Bool),
    ("tcp_keepidle", Kind::Seconds),
    ("tcp_keepintvl", Kind::Seconds),
    ("tcp_keepcnt", Kind::Int),
    ("tcp_user_timeout", Kind::Millis),
    ("max_prepared_statements", Kind::Int),
    ("client_tls_sslmode", Kind::Text),
    ("client_tls_key_file", Kind::Text),
    ("client_tls_cert_file", Kind::Text),
    ("client_tls_ca_file", Kind::Text),
    ("client_tls_protocols", Kind::Text),
    ("server_tls_sslmode", Kind::Text),
    ("server_tls_key_file", Kind::Text),
    ("server_tls_cert_file", Kind::Text),
    ("server_tls_ca_file", Kind::Text),
    ("server_tls_protocols", Kind::Text),
];

/// pgbouncer settings pgherd has no use for, and why.
const NOT_NEEDED: &[(&str, &str)] = &[
    (
        "logfile",
        "pgherd logs to standard error: journald (or the container runtime) keeps it",
    ),
    (
        "pidfile",
        "systemd tracks pgherd's process (deploy/pgherd.service)",
    ),
    (
        "user",
        "run pgherd as its own user with systemd's User= (deploy/pgherd.service)",
    ),
    (
        "syslog",
        "pgherd logs to standard error; journald forwards to syslog",
    ),
    (
        "syslog_ident",
        "pgherd logs to standard error; journald forwards to syslog",
    ),
    (
        "syslog_facility",
        "pgherd logs to standard error; journald forwards to syslog",
    ),
    ("verbose", "set PGHERD_LOG=debug instead"),
    (
        "server_round_robin",
        "pgherd spreads reads over standbys itself (replica_balance)",
    ),
    (
        "dns_max_ttl",
        "node host names are resolved at each connection",
    ),
    (
        "dns_nxdomain_ttl",
        "node host names are resolved at each connection",
    ),
    (
        "dns_zone_check_period",
        "node host names are resolved at each connection",
    ),
    (
        "autodb_idle_timeout",
        "pgherd's `*` database entry keeps no per-database state to time out",
    ),
    (
        "server_fast_close",
        "pgherd closes servers of a RECONNECTed database as soon as they are idle",
    ),
];

/// pgherd's name for pgbouncer's `auth_type`, or `None` when it has none.
fn auth_type(value: &str) -> Option<&'static str> {
    Some(match value {
        "trust" | "any" => "trust",
        "md5" => "md5",
        "scram-sha-256" => "scram-sha-256",
        "plain" => "plain",
        "hba" => "hba",
        "peer" => "peer",
        _ => return None,
    })
}

/// `s` as a TOML string, escaped as TOML itself writes it.
fn quote(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn toml_value(kind: Kind, value: &str) -> Option<String> {
    let number = |v: &str| v.parse::<f64>().ok();
    Some(match kind {
        Kind::Int => value.parse::<u64>().ok()?.to_string(),
        Kind::Seconds => {
            let n = number(value)?;
            if n.fract() == 0.0 {
                format!("{n:.0}")
            } else {
                n.to_string()
            }
        }
        Kind::Millis => (number(value)? / 1000.0).to_string(),
        Kind::Bool => match value {
            "1" | "yes" | "on" | "true" => "true".into(),
            "0" | "no" | "off" | "false" => "false".into(),
            _ => return None,
        },
        Kind::Text => quote(value),
        Kind::List => {
            let items: Vec<String> = value
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(quote)
                .collect();
            format!("[{}]", items.join(", "))
        }
    })
}

/// The role a haproxy frontend plays, from its names and its backend.
fn read_only(frontend: &haproxy::Proxy, backend: Option<&haproxy::Proxy>) -> bool {
    let words = ["ro", "read", "replica", "slave", "standby"];
    let named = |name: &str| {
        let name = name.to_ascii_lowercase();
        name.split(|c: char| !c.is_ascii_alphanumeric())
            .any(|w| words.contains(&w))
    };
    if named(&frontend.name) || backend.is_some_and(|b| named(&b.name)) {
        return true;
    }
    // One server (a master check): read-write; several in turn: reads.
    backend.is_some_and(|b| b.servers.iter().filter(|s| !s.backup).count() > 1)
}

/// The `"user" "secret"` lines of a pgbouncer userlist.txt.
fn userlist(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let mut quoted = l.split('"').skip(1).step_by(2);
            Some((quoted.next()?.to_owned(), quoted.next()?.to_owned()))
        })
        .collect()
}

/// Turns `sources` into a pgherd configuration.
pub fn import(sources: &Sources<'_>) -> Result<Imported, String> {
    let (name, text) = sources.pgbouncer;
    let entries = ini::parse(name, text, sources.read)?;
    let mut notes = Vec::new();
    let mut general = String::new();
    let setting = |section: &str, key: &str| -> Option<&Entry> {
        entries
            .iter()
            .rev()
            .find(|e| e.section == section && e.key == key)
    };

    // Where clients connect: haproxy's frontends if given, else pgbouncer's.
    let proxies: Vec<(&str, Vec<haproxy::Proxy>)> = sources
        .haproxy
        .iter()
        .map(|(n, t)| (*n, haproxy::parse(t)))
        .collect();
    let mut read_write: Option<u16> = None;
    let mut read_only_ports: Vec<u16> = Vec::new();
    let mut servers: Vec<(haproxy::Server, bool)> = Vec::new();
    let mut checks: Vec<(String, String)> = Vec::new();
    for (file, ps) in &proxies {
        for f in ps
            .iter()
            .filter(|p| p.kind != "backend" && !p.ports.is_empty())
        {
            let backend = match &f.default_backend {
                Some(b) => ps.iter().find(|p| p.kind == "backend" && &p.name == b),
                None => Some(f),
            };
            let Some(b) = backend.filter(|b| !b.servers.is_empty()) else {
                notes.push(format!(
                    "{file}: frontend {} has no servers behind it (a stats page?): skipped; pgherd's is the admin port",
                    f.name
                ));
                continue;
            };
            let ro = read_only(f, Some(b));
            notes.push(format!(
                "{file}: frontend {} (port {}) read as {} ({}{})",
                f.name,
                f.ports[0],
                if ro {
                    "read-only: the standbys"
                } else {
                    "read-write: the primary"
                },
                match &b.balance {
                    Some(balance) => format!("balance {balance}, "),
                    None => String::new(),
                },
                format_args!("{} server(s)", b.servers.len())
            ));
            if ro {
                read_only_ports.extend(&f.ports);
            } else if read_write.is_none() {
                read_write = f.ports.first().copied();
            }
            for s in &b.servers {
                servers.push((s.clone(), ro));
            }
            checks.extend(b.checks.iter().cloned());
        }
    }

    // The listeners.
    let pgbouncer_port = setting("pgbouncer", "listen_port").map(|e| e.value.clone());
    let pgbouncer_addr = setting("pgbouncer", "listen_addr")
        .map(|e| e.value.clone())
        .unwrap_or_else(|| "127.0.0.1".into());
    let bind = |addr: &str| {
        if addr == "*" {
            "0.0.0.0".to_owned()
        } else {
            addr.to_owned()
        }
    };
    let listen_port = match read_write {
        Some(p) => {
            notes.push(format!(
                "listen_addr takes haproxy's read-write port {p}: applications connect where they did"
            ));
            p.to_string()
        }
        None => pgbouncer_port.clone().unwrap_or_else(|| "6432".into()),
    };
    let _ = writeln!(
        general,
        "# Where applications connect (was haproxy's read-write frontend, or pgbouncer's listen_addr/listen_port).\nlisten_addr = {}",
        quote(&format!("{}:{listen_port}", bind(pgbouncer_addr.split(',').next().unwrap_or("*").trim())))
    );
    read_only_ports.sort_unstable();
    read_only_ports.dedup();
    let mut listeners = String::new();
    for p in read_only_ports {
        let port = if Some(p) == read_write {
            let moved = p + 1;
            notes.push(format!(
                "the read-only frontend also listened on {p} (on other hosts): here it is {moved}, beside the read-write port"
            ));
            moved
        } else {
            p
        };
        let _ = writeln!(
            listeners,
            "\n# Was haproxy's read-only frontend: reads over the standbys.\n[[listeners]]\naddr = \"0.0.0.0:{port}\"\ntarget = \"replica\""
        );
    }

    // The auth_file's secrets, for [users] entries (pgherd's [users] entry
    // for a user replaces the auth_file's, so it needs the secret too).
    let secrets: Vec<(String, String)> = setting("pgbouncer", "auth_file")
        .and_then(|e| (sources.read)(&e.value).ok())
        .map(|text| userlist(&text))
        .unwrap_or_default();

    // pgbouncer's settings.
    let mut databases = String::new();
    let mut users_section = String::new();
    let mut peers = String::new();
    let mut db_ports: Vec<(String, u16)> = Vec::new();
    for e in &entries {
        match e.section.as_str() {
            "pgbouncer" => {
                let key = e.key.as_str();
                if let Some((_, kind)) = SAME.iter().find(|(k, _)| *k == key) {
                    match toml_value(*kind, &e.value) {
                        Some(v) => {
                            let _ = writeln!(general, "{key} = {v}    # {}", e.at);
                        }
                        None => notes.push(format!(
                            "{}: {key} = {}: not understood, not mapped",
                            e.at, e.value
                        )),
                    }
                } else if let Some((_, why)) = NOT_NEEDED.iter().find(|(k, _)| *k == key) {
                    notes.push(format!("{}: {key}: not mapped: {why}", e.at));
                } else {
                    match key {
                        "listen_addr" | "listen_port" => {}
                        "pool_mode" => match e.value.as_str() {
                            "session" | "transaction" => {
                                let _ = writeln!(general, "pool_mode = {}    # {}", quote(&e.value), e.at);
                            }
                            other => notes.push(format!(
                                "{}: pool_mode = {other}: pgherd pools by session or transaction; statement mode (no multi-statement transactions) is not offered: left at session",
                                e.at
                            )),
                        },
                        "auth_type" => match auth_type(&e.value) {
                            Some(t) => {
                                let _ = writeln!(general, "auth_type = {}    # {}", quote(t), e.at);
                            }
                            None => notes.push(format!(
                                "{}: auth_type = {}: not available in pgherd (trust, md5, scram-sha-256, plain, peer, hba are): left at scram-sha-256",
                                e.at, e.value
                            )),
                        },
                        "auth_file" => match (sources.read)(&e.value) {
                            Ok(_) => {
                                let _ = writeln!(general, "auth_file = {}    # {} (pgherd reads userlist.txt as it is)", quote(&e.value), e.at);
                            }
                            Err(why) => {
                                let _ = writeln!(general, "#auth_file = {}    # {}: could not be read here", quote(&e.value), e.at);
                                notes.push(format!(
                                    "{}: auth_file {}: could not be read here ({why}): copy it to the pgherd host and uncomment auth_file",
                                    e.at, e.value
                                ));
                            }
                        },
                        _ => notes.push(format!("{}: {key}: not mapped: pgherd has no such setting", e.at)),
                    }
                }
            }
            "databases" => {
                let mut fields = Vec::new();
                for (k, v) in ini::connstr(&e.value) {
                    match k.as_str() {
                        "dbname" | "user" | "password" => {
                            fields.push(format!("{k} = {}", quote(&v)))
                        }
                        "pool_size" | "min_pool_size" | "max_db_connections" => {
                            fields.push(format!("{k} = {v}"))
                        }
                        "reserve_pool" | "reserve_pool_size" => {
                            fields.push(format!("reserve_pool = {v}"))
                        }
                        "pool_mode" if v == "session" || v == "transaction" => {
                            fields.push(format!("pool_mode = {}", quote(&v)));
                        }
                        "host" => {}
                        "port" => {
                            if let Ok(p) = v.parse() {
                                db_ports.push((e.key.clone(), p));
                            }
                        }
                        other => {
                            notes.push(format!("{}: database {}: {other} not mapped", e.at, e.key))
                        }
                    }
                }
                let name = if e.key == "*" {
                    quote("*")
                } else {
                    quote(&e.key)
                };
                let _ = writeln!(
                    databases,
                    "{name} = {{ {} }}    # {}",
                    fields.join(", "),
                    e.at
                );
            }
            "users" => {
                let mut fields = Vec::new();
                for (k, v) in ini::connstr(&e.value) {
                    match k.as_str() {
                        "pool_mode" => fields.push(format!("pool_mode = {}", quote(&v))),
                        "max_user_connections" => {
                            fields.push(format!("max_user_connections = {v}"))
                        }
                        other => {
                            notes.push(format!("{}: user {}: {other} not mapped", e.at, e.key))
                        }
                    }
                }
                if !fields.is_empty() {
                    match secrets.iter().find(|(u, _)| *u == e.key) {
                        Some((_, secret)) => {
                            fields.insert(0, format!("password = {}", quote(secret)))
                        }
                        None => notes.push(format!(
                            "{}: user {}: not in the auth_file: give it a password in [users]",
                            e.at, e.key
                        )),
                    }
                    let _ = writeln!(
                        users_section,
                        "{} = {{ {} }}    # {}",
                        quote(&e.key),
                        fields.join(", "),
                        e.at
                    );
                }
            }
            "peers" => {
                let mut fields = Vec::new();
                for (k, v) in ini::connstr(&e.value) {
                    match k.as_str() {
                        "host" => fields.push(format!("host = {}", quote(&v))),
                        "port" => fields.push(format!("port = {v}")),
                        other => {
                            notes.push(format!("{}: peer {}: {other} not mapped", e.at, e.key))
                        }
                    }
                }
                let _ = writeln!(
                    peers,
                    "{} = {{ {} }}    # {}",
                    e.key,
                    fields.join(", "),
                    e.at
                );
            }
            other => notes.push(format!("{}: [{other}] {}: not mapped", e.at, e.key)),
        }
    }

    // Probes from haproxy's checks.
    let check = |k: &str| {
        checks
            .iter()
            .rev()
            .find(|(c, _)| c == k)
            .map(|(_, v)| v.clone())
    };
    if let Some(inter) = check("inter").and_then(|v| haproxy::seconds(&v)) {
        let _ = writeln!(general, "probe_interval = {inter}    # haproxy's inter");
    }
    for (k, ours) in [("rise", "probe_rise"), ("fall", "probe_fall")] {
        if let Some(v) = check(k).and_then(|v| v.parse::<u32>().ok()) {
            let _ = writeln!(general, "{ours} = {v}    # haproxy's {k}");
        }
    }
    let _ = writeln!(
        general,
        "# pgherd's own SQL probes replace pgsqlchk: a role that may read the\n\
         # replication state (CREATE ROLE pgherd_probe LOGIN PASSWORD '...' IN ROLE pg_monitor).\n\
         probe_user = \"pgherd_probe\"\n#probe_password = \"...\""
    );
    notes.push("probe_user = pgherd_probe: create that role on the primary (IN ROLE pg_monitor) and set probe_password".into());

    // The nodes: haproxy's hosts, with PostgreSQL's port from pgbouncer.
    let pg_port = {
        let mut ports: Vec<u16> = db_ports.iter().map(|(_, p)| *p).collect();
        ports.sort_unstable();
        ports.dedup();
        match ports.as_slice() {
            [one] => Some(*one),
            [] => None,
            _ => {
                notes.push(format!("[databases] use several ports ({ports:?}): the nodes take the first; check each"));
                ports.first().copied()
            }
        }
    };
    let mut nodes = String::new();
    let mut seen: Vec<String> = Vec::new();
    for (s, _) in &servers {
        if seen.contains(&s.host) {
            continue;
        }
        seen.push(s.host.clone());
        let port = match (s.port, pg_port) {
            (Some(p), Some(pg)) if Some(p.to_string()) == pgbouncer_port => {
                notes.push(format!(
                    "node {}: haproxy pointed at the pgbouncer on {}:{p}; pgherd talks to PostgreSQL there, on pgbouncer's database port {pg}",
                    s.name, s.host
                ));
                pg
            }
            (Some(p), _) => p,
            (None, _) => pg_port.unwrap_or(5432),
        };
        let _ = write!(
            nodes,
            "\n[[nodes]]\nname = {}\nhost = {}\nport = {port}\n",
            quote(&s.name),
            quote(&s.host)
        );
        if let Some(w) = s
            .weight
            .filter(|_| servers.iter().any(|(o, _)| o.weight != s.weight))
        {
            let _ = writeln!(nodes, "weight = {w}");
        }
        if s.backup {
            let _ = writeln!(nodes, "priority = 50    # haproxy backup server");
        }
    }
    if servers.is_empty() {
        let _ = write!(
            nodes,
            "\n# List every PostgreSQL node of the cluster (pgbouncer knew only its own):\n[[nodes]]\nname = \"node1\"\nhost = \"localhost\"\nport = {}\n",
            pg_port.unwrap_or(5432)
        );
        notes.push(
            "no haproxy.cfg: one node from pgbouncer's [databases]; add the cluster's other nodes"
                .into(),
        );
    }

    let mut toml = String::from(
        "# Made by `pgherd import` from the files named below; check it with\n\
         # `pgherd check -c FILE`. Every option: config/pgherd.toml.\n\n[pgherd]\n",
    );
    toml.push_str(&general);
    toml.push_str(&listeners);
    toml.push_str(&nodes);
    toml.push_str("\n[databases]\n");
    toml.push_str(&databases);
    toml.push_str("\n[users]\n");
    toml.push_str(&users_section);
    if !peers.is_empty() {
        toml.push_str("\n[peers]\n");
        toml.push_str(&peers);
    }
    Ok(Imported { toml, notes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_text_is_quoted_so_toml_reads_it_back() {
        for text in [
            "plain",
            "a \"quoted\" word",
            "back\\slash",
            "tab\tand\nnewline",
            "ünï",
        ] {
            let line = format!("v = {}", quote(text));
            let read: toml::Table = toml::from_str(&line).unwrap();
            assert_eq!(read["v"].as_str(), Some(text), "{line}");
        }
    }
}
