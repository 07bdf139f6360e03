//! `/metrics`: Prometheus text format, built at scrape time from snapshots.
//!
//! Two families: `pgbouncer_*` with the names of the pgbouncer exporter, so
//! dashboards built for pgbouncer keep working (pools carry an extra `node`
//! label: pgherd pools per node), and `pgherd_*` for the cluster.

use pgherd_cluster::Role;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use pgherd_notify::Notifications;
use pgherd_proxy::{ProxyHandle, StatsSnapshot, DURATION_BUCKETS};
use prometheus::{Counter, CounterVec, Encoder, Gauge, GaugeVec, Opts, Registry, TextEncoder};

/// Renders every metric of `proxy` and `notifications` in the text
/// exposition format.
pub(crate) fn render(proxy: &ProxyHandle, notifications: &Notifications) -> String {
    let registry = Registry::new();
    let result = fill(&registry, proxy).and_then(|()| {
        notified(&registry, notifications)?;
        discovery(&registry, proxy)?;
        let mut out = Vec::new();
        TextEncoder::new().encode(&registry.gather(), &mut out)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    });
    let mut text = result.unwrap_or_else(|e| format!("# error rendering metrics: {e}\n"));
    histograms(&mut text, proxy);
    text
}

/// Per-database totals of every pool (nodes and users summed), sorted.
fn totals_by_database(proxy: &ProxyHandle) -> BTreeMap<String, StatsSnapshot> {
    let mut totals: BTreeMap<String, StatsSnapshot> = BTreeMap::new();
    for p in proxy.pools() {
        totals.entry(p.database).or_default().add(&p.stats);
    }
    totals
}

