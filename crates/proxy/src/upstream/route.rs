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

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use pgherd_cluster::{Cluster, Topology, NODE_SLOTS};
use pgherd_config::{Config, Target};
use pgherd_wire::backend::ErrorFields;
use pgherd_wire::sqlstate;

use crate::counters;
use crate::upstream::balance::{choose, Candidate};

/// What routing decisions read and write: the cluster as probed, the
/// round-robin turn, each node's servers in use and drain switch, and the
/// count of decisions taken.
#[derive(Debug)]
pub(crate) struct Routing {
    /// Probes and topology: where sessions may go.
    pub(crate) cluster: Cluster,
    /// Spreads `replica` sessions over the standbys.
    round_robin: AtomicUsize,
    /// Server connections in use (checked out) on each node, for `leastconn`.
    node_load: Vec<AtomicUsize>,
    /// Nodes an administrator drained: no new reads.
    node_drained: Vec<AtomicBool>,
    pub(crate) counters: RoutingCounters,
}

impl Routing {
    /// Routing over `cluster`'s nodes (every slot it may ever use: see
    /// `pgherd_cluster::members`), all undrained and unloaded. Nodes'
    /// weights and priorities are read from the topology, so a RELOAD
    /// changes them for every session's next pick.
    pub(crate) fn new(cluster: Cluster) -> Routing {
        Routing {
            cluster,
            round_robin: AtomicUsize::new(0),
            node_load: (0..NODE_SLOTS).map(|_| AtomicUsize::new(0)).collect(),
            node_drained: (0..NODE_SLOTS).map(|_| AtomicBool::new(false)).collect(),
            counters: RoutingCounters::default(),
        }
    }

    fn node_load(&self, node: usize) -> usize {
        self.node_load[node].load(Ordering::Relaxed)
    }

    /// Counts a server connection on `node` as in use until the lease drops.
    pub(crate) fn lease(&self, node: usize) -> NodeLease<'_> {
        self.node_load[node].fetch_add(1, Ordering::Relaxed);
        NodeLease(&self.node_load[node])
    }

    pub(crate) fn node_is_drained(&self, i: usize) -> bool {
        self.node_drained[i].load(Ordering::Relaxed)
    }

    /// An administrator's drain switch (no new reads on node `i`).
    pub(crate) fn set_node_drained(&self, i: usize, drained: bool) {
        self.node_drained[i].store(drained, Ordering::Relaxed);
    }
}

/// A server connection in use on a node (see [`Routing::lease`]).
pub(crate) struct NodeLease<'a>(&'a AtomicUsize);

impl Drop for NodeLease<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

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

/// One client's search for a node for `want`: the node to try next (its
/// caller takes a server there), and the nodes that failed it. Routing
/// decides where; the caller decides what trying means.
pub(crate) struct NodeSearch<'a> {
    routing: &'a Routing,
    /// The session's (see `crate::settings`).
    config: &'a Config,
    want: Want,
    failures: Vec<Failure>,
    /// Set when the search first has to wait for a primary: the clock is
    /// read only then, never in the common case.
    deadline: Option<tokio::time::Instant>,
}

