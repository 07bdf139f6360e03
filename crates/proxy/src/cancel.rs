//! Cancel keys: which server backend a client's CancelRequest is meant for.
//!
//! pgherd gives each client a BackendKeyData of its own and draws the secret
//! itself. In session mode the PID is that of the server backend the client
//! keeps (so `pg_backend_pid()` and notification PIDs agree with what the
//! driver was told); in transaction mode the client has no server of its own,
//! so the PID is pgherd's too. Either way the key points at a [`CancelSlot`]
//! holding the server the client uses *right now*, if any: a CancelRequest
//! carrying the key is forwarded, with the server's real secret, to that
//! server only. A client can never cancel another client's query.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use rand::{Rng, RngCore};

/// Where a cancel for one client goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CancelTarget {
    pub(crate) addr: SocketAddr,
    pub(crate) pid: i32,
    pub(crate) secret: [u8; 4],
}

/// The server a client currently uses, updated as it checks servers out and in.
#[derive(Debug, Default)]
pub(crate) struct CancelSlot(Mutex<Option<CancelTarget>>);

impl CancelSlot {
    pub(crate) fn set(&self, target: Option<CancelTarget>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = target;
    }

    fn get(&self) -> Option<CancelTarget> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A client's registered key.
#[derive(Debug)]
pub(crate) struct CancelKey {
    pub(crate) pid: i32,
    pub(crate) secret: [u8; 4],
    pub(crate) slot: Arc<CancelSlot>,
}

type Keys = HashMap<(i32, [u8; 4]), Arc<CancelSlot>>;

/// Live cancel keys, from the client-facing `(pid, secret)` to a slot.
#[derive(Debug, Default)]
pub(crate) struct CancelRegistry {
    keys: Mutex<Keys>,
}

impl CancelRegistry {
    fn keys(&self) -> std::sync::MutexGuard<'_, Keys> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a key with PID `pid` (a random one when `None`) and a fresh
    /// random secret, unique among live keys.
    pub(crate) fn register(&self, pid: Option<i32>) -> CancelKey {
        let mut keys = self.keys();
        let mut rng = rand::thread_rng();
        loop {
            let pid = pid.unwrap_or_else(|| rng.gen_range(1..i32::MAX));
            let mut secret = [0u8; 4];
            rng.fill_bytes(&mut secret);
            if let std::collections::hash_map::Entry::Vacant(e) = keys.entry((pid, secret)) {
                let slot = Arc::new(CancelSlot::default());
                e.insert(Arc::clone(&slot));
                return CancelKey { pid, secret, slot };
            }
        }
    }

    pub(crate) fn unregister(&self, key: &CancelKey) {
        self.keys().remove(&(key.pid, key.secret));
    }

    /// The server to cancel for a client's key, if the key is live and the
    /// client is using a server.
    pub(crate) fn lookup(&self, pid: i32, secret: &[u8]) -> Option<CancelTarget> {
        let secret: [u8; 4] = secret.try_into().ok()?;
        let slot = self.keys().get(&(pid, secret)).cloned()?;
        slot.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_the_current_server_only() {
        let reg = CancelRegistry::default();
        let t = CancelTarget {
            addr: "127.0.0.1:5432".parse().unwrap(),
            pid: 77,
            secret: [1, 2, 3, 4],
        };
        let key = reg.register(Some(77));
        assert_eq!(key.pid, 77);
        assert_eq!(reg.lookup(77, &key.secret), None, "no server yet");
        key.slot.set(Some(t));
        assert_eq!(reg.lookup(77, &key.secret), Some(t));
        let mut wrong = key.secret;
        wrong[0] ^= 1;
        assert_eq!(reg.lookup(77, &wrong), None);
        assert_eq!(reg.lookup(78, &key.secret), None);
        assert_eq!(reg.lookup(77, &key.secret[..3]), None);
        key.slot.set(None);
        assert_eq!(reg.lookup(77, &key.secret), None, "server given back");
        key.slot.set(Some(t));
        reg.unregister(&key);
        assert_eq!(reg.lookup(77, &key.secret), None);
    }

    #[test]
    fn random_pids_are_positive() {
        let reg = CancelRegistry::default();
        for _ in 0..100 {
            assert!(reg.register(None).pid > 0);
        }
    }
}
