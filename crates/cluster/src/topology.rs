//! From probe results to a topology: node states, the one primary, fencing.
//!
//! This is the part of pgherd that decides where writes may go, so it is
//! pure (no I/O, no clock) and tested case by case. The rules:
//!
//! * **Up/down with hysteresis**, as haproxy's `rise`/`fall`: an up node goes
//!   down after `fall` consecutive failed probes, a down node comes up after
//!   `rise` consecutive good ones. A node's first probe decides directly, so a
//!   fresh pgherd serves at once.
//! * **Role** comes from the latest successful probe, without delay: a
//!   promotion is followed on the next probe.
//! * **Exactly one primary.** Of the up nodes that are not in recovery, only
//!   one on the highest timeline ever seen (by a primary, or by a standby of
//!   the same cluster receiving it) may take writes. A primary on a
//!   lower timeline (an old primary restarted after a failover) is *fenced*,
//!   even once the newer primary is down: its data has diverged. Two primaries
//!   on the same timeline is a split brain that cannot be resolved by
//!   looking: both are fenced and there is no primary until one goes away.
//!   A fenced node stays fenced while it is down: its last word was that it
//!   is a primary, and sessions pinned to it must not resume writing there.
//! * **Reads outlive the primary, for a while.** A standby serves reads
//!   while it streams from the primary on its timeline. One that stops
//!   streaming (its primary died; it is being re-pointed at a new one) is
//!   *orphaned*: it keeps serving reads while no other standby streams, for
//!   `replica_orphan_timeout` after the last probe that saw it streaming.
//!   That time also counts as replay delay against `max_replica_lag`. A
//!   failover manager takes seconds to promote (repmgrd's
//!   `reconnect_attempts × reconnect_interval`, Patroni's `ttl`): reads go
//!   on meanwhile, and stop, with the reason in the 57P03, once their data
//!   is too old to be worth serving.
//! * **The highest timeline survives restarts** when a state file is
//!   configured: the evaluator starts from the [`Remembered`] timeline of
//!   the cluster (its `system_identifier`), so an old primary that comes back
//!   while the new one is down is still fenced by a freshly started pgherd.
//!   A primary with another system identifier is another cluster (rebuilt
//!   with initdb): the remembered timeline no longer applies.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pgherd_config::Node;

use crate::event::{ClusterEvent, Outage, Role};
use crate::members::{self, Change, Member, Slot, Source};

/// One successful probe of one node.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeSample {
    pub in_recovery: bool,
    /// Current WAL position (bytes since 0/0) on a primary.
    pub current_lsn: Option<u64>,
    /// Last WAL received / replayed on a standby.
    pub receive_lsn: Option<u64>,
    pub replay_lsn: Option<u64>,
    /// Seconds since the last replayed transaction's commit, on a standby.
    pub replay_age: Option<f64>,
    /// The timeline the node writes (primary) or receives (standby).
    pub timeline: Option<u32>,
    /// `pg_stat_wal_receiver.status` on a standby (`streaming`...).
    pub wal_receiver: Option<String>,
    /// `pg_control_system().system_identifier`: the same on every node of
    /// one cluster (initdb's), kept across failovers and base backups.
    pub system_identifier: Option<u64>,
    /// How long the probe took.
    pub duration: Duration,
    /// When the probe's query was sent: its WAL positions are at least those
    /// of any commit that completed before (read-your-writes relies on it).
    pub started: Option<std::time::Instant>,
}

/// Everything known about one node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeStatus {
    pub name: String,
    /// Its address, read weight and priority.
    pub node: Arc<Node>,
    /// Where it came from.
    pub source: Source,
    /// It left the cluster (see [`crate::members`]): never routed to, not
    /// probed; its slot stays.
    pub removed: bool,
    pub up: bool,
    pub role: Role,
    /// A primary that must take no writes (lower timeline, or split brain).
    pub fenced: bool,
    pub timeline: Option<u32>,
    /// Bytes of WAL the node is behind the primary (standbys, when a primary is known).
    pub lag_bytes: Option<u64>,
    /// Replay delay in seconds (standbys).
    pub lag_seconds: Option<f64>,
    /// Lag within `max_replica_lag*`: may serve reads.
    pub lag_ok: bool,
    /// A standby on an older timeline than the primary's: it follows no
    /// primary, or a fenced one, and its data may have diverged.
    pub old_timeline: bool,
    /// A standby not streaming now: when a probe last saw it streaming on
    /// the primary's timeline (`None` while it streams, or if it never did).
    pub streamed_until: Option<Instant>,
    /// Not streaming, but serving reads (see the module's rules).
    pub orphaned: bool,
    pub last_sample: Option<ProbeSample>,
    pub last_error: Option<String>,
}

impl NodeStatus {
    /// A node not probed yet.
    pub fn new(member: Member) -> NodeStatus {
        NodeStatus {
            name: member.node.name.clone(),
            node: Arc::new(member.node),
            source: member.source,
            removed: false,
            up: false,
            role: Role::Unknown,
            fenced: false,
            timeline: None,
            lag_bytes: None,
            lag_seconds: None,
            lag_ok: false,
            old_timeline: false,
            streamed_until: None,
            orphaned: false,
            last_sample: None,
            last_error: None,
        }
    }

    /// Up, a standby streaming from a primary, not fenced and fresh enough:
    /// may serve reads. (A rejoining node serves reads once it streams.)
    pub fn serves_reads(&self) -> bool {
        self.up
            && !self.removed
            && self.role == Role::Standby
            && !self.fenced
            && self.lag_ok
            && (self.follows_primary() || self.orphaned)
    }

    /// Streaming, and on the primary's timeline (or the last one known).
    fn follows_primary(&self) -> bool {
        self.streaming() && !self.old_timeline
    }

    /// Its cluster's identifier, as last probed.
    pub fn system_identifier(&self) -> Option<u64> {
        self.last_sample.as_ref().and_then(|s| s.system_identifier)
    }

    /// The WAL receiver reports `streaming`.
    pub fn streaming(&self) -> bool {
        self.last_sample
            .as_ref()
            .and_then(|s| s.wal_receiver.as_deref())
            == Some("streaming")
    }

    /// A short description for error messages: `up, standby, lag 120 B`.
    pub fn describe(&self) -> String {
        if !self.up {
            return match &self.last_error {
                Some(e) => format!("down ({e})"),
                None => "down".into(),
            };
        }
        let mut s = self.role.as_str().to_owned();
        if self.fenced {
            s.push_str(", fenced");
        }
        if let Some(tl) = self.timeline {
            s.push_str(&format!(", timeline {tl}"));
        }
        if self.role == Role::Standby && !self.lag_ok {
            s.push_str(", lagging");
        }
        if self.role == Role::Standby && !self.streaming() {
            match self.streamed_until {
                Some(t) => s.push_str(&format!(
                    ", not streaming for {:.1} s{}",
                    t.elapsed().as_secs_f64(),
                    if self.orphaned {
                        " (serves reads until replica_orphan_timeout)"
                    } else {
                        " (past replica_orphan_timeout, or another standby streams)"
                    }
                )),
                None => s.push_str(", not streaming"),
            }
        }
        if self.old_timeline {
            s.push_str(", on an old timeline");
        }
        s
    }
}

