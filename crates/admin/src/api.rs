//! `/api/v1/*`: JSON snapshots for scripts and dashboards.

use pgherd_proxy::ProxyHandle;
use serde_json::{json, Value};

/// `/api/v1/nodes`: every node with its state, and the election result.
pub(crate) fn nodes(proxy: &ProxyHandle) -> String {
    let topology = proxy.topology();
    let config = proxy.config();
    let nodes: Vec<Value> = topology
        .nodes
        .iter()
        .zip(&config.nodes)
        .map(|(n, c)| {
            json!({
                "name": n.name,
                "host": c.host,
                "port": c.port,
                "up": n.up,
                "role": n.role.as_str(),
                "fenced": n.fenced,
                "serves_reads": n.serves_reads(),
                "timeline": n.timeline,
                "lag_bytes": n.lag_bytes,
                "lag_seconds": n.lag_seconds,
                "streaming": n.streaming(),
                "last_error": n.last_error,
                "probe_seconds": n.last_sample.as_ref().map(|s| s.duration.as_secs_f64()),
            })
        })
        .collect();
    json!({
        "primary": topology.primary.map(|p| topology.nodes[p].name.clone()),
        "split_brain": topology.split_brain,
        "nodes": nodes,
    })
    .to_string()
}

/// `/api/v1/pools`: every pool with its counters.
pub(crate) fn pools(proxy: &ProxyHandle) -> String {
    let pools: Vec<Value> = proxy
        .pools()
        .into_iter()
        .map(|p| {
            json!({
                "database": p.database,
                "user": p.user,
                "node": p.node,
                "size": p.status.max_size,
                "servers": p.status.total,
                "idle": p.status.idle,
                "active": p.status.checked_out,
                "waiting": p.status.waiting,
            })
        })
        .collect();
    json!({ "clients": proxy.client_count(), "pools": pools }).to_string()
}

/// `/api/v1/events`: the last cluster events, oldest first.
pub(crate) fn events(log: &crate::events::EventLog) -> String {
    let events: Vec<Value> = log
        .recent()
        .into_iter()
        .map(|(at, text)| json!({ "at": at, "event": text }))
        .collect();
    json!({ "events": events }).to_string()
}
