//! The configuration and TLS contexts in force, swapped whole by RELOAD.
//!
//! A session keeps the [`Config`] it started with until it ends, so a
//! RELOAD never changes the rules under a running transaction; only new
//! sessions and new server connections read the latest one from here.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use pgherd_config::Config;
use pgherd_tls::Contexts;

#[derive(Debug)]
pub(crate) struct Settings {
    config: ArcSwap<Config>,
    tls: ArcSwap<Contexts>,
    /// Where RELOAD reads the configuration from.
    file: Mutex<Option<PathBuf>>,
}

impl Settings {
    pub(crate) fn new(config: Config, tls: Contexts) -> Settings {
        Settings {
            config: ArcSwap::from_pointee(config),
            tls: ArcSwap::from_pointee(tls),
            file: Mutex::new(None),
        }
    }

    /// The configuration new sessions start with.
    pub(crate) fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// TLS as configured now: new connections use it.
    pub(crate) fn tls(&self) -> Arc<Contexts> {
        self.tls.load_full()
    }

    /// The file RELOAD reads, if pgherd was started from one.
    pub(crate) fn file(&self) -> Option<PathBuf> {
        self.file.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn set_file(&self, path: PathBuf) {
        *self.file.lock().unwrap_or_else(|e| e.into_inner()) = Some(path);
    }

    /// Puts a reloaded configuration and its TLS contexts in force.
    pub(crate) fn replace(&self, config: Config, tls: Contexts) {
        self.config.store(Arc::new(config));
        self.tls.store(Arc::new(tls));
    }
}