impl<'a> NodeSearch<'a> {
    pub(crate) fn new(routing: &'a Routing, config: &'a Config, want: Want) -> NodeSearch<'a> {
        NodeSearch {
            routing,
            config,
            want,
            failures: Vec::new(),
            deadline: None,
        }
    }

    /// The next node to try and the target it serves as: a standby to
    /// read from, else (when allowed) the primary, waiting up to
    /// `primary_wait_timeout` for one during a failover. An error names
    /// every node's state and what failed.
    pub(crate) async fn next(&mut self) -> Result<(usize, Target), ErrorFields> {
        let routing = self.routing;
        if let Want::Standby { wrote_at, peek, .. } = self.want {
            if let Some(node) = pick_standby(routing, self.config, &self.failures, wrote_at, peek) {
                return Ok((node, Target::Replica));
            }
        }
        if let Want::Standby {
            fallback: false, ..
        } = self.want
        {
            return Err(no_node_error(
                "pgherd: no standby can serve reads",
                &routing.cluster.topology(),
                &self.failures,
            ));
        }
        let failures = &self.failures;
        let usable = |t: &Topology| {
            t.primary.filter(|&p| {
                !failures
                    .iter()
                    .any(|f| f.node == p && f.version >= t.version)
            })
        };
        // The common case, nothing failed yet and a primary known: no
        // clock read. After a failure the deadline applies.
        if failures.is_empty() {
            if let Some(p) = routing.cluster.pick_now(usable) {
                return Ok((p, Target::Primary));
            }
        }
        let now = tokio::time::Instant::now();
        if self.deadline.is_none() {
            routing.cluster.count_held();
        }
        let wait = self.config.general.primary_wait_timeout;
        let deadline = *self.deadline.get_or_insert(now + wait);
        let remaining = deadline.saturating_duration_since(now);
        if remaining.is_zero() && !failures.is_empty() {
            // The primary the probes see keeps failing for this client:
            // primary_wait_timeout bounds the retries too.
            routing.cluster.count_failed();
            let t = routing.cluster.topology();
            return Err(self.no_primary(&t, "kept failing to connect to a primary"));
        }
        match routing.cluster.wait_for(remaining, usable).await {
            Ok(p) => Ok((p, Target::Primary)),
            Err(t) => {
                routing.cluster.count_failed();
                Err(self.no_primary(&t, "waited for a primary"))
            }
        }
    }

    /// What trying the node [`NodeSearch::next`] gave came to: the
    /// search's end (a server, or a refusal that holds for every node), or
    /// `None` to try the next node. A node that could not be used is not
    /// tried again until a topology newer than this one (read after the
    /// failure: at worst one probe more is awaited), and the nodes are
    /// probed at once.
    pub(crate) fn settle<T>(
        &mut self,
        node: usize,
        attempt: Attempt<T>,
    ) -> Option<Result<T, ErrorFields>> {
        let why = match attempt {
            Attempt::Usable(t) => return Some(Ok(t)),
            Attempt::Refused(fields) => return Some(Err(fields)),
            Attempt::Unusable(why) => why,
        };
        let topology = self.routing.cluster.topology();
        let name = topology.nodes.get(node).map_or("", |n| n.name.as_str());
        tracing::info!(node = %name, "cannot use node: {why}");
        let version = topology.version;
        self.routing.cluster.request_probe();
        self.failures.push(Failure { node, why, version });
        None
    }

    fn no_primary(&self, t: &Topology, what: &str) -> ErrorFields {
        no_node_error("pgherd: no primary node is available", t, &self.failures).with_hint(format!(
            "{what} for primary_wait_timeout ({}s)",
            self.config.general.primary_wait_timeout.as_secs_f64()
        ))
    }
}

/// The node a search would try first for `want`, when one is known
/// without waiting: the primary, or a standby to read from. A standby's
/// round-robin turn is only looked at; [`Pick::taken`] takes it once the
/// node is used, so a pick that is not used changes nothing.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pick {
    pub(crate) node: usize,
    pub(crate) target: Target,
    want: Want,
}

impl Routing {
    pub(crate) fn pick_now(&self, config: &Config, want: Want) -> Option<Pick> {
        let (node, target) = match want {
            Want::Standby { wrote_at, .. } => (
                pick_standby(self, config, &[], wrote_at, true)?,
                Target::Replica,
            ),
            Want::Primary => (self.cluster.primary_now()?, Target::Primary),
        };
        Some(Pick { node, target, want })
    }
}

