//! `/metrics`: Prometheus text format, built at scrape time from snapshots.
//!
//! Two families: `pgbouncer_*` with the names of the pgbouncer exporter, so
//! dashboards built for pgbouncer keep working (pools carry an extra `node`
//! label: pgherd pools per node), and `pgherd_*` for the cluster.

use pgherd_cluster::Role;
use pgherd_proxy::ProxyHandle;
use prometheus::{Encoder, Gauge, GaugeVec, Opts, Registry, TextEncoder};

/// Renders every metric of `proxy` in the text exposition format.
pub(crate) fn render(proxy: &ProxyHandle) -> String {
    let registry = Registry::new();
    let result = fill(&registry, proxy).and_then(|()| {
        let mut out = Vec::new();
        TextEncoder::new().encode(&registry.gather(), &mut out)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    });
    result.unwrap_or_else(|e| format!("# error rendering metrics: {e}\n"))
}

fn gauge(registry: &Registry, name: &str, help: &str, value: f64) -> prometheus::Result<()> {
    let g = Gauge::with_opts(Opts::new(name, help))?;
    g.set(value);
    registry.register(Box::new(g))
}

fn gauge_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<GaugeVec> {
    let g = GaugeVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

fn fill(registry: &Registry, proxy: &ProxyHandle) -> prometheus::Result<()> {
    let config = proxy.config();
    gauge(
        registry,
        "pgbouncer_up",
        "The proxy is up and serving.",
        1.0,
    )?;
    gauge(
        registry,
        "pgbouncer_config_max_client_connections",
        "Configured max_client_conn.",
        config.general.max_client_conn as f64,
    )?;
    gauge(
        registry,
        "pgherd_clients_connected",
        "Client connections, including ones logging in.",
        proxy.client_count() as f64,
    )?;

    let pool_labels = ["database", "user", "node"];
    let client_active = gauge_vec(
        registry,
        "pgbouncer_pools_client_active_connections",
        "Clients paired with a server connection.",
        &pool_labels,
    )?;
    let client_waiting = gauge_vec(
        registry,
        "pgbouncer_pools_client_waiting_connections",
        "Clients waiting for a server connection.",
        &pool_labels,
    )?;
    let server_active = gauge_vec(
        registry,
        "pgbouncer_pools_server_active_connections",
        "Server connections in use by a client.",
        &pool_labels,
    )?;
    let server_idle = gauge_vec(
        registry,
        "pgbouncer_pools_server_idle_connections",
        "Server connections idle in the pool.",
        &pool_labels,
    )?;
    let server_used = gauge_vec(
        registry,
        "pgbouncer_pools_server_used_connections",
        "Server connections waiting for a check (pgherd resets at release: always 0).",
        &pool_labels,
    )?;
    for p in proxy.pools() {
        let labels = [p.database.as_str(), p.user.as_str(), p.node.as_str()];
        client_active
            .with_label_values(&labels)
            .set(p.status.checked_out as f64);
        client_waiting
            .with_label_values(&labels)
            .set(p.status.waiting as f64);
        server_active
            .with_label_values(&labels)
            .set(p.status.checked_out as f64);
        server_idle
            .with_label_values(&labels)
            .set(p.status.idle as f64);
        server_used.with_label_values(&labels).set(0.0);
    }

    let topology = proxy.topology();
    gauge(
        registry,
        "pgherd_primary_known",
        "1 when exactly one primary takes writes.",
        if topology.primary.is_some() { 1.0 } else { 0.0 },
    )?;
    gauge(
        registry,
        "pgherd_split_brain",
        "1 while more than one node claims to be primary.",
        if topology.split_brain { 1.0 } else { 0.0 },
    )?;
    let up = gauge_vec(
        registry,
        "pgherd_node_up",
        "The node passes its probes.",
        &["node"],
    )?;
    let role = gauge_vec(
        registry,
        "pgherd_node_role",
        "1 for the node's current role (primary, standby, fenced, unknown).",
        &["node", "role"],
    )?;
    let timeline = gauge_vec(
        registry,
        "pgherd_node_timeline",
        "Timeline of the node.",
        &["node"],
    )?;
    let lag_bytes = gauge_vec(
        registry,
        "pgherd_replication_lag_bytes",
        "WAL bytes a standby is behind the primary.",
        &["node"],
    )?;
    let lag_seconds = gauge_vec(
        registry,
        "pgherd_replication_lag_seconds",
        "Replay delay of a standby.",
        &["node"],
    )?;
    let probe = gauge_vec(
        registry,
        "pgherd_probe_duration_seconds",
        "Duration of the last successful probe.",
        &["node"],
    )?;
    for n in &topology.nodes {
        let name = n.name.as_str();
        up.with_label_values(&[name])
            .set(if n.up { 1.0 } else { 0.0 });
        let current = match (n.role, n.fenced) {
            (Role::Primary, true) => "fenced",
            (r, _) => r.as_str(),
        };
        for r in ["primary", "standby", "fenced", "unknown"] {
            role.with_label_values(&[name, r])
                .set(if r == current { 1.0 } else { 0.0 });
        }
        if let Some(tl) = n.timeline {
            timeline.with_label_values(&[name]).set(f64::from(tl));
        }
        if let Some(l) = n.lag_bytes {
            lag_bytes.with_label_values(&[name]).set(l as f64);
        }
        if let Some(l) = n.lag_seconds {
            lag_seconds.with_label_values(&[name]).set(l);
        }
        if let Some(s) = &n.last_sample {
            probe
                .with_label_values(&[name])
                .set(s.duration.as_secs_f64());
        }
    }
    Ok(())
}
