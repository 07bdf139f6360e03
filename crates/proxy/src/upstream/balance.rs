//! How a read picks a standby: `replica_balance`, node `weight` and
//! `priority`.
//!
//! A pure function of the candidates and a turn counter, so it is tested
//! alone here and measured alone by `cargo bench -p pgherd-bench --bench
//! decisions` (it runs for every read routed to a standby); `route` feeds it
//! the standbys that may serve a read.

use pgherd_config::Balance;

/// A standby that may serve a read, with what balancing needs to know.
#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    /// Index of the node in the configuration.
    pub node: usize,
    pub weight: u32,
    pub priority: u32,
    /// Sessions or transactions on it now (leastconn only).
    pub load: usize,
}

/// Picks among `candidates`: only the highest priority present (weight 0
/// nodes excluded), then by weight — round robin gives each node `weight`
/// turns in every cycle of the total; leastconn compares load per weight,
/// ties going to the next node in `turn` so equal loads still rotate.
/// Walks the iterator a few times instead of collecting: no allocation.
pub fn choose(
    candidates: impl Iterator<Item = Candidate> + Clone,
    balance: Balance,
    turn: usize,
    nodes: usize,
) -> Option<usize> {
    let weighted = candidates.filter(|c| c.weight > 0);
    let top = weighted.clone().map(|c| c.priority).max()?;
    let tier = weighted.filter(move |c| c.priority == top);
    match balance {
        Balance::RoundRobin => {
            let total: u64 = tier.clone().map(|c| u64::from(c.weight)).sum();
            let mut k = turn as u64 % total.max(1);
            for c in tier {
                if k < u64::from(c.weight) {
                    return Some(c.node);
                }
                k -= u64::from(c.weight);
            }
            None
        }
        Balance::LeastConn => {
            let n = nodes.max(1);
            let rotation = |c: &Candidate| (c.node + n - turn % n) % n;
            // load_a / weight_a vs load_b / weight_b, without division.
            tier.min_by(|a, b| {
                let per_weight_a = a.load as u128 * u128::from(b.weight);
                let per_weight_b = b.load as u128 * u128::from(a.weight);
                per_weight_a
                    .cmp(&per_weight_b)
                    .then_with(|| rotation(a).cmp(&rotation(b)))
            })
            .map(|c| c.node)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidates(list: &[(u32, u32, usize)]) -> Vec<Candidate> {
        list.iter()
            .enumerate()
            .map(|(node, &(weight, priority, load))| Candidate {
                node,
                weight,
                priority,
                load,
            })
            .collect()
    }

    fn counts(list: &[(u32, u32, usize)], balance: Balance, picks: usize) -> Vec<usize> {
        let c = candidates(list);
        let mut n = vec![0; list.len()];
        for turn in 0..picks {
            if let Some(i) = choose(c.iter().copied(), balance, turn, list.len()) {
                n[i] += 1;
            }
        }
        n
    }

    #[test]
    fn round_robin_follows_weights() {
        assert_eq!(
            counts(&[(1, 100, 0), (1, 100, 0)], Balance::RoundRobin, 10),
            [5, 5]
        );
        assert_eq!(
            counts(&[(3, 100, 0), (1, 100, 0)], Balance::RoundRobin, 40),
            [30, 10]
        );
        assert_eq!(
            counts(&[(0, 100, 0), (2, 100, 0)], Balance::RoundRobin, 10),
            [0, 10],
            "weight 0 takes no reads"
        );
    }

    #[test]
    fn the_highest_priority_present_takes_the_reads() {
        assert_eq!(
            counts(
                &[(1, 50, 0), (1, 100, 0), (1, 100, 0)],
                Balance::RoundRobin,
                10
            ),
            [0, 5, 5]
        );
        assert_eq!(
            counts(&[(1, 50, 0), (1, 100, 0)], Balance::LeastConn, 10),
            [0, 10],
            "even when the preferred node is busier"
        );
        // The preferred tier is gone (not a candidate): the next one serves.
        assert_eq!(counts(&[(1, 50, 0)], Balance::RoundRobin, 3), [3]);
        assert_eq!(
            counts(&[(1, 50, 0), (0, 100, 0)], Balance::RoundRobin, 3),
            [3, 0],
            "a weight-0 node does not hide the tier below it"
        );
        assert_eq!(counts(&[], Balance::RoundRobin, 3), Vec::<usize>::new());
    }

    #[test]
    fn least_connections_per_weight() {
        // 4 sessions on a weight-4 node count like 1 on a weight-1 node.
        assert_eq!(
            counts(&[(4, 100, 3), (1, 100, 1)], Balance::LeastConn, 1),
            [1, 0]
        );
        assert_eq!(
            counts(&[(4, 100, 5), (1, 100, 1)], Balance::LeastConn, 1),
            [0, 1]
        );
        assert_eq!(
            counts(&[(1, 100, 2), (1, 100, 2)], Balance::LeastConn, 10),
            [5, 5],
            "ties rotate"
        );
    }
}
