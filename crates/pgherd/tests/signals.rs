//! The signals operators send pgherd, as they do pgbouncer: SIGHUP reloads
//! the config file, SIGUSR1 pauses every database and SIGUSR2 resumes
//! them, SIGTERM stops it. The real binary, in front of a real cluster.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
mod process;

use pgherd_testkit::{shared_cluster, APP_PASSWORD};
use process::{connect, free_port, Pgherd};
use tokio_postgres::SimpleQueryMessage;

/// The `value` of row `key` in a console command's result.
async fn console_value(console: &tokio_postgres::Client, sql: &str, key: &str) -> String {
    for m in console.simple_query(sql).await.unwrap() {
        if let SimpleQueryMessage::Row(r) = m {
            if r.get(0) == Some(key) {
                return r.get("value").unwrap().to_owned();
            }
        }
    }
    panic!("{sql}: no row {key}")
}

/// Polls the console until row `key` of `sql` says `want` (10 s at most).
async fn wait_for(console: &tokio_postgres::Client, sql: &str, key: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let value = console_value(console, sql, key).await;
        if value == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{sql} {key}: {value}, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn write_config(path: &Path, port: u16, pool_size: u32) {
    let toml = shared_cluster()
        .pgherd()
        .general(&format!("listen_addr = \"127.0.0.1:{port}\""))
        .general("admin_listen_addr = \"\"")
        .general("admin_users = [\"app\"]")
        .general("pool_mode = \"transaction\"")
        .general(&format!("default_pool_size = {pool_size}"))
        .toml();
    std::fs::write(path, toml).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_sigusr1_pauses_sigusr2_resumes_sigterm_stops() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pgherd.toml");
    let port = free_port();
    write_config(&config, port, 20);
    // Started from a shell with a low soft open-files limit: pgherd
    // raises it to the hard limit and says so.
    let log = dir.path().join("pgherd.log");
    let pgherd = Pgherd(
        Command::new("sh")
            .arg("-c")
            .arg("ulimit -Sn 256 && exec \"$0\" run -c \"$1\"")
            .arg(env!("CARGO_BIN_EXE_pgherd"))
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let app = loop {
        match connect(port, APP_PASSWORD, "app").await {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("pgherd does not serve: {e}"),
        }
    };
    let console = connect(port, APP_PASSWORD, "pgbouncer").await.unwrap();
    app.simple_query("SELECT 1").await.unwrap();
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains(&format!(
            "kernel file descriptor limit: {hard} (hard: {hard})"
        )),
        "{logged}"
    );

    // SIGHUP: the file's new pool size is in force.
    write_config(&config, port, 7);
    pgherd.signal(Signal::SIGHUP);
    wait_for(&console, "SHOW CONFIG", "default_pool_size", "7").await;

    // SIGUSR1: paused; a transaction waits.
    wait_for(&console, "SHOW STATE", "paused", "no").await;
    pgherd.signal(Signal::SIGUSR1);
    wait_for(&console, "SHOW STATE", "paused", "yes").await;
    let waiting = tokio::spawn(async move { app.simple_query("SELECT 1").await.is_ok() });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "a query ran while paused");

    // SIGUSR2: resumed; the transaction runs.
    pgherd.signal(Signal::SIGUSR2);
    wait_for(&console, "SHOW STATE", "paused", "no").await;
    assert!(tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .unwrap()
        .unwrap());

    // SIGTERM: pgherd stops, with success (at once: no client is left).
    drop(console);
    let mut pgherd = pgherd;
    pgherd.signal(Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = pgherd.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "pgherd still runs after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
}