/// `pgherd_transaction_duration_seconds`, written by hand: the counts are
/// pgherd's own atomics, which the `prometheus` crate cannot adopt.
fn histograms(out: &mut String, proxy: &ProxyHandle) {
    use std::fmt::Write;
    let name = "pgherd_transaction_duration_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Transaction mode: how long each transaction held its server.\n# TYPE {name} histogram"
    );
    for (db, stats) in totals_by_database(proxy) {
        let db = escape_label(&db);
        let mut cumulative = 0;
        for (i, bound) in DURATION_BUCKETS.iter().enumerate() {
            cumulative += stats.duration_buckets[i];
            let _ = writeln!(
                out,
                "{name}_bucket{{database=\"{db}\",le=\"{bound}\"}} {cumulative}"
            );
        }
        let count: u64 = stats.duration_buckets.iter().sum();
        let _ = writeln!(
            out,
            "{name}_bucket{{database=\"{db}\",le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "{name}_sum{{database=\"{db}\"}} {}",
            stats.xact_time.as_secs_f64()
        );
        let _ = writeln!(out, "{name}_count{{database=\"{db}\"}} {count}");
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<CounterVec> {
    let c = CounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

/// pgbouncer exporter's `pgbouncer_stats_*` counters, per database.
fn traffic(registry: &Registry, proxy: &ProxyHandle) -> prometheus::Result<()> {
    let db = ["database"];
    let queries = counter_vec(
        registry,
        "pgbouncer_stats_queries_pooled_total",
        "Requests answered (ReadyForQuery), pgbouncer's total_query_count.",
        &db,
    )?;
    let xacts = counter_vec(
        registry,
        "pgbouncer_stats_sql_transactions_pooled_total",
        "Transactions ended (ReadyForQuery idle), pgbouncer's total_xact_count.",
        &db,
    )?;
    let received = counter_vec(
        registry,
        "pgbouncer_stats_received_bytes_total",
        "Bytes received from clients.",
        &db,
    )?;
    let sent = counter_vec(
        registry,
        "pgbouncer_stats_sent_bytes_total",
        "Bytes sent to clients.",
        &db,
    )?;
    let wait = counter_vec(
        registry,
        "pgbouncer_stats_client_wait_seconds_total",
        "Time clients waited for a server connection.",
        &db,
    )?;
    let in_tx = counter_vec(
        registry,
        "pgbouncer_stats_server_in_transaction_seconds_total",
        "Time server connections were held by transactions, pgbouncer's total_xact_time.",
        &db,
    )?;
    let in_query = counter_vec(
        registry,
        "pgbouncer_stats_queries_duration_seconds_total",
        "Time servers owed an answer to a request, pgbouncer's total_query_time.",
        &db,
    )?;
    for (name, s) in totals_by_database(proxy) {
        let l = [name.as_str()];
        queries.with_label_values(&l).inc_by(s.queries as f64);
        xacts.with_label_values(&l).inc_by(s.transactions as f64);
        received
            .with_label_values(&l)
            .inc_by(s.received_bytes as f64);
        sent.with_label_values(&l).inc_by(s.sent_bytes as f64);
        wait.with_label_values(&l).inc_by(s.wait_time.as_secs_f64());
        in_tx
            .with_label_values(&l)
            .inc_by(s.xact_time.as_secs_f64());
        in_query
            .with_label_values(&l)
            .inc_by(s.query_time.as_secs_f64());
    }
    let routing = proxy.routing();
    let decisions = counter_vec(
        registry,
        "pgherd_routing_decisions_total",
        "Sessions (session mode) or transactions (transaction mode) by where they went: \
         primary, standby, or fallback (wanted a standby, got the primary).",
        &["decision"],
    )?;
    for (d, c) in [
        ("primary", routing.primary),
        ("standby", routing.standby),
        ("fallback", routing.fallback),
    ] {
        decisions.with_label_values(&[d]).inc_by(c as f64);
    }
    let retries = Counter::with_opts(Opts::new(
        "pgherd_read_only_retries_total",
        "Reads a standby refused as writes (25006), run again on the primary.",
    ))?;
    retries.inc_by(routing.read_only_retries as f64);
    registry.register(Box::new(retries))?;
    let gone = Counter::with_opts(Opts::new(
        "pgherd_server_gone_retries_total",
        "Requests whose server left before running them (shut down, terminated), \
         run again on another server.",
    ))?;
    gone.inc_by(routing.gone_retries as f64);
    registry.register(Box::new(gone))
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

/// With `discovery` on: whether the manager's list can be read, and how
/// many nodes it sees in another role than the probes.
fn discovery(registry: &Registry, proxy: &ProxyHandle) -> prometheus::Result<()> {
    let Some(status) = proxy.cluster().discovery() else {
        return Ok(());
    };
    let manager = status.manager.as_str();
    let up = gauge_vec(
        registry,
        "pgherd_discovery_up",
        "1 when the cluster manager's node list was read at the last try.",
        &["manager"],
    )?;
    up.with_label_values(&[manager]).set(
        if status.last_error.is_none() && status.last_read.is_some() {
            1.0
        } else {
            0.0
        },
    );
    let failures = prometheus::CounterVec::new(
        Opts::new(
            "pgherd_discovery_failures_total",
            "Readings of the cluster manager's node list that failed.",
        ),
        &["manager"],
    )?;
    registry.register(Box::new(failures.clone()))?;
    failures
        .with_label_values(&[manager])
        .inc_by(status.failures as f64);
    let disagreements = gauge_vec(
        registry,
        "pgherd_discovery_disagreements",
        "Nodes the cluster manager and the probes see in different roles.",
        &["manager"],
    )?;
    disagreements
        .with_label_values(&[manager])
        .set(status.disagreements.len() as f64);
    Ok(())
}

/// `pgherd_notifications_total`: what became of each destination's
/// notifications.
fn notified(registry: &Registry, notifications: &Notifications) -> prometheus::Result<()> {
    let mut destinations = notifications.destinations().peekable();
    if destinations.peek().is_none() {
        return Ok(());
    }
    let total = counter_vec(
        registry,
        "pgherd_notifications_total",
        "Cluster-change notifications by destination and outcome: delivered, \
         refused (an error answer), lost (still failing after the last attempt), \
         dropped (the destination's queue was full).",
        &["destination", "outcome"],
    )?;
    for (destination, counts) in destinations {
        for (outcome, n) in counts.outcomes() {
            total
                .with_label_values(&[destination, outcome])
                .inc_by(n as f64);
        }
    }
    Ok(())
}

/// `listen_fanout`: each database and user's listening connection.
fn fanout(registry: &Registry, proxy: &ProxyHandle) -> prometheus::Result<()> {
    let labels = ["database", "user"];
    let channels = gauge_vec(
        registry,
        "pgherd_listen_fanout_channels",
        "listen_fanout: channels some client listens on.",
        &labels,
    )?;
    let listeners = gauge_vec(
        registry,
        "pgherd_listen_fanout_listeners",
        "listen_fanout: (client, channel) pairs listening.",
        &labels,
    )?;
    let connected = gauge_vec(
        registry,
        "pgherd_listen_fanout_connected",
        "listen_fanout: 1 while the listening connection is open on the primary.",
        &labels,
    )?;
    let received = counter_vec(
        registry,
        "pgherd_listen_fanout_received_total",
        "listen_fanout: notifications the listening connection received.",
        &labels,
    )?;
    let delivered = counter_vec(
        registry,
        "pgherd_listen_fanout_delivered_total",
        "listen_fanout: notifications queued for clients (one per listening client).",
        &labels,
    )?;
    for hub in proxy.listen_fanout() {
        let l = [hub.database.as_str(), hub.user.as_str()];
        channels.with_label_values(&l).set(hub.channels as f64);
        listeners.with_label_values(&l).set(hub.listeners as f64);
        connected
            .with_label_values(&l)
            .set(if hub.connected { 1.0 } else { 0.0 });
        received.with_label_values(&l).inc_by(hub.received as f64);
        delivered.with_label_values(&l).inc_by(hub.delivered as f64);
    }
    Ok(())
}

fn fill(registry: &Registry, proxy: &ProxyHandle) -> prometheus::Result<()> {
    traffic(registry, proxy)?;
    fanout(registry, proxy)?;
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
    let by_state = gauge_vec(
        registry,
        "pgherd_clients",
        "Client connections by state: active (idle or on a server), waiting \
         (for a server), login (not logged in yet).",
        &["state"],
    )?;
    let clients = proxy.clients();
    let waiting = clients
        .iter()
        .filter(|c| c.state() == pgherd_proxy::ClientState::Waiting)
        .count();
    let logging_in = proxy.client_count().saturating_sub(clients.len());
    for (state, n) in [
        ("active", clients.len() - waiting),
        ("waiting", waiting),
        ("login", logging_in),
    ] {
        by_state.with_label_values(&[state]).set(n as f64);
    }
    let failures = counter_vec(
        registry,
        "pgherd_login_failures_total",
        "Logins refused, by reason: auth (28P01/28000), limit (max_client_conn), \
         protocol (08P01), timeout (client_login_timeout), tls (handshake failed, or TLS \
         required and not used).",
        &["reason"],
    )?;
    let f = proxy.login_failures();
    for (reason, c) in [
        ("auth", &f.auth),
        ("limit", &f.limit),
        ("protocol", &f.protocol),
        ("timeout", &f.timeout),
        ("tls", &f.tls),
    ] {
        failures
            .with_label_values(&[reason])
            .inc_by(c.load(Ordering::Relaxed) as f64);
    }

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
    let pinned = gauge_vec(
        registry,
        "pgherd_pinned_servers",
        "Transaction mode: server connections held by clients whose session state \
         (temporary tables, LISTEN, advisory locks...) pins them.",
        &pool_labels,
    )?;
    for p in proxy.pools() {
        let labels = [p.database.as_str(), p.user.as_str(), p.node.as_str()];
        pinned.with_label_values(&labels).set(p.pinned as f64);
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
    let source = gauge_vec(
        registry,
        "pgherd_node_source",
        "1 for where the node came from (config, repmgr, patroni).",
        &["node", "source"],
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
    for (_, n) in topology.members() {
        let name = n.name.as_str();
        up.with_label_values(&[name])
            .set(if n.up { 1.0 } else { 0.0 });
        source
            .with_label_values(&[name, n.source.as_str()])
            .set(1.0);
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
