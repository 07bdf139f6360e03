//! Health endpoints in the pgsqlchk / Patroni convention: 200 or 503 and a
//! one-line reason, so any checker (keepalived `vrrp_script` with curl,
//! haproxy `httpchk`, a Kubernetes probe) can use them.

use hyper::StatusCode;
use pgherd_cluster::Topology;

/// The status and body for `path` (`/health`, `/ready`, `/primary`, `/replica`).
/// `/replica?lag=N` also requires the standby to be at most N bytes behind.
pub(crate) fn check(path: &str, query: &str, topology: &Topology) -> (StatusCode, String) {
    match path {
        "/health" => (StatusCode::OK, "OK: pgherd is serving".into()),
        "/ready" | "/primary" => match topology.primary {
            Some(p) => (
                StatusCode::OK,
                format!("OK: primary is {}", topology.nodes[p].name),
            ),
            None => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("no primary: {}", topology.describe()),
            ),
        },
        _ => {
            let max_lag: Option<u64> = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("lag="))
                .and_then(|v| v.parse().ok());
            let readable: Vec<&str> = topology
                .nodes
                .iter()
                .filter(|n| n.serves_reads())
                .filter(|n| match (max_lag, n.lag_bytes) {
                    (Some(max), Some(lag)) => lag <= max,
                    _ => true,
                })
                .map(|n| n.name.as_str())
                .collect();
            if readable.is_empty() {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("no standby serves reads: {}", topology.describe()),
                )
            } else {
                (
                    StatusCode::OK,
                    format!("OK: standbys serving reads: {}", readable.join(", ")),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgherd_cluster::topology::{Evaluator, ProbeSample, Thresholds};
    use std::time::Duration;

    fn sample(in_recovery: bool, lsn: u64) -> Result<ProbeSample, String> {
        Ok(ProbeSample {
            in_recovery,
            current_lsn: (!in_recovery).then_some(lsn),
            receive_lsn: in_recovery.then_some(lsn),
            replay_lsn: in_recovery.then_some(lsn),
            replay_age: None,
            timeline: Some(1),
            wal_receiver: in_recovery.then(|| "streaming".to_owned()),
            system_identifier: Some(1),
            duration: Duration::ZERO,
            started: None,
        })
    }

    fn topology(primary_up: bool) -> Topology {
        let mut e = Evaluator::new(
            vec!["pg0".into(), "pg1".into()],
            Thresholds {
                rise: 1,
                fall: 1,
                max_lag_bytes: None,
                max_lag: None,
            },
            None,
        );
        e.apply(
            0,
            if primary_up {
                sample(false, 1000)
            } else {
                Err("down".into())
            },
        );
        e.apply(1, sample(true, 900));
        e.topology().clone()
    }

    #[test]
    fn primary_and_ready_follow_the_election() {
        let up = topology(true);
        assert_eq!(check("/primary", "", &up).0, StatusCode::OK);
        assert_eq!(check("/ready", "", &up).1, "OK: primary is pg0");
        let down = topology(false);
        let (status, body) = check("/primary", "", &down);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("pg0: down"), "{body}");
        assert_eq!(check("/health", "", &down).0, StatusCode::OK);
    }

    #[test]
    fn replica_with_lag_threshold() {
        let t = topology(true);
        assert_eq!(check("/replica", "", &t).0, StatusCode::OK);
        assert_eq!(check("/replica", "lag=100", &t).0, StatusCode::OK);
        assert_eq!(
            check("/replica", "lag=99", &t).0,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
