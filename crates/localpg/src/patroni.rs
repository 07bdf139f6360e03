//! A cluster run by Patroni, with one local etcd as its DCS: the first
//! member bootstraps (initdb), the others clone from the leader, and
//! Patroni decides from then on. Its failovers are Patroni's: a leader
//! whose key expires (`ttl`) is replaced, a switchover demotes the old
//! leader (a fast shutdown) and restarts it as a replica, rewinding it if
//! needed (`use_pg_rewind`).
//!
//! Patroni and etcd run as the server's user, as children of this process;
//! Patroni starts and stops PostgreSQL itself. Their pid files sit in the
//! cluster's directory, so the watchdog stops them should this process die.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use crate::{
    io_err, node, poll, terminate, ClusterSpec, LocalCluster, LocalNode, LocalPgError, RunAs,
};

/// How to build a Patroni cluster.
#[derive(Debug, Clone)]
pub struct PatroniSpec {
    /// Members, the first of which bootstraps and leads.
    pub members: usize,
    /// The DCS settings: how long a leader key lives without renewal, how
    /// often Patroni's loop runs, how long it retries the DCS.
    pub ttl: u32,
    pub loop_wait: u32,
    pub retry_timeout: u32,
    /// Roles' logins (`trust_users`) and the superuser's password.
    pub cluster: ClusterSpec,
}

impl Default for PatroniSpec {
    fn default() -> Self {
        PatroniSpec {
            members: 3,
            ttl: 10,
            loop_wait: 1,
            retry_timeout: 4,
            cluster: ClusterSpec::default(),
        }
    }
}

/// A running Patroni cluster.
#[derive(Debug)]
pub struct PatroniCluster {
    /// The directory, sockets, watchdog and the members' names, ports and
    /// data directories (their servers belong to Patroni).
    pg: LocalCluster,
    etcd: Option<Child>,
    /// etcd's client port on 127.0.0.1.
    etcd_port: u16,
    members: Vec<Member>,
}

/// The nodes as a [`LocalCluster`]: their names, ports and directories,
/// SQL on them, waits for replication. Starting, stopping and promoting
/// them is the manager's, through this type's own methods.
impl std::ops::Deref for PatroniCluster {
    type Target = LocalCluster;

    fn deref(&self) -> &LocalCluster {
        &self.pg
    }
}

#[derive(Debug)]
struct Member {
    conf: PathBuf,
    patroni: Option<Child>,
    /// Its REST API's port on 127.0.0.1.
    rest_port: u16,
}

impl PatroniCluster {
    /// Starts etcd and every member; returns once the first leads and the
    /// others stream from it.
    pub fn start(spec: PatroniSpec) -> Result<PatroniCluster, LocalPgError> {
        for program in ["patroni", "patronictl", "etcd"] {
            if which(program).is_none() {
                return Err(LocalPgError::Command {
                    program: program.into(),
                    output: "not found: install it, e.g. `apt-get install -y patroni etcd-server`"
                        .into(),
                });
            }
        }
        let pg = LocalCluster::empty(spec.cluster.clone())?;
        let mut cluster = PatroniCluster {
            pg,
            etcd: None,
            etcd_port: 0,
            members: Vec::new(),
        };
        let etcd_port = cluster.start_etcd()?;
        cluster.etcd_port = etcd_port;
        for i in 0..spec.members {
            let name = format!("pg{i}");
            let node = LocalNode::new(&name, cluster.pg.dir(), node::free_port()?);
            let home = node
                .data_dir
                .parent()
                .unwrap_or(cluster.pg.dir())
                .to_owned();
            std::fs::create_dir_all(&home).map_err(io_err("create member dir"))?;
            RunAs::chown(cluster.pg.run_as, &home)?;
            cluster.pg.nodes.push(node);
            let rest_port = node::free_port()?;
            let conf = cluster.write_conf(i, rest_port, etcd_port, &spec)?;
            cluster.members.push(Member {
                conf,
                patroni: None,
                rest_port,
            });
            cluster.start_member(i)?;
            let (role, what) = match i {
                0 => ("/primary", "the first member to lead"),
                _ => ("/replica", "a member to run as a replica"),
            };
            let port = rest_port;
            poll(Duration::from_secs(90), what, || {
                Ok(rest_get(port, role).map(|(status, _)| status) == Some(200))
            })?;
            if i > 0 {
                cluster.pg.wait_streaming(i, Duration::from_secs(60))?;
            }
        }
        Ok(cluster)
    }

