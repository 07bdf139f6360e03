//! Real PostgreSQL clusters on loopback: a primary plus streaming standbys.
//!
//! `pgherd demo` and the test harness both need real servers, not mocks: a
//! proxy is only as good as its behaviour against the real thing (real
//! authentication, real failover, real replication lag). This crate starts
//! them from the installed PostgreSQL binaries in a temporary directory:
//! `initdb` for the primary, `pg_basebackup -R -C -S <slot>` for each standby,
//! every node on a free `127.0.0.1` port with its Unix socket in the cluster's
//! directory.
//!
//! PostgreSQL refuses to run as root, so when the caller is root every
//! PostgreSQL program runs as the `postgres` user (uid/gid set on the child).
//!
//! Nothing outlives its owner: dropping a [`LocalCluster`] stops every node
//! by PID and removes the directory, also while a test panics. Should the
//! owning process die without unwinding (SIGKILL, `abort`, a `static` that is
//! never dropped), a small watchdog process notices its pipe close and stops
//! the nodes by the PIDs in their `postmaster.pid` files.
#![forbid(unsafe_code)]

mod binaries;
mod node;
pub mod patroni;
pub mod pgbouncer;
pub mod repmgr;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

pub use binaries::PgBinaries;
pub use node::{LocalNode, StopMode};
pub use patroni::{PatroniCluster, PatroniSpec};
pub use pgbouncer::{find_pgbouncer, LocalPgbouncer};
pub use repmgr::{RepmgrCluster, RepmgrSpec};

/// Anything that can go wrong while running local PostgreSQL servers.
#[derive(Debug, thiserror::Error)]
pub enum LocalPgError {
    #[error(
        "PostgreSQL server binaries not found (looked at $PGHERD_PG_BINDIR, `pg_config --bindir` \
         and /usr/lib/postgresql/*/bin). Install them, e.g. `apt-get install -y postgresql`"
    )]
    NotInstalled,
    #[error("running as root, but there is no `postgres` user to run PostgreSQL as: {0}")]
    NoPostgresUser(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{program} failed: {output}")]
    Command { program: String, output: String },
    #[error("{0}")]
    Timeout(String),
}

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LocalPgError {
    let what = what.into();
    move |source| LocalPgError::Io { what, source }
}

/// What cluster to build.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Number of streaming standbys beside the primary.
    pub standbys: usize,
    /// Password of the `postgres` superuser for TCP logins.
    pub superuser_password: String,
    /// Roles that may log in over TCP without a password (`trust` in pg_hba).
    pub trust_users: Vec<String>,
    /// Extra `postgresql.conf` lines for every node.
    pub extra_conf: Vec<String>,
    /// `pg_hba.conf` lines checked before the defaults (first match wins).
    pub hba_first: Vec<String>,
    /// Turns on TLS (`ssl = on`) with this certificate and key.
    pub ssl: Option<SslFiles>,
}

/// A server certificate and its key (PEM files), for [`ClusterSpec::ssl`].
/// They are copied, so PostgreSQL owns its copy of the key.
#[derive(Debug, Clone)]
pub struct SslFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        ClusterSpec {
            standbys: 2,
            superuser_password: "postgres".into(),
            trust_users: Vec::new(),
            extra_conf: Vec::new(),
            hba_first: Vec::new(),
            ssl: None,
        }
    }
}

/// The uid/gid PostgreSQL programs run as, when the caller is root.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunAs {
    uid: u32,
    gid: u32,
}

impl RunAs {
    fn detect() -> Result<Option<RunAs>, LocalPgError> {
        if !nix::unistd::geteuid().is_root() {
            return Ok(None);
        }
        let user = nix::unistd::User::from_name("postgres")
            .map_err(|e| LocalPgError::NoPostgresUser(e.to_string()))?
            .ok_or_else(|| LocalPgError::NoPostgresUser("user not found".into()))?;
        Ok(Some(RunAs {
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        }))
    }

