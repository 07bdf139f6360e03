//! The proxy as the binary and the admin crate see it: [`Proxy`] binds the
//! listeners and runs until shutdown, [`ProxyHandle`] reads and steers it
//! while it runs.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use pgherd_cluster::{Cluster, ProxyEvent, Topology};
use pgherd_config::{Config, Target};

use crate::admin::control::{ControlError, DatabaseState};
use crate::admin::reload;
use crate::background;
use crate::fanout::FanoutSnapshot;
use crate::listen::{self, bind_tcp, Listener};
use crate::login::{LoginFailures, Logins};
use crate::registry::cancel::CancelRegistry;
use crate::registry::{ClientInfo, Registry, ServerInfo};
use crate::relay::params::TrackedParams;
use crate::session;
use crate::settings::Settings;
use crate::shared::Shared;
use crate::stats::Averages;
use crate::upstream::limits::ConnectionLimits;
use crate::upstream::pools::{PoolSnapshot, Pools};
use crate::upstream::route::{Routing, RoutingTotals};
use crate::upstream::{Servers, Upstreams};

/// pgherd's bound listeners with their shared state.
#[derive(Debug)]
pub struct Proxy {
    shared: Arc<Shared>,
    /// The main listener first, then `[[listeners]]`, each with its default
    /// target; then their Unix-domain sockets, if any.
    listeners: Vec<(Listener, Target)>,
}

impl Proxy {
    /// Binds `listen_addr` and every `[[listeners]]` address (and their
    /// Unix-domain sockets with `unix_socket_dir`), and starts probing the
    /// nodes.
    pub async fn bind(config: Config) -> std::io::Result<Proxy> {
        let g = &config.general;
        let backlog = g.listen_backlog;
        let mut tcp = vec![(
            bind_tcp(g.listen_addr, g.so_reuseport, backlog)?,
            Target::Primary,
        )];
        for l in &config.listeners {
            let bound = bind_tcp(l.addr, g.so_reuseport, backlog)
                .map_err(|e| std::io::Error::new(e.kind(), format!("binding {}: {e}", l.addr)))?;
            tcp.push((bound, l.target));
        }
        let mut unix = Vec::new();
        if let Some(dir) = &g.unix_socket_dir {
            let file = (g.unix_socket_mode, g.unix_socket_group.as_deref());
            for (l, target) in &tcp {
                let port = l.local_addr()?.port();
                let socket = listen::bind_unix(dir, port, file, g.so_reuseport, backlog)?;
                unix.push((Listener::Unix(socket), *target));
            }
        }
        let tcp = tcp.into_iter().map(|(l, t)| (Listener::Tcp(l), t));
        let listeners = tcp.chain(unix).collect();
        let tls = pgherd_tls::Contexts::new(&config.general)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        let cluster = Cluster::start(&config, &tls.server)?;
        let routing = Routing::new(cluster.clone());
        let tracked = Arc::new(TrackedParams::new(&config.general));
        let peer_id = config.general.peer_id;
        let registry = Arc::<Registry>::default();
        let settings = Arc::new(Settings::new(config, tls));
        let shared = Arc::new(Shared {
            servers: Servers {
                settings: Arc::clone(&settings),
                pools: Pools::default(),
                limits: ConnectionLimits::default(),
                routing,
                tracked: Arc::clone(&tracked),
                registry: Arc::clone(&registry),
                upstreams: Upstreams::default(),
            },
            logins: Logins::new(Arc::clone(&settings), cluster),
            settings,
            cancels: CancelRegistry::new(peer_id),
            clients: AtomicUsize::new(0),
            registry,
            tracked,
            going: AtomicBool::new(false),
            hubs: Mutex::default(),
            shutdown_requested: tokio::sync::Notify::new(),
            averages: Mutex::default(),
            all_averages: Mutex::default(),
        });
        tokio::spawn(background::drain_on_changes(Arc::clone(&shared)));
        tokio::spawn(background::nudge_on_fence(Arc::downgrade(&shared)));
        tokio::spawn(background::sweep_idle_servers(Arc::downgrade(&shared)));
        tokio::spawn(background::announce_pressure(Arc::downgrade(&shared)));
        tokio::spawn(background::average_stats(
            Arc::downgrade(&shared),
            shared.config().general.stats_period,
        ));
        Ok(Proxy { shared, listeners })
    }

