//! The client's welcome: what a server sends after AuthenticationOk.

use bytes::{Bytes, BytesMut};
use pgherd_wire::backend::{self, ErrorFields, TxStatus};
use pgherd_wire::frame::put_message;
use pgherd_wire::sqlstate;

use crate::login::Client;
use crate::relay::params::{ClientParams, ServerParams};

/// Sends the client what a server sends after AuthenticationOk: the
/// server's `notices` (NoticeResponse bodies), every ParameterStatus (the
/// server's own values; `in_hot_standby` off when a standby welcomes a
/// client `as_primary`), BackendKeyData with the client's cancel key, and
/// ReadyForQuery.
///
/// `params` are a server's reported values; with `own`, the client's own
/// values of tracked parameters stand in for the server's (a welcome from
/// a server's earlier login, when no server is free).
pub(super) async fn welcome(
    client: &mut Client,
    (params, own): (&ServerParams, Option<&ClientParams>),
    ((pid, secret), notices): ((i32, [u8; 4]), &[Bytes]),
    as_primary: bool,
) -> Result<(), ErrorFields> {
    let mut out = BytesMut::with_capacity(512);
    for notice in notices {
        put_message(&mut out, backend::NOTICE_RESPONSE, &[notice]);
    }
    let tracked = params.tracked_names();
    for (k, v) in params.reported() {
        let own = own.and_then(|c| tracked.index(k).and_then(|i| c.get(i)));
        let v = match own {
            Some(own) => own,
            None if as_primary && k == "in_hot_standby" => "off",
            None => v,
        };
        backend::parameter_status(&mut out, k, v);
    }
    backend::backend_key_data(&mut out, pid, secret);
    backend::ready_for_query(&mut out, TxStatus::Idle);
    client.stream.send(&out).await.map_err(|e| {
        tracing::debug!("client left during welcome: {e}");
        // The client is gone; an error to it would go nowhere.
        ErrorFields::fatal(sqlstate::CONNECTION_FAILURE, "client connection lost")
    })
}
