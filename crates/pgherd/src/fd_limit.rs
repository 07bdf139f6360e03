//! The open-files limit, checked at start as pgbouncer checks it.
//!
//! Every client, server connection, listener and timer is a file
//! descriptor. A process started from a shell usually gets a soft limit of
//! 1,024, far below `max_client_conn` on a busy pooler, and when the limit
//! is reached `accept` fails and new clients wait in the kernel's backlog
//! until they give up. So before binding, `pgherd run` raises its soft
//! limit to the hard one (as Go's runtime does for every program; the
//! systemd unit sets both with `LimitNOFILE`), logs pgbouncer's line
//! (`kernel file descriptor limit: N (hard: H); max_client_conn: C, max
//! expected fd use: E`) and warns when the limit is below that estimate.

use nix::sys::resource::{getrlimit, setrlimit, Resource};
use pgherd_config::Config;

/// pgbouncer's estimate of the descriptors pgherd may need: every client,
/// a full pool (with its reserve) per database and user on every node, and
/// 10 for everything else. A wildcard database counts once; a database
/// that logs in as one fixed user has one pool per node, others one per
/// `[users]` entry; `max_db_connections` caps a database's pools on a node.
pub(crate) fn expected_use(config: &Config) -> u64 {
    let nodes = config.nodes.len().max(1);
    let users = config.users.len().max(1);
    let servers: usize = config
        .databases
        .values()
        .map(|db| {
            let pools = if db.user.is_some() { 1 } else { users };
            let per_node = pools * (db.pool_size + db.reserve_pool);
            let per_node = match db.max_db_connections {
                0 => per_node,
                cap => per_node.min(cap),
            };
            per_node * nodes
        })
        .sum();
    (config.general.max_client_conn + servers + 10) as u64
}

/// Raises the soft limit to the hard one and logs the result (a warning if
/// it is below [`expected_use`]). Failing to read or raise the limit is
/// logged, not fatal: pgherd still runs within what it has.
pub(crate) fn raise_and_check(config: &Config) {
    let (soft_before, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(e) => {
            tracing::warn!("cannot read the open-files limit: {e}");
            return;
        }
    };
    let soft = if soft_before < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                tracing::warn!(
                    "cannot raise the open-files limit from {soft_before} to {hard}: {e}"
                );
                soft_before
            }
        }
    } else {
        soft_before
    };
    let expected = expected_use(config);
    let max_client_conn = config.general.max_client_conn;
    tracing::info!(
        "kernel file descriptor limit: {soft} (hard: {hard}); max_client_conn: {max_client_conn}, max expected fd use: {expected}"
    );
    if soft < expected {
        tracing::warn!(
            "the open-files limit ({soft}) is below the expected use ({expected}): raise it (ulimit -n, systemd LimitNOFILE) or lower max_client_conn or the pool sizes"
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn config(databases: &str, max_client_conn: usize) -> Config {
        Config::parse(&format!(
            "[pgherd]\nmax_client_conn = {max_client_conn}\ndefault_pool_size = 20\n\
             probe_user = \"p\"\nprobe_password = \"p\"\n\
             [[nodes]]\nname = \"a\"\nhost = \"10.0.0.1\"\n\
             [[nodes]]\nname = \"b\"\nhost = \"10.0.0.2\"\n\
             [databases]\n{databases}\n\
             [users]\napp = {{ password = \"x\" }}\nbi = {{ password = \"y\" }}\n"
        ))
        .unwrap()
    }

    #[test]
    fn clients_plus_full_pools_on_every_node_plus_ten() {
        // "*": 2 users × 20 × 2 nodes = 80.
        assert_eq!(expected_use(&config("\"*\" = {}", 1000)), 1000 + 80 + 10);
        // A fixed login user: one pool per node, with its reserve.
        let fixed = config(
            "app = { user = \"svc\", password = \"s\", pool_size = 30, reserve_pool = 5 }",
            100,
        );
        assert_eq!(expected_use(&fixed), 100 + 35 * 2 + 10);
        // max_db_connections caps a database's pools on a node.
        let capped = config("app = { max_db_connections = 25 }", 100);
        assert_eq!(expected_use(&capped), 100 + 25 * 2 + 10);
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        if hard == nix::sys::resource::RLIM_INFINITY {
            return; // the kernel caps NOFILE below "infinity": nothing to check
        }
        // Lowered first (any process may lower its soft limit), so there
        // is something to raise.
        setrlimit(Resource::RLIMIT_NOFILE, hard / 2, hard).unwrap();
        raise_and_check(&config("\"*\" = {}", 100));
        assert_eq!(getrlimit(Resource::RLIMIT_NOFILE).unwrap(), (hard, hard));
    }
}
