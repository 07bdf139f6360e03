//! `/api/v1/*`: JSON snapshots for scripts and dashboards.

use std::time::SystemTime;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use pgherd_proxy::{ClientState, ControlError, ProxyHandle, ServerState};
use serde_json::{json, Value};

use crate::reply;

/// `/api/v1/nodes`: every node with its state and where it came from
/// (`config`, `repmgr`, `patroni`), and the election result.
pub(crate) fn nodes(proxy: &ProxyHandle) -> String {
    let topology = proxy.topology();
    let nodes: Vec<Value> = topology
        .members()
        .map(|(i, n)| {
            let c = &n.node;
            json!({
                "name": n.name,
                "source": n.source.as_str(),
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
                "weight": c.weight,
                "priority": c.priority,
                "drained": proxy.node_drained(i),
            })
        })
        .collect();
    let discovery = proxy.cluster().discovery().map(|d| {
        json!({
            "manager": d.manager.as_str(),
            "last_read": d.last_read.map(unix),
            "last_error": d.last_error,
            "failures": d.failures,
            "disagreements": d.disagreements.iter().map(|x| json!({
                "node": x.node,
                "manager_says": x.manager_says.as_str(),
                "probes_say": x.probes_say.as_str(),
            })).collect::<Vec<_>>(),
            "leader": topology.authority.as_ref()
                .and_then(|a| a.leader.as_ref())
                .map(|l| l.name.clone()),
        })
    });
    json!({
        "primary": topology.primary.map(|p| topology.nodes[p].name.clone()),
        "split_brain": topology.split_brain,
        "nodes": nodes,
        "discovery": discovery,
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

/// `/api/v1/notifications`: what became of each `[notify]` destination's
/// notifications (labels as in the logs: no webhook path, no bot token).
pub(crate) fn notifications(n: &pgherd_notify::Notifications) -> String {
    let destinations: Vec<Value> = n
        .destinations()
        .map(|(label, counts)| {
            let mut row = serde_json::Map::new();
            row.insert("destination".into(), label.into());
            for (outcome, count) in counts.outcomes() {
                row.insert(outcome.into(), count.into());
            }
            Value::Object(row)
        })
        .collect();
    json!({ "destinations": destinations }).to_string()
}

/// Seconds since the Unix epoch.
fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// `/api/v1/databases`: database names clients use, paused or disabled.
pub(crate) fn databases(proxy: &ProxyHandle) -> String {
    let dbs: Vec<Value> = proxy
        .databases()
        .into_iter()
        .map(|d| json!({ "name": d.name, "paused": d.paused, "disabled": d.disabled }))
        .collect();
    json!({ "databases": dbs }).to_string()
}

/// `/api/v1/clients`: every logged-in client.
pub(crate) fn clients(proxy: &ProxyHandle) -> String {
    let clients: Vec<Value> = proxy
        .clients()
        .iter()
        .map(|c| {
            let (waited, _) = c.waiting_since();
            json!({
                "id": c.id,
                "user": c.user,
                "database": c.database,
                "addr": c.addr.to_string(),
                "application_name": c.application_name,
                "state": match c.state() {
                    ClientState::Active => "active",
                    ClientState::Waiting => "waiting",
                },
                "waiting_seconds": waited.map(|w| w.as_secs_f64()),
                "server": c.server(),
                "connected_at": unix(c.connected),
            })
        })
        .collect();
    json!({ "clients": clients }).to_string()
}

/// `/api/v1/servers`: every open server connection.
pub(crate) fn servers(proxy: &ProxyHandle) -> String {
    let nodes = &proxy.topology().nodes;
    let servers: Vec<Value> = proxy
        .servers()
        .iter()
        .map(|s| {
            json!({
                "id": s.id,
                "node": nodes.get(s.node).map(|n| n.name.clone()),
                "user": s.user,
                "database": s.database,
                "addr": s.addr.to_string(),
                "pid": s.pid,
                "state": match s.state() {
                    ServerState::Active => "active",
                    ServerState::Idle => "idle",
                },
                "client": s.client(),
                "connected_at": unix(s.connected),
            })
        })
        .collect();
    json!({ "servers": servers }).to_string()
}

/// `/api/v1/config`: the `[pgherd]` settings with their defaults (secrets
/// show only whether they are set), nodes and database entries.
pub(crate) fn config(proxy: &ProxyHandle) -> String {
    let config = proxy.config();
    let settings: Vec<Value> = pgherd_config::settings(&config.general)
        .into_iter()
        .map(|(key, value, default)| json!({ "key": key, "value": value, "default": default }))
        .collect();
    let nodes: Vec<Value> = config
        .nodes
        .iter()
        .map(|n| json!({ "name": n.name, "host": n.host, "port": n.port, "weight": n.weight, "priority": n.priority }))
        .collect();
    let databases: Vec<Value> = config
        .databases
        .iter()
        .map(|(name, d)| {
            json!({
                "name": name,
                "dbname": d.dbname,
                "user": d.user,
                "pool_size": d.pool_size,
                "pool_mode": d.pool_mode.map(|m| format!("{m:?}").to_lowercase()),
                "target": d.target.map(|t| format!("{t:?}").to_lowercase()),
            })
        })
        .collect();
    json!({ "settings": settings, "nodes": nodes, "databases": databases }).to_string()
}

/// A `POST` control endpoint: runs it, answers 200 with `{"ok": true}`,
/// 404 for an unknown path, database, node or client.
pub(crate) async fn control(proxy: &ProxyHandle, path: &str) -> Response<Full<Bytes>> {
    let parts: Vec<&str> = path
        .trim_start_matches("/api/v1/")
        .split('/')
        .filter(|p| !p.is_empty())
        .collect();
    if parts.as_slice() == ["reload"] {
        return match proxy.reload() {
            Ok(kept) => reply(
                StatusCode::OK,
                "application/json",
                json!({ "ok": true, "not_applied_until_restart": kept }).to_string(),
            ),
            Err(e) => reply(
                StatusCode::BAD_REQUEST,
                "application/json",
                json!({ "ok": false, "error": e.to_string() }).to_string(),
            ),
        };
    }
    let result: Result<Value, ControlError> = match parts.as_slice() {
        ["pause"] => proxy.pause(None).await.map(|()| json!({})),
        ["resume"] => proxy.resume(None).map(|()| json!({})),
        ["reconnect"] => proxy
            .reconnect(None)
            .map(|n| json!({ "marked_servers": n })),
        ["databases", db, action] => match *action {
            "pause" => proxy.pause(Some(db)).await.map(|()| json!({})),
            "resume" => proxy.resume(Some(db)).map(|()| json!({})),
            "disable" => proxy.set_database_disabled(db, true).map(|()| json!({})),
            "enable" => proxy.set_database_disabled(db, false).map(|()| json!({})),
            "kill" => proxy
                .kill_database(db)
                .map(|killed| json!({ "killed_clients": killed })),
            "reconnect" => proxy
                .reconnect(Some(db))
                .map(|n| json!({ "marked_servers": n })),
            _ => return not_found(path),
        },
        ["nodes", node, action @ ("drain" | "undrain")] => proxy
            .set_node_drained(node, *action == "drain")
            .map(|()| json!({})),
        ["clients", id, "kill"] => match id.parse() {
            Ok(id) => proxy.kill_client(id).map(|()| json!({})),
            Err(_) => return not_found(path),
        },
        _ => return not_found(path),
    };
    match result {
        Ok(mut body) => {
            body["ok"] = json!(true);
            tracing::info!("admin API: POST {path}");
            reply(StatusCode::OK, "application/json", body.to_string())
        }
        Err(e) => reply(
            StatusCode::NOT_FOUND,
            "application/json",
            json!({ "ok": false, "error": e.to_string() }).to_string(),
        ),
    }
}

fn not_found(path: &str) -> Response<Full<Bytes>> {
    reply(
        StatusCode::NOT_FOUND,
        "application/json",
        json!({ "ok": false, "error": format!("no control endpoint {path}") }).to_string(),
    )
}
