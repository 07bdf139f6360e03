//! The real pgherd binary as a child process, for the tests that drive it
//! with signals and clients.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::process::Child;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The pgherd process; stopped by PID if the test ends early.
pub struct Pgherd(pub Child);

impl Pgherd {
    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.0.id() as i32), signal).unwrap();
    }
}

impl Drop for Pgherd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Logs in as `app` on loopback port `port`.
pub async fn connect(
    port: u16,
    password: &str,
    dbname: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user("app")
        .password(password)
        .dbname(dbname)
        .connect(tokio_postgres::NoTls)
        .await?;
    tokio::spawn(conn);
    Ok(client)
}
