//! Which node a session goes to, from the cluster topology.
//!
//! * `primary`: the one primary the topology elected (never a fenced node).
//!   While there is none — a failover in progress — the client waits up to
//!   `primary_wait_timeout` for one, then gets 57P03 naming each node's state.
//! * `replica`: a standby that is up, not fenced, within `max_replica_lag`
//!   and streaming — or, during a failover, orphaned within
//!   `replica_orphan_timeout` (see `pgherd_cluster::topology`) —
//!   (`replica_balance`: round robin or least
//!   connections); when none is usable, the primary if `replica_fallback` is
//!   on, else 57P03.
//! * `auto`: per transaction, one of the two (see `classify`); reads of a
//!   client that just wrote only go to a standby known to have replayed its
//!   write: one whose probed replay position is at least the primary's WAL
//!   position at a probe that *started after* the write completed. Until
//!   the probes show that (about two `probe_interval`s), the primary serves
//!   them. No extra query is run for this.
//!
//! A node that fails when pgherd connects to it triggers an immediate
//! re-probe of the whole cluster, and is not tried again for this client
//! until the topology has been refreshed.

use std::sync::atomic::Ordering;
use std::time::Instant;

use pgherd_cluster::Topology;
use pgherd_config::{Config, Target};
use pgherd_wire::backend::ErrorFields;
use pgherd_wire::sqlstate;

use crate::balance::{choose, Candidate};
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

impl<T> Attempt<T> {
    /// The same outcome, with `f` applied to a usable connection.
    pub(crate) fn map<U>(self, f: impl FnOnce(T) -> U) -> Attempt<U> {
        match self {
            Attempt::Usable(t) => Attempt::Usable(f(t)),
            Attempt::Unusable(why) => Attempt::Unusable(why),
            Attempt::Refused(fields) => Attempt::Refused(fields),
        }
    }
}

/// A node that failed during this client's attempt, and the topology
/// version it failed under.
struct Failure {
    node: usize,
    why: String,
    version: u64,
}

/// What a session or transaction needs from a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Want {
    /// The primary.
    Primary,
    /// A standby; if none is usable, the primary when `fallback`, else
    /// 57P03. `wrote_at`: the client's last transaction on the primary
    /// ended then, and the standby must have replayed it.
    Standby {
        fallback: bool,
        wrote_at: Option<Instant>,
        /// Take the standby whose turn it is without using the turn up:
        /// a transaction-mode login only borrows a server for its welcome,
        /// and its first query should get the same turn (otherwise, with
        /// two standbys, every one-query client would read from the same).
        peek: bool,
    },
}

impl Want {
    /// Where a `target` database's session goes (`auto` decides per
    /// transaction; this is its choice for the first server, the welcome).
    pub(crate) fn of(target: Target, replica_fallback: bool) -> Want {
        match target {
            Target::Primary | Target::Auto => Want::Primary,
            Target::Replica => Want::Standby {
                fallback: replica_fallback,
                wrote_at: None,
                peek: false,
            },
        }
    }
}