    pub(crate) fn apply(run_as: Option<RunAs>, cmd: &mut Command) {
        use std::os::unix::process::CommandExt;
        if let Some(r) = run_as {
            cmd.uid(r.uid).gid(r.gid);
        }
    }

    fn chown(run_as: Option<RunAs>, path: &Path) -> Result<(), LocalPgError> {
        if let Some(r) = run_as {
            std::os::unix::fs::chown(path, Some(r.uid), Some(r.gid))
                .map_err(io_err(format!("chown {}", path.display())))?;
        }
        Ok(())
    }
}

/// A running primary (node 0) and its standbys (nodes 1..).
#[derive(Debug)]
pub struct LocalCluster {
    bins: PgBinaries,
    run_as: Option<RunAs>,
    nodes: Vec<LocalNode>,
    spec: ClusterSpec,
    watchdog: Option<(Child, ChildStdin)>,
    // Declared last: removed after the nodes are stopped.
    dir: tempfile::TempDir,
}

impl LocalCluster {
    /// Builds and starts a cluster as `spec` says; returns when every standby streams.
    pub fn start(spec: ClusterSpec) -> Result<LocalCluster, LocalPgError> {
        let mut cluster = LocalCluster::empty(spec)?;
        cluster.init_primary()?;
        for i in 1..=cluster.spec.standbys {
            cluster.add_standby(i)?;
        }
        for i in 1..cluster.nodes.len() {
            cluster.wait_streaming(i, Duration::from_secs(30))?;
        }
        Ok(cluster)
    }

    /// The directory, its socket directory and the watchdog, no node yet:
    /// for clusters whose nodes a manager creates (see [`crate::patroni`]).
    pub(crate) fn empty(spec: ClusterSpec) -> Result<LocalCluster, LocalPgError> {
        let bins = PgBinaries::find()?;
        let run_as = RunAs::detect()?;
        let dir = tempfile::Builder::new()
            .prefix("pgherd-cluster-")
            .tempdir()
            .map_err(io_err("create temp dir"))?;
        RunAs::chown(run_as, dir.path())?;
        let mut cluster = LocalCluster {
            bins,
            run_as,
            nodes: Vec::new(),
            watchdog: None,
            spec,
            dir,
        };
        cluster.watchdog = Some(cluster.spawn_watchdog()?);
        let sock = cluster.socket_dir();
        std::fs::create_dir(&sock).map_err(io_err("create socket dir"))?;
        RunAs::chown(cluster.run_as, &sock)?;
        Ok(cluster)
    }

    pub fn nodes(&self) -> &[LocalNode] {
        &self.nodes
    }

    pub fn node(&self, i: usize) -> &LocalNode {
        &self.nodes[i]
    }

    /// The directory holding data directories, sockets and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The directory of the Unix sockets (superuser logins need no password there).
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    pub fn superuser_password(&self) -> &str {
        &self.spec.superuser_password
    }

