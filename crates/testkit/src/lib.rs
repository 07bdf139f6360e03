//! Test harness: real PostgreSQL clusters plus pgherd running in the test's
//! own tokio runtime.
//!
//! * [`TestCluster`] is a [`LocalCluster`] (primary + standbys from the
//!   installed binaries) with the roles the tests log in as:
//!   `app` (SCRAM, owns database `app`), `md5user` (md5-stored password) and
//!   `trustuser` (no password, `trust` in pg_hba).
//! * [`RepmgrTestCluster`] is the same on a cluster run by repmgr and
//!   repmgrd, for failover drills by the real manager.
//! * [`PatroniTestCluster`]: the same on a Patroni cluster with its etcd.
//! * [`shared_cluster`] gives every test of one test binary the same cluster,
//!   started once; tests that stop, promote or break nodes start their own.
//! * [`ScriptedServer`] stands in front of a real node and answers chosen
//!   queries with bytes a test scripts: protocol edge cases on demand.
//! * [`PgherdBuilder`] writes a pgherd config for a cluster, starts the proxy
//!   on a free loopback port and returns its address.
//!
//! Everything started here is stopped when dropped or, for the shared
//! cluster, by localpg's watchdog when the test process exits.

mod scripted;

use std::net::SocketAddr;
use std::sync::OnceLock;

pub use pgherd_localpg::{
    find_pgbouncer, ClusterSpec, LocalCluster, LocalPgError, LocalPgbouncer, PatroniCluster,
    PatroniSpec, PgBinaries, RepmgrCluster, RepmgrSpec, SslFiles, StopMode,
};
use pgherd_proxy::{Proxy, ProxyHandle};
pub use pgherd_tls::test_pki::TestPki;
pub use scripted::{Script, ScriptedServer};
use tokio::sync::oneshot;

/// Password of role `app`.
pub const APP_PASSWORD: &str = "app-secret";
/// Password of role `md5user`.
pub const MD5_PASSWORD: &str = "md5-secret";

/// A local cluster with the test roles.
#[derive(Debug)]
pub struct TestCluster {
    pub pg: LocalCluster,
    /// `app`'s verifier exactly as `pg_authid` stores it.
    pub app_verifier: String,
}

impl TestCluster {
    /// Starts a primary and `standbys` standbys and creates the test roles.
    pub fn start(standbys: usize) -> TestCluster {
        TestCluster::start_with(ClusterSpec {
            standbys,
            ..ClusterSpec::default()
        })
    }

    /// Starts a cluster as `spec` says (plus the `trustuser` role) and
    /// creates the test roles.
    pub fn start_with(mut spec: ClusterSpec) -> TestCluster {
        spec.trust_users.push("trustuser".into());
        let pg = LocalCluster::start(spec).expect("start a local PostgreSQL cluster");
        let app_verifier = create_roles(|sql| pg.sql(0, sql));
        for i in 1..pg.nodes().len() {
            pg.wait_caught_up(0, i).expect("standby catches up");
        }
        TestCluster { pg, app_verifier }
    }

    /// A pgherd config builder for this cluster.
    pub fn pgherd(&self) -> PgherdBuilder {
        PgherdBuilder::for_nodes(
            self.pg.nodes().iter().map(|n| (n.name.clone(), n.port)),
            self.pg.superuser_password(),
            &self.app_verifier,
        )
    }
}

/// Creates the test roles with `sql` (run on the primary); returns `app`'s
/// verifier as `pg_authid` stores it.
fn create_roles(sql: impl Fn(&str) -> Result<String, LocalPgError>) -> String {
    for setup in [
        format!("CREATE ROLE app LOGIN PASSWORD '{APP_PASSWORD}'"),
        "CREATE DATABASE app OWNER app".into(),
        format!(
            "SET password_encryption = 'md5'; \
             CREATE ROLE md5user LOGIN PASSWORD '{MD5_PASSWORD}'"
        ),
        "CREATE ROLE trustuser LOGIN".into(),
        "GRANT pg_read_all_stats, pg_signal_backend TO app".into(),
        "ALTER ROLE app REPLICATION".into(),
    ] {
        sql(&setup).expect("create test roles");
    }
    sql("SELECT rolpassword FROM pg_authid WHERE rolname = 'app'").expect("read app's verifier")
}

