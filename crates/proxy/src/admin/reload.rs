//! `RELOAD` (console), `POST /api/v1/reload` and SIGHUP: read the config
//! file again and apply it without dropping anyone.
//!
//! The new configuration is validated whole first; a file with an error
//! changes nothing. What applies: users and passwords, `[databases]`, pool
//! modes and sizes of pools created from now on, timeouts, limits, routing
//! options, console users — for sessions that start after the reload. A
//! running session keeps the configuration it started with, so no rule
//! changes under an open transaction (as pgbouncer, existing server
//! connections stay). The node list applies to everyone at once: nodes
//! added are probed and join routing, nodes removed are drained (see
//! `crate::background::drain_on_changes`), weights and priorities take
//! effect on every session's next pick. What needs a restart — the
//! sockets pgherd listens on, the probes' settings, the state file, the
//! tracked parameters, `[notify]` — keeps its running value, and the
//! reload says which of those differ.

use pgherd_cluster::{Member, ProxyEvent, Source};
use pgherd_config::ConfigError;

use crate::shared::Shared;

/// Why a reload did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("no config file to reload (pgherd was started without one)")]
    NoFile,
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] pgherd_tls::TlsError),
}

impl Shared {
    pub(crate) fn reload(&self) -> Result<Vec<&'static str>, ReloadError> {
        let path = self.settings.file().ok_or(ReloadError::NoFile)?;
        let old = self.config();
        let (new, kept) = old.reloaded(&path)?;
        // Certificate files are read again (renewed ones take effect); a
        // TLS setting that does not work changes nothing.
        let tls = pgherd_tls::Contexts::new(&new.general)?;
        let applied = new.changes_since(&old);
        let nodes = new.nodes.iter().cloned().map(Member::configured).collect();
        self.cluster().set_members(Source::Config, nodes);
        self.settings.replace(new, tls);
        self.cluster().publish(ProxyEvent::ConfigReloaded {
            applied,
            kept: kept.iter().map(|k| (*k).to_owned()).collect(),
        });
        Ok(kept)
    }
}
