//! Protocol edge cases a real server cannot be made to produce, from a
//! scripted server in front of a real node (testkit's `ScriptedServer`):
//! the client whose server broke gets a clear error, and pgherd keeps
//! serving everyone else with no server connection left behind.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use pgherd_integration_tests::*;
use pgherd_wire::backend;
use pgherd_wire::frame::put_message;

/// pgherd in transaction mode whose one node is a scripted server in front
/// of the shared cluster's primary.
async fn behind_scripts(scripts: Vec<Script>) -> (ScriptedServer, RunningPgherd) {
    let cluster = shared_cluster();
    let server = ScriptedServer::start(cluster.pg.node(0).port, scripts).await;
    let pgherd = cluster
        .pgherd()
        .nodes(&[0])
        .node_port(0, server.port)
        .general("pool_mode = \"transaction\"")
        .start()
        .await;
    pgherd.wait_settled(0).await;
    (server, pgherd)
}

/// Everyone else is served, and no server connection is left in use.
async fn still_serving(pgherd: &RunningPgherd) {
    let other = pgherd.connect("app", APP_PASSWORD, "app").await.unwrap();
    assert_eq!(simple_value(&other, "SELECT 41 + 1").await, "42");
    drop(other);
    // The last client's server goes back as its Terminate is read.
    let checked_out = || -> usize {
        let pools = pgherd.handle.pools();
        pools.iter().map(|p| p.status.checked_out).sum()
    };
    for _ in 0..1500 {
        if checked_out() == 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("a server is still checked out: {:?}", pgherd.handle.pools());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_breaks_the_protocol_fails_only_its_client() {
    // A DataRow whose length (1) is below the length field's own size.
    let broken = Script {
        trigger: "-- broken frame",
        reply: vec![backend::DATA_ROW, 0, 0, 0, 1],
        then_close: false,
    };
    let (_server, pgherd) = behind_scripts(vec![broken]).await;
    let victim = pgherd.connect("app", APP_PASSWORD, "app").await.unwrap();
    let err = victim
        .simple_query("-- broken frame\nSELECT 1")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), Some("08P01"), "{err}");
    assert!(message(&err).contains("broke the protocol"), "{err}");
    still_serving(&pgherd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_gone_in_the_middle_of_a_result_fails_only_its_client() {
    // A RowDescription, then half a DataRow, then the connection closes.
    let mut reply = bytes::BytesMut::new();
    backend::row_description(&mut reply, &[("n", backend::oid::INT4)]);
    put_message(&mut reply, backend::DATA_ROW, &[&[0, 1, 0, 0, 0, 1], b"4"]);
    let cut = reply.len() - 1;
    let gone = Script {
        trigger: "-- cut",
        reply: reply[..cut].to_vec(),
        then_close: true,
    };
    let (_server, pgherd) = behind_scripts(vec![gone]).await;
    let victim = pgherd.connect("app", APP_PASSWORD, "app").await.unwrap();
    let err = victim.simple_query("-- cut\nSELECT 4").await.unwrap_err();
    // Half a message reached the client: pgherd can only close.
    assert!(victim.is_closed() || err.is_closed(), "{err}");
    still_serving(&pgherd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_closes_between_messages_gets_its_client_08006() {
    let mut reply = bytes::BytesMut::new();
    backend::row_description(&mut reply, &[("n", backend::oid::INT4)]);
    let gone = Script {
        trigger: "-- close",
        reply: reply.to_vec(),
        then_close: true,
    };
    let (_server, pgherd) = behind_scripts(vec![gone]).await;
    let victim = pgherd.connect("app", APP_PASSWORD, "app").await.unwrap();
    let err = victim.simple_query("-- close\nSELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&err), Some("08006"), "{err}");
    assert!(message(&err).contains("was lost"), "{err}");
    still_serving(&pgherd).await;
}
