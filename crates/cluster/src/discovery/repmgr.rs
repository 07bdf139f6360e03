//! repmgr's node list: `repmgr.nodes`, which `repmgr primary register` and
//! `repmgr standby register` fill and repmgr keeps up to date through
//! promotions, follows and `repmgr standby unregister`. It is replicated,
//! so any node can answer; the primary is asked first (its copy is the one
//! repmgr writes).

use std::sync::Mutex;

use pgherd_config::{Node, Probe};

use super::Listing;
use crate::event::Role;
use crate::members::{Member, Source};
use crate::probe::ProbeTarget;
use crate::topology::Topology;

/// The columns discovery needs, in text (the simple protocol).
const NODES_SQL: &str =
    "SELECT node_name, conninfo, type, active::text FROM repmgr.nodes ORDER BY node_id";

/// Reads `repmgr.nodes` as the probe user, in `repmgr_database`.
#[derive(Debug)]
pub(crate) struct Repmgr {
    probe: Probe,
    tls: pgherd_tls::ServerTls,
    database: String,
    /// The session of the last reading, kept for the next one while it
    /// is to the node asked first: a reading every `discovery_interval`
    /// (and more often during a failover) does not log in each time.
    kept: Mutex<Option<Kept>>,
}

/// A session to the node whose address it names.
#[derive(Debug)]
struct Kept {
    address: (String, u16),
    client: tokio_postgres::Client,
}

impl Repmgr {
    pub(crate) fn new(probe: Probe, tls: pgherd_tls::ServerTls, database: String) -> Repmgr {
        Repmgr {
            probe,
            tls,
            database,
            kept: Mutex::new(None),
        }
    }

    /// The node list from the first node that answers: the primary, then
    /// the others in slot order.
    pub(crate) async fn read(&self, topology: &Topology) -> Result<Listing, String> {
        let mut order: Vec<&Node> = Vec::new();
        if let Some(p) = topology.primary {
            order.push(&topology.nodes[p].node);
        }
        for (i, n) in topology.members() {
            if Some(i) != topology.primary {
                order.push(&n.node);
            }
        }
        let address = |n: &Node| (n.host.clone(), n.port);
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner()).take();
        let first = order.first().map(|n| address(n));
        if let Some(kept) = kept.filter(|k| Some(&k.address) == first.as_ref()) {
            let read = tokio::time::timeout(self.probe.timeout, rows(&kept.client)).await;
            if let Ok(Ok(rows)) = read {
                *self.kept.lock().unwrap_or_else(|e| e.into_inner()) = Some(kept);
                return Ok(listing(&rows));
            }
            // Gone or hung: dropped, and a new session is opened below.
        }
        let mut failures = Vec::new();
        for node in order {
            let target = ProbeTarget::new(node, &self.probe, &self.tls)
                .in_database(&self.database, "pgherd discovery");
            let read = tokio::time::timeout(self.probe.timeout, async {
                let client = target.connect().await?;
                let rows = rows(&client).await?;
                Ok::<_, String>((client, rows))
            });
            match read.await {
                Ok(Ok((client, rows))) => {
                    let address = address(node);
                    *self.kept.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(Kept { address, client });
                    return Ok(listing(&rows));
                }
                Ok(Err(e)) => failures.push(format!("{}: {e}", node.name)),
                Err(_) => failures.push(format!("{}: timed out", node.name)),
            }
        }
        Err(format!(
            "no node answered for repmgr.nodes ({})",
            failures.join("; ")
        ))
    }
}

/// One row of `repmgr.nodes`: name, conninfo, type, active.
type Row = [String; 4];

async fn rows(client: &tokio_postgres::Client) -> Result<Vec<Row>, String> {
    let messages = client
        .simple_query(NODES_SQL)
        .await
        .map_err(|e| crate::probe::describe(&e))?;
    Ok(messages
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                let col = |i: usize| r.get(i).unwrap_or_default().to_owned();
                Some([col(0), col(1), col(2), col(3)])
            }
            _ => None,
        })
        .collect())
}

/// The members `rows` list: active primaries and standbys whose conninfo
/// names a TCP host. The others are skipped, each with the reason.
fn listing(rows: &[Row]) -> Listing {
    let mut out = Listing::default();
    for [name, conninfo, kind, active] in rows {
        let role = match kind.as_str() {
            "primary" => Role::Primary,
            "standby" => Role::Standby,
            other => {
                out.skipped.push((
                    name.clone(),
                    format!("a {other} node holds no data to serve"),
                ));
                continue;
            }
        };
        if active != "true" {
            out.skipped
                .push((name.clone(), "inactive in repmgr.nodes".into()));
            continue;
        }
        match super::tcp_address(conninfo) {
            Ok((host, port)) => {
                out.members.push(Member {
                    node: Node::at(name.clone(), host, port),
                    source: Source::Repmgr,
                });
                out.roles.push((name.clone(), role));
            }
            Err(why) => out.skipped.push((name.clone(), why)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, conninfo: &str, kind: &str, active: bool) -> Row {
        [
            name.into(),
            conninfo.into(),
            kind.into(),
            active.to_string(),
        ]
    }

    #[test]
    fn active_data_nodes_with_a_tcp_host_are_members() {
        let l = listing(&[
            row(
                "node1",
                "host=10.1.1.195 user=repmgr dbname=repmgr connect_timeout=2",
                "primary",
                true,
            ),
            row(
                "node2",
                "host='10.1.1.196' port=5433 user=repmgr",
                "standby",
                true,
            ),
            row(
                "node3",
                "postgresql://repmgr@10.1.1.197:5434/repmgr",
                "standby",
                true,
            ),
            row("old", "host=10.1.1.198", "standby", false),
            row("witness", "host=10.1.1.199", "witness", true),
            row(
                "local",
                "host=/var/run/postgresql port=5432",
                "standby",
                true,
            ),
        ]);
        let members: Vec<(&str, &str, u16)> = (l.members.iter())
            .map(|m| (m.node.name.as_str(), m.node.host.as_str(), m.node.port))
            .collect();
        assert_eq!(
            members,
            [
                ("node1", "10.1.1.195", 5432),
                ("node2", "10.1.1.196", 5433),
                ("node3", "10.1.1.197", 5434)
            ]
        );
        assert!(l.members.iter().all(|m| m.source == Source::Repmgr));
        assert_eq!(l.roles[0], ("node1".into(), Role::Primary));
        let skipped: Vec<&str> = l.skipped.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(skipped, ["old", "witness", "local"]);
        assert!(l.skipped[2].1.contains("Unix socket"), "{:?}", l.skipped);
    }
}
