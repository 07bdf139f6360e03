//! Flapping, summarised: a node that goes down and up again and again
//! would page someone for every change. After [`LIMIT`] changes of one
//! node within [`WINDOW`], its further changes are held back and one
//! `flapping` notification says so; once it has kept still for
//! [`WINDOW`], one `flapping_ended` notification says how many were held
//! back and where it ended up. Logs and the stats page still get every
//! event: only notifications are summarised. Events about the cluster as
//! a whole (primary, failover, split brain, fencing) are never held back.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use pgherd_cluster::{ClusterEvent, Event};
use tokio::time::Instant;

/// Changes of one node within [`WINDOW`] that are all announced.
pub(crate) const LIMIT: usize = 4;

/// How far back changes are counted, and how long a flapping node must
/// keep still before it is announced as steady.
pub(crate) const WINDOW: Duration = Duration::from_secs(300);

/// A notification the damper makes up: its kind, node and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Summary {
    pub kind: &'static str,
    pub node: String,
    pub message: String,
}

/// What to do with one event.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Announce it.
    Pass,
    /// Announce this summary instead: the node has just started flapping.
    Summarise(Summary),
    /// Say nothing: the node is flapping and was announced as such.
    Hold,
}

/// Recent changes per node.
#[derive(Debug, Default)]
pub(crate) struct Flaps {
    nodes: HashMap<String, Node>,
}

#[derive(Debug, Default)]
struct Node {
    /// When its recent changes happened, oldest first (within [`WINDOW`]).
    changes: VecDeque<Instant>,
    /// Set while it flaps.
    held: Option<Held>,
}

#[derive(Debug)]
struct Held {
    count: u32,
    /// The last change held back, as its message says it.
    last: String,
    since: Instant,
}

/// The node events a flapping node repeats.
fn node_change(event: &Event) -> Option<&str> {
    match event {
        Event::Cluster(
            ClusterEvent::NodeUp { node }
            | ClusterEvent::NodeDown { node, .. }
            | ClusterEvent::RoleChanged { node, .. }
            | ClusterEvent::LagOverThreshold { node }
            | ClusterEvent::LagUnderThreshold { node }
            | ClusterEvent::Orphaned { node }
            | ClusterEvent::OrphanEnded { node, .. },
        ) => Some(node),
        _ => None,
    }
}

impl Flaps {
    /// Decides about `event`, seen at `now`.
    pub(crate) fn admit(&mut self, event: &Event, now: Instant) -> Verdict {
        let Some(name) = node_change(event) else {
            return Verdict::Pass;
        };
        let node = self.nodes.entry(name.to_owned()).or_default();
        node.changes.push_back(now);
        while node
            .changes
            .front()
            .is_some_and(|&t| now.duration_since(t) > WINDOW)
        {
            node.changes.pop_front();
        }
        if let Some(held) = &mut node.held {
            held.count += 1;
            held.last = event.to_string();
            return Verdict::Hold;
        }
        if node.changes.len() <= LIMIT {
            return Verdict::Pass;
        }
        let first = node.changes.front().copied().unwrap_or(now);
        node.held = Some(Held {
            count: 0,
            last: event.to_string(),
            since: now,
        });
        Verdict::Summarise(Summary {
            kind: "flapping",
            node: name.to_owned(),
            message: format!(
                "node {name} is flapping: {} changes in {:.0} s, the last: {event}; \
                 its changes are not notified until it keeps still for {:.0} min",
                node.changes.len(),
                now.duration_since(first).as_secs_f64(),
                WINDOW.as_secs_f64() / 60.0
            ),
        })
    }

    /// The nodes that flapped and have kept still for [`WINDOW`] by `now`,
    /// each announced once and then forgotten.
    pub(crate) fn steady(&mut self, now: Instant) -> Vec<Summary> {
        let mut summaries = Vec::new();
        for (name, node) in &mut self.nodes {
            let quiet = node
                .changes
                .back()
                .is_none_or(|&t| now.duration_since(t) >= WINDOW);
            if !quiet {
                continue;
            }
            if let Some(held) = node.held.take() {
                summaries.push(Summary {
                    kind: "flapping_ended",
                    node: name.clone(),
                    message: format!(
                        "node {name} stopped flapping: {} changes held back over {:.0} s; \
                         the last: {}",
                        held.count,
                        now.duration_since(held.since).as_secs_f64(),
                        held.last
                    ),
                });
            }
        }
        self.nodes
            .retain(|_, n| n.held.is_some() || !n.changes.is_empty());
        summaries.sort_by(|a, b| a.node.cmp(&b.node));
        summaries
    }

    /// When [`Flaps::steady`] may next have something to say.
    pub(crate) fn next_check(&self) -> Option<Instant> {
        self.nodes
            .values()
            .filter(|n| n.held.is_some())
            .filter_map(|n| n.changes.back())
            .map(|&t| t + WINDOW)
            .min()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn down(node: &str) -> Event {
        Event::Cluster(ClusterEvent::NodeDown {
            node: node.into(),
            reason: "refused".into(),
        })
    }

    fn up(node: &str) -> Event {
        Event::Cluster(ClusterEvent::NodeUp { node: node.into() })
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_that_keeps_changing_is_summarised_once_then_held() {
        let mut flaps = Flaps::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        for i in 0..LIMIT as u64 {
            let e = if i % 2 == 0 { down("pg1") } else { up("pg1") };
            assert_eq!(flaps.admit(&e, at(i * 10)), Verdict::Pass, "change {i}");
        }
        // Another node is not affected.
        assert_eq!(flaps.admit(&down("pg2"), at(41)), Verdict::Pass);
        let Verdict::Summarise(s) = flaps.admit(&down("pg1"), at(40)) else {
            panic!("the fifth change is summarised");
        };
        assert_eq!((s.kind, s.node.as_str()), ("flapping", "pg1"));
        assert!(s.message.contains("5 changes in 40 s"), "{}", s.message);
        assert_eq!(flaps.admit(&up("pg1"), at(50)), Verdict::Hold);
        assert_eq!(flaps.admit(&down("pg1"), at(60)), Verdict::Hold);
        // Events about the cluster are never held back.
        let split = Event::Cluster(ClusterEvent::SplitBrainResolved);
        assert_eq!(flaps.admit(&split, at(61)), Verdict::Pass);

        assert_eq!(flaps.next_check(), Some(at(60) + WINDOW));
        assert!(flaps
            .steady(at(60) + WINDOW - Duration::from_secs(1))
            .is_empty());
        let ended = flaps.steady(at(60) + WINDOW);
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].kind, "flapping_ended");
        assert!(
            ended[0].message.contains("2 changes held back")
                && ended[0].message.ends_with("node pg1 is down: refused"),
            "{}",
            ended[0].message
        );
        assert!(flaps.steady(at(60) + WINDOW * 2).is_empty(), "said once");
        assert_eq!(flaps.next_check(), None);
        // Steady again: its next change is announced as usual.
        assert_eq!(flaps.admit(&up("pg1"), at(60) + WINDOW * 2), Verdict::Pass);
    }

    #[tokio::test(start_paused = true)]
    async fn changes_spread_wider_than_the_window_never_count_as_flapping() {
        let mut flaps = Flaps::default();
        let t0 = Instant::now();
        for i in 0..20u32 {
            let at = t0 + (WINDOW / LIMIT as u32 + Duration::from_secs(1)) * i;
            assert_eq!(flaps.admit(&down("pg1"), at), Verdict::Pass, "change {i}");
        }
    }
}
