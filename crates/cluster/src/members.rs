//! Which nodes the cluster has, and where each came from: the `[[nodes]]`
//! of the configuration, and (with discovery) the ones a cluster manager
//! lists.
//!
//! Every node has a *slot*: its index in the topology, in the pools and in
//! routing, for the life of the process. Slots are only appended, never
//! moved, so an index a session holds always means the same server: a node
//! that leaves keeps its slot (marked removed) until it comes back with the
//! same name and address. A node whose address changes is another server:
//! it leaves, and a new slot joins. At most [`NODE_SLOTS`] slots exist
//! (haproxy's `server-template` reserves slots the same way), so the
//! per-node arrays the data path reads are sized once.

use std::collections::HashSet;

use pgherd_config::Node;

/// Slots a process can ever use.
pub const NODE_SLOTS: usize = 256;

/// Where a node came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// `[[nodes]]` in the configuration file.
    Config,
    /// `repmgr.nodes`, read by discovery.
    Repmgr,
    /// Patroni's member list, read by discovery.
    Patroni,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Config => "config",
            Source::Repmgr => "repmgr",
            Source::Patroni => "patroni",
        }
    }
}

/// A node as one source lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub node: Node,
    pub source: Source,
}

impl Member {
    /// A node of the configuration file.
    pub fn configured(node: Node) -> Member {
        Member {
            node,
            source: Source::Config,
        }
    }

    fn address(&self) -> (&str, u16) {
        (&self.node.host, self.node.port)
    }
}

/// The members of the cluster from every source: the configured nodes
/// first, then discovered ones. A discovered node with the name or the
/// address of a configured one *is* that node (the operator's entry
/// wins); among discovered nodes, the first of a name or address wins.
pub fn merge(configured: &[Member], discovered: &[Member]) -> Vec<Member> {
    let mut names: HashSet<&str> = HashSet::new();
    let mut addresses: HashSet<(&str, u16)> = HashSet::new();
    let mut out = Vec::with_capacity(configured.len() + discovered.len());
    for m in configured.iter().chain(discovered) {
        if names.insert(&m.node.name) && addresses.insert(m.address()) {
            out.push(m.clone());
        }
    }
    out
}

/// How a new member list changes the slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A new node takes a new slot, or a removed one comes back to its
    /// own (same name and address): start probing it.
    Join(usize, Member),
    /// The node in this slot left: stop probing it, drain its servers.
    Leave(usize),
    /// Same node, new weight, priority or source.
    Update(usize, Member),
}

/// One slot as it stands: its node, where that came from, and whether it
/// left.
#[derive(Debug, Clone, Copy)]
pub struct Slot<'a> {
    pub node: &'a Node,
    pub source: Source,
    pub removed: bool,
}

/// The changes that take the slots `current` to the members `desired`.
/// Joins beyond [`NODE_SLOTS`] are refused and returned by name.
pub fn plan(current: &[Slot<'_>], desired: &[Member]) -> (Vec<Change>, Vec<String>) {
    let same_server = |a: &Node, b: &Node| (&a.name, &a.host, a.port) == (&b.name, &b.host, b.port);
    let mut changes = Vec::new();
    let mut refused = Vec::new();
    for (slot, s) in current.iter().enumerate() {
        if !s.removed && !desired.iter().any(|d| same_server(&d.node, s.node)) {
            changes.push(Change::Leave(slot));
        }
    }
    let mut next_slot = current.len();
    for d in desired {
        match current.iter().position(|s| same_server(s.node, &d.node)) {
            Some(slot) if current[slot].removed => changes.push(Change::Join(slot, d.clone())),
            Some(slot) => {
                let s = current[slot];
                if *s.node != d.node || s.source != d.source {
                    changes.push(Change::Update(slot, d.clone()));
                }
            }
            None if next_slot < NODE_SLOTS => {
                changes.push(Change::Join(next_slot, d.clone()));
                next_slot += 1;
            }
            None => refused.push(d.node.name.clone()),
        }
    }
    (changes, refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, port: u16, source: Source) -> Member {
        Member {
            node: Node {
                name: name.into(),
                host: "127.0.0.1".into(),
                port,
                weight: 100,
                priority: 0,
            },
            source,
        }
    }

    fn slots(members: &[(Member, bool)]) -> Vec<Slot<'_>> {
        members
            .iter()
            .map(|(m, removed)| Slot {
                node: &m.node,
                source: m.source,
                removed: *removed,
            })
            .collect()
    }

    #[test]
    fn configured_nodes_win_over_discovered_ones_by_name_or_address() {
        let configured = [member("pg0", 5432, Source::Config)];
        let discovered = [
            member("node1", 5432, Source::Repmgr),
            member("pg0", 5433, Source::Repmgr),
            member("node2", 5434, Source::Repmgr),
            member("node2", 5435, Source::Repmgr),
        ];
        let merged = merge(&configured, &discovered);
        let names: Vec<(&str, u16)> = merged
            .iter()
            .map(|m| (m.node.name.as_str(), m.node.port))
            .collect();
        assert_eq!(names, [("pg0", 5432), ("node2", 5434)]);
        assert_eq!(merged[1].source, Source::Repmgr);
    }

    #[test]
    fn joins_append_leaves_keep_their_slot_and_the_same_server_comes_back_to_it() {
        let pg0 = member("pg0", 5432, Source::Config);
        let pg1 = member("pg1", 5433, Source::Config);
        let pg2 = member("pg2", 5434, Source::Config);
        let now = [(pg0.clone(), false), (pg1.clone(), false)];
        let (changes, refused) = plan(&slots(&now), &[pg0.clone(), pg2.clone()]);
        assert_eq!(changes, [Change::Leave(1), Change::Join(2, pg2.clone())]);
        assert!(refused.is_empty());

        // pg1 comes back to slot 1; pg2 moved to another port is another
        // server: it leaves slot 2 and joins slot 3.
        let now = [
            (pg0.clone(), false),
            (pg1.clone(), true),
            (pg2.clone(), false),
        ];
        let moved = member("pg2", 6000, Source::Config);
        let (changes, _) = plan(&slots(&now), &[pg0.clone(), pg1.clone(), moved.clone()]);
        assert_eq!(
            changes,
            [
                Change::Leave(2),
                Change::Join(1, pg1),
                Change::Join(3, moved)
            ]
        );
    }

    #[test]
    fn a_new_weight_or_source_updates_the_slot_in_place() {
        let pg0 = member("pg0", 5432, Source::Repmgr);
        let mut heavier = pg0.clone();
        heavier.node.weight = 300;
        heavier.source = Source::Config;
        let now = [(pg0, false)];
        let (changes, _) = plan(&slots(&now), std::slice::from_ref(&heavier));
        assert_eq!(changes, [Change::Update(0, heavier)]);
    }

    #[test]
    fn joins_past_the_last_slot_are_refused_by_name() {
        let full: Vec<(Member, bool)> = (0..NODE_SLOTS)
            .map(|i| {
                (
                    member(&format!("n{i}"), 1000 + i as u16, Source::Repmgr),
                    true,
                )
            })
            .collect();
        let (changes, refused) = plan(&slots(&full), &[member("late", 9999, Source::Repmgr)]);
        assert!(changes.is_empty());
        assert_eq!(refused, ["late"]);
    }
}
