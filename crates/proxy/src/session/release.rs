//! Giving a server back: reset it and pool it when the session left it
//! clean, close it otherwise.

use pgherd_config::Config;
use pgherd_pool::Guard;
use pgherd_wire::backend::TxStatus;

use crate::clock::Micros;
use crate::relay::{self, RelayEnd, ServerProgress};
use crate::shared::Shared;
use crate::upstream::server::{send_cancel, ServerConn};

/// Gives a clean server back to its pool, or closes it when `RECONNECT`
/// asked for that.
/// Also closes one older than `server_lifetime`. `now` is when the
/// transaction ended (read once for stats and for this).
pub(super) fn release(
    mut guard: Guard<ServerConn>,
    lifetime: Option<std::time::Duration>,
    now: Micros,
) {
    let Some(server) = guard.conn() else {
        return;
    };
    let close = server.expired(lifetime, now)
        || server
            .registered
            .as_ref()
            .is_some_and(|r| r.info.close_needed());
    if !close {
        server.idle_since = now;
        // Unlinked before it is in the pool, where another client can
        // take (and link) it at once on another thread.
        if let Some(r) = &server.registered {
            r.info.set_client(None);
        }
        guard.release();
        return;
    }
    if let Some(server) = guard.take() {
        server.close_in_background();
    }
}

/// `server_reset_query_always`: resets the server a transaction just left
/// (idle, in sync); one that fails the reset is closed, not pooled.
pub(super) async fn reset_after_transaction(guard: &mut Guard<ServerConn>, config: &Config) {
    let general = &config.general;
    let Some(server) = guard.conn() else { return };
    let reset = server.reset(
        TxStatus::Idle,
        &general.server_reset_query,
        general.server_connect_timeout,
    );
    if let Err(e) = reset.await {
        tracing::info!("server reset failed, closing the connection: {e}");
        if let Some(server) = guard.take() {
            server.close_in_background();
        }
    }
}

/// Returns the server to the pool when the session left it clean and the
/// reset succeeds; closes it otherwise (cancelling whatever it still runs).
pub(super) async fn finish(
    shared: &Shared,
    mut guard: Guard<ServerConn>,
    state: &ServerProgress,
    end: &RelayEnd,
) {
    let config = shared.config();
    let Some(server) = guard.conn() else { return };
    // Session state a pinned client left is reset whatever
    // server_reset_query says: the next client must not see it.
    let reset_query = match state.session_state.is_empty() {
        true => config.general.server_reset_query.as_str(),
        false => "DISCARD ALL",
    };
    if relay::reusable(state, end) {
        match server
            .reset(state.tx, reset_query, config.general.server_connect_timeout)
            .await
        {
            Ok(()) => {
                release(guard, config.general.server_lifetime, Micros::now());
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
        RelayEnd::ServerClosed
            | RelayEnd::ServerIo(_)
            | RelayEnd::ServerProtocol(_)
            | RelayEnd::ServerGone(_)
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
