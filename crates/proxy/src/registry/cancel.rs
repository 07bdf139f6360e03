//! Cancel keys: which server backend a client's CancelRequest is meant for.
//!
//! pgherd gives each client a BackendKeyData of its own and draws the secret
//! itself. In session mode the PID is that of the server backend the client
//! keeps (so `pg_backend_pid()` and notification PIDs agree with what the
//! driver was told); in transaction mode the client has no server of its own,
//! so the PID is pgherd's too. Either way the key leads to the server the
//! client uses *right now*, if any: a CancelRequest carrying the key is
//! forwarded, with the server's real secret, to that server only. A client
//! can never cancel another client's query.
//!
//! "Right now" is the registry's link between a client and the server it
//! holds ([`ClientInfo::server`], kept by the session's lease), read when a
//! cancel arrives, so taking and giving back a server costs the cancel path
//! nothing: a slot of its own set twice per transaction took two locks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rand::{Rng, RngCore};

use crate::registry::{CancelTarget, ClientInfo, Registry};

/// How a key finds its server.
#[derive(Debug)]
pub(crate) enum CancelRoute {
    /// Always this one (a replication connection's own server).
    Fixed(CancelTarget),
    /// Whichever server this client holds when the cancel arrives.
    Client(Arc<ClientInfo>),
}

/// A client's registered key.
#[derive(Debug)]
pub(crate) struct CancelKey {
    pub(crate) pid: i32,
    pub(crate) secret: [u8; 4],
}

type Keys = HashMap<(i32, [u8; 4]), CancelRoute>;

/// Live cancel keys, from the client-facing `(pid, secret)` to a route.
#[derive(Debug, Default)]
pub(crate) struct CancelRegistry {
    keys: Mutex<Keys>,
}

impl CancelRegistry {
    fn keys(&self) -> std::sync::MutexGuard<'_, Keys> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a key with PID `pid` (a random one when `None`) and a fresh
    /// random secret, unique among live keys, leading to `route`.
    pub(crate) fn register(&self, pid: Option<i32>, route: CancelRoute) -> CancelKey {
        let mut keys = self.keys();
        let mut rng = rand::thread_rng();
        loop {
            let pid = pid.unwrap_or_else(|| rng.gen_range(1..i32::MAX));
            let mut secret = [0u8; 4];
            rng.fill_bytes(&mut secret);
            if let std::collections::hash_map::Entry::Vacant(e) = keys.entry((pid, secret)) {
                e.insert(route);
                return CancelKey { pid, secret };
            }
        }
    }

    pub(crate) fn unregister(&self, key: &CancelKey) {
        self.keys().remove(&(key.pid, key.secret));
    }

    /// The server to cancel for a client's key, if the key is live and the
    /// client is using a server.
    pub(crate) fn lookup(
        &self,
        registry: &Registry,
        pid: i32,
        secret: &[u8],
    ) -> Option<CancelTarget> {
        let secret: [u8; 4] = secret.try_into().ok()?;
        let client = match self.keys().get(&(pid, secret))? {
            CancelRoute::Fixed(target) => return Some(*target),
            CancelRoute::Client(client) => Arc::clone(client),
        };
        let server = registry.server(client.server()?)?;
        // Both ends of the link agree: the server was not handed on between
        // the two reads.
        (server.client() == Some(client.id)).then(|| server.cancel_target())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::registry::{NewClient, NewServer};

    #[test]
    fn keys_lead_to_the_server_the_client_holds_now_only() {
        let registry = Arc::new(Registry::default());
        let client = registry.add_client(NewClient {
            user: "u",
            database: "d",
            addr: crate::listen::addr::ClientAddr::Tcp("127.0.0.1:1".parse().unwrap()),
            local_addr: None,
            application_name: "",
        });
        let server = registry.add_server(NewServer {
            node: 0,
            user: "u",
            database: "d",
            addr: "127.0.0.1:5432".parse().unwrap(),
            local_addr: None,
            pid: 77,
            secret: [1, 2, 3, 4],
        });
        let t = CancelTarget {
            addr: "127.0.0.1:5432".parse().unwrap(),
            pid: 77,
            secret: [1, 2, 3, 4],
        };
        let reg = CancelRegistry::default();
        let key = reg.register(Some(77), CancelRoute::Client(Arc::clone(&client.info)));
        assert_eq!(key.pid, 77);
        let lookup = |secret: &[u8]| reg.lookup(&registry, 77, secret);
        assert_eq!(lookup(&key.secret), None, "no server yet");
        client.info.set_server(Some(server.info.id));
        server.info.set_client(Some(client.info.id));
        assert_eq!(lookup(&key.secret), Some(t));
        let mut wrong = key.secret;
        wrong[0] ^= 1;
        assert_eq!(lookup(&wrong), None);
        assert_eq!(reg.lookup(&registry, 78, &key.secret), None);
        assert_eq!(lookup(&key.secret[..3]), None);
        // Handed on: the server now says another client holds it.
        server.info.set_client(Some(client.info.id + 1));
        assert_eq!(lookup(&key.secret), None, "server handed on");
        server.info.set_client(Some(client.info.id));
        client.info.set_server(None);
        assert_eq!(lookup(&key.secret), None, "server given back");
        client.info.set_server(Some(server.info.id));
        drop(server);
        assert_eq!(lookup(&key.secret), None, "server closed");
        reg.unregister(&key);
        assert_eq!(lookup(&key.secret), None);

        let fixed = reg.register(None, CancelRoute::Fixed(t));
        assert_eq!(reg.lookup(&registry, fixed.pid, &fixed.secret), Some(t));
    }

    #[test]
    fn random_pids_are_positive() {
        let reg = CancelRegistry::default();
        let t = CancelTarget {
            addr: "127.0.0.1:5432".parse().unwrap(),
            pid: 77,
            secret: [1, 2, 3, 4],
        };
        for _ in 0..100 {
            assert!(reg.register(None, CancelRoute::Fixed(t)).pid > 0);
        }
    }
}
