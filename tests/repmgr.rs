//! Failovers run by the real repmgr: repmgrd notices the primary is gone,
//! waits `reconnect_attempts × reconnect_interval` (the seed's 5 × 5 s),
//! promotes a standby and re-points the other with `repmgr standby
//! follow`; the old primary comes back with `repmgr node rejoin`. pgherd
//! is driven by writer and reader clients throughout, and each drill
//! prints what the clients saw.
//!
//! One cluster serves the drills in turn (one test): building a repmgr
//! cluster takes longer than a drill. After the failover and the rejoin,
//! a planned switchover back to the first node by repmgr's manual steps
//! (`repmgr standby switchover` needs ssh between the nodes).

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use pgherd_integration_tests::drill::*;
use pgherd_integration_tests::*;

/// When node `i` began to accept writes, to the millisecond: the time of
/// its server log's last "database system is ready to accept connections"
/// (the log's timestamps are UTC, read back through PostgreSQL).
fn promoted_at(cluster: &RepmgrTestCluster, i: usize) -> f64 {
    let log = std::fs::read_to_string(cluster.pg.nodes()[i].log_file()).unwrap();
    let line = log
        .lines()
        .rfind(|l| l.contains("database system is ready to accept connections"))
        .expect("the promoted node logged its promotion");
    let stamp = line.split(" [").next().unwrap();
    cluster
        .pg
        .sql(
            i,
            &format!("SELECT extract(epoch FROM '{stamp}'::timestamptz)"),
        )
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repmgr_failover_rejoin_and_switchover() {
    // The seed's repmgr.conf: reconnect_attempts=5, reconnect_interval=5.
    let cluster = RepmgrTestCluster::start(RepmgrSpec {
        standbys: 2,
        reconnect_attempts: 5,
        reconnect_interval: 5,
        ..RepmgrSpec::default()
    });
    cluster.pg.sql(0, DRILL_TABLE).unwrap();
    for i in 1..=2 {
        cluster.pg.wait_caught_up(0, i).unwrap();
    }
    let mut hook = Receiver::start(Vec::new()).await;
    let pgherd = cluster
        .pgherd()
        .probe_interval(1.0)
        .general("pool_mode = \"transaction\"")
        .general("primary_wait_timeout = 60")
        .database("ro = { dbname = \"postgres\", target = \"replica\" }")
        .notify(&format!("webhook_urls = [\"{}\"]", hook.url("/hook")))
        .notify("events = [\"failover\", \"switchover\"]")
        .notify("instance = \"drill\"")
        .start()
        .await;
    wait_for(&pgherd, "pg0 primary, two readable standbys", |t| {
        (t.primary == Some(0) && t.nodes.iter().filter(|n| n.serves_reads()).count() == 2)
            .then_some(())
    })
    .await;

    // --- Unplanned: the primary crashes; repmgrd promotes after 25 s.
    let mut events = pgherd.handle.cluster().subscribe();
    let seen = tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(pgherd_cluster::ClusterEvent::PrimaryChanged { to: Some(to), .. })
                    if to != "pg0" =>
                {
                    return unix_now()
                }
                Ok(e) => println!("{:.3} {e}", unix_now()),
                Err(_) => {}
            }
        }
    });
    let load = Load::start(&pgherd, (0, 4), 4);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let crashed = unix_now();
    cluster.pg.crash(0).unwrap();
    let new = wait_for(&pgherd, "repmgrd to promote a standby", |t| {
        t.primary.filter(|&p| p != 0)
    })
    .await;
    let other = 3 - new;
    // repmgrd re-points the other standby (`repmgr standby follow`).
    wait_for(
        &pgherd,
        "the other standby to follow the new primary",
        |t| {
            let n = &t.nodes[other];
            (n.serves_reads() && !n.orphaned && !n.old_timeline).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (writers, readers) = load.finish().await;
    let promoted = promoted_at(&cluster, new);
    let followed = seen.await.unwrap();
    let first_write = writers
        .iter()
        .flat_map(|t| t.acked.iter().map(|&(_, at)| at))
        .filter(|&at| at >= promoted)
        .fold(f64::INFINITY, f64::min);
    let read_errors: Vec<&String> = readers.iter().flat_map(|t| &t.errors).collect();
    let write_errors: Vec<&String> = writers.iter().flat_map(|t| &t.errors).collect();
    let read_gap = readers.iter().map(|t| t.max_gap).max().unwrap_or_default();
    let (acked, unreplicated) = check_no_write_lost(
        |sql| cluster.pg.sql(new, sql),
        (0, &writers),
        Some(promoted),
    );
    println!(
        "repmgr failover (reconnect 5 x 5 s): promotion {:.1} s after the crash; \
         pgherd elected it {:.3} s and wrote there {:.3} s after the promotion; \
         reads: {} ok, {} failed, longest gap {:.3} s; \
         writes: {acked} acknowledged ({unreplicated} acknowledged by the old primary \
         just before it crashed never reached a standby), {} failed: {write_errors:?}",
        promoted - crashed,
        followed - promoted,
        first_write - promoted,
        readers.iter().map(|t| t.ok).sum::<usize>(),
        read_errors.len(),
        read_gap.as_secs_f64(),
        write_errors.len(),
    );
    assert!(read_errors.is_empty(), "reads never fail: {read_errors:?}");
    assert!(
        write_errors.len() <= writers.len(),
        "at most the write in flight at the crash fails, per writer: {write_errors:?}"
    );
    assert!(first_write.is_finite(), "writes resumed on the new primary");
    let new_name = &cluster.pg.nodes()[new].name;
    let told = hook
        .next_with_text(&format!("failover: pg0 -> {new_name} in "))
        .await;
    assert_eq!(told.body["instance"], "drill");
    println!("webhook: {}", told.body["text"]);

    // --- The old primary rejoins as a standby (repmgr node rejoin
    // --force-rewind) and serves reads again once it streams.
    cluster.pg.rejoin(0, new).unwrap();
    wait_for(&pgherd, "the rejoined old primary to serve reads", |t| {
        t.nodes[0].serves_reads().then_some(())
    })
    .await;
    assert_eq!(cluster.pg.primary_by_repmgr(new), Some(new));
    hook.next_with_text(&format!(
        "switchover: old primary pg0 is now a standby of {new_name}"
    ))
    .await;

    // --- Planned: back to pg0 by repmgr's manual switchover (repmgrd
    // paused; the old primary stopped with a checkpoint, pg0 promoted, the
    // old primary rejoined, the other standby re-pointed).
    for i in [new, other] {
        cluster.pg.wait_caught_up(new, i).ok();
    }
    cluster.pg.wait_caught_up(new, 0).unwrap();
    cluster.pg.pause_daemons(true).unwrap();
    let load = Load::start(&pgherd, (10, 4), 4);
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.pg.stop_for_switchover(new).unwrap();
    cluster.pg.promote(0).unwrap();
    cluster.pg.rejoin(new, 0).unwrap();
    cluster.pg.follow(other).unwrap();
    cluster.pg.pause_daemons(false).unwrap();
    wait_for(
        &pgherd,
        "pg0 the primary, both standbys following it",
        |t| {
            (t.primary == Some(0)
                && [new, other]
                    .iter()
                    .all(|&i| t.nodes[i].serves_reads() && !t.nodes[i].orphaned))
            .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (writers, readers) = load.finish().await;
    let read_errors: Vec<&String> = readers.iter().flat_map(|t| &t.errors).collect();
    let write_errors: Vec<&String> = writers.iter().flat_map(|t| &t.errors).collect();
    let (acked, _) = check_no_write_lost(|sql| cluster.pg.sql(0, sql), (10, &writers), None);
    let write_wait = writers.iter().map(|t| t.max_wait).max().unwrap_or_default();
    println!(
        "repmgr switchover {new_name} -> pg0: writes: {acked} acknowledged (0 lost), {} failed, \
         longest wait {:.3} s; reads: {} ok, {} failed; {} requests run again after their \
         server left",
        write_errors.len(),
        write_wait.as_secs_f64(),
        readers.iter().map(|t| t.ok).sum::<usize>(),
        read_errors.len(),
        pgherd.handle.routing().gone_retries,
    );
    assert!(
        write_errors.is_empty(),
        "no failed transaction: {write_errors:?}"
    );
    assert!(read_errors.is_empty(), "no failed read: {read_errors:?}");
}
