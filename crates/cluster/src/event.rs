//! What pgherd announces: [`ClusterEvent`]s, which the evaluator derives
//! from the probes, and [`ProxyEvent`]s, which the proxy raises about its
//! own pools, clients and life. Both travel on one broadcast channel as an
//! [`Event`], so the log, the stats page and every notifier see a single
//! ordered stream.

use std::time::Duration;

use crate::members::Source;

/// A node's role as last probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Never probed successfully.
    Unknown,
    Primary,
    Standby,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Unknown => "unknown",
            Role::Primary => "primary",
            Role::Standby => "standby",
        }
    }
}

/// Something that changed, for logs, notifiers and the admin side.
#[derive(Debug, Clone, PartialEq)]
pub enum ClusterEvent {
    NodeUp {
        node: String,
    },
    NodeDown {
        node: String,
        reason: String,
    },
    RoleChanged {
        node: String,
        from: Role,
        to: Role,
    },
    PrimaryChanged {
        from: Option<String>,
        to: Option<String>,
    },
    Fenced {
        node: String,
        reason: String,
    },
    Unfenced {
        node: String,
    },
    SplitBrainDetected {
        primaries: Vec<String>,
    },
    SplitBrainResolved,
    LagOverThreshold {
        node: String,
    },
    LagUnderThreshold {
        node: String,
    },
    /// A standby stopped streaming and serves reads as an orphan.
    Orphaned {
        node: String,
    },
    /// An orphaned standby stopped serving reads (timeout, or another
    /// standby streams) or streams again.
    OrphanEnded {
        node: String,
        serves_reads: bool,
    },
    /// A new primary after another: how long writes had nowhere to go,
    /// and what that did to clients (see [`Outage`]).
    Failover {
        from: String,
        to: String,
        without_primary: Duration,
        clients: Outage,
    },
    /// Still no primary, this long after the last one was lost (said at
    /// 10 s, 30 s, 1 min, 2 min, 5 min, then every 10 min).
    NoPrimary {
        without_primary: Duration,
    },
    /// The old primary of a failover streams from the new one: the
    /// switchover (or rejoin) is complete.
    Switchover {
        node: String,
        primary: String,
    },
    /// A node joined the cluster (a RELOAD, or discovery): it is probed,
    /// and routed to once its probes say so.
    NodeAdded {
        node: String,
        source: Source,
    },
    /// A node left: no new sessions go to it, its servers are drained.
    NodeRemoved {
        node: String,
        source: Source,
    },
    /// The cluster manager and the probes see a node in different roles
    /// (two readings in a row). The probes' view routes.
    ManagerDisagrees {
        node: String,
        manager: Source,
        manager_says: Role,
        probes_say: Role,
    },
    /// They agree again (or the node is no longer listed).
    ManagerAgrees {
        node: String,
        manager: Source,
    },
    /// The manager's node list cannot be read: the last one stands.
    DiscoveryFailed {
        manager: Source,
        reason: String,
    },
    /// It can be read again.
    DiscoveryRecovered {
        manager: Source,
    },
}

impl ClusterEvent {
    /// The node the event is about, when it is about one: for a change of
    /// primary or a failover, the new primary.
    pub fn node(&self) -> Option<&str> {
        match self {
            ClusterEvent::NodeUp { node }
            | ClusterEvent::NodeDown { node, .. }
            | ClusterEvent::RoleChanged { node, .. }
            | ClusterEvent::Fenced { node, .. }
            | ClusterEvent::Unfenced { node }
            | ClusterEvent::LagOverThreshold { node }
            | ClusterEvent::LagUnderThreshold { node }
            | ClusterEvent::Orphaned { node }
            | ClusterEvent::OrphanEnded { node, .. }
            | ClusterEvent::Switchover { node, .. }
            | ClusterEvent::NodeAdded { node, .. }
            | ClusterEvent::NodeRemoved { node, .. }
            | ClusterEvent::ManagerDisagrees { node, .. }
            | ClusterEvent::ManagerAgrees { node, .. } => Some(node),
            ClusterEvent::PrimaryChanged { to, .. } => to.as_deref(),
            ClusterEvent::Failover { to, .. } => Some(to),
            ClusterEvent::SplitBrainDetected { .. }
            | ClusterEvent::SplitBrainResolved
            | ClusterEvent::NoPrimary { .. }
            | ClusterEvent::DiscoveryFailed { .. }
            | ClusterEvent::DiscoveryRecovered { .. } => None,
        }
    }

    /// Good news or routine (logged at `info`), rather than something an
    /// operator should look at (`warn`).
    pub fn is_routine(&self) -> bool {
        matches!(
            self,
            ClusterEvent::LagOverThreshold { .. }
                | ClusterEvent::LagUnderThreshold { .. }
                | ClusterEvent::NodeAdded { .. }
                | ClusterEvent::ManagerAgrees { .. }
                | ClusterEvent::DiscoveryRecovered { .. }
                | ClusterEvent::OrphanEnded {
                    serves_reads: true,
                    ..
                }
        )
    }

