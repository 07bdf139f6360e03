//! Failovers run by the real repmgr: repmgrd notices the primary is gone,
//! waits `reconnect_attempts × reconnect_interval` (the seed's 5 × 5 s),
//! promotes a standby and re-points the other with `repmgr standby
//! follow`; the old primary comes back with `repmgr node rejoin`. pgherd
//! is driven by writer and reader clients throughout, and each drill
//! prints what the clients saw.
//!
//! One cluster serves the drills in turn (one test): building a repmgr
//! cluster takes longer than a drill.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pgherd_integration_tests::*;

/// What one client saw during a drill.
#[derive(Debug, Default)]
struct Tally {
    ok: usize,
    errors: Vec<String>,
    /// Writers: the values of acknowledged inserts, with when (Unix seconds).
    acked: Vec<(i64, f64)>,
    /// The longest time between two successes.
    max_gap: Duration,
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Runs `sql` (with `$1` = a counter when `writer` is set) until `stop`,
/// reconnecting after an error as a pool would, with libpq's
/// `connect_timeout = 2` of the seed's applications.
async fn client_loop(
    mut config: tokio_postgres::Config,
    sql: &'static str,
    writer: Option<i64>,
    stop: Arc<AtomicBool>,
) -> Tally {
    config.connect_timeout(Duration::from_secs(2));
    let mut tally = Tally::default();
    let mut client = None;
    let mut last_ok = Instant::now();
    let mut n: i64 = 0;
    while !stop.load(Ordering::Relaxed) {
        if client.is_none() {
            match config.connect(tokio_postgres::NoTls).await {
                Ok((c, conn)) => {
                    tokio::spawn(conn);
                    client = Some(c);
                }
                Err(e) => {
                    tally.errors.push(format!("connect: {e}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        }
        let Some(c) = client.as_ref() else { continue };
        n += 1;
        let result = match writer {
            Some(w) => c.execute(sql, &[&w, &n]).await.map(|_| ()),
            None => c.simple_query(sql).await.map(|_| ()),
        };
        match result {
            Ok(()) => {
                tally.ok += 1;
                tally.max_gap = tally.max_gap.max(last_ok.elapsed());
                last_ok = Instant::now();
                if writer.is_some() {
                    tally.acked.push((n, unix_now()));
                }
            }
            Err(e) => {
                tally.errors.push(format!("query: {}", message(&e)));
                client = None;
            }
        }
    }
    tally
}

/// Writers and readers through one pgherd.
struct Load {
    stop: Arc<AtomicBool>,
    writers: Vec<tokio::task::JoinHandle<Tally>>,
    readers: Vec<tokio::task::JoinHandle<Tally>>,
}

impl Load {
    fn start(pgherd: &RunningPgherd, writers: usize, readers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let writers = (0..writers as i64)
            .map(|w| {
                tokio::spawn(client_loop(
                    pgherd.config("app", APP_PASSWORD, "postgres"),
                    "INSERT INTO drill (writer, n) VALUES ($1, $2)",
                    Some(w),
                    Arc::clone(&stop),
                ))
            })
            .collect();
        let readers = (0..readers)
            .map(|_| {
                tokio::spawn(client_loop(
                    pgherd.config("app", APP_PASSWORD, "ro"),
                    "SELECT count(*) FROM pg_class",
                    None,
                    Arc::clone(&stop),
                ))
            })
            .collect();
        Load {
            stop,
            writers,
            readers,
        }
    }

    async fn finish(self) -> (Vec<Tally>, Vec<Tally>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut writers = Vec::new();
        for w in self.writers {
            writers.push(w.await.unwrap());
        }
        let mut readers = Vec::new();
        for r in self.readers {
            readers.push(r.await.unwrap());
        }
        (writers, readers)
    }
}

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

/// Every acknowledged write is on node `i`; returns how many there are.
fn check_no_write_lost(cluster: &RepmgrTestCluster, i: usize, writers: &[Tally]) -> usize {
    let mut acked = 0;
    for (w, tally) in writers.iter().enumerate() {
        let present: std::collections::HashSet<i64> = cluster
            .pg
            .sql(i, &format!("SELECT n FROM drill WHERE writer = {w}"))
            .unwrap()
            .lines()
            .map(|l| l.parse().unwrap())
            .collect();
        let lost: Vec<i64> = tally
            .acked
            .iter()
            .map(|&(n, _)| n)
            .filter(|n| !present.contains(n))
            .collect();
        assert!(
            lost.is_empty(),
            "writer {w}: acknowledged but lost: {lost:?}"
        );
        acked += tally.acked.len();
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repmgr_failover_with_the_seed_settings_then_rejoin() {
    // The seed's repmgr.conf: reconnect_attempts=5, reconnect_interval=5.
    let cluster = RepmgrTestCluster::start(RepmgrSpec {
        standbys: 2,
        reconnect_attempts: 5,
        reconnect_interval: 5,
        ..RepmgrSpec::default()
    });
    cluster
        .pg
        .sql(
            0,
            "CREATE TABLE drill (writer bigint, n bigint, PRIMARY KEY (writer, n)); \
             GRANT ALL ON drill TO app",
        )
        .unwrap();
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
    pgherd.wait_standbys_readable().await;

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
    let load = Load::start(&pgherd, 4, 4);
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
    let acked = check_no_write_lost(&cluster, new, &writers);
    println!(
        "repmgr failover (reconnect 5 x 5 s): promotion {:.1} s after the crash; \
         pgherd elected it {:.3} s and wrote there {:.3} s after the promotion; \
         reads: {} ok, {} failed, longest gap {:.3} s; \
         writes: {acked} acknowledged (0 lost), {} failed: {write_errors:?}",
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
}

/// Waits up to 120 s for `pick` to choose something in pgherd's topology.
async fn wait_for<T>(
    pgherd: &RunningPgherd,
    what: &str,
    pick: impl Fn(&pgherd_cluster::Topology) -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let t = pgherd.handle.topology();
        if let Some(found) = pick(&t) {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "gave up waiting for {what}: {}",
            t.describe()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
