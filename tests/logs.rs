//! pgbouncer's `log_connections` / `log_disconnections`: a login and the
//! end of a session, with its reason and age, at info level (or only at
//! debug when turned off); `log_stats`: the averages every `stats_period`.
//! This binary captures the logs of the pgherd it runs in-process.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::sync::{Mutex, Once};
use std::time::Duration;

use pgherd_integration_tests::*;

static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// Appends what the subscriber writes to [`LOGS`].
struct Capture;

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_info_logs() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        tracing_subscriber::fmt()
            .with_writer(|| Capture)
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .init();
    });
}

/// The captured lines that contain every one of `parts`.
fn lines_with(parts: &[&str]) -> Vec<String> {
    String::from_utf8_lossy(&LOGS.lock().unwrap())
        .lines()
        .filter(|l| parts.iter().all(|p| l.contains(p)))
        .map(str::to_owned)
        .collect()
}

/// Waits up to 10 s for a captured line with every one of `parts`.
async fn wait_for_line(parts: &[&str]) -> String {
    for _ in 0..200 {
        if let Some(line) = lines_with(parts).pop() {
            return line;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "no log line with {parts:?} in:\n{}",
        String::from_utf8_lossy(&LOGS.lock().unwrap())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_and_session_ends_are_logged_with_the_reason() {
    capture_info_logs();
    let cluster = shared_cluster();
    let pgherd = cluster
        .pgherd()
        .general("client_idle_timeout = 0.5")
        .start()
        .await;
    let client = pgherd.app().await;
    assert_eq!(simple_value(&client, "SELECT 1").await, "1");
    let login = wait_for_line(&["login: db=app user=app tls=no from 127.0.0.1:"]).await;
    assert!(login.contains(" INFO "), "{login}");
    drop(client);
    let closed = wait_for_line(&["closing: db=app user=app", "client close request"]).await;
    assert!(closed.contains("(age=0s)"), "{closed}");

    // A session pgherd ends says why.
    let idle = pgherd
        .connect("app", APP_PASSWORD, "postgres")
        .await
        .unwrap();
    let timed_out = wait_for_line(&["closing: db=postgres user=app", "idle-session timeout"]).await;
    assert!(timed_out.contains("client_idle_timeout"), "{timed_out}");
    drop(idle);

    // Turned off: nothing at info level.
    let quiet = cluster
        .pgherd()
        .general("log_connections = false")
        .general("log_disconnections = false")
        .start()
        .await;
    let client = quiet
        .connect("md5user", MD5_PASSWORD, "postgres")
        .await
        .unwrap();
    assert_eq!(simple_value(&client, "SELECT 1").await, "1");
    drop(client);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(lines_with(&["user=md5user"]), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_stats_period_logs_the_averages() {
    capture_info_logs();
    let cluster = shared_cluster();
    // The other test's pgherds log theirs every 60 s: none in this test.
    let pgherd = cluster.pgherd().general("stats_period = 0.5").start().await;
    let client = pgherd.app().await;
    // Transactions in every period until a line shows some.
    for _ in 0..100 {
        for _ in 0..20 {
            simple_value(&client, "SELECT 1").await;
        }
        let busy = lines_with(&["stats: "])
            .into_iter()
            .find(|l| !l.contains("stats: 0 xacts/s"));
        if let Some(line) = busy {
            assert!(line.contains(" INFO "), "{line}");
            for part in [
                "queries/s, in ",
                " B/s, out ",
                " B/s, xact ",
                " us, query ",
                " us, wait ",
            ] {
                assert!(line.contains(part), "{line}");
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no stats line with transactions");
}
