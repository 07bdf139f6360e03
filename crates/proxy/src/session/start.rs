//! A logged-in client's session set up: the database entry and server
//! credential resolved to an [`Upstream`], the first server taken, and the
//! client welcomed with a server's ParameterStatus values.
//!
//! A client that gets its server later (transaction mode, and session mode
//! with `session_server_at = "first_query"`) gives the first server back
//! at once, and while its pool is full is welcomed with what a server of
//! the pool said at its own login, so that logins never wait for a server.

use std::sync::Arc;

use bytes::BytesMut;
use pgherd_config::{PoolMode, SessionServerAt, Target};
use pgherd_wire::backend::ErrorFields;
use pgherd_wire::sqlstate;

use super::release::release;
use super::replication::replicate;
use super::replication::{wants_replication, REPLICATION_FALLBACK};
use super::transaction::{empty_slot, sync_params, Setup};
use super::welcome::welcome;
use crate::clock::Micros;
use crate::login::{Authenticated, Client};
use crate::registry::cancel::{CancelKey, CancelRoute};
use crate::registry::ClientInfo;
use crate::registry::NewClient;
use crate::relay::params::{ClientParams, ServerParams};
use crate::shared::Shared;
use crate::upstream::route::Want;
use crate::upstream::server::Startup;
use crate::upstream::{open_on_primary, server_login, UpstreamSpec};

