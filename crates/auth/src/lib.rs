//! Authentication for pgherd.
//!
//! pgherd authenticates clients itself, so it plays the *server* side of
//! SCRAM-SHA-256 ([`scram::ScramServer`]) against PostgreSQL-style verifiers
//! (`SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`, exactly what
//! `pg_authid.rolpassword` holds), so plaintext client passwords never need
//! to be written in a config file. A successful exchange recovers the
//! client's `ClientKey`, and [`scram::ScramKeysClient`] uses it to log in to
//! PostgreSQL as that user, still without a password (pgbouncer's trick). With
//! a plaintext server password the proxy uses `postgres-protocol`'s client.
//!
//! [`md5`] has PostgreSQL's md5 scheme (client and server side, from the
//! stored secret) and pgbouncer's auth_file parser.
//!
//! Every password and verifier travels as a [`Secret`], whose `Debug` never
//! shows its value, so a stray `{:?}` cannot leak one into a log.
#![forbid(unsafe_code)]

pub mod md5;
pub mod scram;
mod secret;

pub use scram::{ScramClientError, ScramError, ScramKeysClient, ScramServer, ScramVerifier};
pub use secret::Secret;

/// Makes a SCRAM-SHA-256 verifier for `password`, in the format PostgreSQL
/// stores (random salt, 4096 iterations), for writing into a config file.
pub fn make_scram_verifier(password: &str) -> String {
    postgres_protocol::password::scram_sha_256(password.as_bytes())
}
