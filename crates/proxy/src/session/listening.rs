//! A transaction-mode client's LISTENs under `listen_fanout`: served by
//! its database and user's [`Hub`] rather than by a server (see
//! `crate::fanout`), and ended when the client leaves.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};

use pgherd_wire::backend::ErrorFields;
use pgherd_wire::sqlstate;

use crate::fanout::{Hub, Inbox, Source};
use crate::registry::ClientInfo;
use crate::shared::Shared;
use crate::upstream::server::ServerConn;
use crate::upstream::{open_on_primary, Upstream};

/// The client's place in its hub.
pub(super) struct Listening {
    pub(super) hub: Arc<Hub>,
    pub(super) inbox: Arc<Inbox>,
}

impl Listening {
    /// `client` of `upstream`, with the hub of its database and user
    /// (started now if it is the first to listen).
    pub(super) fn new(
        shared: &Arc<Shared>,
        upstream: &Arc<Upstream>,
        client: &Arc<ClientInfo>,
    ) -> Listening {
        let key = (client.database.clone(), client.user.clone());
        let mut hubs = shared.hubs.lock().unwrap_or_else(|e| e.into_inner());
        let hub = hubs.entry(key).or_insert_with(|| {
            Arc::new(Hub::start(PrimaryOf {
                shared: Arc::downgrade(shared),
                upstream: Arc::clone(upstream),
            }))
        });
        Listening {
            hub: Arc::clone(hub),
            inbox: Inbox::new(Arc::clone(client)),
        }
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.hub.unlisten_all(&self.inbox);
    }
}

/// A hub's connections: on the primary, as the upstream's servers log in.
/// Weak: the hubs live in [`Shared`], which must not be kept by them.
struct PrimaryOf {
    shared: Weak<Shared>,
    upstream: Arc<Upstream>,
}

impl Source for PrimaryOf {
    fn open(&self) -> Pin<Box<dyn Future<Output = Result<ServerConn, ErrorFields>> + Send + '_>> {
        Box::pin(async move {
            let Some(shared) = self.shared.upgrade() else {
                return Err(ErrorFields::fatal(
                    sqlstate::ADMIN_SHUTDOWN,
                    "pgherd is stopping",
                ));
            };
            let up = &self.upstream;
            open_on_primary(&shared.servers, &up.config, &up.params, &up.credential).await
        })
    }

    fn is_primary(&self, node: usize) -> bool {
        self.shared.upgrade().is_some_and(|shared| {
            let cluster = shared.cluster();
            cluster.primary_now() == Some(node) && !cluster.is_fenced(node)
        })
    }
}
