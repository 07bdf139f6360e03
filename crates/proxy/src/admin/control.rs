//! What operators can do to a running pgherd, shared by the admin console
//! (`PAUSE`, `KILL_CLIENT`...) and the admin HTTP API (`POST /api/v1/...`).
//!
//! * **Databases** (by the name clients ask for): pause (running
//!   transactions finish, new ones wait), resume, disable (new logins are
//!   refused with 57P03), enable, kill (every client of it is ended with
//!   57P01 and the database stays paused until resumed, as in pgbouncer).
//! * **Server connections**: reconnect (close each one as soon as it is
//!   idle; new ones are opened as needed) and wait until that is done.
//! * **Clients**: kill one by its id (`SHOW CLIENTS`, `/api/v1/clients`).
//! * **Nodes**: drain a standby — it gets no new reads and its idle server
//!   connections are closed; sessions and transactions already there finish
//!   normally. Writes are not affected (to stop them, pause the database).

use std::sync::Arc;

use crate::registry::{DatabaseControl, ServerInfo};
use crate::shared::Shared;

/// Why a control request could not be carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("no such database: {0}")]
    UnknownDatabase(String),
    #[error("no client with id {0} (see SHOW CLIENTS)")]
    UnknownClient(u64),
    #[error("no such node: {0}")]
    UnknownNode(String),
}

/// A database name clients use, with its switches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseState {
    pub name: String,
    pub paused: bool,
    pub disabled: bool,
}

impl Shared {
    /// The switches of a database name clients may use: a `[databases]`
    /// entry, or any name when there is a `*` entry (so a database can be
    /// paused or disabled before its first client arrives).
    pub(crate) fn known_database(&self, name: &str) -> Result<Arc<DatabaseControl>, ControlError> {
        if name != "*" && self.config().database(name).is_some() {
            Ok(self.registry.database(name))
        } else {
            Err(ControlError::UnknownDatabase(name.to_owned()))
        }
    }

    /// Pauses `db` (every database when `None`, also ones first used later)
    /// and returns once no client of it holds a server.
    pub(crate) async fn pause(&self, db: Option<&str>) -> Result<(), ControlError> {
        let targets = match db {
            Some(name) => vec![self.known_database(name)?],
            None => {
                self.registry.set_all_paused(true);
                self.registry
                    .databases()
                    .into_iter()
                    .map(|(_, d)| d)
                    .collect()
            }
        };
        for d in &targets {
            d.set_paused(true);
        }
        for d in &targets {
            d.drained().await;
        }
        Ok(())
    }

    pub(crate) fn resume(&self, db: Option<&str>) -> Result<(), ControlError> {
        match db {
            Some(name) => self.known_database(name)?.set_paused(false),
            None => self.registry.set_all_paused(false),
        }
        Ok(())
    }

    pub(crate) fn set_disabled(&self, db: &str, disabled: bool) -> Result<(), ControlError> {
        self.known_database(db)?.set_disabled(disabled);
        Ok(())
    }

    /// Ends every client of `db` now; the database stays paused. Returns how
    /// many clients were ended.
    pub(crate) fn kill_database(&self, db: &str) -> Result<usize, ControlError> {
        self.known_database(db)?.set_paused(true);
        let mut killed = 0;
        for c in self.registry.clients() {
            if c.database == db {
                c.kill();
                killed += 1;
            }
        }
        Ok(killed)
    }

    /// The server database names the servers of `db` (or of every database)
    /// are logged in to.
    fn server_databases(&self, db: Option<&str>) -> Result<Option<String>, ControlError> {
        match db {
            None => Ok(None),
            Some(name) => {
                self.known_database(name)?;
                let config = self.config();
                let server_db = config
                    .database(name)
                    .and_then(|d| d.dbname.clone())
                    .unwrap_or_else(|| name.to_owned());
                Ok(Some(server_db))
            }
        }
    }

    /// `RECONNECT`: every open server connection of `db` (all when `None`)
    /// is closed — idle ones now, busy ones when their client releases them.
    /// Returns how many were marked.
    pub(crate) fn reconnect(&self, db: Option<&str>) -> Result<usize, ControlError> {
        let server_db = self.server_databases(db)?;
        Ok(self.close_servers_where(|s| server_db.as_ref().is_none_or(|d| *d == s.database)))
    }

    /// Marks the open server connections `which` picks to be closed: idle
    /// ones now, busy ones when their client releases them. Returns how
    /// many were marked.
    pub(crate) fn close_servers_where(&self, which: impl Fn(&ServerInfo) -> bool) -> usize {
        let mut marked = 0;
        for s in self.registry.servers() {
            if which(&s) {
                s.mark_close_needed();
                marked += 1;
            }
        }
        self.servers.pools.close_idle_marked();
        marked
    }

    /// `WAIT_CLOSE`: waits until no server connection of `db` (all when
    /// `None`) that `RECONNECT` marked is still open.
    pub(crate) async fn wait_close(&self, db: Option<&str>) -> Result<(), ControlError> {
        let server_db = self.server_databases(db)?;
        loop {
            let pending =
                self.registry.servers().iter().any(|s| {
                    s.close_needed() && server_db.as_ref().is_none_or(|d| *d == s.database)
                });
            if !pending {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    pub(crate) fn kill_client(&self, id: u64) -> Result<(), ControlError> {
        let client = self
            .registry
            .client(id)
            .ok_or(ControlError::UnknownClient(id))?;
        client.kill();
        Ok(())
    }

    /// Drains (no new reads) or undrains node `name`.
    pub(crate) fn set_node_drained(&self, name: &str, drained: bool) -> Result<(), ControlError> {
        let i = self
            .node_index(name)
            .ok_or_else(|| ControlError::UnknownNode(name.to_owned()))?;
        self.servers.routing.set_node_drained(i, drained);
        if drained {
            self.servers.pools.drain_node(i);
        }
        tracing::info!(
            node = name,
            drained,
            "node drain changed by an administrator"
        );
        Ok(())
    }

    pub(crate) fn database_states(&self) -> Vec<DatabaseState> {
        let mut names: Vec<String> = self
            .config()
            .databases
            .keys()
            .filter(|n| *n != "*")
            .cloned()
            .collect();
        for (name, _) in self.registry.databases() {
            if !names.contains(&name) {
                names.push(name);
            }
        }
        names.sort();
        names
            .into_iter()
            .map(|name| {
                let d = self.registry.database(&name);
                DatabaseState {
                    paused: d.paused(),
                    disabled: d.disabled(),
                    name,
                }
            })
            .collect()
    }
}
