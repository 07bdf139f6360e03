//! The last cluster events, for the stats page and `/api/v1/events`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use pgherd_cluster::Cluster;

/// How many events are kept.
const KEEP: usize = 100;

/// A ring of `(UTC time, description)` pairs, newest last.
#[derive(Debug, Clone, Default)]
pub(crate) struct EventLog(Arc<Mutex<VecDeque<(String, String)>>>);

impl EventLog {
    /// Starts recording `cluster`'s events.
    pub(crate) fn record(cluster: &Cluster) -> EventLog {
        let log = EventLog::default();
        let mut events = cluster.subscribe();
        let sink = log.clone();
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(e) => sink.push(e.to_string()),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        sink.push(format!("{n} events not recorded (too many at once)"))
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        log
    }

    fn push(&self, text: String) {
        let mut ring = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if ring.len() == KEEP {
            ring.pop_front();
        }
        ring.push_back((utc_now(), text));
    }

    /// The kept events, oldest first.
    pub(crate) fn recent(&self) -> Vec<(String, String)> {
        let ring = self.0.lock().unwrap_or_else(|e| e.into_inner());
        ring.iter().cloned().collect()
    }
}

/// `YYYY-MM-DD HH:MM:SS` in UTC, without a date library.
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format_utc(secs)
}

fn format_utc(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_dates() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(format_utc(1_795_694_400), "2026-11-26 12:00:00");
    }

    #[test]
    fn keeps_the_last_events() {
        let log = EventLog::default();
        for i in 0..KEEP + 5 {
            log.push(format!("e{i}"));
        }
        let recent = log.recent();
        assert_eq!(recent.len(), KEEP);
        assert_eq!(recent[0].1, "e5");
    }
}
