//! TLS for pgherd's connections, with rustls.
//!
//! pgherd speaks TLS on two sides, configured with pgbouncer's settings:
//! towards clients it is the TLS server (`client_tls_*`, [`ClientTls`]) and
//! towards PostgreSQL the TLS client (`server_tls_*`, [`ServerTls`]), for
//! session connections, health probes and `auth_query` alike.
//!
//! Both sides carry their connections as a [`Stream`]: plain TCP or TLS,
//! one enum, so the relay and the login code are written once. The plain
//! case costs one `match` per read or write and nothing else — pgherd's
//! default (and the benchmark's) path is not slowed by TLS existing.
//!
//! Why rustls and not OpenSSL (which PostgreSQL and pgbouncer use): no C
//! library to build or keep patched, memory safety in the parser, and
//! safe defaults — TLS 1.2 and 1.3 with modern ciphers only. The price is
//! that pgbouncer's `*_tls_ciphers`, `*_tls_ecdhcurve` and
//! `*_tls_dheparams` have no equivalent here (rustls offers only
//! strong choices), and TLS 1.0/1.1 cannot be enabled.

mod accept;
mod binding;
mod connect;
mod files;
mod stream;

pub use accept::ClientTls;
pub use connect::{https_connector, PostgresTls, ServerTls};
pub use stream::Stream;

use pgherd_config::General;

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verification: {0}")]
    ClientVerifier(#[from] rustls::server::VerifierBuilderError),
}

/// Both sides' TLS, built from the settings. Built at start and again on
/// every RELOAD, so renewed certificate files are picked up (as pgbouncer).
#[derive(Debug)]
pub struct Contexts {
    pub client: ClientTls,
    pub server: ServerTls,
}

impl Contexts {
    pub fn new(general: &General) -> Result<Contexts, TlsError> {
        Ok(Contexts {
            client: ClientTls::new(&general.client_tls())?,
            server: ServerTls::new(&general.server_tls())?,
        })
    }
}

/// The rustls protocol versions a setting allows.
fn versions(p: pgherd_config::TlsProtocols) -> Vec<&'static rustls::SupportedProtocolVersion> {
    let mut v = Vec::with_capacity(2);
    if p.tls13 {
        v.push(&rustls::version::TLS13);
    }
    if p.tls12 {
        v.push(&rustls::version::TLS12);
    }
    v
}

fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

#[cfg(any(test, feature = "test-pki"))]
pub mod test_pki;
