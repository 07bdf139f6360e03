//! pgherd's own events, as an exec hook sees them: started, a pool whose
//! clients keep waiting and its recovery, a burst of failed logins,
//! `max_client_conn` reached, a reload with what it changed, draining, and
//! `stopped` delivered before the process exits. The real binary, in
//! front of a real cluster.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
mod process;

use pgherd_testkit::{shared_cluster, APP_PASSWORD};
use process::{connect, free_port, Pgherd};

fn write_config(path: &Path, port: u16, pool_size: u32, hook: &Path) {
    let toml = shared_cluster()
        .pgherd()
        .general(&format!("listen_addr = \"127.0.0.1:{port}\""))
        .general("admin_listen_addr = \"\"")
        .general("pool_mode = \"transaction\"")
        .general(&format!("default_pool_size = {pool_size}"))
        .general("max_client_conn = 4")
        .notify(&format!("exec = [\"{}\"]", hook.display()))
        .notify("pool_saturated_after = 1")
        .notify("login_failure_burst = 3")
        .notify("instance = \"edge-1\"")
        .toml();
    std::fs::write(path, toml).unwrap();
}

/// The events the hook has written so far, as JSON.
fn events(file: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Waits (60 s at most) for the hook to have been told `kind`; returns it.
async fn told(file: &Path, kind: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(e) = events(file).into_iter().find(|e| e["event"] == kind) {
            return e;
        }
        let seen: Vec<_> = events(file).iter().map(|e| e["event"].clone()).collect();
        assert!(Instant::now() < deadline, "no {kind} event; seen: {seen:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgherds_own_events_reach_an_exec_hook_and_stopped_goes_out_before_exit() {
    let dir = tempfile::tempdir().unwrap();
    let said = dir.path().join("events.jsonl");
    let hook = dir.path().join("hook.sh");
    std::fs::write(
        &hook,
        format!("#!/bin/sh\ncat >> '{0}'\necho >> '{0}'\n", said.display()),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let config = dir.path().join("pgherd.toml");
    let port = free_port();
    write_config(&config, port, 1, &hook);
    let log = dir.path().join("pgherd.log");
    let mut pgherd = Pgherd(
        Command::new(env!("CARGO_BIN_EXE_pgherd"))
            .args(["run", "-c"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let holder = loop {
        match connect(port, APP_PASSWORD, "app").await {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("pgherd does not serve: {e}"),
        }
    };
    let started = told(&said, "started").await;
    assert_eq!(started["instance"], "edge-1");
    let message = started["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("127.0.0.1:{port} (primary)")),
        "{message}"
    );

    // The one server is held by an open transaction: the next client waits
    // past pool_saturated_after, then gets it once the first commits.
    let waiter = connect(port, APP_PASSWORD, "app").await.unwrap();
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let waited = tokio::spawn(async move {
        waiter.simple_query("SELECT 1").await.unwrap();
        waiter
    });
    let saturated = told(&said, "pool_saturated").await;
    let message = saturated["message"].as_str().unwrap();
    assert!(
        message.contains("pool app/app@") && message.contains("pool size 1"),
        "{message}"
    );
    holder.batch_execute("COMMIT").await.unwrap();
    let waiter = waited.await.unwrap();
    told(&said, "pool_recovered").await;

    // Three wrong passwords make a burst.
    for _ in 0..3 {
        let e = connect(port, "wrong", "app").await.err().unwrap();
        assert_eq!(e.code().unwrap().code(), "28P01");
    }
    told(&said, "login_failures").await;

    // Two connected, two more fill max_client_conn = 4; the fifth is
    // refused, which is news once.
    let mut more = Vec::new();
    for _ in 0..2 {
        more.push(connect(port, APP_PASSWORD, "app").await.unwrap());
    }
    let e = connect(port, APP_PASSWORD, "app").await.err().unwrap();
    assert_eq!(e.code().unwrap().code(), "53300");
    let limit = told(&said, "max_client_conn").await;
    assert!(limit["message"].as_str().unwrap().contains("(4)"));
    drop(more);
    drop(waiter);

    // A reload says what it changed.
    write_config(&config, port, 2, &hook);
    pgherd.signal(Signal::SIGHUP);
    let reloaded = told(&said, "config_reloaded").await;
    let message = reloaded["message"].as_str().unwrap();
    assert!(message.contains("changed: default_pool_size"), "{message}");

    // SIGTERM: draining, then stopped, delivered before the process ends.
    drop(holder);
    pgherd.signal(Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = pgherd.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "pgherd still runs after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
    let kinds: Vec<String> = events(&said)
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_owned())
        .collect();
    let tail = &kinds[kinds.len() - 2..];
    assert_eq!(tail, ["draining", "stopped"], "{kinds:?}");
}
