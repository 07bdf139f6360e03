//! `pgherd demo`, as a first-time user runs it: the real binary starts a
//! primary and two standbys and serves the seed's two ports, read-write
//! on `--port N` and read-only on N+1, and says so.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The demo process; stopped by PID if the test ends early.
struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0.id() as i32), Signal::SIGINT);
        let _ = self.0.wait();
    }
}

/// Two free loopback ports in a row.
fn free_pair() -> u16 {
    loop {
        let first = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = first.local_addr().unwrap().port();
        if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

async fn in_recovery(port: u16) -> String {
    let (client, conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user("demo")
        .password("demo")
        .dbname("demo")
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let row = client
        .query_one("SELECT pg_is_in_recovery()::text", &[])
        .await
        .unwrap();
    row.get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_serves_a_read_write_and_a_read_only_port() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo.out");
    let port = free_pair();
    let demo = Demo(
        Command::new(env!("CARGO_BIN_EXE_pgherd"))
            .args(["demo", "--port", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(180);
    let printed = loop {
        let printed = std::fs::read_to_string(&out).unwrap_or_default();
        if printed.contains("Press Ctrl-C to stop") {
            break printed;
        }
        assert!(
            Instant::now() < deadline,
            "the demo did not start: {printed}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let read_write = format!("psql -h 127.0.0.1 -p {port} -U demo demo");
    let read_only = format!("psql -h 127.0.0.1 -p {} -U demo demo", port + 1);
    assert!(printed.contains(&read_write), "{printed}");
    assert!(printed.contains(&read_only), "{printed}");
    assert_eq!(in_recovery(port).await, "false", "read-write: the primary");
    assert_eq!(in_recovery(port + 1).await, "true", "read-only: a standby");
    drop(demo);
}
