//! The admin HTTP port against real clusters: metrics, health, JSON.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use pgherd_integration_tests::*;

fn sample<'a>(
    scrape: &'a prometheus_parse::Scrape,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<&'a prometheus_parse::Sample> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
}

fn value(s: Option<&prometheus_parse::Sample>) -> f64 {
    match s.map(|s| &s.value) {
        Some(prometheus_parse::Value::Gauge(v)) | Some(prometheus_parse::Value::Untyped(v)) => *v,
        other => panic!("no gauge: {other:?}"),
    }
}

async fn scrape(pgherd: &RunningPgherd) -> prometheus_parse::Scrape {
    let (status, body) = http_get(pgherd, "/metrics").await;
    assert_eq!(status, 200);
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_pools_and_nodes() {
    let pgherd = shared_cluster().pgherd().start().await;
    pgherd.wait_standbys_readable().await;
    let a = pgherd.app().await;
    let b = pgherd.app().await;
    simple_value(&a, "SELECT 1").await;
    simple_value(&b, "SELECT 1").await;
    let m = scrape(&pgherd).await;
    assert_eq!(value(sample(&m, "pgbouncer_up", &[])), 1.0);
    let pool = [("database", "app"), ("user", "app"), ("node", "pg0")];
    assert_eq!(
        value(sample(
            &m,
            "pgbouncer_pools_client_active_connections",
            &pool
        )),
        2.0
    );
    assert_eq!(
        value(sample(&m, "pgbouncer_pools_server_idle_connections", &pool)),
        0.0
    );
    assert_eq!(
        value(sample(
            &m,
            "pgherd_node_role",
            &[("node", "pg0"), ("role", "primary")]
        )),
        1.0
    );
    assert_eq!(
        value(sample(
            &m,
            "pgherd_node_role",
            &[("node", "pg1"), ("role", "standby")]
        )),
        1.0
    );
    assert_eq!(value(sample(&m, "pgherd_node_up", &[("node", "pg2")])), 1.0);
    assert_eq!(value(sample(&m, "pgherd_primary_known", &[])), 1.0);
    assert!(sample(&m, "pgherd_replication_lag_bytes", &[("node", "pg1")]).is_some());
    assert_eq!(
        value(sample(&m, "pgherd_clients", &[("state", "active")])),
        2.0
    );
    assert_eq!(
        value(sample(&m, "pgherd_clients", &[("state", "waiting")])),
        0.0
    );

    // A refused login is counted by reason.
    let auth = [("reason", "auth")];
    let counted =
        |m: &prometheus_parse::Scrape| counter(sample(m, "pgherd_login_failures_total", &auth));
    assert_eq!(counted(&m), 0.0);
    assert!(pgherd.connect("app", "wrong", "app").await.is_err());
    assert_eq!(counted(&scrape(&pgherd).await), 1.0);

    // Sessions end: their servers go idle in the pool.
    drop((a, b));
    for _ in 0..100 {
        let m = scrape(&pgherd).await;
        if value(sample(&m, "pgbouncer_pools_server_idle_connections", &pool)) == 2.0 {
            assert_eq!(
                value(sample(
                    &m,
                    "pgbouncer_pools_client_active_connections",
                    &pool
                )),
                0.0
            );
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("servers never went idle");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_endpoints_flip_on_failover() {
    let mut cluster = TestCluster::start(1);
    let pgherd = cluster.pgherd().general("probe_fall = 1").start().await;
    pgherd
        .wait_topology("pg0 primary, pg1 readable", |t| {
            t.primary == Some(0) && t.nodes[1].serves_reads()
        })
        .await;
    assert_eq!(
        http_get(&pgherd, "/primary").await,
        (200, "OK: primary is pg0\n".into())
    );
    assert_eq!(http_get(&pgherd, "/health").await.0, 200);
    let (status, body) = http_get(&pgherd, "/replica").await;
    assert_eq!(
        (status, body.as_str()),
        (200, "OK: standbys serving reads: pg1\n")
    );

    cluster.pg.stop(0, StopMode::Immediate).unwrap();
    pgherd
        .wait_topology("no primary", |t| t.primary.is_none())
        .await;
    let (status, body) = http_get(&pgherd, "/primary").await;
    assert_eq!(status, 503);
    assert!(body.contains("pg0: down"), "{body}");
    assert_eq!(http_get(&pgherd, "/ready").await.0, 503);
    assert_eq!(
        http_get(&pgherd, "/health").await.0,
        200,
        "pgherd itself is fine"
    );

    cluster.pg.promote(1).unwrap();
    pgherd
        .wait_topology("pg1 primary", |t| t.primary == Some(1))
        .await;
    assert_eq!(
        http_get(&pgherd, "/primary").await,
        (200, "OK: primary is pg1\n".into())
    );
    assert_eq!(
        http_get(&pgherd, "/replica").await.0,
        503,
        "no standby left"
    );

    let (status, body) = http_get(&pgherd, "/api/v1/nodes").await;
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["primary"], "pg1");
    assert_eq!(json["nodes"][0]["up"], false);
    assert_eq!(json["nodes"][1]["role"], "primary");
    assert_eq!(json["nodes"][1]["timeline"], 2);
    assert_eq!(http_get(&pgherd, "/nope").await.0, 404);

    // The stats page and the event log tell the same story.
    let (status, page) = http_get(&pgherd, "/").await;
    assert_eq!(status, 200);
    assert!(page.contains("<title>pgherd</title>"), "{page}");
    assert!(page.contains("primary: pg1"), "{page}");
    assert!(page.contains("primary changed: pg0 -&gt; none"), "{page}");
    let (_, events) = http_get(&pgherd, "/api/v1/events").await;
    let events: serde_json::Value = serde_json::from_str(&events).unwrap();
    let texts: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["event"].as_str())
        .collect();
    assert!(texts.contains(&"primary changed: none -> pg1"), "{texts:?}");
}

fn counter(s: Option<&prometheus_parse::Sample>) -> f64 {
    match s.map(|s| &s.value) {
        Some(prometheus_parse::Value::Counter(v)) => *v,
        other => panic!("no counter: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_under_pgbench_load() {
    let cluster = shared_cluster();
    let pgherd = cluster
        .pgherd()
        .general("pool_mode = \"transaction\"")
        .database("bench = { dbname = \"app\", pool_size = 4 }")
        .start()
        .await;
    let bins = PgBinaries::find().unwrap();
    let pgbench = |args: &[&str]| {
        let mut cmd = std::process::Command::new(bins.path("pgbench"));
        cmd.args(["-h", "127.0.0.1", "-p", &pgherd.addr.port().to_string()])
            .args(["-U", "app"])
            .args(args)
            .arg("bench")
            .env("PGPASSWORD", APP_PASSWORD);
        cmd
    };
    let init = output(pgbench(&["-i", "-s", "1", "-q"])).await.unwrap();
    assert!(init.status.success(), "{init:?}");
    let before = scrape(&pgherd).await;
    // Pools, and so their labels, are per server database.
    let db = [("database", "app")];
    let xacts_before = counter(sample(
        &before,
        "pgbouncer_stats_sql_transactions_pooled_total",
        &db,
    ));

    // Writes with a standby's replay paused: its lag shows.
    cluster.pg.sql(1, "SELECT pg_wal_replay_pause()").unwrap();
    let run = output(pgbench(&["-c", "8", "-j", "2", "-T", "3"]));
    let during = async {
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        scrape(&pgherd).await
    };
    let (out, during) = tokio::join!(run, during);
    cluster.pg.sql(1, "SELECT pg_wal_replay_resume()").unwrap();
    let out = out.unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}");
    let processed: f64 = report
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|r| r.split('/').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap();

    // During the run: eight clients on a pool of four, transactions moving,
    // the paused standby behind.
    let pool = [("database", "app"), ("user", "app"), ("node", "pg0")];
    assert!(value(sample(&during, "pgherd_clients_connected", &[])) >= 8.0);
    assert!(
        value(sample(
            &during,
            "pgbouncer_pools_server_active_connections",
            &pool
        )) <= 4.0
    );
    let xacts_during = counter(sample(
        &during,
        "pgbouncer_stats_sql_transactions_pooled_total",
        &db,
    ));
    assert!(xacts_during > xacts_before, "{xacts_during} {xacts_before}");
    assert!(
        value(sample(
            &during,
            "pgherd_replication_lag_bytes",
            &[("node", "pg1")]
        )) > 0.0
    );
    assert_eq!(
        value(sample(
            &during,
            "pgherd_node_role",
            &[("node", "pg0"), ("role", "primary")]
        )),
        1.0
    );

    // After it: every pgbench transaction counted (5 statements and a
    // BEGIN/END each: more requests than transactions), bytes both ways,
    // the histogram's count equal to the transaction count.
    let after = scrape(&pgherd).await;
    let xacts = counter(sample(
        &after,
        "pgbouncer_stats_sql_transactions_pooled_total",
        &db,
    )) - xacts_before;
    assert!(xacts >= processed, "{xacts} < {processed}");
    let queries = counter(sample(&after, "pgbouncer_stats_queries_pooled_total", &db));
    assert!(queries >= 7.0 * processed, "{queries}");
    assert!(counter(sample(&after, "pgbouncer_stats_received_bytes_total", &db)) > 0.0);
    assert!(counter(sample(&after, "pgbouncer_stats_sent_bytes_total", &db)) > 0.0);
    assert!(
        counter(sample(
            &after,
            "pgbouncer_stats_server_in_transaction_seconds_total",
            &db
        )) > 0.0
    );
    let in_queries = counter(sample(
        &after,
        "pgbouncer_stats_queries_duration_seconds_total",
        &db,
    ));
    let in_transactions = counter(sample(
        &after,
        "pgbouncer_stats_server_in_transaction_seconds_total",
        &db,
    ));
    assert!(
        in_queries > 0.0 && in_queries <= in_transactions * 1.01,
        "queries {in_queries} s within transactions {in_transactions} s"
    );
    let histogram = sample(&after, "pgherd_transaction_duration_seconds", &db).unwrap();
    match &histogram.value {
        prometheus_parse::Value::Histogram(buckets) => {
            let all = buckets.last().unwrap();
            assert!(all.less_than.is_infinite());
            let total = counter(sample(
                &after,
                "pgbouncer_stats_sql_transactions_pooled_total",
                &db,
            ));
            assert_eq!(all.count, total);
        }
        other => panic!("not a histogram: {other:?}"),
    }
    assert_eq!(
        counter(sample(
            &after,
            "pgherd_routing_decisions_total",
            &[("decision", "standby")]
        )),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_endpoints_need_an_admin_and_act() {
    use std::time::Duration;
    let cluster = shared_cluster();
    let pgherd = cluster
        .pgherd()
        .general("pool_mode = \"transaction\"")
        .general("admin_users = [\"app\"]")
        .general("stats_users = [\"md5user\"]")
        .database("ro = { dbname = \"app\", target = \"replica\" }")
        .start()
        .await;
    pgherd.wait_standbys_readable().await;
    let admin = Some(("app", APP_PASSWORD));
    let drain = "/api/v1/nodes/pg1/drain";

    // Control needs an admin_users member with the right password.
    assert_eq!(http_request(&pgherd, "POST", drain, None).await.0, 401);
    let wrong = Some(("app", "wrong"));
    assert_eq!(http_request(&pgherd, "POST", drain, wrong).await.0, 401);
    let stats = Some(("md5user", MD5_PASSWORD));
    assert_eq!(http_request(&pgherd, "POST", drain, stats).await.0, 403);
    // By default (admin_auth = "private") node states are open, who is
    // connected and the settings are not.
    assert_eq!(http_get(&pgherd, "/api/v1/nodes").await.0, 200);
    for private in ["/api/v1/clients", "/api/v1/servers", "/api/v1/config"] {
        assert_eq!(http_get(&pgherd, private).await.0, 401, "{private}");
        assert_eq!(
            http_request(&pgherd, "GET", private, stats).await.0,
            200,
            "{private}"
        );
    }

    // Drain a standby: every read goes to the other one; undrain: both again.
    let (status, body) = http_request(&pgherd, "POST", drain, admin).await;
    assert_eq!(
        (status, body.contains("\"ok\":true")),
        (200, true),
        "{body}"
    );
    let read_ports = || async {
        let mut ports = Vec::new();
        for _ in 0..6 {
            let c = pgherd.connect("app", APP_PASSWORD, "ro").await.unwrap();
            ports.push(simple_value(&c, "SELECT inet_server_port()").await);
        }
        ports
    };
    let pg1 = cluster.pg.node(1).port.to_string();
    let pg2 = cluster.pg.node(2).port.to_string();
    assert!(read_ports().await.iter().all(|p| *p == pg2));
    let (_, nodes) = http_get(&pgherd, "/api/v1/nodes").await;
    let nodes: serde_json::Value = serde_json::from_str(&nodes).unwrap();
    assert_eq!(nodes["nodes"][1]["drained"], true);
    http_request(&pgherd, "POST", "/api/v1/nodes/pg1/undrain", admin).await;
    assert!(read_ports().await.contains(&pg1));

    // Pause a database: its transactions wait; resume: they run. (New
    // logins wait too: pgherd's welcome needs a server's parameters.)
    let client = pgherd.app().await;
    let (status, _) = http_request(&pgherd, "POST", "/api/v1/databases/app/pause", admin).await;
    assert_eq!(status, 200);
    let (_, dbs) = http_get(&pgherd, "/api/v1/databases").await;
    assert!(
        dbs.contains("{\"disabled\":false,\"name\":\"app\",\"paused\":true}"),
        "{dbs}"
    );
    let query = tokio::spawn(async move { simple_value(&client, "SELECT 5").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!query.is_finished(), "ran while paused");
    http_request(&pgherd, "POST", "/api/v1/databases/app/resume", admin).await;
    assert_eq!(query.await.unwrap(), "5");

    // Unknown things are 404s (with a `*` entry every database name exists).
    for path in [
        "/api/v1/databases/app/frobnicate",
        "/api/v1/nodes/nosuch/drain",
        "/api/v1/clients/99999999/kill",
        "/api/v1/frobnicate",
    ] {
        assert_eq!(
            http_request(&pgherd, "POST", path, admin).await.0,
            404,
            "{path}"
        );
    }

    // Clients are listed and can be ended.
    let victim = pgherd.app_named("api-victim").await;
    let (_, clients) = http_request(&pgherd, "GET", "/api/v1/clients", admin).await;
    let clients: serde_json::Value = serde_json::from_str(&clients).unwrap();
    let id = clients["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["application_name"] == "api-victim")
        .expect("listed")["id"]
        .as_u64()
        .unwrap();
    let kill = format!("/api/v1/clients/{id}/kill");
    assert_eq!(http_request(&pgherd, "POST", &kill, admin).await.0, 200);
    assert!(victim.simple_query("SELECT 1").await.is_err());

    // The config, without secrets.
    let (_, config) = http_request(&pgherd, "GET", "/api/v1/config", admin).await;
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    let password = config["settings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["key"] == "probe_password")
        .unwrap();
    assert_eq!(password["value"], "(set)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_auth_all_guards_reads_but_never_health_checks() {
    let cluster = shared_cluster();
    let pgherd = cluster
        .pgherd()
        .general("admin_auth = \"all\"")
        .general("stats_users = [\"md5user\"]")
        .start()
        .await;
    for path in ["/", "/metrics", "/api/v1/nodes", "/api/v1/clients"] {
        assert_eq!(http_get(&pgherd, path).await.0, 401, "{path}");
        let stats = Some(("md5user", MD5_PASSWORD));
        assert_eq!(
            http_request(&pgherd, "GET", path, stats).await.0,
            200,
            "{path}"
        );
    }
    assert_eq!(http_get(&pgherd, "/health").await.0, 200);
}