/// A cluster manager whose word on the primary is final (Patroni: the
/// leader key in its DCS). A node it does not name as the leader takes no
/// writes, whatever its probes say: it is fenced.
#[derive(Debug, Clone, PartialEq)]
pub struct Authority {
    pub manager: Source,
    /// The leader, by name and address; `None`: there is none now.
    pub leader: Option<Arc<Node>>,
}

impl Authority {
    /// Whether `n` is the leader: the same name, or the same address.
    pub fn allows(&self, n: &NodeStatus) -> bool {
        self.leader
            .as_ref()
            .is_some_and(|l| l.name == n.name || (l.host == n.node.host && l.port == n.node.port))
    }
}

/// The cluster as pgherd sees it at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    pub nodes: Vec<NodeStatus>,
    /// With `discovery = "patroni"`: the leader as the manager last said.
    pub authority: Option<Authority>,
    /// The node that takes writes, if any.
    pub primary: Option<usize>,
    /// More than one up node claims to be primary.
    pub split_brain: bool,
    /// Counts published versions.
    pub version: u64,
}

impl Topology {
    /// `members`, none probed yet.
    pub fn unprobed(members: Vec<Member>) -> Topology {
        Topology {
            nodes: members.into_iter().map(NodeStatus::new).collect(),
            authority: None,
            primary: None,
            split_brain: false,
            version: 0,
        }
    }

    /// No primary, or the primary's last probe failed: a failover may be
    /// under way and probes should run at `probe_fast_interval`.
    /// Orphaned standbys count too: their `replica_orphan_timeout` is
    /// enforced at the fast interval.
    pub fn unsettled(&self) -> bool {
        self.primary
            .is_none_or(|p| self.nodes[p].last_error.is_some())
            || self.nodes.iter().any(|n| n.orphaned)
    }

    /// Every node has answered or failed a probe at least once: pgherd is
    /// past its first look at the cluster.
    pub fn probed(&self) -> bool {
        self.members()
            .all(|(_, n)| n.last_sample.is_some() || n.last_error.is_some())
    }

    /// The nodes that have not left, with their slots.
    pub fn members(&self) -> impl Iterator<Item = (usize, &NodeStatus)> {
        self.nodes.iter().enumerate().filter(|(_, n)| !n.removed)
    }

    /// The slot of the member named `name`.
    pub fn slot_of(&self, name: &str) -> Option<usize> {
        self.members().find(|(_, n)| n.name == name).map(|(i, _)| i)
    }

    /// One line per node, for error details: `pg0: down (...); pg1: standby`.
    pub fn describe(&self) -> String {
        self.members()
            .map(|(_, n)| n)
            .map(|n| format!("{}: {}", n.name, n.describe()))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Limits that decide health.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    pub rise: u32,
    pub fall: u32,
    pub max_lag_bytes: Option<u64>,
    pub max_lag: Option<Duration>,
    /// `replica_orphan_timeout`.
    pub orphan_timeout: Duration,
}

#[derive(Debug, Clone, Default)]
struct Health {
    /// `None` until the first probe.
    up: Option<bool>,
    successes: u32,
    failures: u32,
}

/// The highest primary timeline seen in one cluster: what pgherd keeps in
/// its state file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remembered {
    pub system_identifier: u64,
    pub timeline: u32,
}

/// Folds probe results into topologies. Sans-IO: feed results, read topologies.
#[derive(Debug)]
pub struct Evaluator {
    thresholds: Thresholds,
    health: Vec<Health>,
    current: Topology,
    /// Highest timeline any primary has shown: lower ones are fenced.
    max_timeline: u32,
    /// The cluster `max_timeline` belongs to, once known.
    system_identifier: Option<u64>,
    /// Per node: when a probe last saw it stream on the primary's timeline.
    last_streamed: Vec<Option<Instant>>,
    /// Since the last primary was lost: who it was, when, and how many
    /// [`NO_PRIMARY_REMINDERS`] were said.
    outage: Option<(usize, Instant, usize)>,
    /// Old primaries of failovers, until they stream from the new one.
    demoted: Vec<usize>,
    /// Per node: since when its probes say it is an up primary.
    claimed_since: Vec<Option<Instant>>,
    /// When the authority's last word was asked for.
    authority_read: Option<Instant>,
}

/// When a lasting outage is announced again ([`ClusterEvent::NoPrimary`]);
/// after the last, every 10 minutes.
const NO_PRIMARY_REMINDERS: [u64; 5] = [10, 30, 60, 120, 300];

impl Evaluator {
    /// An evaluator for the named nodes, starting from what a previous run
    /// remembered (if anything).
    pub fn new(
        members: Vec<Member>,
        thresholds: Thresholds,
        remembered: Option<Remembered>,
    ) -> Self {
        let count = members.len();
        Evaluator {
            thresholds,
            last_streamed: vec![None; count],
            claimed_since: vec![None; count],
            authority_read: None,
            outage: None,
            demoted: Vec::new(),
            health: vec![Health::default(); count],
            current: Topology::unprobed(members),
            max_timeline: remembered.map_or(0, |r| r.timeline),
            system_identifier: remembered.map(|r| r.system_identifier),
        }
    }

    pub fn topology(&self) -> &Topology {
        &self.current
    }

    /// The highest timeline seen and its cluster, once a primary was elected
    /// (or as remembered at start).
    pub fn remembered(&self) -> Option<Remembered> {
        self.system_identifier.map(|system_identifier| Remembered {
            system_identifier,
            timeline: self.max_timeline,
        })
    }

    /// Records one probe of node `i`, received at `now`, and returns the
    /// events it caused. The new topology is [`Evaluator::topology`].
    pub fn apply(
        &mut self,
        i: usize,
        result: Result<ProbeSample, String>,
        now: Instant,
    ) -> Vec<ClusterEvent> {
        if self.current.nodes.get(i).is_none_or(|n| n.removed) {
            // A probe that was under way when its node left.
            return Vec::new();
        }
        let previous = self.current.clone();
        let h = &mut self.health[i];
        let node = &mut self.current.nodes[i];
        match result {
            Ok(sample) => {
                h.successes += 1;
                h.failures = 0;
                if h.up != Some(true) && (h.up.is_none() || h.successes >= self.thresholds.rise) {
                    h.up = Some(true);
                }
                node.role = if sample.in_recovery {
                    Role::Standby
                } else {
                    Role::Primary
                };
                node.timeline = sample.timeline;
                node.last_sample = Some(sample);
                node.last_error = None;
            }
            Err(e) => {
                h.failures += 1;
                h.successes = 0;
                if h.up != Some(false) && (h.up.is_none() || h.failures >= self.thresholds.fall) {
                    h.up = Some(false);
                }
                node.last_error = Some(e);
            }
        }
        node.up = h.up == Some(true);
        self.settle(previous, Some(i), now)
    }