    /// Its name in `[notify] events` and in notifications
    /// (`pgherd_config::NOTIFY_EVENTS`).
    pub fn kind(&self) -> &'static str {
        match self {
            ClusterEvent::NodeUp { .. } => "node_up",
            ClusterEvent::NodeDown { .. } => "node_down",
            ClusterEvent::RoleChanged { .. } => "role_changed",
            ClusterEvent::PrimaryChanged { .. } => "primary_changed",
            ClusterEvent::Fenced { .. } => "fenced",
            ClusterEvent::Unfenced { .. } => "unfenced",
            ClusterEvent::SplitBrainDetected { .. } => "split_brain",
            ClusterEvent::SplitBrainResolved => "split_brain_resolved",
            ClusterEvent::LagOverThreshold { .. } => "lag_over_threshold",
            ClusterEvent::LagUnderThreshold { .. } => "lag_under_threshold",
            ClusterEvent::Orphaned { .. } => "orphaned",
            ClusterEvent::OrphanEnded { .. } => "orphan_ended",
            ClusterEvent::Failover { .. } => "failover",
            ClusterEvent::NoPrimary { .. } => "no_primary",
            ClusterEvent::Switchover { .. } => "switchover",
            ClusterEvent::NodeAdded { .. } => "node_added",
            ClusterEvent::NodeRemoved { .. } => "node_removed",
            ClusterEvent::ManagerDisagrees { .. } => "manager_disagrees",
            ClusterEvent::ManagerAgrees { .. } => "manager_agrees",
            ClusterEvent::DiscoveryFailed { .. } => "discovery_failed",
            ClusterEvent::DiscoveryRecovered { .. } => "discovery_recovered",
        }
    }
}

impl std::fmt::Display for ClusterEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClusterEvent::NodeUp { node } => write!(f, "node {node} is up"),
            ClusterEvent::NodeDown { node, reason } => write!(f, "node {node} is down: {reason}"),
            ClusterEvent::RoleChanged { node, from, to } => {
                write!(
                    f,
                    "node {node} changed role: {} -> {}",
                    from.as_str(),
                    to.as_str()
                )
            }
            ClusterEvent::PrimaryChanged { from, to } => write!(
                f,
                "primary changed: {} -> {}",
                from.as_deref().unwrap_or("none"),
                to.as_deref().unwrap_or("none")
            ),
            ClusterEvent::Fenced { node, reason } => write!(f, "node {node} fenced: {reason}"),
            ClusterEvent::Unfenced { node } => write!(f, "node {node} no longer fenced"),
            ClusterEvent::SplitBrainDetected { primaries } => {
                write!(
                    f,
                    "split brain: {} all claim to be primary",
                    primaries.join(", ")
                )
            }
            ClusterEvent::SplitBrainResolved => write!(f, "split brain resolved"),
            ClusterEvent::LagOverThreshold { node } => {
                write!(f, "node {node} lags over max_replica_lag: no reads")
            }
            ClusterEvent::LagUnderThreshold { node } => {
                write!(f, "node {node} caught up: serves reads again")
            }
            ClusterEvent::Orphaned { node } => write!(
                f,
                "node {node} stopped streaming: serves reads for up to replica_orphan_timeout"
            ),
            ClusterEvent::OrphanEnded {
                node,
                serves_reads: true,
            } => write!(f, "node {node} streams again"),
            ClusterEvent::OrphanEnded {
                node,
                serves_reads: false,
            } => write!(f, "node {node} not streaming: no more reads"),
            ClusterEvent::Failover {
                from,
                to,
                without_primary,
                clients,
            } => write!(
                f,
                "failover: {from} -> {to} in {:.1} s (no primary for {:.1} s, \
                 {} transactions held, {} failed)",
                without_primary.as_secs_f64(),
                without_primary.as_secs_f64(),
                clients.held,
                clients.failed
            ),
            ClusterEvent::NoPrimary { without_primary } => write!(
                f,
                "no primary for {:.0} s: writes wait (primary_wait_timeout)",
                without_primary.as_secs_f64()
            ),
            ClusterEvent::Switchover { node, primary } => write!(
                f,
                "switchover: old primary {node} is now a standby of {primary}"
            ),
            ClusterEvent::NodeAdded { node, source } => {
                write!(f, "node {node} added (from {})", source.as_str())
            }
            ClusterEvent::NodeRemoved { node, source } => write!(
                f,
                "node {node} removed (was from {}): its servers are drained",
                source.as_str()
            ),
            ClusterEvent::ManagerDisagrees {
                node,
                manager,
                manager_says,
                probes_say,
            } => write!(
                f,
                "{} says node {node} is a {}, the probes find a {}: routing follows the probes",
                manager.as_str(),
                manager_says.as_str(),
                probes_say.as_str()
            ),
            ClusterEvent::ManagerAgrees { node, manager } => write!(
                f,
                "{} and the probes agree on node {node} again",
                manager.as_str()
            ),
            ClusterEvent::DiscoveryFailed { manager, reason } => write!(
                f,
                "cannot read {}'s node list, keeping the last one: {reason}",
                manager.as_str()
            ),
            ClusterEvent::DiscoveryRecovered { manager } => {
                write!(f, "{}'s node list can be read again", manager.as_str())
            }
        }
    }
}

