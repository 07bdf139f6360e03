//! Cancel keys: which server backend a client's CancelRequest is meant for.
//!
//! pgherd gives each client a BackendKeyData of its own: the PID of the server
//! backend it talks to (so `pg_backend_pid()` and notification PIDs agree with
//! what the driver was told) and a secret pgherd drew itself. A CancelRequest
//! carrying that pair is forwarded with the *server's* real secret to the
//! server's address. A client can only cancel what it was given a key for.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use rand::RngCore;

/// Where a cancel for one client goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CancelTarget {
    pub(crate) addr: SocketAddr,
    pub(crate) pid: i32,
    pub(crate) secret: [u8; 4],
}

/// Live cancel keys, from the client-facing `(pid, secret)` to the server's.
#[derive(Debug, Default)]
pub(crate) struct CancelRegistry {
    keys: Mutex<HashMap<(i32, [u8; 4]), CancelTarget>>,
}

impl CancelRegistry {
    fn keys(&self) -> std::sync::MutexGuard<'_, HashMap<(i32, [u8; 4]), CancelTarget>> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers `target` and returns the secret to give the client (with the
    /// target's PID). The secret is random and unique among live keys.
    pub(crate) fn register(&self, target: CancelTarget) -> [u8; 4] {
        let mut keys = self.keys();
        loop {
            let mut secret = [0u8; 4];
            rand::thread_rng().fill_bytes(&mut secret);
            if let std::collections::hash_map::Entry::Vacant(e) = keys.entry((target.pid, secret)) {
                e.insert(target);
                return secret;
            }
        }
    }

    pub(crate) fn unregister(&self, pid: i32, secret: [u8; 4]) {
        self.keys().remove(&(pid, secret));
    }

    /// The target for a client's key, if it is live.
    pub(crate) fn lookup(&self, pid: i32, secret: &[u8]) -> Option<CancelTarget> {
        let secret: [u8; 4] = secret.try_into().ok()?;
        self.keys().get(&(pid, secret)).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_their_target_only() {
        let reg = CancelRegistry::default();
        let t = CancelTarget {
            addr: "127.0.0.1:5432".parse().unwrap(),
            pid: 77,
            secret: [1, 2, 3, 4],
        };
        let s = reg.register(t);
        assert_eq!(reg.lookup(77, &s), Some(t));
        let mut wrong = s;
        wrong[0] ^= 1;
        assert_eq!(reg.lookup(77, &wrong), None);
        assert_eq!(reg.lookup(78, &s), None);
        assert_eq!(reg.lookup(77, &s[..3]), None);
        reg.unregister(77, s);
        assert_eq!(reg.lookup(77, &s), None);
    }
}
