//! Which node a session goes to, from the cluster topology.
//!
//! * `primary`: the one primary the topology elected (never a fenced node).
//!   While there is none — a failover in progress — the client waits up to
//!   `primary_wait_timeout` for one, then gets 57P03 naming each node's state.
//! * `replica`: a standby that is up, not fenced and within
//!   `max_replica_lag`, round robin; when none is usable, the primary if
//!   `replica_fallback` is on, else 57P03.
//!
//! A node that fails when pgherd connects to it triggers an immediate
//! re-probe of the whole cluster, and is not tried again for this client
//! until the topology has been refreshed.

use std::sync::atomic::Ordering;

use pgherd_cluster::Topology;
use pgherd_config::Target;
use pgherd_wire::backend::ErrorFields;

use crate::Shared;

/// What trying one node gave.
pub(crate) enum Attempt<T> {
    /// A server connection fit for the target.
    Usable(T),
    /// Unreachable, or not in the role the topology said: why.
    Unusable(String),
    /// The server refused this client (wrong database, password...): final.
    Refused(ErrorFields),
}

/// A node that failed during this client's attempt, and the topology
/// version it failed under.
struct Failure {
    node: usize,
    why: String,
    version: u64,
}

/// Connects to a node for `target`, trying further nodes as the topology allows.
pub(crate) async fn connect<T, F, Fut>(
    shared: &Shared,
    target: Target,
    attempt: F,
) -> Result<T, ErrorFields>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Attempt<T>>,
{
    let general = &shared.config().general;
    let deadline = tokio::time::Instant::now() + general.primary_wait_timeout;
    let mut failures: Vec<Failure> = Vec::new();
    loop {
        let standby = match target {
            Target::Replica => pick_standby(shared, &failures),
            Target::Primary => None,
        };
        let node = match standby {
            Some(node) => node,
            None if target == Target::Replica && !general.replica_fallback => {
                return Err(no_node_error(
                    "pgherd: no standby can serve reads",
                    &shared.cluster.topology(),
                    &failures,
                ))
            }
            None => {
                let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
                let primary = shared
                    .cluster
                    .wait_for(remaining, |t| {
                        t.primary.filter(|&p| {
                            !failures
                                .iter()
                                .any(|f| f.node == p && f.version >= t.version)
                        })
                    })
                    .await;
                match primary {
                    Ok(p) => p,
                    Err(t) => {
                        return Err(no_node_error(
                            "pgherd: no primary node is available",
                            &t,
                            &failures,
                        )
                        .with_hint(format!(
                            "waited primary_wait_timeout ({}s) for a primary",
                            general.primary_wait_timeout.as_secs_f64()
                        )))
                    }
                }
            }
        };
        match attempt(node).await {
            Attempt::Usable(t) => return Ok(t),
            Attempt::Refused(fields) => return Err(fields),
            Attempt::Unusable(why) => {
                tracing::info!(node = %shared.config().nodes[node].name, "cannot use node: {why}");
                // Not retried until a topology newer than this one (read
                // after the failure: at worst one probe more is awaited).
                let version = shared.cluster.topology().version;
                shared.cluster.request_probe();
                failures.push(Failure { node, why, version });
            }
        }
    }
}

/// The next standby that may serve reads and has not failed for this client.
fn pick_standby(shared: &Shared, failures: &[Failure]) -> Option<usize> {
    let topology = shared.cluster.topology();
    let candidates: Vec<usize> = topology
        .nodes
        .iter()
        .enumerate()
        .filter(|(i, n)| n.serves_reads() && !failures.iter().any(|f| f.node == *i))
        .map(|(i, _)| i)
        .collect();
    if candidates.is_empty() {
        return None;
    }
    let turn = shared.round_robin.fetch_add(1, Ordering::Relaxed);
    Some(candidates[turn % candidates.len()])
}

fn no_node_error(message: &str, topology: &Topology, failures: &[Failure]) -> ErrorFields {
    let mut detail = topology.describe();
    for f in failures {
        detail.push_str(&format!(
            "; connecting to {} failed: {}",
            topology.nodes[f.node].name, f.why
        ));
    }
    ErrorFields::fatal("57P03", message).with_detail(detail)
}
