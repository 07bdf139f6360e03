//! `auth_user` + `auth_query`: users not in the config are looked up on the
//! primary at login, as pgbouncer does.
//!
//! The secret the query returns drives the client's login like a configured
//! one. With a SCRAM verifier — PostgreSQL's default — the client logs in
//! with SCRAM, and the `ClientKey` its proof reveals logs pgherd in to the
//! server as that user: SCRAM works with auth_query, which pgbouncer cannot
//! do (its issue 1186). An md5 secret works for md5 clients and md5 servers.
//!
//! One connection (tokio-postgres, as `auth_user`, to `auth_dbname` on the
//! current primary) serves every lookup, one at a time; it is reopened when
//! it fails or the primary changes. A user the query does not return — no
//! row, a NULL secret (an expired role, with the default query) — gets the
//! same 28P01 as a wrong password.

use pgherd_config::{Config, Node, User};
use tokio::sync::Mutex;

use pgherd_cluster::Cluster;

use crate::settings::Settings;

/// The lookup connection, opened on first use.
#[derive(Default)]
pub(crate) struct AuthQuery {
    conn: Mutex<Option<Lookup>>,
}

impl std::fmt::Debug for AuthQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthQuery")
    }
}

struct Lookup {
    node: usize,
    client: tokio_postgres::Client,
    statement: tokio_postgres::Statement,
}

impl AuthQuery {
    /// The user `name` as the primary knows it, or `None` (unknown, expired,
    /// or the lookup failed: logged, and the login fails like a bad password).
    pub(crate) async fn lookup(
        &self,
        (cluster, settings): (&Cluster, &Settings),
        config: &Config,
        name: &str,
    ) -> Option<User> {
        let Some(auth_user) = &config.general.auth_user else {
            return None;
        };
        let mut conn = self.conn.lock().await;
        for attempt in 0..2 {
            // A fresh pgherd, or a failover: wait for a primary as a writer would.
            let primary = cluster
                .wait_for(config.general.primary_wait_timeout, |t| t.primary)
                .await
                .ok();
            let stale = conn
                .as_ref()
                .is_some_and(|l| l.client.is_closed() || Some(l.node) != primary);
            if stale {
                *conn = None;
            }
            if conn.is_none() {
                let Some(node) = primary else {
                    tracing::warn!("auth_query for {name:?}: no primary to ask");
                    return None;
                };
                let tls = &settings.tls().server;
                let address = cluster.node(node)?;
                match open(config, tls, auth_user, (node, &address)).await {
                    Ok(l) => *conn = Some(l),
                    Err(e) => {
                        tracing::warn!("auth_query: cannot log in as auth_user {auth_user:?}: {e}");
                        return None;
                    }
                }
            }
            let lookup = conn.as_ref()?;
            match lookup.client.query_opt(&lookup.statement, &[&name]).await {
                Ok(row) => {
                    let secret: Option<String> = row.and_then(|r| r.try_get(1).ok()).flatten();
                    return secret.and_then(|s| User::from_secret(name, &s));
                }
                Err(e) if attempt == 0 => {
                    tracing::info!("auth_query failed, reconnecting: {e}");
                    *conn = None;
                }
                Err(e) => {
                    tracing::warn!("auth_query for {name:?} failed: {e}");
                    return None;
                }
            }
        }
        None
    }
}

async fn open(
    config: &Config,
    tls: &pgherd_tls::ServerTls,
    auth_user: &str,
    (node, n): (usize, &Node),
) -> Result<Lookup, String> {
    let password = config
        .users
        .get(auth_user)
        .and_then(|u| u.server_password.clone())
        .ok_or_else(|| {
            "auth_user needs a plaintext password in [users] or the auth_file".to_owned()
        })?;
    let mut pg = tokio_postgres::Config::new();
    pg.host(&n.host)
        .port(n.port)
        .user(auth_user)
        .password(password.expose())
        .dbname(&config.general.auth_dbname)
        .application_name("pgherd auth_query")
        .connect_timeout(config.general.server_connect_timeout)
        .ssl_mode(tls.postgres_ssl_mode());
    let (client, connection) = pg
        .connect(tls.for_postgres())
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let statement = client
        .prepare(&config.general.auth_query)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Lookup {
        node,
        client,
        statement,
    })
}
