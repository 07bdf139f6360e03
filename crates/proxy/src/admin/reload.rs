//! `RELOAD` (console), `POST /api/v1/reload` and SIGHUP: read the config
//! file again and apply it without dropping anyone.
//!
//! The new configuration is validated whole first; a file with an error
//! changes nothing. What applies: users and passwords, `[databases]`, pool
//! modes and sizes of pools created from now on, timeouts, limits, routing
//! options, console users — for sessions that start after the reload. A
//! running session keeps the configuration it started with, so no rule
//! changes under an open transaction (as pgbouncer, existing server
//! connections stay). What needs a restart — the sockets pgherd listens on,
//! the node list and the probes' settings, the state file, the tracked
//! parameters, `[notify]` — keeps its running value, and the reload says
//! which of those differ.

use pgherd_config::{Config, ConfigError};

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

/// Copies into `new` what only a restart can change, from `running`, and
/// names each such setting that differed.
pub(crate) fn keep_restart_only(running: &Config, new: &mut Config) -> Vec<&'static str> {
    let mut kept = Vec::new();
    let (r, n) = (&running.general, &mut new.general);
    macro_rules! keep {
        ($name:literal, $($field:tt)+) => {
            if r.$($field)+ != n.$($field)+ {
                n.$($field)+ = r.$($field)+.clone();
                kept.push($name);
            }
        };
    }
    keep!("listen_addr", listen_addr);
    keep!("unix_socket_dir", unix_socket_dir);
    keep!("unix_socket_mode", unix_socket_mode);
    keep!("unix_socket_group", unix_socket_group);
    keep!("so_reuseport", so_reuseport);
    keep!("listen_backlog", listen_backlog);
    keep!("admin_listen_addr", admin_listen_addr);
    keep!("state_file", state_file);
    keep!("stats_period", stats_period);
    keep!("worker_threads", worker_threads);
    keep!("track_extra_parameters", track_extra_parameters);
    keep!("probe_*", probe);
    if running.listeners != new.listeners {
        new.listeners = running.listeners.clone();
        kept.push("listeners");
    }
    if running.nodes != new.nodes {
        new.nodes = running.nodes.clone();
        kept.push("nodes");
    }
    if running.notify != new.notify {
        new.notify = running.notify.clone();
        kept.push("notify");
    }
    kept
}

impl Shared {
    pub(crate) fn reload(&self) -> Result<Vec<&'static str>, ReloadError> {
        let path = self.settings.file().ok_or(ReloadError::NoFile)?;
        let mut new = Config::load(&path)?;
        let running = self.config();
        let kept = keep_restart_only(&running, &mut new);
        // Certificate files are read again (renewed ones take effect); a
        // TLS setting that does not work changes nothing.
        let tls = pgherd_tls::Contexts::new(&new.general)?;
        self.settings.replace(new, tls);
        if kept.is_empty() {
            tracing::info!("configuration reloaded from {}", path.display());
        } else {
            tracing::warn!(
                "configuration reloaded from {}; changes to {} need a restart and were not applied",
                path.display(),
                kept.join(", ")
            );
        }
        Ok(kept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str, port: u16) -> Config {
        config_with(extra, port, "")
    }

    fn config_with(extra: &str, port: u16, sections: &str) -> Config {
        Config::parse(&format!(
            "[pgherd]\nprobe_user = \"p\"\nlisten_addr = \"127.0.0.1:{port}\"\n{extra}\n\
             [[nodes]]\nname = \"a\"\nhost = \"h\"\n{sections}"
        ))
        .unwrap()
    }

    #[test]
    fn restart_only_settings_keep_their_running_values() {
        let running = config("default_pool_size = 5", 6432);
        let mut new = config("default_pool_size = 9\nprobe_interval = 3", 7000);
        let kept = keep_restart_only(&running, &mut new);
        assert_eq!(kept, ["listen_addr", "probe_*"]);
        assert_eq!(new.general.listen_addr, running.general.listen_addr);
        assert_eq!(new.general.probe.interval, running.general.probe.interval);
        assert_eq!(new.general.default_pool_size, 9, "reloadable: applied");
        let mut same = config("default_pool_size = 9", 6432);
        assert!(keep_restart_only(&running, &mut same).is_empty());

        // The notifier started with the running [notify].
        let mut notified = config_with(
            "",
            6432,
            "[notify]\nwebhook_urls = [\"http://127.0.0.1:9/\"]\n",
        );
        assert_eq!(keep_restart_only(&running, &mut notified), ["notify"]);
        assert_eq!(notified.notify, running.notify);
    }
}
