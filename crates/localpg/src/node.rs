//! One PostgreSQL server process of a local cluster.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::{io_err, poll, LocalPgError, PgBinaries, RunAs};

/// How to stop a node, as `pg_ctl stop -m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// SIGINT: roll back sessions, checkpoint, exit.
    Fast,
    /// SIGQUIT: exit at once, crash recovery on the next start — a crash.
    Immediate,
}

/// A node: its name, port, data directory and (while running) its postmaster.
#[derive(Debug)]
pub struct LocalNode {
    pub name: String,
    pub port: u16,
    pub data_dir: PathBuf,
    log_file: PathBuf,
    postmaster: Option<Child>,
}

impl LocalNode {
    pub(crate) fn new(name: &str, cluster_dir: &Path, port: u16) -> LocalNode {
        let dir = cluster_dir.join(name);
        LocalNode {
            name: name.to_owned(),
            port,
            data_dir: dir.join("data"),
            log_file: cluster_dir.join(format!("{name}.log")),
            postmaster: None,
        }
    }

    /// The postmaster's PID while the node runs.
    pub fn pid(&self) -> Option<u32> {
        self.postmaster.as_ref().map(Child::id)
    }

    pub fn is_running(&self) -> bool {
        self.postmaster.is_some()
    }

    /// The server log (stderr of the postmaster).
    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    pub(crate) fn start(
        &mut self,
        bins: &PgBinaries,
        run_as: Option<RunAs>,
        socket_dir: &Path,
    ) -> Result<(), LocalPgError> {
        use std::os::unix::process::CommandExt;
        if self.postmaster.is_some() {
            return Ok(());
        }
        let parent = self.data_dir.parent().unwrap_or(&self.data_dir);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_file)
            .map_err(io_err("open node log"))?;
        let log2 = log.try_clone().map_err(io_err("clone log handle"))?;
        let mut cmd = Command::new(bins.path("postgres"));
        cmd.arg("-D")
            .arg(&self.data_dir)
            .args(["-p", &self.port.to_string()])
            .current_dir(parent)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            // Its own process group: a Ctrl-C meant for the demo must not
            // reach the servers before the demo stops them in order.
            .process_group(0);
        RunAs::apply(run_as, &mut cmd);
        let child = cmd.spawn().map_err(io_err("spawn postgres"))?;
        self.postmaster = Some(child);
        let port = self.port.to_string();
        let ready = poll(
            Duration::from_secs(60),
            &format!("{} to start", self.name),
            || {
                if let Some(Ok(Some(status))) = self.postmaster.as_mut().map(Child::try_wait) {
                    return Err(LocalPgError::Command {
                        program: format!("postgres ({})", self.name),
                        output: format!("exited with {status}; see {}", self.log_file.display()),
                    });
                }
                let out = Command::new(bins.path("pg_isready"))
                    .arg("-h")
                    .arg(socket_dir)
                    .args(["-p", &port, "-q"])
                    .status()
                    .map_err(io_err("run pg_isready"))?;
                Ok(out.success())
            },
        );
        if ready.is_err() {
            let _ = self.stop(StopMode::Immediate);
        }
        ready
    }

    /// Sends `signal` to the postmaster, then to each of its children, by PID.
    /// (Backends call `setsid()`, so the process group would miss them.)
    pub(crate) fn signal_all(&self, signal: Signal) -> Result<(), LocalPgError> {
        let pid = self
            .pid()
            .ok_or_else(|| LocalPgError::Timeout(format!("{} is not running", self.name)))?;
        let postmaster = Pid::from_raw(pid as i32);
        kill(postmaster, signal).map_err(|e| LocalPgError::Io {
            what: format!("signal {} with {signal}", self.name),
            source: e.into(),
        })?;
        for child in children_of(pid) {
            // A child may have exited meanwhile.
            let _ = kill(Pid::from_raw(child), signal);
        }
        Ok(())
    }

    /// Signals the postmaster and waits for it to exit (SIGKILL after 30 s).
    pub(crate) fn stop(&mut self, mode: StopMode) -> Result<(), LocalPgError> {
        let Some(mut child) = self.postmaster.take() else {
            return Ok(());
        };
        let pid = Pid::from_raw(child.id() as i32);
        let signal = match mode {
            StopMode::Fast => Signal::SIGINT,
            StopMode::Immediate => Signal::SIGQUIT,
        };
        // A frozen node must be able to act on the signal.
        let _ = self.signal_all(Signal::SIGCONT);
        let _ = kill(pid, signal);
        let exited = poll(Duration::from_secs(30), "postgres to exit", || {
            Ok(child.try_wait().map_err(io_err("wait postgres"))?.is_some())
        });
        if exited.is_err() {
            let _ = child.kill();
            let _ = child.wait();
        }
        Ok(())
    }
}

/// PIDs of the processes whose parent is `parent`, from `/proc/*/stat`.
fn children_of(parent: u32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    // `pid (comm) state ppid ...`; comm may contain spaces.
                    let after = &stat[stat.rfind(')')? + 1..];
                    after.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

/// A free port on 127.0.0.1: bound once by the OS, then released for the node.
pub(crate) fn free_port() -> Result<u16, LocalPgError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(io_err("find a free port"))?;
    let port = l.local_addr().map_err(io_err("find a free port"))?.port();
    Ok(port)
}