/// A cluster run by repmgr and repmgrd (see [`RepmgrCluster`]), with the
/// test roles.
#[derive(Debug)]
pub struct RepmgrTestCluster {
    pub pg: RepmgrCluster,
    pub app_verifier: String,
}

impl RepmgrTestCluster {
    /// Starts a repmgr cluster as `spec` says and creates the test roles.
    pub fn start(mut spec: RepmgrSpec) -> RepmgrTestCluster {
        spec.cluster.trust_users.push("trustuser".into());
        let pg = RepmgrCluster::start(spec).expect("start a repmgr cluster");
        let app_verifier = create_roles(|sql| pg.sql(0, sql));
        for i in 1..pg.nodes().len() {
            pg.wait_caught_up(0, i).expect("standby catches up");
        }
        RepmgrTestCluster { pg, app_verifier }
    }

    /// A pgherd config builder for this cluster.
    pub fn pgherd(&self) -> PgherdBuilder {
        PgherdBuilder::for_nodes(
            self.pg.nodes().iter().map(|n| (n.name.clone(), n.port)),
            self.pg.superuser_password(),
            &self.app_verifier,
        )
    }
}

/// A cluster run by Patroni with a local etcd (see [`PatroniCluster`]),
/// with the test roles.
#[derive(Debug)]
pub struct PatroniTestCluster {
    pub pg: PatroniCluster,
    pub app_verifier: String,
}

impl PatroniTestCluster {
    /// Starts a Patroni cluster as `spec` says and creates the test roles.
    pub fn start(mut spec: PatroniSpec) -> PatroniTestCluster {
        spec.cluster.trust_users.push("trustuser".into());
        let pg = PatroniCluster::start(spec).expect("start a Patroni cluster");
        let app_verifier = create_roles(|sql| pg.sql(0, sql));
        for i in 1..pg.nodes().len() {
            pg.wait_caught_up(0, i).expect("replica catches up");
        }
        PatroniTestCluster { pg, app_verifier }
    }

    /// A pgherd config builder for this cluster.
    pub fn pgherd(&self) -> PgherdBuilder {
        PgherdBuilder::for_nodes(
            self.pg.nodes().iter().map(|n| (n.name.clone(), n.port)),
            self.pg.superuser_password(),
            &self.app_verifier,
        )
    }
}

/// The cluster shared by the tests of this test binary (2 standbys). Tests
/// using it must leave the nodes as they found them.
pub fn shared_cluster() -> &'static TestCluster {
    static SHARED: OnceLock<TestCluster> = OnceLock::new();
    SHARED.get_or_init(|| TestCluster::start(2))
}

/// Builds a pgherd config: every node of the cluster (probed every 0.2 s as
/// `postgres`), a `*` database, users
/// `app` (with pg_authid's verifier: pgherd logs in to the server with the
/// client's SCRAM keys) and `md5user` (plaintext, used for the server login).
#[derive(Debug, Clone)]
pub struct PgherdBuilder {
    general: Vec<String>,
    listeners: Vec<String>,
    /// Name, port and extra `key = value` lines of each `[[nodes]]` entry.
    nodes: Vec<(String, u16, Vec<String>)>,
    databases: Vec<String>,
    users: Vec<String>,
    /// `key = value` lines of the `[notify]` section.
    notify: Vec<String>,
    /// `id = { ... }` lines of the `[peers]` section.
    peers: Vec<String>,
}

