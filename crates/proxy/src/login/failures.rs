//! Logins pgherd refused, counted by why (`pgherd_login_failures_total`)
//! and logged once each.

use std::sync::atomic::{AtomicU64, Ordering};

use pgherd_wire::sqlstate;

use crate::listen::addr::ClientAddr;
use crate::login::Refused;

/// Logins pgherd refused, by why (`pgherd_login_failures_total`).
#[derive(Debug, Default)]
pub struct LoginFailures {
    /// Wrong password or unknown user (28P01), or no user name (28000).
    pub auth: AtomicU64,
    /// `max_client_conn` reached (53300).
    pub limit: AtomicU64,
    /// Not the PostgreSQL protocol, or broken messages (08P01).
    pub protocol: AtomicU64,
    /// Not done within `client_login_timeout`.
    pub timeout: AtomicU64,
    /// The TLS handshake failed (untrusted or missing certificates, no
    /// common protocol version), or TLS was required and not used.
    pub tls: AtomicU64,
}

impl LoginFailures {
    /// Counts (and logs) a login that ended without a session.
    pub(crate) fn refused(&self, refused: &Refused, peer: ClientAddr) {
        let counter = match refused {
            Refused::Fatal(fields) => {
                tracing::info!(%peer, "login refused: {fields}");
                match fields.code.as_str() {
                    sqlstate::INVALID_PASSWORD | sqlstate::INVALID_AUTHORIZATION_SPECIFICATION => {
                        &self.auth
                    }
                    sqlstate::TOO_MANY_CONNECTIONS => &self.limit,
                    _ => &self.protocol,
                }
            }
            Refused::TlsRequired(fields) => {
                tracing::info!(%peer, "login refused: {fields}");
                &self.tls
            }
            Refused::Handshake(e) => {
                tracing::info!(%peer, "TLS handshake failed: {e}");
                &self.tls
            }
            Refused::TimedOut => &self.timeout,
            Refused::Gone | Refused::Cancel { .. } => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
