//! Patroni's member list: `GET /cluster` on any member's REST API, which
//! answers from its DCS (the members' keys and the leader key). Tags are
//! respected: `noloadbalance` gives a member no reads (weight 0, as
//! Patroni's own `/replica?noloadbalance` health check does for haproxy);
//! `nofailover` is Patroni's business alone (pgherd never promotes).

use std::time::Duration;

use pgherd_config::Node;
use pgherd_http::Endpoint;
use serde::Deserialize;

use super::Listing;
use crate::event::Role;
use crate::members::Member;
use crate::topology::Topology;
use crate::Source;

/// Patroni's REST API port when `patroni_urls` does not say.
const DEFAULT_PORT: u16 = 8008;

/// The most of a `/cluster` answer read: a few hundred bytes per member.
const BODY_LIMIT: usize = 1 << 20;

/// Reads `/cluster` from the configured APIs, or from port 8008 of every
/// member.
#[derive(Debug)]
pub(crate) struct Patroni {
    pub(crate) urls: Vec<Endpoint>,
    pub(crate) timeout: Duration,
}

impl Patroni {
    /// The member list from the first API that answers.
    pub(crate) async fn read(&self, topology: &Topology) -> Result<Listing, String> {
        let derived: Vec<Endpoint>;
        let urls = if self.urls.is_empty() {
            derived = (topology.members())
                .filter_map(|(_, n)| {
                    Endpoint::parse(&format!("http://{}:{DEFAULT_PORT}/cluster", n.node.host)).ok()
                })
                .collect();
            &derived
        } else {
            &self.urls
        };
        let mut failures = Vec::new();
        for url in urls {
            let got = tokio::time::timeout(self.timeout, pgherd_http::get(url, None, BODY_LIMIT));
            let why = match got.await {
                Ok(Ok(reply)) if reply.status.is_success() => {
                    match serde_json::from_slice::<ClusterView>(&reply.body) {
                        Ok(view) => return Ok(listing(view)),
                        Err(e) => format!("not Patroni's /cluster: {e}"),
                    }
                }
                Ok(Ok(reply)) => format!("answered {}", reply.status),
                Ok(Err(e)) => e.to_string(),
                Err(_) => "timed out".into(),
            };
            failures.push(format!("{}: {why}", url.origin()));
        }
        Err(format!(
            "no Patroni REST API answered ({})",
            failures.join("; ")
        ))
    }
}

/// `GET /cluster`, as much of it as pgherd reads.
#[derive(Debug, Deserialize)]
struct ClusterView {
    members: Vec<MemberView>,
}

#[derive(Debug, Deserialize)]
struct MemberView {
    name: String,
    role: String,
    host: Option<String>,
    port: Option<u16>,
    #[serde(default)]
    tags: Tags,
}

#[derive(Debug, Default, Deserialize)]
struct Tags {
    #[serde(default)]
    noloadbalance: bool,
}

fn listing(view: ClusterView) -> Listing {
    let mut out = Listing::default();
    for m in view.members {
        let role = match m.role.as_str() {
            "leader" | "master" | "primary" => Role::Primary,
            _ => Role::Standby,
        };
        let Some(host) = m.host.filter(|h| !h.is_empty()) else {
            out.skipped
                .push((m.name, "Patroni gives it no host (is it running?)".into()));
            continue;
        };
        let mut node = Node::at(m.name.clone(), host, m.port.unwrap_or(5432));
        if m.tags.noloadbalance {
            node.weight = 0;
        }
        if role == Role::Primary {
            out.leader = Some(m.name.clone());
        }
        out.roles.push((m.name, role));
        out.members.push(Member {
            node,
            source: Source::Patroni,
        });
    }
    out.authority = true;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_roles_tags_and_the_leader_come_from_cluster() {
        let body = r#"{
            "members": [
                {"name": "pg0", "role": "leader", "state": "running",
                 "api_url": "http://127.0.0.1:8008/patroni", "host": "10.0.0.1", "port": 5432, "timeline": 3},
                {"name": "pg1", "role": "replica", "state": "streaming", "host": "10.0.0.2", "port": 5433,
                 "tags": {"noloadbalance": true, "nofailover": true}, "lag": 0},
                {"name": "pg2", "role": "sync_standby", "state": "streaming", "host": "10.0.0.3", "port": 5432},
                {"name": "pg3", "role": "replica", "state": "stopped"}
            ],
            "scope": "demo"
        }"#;
        let l = listing(serde_json::from_str(body).unwrap());
        let members: Vec<(&str, &str, u16, u32)> = (l.members.iter())
            .map(|m| {
                let n = &m.node;
                (n.name.as_str(), n.host.as_str(), n.port, n.weight)
            })
            .collect();
        assert_eq!(
            members,
            [
                ("pg0", "10.0.0.1", 5432, Node::DEFAULT_WEIGHT),
                ("pg1", "10.0.0.2", 5433, 0),
                ("pg2", "10.0.0.3", 5432, Node::DEFAULT_WEIGHT)
            ]
        );
        assert_eq!(l.leader.as_deref(), Some("pg0"));
        assert!(l.authority);
        assert_eq!(l.roles[2], ("pg2".into(), Role::Standby));
        assert_eq!(l.skipped.len(), 1);
    }

    #[test]
    fn a_cluster_without_a_leader_names_none() {
        let body = r#"{"members": [{"name": "pg1", "role": "replica", "host": "h", "port": 1}]}"#;
        let l = listing(serde_json::from_str(body).unwrap());
        assert_eq!(l.leader, None);
        assert!(l.authority, "no leader is an answer too: no writes");
    }
}
