//! The SQL health probe of one node.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgherd_config::{Node, Probe};
use tokio::sync::{mpsc, Notify};

use crate::topology::ProbeSample;

/// One query answers everything pgherd needs about a node (PostgreSQL 10
/// and later): its role, WAL positions, replay delay, timeline and WAL
/// receiver state. The timeline of a primary comes from the name of the
/// WAL file it writes, which changes the moment it is promoted; a
/// standby's is the newest of what it receives, its last restartpoint's
/// and its minimum recovery point's (the first is gone while it streams
/// from no one). The system
/// identifier tells which cluster a timeline belongs to (see `state`).
pub const PROBE_SQL: &str = "\
SELECT pg_is_in_recovery(),
  CASE WHEN pg_is_in_recovery() THEN NULL
       ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::int8 END,
  pg_wal_lsn_diff(pg_last_wal_receive_lsn(), '0/0')::int8,
  pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')::int8,
  CASE WHEN pg_is_in_recovery()
       THEN extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 END,
  CASE WHEN pg_is_in_recovery()
       THEN greatest((SELECT received_tli FROM pg_stat_wal_receiver),
                     (SELECT timeline_id FROM pg_control_checkpoint()),
                     (SELECT min_recovery_end_timeline FROM pg_control_recovery()))
       ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int4 END,
  (SELECT status FROM pg_stat_wal_receiver),
  (SELECT system_identifier FROM pg_control_system())";

/// The same for PostgreSQL 9.6, which calls WAL "xlog" and an LSN a
/// "location" (`pg_last_xlog_replay_location` and friends); the WAL
/// receiver view and the control-file functions are already there.
pub const PROBE_SQL_96: &str = "\
/* pgherd probe, PostgreSQL 9.6 */ SELECT pg_is_in_recovery(),
  CASE WHEN pg_is_in_recovery() THEN NULL
       ELSE pg_xlog_location_diff(pg_current_xlog_location(), '0/0')::int8 END,
  pg_xlog_location_diff(pg_last_xlog_receive_location(), '0/0')::int8,
  pg_xlog_location_diff(pg_last_xlog_replay_location(), '0/0')::int8,
  CASE WHEN pg_is_in_recovery()
       THEN extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 END,
  CASE WHEN pg_is_in_recovery()
       THEN greatest((SELECT received_tli FROM pg_stat_wal_receiver),
                     (SELECT timeline_id FROM pg_control_checkpoint()),
                     (SELECT min_recovery_end_timeline FROM pg_control_recovery()))
       ELSE ('x' || substr(pg_xlogfile_name(pg_current_xlog_location()), 1, 8))::bit(32)::int4 END,
  (SELECT status FROM pg_stat_wal_receiver),
  (SELECT system_identifier FROM pg_control_system())";

/// The oldest PostgreSQL the probes know (`server_version_num`): 9.6
/// brought `pg_stat_wal_receiver` and `pg_control_system()`, without which
/// a standby's timeline and the cluster's identity cannot be read.
pub const OLDEST_SUPPORTED: u32 = 90600;

/// The probe for a server of `server_version_num` `version`, or why there
/// is none.
pub fn probe_sql(version: u32) -> Result<&'static str, String> {
    match version {
        v if v >= 100_000 => Ok(PROBE_SQL),
        v if v >= OLDEST_SUPPORTED => Ok(PROBE_SQL_96),
        v => Err(format!(
            "runs PostgreSQL {}, which pgherd does not support: its probes need 9.6 or later",
            version_name(v)
        )),
    }
}

/// `90624` → `9.6.24`, `150004` → `15.4`.
fn version_name(v: u32) -> String {
    if v >= 100_000 {
        format!("{}.{}", v / 10_000, v % 10_000)
    } else {
        format!("{}.{}.{}", v / 10_000, v / 100 % 100, v % 100)
    }
}

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

    /// The same login in database `name`, named `application_name`.
    pub(crate) fn in_database(mut self, name: &str, application_name: &str) -> Self {
        self.config.dbname(name).application_name(application_name);
        self
    }

    /// A connected client (its connection runs in its own task).
    pub(crate) async fn connect(&self) -> Result<tokio_postgres::Client, String> {
        let (client, connection) = self
            .config
            .connect(self.tls.clone())
            .await
            .map_err(|e| describe(&e))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }
}

/// A connected probe session and the probe its server's version needs.
struct Session {
    client: tokio_postgres::Client,
    sql: &'static str,
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
    results: mpsc::Sender<(usize, Result<ProbeSample, String>)>,
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
) -> Result<ProbeSample, String> {
    if session.as_ref().is_none_or(|s| s.client.is_closed()) {
        let client = target.connect().await?;
        let version = first_value(&client, "SHOW server_version_num").await?;
        let version = version
            .parse()
            .map_err(|_| format!("server_version_num {version:?} is not a number"))?;
        let sql = probe_sql(version)?;
        *session = Some(Session { client, sql });
    }
    let Some(s) = session.as_ref() else {
        return Err("no probe session".into());
    };
    // The simple protocol: one round trip, and answers in text, which the
    // probe reads the same from every version.
    let messages = s
        .client
        .simple_query(s.sql)
        .await
        .map_err(|e| describe(&e))?;
    let row = messages
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        })
        .ok_or("the probe returned no row")?;
    let columns: Vec<Option<&str>> = (0..row.len()).map(|i| row.get(i)).collect();
    sample(&columns)
}

