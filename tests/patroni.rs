//! Failovers run by the real Patroni (3 members, one local etcd): a
//! switchover and a failover by `patronictl`, then the leader's host
//! killed (Patroni and PostgreSQL, SIGKILL) so its leader key expires after
//! `ttl`, and the member coming back as a replica. pgherd is driven by
//! writer and reader clients throughout; each drill prints what they saw.
//!
//! One cluster serves the drills in turn (one test).

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use pgherd_integration_tests::drill::*;
use pgherd_integration_tests::*;

/// Prints a drill's figures and checks that no read failed and no
/// acknowledged write is missing on `primary`; returns the failed writes.
fn report(
    what: &str,
    cluster: &PatroniTestCluster,
    primary: usize,
    (first, writers, readers): (i64, &[Tally], &[Tally]),
    (retried, promoted): (u64, Option<f64>),
) -> Vec<String> {
    let read_errors: Vec<&String> = readers.iter().flat_map(|t| &t.errors).collect();
    let write_errors: Vec<String> = writers.iter().flat_map(|t| t.errors.clone()).collect();
    let (acked, unreplicated) = check_no_write_lost(
        |sql| cluster.pg.sql(primary, sql),
        (first, writers),
        promoted,
    );
    let gap = |ts: &[Tally]| ts.iter().map(|t| t.max_gap).max().unwrap_or_default();
    let wait = writers.iter().map(|t| t.max_wait).max().unwrap_or_default();
    let lost = match promoted {
        Some(_) => {
            format!("{unreplicated} acknowledged by the dead leader never reached a replica")
        }
        None => "0 lost".to_owned(),
    };
    println!(
        "patroni {what}: writes: {acked} acknowledged ({lost}), {} failed, longest wait {:.3} s; \
         reads: {} ok, {} failed, longest gap {:.3} s; {retried} requests run again so far",
        write_errors.len(),
        wait.as_secs_f64(),
        readers.iter().map(|t| t.ok).sum::<usize>(),
        read_errors.len(),
        gap(readers).as_secs_f64(),
    );
    assert!(
        read_errors.is_empty(),
        "{what}: reads never fail: {read_errors:?}"
    );
    write_errors
}

/// Waits until pgherd sees `primary` as the primary and every other member
/// serving reads from it.
async fn settled(pgherd: &RunningPgherd, primary: usize, what: &str) {
    wait_for(pgherd, what, |t| {
        (t.primary == Some(primary)
            && (0..t.nodes.len())
                .filter(|&i| i != primary)
                .all(|i| t.nodes[i].serves_reads() && !t.nodes[i].orphaned))
        .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patroni_switchover_failover_and_a_lost_leader() {
    let mut cluster = PatroniTestCluster::start(PatroniSpec::default());
    cluster.pg.sql(0, DRILL_TABLE).unwrap();
    for i in 1..3 {
        cluster.pg.wait_caught_up(0, i).unwrap();
    }
    let pgherd = cluster
        .pgherd()
        .probe_interval(1.0)
        .general("pool_mode = \"transaction\"")
        .general("primary_wait_timeout = 60")
        .database("ro = { dbname = \"postgres\", target = \"replica\" }")
        .start()
        .await;
    settled(&pgherd, 0, "pg0 leading, two replicas").await;
    let retried = || pgherd.handle.routing().gone_retries;

    // --- patronictl switchover pg0 -> pg1: no transaction fails.
    let load = Load::start(&pgherd, (0, 4), 4);
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.pg.switchover(0, 1).unwrap();
    settled(&pgherd, 1, "pg1 leading after the switchover").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (writers, readers) = load.finish().await;
    let failed = report(
        "switchover pg0 -> pg1",
        &cluster,
        1,
        (0, &writers, &readers),
        (retried(), None),
    );
    assert!(failed.is_empty(), "no failed transaction: {failed:?}");

    // --- patronictl failover to pg2 (planned too: pg1 is healthy).
    let load = Load::start(&pgherd, (10, 4), 4);
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.pg.failover(2).unwrap();
    settled(&pgherd, 2, "pg2 leading after the failover").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (writers, readers) = load.finish().await;
    let failed = report(
        "failover pg1 -> pg2",
        &cluster,
        2,
        (10, &writers, &readers),
        (retried(), None),
    );
    assert!(failed.is_empty(), "no failed transaction: {failed:?}");

    // --- The leader's host dies: its key expires after ttl (10 s), another
    // member takes over; reads go on meanwhile.
    let load = Load::start(&pgherd, (20, 4), 4);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let killed = unix_now();
    cluster.pg.kill_host(2).unwrap();
    let new = wait_for(&pgherd, "a new leader after pg2's host died", |t| {
        t.primary.filter(|&p| p != 2)
    })
    .await;
    let elected = unix_now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (writers, readers) = load.finish().await;
    let failed = report(
        &format!(
            "leader host killed (pg2 -> pg{new} elected {:.1} s later)",
            elected - killed
        ),
        &cluster,
        new,
        (20, &writers, &readers),
        (retried(), Some(elected)),
    );
    assert!(
        failed.len() <= writers.len(),
        "at most the write in flight per writer fails: {failed:?}"
    );

    // --- The host comes back: Patroni rejoins it as a replica (rewound).
    cluster.pg.start_member(2).unwrap();
    settled(&pgherd, new, "pg2 back as a replica").await;
}
