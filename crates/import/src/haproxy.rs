//! The parts of a haproxy.cfg that describe a PostgreSQL setup: the TCP
//! frontends (their bind ports and backends) and the backends' servers
//! with their check settings.

/// A `frontend`, `backend` or `listen` section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Proxy {
    pub kind: String,
    pub name: String,
    /// Ports of its `bind` lines.
    pub ports: Vec<u16>,
    pub default_backend: Option<String>,
    pub balance: Option<String>,
    /// `default-server` and `server` check settings: `inter`, `rise`,
    /// `fall` (as written).
    pub checks: Vec<(String, String)>,
    pub servers: Vec<Server>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub name: String,
    pub host: String,
    pub port: Option<u16>,
    pub weight: Option<u32>,
    pub backup: bool,
}

/// Reads the proxies of `text`.
pub fn parse(text: &str) -> Vec<Proxy> {
    let mut proxies: Vec<Proxy> = Vec::new();
    for raw in text.lines() {
        let line = raw.split('#').next().unwrap_or_default().trim();
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some((&first, rest)) = words.split_first() else {
            continue;
        };
        match first {
            "frontend" | "backend" | "listen" => proxies.push(Proxy {
                kind: first.to_owned(),
                name: rest.first().copied().unwrap_or_default().to_owned(),
                ..Proxy::default()
            }),
            "global" | "defaults" | "resolvers" | "userlist" | "peers" => {
                // Settings pgherd does not need: ended by the next section.
                proxies.push(Proxy {
                    kind: first.to_owned(),
                    ..Proxy::default()
                });
            }
            _ => {
                let Some(p) = proxies.last_mut() else {
                    continue;
                };
                match first {
                    "bind" => p.ports.extend(rest.first().and_then(|a| port_of(a))),
                    "default_backend" | "use_backend" => {
                        p.default_backend = rest.first().map(|s| (*s).to_owned());
                    }
                    "balance" => p.balance = rest.first().map(|s| (*s).to_owned()),
                    "default-server" => p.checks.extend(options(rest)),
                    "server" => {
                        let (Some(name), Some(addr)) = (rest.first(), rest.get(1)) else {
                            continue;
                        };
                        let opts = options(&rest[2..]);
                        let find =
                            |k: &str| opts.iter().find(|(o, _)| o == k).map(|(_, v)| v.clone());
                        p.servers.push(Server {
                            name: (*name).to_owned(),
                            host: host_of(addr),
                            port: port_of(addr),
                            weight: find("weight").and_then(|w| w.parse().ok()),
                            backup: rest.contains(&"backup"),
                        });
                    }
                    _ => {}
                }
            }
        }
    }
    proxies.retain(|p| !p.name.is_empty());
    proxies
}

/// The `inter`, `rise` and `fall` settings among `words`.
fn options(words: &[&str]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for pair in words.windows(2) {
        if ["inter", "rise", "fall", "weight"].contains(&pair[0]) {
            out.push((pair[0].to_owned(), pair[1].to_owned()));
        }
    }
    out
}

fn port_of(addr: &str) -> Option<u16> {
    addr.rsplit_once(':')?.1.parse().ok()
}

fn host_of(addr: &str) -> String {
    match addr.rsplit_once(':') {
        Some((host, _)) => host.trim_matches(['[', ']']).to_owned(),
        None => addr.to_owned(),
    }
}

/// haproxy's time (`2s`, `500ms`, `2000`: milliseconds when bare) in seconds.
pub fn seconds(value: &str) -> Option<f64> {
    let (number, unit) = match value.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => value.split_at(i),
        None => (value, "ms"),
    };
    let n: f64 = number.parse().ok()?;
    Some(match unit {
        "us" => n / 1_000_000.0,
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frontends_backends_and_servers() {
        let cfg = "global\n  maxconn 20000\nfrontend rw\n  bind *:5432\n  default_backend pg\n\
                   backend pg\n  balance leastconn\n  default-server port 6432 inter 2s rise 3 fall 2\n\
                   server a 10.1.1.195:6432 check port 23267\n  server b 10.1.1.196:6432 check backup\n";
        let p = parse(cfg);
        assert_eq!(p.len(), 2);
        assert_eq!(
            (p[0].kind.as_str(), p[0].ports.as_slice()),
            ("frontend", &[5432][..])
        );
        assert_eq!(p[0].default_backend.as_deref(), Some("pg"));
        assert_eq!(p[1].servers[0].host, "10.1.1.195");
        assert!(p[1].servers[1].backup);
        assert!(p[1].checks.contains(&("inter".to_owned(), "2s".to_owned())));
        assert_eq!(seconds("2s"), Some(2.0));
        assert_eq!(seconds("500ms"), Some(0.5));
        assert_eq!(seconds("2000"), Some(2.0));
    }
}