    /// Takes the cluster to the members `desired` (see [`crate::members`]).
    /// Returns the slot changes, for the probes to follow, and the events;
    /// nodes refused for want of a slot are logged.
    pub fn set_members(
        &mut self,
        desired: &[Member],
        now: Instant,
    ) -> (Vec<Change>, Vec<ClusterEvent>) {
        let previous = self.current.clone();
        let slots: Vec<Slot<'_>> = (previous.nodes.iter())
            .map(|n| Slot {
                node: &n.node,
                source: n.source,
                removed: n.removed,
            })
            .collect();
        let (changes, refused) = members::plan(&slots, desired);
        for name in refused {
            tracing::error!(
                "node {name} not added: pgherd has used all its {} node slots; restart it",
                members::NODE_SLOTS
            );
        }
        let mut events = Vec::new();
        for change in &changes {
            match change {
                Change::Join(slot, m) => {
                    let fresh = NodeStatus::new(m.clone());
                    if *slot == self.current.nodes.len() {
                        self.current.nodes.push(fresh);
                        self.health.push(Health::default());
                        self.last_streamed.push(None);
                        self.claimed_since.push(None);
                    } else {
                        // Back to its own slot: probed afresh, but still
                        // fenced if it was (it may still be a diverged
                        // primary).
                        let n = &mut self.current.nodes[*slot];
                        let fenced = n.fenced;
                        *n = NodeStatus {
                            fenced,
                            role: if fenced { Role::Primary } else { Role::Unknown },
                            ..fresh
                        };
                        self.health[*slot] = Health::default();
                        self.last_streamed[*slot] = None;
                    }
                    events.push(ClusterEvent::NodeAdded {
                        node: m.node.name.clone(),
                        source: m.source,
                    });
                }
                Change::Leave(slot) => {
                    let n = &mut self.current.nodes[*slot];
                    n.removed = true;
                    n.up = false;
                    n.orphaned = false;
                    self.demoted.retain(|d| d != slot);
                    events.push(ClusterEvent::NodeRemoved {
                        node: n.name.clone(),
                        source: n.source,
                    });
                }
                Change::Update(slot, m) => {
                    let n = &mut self.current.nodes[*slot];
                    n.node = Arc::new(m.node.clone());
                    n.source = m.source;
                }
            }
        }
        events.extend(self.settle(previous, None, now));
        (changes, events)
    }

    /// From now on only the leader `manager` names may be primary, and
    /// until it has been read, none is (a fresh pgherd with Patroni's
    /// discovery: the DCS decides, not the timelines). Nodes are not fenced
    /// for it before the first reading.
    pub fn await_authority(&mut self, manager: Source) {
        self.current.authority = Some(Authority {
            manager,
            leader: None,
        });
    }

    /// The manager whose leader is the only node that may be primary, as
    /// it last said (see [`Authority`]). `read` is when the manager was
    /// asked: a node that claimed to be primary since is not fenced for not
    /// being its leader (see [`Evaluator::elect`]). Returns the events.
    pub fn set_authority(
        &mut self,
        authority: Option<Authority>,
        read: Instant,
        now: Instant,
    ) -> Vec<ClusterEvent> {
        let previous = self.current.clone();
        self.current.authority = authority;
        self.authority_read = Some(read);
        self.settle(previous, None, now)
    }

    /// After a probe of node `probed` or a change of members: the election,
    /// lags and orphans again, the events since `previous`, a new version
    /// if anything changed.
    fn settle(
        &mut self,
        previous: Topology,
        probed: Option<usize>,
        now: Instant,
    ) -> Vec<ClusterEvent> {
        self.elect(now);
        self.measure_lag(probed, now);
        self.judge_orphans(now);
        let mut events = diff(&previous, &self.current);
        self.follow_failover(previous.primary, now, &mut events);
        if self.current != previous {
            self.current.version += 1;
        }
        events
    }

    fn elect(&mut self, now: Instant) {
        let claimants: Vec<usize> = (0..self.current.nodes.len())
            .filter(|&i| {
                let n = &self.current.nodes[i];
                n.up && !n.removed && n.role == Role::Primary
            })
            .collect();
        for (i, since) in self.claimed_since.iter_mut().enumerate() {
            *since = match (claimants.contains(&i), *since) {
                (true, None) => Some(now),
                (true, since) => since,
                (false, _) => None,
            };
        }
        let nodes = &self.current.nodes;
        if let Some(known) = self.system_identifier {
            let mut ids = claimants
                .iter()
                .filter_map(|&i| nodes[i].system_identifier())
                .peekable();
            if ids.peek().is_some() && ids.all(|id| id != known) {
                // Every primary belongs to another cluster: a rebuilt one,
                // whose timelines start again.
                self.system_identifier = None;
                self.max_timeline = 0;
            }
        }
        let primary = match &self.current.authority {
            // The manager's leader, whatever the timelines: a member
            // promoted behind the manager's back is on a newer one.
            Some(a) => match claimants
                .iter()
                .copied()
                .filter(|&i| a.allows(&self.current.nodes[i]))
                .collect::<Vec<_>>()
                .as_slice()
            {
                [only] => Some(*only),
                _ => None,
            },
            None => {
                for &i in &claimants {
                    let tl = self.current.nodes[i].timeline.unwrap_or(0);
                    self.max_timeline = self.max_timeline.max(tl);
                }
                // A standby of the same cluster receiving a newer timeline
                // is proof of a promotion, whether or not its primary can
                // be seen from here: primaries on older timelines are
                // obsolete (a fresh pgherd that cannot reach the new
                // primary still fences the old one).
                let cluster = self.system_identifier.or_else(|| {
                    (claimants.iter()).find_map(|&i| self.current.nodes[i].system_identifier())
                });
                for n in &self.current.nodes {
                    let ours = cluster.is_some() && n.system_identifier() == cluster;
                    if n.up && !n.removed && n.role == Role::Standby && ours {
                        let tl = n.timeline.unwrap_or(0);
                        if tl > self.max_timeline {
                            self.max_timeline = tl;
                            self.system_identifier = cluster;
                        }
                    }
                }
                let newest: Vec<usize> = (claimants.iter().copied())
                    .filter(|&i| self.current.nodes[i].timeline.unwrap_or(0) == self.max_timeline)
                    .collect();
                match newest.as_slice() {
                    [only] => Some(*only),
                    _ => None,
                }
            }
        };
        if let Some(tl) = primary.and_then(|p| self.current.nodes[p].timeline) {
            self.max_timeline = self.max_timeline.max(tl);
        }
        for (i, n) in self.current.nodes.iter_mut().enumerate() {
            // Fencing is sticky: a fenced node that stops answering probes
            // (overloaded, partitioned) may still be reachable by sessions
            // pinned to it, so it stays fenced until a probe shows it is no
            // longer a primary (rejoined as a standby) or it is elected.
            let claims = claimants.contains(&i) || (n.fenced && n.role == Role::Primary);
            // A claimant the manager has not been asked about since it
            // claimed may be the leader the manager just chose (Patroni
            // takes the leader key, then promotes): it takes no writes
            // until the manager names it, but its sessions are not ended
            // before the manager has had its say.
            let unheard = self.current.authority.as_ref().is_some_and(|a| {
                !a.allows(n)
                    && self.claimed_since[i]
                        .is_some_and(|since| self.authority_read.is_none_or(|read| read < since))
            });
            n.fenced = claims && Some(i) != primary && (n.fenced || !unheard);
        }
        self.current.primary = primary;
        self.current.split_brain = claimants.len() > 1;
        if let Some(id) = primary.and_then(|p| self.current.nodes[p].system_identifier()) {
            self.system_identifier = Some(id);
        }
    }

