//! Failovers run by the real Patroni (3 members, one local etcd): a
//! switchover and a failover by `patronictl`, then the leader's host
//! killed (Patroni and PostgreSQL, SIGKILL) so its leader key expires after
//! `ttl`, and the member coming back as a replica. pgherd is driven by
//! writer and reader clients throughout; each drill prints what they saw.
//!
//! pgherd reads Patroni's member list (`discovery = "patroni"`, from the
//! REST API), whose leader is the fencing authority; a second instance
//! knowing only pg0 from its configuration finds the others in Patroni's
//! DCS (etcd) itself. At the end a replica is
//! promoted behind Patroni's back (its agent frozen): it is on a newer
//! timeline than the leader, yet neither instance lets it take a write.
//!
//! One cluster serves the drills in turn (one test).

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use pgherd_cluster::{ClusterEvent, Source};
use pgherd_integration_tests::drill::*;
use pgherd_integration_tests::*;

/// A planned drill: writers and readers through pgherd while `action`
/// hands the leadership to member `to`; no transaction may fail.
async fn planned(
    (cluster, pgherd): (&PatroniTestCluster, &RunningPgherd),
    (what, first, to): (&str, i64, usize),
    action: impl FnOnce() -> Result<(), LocalPgError>,
) {
    let load = Load::start(pgherd, (first, 4), 4);
    tokio::time::sleep(Duration::from_secs(1)).await;
    action().unwrap();
    pgherd.wait_settled(to).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (writers, readers) = load.finish().await;
    let failed = report(
        &format!("patroni {what}"),
        |sql| cluster.pg.sql(to, sql),
        (first, &writers, &readers),
        None,
        pgherd.handle.routing().gone_retries,
    );
    assert!(failed.is_empty(), "no failed transaction: {failed:?}");
}