    /// The address the main listener actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listen_addrs()?
            .first()
            .map(|(a, _)| *a)
            .ok_or_else(|| std::io::Error::other("no TCP listener"))
    }

    /// Every bound TCP address with its default target, main listener first.
    pub fn listen_addrs(&self) -> std::io::Result<Vec<(SocketAddr, Target)>> {
        let tcp = self.listeners.iter().filter_map(|(l, t)| match l {
            Listener::Tcp(l) => Some((l, *t)),
            Listener::Unix(_) => None,
        });
        tcp.map(|(l, t)| Ok((l.local_addr()?, t))).collect()
    }

    /// Every Unix-domain socket's file with its default target.
    pub fn unix_sockets(&self) -> Vec<(std::path::PathBuf, Target)> {
        let unix = self.listeners.iter().filter_map(|(l, t)| match l {
            Listener::Unix(s) => Some((s.path.clone(), *t)),
            Listener::Tcp(_) => None,
        });
        unix.collect()
    }

    /// A handle to read the proxy's counters while it runs.
    pub fn handle(&self) -> ProxyHandle {
        ProxyHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Accepts clients on every listener until `shutdown` completes, then
    /// drains: the listeners close, transaction-mode clients finish their
    /// transaction and are told pgherd is going (57P01), session-mode clients
    /// may finish their session; after `shutdown_timeout` whoever is left is
    /// cut off when the runtime stops.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let listening = self.listening();
        let mut accepting = tokio::task::JoinSet::new();
        for (listener, target) in self.listeners {
            accepting.spawn(accept(listener, target, Arc::clone(&self.shared)));
        }
        let cluster = self.shared.cluster().clone();
        cluster.publish(ProxyEvent::Started {
            listeners: listening,
        });
        tokio::select! {
            () = shutdown => {}
            () = self.shared.shutdown_requested.notified() => {
                tracing::info!("SHUTDOWN from the admin console");
            }
        }
        // Sessions hear it first: a client between transactions is told at
        // once, not after the listeners have wound down.
        self.shared.going.store(true, Ordering::SeqCst);
        self.shared.registry.nudge_all();
        accepting.abort_all();
        while accepting.join_next().await.is_some() {}
        let clients = self.shared.clients.load(Ordering::Relaxed);
        cluster.publish(ProxyEvent::Draining { clients });
        let deadline = tokio::time::Instant::now() + self.shared.config().general.shutdown_timeout;
        while self.shared.clients.load(Ordering::Relaxed) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let cut_off = self.shared.clients.load(Ordering::Relaxed);
        cluster.publish(ProxyEvent::Stopped { cut_off });
    }

    /// Where clients reach this pgherd, for the `started` event.
    fn listening(&self) -> Vec<String> {
        let tcp = self.listen_addrs().unwrap_or_default().into_iter();
        let tcp = tcp.map(|(a, t)| format!("{a} ({})", t.as_str()));
        let unix = self.unix_sockets().into_iter();
        let unix = unix.map(|(p, t)| format!("{} ({})", p.display(), t.as_str()));
        tcp.chain(unix).collect()
    }
}

