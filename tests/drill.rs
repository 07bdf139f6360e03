//! Failover drills: writer and reader clients through pgherd while a
//! cluster manager (repmgr, Patroni) fails over or switches over, and what
//! they saw. Writers insert `(writer, n)` into table `drill`, readers
//! select; both reconnect after an error as a pool would, with libpq's
//! `connect_timeout = 2` of the seed's applications.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed drill

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::{message, LocalPgError, PgherdBuilder, RunningPgherd, APP_PASSWORD};

/// pgherd as the drills run it: transaction mode, the default
/// `probe_interval` (1 s, so the figures are what operators get), writes
/// waiting up to 60 s for a primary, and database `ro` for the readers.
pub fn drill_pgherd(builder: PgherdBuilder) -> PgherdBuilder {
    builder
        .probe_interval(1.0)
        .general("pool_mode = \"transaction\"")
        .general("primary_wait_timeout = 60")
        .database("ro = { dbname = \"postgres\", target = \"replica\" }")
}

/// The table the writers fill.
pub const DRILL_TABLE: &str =
    "CREATE TABLE drill (writer bigint, n bigint, PRIMARY KEY (writer, n)); \
     GRANT ALL ON drill TO app";

/// What one client saw during a drill.
#[derive(Debug, Default)]
pub struct Tally {
    pub ok: usize,
    pub errors: Vec<String>,
    /// Writers: the values of acknowledged inserts, with when (Unix seconds).
    pub acked: Vec<(i64, f64)>,
    /// The longest time between two successes.
    pub max_gap: Duration,
    /// The longest a statement took, from sending it to its answer.
    pub max_wait: Duration,
}

pub fn unix_now() -> f64 {
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
    // Gaps are counted from the first success: logging in is not one.
    let mut last_ok: Option<Instant> = None;
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
        let asked = Instant::now();
        let result = match writer {
            Some(w) => c.execute(sql, &[&w, &n]).await.map(|_| ()),
            None => c.simple_query(sql).await.map(|_| ()),
        };
        tally.max_wait = tally.max_wait.max(asked.elapsed());
        match result {
            Ok(()) => {
                tally.ok += 1;
                if let Some(last) = last_ok {
                    tally.max_gap = tally.max_gap.max(last.elapsed());
                }
                last_ok = Some(Instant::now());
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
#[derive(Debug)]
pub struct Load {
    stop: Arc<AtomicBool>,
    writers: Vec<tokio::task::JoinHandle<Tally>>,
    readers: Vec<tokio::task::JoinHandle<Tally>>,
}

impl Load {
    /// `writers` writers numbered from `first`, and `readers` readers.
    pub fn start(pgherd: &RunningPgherd, (first, writers): (i64, i64), readers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let writers = (first..first + writers)
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

    pub async fn finish(self) -> (Vec<Tally>, Vec<Tally>) {
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

/// One acknowledged write: its number and when (Unix seconds).
type Ack<'a> = &'a (i64, f64);

/// Checks the acknowledged writes of the writers numbered from `first`
/// against table `drill` where `sql` runs: every write acknowledged after
/// `promoted` (Unix seconds: the new primary's; all of them when `None`)
/// must be there. Returns how many were acknowledged, and how many
/// acknowledged before are missing: commits a primary acknowledged and
/// died before streaming, which asynchronous replication loses whatever
/// the proxy does.
fn check_no_write_lost(
    sql: impl Fn(&str) -> Result<String, LocalPgError>,
    (first, writers): (i64, &[Tally]),
    promoted: Option<f64>,
) -> (usize, usize) {
    let (mut acked, mut lost_to_replication) = (0, 0);
    for (w, tally) in (first..).zip(writers) {
        let present: std::collections::HashSet<i64> =
            sql(&format!("SELECT n FROM drill WHERE writer = {w}"))
                .unwrap()
                .lines()
                .map(|l| l.parse().unwrap())
                .collect();
        let missing = tally.acked.iter().filter(|(n, _)| !present.contains(n));
        let (before, after): (Vec<Ack>, Vec<Ack>) =
            missing.partition(|&&(_, at)| promoted.is_some_and(|p| at < p));
        assert!(
            after.is_empty(),
            "writer {w}: acknowledged through pgherd but lost: {after:?}"
        );
        lost_to_replication += before.len();
        acked += tally.acked.len();
    }
    (acked, lost_to_replication)
}

/// Prints what the clients of one drill saw, and checks that no read
/// failed and that every write acknowledged (after `promoted`, when a
/// primary died: see [`check_no_write_lost`]) is where `sql` runs.
/// Returns the failed writes, for the drill to judge.
pub fn report(
    what: &str,
    sql: impl Fn(&str) -> Result<String, LocalPgError>,
    (first, writers, readers): (i64, &[Tally], &[Tally]),
    promoted: Option<f64>,
    retried: u64,
) -> Vec<String> {
    let read_errors: Vec<&String> = readers.iter().flat_map(|t| &t.errors).collect();
    let write_errors: Vec<String> = writers.iter().flat_map(|t| t.errors.clone()).collect();
    let (acked, unreplicated) = check_no_write_lost(sql, (first, writers), promoted);
    let wait = writers.iter().map(|t| t.max_wait).max().unwrap_or_default();
    let gap = readers.iter().map(|t| t.max_gap).max().unwrap_or_default();
    let lost = match promoted {
        Some(_) => {
            format!("{unreplicated} acknowledged by the dead primary never reached a standby")
        }
        None => "0 lost".to_owned(),
    };
    println!(
        "{what}: writes: {acked} acknowledged ({lost}), {} failed, slowest {:.3} s; \
         reads: {} ok, {} failed, longest gap {:.3} s; {retried} requests run again so far",
        write_errors.len(),
        wait.as_secs_f64(),
        readers.iter().map(|t| t.ok).sum::<usize>(),
        read_errors.len(),
        gap.as_secs_f64(),
    );
    assert!(
        read_errors.is_empty(),
        "{what}: reads never fail: {read_errors:?}"
    );
    write_errors
}
