//! One client connection from accept to close.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use pgherd_config::{Config, Database, Target};
use pgherd_pool::{Guard, PoolError};
use pgherd_wire::backend::{self, ErrorFields, TxStatus};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::cancel::CancelTarget;
use crate::client::{Authenticated, Client, Refused};
use crate::relay::{self, RelayEnd, ServerState};
use crate::route::{self, Attempt};
use crate::server::{send_cancel, ServerConn, ServerCredential, ServerError};
use crate::{PoolKey, Shared};

/// Counts a client for `max_client_conn` while it is connected.
struct ClientSlot<'a>(&'a Shared);

impl Drop for ClientSlot<'_> {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one accepted connection.
/// `listener_target` is where this listener sends databases that set no target.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    listener_target: Target,
) {
    let connected = shared.clients.fetch_add(1, Ordering::Relaxed) + 1;
    let _slot = ClientSlot(&shared);
    let _ = stream.set_nodelay(true);
    let mut client = Client::new(stream, peer);
    let config = shared.config();
    let over_limit = connected > config.general.max_client_conn;
    let login = tokio::time::timeout(
        config.general.client_login_timeout,
        client.login(&shared, over_limit),
    )
    .await;
    let auth = match login {
        Ok(Ok(auth)) => auth,
        Ok(Err(Refused::Fatal(fields))) => {
            tracing::info!(%peer, "login refused: {fields}");
            client.send_error(&fields).await;
            return;
        }
        Ok(Err(Refused::Cancel { pid, secret })) => {
            forward_cancel(&shared, pid, &secret).await;
            return;
        }
        Ok(Err(Refused::Gone)) => return,
        Err(_) => {
            let fields = ErrorFields::fatal("08P01", "client_login_timeout: login took too long");
            client.send_error(&fields).await;
            return;
        }
    };
    tracing::debug!(%peer, user = %auth.user, database = %auth.database, "client logged in");
    if let Err(fields) = run(&shared, &mut client, auth, listener_target).await {
        client.send_error(&fields).await;
    }
}

async fn forward_cancel(shared: &Shared, pid: i32, secret: &Bytes) {
    match shared.cancels.lookup(pid, secret) {
        Some(t) => {
            if let Err(e) = send_cancel(t.addr, t.pid, t.secret).await {
                tracing::warn!("cancel request to {} failed: {e}", t.addr);
            }
        }
        None => tracing::debug!(pid, "cancel request with an unknown key ignored"),
    }
}

fn wants_replication(auth: &Authenticated) -> bool {
    match auth.startup.param("replication") {
        None => false,
        Some(v) => !matches!(
            v.to_ascii_lowercase().as_str(),
            "false" | "off" | "no" | "0"
        ),
    }
}

/// The server-side identity for a client: which user to log in as, with what.
fn server_login(
    config: &Config,
    db: &Database,
    auth: &Authenticated,
) -> (String, ServerCredential) {
    if let Some(user) = &db.user {
        let cred = db
            .password
            .clone()
            .map_or(ServerCredential::None, ServerCredential::Password);
        return (user.clone(), cred);
    }
    let user_cfg = config.users.get(&auth.user);
    let cred = match (user_cfg, auth.client_key) {
        (Some(u), _) if u.server_password.is_some() => {
            ServerCredential::Password(u.server_password.clone().unwrap_or_default())
        }
        (Some(u), Some(client_key)) => match &u.verifier {
            Some(v) => ServerCredential::ScramKeys {
                client_key,
                verifier: v.clone(),
            },
            None => ServerCredential::None,
        },
        _ => ServerCredential::None,
    };
    (auth.user.clone(), cred)
}

