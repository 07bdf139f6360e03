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
//! With several pgherd instances (`peer_id`, `[peers]`, pgbouncer's) the
//! first two bytes of every secret are this instance's peer id, so an
//! instance that receives a cancel request for another one's client (a
//! load balancer spread the connections) sends it on to that peer
//! ([`CancelRegistry::peer_of`]). That leaves 16 random bits of secret
//! beside the PID: with `session_server_at = "login"`, where the PID is
//! the server's own, a key is as guessable as 65,536 tries.
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
    /// This instance's `peer_id`; 0 when it has none.
    peer: u16,
}

impl CancelRegistry {
    /// Keys of the instance with `peer_id` `peer` (0: none).
    pub(crate) fn new(peer: u16) -> CancelRegistry {
        CancelRegistry {
            keys: Mutex::default(),
            peer,
        }
    }

    /// The other instance a key belongs to, by the peer id in its secret;
    /// `None` for this instance's keys (or without peers).
    pub(crate) fn peer_of(&self, secret: &[u8]) -> Option<u16> {
        if self.peer == 0 {
            return None;
        }
        let id = u16::from_be_bytes(secret.get(..2)?.try_into().ok()?);
        (id != self.peer).then_some(id)
    }

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
            if self.peer != 0 {
                secret[..2].copy_from_slice(&self.peer.to_be_bytes());
            }
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
    fn keys_carry_the_peer_id_and_name_other_peers() {
        let reg = CancelRegistry::new(7);
        let t = CancelTarget {
            addr: "127.0.0.1:5432".parse().unwrap(),
            pid: 77,
            secret: [1, 2, 3, 4],
        };
        for _ in 0..50 {
            let key = reg.register(None, CancelRoute::Fixed(t));
            assert_eq!(key.secret[..2], [0, 7]);
            assert_eq!(reg.peer_of(&key.secret), None, "its own");
        }
        assert_eq!(reg.peer_of(&[0, 9, 1, 1]), Some(9));
        assert_eq!(reg.peer_of(&[0, 9]), Some(9));
        assert_eq!(reg.peer_of(&[0]), None);
        let alone = CancelRegistry::default();
        assert_eq!(alone.peer_of(&[0, 9, 1, 1]), None, "without peers");
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