/// Connects to a node for `want`, trying further nodes as the topology allows.
/// `config` is the session's (see `Shared::config`).
pub(crate) async fn connect<T, F, Fut>(
    shared: &Shared,
    config: &Config,
    want: Want,
    attempt: F,
) -> Result<T, ErrorFields>
where
    F: Fn(usize, Target) -> Fut,
    Fut: std::future::Future<Output = Attempt<T>>,
{
    let general = &config.general;
    // Read the clock only when there is something to wait for: the common
    // case (a primary known, or a standby) never needs it.
    let mut deadline: Option<tokio::time::Instant> = None;
    let mut failures: Vec<Failure> = Vec::new();
    let no_primary = |t: &Topology, failures: &[Failure], what: &str| {
        no_node_error("pgherd: no primary node is available", t, failures).with_hint(format!(
            "{what} for primary_wait_timeout ({}s)",
            general.primary_wait_timeout.as_secs_f64()
        ))
    };
    loop {
        let standby = match want {
            Want::Standby { wrote_at, peek, .. } => {
                pick_standby(shared, config, &failures, wrote_at, peek)
            }
            Want::Primary => None,
        };
        let node = match standby {
            Some(node) => node,
            None if matches!(
                want,
                Want::Standby {
                    fallback: false,
                    ..
                }
            ) =>
            {
                return Err(no_node_error(
                    "pgherd: no standby can serve reads",
                    &shared.cluster.topology(),
                    &failures,
                ))
            }
            None => {
                let usable = |t: &Topology| {
                    t.primary.filter(|&p| {
                        !failures
                            .iter()
                            .any(|f| f.node == p && f.version >= t.version)
                    })
                };
                // The common case, nothing failed yet and a primary known:
                // no clock read. After a failure the deadline applies.
                let now_usable = failures
                    .is_empty()
                    .then(|| shared.cluster.pick_now(usable))
                    .flatten();
                let primary = match now_usable {
                    Some(p) => Ok(p),
                    None => {
                        let now = tokio::time::Instant::now();
                        if deadline.is_none() {
                            shared.cluster.count_held();
                        }
                        let deadline = *deadline.get_or_insert(now + general.primary_wait_timeout);
                        let remaining = deadline.saturating_duration_since(now);
                        if remaining.is_zero() && !failures.is_empty() {
                            // The primary the probes see keeps failing for
                            // this client: primary_wait_timeout bounds the
                            // retries too.
                            let t = shared.cluster.topology();
                            shared.cluster.count_failed();
                            return Err(no_primary(
                                &t,
                                &failures,
                                "kept failing to connect to a primary",
                            ));
                        }
                        shared.cluster.wait_for(remaining, usable).await
                    }
                };
                match primary {
                    Ok(p) => p,
                    Err(t) => {
                        shared.cluster.count_failed();
                        return Err(no_primary(&t, &failures, "waited for a primary"));
                    }
                }
            }
        };
        let target = match standby {
            Some(_) => Target::Replica,
            None => Target::Primary,
        };
        match attempt(node, target).await {
            Attempt::Usable(t) => return Ok(t),
            Attempt::Refused(fields) => return Err(fields),
            Attempt::Unusable(why) => {
                tracing::info!(node = %config.nodes[node].name, "cannot use node: {why}");
                // Not retried until a topology newer than this one (read
                // after the failure: at worst one probe more is awaited).
                let version = shared.cluster.topology().version;
                shared.cluster.request_probe();
                failures.push(Failure { node, why, version });
            }
        }
    }
}

/// The node [`connect`] tries first for `want`, with its target, when one
/// is known without waiting: the primary, or a standby to read from.
/// `None` when `connect` would wait or fall back. A standby's round-robin
/// turn is only looked at: [`turn_taken`] takes it once the node is used,
/// so a pick that is not used leaves `connect` the same choice.
pub(crate) fn pick_now(shared: &Shared, config: &Config, want: Want) -> Option<(usize, Target)> {
    match want {
        Want::Standby { wrote_at, .. } => {
            pick_standby(shared, config, &[], wrote_at, true).map(|n| (n, Target::Replica))
        }
        Want::Primary => shared.cluster.primary_now().map(|p| (p, Target::Primary)),
    }
}

/// After [`pick_now`]'s node was used: the round-robin turn moves on, as
/// after [`connect`]'s own pick.
pub(crate) fn turn_taken(shared: &Shared, want: Want) {
    if let Want::Standby { peek: false, .. } = want {
        shared.round_robin.fetch_add(1, Ordering::Relaxed);
    }
}