    /// Lag of every standby, as of `now`, when node `probed` was probed.
    fn measure_lag(&mut self, probed: Option<usize>, now: Instant) {
        let primary_sample = self
            .current
            .primary
            .and_then(|p| self.current.nodes[p].last_sample.as_ref());
        let primary_lsn = primary_sample.and_then(|s| s.current_lsn);
        let primary_timeline = primary_sample.and_then(|s| s.timeline);
        let t = self.thresholds;
        for (i, n) in self.current.nodes.iter_mut().enumerate() {
            let Some(s) = n.last_sample.as_ref().filter(|s| s.in_recovery) else {
                n.lag_bytes = None;
                n.lag_seconds = None;
                n.lag_ok = n.role == Role::Primary;
                n.old_timeline = false;
                n.streamed_until = None;
                continue;
            };
            n.old_timeline = matches!(
                (s.timeline, primary_timeline),
                (Some(mine), Some(primary)) if mine < primary
            );
            let streaming = s.wal_receiver.as_deref() == Some("streaming");
            // Only a sample taken now says it streams now.
            if probed == Some(i) && streaming && !n.old_timeline {
                self.last_streamed[i] = Some(now);
            }
            n.streamed_until = self.last_streamed[i].filter(|_| !streaming);
            n.lag_bytes = match (primary_lsn, s.replay_lsn) {
                (Some(p), Some(r)) => Some(p.saturating_sub(r)),
                _ => None,
            };
            // Nothing left to replay means no delay, however old the last commit.
            n.lag_seconds = if s.receive_lsn.is_some() && s.receive_lsn == s.replay_lsn {
                Some(0.0)
            } else {
                s.replay_age
            };
            // Not streaming: at least as old as the last sight of it streaming.
            if let Some(until) = n.streamed_until {
                let unheard = now.saturating_duration_since(until).as_secs_f64();
                n.lag_seconds = Some(n.lag_seconds.map_or(unheard, |l| l.max(unheard)));
            }
            let bytes_ok = match (t.max_lag_bytes, n.lag_bytes) {
                (Some(max), Some(lag)) => lag <= max,
                _ => true,
            };
            let time_ok = match (t.max_lag, n.lag_seconds) {
                (Some(max), Some(lag)) => lag <= max.as_secs_f64(),
                _ => true,
            };
            n.lag_ok = bytes_ok && time_ok;
        }
    }

    /// The failover story: a primary lost (then reminders while there is
    /// none), a new one elected, its predecessor streaming from it.
    fn follow_failover(
        &mut self,
        before: Option<usize>,
        now: Instant,
        events: &mut Vec<ClusterEvent>,
    ) {
        let nodes = &self.current.nodes;
        let name = |i: usize| nodes[i].name.clone();
        match (before, self.current.primary) {
            (Some(old), None) => self.outage = Some((old, now, 0)),
            (Some(old), Some(new)) if old != new => {
                events.push(ClusterEvent::Failover {
                    from: name(old),
                    to: name(new),
                    without_primary: Duration::ZERO,
                    clients: Outage::default(),
                });
                self.demoted.push(old);
            }
            (None, Some(new)) => {
                if let Some((old, since, _)) = self.outage.take() {
                    if old != new {
                        events.push(ClusterEvent::Failover {
                            from: name(old),
                            to: name(new),
                            without_primary: now.saturating_duration_since(since),
                            clients: Outage::default(),
                        });
                        self.demoted.push(old);
                    }
                }
            }
            (None, None) => {
                if let Some((_, since, said)) = &mut self.outage {
                    let without = now.saturating_duration_since(*since);
                    let due = NO_PRIMARY_REMINDERS.get(*said).copied().unwrap_or_else(|| {
                        NO_PRIMARY_REMINDERS[NO_PRIMARY_REMINDERS.len() - 1]
                            + 600 * (*said + 1 - NO_PRIMARY_REMINDERS.len()) as u64
                    });
                    if without >= Duration::from_secs(due) {
                        *said += 1;
                        events.push(ClusterEvent::NoPrimary {
                            without_primary: without,
                        });
                    }
                }
            }
            _ => {}
        }
        if let Some(primary) = self.current.primary {
            let (nodes, demoted) = (&self.current.nodes, &mut self.demoted);
            demoted.retain(|&old| {
                let n = &nodes[old];
                let follows =
                    old != primary && n.up && n.role == Role::Standby && n.follows_primary();
                if follows {
                    events.push(ClusterEvent::Switchover {
                        node: n.name.clone(),
                        primary: nodes[primary].name.clone(),
                    });
                }
                !follows && old != primary
            });
        }
    }

    /// Which standbys that stopped streaming still serve reads: those that
    /// streamed within `orphan_timeout`, while no standby streams.
    fn judge_orphans(&mut self, now: Instant) {
        let timeout = self.thresholds.orphan_timeout;
        let nodes = &mut self.current.nodes;
        let fed = nodes.iter().any(|n| {
            n.up && n.role == Role::Standby && !n.fenced && n.lag_ok && n.follows_primary()
        });
        for n in nodes.iter_mut() {
            n.orphaned = !fed
                && !n.removed
                && n.role == Role::Standby
                && n.streamed_until
                    .is_some_and(|t| now.saturating_duration_since(t) < timeout);
        }
    }
}