/// The port of the server a new session's write goes to.
async fn write_port(pgherd: &RunningPgherd) -> String {
    let writer = pgherd
        .connect("app", APP_PASSWORD, "postgres")
        .await
        .unwrap();
    simple_value(&writer, "SELECT inet_server_port()").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patroni_switchover_failover_and_a_lost_leader() {
    let mut cluster = PatroniTestCluster::start(PatroniSpec::default());
    cluster.pg.sql(0, DRILL_TABLE).unwrap();
    for i in 1..3 {
        cluster.pg.wait_caught_up(0, i).unwrap();
    }
    let urls: Vec<String> = (0..3)
        .map(|i| format!("{:?}", cluster.pg.rest_url(i).unwrap()))
        .collect();
    let discovery = |b: PgherdBuilder| {
        b.general("discovery = \"patroni\"")
            .general(&format!("patroni_urls = [{}]", urls.join(", ")))
            .general("discovery_interval = 1")
    };
    let pgherd = discovery(drill_pgherd(cluster.pgherd())).start().await;
    pgherd.wait_settled(0).await;
    // The second instance reads Patroni's DCS itself.
    let second = cluster
        .pgherd()
        .nodes(&[0])
        .general("discovery = \"patroni\"")
        .general(&format!(
            "patroni_etcd_urls = [{:?}]",
            cluster.pg.etcd_url()
        ))
        .general("patroni_scope = \"pgherd\"")
        .general("patroni_namespace = \"/pgherd/\"")
        .general("discovery_interval = 1")
        .start()
        .await;
    second
        .wait_topology("pg1 and pg2 from Patroni, pg0 its leader", |t| {
            let from_patroni = |name: &str| {
                t.slot_of(name).is_some_and(|i| {
                    t.nodes[i].source == Source::Patroni && t.nodes[i].serves_reads()
                })
            };
            let leader = t.authority.as_ref().and_then(|a| a.leader.as_ref());
            from_patroni("pg1") && from_patroni("pg2") && leader.is_some_and(|l| l.name == "pg0")
        })
        .await;
    planned((&cluster, &pgherd), ("switchover pg0 -> pg1", 0, 1), || {
        cluster.pg.switchover(0, 1)
    })
    .await;
    // patronictl failover is planned too: pg1 is healthy.
    planned((&cluster, &pgherd), ("failover pg1 -> pg2", 10, 2), || {
        cluster.pg.failover(2)
    })
    .await;

    // --- The leader's host dies: its key expires after ttl (10 s), another
    // member takes over; reads go on meanwhile.
    let load = Load::start(&pgherd, (20, 4), 4);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let killed = unix_now();
    cluster.pg.kill_host(2).unwrap();
    let new = pgherd
        .wait_topology_for(
            Duration::from_secs(120),
            "a new leader after pg2's host died",
            |t| t.primary.filter(|&p| p != 2),
        )
        .await;
    let elected = unix_now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (writers, readers) = load.finish().await;
    let failed = report(
        &format!(
            "patroni leader host killed (pg2 -> pg{new} elected {:.1} s later)",
            elected - killed
        ),
        |sql| cluster.pg.sql(new, sql),
        (20, &writers, &readers),
        Some(elected),
        pgherd.handle.routing().gone_retries,
    );
    assert!(
        failed.len() <= writers.len(),
        "at most the write in flight per writer fails: {failed:?}"
    );

    // --- The host comes back: Patroni rejoins it as a replica (rewound).
    cluster.pg.start_member(2).unwrap();
    pgherd.wait_settled(new).await;

    // --- A replica promoted behind Patroni's back, its agent frozen so it
    // cannot demote it: a newer timeline than the leader's, which would
    // make it the primary for the probes alone. Patroni's leader key says
    // otherwise: both instances fence it and keep writing to the leader.
    let leader = &cluster.pg.nodes()[new];
    let (leader_name, leader_port) = (leader.name.clone(), leader.port.to_string());
    let rogue = (0..3).find(|&i| i != new).unwrap();
    let rogue_name = cluster.pg.nodes()[rogue].name.clone();
    for instance in [&pgherd, &second] {
        instance
            .wait_topology("the leader primary, the rogue-to-be reading", |t| {
                let named = |i: Option<usize>| i.map(|i| t.nodes[i].name.as_str());
                named(t.primary) == Some(leader_name.as_str())
                    && t.slot_of(&rogue_name)
                        .is_some_and(|i| t.nodes[i].serves_reads())
            })
            .await;
    }
    cluster.pg.freeze_patroni(rogue, true).unwrap();
    cluster.pg.promote(rogue).unwrap();
    for instance in [&pgherd, &second] {
        instance
            .wait_topology("the rogue primary fenced", |t| {
                t.slot_of(&rogue_name).is_some_and(|i| {
                    let n = &t.nodes[i];
                    n.up && n.role == pgherd_cluster::Role::Primary && n.fenced
                })
            })
            .await;
        let t = instance.handle.topology();
        let primary = t.primary.map(|p| t.nodes[p].name.clone());
        assert_eq!(primary, Some(leader_name.clone()), "{}", t.describe());
        assert_eq!(write_port(instance).await, leader_port);
    }
    // An instance started now (a restart, with no state file) asks the DCS
    // before it elects anyone: it writes to the leader too.
    let restarted = discovery(cluster.pgherd()).start().await;
    restarted
        .wait_topology("the leader primary, the rogue fenced", |t| {
            let named = |i: Option<usize>| i.map(|i| t.nodes[i].name.as_str());
            named(t.primary) == Some(leader_name.as_str())
                && t.slot_of(&rogue_name).is_some_and(|i| t.nodes[i].fenced)
        })
        .await;
    assert_eq!(write_port(&restarted).await, leader_port);
    cluster.pg.freeze_patroni(rogue, false).unwrap();

    // --- The DCS hangs for a moment: the instance reading it says so once
    // (and its metric), keeps the members and the leader it last read, and
    // says when it can read it again.
    let mut events = second.handle.cluster().subscribe();
    let members_before = second.handle.topology().members().count();
    cluster.pg.freeze_etcd(true).unwrap();
    let failed = next_event(&mut events, |e| {
        matches!(e, ClusterEvent::DiscoveryFailed { .. })
    })
    .await;
    let (_, metrics) = http_get(&second, "/metrics").await;
    cluster.pg.freeze_etcd(false).unwrap();
    assert!(matches!(
        failed,
        ClusterEvent::DiscoveryFailed {
            manager: Source::Patroni,
            ..
        }
    ));
    assert!(
        metrics.contains("pgherd_discovery_up{manager=\"patroni\"} 0"),
        "{metrics}"
    );
    let t = second.handle.topology();
    assert_eq!(t.members().count(), members_before, "the last list stands");
    let leader = t.authority.as_ref().and_then(|a| a.leader.as_ref());
    assert_eq!(leader.map(|l| l.name.clone()), Some(leader_name.clone()));
    next_event(&mut events, |e| {
        matches!(e, ClusterEvent::DiscoveryRecovered { .. })
    })
    .await;
}