    /// The DCS: etcd's client URL, `http://127.0.0.1:PORT`. Patroni's keys
    /// are under `/pgherd/pgherd/` (namespace `/pgherd/`, scope `pgherd`).
    pub fn etcd_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.etcd_port)
    }

    /// Member `i`'s REST API, `http://127.0.0.1:PORT`.
    pub fn rest_url(&self, i: usize) -> Option<String> {
        let port = self.members.get(i)?.rest_port;
        Some(format!("http://127.0.0.1:{port}"))
    }

    /// `patronictl switchover --leader <from> --candidate <to> --force`.
    pub fn switchover(&self, from: usize, to: usize) -> Result<(), LocalPgError> {
        let (from, to) = (&self.pg.nodes[from].name, &self.pg.nodes[to].name);
        self.patronictl(&["switchover", "--leader", from, "--candidate", to, "--force"])
    }

    /// `patronictl failover --candidate <to> --force`.
    pub fn failover(&self, to: usize) -> Result<(), LocalPgError> {
        let to = &self.pg.nodes[to].name;
        self.patronictl(&["failover", "--candidate", to, "--force"])
    }

    /// Member `i`'s host dies: Patroni and PostgreSQL are killed (SIGKILL),
    /// its leader key, if it held it, expires after `ttl`.
    pub fn kill_host(&mut self, i: usize) -> Result<(), LocalPgError> {
        if let Some(mut child) = self.members[i].patroni.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let pid_file = self.pg.nodes[i].data_dir.join("postmaster.pid");
        if let Ok(text) = std::fs::read_to_string(&pid_file) {
            if let Some(pid) = text
                .lines()
                .next()
                .and_then(|l| l.trim().parse::<i32>().ok())
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        Ok(())
    }

    /// Freezes member `i`'s Patroni (SIGSTOP), or thaws it (SIGCONT): its
    /// PostgreSQL runs on unwatched, as if the agent hung. (Its member key
    /// in the DCS expires after `ttl`.)
    pub fn freeze_patroni(&self, i: usize, frozen: bool) -> Result<(), LocalPgError> {
        freeze(self.members[i].patroni.as_ref(), frozen)
    }

    /// Freezes etcd (SIGSTOP), or thaws it: the DCS stops answering, as
    /// if its host hung. Patroni's leader steps down after
    /// `retry_timeout` without it.
    pub fn freeze_etcd(&self, frozen: bool) -> Result<(), LocalPgError> {
        freeze(self.etcd.as_ref(), frozen)
    }

    /// Starts member `i`'s Patroni (again, after [`PatroniCluster::kill_host`]).
    pub fn start_member(&mut self, i: usize) -> Result<(), LocalPgError> {
        let name = format!("patroni-{}", self.pg.nodes[i].name);
        let child = self.pg.spawn_helper(
            &name,
            Command::new("patroni")
                .arg(&self.members[i].conf)
                .env("HOME", self.pg.dir()),
        )?;
        self.members[i].patroni = Some(child);
        Ok(())
    }

    fn start_etcd(&mut self) -> Result<u16, LocalPgError> {
        let (client, peer) = (node::free_port()?, node::free_port()?);
        let data = self.pg.dir().join("etcd");
        std::fs::create_dir(&data).map_err(io_err("create etcd dir"))?;
        RunAs::chown(self.pg.run_as, &data)?;
        let url = |port: u16| format!("http://127.0.0.1:{port}");
        let child = self.pg.spawn_helper(
            "etcd",
            Command::new("etcd")
                .args(["--name", "pgherd"])
                .arg("--data-dir")
                .arg(&data)
                .args(["--listen-client-urls", &url(client)])
                .args(["--advertise-client-urls", &url(client)])
                .args(["--listen-peer-urls", &url(peer)])
                .args(["--initial-advertise-peer-urls", &url(peer)])
                .args(["--initial-cluster", &format!("pgherd={}", url(peer))]),
        )?;
        self.etcd = Some(child);
        poll(Duration::from_secs(30), "etcd to answer", || {
            Ok(rest_get(client, "/health")
                .is_some_and(|(s, body)| s == 200 && body.contains("true")))
        })?;
        Ok(client)
    }

    /// Member `i`'s patroni.yml.
    fn write_conf(
        &self,
        i: usize,
        rest_port: u16,
        etcd_port: u16,
        spec: &PatroniSpec,
    ) -> Result<PathBuf, LocalPgError> {
        let dir = self.pg.dir();
        let node = &self.pg.nodes[i];
        let password = self.pg.superuser_password();
        let mut hba = String::from("  - local all all trust\n  - local replication all trust\n");
        for u in &spec.cluster.trust_users {
            hba.push_str(&format!("  - host all {u} 127.0.0.1/32 trust\n"));
        }
        hba.push_str(
            "  - host replication all 127.0.0.1/32 md5\n  - host all all 127.0.0.1/32 md5\n",
        );
        let text = format!(
            "scope: pgherd\n\
             namespace: /pgherd/\n\
             name: {name}\n\
             restapi:\n  listen: 127.0.0.1:{rest_port}\n  connect_address: 127.0.0.1:{rest_port}\n\
             etcd3:\n  hosts: 127.0.0.1:{etcd_port}\n\
             bootstrap:\n\
             \x20 dcs:\n\
             \x20   ttl: {ttl}\n\
             \x20   loop_wait: {loop_wait}\n\
             \x20   retry_timeout: {retry}\n\
             \x20   maximum_lag_on_failover: 16777216\n\
             \x20   postgresql:\n\
             \x20     use_pg_rewind: true\n\
             \x20     use_slots: true\n\
             \x20     parameters:\n\
             \x20       wal_level: replica\n\
             \x20       hot_standby: 'on'\n\
             \x20       hot_standby_feedback: 'on'\n\
             \x20       wal_log_hints: 'on'\n\
             \x20       max_connections: 200\n\
             \x20       max_wal_senders: 10\n\
             \x20       max_replication_slots: 10\n\
             \x20       wal_receiver_status_interval: 1s\n\
             \x20 initdb:\n  - encoding: UTF8\n  - locale: C\n\
             \x20 pg_hba:\n{hba}\
             postgresql:\n\
             \x20 listen: 127.0.0.1:{pg_port}\n\
             \x20 connect_address: 127.0.0.1:{pg_port}\n\
             \x20 data_dir: {data}\n\
             \x20 bin_dir: {bindir}\n\
             \x20 pgpass: {dir}/pgpass-{name}\n\
             \x20 authentication:\n\
             \x20   superuser:\n      username: postgres\n      password: '{password}'\n\
             \x20   replication:\n      username: replicator\n      password: replicator\n\
             \x20   rewind:\n      username: postgres\n      password: '{password}'\n\
             \x20 parameters:\n\
             \x20   unix_socket_directories: '{sock}'\n\
             \x20   fsync: 'off'\n\
             \x20   shared_buffers: 32MB\n\
             \x20   password_encryption: scram-sha-256\n",
            name = node.name,
            ttl = spec.ttl,
            loop_wait = spec.loop_wait,
            retry = spec.retry_timeout,
            pg_port = node.port,
            data = node.data_dir.display(),
            bindir = self.pg.bins.path("").display(),
            dir = dir.display(),
            sock = self.pg.socket_dir().display(),
        );
        let conf = dir.join(format!("patroni-{}.yml", node.name));
        std::fs::write(&conf, text).map_err(io_err("write patroni.yml"))?;
        RunAs::chown(self.pg.run_as, &conf)?;
        Ok(conf)
    }

    /// `patronictl -c <first member's conf> args...`, as the server's user.
    fn patronictl(&self, args: &[&str]) -> Result<(), LocalPgError> {
        self.pg.run(
            Command::new("patronictl")
                .arg("-c")
                .arg(&self.members[0].conf)
                .args(args)
                .env("HOME", self.pg.dir()),
        )
    }
}

