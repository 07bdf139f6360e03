//! pgherd's proxy: the listener, client sessions and server connections.
//!
//! ```text
//! accept ─► client::login (startup, TLS, SCRAM/md5/trust, max_client_conn)
//!        ─► session: database entry, server credential → an `upstream`
//!             (shared by the clients it is the same for) → a server on the
//!             primary (from the pool of (database, user, node), or freshly
//!             opened with the client's own startup parameters)
//!        ─► relay (bytes both ways, no re-encoding) until the client leaves
//!        ─► reset (ROLLBACK if needed, server_reset_query) and back to the
//!             pool — or closed, if the session left it in an unknown state
//! ```
//!
//! In session mode a client keeps its server for its whole session, so it
//! cannot tell pgherd from a direct connection (its backend PID,
//! ParameterStatus values, prepared statements, temp tables and LISTENs are
//! its own). In transaction mode it holds a server from the first message of
//! a transaction to the ReadyForQuery that ends it; its named prepared
//! statements (`prepared`) and session parameters (`params`) follow it from
//! server to server. Where a session goes comes from the cluster topology
//! (`pgherd-cluster`'s probes): the one primary, or a fresh standby for
//! `target = "replica"`; each new server connection's `in_hot_standby` report
//! is checked as well, so a stale topology cannot send writes to a standby.
#![forbid(unsafe_code)]

// The rooms, from the bottom up; each one's `//!` says what lives there.
// An import only ever points down this list.
mod admin;
mod background;
pub mod clock;
pub mod counters;
mod fanout;
mod listen;
mod login;
mod pressure;
mod proxy;
mod registry;
mod relay;
mod session;
mod settings;
mod shared;
mod stats;
mod upstream;

pub use admin::control::{ControlError, DatabaseState};
pub use admin::reload;
pub use fanout::FanoutSnapshot;
pub use listen::addr::ClientAddr;
pub use listen::bind_tcp;
pub use login::LoginFailures;
pub use proxy::{Proxy, ProxyHandle};
pub use registry::{ClientInfo, ClientState, ServerInfo, ServerState};
pub use stats::{Averages, PoolStats, StatsSnapshot, DURATION_BUCKETS};
pub use upstream::balance;
pub use upstream::pools::PoolSnapshot;
pub use upstream::route::RoutingTotals;
pub use upstream::server::{ServerConn, ServerCredential, ServerError};
