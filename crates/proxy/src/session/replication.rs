//! Replication connections: no pooling, the bytes relayed as they are.

use pgherd_config::{Database, Target};
use pgherd_wire::backend::ErrorFields;

use crate::login::{Authenticated, Client};
use crate::registry::cancel::CancelRoute;
use crate::registry::CancelTarget;
use crate::shared::Shared;
use crate::upstream::server::ServerConn;

use super::welcome::welcome;

/// A replication connection: no pooling, bytes relayed as they are until
/// either side closes (streaming replication is one long COPY).
pub(super) async fn replicate(
    shared: &Shared,
    client: &mut Client,
    mut server: ServerConn,
) -> Result<(), ErrorFields> {
    let cancel = shared.cancels.register(
        Some(server.pid),
        CancelRoute::Fixed(CancelTarget {
            addr: server.addr,
            pid: server.pid,
            secret: server.secret,
        }),
    );
    if let Err(e) = welcome(
        client,
        (&server.params, None),
        ((cancel.pid, cancel.secret), &[]),
        false,
    )
    .await
    {
        shared.cancels.unregister(&cancel);
        return Err(e);
    }
    let result = async {
        server.stream.send(&client.buf).await?;
        tokio::io::copy_bidirectional(&mut client.stream, &mut server.stream).await
    }
    .await;
    shared.cancels.unregister(&cancel);
    if let Err(e) = result {
        tracing::debug!("replication connection ended: {e}");
    }
    Ok(())
}

/// A replication connection to a database with no entry: to the primary,
/// unpooled.
pub(super) static REPLICATION_FALLBACK: std::sync::LazyLock<Database> =
    std::sync::LazyLock::new(|| Database {
        dbname: None,
        user: None,
        password: None,
        pool_size: 1,
        min_pool_size: 0,
        reserve_pool: 0,
        max_db_connections: 0,
        pool_mode: None,
        target: Some(Target::Primary),
    });

pub(super) fn wants_replication(auth: &Authenticated) -> bool {
    match auth.startup.param("replication") {
        None => false,
        Some(v) => !matches!(
            v.to_ascii_lowercase().as_str(),
            "false" | "off" | "no" | "0"
        ),
    }
}