/// Serves a listener's clients (until aborted at shutdown, which drops
/// the listener: a Unix socket's file goes with it).
async fn accept(listener: Listener, target: Target, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                tokio::spawn(session::serve(Arc::clone(&shared), stream, peer, target));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off a little
                // instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// A read-only view of a running proxy, for tests and (later) the admin side.
#[derive(Debug, Clone)]
pub struct ProxyHandle {
    shared: Arc<Shared>,
}

impl ProxyHandle {
    /// The configuration the proxy runs with (the latest reloaded one).
    pub fn config(&self) -> Arc<Config> {
        self.shared.config()
    }

    /// The file [`ProxyHandle::reload`] reads.
    pub fn set_config_file(&self, path: std::path::PathBuf) {
        self.shared.settings.set_file(path);
    }

    /// Reads the config file again and applies it to new sessions (see
    /// [`reload`]). Returns the settings that differ but need a restart.
    pub fn reload(&self) -> Result<Vec<&'static str>, reload::ReloadError> {
        self.shared.reload()
    }

    /// Shutting down: listeners closed or closing, clients finishing.
    pub fn is_draining(&self) -> bool {
        self.shared.going.load(Ordering::Relaxed)
    }

    /// Clients connected right now (including ones still logging in).
    pub fn client_count(&self) -> usize {
        self.shared.clients.load(Ordering::Relaxed)
    }

    /// Routing decisions so far.
    pub fn routing(&self) -> RoutingTotals {
        self.shared.servers.routing.counters.totals()
    }

    /// Refused logins so far.
    pub fn login_failures(&self) -> &LoginFailures {
        &self.shared.logins.failures
    }

    /// The cluster as the probes see it.
    pub fn topology(&self) -> Arc<Topology> {
        self.shared.cluster().topology()
    }

    /// The cluster handle (events, probes).
    pub fn cluster(&self) -> &Cluster {
        self.shared.cluster()
    }

    /// Every pool with its counters.
    pub fn pools(&self) -> Vec<PoolSnapshot> {
        self.shared.pool_rows()
    }

    /// `listen_fanout`'s hubs, one per database and user that listened.
    pub fn listen_fanout(&self) -> Vec<FanoutSnapshot> {
        let hubs = self.shared.hubs.lock().unwrap_or_else(|e| e.into_inner());
        let mut rows: Vec<FanoutSnapshot> = hubs
            .iter()
            .map(|((database, user), hub)| hub.snapshot(database, user))
            .collect();
        rows.sort_by(|a, b| (&a.database, &a.user).cmp(&(&b.database, &b.user)));
        rows
    }

    /// Connected clients (logged in).
    pub fn clients(&self) -> Vec<Arc<ClientInfo>> {
        self.shared.registry.clients()
    }

    /// Open server connections.
    pub fn servers(&self) -> Vec<Arc<ServerInfo>> {
        self.shared.registry.servers()
    }

    /// Per server database: rates and means over the last `stats_period`.
    pub fn averages(&self) -> BTreeMap<String, Averages> {
        self.shared.averages()
    }

    /// Database names clients use, with their pause and disable switches.
    pub fn databases(&self) -> Vec<DatabaseState> {
        self.shared.database_states()
    }

    /// Pauses a database (all when `None`); completes once no client of it
    /// holds a server. New transactions wait for [`ProxyHandle::resume`].
    pub async fn pause(&self, db: Option<&str>) -> Result<(), ControlError> {
        self.shared.pause(db).await
    }

    pub fn resume(&self, db: Option<&str>) -> Result<(), ControlError> {
        self.shared.resume(db)
    }

    /// Refuses (or again accepts) new logins to a database.
    pub fn set_database_disabled(&self, db: &str, disabled: bool) -> Result<(), ControlError> {
        self.shared.set_disabled(db, disabled)
    }

    /// Ends every client of a database (which stays paused); returns how many.
    pub fn kill_database(&self, db: &str) -> Result<usize, ControlError> {
        self.shared.kill_database(db)
    }

    pub fn kill_client(&self, id: u64) -> Result<(), ControlError> {
        self.shared.kill_client(id)
    }

    /// Closes every server connection of a database (all when `None`) as
    /// soon as it is idle; returns how many were marked.
    pub fn reconnect(&self, db: Option<&str>) -> Result<usize, ControlError> {
        self.shared.reconnect(db)
    }

    /// Completes once the connections [`ProxyHandle::reconnect`] marked are closed.
    pub async fn wait_close(&self, db: Option<&str>) -> Result<(), ControlError> {
        self.shared.wait_close(db).await
    }

    /// Stops (or resumes) sending reads to a node.
    pub fn set_node_drained(&self, node: &str, drained: bool) -> Result<(), ControlError> {
        self.shared.set_node_drained(node, drained)
    }

    /// Whether node `i` (config order) is drained.
    pub fn node_drained(&self, i: usize) -> bool {
        self.shared.servers.routing.node_is_drained(i)
    }
}