/// The next standby that may serve reads, has not failed for this client
/// and (when it wrote at `wrote_at`) has replayed the client's write.
fn pick_standby(
    shared: &Shared,
    config: &Config,
    failures: &[Failure],
    wrote_at: Option<Instant>,
    peek: bool,
) -> Option<usize> {
    let topology = shared.cluster.topology();
    let replayed = match wrote_at {
        None => 0,
        Some(t) => match replayed_after(&topology, t) {
            Replayed::AtLeast(lsn) => lsn,
            Replayed::NotYetKnown => return None,
            // No primary to read from either (a failover): any standby.
            Replayed::NoPrimary => 0,
        },
    };
    let nodes = &config.nodes;
    let candidates = topology
        .nodes
        .iter()
        .enumerate()
        .filter(|(i, n)| {
            n.serves_reads()
                && !shared.node_is_drained(*i)
                && !failures.iter().any(|f| f.node == *i)
                && n.last_sample
                    .as_ref()
                    .and_then(|s| s.replay_lsn)
                    .unwrap_or(0)
                    >= replayed
        })
        .map(|(i, _)| Candidate {
            node: i,
            weight: nodes[i].weight,
            priority: nodes[i].priority,
            load: shared.node_load(i),
        });
    let turn = if peek {
        shared.round_robin.load(Ordering::Relaxed)
    } else {
        shared.round_robin.fetch_add(1, Ordering::Relaxed)
    };
    choose(
        candidates,
        config.general.replica_balance,
        turn,
        topology.nodes.len(),
    )
}

/// What the probes say about a write that completed at some instant.
#[derive(Debug, PartialEq, Eq)]
enum Replayed {
    /// A standby replayed it if its replay position is at least this.
    AtLeast(u64),
    /// The primary has not been probed since.
    NotYetKnown,
    NoPrimary,
}

fn replayed_after(topology: &Topology, wrote_at: Instant) -> Replayed {
    let Some(primary) = topology.primary else {
        return Replayed::NoPrimary;
    };
    let sample = topology.nodes[primary].last_sample.as_ref();
    match sample.and_then(|s| Some((s.started?, s.current_lsn?))) {
        Some((started, lsn)) if started > wrote_at => Replayed::AtLeast(lsn),
        _ => Replayed::NotYetKnown,
    }
}

fn no_node_error(message: &str, topology: &Topology, failures: &[Failure]) -> ErrorFields {
    let mut detail = topology.describe();
    for f in failures {
        detail.push_str(&format!(
            "; connecting to {} failed: {}",
            topology.nodes[f.node].name, f.why
        ));
    }
    ErrorFields::fatal(sqlstate::CANNOT_CONNECT_NOW, message).with_detail(detail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgherd_cluster::topology::{NodeStatus, ProbeSample, Role};
    use std::time::Duration;

    fn topology(primary_probe_started: Option<Instant>) -> Topology {
        let sample = ProbeSample {
            in_recovery: false,
            current_lsn: Some(1000),
            receive_lsn: None,
            replay_lsn: None,
            replay_age: None,
            timeline: Some(1),
            wal_receiver: None,
            system_identifier: Some(1),
            duration: Duration::ZERO,
            started: primary_probe_started,
        };
        Topology {
            nodes: vec![NodeStatus {
                name: "pg0".into(),
                up: true,
                role: Role::Primary,
                fenced: false,
                timeline: Some(1),
                lag_bytes: None,
                lag_seconds: None,
                lag_ok: true,
                old_timeline: false,
                streamed_until: None,
                orphaned: false,
                last_sample: Some(sample),
                last_error: None,
            }],
            primary: Some(0),
            split_brain: false,
            version: 1,
        }
    }

    #[test]
    fn a_write_is_located_by_the_first_primary_probe_after_it() {
        let wrote_at = Instant::now();
        let before = wrote_at - Duration::from_millis(10);
        let after = wrote_at + Duration::from_millis(10);
        assert_eq!(
            replayed_after(&topology(Some(before)), wrote_at),
            Replayed::NotYetKnown,
            "a probe from before the write says nothing about it"
        );
        assert_eq!(
            replayed_after(&topology(Some(after)), wrote_at),
            Replayed::AtLeast(1000)
        );
        assert_eq!(
            replayed_after(&topology(None), wrote_at),
            Replayed::NotYetKnown
        );
        let mut none = topology(Some(after));
        none.primary = None;
        assert_eq!(replayed_after(&none, wrote_at), Replayed::NoPrimary);
    }
}
