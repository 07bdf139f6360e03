//! Nodes from the cluster manager (`discovery = "repmgr"` or `"patroni"`):
//! every `discovery_interval` the manager's member list is read and handed
//! to the cluster as that source's members (see [`crate::members`]), so a
//! standby the manager registers is probed and joins reads with no edit of
//! pgherd's configuration, and one it drops leaves.
//!
//! The manager says which nodes exist; pgherd's probes still say what
//! each one is. Where the manager's role for a node and the probes' differ
//! in two readings in a row (one reading may fall in the middle of a
//! failover), that is an event (`manager_disagrees`, then
//! `manager_agrees`) and a metric, never an override. A manager that cannot
//! be read changes nothing: the last list stands (`discovery_failed`, then
//! `discovery_recovered`).

pub(crate) mod patroni;
pub(crate) mod repmgr;

use std::collections::BTreeMap;
use std::time::SystemTime;

use crate::event::{ClusterEvent, Role};
use crate::members::{Member, Source};
use crate::topology::Topology;

/// What a manager lists.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Listing {
    pub(crate) members: Vec<Member>,
    /// The role the manager gives each member, by its name there.
    pub(crate) roles: Vec<(String, Role)>,
    /// Nodes it lists that cannot be members, each with the reason.
    pub(crate) skipped: Vec<(String, String)>,
    /// The member it names as the one primary.
    pub(crate) leader: Option<String>,
    /// Its leader is the fencing authority (see `topology::Authority`).
    pub(crate) authority: bool,
}

/// A node the manager and the probes see in different roles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disagreement {
    pub node: String,
    pub manager_says: Role,
    pub probes_say: Role,
}

/// How discovery is doing, for metrics and the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryStatus {
    pub manager: Source,
    /// When the manager's list was last read.
    pub last_read: Option<SystemTime>,
    /// Why the last reading failed, while it does.
    pub last_error: Option<String>,
    /// Readings that failed since start.
    pub failures: u64,
    /// Nodes whose roles differ, as last reported.
    pub disagreements: Vec<Disagreement>,
}

/// The manager discovery reads.
#[derive(Debug)]
pub(crate) enum Reader {
    Repmgr(Box<repmgr::Repmgr>),
    Patroni(patroni::Patroni),
}

impl Reader {
    /// The reader `config`'s `discovery` asks for, if any, or why it
    /// cannot be made (a CA file that does not load).
    pub(crate) fn new(
        config: &pgherd_config::Config,
        tls: &pgherd_tls::ServerTls,
    ) -> Result<Option<Reader>, String> {
        let g = &config.general;
        match g.discovery {
            pgherd_config::Discovery::None => Ok(None),
            pgherd_config::Discovery::Repmgr => Ok(Some(Reader::Repmgr(Box::new(
                repmgr::Repmgr::new(g.probe(), tls.clone(), g.repmgr_database.clone()),
            )))),
            pgherd_config::Discovery::Patroni => {
                let urls = |list: &[String], path: &str| -> Vec<pgherd_http::Endpoint> {
                    (list.iter())
                        .filter_map(|u| {
                            let url = format!("{}{path}", u.trim_end_matches('/'));
                            pgherd_http::Endpoint::parse(&url)
                                .map_err(|why| tracing::error!("{u:?}: {why}"))
                                .ok()
                        })
                        .collect()
                };
                let timeout = g.probe_timeout;
                let (etcd, rest) = (&g.patroni_etcd_urls, &g.patroni_urls);
                let https = etcd.iter().chain(rest).any(|u| u.starts_with("https://"));
                let tls = match https {
                    false => None,
                    true => {
                        let ca = (g.discovery_ca_file.as_deref())
                            .unwrap_or(std::path::Path::new(pgherd_config::SYSTEM_CA_BUNDLE));
                        let connector = pgherd_tls::https_connector(ca)
                            .map_err(|e| format!("discovery_ca_file {}: {e}", ca.display()))?;
                        Some(connector)
                    }
                };
                Ok(Some(Reader::Patroni(if etcd.is_empty() {
                    patroni::Patroni::Rest {
                        urls: urls(rest, "/cluster"),
                        timeout,
                        tls,
                    }
                } else {
                    // Patroni's own key layout: /<namespace>/<scope>/...
                    let namespace = g.patroni_namespace.trim_matches('/');
                    let prefix = match namespace {
                        "" => format!("/{}/", g.patroni_scope),
                        ns => format!("/{ns}/{}/", g.patroni_scope),
                    };
                    patroni::Patroni::Etcd {
                        urls: urls(etcd, "/v3/kv/range"),
                        prefix,
                        timeout,
                        tls,
                    }
                })))
            }
        }
    }

