//! The state one proxy's sessions share, grouped by who reads it: the
//! settings, the server side ([`Servers`]: pools, limits, routing), the
//! login side ([`Logins`]), and the registry of who is connected. Only the
//! rooms above the data path (sessions, the console, the background loops)
//! hold the whole of it; the rooms below get the part they need.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex};

use pgherd_cluster::Cluster;
use pgherd_config::Config;

use crate::fanout::Hub;
use crate::login::Logins;
use crate::registry::cancel::CancelRegistry;
use crate::registry::Registry;
use crate::relay::params::TrackedParams;
use crate::settings::Settings;
use crate::stats::{Averages, StatsSnapshot};
use crate::upstream::pools::PoolSnapshot;
use crate::upstream::Servers;

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) settings: Arc<Settings>,
    pub(crate) servers: Servers,
    pub(crate) logins: Logins,
    pub(crate) cancels: CancelRegistry,
    /// Connected clients, for `max_client_conn`.
    pub(crate) clients: AtomicUsize,
    /// Clients, server connections and database switches (admin console).
    pub(crate) registry: Arc<Registry>,
    /// Parameters transaction-mode clients keep as their own.
    pub(crate) tracked: Arc<TrackedParams>,
    /// Set when pgherd stops: clients finish their transaction and go.
    pub(crate) going: AtomicBool,
    /// The console's SHUTDOWN: `Proxy::run` stops as if signalled.
    pub(crate) shutdown_requested: tokio::sync::Notify,
    /// `listen_fanout`: the listening connection of each database and
    /// user, started by the first client that listens.
    pub(crate) hubs: Mutex<std::collections::HashMap<(String, String), Arc<Hub>>>,
    /// `SHOW STATS_AVERAGES` per database, over the last `stats_period`.
    pub(crate) averages: Mutex<BTreeMap<String, Averages>>,
    /// The same over all databases (`SHOW TOTALS`, `log_stats`).
    pub(crate) all_averages: Mutex<Averages>,
}

impl Shared {
    /// The configuration new sessions start with (see [`crate::settings`]).
    pub(crate) fn config(&self) -> Arc<Config> {
        self.settings.config()
    }

    /// Probes and topology: where sessions may go.
    pub(crate) fn cluster(&self) -> &Cluster {
        &self.servers.routing.cluster
    }

    /// Every pool with its counters, sorted by database, user, node.
    pub(crate) fn pool_rows(&self) -> Vec<PoolSnapshot> {
        self.servers.pools.rows(&self.cluster().topology().nodes)
    }

    /// Traffic totals per (server) database, over users and nodes.
    pub(crate) fn database_totals(&self) -> BTreeMap<String, StatsSnapshot> {
        self.servers.pools.database_totals()
    }

    /// The averages of the last complete `stats_period`.
    pub(crate) fn averages(&self) -> BTreeMap<String, Averages> {
        self.averages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The averages of the last complete `stats_period` over all databases.
    pub(crate) fn all_averages(&self) -> Averages {
        *self.all_averages.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn request_shutdown(&self) {
        self.shutdown_requested.notify_one();
    }

    /// A node's index in the configuration, by name.
    pub(crate) fn node_index(&self, name: &str) -> Option<usize> {
        self.cluster().topology().slot_of(name)
    }
}