impl Pick {
    /// The picked node was used: the round-robin turn moves on, as after a
    /// search's own pick.
    pub(crate) fn taken(self, routing: &Routing) {
        if let Want::Standby { peek: false, .. } = self.want {
            routing.round_robin.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The next standby that may serve reads, has not failed for this client
/// and (when it wrote at `wrote_at`) has replayed the client's write.
fn pick_standby(
    routing: &Routing,
    config: &Config,
    failures: &[Failure],
    wrote_at: Option<Instant>,
    peek: bool,
) -> Option<usize> {
    let topology = routing.cluster.topology();
    let replayed = match wrote_at {
        None => 0,
        Some(t) => match replayed_after(&topology, t) {
            Replayed::AtLeast(lsn) => lsn,
            Replayed::NotYetKnown => return None,
            // No primary to read from either (a failover): any standby.
            Replayed::NoPrimary => 0,
        },
    };
    let candidates = topology
        .nodes
        .iter()
        .enumerate()
        .filter(|(i, n)| {
            n.serves_reads()
                && !routing.node_is_drained(*i)
                && !failures.iter().any(|f| f.node == *i)
                && n.last_sample
                    .as_ref()
                    .and_then(|s| s.replay_lsn)
                    .unwrap_or(0)
                    >= replayed
        })
        .map(|(i, n)| Candidate {
            node: i,
            weight: n.node.weight,
            priority: n.node.priority,
            load: routing.node_load(i),
        });
    let turn = if peek {
        routing.round_robin.load(Ordering::Relaxed)
    } else {
        routing.round_robin.fetch_add(1, Ordering::Relaxed)
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

/// Where sessions (session mode) and transactions (transaction mode) went.
/// Counted per runtime thread ([`counters`]): one is added per transaction.
#[derive(Debug, Default)]
pub(crate) struct RoutingCounters(counters::Sharded<RoutingCounts>);

#[derive(Debug, Default)]
struct RoutingCounts {
    primary: AtomicU64,
    standby: AtomicU64,
    fallback: AtomicU64,
    read_only_retries: AtomicU64,
    gone_retries: AtomicU64,
}

/// Routing decisions so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoutingTotals {
    /// Sent to the primary because they wanted it.
    pub primary: u64,
    /// Sent to a standby.
    pub standby: u64,
    /// Wanted a standby, got the primary (none usable, or read-your-writes).
    pub fallback: u64,
    /// Reads a standby refused as writes (25006), run again on the primary.
    pub read_only_retries: u64,
    /// Requests whose server left before running them (a shutdown, a
    /// switchover), run again on another server.
    pub gone_retries: u64,
}

impl RoutingCounters {
    pub(crate) fn count(&self, want: Want, on_standby: bool) {
        let local = self.0.local();
        let c = local.counters;
        let counter = match (want, on_standby) {
            (_, true) => &c.standby,
            (Want::Primary, false) => &c.primary,
            (Want::Standby { .. }, false) => &c.fallback,
        };
        local.add(counter, 1);
    }

    pub(crate) fn read_only_retried(&self) {
        let local = self.0.local();
        local.add(&local.counters.read_only_retries, 1);
    }

    pub(crate) fn gone_retried(&self) {
        let local = self.0.local();
        local.add(&local.counters.gone_retries, 1);
    }

    pub(crate) fn totals(&self) -> RoutingTotals {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        self.0
            .copies()
            .fold(RoutingTotals::default(), |t, c| RoutingTotals {
                primary: t.primary + get(&c.primary),
                standby: t.standby + get(&c.standby),
                fallback: t.fallback + get(&c.fallback),
                read_only_retries: t.read_only_retries + get(&c.read_only_retries),
                gone_retries: t.gone_retries + get(&c.gone_retries),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgherd_cluster::topology::{NodeStatus, ProbeSample};
    use pgherd_cluster::Role;
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
                up: true,
                role: Role::Primary,
                timeline: Some(1),
                lag_ok: true,
                last_sample: Some(sample),
                ..NodeStatus::new(pgherd_cluster::Member::configured(pgherd_config::Node {
                    name: "pg0".into(),
                    host: "127.0.0.1".into(),
                    port: 5432,
                    weight: 100,
                    priority: 0,
                }))
            }],
            authority: None,
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