    pub(crate) fn source(&self) -> Source {
        match self {
            Reader::Repmgr(_) => Source::Repmgr,
            Reader::Patroni(_) => Source::Patroni,
        }
    }

    pub(crate) async fn read(&self, topology: &Topology) -> Result<Listing, String> {
        match self {
            Reader::Repmgr(r) => r.read(topology).await,
            Reader::Patroni(p) => p.read(topology).await,
        }
    }
}

/// What `pgherd check` shows: the members the manager lists now, merged
/// with `config`'s nodes as a running pgherd would (`None` when
/// `discovery` is off), or why the manager cannot be read.
pub async fn members_now(
    config: &pgherd_config::Config,
    tls: &pgherd_tls::ServerTls,
) -> Option<(Source, Result<Vec<Member>, String>)> {
    let reader = match Reader::new(config, tls) {
        Ok(reader) => reader?,
        Err(why) => return Some((Source::Patroni, Err(why))),
    };
    let configured: Vec<Member> = (config.nodes.iter().cloned())
        .map(Member::configured)
        .collect();
    // Nothing probed yet: the manager is asked through the configured nodes.
    let topology = Topology::unprobed(configured.clone());
    let listing = reader.read(&topology).await;
    let members = listing.map(|l| crate::members::merge(&configured, &l.members));
    Some((reader.source(), members))
}

/// The TCP host and port of a libpq conninfo (`key=value` or URI form, as
/// repmgr's `conninfo` and Patroni's `conn_url` give them).
pub(crate) fn tcp_address(conninfo: &str) -> Result<(String, u16), String> {
    let config: tokio_postgres::Config = conninfo
        .parse()
        .map_err(|e| format!("its conninfo cannot be read: {e}"))?;
    let port = config.get_ports().first().copied().unwrap_or(5432);
    match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => Ok((host.clone(), port)),
        Some(tokio_postgres::config::Host::Unix(dir)) => Err(format!(
            "its conninfo names a Unix socket ({}), which pgherd cannot reach: give it a host",
            dir.display()
        )),
        None => Err("its conninfo names no host".into()),
    }
}

/// The nodes the manager and the probes see in different roles: listed
/// members the probes have seen up in a known role, matched by address.
pub(crate) fn disagreements(topology: &Topology, listing: &Listing) -> Vec<Disagreement> {
    let mut out = Vec::new();
    for (name, says) in &listing.roles {
        let Some(m) = listing.members.iter().find(|m| m.node.name == *name) else {
            continue;
        };
        let probed = topology
            .members()
            .find(|(_, n)| n.node.host == m.node.host && n.node.port == m.node.port);
        let Some((_, n)) = probed else { continue };
        if n.up && n.role != Role::Unknown && n.role != *says {
            out.push(Disagreement {
                node: n.name.clone(),
                manager_says: *says,
                probes_say: n.role,
            });
        }
    }
    out
}

/// Which disagreements to report: those seen in two readings in a row.
#[derive(Debug, Default)]
pub(crate) struct Judge {
    /// Seen in the last reading.
    seen: BTreeMap<String, Disagreement>,
    /// Reported and not resolved.
    pub(crate) reported: BTreeMap<String, Disagreement>,
}

