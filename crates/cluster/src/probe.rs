//! The SQL health probe of one node.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgherd_config::{Node, Probe};
use tokio::sync::{mpsc, Notify};

/// One query answers everything pgherd needs about a node (PostgreSQL 10+):
/// its role, WAL positions, replay delay, timeline and WAL receiver state.
/// The timeline of a primary comes from the name of the WAL file it writes,
/// which changes the moment it is promoted. The system identifier tells
/// which cluster a timeline belongs to (see `state`).
pub const PROBE_SQL: &str = "\
SELECT pg_is_in_recovery(),
  CASE WHEN pg_is_in_recovery() THEN NULL
       ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::int8 END,
  pg_wal_lsn_diff(pg_last_wal_receive_lsn(), '0/0')::int8,
  pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')::int8,
  CASE WHEN pg_is_in_recovery()
       THEN extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 END,
  CASE WHEN pg_is_in_recovery()
       THEN coalesce((SELECT received_tli FROM pg_stat_wal_receiver),
                     (SELECT timeline_id FROM pg_control_checkpoint()))
       ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int4 END,
  (SELECT status FROM pg_stat_wal_receiver),
  (SELECT system_identifier FROM pg_control_system())";

/// Where and as whom to probe.
#[derive(Debug, Clone)]
pub struct ProbeTarget {
    config: tokio_postgres::Config,
    /// `server_tls_*`: probes connect as sessions do.
    tls: pgherd_tls::PostgresTls,
}

impl ProbeTarget {
    pub fn new(node: &Node, probe: &Probe, tls: &pgherd_tls::ServerTls) -> Self {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&node.host)
            .port(node.port)
            .user(&probe.user)
            .dbname(&probe.database)
            .application_name("pgherd probe")
            .connect_timeout(probe.timeout)
            .ssl_mode(tls.postgres_ssl_mode());
        if let Some(p) = &probe.password {
            config.password(p.expose());
        }
        ProbeTarget {
            config,
            tls: tls.for_postgres(),
        }
    }
}

/// A connected probe session with its prepared statement.
struct Session {
    client: tokio_postgres::Client,
    statement: tokio_postgres::Statement,
}

/// When probes run: shared by every node's probe task and the evaluator.
#[derive(Debug)]
pub(crate) struct Schedule {
    pub interval: Duration,
    pub fast_interval: Duration,
    pub timeout: Duration,
    /// Set by the evaluator while the cluster is unsettled: probes run every
    /// `fast_interval`.
    pub unsettled: AtomicBool,
    /// Probe every node now.
    pub reprobe: Notify,
}

impl Schedule {
    pub(crate) fn new(probe: &Probe) -> Schedule {
        Schedule {
            interval: probe.interval,
            fast_interval: probe.fast_interval,
            timeout: probe.timeout,
            unsettled: AtomicBool::new(true),
            reprobe: Notify::new(),
        }
    }

    fn pause(&self) -> Duration {
        if self.unsettled.load(Ordering::Relaxed) {
            self.fast_interval
        } else {
            self.interval
        }
    }
}

/// Probes node `index` forever, as `schedule` says. Each result is sent to
/// `results`.
pub(crate) async fn run(
    index: usize,
    target: ProbeTarget,
    schedule: Arc<Schedule>,
    results: mpsc::Sender<(usize, Result<crate::ProbeSample, String>)>,
) {
    let timeout = schedule.timeout;
    let mut session: Option<Session> = None;
    // Between probes the loop sleeps on a timerfd, not on tokio's timer:
    // see pgherd_timerfd for why.
    let mut pause = pgherd_timerfd::Sleeper::new();
    loop {
        // Registered before probing, so a request made during the probe
        // is not lost.
        let notified = schedule.reprobe.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let started = Instant::now();
        let result = match tokio::time::timeout(timeout, probe_once(&target, &mut session)).await {
            Ok(Ok(mut sample)) => {
                sample.duration = started.elapsed();
                sample.started = Some(started);
                Ok(sample)
            }
            Ok(Err(e)) => {
                session = None;
                Err(e)
            }
            Err(_) => {
                session = None;
                Err(format!("probe timed out after {timeout:?}"))
            }
        };
        if results.send((index, result)).await.is_err() {
            return;
        }
        tokio::select! {
            () = pause.sleep(schedule.pause()) => {}
            () = notified => {}
        }
    }
}

async fn probe_once(
    target: &ProbeTarget,
    session: &mut Option<Session>,
) -> Result<crate::ProbeSample, String> {
    if session.as_ref().is_none_or(|s| s.client.is_closed()) {
        let (client, connection) = target
            .config
            .connect(target.tls.clone())
            .await
            .map_err(|e| describe(&e))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let statement = client.prepare(PROBE_SQL).await.map_err(|e| describe(&e))?;
        *session = Some(Session { client, statement });
    }
    let Some(s) = session.as_ref() else {
        return Err("no probe session".into());
    };
    let row = s
        .client
        .query_one(&s.statement, &[])
        .await
        .map_err(|e| describe(&e))?;
    let lsn = |i: usize| -> Result<Option<u64>, String> {
        let v: Option<i64> = row.try_get(i).map_err(|e| e.to_string())?;
        Ok(v.map(|v| v.max(0) as u64))
    };
    let timeline: Option<i32> = row.try_get(5).map_err(|e| e.to_string())?;
    // An unsigned 64-bit number that PostgreSQL shows as int8.
    let system_identifier: Option<i64> = row.try_get(7).map_err(|e| e.to_string())?;
    Ok(crate::ProbeSample {
        in_recovery: row.try_get(0).map_err(|e| e.to_string())?,
        current_lsn: lsn(1)?,
        receive_lsn: lsn(2)?,
        replay_lsn: lsn(3)?,
        replay_age: row.try_get(4).map_err(|e| e.to_string())?,
        timeline: timeline.map(|t| t.max(0) as u32),
        wal_receiver: row.try_get(6).map_err(|e| e.to_string())?,
        system_identifier: system_identifier.map(|id| id as u64),
        duration: Duration::ZERO,
        started: None,
    })
}

/// The most useful text of a tokio-postgres error (its source for I/O errors).
fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return db_reason(db.code().code(), db.message());
    }
    match std::error::Error::source(e) {
        Some(src) => src.to_string(),
        None => e.to_string(),
    }
}

/// A server's refusal of the probe, as a node's reason for being down. The
/// probe's WAL functions came with PostgreSQL 10 (`pg_last_wal_replay_lsn`
/// and friends; 9.6 has `..._xlog_...`): an older server says so here,
/// instead of looking merely down.
fn db_reason(code: &str, message: &str) -> String {
    // undefined_function
    if code == "42883" && message.contains("_wal_") {
        return format!(
            "{code}: {message} (this node runs PostgreSQL 9.6 or older; pgherd's probes need 10 or later)"
        );
    }
    format!("{code}: {message}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_older_than_10_is_named_as_such() {
        let old = db_reason("42883", "function pg_last_wal_replay_lsn() does not exist");
        assert!(
            old.contains("9.6 or older") && old.contains("10 or later"),
            "{old}"
        );
        let other = db_reason("28P01", "password authentication failed for user \"p\"");
        assert_eq!(
            other,
            "28P01: password authentication failed for user \"p\""
        );
    }
}