    /// Runs SQL on node `i` as the superuser through psql; returns its
    /// unaligned, tuples-only output.
    pub fn sql(&self, i: usize, sql: &str) -> Result<String, LocalPgError> {
        let node = &self.nodes[i];
        let out = Command::new(self.bins.path("psql"))
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
            .arg("-h")
            .arg(self.socket_dir())
            .args([
                "-p",
                &node.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-c", sql])
            .stdin(Stdio::null())
            .output()
            .map_err(io_err("run psql"))?;
        if !out.status.success() {
            return Err(LocalPgError::Command {
                program: format!("psql on {}: {sql}", node.name),
                output: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Stops node `i`.
    pub fn stop(&mut self, i: usize, mode: StopMode) -> Result<(), LocalPgError> {
        self.nodes[i].stop(mode)
    }

    /// Starts node `i` again with its existing data directory.
    pub fn restart(&mut self, i: usize) -> Result<(), LocalPgError> {
        let (bins, run_as, sock) = (&self.bins, self.run_as, self.socket_dir());
        self.nodes[i].start(bins, run_as, &sock)
    }

    /// Freezes node `i` — postmaster and every backend — with SIGSTOP, like a
    /// network partition or a hung machine: connections stay open, nothing answers.
    pub fn freeze(&self, i: usize) -> Result<(), LocalPgError> {
        self.nodes[i].signal_all(nix::sys::signal::Signal::SIGSTOP)
    }

    /// Resumes a frozen node (SIGCONT).
    pub fn thaw(&self, i: usize) -> Result<(), LocalPgError> {
        self.nodes[i].signal_all(nix::sys::signal::Signal::SIGCONT)
    }

    /// Promotes standby `i` with `pg_promote()` and waits until it accepts writes.
    pub fn promote(&self, i: usize) -> Result<(), LocalPgError> {
        let done = self.sql(i, "SELECT pg_promote(true, 30)")?;
        if done != "t" {
            return Err(LocalPgError::Timeout(format!(
                "{} did not finish promotion",
                self.nodes[i].name
            )));
        }
        Ok(())
    }

    /// Turns stopped node `i` (a former primary, after a failover) into a
    /// standby of `primary`, as `repmgr node rejoin --force-rewind` does:
    /// `pg_rewind` against the new primary (writing the recovery settings),
    /// then start. Does not wait for it to stream.
    pub fn rejoin(&mut self, i: usize, primary: usize) -> Result<(), LocalPgError> {
        // pg_rewind reads the source's timeline from its control file, which
        // a promoted server only updates at its first checkpoint.
        self.sql(primary, "CHECKPOINT")?;
        // The password goes into the connection string so that the
        // recovery settings pg_rewind writes carry it too.
        let source = format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres password={}",
            self.nodes[primary].port, self.spec.superuser_password
        );
        self.run(
            Command::new(self.bins.path("pg_rewind"))
                .arg("-D")
                .arg(&self.nodes[i].data_dir)
                .arg(format!("--source-server={source}"))
                .arg("--write-recovery-conf"),
        )?;
        // The rewound directory has the source's settings, its slot name
        // included: stream through a slot of this node's own.
        let name = self.nodes[i].name.clone();
        self.sql(
            primary,
            &format!(
                "SELECT pg_create_physical_replication_slot('{name}') \
                 WHERE NOT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = '{name}')"
            ),
        )?;
        append(
            &self.nodes[i].data_dir.join("postgresql.auto.conf"),
            &format!("primary_slot_name = '{name}'\n"),
        )?;
        self.restart(i)
    }

    /// Waits until standby `i` streams from a primary.
    pub fn wait_streaming(&self, i: usize, timeout: Duration) -> Result<(), LocalPgError> {
        let name = self.nodes[i].name.clone();
        poll(timeout, &format!("{name} to stream"), || {
            Ok(self.sql(i, "SELECT status FROM pg_stat_wal_receiver")? == "streaming")
        })
    }

    /// Waits until standby `i` has replayed everything primary `primary` wrote so far.
    pub fn wait_caught_up(&self, primary: usize, i: usize) -> Result<(), LocalPgError> {
        let lsn = self.sql(primary, "SELECT pg_current_wal_lsn()")?;
        let name = self.nodes[i].name.clone();
        poll(
            Duration::from_secs(30),
            &format!("{name} to replay {lsn}"),
            || {
                let q = format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn");
                Ok(self.sql(i, &q)? == "t")
            },
        )
    }

    fn init_primary(&mut self) -> Result<(), LocalPgError> {
        let sock = self.socket_dir();
        let mut node = LocalNode::new("pg0", self.dir.path(), node::free_port()?);
        let pwfile = self.dir.path().join("pwfile");
        std::fs::write(&pwfile, &self.spec.superuser_password).map_err(io_err("write pwfile"))?;
        RunAs::chown(self.run_as, &pwfile)?;
        self.run(
            Command::new(self.bins.path("initdb"))
                .arg("-D")
                .arg(&node.data_dir)
                .args([
                    "-U",
                    "postgres",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                ])
                .arg(format!("--pwfile={}", pwfile.display()))
                .args(["-E", "UTF8", "--locale=C", "--no-sync"]),
        )?;
        let mut conf = self.postgresql_conf();
        if let Some(ssl) = &self.spec.ssl {
            conf.push_str(&self.install_ssl_files(ssl)?);
        }
        append(&node.data_dir.join("postgresql.conf"), &conf)?;
        std::fs::write(node.data_dir.join("pg_hba.conf"), self.pg_hba_conf())
            .map_err(io_err("write pg_hba.conf"))?;
        node.start(&self.bins, self.run_as, &sock)?;
        self.nodes.push(node);
        Ok(())
    }

    fn add_standby(&mut self, i: usize) -> Result<(), LocalPgError> {
        let mut node = LocalNode::new(&format!("pg{i}"), self.dir.path(), node::free_port()?);
        let primary_port = self.nodes[0].port.to_string();
        self.run(
            Command::new(self.bins.path("pg_basebackup"))
                .args(["-h", "127.0.0.1", "-p", &primary_port, "-U", "postgres"])
                .arg("-D")
                .arg(&node.data_dir)
                .args([
                    "-R",
                    "-X",
                    "stream",
                    "-C",
                    "-S",
                    &node.name,
                    "--checkpoint=fast",
                ])
                .arg("--no-sync")
                .env("PGPASSWORD", &self.spec.superuser_password),
        )?;
        node.start(&self.bins, self.run_as, &self.socket_dir())?;
        self.nodes.push(node);
        Ok(())
    }

    fn postgresql_conf(&self) -> String {
        let mut conf = String::from(
            "\n# pgherd-localpg\n\
             listen_addresses = '127.0.0.1'\n\
             max_connections = 200\n\
             shared_buffers = 32MB\n\
             wal_level = replica\n\
             max_wal_senders = 10\n\
             max_replication_slots = 10\n\
             hot_standby = on\n\
             hot_standby_feedback = on\n\
             wal_log_hints = on\n\
             wal_receiver_status_interval = 1s\n\
             fsync = off\n\
             password_encryption = 'scram-sha-256'\n",
        );
        conf.push_str(&format!(
            "unix_socket_directories = '{}'\n",
            self.socket_dir().display()
        ));
        for line in &self.spec.extra_conf {
            conf.push_str(line);
            conf.push('\n');
        }
        conf
    }

    /// Copies the certificate and key where every node reads them, owned by
    /// the server's user and private (PostgreSQL refuses a key others can
    /// read); returns the `postgresql.conf` lines that use them.
    fn install_ssl_files(&self, ssl: &SslFiles) -> Result<String, LocalPgError> {
        use std::os::unix::fs::PermissionsExt;
        let cert = self.dir.path().join("server.crt");
        let key = self.dir.path().join("server.key");
        for (from, to) in [(&ssl.cert, &cert), (&ssl.key, &key)] {
            std::fs::copy(from, to).map_err(io_err(format!("copy {}", from.display())))?;
            std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o600))
                .map_err(io_err(format!("chmod {}", to.display())))?;
            RunAs::chown(self.run_as, to)?;
        }
        Ok(format!(
            "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
            cert.display(),
            key.display()
        ))
    }

    fn pg_hba_conf(&self) -> String {
        let mut hba = String::from("local all all trust\n");
        for line in &self.spec.hba_first {
            hba.push_str(line);
            hba.push('\n');
        }
        for u in &self.spec.trust_users {
            hba.push_str(&format!("host all {u} 127.0.0.1/32 trust\n"));
        }
        // `md5` accepts both: md5 for roles stored as md5, SCRAM for the others.
        hba.push_str("host all all 127.0.0.1/32 md5\n");
        hba.push_str("host replication all 127.0.0.1/32 md5\n");
        hba
    }

    /// Starts a helper process (a cluster manager, its DCS) as the
    /// server's user in the cluster's directory, its output appended to
    /// `<name>.log` and its PID written to `<name>.pid` there, where the
    /// watchdog finds it should this process die.
    pub(crate) fn spawn_helper(
        &self,
        name: &str,
        cmd: &mut Command,
    ) -> Result<Child, LocalPgError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{name}.log")))
            .map_err(io_err(format!("open {name}.log")))?;
        let log2 = log.try_clone().map_err(io_err("clone log handle"))?;
        RunAs::apply(self.run_as, cmd);
        cmd.current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let child = cmd.spawn().map_err(io_err(format!("spawn {name}")))?;
        std::fs::write(
            self.dir.path().join(format!("{name}.pid")),
            format!("{}\n", child.id()),
        )
        .map_err(io_err(format!("write {name}.pid")))?;
        Ok(child)
    }

    fn run(&self, cmd: &mut Command) -> Result<(), LocalPgError> {
        RunAs::apply(self.run_as, cmd);
        cmd.current_dir(self.dir.path()).stdin(Stdio::null());
        let program = format!("{:?}", cmd.get_program());
        let out = cmd.output().map_err(io_err(format!("run {program}")))?;
        if !out.status.success() {
            return Err(LocalPgError::Command {
                program,
                output: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(())
    }

    /// A `sh` that waits for its stdin to close, then stops every helper
    /// (a `*.pid` file in the cluster's directory: repmgrd, ...) and every
    /// postmaster of this cluster by the PID in its `postmaster.pid`, and
    /// removes the directory.
    fn spawn_watchdog(&self) -> Result<(Child, ChildStdin), LocalPgError> {
        use std::os::unix::process::CommandExt;
        let script = r#"
            read _ignored
            for f in "$1"/*.pid; do
                [ -f "$f" ] && kill -TERM "$(head -n 1 "$f")" 2>/dev/null
            done
            for f in "$1"/*/data/postmaster.pid; do
                [ -f "$f" ] || continue
                pid=$(head -n 1 "$f")
                kill -QUIT "$pid" 2>/dev/null
                i=0
                while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
            done
            rm -rf "$1"
        "#;
        let mut child = Command::new("sh")
            .args(["-c", script, "pgherd-localpg-watchdog"])
            .arg(self.dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(io_err("spawn watchdog"))?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| LocalPgError::Timeout("watchdog has no stdin".into()))?;
        Ok((child, stdin))
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for node in self.nodes.iter_mut().rev() {
            let _ = node.stop(StopMode::Fast);
        }
        if let Some((mut child, mut stdin)) = self.watchdog.take() {
            // Nodes are stopped: let the watchdog finish (it only removes files now).
            let _ = stdin.write_all(b"done\n");
            drop(stdin);
            let _ = child.wait();
        }
    }
}

fn append(path: &Path, text: &str) -> Result<(), LocalPgError> {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(io_err(format!("open {}", path.display())))?;
    f.write_all(text.as_bytes())
        .map_err(io_err(format!("write {}", path.display())))
}

/// Stops helpers: SIGTERM to all of them at once, then SIGKILL to those
/// still running after `grace`.
pub(crate) fn terminate(children: &mut [Child], grace: Duration) {
    for child in children.iter() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    for child in children.iter_mut() {
        let exited = poll(grace, "a helper to exit", || {
            Ok(child.try_wait().map_err(io_err("wait a helper"))?.is_some())
        });
        if exited.is_err() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `check` every 50 ms until it returns true or `timeout` passes.
/// Errors from `check` count as "not yet" until the deadline.
pub(crate) fn poll(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<bool, LocalPgError>,
) -> Result<(), LocalPgError> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = check();
        if let Ok(true) = last {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let why = match last {
                Err(e) => format!(": {e}"),
                _ => String::new(),
            };
            return Err(LocalPgError::Timeout(format!(
                "gave up after {timeout:?} waiting for {what}{why}"
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