/// Runs an authenticated client's session. An `Err` is sent to the client.
async fn run(
    shared: &Shared,
    client: &mut Client,
    auth: Authenticated,
    listener_target: Target,
) -> Result<(), ErrorFields> {
    let config = shared.config();
    let replication = wants_replication(&auth);
    let fallback;
    let db = match config.database(&auth.database) {
        Some(db) => db,
        None if replication => {
            fallback = Database {
                dbname: None,
                user: None,
                password: None,
                pool_size: 1,
                target: Some(Target::Primary),
            };
            &fallback
        }
        None => {
            return Err(ErrorFields::fatal(
                "3D000",
                format!("database \"{}\" does not exist", auth.database),
            )
            .with_hint("pgherd has no [databases] entry for it and no \"*\" entry"))
        }
    };
    let (server_user, credential) = server_login(config, db, &auth);
    let server_db = db.dbname.clone().unwrap_or_else(|| auth.database.clone());
    let mut params: Vec<(String, String)> = auth
        .startup
        .params
        .iter()
        .filter(|(k, _)| k != "user" && k != "database")
        .cloned()
        .collect();
    params.push(("user".into(), server_user.clone()));
    params.push(("database".into(), server_db.clone()));
    params.sort();

    if replication {
        let (params, credential) = (&params, &credential);
        let server = route::connect(shared, Target::Primary, |node| async move {
            open(shared, node, Target::Primary, params.clone(), credential).await
        })
        .await?;
        return replicate(shared, client, server).await;
    }

    let key = |node| PoolKey {
        database: server_db.clone(),
        user: server_user.clone(),
        node,
    };
    let target = db.target.unwrap_or(listener_target);
    let mut guard = route::connect(shared, target, |node| {
        let (params, credential, key) = (&params, &credential, key(node));
        async move {
            let pool = shared.pool(key, db.pool_size);
            checkout(shared, &pool, node, target, params, credential).await
        }
    })
    .await?;
    let Some(server) = guard.conn() else {
        return Err(ErrorFields::fatal(
            "XX000",
            "pgherd: pool handed out an empty slot",
        ));
    };
    let cancel_key = welcome(shared, client, server).await?;
    let mut state = ServerState::new();
    let buf = std::mem::take(&mut client.buf);
    let retire = retire_when_fenced(shared.cluster.watch(), server.node);
    let relayed = relay::relay(
        &mut client.stream,
        buf,
        &mut server.stream,
        config.general.max_packet_size,
        &mut state,
        retire,
    )
    .await;
    shared.cancels.unregister(server.pid, cancel_key);
    let node = &config.nodes[server.node];
    let end = relayed.end;
    let outcome = match &end {
        RelayEnd::ClientLeft => Ok(()),
        RelayEnd::ClientIo(e) => {
            tracing::debug!(peer = %client.peer, "client connection failed: {e}");
            Ok(())
        }
        RelayEnd::ClientProtocol(e) => Err(ErrorFields::fatal("08P01", e.to_string())),
        RelayEnd::ServerClosed => Err(ErrorFields::fatal(
            "08006",
            format!("server connection to node \"{}\" was lost", node.name),
        )
        .with_detail("the server closed the connection unexpectedly")),
        RelayEnd::ServerIo(e) => Err(ErrorFields::fatal(
            "08006",
            format!("server connection to node \"{}\" was lost", node.name),
        )
        .with_detail(e.to_string())),
        RelayEnd::ServerProtocol(e) => Err(ErrorFields::fatal(
            "08P01",
            format!("node \"{}\" broke the protocol: {e}", node.name),
        )),
        RelayEnd::Retired(reason) => Err(ErrorFields::fatal(
            "57P01",
            format!("terminating connection: node \"{}\" {reason}", node.name),
        )),
    };
    if matches!(end, RelayEnd::ServerClosed | RelayEnd::ServerIo(_)) {
        // The node may be going away: look now rather than at the next interval.
        shared.cluster.request_probe();
    }
    finish(shared, guard, &state, &end).await;
    if relayed.can_tell_client {
        outcome
    } else {
        // The client is mid-message or already has the server's FATAL error.
        Ok(())
    }
}