fn diff(old: &Topology, new: &Topology) -> Vec<ClusterEvent> {
    let mut events = Vec::new();
    for (o, n) in old.nodes.iter().zip(&new.nodes) {
        let node = n.name.clone();
        if !o.up && n.up {
            events.push(ClusterEvent::NodeUp { node: node.clone() });
        }
        if o.up && !n.up && !n.removed {
            let reason = n.last_error.clone().unwrap_or_default();
            events.push(ClusterEvent::NodeDown {
                node: node.clone(),
                reason,
            });
        }
        if o.role != n.role && o.role != Role::Unknown {
            events.push(ClusterEvent::RoleChanged {
                node: node.clone(),
                from: o.role,
                to: n.role,
            });
        }
        if !o.fenced && n.fenced {
            let not_leader = new.authority.as_ref().filter(|a| !a.allows(n));
            let reason = if let Some(a) = not_leader {
                format!(
                    "claims to be primary, but {}'s leader is {}",
                    a.manager.as_str(),
                    a.leader.as_ref().map_or("no node", |l| l.name.as_str())
                )
            } else if new.split_brain && new.primary.is_none() {
                "another node on the same timeline also claims to be primary".to_owned()
            } else {
                format!(
                    "claims to be primary on timeline {}, older than the cluster's",
                    n.timeline.unwrap_or(0)
                )
            };
            events.push(ClusterEvent::Fenced {
                node: node.clone(),
                reason,
            });
        }
        if o.fenced && !n.fenced {
            events.push(ClusterEvent::Unfenced { node: node.clone() });
        }
        if !o.orphaned && n.orphaned {
            events.push(ClusterEvent::Orphaned { node: node.clone() });
        }
        if o.orphaned && !n.orphaned {
            events.push(ClusterEvent::OrphanEnded {
                node: node.clone(),
                serves_reads: n.serves_reads(),
            });
        }
        if n.role == Role::Standby && o.role == Role::Standby && n.up {
            if o.lag_ok && !n.lag_ok {
                events.push(ClusterEvent::LagOverThreshold { node: node.clone() });
            }
            if !o.lag_ok && n.lag_ok {
                events.push(ClusterEvent::LagUnderThreshold { node });
            }
        }
    }
    if old.primary != new.primary {
        let name = |p: Option<usize>| p.map(|i| new.nodes[i].name.clone());
        events.push(ClusterEvent::PrimaryChanged {
            from: name(old.primary),
            to: name(new.primary),
        });
    }
    if !old.split_brain && new.split_brain {
        let primaries = new
            .nodes
            .iter()
            .filter(|n| n.up && n.role == Role::Primary)
            .map(|n| n.name.clone())
            .collect();
        events.push(ClusterEvent::SplitBrainDetected { primaries });
    }
    if old.split_brain && !new.split_brain {
        events.push(ClusterEvent::SplitBrainResolved);
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER: u64 = 7_300_000_000_000_000_001;

    fn thresholds() -> Thresholds {
        Thresholds {
            rise: 2,
            fall: 3,
            max_lag_bytes: Some(1000),
            max_lag: None,
            orphan_timeout: Duration::from_secs(30),
        }
    }

    /// The instant every probe of a test arrives at, unless it says otherwise.
    fn t0() -> Instant {
        static T0: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *T0.get_or_init(Instant::now)
    }

    /// Configured nodes `pg0`, `pg1`... on ports 5432, 5433...
    pub(crate) fn named(names: &[&str]) -> Vec<Member> {
        (names.iter().zip(5432..))
            .map(|(name, port)| {
                Member::configured(Node {
                    name: (*name).into(),
                    host: "127.0.0.1".into(),
                    port,
                    weight: 100,
                    priority: 0,
                })
            })
            .collect()
    }

    fn eval(n: usize) -> Evaluator {
        let names: Vec<String> = (0..n).map(|i| format!("pg{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        Evaluator::new(named(&names), thresholds(), None)
    }

    fn primary(tl: u32, lsn: u64) -> Result<ProbeSample, String> {
        Ok(ProbeSample {
            in_recovery: false,
            current_lsn: Some(lsn),
            receive_lsn: None,
            replay_lsn: None,
            replay_age: None,
            timeline: Some(tl),
            wal_receiver: None,
            system_identifier: Some(CLUSTER),
            duration: Duration::from_millis(1),
            started: None,
        })
    }

    fn standby(tl: u32, replay: u64) -> Result<ProbeSample, String> {
        Ok(ProbeSample {
            in_recovery: true,
            current_lsn: None,
            receive_lsn: Some(replay),
            replay_lsn: Some(replay),
            replay_age: Some(100.0),
            timeline: Some(tl),
            wal_receiver: Some("streaming".into()),
            system_identifier: Some(CLUSTER),
            duration: Duration::from_millis(1),
            started: None,
        })
    }

    fn down() -> Result<ProbeSample, String> {
        Err("connection refused".into())
    }

    #[test]
    fn first_probe_decides_then_hysteresis() {
        let mut e = eval(2);
        let ev = e.apply(0, primary(1, 100), t0());
        assert!(ev.contains(&ClusterEvent::NodeUp { node: "pg0".into() }));
        assert_eq!(e.topology().primary, Some(0));
        e.apply(1, down(), t0());
        assert!(
            !e.topology().nodes[1].up,
            "first probe failed: down at once"
        );
        // Two failures are not enough to take pg0 down (fall = 3).
        e.apply(0, down(), t0());
        e.apply(0, down(), t0());
        assert!(e.topology().nodes[0].up);
        let ev = e.apply(0, down(), t0());
        assert!(!e.topology().nodes[0].up);
        assert!(matches!(&ev[0], ClusterEvent::NodeDown { node, .. } if node == "pg0"));
        assert_eq!(e.topology().primary, None);
        // Rise = 2 to come back.
        e.apply(0, primary(1, 100), t0());
        assert!(!e.topology().nodes[0].up);
        e.apply(0, primary(1, 100), t0());
        assert_eq!(e.topology().primary, Some(0));
    }

    #[test]
    fn lag_is_measured_against_the_primary() {
        let mut e = eval(3);
        e.apply(0, primary(1, 5000), t0());
        e.apply(1, standby(1, 4500), t0());
        e.apply(2, standby(1, 3000), t0());
        let t = e.topology();
        assert_eq!(t.nodes[1].lag_bytes, Some(500));
        assert!(t.nodes[1].serves_reads());
        assert_eq!(t.nodes[2].lag_bytes, Some(2000));
        assert!(!t.nodes[2].serves_reads());
        assert_eq!(
            t.nodes[1].lag_seconds,
            Some(0.0),
            "fully replayed: no delay"
        );
        let ev = e.apply(2, standby(1, 4900), t0());
        assert!(ev.contains(&ClusterEvent::LagUnderThreshold { node: "pg2".into() }));
        let ev = e.apply(0, primary(1, 9000), t0());
        assert!(ev.contains(&ClusterEvent::LagOverThreshold { node: "pg1".into() }));
    }

    #[test]
    fn failover_follows_the_promoted_standby() {
        let mut e = eval(2);
        e.apply(0, primary(1, 100), t0());
        e.apply(1, standby(1, 100), t0());
        for _ in 0..3 {
            e.apply(0, down(), t0());
        }
        assert_eq!(e.topology().primary, None);
        let ev = e.apply(1, primary(2, 200), t0());
        assert_eq!(e.topology().primary, Some(1));
        assert!(ev.contains(&ClusterEvent::RoleChanged {
            node: "pg1".into(),
            from: Role::Standby,
            to: Role::Primary
        }));
        assert!(ev.contains(&ClusterEvent::PrimaryChanged {
            from: None,
            to: Some("pg1".into())
        }));
    }

    #[test]
    fn resurrected_old_primary_is_fenced_even_alone() {
        let mut e = eval(2);
        e.apply(0, primary(1, 100), t0());
        e.apply(1, standby(1, 100), t0());
        e.apply(1, primary(2, 200), t0()); // promoted while pg0 still looks up
        assert_eq!(e.topology().primary, Some(1), "higher timeline wins");
        assert!(e.topology().nodes[0].fenced);
        assert!(e.topology().split_brain);
        // The new primary dies: the old one must still not take writes.
        for _ in 0..3 {
            e.apply(1, down(), t0());
        }
        e.apply(0, primary(1, 150), t0());
        assert_eq!(e.topology().primary, None);
        assert!(e.topology().nodes[0].fenced);
        // Rejoined as a standby of the new timeline: unfenced, serves reads.
        let ev = e.apply(0, standby(2, 200), t0());
        assert!(ev.contains(&ClusterEvent::Unfenced { node: "pg0".into() }));
        assert!(!e.topology().nodes[0].fenced);
    }

    #[test]
    fn a_fenced_node_that_goes_down_stays_fenced() {
        let mut e = eval(2);
        e.apply(0, primary(1, 100), t0());
        e.apply(1, primary(2, 200), t0());
        assert!(e.topology().nodes[0].fenced);
        for _ in 0..3 {
            e.apply(0, down(), t0());
        }
        assert!(!e.topology().nodes[0].up);
        assert!(e.topology().nodes[0].fenced, "down, but still fenced");
        // Back as a standby of the new timeline: no longer fenced.
        e.apply(0, standby(2, 200), t0());
        e.apply(0, standby(2, 200), t0());
        assert!(!e.topology().nodes[0].fenced);
    }

    #[test]
    fn equal_timelines_mean_no_primary_at_all() {
        let mut e = eval(2);
        e.apply(0, primary(3, 100), t0());
        let ev = e.apply(1, primary(3, 100), t0());
        let t = e.topology();
        assert_eq!(t.primary, None);
        assert!(t.nodes[0].fenced && t.nodes[1].fenced);
        assert!(ev
            .iter()
            .any(|e| matches!(e, ClusterEvent::SplitBrainDetected { .. })));
        assert!(t.describe().contains("fenced"));
        for _ in 0..3 {
            e.apply(1, down(), t0());
        }
        let t = e.topology();
        assert_eq!(t.primary, Some(0), "the survivor is the one primary again");
        assert!(!t.split_brain);
    }

    #[test]
    fn standbys_serve_reads_only_while_streaming() {
        let mut e = eval(2);
        e.apply(0, primary(1, 100), t0());
        let mut sample = standby(1, 100).unwrap();
        sample.wal_receiver = Some("waiting".into());
        e.apply(1, Ok(sample), t0());
        assert!(!e.topology().nodes[1].serves_reads());
        assert!(e.topology().describe().contains("not streaming"));
        e.apply(1, standby(1, 100), t0());
        assert!(e.topology().nodes[1].serves_reads());
    }

    #[test]
    fn standbys_left_on_an_old_timeline_serve_no_reads() {
        let mut e = eval(3);
        e.apply(0, primary(1, 100), t0());
        e.apply(1, standby(1, 100), t0());
        e.apply(2, standby(1, 100), t0());
        e.apply(1, primary(2, 120), t0()); // pg1 promoted; pg2 still follows pg0
        let t = e.topology();
        assert_eq!(t.primary, Some(1));
        assert!(!t.nodes[2].serves_reads());
        assert!(t
            .describe()
            .contains("pg2: standby, timeline 1, on an old timeline"));
        e.apply(2, standby(2, 120), t0()); // re-pointed at the new primary
        assert!(e.topology().nodes[2].serves_reads());
    }

    #[test]
    fn unsettled_from_a_failed_primary_probe_until_a_primary_answers() {
        let mut e = eval(2);
        assert!(e.topology().unsettled(), "nothing known yet");
        e.apply(0, primary(1, 100), t0());
        e.apply(1, standby(1, 100), t0());
        assert!(!e.topology().unsettled());
        e.apply(1, down(), t0());
        assert!(!e.topology().unsettled(), "a standby's failure is not");
        e.apply(0, down(), t0());
        assert!(e.topology().unsettled(), "still up (fall 3) but failing");
        e.apply(0, primary(1, 100), t0());
        assert!(!e.topology().unsettled());
    }

    #[test]
    fn version_counts_changes_only() {
        let mut e = eval(1);
        e.apply(0, primary(1, 100), t0());
        let v = e.topology().version;
        e.apply(0, primary(1, 100), t0());
        assert_eq!(e.topology().version, v);
        e.apply(0, primary(1, 200), t0());
        assert_eq!(e.topology().version, v + 1);
    }

    #[test]
    fn a_remembered_timeline_fences_an_old_primary_after_a_restart() {
        let mut e = eval(2);
        e.apply(0, primary(1, 100), t0());
        assert_eq!(e.remembered().map(|r| r.timeline), Some(1));
        e.apply(0, primary(3, 100), t0());
        let remembered = e.remembered();
        assert_eq!(
            remembered,
            Some(Remembered {
                system_identifier: CLUSTER,
                timeline: 3
            })
        );
        // A new pgherd whose first sight is the old primary on timeline 2.
        let mut restarted = Evaluator::new(named(&["pg0", "pg1"]), thresholds(), remembered);
        restarted.apply(1, primary(2, 100), t0());
        assert_eq!(restarted.topology().primary, None);
        assert!(restarted.topology().nodes[1].fenced);
        // Without the memory it would have been taken as the primary.
        let mut forgetful = eval(2);
        forgetful.apply(1, primary(2, 100), t0());
        assert_eq!(forgetful.topology().primary, Some(1));
    }

    #[test]
    fn a_rebuilt_cluster_forgets_the_remembered_timeline() {
        let remembered = Some(Remembered {
            system_identifier: CLUSTER + 1,
            timeline: 9,
        });
        let mut e = Evaluator::new(named(&["pg0"]), thresholds(), remembered);
        e.apply(0, primary(1, 100), t0());
        assert_eq!(
            e.topology().primary,
            Some(0),
            "another cluster: initdb's timeline 1"
        );
        assert_eq!(
            e.remembered(),
            Some(Remembered {
                system_identifier: CLUSTER,
                timeline: 1
            })
        );
    }

    /// pg0 primary on timeline 1, the others its streaming standbys.
    fn streaming(n: usize) -> Evaluator {
        let mut e = eval(n);
        e.apply(0, primary(1, 100), at(0));
        for i in 1..n {
            e.apply(i, standby(1, 100), at(0));
        }
        e
    }

    /// pg0 fails its probes until it is down (`fall` 3).
    fn lose_primary(e: &mut Evaluator, when: Instant) {
        for _ in 0..3 {
            e.apply(0, down(), when);
        }
    }

    /// A standby whose WAL receiver is not running (its primary is gone).
    fn cut_off(tl: u32, replay: u64) -> Result<ProbeSample, String> {
        let mut s = standby(tl, replay)?;
        s.wal_receiver = None;
        Ok(s)
    }

    fn at(secs: u64) -> Instant {
        t0() + Duration::from_secs(secs)
    }

    #[test]
    fn standbys_serve_reads_through_a_primary_outage_until_the_orphan_timeout() {
        let mut e = streaming(3);
        // The primary dies: its probes fail, the standbys stop streaming.
        lose_primary(&mut e, at(1));
        assert_eq!(e.topology().primary, None);
        e.apply(1, cut_off(1, 100), at(1));
        assert!(
            !e.topology().nodes[1].serves_reads(),
            "pg2 still streams, as far as pgherd knows"
        );
        let ev = e.apply(2, cut_off(1, 100), at(1));
        assert!(ev.contains(&ClusterEvent::Orphaned { node: "pg1".into() }));
        assert!(ev.contains(&ClusterEvent::Orphaned { node: "pg2".into() }));
        let t = e.topology();
        assert!(t.nodes[1].serves_reads() && t.nodes[2].serves_reads());
        assert!(t.nodes[1].orphaned);
        assert!(t.unsettled(), "orphans are watched at the fast interval");
        assert_eq!(t.nodes[1].lag_seconds, Some(1.0), "unheard for 1 s");
        assert!(
            t.describe().contains("not streaming for"),
            "{}",
            t.describe()
        );
        // 29 s after they last streamed: still serving.
        e.apply(1, cut_off(1, 100), at(29));
        assert!(e.topology().nodes[1].serves_reads());
        // 30 s: the timeout (the probe of any node re-judges every node).
        let ev = e.apply(0, down(), at(30));
        let t = e.topology();
        assert!(!t.nodes[1].serves_reads() && !t.nodes[2].serves_reads());
        assert!(ev.contains(&ClusterEvent::OrphanEnded {
            node: "pg2".into(),
            serves_reads: false
        }));
        assert!(
            t.describe().contains("past replica_orphan_timeout"),
            "{}",
            t.describe()
        );
    }

    #[test]
    fn orphans_serve_until_a_standby_streams_from_the_new_primary() {
        let mut e = streaming(3);
        lose_primary(&mut e, at(1));
        e.apply(1, cut_off(1, 100), at(1));
        e.apply(2, cut_off(1, 100), at(1));
        // pg1 is promoted; pg2 is still on timeline 1, not yet re-pointed.
        e.apply(1, primary(2, 120), at(5));
        let t = e.topology();
        assert_eq!(t.primary, Some(1));
        assert!(t.nodes[2].old_timeline);
        assert!(t.nodes[2].serves_reads(), "nobody follows pg1 yet");
        // pg2 follows pg1: streaming on its timeline, no longer an orphan.
        let ev = e.apply(2, standby(2, 120), at(6));
        assert!(ev.contains(&ClusterEvent::OrphanEnded {
            node: "pg2".into(),
            serves_reads: true
        }));
        let t = e.topology();
        assert!(t.nodes[2].serves_reads() && !t.nodes[2].orphaned);
        assert!(!t.unsettled());
    }

    #[test]
    fn an_orphan_stops_once_another_standby_streams() {
        let mut e = streaming(4);
        lose_primary(&mut e, at(1));
        for i in 1..4 {
            e.apply(i, cut_off(1, 100), at(1));
        }
        e.apply(1, primary(2, 120), at(5));
        e.apply(2, standby(2, 120), at(6));
        let t = e.topology();
        assert!(t.nodes[2].serves_reads());
        assert!(
            !t.nodes[3].serves_reads(),
            "pg2 follows the new primary: the left-behind pg3 serves no reads"
        );
        assert!(t
            .describe()
            .contains("pg3: standby, timeline 1, not streaming"));
    }

    #[test]
    fn unheard_time_counts_against_max_replica_lag() {
        let mut th = thresholds();
        th.max_lag = Some(Duration::from_secs(10));
        let mut e = Evaluator::new(named(&["pg0", "pg1"]), th, None);
        e.apply(0, primary(1, 100), at(0));
        e.apply(1, standby(1, 100), at(0));
        lose_primary(&mut e, at(1));
        e.apply(1, cut_off(1, 100), at(5));
        assert!(e.topology().nodes[1].serves_reads());
        e.apply(1, cut_off(1, 100), at(11));
        let n = &e.topology().nodes[1];
        assert!(!n.lag_ok && !n.serves_reads(), "11 s unheard > 10 s");
    }

    #[test]
    fn probed_once_every_node_answered_or_failed() {
        let mut e = eval(2);
        assert!(!e.topology().probed());
        e.apply(0, primary(1, 100), at(0));
        assert!(!e.topology().probed(), "pg1 not probed yet");
        e.apply(1, down(), at(0));
        assert!(e.topology().probed());
    }

    #[test]
    fn a_standby_never_seen_streaming_is_no_orphan() {
        let mut e = eval(2);
        e.apply(1, cut_off(1, 100), at(0));
        let n = &e.topology().nodes[1];
        assert!(!n.orphaned && !n.serves_reads());
    }

    #[test]
    fn a_zero_orphan_timeout_stops_reads_with_the_stream() {
        let mut th = thresholds();
        th.orphan_timeout = Duration::ZERO;
        let mut e = Evaluator::new(named(&["pg0", "pg1"]), th, None);
        e.apply(0, primary(1, 100), at(0));
        e.apply(1, standby(1, 100), at(0));
        e.apply(1, cut_off(1, 100), at(0));
        assert!(!e.topology().nodes[1].serves_reads());
    }

    #[test]
    fn a_failover_is_told_with_its_outage_then_the_old_primary_rejoining() {
        let mut e = streaming(3);
        lose_primary(&mut e, at(2));
        assert_eq!(e.topology().primary, None);
        let ev = e.apply(1, cut_off(1, 100), at(11));
        assert!(
            !ev.iter()
                .any(|e| matches!(e, ClusterEvent::NoPrimary { .. })),
            "9 s: not yet"
        );
        let ev = e.apply(1, cut_off(1, 100), at(12));
        assert!(ev.contains(&ClusterEvent::NoPrimary {
            without_primary: Duration::from_secs(10)
        }));
        let ev = e.apply(1, cut_off(1, 100), at(13));
        assert!(
            !ev.iter()
                .any(|e| matches!(e, ClusterEvent::NoPrimary { .. })),
            "said once per step"
        );
        let ev = e.apply(1, primary(2, 120), at(22));
        let failover = ClusterEvent::Failover {
            from: "pg0".into(),
            to: "pg1".into(),
            without_primary: Duration::from_secs(20),
            clients: Outage::default(),
        };
        assert!(ev.contains(&failover), "{ev:?}");
        assert_eq!(
            failover.to_string(),
            "failover: pg0 -> pg1 in 20.0 s (no primary for 20.0 s, \
             0 transactions held, 0 failed)"
        );
        // pg0 comes back rewound, streaming from pg1.
        e.apply(0, standby(2, 120), at(40));
        let ev = e.apply(0, standby(2, 120), at(41));
        assert!(
            ev.contains(&ClusterEvent::Switchover {
                node: "pg0".into(),
                primary: "pg1".into()
            }),
            "{ev:?}"
        );
        let ev = e.apply(0, standby(2, 120), at(42));
        assert!(
            !ev.iter()
                .any(|e| matches!(e, ClusterEvent::Switchover { .. })),
            "said once"
        );
    }

    #[test]
    fn an_immediate_handover_is_a_failover_without_an_outage() {
        let mut e = streaming(2);
        let ev = e.apply(1, primary(2, 120), at(1));
        assert!(ev.contains(&ClusterEvent::Failover {
            from: "pg0".into(),
            to: "pg1".into(),
            without_primary: Duration::ZERO,
            clients: Outage::default(),
        }));
    }

    #[test]
    fn a_node_added_is_routed_once_probed_and_a_removed_one_never_again() {
        let mut e = eval(2);
        e.apply(0, primary(1, 1000), t0());
        e.apply(1, standby(1, 1000), t0());
        let mut members = named(&["pg0", "pg1", "pg2"]);
        let (changes, events) = e.set_members(&members, t0());
        assert_eq!(changes, [Change::Join(2, members[2].clone())]);
        assert!(events.contains(&ClusterEvent::NodeAdded {
            node: "pg2".into(),
            source: Source::Config
        }));
        assert!(!e.topology().nodes[2].serves_reads(), "not probed yet");
        e.apply(2, standby(1, 1000), t0());
        assert!(e.topology().nodes[2].serves_reads());

        // pg1 leaves: no reads, no node_down, and a late probe of it is
        // ignored.
        members.remove(1);
        let version = e.topology().version;
        let (changes, events) = e.set_members(&members, t0());
        assert_eq!(changes, [Change::Leave(1)]);
        assert_eq!(
            events,
            [ClusterEvent::NodeRemoved {
                node: "pg1".into(),
                source: Source::Config
            }]
        );
        assert!(e.topology().version > version);
        assert!(!e.topology().nodes[1].serves_reads());
        assert!(e.apply(1, standby(1, 1000), t0()).is_empty());
        assert!(!e.topology().nodes[1].serves_reads());
        assert_eq!(e.topology().slot_of("pg1"), None);
        assert!(!e.topology().describe().contains("pg1"));
    }

    #[test]
    fn removing_the_primary_leaves_no_primary_and_a_fenced_node_comes_back_fenced() {
        let mut e = eval(2);
        e.apply(0, primary(1, 1000), t0());
        e.apply(1, primary(2, 2000), t0());
        assert!(e.topology().nodes[0].fenced);
        assert_eq!(e.topology().primary, Some(1));

        let (_, events) = e.set_members(&named(&["pg0"]), t0());
        assert_eq!(e.topology().primary, None, "the primary left");
        assert!(events.contains(&ClusterEvent::PrimaryChanged {
            from: Some("pg1".into()),
            to: None
        }));
        // pg0 is still on the old timeline: with pg1 gone it must not be
        // elected (the highest timeline is remembered).
        e.apply(0, primary(1, 1000), t0());
        assert_eq!(e.topology().primary, None);
        assert!(e.topology().nodes[0].fenced);

        // pg1 comes back to its slot, fresh, and is elected again.
        let (changes, _) = e.set_members(&named(&["pg0", "pg1"]), t0());
        assert!(matches!(changes[..], [Change::Join(1, _)]), "{changes:?}");
        assert!(!e.topology().nodes[1].up);
        e.apply(1, primary(2, 2000), t0());
        assert_eq!(e.topology().primary, Some(1));
    }

    #[test]
    fn a_new_weight_changes_the_node_in_place() {
        let mut e = eval(1);
        let mut members = named(&["pg0"]);
        members[0].node.weight = 7;
        let (changes, events) = e.set_members(&members, t0());
        assert!(matches!(changes[..], [Change::Update(0, _)]));
        assert!(events.is_empty());
        assert_eq!(e.topology().nodes[0].node.weight, 7);
    }

    fn leader(e: &Evaluator, name: &str) -> Option<Authority> {
        let node = e.topology().nodes.iter().find(|n| n.name == name)?;
        Some(Authority {
            manager: Source::Patroni,
            leader: Some(Arc::clone(&node.node)),
        })
    }

    #[test]
    fn with_an_authority_only_its_leader_may_be_primary() {
        let mut e = eval(2);
        e.apply(0, primary(1, 1000), t0());
        e.apply(1, standby(1, 1000), t0());
        let events = e.set_authority(leader(&e, "pg0"), t0(), t0());
        assert!(events.is_empty(), "{events:?}");
        assert_eq!(e.topology().primary, Some(0));

        // pg1 is promoted while the last reading names pg0: no writes
        // there, but its sessions stay until the manager is asked again
        // (it may be the leader the manager just chose).
        for _ in 0..3 {
            e.apply(0, down(), at(1));
        }
        e.apply(1, primary(2, 2000), at(1));
        assert_eq!(e.topology().primary, None);
        assert!(!e.topology().nodes[1].fenced);

        // Asked after the promotion, the manager still names pg0: pg1 was
        // promoted behind its back, and is fenced.
        let events = e.set_authority(leader(&e, "pg0"), at(2), at(2));
        assert!(e.topology().nodes[1].fenced);
        let fenced = events.iter().find_map(|ev| match ev {
            ClusterEvent::Fenced { node, reason } if node == "pg1" => Some(reason.clone()),
            _ => None,
        });
        assert!(
            fenced.is_some_and(|r| r.contains("patroni's leader is pg0")),
            "{events:?}"
        );

        // The manager names pg1: it is the primary, on any timeline.
        e.set_authority(leader(&e, "pg1"), at(3), at(3));
        assert_eq!(e.topology().primary, Some(1));
        assert!(!e.topology().nodes[1].fenced);

        // No leader at all: no primary.
        let none = Authority {
            manager: Source::Patroni,
            leader: None,
        };
        e.set_authority(Some(none), at(4), at(4));
        assert_eq!(e.topology().primary, None);
        assert!(e.topology().nodes[1].fenced);
    }

    #[test]
    fn an_authority_settles_two_primaries_and_outranks_timelines() {
        let mut e = eval(2);
        e.apply(0, primary(1, 1000), t0());
        e.apply(1, primary(1, 1000), t0());
        assert_eq!(e.topology().primary, None, "split brain");
        e.set_authority(leader(&e, "pg1"), at(1), at(1));
        assert_eq!(e.topology().primary, Some(1));
        assert!(e.topology().nodes[0].fenced);

        // pg0 is promoted again, on a newer timeline: still not the leader.
        e.apply(0, primary(5, 9000), at(2));
        e.set_authority(leader(&e, "pg1"), at(3), at(3));
        assert_eq!(e.topology().primary, Some(1));
        assert!(e.topology().nodes[0].fenced);
    }

    #[test]
    fn awaiting_the_authority_elects_no_one_and_fences_no_one() {
        let mut e = eval(2);
        e.await_authority(Source::Patroni);
        e.apply(0, primary(1, 1000), t0());
        e.apply(1, primary(2, 2000), t0());
        assert_eq!(e.topology().primary, None);
        assert!(e.topology().nodes.iter().all(|n| !n.fenced));
        e.set_authority(leader(&e, "pg0"), at(1), at(1));
        assert_eq!(
            e.topology().primary,
            Some(0),
            "the older timeline: the DCS decides"
        );
        assert!(e.topology().nodes[1].fenced);
    }

    #[test]
    fn a_standby_on_a_newer_timeline_fences_an_old_primary_whose_successor_is_unseen() {
        // A fresh evaluator (nothing remembered): pg1, promoted to
        // timeline 2, is down; pg2 streams timeline 2; pg0 is back as a
        // primary on timeline 1.
        let mut e = eval(3);
        e.apply(1, down(), t0());
        e.apply(2, standby(2, 1000), t0());
        e.apply(0, primary(1, 900), t0());
        assert_eq!(e.topology().primary, None);
        assert!(e.topology().nodes[0].fenced);
        assert_eq!(e.remembered().map(|r| r.timeline), Some(2));
    }
}