/// The first column of the first row `sql` returns.
async fn first_value(client: &tokio_postgres::Client, sql: &str) -> Result<String, String> {
    let messages = client.simple_query(sql).await.map_err(|e| describe(&e))?;
    messages
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
        .ok_or_else(|| format!("{sql}: no answer"))
}

/// A probe's answer, its eight columns as text (NULL: `None`).
fn sample(columns: &[Option<&str>]) -> Result<ProbeSample, String> {
    let [in_recovery, current, received, replayed, age, timeline, receiver, system] = columns
    else {
        return Err(format!(
            "the probe returned {} columns, not 8",
            columns.len()
        ));
    };
    fn parse<T: std::str::FromStr>(column: &Option<&str>, what: &str) -> Result<Option<T>, String> {
        column
            .map(|text| {
                text.parse()
                    .map_err(|_| format!("the probe's {what} is {text:?}"))
            })
            .transpose()
    }
    let lsn = |column, what| -> Result<Option<u64>, String> {
        Ok(parse::<i64>(column, what)?.map(|v| v.max(0) as u64))
    };
    let in_recovery = match *in_recovery {
        Some("t") => true,
        Some("f") => false,
        other => return Err(format!("pg_is_in_recovery() is {other:?}")),
    };
    Ok(ProbeSample {
        in_recovery,
        current_lsn: lsn(current, "current WAL position")?,
        receive_lsn: lsn(received, "received WAL position")?,
        replay_lsn: lsn(replayed, "replayed WAL position")?,
        replay_age: parse(age, "replay age")?,
        timeline: parse::<i32>(timeline, "timeline")?.map(|t| t.max(0) as u32),
        wal_receiver: receiver.map(str::to_owned),
        // An unsigned 64-bit number that PostgreSQL shows as int8.
        system_identifier: parse::<i64>(system, "system identifier")?.map(|id| id as u64),
        duration: Duration::ZERO,
        started: None,
    })
}

/// The most useful text of a tokio-postgres error (its source for I/O errors).
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return db_reason(db.code().code(), db.message());
    }
    match std::error::Error::source(e) {
        Some(src) => src.to_string(),
        None => e.to_string(),
    }
}

/// A server's refusal of the probe, as a node's reason for being down.
fn db_reason(code: &str, message: &str) -> String {
    format!("{code}: {message}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_supported_version_gets_its_probe_and_older_ones_a_reason() {
        assert_eq!(probe_sql(180_000), Ok(PROBE_SQL));
        assert_eq!(probe_sql(100_000), Ok(PROBE_SQL));
        assert_eq!(probe_sql(90_624), Ok(PROBE_SQL_96));
        assert!(
            PROBE_SQL_96.contains("pg_last_xlog_replay_location")
                && !PROBE_SQL_96.contains("_wal_lsn")
        );
        let old = probe_sql(90_525).unwrap_err();
        assert!(
            old.contains("PostgreSQL 9.5.25") && old.contains("9.6 or later"),
            "{old}"
        );
        assert_eq!(version_name(150_004), "15.4");
    }

    /// Answers as a PostgreSQL 9.6 primary and standby give them (text
    /// values, as the simple protocol carries them; the 9.6 functions
    /// return the same types as their 10 counterparts).
    #[test]
    fn a_96_primarys_and_standbys_answers_read_as_samples() {
        let primary = sample(&[
            Some("f"),
            Some("402653280"),
            None,
            None,
            None,
            Some("3"),
            None,
            Some("6812341598721384925"),
        ])
        .unwrap();
        assert!(!primary.in_recovery);
        assert_eq!(primary.current_lsn, Some(402_653_280));
        assert_eq!(primary.timeline, Some(3));
        assert_eq!(primary.system_identifier, Some(6_812_341_598_721_384_925));
        let standby = sample(&[
            Some("t"),
            None,
            Some("402653280"),
            Some("402653168"),
            Some("0.412345"),
            Some("3"),
            Some("streaming"),
            Some("6812341598721384925"),
        ])
        .unwrap();
        assert!(standby.in_recovery);
        assert_eq!(
            (standby.receive_lsn, standby.replay_lsn),
            (Some(402_653_280), Some(402_653_168))
        );
        assert_eq!(standby.replay_age, Some(0.412345));
        assert_eq!(standby.wal_receiver.as_deref(), Some("streaming"));
        // A system identifier above i64::MAX comes back as its int8 text.
        let high = sample(&[
            Some("f"),
            Some("1"),
            None,
            None,
            None,
            Some("1"),
            None,
            Some("-1"),
        ])
        .unwrap();
        assert_eq!(high.system_identifier, Some(u64::MAX));
    }

    #[test]
    fn a_malformed_answer_is_a_failed_probe_not_a_guess() {
        assert!(sample(&[Some("t")]).unwrap_err().contains("1 columns"));
        let bad = [Some("maybe"), None, None, None, None, None, None, None];
        assert!(sample(&bad).unwrap_err().contains("pg_is_in_recovery"));
        let bad = [Some("f"), Some("x"), None, None, None, None, None, None];
        assert!(sample(&bad).unwrap_err().contains("current WAL position"));
    }
}
