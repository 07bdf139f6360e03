//! What operators do to a running pgherd from inside: the pgbouncer-style
//! admin console (`SHOW`, `PAUSE`, `KILL`, `RELOAD` ...), the database and
//! node switches it flips, and RELOAD itself. The HTTP side (metrics,
//! stats page, JSON API) is the `pgherd-admin` crate, which reads the same
//! state through the proxy handle.
//!
//! Nothing below this room imports it: the data path never waits on the
//! console.

pub(crate) mod console;
pub(crate) mod control;
pub mod reload;
