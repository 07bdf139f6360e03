//! One client connection from accept to close: encryption and login
//! (`begin`), the session's setup (`start`), its transactions
//! (`transaction`), giving servers back (`release`), and replication
//! connections, which bypass pooling (`replication`).
//!
//! An idle client's whole cost is its task, so the boxing here is
//! deliberate: what an idle client does not wait in is boxed (see
//! [`serve`]).
//!
//! The only room that sees a client from accept to close; what it calls
//! (upstream, relay, login, registry) never calls back up into it. Protocol
//! details belong to `relay` and `wire`, routing to `upstream`.

mod listening;
mod release;
mod replication;
mod start;
mod transaction;
mod welcome;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use pgherd_config::Target;
use pgherd_tls::Stream;
use pgherd_wire::backend::ErrorFields;

use crate::listen::addr::ClientAddr;
use crate::login::{Client, Refused};
use crate::registry::ClientInfo;
use crate::shared::Shared;
use crate::upstream::server::send_cancel;
use start::start;
use transaction::Session;

/// Counts a client for `max_client_conn` while it is connected.
struct ClientSlot(Arc<Shared>);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one accepted connection.
/// `listener_target` is where this listener sends databases that set no target.
///
/// This future is the client's task, and a task is as large as its largest
/// state for its whole life: so everything an idle client does not wait in
/// (encryption, login, the session's setup, each transaction) is boxed,
/// and what is left while idle is [`Session`] and the wait for a request.
pub(crate) fn serve(
    shared: Arc<Shared>,
    stream: Stream,
    peer: ClientAddr,
    listener_target: Target,
) -> impl Future<Output = ()> + Send {
    let connected = shared.clients.fetch_add(1, Ordering::Relaxed) + 1;
    let begin = begin(
        Arc::clone(&shared),
        stream,
        peer,
        listener_target,
        connected,
    );
    // Not arguments of an async fn: those stay in the task all its life.
    run(ClientSlot(shared), Box::pin(begin))
}

/// An async block, not an async fn: an async fn keeps its arguments
/// beside what the body moves them into, and this future is every
/// client's task for its whole life.
#[allow(clippy::manual_async_fn)]
fn run(
    slot: ClientSlot,
    begin: Pin<Box<impl Future<Output = Option<Box<Session>>>>>,
) -> impl Future<Output = ()> {
    async move {
        let Some(mut session) = begin.await else {
            return;
        };
        let shared = &*slot.0;
        // The error boxed: a 120-byte result kept across the await below
        // would be in every client's task.
        let failed = session.serve(&slot.0).await.err().map(Box::new);
        shared.cancels.unregister(&session.cancel);
        log_logout(shared, &session.me.info, failed.as_deref());
        if let Some(fields) = failed {
            Box::pin(session.client.send_error(&fields)).await;
        }
    }
}

/// pgbouncer's `log_disconnections`: who left, why, and after how long.
fn log_logout(shared: &Shared, me: &ClientInfo, failed: Option<&ErrorFields>) {
    let why = failed.map_or("client close request", |f| f.message.as_str());
    let age = me.connected.elapsed().map_or(0.0, |d| d.as_secs_f64());
    let (db, user, peer) = (&me.database, &me.user, me.addr);
    log_at_info(
        shared.config().general.log_disconnections,
        format_args!("closing: db={db} user={user} from {peer}: {why} (age={age:.0}s)"),
    );
}

/// `log_connections` / `log_disconnections`: at info when on, else debug.
fn log_at_info(on: bool, line: std::fmt::Arguments<'_>) {
    if on {
        tracing::info!("{line}");
    } else {
        tracing::debug!("{line}");
    }
}

/// Encryption, login and the session's setup. `None`: the client is
/// served already (refused, a cancel request, the console, replication).
/// `connected`: clients now, this one included.
async fn begin(
    shared: Arc<Shared>,
    stream: Stream,
    peer: ClientAddr,
    listener_target: Target,
    connected: usize,
) -> Option<Box<Session>> {
    let shared = &*shared;
    let config = shared.config();
    if let Stream::Plain(tcp) = &stream {
        if let Err(e) = crate::listen::sockets::tune(tcp, &config.general.tcp()) {
            tracing::debug!(%peer, "setting TCP options failed: {e}");
        }
    }
    let over_limit = connected > config.general.max_client_conn;
    // One deadline for encryption and login together.
    let deadline = tokio::time::Instant::now() + config.general.client_login_timeout;
    drop(config);
    let tls = shared.settings.tls();
    let mut client = match Client::accept(stream, peer, &tls.client, deadline).await {
        Ok(client) => client,
        Err(refused) => {
            shared.logins.failures.refused(&refused, peer);
            return None;
        }
    };
    // Channel binding data for the certificate this handshake used.
    let channel_binding = match client.stream.is_tls() {
        true => tls.client.channel_binding(),
        false => None,
    };
    drop(tls);
    let auth = match client
        .login(&shared.logins, over_limit, deadline, channel_binding)
        .await
    {
        Ok(auth) => auth,
        Err(Refused::Cancel { pid, secret }) => {
            forward_cancel(shared, pid, &secret).await;
            return None;
        }
        Err(refused) => {
            shared.logins.failures.refused(&refused, peer);
            if let Refused::Fatal(fields) | Refused::TlsRequired(fields) = &refused {
                client.send_error(fields).await;
            }
            return None;
        }
    };
    // pgbouncer's `log_connections`.
    let (db, user) = (&auth.database, &auth.user);
    let tls = if client.stream.is_tls() { "yes" } else { "no" };
    log_at_info(
        shared.config().general.log_connections,
        format_args!("login: db={db} user={user} tls={tls} from {peer}"),
    );
    match start(shared, &mut client, auth, listener_target).await {
        Ok(Some(setup)) => Some(Box::new(Session::new(client, setup))),
        // The console, or a replication connection: served already.
        Ok(None) => None,
        Err(fields) => {
            client.send_error(&fields).await;
            None
        }
    }
}

async fn forward_cancel(shared: &Shared, pid: i32, secret: &Bytes) {
    if let Some(peer) = shared.cancels.peer_of(secret) {
        return forward_to_peer(shared, peer, pid, secret).await;
    }
    match shared.cancels.lookup(&shared.registry, pid, secret) {
        Some(t) => {
            if let Err(e) = send_cancel(t.addr, t.pid, t.secret).await {
                tracing::warn!("cancel request to {} failed: {e}", t.addr);
            }
        }
        None => tracing::debug!(pid, "cancel request with an unknown key ignored"),
    }
}

/// A cancel request for another instance's client (its key names that
/// instance's `peer_id`): sent on, as it came, to the address `[peers]`
/// gives for it.
async fn forward_to_peer(shared: &Shared, peer: u16, pid: i32, secret: &Bytes) {
    let config = shared.config();
    let Some(p) = config.peers.get(&peer) else {
        tracing::debug!(peer, "cancel request for an unknown peer ignored");
        return;
    };
    let Ok(secret) = <[u8; 4]>::try_from(&secret[..]) else {
        return;
    };
    let addr = match tokio::net::lookup_host((p.host.as_str(), p.port)).await {
        Ok(mut addrs) => addrs.next(),
        Err(e) => {
            tracing::warn!(peer, "cancel request to peer {}: {e}", p.host);
            return;
        }
    };
    if let Some(addr) = addr {
        if let Err(e) = send_cancel(addr, pid, secret).await {
            tracing::warn!(peer, "cancel request to peer {addr} failed: {e}");
        }
    }
}
