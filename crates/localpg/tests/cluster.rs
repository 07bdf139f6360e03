//! The launcher against the installed PostgreSQL: replication, promotion, stop and restart.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use pgherd_localpg::{ClusterSpec, LocalCluster, StopMode};

#[test]
fn primary_and_standby_replicate_promote_and_clean_up() {
    let mut c = LocalCluster::start(ClusterSpec {
        standbys: 1,
        ..ClusterSpec::default()
    })
    .expect("cluster starts");
    let dir = c.dir().to_path_buf();
    assert_eq!(c.sql(0, "SELECT pg_is_in_recovery()").unwrap(), "f");
    assert_eq!(c.sql(1, "SELECT pg_is_in_recovery()").unwrap(), "t");

    c.sql(0, "CREATE TABLE t AS SELECT 42 AS v").unwrap();
    c.wait_caught_up(0, 1).unwrap();
    assert_eq!(c.sql(1, "SELECT v FROM t").unwrap(), "42");

    let old_pid = c.node(0).pid().expect("primary runs");
    c.stop(0, StopMode::Immediate).unwrap();
    assert!(!c.node(0).is_running());
    assert!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(old_pid as i32), None).is_err());

    c.promote(1).unwrap();
    assert_eq!(c.sql(1, "SELECT pg_is_in_recovery()").unwrap(), "f");
    c.sql(1, "INSERT INTO t VALUES (43)").unwrap();

    // The crashed node restarts (crash recovery) as a second primary.
    c.restart(0).unwrap();
    assert_eq!(c.sql(0, "SELECT count(*) FROM t").unwrap(), "1");

    drop(c);
    assert!(!dir.exists(), "cluster directory removed on drop");
}

#[test]
fn a_panicking_owner_still_stops_its_cluster() {
    let (tx, rx) = std::sync::mpsc::channel();
    let owner = std::thread::spawn(move || {
        let c = LocalCluster::start(ClusterSpec {
            standbys: 0,
            ..ClusterSpec::default()
        })
        .expect("cluster starts");
        tx.send((c.dir().to_path_buf(), c.node(0).pid().expect("running")))
            .unwrap();
        panic!("test failure while the cluster runs");
    });
    assert!(owner.join().is_err(), "the owner panicked");
    let (dir, pid) = rx.recv().unwrap();
    assert!(!dir.exists(), "directory removed during unwinding");
    assert!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_err());
}

#[test]
fn freeze_stops_answers_thaw_resumes() {
    let c = LocalCluster::start(ClusterSpec {
        standbys: 0,
        ..ClusterSpec::default()
    })
    .expect("cluster starts");
    c.freeze(0).unwrap();
    let port = c.node(0).port.to_string();
    let bins = pgherd_localpg::PgBinaries::find().unwrap();
    let out = std::process::Command::new(bins.path("psql"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
            "-c",
            "SELECT 1",
        ])
        .env("PGPASSWORD", "postgres")
        .env("PGCONNECT_TIMEOUT", "2")
        .output()
        .unwrap();
    assert!(!out.status.success(), "a frozen node does not answer");
    c.thaw(0).unwrap();
    assert_eq!(c.sql(0, "SELECT 1").unwrap(), "1");
}
