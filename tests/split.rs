//! The `auto` target: reads to standbys and writes to the primary, per
//! transaction; 25006 retries; read-your-writes; least-connections balance.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::HashMap;
use std::time::Duration;

use pgherd_integration_tests::*;

async fn auto_pgherd(extra: &[&str]) -> RunningPgherd {
    let mut builder = shared_cluster()
        .pgherd()
        .general("pool_mode = \"transaction\"")
        .database("auto = { dbname = \"app\", target = \"auto\" }");
    for line in extra {
        builder = builder.general(line);
    }
    let pgherd = builder.start().await;
    pgherd.wait_standbys_readable().await;
    pgherd
}

/// Runs `ddl` on the primary (database `app`) and waits until both standbys
/// have replayed it.
async fn create(pgherd: &RunningPgherd, ddl: &str) {
    pgherd.app().await.batch_execute(ddl).await.unwrap();
    let pg = &shared_cluster().pg;
    pg.wait_caught_up(0, 1).unwrap();
    pg.wait_caught_up(0, 2).unwrap();
}

fn port(i: usize) -> u16 {
    shared_cluster().pg.node(i).port
}

async fn tally(c: &tokio_postgres::Client, sql: &str, n: usize) -> HashMap<u16, usize> {
    let mut seen = HashMap::new();
    for _ in 0..n {
        let p: u16 = simple_value(c, sql).await.parse().unwrap();
        *seen.entry(p).or_insert(0) += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_to_standbys_writes_to_the_primary() {
    let pgherd = auto_pgherd(&["read_your_writes = false"]).await;
    create(
        &pgherd,
        "CREATE TABLE split_rw (id serial PRIMARY KEY, port int)",
    )
    .await;
    let mut c = pgherd.connect("app", APP_PASSWORD, "auto").await.unwrap();
    let reads = tally(&c, "SELECT inet_server_port()", 20).await;
    assert_eq!(reads.get(&port(1)), Some(&10), "{reads:?}");
    assert_eq!(reads.get(&port(2)), Some(&10), "{reads:?}");
    let writes = tally(
        &c,
        "INSERT INTO split_rw (port) SELECT inet_server_port() RETURNING port",
        5,
    )
    .await;
    assert_eq!(writes.get(&port(0)), Some(&5), "{writes:?}");
    // Extended protocol, with tokio-postgres's named statements.
    let read = c.prepare("SELECT inet_server_port()").await.unwrap();
    for _ in 0..4 {
        let row = c.query_one(&read, &[]).await.unwrap();
        let p = row.get::<_, i32>(0) as u16;
        assert!(p == port(1) || p == port(2), "read on {p}");
    }
    let write = c
        .prepare("INSERT INTO split_rw (port) SELECT inet_server_port() RETURNING port")
        .await
        .unwrap();
    let row = c.query_one(&write, &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0) as u16, port(0));
    // A transaction stays on the primary, reads in it included.
    let tx = c.build_transaction().start().await.unwrap();
    let p: i32 = tx
        .query_one("SELECT inet_server_port()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(p as u16, port(0));
    tx.commit().await.unwrap();
    // One declared read-only runs on a standby, all of it.
    let tx = c.build_transaction().read_only(true).start().await.unwrap();
    let first: i32 = tx
        .query_one("SELECT inet_server_port()", &[])
        .await
        .unwrap()
        .get(0);
    let second: i32 = tx
        .query_one("SELECT inet_server_port()", &[])
        .await
        .unwrap()
        .get(0);
    tx.commit().await.unwrap();
    assert_eq!(first, second);
    assert_ne!(first as u16, port(0));
    assert_eq!(pgherd.handle.routing().read_only_retries, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_a_standby_refuses_runs_again_on_the_primary() {
    let pgherd = auto_pgherd(&["read_your_writes = false"]).await;
    create(&pgherd, "CREATE SEQUENCE split_seq").await;
    let c = pgherd.connect("app", APP_PASSWORD, "auto").await.unwrap();
    // Simple protocol: looks like a read, is a write.
    let mut values = Vec::new();
    for _ in 0..3 {
        values.push(simple_value(&c, "SELECT nextval('split_seq')").await);
    }
    // Extended protocol, unnamed and named statements.
    let v: i64 = c
        .query_one("SELECT nextval('split_seq')", &[])
        .await
        .unwrap()
        .get(0);
    values.push(v.to_string());
    assert_eq!(values, ["1", "2", "3", "4"]);
    let retries = || pgherd.handle.routing().read_only_retries;
    assert!(retries() >= 4, "{}", retries());
    // The standby connection went back to the pool clean: reads still work.
    // (The first request after a dropped statement carries tokio-postgres's
    // Close of it, which pgherd sends to the primary.)
    simple_value(&c, "SELECT 1").await;
    let reads = tally(&c, "SELECT inet_server_port()", 4).await;
    assert!(!reads.contains_key(&port(0)), "{reads:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_your_writes_always_finds_the_row() {
    // Its own cluster: its standby's replay is paused, so a read there
    // after a write could only miss the row.
    let cluster = TestCluster::start(1);
    let start = |ryw: &'static str| {
        let cluster = &cluster;
        async move {
            let pgherd = cluster
                .pgherd()
                .general("pool_mode = \"transaction\"")
                .general(ryw)
                .database("auto = { dbname = \"app\", target = \"auto\" }")
                .start()
                .await;
            pgherd
                .wait_topology("a readable standby", |t| t.nodes[1].serves_reads())
                .await;
            pgherd
        }
    };
    let pgherd = start("read_your_writes = true").await;
    pgherd
        .app()
        .await
        .batch_execute("CREATE TABLE ryw (id int PRIMARY KEY)")
        .await
        .unwrap();
    cluster.pg.wait_caught_up(0, 1).unwrap();
    cluster.pg.sql(1, "SELECT pg_wal_replay_pause()").unwrap();

    let c = pgherd.connect("app", APP_PASSWORD, "auto").await.unwrap();
    let insert = c.prepare("INSERT INTO ryw VALUES ($1)").await.unwrap();
    let select = c
        .prepare("SELECT count(*) FROM ryw WHERE id = $1")
        .await
        .unwrap();
    for i in 0..20i32 {
        c.execute(&insert, &[&i]).await.unwrap();
        let n: i64 = c.query_one(&select, &[&i]).await.unwrap().get(0);
        assert_eq!(n, 1, "row {i} not found right after its insert");
        let n = simple_value(&c, &format!("SELECT count(*) FROM ryw WHERE id = {i}")).await;
        assert_eq!(n, "1", "row {i} not found (simple protocol)");
    }
    // Without read-your-writes the same read goes to the paused standby
    // and misses the row: the check above is what found it.
    let careless = start("read_your_writes = false").await;
    let d = careless.connect("app", APP_PASSWORD, "auto").await.unwrap();
    d.batch_execute("INSERT INTO ryw VALUES (100)")
        .await
        .unwrap();
    assert_eq!(
        simple_value(&d, "SELECT count(*) FROM ryw WHERE id = 100").await,
        "0"
    );

    // Once the probes show the standby has replayed the writes, this
    // client's reads go there again.
    cluster.pg.sql(1, "SELECT pg_wal_replay_resume()").unwrap();
    let standby = cluster.pg.node(1).port.to_string();
    let mut on_standby = false;
    for _ in 0..200 {
        if simple_value(&c, "SELECT inet_server_port()").await == standby {
            on_standby = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(on_standby, "reads never went back to the standby");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leastconn_picks_the_least_busy_standby() {
    let pgherd = shared_cluster()
        .pgherd()
        .general("replica_balance = \"leastconn\"")
        .database("ro = { dbname = \"app\", target = \"replica\" }")
        .start()
        .await;
    pgherd.wait_standbys_readable().await;
    let session = || async {
        let c = pgherd.connect("app", APP_PASSWORD, "ro").await.unwrap();
        let p: u16 = simple_value(&c, "SELECT inet_server_port()")
            .await
            .parse()
            .unwrap();
        (c, p)
    };
    // Three sessions: two on one standby, one on the other.
    let mut sessions = vec![session().await, session().await, session().await];
    let busy = if sessions.iter().filter(|s| s.1 == port(1)).count() == 2 {
        port(1)
    } else {
        port(2)
    };
    assert_eq!(sessions.iter().filter(|s| s.1 == busy).count(), 2);
    // The one on the less busy standby leaves: both new ones go there
    // (round robin would alternate).
    sessions.retain(|s| s.1 == busy);
    for _ in 0..100 {
        if pgherd.handle.client_count() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (_a, pa) = session().await;
    let (_b, pb) = session().await;
    assert_ne!(pa, busy);
    assert_ne!(pb, busy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_or_unfinished_requests_in_auto_mode_take_no_server() {
    let pgherd = shared_cluster()
        .pgherd()
        .general("pool_mode = \"transaction\"")
        .general("read_your_writes = false")
        .database("app = { target = \"auto\" }")
        .start()
        .await;
    // A length below the minimum: 08P01, as in the other modes.
    let mut raw = RawClient::connect(&pgherd).await;
    raw.login_app().await;
    raw.send(&[pgherd_wire::frontend::QUERY, 0, 0, 0, 3]).await;
    assert_eq!(raw.expect_error().await.code, "08P01");
    assert!(raw.closed().await);
    // Half a query, then gone: classified never, no server taken.
    let mut raw = RawClient::connect(&pgherd).await;
    raw.login_app().await;
    raw.send(&[pgherd_wire::frontend::QUERY, 0, 0, 0, 100, b'S', b'E'])
        .await;
    drop(raw);
    for _ in 0..100 {
        if pgherd.handle.client_count() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(pgherd.handle.client_count(), 0);
    assert!(pgherd
        .handle
        .pools()
        .iter()
        .all(|p| p.status.checked_out == 0));
    // A request too large to hold back for classifying goes to the primary.
    let c = pgherd.app().await;
    let big = format!(
        "SELECT inet_server_port() FROM (SELECT '{}') AS x",
        "x".repeat(100_000)
    );
    assert_eq!(simple_value(&c, &big).await, port(0).to_string());
    assert_ne!(
        simple_value(&c, "SELECT inet_server_port()").await,
        port(0).to_string()
    );
}
