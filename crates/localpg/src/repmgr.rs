//! A cluster run by repmgr, as the seed setup runs it: the primary
//! registered with `repmgr primary register`, each standby made with
//! `repmgr standby clone` and `repmgr standby register`, and `repmgrd` on
//! every node with `failover = automatic`, promoting and re-pointing
//! standbys by itself.
//!
//! Failovers here are repmgr's, not a test's: repmgrd waits
//! `reconnect_attempts × reconnect_interval` before it promotes, and
//! `repmgr standby follow` restarts the other standbys. So every server is
//! started and stopped with `pg_ctl` (repmgr's service commands are set to
//! the same), not as a child of this process: repmgr restarts them itself.
//! Each node's port is on pg_ctl's command line, not in its
//! `postgresql.conf`: `repmgr standby clone` and `pg_rewind` copy that file
//! from another node. They are stopped by the PID in their
//! `postmaster.pid`, and repmgrd by its child handle (or, should this
//! process die, by the watchdog through its pid file).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{io_err, node, terminate, ClusterSpec, LocalCluster, LocalNode, LocalPgError};

/// How to build a repmgr cluster.
#[derive(Debug, Clone)]
pub struct RepmgrSpec {
    /// Standbys beside the primary.
    pub standbys: usize,
    /// repmgrd's `reconnect_attempts` and `reconnect_interval` (seconds):
    /// how long it tries the primary before it promotes a standby.
    pub reconnect_attempts: u32,
    pub reconnect_interval: u32,
    /// Passed on to the underlying [`ClusterSpec`] (roles' logins, extra settings).
    pub cluster: ClusterSpec,
}

impl Default for RepmgrSpec {
    fn default() -> Self {
        RepmgrSpec {
            standbys: 2,
            reconnect_attempts: 2,
            reconnect_interval: 1,
            cluster: ClusterSpec::default(),
        }
    }
}

/// A running repmgr cluster: node 0 starts as the primary.
#[derive(Debug)]
pub struct RepmgrCluster {
    /// The nodes, directory, sockets and watchdog (its nodes are not
    /// children of this process: see the module's notes).
    pg: LocalCluster,
    /// Each node's repmgr.conf.
    confs: Vec<PathBuf>,
    /// repmgrd on each node.
    daemons: Vec<Child>,
    /// How it was built: a standby added later is built the same way.
    spec: RepmgrSpec,
}

/// The nodes as a [`LocalCluster`]: their names, ports and directories,
/// SQL on them, waits for replication. Starting, stopping and promoting
/// them is the manager's, through this type's own methods.
impl std::ops::Deref for RepmgrCluster {
    type Target = LocalCluster;

    fn deref(&self) -> &LocalCluster {
        &self.pg
    }
}

impl RepmgrCluster {
    /// Builds the cluster and starts repmgrd everywhere; returns once every
    /// standby streams and every repmgrd runs.
    pub fn start(spec: RepmgrSpec) -> Result<RepmgrCluster, LocalPgError> {
        let bins = crate::PgBinaries::find()?;
        if !bins.path("repmgr").exists() || !bins.path("repmgrd").exists() {
            return Err(LocalPgError::Command {
                program: "repmgr".into(),
                output: format!(
                    "not found in {}: install it, e.g. `apt-get install -y postgresql-15-repmgr`",
                    bins.path("").display()
                ),
            });
        }
        let mut cluster_spec = spec.cluster.clone();
        cluster_spec.standbys = 0;
        cluster_spec
            .extra_conf
            .push("shared_preload_libraries = 'repmgr'".into());
        // repmgr connects to every node as its conninfo says: over TCP on
        // loopback (a host other programs, pgherd's discovery among them,
        // can reach), replication included, as the superuser without a
        // password (a real setup would use a .pgpass).
        for line in [
            "local replication all trust",
            "host all postgres 127.0.0.1/32 trust",
            "host replication postgres 127.0.0.1/32 trust",
        ] {
            cluster_spec.hba_first.push(line.into());
        }
        let mut pg = LocalCluster::start(cluster_spec)?;
        // From now on pg_ctl runs the primary, as it will every other node.
        pg.nodes[0].stop(node::StopMode::Fast)?;
        let mut cluster = RepmgrCluster {
            pg,
            confs: Vec::new(),
            daemons: Vec::new(),
            spec: spec.clone(),
        };
        cluster.write_conf(0)?;
        cluster.start_server(0)?;
        cluster.repmgr(0, &["primary", "register"])?;
        for i in 1..=spec.standbys {
            cluster.clone_standby(i)?;
        }
        for i in 0..cluster.pg.nodes.len() {
            cluster.start_daemon(i)?;
        }
        Ok(cluster)
    }

