//! Cluster awareness on real clusters: reads spread over standbys, writes
//! only ever reach the one primary, failovers are followed, resurrected and
//! hung primaries are fenced.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::HashMap;
use std::time::{Duration, Instant};

use pgherd_cluster::Role;
use pgherd_integration_tests::*;

/// Opens `n` sessions to `db` and counts which server port each landed on.
async fn ports(pgherd: &RunningPgherd, db: &str, n: usize) -> HashMap<u16, usize> {
    let mut seen = HashMap::new();
    for _ in 0..n {
        let client = pgherd.connect("app", APP_PASSWORD, db).await.unwrap();
        let port: u16 = simple_value(&client, "SELECT inet_server_port()")
            .await
            .parse()
            .unwrap();
        *seen.entry(port).or_insert(0) += 1;
    }
    seen
}

/// Runs `n` reads on one session and counts which server port each ran on.
async fn reads_by_port(client: &tokio_postgres::Client, n: usize) -> HashMap<u16, usize> {
    let mut seen = HashMap::new();
    for _ in 0..n {
        let port = simple_value(client, "SELECT inet_server_port()").await;
        *seen.entry(port.parse().unwrap()).or_insert(0) += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_spread_over_standbys_writes_stay_on_the_primary() {
    let cluster = shared_cluster();
    let pgherd = cluster
        .pgherd()
        .database("ro = { dbname = \"app\", target = \"replica\" }")
        .start()
        .await;
    pgherd.wait_standbys_readable().await;
    let node_port = |i: usize| cluster.pg.node(i).port;
    let reads = ports(&pgherd, "ro", 10).await;
    assert_eq!(reads.get(&node_port(1)), Some(&5), "{reads:?}");
    assert_eq!(reads.get(&node_port(2)), Some(&5), "{reads:?}");
    assert_eq!(reads.get(&node_port(0)), None, "no reads on the primary");
    let writes = ports(&pgherd, "app", 5).await;
    assert_eq!(writes.get(&node_port(0)), Some(&5), "{writes:?}");

    // A standby refuses writes, as it would directly.
    let ro = pgherd.connect("app", APP_PASSWORD, "ro").await.unwrap();
    let err = ro
        .simple_query("CREATE TABLE nope (x int)")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), Some("25006"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_weights_and_priorities_shape_read_routing() {
    let cluster = shared_cluster();
    let node_port = |i: usize| cluster.pg.node(i).port;
    let ro = "ro = { dbname = \"app\", target = \"replica\" }";

    // haproxy's `weight`: three reads on pg1 for one on pg2.
    let weighted = cluster
        .pgherd()
        .database(ro)
        .node_option("pg1", "weight = 3")
        .start()
        .await;
    weighted.wait_standbys_readable().await;
    let reads = ports(&weighted, "ro", 40).await;
    assert_eq!(reads.get(&node_port(1)), Some(&30), "{reads:?}");
    assert_eq!(reads.get(&node_port(2)), Some(&10), "{reads:?}");

    // A preferred standby (e.g. the one in the local data centre) takes
    // every read while it can serve.
    let preferred = cluster
        .pgherd()
        .database(ro)
        .node_option("pg2", "priority = 200")
        .start()
        .await;
    preferred.wait_standbys_readable().await;
    let reads = ports(&preferred, "ro", 10).await;
    assert_eq!(reads.get(&node_port(2)), Some(&10), "{reads:?}");

    // Weight 0 drains it: the next priority serves.
    let drained = cluster
        .pgherd()
        .database(ro)
        .node_option("pg2", "priority = 200")
        .node_option("pg2", "weight = 0")
        .start()
        .await;
    drained.wait_standbys_readable().await;
    let reads = ports(&drained, "ro", 10).await;
    assert_eq!(reads.get(&node_port(1)), Some(&10), "{reads:?}");
}

/// A RELOAD changes the nodes' weights and priorities for the next read of
/// every session, a running one included, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_weights_change_on_reload_for_running_sessions() {
    let cluster = shared_cluster();
    let with_weight = |weight: u32| {
        cluster
            .pgherd()
            .general("pool_mode = \"transaction\"")
            .database("ro = { dbname = \"app\", target = \"replica\" }")
            .node_option("pg1", &format!("weight = {weight}"))
    };
    let first = with_weight(1);
    let pgherd = first.start().await;
    pgherd.wait_standbys_readable().await;
    let dir = std::env::temp_dir().join(format!("pgherd-weights-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("pgherd.toml");
    std::fs::write(&path, first.toml()).unwrap();
    pgherd.handle.set_config_file(path.clone());
    let client = pgherd.connect("app", APP_PASSWORD, "ro").await.unwrap();
    let pg1 = cluster.pg.node(1).port;
    let before = reads_by_port(&client, 20).await;
    assert!(before.get(&pg1).is_some_and(|&n| n > 0), "{before:?}");
    // Weight 0 takes pg1 out of reads.
    std::fs::write(&path, with_weight(0).toml()).unwrap();
    let kept = pgherd.handle.reload().unwrap();
    assert!(!kept.contains(&"nodes"), "{kept:?}");
    let after = reads_by_port(&client, 20).await;
    assert_eq!(after.get(&pg1), None, "{after:?}");
    assert_eq!(after.values().sum::<usize>(), 20);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Nodes added and removed by a RELOAD, under load: the new standby is
/// probed and joins reads, the removed one is drained (transactions finish,
/// its servers close; a session still on it after `shutdown_timeout` gets
/// 57P01), and no client of the load sees an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standbys_added_and_removed_by_reload_under_load() {
    let cluster = shared_cluster();
    let all = cluster
        .pgherd()
        .general("pool_mode = \"transaction\"")
        .general("shutdown_timeout = 1")
        .database("ro = { dbname = \"app\", target = \"replica\" }")
        .database(
            "ro_session = { dbname = \"app\", target = \"replica\", pool_mode = \"session\" }",
        );
    let (pg1, pg2) = (cluster.pg.node(1).port, cluster.pg.node(2).port);
    let first = all.clone().nodes(&[0, 1]);
    let pgherd = first.start().await;
    pgherd
        .wait_topology("pg1 serves reads", |t| t.nodes[1].serves_reads())
        .await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgherd.toml");
    std::fs::write(&path, first.toml()).unwrap();
    pgherd.handle.set_config_file(path.clone());

    // The load: reads on "ro" and writes on "app". Each read's port is
    // counted with the phase when it was sent and when it was answered:
    // 0 before the first RELOAD, 1 while pg2 joins, 2 once it serves
    // reads, 3 once pg1 is removed.
    type Seen = HashMap<(usize, usize, u16), usize>;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Seen::new()));
    let phase = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..6 {
        let reader = pgherd.connect("app", APP_PASSWORD, "ro").await.unwrap();
        let writer = pgherd.app().await;
        let (seen, phase, stop) = (seen.clone(), phase.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let mut errors = Vec::new();
            let now = || phase.load(std::sync::atomic::Ordering::SeqCst);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let sent = now();
                match reader.simple_query("SELECT inet_server_port()").await {
                    Ok(rows) => {
                        let port = rows.iter().find_map(|m| match m {
                            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0),
                            _ => None,
                        });
                        let port: u16 = port.unwrap_or_default().parse().unwrap_or_default();
                        let mut seen = seen.lock().unwrap();
                        *seen.entry((sent, now(), port)).or_default() += 1;
                    }
                    Err(e) => errors.push(e.to_string()),
                }
                if let Err(e) = writer.simple_query("SELECT pg_is_in_recovery()").await {
                    errors.push(e.to_string());
                }
            }
            errors
        }));
    }
    // Waits (hang guard only) until the load has read from `port` in a
    // request sent in phase `at` or later.
    let read_there = |at: usize, port: u16| {
        let seen = seen.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(30), async {
                while !(seen.lock().unwrap().keys()).any(|&(sent, _, p)| sent >= at && p == port) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("no read on port {port} from phase {at}"));
        }
    };
    read_there(0, pg1).await;
    // A session-mode client on pg1.
    let mut on_pg1 = None;
    for _ in 0..10 {
        let c = pgherd
            .connect("app", APP_PASSWORD, "ro_session")
            .await
            .unwrap();
        if simple_value(&c, "SELECT inet_server_port()").await == pg1.to_string() {
            on_pg1 = Some(c);
            break;
        }
    }
    let on_pg1 = on_pg1.expect("a session on pg1 (round robin over pg1 alone)");

    // Add pg2: it is probed, then serves reads.
    phase.store(1, std::sync::atomic::Ordering::SeqCst);
    std::fs::write(&path, all.toml()).unwrap();
    pgherd.handle.reload().unwrap();
    pgherd
        .wait_topology("pg2 serves reads", |t| {
            t.slot_of("pg2").is_some_and(|i| t.nodes[i].serves_reads())
        })
        .await;
    phase.store(2, std::sync::atomic::Ordering::SeqCst);
    read_there(2, pg2).await;

    // Remove pg1: reads go on, on pg2 only.
    std::fs::write(&path, all.clone().nodes(&[0, 2]).toml()).unwrap();
    pgherd.handle.reload().unwrap();
    assert_eq!(pgherd.handle.topology().slot_of("pg1"), None);
    phase.store(3, std::sync::atomic::Ordering::SeqCst);
    read_there(3, pg2).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in load {
        let errors = task.await.unwrap();
        assert!(errors.is_empty(), "clients saw errors: {errors:?}");
    }
    let seen = seen.lock().unwrap().clone();
    let any = |f: &dyn Fn(usize, usize, u16) -> bool| seen.keys().any(|&(s, a, p)| f(s, a, p));
    assert!(
        !any(&|_, answered, port| answered == 0 && port == pg2),
        "pg2 read from before it was added: {seen:?}"
    );
    assert!(
        !any(&|sent, _, port| sent == 3 && port == pg1),
        "pg1 read from after it was removed: {seen:?}"
    );

    // The session on pg1 is ended after shutdown_timeout, and pg1's
    // servers close.
    let err = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match on_pg1.simple_query("SELECT 1").await {
                Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => return e,
            }
        }
    })
    .await
    .expect("the session on the removed node ends");
    assert!(
        sqlstate(&err) == Some("57P01") || on_pg1.is_closed(),
        "{err}"
    );
    let slot = (pgherd.handle.topology().nodes.iter())
        .position(|n| n.name == "pg1")
        .unwrap();
    tokio::time::timeout(Duration::from_secs(30), async {
        while pgherd.handle.servers().iter().any(|s| s.node == slot) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("pg1's servers close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_write_and_read_only_ports_like_haproxy() {
    // The seed setup's two haproxy frontends in one config: the main port
    // writes, the second one reads from standbys, for the same database name.
    let cluster = shared_cluster();
    let pgherd = cluster.pgherd().listener("replica").start().await;
    pgherd.wait_standbys_readable().await;
    let read_only = pgherd.config_on(1, "app", APP_PASSWORD, "app");
    for _ in 0..4 {
        let (c, conn) = read_only.connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        assert_eq!(simple_value(&c, "SELECT pg_is_in_recovery()").await, "t");
    }
    let rw = pgherd.app().await;
    assert_eq!(simple_value(&rw, "SELECT pg_is_in_recovery()").await, "f");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_fallback_to_the_primary_or_refusal() {
    let cluster = shared_cluster();
    // Only the primary is configured: no standby can serve reads.
    let fallback = cluster
        .pgherd()
        .nodes(&[0])
        .database("ro = { dbname = \"app\", target = \"replica\" }")
        .start()
        .await;
    let reads = ports(&fallback, "ro", 2).await;
    assert_eq!(reads.get(&cluster.pg.node(0).port), Some(&2));

    let strict = cluster
        .pgherd()
        .nodes(&[0])
        .general("replica_fallback = false")
        .database("ro = { dbname = \"app\", target = \"replica\" }")
        .start()
        .await;
    strict
        .wait_topology("the primary", |t| t.primary.is_some())
        .await;
    let err = strict.connect("app", APP_PASSWORD, "ro").await.unwrap_err();
    assert_eq!(sqlstate(&err), Some("57P03"));
    assert!(message(&err).contains("no standby"), "{}", message(&err));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_standby_leaves_read_routing_and_comes_back() {
    let cluster = TestCluster::start(1);
    let pgherd = cluster
        .pgherd()
        .general("max_replica_lag_bytes = 8192")
        .database("ro = { dbname = \"app\", target = \"replica\" }")
        .start()
        .await;
    pgherd
        .wait_topology("a readable standby", |t| t.nodes[1].serves_reads())
        .await;
    cluster.pg.sql(1, "SELECT pg_wal_replay_pause()").unwrap();
    cluster
        .pg
        .sql(
            0,
            "CREATE TABLE filler AS SELECT g, md5(g::text) FROM generate_series(1, 10000) g",
        )
        .unwrap();
    pgherd
        .wait_topology("pg1 lagging", |t| {
            t.nodes[1].up && !t.nodes[1].lag_ok && t.nodes[1].lag_bytes.unwrap_or(0) > 8192
        })
        .await;
    let reads = ports(&pgherd, "ro", 3).await;
    assert_eq!(
        reads.get(&cluster.pg.node(0).port),
        Some(&3),
        "fallback to the primary"
    );

    cluster.pg.sql(1, "SELECT pg_wal_replay_resume()").unwrap();
    pgherd
        .wait_topology("pg1 caught up", |t| t.nodes[1].serves_reads())
        .await;
    let reads = ports(&pgherd, "ro", 3).await;
    assert_eq!(reads.get(&cluster.pg.node(1).port), Some(&3));
}

/// The port the row `id` of table `writes` was written on, if any.
fn writes_on(cluster: &TestCluster, node: usize) -> usize {
    cluster
        .pg
        .sql(node, "SELECT count(*) FROM writes")
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_then_resurrected_old_primary_is_fenced_by_every_instance() {
    let mut cluster = TestCluster::start(2);
    cluster
        .pg
        .sql(
            0,
            "CREATE TABLE writes (id serial, port int); GRANT ALL ON writes, writes_id_seq TO app",
        )
        .unwrap();
    cluster.pg.wait_caught_up(0, 1).unwrap();
    cluster.pg.wait_caught_up(0, 2).unwrap();
    let state_file = cluster.pg.dir().join("pgherd.state");
    let remember = format!("state_file = {:?}", state_file.display().to_string());
    let pgherd = cluster
        .pgherd()
        .general("probe_timeout = 0.5")
        .general("primary_wait_timeout = 20")
        .general(&remember)
        .database("ro = { dbname = \"postgres\", target = \"replica\" }")
        .start()
        .await;
    // A second instance in front of the same cluster, probing on its own
    // schedule (several instances agree through the cluster, not with
    // each other).
    let second_state = cluster.pg.dir().join("pgherd-second.state");
    let second = cluster
        .pgherd()
        .probe_interval(1.0)
        .general("primary_wait_timeout = 20")
        .general(&format!(
            "state_file = {:?}",
            second_state.display().to_string()
        ))
        .start()
        .await;
    for instance in [&pgherd, &second] {
        instance
            .wait_topology("pg0 primary", |t| t.primary == Some(0))
            .await;
    }
    let mut events = pgherd.handle.cluster().subscribe();
    let write = "INSERT INTO writes (port) SELECT inet_server_port()";

    let before = pgherd
        .connect("app", APP_PASSWORD, "postgres")
        .await
        .unwrap();
    before.batch_execute(write).await.unwrap();

    // Crash the primary, promote the standby.
    cluster.pg.stop(0, StopMode::Immediate).unwrap();
    assert!(
        before.batch_execute(write).await.is_err(),
        "its server is gone"
    );
    let promoted_at = Instant::now();
    cluster.pg.promote(1).unwrap();
    // A new session waits for the new primary and writes there.
    let after = pgherd
        .connect("app", APP_PASSWORD, "postgres")
        .await
        .unwrap();
    after.batch_execute(write).await.unwrap();
    let gap = promoted_at.elapsed();
    println!("first write through pgherd {gap:?} after promotion (probe_interval 0.2 s)");
    assert_eq!(
        simple_value(&after, "SELECT inet_server_port()").await,
        cluster.pg.node(1).port.to_string()
    );
    // pg2 follows the new primary (as `repmgr standby follow` would) and
    // makes a restartpoint on its timeline.
    cluster.pg.stop(2, StopMode::Fast).unwrap();
    cluster.pg.rejoin(2, 1).unwrap();
    cluster
        .pg
        .wait_streaming(2, Duration::from_secs(30))
        .unwrap();
    cluster.pg.sql(2, "CHECKPOINT").unwrap();

    // The old primary comes back as a primary on the old timeline: fenced,
    // by both instances.
    cluster.pg.restart(0).unwrap();
    for instance in [&pgherd, &second] {
        instance
            .wait_topology("pg0 fenced", |t| t.nodes[0].up && t.nodes[0].fenced)
            .await;
        let t = instance.handle.topology();
        assert_eq!(t.primary, Some(1));
        assert!(t.split_brain);
        assert_eq!(t.nodes[0].role, Role::Primary);
    }
    let old_rows = writes_on(&cluster, 0);
    for _ in 0..10 {
        for instance in [&pgherd, &second] {
            let c = instance
                .connect("app", APP_PASSWORD, "postgres")
                .await
                .unwrap();
            c.batch_execute(write).await.unwrap();
        }
    }
    assert_eq!(
        writes_on(&cluster, 0),
        old_rows,
        "no write reached the old primary"
    );
    assert_eq!(
        cluster
            .pg
            .sql(
                1,
                &format!(
                    "SELECT count(*) FROM writes WHERE port = {}",
                    cluster.pg.node(1).port
                )
            )
            .unwrap(),
        "21"
    );
    drop(second);
    // The split brain was reported.
    let mut seen = Vec::new();
    while let Ok(e) = events.try_recv() {
        seen.push(e.to_string());
    }
    assert!(seen.iter().any(|e| e.contains("pg0 fenced")), "{seen:?}");
    assert!(seen.iter().any(|e| e.contains("split brain")), "{seen:?}");

    // The dangerous moment: pgherd restarts while the new primary is down
    // and only the old one answers. With the state file it still knows
    // timeline 2 exists: pg0 stays fenced, writes are refused.
    let written = std::fs::read_to_string(&state_file).unwrap();
    assert!(written.contains("timeline = 2"), "{written}");
    cluster.pg.stop(1, StopMode::Fast).unwrap();
    let restarted = cluster
        .pgherd()
        .general(&remember)
        .general("primary_wait_timeout = 1")
        .start()
        .await;
    restarted
        .wait_topology("pg0 fenced after a restart", |t| {
            t.nodes[0].up && t.nodes[0].fenced && !t.nodes[1].up
        })
        .await;
    let err = restarted
        .connect("app", APP_PASSWORD, "postgres")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), Some("57P03"), "{err}");
    // Without it, a standby on the new timeline is the proof: pg2 follows
    // timeline 2, so pg0 is fenced by a pgherd that never saw pg1 either.
    let forgetful = cluster
        .pgherd()
        .general("primary_wait_timeout = 1")
        .start()
        .await;
    forgetful
        .wait_topology("pg0 fenced by pg2's timeline, without a state file", |t| {
            t.nodes[0].up && t.nodes[0].fenced && t.nodes[2].up && t.nodes[2].timeline == Some(2)
        })
        .await;
    assert_eq!(forgetful.handle.topology().primary, None);
    let err = forgetful
        .connect("app", APP_PASSWORD, "postgres")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), Some("57P03"), "{err}");
    assert_eq!(writes_on(&cluster, 0), old_rows, "nothing written to pg0");
    drop((restarted, forgetful));
    cluster.pg.restart(1).unwrap();

    // The operator rejoins the old primary as a standby (pg_rewind, as
    // `repmgr node rejoin --force-rewind`): once it streams it serves reads,
    // with no restart or reload of pgherd.
    cluster.pg.stop(0, StopMode::Fast).unwrap();
    cluster.pg.rejoin(0, 1).unwrap();
    // pg1 was restarted as well: its probe answers again before long.
    pgherd
        .wait_topology("pg0 a readable standby of pg1", |t| {
            t.nodes[0].serves_reads() && t.primary == Some(1)
        })
        .await;
    let t = pgherd.handle.topology();
    assert_eq!(t.primary, Some(1));
    assert!(!t.split_brain && !t.nodes[0].fenced);
    let ro = pgherd.connect("app", APP_PASSWORD, "ro").await.unwrap();
    assert_eq!(
        simple_value(&ro, "SELECT inet_server_port()").await,
        cluster.pg.node(0).port.to_string()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_primary_is_marked_down_then_fenced_when_it_wakes() {
    let cluster = TestCluster::start(1);
    let pgherd = cluster
        .pgherd()
        .general("probe_timeout = 0.5")
        .general("primary_wait_timeout = 30")
        .start()
        .await;
    pgherd
        .wait_topology("pg0 primary", |t| t.primary == Some(0))
        .await;
    let pinned = pgherd
        .connect("app", APP_PASSWORD, "postgres")
        .await
        .unwrap();
    assert_eq!(simple_value(&pinned, "SELECT 1").await, "1");

    cluster.pg.freeze(0).unwrap();
    let frozen_at = Instant::now();
    pgherd.wait_topology("pg0 down", |t| !t.nodes[0].up).await;
    println!(
        "hung primary marked down after {:?} (timeout 0.5 s x fall 3)",
        frozen_at.elapsed()
    );

    // A writer waits for a primary while there is none...
    let waiter = {
        let config = pgherd.config("app", APP_PASSWORD, "postgres");
        tokio::spawn(async move {
            let (c, conn) = config.connect(tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            c.simple_query("SELECT inet_server_port()").await?;
            Ok::<_, tokio_postgres::Error>(simple_value(&c, "SELECT inet_server_port()").await)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "no primary yet: the writer waits");
    cluster.pg.promote(1).unwrap();
    let port = waiter.await.unwrap().unwrap();
    assert_eq!(
        port,
        cluster.pg.node(1).port.to_string(),
        "...and lands on the new primary"
    );

    // The old primary wakes up still believing it is primary: fenced, and the
    // session pinned to it is ended.
    cluster.pg.thaw(0).unwrap();
    pgherd
        .wait_topology("pg0 fenced", |t| t.nodes[0].up && t.nodes[0].fenced)
        .await;
    // Ended by pgherd, not when its client next speaks.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while !pinned.is_closed() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the idle session on the fenced node is ended"
    );
    let err = pinned.simple_query("SELECT 1").await.unwrap_err();
    assert!(
        sqlstate(&err) == Some("57P01") || err.is_closed(),
        "{}",
        message(&err)
    );
}

/// Runs `sql` in a loop, reconnecting after an error (a client whose server
/// died gets FATAL, and reconnects as pools and drivers do), until `stop`.
/// Records in `first_ok_after` when the first success after `mark` was set
/// happened. Returns (successes, errors).
async fn hammer(
    config: tokio_postgres::Config,
    sql: &'static str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    mark: std::sync::Arc<std::sync::Mutex<Option<Instant>>>,
    first_ok_after: std::sync::Arc<std::sync::Mutex<Option<Instant>>>,
) -> (usize, usize) {
    let (mut ok, mut errors) = (0, 0);
    let mut client = None;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        if client.is_none() {
            match config.connect(tokio_postgres::NoTls).await {
                Ok((c, conn)) => {
                    tokio::spawn(conn);
                    client = Some(c);
                }
                Err(_) => {
                    errors += 1;
                    continue;
                }
            }
        }
        let Some(c) = client.as_ref() else { continue };
        match c.simple_query(sql).await {
            Ok(_) => {
                ok += 1;
                if mark.lock().unwrap().is_some() {
                    first_ok_after
                        .lock()
                        .unwrap()
                        .get_or_insert_with(Instant::now);
                }
            }
            Err(_) => {
                errors += 1;
                client = None;
            }
        }
    }
    (ok, errors)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_drill_in_transaction_mode() {
    use std::sync::atomic::AtomicBool;
    use std::sync::{Arc, Mutex};
    let mut cluster = TestCluster::start(2);
    cluster
        .pg
        .sql(0, "CREATE TABLE drill (id serial, at timestamptz default now()); GRANT ALL ON drill, drill_id_seq TO app")
        .unwrap();
    for i in 1..=2 {
        cluster.pg.wait_caught_up(0, i).unwrap();
    }
    // The default probe interval, as in production: the gap measured
    // below is what operators get.
    let pgherd = cluster
        .pgherd()
        .probe_interval(1.0)
        .general("pool_mode = \"transaction\"")
        .general("primary_wait_timeout = 20")
        .general("listen_fanout = true")
        .database("ro = { dbname = \"postgres\", target = \"replica\" }")
        .start()
        .await;
    pgherd
        .wait_topology("primary and two readable standbys", |t| {
            t.primary == Some(0) && t.nodes.iter().filter(|n| n.serves_reads()).count() == 2
        })
        .await;
    // A client listening through pgherd's own connection (listen_fanout).
    let (listener, mut notes) = connect_listening(&pgherd).await;
    listener.batch_execute("LISTEN drill").await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let promoted: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let first_write: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let mut writers = Vec::new();
    let mut readers = Vec::new();
    for _ in 0..4 {
        writers.push(tokio::spawn(hammer(
            pgherd.config("app", APP_PASSWORD, "postgres"),
            "INSERT INTO drill DEFAULT VALUES",
            Arc::clone(&stop),
            Arc::clone(&promoted),
            Arc::clone(&first_write),
        )));
        readers.push(tokio::spawn(hammer(
            pgherd.config("app", APP_PASSWORD, "ro"),
            "SELECT count(*) FROM pg_stat_activity",
            Arc::clone(&stop),
            Arc::new(Mutex::new(None)),
            Arc::new(Mutex::new(None)),
        )));
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    cluster.pg.stop(0, StopMode::Immediate).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.pg.promote(1).unwrap();
    *promoted.lock().unwrap() = Some(Instant::now());
    tokio::time::sleep(Duration::from_millis(2000)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);

    let (mut wrote, mut write_errors) = (0, 0);
    for w in writers {
        let (ok, err) = w.await.unwrap();
        wrote += ok;
        write_errors += err;
    }
    let (mut read, mut read_errors) = (0, 0);
    for r in readers {
        let (ok, err) = r.await.unwrap();
        read += ok;
        read_errors += err;
    }
    let promoted_at = promoted.lock().unwrap().unwrap();
    let first = first_write
        .lock()
        .unwrap()
        .expect("writes resumed after promotion");
    // pg_promote(wait => true) returns once the standby accepts writes;
    // pgherd may route there before psql has even returned.
    println!(
        "failover drill: {wrote} writes ({write_errors} failed, in flight at the crash), \
         {read} reads ({read_errors} failed); first write {:?} after pg_promote() returned \
         (probe_interval 1 s)",
        first.saturating_duration_since(promoted_at)
    );
    assert_eq!(read_errors, 0, "reads never fail");
    assert!(
        write_errors <= 4,
        "at most the transaction in flight per writer fails"
    );
    // Every acknowledged write after the promotion is on the new primary.
    let on_new: usize = cluster
        .pg
        .sql(1, "SELECT count(*) FROM drill")
        .unwrap()
        .parse()
        .unwrap();
    assert!(on_new > 0);
    // The listening connection follows the primary: a NOTIFY on the new
    // primary reaches the listener (those sent before it listened again are
    // lost, as for a direct connection, so it is sent until one arrives).
    let notifier = pgherd.app().await;
    let arrived = async {
        loop {
            notifier
                .batch_execute("NOTIFY drill, 'after'")
                .await
                .unwrap();
            let wait = tokio::time::timeout(Duration::from_millis(500), notes.recv());
            if let Ok(Some(n)) = wait.await {
                return n;
            }
        }
    };
    let n = tokio::time::timeout(Duration::from_secs(60), arrived)
        .await
        .expect("a notification after the failover arrives");
    assert_eq!((n.channel(), n.payload()), ("drill", "after"));
    assert_eq!(simple_value(&listener, "SELECT 1").await, "1");
}

/// A failover manager takes its time to promote (repmgrd waits
/// `reconnect_attempts × reconnect_interval`): meanwhile the standbys,
/// orphaned, keep serving reads, and clients that log in to the read-write
/// database are welcomed at once and wait in their first transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_logins_go_on_while_no_primary_is_promoted() {
    use std::sync::atomic::AtomicBool;
    use std::sync::{Arc, Mutex};
    let mut cluster = TestCluster::start(2);
    cluster
        .pg
        .sql(
            0,
            "CREATE TABLE outage (id serial, who text); GRANT ALL ON outage, outage_id_seq TO app",
        )
        .unwrap();
    for i in 1..=2 {
        cluster.pg.wait_caught_up(0, i).unwrap();
    }
    let pgherd = drill::drill_pgherd(cluster.pgherd()).start().await;
    pgherd.wait_settled(0).await;
    let stop = Arc::new(AtomicBool::new(false));
    let promoted: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let first_write: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let mut writers = Vec::new();
    let mut readers = Vec::new();
    for _ in 0..2 {
        writers.push(tokio::spawn(hammer(
            pgherd.config("app", APP_PASSWORD, "postgres"),
            "INSERT INTO outage (who) VALUES ('hammer')",
            Arc::clone(&stop),
            Arc::clone(&promoted),
            Arc::clone(&first_write),
        )));
    }
    for _ in 0..4 {
        readers.push(tokio::spawn(hammer(
            pgherd.config("app", APP_PASSWORD, "ro"),
            "SELECT 1",
            Arc::clone(&stop),
            Arc::new(Mutex::new(None)),
            Arc::new(Mutex::new(None)),
        )));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut events = pgherd.handle.cluster().subscribe();
    cluster.pg.stop(0, StopMode::Immediate).unwrap();
    pgherd
        .wait_topology("no primary, orphaned standbys", |t| {
            t.primary.is_none() && t.nodes.iter().filter(|n| n.orphaned).count() == 2
        })
        .await;
    // A login now completes without a primary (the test promotes only
    // after it returned), and its first transaction waits for one.
    let waiting = pgherd
        .connect("app", APP_PASSWORD, "postgres")
        .await
        .unwrap();
    let held = tokio::spawn(async move {
        waiting
            .simple_query("INSERT INTO outage (who) VALUES ('held')")
            .await
    });
    // libpq's read-write check is satisfied: pgherd does not pass on the
    // welcoming standby's in_hot_standby = on.
    let libpq = tokio::spawn({
        let port = pgherd.addr.port();
        async move {
            let bins = pgherd_testkit::PgBinaries::find().unwrap();
            let mut cmd = std::process::Command::new(bins.path("psql"));
            cmd.args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
                .arg(format!(
                    "host=127.0.0.1 port={port} user=app dbname=postgres \
                     target_session_attrs=read-write connect_timeout=10"
                ))
                .args(["-c", "INSERT INTO outage (who) VALUES ('libpq')"])
                .env("PGPASSWORD", APP_PASSWORD);
            output(cmd).await.unwrap()
        }
    });
    // The manager's promotion delay: reads go on meanwhile.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!held.is_finished(), "the write waits for a primary");
    cluster.pg.promote(1).unwrap();
    *promoted.lock().unwrap() = Some(Instant::now());
    held.await
        .unwrap()
        .expect("the held write lands on the new primary");
    let out = libpq.await.unwrap();
    assert!(
        out.status.success(),
        "psql with target_session_attrs=read-write: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut wrote, mut write_errors, mut read, mut read_errors) = (0, 0, 0, 0);
    for w in writers {
        let (ok, err) = w.await.unwrap();
        wrote += ok;
        write_errors += err;
    }
    for r in readers {
        let (ok, err) = r.await.unwrap();
        read += ok;
        read_errors += err;
    }
    let promoted_at = promoted.lock().unwrap().unwrap();
    let first = first_write.lock().unwrap().expect("writes resumed");
    println!(
        "delayed promotion (3 s without a primary): {read} reads ({read_errors} failed), \
         {wrote} writes ({write_errors} failed); first write {:?} after the promotion",
        first.saturating_duration_since(promoted_at)
    );
    assert_eq!(read_errors, 0, "reads never fail");
    assert!(write_errors <= 2, "at most the write in flight per writer");
    let held_rows = cluster
        .pg
        .sql(
            1,
            "SELECT count(*) FROM outage WHERE who IN ('held', 'libpq')",
        )
        .unwrap();
    assert_eq!(held_rows, "2");
    // The failover is told once, with what it did to clients.
    let (told, clients) = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let event = events.recv().await.unwrap();
            if let pgherd_cluster::Event::Cluster(pgherd_cluster::ClusterEvent::Failover {
                clients,
                ..
            }) = &event
            {
                break (event.to_string(), *clients);
            }
        }
    })
    .await
    .expect("a failover event");
    println!("{told}");
    assert!(clients.held >= 2, "the two held writes at least: {told}");
}

/// A planned switchover as the managers do it: the primary is shut down
/// with `pg_ctl stop -m fast` (its backends, the ones running a client's
/// statement included, say FATAL 57P01 before running anything more), then
/// a standby is promoted. The statements the shutdown cut short never ran,
/// so pgherd runs them on the new primary: no client sees an error, and
/// every acknowledged write is there exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_shutdown_switchover_fails_no_transaction() {
    use std::sync::atomic::AtomicBool;
    use std::sync::{Arc, Mutex};
    let mut cluster = TestCluster::start(1);
    cluster
        .pg
        .sql(
            0,
            "CREATE TABLE switch (id serial); GRANT ALL ON switch, switch_id_seq TO app",
        )
        .unwrap();
    cluster.pg.wait_caught_up(0, 1).unwrap();
    let pgherd = drill::drill_pgherd(cluster.pgherd()).start().await;
    pgherd.wait_settled(0).await;
    let stop = Arc::new(AtomicBool::new(false));
    // Busy in the server most of the time: the shutdown catches statements
    // in flight. Half the writers use the simple protocol, half prepared
    // statements (tokio-postgres: Parse/Describe/Sync, Bind/Execute/Sync,
    // then Close/Sync sent ahead of the next statement).
    let sql = "INSERT INTO switch SELECT FROM pg_sleep(0.2)";
    let mut writers: Vec<_> = (0..2)
        .map(|_| {
            tokio::spawn(hammer(
                pgherd.config("app", APP_PASSWORD, "postgres"),
                sql,
                Arc::clone(&stop),
                Arc::new(Mutex::new(None)),
                Arc::new(Mutex::new(None)),
            ))
        })
        .collect();
    for _ in 0..2 {
        let (config, stop) = (
            pgherd.config("app", APP_PASSWORD, "postgres"),
            Arc::clone(&stop),
        );
        writers.push(tokio::spawn(async move {
            let (client, conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            let (mut ok, mut errors) = (0, 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match client.execute(sql, &[]).await {
                    Ok(_) => ok += 1,
                    Err(e) => {
                        println!("prepared writer: {e:?}");
                        errors += 1;
                        break;
                    }
                }
            }
            (ok, errors)
        }));
    }
    // Statements in flight when the shutdown comes.
    wait_for_sql(
        &cluster,
        0,
        "SELECT count(*) >= 2 FROM pg_stat_activity WHERE state = 'active' AND query LIKE 'INSERT INTO switch%'",
        "t",
    )
    .await;
    cluster.pg.stop(0, StopMode::Fast).unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    cluster.pg.promote(1).unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut wrote, mut errors) = (0, 0);
    for w in writers {
        let (ok, err) = w.await.unwrap();
        wrote += ok;
        errors += err;
    }
    let retried = pgherd.handle.routing().gone_retries;
    let rows: usize = cluster
        .pg
        .sql(1, "SELECT count(*) FROM switch")
        .unwrap()
        .parse()
        .unwrap();
    println!(
        "fast-shutdown switchover: {wrote} writes acknowledged, {errors} failed, \
         {retried} run again after their server left; {rows} rows on the new primary"
    );
    assert_eq!(errors, 0, "no transaction fails");
    assert!(
        retried > 0,
        "statements in flight at the shutdown ran again"
    );
    assert_eq!(rows, wrote, "every acknowledged write, once");
}