impl PgherdBuilder {
    /// A builder for the nodes `(name, port)` on 127.0.0.1, probed as
    /// `postgres` with `superuser_password`, where `app` has `app_verifier`.
    fn for_nodes(
        nodes: impl Iterator<Item = (String, u16)>,
        superuser_password: &str,
        app_verifier: &str,
    ) -> Self {
        PgherdBuilder {
            general: vec![
                "listen_addr = \"127.0.0.1:0\"".into(),
                "probe_user = \"postgres\"".into(),
                format!("probe_password = \"{superuser_password}\""),
                "probe_interval = 0.2".into(),
                "admin_listen_addr = \"127.0.0.1:0\"".into(),
            ],
            listeners: Vec::new(),
            nodes: nodes.map(|(name, port)| (name, port, Vec::new())).collect(),
            databases: vec!["\"*\" = {}".into()],
            users: vec![
                format!("app = {{ password = \"{app_verifier}\" }}"),
                format!("md5user = {{ password = \"{MD5_PASSWORD}\" }}"),
            ],
            notify: Vec::new(),
            peers: Vec::new(),
        }
    }

    /// Adds another pgherd instance, `id`, listening on 127.0.0.1:`port`,
    /// to `[peers]`.
    pub fn peer(mut self, id: u16, port: u16) -> Self {
        self.peers
            .push(format!("{id} = {{ host = \"127.0.0.1\", port = {port} }}"));
        self
    }

    /// Probes every `seconds` instead of the tests' 0.2 s.
    pub fn probe_interval(self, seconds: f64) -> Self {
        self.general(&format!("probe_interval = {seconds}"))
    }

    /// Sets a `key = value` line of `[pgherd]` (replacing the default's
    /// line for that key, such as `listen_addr`). A line may hold several
    /// settings; only its first key is compared.
    pub fn general(mut self, line: &str) -> Self {
        let key = |l: &str| l.split('=').next().unwrap_or("").trim().to_owned();
        self.general.retain(|l| key(l) != key(line));
        self.general.push(line.into());
        self
    }

    /// Unix-domain sockets in `dir` (`unix_socket_dir`).
    pub fn unix_socket_dir(self, dir: &std::path::Path) -> Self {
        self.general(&format!(
            "unix_socket_dir = {:?}",
            dir.display().to_string()
        ))
    }

    /// Adds a listener on a free port whose databases default to `target`
    /// (`"primary"` or `"replica"`).
    pub fn listener(mut self, target: &str) -> Self {
        self.listeners.push(format!(
            "\n[[listeners]]\naddr = \"127.0.0.1:0\"\ntarget = \"{target}\"\n"
        ));
        self
    }

    /// Adds a `[databases]` line.
    pub fn database(mut self, line: &str) -> Self {
        self.databases.push(line.into());
        self
    }

    /// Removes the `*` database entry.
    pub fn without_fallback(mut self) -> Self {
        self.databases.retain(|d| !d.starts_with("\"*\""));
        self
    }

    /// Adds a `[notify]` line.
    pub fn notify(mut self, line: &str) -> Self {
        self.notify.push(line.into());
        self
    }

    /// Adds a `[users]` line, replacing the entry of the same user (so a
    /// test can give `md5user` other settings and keep `app`).
    pub fn user(mut self, line: &str) -> Self {
        let name = |l: &str| l.split('=').next().unwrap_or("").trim().to_owned();
        self.users.retain(|l| name(l) != name(line));
        self.users.push(line.into());
        self
    }

    /// Removes the default `[users]` entries (for tests that bring users
    /// from an auth_file).
    pub fn without_users(mut self) -> Self {
        self.users.clear();
        self
    }

    /// Keeps only the nodes whose index is in `keep` (in that order).
    pub fn nodes(mut self, keep: &[usize]) -> Self {
        self.nodes = keep.iter().map(|&i| self.nodes[i].clone()).collect();
        self
    }

    /// Points node `i` at another loopback port (a [`ScriptedServer`] in
    /// front of it, say), keeping its name.
    pub fn node_port(mut self, i: usize, port: u16) -> Self {
        self.nodes[i].1 = port;
        self
    }

