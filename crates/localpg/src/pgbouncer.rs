//! A real pgbouncer on loopback: the benchmark's yardstick and the admin
//! console tests' reference for column names.
//!
//! Like PostgreSQL, pgbouncer refuses to run as root: it then runs as the
//! `postgres` user. Dropping a [`LocalPgbouncer`] stops it by PID. It runs
//! in a session of its own, as a daemon does (see [`LocalPgbouncer::start`]).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{io_err, LocalPgError, RunAs};

/// Where Debian and friends install pgbouncer.
pub fn find_pgbouncer() -> Option<PathBuf> {
    [
        "/usr/sbin/pgbouncer",
        "/usr/bin/pgbouncer",
        "/usr/local/bin/pgbouncer",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
}

/// A running pgbouncer.
#[derive(Debug)]
pub struct LocalPgbouncer {
    child: Child,
    pub port: u16,
    // Removed after the process is stopped.
    _dir: tempfile::TempDir,
}

impl LocalPgbouncer {
    /// Starts `bin` with `databases` as its `[databases]` lines, `settings`
    /// as extra `[pgbouncer]` lines and `userlist` as its auth_file, on a free
    /// loopback port; returns once it accepts connections.
    pub fn start(
        bin: &Path,
        databases: &str,
        settings: &str,
        userlist: &str,
    ) -> Result<LocalPgbouncer, LocalPgError> {
        let run_as = RunAs::detect()?;
        let dir = tempfile::Builder::new()
            .prefix("pgherd-pgbouncer-")
            .tempdir()
            .map_err(io_err("creating pgbouncer's directory"))?;
        let port = crate::node::free_port()?;
        let d = dir.path().display();
        let ini = format!(
            "[databases]\n{databases}\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\n\
             listen_port = {port}\nunix_socket_dir =\nauth_file = {d}/userlist.txt\n\
             logfile = {d}/pgbouncer.log\npidfile = {d}/pgbouncer.pid\n{settings}\n"
        );
        for (name, text) in [("pgbouncer.ini", ini.as_str()), ("userlist.txt", userlist)] {
            let path = dir.path().join(name);
            std::fs::write(&path, text).map_err(io_err(format!("writing {name}")))?;
            RunAs::chown(run_as, &path)?;
        }
        RunAs::chown(run_as, dir.path())?;
        // In a session of its own (`setsid` execs it, same PID), as
        // `pgbouncer -d` or a service manager would run it: with the
        // kernel's autogroup scheduling a session is one scheduling group,
        // and sharing its starter's (a benchmark's pgbench) changes how
        // often the two preempt each other.
        let mut cmd = Command::new("setsid");
        // -q: its log goes to the log file only.
        cmd.arg(bin)
            .arg("-q")
            .arg(dir.path().join("pgbouncer.ini"))
            .stdin(Stdio::null());
        RunAs::apply(run_as, &mut cmd);
        let child = cmd
            .spawn()
            .map_err(io_err(format!("starting {}", bin.display())))?;
        let mut bouncer = LocalPgbouncer {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = bouncer.child.try_wait() {
                let log = std::fs::read_to_string(bouncer._dir.path().join("pgbouncer.log"))
                    .unwrap_or_default();
                return Err(LocalPgError::Command {
                    program: "pgbouncer".into(),
                    output: format!("exited with {status}: {log}"),
                });
            }
            if Instant::now() > deadline {
                return Err(LocalPgError::Timeout(
                    "pgbouncer did not listen within 10 s".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(bouncer)
    }

    /// The process ID (for CPU and memory readings).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for LocalPgbouncer {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}