/// Completes when node `node` is fenced: a session pinned to it must end,
/// whatever it was doing, because the node may have diverged from the cluster.
async fn retire_when_fenced(
    mut topology: tokio::sync::watch::Receiver<Arc<pgherd_cluster::Topology>>,
    node: usize,
) -> String {
    loop {
        if topology.borrow_and_update().nodes[node].fenced {
            return "was fenced: it claims to be primary but is not the cluster's one primary"
                .into();
        }
        if topology.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// Returns the server to the pool when the session left it clean and the
/// reset succeeds; closes it otherwise (cancelling whatever it still runs).
async fn finish(
    shared: &Shared,
    mut guard: Guard<ServerConn>,
    state: &ServerState,
    end: &RelayEnd,
) {
    let config = shared.config();
    let Some(server) = guard.conn() else { return };
    if relay::reusable(state, end) {
        match server
            .reset(
                state.tx,
                &config.general.server_reset_query,
                config.general.server_connect_timeout,
            )
            .await
        {
            Ok(()) => {
                guard.release();
                return;
            }
            Err(e) => tracing::info!("server reset failed, closing the connection: {e}"),
        }
    }
    let Some(server) = guard.take() else { return };
    drop(guard);
    let busy = state.pending > 0 || state.tx != TxStatus::Idle;
    let server_alive = !matches!(
        end,
        RelayEnd::ServerClosed | RelayEnd::ServerIo(_) | RelayEnd::ServerProtocol(_)
    );
    if server_alive {
        tokio::spawn(async move {
            if busy {
                let _ = send_cancel(server.addr, server.pid, server.secret).await;
            }
            server.close().await;
        });
    }
}

/// Sends the client what a server sends after AuthenticationOk: every
/// ParameterStatus (the server's own values), a BackendKeyData with the
/// server's PID and a secret of pgherd's, and ReadyForQuery. Returns the secret.
async fn welcome(
    shared: &Shared,
    client: &mut Client,
    server: &ServerConn,
) -> Result<[u8; 4], ErrorFields> {
    let secret = shared.cancels.register(CancelTarget {
        addr: server.addr,
        pid: server.pid,
        secret: server.secret,
    });
    let mut out = BytesMut::with_capacity(512);
    for (k, v) in &server.params {
        backend::parameter_status(&mut out, k, v);
    }
    backend::backend_key_data(&mut out, server.pid, secret);
    backend::ready_for_query(&mut out, TxStatus::Idle);
    if let Err(e) = client.stream.write_all(&out).await {
        shared.cancels.unregister(server.pid, secret);
        tracing::debug!("client left during welcome: {e}");
        // The client is gone; an error to it would go nowhere.
        return Err(ErrorFields::fatal("08006", "client connection lost"));
    }
    Ok(secret)
}

/// Opens an unpooled server connection on `node`.
async fn open(
    shared: &Shared,
    node: usize,
    target: Target,
    params: Vec<(String, String)>,
    credential: &ServerCredential,
) -> Attempt<ServerConn> {
    let config = shared.config();
    let n = &config.nodes[node];
    let connected = ServerConn::connect(
        node,
        &n.host,
        n.port,
        params,
        credential,
        config.general.server_connect_timeout,
    )
    .await;
    match connected {
        Ok(conn) if target == Target::Primary && conn.is_standby() => {
            tokio::spawn(conn.close());
            Attempt::Unusable("is a standby".into())
        }
        Ok(conn) => Attempt::Usable(conn),
        Err(ServerError::Rejected(fields)) if fields.code.starts_with("57P") => {
            // Starting up, shutting down, in recovery: try another node.
            Attempt::Unusable(fields.message)
        }
        Err(ServerError::Rejected(mut fields)) => {
            fields.detail = Some(format!(
                "reported by node \"{}\" ({}:{}){}",
                n.name,
                n.host,
                n.port,
                fields.detail.map(|d| format!(": {d}")).unwrap_or_default()
            ));
            Attempt::Refused(fields)
        }
        Err(ServerError::Auth(why)) => Attempt::Refused(ErrorFields::fatal(
            "28000",
            format!("pgherd cannot log in to node \"{}\": {why}", n.name),
        )),
        Err(e) => Attempt::Unusable(e.to_string()),
    }
}

/// Takes a server for this client from `node`'s pool: an idle one opened
/// with the same startup parameters, or a new one.
async fn checkout(
    shared: &Shared,
    pool: &pgherd_pool::Pool<ServerConn>,
    node: usize,
    target: Target,
    params: &[(String, String)],
    credential: &ServerCredential,
) -> Attempt<Guard<ServerConn>> {
    let config = shared.config();
    let wait = config.general.query_wait_timeout;
    let mut guard = match pool.checkout(wait, |c| c.startup == params).await {
        Ok(g) => g,
        Err(PoolError::Timeout(t)) => {
            return Attempt::Refused(
                ErrorFields::fatal(
                    "53300",
                    format!(
                        "query_wait_timeout: no server connection became free within {}s",
                        t.as_secs_f64()
                    ),
                )
                .with_hint("raise pool_size for this database, or look for long sessions"),
            )
        }
        Err(PoolError::Closed) => return Attempt::Unusable("pool closed".into()),
    };
    if let Some(evicted) = guard.take_evicted() {
        tokio::spawn(evicted.close());
    }
    if let Some(conn) = guard.conn() {
        if conn.is_alive() && !(target == Target::Primary && conn.is_standby()) {
            return Attempt::Usable(guard);
        }
        // Closed by the server while idle (restart, failover, idle timeout).
        drop(guard.take());
    }
    match open(shared, node, target, params.to_vec(), credential).await {
        Attempt::Usable(conn) => {
            guard.set(conn);
            Attempt::Usable(guard)
        }
        Attempt::Unusable(why) => Attempt::Unusable(why),
        Attempt::Refused(f) => Attempt::Refused(f),
    }
}

/// A replication connection: no pooling, bytes relayed as they are until
/// either side closes (streaming replication is one long COPY).
async fn replicate(
    shared: &Shared,
    client: &mut Client,
    mut server: ServerConn,
) -> Result<(), ErrorFields> {
    let secret = welcome(shared, client, &server).await?;
    let result = async {
        server.stream.write_all(&client.buf).await?;
        tokio::io::copy_bidirectional(&mut client.stream, &mut server.stream).await
    }
    .await;
    shared.cancels.unregister(server.pid, secret);
    if let Err(e) = result {
        tracing::debug!("replication connection ended: {e}");
    }
    Ok(())
}