    /// Adds a node that nothing listens on (a dead server), at position `at`.
    pub fn dead_node(mut self, name: &str, at: usize) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("find a free port")
            .port();
        self.nodes.insert(at, (name.into(), port, Vec::new()));
        self
    }

    /// Adds a `key = value` line to the `[[nodes]]` entry named `name`.
    pub fn node_option(mut self, name: &str, line: &str) -> Self {
        if let Some(node) = self.nodes.iter_mut().find(|n| n.0 == name) {
            node.2.push(line.into());
        }
        self
    }

    /// The config file text.
    pub fn toml(&self) -> String {
        let mut t = String::from("[pgherd]\n");
        for l in &self.general {
            t.push_str(l);
            t.push('\n');
        }
        for l in &self.listeners {
            t.push_str(l);
        }
        for (name, port, extra) in &self.nodes {
            t.push_str(&format!(
                "\n[[nodes]]\nname = \"{name}\"\nhost = \"127.0.0.1\"\nport = {port}\n"
            ));
            for l in extra {
                t.push_str(l);
                t.push('\n');
            }
        }
        t.push_str("\n[databases]\n");
        for l in &self.databases {
            t.push_str(l);
            t.push('\n');
        }
        t.push_str("\n[users]\n");
        for l in &self.users {
            t.push_str(l);
            t.push('\n');
        }
        if !self.notify.is_empty() {
            t.push_str("\n[notify]\n");
            for l in &self.notify {
                t.push_str(l);
                t.push('\n');
            }
        }
        if !self.peers.is_empty() {
            t.push_str("\n[peers]\n");
            for l in &self.peers {
                t.push_str(l);
                t.push('\n');
            }
        }
        t
    }

    /// Starts pgherd in the current tokio runtime.
    pub async fn start(&self) -> RunningPgherd {
        let config = pgherd_config::Config::parse(&self.toml()).expect("valid test config");
        let notify = config.notify.clone();
        let proxy = Proxy::bind(config).await.expect("bind pgherd");
        let notifications = pgherd_notify::start(&notify, proxy.handle().cluster().subscribe())
            .expect("start notifications");
        let addr = proxy.local_addr().expect("local addr");
        let listeners = proxy
            .listen_addrs()
            .expect("listener addresses")
            .into_iter()
            .map(|(a, _)| a)
            .collect();
        let handle = proxy.handle();
        let (stop, stopped) = oneshot::channel::<()>();
        let (stop_admin, admin_stopped) = oneshot::channel::<()>();
        let admin_addr = match handle.config().general.admin_listen_addr {
            Some(a) => {
                let admin = pgherd_admin::Admin::bind(a, handle.clone())
                    .await
                    .expect("bind the admin port")
                    .with_notifications(notifications);
                let bound = admin.local_addr().expect("admin addr");
                tokio::spawn(admin.run(async move {
                    let _ = admin_stopped.await;
                }));
                Some(bound)
            }
            None => None,
        };
        tokio::spawn(proxy.run(async move {
            let _ = stopped.await;
        }));
        RunningPgherd {
            addr,
            listeners,
            admin_addr,
            handle,
            stop: Some(stop),
            _stop_admin: stop_admin,
        }
    }
}

/// pgherd running in the test; stops accepting when dropped.
#[derive(Debug)]
pub struct RunningPgherd {
    /// The main listener.
    pub addr: SocketAddr,
    /// Every listener, main first, then those added with [`PgherdBuilder::listener`].
    pub listeners: Vec<SocketAddr>,
    /// The admin HTTP port.
    pub admin_addr: Option<SocketAddr>,
    pub handle: ProxyHandle,
    stop: Option<oneshot::Sender<()>>,
    _stop_admin: oneshot::Sender<()>,
}