impl Judge {
    pub(crate) fn next(&mut self, manager: Source, found: Vec<Disagreement>) -> Vec<ClusterEvent> {
        let now: BTreeMap<String, Disagreement> =
            found.into_iter().map(|d| (d.node.clone(), d)).collect();
        let mut events = Vec::new();
        for (node, d) in &now {
            let twice = self.seen.get(node) == Some(d);
            if twice && self.reported.get(node) != Some(d) {
                self.reported.insert(node.clone(), d.clone());
                events.push(ClusterEvent::ManagerDisagrees {
                    node: node.clone(),
                    manager,
                    manager_says: d.manager_says,
                    probes_say: d.probes_say,
                });
            }
        }
        let resolved: Vec<String> = (self.reported.keys())
            .filter(|n| !now.contains_key(*n))
            .cloned()
            .collect();
        for node in resolved {
            self.reported.remove(&node);
            events.push(ClusterEvent::ManagerAgrees { node, manager });
        }
        self.seen = now;
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(node: &str, says: Role, probes: Role) -> Disagreement {
        Disagreement {
            node: node.into(),
            manager_says: says,
            probes_say: probes,
        }
    }

    #[test]
    fn a_disagreement_is_reported_when_it_lasts_two_readings_and_ended_once() {
        let mut j = Judge::default();
        let pg1 = d("pg1", Role::Primary, Role::Standby);
        assert!(j.next(Source::Repmgr, vec![pg1.clone()]).is_empty(), "once");
        let events = j.next(Source::Repmgr, vec![pg1.clone()]);
        assert_eq!(
            events,
            [ClusterEvent::ManagerDisagrees {
                node: "pg1".into(),
                manager: Source::Repmgr,
                manager_says: Role::Primary,
                probes_say: Role::Standby
            }]
        );
        assert!(j.next(Source::Repmgr, vec![pg1]).is_empty(), "said once");
        assert_eq!(
            j.next(Source::Repmgr, Vec::new()),
            [ClusterEvent::ManagerAgrees {
                node: "pg1".into(),
                manager: Source::Repmgr
            }]
        );
        // A blip during a failover: never reported.
        let pg2 = d("pg2", Role::Standby, Role::Primary);
        assert!(j.next(Source::Repmgr, vec![pg2]).is_empty());
        assert!(j.next(Source::Repmgr, Vec::new()).is_empty());
    }

    #[test]
    fn an_https_manager_needs_a_ca_file_that_loads() {
        let config = pgherd_config::Config::parse(
            "[pgherd]\nprobe_user = \"p\"\ndiscovery = \"patroni\"\n\
             patroni_urls = [\"https://10.0.0.1:8008\"]\n\
             discovery_ca_file = \"/nonexistent/ca.crt\"\n\
             [[nodes]]\nname = \"a\"\nhost = \"h\"\n",
        )
        .unwrap();
        let tls = pgherd_tls::Contexts::new(&config.general).unwrap();
        let err = Reader::new(&config, &tls.server).unwrap_err();
        assert!(
            err.contains("discovery_ca_file /nonexistent/ca.crt"),
            "{err}"
        );
    }

    #[test]
    fn conninfos_give_tcp_addresses_or_say_why_not() {
        assert_eq!(
            tcp_address("host=10.0.0.1 port=5433 user=repmgr"),
            Ok(("10.0.0.1".into(), 5433))
        );
        assert_eq!(
            tcp_address("postgres://10.0.0.2/postgres"),
            Ok(("10.0.0.2".into(), 5432))
        );
        assert!(tcp_address("host=/var/run/postgresql")
            .unwrap_err()
            .contains("Unix socket"));
        assert!(tcp_address("host='unterminated")
            .unwrap_err()
            .contains("cannot be read"));
        assert!(tcp_address("user=x").unwrap_err().contains("no host"));
    }
}