    /// Stops node `i`'s PostgreSQL with `pg_ctl stop -m immediate`: a crash,
    /// as far as repmgrd can tell.
    pub fn crash(&self, i: usize) -> Result<(), LocalPgError> {
        self.pg_ctl(i, &["-m", "immediate", "stop"])
    }

    /// The node repmgr's metadata names as the active primary, read on node
    /// `from` (`None` if it cannot be read there or names none).
    pub fn primary_by_repmgr(&self, from: usize) -> Option<usize> {
        let name = self
            .sql(
                from,
                "SELECT node_name FROM repmgr.nodes WHERE type = 'primary' AND active",
            )
            .ok()?;
        self.pg.nodes.iter().position(|n| n.name == name)
    }

    /// `repmgr service pause`: repmgrd on every node stops acting on
    /// failures (before a switchover done by hand), or `unpause`.
    pub fn pause_daemons(&self, pause: bool) -> Result<(), LocalPgError> {
        let action = if pause { "pause" } else { "unpause" };
        self.repmgr(0, &["service", action])
    }

    /// `repmgr node service --action=stop --checkpoint` on node `i`: a
    /// CHECKPOINT, then its `service_stop_command` (`pg_ctl stop -m fast`),
    /// as `repmgr standby switchover` stops the old primary.
    pub fn stop_for_switchover(&self, i: usize) -> Result<(), LocalPgError> {
        self.repmgr(i, &["node", "service", "--action=stop", "--checkpoint"])
    }

    /// `repmgr standby promote` on node `i`.
    pub fn promote(&self, i: usize) -> Result<(), LocalPgError> {
        self.repmgr(i, &["standby", "promote"])
    }

    /// `repmgr standby follow` on standby `i`: re-pointed at the current
    /// primary (repmgr restarts it).
    pub fn follow(&self, i: usize) -> Result<(), LocalPgError> {
        self.repmgr(i, &["standby", "follow"])
    }

    /// `repmgr node rejoin` of stopped node `i` (a failed primary) to
    /// `primary`, rewinding it if its history diverged (`--force-rewind`),
    /// as repmgr documents it. repmgr starts it.
    pub fn rejoin(&self, i: usize, primary: usize) -> Result<(), LocalPgError> {
        // pg_rewind reads the source's timeline from its control file, which
        // a promoted server updates at its first checkpoint.
        self.sql(primary, "CHECKPOINT")?;
        let conninfo = self.conninfo(primary);
        self.repmgr(
            i,
            &[
                "node",
                "rejoin",
                "-d",
                &conninfo,
                "--force-rewind",
                "--verbose",
            ],
        )
    }

    /// A new standby, cloned from node 0 and registered with repmgr
    /// (`repmgr standby clone`, `repmgr standby register`), its repmgrd
    /// started; returns its index.
    pub fn add_standby(&mut self) -> Result<usize, LocalPgError> {
        let i = self.pg.nodes.len();
        self.clone_standby(i)?;
        self.start_daemon(i)?;
        Ok(i)
    }

    /// `repmgr standby unregister` of standby `i`: its record leaves
    /// `repmgr.nodes` (the server runs on).
    pub fn unregister(&self, i: usize) -> Result<(), LocalPgError> {
        self.repmgr(i, &["standby", "unregister"])
    }

    /// Starts repmgrd on node `i`.
    fn start_daemon(&mut self, i: usize) -> Result<(), LocalPgError> {
        let name = format!("repmgrd-{}", self.pg.nodes[i].name);
        // The helper's pid file is the one the watchdog reads.
        let child = self.pg.spawn_helper(
            &name,
            Command::new(self.pg.bins.path("repmgrd"))
                .arg("-f")
                .arg(&self.confs[i])
                .args(["--daemonize=false", "--no-pid-file"]),
        )?;
        self.daemons.push(child);
        Ok(())
    }

    fn clone_standby(&mut self, i: usize) -> Result<(), LocalPgError> {
        let name = format!("pg{i}");
        let node = LocalNode::new(&name, self.pg.dir(), node::free_port()?);
        let home = node.data_dir.parent().unwrap_or(self.pg.dir()).to_owned();
        std::fs::create_dir_all(&home).map_err(io_err("create node dir"))?;
        crate::RunAs::chown(self.pg.run_as, &home)?;
        self.pg.nodes.push(node);
        self.write_conf(i)?;
        let sock = self.pg.socket_dir().display().to_string();
        let port0 = self.pg.nodes[0].port.to_string();
        self.repmgr(
            i,
            &[
                "-h",
                &sock,
                "-p",
                &port0,
                "-U",
                "postgres",
                "-d",
                "postgres",
                "standby",
                "clone",
                "--fast-checkpoint",
            ],
        )?;
        self.start_server(i)?;
        self.pg.wait_streaming(i, Duration::from_secs(30))?;
        self.repmgr(i, &["standby", "register"])
    }