impl RunningPgherd {
    /// Starts pgherd's shutdown, as SIGTERM does: listeners close, clients drain.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// A tokio-postgres config for this pgherd's main listener.
    pub fn config(&self, user: &str, password: &str, dbname: &str) -> tokio_postgres::Config {
        self.config_on(0, user, password, dbname)
    }

    /// A tokio-postgres config for listener `i` (see [`RunningPgherd::listeners`]).
    pub fn config_on(
        &self,
        i: usize,
        user: &str,
        password: &str,
        dbname: &str,
    ) -> tokio_postgres::Config {
        let addr = self.listeners[i];
        let mut c = tokio_postgres::Config::new();
        c.host(addr.ip().to_string())
            .port(addr.port())
            .user(user)
            .password(password)
            .dbname(dbname);
        c
    }

    /// Connects with tokio-postgres; the connection runs on a spawned task.
    pub async fn connect(
        &self,
        user: &str,
        password: &str,
        dbname: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, connection) = self
            .config(user, password, dbname)
            .connect(tokio_postgres::NoTls)
            .await?;
        tokio::spawn(connection);
        Ok(client)
    }

    /// Waits (up to 30 s) until the topology satisfies `ok`; panics otherwise.
    pub async fn wait_topology(&self, what: &str, ok: impl Fn(&pgherd_cluster::Topology) -> bool) {
        self.wait_topology_for(std::time::Duration::from_secs(30), what, |t| {
            ok(t).then_some(())
        })
        .await
    }

    /// Waits up to `timeout` until `pick` chooses something in the
    /// topology (a failover manager's delay can exceed [`wait_topology`]'s
    /// 30 s); panics otherwise.
    ///
    /// [`wait_topology`]: RunningPgherd::wait_topology
    pub async fn wait_topology_for<T>(
        &self,
        timeout: std::time::Duration,
        what: &str,
        pick: impl Fn(&pgherd_cluster::Topology) -> Option<T>,
    ) -> T {
        let found = match self.handle.cluster().wait_for(timeout, pick).await {
            Ok(found) => found,
            Err(t) => panic!("topology never showed {what}: {}", t.describe()),
        };
        // The primary the data path reads without the topology's lock
        // agrees with the topology (once the evaluator is done storing).
        let cluster = self.handle.cluster();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while cluster.primary_now() != cluster.topology().primary {
            assert!(
                std::time::Instant::now() < deadline,
                "primary_now {:?} never matched the topology's {:?}",
                cluster.primary_now(),
                cluster.topology().primary
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        found
    }

    /// Waits (up to 120 s: a manager may first wait out its own timeouts)
    /// until node `primary` is the primary and every other node serves
    /// reads streaming from it.
    pub async fn wait_settled(&self, primary: usize) {
        let what = format!("node {primary} primary, every other node reading from it");
        self.wait_topology_for(std::time::Duration::from_secs(120), &what, |t| {
            (t.primary == Some(primary)
                && (0..t.nodes.len())
                    .filter(|&i| i != primary)
                    .all(|i| t.nodes[i].serves_reads() && !t.nodes[i].orphaned))
            .then_some(())
        })
        .await
    }

    /// Waits until both standbys of the shared cluster serve reads.
    pub async fn wait_standbys_readable(&self) {
        self.wait_topology("two readable standbys", |t| {
            t.nodes.iter().filter(|n| n.serves_reads()).count() == 2
        })
        .await;
    }

    /// Connects as `app` to database `app`.
    pub async fn app(&self) -> tokio_postgres::Client {
        self.connect("app", APP_PASSWORD, "app")
            .await
            .expect("connect as app through pgherd")
    }

    /// Connects as `app` to database `app` with this `application_name`
    /// (to find the client in the console).
    pub async fn app_named(&self, application_name: &str) -> tokio_postgres::Client {
        let (client, conn) = self
            .config("app", APP_PASSWORD, "app")
            .application_name(application_name)
            .connect(tokio_postgres::NoTls)
            .await
            .expect("connect as app through pgherd");
        tokio::spawn(conn);
        client
    }
}