/// What a failover did to clients, as the proxy counts it (see
/// `Cluster::count_held`): transactions that waited for the new primary,
/// and those that failed for want of one (their server lost, or no primary
/// within `primary_wait_timeout`), since the old primary was elected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outage {
    pub held: u64,
    pub failed: u64,
}

/// Something about pgherd itself rather than the nodes: its life, its
/// configuration, and pressure on its pools and logins.
#[derive(Debug, Clone, PartialEq)]
pub enum ProxyEvent {
    /// Listening and serving, on these addresses.
    Started { listeners: Vec<String> },
    /// Shutting down: the listeners are closed and `clients` still
    /// connected have until `shutdown_timeout` to finish.
    Draining { clients: usize },
    /// The drain is over; `cut_off` clients were still connected.
    Stopped { cut_off: usize },
    /// A RELOAD applied `applied`; `kept` differ but need a restart.
    ConfigReloaded {
        applied: Vec<String>,
        kept: Vec<String>,
    },
    /// `pool` (`database/user@node`) has had clients waiting for a server
    /// for `waited`, longer than `[notify] pool_saturated_after`.
    PoolSaturated {
        pool: String,
        waiting: usize,
        size: usize,
        waited: Duration,
    },
    /// No client waits in `pool` any more, after `saturated` of waiting.
    PoolRecovered { pool: String, saturated: Duration },
    /// Logins are being refused with 53300: `limit` clients are connected.
    ClientLimitReached { limit: usize },
    /// `failures` logins failed authentication within `window`, at least
    /// `[notify] login_failure_burst`.
    LoginFailureBurst { failures: u64, window: Duration },
}

impl ProxyEvent {
    /// Its name in `[notify] events` and in notifications.
    pub fn kind(&self) -> &'static str {
        match self {
            ProxyEvent::Started { .. } => "started",
            ProxyEvent::Draining { .. } => "draining",
            ProxyEvent::Stopped { .. } => "stopped",
            ProxyEvent::ConfigReloaded { .. } => "config_reloaded",
            ProxyEvent::PoolSaturated { .. } => "pool_saturated",
            ProxyEvent::PoolRecovered { .. } => "pool_recovered",
            ProxyEvent::ClientLimitReached { .. } => "max_client_conn",
            ProxyEvent::LoginFailureBurst { .. } => "login_failures",
        }
    }
}

impl std::fmt::Display for ProxyEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |items: &[String]| match items {
            [] => "nothing".to_owned(),
            items => items.join(", "),
        };
        match self {
            ProxyEvent::Started { listeners } => {
                write!(f, "started, listening on {}", listeners.join(", "))
            }
            ProxyEvent::Draining { clients } => write!(
                f,
                "shutting down: listeners closed, {clients} clients finishing"
            ),
            ProxyEvent::Stopped { cut_off: 0 } => write!(f, "stopped"),
            ProxyEvent::Stopped { cut_off } => write!(
                f,
                "stopped: {cut_off} clients still connected at shutdown_timeout were cut off"
            ),
            ProxyEvent::ConfigReloaded { applied, kept } if kept.is_empty() => {
                write!(f, "configuration reloaded; changed: {}", list(applied))
            }
            ProxyEvent::ConfigReloaded { applied, kept } => write!(
                f,
                "configuration reloaded; changed: {}; not applied until a restart: {}",
                list(applied),
                list(kept)
            ),
            ProxyEvent::PoolSaturated {
                pool,
                waiting,
                size,
                waited,
            } => write!(
                f,
                "pool {pool} saturated: clients waiting for a server for {:.0} s \
                 ({waiting} waiting, pool size {size})",
                waited.as_secs_f64()
            ),
            ProxyEvent::PoolRecovered { pool, saturated } => write!(
                f,
                "pool {pool} recovered: no client waits (saturated for {:.0} s)",
                saturated.as_secs_f64()
            ),
            ProxyEvent::ClientLimitReached { limit } => write!(
                f,
                "max_client_conn ({limit}) reached: new logins are refused with 53300"
            ),
            ProxyEvent::LoginFailureBurst { failures, window } => write!(
                f,
                "{failures} failed logins (wrong password or unknown user) in {:.0} s",
                window.as_secs_f64()
            ),
        }
    }
}

/// One announcement on the cluster's event channel.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Cluster(ClusterEvent),
    Proxy(ProxyEvent),
}

impl Event {
    /// Its name in `[notify] events` (`pgherd_config::NOTIFY_EVENTS`).
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Cluster(e) => e.kind(),
            Event::Proxy(e) => e.kind(),
        }
    }

    /// The node it is about, if any.
    pub fn node(&self) -> Option<&str> {
        match self {
            Event::Cluster(e) => e.node(),
            Event::Proxy(_) => None,
        }
    }
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::Cluster(e) => e.fmt(f),
            Event::Proxy(e) => e.fmt(f),
        }
    }
}
