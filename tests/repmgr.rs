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
//!
//! A second pgherd follows it all with `discovery = "repmgr"`, knowing
//! only pg1 from its configuration: the other nodes come from
//! `repmgr.nodes`, the failed primary leaves when repmgr marks it
//! inactive and comes back when it rejoins, and a standby cloned and
//! registered at the end joins reads, then leaves when unregistered.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use pgherd_cluster::{ClusterEvent, Role, Source};
use pgherd_integration_tests::drill::*;
use pgherd_integration_tests::*;

/// How long the drills wait for repmgr: its own 25 s before it promotes,
/// then a follow's restart.
const MANAGER_DELAY: Duration = Duration::from_secs(120);

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

/// Each node's source as `pgherd check` (the manager read once), the JSON
/// API and the metrics show it: pg1 from the configuration, pg0 and pg2
/// from repmgr.
async fn where_nodes_came_from(config: &PgherdBuilder, pgherd: &RunningPgherd) {
    let expected = [("pg0", "repmgr"), ("pg1", "config"), ("pg2", "repmgr")];
    let config = pgherd_config::Config::parse(&config.toml()).unwrap();
    let tls = pgherd_tls::Contexts::new(&config.general).unwrap();
    let (manager, members) = pgherd_cluster::discovery::members_now(&config, &tls.server)
        .await
        .unwrap();
    assert_eq!(manager, Source::Repmgr);
    let mut checked: Vec<(String, &str)> = (members.unwrap().iter())
        .map(|m| (m.node.name.clone(), m.source.as_str()))
        .collect();
    checked.sort();
    let want: Vec<(String, &str)> = expected.iter().map(|(n, s)| ((*n).into(), *s)).collect();
    assert_eq!(checked, want, "pgherd check");

    let (_, body) = http_get(pgherd, "/api/v1/nodes").await;
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    for (name, source) in expected {
        let node = json["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == name);
        assert_eq!(node.unwrap()["source"], source, "{body}");
    }
    assert_eq!(json["discovery"]["manager"], "repmgr", "{body}");
    assert_eq!(
        json["discovery"]["last_error"],
        serde_json::Value::Null,
        "{body}"
    );

    let (_, metrics) = http_get(pgherd, "/metrics").await;
    for (name, source) in expected {
        let line = format!("pgherd_node_source{{node=\"{name}\",source=\"{source}\"}} 1");
        assert!(metrics.contains(&line), "no {line}");
    }
    assert!(metrics.contains("pgherd_discovery_up{manager=\"repmgr\"} 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repmgr_failover_rejoin_and_switchover() {
    // The seed's repmgr.conf: reconnect_attempts=5, reconnect_interval=5.
    let mut cluster = RepmgrTestCluster::start(RepmgrSpec {
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
    let pgherd = drill_pgherd(cluster.pgherd())
        .notify(&format!("webhook_urls = [\"{}\"]", hook.url("/hook")))
        .notify("events = [\"failover\", \"switchover\"]")
        .notify("instance = \"drill\"")
        .start()
        .await;
    pgherd.wait_settled(0).await;
    let discovering_config = cluster
        .pgherd()
        .nodes(&[1])
        .database("ro = { dbname = \"postgres\", target = \"replica\" }")
        .general("discovery = \"repmgr\"")
        // The kit's repmgr keeps its metadata where its conninfo points.
        .general("repmgr_database = \"postgres\"")
        .general("discovery_interval = 0.5");
    let discovering = discovering_config.start().await;
    discovering
        .wait_topology("pg0 and pg2 found in repmgr.nodes", |t| {
            let found = |name: &str| t.slot_of(name).map(|i| &t.nodes[i]);
            found("pg0")
                .is_some_and(|n| n.source == Source::Repmgr && t.primary == t.slot_of("pg0"))
                && found("pg2").is_some_and(|n| n.source == Source::Repmgr && n.serves_reads())
                && found("pg1").is_some_and(|n| n.source == Source::Config)
        })
        .await;
    where_nodes_came_from(&discovering_config, &discovering).await;
    // One session serves the readings (0.5 s apart), not a login each.
    let sessions = || {
        let sql = "SELECT coalesce(string_agg(pid::text, ','), '') FROM pg_stat_activity \
                   WHERE application_name = 'pgherd discovery'";
        cluster.pg.sql(0, sql).unwrap()
    };
    // (Readings before pg0 was probed as the primary asked pg1.)
    let first = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let pids = sessions();
            if !pids.is_empty() {
                return pids;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("a discovery session on the primary");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!first.contains(','), "one session: {first:?}");
    assert_eq!(
        sessions(),
        first,
        "the same session read repmgr.nodes again"
    );

    // --- Unplanned: the primary crashes; repmgrd promotes after 25 s.
    let mut events = pgherd.handle.cluster().subscribe();
    let seen = tokio::spawn(async move {
        loop {
            if let Ok(pgherd_cluster::Event::Cluster(
                pgherd_cluster::ClusterEvent::PrimaryChanged { to: Some(to), .. },
            )) = events.recv().await
            {
                if to != "pg0" {
                    return unix_now();
                }
            }
        }
    });
    let load = Load::start(&pgherd, (0, 4), 4);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let crashed = unix_now();
    cluster.pg.crash(0).unwrap();
    let new = pgherd
        .wait_topology_for(MANAGER_DELAY, "repmgrd to promote a standby", |t| {
            t.primary.filter(|&p| p != 0)
        })
        .await;
    let other = 3 - new;
    // repmgrd re-points the other standby (`repmgr standby follow`).
    pgherd
        .wait_topology_for(
            MANAGER_DELAY,
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
    println!(
        "repmgr failover (reconnect 5 x 5 s): promotion {:.1} s after the crash; \
         pgherd elected it {:.3} s and wrote there {:.3} s after the promotion",
        promoted - crashed,
        followed - promoted,
        first_write - promoted,
    );
    let write_errors = report(
        "repmgr failover",
        |sql| cluster.pg.sql(new, sql),
        (0, &writers, &readers),
        Some(promoted),
        pgherd.handle.routing().gone_retries,
    );
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
    // The discovering pgherd follows, and drops pg0, which the promotion
    // marked inactive in repmgr.nodes.
    discovering
        .wait_topology_for(MANAGER_DELAY, "the new primary, pg0 gone", |t| {
            let primary = t.primary.map(|p| t.nodes[p].name.as_str());
            (primary == Some(new_name.as_str()) && t.slot_of("pg0").is_none()).then_some(())
        })
        .await;

    // --- The old primary rejoins as a standby (repmgr node rejoin
    // --force-rewind) and serves reads again once it streams.
    cluster.pg.rejoin(0, new).unwrap();
    pgherd.wait_settled(new).await;
    assert_eq!(cluster.pg.primary_by_repmgr(new), Some(new));
    hook.next_with_text(&format!(
        "switchover: old primary pg0 is now a standby of {new_name}"
    ))
    .await;
    discovering
        .wait_topology("pg0 back (active again), serving reads", |t| {
            t.slot_of("pg0").is_some_and(|i| t.nodes[i].serves_reads())
        })
        .await;

    // --- Planned: back to pg0 by repmgr's manual switchover (repmgrd
    // paused; the old primary stopped with a checkpoint, pg0 promoted, the
    // old primary rejoined, the other standby re-pointed).
    for i in [other, 0] {
        cluster.pg.wait_caught_up(new, i).unwrap();
    }
    cluster.pg.pause_daemons(true).unwrap();
    let load = Load::start(&pgherd, (10, 4), 4);
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.pg.stop_for_switchover(new).unwrap();
    cluster.pg.promote(0).unwrap();
    cluster.pg.rejoin(new, 0).unwrap();
    cluster.pg.follow(other).unwrap();
    cluster.pg.pause_daemons(false).unwrap();
    pgherd.wait_settled(0).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (writers, readers) = load.finish().await;
    let write_errors = report(
        &format!("repmgr switchover {new_name} -> pg0"),
        |sql| cluster.pg.sql(0, sql),
        (10, &writers, &readers),
        None,
        pgherd.handle.routing().gone_retries,
    );
    assert!(
        write_errors.is_empty(),
        "no failed transaction: {write_errors:?}"
    );

    // --- A standby cloned and registered with repmgr joins the
    // discovering pgherd's reads with no edit of its configuration, and
    // leaves once unregistered.
    discovering
        .wait_topology("pg0 primary again", |t| {
            t.primary.is_some() && t.primary == t.slot_of("pg0")
        })
        .await;
    let added = cluster.pg.add_standby().unwrap();
    let name = cluster.pg.nodes()[added].name.clone();
    discovering
        .wait_topology("the new standby serving reads", |t| {
            t.slot_of(&name)
                .is_some_and(|i| t.nodes[i].source == Source::Repmgr && t.nodes[i].serves_reads())
        })
        .await;
    // Standbys take reads in turn: one of the next four sessions reads there.
    let port = cluster.pg.nodes()[added].port.to_string();
    let mut ports = Vec::new();
    for _ in 0..4 {
        let c = discovering
            .connect("app", APP_PASSWORD, "ro")
            .await
            .unwrap();
        ports.push(simple_value(&c, "SELECT inet_server_port()").await);
    }
    assert!(ports.contains(&port), "{ports:?} has no {port}");
    cluster.pg.unregister(added).unwrap();
    discovering
        .wait_topology("the unregistered standby gone", |t| {
            t.slot_of(&name).is_none()
        })
        .await;

    // --- repmgr's metadata says pg2 is a primary; the probes find a
    // standby: an event once two readings agree on it, the metric, and the
    // probes keep routing (pg2 serves reads). Put back, they agree again.
    let mut events = discovering.handle.cluster().subscribe();
    let set_type = |kind: &str| {
        let sql = format!("UPDATE repmgr.nodes SET type = '{kind}' WHERE node_name = 'pg2'");
        cluster.pg.sql(0, &sql).unwrap();
    };
    set_type("primary");
    let said = next_event(
        &mut events,
        |e| matches!(e, ClusterEvent::ManagerDisagrees { node, .. } if node == "pg2"),
    )
    .await;
    assert_eq!(
        said,
        ClusterEvent::ManagerDisagrees {
            node: "pg2".into(),
            manager: Source::Repmgr,
            manager_says: Role::Primary,
            probes_say: Role::Standby
        }
    );
    let (_, metrics) = http_get(&discovering, "/metrics").await;
    assert!(metrics.contains("pgherd_discovery_disagreements{manager=\"repmgr\"} 1"));
    let t = discovering.handle.topology();
    assert!(t.slot_of("pg2").is_some_and(|i| t.nodes[i].serves_reads()));
    set_type("standby");
    next_event(
        &mut events,
        |e| matches!(e, ClusterEvent::ManagerAgrees { node, .. } if node == "pg2"),
    )
    .await;
}