/// Sets up an authenticated client's session: its upstream, its welcome
/// (from a first server) and, in session mode, the server it keeps.
/// `None`: the client was the console's or a replication connection, and
/// is served already. An `Err` is sent to the client.
pub(super) async fn start(
    shared: &Shared,
    client: &mut Client,
    auth: Box<Authenticated>,
    listener_target: Target,
) -> Result<Option<Setup>, ErrorFields> {
    if crate::login::is_console(&auth.database) {
        Box::pin(crate::admin::console::serve(shared, client, &auth)).await?;
        return Ok(None);
    }
    let config = shared.config();
    let replication = wants_replication(&auth);
    let db = match config.database(&auth.database) {
        Some(db) => db,
        None if replication => &REPLICATION_FALLBACK,
        None => {
            return Err(ErrorFields::fatal(
                sqlstate::INVALID_CATALOG_NAME,
                format!("database \"{}\" does not exist", auth.database),
            )
            .with_hint("pgherd has no [databases] entry for it and no \"*\" entry"))
        }
    };
    let control = shared.registry.database(&auth.database);
    if control.disabled() {
        return Err(ErrorFields::fatal(
            sqlstate::CANNOT_CONNECT_NOW,
            format!("database \"{}\" is disabled", auth.database),
        )
        .with_hint("an administrator ran DISABLE on the admin console; ENABLE lifts it"));
    }
    let me = shared.registry.add_client(NewClient {
        user: &auth.user,
        database: &auth.database,
        addr: client.peer,
        local_addr: client.stream.local_addr(),
        application_name: auth.startup.param("application_name").unwrap_or(""),
    });
    let (server_user, credential) = server_login(&config, db, &auth);
    let server_db = db.dbname.clone().unwrap_or_else(|| auth.database.clone());
    let mode = config.pool_mode(db, &auth.user);
    let tracking = mode == PoolMode::Transaction && !replication;
    // The client gets a server only when it sends something: transaction
    // mode, and session mode with `session_server_at = "first_query"`.
    let server_later = tracking
        || (mode == PoolMode::Session
            && config.general.session_server_at == SessionServerAt::FirstQuery);
    let ignored = |name: &str| {
        config
            .general
            .ignore_startup_parameters
            .iter()
            .any(|i| i.eq_ignore_ascii_case(name))
    };
    // Untracked startup parameters go to the server (and decide which
    // servers this client may share); tracked ones are the client's own.
    let mut client_params = ClientParams::new(&shared.tracked);
    let mut params: Vec<(String, String)> = Vec::new();
    for (name, value) in &auth.startup.params {
        if name == "user" || name == "database" || ignored(name) {
            continue;
        }
        match shared.tracked.index(name) {
            Some(index) if tracking => client_params.set(index, value),
            _ => params.push((name.clone(), value.clone())),
        }
    }
    params.push(("user".into(), server_user));
    params.push(("database".into(), server_db));
    params.sort();

    if replication {
        drop(auth);
        let params: Startup = params.into();
        let opened = open_on_primary(&shared.servers, &config, &params, &credential);
        let server = Box::pin(opened).await?;
        Box::pin(replicate(shared, client, server)).await?;
        return Ok(None);
    }

    let target = match db.target.unwrap_or(listener_target) {
        // Per transaction, so only in transaction mode.
        Target::Auto if mode == PoolMode::Session => Target::Primary,
        t => t,
    };
    let upstream = shared.servers.upstreams.get(UpstreamSpec {
        config: &config,
        client: (&auth.database, &auth.user),
        db,
        target,
        params,
        credential,
        mode,
        control,
        nodes: shared.cluster().slots(),
    });
    // Everything needed from the login is copied out: the startup packet
    // and the rest go now, not at the end of the session.
    drop(auth);
    // The welcome needs a server's ParameterStatus values, in both modes.
    let welcome_want = match (upstream.want(), server_later) {
        (Want::Standby { fallback, .. }, true) => Want::Standby {
            fallback,
            wrote_at: None,
            peek: true,
        },
        // While no primary is known (a failover), a client that gets its
        // server later is welcomed with a standby's values and its first
        // request waits for the primary: a driver's connect timeout is
        // usually shorter than a failover, and its first query's is not.
        // (Not before the first probes have answered: then the primary is
        // moments away.)
        (Want::Primary, true)
            if shared.cluster().primary_now().is_none()
                && shared
                    .cluster()
                    .pick_now(|t| t.probed().then_some(()))
                    .is_some() =>
        {
            Want::Standby {
                fallback: true,
                wrote_at: None,
                peek: true,
            }
        }
        (want, _) => want,
    };
    // Every server in use: welcomed as a server of this upstream welcomed
    // others, the client's first request waits for a server instead of
    // its login.
    let cached = server_later.then(|| upstream.cached_welcome()).flatten();
    let (cancel, held) = match cached {
        Some(cached) => {
            if tracking {
                client_params.default_to(&cached.params);
            }
            let as_primary = upstream.want() == Want::Primary && cached.params.is_standby();
            let own = (&cached.params, tracking.then_some(&client_params));
            let said = (&cached.notices[..], as_primary);
            (
                welcome_keyed(shared, client, &me.info, None, own, said).await?,
                None,
            )
        }
        None => {
            let (mut first, _, first_lease) = upstream
                .checkout(&shared.servers, &me.info, welcome_want)
                .await?;
            let Some(server) = first.conn() else {
                return Err(empty_slot());
            };
            // Welcomed by a standby for the primary: the client's
            // transactions will run on the primary, so it must not be told
            // it reached a hot standby.
            let as_primary = upstream.want() == Want::Primary && server.is_standby();
            let mut notices = server.login_notices.clone();
            if tracking {
                // What the client did not set, it gets the server's defaults of.
                client_params.default_to(&server.initial_params);
                // Usually equal to the server's: then this shares their values.
                // What the server says of the client's values (a truncated
                // application_name), the client hears as it would at login.
                notices.extend(sync_params(shared, &mut client_params, server).await?);
            }
            if server_later {
                upstream.remember_welcome(server);
            }
            // A client that keeps this server is told its real PID.
            let pid = (!server_later).then_some(server.pid);
            let said = (&notices[..], as_primary);
            let own = (&server.params, None);
            let cancel = welcome_keyed(shared, client, &me.info, pid, own, said).await?;
            let held = if server_later {
                release(first, config.general.server_lifetime, Micros::now());
                drop(first_lease);
                None
            } else {
                Some(Box::new((first, first_lease)))
            };
            (cancel, held)
        }
    };
    if held.is_none() && client.buf.is_empty() {
        // No server yet: the login buffer is not needed while idle.
        client.buf = BytesMut::new();
    }
    Ok(Some(Setup {
        upstream,
        me,
        cancel,
        params: tracking.then_some(client_params),
        held,
    }))
}

/// Registers the client's cancel key (with the server's `pid`, or one of
/// pgherd's) and sends the welcome; a key whose welcome failed is
/// unregistered again.
async fn welcome_keyed(
    shared: &Shared,
    client: &mut Client,
    me: &Arc<ClientInfo>,
    pid: Option<i32>,
    params: (&ServerParams, Option<&ClientParams>),
    (notices, as_primary): (&[bytes::Bytes], bool),
) -> Result<CancelKey, ErrorFields> {
    let cancel = shared
        .cancels
        .register(pid, CancelRoute::Client(Arc::clone(me)));
    let key = (cancel.pid, cancel.secret);
    if let Err(e) = welcome(client, params, (key, notices), as_primary).await {
        shared.cancels.unregister(&cancel);
        return Err(e);
    }
    Ok(cancel)
}