    /// Starts node `i`'s server as its `service_start_command` does.
    fn start_server(&self, i: usize) -> Result<(), LocalPgError> {
        let log = self.server_log(i)?;
        let port = format!("-p {}", self.pg.nodes[i].port);
        self.pg_ctl(i, &["-l", &log, "-o", &port, "start"])
    }

    fn conninfo(&self, i: usize) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres connect_timeout=2",
            self.pg.nodes[i].port
        )
    }

    /// Node `i`'s server log, writable by the server's user (pg_ctl
    /// appends to it as that user).
    fn server_log(&self, i: usize) -> Result<String, LocalPgError> {
        let path = self.pg.nodes[i].log_file();
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io_err("create server log"))?;
        crate::RunAs::chown(self.pg.run_as, path)?;
        Ok(path.display().to_string())
    }

    /// Writes node `i`'s repmgr.conf, as repmgr's documentation has it for
    /// automatic failover, with pg_ctl as every service command.
    fn write_conf(&mut self, i: usize) -> Result<(), LocalPgError> {
        let spec = &self.spec;
        let dir = self.pg.dir().to_owned();
        let node = &self.pg.nodes[i];
        let name = &node.name;
        let conf = dir.join(format!("repmgr-{name}.conf"));
        let data = node.data_dir.display();
        let log = node.log_file().display();
        let repmgr = self.pg.bins.path("repmgr");
        let pg_ctl = self.pg.bins.path("pg_ctl");
        let (repmgr, pg_ctl) = (repmgr.display(), pg_ctl.display());
        let text = format!(
            "node_id={id}\n\
             node_name='{name}'\n\
             conninfo='{conninfo}'\n\
             data_directory='{data}'\n\
             pg_bindir='{bindir}'\n\
             use_replication_slots=yes\n\
             log_level=INFO\n\
             log_file='{dir}/repmgr-{name}.log'\n\
             failover=automatic\n\
             promote_command='{repmgr} standby promote -f {conf} --log-to-file'\n\
             follow_command='{repmgr} standby follow -f {conf} --log-to-file --upstream-node-id=%n'\n\
             reconnect_attempts={attempts}\n\
             reconnect_interval={interval}\n\
             monitor_interval_secs=1\n\
             standby_reconnect_timeout=60\n\
             service_start_command='{pg_ctl} -w -D {data} -l {log} -o \"-p {port}\" start'\n\
             service_stop_command='{pg_ctl} -w -D {data} -m fast stop'\n\
             service_restart_command='{pg_ctl} -w -D {data} -l {log} -o \"-p {port}\" -m fast restart'\n\
             service_reload_command='{pg_ctl} -D {data} reload'\n",
            id = i + 1,
            port = node.port,
            conninfo = self.conninfo(i),
            bindir = self.pg.bins.path("").display(),
            dir = dir.display(),
            conf = conf.display(),
            attempts = spec.reconnect_attempts,
            interval = spec.reconnect_interval,
        );
        std::fs::write(&conf, text).map_err(io_err("write repmgr.conf"))?;
        crate::RunAs::chown(self.pg.run_as, &conf)?;
        if self.confs.len() <= i {
            self.confs.resize(i + 1, PathBuf::new());
        }
        self.confs[i] = conf;
        Ok(())
    }

    /// `repmgr -f <node i's conf> args...`, as the server's user.
    fn repmgr(&self, i: usize, args: &[&str]) -> Result<(), LocalPgError> {
        self.pg.run(
            Command::new(self.pg.bins.path("repmgr"))
                .arg("-f")
                .arg(&self.confs[i])
                .args(args),
        )
    }

    /// `pg_ctl -w -D <node i's data> args...`, as the server's user.
    fn pg_ctl(&self, i: usize, args: &[&str]) -> Result<(), LocalPgError> {
        self.pg.run(
            Command::new(self.pg.bins.path("pg_ctl"))
                .arg("-w")
                .arg("-D")
                .arg(&self.pg.nodes[i].data_dir)
                .args(args)
                .stdout(Stdio::null()),
        )
    }
}

impl Drop for RepmgrCluster {
    fn drop(&mut self) {
        // repmgrd first, or it would restart or promote what is stopped next.
        terminate(&mut self.daemons, Duration::from_secs(10));
        for i in (0..self.pg.nodes.len()).rev() {
            let _ = self.pg_ctl(i, &["-m", "fast", "stop"]);
        }
        // The LocalCluster removes the directory (its watchdog stops
        // anything left by its pid file).
    }
}
