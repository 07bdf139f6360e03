//! Health endpoints in the pgsqlchk / Patroni convention: 200 or 503 and a
//! one-line reason, so any checker (keepalived `vrrp_script` with curl,
//! haproxy `httpchk`, a Kubernetes probe) can use them.
//!
//! From the moment pgherd starts draining (SIGTERM, SIGINT, console
//! `SHUTDOWN`) every endpoint answers 503: keepalived or a load balancer
//! moves the VIP away while the listeners close and the clients finish,
//! not after the process is gone.

use hyper::StatusCode;
use pgherd_cluster::Topology;

/// The status and body for `path` (`/health`, `/ready`, `/primary`, `/replica`).
/// `/replica?lag=N` also requires the standby to be at most N bytes behind.
pub(crate) fn check(
    path: &str,
    query: &str,
    topology: &Topology,
    draining: bool,
) -> (StatusCode, String) {
    if draining {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "pgherd is draining: shutting down, send new clients elsewhere".into(),
        );
    }
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
            ["pg0", "pg1"]
                .into_iter()
                .zip(5432..)
                .map(|(name, port)| {
                    pgherd_cluster::Member::configured(pgherd_config::Node {
                        name: name.into(),
                        host: "127.0.0.1".into(),
                        port,
                        weight: 100,
                        priority: 0,
                    })
                })
                .collect(),
            Thresholds {
                rise: 1,
                fall: 1,
                max_lag_bytes: None,
                max_lag: None,
                orphan_timeout: Duration::ZERO,
            },
            None,
        );
        let now = std::time::Instant::now();
        e.apply(
            0,
            if primary_up {
                sample(false, 1000)
            } else {
                Err("down".into())
            },
            now,
        );
        e.apply(1, sample(true, 900), now);
        e.topology().clone()
    }

    #[test]
    fn primary_and_ready_follow_the_election() {
        let up = topology(true);
        assert_eq!(check("/primary", "", &up, false).0, StatusCode::OK);
        assert_eq!(check("/ready", "", &up, false).1, "OK: primary is pg0");
        let down = topology(false);
        let (status, body) = check("/primary", "", &down, false);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("pg0: down"), "{body}");
        assert_eq!(check("/health", "", &down, false).0, StatusCode::OK);
    }

    #[test]
    fn a_draining_pgherd_is_unhealthy_everywhere() {
        let up = topology(true);
        for path in ["/health", "/ready", "/primary", "/replica"] {
            let (status, body) = check(path, "", &up, true);
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
            assert!(body.contains("draining"), "{body}");
        }
    }

    #[test]
    fn replica_with_lag_threshold() {
        let t = topology(true);
        assert_eq!(check("/replica", "", &t, false).0, StatusCode::OK);
        assert_eq!(check("/replica", "lag=100", &t, false).0, StatusCode::OK);
        assert_eq!(
            check("/replica", "lag=99", &t, false).0,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