impl Drop for PatroniCluster {
    fn drop(&mut self) {
        // Patroni stops its PostgreSQL on SIGTERM; etcd goes last.
        let mut patronis: Vec<Child> = self
            .members
            .iter_mut()
            .filter_map(|m| m.patroni.take())
            .collect();
        terminate(&mut patronis, Duration::from_secs(30));
        let mut etcd: Vec<Child> = self.etcd.take().into_iter().collect();
        terminate(&mut etcd, Duration::from_secs(10));
    }
}

/// `GET path` on 127.0.0.1:`port` (Patroni's REST API, etcd's health):
/// the status and the body, or `None` if nothing answered.
fn rest_get(port: u16, path: &str) -> Option<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(conn, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply).ok()?;
    let status = reply.split_whitespace().nth(1)?.parse().ok()?;
    let body = reply.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    Some((status, body))
}

/// `program` on the PATH, if it is there.
fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| PathBuf::from(d).join(program))
        .find(|p| p.is_file())
}

/// SIGSTOP (`frozen`) or SIGCONT to a helper process.
fn freeze(child: Option<&Child>, frozen: bool) -> Result<(), LocalPgError> {
    let child = child.ok_or_else(|| LocalPgError::Timeout("the process is not running".into()))?;
    let signal = if frozen {
        nix::sys::signal::Signal::SIGSTOP
    } else {
        nix::sys::signal::Signal::SIGCONT
    };
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, signal).map_err(|e| LocalPgError::Command {
        program: "kill".into(),
        output: e.to_string(),
    })
}
